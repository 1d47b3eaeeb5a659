"""`preftune recipe FILE.yaml`: a whole training recipe from one file, resumable.

Steps, each a preftune command in its own process: the reward model, SFT (optional), one DPO sweep per
objective, selection on validation, then the selected run alone on test and judged; ROOT/recipe.json
records every step's wall time and numbers. The file's sections are checked before any step runs with
the settings-file reader of config/files.py; a finished step is skipped, a killed one resumes. Steps,
sections and the measured recipe: docs/recipe.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import preftune.config as config
from preftune import fmt
from preftune.config import DataConfig
from preftune.config.files import check_setting, field_rules, parser_hints, read_yaml
from preftune.errors import DataError, PreftuneError
from preftune.launch import single_process
from preftune.runs.folder import (
    CONFIG_FILE,
    JUDGE_TEST_FILE,
    METRICS_FILE,
    RM_CONFIG_FILE,
    RM_EVAL_FILE,
    atomic_write_json,
    is_finished_run,
    read_json,
    run_dirs,
)
from preftune.runs.results import read_eval

logger = logging.getLogger(__name__)

# section → the command whose flags it holds. `data` and `dpo` are merged into the steps that use them.
SECTION_VERBS: dict[str, tuple[str, ...]] = {
    "data": ("sweep",), "rm": ("rm", "train"), "sft": ("sft",), "dpo": ("sweep",), "judge": ("judge",),
}
# a command's config classes (preftune.config), in the order a flag's name is looked up: a name two commands
# share (e.g. --lr, --max-length) takes its range from the command the section runs
VERB_CONFIGS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("sweep",): ("SweepConfig", "TrainConfig", "DataConfig", "ReportConfig"),
    ("rm", "train"): ("RewardConfig", "DataConfig"), ("sft",): ("SFTConfig", "DataConfig"), ("judge",): ("JudgeConfig",),
}
TOP_KEYS = ("output_dir", "data", "rm", "sft", "dpo", "runs", "select", "judge")
SET_BY_RECIPE = {"rm": ("output_dir", "name"), "sft": ("output_dir",), "dpo": ("output_dir", "select", "rank_by"),
                 "runs": ("output_dir", "select", "rank_by"),
                 "judge": ("split", "rm")}  # where each step writes and what it reads: the recipe decides
STATE_FILE = "recipe_state.json"
SUMMARY_FILE = "recipe.json"
RM_NAME = "reward_model"
RANK_KEYS_ALLOWED = ("length_balanced_accuracy", "accuracy", "chosen_shorter_accuracy", "mean_margin")


# ---- the file ------------------------------------------------------------------------------------


def _command_hints(verb: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, tuple]]:
    from preftune.cli import build_parser

    parser = build_parser()
    for word in verb:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    if verb == ("sweep",):  # the sweep reads its own file: its grid keys take lists
        from preftune.sweep.grid import _settable
        return _settable(), parser_hints(parser)[1]
    return parser_hints(parser)


def section_rules(verb: tuple[str, ...]) -> dict:
    """Each setting's field metadata (choices, range) in `verb`'s config classes, its own first."""
    return field_rules(tuple(getattr(config, name) for name in VERB_CONFIGS[verb]))


def _check_section(path: Path, lines: dict, where: tuple[str, ...], values: Any, verb: tuple[str, ...]) -> dict:
    """A section's settings, each checked as a --config file's are (config.files.check_setting) against the
    command's flags and its config fields' ranges. Returned as written: each step's command reads them
    again from the settings file the recipe writes for it."""
    line = lines.get(where)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise DataError(str(path), line, ".".join(where), "expected a mapping of settings (key: value)")
    hints, choices = _command_hints(verb)
    rules = section_rules(verb)
    skip = SET_BY_RECIPE.get(where[0], ())  # `runs.NAME` sections: where[0] is "runs"
    for key, value in values.items():
        at = lines.get((*where, str(key)), line)
        name = ".".join((*where, str(key)))
        if key in skip:
            raise DataError(str(path), at, name, "set by the recipe (each step's output goes under output_dir)")
        check_setting(key, value, hints, choices,
                      lambda message, at=at, name=name: DataError(str(path), at, name, message),
                      what=f"setting for `preftune {' '.join(verb)}`", rule=rules.get(key))
    return values


def load_recipe(path: Path) -> dict:
    """The recipe file, every section checked against its command's flags before anything runs."""
    path = Path(path)
    recipe, lines = read_yaml(path, "recipe")
    if not isinstance(recipe, dict):
        raise DataError(str(path), 1, None, "expected a mapping with sections: " + ", ".join(TOP_KEYS))
    for key in recipe:
        if key not in TOP_KEYS:
            raise DataError(str(path), lines.get((str(key),)), str(key),
                            f"unknown section; the sections are: {', '.join(TOP_KEYS)}")
    if not recipe.get("output_dir"):
        raise DataError(str(path), 1, "output_dir", "missing: the folder every step writes under")
    for section, verb in SECTION_VERBS.items():
        recipe[section] = _check_section(path, lines, (section,), recipe.get(section), verb) if section in recipe \
            else ({} if section != "sft" else None)
    data_keys = {f.name for f in dataclasses.fields(DataConfig)}
    for key in recipe["data"]:
        if key not in data_keys:
            raise DataError(str(path), lines.get(("data", str(key))), f"data.{key}",
                            "not a data setting (put run settings under `dpo`, or a step's own section)")
    runs = recipe.get("runs")
    if not isinstance(runs, dict) or not runs:
        raise DataError(str(path), lines.get(("runs",)), "runs", "needs one entry per DPO objective, e.g. "
                        "`dpo: {loss: sigmoid}`")
    for name, settings in runs.items():
        if not str(name).replace("-", "_").isidentifier():
            raise DataError(str(path), lines.get(("runs", str(name))), f"runs.{name}",
                            "a run group's name is a folder name: letters, digits, '-' and '_'")
        runs[name] = _check_section(path, lines, ("runs", str(name)), settings or {}, ("sweep",))
    select = recipe.get("select") or {}
    rank_by = select.get("rank_by", "length_balanced_accuracy")
    if set(select) - {"rank_by"} or rank_by not in RANK_KEYS_ALLOWED:
        raise DataError(str(path), lines.get(("select",)), "select",
                        f"takes rank_by: one of {', '.join(RANK_KEYS_ALLOWED)} (validation metrics)")
    recipe["select"] = {"rank_by": rank_by}
    recipe["path"] = str(path)
    return recipe


# ---- running it ----------------------------------------------------------------------------------


class State:
    """ROOT/recipe_state.json: per step, whether it finished and how long it took."""

    def __init__(self, root: Path):
        self.path = root / STATE_FILE
        self.data = read_json(self.path, missing_ok=True) or {"steps": {}}

    def done(self, step: str) -> bool:
        return self.data["steps"].get(step, {}).get("done", False)

    def record(self, step: str, wall_s: float, **extra) -> None:
        self.data["steps"][step] = {"done": True, "wall_s": round(wall_s, 1), **extra}
        atomic_write_json(self.path, self.data)


def _write_settings(root: Path, step: str, settings: dict) -> Path:
    """A step's settings as a --config file the command reads (kept for the record under ROOT/.recipe/)."""
    import yaml

    folder = root / ".recipe"
    folder.mkdir(parents=True, exist_ok=True)
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    path = folder / f"{step}.yaml"
    path.write_text(yaml.safe_dump(plain, sort_keys=False), encoding="utf-8")
    return path


def _run(verb: list[str], args: list[str]) -> None:
    cmd = [sys.executable, "-m", "preftune", *verb, *args]
    logger.info("recipe: $ preftune " + " ".join([*verb, *args]))
    done = subprocess.run(cmd, env=os.environ.copy())
    if done.returncode != 0:
        raise PreftuneError(f"recipe: `preftune {' '.join(verb)}` failed (exit {done.returncode}); fix the cause and "
                            "run the same recipe command again: finished steps are kept")


def _step(state: State, name: str, complete, action, measured=None) -> None:
    """Run `action` unless `complete()`; record its wall time. An output made outside the recipe (the
    same command run by hand) is adopted, with the time its own files record (`measured()`), if any."""
    if complete():
        if not state.done(name):
            state.record(name, measured() if measured else 0.0, adopted=True)
        logger.info(f"recipe: {name}: done before, skipped")
        return
    start = time.monotonic()
    action()
    if not complete():
        raise PreftuneError(f"recipe: {name} ended without its output")
    state.record(name, time.monotonic() - start)


def _only_run(folder: Path) -> Path | None:
    """The one finished run folder (DPO or SFT: a finished folder holds preftune_config.json) under folder."""
    if not folder.is_dir():
        return None
    finished = sorted(p for p in folder.iterdir() if is_finished_run(p))
    if len(finished) > 1:
        raise PreftuneError(f"{folder} holds {len(finished)} finished runs ({', '.join(p.name for p in finished)}); "
                            "the recipe expects one: move the others away")
    return finished[0] if finished else None


def rank_value(ev: dict, key: str) -> float:
    value = ev.get(key)
    return float("-inf") if value is None else float(value)


def select_run(runs: list[Path], rank_by: str) -> tuple[Path, list[dict]]:
    """The run with the highest validation `rank_by` (ties: accuracy, then name), and every run's row."""
    rows = []
    for run in runs:
        ev = read_eval(run / "eval.json")
        if ev is None:
            raise PreftuneError(f"{run}: no eval.json (validation): the recipe selects on it")
        rows.append({"run": f"{run.parent.name}/{run.name}", "path": str(run), **_validation_row(ev)})
    best = max(range(len(runs)), key=lambda i: (rank_value(rows[i], rank_by), rank_value(rows[i], "accuracy"),
                                                 rows[i]["run"]))
    return runs[best], rows


def _validation_row(ev: dict) -> dict:
    keys = ("n", "accuracy", "accuracy_ci95", "length_balanced_accuracy", "length_balanced_ci95",
            "longer_wins_baseline", "mean_margin")
    row = {k: ev.get(k) for k in keys}
    for stratum in ("chosen_shorter", "chosen_longer"):
        s = ev.get(stratum) or {}
        row[f"{stratum}_accuracy"], row[f"{stratum}_n"] = s.get("accuracy"), s.get("n")
    return row


def run_recipe(path: Path, root_override: str | None = None) -> dict:
    single_process("recipe")  # each process would run every step, and its commands inherit RANK/WORLD_SIZE
    recipe = load_recipe(path)
    root = Path(root_override or recipe["output_dir"])
    root.mkdir(parents=True, exist_ok=True)
    state = State(root)
    data = recipe["data"]
    total_start = time.monotonic()

    # 1. the judge's reward model, on the same split
    rm_dir = root / RM_NAME
    _step(state, "rm", lambda: (rm_dir / RM_EVAL_FILE).is_file(),
          lambda: _run(["rm", "train"], ["--config", str(_write_settings(
              root, "rm", {**data, **recipe["rm"], "output_dir": str(root), "name": RM_NAME}))]),
          measured=lambda: (read_json(rm_dir / METRICS_FILE, missing_ok=True)  # an older RM: in rm_config.json
                            or read_json(rm_dir / RM_CONFIG_FILE, missing_ok=True) or {}).get("train_runtime_s", 0.0))

    # 2. SFT (optional)
    model = recipe["dpo"].get("model")
    sft_root = root / "sft"
    if recipe["sft"] is not None:
        _step(state, "sft", lambda: _only_run(sft_root) is not None,
              lambda: _run(["sft"], ["--config", str(_write_settings(
                  root, "sft", {**data, **recipe["sft"], "output_dir": str(sft_root)}))]),
              measured=lambda: read_json(_only_run(sft_root) / METRICS_FILE).get("train_runtime_s", 0.0))
        model = str(_only_run(sft_root))
    base = recipe["sft"].get("model") if recipe["sft"] else None
    base = base or recipe["dpo"].get("model")

    # 3. one sweep per objective, every run from the same starting model and data
    runs = []
    for name, settings in recipe["runs"].items():
        group = root / "runs" / name
        # select 0: the sweep's own report scores no run on test; the recipe chooses across all groups below
        merged = {**data, **recipe["dpo"], **settings, "output_dir": str(group), "select": 0}
        if model is not None:
            merged["model"] = model
        _step(state, f"dpo/{name}", lambda g=group: g.is_dir() and bool(run_dirs(g)[0]) and not run_dirs(g)[1],
              lambda n=name, m=merged: _run(["sweep"], ["--config", str(_write_settings(root, f"dpo-{n}", m))]))
        runs += run_dirs(group)[0]

    # 4. select on validation
    selected, rows = select_run(runs, recipe["select"]["rank_by"])
    for row in rows:  # the run's own timer: reference pass, training, saving, validation (see train.run)
        row["wall_s"] = (read_json(Path(row["path"]) / METRICS_FILE, missing_ok=True) or {}).get("wall_s")
    logger.info(f"recipe: selected {selected.parent.name}/{selected.name} by validation "
                f"{recipe['select']['rank_by']} among {len(runs)} runs")

    # 5. the selected run once on test; 6. the judge on the test posts
    _step(state, "test", lambda: (selected / "test.json").is_file(),
          lambda: _run(["eval"], [str(selected), "--split", "test"]))
    judge_args = [str(selected), "--split", "test", "--rm", str(rm_dir)]
    if base and "base" not in recipe["judge"]:
        judge_args += ["--base", base]
    _step(state, "judge", lambda: (selected / JUDGE_TEST_FILE).is_file(),
          lambda: _run(["judge"], judge_args + ["--config", str(_write_settings(root, "judge", recipe["judge"]))]))

    summary = {
        "recipe": recipe["path"],
        "root": str(root),
        "steps": state.data["steps"],
        "wall_s_total": round(sum(s.get("wall_s", 0) for s in state.data["steps"].values()), 1),
        "wall_s_this_invocation": round(time.monotonic() - total_start, 1),
        "rank_by": recipe["select"]["rank_by"],
        "runs_compared": len(runs),
        "runs": rows,
        "selected_run": f"{selected.parent.name}/{selected.name}",
        "selected_path": str(selected),
        "selected_config": read_json(selected / CONFIG_FILE),
        "test": read_eval(selected / "test.json"),
        "judge_test": read_json(selected / JUDGE_TEST_FILE, missing_ok=True),
        "rm_eval": read_json(rm_dir / RM_EVAL_FILE, missing_ok=True),
    }
    atomic_write_json(root / SUMMARY_FILE, summary)
    logger.info(format_summary(summary))
    logger.info(f"recipe: wrote {root / SUMMARY_FILE}")
    return summary


def _f(x, digits: int = 3) -> str:
    return fmt.number(x, digits, gap="–")


def format_summary(s: dict) -> str:
    lines = [f"recipe {s['recipe']}: {s['runs_compared']} runs compared on validation by {s['rank_by']}", "",
             f"  {'run':<52}{'acc':>7}{'bal':>7}{'shorter':>9}{'longer':>8}{'longer-wins':>12}{'wall s':>8}"]
    for r in s["runs"]:
        mark = "*" if r["path"] == s["selected_path"] else " "
        lines.append(f"{mark} {r['run']:<52}{_f(r['accuracy']):>7}{_f(r['length_balanced_accuracy']):>7}"
                     f"{_f(r['chosen_shorter_accuracy']):>9}{_f(r['chosen_longer_accuracy']):>8}"
                     f"{_f(r['longer_wins_baseline']):>12}{_f(r['wall_s'], 0):>8}")
    t = s["test"] or {}
    lines += ["", f"selected {s['selected_run']}, on test (n={t.get('n')}): accuracy {_f(t.get('accuracy'))}, "
              f"length-balanced {fmt.cell(t.get('length_balanced_accuracy'), t.get('length_balanced_ci95'))}, "
              f"longer wins {_f(t.get('longer_wins_baseline'))}",
              f"total wall time of all steps: {s['wall_s_total']:.0f} s"]
    return "\n".join(lines)


# ---- CLI -----------------------------------------------------------------------------------------


def cmd_recipe(ns: argparse.Namespace) -> None:
    run_recipe(Path(ns.recipe), ns.output_dir)


def add_cli(verbs) -> None:
    p = verbs.add_parser("recipe", help="run a whole recipe from one YAML file: reward model, SFT, one DPO sweep per "
                                        "objective, selection on validation, the selected run on test, the judge "
                                        "(resumable; see examples/tldr-cpu.yaml)")
    p.add_argument("recipe", metavar="RECIPE.yaml", help="the recipe file (sections: " + ", ".join(TOP_KEYS) + ")")
    p.add_argument("--output-dir", default=None, help="write under this folder instead of the file's output_dir")
    p.set_defaults(func=cmd_recipe)
