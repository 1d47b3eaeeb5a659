"""THE decoder of preftune: one decoding config and one seeded token choice, for the judge (batched)
and the demo (streamed token by token), so the same seed gives the same summary on both paths.

    outs = generate(model, tokenizer, prompts, Decoding(temperature=0.7, seed=1))
    outs[0].text, outs[0].tokens, outs[0].ended      # " my summary", 12, "eos"

Each row samples from its own seeded torch.Generator (never the global RNG), so its draws depend on its
prompt and seed only; a TL;DR is one line, so generation stops at its end (`LineEnd`) or at EOS.
Details: docs/reward-and-judge.md.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)


@dataclass(frozen=True)
class Decoding:
    temperature: float = 0.0  # 0 → greedy
    top_p: float = 1.0
    max_new_tokens: int = 48
    seed: int = 0
    stop_at_newline: bool = True

    @property
    def name(self) -> str:
        return "greedy" if self.temperature == 0 else f"T={self.temperature:g}"

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Generation:
    text: str  # the completion, as it follows the prompt (usually starts with a space)
    tokens: int  # generated tokens kept, without EOS
    ended: str  # "eos" | "newline" | "length"


_FIRST_LINE = re.compile(r"\s*[^\n]*")  # leading whitespace (newlines too), then the first line


def first_line(text: str) -> str:
    """The text up to the first newline that follows some content: a TL;DR is one line."""
    return _FIRST_LINE.match(text).group(0).rstrip("\n")


def line_ended(text: str) -> bool:
    """True once the text holds a newline after some content (what `first_line` cuts at)."""
    return "\n" in text.lstrip()


def eos_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS and the model's generation EOS ids (chat models may have several)."""
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    extra = [] if extra is None else list(extra) if isinstance(extra, (list, tuple)) else [extra]
    return sorted({tokenizer.eos_token_id, *extra} - {None})


# ---- the one token choice ------------------------------------------------------------------------


def _warpers(d: Decoding) -> LogitsProcessorList:
    warpers = LogitsProcessorList([TemperatureLogitsWarper(d.temperature)])
    if d.top_p < 1.0:
        warpers.append(TopPLogitsWarper(d.top_p))
    return warpers


def row_generators(d: Decoding, rows: int, device) -> list[torch.Generator]:
    """One generator per row, each seeded with d.seed: a row samples the same whatever batch it is in."""
    return [torch.Generator(device=device).manual_seed(d.seed) for _ in range(rows)]


def next_tokens(seq: torch.Tensor, logits: torch.Tensor, d: Decoding, generators: list[torch.Generator]) -> torch.Tensor:
    """The next token of each row, (B,), from logits (B, V) after the sequences seq (B, T)."""
    if d.greedy:
        return logits.argmax(-1)
    probs = _warpers(d)(seq, logits.float()).softmax(-1)  # (B, V)
    return torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)])


class SeededChoice(LogitsProcessor):
    """`next_tokens` inside `model.generate`: every score but the chosen token's becomes −inf, so
    greedy generation takes exactly the token `next_tokens` chose."""

    def __init__(self, d: Decoding):
        self.d, self.generators = d, None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.generators is None:
            self.generators = row_generators(self.d, scores.shape[0], scores.device)
        chosen = next_tokens(input_ids, scores, self.d, self.generators)  # (B,)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, chosen[:, None], 0.0)


class LineEnd(StoppingCriteria):
    """Stops a row once its new text holds a newline after some content (a TL;DR's end)."""

    def __init__(self, tokenizer, prompt_len: int):
        self.tokenizer, self.prompt_len = tokenizer, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len:], skip_special_tokens=True)
        return torch.tensor([line_ended(t) for t in texts], dtype=torch.bool, device=input_ids.device)


# ---- batched (the judge) -------------------------------------------------------------------------


def _finish(tokenizer, new_ids: list[int], decoding: Decoding, eos: list[int] | None = None) -> Generation:
    """Decode one row's new tokens: cut at EOS (padding after it too), then at the first line."""
    eos = [tokenizer.eos_token_id] if eos is None else eos
    ended = "length"
    stop = next((k for k, t in enumerate(new_ids) if t in eos), None)
    if stop is not None:
        new_ids, ended = new_ids[:stop], "eos"
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    if decoding.stop_at_newline:
        line = first_line(text)
        if line != text:
            text, ended = line, "newline"
            new_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return Generation(text, len(new_ids), ended)


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Prompt indices in batches of similar token length (little padding), shortest first."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def prefill(model, ids: torch.Tensor, attn: torch.Tensor):
    """The KV cache of left-padded prompts (B, T), positions counted as `generate` counts them (from the
    attention mask), so `generate` continuing from it computes what it would compute from scratch."""
    positions = (attn.cumsum(-1) - 1).masked_fill(attn == 0, 0)
    out = model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=True, logits_to_keep=1)
    return out["cache"] if "cache" in out else out["past_key_values"]  # 5.24 names it `cache`


@torch.no_grad()
def generate_many(model, tokenizer, prompts: list[str], decodings: list[Decoding], batch_size: int = 8,
                  desc: str = "generate") -> dict[str, list[Generation]]:
    """One completion per prompt under each decoding ({decoding.name: generations in the prompts' order}).
    Each batch's prompts are read once (the KV cache of all but their last token is shared by the
    decodings): the prompt is most of the cost of a TL;DR."""
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer needs a pad token (preftune.models.load_tokenizer sets EOS as pad)")
    lengths = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]] if prompts else []
    eos = eos_ids(model, tokenizer)
    out: dict[str, list] = {d.name: [None] * len(prompts) for d in decodings}
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    model.eval()
    device = next(model.parameters()).device
    try:
        for idx in tqdm(length_batches(lengths, batch_size), desc=desc, unit="batch", leave=False):
            batch = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            ids, attn = batch["input_ids"], batch["attention_mask"]  # (B, T)
            width = ids.shape[1]
            shared = prefill(model, ids[:, :-1], attn[:, :-1]) if len(decodings) > 1 and width > 1 else None
            for d in decodings:
                stops = StoppingCriteriaList([LineEnd(tokenizer, width)] if d.stop_at_newline else [])
                cache = {} if shared is None else {"cache": copy.deepcopy(shared)}
                new = model.generate(input_ids=ids, attention_mask=attn, **cache, max_new_tokens=d.max_new_tokens,
                                     do_sample=False, temperature=None, top_p=None, top_k=None,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=eos,
                                     logits_processor=LogitsProcessorList([SeededChoice(d)]),
                                     stopping_criteria=stops)  # (B, T + new)
                for row, i in enumerate(idx):
                    out[d.name][i] = _finish(tokenizer, new[row, width:].tolist(), d, eos)
    finally:
        tokenizer.padding_side = side
    return out


def generate(model, tokenizer, prompts: list[str], decoding: Decoding = Decoding(), batch_size: int = 8,
             desc: str = "generate") -> list[Generation]:
    """One completion per prompt, in the prompts' order. Seeded per prompt: the same prompt, model and
    decoding give the same text, in any batch, and the same text `stream_texts` gives."""
    return generate_many(model, tokenizer, prompts, [decoding], batch_size, desc)[decoding.name]


# ---- streamed (the demo) -------------------------------------------------------------------------


@torch.no_grad()
def stream_tokens(model, prompt_ids: list[int], d: Decoding, eos: set[int] | list[int]) -> Iterator[int]:
    """Yield new token ids one at a time (KV-cached) until an EOS id (not yielded) or max_new_tokens."""
    device = next(model.parameters()).device
    generators = row_generators(d, 1, device)
    seq = torch.tensor([prompt_ids], device=device)  # (1, T)
    out = model(input_ids=seq, use_cache=True, logits_to_keep=1)  # LM head on the last position only
    for _ in range(d.max_new_tokens):
        token = next_tokens(seq, out.logits[:, -1].float(), d, generators)  # (1,)
        if token.item() in eos:
            return
        yield token.item()
        seq = torch.cat([seq, token[:, None]], dim=1)
        # transformers 5.24 names the KV cache `cache`; earlier 5.x `past_key_values`
        key = "cache" if "cache" in out else "past_key_values"
        out = model(input_ids=token[:, None], use_cache=True, **{key: out[key]})


def shown(tokenizer, ids: list[int], d: Decoding, final: bool) -> str:
    """A streamed side's text: its first line (d.stop_at_newline), and while it is still being written,
    without a trailing half-decoded multi-byte character. Final: exactly what `generate` returns."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    text = text if final else text.rstrip("\ufffd")
    return first_line(text) if d.stop_at_newline else text


def stream_sides(models: list, tokenizer, prompt_ids: list[int], d: Decoding) -> Iterator[list[Generation]]:
    """Decode every model in lockstep, each seeded with d.seed; yield every side's Generation after each
    step: its text so far, the tokens it PRODUCED (EOS, never yielded, not counted) and how it ended
    ("" while it is still being written, then "eos", "newline" or "length").

    A side stops at EOS, at max_new_tokens, or (d.stop_at_newline) at the end of its first line, the
    newline dropped: the last texts yielded are those `generate` returns for the same prompt and decoding."""
    steps = [stream_tokens(m, prompt_ids, d, set(eos_ids(m, tokenizer))) for m in models]
    ids: list[list[int]] = [[] for _ in models]
    sides = [Generation("", 0, "") for _ in models]
    last = None
    while any(not s.ended for s in sides):
        for i, step in enumerate(steps):
            if sides[i].ended:
                continue
            token = next(step, None)
            if token is not None:
                ids[i].append(token)
            newline = d.stop_at_newline and line_ended(tokenizer.decode(ids[i], skip_special_tokens=True))
            ended = "newline" if newline else "eos" if token is None and len(ids[i]) < d.max_new_tokens else \
                "length" if token is None else ""
            sides[i] = Generation(shown(tokenizer, ids[i], d, final=bool(ended)), len(ids[i]), ended)
            if ended:
                step.close()
        if sides != last:  # a step that changes nothing is not yielded
            last = list(sides)
            yield last


def stream_texts(models: list, tokenizer, prompt_ids: list[int], d: Decoding) -> Iterator[list[str]]:
    """`stream_sides`' texts only: every side's text after each step that changed one."""
    last = None
    for sides in stream_sides(models, tokenizer, prompt_ids, d):
        texts = [s.text for s in sides]
        if texts != last:  # a step that only found the ends changes nothing (or drops a trailing \ufffd)
            last = texts
            yield texts
