"""Options that choose which TRAINING pairs a run learns from: --min-confidence, then --length-balance.

Applied to the train split only, after the post-disjoint split (validation and test stay as prepared,
so runs with and without the options are measured on the same pairs) and before --max-pairs (so
--max-pairs N still gives N pairs when the filtered pool has that many, sampled from the filtered pool;
a sample of a balanced pool is balanced in expectation, not exactly). The confidence filter runs first
so that balancing sees the pairs that will actually be trained on. Every removed pair is counted under
its reason, and the counts go into the run's data statistics (`data_stats.train_options` in
preftune_config.json; `rm_config.json` for a reward model).
"""

from __future__ import annotations

import logging
from collections import Counter

from preftune.config import DataConfig
from preftune.data.balance import (
    BALANCE_BIN,
    balanced_indices,
    band_counts,
    side_counts,
    token_lengths,
)
from preftune.data.pairs import Pair, Tally
from preftune.errors import PreftuneError

logger = logging.getLogger(__name__)

NO_CONFIDENCE = "no labeller confidence"
BALANCE_REASON = "length balance"


def confidence_strength(pair: Pair) -> int | None:
    """How sure the labeller was, 0 (raw 5: unsure) … 4 (raw 1 or 9), from summarize_from_feedback's 1–9
    `confidence_raw`; None when the pair has none (other formats; rows with a null extra.confidence)."""
    raw = pair.meta.get("confidence_raw")
    return None if raw is None else abs(int(raw) - 5)


def strength_counts(pairs: list[Pair]) -> dict[str, int]:
    """{strength: pairs} in order ("none": pairs without one); {} when no pair has a confidence."""
    counts = Counter(confidence_strength(p) for p in pairs)
    if not any(k is not None for k in counts):
        return {}
    return {("none" if k is None else str(k)): counts[k] for k in sorted(counts, key=lambda k: (k is None, k or 0))}


def min_confidence(pairs: list[Pair], threshold: int, tally: Tally) -> list[Pair]:
    """The pairs of confidence strength ≥ threshold. A pair without a confidence is a counted skip
    (NO_CONFIDENCE); data in which no pair has one is an error (the option cannot mean anything there)."""
    if pairs and all(confidence_strength(p) is None for p in pairs):
        raise PreftuneError(f"--min-confidence {threshold}: none of the {len(pairs):,} training pairs has a labeller "
                            f"confidence (e.g. {pairs[0].source}); only summarize_from_feedback rows with "
                            "extra.confidence carry one: drop --min-confidence")
    kept = []
    for pair in pairs:
        strength = confidence_strength(pair)
        if strength is None:
            tally.skip(NO_CONFIDENCE, pair.source)
        elif strength < threshold:
            tally.skip(f"confidence below {threshold}", pair.source)
        else:
            kept.append(pair)
    return kept


def length_balance(pairs: list[Pair], tokenizer, seed: int, tally: Tally) -> tuple[list[Pair], dict]:
    """The pairs length-balanced (preftune.data.balance) on the tokenizer's completion lengths, and the
    per-side and per-band counts before and after."""
    chosen = token_lengths(tokenizer, [p.chosen for p in pairs])
    rejected = token_lengths(tokenizer, [p.rejected for p in pairs])
    keep = balanced_indices(chosen, rejected, seed)
    kept_set = set(keep)
    for i, pair in enumerate(pairs):
        if i not in kept_set:
            tally.skip(BALANCE_REASON, pair.source)
    after_c, after_r = [chosen[i] for i in keep], [rejected[i] for i in keep]
    stats = {"bin_tokens": BALANCE_BIN, "before": side_counts(chosen, rejected), "after": side_counts(after_c, after_r),
             "bands_before": band_counts(chosen, rejected), "bands_after": band_counts(after_c, after_r)}
    return [pairs[i] for i in keep], stats


def select_train_pairs(pairs: list[Pair], cfg: DataConfig, tokenizer) -> tuple[list[Pair], dict]:
    """The training pairs after --min-confidence and --length-balance (in that order; none set: as they are),
    and their statistics: pairs before/after each step, removals by reason (a Tally), the chosen-longer /
    shorter / equal counts, and the confidence strengths kept. Logs one line per option applied."""
    tally = Tally(total=len(pairs))
    stats: dict = {"pairs_before": len(pairs)}
    if cfg.min_confidence is not None:
        before = len(pairs)
        pairs = min_confidence(pairs, cfg.min_confidence, tally)
        stats["min_confidence"] = {"threshold": cfg.min_confidence, "before": before, "after": len(pairs)}
        logger.info(f"train data: --min-confidence {cfg.min_confidence}: kept {len(pairs):,} of {before:,} pairs")
    if cfg.length_balance:
        before = len(pairs)
        pairs, balance = length_balance(pairs, tokenizer, cfg.seed, tally)
        stats["length_balance"] = {"before_pairs": before, "after_pairs": len(pairs), **balance}
        sides = balance["after"]
        logger.info(f"train data: --length-balance: kept {len(pairs):,} of {before:,} pairs ({sides['chosen_longer']:,} "
                    f"chosen-longer, {sides['chosen_shorter']:,} chosen-shorter, {sides['equal']:,} equal length)")
    stats.update(pairs_after=len(pairs), removed=tally.to_json(), confidence_kept=strength_counts(pairs))
    for line in tally.details():
        logger.info(line)
    if not pairs and (cfg.min_confidence is not None or cfg.length_balance):
        raise PreftuneError(f"no training pairs left after the training-pair options ({tally.summary()}): lower "
                            "--min-confidence, drop --length-balance (a band needs both a chosen-longer and a "
                            "chosen-shorter pair), or use more data")
    return pairs, stats
