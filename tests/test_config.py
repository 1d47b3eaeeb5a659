"""config.py holds names and ranges only: its name tuples match the registries they stand for, each
field's rule lives in its metadata (one validator, `check_fields`), and only rules between fields are
written by hand. Every rule's message names the flag."""

import dataclasses
import subprocess
import sys

import pytest

from preftune import config
from preftune.config import (
    DataConfig,
    EvalConfig,
    InspectConfig,
    JudgeConfig,
    PushConfig,
    RewardConfig,
    ServeConfig,
    SpaceConfig,
    SweepConfig,
    TrainConfig,
)
from preftune.errors import PreftuneError

CONFIGS = [DataConfig, TrainConfig, EvalConfig, RewardConfig, JudgeConfig, ServeConfig, SpaceConfig, SweepConfig,
           PushConfig, InspectConfig]


def test_names_match_the_registries():
    from preftune.data.adapters import ADAPTERS
    from preftune.data.columns import COLUMNS
    from preftune.data.sources import SHIPPED
    from preftune.dpo.engines import ENGINES
    from preftune.dpo.losses import LOSSES
    from preftune.runs.trackers import PACKAGES

    assert config.LOSS_NAMES == tuple(LOSSES)
    assert config.ENGINE_NAMES == tuple(ENGINES)
    assert config.FORMAT_NAMES == ("auto", *ADAPTERS)
    assert config.COLUMN_NAMES == tuple(COLUMNS)
    assert config.TRACKER_NAMES == ("none", *PACKAGES)
    assert config.DEFAULT_DATASET in SHIPPED


def test_loss_settings_match_the_losses_that_read_them():
    from preftune.dpo.engines.trl import TRL_LOSSES
    from preftune.dpo.losses import LOSS_PARAMS, LOSSES

    assert config.ENGINE_LOSSES == {"fast": tuple(LOSSES), "trl": tuple(TRL_LOSSES)}
    bound = {field: loss for loss, params in LOSS_PARAMS.items() for field in params.values()}
    assert config.LOSS_FIELDS == {**bound, "ld_alpha": next(n for n, f in LOSSES.items()
                                                             if getattr(f, "length_desensitised", False))}


@pytest.mark.parametrize("kwargs, message", [
    (dict(loss="sigmoid", rdpo_alpha=0.02), "--rdpo-alpha applies to --loss rdpo only, got --loss sigmoid"),
    (dict(loss="rdpo", simpo_gamma=0.5), "--simpo-gamma applies to --loss simpo only, got --loss rdpo"),
    (dict(loss="simpo", ld_alpha=0.2), "--ld-alpha applies to --loss ld_dpo only, got --loss simpo"),
    (dict(engine="trl", loss="rdpo"), "--loss rdpo is not available with --engine trl (TRL's DPOTrainer has no such "
                                      "loss); use --engine fast"),
    (dict(engine="trl", loss="simpo"), "--loss simpo is not available with --engine trl"),
    (dict(nll_weight=-1.0), "--nll-weight must be ≥ 0, got -1.0"),
])
def test_a_loss_setting_its_loss_ignores_or_an_engine_lacks_is_refused(kwargs, message):
    with pytest.raises(PreftuneError) as e:
        TrainConfig(**kwargs)
    assert message in str(e.value)


def test_loss_settings_with_their_loss_and_engine_are_accepted():
    TrainConfig(loss="rdpo", rdpo_alpha=0.02, nll_weight=1.0)
    TrainConfig(engine="trl", loss="ld_dpo", ld_alpha=0.0, nll_weight=0.5)
    TrainConfig(engine="trl", loss="sigmoid_norm", beta=3.0)


def test_config_imports_no_engine_loss_adapter_or_torch():
    code = ("import sys, preftune.config; heavy = [m for m in sys.modules if m == 'torch' or m.startswith("
            "('preftune.dpo.engines', 'preftune.dpo.losses', 'preftune.data'))]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_defaults_are_valid_and_every_field_has_help(cls):
    cls()  # every default passes its own field's rule
    assert [f.name for f in dataclasses.fields(cls) if not f.metadata.get("help")] == []


# (config, field values, message): each field's rule from its metadata, then the rules between fields
BAD = [
    (TrainConfig, dict(lr=0.0), "--lr must be > 0, got 0.0"),
    (TrainConfig, dict(lr=float("nan")), "--lr must be a finite number, got nan"),
    (TrainConfig, dict(batch_size=-4), "--batch-size must be > 0, got -4"),
    (TrainConfig, dict(max_pairs=0), "--max-pairs must be > 0, got 0"),
    (TrainConfig, dict(loss="dpo"), "unknown --loss 'dpo'; choose one of: sigmoid, hinge, ipo"),
    (TrainConfig, dict(engine="turbo"), "unknown --engine 'turbo'; choose one of: fast, trl"),
    (TrainConfig, dict(logging_steps=0), "--logging-steps must be > 0, got 0"),
    (TrainConfig, dict(save_steps=-1), "--save-steps must be ≥ 0, got -1"),
    (TrainConfig, dict(lora_dropout=1.0), "--lora-dropout must be in [0, 1), got 1.0"),
    (TrainConfig, dict(lora_targets=""), "--lora-targets names no module"),
    (TrainConfig, dict(max_length="512"), "--max-length must be a number, got '512'"),
    (TrainConfig, dict(output_dir=""), "--output-dir is empty"),
    (TrainConfig, dict(model=" "), "--model is empty"),
    (DataConfig, dict(dataset=""), "--dataset is empty"),
    (DataConfig, dict(fraction=0.0), "--fraction must be in (0, 1], got 0.0"),
    (DataConfig, dict(fraction=1.5), "--fraction must be in (0, 1], got 1.5"),
    (DataConfig, dict(eval_fraction=1.0), "--eval-fraction must be in [0, 1), got 1.0"),
    (DataConfig, dict(test_fraction=-0.1), "--test-fraction must be in [0, 1), got -0.1"),
    (DataConfig, dict(eval_fraction=0.5, test_fraction=0.5), "--eval-fraction + --test-fraction must be < 1, "
                                                             "got 0.5 + 0.5"),
    (DataConfig, dict(format="csv"), "unknown --format 'csv'; choose one of: auto, summarize_from_feedback"),
    (DataConfig, dict(seed=2**32), "--seed must be in [0, 4294967296), got 4294967296"),
    (EvalConfig, dict(max_eval_pairs=0), "--max-eval-pairs must be > 0, got 0"),
    (RewardConfig, dict(logging_steps=0), "--logging-steps must be > 0, got 0"),
    (RewardConfig, dict(max_pairs=-1), "--max-pairs must be > 0, got -1"),
    (JudgeConfig, dict(n=0), "--n must be > 0, got 0"),
    (JudgeConfig, dict(temperature=-0.1), "--temperature must be ≥ 0, got -0.1"),
    (JudgeConfig, dict(examples=-1), "--examples must be ≥ 0, got -1"),
    (JudgeConfig, dict(temperature=0.0, greedy=False), "--temperature 0 with --no-greedy leaves nothing to judge"),
    (ServeConfig, dict(port=65536), "--port must be in [0, 65535], got 65536"),
    (ServeConfig, dict(queue_size=0), "--queue-size must be > 0, got 0"),
    (SpaceConfig, dict(repo_id="alice"), "--repo-id must look like OWNER/NAME"),
    (SpaceConfig, dict(model_repo="a/b/c"), "--model-repo must look like OWNER/NAME"),
    (SpaceConfig, dict(base="../model"), "--base must look like OWNER/NAME"),
    (SpaceConfig, dict(examples=-1), "--examples must be ≥ 0, got -1"),
    (PushConfig, dict(best=0), "--best must be > 0, got 0"),
    (PushConfig, dict(repo_id="a/b", best=2), "--repo-id names one repo"),
    (InspectConfig, dict(length_sample=0), "--length-sample must be > 0, got 0"),
    (InspectConfig, dict(samples=-1), "--samples must be ≥ 0, got -1"),
    (SweepConfig, dict(lr=(1e-6, -1.0)), "--lr must be > 0, got -1.0"),
    (SweepConfig, dict(loss=("sigmoid", "dpo")), "unknown --loss 'dpo'; choose one of: sigmoid, hinge, ipo"),
    (SweepConfig, dict(epochs=()), "sweep: --epochs needs at least one value"),
    (SweepConfig, dict(beta=(0.1, 0.1)), "sweep: --beta lists a value twice: 0.1, 0.1"),
]


@pytest.mark.parametrize("cls, values, message", BAD, ids=[f"{c.__name__}-{v}" for c, v, _ in BAD])
def test_bad_values_name_the_flag(cls, values, message):
    with pytest.raises(PreftuneError) as e:
        cls(**values)
    assert message in str(e.value)


def test_edges_of_ranges_are_allowed():
    DataConfig(fraction=1.0, eval_fraction=0.0, test_fraction=0.0, seed=0)
    ServeConfig(port=0), ServeConfig(port=65535)
    JudgeConfig(temperature=0.0)  # greedy only
    TrainConfig(save_steps=0, lora_dropout=0.0, max_pairs=None)


def test_a_field_appended_with_metadata_is_validated_without_more_code():
    @dataclasses.dataclass
    class Extended(TrainConfig):
        warmup_ratio: float = config._opt(0.0, "Warm-up share of the steps.", ge=0, lt=1)

    assert Extended(warmup_ratio=0.1).warmup_ratio == 0.1
    with pytest.raises(PreftuneError, match=r"--warmup-ratio must be in \[0, 1\), got 1.0"):
        Extended(warmup_ratio=1.0)
