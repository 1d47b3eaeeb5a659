"""What every engine shares, and what train.py reads of an engine's work: the job and result types,
the per-step log, the checkpoints and their markers (the conventions: docs/engines.md).
Kept apart from the registry so that engines import this module, and the registry imports engines,
without a cycle."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preftune.config import SFTConfig, TrainConfig
from preftune.data.prepare import Pair
from preftune.errors import PreftuneError
from preftune.runs.folder import atomic_write_json, final_of, strict_json
from preftune.runs.trackers import hparams, reporting

OBJECTIVES = ("dpo", "sft")


@dataclass
class TrainJob:
    model_path: str  # a folder or hub cache path from_pretrained loads (policy and reference)
    tokenizer: Any
    pairs: list[Pair]  # already fitted to cfg.max_length
    cfg: TrainConfig | SFTConfig  # SFTConfig when objective is "sft"
    seed: int
    out_dir: Path  # the run folder being written (model goes here)
    per_device_batch_size: int
    log_path: Path  # per-step training log (JSON lines)
    resume_from: Path | None = None  # a complete checkpoint folder to continue from (docs/engines.md)
    # "dpo": pairs against the reference; "sft": the NLL of each row's chosen completion (rows have
    # chosen == rejected, and cfg is an SFTConfig)
    objective: str = "dpo"

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"TrainJob.objective must be one of {OBJECTIVES}, got {self.objective!r}")

    @property
    def run_name(self) -> str:
        """The run's folder name (out_dir is ROOT/<name>.partial/ while it is written): its name in trackers."""
        return final_of(self.out_dir).name

    def tracking(self):
        """`trackers.reporting` for this job, a context manager: the run's Tracking (None without a
        tracker), continuing the tracker run when the job resumes from a checkpoint."""
        resumed = read_checkpoint_marker(self.resume_from)["step"] if self.resume_from else None
        settings = hparams(self.cfg, self.seed, train_pairs=len(self.pairs),
                           per_device_batch_size=self.per_device_batch_size)
        return reporting(self.cfg, self.out_dir, self.run_name, settings, resumed)


@dataclass
class TrainResult:
    model: Any  # the trained policy, in memory, saved as a plain (merged) model in out_dir
    steps: int  # optimizer steps of the whole run (resumed ones included)
    runtime_s: float  # training seconds of the whole run (before an interruption too)
    log: list[dict] = field(default_factory=list)


LOG_KEYS = ("step", "epoch", "loss", "grad_norm", "learning_rate", "rewards/chosen", "rewards/rejected",
            "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")
SFT_LOG_KEYS = ("step", "epoch", "loss", "grad_norm", "learning_rate", "num_tokens", "mean_token_accuracy")


def append_log(path: Path, record: dict) -> None:
    """Append one logged step to the per-step log, as strict JSON (a diverged NaN loss is null). One
    whole line per write: a kill leaves at most a torn last line, which a resume drops."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(strict_json(record), allow_nan=False) + "\n")


CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_MARKER = "preftune_checkpoint.json"


def write_checkpoint_marker(folder: Path, step: int, elapsed_s: float) -> None:
    """Mark a checkpoint folder complete: call after every other file of it is written."""
    atomic_write_json(folder / CHECKPOINT_MARKER, {"step": step, "elapsed_s": elapsed_s})


def _marker(folder: Path) -> dict | None:
    """A checkpoint's marker, checked; None when it is missing or damaged (the checkpoint is then
    treated as incomplete and never resumed from)."""
    try:
        marker = json.loads((folder / CHECKPOINT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (isinstance(marker, dict) and type(marker.get("step")) is int
          and isinstance(marker.get("elapsed_s"), (int, float)) and not isinstance(marker["elapsed_s"], bool))
    return marker if ok else None


def read_checkpoint_marker(folder: Path) -> dict:
    """{"step": int, "elapsed_s": float} of a complete checkpoint (one `latest_checkpoint` returned)."""
    marker = _marker(folder)
    if marker is None:
        raise PreftuneError(f"{folder / CHECKPOINT_MARKER}: missing or damaged (needs keys 'step' and 'elapsed_s'); "
                            "delete that checkpoint folder to start the run over")
    return marker


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step under out_dir/checkpoints/, if any."""
    folders = [p for p in (out_dir / CHECKPOINTS_DIR).glob("checkpoint-*")
               if re.fullmatch(r"checkpoint-\d+", p.name) and _marker(p) is not None]
    return max(folders, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(out_dir, step: int, elapsed_s: float, module, optimizer, scheduler, keep: int = 2) -> None:
    """Trainable weights, optimizer and scheduler into checkpoints/checkpoint-<step>/, marked complete
    last; older checkpoints beyond `keep` are removed only after the new one is marked."""
    import shutil

    import torch

    folder = out_dir / CHECKPOINTS_DIR / f"checkpoint-{step}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    trainable = {n: p.detach().cpu() for n, p in module.named_parameters() if p.requires_grad}
    torch.save({"model": trainable, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
               folder / "state.pt")
    write_checkpoint_marker(folder, step, elapsed_s)
    marked = sorted((p for p in folder.parent.glob("checkpoint-*") if (p / CHECKPOINT_MARKER).is_file()),
                    key=lambda p: int(p.name.split("-")[1]))
    for old in marked[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder, module, optimizer, scheduler) -> tuple[int, float]:
    """Restore a checkpoint written by save_checkpoint; returns (steps done, training seconds so far)."""
    import torch

    try:
        state = torch.load(folder / "state.pt", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError) as e:
        raise PreftuneError(f"{folder / 'state.pt'}: cannot read this checkpoint ({type(e).__name__}); delete "
                            f"{folder} to start the run over") from None
    missing = set(state["model"]) - {n for n, _ in module.named_parameters()}
    if missing:
        raise PreftuneError(f"{folder}: checkpoint does not match the model ({len(missing)} unknown tensors); "
                            "delete it to start the run over")
    with torch.no_grad():
        params = dict(module.named_parameters())
        for name, value in state["model"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    marker = read_checkpoint_marker(folder)
    return marker["step"], marker["elapsed_s"]
