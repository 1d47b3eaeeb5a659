"""`preftune recipe FILE.yaml`: a whole training recipe from one file, resumable.

Steps, each a preftune command in its own process: the reward model, SFT (optional), one DPO sweep per
objective, selection on validation (each run's paired interval against the baseline run), then the
selected run alone on test and judged vs the base and vs its SFT model; ROOT/recipe.json
(recipe_summary.py) records every step's wall time and numbers. The whole file is checked before any
step (recipe_file.py); a finished step is skipped only when its recorded settings are the file's (else
refused, or retrained with --overwrite); a killed one resumes. Steps, sections, results: docs/recipe.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from preftune.errors import PreftuneError, located, writable_folder
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
)
from preftune.runs.lifecycle import run_spec, stored_spec
from preftune.runs.lock import root_lock
from preftune.runs.results import read_eval
from preftune.sweep import paired
from preftune.sweep.recipe_file import (
    RM_NAME,
    TOP_KEYS,
    Steps,
    baseline_group,
    load_recipe,
    step_configs,
)
from preftune.sweep.recipe_summary import (
    JUDGE_VS_SFT_FILE,
    compare_with_baseline,
    format_summary,
    run_label,
    summarize,
)

logger = logging.getLogger(__name__)

STATE_FILE = "recipe_state.json"
SUMMARY_FILE = "recipe.json"


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


# ---- finished steps: the file's settings, or refused --------------------------------------------

PATH_KEYS = ("model", "rm", "base", "dataset")  # the same folder may be written relative or absolute


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _same(key: str, recorded: Any, wanted: Any) -> bool:
    if recorded == wanted:
        return True
    return (key in PATH_KEYS and isinstance(recorded, str) and isinstance(wanted, str)
            and Path(recorded).exists() and Path(recorded).resolve() == Path(wanted).resolve())


def differences(recorded: dict, wanted: dict, file: str) -> list[str]:
    """'KEY OLD in the finished run, NEW in FILE' for each setting (of each section: data, train, ...) the two
    hold and disagree on; a setting the finished run predates is not compared."""
    return [f"{key} {_shown(recorded[section][key])} in the finished run, {_shown(value)} in {file}"
            for section, settings in wanted.items() for key, value in settings.items()
            if isinstance(recorded.get(section), dict) and key in recorded[section]
            and not _same(key, recorded[section][key], value)]


def _run_differences(folder: Path, kind: str, wanted: dict, file: str) -> list[str]:
    recorded = stored_spec(folder, kind)
    if recorded is None:
        return [f"{folder} is not a readable {kind} run of this version (no settings to compare)"]
    return differences(recorded, wanted, file)


def _finished(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_finished_run(p)) if folder.is_dir() else []


def stale_steps(root: Path, steps: Steps, file: str) -> dict[str, tuple[list[Path], list[str]]]:
    """Each finished step whose recorded settings are not the file's: step → (the outputs made with the old
    settings, what differs key by key). A finished DPO run the grid no longer names is compared with the
    planned run it is closest to."""
    stale: dict[str, tuple[list[Path], list[str]]] = {}

    def note(step: str, output: Path, diffs: list[str]) -> None:
        if diffs:
            stale.setdefault(step, ([], []))
            stale[step][0].append(output)
            stale[step][1].extend(d for d in diffs if d not in stale[step][1])

    rm_dir, (rm_data, rm_cfg) = root / RM_NAME, steps.rm
    if rm_dir.exists() and reward_model_settings_known(rm_dir):
        note("rm", rm_dir, _run_differences(rm_dir, "rm", run_spec("rm", rm_data, rm_cfg), file))
    if steps.sft:
        for run in _finished(root / "sft"):
            note("sft", run, _run_differences(run, "sft", run_spec("sft", *steps.sft), file))
    for name, (data_cfg, _, planned) in steps.dpo.items():
        wanted = {p.name: run_spec("dpo", data_cfg, p.cfg) for p in planned}
        for run in _finished(root / "runs" / name):
            options = [wanted[run.name]] if run.name in wanted else list(wanted.values())
            note(f"dpo/runs.{name}", run, min((_run_differences(run, "dpo", w, file) or [] for w in options), key=len)
                 or ([] if run.name in wanted else [f"{run.name} is not a run of this grid"]))
    judged = {JUDGE_TEST_FILE: ("judge", dataclasses.asdict(steps.judge))}
    if steps.judge_vs_sft is not None:  # the same judge, greedy, against the SFT model
        judged[JUDGE_VS_SFT_FILE] = ("judge_vs_sft", dataclasses.asdict(steps.judge_vs_sft))
    for run in planned_runs(root, steps):
        for name, (step, wanted) in judged.items():
            recorded = read_json(run / name, missing_ok=True) if run.is_dir() else None
            if recorded is not None:
                note(step, run / name, differences({"judge": recorded.get("config") or {}}, {"judge": wanted}, file))
    return stale


def reward_model_settings_known(rm_dir: Path) -> bool:
    """A reward model folder from before run kinds (rm_config.json only) records no spec to compare."""
    if (rm_dir / CONFIG_FILE).is_file():
        return True
    logger.warning(f"recipe: {rm_dir} is a reward model from an older preftune: its settings are not compared "
                   "with the file's; delete it to train it again")
    return False


def planned_runs(root: Path, steps: Steps) -> list[Path]:
    """Every DPO run folder the file plans, in order."""
    return [root / "runs" / name / p.name for name, (_, _, planned) in steps.dpo.items() for p in planned]


def _remove(path: Path) -> None:
    logger.info(f"recipe: --overwrite: deleting {path}")
    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def retrain(root: Path, steps: Steps, stale: dict[str, tuple[list[Path], list[str]]]) -> None:
    """--overwrite: delete, before any step, the outputs made with the old settings and what was made from
    them: a new reward model invalidates every judgement, a new SFT model every DPO run (and its partial)."""
    for outputs, _ in stale.values():
        for output in outputs:
            _remove(output)
    if "rm" in stale:
        for run in planned_runs(root, steps):
            for name in (JUDGE_TEST_FILE, JUDGE_VS_SFT_FILE):
                if (run / name).exists():
                    _remove(run / name)
    if "sft" in stale:
        for name in steps.dpo:
            if (root / "runs" / name).exists():
                _remove(root / "runs" / name)


def check_finished(root: Path, steps: Steps, file: str, overwrite: bool) -> None:
    """Refuse (without --overwrite) or clear (with it) every finished step made with other settings."""
    stale = stale_steps(root, steps, file)
    if not stale:
        return
    what = " | ".join(f"step {step}: {'; '.join(diffs)}" for step, (_, diffs) in stale.items())
    if not overwrite:
        raise PreftuneError(f"{file}: settings changed since these steps finished: {what}. Pass --overwrite to "
                            "retrain them (their old runs are deleted), undo the edit, or set another output_dir")
    logger.info(f"recipe: --overwrite: retraining {', '.join(stale)} ({what})")
    retrain(root, steps, stale)


def recipe_root(recipe: dict, override: str | None) -> Path:
    """ROOT as a writable folder (created if needed), or a one-line error naming output_dir or --output-dir."""
    if override:
        return writable_folder(override, "--output-dir", "pass another folder")
    setting = located(recipe["path"], recipe["lines"].get(("output_dir",)), "output_dir")
    return writable_folder(recipe["output_dir"], setting,
                           "set output_dir to another folder (it is created if missing)")


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


def run_recipe(path: Path, root_override: str | None = None, overwrite: bool = False) -> dict:
    single_process("recipe")  # each process would run every step, and its commands inherit RANK/WORLD_SIZE
    recipe = load_recipe(path)
    root = recipe_root(recipe, root_override)
    with root_lock(root, "recipe"):  # a second recipe writing the same ROOT is refused in one line
        return _run_steps(recipe, root, overwrite, root_override or recipe["output_dir"])


def _run_steps(recipe: dict, root: Path, overwrite: bool, root_as_given: str) -> dict:
    steps = step_configs(recipe, root)
    check_finished(root, steps, recipe["path"], overwrite)
    state = State(root)
    total_start = time.monotonic()

    # 1. the judge's reward model, on the same split
    rm_dir = root / RM_NAME
    _step(state, "rm", lambda: (rm_dir / RM_EVAL_FILE).is_file(),
          lambda: _run(["rm", "train"], ["--config", str(_write_settings(root, "rm", steps.settings["rm"]))]),
          measured=lambda: (read_json(rm_dir / METRICS_FILE, missing_ok=True)  # an older RM: in rm_config.json
                            or read_json(rm_dir / RM_CONFIG_FILE, missing_ok=True) or {}).get("train_runtime_s", 0.0))

    # 2. SFT (optional)
    if steps.sft is not None:
        sft_run = root / "sft" / steps.sft[1].run_name
        _step(state, "sft", lambda: is_finished_run(sft_run),
              lambda: _run(["sft"], ["--config", str(_write_settings(root, "sft", steps.settings["sft"]))]),
              measured=lambda: read_json(sft_run / METRICS_FILE).get("train_runtime_s", 0.0))

    # 3. one sweep per objective, every run from the same starting model and data
    for name in steps.dpo:
        group = [run for run in planned_runs(root, steps) if run.parent.name == name]
        _step(state, f"dpo/{name}", lambda g=group: all(is_finished_run(r) for r in g),
              lambda n=name: _run(["sweep"], ["--config", str(_write_settings(root, f"dpo-{n}",
                                                                              steps.settings[f"dpo/{n}"]))]))
    runs = planned_runs(root, steps)

    # 4. select on validation; each run's paired interval against the baseline run (validation only)
    selected, rows = select_run(runs, recipe["select"]["rank_by"])
    for row in rows:  # the run's own timer: reference pass, training, saving, validation (see train.run)
        row["wall_s"] = (read_json(Path(row["path"]) / METRICS_FILE, missing_ok=True) or {}).get("wall_s")
    group, why = baseline_group(recipe, steps)
    baseline = next(r for r in runs if r.parent.name == group) if group else None
    compare_with_baseline(runs, rows, baseline, why)
    vs = next(r for r, run in zip(rows, runs) if run == selected)["vs_baseline"]
    logger.info(f"recipe: selected {run_label(selected)} by validation {recipe['select']['rank_by']} among "
                f"{len(runs)} runs; " + (paired.verdict(run_label(selected), vs) if baseline else why))

    # 5. the selected run once on test; 6. the judge on the test posts, vs the base and vs the SFT model
    _step(state, "test", lambda: (selected / "test.json").is_file(),
          lambda: _run(["eval"], [str(selected), "--split", "test"]))
    _step(state, "judge", lambda: (selected / JUDGE_TEST_FILE).is_file(),
          lambda: _run(["judge"], [str(selected), "--config", str(_write_settings(root, "judge",
                                                                                  steps.settings["judge"]))]))
    if steps.judge_vs_sft is not None:
        _step(state, "judge_vs_sft", lambda: (selected / JUDGE_VS_SFT_FILE).is_file(),
              lambda: _run(["judge"], [str(selected), "--config", str(_write_settings(
                  root, "judge_vs_sft", steps.settings["judge_vs_sft"])), "--output", JUDGE_VS_SFT_FILE]))
    current = {"rm", "sft", "test", "judge", "judge_vs_sft", *(f"dpo/{name}" for name in steps.dpo)}
    state.data["steps"] = {k: v for k, v in state.data["steps"].items() if k in current}

    sft_run = root / "sft" / steps.sft[1].run_name if steps.sft is not None else None
    summary = summarize(recipe, root, root_as_given, state.data["steps"], runs, rows, selected, baseline, why,
                        sft_run, time.monotonic() - total_start)
    atomic_write_json(root / SUMMARY_FILE, summary)
    logger.info(format_summary(summary))
    logger.info(f"recipe: wrote {root / SUMMARY_FILE}")
    return summary


# ---- CLI -----------------------------------------------------------------------------------------


def cmd_recipe(ns: argparse.Namespace) -> None:
    run_recipe(Path(ns.recipe), ns.output_dir, ns.overwrite)


def add_cli(verbs) -> None:
    p = verbs.add_parser("recipe", help="run a whole recipe from one YAML file: reward model, SFT, one DPO sweep per "
                                        "objective, selection on validation, the selected run on test, the judge "
                                        "(resumable; see examples/tldr-cpu.yaml)")
    p.add_argument("recipe", metavar="RECIPE.yaml", help="the recipe file (sections: " + ", ".join(TOP_KEYS) + ")")
    p.add_argument("--output-dir", default=None, help="write under this folder instead of the file's output_dir")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain the finished steps whose recorded settings differ from the file's (their old runs, "
                        "and the runs and judgements made from them, are deleted); without it they are refused")
    p.set_defaults(func=cmd_recipe)
