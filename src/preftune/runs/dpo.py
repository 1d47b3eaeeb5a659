"""One DPO run: data → fitted pairs → engine → run folder (model, tokenizer, config, log, metrics, eval).

The data are split by post into train / validation / test. The run trains on train, is evaluated on
validation (eval.json, eval_pairs.jsonl: what runs are compared and chosen on) and keeps its test pairs
unscored (test_pairs.jsonl: `preftune report` scores the chosen runs on them, once).

The run is written to ROOT/<name>.partial/ and renamed to ROOT/<name>/ only when every file is in
place (run_folder.begin_partial / finish_partial), so a finished-looking folder is always complete.
With --save-steps the engine checkpoints into <name>.partial/checkpoints/ (convention in
engines/__init__.py); running the same run again resumes from the last complete checkpoint when the
settings match, and otherwise starts it over cleanly. Under `torchrun`/`accelerate launch` every rank
trains; rank 0 alone writes files and evaluates. What a rank reads from its own disk (an existing run
folder, a checkpoint) is agreed on by every rank (launch.py), so ranks on machines without a shared
filesystem stop together with one message instead of going apart.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import preftune
from preftune.config import DataConfig, TrainConfig
from preftune.data.fit import fit, subsample
from preftune.data.options import select_train_pairs
from preftune.data.prepare import Pair, prepare
from preftune.dpo.engines import (
    CHECKPOINTS_DIR,
    ENGINES,
    TrainJob,
    latest_checkpoint,
    read_checkpoint_marker,
)
from preftune.dpo.evaluate import evaluate_pairs, format_table
from preftune.dpo.logps import tokenize_completion
from preftune.errors import PreftuneError
from preftune.launch import agreed, check_launch, from_rank_zero, gather
from preftune.models import ResolvedModel, load_tokenizer, resolve_model
from preftune.precision import resolve as resolve_precision
from preftune.runs import folder as run_folder
from preftune.runs import trackers
from preftune.runs.folder import (
    CONFIG_FILE,
    EVAL_PAIRS_FILE,
    METRICS_FILE,
    TEST_PAIRS_FILE,
    TRAIN_LOG_FILE,
)

logger = logging.getLogger(__name__)


def per_device_batch(cfg: TrainConfig, world_size: int) -> int:
    """--batch-size is pairs per optimizer step across all processes and accumulation steps."""
    per_step = world_size * cfg.grad_accum
    if cfg.batch_size % per_step:
        raise PreftuneError(
            f"--batch-size {cfg.batch_size} is not divisible by processes ({world_size}) × "
            f"--grad-accum ({cfg.grad_accum}) = {per_step}"
        )
    return cfg.batch_size // per_step


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
    """`preftune train`: prepare the data, then one run."""
    check_launch()  # first: the checks below agree across ranks through its process group
    agreed(run_folder.check_destination, Path(cfg.output_dir) / cfg.run_name, cfg.overwrite)  # before any work
    return run(prepare_run_data(data_cfg, cfg), cfg)


# Settings that change neither the result of training (gradient checkpointing, packing: only its memory and time)
# nor the evaluation of a run.
NOT_IN_SPEC = ("output_dir", "overwrite", "logging_steps", "save_steps", "gradient_checkpointing", "report_to",
               "tracker_project", "pack_tokens")
# ... and those that change only the evaluation, which a resumed run redoes anyway.
EVAL_ONLY = ("evaluate", "max_eval_pairs")


def run_spec(data_cfg: DataConfig, cfg: TrainConfig, ignore: tuple[str, ...] = NOT_IN_SPEC) -> dict:
    """What makes two runs the same run, as stored in preftune_config.json (JSON-normalized)."""
    train_cfg = {k: v for k, v in asdict(cfg).items() if k not in ignore}
    return json.loads(json.dumps({"data": asdict(data_cfg), "train": train_cfg}))


def stored_spec(run_dir: Path, ignore: tuple[str, ...] = NOT_IN_SPEC) -> dict | None:
    """The spec of a run folder (finished or .partial) from its preftune_config.json, if readable."""
    try:
        stored = run_folder.read_json(run_dir / CONFIG_FILE)
        train_cfg = {k: v for k, v in stored["train"].items() if k not in ignore}
        return {"data": stored["data"], "train": train_cfg}
    except (PreftuneError, KeyError, TypeError, AttributeError):
        return None


def resume_point(partial: Path, data_cfg: DataConfig, cfg: TrainConfig) -> Path | None:
    """The last complete checkpoint of an interrupted run with the same settings, else None."""
    ignore = NOT_IN_SPEC + EVAL_ONLY
    if not partial.is_dir() or stored_spec(partial, ignore) != run_spec(data_cfg, cfg, ignore):
        return None
    return latest_checkpoint(partial)


def _rewind(partial: Path, checkpoint: Path) -> int:
    """Bring an interrupted run folder back to its checkpoint: drop later log lines (and a torn last
    one) and every other checkpoint folder (incomplete ones included). Returns the checkpoint's step."""
    step = read_checkpoint_marker(checkpoint)["step"]
    log_path = partial / TRAIN_LOG_FILE
    kept = []
    for line in log_path.read_text().splitlines() if log_path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the line being written when the process died
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
    run_folder.atomic_write_text(log_path, "".join(kept))
    for other in (partial / CHECKPOINTS_DIR).iterdir():
        if other != checkpoint:
            shutil.rmtree(other) if other.is_dir() else other.unlink()
    return step


def _start_partial(root: Path, data_cfg: DataConfig, cfg: TrainConfig, name: str) -> Path | None:
    """Rank 0: set up NAME.partial/ for a fresh or a resumed run. Returns the checkpoint to resume from."""
    resume = resume_point(root / (name + run_folder.PARTIAL_SUFFIX), data_cfg, cfg)
    partial = run_folder.begin_partial(root, name, cfg.overwrite, resume=resume is not None)
    if resume is not None:
        step = _rewind(partial, resume)
        logger.info(f"resume: {name} from {resume.relative_to(partial)} (step {step})")
        return resume
    # the spec first, so a later resume can check the checkpoints belong to this run; rewritten at the end
    run_folder.atomic_write_json(partial / CONFIG_FILE, {"run_name": name, **run_spec(data_cfg, cfg, ())})
    return None


def run(data: RunData, cfg: TrainConfig, name: str | None = None) -> Path:
    """Train one run on prepared data, write its folder atomically, evaluate it on validation. Returns
    the folder.

    `name` is the folder name (default cfg.run_name; a sweep adds suffixes when beta/loss vary). An
    interrupted run of the same settings is resumed from its last complete checkpoint."""
    started = time.perf_counter()
    rank, world_size = check_launch()  # the processes form one group, or a one-line error before any work
    resolve_precision(cfg.precision)  # a precision this machine cannot run, likewise
    if cfg.fsdp and world_size < 2:
        raise PreftuneError("--fsdp shards the model across processes: launch with torchrun --nproc_per_node N")
    per_device = per_device_batch(cfg, world_size)
    name = name or cfg.run_name
    root = Path(cfg.output_dir)
    agreed(run_folder.check_destination, root / name, cfg.overwrite)  # every rank's disk: same answer on every rank
    partial = root / (name + run_folder.PARTIAL_SUFFIX)
    resolved, tokenizer, data_cfg = data.model, data.tokenizer, data.data_cfg
    train_pairs, eval_pairs = data.train_pairs, data.eval_pairs

    # every rank decides, then compares (a collective: before rank 0 changes the folder), then rank 0 sets it up
    same_resume(partial, agreed(resume_point, partial, data_cfg, cfg))
    resume = from_rank_zero(_start_partial, root, data_cfg, cfg, name)
    job = TrainJob(resolved.path, tokenizer, train_pairs, cfg, data_cfg.seed, partial, per_device,
                   partial / TRAIN_LOG_FILE, resume_from=resume)
    logger.info(f"train: {name}: {len(train_pairs):,} pairs × {cfg.epochs} epoch(s), batch {cfg.batch_size} "
                f"({world_size} process(es) × {per_device} × {cfg.grad_accum} accumulation), engine {cfg.engine}, "
                f"{'LoRA' if cfg.lora else 'full fine-tune'}")
    result = ENGINES[cfg.engine](job)
    if rank != 0:
        return root / name

    tokenizer.save_pretrained(partial)
    run_folder.write_pairs(partial / EVAL_PAIRS_FILE, eval_pairs)
    run_folder.write_pairs(partial / TEST_PAIRS_FILE, data.test_pairs)  # not scored: see `preftune report`
    tokens = sequence_tokens(tokenizer, train_pairs) * cfg.epochs
    log = run_folder.read_train_log(partial / TRAIN_LOG_FILE)
    metrics = {
        "steps": result.steps,
        "train_runtime_s": round(result.runtime_s, 2),
        "train_pairs": len(train_pairs),
        "train_tokens": tokens,
        "tokens_per_s": tokens / result.runtime_s,
        "pairs_per_s": len(train_pairs) * cfg.epochs / result.runtime_s,
        # the last step's logged values (the whole run's log, a resumed run's included)
        "final": {k: v for k, v in (log[-1] if log else {}).items() if k != "step"},
    }
    run_folder.atomic_write_json(partial / CONFIG_FILE, {
        "preftune_version": preftune.__version__,
        "run_name": name,
        "data": asdict(data_cfg),
        "train": asdict(cfg),
        "model_source": resolved.source,
        "reference_model": cfg.model,
        "world_size": world_size,
        "per_device_batch_size": per_device,
        "data_stats": data.stats,
        "fit": data.fit,
        "chain": run_folder.model_chain(cfg.model) + [  # base → [SFT →] DPO
            {"kind": "dpo", "run": name, "lr": cfg.lr, "bs": cfg.batch_size, "epochs": cfg.epochs}],
    })
    logger.info(f"train: {result.steps} steps in {result.runtime_s:.1f} s ({metrics['pairs_per_s']:.3f} pairs/s, "
                f"{metrics['tokens_per_s']:.0f} tokens/s)")

    if cfg.evaluate and eval_pairs:
        # reference log-probs from the on-disk cache: computed once, shared by every run of a sweep
        evaluated = {"split": "validation", "dataset": data_cfg.dataset,
                     **evaluate_pairs(result.model, resolved.path, tokenizer, eval_pairs, cfg.beta, cfg.loss,
                                     cfg.ld_alpha)}
        run_folder.atomic_write_json(partial / run_folder.EVAL_FILE, evaluated)
        logger.info(format_table(evaluated))
        trackers.log_final_metrics(cfg, partial, evaluated, step=result.steps)  # to the run's tracker, if any

    # the whole run as a user waits for it: reference pass, training, saving, evaluation (this invocation's)
    run_folder.atomic_write_json(partial / METRICS_FILE, {**metrics, "wall_s": round(time.perf_counter() - started, 1)})
    final = run_folder.finish_partial(partial)  # checkpoints kept until now: a kill in eval resumes
    logger.info(f"run: {final}")
    return final


def same_resume(partial: Path, resume: Path | None) -> None:
    """Every rank resumes from the same checkpoint, or none does: each reads the checkpoint from its own disk,
    so ranks that see different ones would train apart (or wait forever for each other)."""
    seen = gather(resume and resume.name)
    if len(set(seen)) > 1:
        raise PreftuneError(
            f"the ranks see different checkpoints of {partial} (" + ", ".join(
                f"rank {r}: {name or 'none'}" for r, name in enumerate(seen)) + "): resuming across machines needs "
            f"the run folder on every node (a shared filesystem, or a copy of {partial.name} on each); or delete "
            f"{partial.name} where it is to start the run over")
