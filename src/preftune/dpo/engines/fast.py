"""preftune's own engine: TRL's losses (DPOTrainer's, SFTTrainer's completion-only NLL), a fraction of the work.

One training loop (accelerate, fused AdamW with linear decay, clipping at 1.0, checkpoints, trackers,
DDP/FSDP gradient sync) for both objectives; an objective says how a row is packed, its loss and what
is logged: `DPOObjective` (prompt once per pair, reference log-probs from the cache) and
`SFTObjective` (prompt + summary, no reference). Rows are packed without padding (`logps.plan_rows`)
and the LM head runs on completion positions only. How and why: docs/engines.md.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch
from tqdm.auto import tqdm

from preftune.data.options import confidence_strength
from preftune.data.pairs import Pair
from preftune.dpo.engines.base import (
    TrainJob,
    TrainResult,
    append_log,
    load_checkpoint,
    save_checkpoint,
)
from preftune.dpo.logps import (
    PackedPair,
    PackedRow,
    PairLogpsModule,
    default_pack_tokens,
    pack_completion,
    pack_pair,
    pack_row,
    plan_rows,
    row_logps,
    row_weights,
    slot_sums,
)
from preftune.dpo.losses import (
    confidence_weights,
    configured,
    is_reference_free,
    ld_alpha,
)
from preftune.dpo.refcache import reference_logps
from preftune.errors import PreftuneError
from preftune.models import disable_dropout, load_model
from preftune.precision import ACCELERATE_NAMES, DTYPES, resolve
from preftune.runs import trackers

MAX_GRAD_NORM = 1.0  # HF Trainer's default, which the TRL engines use

logger = logging.getLogger(__name__)


def batches(n: int, batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Indices of each optimizer step's rows: a seeded permutation per epoch, last batch partial."""
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


# ---- objectives: what differs between DPO and SFT ----------------------------------------------------
# Each has `packed` (one segment per training row), `begin_step(batch)` (called for every step of the plan,
# those a resumed run skips too), `row_loss(module, members)` → (this row's share of the step's loss, its
# metric sums, keyed by `metrics`) and `logged(sums, window)` → the values a logged step records. The
# shares of every row of every rank sum to the step's loss: the loop multiplies a share by the world
# size, which DDP/FSDP's gradient average divides.


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


def pair_weights(pairs: list[Pair]) -> torch.Tensor:
    """(N,) --confidence-weight's weights (`losses.confidence_weights`) of the training pairs, logged by
    strength; refused when a pair has no labeller confidence or none is above unsure (all weights 0)."""
    strengths = [confidence_strength(p) for p in pairs]
    missing = [p.source for p, s in zip(pairs, strengths) if s is None]
    if missing:
        raise PreftuneError(f"--confidence-weight: {len(missing):,} of {len(pairs):,} training pairs have no labeller "
                            f"confidence (e.g. {missing[0]}); only summarize_from_feedback rows with extra.confidence "
                            "carry one: drop --confidence-weight, or add --min-confidence 1 to train on those that do")
    if not any(strengths):
        raise PreftuneError(f"--confidence-weight: all {len(pairs):,} training pairs have confidence strength 0 "
                            f"(extra.confidence 5, e.g. {pairs[0].source}), so every weight would be 0")
    weights = confidence_weights(strengths)
    by_strength = {s: round(weights[strengths.index(s)].item(), 3) for s in sorted(set(strengths))}
    logger.info(f"train: --confidence-weight: weight by confidence strength {by_strength} "
                f"(mean strength {sum(strengths) / len(strengths):.3f} over {len(pairs):,} pairs)")
    return weights


class DPOObjective:
    """Pairs `[prompt | chosen | rejected]` against the reference: a registered loss (`dpo.losses`), each
    pair's weighted by --confidence-weight, plus --nll-weight × the chosen tokens' NLL (unweighted: a
    token mean over the batch, as TRL's); logs TRL DPOTrainer's keys (`engines.LOG_KEYS`)."""

    metrics = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected")  # step_metrics' keys

    def __init__(self, job: TrainJob, precision: str):
        self.cfg, self.loss_fn, self.ld_alpha = job.cfg, configured(job.cfg), ld_alpha(job.cfg)
        # (N,) or None; before the reference pass, so a refusal costs no work
        self.weights = pair_weights(job.pairs) if getattr(job.cfg, "confidence_weight", False) else None
        self.packed = [pack_pair(job.tokenizer, p.prompt, p.chosen, p.rejected) for p in job.pairs]
        self.ref = reference(job, self.packed, precision)  # first, so the reference is gone before training

    def begin_step(self, batch: list[int]) -> None:
        self.batch = batch
        # the NLL term's denominator: the chosen tokens of the whole batch (every rank's too)
        self.nll_scale = self.cfg.nll_weight * len(batch) / sum(self.packed[j].chosen_len for j in batch)

    def row_loss(self, module, members: list[int]) -> tuple[torch.Tensor, dict]:
        pairs = [self.packed[j] for j in members]
        pol, nll = _row_logps(module, pack_row(pairs), self.ld_alpha)  # (k, 2), (k,)
        losses, rewards = _losses(self.loss_fn, pol, self.ref[members].to(pol.device), self.cfg.beta, pairs)
        if self.weights is not None:  # before the batch mean: Σ w_i·ℓ_i / B
            losses = losses * self.weights[members].to(losses.device, losses.dtype)
        losses = losses + self.nll_scale * nll  # per pair: their mean is the DPO mean + α·token-mean NLL
        sums = step_metrics(pol.detach().float().cpu(), rewards.float().cpu(), losses.detach().float().cpu())
        return losses.sum() / len(self.batch), sums

    def logged(self, sums: dict[str, float], window: list[list[int]]) -> dict:
        pairs = sum(len(b) for b in window)
        return {k: v / pairs for k, v in sums.items()}

    @staticmethod
    def postfix(record: dict) -> dict:
        return {"loss": f"{record['loss']:.4f}", "acc": f"{record['rewards/accuracies']:.2f}"}


class SFTObjective:
    """SFT rows `[prompt | summary + EOS]` (a row's chosen; `logps.pack_completion`): TRL SFTTrainer's
    completion-only loss, the summed NLL of every completion token divided by the completion tokens of
    the whole step's batch (every rank and row: TRL's num_items_in_batch); logs `engines.SFT_LOG_KEYS`."""

    metrics = ("loss", "correct", "completion_tokens")

    def __init__(self, job: TrainJob, precision: str):
        self.packed = [pack_completion(job.tokenizer, p.prompt, p.chosen) for p in job.pairs]
        self.seen = 0  # prompt and completion tokens of every row so far (TRL's num_tokens)

    def begin_step(self, batch: list[int]) -> None:
        self.tokens = sum(self.packed[j].chosen_len for j in batch)  # known to every rank: no collective
        self.seen += sum(len(self.packed[j]) for j in batch)

    def row_loss(self, module, members: list[int]) -> tuple[torch.Tensor, dict]:
        nll, top1 = sft_row_nll(module, pack_row([self.packed[j] for j in members]))
        loss = nll / self.tokens
        return loss, {"loss": loss.detach().float().cpu(), "correct": top1.sum().float().cpu(),
                      "completion_tokens": torch.tensor(float(len(top1)))}

    def logged(self, sums: dict[str, float], window: list[list[int]]) -> dict:
        # as TRL: the loss is the mean of the window's step losses; the accuracy is over its completion tokens
        return {"loss": sums["loss"] / len(window), "num_tokens": float(self.seen),
                "mean_token_accuracy": sums["correct"] / sums["completion_tokens"]}

    @staticmethod
    def postfix(record: dict) -> dict:
        return {"loss": f"{record['loss']:.4f}", "acc": f"{record['mean_token_accuracy']:.2f}"}


OBJECTIVES = {"dpo": DPOObjective, "sft": SFTObjective}


def sft_row_nll(module, row: PackedRow) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed NLL of a packed row's completion tokens (EOS included), and (N,) whether each token is
    the model's most likely one: one forward, the LM head on those N positions only."""
    tokens, top1 = row_logps(module, row, per_token=True, top1=True)  # (N,), (N,)
    return -tokens.sum(), top1


def reference(job: TrainJob, packed: list[PackedPair], precision: str) -> torch.Tensor:
    """(N, 2) log π_ref of the training pairs, shared by all ranks; zeros for a reference-free loss."""
    if is_reference_free(job.cfg.loss):
        return torch.zeros(len(packed), 2)
    return reference_logps(packed, job.model_path, lambda: load_model(job.model_path),
                           pack_tokens=default_pack_tokens(job.cfg.pack_tokens), precision=precision, shared=True,
                           ld_alpha=ld_alpha(job.cfg))


# ---- the loop -------------------------------------------------------------------------------------


def train(job: TrainJob) -> TrainResult:
    with job.tracking() as tracking:
        return _train(job, tracking)


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
    objective = OBJECTIVES[job.objective](job, precision)  # DPO: the reference pass runs here
    packed = objective.packed

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
    # on SmolLM2-135M, 1 thread), and what the TRL engines' Trainer uses (adamw_torch_fused)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, fused=True)
    plan = batches(len(packed), cfg.batch_size, cfg.epochs, job.seed)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, len(plan))
    if cfg.fsdp:  # sharded at load: FSDP reduces the gradients, accelerate adds autocast only (no DDP)
        module = accelerator.prepare_model(module, device_placement=False, evaluation_mode=True)
        optimizer = accelerator.prepare(optimizer)
    else:
        module, optimizer = accelerator.prepare(module, optimizer)
    pack_tokens = default_pack_tokens(cfg.pack_tokens)
    done, elapsed_before = 0, 0.0
    if job.resume_from:
        done, elapsed_before = load_checkpoint(job.resume_from, accelerator.unwrap_model(module), optimizer, scheduler)

    records, start = [], time.perf_counter()
    window: dict[str, torch.Tensor] = {}
    window_batches: list[list[int]] = []
    bar = tqdm(total=len(plan), initial=done, desc=f"train ({cfg.engine}, {job.objective})", unit="step",
               disable=not accelerator.is_main_process)
    for step, batch in enumerate(plan, start=1):
        objective.begin_step(batch)
        if step <= done:  # resumed: the plan is a pure function of the seed, so skipping replays it exactly
            continue
        rows, most = rank_rows(batch, packed, pack_tokens, rank, world)
        # FSDP gathers weights in every forward, so every rank runs as many as the busiest; DDP syncs only
        # in the last backward, so a rank needs one forward at least (a dummy when it has no rows)
        forwards = most if cfg.fsdp else max(len(rows), 1)
        for i in range(forwards):
            with _sync(accelerator, module, model, cfg.fsdp, sync=i == forwards - 1):  # reduce grads once a step
                if i < len(rows):
                    loss, sums = objective.row_loss(module, rows[i])
                    accelerator.backward(loss * world)  # DDP/FSDP average the ranks' gradients: × world sums them
                    for k, v in sums.items():
                        window[k] = window.get(k, torch.tensor(0.0)) + v
                else:  # no rows left here: join the collectives, contributing zero gradients
                    accelerator.backward(row_logps(module, pack_row([packed[batch[0]]])).sum() * 0.0)
        grad_norm = accelerator.clip_grad_norm_(params, MAX_GRAD_NORM)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window_batches.append(batch)
        bar.update(1)
        if step % cfg.logging_steps == 0 or step == len(plan):
            record = {"step": step, "epoch": step / len(plan) * cfg.epochs,
                      **objective.logged(_reduced(accelerator, window, objective.metrics), window_batches),
                      "grad_norm": _scalar(grad_norm), "learning_rate": lr}
            window, window_batches = {}, []
            if accelerator.is_main_process:
                records.append(record)
                append_log(job.log_path, record)
                accelerator.log(trackers.step_values(record), step=step)
                bar.set_postfix(objective.postfix(record))
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


def _reduced(accelerator, window: dict[str, torch.Tensor], keys: tuple[str, ...]) -> dict[str, float]:
    """The window's metric sums over every rank, in one collective; a rank without rows adds zeros."""
    values = torch.stack([window.get(k, torch.tensor(0.0)).float() for k in keys])
    total = accelerator.reduce(values.to(accelerator.device), "sum").cpu()
    return dict(zip(keys, total.tolist()))


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
