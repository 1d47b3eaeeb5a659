"""Training engines behind one seam: `train(job) -> TrainResult`, registered by name.

`ENGINES[cfg.engine](job)` trains `job.objective` ("dpo" or "sft"): "fast" is preftune's own loop for
both (engines/fast.py); "trl" is TRL's DPOTrainer (engines/trl.py) or SFTTrainer (engines/trl_sft.py),
the reference implementations, and the only modules that know TRL. Every engine follows the same
checkpoint, per-step log and tracker conventions, so train, sft, sweep and report cannot tell them
apart: docs/engines.md describes them.
"""

from __future__ import annotations

from collections.abc import Callable

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


def _trl(job: TrainJob) -> TrainResult:
    if job.objective == "sft":
        from preftune.dpo.engines.trl_sft import train
    else:
        from preftune.dpo.engines.trl import train
    return train(job)


def _fast(job: TrainJob) -> TrainResult:
    from preftune.dpo.engines.fast import train

    return train(job)


ENGINES: dict[str, Callable[[TrainJob], TrainResult]] = {"fast": _fast, "trl": _trl}
