"""Truncation that keeps the summary: trim the post so prompt + completion fit --max-length.

TRL 1.x cuts prompt+completion from the right (the summary's end goes first) and drops pairs whose
prompt alone is too long. Here the post body (`Pair.body_span`) is cut at a token boundary instead,
so the `TL;DR:` cue and both whole completions (+ EOS) always survive. Lengths are measured exactly
as TRL's DPOTrainer tokenizes: `tokenizer(prompt + completion + eos)`.
"""

from __future__ import annotations

from dataclasses import replace

from preftune.data.prepare import Pair, Tally


def sequence_length(tokenizer, prompt: str, completion: str) -> int:
    eos = tokenizer.eos_token or ""
    text = prompt + completion + ("" if completion.endswith(eos) else eos)
    return len(tokenizer(text)["input_ids"])


def pair_length(tokenizer, pair: Pair) -> int:
    """Tokens of the longer of the two sequences (prompt + chosen, prompt + rejected)."""
    return max(sequence_length(tokenizer, pair.prompt, pair.chosen),
               sequence_length(tokenizer, pair.prompt, pair.rejected))


def _cut_body(pair: Pair, keep_chars: int) -> Pair:
    start, end = pair.body_span
    body = pair.prompt[start:end][:keep_chars].rstrip()
    prompt = pair.prompt[:start] + body + pair.prompt[end:]
    return replace(pair, prompt=prompt, body_span=(start, start + len(body)))


def fit_pair(tokenizer, pair: Pair, max_length: int) -> Pair | None:
    """The pair, its body cut (at a token boundary) just enough to fit; None if it cannot fit."""
    over = pair_length(tokenizer, pair) - max_length
    if over <= 0:
        return pair
    if pair.body_span is None:
        return None
    start, end = pair.body_span
    offsets = tokenizer(pair.prompt[start:end], return_offsets_mapping=True, add_special_tokens=False)[
        "offset_mapping"]
    keep = len(offsets) - over  # tokens of the body to keep; merges at the seam can shift by a few
    while keep > 0:
        candidate = _cut_body(pair, offsets[keep][0] if keep < len(offsets) else end - start)
        over = pair_length(tokenizer, candidate) - max_length
        if over <= 0:
            return candidate
        keep -= max(over, 1)
    candidate = _cut_body(pair, 0)
    return candidate if pair_length(tokenizer, candidate) <= max_length else None


def fit_pairs(tokenizer, pairs: list[Pair], max_length: int, tally: Tally) -> tuple[list[Pair], int]:
    """Fit every pair; returns (fitted pairs, how many were trimmed). Unfittable pairs are skipped in
    `tally` under "completion longer than max_length"."""
    fitted, trimmed = [], 0
    for pair in pairs:
        tally.total += 1
        out = fit_pair(tokenizer, pair, max_length)
        if out is None:
            tally.skip("completion longer than max_length", pair.source)
            continue
        trimmed += out is not pair
        fitted.append(out)
    return fitted, trimmed
