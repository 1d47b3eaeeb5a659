"""`preftune sweep`: one DPO run per point of a grid over lr × batch size × epochs (× beta × loss × its settings).

The data are prepared and tokenized once; each run trains and evaluates into ROOT/<run name>/, and
`preftune report ROOT` ends the sweep. Safe to kill and re-run: finished runs are skipped (after checking
their settings), an interrupted one resumes from its last checkpoint (--save-steps), a lock keeps two
sweeps out of one ROOT. Settings come from a YAML file (--config, read by config/files.py), flags, or
both. Details: docs/sweeps-and-hub.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import logging
import re
import time
import typing
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from preftune.config import (
    LOSS_FIELDS,
    DataConfig,
    ReportConfig,
    SweepConfig,
    TrainConfig,
    add_arguments,
    flag_name,
    run_name,
)
from preftune.config.files import coerce, field_rules, load_config_file, read_yaml
from preftune.errors import DataError, PreftuneError
from preftune.runs import trackers
from preftune.runs.folder import atomic_write_json, partial_of

logger = logging.getLogger(__name__)

GRID_KEYS = tuple(f.name for f in dataclasses.fields(SweepConfig))
NOT_SWEPT = ("overwrite",)  # a sweep never replaces a finished run: it skips it
PLAN_FILE = "sweep.json"


@dataclass(frozen=True)
class PlannedRun:
    name: str
    cfg: TrainConfig


# loss-setting axes: (field, run-name prefix); a loss-specific one (config.LOSS_FIELDS) varies only on its loss's runs
SETTING_AXES = (("rdpo_alpha", "rdpo-alpha"), ("simpo_gamma", "simpo-gamma"), ("ld_alpha", "ld-alpha"),
                ("nll_weight", "nll"))


def _loss_settings(grid: SweepConfig, loss: str) -> list[dict]:
    """The combinations of the loss-setting axes a run of `loss` takes: an axis of another loss stays at
    its default (one run, not one per value)."""
    axes = [(name, getattr(grid, name) if LOSS_FIELDS.get(name, loss) == loss else (getattr(TrainConfig, name),))
            for name, _ in SETTING_AXES]
    return [dict(zip([n for n, _ in axes], values)) for values in itertools.product(*(v for _, v in axes))]


def expand(grid: SweepConfig, base: TrainConfig) -> list[PlannedRun]:
    """Every combination of the grid, named like the original pipeline's runs; `_beta{b}` / `_loss-{l}`
    (and `_rdpo-alpha{a}`, `_simpo-gamma{g}`, `_ld-alpha{a}`, `_nll{w}`) are added only when that axis takes
    several values, so names stay unique and short. A loss-specific axis multiplies only its loss's runs."""
    runs = []
    for lr, bs, epochs, beta, loss in itertools.product(grid.lr, grid.batch_size, grid.epochs, grid.beta, grid.loss):
        name = run_name(lr, bs, epochs)
        name += f"_beta{beta!r}" if len(grid.beta) > 1 else ""
        name += f"_loss-{loss}" if len(grid.loss) > 1 else ""
        for settings in _loss_settings(grid, loss):
            suffix = "".join(f"_{prefix}{settings[field]!r}" for field, prefix in SETTING_AXES
                             if len(getattr(grid, field)) > 1 and LOSS_FIELDS.get(field, loss) == loss)
            runs.append(PlannedRun(name + suffix, replace(base, lr=lr, batch_size=bs, epochs=epochs, beta=beta,
                                                          loss=loss, **settings)))
    return runs


# ---- settings: YAML file + flags ----------------------------------------------------------------


SETTINGS = (SweepConfig, DataConfig, TrainConfig, ReportConfig)  # a name two hold is the first one's (the grid's)


def _settable() -> dict[str, Any]:
    """Every setting a sweep takes, name → type hint (the grid's, then the data's, then the train's)."""
    hints = dict(typing.get_type_hints(SweepConfig))
    for cls in SETTINGS[1:]:
        hints.update({k: v for k, v in typing.get_type_hints(cls).items()
                      if k not in hints and k not in NOT_SWEPT})
    return hints


def build_configs(settings: dict[str, Any]) -> tuple[DataConfig, TrainConfig, SweepConfig]:
    """(data, base train, grid) configs from merged settings; each class validates its own fields."""
    from preftune.data.columns import parse_column_map

    grid = SweepConfig(**{k: v for k, v in settings.items() if k in GRID_KEYS})
    data_names = {f.name for f in dataclasses.fields(DataConfig)}
    data_cfg = DataConfig(**{k: v for k, v in settings.items() if k in data_names})
    parse_column_map(data_cfg.column_map)  # a malformed --column-map fails before any work
    train_names = {f.name for f in dataclasses.fields(TrainConfig)} - data_names - set(GRID_KEYS)
    base = TrainConfig(**{k: v for k, v in settings.items() if k in train_names})
    for planned in expand(grid, base):  # every combination must be a valid run before any starts
        TrainConfig(**asdict(planned.cfg))
    trackers.require(base.report_to)
    return data_cfg, base, grid


# ---- the sweep -----------------------------------------------------------------------------------


def sweep_lock(root: Path):
    """Hold ROOT/.sweep.lock for the sweep, without waiting: a second sweep into ROOT is refused. The
    lock is the OS's (runs/lock.py), so it is released even when the holder is SIGKILLed."""
    from preftune.runs.lock import root_lock

    return root_lock(root, "sweep")


def differences(stored: dict, wanted: dict) -> list[str]:
    """Settings in which a finished run differs from the wanted one (keys it predates are not compared)."""
    return [f"{k}: {stored[section][k]!r} there, {v!r} now"
            for section in ("data", "train") for k, v in wanted[section].items()
            if k in stored.get(section, {}) and stored[section][k] != v]


def run_state(root: Path, planned: PlannedRun, data_cfg: DataConfig) -> str:
    """'finished', 'resume from checkpoint-N', 'restart' or 'new'. A finished run trained with other
    settings is an error: the sweep would report it as if it were this grid's."""
    from preftune.runs.lifecycle import resume_point, run_spec, stored_spec

    final, partial = root / planned.name, partial_of(root / planned.name)
    if final.exists():
        stored = stored_spec(final, "dpo")
        if stored is None:
            raise PreftuneError(f"{final} exists but is not a preftune run folder; move it away and re-run")
        diff = differences(stored, run_spec("dpo", data_cfg, planned.cfg))
        if diff:
            raise PreftuneError(f"{final} was trained with other settings ({'; '.join(diff)}); use another "
                                "--output-dir, or delete that run folder to train it again")
        return "finished"
    if partial.exists():
        checkpoint = resume_point(partial, "dpo", data_cfg, planned.cfg)
        return f"resume from {checkpoint.name}" if checkpoint else "restart"
    return "new"


def write_plan(root: Path, data_cfg: DataConfig, base: TrainConfig, grid: SweepConfig, runs: list[PlannedRun]) -> None:
    """ROOT/sweep.json: what this sweep is (the report says which of its runs are finished)."""
    plan = {"grid": asdict(grid), "data": asdict(data_cfg),
            "train": {k: v for k, v in asdict(base).items() if k not in GRID_KEYS}, "runs": [r.name for r in runs]}
    atomic_write_json(root / PLAN_FILE, plan)


def plan(held: contextlib.ExitStack, root: Path, runs: list[PlannedRun], data_cfg: DataConfig, base: TrainConfig,
         grid: SweepConfig) -> dict[str, str]:
    """Take ROOT's lock (held until `held` closes), read each run's state, write ROOT/sweep.json. Returns
    run name → state."""
    held.enter_context(sweep_lock(root))
    states = {r.name: run_state(root, r, data_cfg) for r in runs}
    write_plan(root, data_cfg, base, grid, runs)
    return states


def sweep(data_cfg: DataConfig, base: TrainConfig, grid: SweepConfig, report_cfg: ReportConfig | None = None) -> Path:
    """Train and evaluate every run of the grid not finished yet, then write the report. Returns ROOT.
    Under a launcher every rank trains the runs rank 0 planned; rank 0 alone holds the lock, reads the
    runs' states from its disk and writes the plan and report (a rank on another machine, without a shared
    filesystem, would see no run finished)."""
    from preftune.launch import agreed, check_launch, from_rank_zero
    from preftune.runs.dpo import prepare_run_data, run
    from preftune.runs.lifecycle import make_root
    from preftune.sweep.report import report

    rank = check_launch()[0]  # first: a launch that is not one process group stops before the lock and the plan
    root = Path(base.output_dir)
    runs = expand(grid, base)
    agreed(make_root, root)
    with contextlib.ExitStack() as held:
        states = from_rank_zero(plan, held, root, runs, data_cfg, base, grid)  # its errors too, on every rank
        todo = [r for r in runs if states[r.name] != "finished"]
        logger.info(f"sweep: {len(runs)} runs in {root}; {len(runs) - len(todo)} finished (skipped), "
                    f"{len(todo)} to train")
        for r in runs:
            logger.info(f"  {r.name:<44} {'finished: skipped' if states[r.name] == 'finished' else states[r.name]}")
        data = prepare_run_data(data_cfg, base) if todo else None  # once, shared by every run
        for i, planned in enumerate(todo, 1):
            logger.info(f"sweep: [{i}/{len(todo)}] {planned.name}")
            start = time.perf_counter()
            run(data, planned.cfg, name=planned.name)
            logger.info(f"sweep: [{i}/{len(todo)}] {planned.name} finished in {time.perf_counter() - start:.1f} s")
    if rank == 0:
        report(root, report_cfg)
    return root


# ---- CLI -----------------------------------------------------------------------------------------


def _parse_list(text: str, hint: Any, flag: str) -> tuple:
    return coerce([v.strip() for v in text.split(",") if v.strip()], hint, flag)


def settings_from_args(ns: argparse.Namespace) -> dict[str, Any]:
    """The --config file's settings, overridden by the flags given (absent flags are not in `ns`)."""
    hints = _settable()
    settings = load_config_file(Path(ns.config), hints, rules=field_rules(SETTINGS)) if ns.config else {}
    for key, value in vars(ns).items():
        if key in GRID_KEYS:
            settings[key] = _parse_list(value, hints[key], flag_name(key))
        elif key in hints:
            settings[key] = value
    return settings


def in_file(ns: argparse.Namespace, error: PreftuneError) -> PreftuneError:
    """A rule between settings (`--lr lists a value twice`, `--rdpo-alpha applies to --loss rdpo only`)
    whose first flag is a key of the --config file, not a flag given: FILE:LINE naming that key."""
    flag = re.search(r"--([a-z0-9][a-z0-9-]*)", str(error))
    if not ns.config or not flag:
        return error
    key, (_, lines) = flag[1].replace("-", "_"), read_yaml(Path(ns.config))
    if key not in vars(ns) and (key,) in lines:  # absent from `ns`: not given as a flag (suppressed defaults)
        return DataError(ns.config, lines[(key,)], key, str(error))
    return error


def cmd_sweep(ns: argparse.Namespace) -> None:
    settings = settings_from_args(ns)
    report_names = {f.name for f in dataclasses.fields(ReportConfig)}
    try:
        configs = build_configs({k: v for k, v in settings.items() if k not in report_names})
        report_cfg = ReportConfig(**{k: v for k, v in settings.items() if k in report_names})
    except PreftuneError as e:
        raise in_file(ns, e) from None
    sweep(*configs, report_cfg)


def add_cli(verbs) -> None:
    parser = verbs.add_parser(
        "sweep", help="a grid of DPO runs (lr × batch size × epochs [× beta × loss]) → ROOT/<run>/, "
        "resumable, then `preftune report ROOT`",
        description=__doc__.split("\n\n")[0] + " Re-run the same command to resume.",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file of settings: the grid and any data or train "
                        "setting, keys named like the flags (see examples/sweep.yaml); flags win over it")
    # suppress_defaults: a flag left out stays out of the namespace, so it does not override the YAML file
    add_arguments(parser, SweepConfig, suppress_defaults=True,
                  title="grid (comma-separated values; one run per combination)")
    add_arguments(parser, DataConfig, suppress_defaults=True)
    add_arguments(parser, TrainConfig, skip=GRID_KEYS + NOT_SWEPT, suppress_defaults=True)
    add_arguments(parser, ReportConfig, suppress_defaults=True, title="the report that ends the sweep")
    parser.set_defaults(func=cmd_sweep)
