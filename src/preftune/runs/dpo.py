"""One DPO run: data → fitted pairs → engine → run folder (model, tokenizer, config, log, metrics, eval).

The data are split by post into train / validation / test. The run trains on train, is evaluated on
validation (eval.json, eval_pairs.jsonl: what runs are compared and chosen on) and keeps its test pairs
unscored (test_pairs.jsonl: `preftune report` scores the chosen runs on them, once). Where it is written,
resuming after a kill, trackers, precision and several processes are the lifecycle's (runs/lifecycle.py,
docs/runs.md): under `torchrun` every rank trains; rank 0 alone writes files and evaluates.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preftune.config import DataConfig, TrainConfig
from preftune.data.fit import fit, subsample
from preftune.data.options import select_train_pairs
from preftune.data.prepare import Pair, prepare
from preftune.dpo.engines import ENGINES, TrainJob
from preftune.dpo.evaluate import evaluate_pairs, format_table
from preftune.dpo.logps import tokenize_completion
from preftune.errors import PreftuneError
from preftune.models import ResolvedModel, load_tokenizer, resolve_model
from preftune.runs import folder as run_folder
from preftune.runs import trackers
from preftune.runs.folder import EVAL_PAIRS_FILE, TEST_PAIRS_FILE
from preftune.runs.lifecycle import Lifecycle, begin, per_device_batch

logger = logging.getLogger(__name__)


def sequence_tokens(tokenizer, pairs: list[Pair]) -> int:
    """Real (non-pad) tokens in the chosen and rejected sequences of the pairs."""
    return sum(len(tokenize_completion(tokenizer, p.prompt, c).ids) for p in pairs for c in (p.chosen, p.rejected))


@dataclass
class RunData:
    """Everything a run needs that does not depend on its hyperparameters: prepared once per sweep."""

    model: ResolvedModel
    tokenizer: Any
    data_cfg: DataConfig
    stats: dict  # data statistics from preparation
    train_pairs: list[Pair]  # fitted to max_length
    eval_pairs: list[Pair]  # validation: runs are evaluated, compared and chosen on these
    fit: dict  # truncation counts per split
    test_pairs: list[Pair] = dataclasses.field(default_factory=list)  # scored only for chosen runs


def prepare_run_data(data_cfg: DataConfig, cfg: TrainConfig) -> RunData:
    """Resolve the model, prepare and split the data, and fit the splits to cfg.max_length.

    Uses cfg.model, cfg.max_length, cfg.max_pairs and cfg.max_eval_pairs only, so runs that differ
    in lr, batch size, epochs, beta or loss can share one RunData."""
    resolved = resolve_model(cfg.model)
    logger.info(f"model: {cfg.model} ← {resolved.source}")
    tokenizer = load_tokenizer(resolved.path)
    prepared = prepare(data_cfg, tokenizer=tokenizer)  # message lists use this model's chat template
    # --min-confidence / --length-balance: train split only, before --max-pairs (see preftune.data.options)
    train_pool, options = select_train_pairs(prepared.train, data_cfg, tokenizer)
    stats = {**prepared.stats, "train_options": options}
    fitted, fits = {}, {}  # "eval" is the validation split (the run folder's historical name for it)
    splits = (("train", train_pool, cfg.max_pairs), ("eval", prepared.validation, cfg.max_eval_pairs),
              ("test", prepared.test, cfg.max_eval_pairs))
    for key, pairs, most in splits:
        fitted[key], fits[key] = fit(tokenizer, subsample(pairs, most, data_cfg.seed), cfg.max_length, key)
    if not fitted["train"]:
        raise PreftuneError("no training pairs left after preparation")
    return RunData(resolved, tokenizer, data_cfg, stats, fitted["train"], fitted["eval"], fits, fitted["test"])


def train(data_cfg: DataConfig, cfg: TrainConfig) -> Path:
    """`preftune train`: check the launch and destination, prepare the data, then one run."""
    with begin("dpo", cfg) as life:  # before any work; ROOT/NAME locked until the run is written
        per_device_batch(cfg.batch_size, cfg.grad_accum, life.world_size)
        return run(prepare_run_data(data_cfg, cfg), cfg, life=life)


def run(data: RunData, cfg: TrainConfig, name: str | None = None, life: Lifecycle | None = None) -> Path:
    """Train one run on prepared data, write its folder atomically, evaluate it on validation. Returns
    the folder.

    `name` is the folder name (default cfg.run_name; a sweep adds suffixes when beta/loss vary). An
    interrupted run of the same settings is resumed from its last complete checkpoint."""
    if life is None:
        with begin("dpo", cfg, name) as begun:
            return run(data, cfg, life=begun)
    per_device = per_device_batch(cfg.batch_size, cfg.grad_accum, life.world_size)
    resolved, tokenizer, data_cfg = data.model, data.tokenizer, data.data_cfg
    train_pairs, eval_pairs = data.train_pairs, data.eval_pairs
    resume = life.open(data_cfg)
    job = TrainJob(resolved.path, tokenizer, train_pairs, cfg, data_cfg.seed, life.partial, per_device, life.log_path,
                   resume_from=resume)
    logger.info(f"train: {life.name}: {len(train_pairs):,} pairs × {cfg.epochs} epoch(s), batch {cfg.batch_size} "
                f"({life.world_size} process(es) × {per_device} × {cfg.grad_accum} accumulation), engine {cfg.engine}, "
                f"{'LoRA' if cfg.lora else 'full fine-tune'}")
    result = ENGINES[cfg.engine](job)
    if life.rank != 0:
        return life.final

    partial = life.partial
    tokenizer.save_pretrained(partial)
    run_folder.write_pairs(partial / EVAL_PAIRS_FILE, eval_pairs)
    run_folder.write_pairs(partial / TEST_PAIRS_FILE, data.test_pairs)  # not scored: see `preftune report`
    tokens = sequence_tokens(tokenizer, train_pairs) * cfg.epochs
    metrics = {
        "steps": result.steps,
        "train_runtime_s": round(result.runtime_s, 2),
        "train_pairs": len(train_pairs),
        "train_tokens": tokens,
        "tokens_per_s": tokens / result.runtime_s,
        "pairs_per_s": len(train_pairs) * cfg.epochs / result.runtime_s,
    }
    logger.info(f"train: {result.steps} steps in {result.runtime_s:.1f} s ({metrics['pairs_per_s']:.3f} pairs/s, "
                f"{metrics['tokens_per_s']:.0f} tokens/s)")
    if cfg.evaluate and eval_pairs:
        # reference log-probs from the on-disk cache: computed once, shared by every run of a sweep
        evaluated = {"split": "validation", "dataset": data_cfg.dataset,
                     **evaluate_pairs(result.model, resolved.path, tokenizer, eval_pairs, cfg.beta, cfg.loss,
                                     cfg.ld_alpha, precision=life.precision)}
        run_folder.atomic_write_json(partial / run_folder.EVAL_FILE, evaluated)
        logger.info(format_table(evaluated))
        trackers.log_final_metrics(cfg, partial, evaluated, step=result.steps)  # to the run's tracker, if any
    record = {"model_source": resolved.source, "reference_model": cfg.model, "per_device_batch_size": per_device,
              "data_stats": data.stats, "fit": data.fit}
    return life.finish(data_cfg, metrics, record)
