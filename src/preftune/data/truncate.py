"""Truncation that keeps the completions: trim the prompt so prompt + completion fit --max-length.

TRL 1.x cuts prompt+completion from the right (the completion's end goes first) and drops pairs whose
prompt alone is too long. Here only the prompt's trimmable span (`Pair.body_span`) is cut, as its
format says (`Pair.cut`, see `preftune.data.adapters`), just enough to fit:
  "end"    TL;DR/CNN-DM: the post's end, at a token boundary; the `TL;DR:` cue stays;
  "start"  plain prompts: the prompt's start, at a token boundary; its end (next to the reply) stays;
  "turns"  dialogues (HH-RLHF, chat): the oldest whole turns; the system message and last turn stay.
Both whole completions (+ EOS) always survive; a pair that cannot fit is a counted skip. Lengths are
measured exactly as TRL's DPOTrainer tokenizes: `tokenizer(prompt + completion + eos)`.
"""

from __future__ import annotations

from dataclasses import replace

from preftune.data.pairs import Pair, Tally
from preftune.data.sequence import sequence_text


def sequence_length(tokenizer, prompt: str, completion: str) -> int:
    return len(tokenizer(sequence_text(prompt, completion, tokenizer.eos_token))["input_ids"])


def pair_length(tokenizer, pair: Pair) -> int:
    """Tokens of the longer of the two sequences (prompt + chosen, prompt + rejected)."""
    return max(sequence_length(tokenizer, pair.prompt, pair.chosen),
               sequence_length(tokenizer, pair.prompt, pair.rejected))


def _cut_body(pair: Pair, keep_chars: int) -> Pair:
    start, end = pair.body_span
    body = pair.prompt[start:end][:keep_chars].rstrip()
    prompt = pair.prompt[:start] + body + pair.prompt[end:]
    return replace(pair, prompt=prompt, body_span=(start, start + len(body)))


def _remove(pair: Pair, a: int, b: int) -> Pair:
    """The pair with prompt[a:b] removed from the start of its span (a == body_span[0])."""
    removed = b - a
    start, end = pair.body_span
    turns = tuple(t - removed for t in pair.turns if t > b)
    return replace(pair, prompt=pair.prompt[:a] + pair.prompt[b:], body_span=(start, end - removed), turns=turns)


def _fits(tokenizer, pair: Pair, max_length: int) -> int:
    """Tokens over max_length (≤ 0: it fits)."""
    return pair_length(tokenizer, pair) - max_length


def _trim_end(tokenizer, pair: Pair, max_length: int, over: int) -> Pair | None:
    start, end = pair.body_span
    offsets = tokenizer(pair.prompt[start:end], return_offsets_mapping=True, add_special_tokens=False)[
        "offset_mapping"]
    keep = len(offsets) - over  # tokens of the body to keep; merges at the seam can shift by a few
    while keep > 0:
        candidate = _cut_body(pair, offsets[keep][0] if keep < len(offsets) else end - start)
        over = _fits(tokenizer, candidate, max_length)
        if over <= 0:
            return candidate
        keep -= max(over, 1)
    candidate = _cut_body(pair, 0)
    return candidate if _fits(tokenizer, candidate, max_length) <= 0 else None


def _trim_start(tokenizer, pair: Pair, max_length: int, over: int) -> Pair | None:
    start, end = pair.body_span
    offsets = tokenizer(pair.prompt[start:end], return_offsets_mapping=True, add_special_tokens=False)[
        "offset_mapping"]
    drop = over  # tokens to drop from the span's start; at least one token of it is kept
    while drop < len(offsets):
        candidate = _remove(pair, start, start + offsets[drop][0])
        over = _fits(tokenizer, candidate, max_length)
        if over <= 0:
            return candidate
        drop += max(over, 1)
    return None


def _drop_turns(tokenizer, pair: Pair, max_length: int, over: int) -> Pair | None:
    start = pair.body_span[0]
    for t in pair.turns:  # oldest turns first: drop as few as fit
        candidate = _remove(pair, start, t)
        if _fits(tokenizer, candidate, max_length) <= 0:
            return candidate
    return None


TRIMMERS = {"end": _trim_end, "start": _trim_start, "turns": _drop_turns}


def fit_pair(tokenizer, pair: Pair, max_length: int) -> Pair | None:
    """The pair, its prompt trimmed (see the module docstring) just enough to fit; None if it cannot."""
    over = _fits(tokenizer, pair, max_length)
    if over <= 0:
        return pair
    if pair.body_span is None or pair.cut == "turns" and not pair.turns:
        return None
    return TRIMMERS[pair.cut](tokenizer, pair, max_length, over)


def unfit_reason(pair: Pair) -> str:
    """The skip reason of a pair `fit_pair` could not fit."""
    if pair.body_span is None or pair.cut == "turns" and not pair.turns:
        return "too long for max_length, prompt not trimmable (one turn)"
    if pair.cut == "turns":
        return "too long for max_length with only the last turn"
    return "completion longer than max_length"


def fit_pairs(tokenizer, pairs: list[Pair], max_length: int, tally: Tally) -> tuple[list[Pair], int]:
    """Fit every pair; returns (fitted pairs, how many were trimmed). Unfittable pairs are skipped in
    `tally` under a reason from `unfit_reason` (TL;DR: "completion longer than max_length")."""
    fitted, trimmed = [], 0
    for pair in pairs:
        tally.total += 1
        out = fit_pair(tokenizer, pair, max_length)
        if out is None:
            tally.skip(unfit_reason(pair), pair.source)
            continue
        trimmed += out is not pair
        fitted.append(out)
    return fitted, trimmed
