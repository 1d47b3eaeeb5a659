"""Batched, seeded summary generation from a causal LM: greedy or sampled.

    from preftune.generate import Decoding, generate
    outs = generate(model, tokenizer, prompts, Decoding(temperature=0.7, seed=1))
    outs[0].text, outs[0].tokens, outs[0].ended      # " my summary", 12, "eos"

Prompts are fed exactly as DPO trained on them (`tokenizer(prompt)`, no chat template), left-padded
so every row's continuation starts at the same column. A TL;DR is one line: by default the text is
cut at the first newline after its first words (`ended == "newline"`); a summary that reaches
`max_new_tokens` without ending says so (`ended == "length"`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


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


@dataclass(frozen=True)
class Generation:
    text: str  # the completion, as it follows the prompt (usually starts with a space)
    tokens: int  # generated tokens kept, without EOS
    ended: str  # "eos" | "newline" | "length"


_FIRST_LINE = re.compile(r"\s*[^\n]*")  # leading whitespace (newlines too), then the first line


def first_line(text: str) -> str:
    """The text up to the first newline that follows some content: a TL;DR is one line."""
    return _FIRST_LINE.match(text).group(0).rstrip("\n")


def _finish(tokenizer, new_ids: list[int], decoding: Decoding) -> Generation:
    """Decode one row's new tokens: cut at EOS (padding after it too), then at the first line."""
    eos = tokenizer.eos_token_id
    ended = "length"
    if eos is not None and eos in new_ids:
        new_ids, ended = new_ids[: new_ids.index(eos)], "eos"
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    if decoding.stop_at_newline:
        line = first_line(text)
        if line != text:
            text, ended = line, "newline"
            new_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return Generation(text, len(new_ids), ended)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], decoding: Decoding = Decoding(), batch_size: int = 8,
             desc: str = "generate") -> list[Generation]:
    """One completion per prompt, in the prompts' order. Seeded: the same call gives the same texts."""
    if tokenizer.pad_token_id is None:
        raise ValueError("tokenizer needs a pad token (preftune.models.load_tokenizer sets EOS as pad)")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths → little padding
    sample = decoding.temperature > 0
    knobs = dict(do_sample=True, temperature=decoding.temperature, top_p=decoding.top_p, top_k=0) if sample \
        else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    out: list[Generation | None] = [None] * len(prompts)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    model.eval()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
            idx = order[start : start + batch_size]
            batch = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True)
            torch.manual_seed(decoding.seed + start)  # per batch: reproducible whatever ran before
            ids = model.generate(**batch, max_new_tokens=decoding.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **knobs)  # (B, T + new)
            for row, i in enumerate(idx):
                out[i] = _finish(tokenizer, ids[row, batch["input_ids"].shape[1]:].tolist(), decoding)
    finally:
        tokenizer.padding_side = side
    return out
