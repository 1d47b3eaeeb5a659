"""preftune's own DPO engine: the same loss as TRL's DPOTrainer, a fraction of the work.

Where TRL's time goes on CPU (measured in bench/results/dpo_throughput.md), and what this engine does
instead:

1. **Each prompt once.** TRL runs prompt+chosen and prompt+rejected as two sequences, so the prompt
   (~93% of TL;DR tokens) is computed twice. Here a pair is ONE packed row
   `[prompt | chosen | rejected]` with position ids `0..P+C-1, P..P+R-1` and an attention mask in
   which rejected tokens see the prompt but not the chosen tokens (`logps.packed_inputs`). Every
   token then sees exactly the context it has in TRL's layout, so log-probs are the same up to
   float rounding, and gradients from both completions flow into the one copy of the prompt's
   activations. We chose a packed row over KV-cache reuse because it is one ordinary forward and
   backward — DDP/FSDP, LoRA and activation checkpointing work unchanged, and nothing depends on
   cache internals that move between transformers releases.
2. **LM head only where it counts.** The decoder's hidden states go through the 49k-vocab head at
   the C+R completion positions only, and log-probs are `logit[target] − logsumexp(logits)` with
   no (T, V) log-softmax: TRL's head over every prompt and pad position dominated its step time
   and set its peak memory.
3. **No padding.** Each pair is its own row, one pair per forward; gradients accumulate over the
   pairs of a batch, so the loss and the update equal a batched step's exactly and no FLOP is spent on
   padding. At ~470 tokens a row, the matmuls stay large enough to run near the machine's peak.
4. **Reference once per sweep.** log π_ref of every pair is read from the on-disk cache
   (`refcache.py`) or computed once, before training, with the reference freed afterwards: the
   reference never occupies memory during training, and other runs and re-runs reuse the values.
   With LoRA the reference is the base model, whose weights are the same files.

Everything else — losses (`preftune.losses`), logged keys (`engines.LOG_KEYS`, TRL's names), AdamW
with linear decay and gradient clipping at 1.0 (HF Trainer's defaults), the run folder — matches the
TRL engine, so train, sweep, report and push cannot tell the engines apart.
"""

from __future__ import annotations

import contextlib
import time

import torch
from tqdm.auto import tqdm

from preftune import trackers
from preftune.engines.base import (CHECKPOINT_MARKER, CHECKPOINTS_DIR, TrainJob, TrainResult, append_log,
                                   read_checkpoint_marker, write_checkpoint_marker)
from preftune.errors import PreftuneError
from preftune.logps import PackedPair, PairLogpsModule, pack_pair, packed_pair_logps
from preftune.losses import LOSSES
from preftune.models import load_model
from preftune.refcache import reference_logps

MAX_GRAD_NORM = 1.0  # HF Trainer's default, which the TRL engine uses


def batches(n: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Indices of each optimizer step's pairs: a seeded permutation per epoch, last batch partial."""
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).tolist()
        steps += [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return steps


def step_metrics(pol: torch.Tensor, ref: torch.Tensor, losses: torch.Tensor, beta: float) -> dict:
    """Sums over this process's pairs of what TRL logs (averaged over all pairs after a reduce)."""
    chosen_r, rejected_r = beta * (pol[:, 0] - ref[:, 0]), beta * (pol[:, 1] - ref[:, 1])
    return {
        "loss": losses.sum(),
        "rewards/chosen": chosen_r.sum(),
        "rewards/rejected": rejected_r.sum(),
        "rewards/accuracies": (chosen_r > rejected_r).float().sum(),
        "rewards/margins": (chosen_r - rejected_r).sum(),
        "logps/chosen": pol[:, 0].sum(),
        "logps/rejected": pol[:, 1].sum(),
    }


def train(job: TrainJob) -> TrainResult:
    with job.tracking() as tracking:
        return _train(job, tracking)


def _train(job: TrainJob, tracking: trackers.Tracking | None) -> TrainResult:
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup, set_seed

    cfg = job.cfg
    # the tracker, if any, through accelerate's tracking API: started here, logged each step, ended below
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), **(tracking.accelerator_args() if tracking else {}))
    if tracking:
        accelerator.init_trackers(**tracking.init_trackers_args())
    rank, world = accelerator.process_index, accelerator.num_processes
    packed = [pack_pair(job.tokenizer, p.prompt, p.chosen, p.rejected) for p in job.pairs]

    # 1. reference log-probs first (from the cache when warm), so the reference is gone before training
    with accelerator.main_process_first():  # rank 0 fills the cache; the others then read it
        ref = reference_logps(packed, job.model_path, lambda: load_model(job.model_path))

    set_seed(job.seed)
    model = load_model(job.model_path)
    if cfg.lora:
        from peft import get_peft_model

        from preftune.engines.trl import lora_config

        model = get_peft_model(model, lora_config(job))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    _disable_dropout(model)
    module = PairLogpsModule(model).train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    plan = batches(len(packed), cfg.batch_size, cfg.epochs, job.seed)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, len(plan))
    module, optimizer = accelerator.prepare(module, optimizer)
    loss_fn = LOSSES[cfg.loss]
    done, elapsed_before = 0, 0.0
    if job.resume_from:
        done, elapsed_before = load_checkpoint(job.resume_from, accelerator.unwrap_model(module), optimizer, scheduler)

    records, start = [], time.perf_counter()
    window: dict[str, torch.Tensor] = {}
    counted = 0
    bar = tqdm(total=len(plan), initial=done, desc=f"train ({cfg.engine})", unit="step",
               disable=not accelerator.is_main_process)
    for step, batch in enumerate(plan, start=1):
        if step <= done:  # resumed: the plan is a pure function of the seed, so skipping replays it exactly
            continue
        mine = batch[rank::world]  # this process's share of the global batch
        pol_rows, losses = [], []
        for i, idx in enumerate(mine):
            sync = i == len(mine) - 1
            with accelerator.no_sync(module) if not sync else contextlib.nullcontext():  # all-reduce once a step
                pol = packed_pair_logps(module, packed[idx])  # (2,)
                loss = _pair_loss(loss_fn, pol, ref[idx], cfg.beta, packed[idx])
                accelerator.backward(loss * world / len(batch))  # DDP averages over ranks → mean over the batch
            pol_rows.append(pol.detach())
            losses.append(loss.detach())
        if not mine:  # a short last batch can leave a rank without pairs: it still joins the gradient
            pol = packed_pair_logps(module, packed[batch[0]])  # all-reduce, contributing zeros
            accelerator.backward(pol.sum() * 0.0)
        grad_norm = accelerator.clip_grad_norm_(params, MAX_GRAD_NORM)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        pol_t = torch.stack(pol_rows) if pol_rows else torch.zeros(0, 2)
        sums = step_metrics(pol_t, ref[mine], torch.stack(losses) if losses else torch.zeros(0), cfg.beta)
        for k, v in sums.items():
            window[k] = window.get(k, torch.tensor(0.0)) + v
        counted += len(batch)
        bar.update(1)
        if step % cfg.logging_steps == 0 or step == len(plan):
            reduced = {k: accelerator.reduce(v.to(accelerator.device), "sum").item() / counted for k, v in window.items()}
            record = {"step": step, "epoch": step / len(plan) * cfg.epochs, **reduced,
                      "grad_norm": float(grad_norm), "learning_rate": lr}
            window, counted = {}, 0
            if accelerator.is_main_process:
                records.append(record)
                append_log(job.log_path, record)
                accelerator.log(trackers.step_values(record), step=step)
                bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['rewards/accuracies']:.2f}")
        if cfg.save_steps and step % cfg.save_steps == 0 and step < len(plan):
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_checkpoint(job.out_dir, step, elapsed_before + time.perf_counter() - start,
                                accelerator.unwrap_model(module), optimizer, scheduler)
    bar.close()
    runtime = elapsed_before + time.perf_counter() - start
    for tracker in accelerator.trackers:  # flush and close the tracker run; not end_training(), which would
        tracker.finish()                  # also destroy the process group train.run still needs

    accelerator.wait_for_everyone()
    trained = accelerator.unwrap_model(module).model
    if accelerator.is_main_process:
        if cfg.lora:
            trained.save_pretrained(job.out_dir / "adapter")
            trained = trained.merge_and_unload()
        trained.save_pretrained(job.out_dir)
    return TrainResult(trained, len(plan), runtime, records)


def save_checkpoint(out_dir, step: int, elapsed_s: float, module, optimizer, scheduler, keep: int = 2) -> None:
    """Trainable weights, optimizer and scheduler into checkpoints/checkpoint-<step>/, marked complete
    last; older checkpoints beyond `keep` are removed only after the new one is marked."""
    import shutil

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


def _pair_loss(loss_fn, pol: torch.Tensor, ref: torch.Tensor, beta: float, p: PackedPair) -> torch.Tensor:
    losses, _, _ = loss_fn(pol[0:1], pol[1:2], ref[0:1], ref[1:2], beta,
                           torch.tensor([p.chosen_len]), torch.tensor([p.rejected_len]))
    return losses[0]


def _disable_dropout(model: torch.nn.Module) -> None:
    """As TRL does (disable_dropout=True): dropout would make π ≠ π_ref at step 0."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


