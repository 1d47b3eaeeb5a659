"""Length balancing (Singhal et al. 2023, arXiv:2310.03716): subsample preference pairs so that "the
longer completion wins" is exactly 50% in every band of length difference Δ = len(chosen) − len(rejected)
(tokens; bands of BALANCE_BIN tokens of |Δ|, each keeping a seeded sample as large as its mirror).
Equal-length pairs are all kept: they have no longer side to teach. The one home of this operation:
`--length-balance` (DPO, the reward model) and `--debias balance` call `balanced_indices`. Details:
docs/data.md.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import TypeVar

BALANCE_BIN = 10  # tokens: Singhal et al. 2023 balance Δlength in bins of 10
SIDES = ("chosen_longer", "chosen_shorter", "equal")

T = TypeVar("T")


def token_lengths(tokenizer, texts: list[str]) -> list[int]:
    """Each text's length in the tokenizer's tokens (no special tokens): the length pairs are balanced on."""
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def side(chosen: int, rejected: int) -> str:
    """Which SIDES entry a pair of completion lengths falls on."""
    return "equal" if chosen == rejected else "chosen_longer" if chosen > rejected else "chosen_shorter"


def side_counts(chosen_len: list[int], rejected_len: list[int]) -> dict[str, int]:
    """{chosen_longer, chosen_shorter, equal: pairs}."""
    counts = Counter(side(a, b) for a, b in zip(chosen_len, rejected_len, strict=True))
    return {name: counts[name] for name in SIDES}


def band_counts(chosen_len: list[int], rejected_len: list[int]) -> dict[str, dict[str, int]]:
    """{"0-9": {chosen_longer, chosen_shorter}, "10-19": …} by |Δ| band (Δ = 0 excluded: see `side_counts`)."""
    bands: dict[int, Counter] = {}
    for a, b in zip(chosen_len, rejected_len, strict=True):
        if a != b:
            bands.setdefault(abs(a - b) // BALANCE_BIN, Counter())[side(a, b)] += 1
    return {f"{k * BALANCE_BIN}-{(k + 1) * BALANCE_BIN - 1}": {s: c[s] for s in SIDES[:2]}
            for k, c in sorted(bands.items())}


def balanced_indices(chosen_len: list[int], rejected_len: list[int], seed: int) -> list[int]:
    """Indices of the pairs kept (in order): per |Δ| band, min(longer, shorter) of each side, sampled
    with random.Random(seed); every Δ = 0 pair."""
    bands: dict[tuple[int, bool], list[int]] = {}
    for i, (a, b) in enumerate(zip(chosen_len, rejected_len, strict=True)):
        if a != b:
            bands.setdefault((abs(a - b) // BALANCE_BIN, a > b), []).append(i)
    keep = {i for i, (a, b) in enumerate(zip(chosen_len, rejected_len)) if a == b}
    rng = random.Random(seed)
    for (band, longer), idx in sorted(bands.items()):
        if longer:
            mirror = bands.get((band, False), [])
            n = min(len(idx), len(mirror))
            keep |= set(rng.sample(idx, n)) | set(rng.sample(mirror, n))
    return sorted(keep)


def length_balanced(pairs: list[T], chosen_len: list[int], rejected_len: list[int], seed: int) -> list[T]:
    """The pairs at `balanced_indices`, in their original order."""
    return [pairs[i] for i in balanced_indices(chosen_len, rejected_len, seed)]
