"""The leaderboard: every finished run under ROOT as one row, ranked on validation, the best scored on test.

Rows come from what each run folder holds (through preftune.runs.folder, which checks it); a damaged
eval.json, metrics.json or judge.json is a gap and one warning. Runs scored on different validation
data are grouped and ranked within their group, never against each other. Only the best `--select N`
on validation are scored on test (test.json, computed once), so nothing is chosen on test.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable
from pathlib import Path

from preftune import fmt
from preftune.errors import PreftuneError
from preftune.runs import folder as run_folder
from preftune.runs.folder import TEST_PAIRS_FILE
from preftune.runs.results import Run, open_run
from preftune.sweep import paired

logger = logging.getLogger(__name__)

# The metrics a leaderboard can be ranked by (= ReportConfig.rank_by's choices); higher is better.
RANKINGS = {
    "length_balanced_accuracy": "length-balanced accuracy",
    "accuracy": "accuracy",
    "mean_margin": "mean reward margin",
    "chosen_shorter_accuracy": "accuracy where the chosen summary is shorter",
    "chosen_longer_accuracy": "accuracy where the chosen summary is longer",
}
DEFAULT_RANK = "length_balanced_accuracy"
HYPERPARAMETERS = ("lr", "batch_size", "epochs", "beta", "loss", "lora", "engine")
STRATA = ("chosen_longer", "chosen_shorter", "equal_length")
EXTRA_METRICS = ("mean_margin", "mean_chosen_reward", "mean_rejected_reward", "mean_logp_drift",
                 "mean_abs_logp_drift_per_token", "reference_logp_accuracy")


def result_keys(prefix: str) -> list[str]:
    """The leaderboard keys of one result (eval.json with prefix "", test.json with "test_")."""
    keys = [f"{prefix}accuracy", f"{prefix}accuracy_ci95_low", f"{prefix}accuracy_ci95_high",
            f"{prefix}length_balanced_accuracy", f"{prefix}length_balanced_ci95_low",
            f"{prefix}length_balanced_ci95_high"]
    for s in STRATA:
        keys += [f"{prefix}{s}_accuracy", f"{prefix}{s}_n", f"{prefix}{s}_ci95_low", f"{prefix}{s}_ci95_high"]
    return keys + [f"{prefix}longer_wins_baseline", *(prefix + k for k in EXTRA_METRICS),
                   "eval_pairs" if not prefix else "test_pairs", f"{prefix}split", f"{prefix}dataset"]


FIELDS = ["rank", "run", "chain", *HYPERPARAMETERS, *result_keys(""), "train_pairs", "steps", "train_runtime_s",
          "tokens_per_s", "pairs_per_s", "final_loss", "final_train_reward_accuracy",
          "judge_win_rate", "judge_length_controlled_win_rate", "judge_n", "judge_verdict_strength",
          "judge_rm_accuracy", "rank_by", "eval_data", "data_group", "runs_compared", *paired.FIELDS, "selected",
          "test_status", *result_keys("test_")]
PREDATES = "n/a (run predates the test split)"


# ---- reading runs --------------------------------------------------------------------------------


def gap_on_damage(read: Callable[[], dict | None], what: str) -> dict:
    """A file's checked content; a damaged file is a warning and an empty result (its columns show –)."""
    try:
        return read() or {}
    except PreftuneError as e:
        logger.warning(f"warning: {e} — its {what} are shown as –")
        return {}


def result_columns(result: dict, prefix: str = "") -> dict:
    """One result file's metrics as flat leaderboard keys (intervals as _low/_high); gaps are None."""
    def interval(ci) -> tuple:
        return tuple(fmt.finite_pair(ci) or (None, None))

    row = {f"{prefix}accuracy": result.get("accuracy"),
           f"{prefix}length_balanced_accuracy": result.get("length_balanced_accuracy")}
    row[f"{prefix}accuracy_ci95_low"], row[f"{prefix}accuracy_ci95_high"] = interval(result.get("accuracy_ci95"))
    row[f"{prefix}length_balanced_ci95_low"], row[f"{prefix}length_balanced_ci95_high"] = \
        interval(result.get("length_balanced_ci95"))
    for s in STRATA:
        stratum = result.get(s) or {}
        row[f"{prefix}{s}_accuracy"], row[f"{prefix}{s}_n"] = stratum.get("accuracy"), stratum.get("n")
        row[f"{prefix}{s}_ci95_low"], row[f"{prefix}{s}_ci95_high"] = interval(stratum.get("ci95"))
    row[f"{prefix}longer_wins_baseline"] = result.get("longer_wins_baseline")
    row.update({prefix + k: result.get(k) for k in EXTRA_METRICS})
    row["eval_pairs" if not prefix else "test_pairs"] = result.get("n")
    row[f"{prefix}split"], row[f"{prefix}dataset"] = result.get("split"), result.get("dataset")
    return row


def _setting(value):
    """A hyperparameter as the table shows it: scalars as they are, anything else as text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def run_row(run: Run) -> dict:
    """One leaderboard row from a finished run: its settings, validation metrics, training figures and
    judge headline (gaps are None). Test columns are filled in only for the runs chosen later."""
    metrics = gap_on_damage(run.metrics, "training figures")
    evaluation = gap_on_damage(run.evaluation, "validation metrics")
    final = metrics.get("final") or {}
    return {
        "rank": None,
        "run": run.name,
        "chain": run_folder.chain_text(run.chain),  # base → [SFT →] DPO
        **{k: _setting(run.train.get(k)) for k in HYPERPARAMETERS},
        **result_columns(evaluation),
        "train_pairs": metrics.get("train_pairs"),
        "steps": metrics.get("steps"),
        "train_runtime_s": metrics.get("train_runtime_s"),
        "tokens_per_s": metrics.get("tokens_per_s"),
        "pairs_per_s": metrics.get("pairs_per_s"),
        "final_loss": final.get("loss"),
        "final_train_reward_accuracy": final.get("rewards/accuracies"),
        # from `preftune judge` (judge.json), when it was run: generations scored by a reward model
        **{k: v for k, v in run_folder.judge_summary(gap_on_damage(run.judge, "judge results")).items()
           if k != "judge_win_rate_ci95"},
        "rank_by": None, "eval_data": eval_data(run, evaluation), "data_group": None, "runs_compared": None,
        "selected": False, "test_status": None,
        **dict.fromkeys(result_keys("test_")),
    }


def dataset_label(spec: str) -> str:
    """A dataset as reports and cards name it: a hub id or a shipped sample as it is, a local file or
    folder by its name only (a card is public; the folders of the machine it was made on are not)."""
    from preftune.data.sources import SHIPPED
    from preftune.hubids import looks_local

    return spec if spec in SHIPPED or not looks_local(spec) else (Path(spec).name or spec)


# The data settings that decide which validation pairs a run is scored on (with --max-eval-pairs);
# --max-length is the run's (it trims prompts), not the data's.
SPLIT_SETTINGS = (("fraction", "fraction"), ("eval_fraction", "validation"), ("test_fraction", "test"), ("seed", "seed"))
SOURCE_SETTINGS = (("format", "auto"), ("hub_config", None), ("split", "train"), ("column_map", None))


def eval_data(run: Run, evaluation: dict) -> str:
    """What a run's validation metrics were computed on, e.g. "tldr-sample (fraction 0.05, validation
    0.1, test 0.1, seed 42)": runs with different labels were scored on different pairs, so they are
    ranked apart, never against each other."""
    data = run.config["data"]
    settings = [f"{name} {data.get(key, 0.0 if key == 'test_fraction' else '?')}" for key, name in SPLIT_SETTINGS]
    settings += [f"{key} {data[key]}" for key, default in SOURCE_SETTINGS if data.get(key, default) != default]
    if run.train.get("max_eval_pairs") is not None:
        settings.append(f"at most {run.train['max_eval_pairs']} pairs")
    return f"{dataset_label(str(evaluation.get('dataset') or run.dataset))} ({', '.join(settings)})"




def rankable(row: dict, rank_by: str) -> bool:
    """A run has a valid ranking when its metric and its core validation numbers are finite numbers
    (a NaN margin means the model diverged: its accuracy means nothing)."""
    return all(fmt.is_finite(row.get(k)) for k in (rank_by, "accuracy", "mean_margin"))


def rank_rows(rows: list[dict], rank_by: str = DEFAULT_RANK) -> list[dict]:
    """Best `rank_by` first (ties: length-balanced accuracy, accuracy, margin, name); runs without a
    valid ranking (not evaluated, older eval.json without the metric, NaN) last, with no rank.

    Runs scored on different validation data (`eval_data`) are never ranked against each other: each
    data group is ranked on its own (ranks restart at 1, `runs_compared` counts the group), groups
    ordered by how many runs they rank, and `data_group` numbers them."""
    if rank_by not in RANKINGS:
        raise PreftuneError(f"unknown --rank-by '{rank_by}'; choose one of: {', '.join(RANKINGS)}")

    def key(r):
        order = [r.get(k) if fmt.is_finite(r.get(k)) else -math.inf
                 for k in (rank_by, "length_balanced_accuracy", "accuracy", "mean_margin")]
        return (not rankable(r, rank_by), *(-v for v in order), r["run"])

    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r.get("eval_data")), []).append(r)
    ordered = sorted(groups.items(), key=lambda g: (-sum(rankable(r, rank_by) for r in g[1]), -len(g[1]), g[0]))
    ranked = []
    for number, (_, members) in enumerate(ordered, 1):
        members = sorted(members, key=key)
        compared = sum(rankable(r, rank_by) for r in members)
        for i, r in enumerate(members, 1):
            r["rank"] = i if i <= compared else None
            r["rank_by"], r["runs_compared"], r["data_group"] = rank_by, compared, number
        ranked += members
    return ranked


def data_groups(rows: list[dict]) -> list[list[dict]]:
    """The rows of each data group, in order (one group when every run was scored on the same data)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(r.get("data_group"), []).append(r)
    return list(groups.values())


def mixed_data(rows: list[dict]) -> bool:
    return len({r.get("data_group") for r in rows}) > 1


MIXED_NOTE = ("these runs were scored on different validation data ({n} groups): each group is ranked on its own "
              "(# restarts at 1 in each); never compare ranks or numbers across groups")


def load_runs(root: Path) -> tuple[list[Run], list[Path]]:
    """(finished runs, unfinished NAME.partial folders) under root; a damaged preftune_config.json is an error."""
    finished, unfinished = run_folder.run_dirs(root)
    return [open_run(d) for d in finished], unfinished


def leaderboard(root: Path, rank_by: str = DEFAULT_RANK) -> list[dict]:
    """The runs under root ranked on validation (no test metrics: see `score_chosen`)."""
    runs, _ = load_runs(root)
    return rank_rows([run_row(r) for r in runs], rank_by)


# ---- choose on validation, report on test --------------------------------------------------------


def chosen_test_result(run: Run, selection: dict) -> tuple[dict | None, str]:
    """(test metrics, status) of a run chosen on validation: its test.json while the weights and test
    pairs are unchanged, else computed now (and kept). The selection is recorded with it."""
    if not run.has_test_split:
        return None, PREDATES
    if (run.path / TEST_PAIRS_FILE).stat().st_size == 0:
        return None, "n/a (no test split: trained with --test-fraction 0; train with --test-fraction > 0 for one)"
    stored = gap_on_damage(lambda: run.evaluation("test"), "test metrics (recomputed)")
    if stored and stored.get("fingerprint") == run.fingerprint("test"):
        if stored.get("selection") != selection:
            stored = {**stored, "selection": selection}
            run_folder.atomic_write_json(run.path / run_folder.TEST_FILE, stored)
        return stored, "computed"
    from preftune.dpo.evaluate import (
        evaluate_split,  # torch: only when a test result is due
    )

    stale = (run.path / run_folder.TEST_FILE).exists()  # its weights or test pairs changed since (or it is damaged)
    logger.info(f"report: scoring {run.name} on its test pairs (chosen on validation, #{selection['rank']} of "
                f"{selection['runs_compared']})" + ("; its test.json is stale (the weights or test pairs changed "
                                                    "since), so it is computed again" if stale else ""))
    try:
        return evaluate_split(run, "test", extra={"selection": selection}, recompute_test=stale), "computed"
    except PreftuneError as e:
        logger.warning(f"warning: {run.name}: test metrics not computed: {e}")
        return None, f"not computed ({e})"


def score_chosen(runs: dict[str, Run], rows: list[dict], n: int) -> list[dict]:
    """Fill in test metrics for the n best-ranked runs of each data group (and only those). Returns the
    chosen rows."""
    chosen = [r for group in data_groups(rows) for r in [r for r in group if r["rank"] is not None][:n]]
    for r in chosen:
        selection = {"rank_by": r["rank_by"], "rank": r["rank"], "runs_compared": r["runs_compared"]}
        result, r["test_status"] = chosen_test_result(runs[r["run"]], selection)
        r["selected"] = True
        r.update(result_columns(result or {}, "test_"))
    return chosen


# ---- the files -------------------------------------------------------------------------------------


def write_leaderboard(root: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if r.get(k) is None or (isinstance(r.get(k), float) and not math.isfinite(r[k]))
                          else r[k]) for k in FIELDS} for r in rows)
    run_folder.atomic_write_text(root / "leaderboard.csv", buffer.getvalue())
    run_folder.atomic_write_json(root / "leaderboard.json", [{k: r.get(k) for k in FIELDS} for r in rows])
