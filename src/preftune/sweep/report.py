"""`preftune report ROOT`: a leaderboard of the runs under ROOT, plots, and one self-contained HTML page.

Choose on validation, report on test: runs are ranked by a validation metric (--rank-by, default the
length-balanced accuracy, on which "the longer summary wins" scores exactly 0.5). The best --select N
runs (default 1) — and only those — are then scored on their test pairs (test.json, computed once and
reused while the weights and pairs are unchanged), shown with the number of runs that were compared.
Runs trained before preftune kept a test split say so instead.

Reads only what each finished run folder holds (through preftune.runs.folder, which checks it), so it
works on any folder of runs — a sweep's or hand-made — and writes into ROOT:

    leaderboard.csv / leaderboard.json   runs ranked on validation, with the chosen runs' test metrics
    curves.png                           training loss and reward accuracy per step, all runs overlaid
    accuracy_grid.png                    the ranking metric by learning rate × batch size
    length_strata.png                    per run: accuracy where the chosen summary is longer vs shorter
    margins.png                          reward margins: per training step, and held out per run
    report.html                          all of the above in one file (images embedded as base64)

A damaged eval.json, metrics.json, judge.json or train_log.jsonl is a gap ("–", a missing point) and one
warning naming the file and key; a damaged preftune_config.json is an error. Folders still named
NAME.partial (running, or interrupted) are listed as unfinished, not ranked.
"""

from __future__ import annotations

import base64
import csv
import io
import logging
import math
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from preftune import fmt
from preftune.config import ReportConfig, add_arguments, from_args
from preftune.errors import PreftuneError
from preftune.runs import folder as run_folder
from preftune.runs.folder import CONFIG_FILE, TEST_PAIRS_FILE, Run, open_run

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
          "judge_rm_accuracy", "rank_by", "eval_data", "data_group", "runs_compared", "selected", "test_status",
          *result_keys("test_")]
SMOOTH_MAX_SPAN = 50
CURVES_NOTE = ("Values on the training batches, per logged optimizer step: faint, each batch's own value (noisy at "
               "small batch sizes); solid, their exponential moving average (bias-corrected; span a fifth of the "
               f"logged points, 1 to {SMOOTH_MAX_SPAN}).")
PLOTS = {
    "curves.png": "Training loss and reward accuracy per optimizer step, every run overlaid. " + CURVES_NOTE,
    "accuracy_grid.png": "The ranking metric on validation by learning rate × batch size.",
    "length_strata.png": "Validation accuracy where the human chose the longer summary vs the shorter one, "
                         "per run (95% Wilson intervals), with the length-balanced accuracy (their mean) and "
                         "the 'longer wins' baseline on the same pairs. Length alone scores 0.5 balanced.",
    "margins.png": "Reward margin (chosen − rejected): per training step (faint per batch, solid smoothed), and on "
                   "validation pairs per run.",
}
PREDATES = "n/a (run predates the test split)"
GAP = "–"  # a table cell with no value


# ---- reading runs --------------------------------------------------------------------------------


def _gap_on_damage(read: Callable[[], dict | None], what: str) -> dict:
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
    metrics = _gap_on_damage(run.metrics, "training figures")
    evaluation = _gap_on_damage(run.evaluation, "validation metrics")
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
        **{k: v for k, v in run_folder.judge_summary(_gap_on_damage(run.judge, "judge results")).items()
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


def _finite(value) -> bool:
    return fmt.finite(value) is not None


def rankable(row: dict, rank_by: str) -> bool:
    """A run has a valid ranking when its metric and its core validation numbers are finite numbers
    (a NaN margin means the model diverged: its accuracy means nothing)."""
    return all(_finite(row.get(k)) for k in (rank_by, "accuracy", "mean_margin"))


def rank_rows(rows: list[dict], rank_by: str = DEFAULT_RANK) -> list[dict]:
    """Best `rank_by` first (ties: length-balanced accuracy, accuracy, margin, name); runs without a
    valid ranking (not evaluated, older eval.json without the metric, NaN) last, with no rank.

    Runs scored on different validation data (`eval_data`) are never ranked against each other: each
    data group is ranked on its own (ranks restart at 1, `runs_compared` counts the group), groups
    ordered by how many runs they rank, and `data_group` numbers them."""
    if rank_by not in RANKINGS:
        raise PreftuneError(f"unknown --rank-by '{rank_by}'; choose one of: {', '.join(RANKINGS)}")

    def key(r):
        order = [r.get(k) if _finite(r.get(k)) else -math.inf
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
        return None, "n/a (no test pairs: trained with --test-fraction 0)"
    stored = _gap_on_damage(lambda: run.evaluation("test"), "test metrics (recomputed)")
    if stored and stored.get("fingerprint") == run.fingerprint("test"):
        if stored.get("selection") != selection:
            stored = {**stored, "selection": selection}
            run_folder.atomic_write_json(run.path / run_folder.TEST_FILE, stored)
        return stored, "computed"
    from preftune.dpo.evaluate import (
        evaluate_split,  # torch: only when a test result is due
    )

    logger.info(f"report: scoring {run.name} on its test pairs (chosen on validation, #{selection['rank']} of "
                f"{selection['runs_compared']})")
    try:
        return evaluate_split(run, "test", extra={"selection": selection}), "computed"
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


# ---- writing -------------------------------------------------------------------------------------


def write_leaderboard(root: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if r.get(k) is None or (isinstance(r.get(k), float) and not math.isfinite(r[k]))
                          else r[k]) for k in FIELDS} for r in rows)
    run_folder.atomic_write_text(root / "leaderboard.csv", buffer.getvalue())
    run_folder.atomic_write_json(root / "leaderboard.json", [{k: r.get(k) for k in FIELDS} for r in rows])


def with_interval(row: dict, key: str, ci: str, n: str | None = None) -> str:
    """"0.625 [0.47–0.76] n=40" from a row's value, interval and count keys ("–" for a gap)."""
    return fmt.cell(row.get(key), (row.get(f"{ci}_low"), row.get(f"{ci}_high")), row.get(n) if n else None, gap=GAP)


def number(value, digits: int, sign: bool = False) -> str:
    return fmt.number(value, digits, sign=sign, gap=GAP)


def columns(prefix: str = "") -> list[tuple[str, Callable[[dict], str]]]:
    """(header, cell) of the leaderboard's metric columns for one result (validation, or test_)."""
    p = prefix
    return [
        ("length-balanced acc. [95% CI]", lambda r: with_interval(r, f"{p}length_balanced_accuracy",
                                                                  f"{p}length_balanced_ci95")),
        ("accuracy [95% CI]", lambda r: with_interval(r, f"{p}accuracy", f"{p}accuracy_ci95",
                                                      "eval_pairs" if not p else "test_pairs")),
        ("chosen longer", lambda r: with_interval(r, f"{p}chosen_longer_accuracy", f"{p}chosen_longer_ci95",
                                                  f"{p}chosen_longer_n")),
        ("chosen shorter", lambda r: with_interval(r, f"{p}chosen_shorter_accuracy", f"{p}chosen_shorter_ci95",
                                                   f"{p}chosen_shorter_n")),
        ("longer wins", lambda r: number(r.get(f"{p}longer_wins_baseline"), 3)),
    ]


COLUMNS = [
    ("#", lambda r: "–" if r["rank"] is None else str(r["rank"])),
    ("run", lambda r: r["run"]),
    *columns(),
    ("margin", lambda r: number(r.get("mean_margin"), 4, sign=True)),
    ("drift", lambda r: number(r.get("mean_logp_drift"), 3, sign=True)),
    ("train s", lambda r: number(r.get("train_runtime_s"), 1)),
    ("tokens/s", lambda r: number(r.get("tokens_per_s"), 0)),
    ("final loss", lambda r: number(r.get("final_loss"), 4)),
    ("trained", lambda r: r.get("chain") or "–"),
]
TEST_COLUMNS = [("#", COLUMNS[0][1]), ("run", COLUMNS[1][1]), *columns("test_")]
NAME_WIDTH = 48  # a longer run name is shortened in the middle in the printed table (the files keep it whole)


def display_width(text: str) -> int:
    """Columns a string takes in a terminal: wide (CJK) characters 2, combining marks 0."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def fit_cell(text: str, width: int = NAME_WIDTH) -> str:
    """One line (control characters shown as spaces) of at most `width` columns, shortened in the middle."""
    text = "".join(" " if unicodedata.category(c).startswith("C") else c for c in str(text))
    if display_width(text) <= width:
        return text
    head, tail = text[: width // 2 - 1], text[-(width - width // 2):]
    while display_width(head) + display_width(tail) + 1 > width:
        head, tail = head[:-1], tail[1:]
    return head + "…" + tail


def format_table(rows: list[dict], cols: list[tuple[str, Callable[[dict], str]]]) -> str:
    """Rows as a fixed-width text table: the run column left-aligned, the others right-aligned."""
    table = [[header for header, _ in cols]] + [[fit_cell(cell(r)) for _, cell in cols] for r in rows]
    widths = [max(display_width(line[i]) for line in table) for i in range(len(cols))]

    def pad(text: str, width: int, left: bool) -> str:
        space = " " * (width - display_width(text))
        return text + space if left else space + text

    text = ["  ".join(pad(c, w, i == 1) for i, (c, w) in enumerate(zip(line, widths))).rstrip() for line in table]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def group_heading(group: list[dict]) -> str:
    first = group[0]
    return (f"[group {first['data_group']}] validation data: {first['eval_data']}: {len(group)} "
            f"run{'s' if len(group) != 1 else ''}, {first['runs_compared']} ranked")


def format_leaderboard(rows: list[dict]) -> str:
    """The leaderboard (validation) as a fixed-width text table; one table per data group, under a
    warning, when the runs were scored on different validation data."""
    if not mixed_data(rows):
        return format_table(rows, COLUMNS)
    groups = data_groups(rows)
    parts = [f"warning: {MIXED_NOTE.format(n=len(groups))}"]
    for group in groups:
        parts += ["", group_heading(group), format_table(group, COLUMNS)]
    return "\n".join(parts)


def selection_note(rows: list[dict]) -> str:
    """E.g. "chosen on validation length-balanced accuracy from 4 runs compared"."""
    first = rows[0] if rows else {}
    rank_by, compared = first.get("rank_by") or DEFAULT_RANK, first.get("runs_compared") or 0
    return f"chosen on validation {RANKINGS[rank_by]} from {compared} run{'s' if compared != 1 else ''} compared"


def format_test(chosen: list[dict]) -> str:
    """The test block: the chosen runs' test metrics, or why a run has none (per data group)."""
    if not chosen:
        return "test: no run has a valid validation ranking, so none was chosen and none was tested"
    lines = []
    for group in data_groups(chosen):
        data = f"; validation data: {group[0]['eval_data']}" if mixed_data(chosen) else ""
        lines.append(f"test ({selection_note(group)}{data}; test metrics are never used for choosing):")
        measured = [r for r in group if r["test_accuracy"] is not None]
        if measured:
            lines.append(format_table(measured, TEST_COLUMNS))
        lines += [f"  #{r['rank']} {fit_cell(r['run'])}: test: {r['test_status']}" for r in group if r not in measured]
    return "\n".join(lines)


# ---- plots ---------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _series(log: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a key in a checked training log; a step without it is a gap."""
    points = [(r["step"], r[key]) for r in log if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def _value(row: dict, key: str) -> float:
    """A row's number for a plot: NaN (nothing drawn) for a gap."""
    return row[key] if _finite(row.get(key)) else math.nan


def _label(row: dict, mixed: bool = False) -> str:
    """A run's name on a plot axis with its rank ("[g2] #1 …" when runs were scored on different data)."""
    group = f"[g{row.get('data_group')}] " if mixed else ""
    return f"{group}{'#' + str(row['rank']) if row['rank'] else '–'} {fit_cell(row['run'], 40)}"


def smoothing_span(n: int) -> int:
    """The EMA span for a curve of n logged points: a fifth of them, between 1 (no smoothing) and
    SMOOTH_MAX_SPAN, so a short run is not flattened and a long one not lagged."""
    return max(1, min(SMOOTH_MAX_SPAN, round(n / 5)))


def smooth(values: Sequence[float], span: int | None = None) -> list[float]:
    """Exponential moving average with α = 2/(span + 1), bias-corrected as Adam's moments are (the
    first points are not pulled towards 0): out_t = m_t / (1 − (1−α)^t), m_t = (1−α)·m_{t−1} + α·x_t."""
    span = smoothing_span(len(values)) if span is None else span
    alpha, mean, out = 2 / (span + 1), 0.0, []
    for t, x in enumerate(values, 1):
        mean = (1 - alpha) * mean + alpha * x
        out.append(mean / (1 - (1 - alpha) ** t))
    return out


def plot_smoothed(ax, log: list[dict], key: str, name: str) -> None:
    """One run's per-batch values of key, faint, under their EMA (solid, labelled with the run)."""
    steps, values = _series(log, key)
    raw, = ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, ms=2.5, lw=0.8, alpha=0.3)
    ax.plot(steps, smooth(values), color=raw.get_color(), lw=1.8, label=fit_cell(name, 40))


def plot_curves(logs: dict[str, list[dict]], path: Path) -> None:
    """Loss and reward accuracy (both from the per-step training log) against step, one colour per run:
    the per-batch values faint, their moving average solid (see CURVES_NOTE)."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.2 + 0.2 * math.ceil(len(logs) / 3)),
                                          layout="constrained")
    for name, log in logs.items():
        plot_smoothed(ax_loss, log, "loss", name)
        plot_smoothed(ax_acc, log, "rewards/accuracies", name)
    _legend_below(fig, ax_loss, len(logs))
    log2 = ax_loss.axhline(math.log(2), color="grey", ls=":", lw=1)
    ax_loss.legend([log2], ["log 2: the loss before any update"], fontsize=8, loc="best")
    ax_loss.set(title="DPO loss (training batches; faint: per batch, solid: smoothed)", xlabel="optimizer step",
                ylabel="loss")
    ax_acc.set(title="reward accuracy (training batches; faint: per batch, solid: smoothed)",
               xlabel="optimizer step", ylabel="fraction of pairs ranked right", ylim=(-0.05, 1.05))
    for ax in (ax_loss, ax_acc):
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
        _integer_steps(ax)
    _save(fig, path)


def plot_accuracy_grid(rows: list[dict], path: Path, rank_by: str = DEFAULT_RANK) -> None:
    """Heatmaps of the ranking metric over lr (rows) × batch size (columns), one panel per (epochs,
    beta, loss) combination; an empty cell is a run not finished, not evaluated, or without the metric."""
    plt = _pyplot()
    rows = [r for r in rows if _finite(r["lr"]) and _finite(r["batch_size"])]
    mixed = mixed_data(rows)  # runs scored on different data: one panel per data group too
    panel = (lambda r: (r.get("data_group") if mixed else None, r["epochs"], r["beta"], r["loss"]))
    groups = sorted({panel(r) for r in rows}, key=str)
    lrs = sorted({r["lr"] for r in rows})
    sizes = sorted({r["batch_size"] for r in rows})
    values = [_value(r, rank_by) for r in rows if _finite(r.get(rank_by))]
    bounded = rank_by != "mean_margin"  # accuracies live in [0, 1]
    vmin, vmax = (0, 1) if bounded or not values else (min(values), max(values) + 1e-12)
    panels = max(len(groups), 1)
    width = max(6.5, 1.8 + 1.6 * max(len(sizes), 2) * panels)  # room for the title
    fig, axes = plt.subplots(1, panels, figsize=(width, 1.8 + 0.7 * max(len(lrs), 2)), squeeze=False,
                             layout="constrained")
    for ax, group in zip(axes[0], groups or [None]):
        grid = [[math.nan] * len(sizes) for _ in lrs]
        for r in rows:
            if panel(r) == group:
                grid[lrs.index(r["lr"])][sizes.index(r["batch_size"])] = _value(r, rank_by)
        image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        for i, line in enumerate(grid):
            for j, value in enumerate(line):
                missing = math.isnan(value)
                bright = (value - vmin) / (vmax - vmin) > 0.6 if not missing else False
                ax.text(j, i, "–" if missing else number(value, 3), ha="center", va="center", fontsize=10,
                        color="grey" if missing else "black" if bright else "white")
        ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
        ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
        ax.set(xlabel="batch size", ylabel="learning rate")
        if group:
            data = f"data group {group[0]}: " if mixed else ""
            ax.set_title(fit_cell(f"{data}epochs {group[1]}, beta {group[2]}, {group[3]}", 60), fontsize=10)
    fig.colorbar(image, ax=list(axes[0]), label=f"validation {RANKINGS[rank_by]}", shrink=0.9)
    fig.suptitle(f"validation {RANKINGS[rank_by]} by learning rate × batch size", fontsize=11)
    _save(fig, path)


def plot_length_strata(rows: list[dict], path: Path) -> None:
    """Per run, side by side: validation accuracy where the chosen summary is longer and where it is
    shorter (bars, 95% intervals), their mean (◆, the length-balanced accuracy) and the "longer wins"
    baseline on the same pairs (|). A run whose eval.json predates the strata shows no bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, max(3.2, 1.4 + 0.55 * len(rows))), layout="constrained")
    y = list(range(len(rows)))
    for offset, stratum, color, label in ((-0.2, "chosen_longer", "tab:orange", "chosen is longer"),
                                          (0.2, "chosen_shorter", "tab:purple", "chosen is shorter")):
        ys = [i + offset for i in y]
        ax.barh(ys, [_value(r, f"{stratum}_accuracy") for r in rows], height=0.38, color=color, alpha=0.85,
                label=f"accuracy where {label}")
        for yi, r in zip(ys, rows):
            low, high, value = (_value(r, f"{stratum}_{k}") for k in ("ci95_low", "ci95_high", "accuracy"))
            if not math.isnan(low + high + value):
                ax.errorbar(value, yi, xerr=[[value - low], [high - value]], color="black", lw=1, capsize=2)
            if not math.isnan(value) and r.get(f"{stratum}_n") is not None:
                ax.text(0.01, yi, f"n={r[f'{stratum}_n']}", va="center", fontsize=7, color="white")
    ax.scatter([_value(r, "length_balanced_accuracy") for r in rows], y, marker="D", s=40, color="black", zorder=3,
               label="length-balanced accuracy (their mean)")
    ax.scatter([_value(r, "longer_wins_baseline") for r in rows], y, marker="|", s=300, color="tab:red", zorder=3,
               label="'longer wins' baseline")
    ax.axvline(0.5, color="grey", ls=":", lw=1)
    ax.set_yticks(y, [_label(r, mixed_data(rows)) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="validation accuracy", title="accuracy by length stratum (lengths in tokens)")
    ax.grid(alpha=0.3, axis="x")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    _save(fig, path)


def plot_margins(rows: list[dict], logs: dict[str, list[dict]], path: Path) -> None:
    """Left: training reward margin per step, all runs. Right: validation mean margin per run, in rank
    order, with the mean rewards of chosen and rejected summaries that make it up."""
    plt = _pyplot()
    fig, (ax_train, ax_eval) = plt.subplots(1, 2, figsize=(13, max(4.2, 1.6 + 0.45 * len(rows))), layout="constrained")
    for name, log in logs.items():
        plot_smoothed(ax_train, log, "rewards/margins", name)
    ax_train.axhline(0, color="grey", lw=0.8)
    ax_train.set(title="reward margin (training batches; faint: per batch, solid: smoothed)", xlabel="optimizer step",
                 ylabel="chosen − rejected")
    ax_train.title.set_fontsize(10)
    ax_train.grid(alpha=0.3)
    _integer_steps(ax_train)
    evaluated = [r for r in rows if _finite(r.get("mean_margin"))]
    y = list(range(len(evaluated)))
    for offset, key, color, label in ((-0.25, "mean_chosen_reward", "tab:green", "reward, chosen"),
                                      (0, "mean_rejected_reward", "tab:red", "reward, rejected"),
                                      (0.25, "mean_margin", "tab:blue", "margin")):
        ax_eval.barh([i + offset for i in y], [_value(r, key) for r in evaluated], height=0.25, color=color,
                     label=label)
    ax_eval.set_yticks(y, [_label(r, mixed_data(rows)) for r in evaluated], fontsize=8)
    ax_eval.invert_yaxis()
    ax_eval.axvline(0, color="grey", lw=0.8)
    ax_eval.set(title="validation mean reward (β·log π/π_ref)", xlabel="reward")
    ax_eval.legend(fontsize=8, loc="best")
    ax_eval.grid(alpha=0.3, axis="x")
    _legend_below(fig, ax_train, len(logs))
    _save(fig, path)


def _integer_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend_below(fig, ax, n: int) -> None:
    """One legend of run names under all panels (constrained layout makes room for it)."""
    if n:
        handles, labels = ax.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=min(n, 3), fontsize=8, frameon=False)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # a run name in a script the font lacks draws boxes: not worth a warning
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    run_folder.atomic_write_bytes(path, buffer.getvalue())


# ---- HTML ----------------------------------------------------------------------------------------


def render_html(root: Path, rows: list[dict], chosen: list[dict], images: dict[str, Path],
                unfinished: Sequence[Path], sweep: dict | None) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("preftune", "templates"), autoescape=select_autoescape(["html", "j2"]))
    embedded = [{"name": name, "caption": PLOTS[name],
                 "data": base64.b64encode(path.read_bytes()).decode("ascii")} for name, path in images.items()]
    def table(group: list[dict], cols) -> list[list[str]]:
        return [[cell(r) for _, cell in cols] for r in group]

    mixed = mixed_data(rows)
    groups = [{"heading": group_heading(g) if mixed else "", "table": table(g, COLUMNS), "best": g[0]["rank"] is not None}
              for g in data_groups(rows)]
    tests = []
    for g in data_groups(chosen):
        measured = [r for r in g if r["test_accuracy"] is not None]
        tests.append({"selection": selection_note(g) + (f"; validation data: {g[0]['eval_data']}" if mixed else ""),
                      "table": table(measured, TEST_COLUMNS), "untested": [r for r in g if r not in measured]})
    return env.get_template("report.html.j2").render(
        root=root.name, headers=[h for h, _ in COLUMNS], groups=groups, mixed=MIXED_NOTE.format(n=len(groups))
        if mixed else "", eval_data=rows[0]["eval_data"] if rows else "", rows=rows, images=embedded,
        unfinished=[p.name for p in unfinished], sweep=sweep, hyperparameters=HYPERPARAMETERS,
        ranking=RANKINGS[rows[0]["rank_by"]] if rows else "", compared=sum(r["rank"] is not None for r in rows),
        chosen=chosen, test_headers=[h for h, _ in TEST_COLUMNS], tests=tests,
    )


# ---- the verb ------------------------------------------------------------------------------------


def report(root: Path, cfg: ReportConfig | None = None) -> dict[str, Path]:
    """Rank the runs under root on validation, score the best cfg.select on test, write the leaderboard,
    plots and report.html into root, and print the table. Returns what it wrote."""
    cfg = cfg or ReportConfig()
    root = Path(root)
    runs, unfinished = load_runs(root)
    if not runs:
        raise PreftuneError(f"{root} holds no finished runs (folders with {CONFIG_FILE})"
                            + (f"; unfinished: {', '.join(p.name for p in unfinished)}" if unfinished else ""))
    rows = rank_rows([run_row(r) for r in runs], cfg.rank_by)
    by_name = {r.name: r for r in runs}
    chosen = score_chosen(by_name, rows, cfg.select)
    logs = {r["run"]: by_name[r["run"]].train_log() for r in rows}
    write_leaderboard(root, rows)
    images = {name: root / name for name in PLOTS}
    plot_curves(logs, images["curves.png"])
    plot_accuracy_grid(rows, images["accuracy_grid.png"], cfg.rank_by)
    plot_length_strata(rows, images["length_strata.png"])
    plot_margins(rows, logs, images["margins.png"])
    sweep = _gap_on_damage(lambda: run_folder.read_json(root / "sweep.json", missing_ok=True), "sweep details") or None
    run_folder.atomic_write_text(root / "report.html", render_html(root, rows, chosen, images, unfinished, sweep))
    ranked = sum(r["rank"] is not None for r in rows)
    data = "" if mixed_data(rows) else f"; validation data: {rows[0]['eval_data']}"
    logger.info(f"validation ranking by {RANKINGS[cfg.rank_by]} ({ranked} of {len(rows)} runs have it; runs without "
                f"it are listed last, unranked){data}:")
    logger.info(format_leaderboard(rows))
    if cfg.select:
        logger.info(format_test(chosen))
    if sweep and isinstance(sweep.get("runs"), list):
        planned, done = [str(n) for n in sweep["runs"]], {r["run"] for r in rows}
        missing = [n for n in planned if n not in done]
        logger.info(f"sweep: {len(planned) - len(missing)}/{len(planned)} runs finished"
                    + (f"; not finished: {', '.join(missing)}" if missing else ""))
    if unfinished:
        logger.info(f"unfinished (interrupted or running): {', '.join(p.name for p in unfinished)}")
    logger.info(f"report: {root / 'report.html'} (leaderboard.csv, leaderboard.json, {', '.join(PLOTS)})")
    return {"leaderboard.csv": root / "leaderboard.csv", "leaderboard.json": root / "leaderboard.json",
            **images, "report.html": root / "report.html"}


def add_cli(verbs) -> None:
    parser = verbs.add_parser("report", help="leaderboard (ranked on validation), plots and report.html for a folder "
                              "of runs; test metrics for the chosen runs only")
    parser.add_argument("root", metavar="ROOT", help="a folder of runs (e.g. a sweep's --output-dir)")
    add_arguments(parser, ReportConfig)
    parser.set_defaults(func=lambda ns: report(Path(ns.root), from_args(ReportConfig, ns)))
