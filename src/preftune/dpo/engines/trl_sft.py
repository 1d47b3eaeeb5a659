"""The reference SFT engine: TRL's SFTTrainer behind preftune's `train(job)` interface (objective "sft").

Rows (a job's pairs with chosen == rejected) become TRL's prompt/completion format, the completion ending
with one EOS, and train with the completion-only loss; they arrive fitted to max_length, so TRL's
truncation never cuts a summary. bf16/fp16 follow --precision (TRL's bf16 default is ~10× slower on most
CPUs); dropout is off (models.disable_dropout, as the fast engine); checkpoints, the step log, trackers
and the saved model follow the TRL DPO engine's (engines/trl.py, docs/engines.md).
"""

from __future__ import annotations

import time

from transformers import set_seed
from transformers.trainer_callback import ProgressCallback

from preftune.data.pairs import Pair
from preftune.data.sequence import with_eos
from preftune.dpo.engines.base import (
    TrainJob,
    TrainResult,
    read_checkpoint_marker,
)
from preftune.dpo.engines.trl import (
    CheckpointMarker,
    JsonlLogger,
    ProgressBar,
    lora_config,
    save_trained,
    trainer_args,
)
from preftune.models import disable_dropout, load_model
from preftune.runs import trackers


def sft_dataset(rows: list[Pair], eos: str):
    """TRL's prompt/completion format; the completion ends with exactly one EOS (TRL adds none then)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r.prompt, "completion": with_eos(r.chosen, eos)} for r in rows])


def sft_args(job: TrainJob, tracking: trackers.Tracking | None = None):
    from trl import SFTConfig as TRLSFTConfig

    return TRLSFTConfig(
        **trainer_args(job, tracking),  # max_length: rows arrive fitted, TRL's right-truncation never cuts a summary
        completion_only_loss=True,
        packing=False,
        activation_checkpointing=bool(job.cfg.gradient_checkpointing),  # TRL's default is on
    )


def train(job: TrainJob) -> TrainResult:
    # the environment the Trainer's tracker callbacks read is set for the whole training
    with job.tracking() as tracking:
        return _train(job, tracking)


def _train(job: TrainJob, tracking: trackers.Tracking | None) -> TrainResult:
    from trl import SFTTrainer

    set_seed(job.seed)  # before the model and the LoRA init
    model = load_model(job.model_path, fsdp=job.cfg.fsdp)  # sharded as it loads: the Trainer adds no DDP then
    if job.cfg.lora:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(job))
    disable_dropout(model)  # LoRA's dropout too, as the fast engine does
    step_log = JsonlLogger(job.log_path)
    marker = CheckpointMarker(read_checkpoint_marker(job.resume_from)["elapsed_s"] if job.resume_from else 0.0)
    trainer = SFTTrainer(model=model, args=sft_args(job, tracking),
                         train_dataset=sft_dataset(job.pairs, job.tokenizer.eos_token),
                         processing_class=job.tokenizer, callbacks=[step_log, marker])
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ProgressBar)
    marker.start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(job.resume_from) if job.resume_from else None)
    runtime = marker.elapsed()
    return TrainResult(save_trained(trainer, job), output.global_step, runtime, step_log.records)
