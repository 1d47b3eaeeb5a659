"""One lifecycle for the three trainers — `train` (dpo), `sft`, `rm train` (rm) — described in docs/runs.md.

`begin`, before any work: the launch is one process group, the precision runs here, the tracker is
installed and can write, ROOT/NAME may be written (checked once, agreed by every rank) and is locked
(runs/lock.py) until `finish` or the `with` block ends. `Lifecycle.open`: the resume
point every rank agrees on, then rank 0 sets up NAME.partial (the run's spec first, so a re-run can tell
its checkpoints are this run's) and rewinds its log to that checkpoint. `Lifecycle.tracking`: --report-to.
`Lifecycle.finish` (rank 0): metrics.json and preftune_config.json (one schema, `kind` dpo | sft | rm,
the chain base → [SFT →] DPO), then NAME.partial → NAME.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import preftune
from preftune.errors import PreftuneError, writable_folder
from preftune.launch import agreed, check_launch, from_rank_zero, gather
from preftune.runs import trackers
from preftune.runs.folder import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    KINDS,
    METRICS_FILE,
    TRAIN_LOG_FILE,
    atomic_write_json,
    atomic_write_text,
    final_of,
    is_partial,
    lock_of,
    model_chain,
    partial_of,
    read_json,
)
from preftune.runs.results import read_train_log

logger = logging.getLogger(__name__)

# preftune_config.json: the key holding the settings of each kind's command (a DPO run's "train", as always)
SETTINGS_KEY = {"dpo": "train", "sft": "sft", "rm": "rm"}
# Settings that change neither the result of training (gradient checkpointing, packing: only its memory and
# time) nor its evaluation; the folder's own name.
NOT_IN_SPEC = ("output_dir", "overwrite", "logging_steps", "save_steps", "gradient_checkpointing", "report_to",
               "tracker_project", "pack_tokens", "name")
# ... and those that change only the evaluation, which a resumed run redoes anyway.
EVAL_ONLY = ("evaluate", "max_eval_pairs")


# ---- the destination: ROOT/NAME, written as ROOT/NAME.partial ---------------------------------------


def make_root(root: Path) -> None:
    """ROOT (--output-dir) as a writable folder, created if needed, or a one-line error before any work."""
    writable_folder(root, "--output-dir", "pass another folder")


def remove_if_empty(root: Path, lock_file: Path) -> None:
    """Remove `lock_file`, then `root` if only empty folders are left in it (a file anywhere: kept)."""
    lock_file.unlink(missing_ok=True)
    for folder, _, files in sorted(os.walk(root), key=lambda w: -len(Path(w[0]).parts)):
        if files:
            return
        with contextlib.suppress(OSError):
            Path(folder).rmdir()


def check_destination(final: Path, overwrite: bool) -> None:
    """Refuse to replace an existing ROOT/NAME unless --overwrite; a file there is never replaced."""
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise PreftuneError(f"{final} exists and is a file, not a folder; move it away first")
    if final.exists() and not overwrite:
        raise PreftuneError(f"{final} already exists; pass --overwrite to replace it")


def begin_partial(final: Path, resume: bool = False) -> Path:
    """ROOT/NAME.partial, ready to write into: kept as it is when `resume` (an interrupted run continuing
    from its checkpoint), else emptied (a leftover of an interrupted attempt)."""
    partial = partial_of(final)
    if partial.exists() and not resume:
        logger.info(f"restart: {partial} holds no complete checkpoint of these settings; starting it over")
        shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
    try:
        partial.mkdir(parents=True, exist_ok=resume)
    except OSError as e:
        raise PreftuneError(f"cannot create {partial} ({e.strerror or e}); check --output-dir") from None
    return partial


def finish_partial(partial: Path) -> Path:
    """Drop the checkpoints of NAME.partial (kept until now so a kill during evaluation resumes), then
    rename it to NAME, replacing an older NAME (--overwrite was checked when the run began). Returns NAME."""
    partial = Path(partial)
    if not is_partial(partial):
        raise ValueError(f"{partial} is not a {partial_of(Path('NAME')).name} folder")
    final = final_of(partial)
    shutil.rmtree(partial / CHECKPOINTS_DIR, ignore_errors=True)
    if final.exists():  # --overwrite
        shutil.rmtree(final)
    partial.rename(final)
    return final


# ---- what makes two runs the same run ----------------------------------------------------------------


def run_spec(kind: str, data_cfg: Any, cfg: Any, ignore: tuple[str, ...] = NOT_IN_SPEC) -> dict:
    """The settings that make two runs of `kind` the same run, as preftune_config.json stores them."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ignore}
    return json.loads(json.dumps({"data": asdict(data_cfg), SETTINGS_KEY[kind]: settings}))


def stored_spec(run_dir: Path, kind: str, ignore: tuple[str, ...] = NOT_IN_SPEC) -> dict | None:
    """The spec of a run folder (finished or NAME.partial) of `kind`, if readable. A DPO run from before
    kinds has none: it is a DPO run."""
    try:
        stored = read_json(Path(run_dir) / CONFIG_FILE)
        key = SETTINGS_KEY[kind]
        if stored.get("kind", "dpo") != kind:
            return None
        return {"data": stored["data"], key: {k: v for k, v in stored[key].items() if k not in ignore}}
    except (PreftuneError, KeyError, TypeError, AttributeError):
        return None


def resume_point(partial: Path, kind: str, data_cfg: Any, cfg: Any) -> Path | None:
    """The last complete checkpoint of an interrupted run with the same settings, else None."""
    from preftune.dpo.engines.base import latest_checkpoint

    ignore = NOT_IN_SPEC + EVAL_ONLY
    if not partial.is_dir() or stored_spec(partial, kind, ignore) != run_spec(kind, data_cfg, cfg, ignore):
        return None
    return latest_checkpoint(partial)


def rewind(partial: Path, checkpoint: Path) -> int:
    """Bring an interrupted run folder back to its checkpoint: drop later log lines (and a torn last
    one) and every other checkpoint folder (incomplete ones included). Returns the checkpoint's step."""
    from preftune.dpo.engines.base import read_checkpoint_marker

    step = read_checkpoint_marker(checkpoint)["step"]
    log_path = partial / TRAIN_LOG_FILE
    kept = []
    for line in log_path.read_text().splitlines() if log_path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the line being written when the process died
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
    atomic_write_text(log_path, "".join(kept))
    for other in (partial / CHECKPOINTS_DIR).iterdir():
        if other != checkpoint:
            shutil.rmtree(other) if other.is_dir() else other.unlink()
    return step


def same_resume(partial: Path, resume: Path | None) -> None:
    """Every rank resumes from the same checkpoint, or none does: each reads the checkpoint from its own disk,
    so ranks that see different ones would train apart (or wait forever for each other)."""
    seen = gather(resume and resume.name)
    if len(set(seen)) > 1:
        raise PreftuneError(
            f"the ranks see different checkpoints of {partial} (" + ", ".join(
                f"rank {r}: {name or 'none'}" for r, name in enumerate(seen)) + "): resuming across machines needs "
            f"the run folder on every node (a shared filesystem, or a copy of {partial.name} on each); or delete "
            f"{partial.name} where it is to start the run over")


# ---- one run -----------------------------------------------------------------------------------------


def per_device_batch(batch_size: int, grad_accum: int, world_size: int) -> int:
    """--batch-size is rows (pairs) per optimizer step across all processes and accumulation steps."""
    per_step = world_size * grad_accum
    if batch_size % per_step:
        raise PreftuneError(f"--batch-size {batch_size} is not divisible by processes ({world_size}) × "
                            f"--grad-accum ({grad_accum}) = {per_step}")
    return batch_size // per_step


def begin(kind: str, cfg: Any, name: str | None = None) -> Lifecycle:
    """Before any work: this process is one rank of one process group (or alone), --precision runs here,
    --report-to's package is installed, and ROOT/NAME is free (or --overwrite): each checked once, the
    same answer on every rank."""
    from preftune.precision import resolve

    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}")
    rank, world_size = check_launch()  # first: the checks below agree across ranks through its process group
    precision = resolve(cfg.precision)
    if getattr(cfg, "fsdp", False) and world_size < 2:
        raise PreftuneError("--fsdp shards the model across processes: launch with torchrun --nproc_per_node N")
    trackers.require(cfg.report_to)
    life = Lifecycle(kind, cfg, name or cfg.run_name, rank, world_size, precision)
    from_rank_zero(life.lock)  # the rank that writes: ROOT exists, and no other process writes ROOT/NAME
    try:
        agreed(check_destination, life.final, cfg.overwrite)  # every rank's disk: the same answer on every rank
        agreed(trackers.check_paths, cfg, life.name)  # where --report-to writes: folders, writable
        life.base_chain = agreed(model_chain, cfg.model)  # a damaged model folder's config: an error now
    except BaseException:
        life.release(failed=True)
        raise
    return life


@dataclass
class Lifecycle:
    """One run of `kind` from `begin` to `finish`: where it is written, which rank this is, where it resumes."""

    kind: str
    cfg: Any  # TrainConfig | SFTConfig | RewardConfig
    name: str
    rank: int
    world_size: int
    precision: str = "fp32"  # what --precision resolved to on this machine (preftune_config.json records it)
    started: float = field(default_factory=time.perf_counter)
    resume_from: Path | None = None  # the checkpoint `open` agreed on
    base_chain: list | None = None  # the chain of the model it starts from (`model_chain`), read in `begin`
    held: Any = None  # rank 0: the FolderLock on ROOT/NAME (runs/lock.py), from `begin` to `finish`
    made_root: bool = False  # rank 0: ROOT did not exist before `begin` made it

    def lock(self) -> None:
        """Rank 0: make ROOT and take ROOT/NAME's lock (a second writer is refused in one line)."""
        from preftune.runs.lock import run_lock

        self.made_root = not Path(self.cfg.output_dir).exists()
        make_root(self.cfg.output_dir)
        self.held = run_lock(self.final).acquire()

    def release(self, failed: bool = False, done: bool = False) -> None:
        """Let go of ROOT/NAME's lock (the OS also does, when the process dies). A finished run (`done`)
        takes its lock file with it; a command that `failed` leaves no ROOT it made holding nothing but
        its lock and empty folders (a bad flag leaves nothing)."""
        if self.held is None:
            return
        # unlinked while held: a writer that opens it now is refused, one after finds NAME done (or nothing)
        if done or failed and not self.partial.exists():  # a failed run that wrote nothing leaves no lock file
            lock_of(self.final).unlink(missing_ok=True)
        self.held.release()
        self.held = None
        if failed and self.made_root:
            remove_if_empty(Path(self.cfg.output_dir), lock_of(self.final))

    def __enter__(self) -> Lifecycle:
        return self

    def __exit__(self, kind, *exc) -> None:
        self.release(failed=kind is not None)

    @property
    def final(self) -> Path:
        return Path(self.cfg.output_dir) / self.name

    @property
    def partial(self) -> Path:
        return partial_of(self.final)

    @property
    def log_path(self) -> Path:
        """The per-step training log (JSON lines), rewound to the checkpoint a resumed run continues from."""
        return self.partial / TRAIN_LOG_FILE

    @property
    def resumed_step(self) -> int | None:
        from preftune.dpo.engines.base import read_checkpoint_marker

        return read_checkpoint_marker(self.resume_from)["step"] if self.resume_from else None

    def open(self, data_cfg: Any) -> Path | None:
        """NAME.partial set up for a fresh or a resumed run; returns the checkpoint to resume from (None: fresh).
        Every rank decides from its own disk, they compare (a collective: before rank 0 changes the
        folder), then rank 0 sets the folder up and tells the others."""
        same_resume(self.partial, agreed(resume_point, self.partial, self.kind, data_cfg, self.cfg))
        self.resume_from = from_rank_zero(self._set_up, data_cfg)
        return self.resume_from

    def _set_up(self, data_cfg: Any) -> Path | None:
        resume = resume_point(self.partial, self.kind, data_cfg, self.cfg)
        partial = begin_partial(self.final, resume=resume is not None)
        if resume is not None:
            step = rewind(partial, resume)
            logger.info(f"resume: {self.name} from {resume.relative_to(partial)} (step {step})")
            return resume
        # the spec first, so a later resume can check the checkpoints belong to this run; rewritten by finish
        spec = run_spec(self.kind, data_cfg, self.cfg, ())
        atomic_write_json(partial / CONFIG_FILE, {"kind": self.kind, "run_name": self.name, **spec})
        return None

    def tracking(self, seed: int, **extra: Any):
        """`trackers.reporting` for this run (a context manager yielding its Tracking, None without
        --report-to), continuing the tracker run of the checkpoint it resumes from."""
        settings = trackers.hparams(self.cfg, seed, **extra)
        return trackers.reporting(self.cfg, self.partial, self.name, settings, self.resumed_step)

    def chain_entry(self, **settings: Any) -> dict:
        """This run's entry of the chain: kind, name, where it will be, lr/bs/epochs and `settings`."""
        cfg = self.cfg
        return {"kind": self.kind, "run": self.name, "path": str(self.final.resolve()), "lr": cfg.lr,
                "bs": cfg.batch_size, "epochs": cfg.epochs, **settings}

    def finish(self, data_cfg: Any, metrics: dict, record: dict, chain: dict | None = None) -> Path:
        """Rank 0, once every other file is in NAME.partial: metrics.json (with the last logged values and
        this invocation's wall time) and preftune_config.json, then NAME.partial → NAME. Returns NAME."""
        trackers.check_written(self.partial, Path(self.cfg.output_dir))  # before the run counts as finished
        log = read_train_log(self.log_path)
        atomic_write_json(self.partial / METRICS_FILE, {
            **metrics, "final": {k: v for k, v in (log[-1] if log else {}).items() if k != "step"},
            "wall_s": round(time.perf_counter() - self.started, 1)})
        atomic_write_json(self.partial / CONFIG_FILE, {
            "preftune_version": preftune.__version__,
            "kind": self.kind,
            "run_name": self.name,
            "data": asdict(data_cfg),
            SETTINGS_KEY[self.kind]: asdict(self.cfg),
            "world_size": self.world_size,
            "precision": self.precision,
            **record,
            "chain": (self.base_chain if self.base_chain is not None else model_chain(self.cfg.model))
            + [chain or self.chain_entry()],  # base → [SFT →] DPO
        })
        final = finish_partial(self.partial)  # checkpoints kept until now: a kill in evaluation resumes
        self.release(done=True)
        logger.info(f"run: {final}")
        return final
