"""Statistics shared by evaluation, the reward model and the judge: pure functions, no torch.

Intervals are 95%: Wilson for a proportion (accuracy, win rate); Wald on Agresti–Caffo-adjusted
proportions for the length-balanced accuracy, the mean of the chosen-longer and chosen-shorter
accuracies (equal lengths reported apart), on which any pure length counter scores exactly 0.5.
Two runs on the same pairs: a paired bootstrap over posts of their length-balanced difference.
What each metric means and why: docs/evaluation.md.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from preftune.errors import PreftuneError

Z95 = 1.959963984540054
MIN_RESAMPLES = 2000  # the paired interval's floor: percentiles of fewer draws move with the seed


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion; None when n = 0. `successes` may be fractional
    (ties counted half), which keeps it a close approximation."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0))
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(successes: Sequence[bool | float]) -> dict:
    """{"n", "accuracy", "ci95"} of a list of 0/1 (or ½ for ties) outcomes; accuracy None when empty."""
    n = len(successes)
    x = float(sum(successes))
    return {"n": n, "accuracy": x / n if n else None, "ci95": wilson_interval(x, n)}


def balanced_interval(x1: float, n1: int, x2: float, n2: int, z: float = Z95) -> tuple[float, float] | None:
    """95% interval of ½(p1 + p2) for two independent proportions (Agresti–Caffo adjusted Wald)."""
    if n1 == 0 or n2 == 0:
        return None
    p1, p2 = (x1 + 1) / (n1 + 2), (x2 + 1) / (n2 + 2)
    centre = (x1 / n1 + x2 / n2) / 2
    half = z * math.sqrt(p1 * (1 - p1) / (n1 + 2) + p2 * (1 - p2) / (n2 + 2)) / 2
    return max(0.0, centre - half), min(1.0, centre + half)


def length_strata(correct: Sequence[bool | float], chosen_len: Sequence[float],
                  rejected_len: Sequence[float]) -> dict:
    """Accuracy overall and by length stratum, the length-balanced accuracy, and the "longer wins"
    baseline on the same pairs and lengths. `correct[i]` is 1 (ranked right), 0, or ½ (a counted tie).

    Returns {"n", "accuracy", "accuracy_ci95", "chosen_longer": {...}, "chosen_shorter": {...},
    "equal_length": {...}, "length_balanced_accuracy", "length_balanced_ci95",
    "longer_wins_baseline"}; each stratum is {"n", "accuracy", "ci95"}."""
    if not len(correct) == len(chosen_len) == len(rejected_len):
        raise ValueError("correct, chosen_len and rejected_len must have the same length")
    strata: dict[str, list[float]] = {"chosen_longer": [], "chosen_shorter": [], "equal_length": []}
    for c, a, b in zip(correct, chosen_len, rejected_len):
        strata[length_stratum(a, b)].append(float(c))
    overall = proportion([float(c) for c in correct])
    longer, shorter = strata["chosen_longer"], strata["chosen_shorter"]
    balanced = (sum(longer) / len(longer) + sum(shorter) / len(shorter)) / 2 if longer and shorter else None
    n = len(correct)
    return {
        "n": n,
        "accuracy": overall["accuracy"],
        "accuracy_ci95": overall["ci95"],
        **{k: proportion(v) for k, v in strata.items()},
        "length_balanced_accuracy": balanced,
        "length_balanced_ci95": balanced_interval(sum(longer), len(longer), sum(shorter), len(shorter)),
        # equal lengths count as wrong: the baseline cannot pick (as TRL counts reward ties)
        "longer_wins_baseline": len(longer) / n if n else None,
    }


def length_stratum(chosen_len: float, rejected_len: float) -> str:
    """"chosen_longer", "chosen_shorter" or "equal_length": the stratum a pair is counted in."""
    return "chosen_longer" if chosen_len > rejected_len else "chosen_shorter" if chosen_len < rejected_len \
        else "equal_length"


def by_group(correct: Sequence[bool | float], groups: Sequence[object]) -> dict[str, dict]:
    """{group: {"n", "accuracy", "ci95"}} for rows with a group (None groups are left out), sorted."""
    buckets: dict[str, list[float]] = {}
    for c, g in zip(correct, groups, strict=True):
        if g is not None:
            buckets.setdefault(str(g), []).append(float(c))
    return {g: proportion(v) for g, v in sorted(buckets.items(), key=lambda kv: _natural(kv[0]))}


def _natural(key: str) -> tuple:
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


# ---- win rates (the judge) ----------------------------------------------------------------------


def outcomes(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """1 where a's reward is higher, 0.5 on a tie, 0 where b's is higher."""
    return [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True)]


def win_stats(results: Sequence[float]) -> dict:
    n = len(results)
    wins, ties = list(results).count(1.0), list(results).count(0.5)
    rate = (wins + ties / 2) / n if n else None
    return {"n": n, "wins": wins, "ties": ties, "losses": n - wins - ties, "win_rate": rate,
            "ci95": wilson_interval(wins + ties / 2, n)}


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def length_controlled_win_rate(results: Sequence[float], len_a: Sequence[float], len_b: Sequence[float],
                               ridge: float = 1e-2) -> float | None:
    """Win rate at equal length: fit P(a wins) = σ(θ + φ·tanh(Δ/sd(Δ))), Δ = len_a − len_b, by
    (ridge-regularised) maximum likelihood with ties as ½ targets, and return σ(θ). This is
    AlpacaEval's length-controlled win rate (Dubois et al. 2024, Eq. 2) reduced to one comparison.
    Newton's method on two parameters; None for no data."""
    if not results:
        return None
    deltas = [a - b for a, b in zip(len_a, len_b, strict=True)]
    sd = statistics.pstdev(deltas)
    xs = [math.tanh(d / sd) if sd > 0 else 0.0 for d in deltas]
    theta = phi = 0.0
    for _ in range(100):
        g0, g1, h00, h01, h11 = ridge * theta, ridge * phi, ridge, 0.0, ridge
        for x, y in zip(xs, results):
            p = _sigmoid(theta + phi * x)
            g0, g1 = g0 + (p - y), g1 + (p - y) * x
            w = p * (1 - p)
            h00, h01, h11 = h00 + w, h01 + w * x, h11 + w * x * x
        det = h00 * h11 - h01 * h01
        step0, step1 = (h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det
        theta, phi = theta - step0, phi - step1
        if abs(step0) + abs(step1) < 1e-10:
            break
    return _sigmoid(theta)


def bootstrap_interval(values: Sequence[float], groups: Sequence[object], stat, reps: int = 1000,
                       seed: int = 0) -> tuple[float, float] | None:
    """95% percentile bootstrap interval of `stat(rows)` resampling whole groups (posts), seeded.
    For statistics without a closed form (the length-controlled win rate): rows of one post move
    together, so the interval accounts for posts that contribute several rows."""
    by: dict[object, list] = {}
    for v, g in zip(values, groups, strict=True):
        by.setdefault(g, []).append(v)
    keys = list(by)
    if len(keys) < 2:
        return None
    rng, draws = random.Random(seed), []
    for _ in range(reps):
        rows = [v for k in rng.choices(keys, k=len(keys)) for v in by[k]]
        value = stat(rows)
        if value is not None:
            draws.append(value)
    return percentile_interval(draws)


def percentile_interval(draws: list[float]) -> tuple[float, float] | None:
    """The 2.5th and 97.5th percentiles of bootstrap draws (None for none)."""
    if not draws:
        return None
    draws = sorted(draws)
    return draws[int(0.025 * (len(draws) - 1))], draws[int(math.ceil(0.975 * (len(draws) - 1)))]


# ---- two runs on the same pairs -----------------------------------------------------------------


@dataclass(frozen=True)
class PairOutcome:
    """One evaluated pair as a paired comparison needs it (eval.json's `pair_outcomes`, one row)."""

    key: str  # the same pair in another run's evaluation has the same key
    post_id: str  # pairs of one post are resampled together
    correct: float  # 1 ranked right, 0 wrong
    chosen_len: float
    rejected_len: float


def aligned(a: Sequence[PairOutcome], b: Sequence[PairOutcome]) -> list[tuple[PairOutcome, PairOutcome]]:
    """(a's, b's) outcome of each pair, in a's order; pairs not common to both, or told apart
    differently (post, stratum), are refused: the difference would not be paired."""
    for name, side in (("A", a), ("B", b)):
        keys = [o.key for o in side]
        if len(set(keys)) != len(keys):
            raise PreftuneError(f"run {name}'s per-pair outcomes name a pair twice "
                                f"({next(k for k in keys if keys.count(k) > 1)}): each key must be unique")
    of_b = {o.key: o for o in b}
    only_a, only_b = [o.key for o in a if o.key not in of_b], set(of_b) - {o.key for o in a}
    if only_a or only_b:
        example = (only_a or sorted(only_b))[0]
        raise PreftuneError(f"the two runs were evaluated on different pairs ({len(only_a)} only in A, {len(only_b)} "
                            f"only in B, e.g. {example}): a paired comparison needs the same pairs (same data, "
                            "split, seed and --max-eval-pairs)")
    rows = [(o, of_b[o.key]) for o in a]
    for x, y in rows:
        if x.post_id != y.post_id or length_stratum(x.chosen_len, x.rejected_len) != \
                length_stratum(y.chosen_len, y.rejected_len):
            raise PreftuneError(f"pair {x.key} has another post or length stratum in run B than in run A "
                                "(different tokenizers?): the runs cannot be compared pair by pair")
    return rows


def paired_balanced_difference(a: Sequence[PairOutcome], b: Sequence[PairOutcome], reps: int = MIN_RESAMPLES,
                               seed: int = 0) -> dict:
    """Run A's length-balanced accuracy minus run B's on the same pairs, with a 95% percentile interval from
    a paired bootstrap: posts (every pair of a post together) resampled with replacement, `reps` times,
    seeded; a draw that leaves a length stratum empty is not counted. The balanced accuracy is
    `length_strata`'s; since both runs share the strata, the difference is ½(Δ chosen-longer + Δ
    chosen-shorter). Returns {"difference", "ci95", "n", "posts", "resamples", "resamples_used", "seed"};
    difference None when a stratum is empty, ci95 None with fewer than 2 posts."""
    if reps < MIN_RESAMPLES:
        raise ValueError(f"reps must be at least {MIN_RESAMPLES}, got {reps}")
    rows = aligned(a, b)
    lengths = ([x.chosen_len for x, _ in rows], [x.rejected_len for x, _ in rows])
    point_a = length_strata([x.correct for x, _ in rows], *lengths)["length_balanced_accuracy"]
    point_b = length_strata([y.correct for _, y in rows], *lengths)["length_balanced_accuracy"]
    # per post: (Σ a−b over chosen-longer, n chosen-longer, Σ a−b over chosen-shorter, n chosen-shorter)
    sums: dict[str, list[float]] = {}
    for x, y in rows:
        s = sums.setdefault(x.post_id, [0.0, 0, 0.0, 0])
        stratum = length_stratum(x.chosen_len, x.rejected_len)
        at = 0 if stratum == "chosen_longer" else 2 if stratum == "chosen_shorter" else None
        if at is not None:
            s[at] += x.correct - y.correct
            s[at + 1] += 1
    posts = list(sums.values())
    draws = []
    if point_a is not None and point_b is not None and len(posts) >= 2:
        rng = random.Random(seed)
        for _ in range(reps):
            dl = nl = ds = ns = 0
            for s in rng.choices(posts, k=len(posts)):
                dl, nl, ds, ns = dl + s[0], nl + s[1], ds + s[2], ns + s[3]
            if nl and ns:
                draws.append((dl / nl + ds / ns) / 2)
    return {"difference": None if point_a is None or point_b is None else point_a - point_b,
            "ci95": percentile_interval(draws), "n": len(rows), "posts": len(posts), "resamples": reps,
            "resamples_used": len(draws), "seed": seed}


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation; None when either side is constant or there are < 2 points."""
    n = len(x)
    if n < 2:
        return None
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def _ranks(x: Sequence[float]) -> list[float]:
    """Average ranks (ties share the mean of their positions), 1-based."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    ranks = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (Pearson on average ranks); None when undefined."""
    return pearson(_ranks(x), _ranks(y)) if len(x) >= 2 else None
