"""Sampling and the split by post: train / validation / test share no post (the pairs of one post share
its prompt: splitting them would put the post in training and in evaluation), and the statistics
stored for each split."""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Iterable

from preftune.config import check_fractions
from preftune.data.pairs import Pair
from preftune.errors import PreftuneError

logger = logging.getLogger(__name__)


def take_fraction(pairs: list[Pair], fraction: float, seed: int) -> list[Pair]:
    """A seeded random `fraction` of the pairs (at least one), in their original order."""
    if fraction >= 1.0:
        return list(pairs)
    n = max(1, round(fraction * len(pairs)))
    chosen = sorted(random.Random(seed).sample(range(len(pairs)), n))
    return [pairs[i] for i in chosen]


def _hold(posts: list[str], per_post: Counter, target: int) -> int:
    """How many posts, from the front of `posts`, hold at least `target` pairs (all of them if fewer)."""
    held = n = 0
    for post in posts:
        if held >= target:
            break
        held, n = held + per_post[post], n + 1
    return n


def split_by_post(pairs: list[Pair], eval_fraction: float, test_fraction: float, seed: int
                  ) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """(train, validation, test), disjoint by post. The posts are shuffled (seed + 1); validation takes
    posts from the front until ≥ eval_fraction of the pairs are held, test the posts after them until
    ≥ test_fraction are; at least one post always stays in train. Validation comes first so that it is
    exactly the held-out set of preftune before the test split existed (test_fraction=0 reproduces the
    old train/eval split; old run folders re-prepare the same validation)."""
    check_fractions(eval_fraction, test_fraction)
    if eval_fraction == 0 and test_fraction == 0:
        return list(pairs), [], []
    posts = sorted({p.post_id for p in pairs})
    if len(posts) < 2:
        raise PreftuneError(f"cannot split by post: the data has {len(posts)} distinct post(s); need ≥ 2 (or pass "
                            "--eval-fraction 0 --test-fraction 0 to keep every pair for training)")
    random.Random(seed + 1).shuffle(posts)
    per_post = Counter(p.post_id for p in pairs)
    candidates = posts[:-1]  # always leave at least one post for training
    n_val = _hold(candidates, per_post, math.ceil(eval_fraction * len(pairs)))
    n_test = _hold(candidates[n_val:], per_post, math.ceil(test_fraction * len(pairs)))
    validation, test = set(candidates[:n_val]), set(candidates[n_val:n_val + n_test])
    if test_fraction > 0 and not test:
        logger.warning(f"data: too few posts ({len(posts)}) for a test split: test is empty")
    return ([p for p in pairs if p.post_id not in validation and p.post_id not in test],
            [p for p in pairs if p.post_id in validation], [p for p in pairs if p.post_id in test])


# ---- statistics ----------------------------------------------------------------------------------


def longer_wins(pairs: Iterable[Pair]) -> float | None:
    """Accuracy of the 'longer completion (in characters) is preferred' baseline. Equal lengths
    count as wrong (the baseline cannot pick), as TRL counts reward ties."""
    scores = [len(p.chosen) > len(p.rejected) for p in pairs]
    return sum(scores) / len(scores) if scores else None


def confidence_counts(counts: Counter) -> dict[str, int]:
    """{labeller confidence: pairs} (summarize_from_feedback's extra.confidence, 1-9), in order, with
    "none" for pairs of such data without one; {} when no pair has a confidence."""
    if not any(k is not None for k in counts):
        return {}
    return {("none" if k is None else str(k)): counts[k] for k in sorted(counts, key=lambda k: (k is None, k or 0))}


def split_stats(pairs: list[Pair]) -> dict:
    by_batch = Counter(str(p.meta.get("batch")) for p in pairs if p.meta.get("batch"))
    return {
        "pairs": len(pairs),
        "posts": len({p.post_id for p in pairs}),
        "longer_wins": longer_wins(pairs),
        "by_batch": dict(sorted(by_batch.items())),
        "by_confidence": confidence_counts(Counter(p.meta["confidence_raw"] for p in pairs
                                                   if "confidence_raw" in p.meta)),
    }
