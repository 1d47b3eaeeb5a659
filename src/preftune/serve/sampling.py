"""Token-by-token decoding of two models side by side, each with its own seeded generator.

`model.generate` + a streamer would stream too, but two generations in two threads share torch's
global RNG, so a seed would not reproduce a sample. Here each side draws from its own
`torch.Generator`, the two decode in lockstep in one thread, and transformers' logits warpers do the
temperature and top-p filtering exactly as `generate` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7  # 0 → greedy
    top_p: float = 0.95
    max_new_tokens: int = 64
    seed: int = 0


def _warpers(s: Sampling) -> LogitsProcessorList:
    warpers = LogitsProcessorList([TemperatureLogitsWarper(s.temperature)])
    if s.top_p < 1.0:
        warpers.append(TopPLogitsWarper(s.top_p))
    return warpers


@torch.no_grad()
def decode_steps(model, prompt_ids: list[int], s: Sampling, eos_ids: set[int]) -> Iterator[int]:
    """Yield new token ids one at a time (KV-cached) until an EOS id (not yielded) or max_new_tokens."""
    generator = torch.Generator().manual_seed(s.seed)
    warpers = _warpers(s) if s.temperature > 0 else None
    seq = torch.tensor([prompt_ids])  # (1, T)
    out = model(input_ids=seq, use_cache=True, logits_to_keep=1)  # LM head on the last position only
    for _ in range(s.max_new_tokens):
        logits = out.logits[:, -1].float()  # (1, V)
        if warpers is None:
            token = logits.argmax(-1)  # (1,)
        else:
            probs = warpers(seq, logits).softmax(-1)
            token = torch.multinomial(probs, 1, generator=generator)[:, 0]
        if token.item() in eos_ids:
            return
        yield token.item()
        seq = torch.cat([seq, token[:, None]], dim=1)
        # transformers 5.24 names the KV cache `cache`; earlier 5.x `past_key_values`
        key = "cache" if "cache" in out else "past_key_values"
        out = model(input_ids=token[:, None], use_cache=True, **{key: out[key]})


def first_line(text: str) -> tuple[str, bool]:
    """(text up to the first newline that follows some content, whether there was one): a TL;DR is
    one line, the convention preftune.generate uses too."""
    lead = len(text) - len(text.lstrip())
    cut = text.find("\n", lead)
    return (text, False) if cut < 0 else (text[:cut], True)


def visible(tokenizer, ids: list[int]) -> str:
    """The text of `ids`, without a trailing half-decoded multi-byte character."""
    return tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")


def stream_pair(models: list, tokenizer, prompt_ids: list[int], s: Sampling) -> Iterator[list[str]]:
    """Decode every model in lockstep, each seeded with s.seed; yield every side's text after each step.

    A side stops at EOS, at max_new_tokens, or at the end of its first line (the newline is dropped)."""
    eos = {tokenizer.eos_token_id} | set(_as_list(models[0].generation_config.eos_token_id))
    steps = [decode_steps(m, prompt_ids, s, eos) for m in models]
    ids: list[list[int]] = [[] for _ in models]
    texts = [""] * len(models)
    live = [True] * len(models)
    while any(live):
        grew = False
        for i, step in enumerate(steps):
            if not live[i]:
                continue
            token = next(step, None)
            if token is None:
                live[i] = False
                continue
            ids[i].append(token)
            texts[i], ended = first_line(visible(tokenizer, ids[i]))
            grew = True
            if ended:
                live[i] = False
                step.close()
        if grew:
            yield list(texts)


def _as_list(x) -> list[int]:
    return [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]
