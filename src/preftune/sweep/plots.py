"""The report's plots: training curves, the ranking metric by lr × batch size, accuracy by length
stratum and reward margins, each written as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

from preftune import fmt
from preftune.runs import folder as run_folder
from preftune.sweep.leaderboard import DEFAULT_RANK, RANKINGS, mixed_data

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
# ---- helpers ---------------------------------------------------------------------------------------


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
    return row[key] if fmt.is_finite(row.get(key)) else math.nan


def _label(row: dict, mixed: bool = False) -> str:
    """A run's name on a plot axis with its rank ("[g2] #1 …" when runs were scored on different data)."""
    group = f"[g{row.get('data_group')}] " if mixed else ""
    return f"{group}{'#' + str(row['rank']) if row['rank'] else '–'} {fmt.fit_cell(row['run'], 40)}"


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
    ax.plot(steps, smooth(values), color=raw.get_color(), lw=1.8, label=fmt.fit_cell(name, 40))


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
    rows = [r for r in rows if fmt.is_finite(r["lr"]) and fmt.is_finite(r["batch_size"])]
    mixed = mixed_data(rows)  # runs scored on different data: one panel per data group too
    panel = (lambda r: (r.get("data_group") if mixed else None, r["epochs"], r["beta"], r["loss"]))
    groups = sorted({panel(r) for r in rows}, key=str)
    lrs = sorted({r["lr"] for r in rows})
    sizes = sorted({r["batch_size"] for r in rows})
    values = [_value(r, rank_by) for r in rows if fmt.is_finite(r.get(rank_by))]
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
                ax.text(j, i, "–" if missing else fmt.number(value, 3, gap="–"), ha="center", va="center", fontsize=10,
                        color="grey" if missing else "black" if bright else "white")
        ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
        ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
        ax.set(xlabel="batch size", ylabel="learning rate")
        if group:
            data = f"data group {group[0]}: " if mixed else ""
            ax.set_title(fmt.fit_cell(f"{data}epochs {group[1]}, beta {group[2]}, {group[3]}", 60), fontsize=10)
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
    evaluated = [r for r in rows if fmt.is_finite(r.get("mean_margin"))]
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
