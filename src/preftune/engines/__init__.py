"""Training engines behind one seam: `train(job) -> TrainResult`, registered by name.

Only engines/trl.py knows about TRL, so TRL's API moves touch one file, and a faster engine
replaces one entry here without changing train/sweep/report.
"""

from __future__ import annotations

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


@dataclass
class TrainResult:
    model: Any  # the trained policy, in memory, saved as a plain (merged) model in out_dir
    steps: int
    runtime_s: float
    log: list[dict] = field(default_factory=list)


def _trl(job: TrainJob) -> TrainResult:
    from preftune.engines.trl import train

    return train(job)


ENGINES: dict[str, Callable[[TrainJob], TrainResult]] = {"trl": _trl}
