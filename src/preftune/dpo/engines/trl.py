"""The reference DPO engine: TRL's DPOTrainer behind preftune's `train(job)` interface.

Pairs arrive fitted to max_length (TRL would cut the summary or drop the pair); the prompt column is
always passed; bf16/fp16 follow --precision (DPOConfig's bf16 default is ~10× slower on most CPUs); the
reference is the initial policy. `trl_loss_settings` maps --loss/--ld-alpha/--nll-weight/--label-smoothing
to TRL's loss_type/loss_weights/ld_alpha/label_smoothing (the config refuses R-DPO, SimPO and
--confidence-weight). The callbacks and `save_trained` here serve the SFT engine (trl_sft.py) too.
Conventions: docs/engines.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from transformers import TrainerCallback, set_seed
from transformers.trainer_callback import ProgressCallback

from preftune.dpo.engines.base import (
    CHECKPOINTS_DIR,
    TrainJob,
    TrainResult,
    append_log,
    read_checkpoint_marker,
    write_checkpoint_marker,
)
from preftune.errors import PreftuneError
from preftune.models import disable_dropout, load_model
from preftune.precision import resolve
from preftune.runs import trackers


class JsonlLogger(TrainerCallback):
    """Appends every logged step (loss, rewards/*, logps/*, lr, grad_norm) to a JSON-lines file."""

    def __init__(self, path):
        self.path, self.records = path, []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        self.records.append(record)
        append_log(self.path, record)


class ProgressBar(ProgressCallback):
    """The Trainer's progress bar, showing loss and accuracy (DPO's reward accuracy, SFT's token accuracy) as
    the fast engine's does, instead of printing every logged dict (they are in train_log.jsonl)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None and logs and "loss" in logs:
            acc = logs.get("rewards/accuracies", logs.get("mean_token_accuracy", 0))
            self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}", acc=f"{acc:.2f}")


class CheckpointMarker(TrainerCallback):
    """Marks each checkpoint complete once the Trainer has written all of it (on_save comes after),
    with the training seconds so far, those before a resume included."""

    def __init__(self, elapsed_before: float):
        self.elapsed_before, self.start = elapsed_before, time.perf_counter()

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            write_checkpoint_marker(folder, state.global_step, self.elapsed())


# preftune loss → TRL's loss_type (config.ENGINE_LOSSES["trl"] lists these names); LD-DPO is TRL's sigmoid
# loss on log-probs weighted by DPOConfig.ld_alpha
TRL_LOSSES = {"sigmoid": "sigmoid", "hinge": "hinge", "ipo": "ipo", "sigmoid_norm": "sigmoid_norm",
              "ld_dpo": "sigmoid"}


def trl_loss_settings(cfg) -> dict:
    """DPOConfig's loss_type, loss_weights, label_smoothing and ld_alpha for the run's loss; --nll-weight adds
    TRL's "sft" term (the chosen tokens' mean NLL) with that weight. --label-smoothing ε: TRL 1.16's "sigmoid"
    ignores label_smoothing, which only its "robust" loss R_ε = ((1−ε)·A − ε·B)/(1−2ε) reads (A = −log σ(βh),
    B = −log σ(−βh)); conservative DPO (1−ε)·A + ε·B is exactly 2(1−ε)·A − (1−2ε)·R_ε, so the two terms with
    those weights (ε < 0.5). Both are on summed log-ratios: sigmoid_norm is not smoothed (config refuses it)."""
    if cfg.loss not in TRL_LOSSES:
        raise PreftuneError(f"--loss {cfg.loss} is not in TRL's DPOTrainer; use --engine fast")
    if getattr(cfg, "confidence_weight", False):
        raise PreftuneError("--confidence-weight is not available with --engine trl (TRL's DPOTrainer has no "
                            "per-pair weights); use --engine fast")
    eps = getattr(cfg, "label_smoothing", 0.0)
    types, weights = [TRL_LOSSES[cfg.loss]], [1.0]
    if eps:
        if types != ["sigmoid"]:
            raise PreftuneError(f"--label-smoothing with --loss {cfg.loss} is not available with --engine trl; "
                                "use --engine fast")
        types, weights = ["sigmoid", "robust"], [2 * (1 - eps), -(1 - 2 * eps)]
    if cfg.nll_weight:
        types, weights = types + ["sft"], weights + [cfg.nll_weight]
    return {"loss_type": types, "loss_weights": weights, "label_smoothing": eps,
            "ld_alpha": cfg.ld_alpha if cfg.loss == "ld_dpo" else None}


def trainer_args(job: TrainJob, tracking: trackers.Tracking | None = None) -> dict:
    """The Trainer arguments both TRL engines (DPOTrainer, SFTTrainer) take from a job alike."""
    cfg = job.cfg
    precision = resolve(cfg.precision)  # never TRL's bf16 default: ~10x slower on CPUs without bf16 units
    return dict(
        output_dir=str(job.out_dir / CHECKPOINTS_DIR),
        learning_rate=cfg.lr,
        per_device_train_batch_size=job.per_device_batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_length=cfg.max_length,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,  # unused without a save strategy, but must be > 0
        save_total_limit=2,  # the Trainer deletes old checkpoints before the new one is marked: keep one marked
        **trackers.trainer_args(tracking),  # report_to (+ run_name, project): the Trainer's own tracker callbacks
        seed=job.seed,
        data_seed=job.seed,
        disable_tqdm=False,
    )


def dpo_config(job: TrainJob, tracking: trackers.Tracking | None = None):
    from trl import DPOConfig

    return DPOConfig(
        **trainer_args(job, tracking),
        beta=job.cfg.beta,
        **trl_loss_settings(job.cfg),
        activation_checkpointing=job.cfg.gradient_checkpointing is not False,  # None: on (TRL's memory default)
    )


def lora_config(job: TrainJob):
    from peft import LoraConfig

    cfg = job.cfg
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=[m.strip() for m in cfg.lora_targets.split(",") if m.strip()],
                      task_type="CAUSAL_LM")


def train(job: TrainJob) -> TrainResult:
    # the environment the Trainer's tracker callbacks read is set for the whole training
    with job.tracking() as tracking:
        return _train(job, tracking)


def _train(job: TrainJob, tracking: trackers.Tracking | None) -> TrainResult:
    from datasets import Dataset
    from trl import DPOTrainer

    trl_loss_settings(job.cfg)  # a loss TRL lacks stops here, before the model loads
    set_seed(job.seed)  # before the model and the LoRA init
    model = load_model(job.model_path, fsdp=job.cfg.fsdp)  # sharded as it loads: the Trainer adds no DDP then
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in job.pairs]
    step_log = JsonlLogger(job.log_path)
    before = read_checkpoint_marker(job.resume_from)["elapsed_s"] if job.resume_from else 0.0
    marker = CheckpointMarker(before)
    trainer = DPOTrainer(
        model=model,
        ref_model=None,  # the initial policy: reloaded from model_path (full) or adapter disabled (LoRA)
        args=dpo_config(job, tracking),
        train_dataset=Dataset.from_list(rows),
        processing_class=job.tokenizer,
        peft_config=lora_config(job) if job.cfg.lora else None,
        callbacks=[step_log, marker],
    )
    # TRL zeroes nn.Dropout modules only: functional dropout rates (Llama's attention, OPT, Falcon) too
    for m in (trainer.model, trainer.ref_model):
        if m is not None:
            disable_dropout(m)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ProgressBar)
    marker.start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(job.resume_from) if job.resume_from else None)
    runtime = marker.elapsed()
    return TrainResult(save_trained(trainer, job), output.global_step, runtime, step_log.records)


def save_trained(trainer, job: TrainJob):
    """The trained model into job.out_dir (under LoRA: the adapter in adapter/, the merged model beside it);
    returns the model rank 0 evaluates (None on other ranks of an FSDP run)."""
    trained = trainer.model
    if job.cfg.lora:
        if trainer.is_world_process_zero():
            trained.save_pretrained(job.out_dir / "adapter")
        trained = trained.merge_and_unload()  # a standard model folder, loadable without peft
        if trainer.is_world_process_zero():
            trained.save_pretrained(job.out_dir)
    else:
        trainer.save_model(str(job.out_dir))  # every rank calls it (FSDP/DeepSpeed gather); rank 0 writes
        if job.cfg.fsdp:  # rank 0 evaluates alone: the saved model, whole, not its shard
            trained = load_model(str(job.out_dir)) if trainer.is_world_process_zero() else None
    return trained
