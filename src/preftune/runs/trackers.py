"""Experiment trackers: `--report-to tensorboard|trackio|wandb|mlflow` on train, sweep, sft and rm train.

One rule for every trainer (docs/runs.md): a run is logged to project P (`--tracker-project`, default the
--output-dir folder's name) under its folder name, with `train/<key>` for every key of each logged step
of its train_log.jsonl, its settings as hyperparameters, and once evaluated `eval/<metric>` at the last
step (`log_final_metrics`). The fast engine and `rm train` log through accelerate's tracking API, the TRL
engine through the Trainer's `report_to`. Files go under ROOT/tracking/; each run folder gets
tracking.json (tracker, project, run, where, settings), how its eval metrics and a resumed run find the
same tracker run again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preftune import log
from preftune.config.registries import TRACKERS
from preftune.errors import PreftuneError, writable_folder
from preftune.runs.folder import atomic_write_json

logger = logging.getLogger(__name__)

PACKAGES = TRACKERS  # --report-to name → the package it needs (config/registries.py)
TRACKING_DIR = "tracking"
RECORD_FILE = "tracking.json"


def require(report_to: str) -> None:
    """A one-line error, before any work, when the tracker's package is not installed (accelerate
    and transformers would only warn and train without it)."""
    if report_to == "none":
        return
    package = PACKAGES[report_to]
    if importlib.util.find_spec(package) is None:
        extra = " (or `pip install 'preftune[trackers]'`)" if package in ("tensorboard", "trackio") else ""
        raise PreftuneError(f"--report-to {report_to} needs the {package} package, which is not installed: "
                            f"run `pip install {package}`{extra}")


def check_paths(cfg: Any, run: str) -> None:
    """Before any work: every folder `--report-to` will write for run `run` is a writable folder (created
    here), so a tracker that cannot write stops the command before training, not after it."""
    if cfg.report_to == "none":
        return
    tracking = Tracking(cfg.report_to, project_name(cfg), run, Path(cfg.output_dir))
    env = {"trackio": "TRACKIO_DIR", "wandb": "WANDB_DIR", "mlflow": "MLFLOW_TRACKING_URI"}.get(cfg.report_to)
    if env and env in os.environ:
        if cfg.report_to == "mlflow":
            return  # a server or a store of the user's choice: MLflow checks it
        folder, what = (_trackio_store(tracking) if cfg.report_to == "trackio" else Path(os.environ[env])), env
    else:
        folder = {"tensorboard": tracking.tensorboard_root / run, "trackio": _trackio_store(tracking),
                  "wandb": tracking.folder, "mlflow": tracking.folder / "mlruns"}[cfg.report_to]
        what = "--output-dir"
    writable_folder(folder, f"--report-to {cfg.report_to}", f"change {what}")


def check_written(run_dir: Path, root: Path) -> None:
    """Once a run is logged (rank 0): its local tracker (run_dir/tracking.json's) wrote it where the record
    says; trackio and TensorBoard only warn when they cannot, which must fail the command, not pass as
    tracked. No record: nothing to check."""
    tracking = _from_record(_read_record(run_dir) or {}, Path(root))
    if tracking is None:
        return
    if tracking.report_to == "tensorboard":
        folder = tracking.tensorboard_root / tracking.run
        if not any(p.name.startswith("events.out.tfevents") for p in folder.rglob("*") if p.is_file()):
            raise PreftuneError(f"--report-to tensorboard wrote no event file under {folder}; the run is not tracked")
    elif tracking.report_to == "trackio":
        db = _trackio_store(tracking) / f"{tracking.project}.db"
        if not db.is_file() or tracking.run not in _trackio_runs(tracking.project):
            raise PreftuneError(f"--report-to trackio could not write run {tracking.run} to {db}; the run is not "
                                "tracked (check that the trackio store, TRACKIO_DIR, is writable)")


def _trackio_runs(project: str) -> list[str]:
    try:
        from trackio.sqlite_storage import SQLiteStorage

        return list(SQLiteStorage.get_runs(project))
    except Exception:  # noqa: BLE001 - an unreadable store holds no run
        return []


def project_name(cfg: Any) -> str:
    """--tracker-project, else the --output-dir folder's name (`runs` for ROOT=runs)."""
    return cfg.tracker_project or Path(cfg.output_dir).resolve().name or "preftune"


def hparams(cfg: Any, seed: int, **extra: Any) -> dict[str, Any]:
    """The run's settings as a tracker's hyperparameters: the config's fields, the seed, and `extra`."""
    return {**dataclasses.asdict(cfg), "seed": seed, **extra}


def step_values(record: dict) -> dict[str, float]:
    """One train_log.jsonl record as tracker scalars: `train/<key>` (the step is the x axis)."""
    return {f"train/{k}": float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def eval_values(metrics: dict, prefix: str = "eval/") -> dict[str, float]:
    """Every finite number of an eval.json-like dict, nested keys joined by '/': `eval/accuracy`, ..."""
    values = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            values.update(eval_values(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            values[f"{prefix}{key}"] = float(value)
    return values


@dataclass
class Tracking:
    """Where and under which names one run (a DPO run or a reward model) is tracked."""

    report_to: str  # one of PACKAGES
    project: str
    run: str  # the run folder's name
    root: Path  # --output-dir
    hparams: dict = field(default_factory=dict)
    run_id: str | None = None  # W&B: chosen here; MLflow: the server's, once known (to log to it again)
    resumed_step: int | None = None  # continuing the tracker run of an interrupted training from this step

    @property
    def folder(self) -> Path:
        return self.root / TRACKING_DIR

    @property
    def tensorboard_root(self) -> Path:
        return self.folder / "tensorboard"

    def where(self) -> str:
        """Where the run's data go, and how to look at them, in words."""
        if self.report_to == "tensorboard":
            return f"{self.tensorboard_root / self.run} (view: tensorboard --logdir {self.tensorboard_root})"
        if self.report_to == "trackio":
            store = _trackio_store(self)
            return f"{store} (view: TRACKIO_DIR={store} trackio show --project {self.project})"
        if self.report_to == "wandb":
            return f"W&B project {self.project} (local files: {os.environ.get('WANDB_DIR') or self.folder})"
        return f"MLflow experiment {self.project} at {os.environ.get('MLFLOW_TRACKING_URI') or _mlflow_uri(self)}"

    def environment(self) -> dict[str, str]:
        """What the trackers read from the environment: the folders (only where the user has not set
        them: their choice wins) and the names (always ours: per run)."""
        where = {"trackio": {"TRACKIO_DIR": str(self.folder / "trackio")},
                 "wandb": {"WANDB_DIR": str(self.folder)},
                 "mlflow": {"MLFLOW_TRACKING_URI": _mlflow_uri(self)}}.get(self.report_to, {})
        env = {k: v for k, v in where.items() if k not in os.environ}
        if self.report_to == "tensorboard":  # transformers' TensorBoardCallback reads it
            env["TENSORBOARD_LOGGING_DIR"] = str(self.tensorboard_root / self.run)
        elif self.report_to == "wandb":  # transformers' WandbCallback reads these
            env.update(WANDB_PROJECT=self.project, WANDB_RUN_ID=str(self.run_id), WANDB_RESUME="allow")
        elif self.report_to == "mlflow":  # and MLflowCallback these
            env["MLFLOW_EXPERIMENT_NAME"] = self.project
            if self.run_id:
                env["MLFLOW_RUN_ID"] = self.run_id
        return env

    # ---- how a run reaches its tracker (and `log_final_metrics` below) ----

    def trainer_args(self) -> dict[str, Any]:
        """TrainingArguments fields for a transformers Trainer (DPOTrainer, RewardTrainer)."""
        return {"report_to": [self.report_to], "run_name": self.run, "project": self.project}

    def accelerator_args(self) -> dict[str, Any]:
        """Accelerator(...) keyword arguments."""
        args: dict[str, Any] = {"log_with": self.report_to}
        if self.report_to == "tensorboard":
            args["project_dir"] = str(self.tensorboard_root)  # accelerate writes to project_dir/<project_name>
        return args

    def init_trackers_args(self, final: bool = False) -> dict[str, Any]:
        """accelerator.init_trackers(...) keyword arguments, for the training or (`final`) for the
        eval metrics after it. A resumed run logs the steps after its checkpoint again: TensorBoard
        drops the stale ones (purge_step), the others continue the run."""
        kwargs: dict[str, Any] = {}
        project, config = self.project, None if final else self.hparams
        continuing = final or self.resumed_step is not None
        if self.report_to == "tensorboard":
            project = self.run  # TensorBoard has no projects: the run is a folder under the tensorboard/ root
            if self.resumed_step is not None and not final:
                kwargs["purge_step"] = self.resumed_step + 1
        elif self.report_to == "trackio":
            # the config goes to trackio.init: accelerate's store_init_configuration would add a stray key to it
            kwargs.update(name=self.run, resume="allow" if continuing else "never", config=self.hparams)
            config = None
        elif self.report_to == "wandb":
            kwargs.update(name=self.run, id=self.run_id, resume="allow")
        elif self.report_to == "mlflow":
            kwargs.update(run_name=self.run, run_id=self.run_id)
        return {"project_name": project, "config": config, "init_kwargs": {self.report_to: kwargs}}


def trainer_args(tracking: Tracking | None) -> dict[str, Any]:
    """TrainingArguments fields: the tracker's, or none at all."""
    return tracking.trainer_args() if tracking else {"report_to": []}


def _mlflow_uri(tracking: Tracking) -> str:
    return (tracking.folder / "mlruns").resolve().as_uri()


def _trackio_store(tracking: Tracking) -> Path:
    """Trackio's store: fixed when trackio is first imported (from TRACKIO_DIR), so a process that
    loaded it before keeps that store."""
    loaded = sys.modules.get("trackio.utils")
    if loaded is not None:
        return Path(loaded.TRACKIO_DIR)
    return Path(os.environ.get("TRACKIO_DIR") or tracking.folder / "trackio")


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _read_record(run_dir: Path) -> dict | None:
    try:
        record = json.loads((run_dir / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _from_record(record: dict, root: Path) -> Tracking | None:
    try:
        return Tracking(record["report_to"], record["project"], record["run"], root, record.get("hparams") or {},
                        record.get("run_id"))
    except (KeyError, TypeError):
        return None


def _write_record(run_dir: Path, tracking: Tracking) -> None:
    atomic_write_json(run_dir / RECORD_FILE, {
        "report_to": tracking.report_to, "project": tracking.project, "run": tracking.run,
        "where": tracking.where(), "run_id": tracking.run_id, "hparams": tracking.hparams})


@contextlib.contextmanager
def reporting(cfg: Any, run_dir: Path, run: str, settings: dict, resumed_step: int | None = None):
    """For the length of a training: the run's Tracking (None with --report-to none), its
    environment set, run_dir/tracking.json written (rank 0). A fresh run starts its tracker run
    afresh (its old TensorBoard folder is removed); a resumed one continues it."""
    if cfg.report_to == "none":
        if log.rank() == 0:
            (run_dir / RECORD_FILE).unlink(missing_ok=True)  # from an earlier attempt that tracked
        yield None
        return
    require(cfg.report_to)
    tracking = Tracking(cfg.report_to, project_name(cfg), run, Path(cfg.output_dir), settings)
    earlier = _from_record(_read_record(run_dir) or {}, tracking.root) if resumed_step is not None else None
    if earlier and (earlier.report_to, earlier.project, earlier.run) == (tracking.report_to, tracking.project, run):
        tracking.run_id, tracking.resumed_step = earlier.run_id, resumed_step
    elif cfg.report_to == "wandb":  # a fresh W&B run, under an id chosen here so the eval metrics can rejoin it
        tracking.run_id = uuid.uuid4().hex[:16]
    if log.rank() == 0:
        if cfg.report_to == "tensorboard" and tracking.resumed_step is None:
            shutil.rmtree(tracking.tensorboard_root / run, ignore_errors=True)
        tracking.folder.mkdir(parents=True, exist_ok=True)
        _write_record(run_dir, tracking)
        logger.info(f"tracking: {cfg.report_to}, project {tracking.project}, run {run} → {tracking.where()}")
        wanted = Path(os.environ.get("TRACKIO_DIR") or tracking.folder / "trackio")
        if cfg.report_to == "trackio" and _trackio_store(tracking) != wanted:
            logger.warning(f"tracking: trackio was loaded earlier in this process with its store in "
                           f"{_trackio_store(tracking)}, so this run is logged there, not in {wanted}")
    with _environment(tracking.environment()):
        yield tracking
    if cfg.report_to == "mlflow" and log.rank() == 0:  # the id MLflow gave the run: the eval metrics go to it
        import mlflow

        last = mlflow.last_active_run()
        tracking.run_id = last.info.run_id if last else tracking.run_id
        _write_record(run_dir, tracking)


@contextlib.contextmanager
def _tracker_run(tracking: Tracking, final: bool = False):
    """accelerate's tracker object for the run (its GeneralTracker API, without an Accelerator),
    started with the run's environment set, its settings stored, finished on exit."""
    from accelerate import PartialState
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    PartialState()  # accelerate's trackers ask it which process is the main one
    args = tracking.init_trackers_args(final)
    kwargs = args["init_kwargs"][tracking.report_to]
    cls = LOGGER_TYPE_TO_CLASS[tracking.report_to]
    with _environment(tracking.environment()):
        if cls.requires_logging_directory:
            tracker = cls(args["project_name"], str(tracking.tensorboard_root), **kwargs)
        else:
            tracker = cls(args["project_name"], **kwargs)
        tracker.start()
        try:
            if args["config"] is not None:
                tracker.store_init_configuration(args["config"])
            yield tracker
        finally:
            tracker.finish()


def log_final_metrics(cfg: Any, run_dir: Path, metrics: dict, step: int | None = None) -> None:
    """Log a run's final eval metrics (`eval/<key>`) at `step` to the tracker run its training
    logged to (found through run_dir/tracking.json), with its settings beside them. No-op without a
    tracker. Call on rank 0, after evaluation."""
    if cfg.report_to == "none":
        return
    tracking = _from_record(_read_record(run_dir) or {}, Path(cfg.output_dir))
    if tracking is None:
        return
    values = eval_values(metrics)
    with _tracker_run(tracking, final=True) as tracker:
        if tracking.report_to == "tensorboard":  # HPARAMS view: the settings with the metrics they gave
            tracker.writer.add_hparams(_scalar_settings(tracking.hparams), values, run_name="hparams")
        elif tracking.report_to != "trackio":  # (trackio got them in its init)
            tracker.store_init_configuration(tracking.hparams)
        tracker.log(values, step=step)
    logger.info(f"tracking: {len(values)} eval metrics → {tracking.report_to} run {tracking.run}")


def _scalar_settings(settings: dict) -> dict:
    """Settings TensorBoard's hparams accept (numbers, strings, booleans)."""
    return {k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool))}
