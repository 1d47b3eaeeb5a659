"""Training engines behind one seam: `train(job) -> TrainResult`, registered by name.

`ENGINES[cfg.engine](job)` trains `job.objective` ("dpo" or "sft"): "fast" is preftune's own loop for
both (engines/fast.py); "trl" is TRL's DPOTrainer (engines/trl.py) or SFTTrainer (engines/trl_sft.py),
the reference implementations, and the only modules that know TRL. Every engine follows the same
checkpoint, per-step log and tracker conventions, so train, sft, sweep and report cannot tell them
apart: docs/engines.md describes them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from preftune.config import registries
from preftune.dpo.engines.base import (  # noqa: F401
    CHECKPOINT_MARKER,
    CHECKPOINTS_DIR,
    LOG_KEYS,
    SFT_LOG_KEYS,
    TrainJob,
    TrainResult,
    append_log,
    latest_checkpoint,
    read_checkpoint_marker,
    write_checkpoint_marker,
)


def _engine(modules: dict[str, str]) -> Callable[[TrainJob], TrainResult]:
    """The engine whose train(job) for each objective is in modules[objective], imported on first use
    (TRL only when it trains)."""
    def train(job: TrainJob) -> TrainResult:
        return importlib.import_module(modules[job.objective]).train(job)

    return train


# name → engine, from the names and modules in config/registries.py
ENGINES: dict[str, Callable[[TrainJob], TrainResult]] = {name: _engine(modules)
                                                         for name, modules in registries.ENGINES.items()}
