"""`preftune report ROOT`: the leaderboard of the runs under ROOT as text, plots, and one HTML page.

Ranked on validation (--rank-by), each run's paired interval against the plain DPO run (sweep/paired.py),
the best --select N scored on test (sweep/leaderboard.py); written into ROOT: leaderboard.csv/.json, the PNGs of sweep/plots.py, and report.html (images embedded).
A gap in a table is "–"; folders still named NAME.partial are listed as unfinished, not ranked.
What each file and plot holds: docs/sweeps-and-hub.md.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from preftune import fmt
from preftune.config import ReportConfig, add_arguments, from_args
from preftune.errors import PreftuneError
from preftune.runs import folder as run_folder
from preftune.runs.folder import CONFIG_FILE
from preftune.sweep import paired
from preftune.sweep.leaderboard import (
    DEFAULT_RANK,
    HYPERPARAMETERS,
    MIXED_NOTE,
    RANKINGS,
    data_groups,
    gap_on_damage,
    load_runs,
    mixed_data,
    rank_rows,
    run_row,
    score_chosen,
    write_leaderboard,
)
from preftune.sweep.plots import (
    PLOTS,
    plot_accuracy_grid,
    plot_curves,
    plot_length_strata,
    plot_margins,
)

logger = logging.getLogger(__name__)

GAP = "–"  # a table cell with no value


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
    ("Δ bal. vs baseline [95% CI]", paired.cell),
    ("margin", lambda r: number(r.get("mean_margin"), 4, sign=True)),
    ("drift", lambda r: number(r.get("mean_logp_drift"), 3, sign=True)),
    ("train s", lambda r: number(r.get("train_runtime_s"), 1)),
    ("tokens/s", lambda r: number(r.get("tokens_per_s"), 0)),
    ("final loss", lambda r: number(r.get("final_loss"), 4)),
    ("trained", lambda r: r.get("chain") or "–"),
]
TEST_COLUMNS = [("#", COLUMNS[0][1]), ("run", COLUMNS[1][1]), *columns("test_")]


def format_table(rows: list[dict], cols: list[tuple[str, Callable[[dict], str]]]) -> str:
    """Rows as a fixed-width text table: the run column left-aligned, the others right-aligned."""
    table = [[header for header, _ in cols]] + [[fmt.fit_cell(cell(r)) for _, cell in cols] for r in rows]
    widths = [max(fmt.display_width(line[i]) for line in table) for i in range(len(cols))]

    def pad(text: str, width: int, left: bool) -> str:
        space = " " * (width - fmt.display_width(text))
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
        lines += [f"  #{r['rank']} {fmt.fit_cell(r['run'])}: test: {r['test_status']}" for r in group if r not in measured]
    return "\n".join(lines)


# ---- HTML ----------------------------------------------------------------------------------------


def render_html(root: Path, rows: list[dict], chosen: list[dict], images: dict[str, Path],
                unfinished: Sequence[Path], sweep: dict | None, notes: Sequence[str] = ()) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("preftune", "templates"), autoescape=select_autoescape(["html", "j2"]))
    embedded = [{"name": name, "caption": PLOTS[name],
                 "data": base64.b64encode(path.read_bytes()).decode("ascii")} for name, path in images.items()]
    def table(group: list[dict], cols) -> list[list[str]]:
        return [[cell(r) for _, cell in cols] for r in group]

    mixed = mixed_data(rows)
    groups = [{"heading": group_heading(g) if mixed else "", "table": table(g, COLUMNS), "best": g[0]["rank"] is not None,
               "paired": notes[i] if i < len(notes) else ""} for i, g in enumerate(data_groups(rows))]
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
    evaluations = {r.name: _evaluation(r) for r in runs}
    notes = [paired.add_to_rows(group, by_name, evaluations) for group in data_groups(rows)]  # validation only
    chosen = score_chosen(by_name, rows, cfg.select)
    logs = {r["run"]: by_name[r["run"]].train_log() for r in rows}
    write_leaderboard(root, rows)
    images = {name: root / name for name in PLOTS}
    plot_curves(logs, images["curves.png"])
    plot_accuracy_grid(rows, images["accuracy_grid.png"], cfg.rank_by)
    plot_length_strata(rows, images["length_strata.png"])
    plot_margins(rows, logs, images["margins.png"])
    sweep = gap_on_damage(lambda: run_folder.read_json(root / "sweep.json", missing_ok=True), "sweep details") or None
    run_folder.atomic_write_text(root / "report.html", render_html(root, rows, chosen, images, unfinished, sweep,
                                                                   notes))
    ranked = sum(r["rank"] is not None for r in rows)
    data = "" if mixed_data(rows) else f"; validation data: {rows[0]['eval_data']}"
    logger.info(f"validation ranking by {RANKINGS[cfg.rank_by]} ({ranked} of {len(rows)} runs have it; runs without "
                f"it are listed last, unranked){data}:")
    logger.info(format_leaderboard(rows))
    for number, note in enumerate(notes, 1):
        logger.info(f"[group {number}] {note}" if len(notes) > 1 else note)
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


def _evaluation(run) -> dict | None:
    """A run's eval.json for the paired intervals (a damaged one was already named by its row: none here)."""
    try:
        return run.evaluation()
    except PreftuneError:
        return None


def add_cli(verbs) -> None:
    parser = verbs.add_parser("report", help="leaderboard (ranked on validation), plots and report.html for a folder "
                              "of runs; test metrics for the chosen runs only")
    parser.add_argument("root", metavar="ROOT", help="a folder of runs (e.g. a sweep's --output-dir)")
    add_arguments(parser, ReportConfig)
    parser.set_defaults(func=lambda ns: report(Path(ns.root), from_args(ReportConfig, ns)))
