"""preftune's own DPO engine: the same loss as TRL's DPOTrainer, a fraction of the work.

Where TRL's time goes on CPU (measured in bench/results/dpo_throughput.md), and what this engine does
instead:

1. **Each prompt once.** TRL runs prompt+chosen and prompt+rejected as two sequences, so the prompt
   (~93% of TL;DR tokens) is computed twice. Here a pair is ONE segment `[prompt | chosen | rejected]`
   with position ids `0..P+C-1, P..P+R-1` in which rejected tokens see the prompt but not the chosen
   tokens (`logps.pair_allowed`). Every token then sees exactly the context it has in TRL's layout, so
   log-probs are the same up to float rounding, and gradients from both completions flow into the one
   copy of the prompt's activations. We chose this over KV-cache reuse because it is one ordinary
   forward and backward — DDP/FSDP, LoRA and activation checkpointing work unchanged, and nothing
   depends on cache internals that move between transformers releases.
2. **Several pairs per forward, no padding.** Pairs are packed into rows of at most `--pack-tokens`
   tokens (`logps.plan_rows`; by default one pair per row on CPU, where larger rows measured no
   faster, and 8192 tokens on a GPU); positions restart per pair and each pair gets its own attention
   (`logps.pair_attention`: a causal SDPA over prompt + chosen, a small masked one for the rejected
   tokens), so nothing is computed across pairs or on padding. Gradients accumulate over the rows of a
   batch, so the loss (the mean over the batch's pairs) and the update equal a batched step's.
3. **LM head only where it counts.** The decoder's hidden states go through the 49k-vocab head at
   the C+R completion positions only, and log-probs are `logit[target] − logsumexp(logits)` with
   no (T, V) log-softmax: TRL's head over every prompt and pad position dominated its step time
   and set its peak memory.
4. **Reference once per sweep.** log π_ref of every pair is read from the on-disk cache
   (`refcache.py`) or computed once before training — every rank its share, packed like training,
   the values gathered to all ranks — with the reference freed afterwards: the reference never
   occupies memory during training, and other runs and re-runs reuse the values. With LoRA the
   reference is the base model, whose weights are the same files. Reference-free losses (a registry
   entry with `reference_free = True`: SimPO) skip the pass.

Length-aware losses: LD-DPO's log-probs (policy and reference, cached apart) weight each token by
`logps.ld_token_weights`; `--nll-weight` adds the chosen completions' NLL as TRL's "sft" term does, a
mean per chosen token over the batch: each pair's summed NLL is divided by the chosen tokens of the
whole step's batch (all ranks and rows: a pure function of the batch, known to every rank), so the
micro-batched sum equals TRL's token mean for one process without accumulation. With several
processes or --grad-accum TRL averages per-micro-batch token means instead; here it stays the token
mean of the whole batch (equal when micro-batches hold equal chosen tokens).

Precision (`--precision`, preftune.precision) is accelerate's mixed precision; with `--fsdp` the model
is sharded as it loads (transformers' FSDP2 plan) and gradients are reduced by FSDP instead of DDP.
Everything else — losses (`preftune.dpo.losses`), logged keys (`engines.LOG_KEYS`, TRL's names), fused
AdamW with linear decay and gradient clipping at 1.0 (HF Trainer's defaults), the run folder — matches the
TRL engine, so train, sweep, report and push cannot tell the engines apart.
"""

from __future__ import annotations

import contextlib
import time

import torch
from tqdm.auto import tqdm

from preftune.dpo.engines.base import (
    TrainJob,
    TrainResult,
    append_log,
    load_checkpoint,
    save_checkpoint,
)
from preftune.dpo.logps import (
    PackedPair,
    PairLogpsModule,
    default_pack_tokens,
    pack_pair,
    pack_row,
    plan_rows,
    row_logps,
    row_weights,
    slot_sums,
)
from preftune.dpo.losses import configured, is_reference_free, ld_alpha
from preftune.dpo.refcache import reference_logps
from preftune.models import disable_dropout, load_model
from preftune.precision import ACCELERATE_NAMES, DTYPES, resolve
from preftune.runs import trackers

MAX_GRAD_NORM = 1.0  # HF Trainer's default, which the TRL engine uses


def batches(n: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Indices of each optimizer step's pairs: a seeded permutation per epoch, last batch partial."""
    gen = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).tolist()
        steps += [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return steps


def rank_rows(batch: list[int], packed: list[PackedPair], pack_tokens: int, rank: int, world: int
              ) -> tuple[list[list[int]], int]:
    """This rank's rows of the step (lists of pair indices) and the most rows any rank has: a pure
    function of the batch, so every rank knows every rank's count without communicating."""
    def rows_of(r: int) -> list[list[int]]:
        share = batch[r::world]
        return [[share[i] for i in row] for row in plan_rows([len(packed[i]) for i in share], pack_tokens)]

    return rows_of(rank), max(len(rows_of(r)) for r in range(world))


def step_metrics(pol: torch.Tensor, rewards: torch.Tensor, losses: torch.Tensor) -> dict:
    """Sums over this process's pairs of what TRL logs (averaged over all pairs after a reduce).
    rewards: (n, 2) the loss's own implicit rewards (DPO's β·log-ratio; SimPO's β·mean log-prob)."""
    chosen_r, rejected_r = rewards[:, 0], rewards[:, 1]
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


def reference(job: TrainJob, packed: list[PackedPair], precision: str) -> torch.Tensor:
    """(N, 2) log π_ref of the training pairs, shared by all ranks; zeros for a reference-free loss."""
    if is_reference_free(job.cfg.loss):
        return torch.zeros(len(packed), 2)
    return reference_logps(packed, job.model_path, lambda: load_model(job.model_path),
                           pack_tokens=default_pack_tokens(job.cfg.pack_tokens), precision=precision, shared=True,
                           ld_alpha=ld_alpha(job.cfg))


def _train(job: TrainJob, tracking: trackers.Tracking | None) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from transformers import get_linear_schedule_with_warmup, set_seed

    cfg = job.cfg
    precision = resolve(cfg.precision)
    # each run sets its own mixed precision (a sweep, or tests, run several in one process; the Trainer
    # resets this state too); the process group, in PartialState, stays
    AcceleratorState._reset_state()
    # the tracker, if any, through accelerate's tracking API: started here, logged each step, ended below
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=ACCELERATE_NAMES[precision],
                              **(tracking.accelerator_args() if tracking else {}))
    if tracking:
        accelerator.init_trackers(**tracking.init_trackers_args())
    rank, world = accelerator.process_index, accelerator.num_processes
    packed = [pack_pair(job.tokenizer, p.prompt, p.chosen, p.rejected) for p in job.pairs]

    # 1. reference log-probs first (from the cache when warm), so the reference is gone before training
    ref = reference(job, packed, precision)

    set_seed(job.seed)
    model = load_model(job.model_path, fsdp=cfg.fsdp)
    if cfg.lora:
        from peft import get_peft_model

        from preftune.dpo.engines.trl import lora_config

        model = get_peft_model(model, lora_config(job))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    disable_dropout(model)
    module = PairLogpsModule(model, dtype=DTYPES[precision]).train()
    params = [p for p in module.parameters() if p.requires_grad]
    # fused: one kernel per step instead of several full-size temporaries (measured 0.3 s vs 0.7-0.9 s a step
    # on SmolLM2-135M, 1 thread), and what the TRL engine's Trainer uses (adamw_torch_fused)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, fused=True)
    plan = batches(len(packed), cfg.batch_size, cfg.epochs, job.seed)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, len(plan))
    if cfg.fsdp:  # sharded at load: FSDP reduces the gradients, accelerate adds autocast only (no DDP)
        module = accelerator.prepare_model(module, device_placement=False, evaluation_mode=True)
        optimizer = accelerator.prepare(optimizer)
    else:
        module, optimizer = accelerator.prepare(module, optimizer)
    loss_fn = configured(cfg)
    pack_tokens = default_pack_tokens(cfg.pack_tokens)
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
        rows, most = rank_rows(batch, packed, pack_tokens, rank, world)
        # FSDP gathers weights in every forward, so every rank runs as many as the busiest; DDP syncs only
        # in the last backward, so a rank needs one forward at least (a dummy when it has no pairs)
        forwards = most if cfg.fsdp else max(len(rows), 1)
        pol_rows, reward_rows, loss_rows, mine = [], [], [], []
        # the NLL term's denominator: the chosen tokens of the whole batch (every rank's too)
        nll_scale = cfg.nll_weight * len(batch) / sum(packed[j].chosen_len for j in batch)
        for i in range(forwards):
            with _sync(accelerator, module, model, cfg.fsdp, sync=i == forwards - 1):  # reduce grads once a step
                if i < len(rows):
                    row = pack_row([packed[j] for j in rows[i]])
                    pol, nll = _row_logps(module, row, ld_alpha(cfg))  # (k, 2), (k,)
                    losses, rewards = _losses(loss_fn, pol, ref[rows[i]].to(pol.device), cfg.beta,
                                              [packed[j] for j in rows[i]])
                    losses = losses + nll_scale * nll  # per pair: their mean is the DPO mean + α·token-mean NLL
                    accelerator.backward(losses.sum() * world / len(batch))  # ranks averaged → mean over the batch
                    pol_rows.append(pol.detach().float().cpu())
                    reward_rows.append(rewards.float().cpu())
                    loss_rows.append(losses.detach().float().cpu())
                    mine += rows[i]
                else:  # no pairs left here: join the collectives, contributing zero gradients
                    accelerator.backward(row_logps(module, pack_row([packed[batch[0]]])).sum() * 0.0)
        grad_norm = accelerator.clip_grad_norm_(params, MAX_GRAD_NORM)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        pol_t = torch.cat(pol_rows) if pol_rows else torch.zeros(0, 2)
        rewards_t = torch.cat(reward_rows) if reward_rows else torch.zeros(0, 2)
        sums = step_metrics(pol_t, rewards_t, torch.cat(loss_rows) if loss_rows else torch.zeros(0))
        for k, v in sums.items():
            window[k] = window.get(k, torch.tensor(0.0)) + v
        counted += len(batch)
        bar.update(1)
        if step % cfg.logging_steps == 0 or step == len(plan):
            reduced = {k: accelerator.reduce(v.to(accelerator.device), "sum").item() / counted for k, v in window.items()}
            record = {"step": step, "epoch": step / len(plan) * cfg.epochs, **reduced,
                      "grad_norm": _scalar(grad_norm), "learning_rate": lr}
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
    trained = accelerator.unwrap_model(module).release()
    return TrainResult(_save(trained, job, accelerator.is_main_process), len(plan), runtime, records)


def _save(trained, job: TrainJob, main: bool):
    """Write the trained model into the run folder; returns the model rank 0 evaluates. A sharded model
    is gathered by save_pretrained on every rank, and rank 0 reloads the saved copy whole."""
    cfg = job.cfg
    if cfg.fsdp:
        trained.save_pretrained(job.out_dir, is_main_process=main)
        return load_model(str(job.out_dir)) if main else None
    if main:
        if cfg.lora:
            trained.save_pretrained(job.out_dir / "adapter")
            trained = trained.merge_and_unload()
        trained.save_pretrained(job.out_dir)
    return trained


def _sync(accelerator, module, model, fsdp: bool, sync: bool):
    """Gradient reduction on this backward or not: DDP's no_sync, FSDP2's requires_gradient_sync."""
    if fsdp:
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    return contextlib.nullcontext() if sync else accelerator.no_sync(module)


def _scalar(x) -> float:
    """A float from a tensor, a DTensor (FSDP's gradient norm) or a number."""
    return float(x.full_tensor() if hasattr(x, "full_tensor") else x)


def _losses(loss_fn, pol: torch.Tensor, ref: torch.Tensor, beta: float, pairs: list[PackedPair]
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(k,) per-pair losses of a row's pairs and (k, 2) their (chosen, rejected) rewards, detached."""
    nc = torch.tensor([p.chosen_len for p in pairs], device=pol.device)
    nr = torch.tensor([p.rejected_len for p in pairs], device=pol.device)
    losses, chosen_r, rejected_r = loss_fn(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], beta, nc, nr)
    return losses, torch.stack([chosen_r, rejected_r], 1)


def _row_logps(module, row, ld_alpha: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, 2) the loss's log-probs of a row's pairs (LD-weighted for LD-DPO) and (k,) each pair's summed
    chosen NLL, unweighted as TRL's "sft" term takes it: one forward for both."""
    tokens = row_logps(module, row, per_token=True)  # (N,)
    raw = slot_sums(tokens, row.slots.to(tokens.device), len(row))
    weights = row_weights(row, ld_alpha)
    pol = raw if weights is None else slot_sums(tokens * weights.to(tokens.device), row.slots.to(tokens.device), len(row))
    return pol, -raw[:, 0]

