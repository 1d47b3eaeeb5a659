"""`preftune report ROOT`: a leaderboard of the runs under ROOT, plots, and one self-contained HTML page.

Reads only what each finished run folder holds (preftune_config.json, metrics.json, eval.json,
train_log.jsonl), so it works on any folder of runs — a sweep's or hand-made — and writes into ROOT:

    leaderboard.csv / leaderboard.json   runs ranked by held-out preference accuracy (then margin)
    curves.png                           training loss and reward accuracy per step, all runs overlaid
    accuracy_grid.png                    held-out accuracy by learning rate × batch size
    margins.png                          reward margins: per training step, and held out per run
    report.html                          all of the above in one file (images embedded as base64)

Folders still named NAME.partial (running, or interrupted) are listed as unfinished, not ranked.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

from preftune.errors import PreftuneError

CONFIG_FILE = "preftune_config.json"  # = evaluate.CONFIG_FILE (not imported: evaluate imports torch)

# (key, header in the printed table and the HTML, format); the CSV/JSON use the keys.
COLUMNS = [
    ("rank", "#", "{}"),
    ("run", "run", "{}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("mean_margin", "margin", "{:+.4f}"),
    ("mean_logp_drift", "drift", "{:+.3f}"),
    ("chosen_shorter_accuracy", "acc. chosen shorter", "{:.3f}"),
    ("train_runtime_s", "train s", "{:.1f}"),
    ("tokens_per_s", "tokens/s", "{:.0f}"),
    ("final_loss", "final loss", "{:.4f}"),
]
HYPERPARAMETERS = ("lr", "batch_size", "epochs", "beta", "loss", "lora", "engine")
EVAL_KEYS = ("accuracy", "mean_margin", "mean_chosen_reward", "mean_rejected_reward", "mean_logp_drift",
             "mean_abs_logp_drift_per_token", "chosen_shorter_accuracy", "longer_wins_baseline",
             "reference_logp_accuracy")
FIELDS = ["rank", "run", *HYPERPARAMETERS, *EVAL_KEYS, "eval_pairs", "train_pairs", "steps",
          "train_runtime_s", "tokens_per_s", "pairs_per_s", "final_loss", "final_train_reward_accuracy",
          "judge_win_rate", "judge_length_controlled_win_rate", "judge_n", "judge_verdict_strength",
          "judge_rm_accuracy"]
PLOTS = {
    "curves.png": "Training loss and reward accuracy per optimizer step, every run overlaid.",
    "accuracy_grid.png": "Held-out preference accuracy by learning rate × batch size.",
    "margins.png": "Reward margin (chosen − rejected): per training step, and on held-out pairs per run.",
}


# ---- reading runs --------------------------------------------------------------------------------


def read_log(run_dir: Path) -> list[dict]:
    """The per-step training log (one JSON object per line)."""
    path = run_dir / "train_log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise PreftuneError(f"{path}: not valid JSON ({e})") from e


def run_row(run_dir: Path) -> dict:
    from preftune.judge import judge_summary

    """One leaderboard row from a finished run folder (eval columns are None when it has no eval.json)."""
    config = _read_json(run_dir / CONFIG_FILE)
    metrics, evaluation = _read_json(run_dir / "metrics.json"), _read_json(run_dir / "eval.json")
    train = config.get("train", {})
    final = metrics.get("final", {})
    return {
        "rank": None,
        "run": run_dir.name,
        **{k: train.get(k) for k in HYPERPARAMETERS},
        **{k: evaluation.get(k) for k in EVAL_KEYS},
        "eval_pairs": evaluation.get("n"),
        "train_pairs": metrics.get("train_pairs"),
        "steps": metrics.get("steps"),
        "train_runtime_s": metrics.get("train_runtime_s"),
        "tokens_per_s": metrics.get("tokens_per_s"),
        "pairs_per_s": metrics.get("pairs_per_s"),
        "final_loss": final.get("loss"),
        "final_train_reward_accuracy": final.get("rewards/accuracies"),
        # from `preftune judge` (judge.json), when it was run: generations scored by a reward model
        **{k: v for k, v in judge_summary(_read_json(run_dir / "judge.json")).items() if k != "judge_win_rate_ci95"},
    }


def run_dirs(root: Path) -> tuple[list[Path], list[Path]]:
    """(finished run folders, unfinished NAME.partial folders) directly under root."""
    if not root.is_dir():
        raise PreftuneError(f"{root} is not a folder of runs")
    children = sorted(p for p in root.iterdir() if p.is_dir())
    finished = [p for p in children if not p.name.endswith(".partial") and (p / CONFIG_FILE).is_file()]
    return finished, [p for p in children if p.name.endswith(".partial")]


def rank_rows(rows: list[dict]) -> list[dict]:
    """Best held-out accuracy first, then larger margin; runs without an evaluation last."""
    def key(r):
        acc, margin = r["accuracy"], r["mean_margin"]
        return (acc is None, -(acc or 0.0), -(margin or 0.0), r["run"])

    ranked = sorted(rows, key=key)
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    return ranked


def leaderboard(root: Path) -> list[dict]:
    finished, _ = run_dirs(root)
    return rank_rows([run_row(d) for d in finished])


# ---- writing -------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    tmp.replace(path)


def write_leaderboard(root: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if r.get(k) is None else r[k]) for k in FIELDS} for r in rows)
    _atomic_write(root / "leaderboard.csv", buffer.getvalue())
    _atomic_write(root / "leaderboard.json", json.dumps(rows, indent=2) + "\n")


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return fmt.format(value)


def format_leaderboard(rows: list[dict]) -> str:
    """The leaderboard as a fixed-width text table."""
    table = [[header for _, header, _ in COLUMNS]]
    table += [[_cell(r.get(key), fmt) for key, _, fmt in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    text = ["  ".join(c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in table]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


# ---- plots ---------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _series(log: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in log if key in r and r[key] is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(logs: dict[str, list[dict]], path: Path) -> None:
    """Loss and reward accuracy (both from the per-step training log) against step, one line per run."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.2 + 0.2 * math.ceil(len(logs) / 3)),
                                          layout="constrained")
    for name, log in logs.items():
        marker = "o" if len(log) <= 30 else None
        ax_loss.plot(*_series(log, "loss"), marker=marker, ms=3, lw=1.4, label=name)
        ax_acc.plot(*_series(log, "rewards/accuracies"), marker=marker, ms=3, lw=1.4, label=name)
    _legend_below(fig, ax_loss, len(logs))
    log2 = ax_loss.axhline(math.log(2), color="grey", ls=":", lw=1)
    ax_loss.legend([log2], ["log 2: the loss before any update"], fontsize=8, loc="best")
    ax_loss.set(title="DPO loss (training batches)", xlabel="optimizer step", ylabel="loss")
    ax_acc.set(title="reward accuracy (training batches)", xlabel="optimizer step",
               ylabel="fraction of pairs ranked right", ylim=(-0.05, 1.05))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        _integer_steps(ax)
    _save(fig, path)


def plot_accuracy_grid(rows: list[dict], path: Path) -> None:
    """Heatmaps of held-out accuracy over lr (rows) × batch size (columns), one panel per
    (epochs, beta, loss) combination; an empty cell is a run not finished or not evaluated."""
    plt = _pyplot()
    rows = [r for r in rows if r["lr"] is not None and r["batch_size"] is not None]
    groups = sorted({(r["epochs"], r["beta"], r["loss"]) for r in rows}, key=str)
    lrs = sorted({r["lr"] for r in rows})
    sizes = sorted({r["batch_size"] for r in rows})
    panels = max(len(groups), 1)
    fig, axes = plt.subplots(1, panels, figsize=(1.8 + 1.6 * max(len(sizes), 2) * panels, 1.8 + 0.7 * max(len(lrs), 2)),
                             squeeze=False, layout="constrained")
    for ax, group in zip(axes[0], groups or [None]):
        grid = [[math.nan] * len(sizes) for _ in lrs]
        for r in rows:
            if (r["epochs"], r["beta"], r["loss"]) == group and r["accuracy"] is not None:
                grid[lrs.index(r["lr"])][sizes.index(r["batch_size"])] = r["accuracy"]
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for i, line in enumerate(grid):
            for j, value in enumerate(line):
                missing = math.isnan(value)
                ax.text(j, i, "–" if missing else f"{value:.3f}", ha="center", va="center", fontsize=10,
                        color="grey" if missing else "black" if value > 0.6 else "white")
        ax.set_xticks(range(len(sizes)), [str(s) for s in sizes])
        ax.set_yticks(range(len(lrs)), [f"{lr:g}" for lr in lrs])
        ax.set(xlabel="batch size", ylabel="learning rate")
        if group:
            ax.set_title(f"epochs {group[0]}, beta {group[1]}, {group[2]}", fontsize=10)
    fig.colorbar(image, ax=list(axes[0]), label="held-out accuracy", shrink=0.9)
    fig.suptitle("held-out preference accuracy by learning rate × batch size", fontsize=11)
    _save(fig, path)


def plot_margins(rows: list[dict], logs: dict[str, list[dict]], path: Path) -> None:
    """Left: training reward margin per step, all runs. Right: held-out mean margin per run, in rank
    order, with the mean rewards of chosen and rejected summaries that make it up."""
    plt = _pyplot()
    fig, (ax_train, ax_eval) = plt.subplots(1, 2, figsize=(13, max(4.2, 1.6 + 0.45 * len(rows))), layout="constrained")
    for name, log in logs.items():
        ax_train.plot(*_series(log, "rewards/margins"), marker="o" if len(log) <= 30 else None, ms=3, lw=1.4,
                      label=name)
    ax_train.axhline(0, color="grey", lw=0.8)
    ax_train.set(title="reward margin (training batches)", xlabel="optimizer step", ylabel="chosen − rejected")
    ax_train.grid(alpha=0.3)
    _integer_steps(ax_train)
    evaluated = [r for r in rows if r["mean_margin"] is not None]
    y = list(range(len(evaluated)))
    ax_eval.barh([i - 0.25 for i in y], [r["mean_chosen_reward"] for r in evaluated], height=0.25,
                 color="tab:green", label="reward, chosen")
    ax_eval.barh(y, [r["mean_rejected_reward"] for r in evaluated], height=0.25, color="tab:red",
                 label="reward, rejected")
    ax_eval.barh([i + 0.25 for i in y], [r["mean_margin"] for r in evaluated], height=0.25, color="tab:blue",
                 label="margin")
    ax_eval.set_yticks(y, [f"#{r['rank']} {r['run']}" for r in evaluated], fontsize=8)
    ax_eval.invert_yaxis()
    ax_eval.axvline(0, color="grey", lw=0.8)
    ax_eval.set(title="held-out mean reward (β·log π/π_ref)", xlabel="reward")
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
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    _atomic_write(path, buffer.getvalue())


# ---- HTML ----------------------------------------------------------------------------------------


def render_html(root: Path, rows: list[dict], images: dict[str, Path], unfinished: Sequence[Path],
                sweep: dict | None) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("preftune", "templates"), autoescape=select_autoescape(["html", "j2"]))
    table = [[_cell(r.get(key), fmt) for key, _, fmt in COLUMNS] for r in rows]
    embedded = [{"name": name, "caption": PLOTS[name],
                 "data": base64.b64encode(path.read_bytes()).decode("ascii")} for name, path in images.items()]
    return env.get_template("report.html.j2").render(
        root=root.name, headers=[h for _, h, _ in COLUMNS], table=table, rows=rows, images=embedded,
        unfinished=[p.name for p in unfinished], sweep=sweep, hyperparameters=HYPERPARAMETERS,
    )


# ---- the verb ------------------------------------------------------------------------------------


def report(root: Path, log=print) -> dict[str, Path]:
    """Write the leaderboard, plots and report.html into root; print the table. Returns what it wrote."""
    finished, unfinished = run_dirs(root)
    if not finished:
        raise PreftuneError(f"{root} holds no finished runs (folders with {CONFIG_FILE})"
                            + (f"; unfinished: {', '.join(p.name for p in unfinished)}" if unfinished else ""))
    rows = rank_rows([run_row(d) for d in finished])
    logs = {d.name: read_log(d) for d in sorted(finished, key=lambda d: [r["run"] for r in rows].index(d.name))}
    write_leaderboard(root, rows)
    images = {name: root / name for name in PLOTS}
    plot_curves(logs, images["curves.png"])
    plot_accuracy_grid(rows, images["accuracy_grid.png"])
    plot_margins(rows, logs, images["margins.png"])
    sweep_file = root / "sweep.json"
    sweep = _read_json(sweep_file) if sweep_file.exists() else None
    _atomic_write(root / "report.html", render_html(root, rows, images, unfinished, sweep))
    log(format_leaderboard(rows))
    if sweep:
        planned, done = sweep.get("runs", []), {r["run"] for r in rows}
        missing = [n for n in planned if n not in done]
        log(f"sweep: {len(planned) - len(missing)}/{len(planned)} runs finished"
            + (f"; not finished: {', '.join(missing)}" if missing else ""))
    if unfinished:
        log(f"unfinished (interrupted or running): {', '.join(p.name for p in unfinished)}")
    log(f"report: {root / 'report.html'} (leaderboard.csv, leaderboard.json, {', '.join(PLOTS)})")
    return {"leaderboard.csv": root / "leaderboard.csv", "leaderboard.json": root / "leaderboard.json",
            **images, "report.html": root / "report.html"}


def add_cli(verbs) -> None:
    parser = verbs.add_parser("report", help="leaderboard, plots and report.html for a folder of runs")
    parser.add_argument("root", metavar="ROOT", help="a folder of runs (e.g. a sweep's --output-dir)")
    parser.set_defaults(func=lambda ns: report(Path(ns.root)))
