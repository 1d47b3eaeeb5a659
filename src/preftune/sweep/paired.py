"""Runs told apart on the same validation pairs: each run's length-balanced accuracy minus a baseline run's,
with the paired bootstrap interval of stats.paired_balanced_difference (posts resampled, seeded, 2,000
draws), and whether the chosen run is distinguishable from the baseline (its interval excludes 0). Read
from eval.json's `pair_outcomes`; an eval.json from before them gives "not available", said why.
Used by `preftune report` (baseline: the one plain DPO run) and `preftune recipe` (docs/recipe.md).
"""

from __future__ import annotations

import dataclasses

from preftune import fmt
from preftune.errors import PreftuneError
from preftune.stats import MIN_RESAMPLES, PairOutcome, paired_balanced_difference

OUTCOMES_KEY = "pair_outcomes"  # the eval.json key dpo/evaluate.py writes them under
COLUMNS = ("key", "post_id", "correct", "chosen_tokens", "rejected_tokens")
SEED = 0
# the leaderboard's keys of a row's comparison with its data group's baseline
FIELDS = ("baseline", "vs_baseline_difference", "vs_baseline_ci95_low", "vs_baseline_ci95_high",
          "vs_baseline_distinguishable", "vs_baseline_status")
# settings that make a run more than plain DPO (loss sigmoid): train keys, then data keys (the pair options)
EXTRAS = {"train": ("nll_weight", "label_smoothing", "confidence_weight"), "data": ("min_confidence", "length_balance")}


def read_outcomes(result: dict | None, what: str) -> list[PairOutcome]:
    """The per-pair outcomes of a result file (eval.json); a PreftuneError saying why there are none."""
    if result is None:
        raise PreftuneError(f"{what} has no validation result (eval.json)")
    cols = result.get(OUTCOMES_KEY)
    if cols is None:
        raise PreftuneError(f"{what}'s eval.json predates per-pair outcomes (evaluate it again: preftune eval RUN)")
    if not isinstance(cols, dict) or any(not isinstance(cols.get(c), list) for c in COLUMNS) \
            or len({len(cols[c]) for c in COLUMNS}) != 1:
        raise PreftuneError(f"{what}'s eval.json: {OUTCOMES_KEY} is damaged (expected the lists {', '.join(COLUMNS)} "
                            "of one length); evaluate it again: preftune eval RUN")
    try:
        return [PairOutcome(str(k), str(p), float(bool(c)), float(a), float(b))
                for k, p, c, a, b in zip(*(cols[c] for c in COLUMNS))]
    except (TypeError, ValueError):
        raise PreftuneError(f"{what}'s eval.json: {OUTCOMES_KEY} holds a length that is not a number; evaluate it "
                            "again: preftune eval RUN") from None


def versus(result: dict | None, what: str, baseline: dict | None, baseline_name: str, reps: int = MIN_RESAMPLES,
           seed: int = SEED) -> dict:
    """`what`'s validation length-balanced accuracy minus `baseline_name`'s, paired: {"baseline", "difference",
    "ci95", "distinguishable", "status", and the bootstrap's n, posts, resamples, seed}; status "computed",
    or "not available: WHY" with the numbers None."""
    gap = {"baseline": baseline_name, "difference": None, "ci95": None, "distinguishable": None}
    try:
        d = paired_balanced_difference(read_outcomes(result, what), read_outcomes(baseline, baseline_name), reps, seed)
    except PreftuneError as e:
        return {**gap, "status": f"not available: {e}"}
    if d["difference"] is None:
        return {**gap, **d, "status": "not available: no chosen-longer or no chosen-shorter pair"}
    if d["ci95"] is None:
        return {**gap, **d, "status": f"not available: {d['posts']} post(s), too few to resample"}
    lo, hi = d["ci95"]
    return {**d, "baseline": baseline_name, "ci95": [lo, hi], "distinguishable": lo > 0 or hi < 0,
            "status": "computed"}


def interval_text(v: dict | None) -> str:
    """"+0.041 [−0.030, +0.112]", or the reason there is none."""
    if not v or v.get("difference") is None or v.get("ci95") is None:
        return (v or {}).get("status") or "not available"
    lo, hi = v["ci95"]
    return f"{fmt.number(v['difference'], 3, sign=True)} [{fmt.number(lo, 3, sign=True)}, {fmt.number(hi, 3, sign=True)}]"


def verdict(name: str, v: dict | None) -> str:
    """One sentence: is `name` (the chosen run) distinguishable from its baseline?"""
    if not v:
        return f"{name}: no paired comparison (no baseline)"
    if v["status"] != "computed":
        return f"{name} vs baseline {v['baseline']}: {v['status']}"
    if name == v["baseline"]:
        return f"{name} is the baseline itself"
    how = "distinguishable from" if v["distinguishable"] else "not distinguishable from"
    return (f"{name} is {how} the baseline {v['baseline']}: validation length-balanced accuracy difference "
            f"{interval_text(v)} (95% paired bootstrap over {v['posts']} posts, {v['n']} pairs, {v['resamples']:,} "
            f"resamples, seed {v['seed']}; the interval {'excludes' if v['distinguishable'] else 'includes'} 0)")


# ---- `preftune report`: the plain DPO run of each data group ---------------------------------------


def _defaults() -> dict[str, dict]:
    from preftune.config import DataConfig, TrainConfig

    def of(cls) -> dict:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    return {"train": of(TrainConfig), "data": of(DataConfig)}


def is_plain_dpo(config: dict) -> bool:
    """A run of loss sigmoid with none of EXTRAS set away from its default (a setting a run predates: default)."""
    defaults = _defaults()
    train = config.get("train") or {}
    return train.get("loss", "sigmoid") == "sigmoid" and all(
        (config.get(section) or {}).get(key, defaults[section].get(key)) == defaults[section].get(key)
        for section, keys in EXTRAS.items() for key in keys)


def plain_baseline(names_configs: list[tuple[str, dict]]) -> tuple[str | None, str]:
    """(the one plain DPO run among these, why it is the baseline) or (None, why there is none)."""
    plain = [name for name, config in names_configs if is_plain_dpo(config)]
    if len(plain) == 1:
        return plain[0], "the one plain DPO run (loss sigmoid, no extras)"
    if not plain:
        return None, "no baseline: no plain DPO run (loss sigmoid, no extras) among these runs"
    return None, f"no baseline: {len(plain)} plain DPO runs ({', '.join(sorted(plain))}), none singled out"


def add_to_rows(group: list[dict], runs: dict, evaluations: dict[str, dict]) -> str:
    """Each row of one data group (ranked) gets FIELDS against the group's plain DPO run; returns the group's
    note: the baseline and whether the best-ranked run is distinguishable from it."""
    name, why = plain_baseline([(r["run"], runs[r["run"]].config) for r in group])
    for row in group:
        v = versus(evaluations.get(row["run"]), row["run"], evaluations.get(name), name) if name else None
        ci = (v or {}).get("ci95") or (None, None)
        row.update(dict(zip(FIELDS, (name, (v or {}).get("difference"), ci[0], ci[1],
                                     (v or {}).get("distinguishable"), (v or {}).get("status") or why))))
        row["vs_baseline"] = v
    if name is None:
        return f"paired intervals: {why}"
    best = next((r for r in group if r["rank"] == 1), None)
    head = f"paired intervals vs baseline {name} ({why}), on validation only"
    return head + (f"; {verdict(best['run'], best['vs_baseline'])}" if best else "")


def cell(row: dict) -> str:
    """The leaderboard cell: the difference and its interval, "baseline", or "–"."""
    v = row.get("vs_baseline")
    if row.get("baseline") is None or not v:
        return "–"
    if row["run"] == row["baseline"]:
        return "baseline"
    return interval_text(v) if v["status"] == "computed" else "n/a"
