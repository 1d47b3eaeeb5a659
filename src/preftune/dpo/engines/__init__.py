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

The per-step log (`job.log_path`, a run's train_log.jsonl): every engine appends one JSON object per
logged step with `append_log`, holding at least `LOG_KEYS` (TRL's names). The TRL engine also keeps
whatever else TRL logs (entropy, num_tokens, logits/*, mean_token_accuracy in TRL 1.16).

Trackers (`--report-to`, preftune/trackers.py): an engine trains inside `with job.tracking() as
tracking:` and hands `tracking` to its tracker API — accelerate's (`Accelerator(**tracking.accelerator_args())`,
`init_trackers`, `log(trackers.step_values(record), step=)`, `end_training`) or the Trainer's
(`**trackers.trainer_args(tracking)` in its arguments) — so each logged step reaches the tracker as
`train/<key>`. `train.run` logs the eval metrics after (`trackers.log_final_metrics`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from preftune.config import registries
from preftune.dpo.engines.base import (  # noqa: F401
    CHECKPOINT_MARKER,
    CHECKPOINTS_DIR,
    LOG_KEYS,
    TrainJob,
    TrainResult,
    append_log,
    latest_checkpoint,
    read_checkpoint_marker,
    write_checkpoint_marker,
)


def _engine(module: str) -> Callable[[TrainJob], TrainResult]:
    """The engine whose train(job) is in `module`, imported on first use (TRL only when it trains)."""
    def train(job: TrainJob) -> TrainResult:
        return importlib.import_module(module).train(job)

    return train


# name → engine, from the names and modules in config/registries.py
ENGINES: dict[str, Callable[[TrainJob], TrainResult]] = {name: _engine(module)
                                                         for name, module in registries.ENGINES.items()}
