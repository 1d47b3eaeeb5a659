"""Training engines behind one seam: `train(job) -> TrainResult`, registered by name.

Only engines/trl.py knows about TRL, so TRL's API moves touch one file, and a faster engine
replaces one entry here without changing train/sweep/report.

Checkpoints — the convention every engine follows, so `train.run` can resume any of them:
- With `cfg.save_steps = N > 0`, every N optimizer steps the engine saves everything it needs to
  continue exactly (weights, optimizer, LR scheduler, RNG states, position in the data) into
  `job.out_dir/checkpoints/checkpoint-<global step>/`, and then, LAST, writes
  `preftune_checkpoint.json` = {"step": <global step>, "elapsed_s": <training seconds so far>} into
  it (`write_checkpoint_marker`). A folder without that file is incomplete (killed mid-save) and ignored.
- Given `job.resume_from` (such a folder), the engine continues from it: the result's `steps` and
  `runtime_s` count the whole run, and the per-step log is appended to `job.log_path` (train.run has
  already cut it back to the checkpoint's step).
- `train.run` deletes `checkpoints/` once the model is saved: a finished run folder holds no checkpoints.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from preftune.config import TrainConfig
from preftune.data.prepare import Pair


@dataclass
class TrainJob:
    model_path: str  # a folder or hub cache path from_pretrained loads (policy and reference)
    tokenizer: Any
    pairs: list[Pair]  # already fitted to cfg.max_length
    cfg: TrainConfig
    seed: int
    out_dir: Path  # the run folder being written (model goes here)
    per_device_batch_size: int
    log_path: Path  # per-step training log (JSON lines)
    resume_from: Path | None = None  # a complete checkpoint folder to continue from (see the module doc)


@dataclass
class TrainResult:
    model: Any  # the trained policy, in memory, saved as a plain (merged) model in out_dir
    steps: int  # optimizer steps of the whole run (resumed ones included)
    runtime_s: float  # training seconds of the whole run (before an interruption too)
    log: list[dict] = field(default_factory=list)


CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_MARKER = "preftune_checkpoint.json"


def write_checkpoint_marker(folder: Path, step: int, elapsed_s: float) -> None:
    """Mark a checkpoint folder complete: call after every other file of it is written."""
    tmp = folder / (CHECKPOINT_MARKER + ".tmp")
    tmp.write_text(json.dumps({"step": step, "elapsed_s": elapsed_s}) + "\n")
    tmp.replace(folder / CHECKPOINT_MARKER)


def read_checkpoint_marker(folder: Path) -> dict:
    return json.loads((folder / CHECKPOINT_MARKER).read_text())


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step under out_dir/checkpoints/, if any."""
    folders = [p for p in (out_dir / CHECKPOINTS_DIR).glob("checkpoint-*")
               if re.fullmatch(r"checkpoint-\d+", p.name) and (p / CHECKPOINT_MARKER).is_file()]
    return max(folders, key=lambda p: int(p.name.split("-")[1]), default=None)


def _trl(job: TrainJob) -> TrainResult:
    from preftune.engines.trl import train

    return train(job)


def _fast(job: TrainJob) -> TrainResult:
    from preftune.engines.fast import train

    return train(job)


ENGINES: dict[str, Callable[[TrainJob], TrainResult]] = {"fast": _fast, "trl": _trl}
