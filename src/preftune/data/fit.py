"""Fit prepared pairs to a run: a seeded subsample (--max-pairs, --max-eval-pairs) and truncation to
--max-length with the counts reported. Used by train, evaluate, the reward model and the judge."""

from __future__ import annotations

import logging
import random

from preftune.data.pairs import Pair, Tally
from preftune.data.truncate import fit_pairs

logger = logging.getLogger(__name__)


def subsample(pairs: list[Pair], n: int | None, seed: int) -> list[Pair]:
    """At most n pairs, a seeded sample kept in the original order (all of them when n is None)."""
    if n is None or n >= len(pairs):
        return pairs
    return [pairs[i] for i in sorted(random.Random(seed).sample(range(len(pairs)), n))]


def fit(tokenizer, pairs: list[Pair], max_length: int, what: str) -> tuple[list[Pair], dict]:
    """The pairs trimmed to max_length (completions whole; unfittable ones a counted skip), logged, and
    the counts {"trimmed", "total", "kept", "skipped", "examples"} for the run's config file."""
    tally = Tally()
    fitted, trimmed = fit_pairs(tokenizer, pairs, max_length, tally)
    logger.info(f"{what}: {len(fitted):,} pairs fit max_length={max_length}; {trimmed:,} had their prompt trimmed "
                f"(completions kept whole); {tally.summary()}")
    return fitted, {"trimmed": trimmed, **tally.to_json()}
