"""--precision on CPU: how it resolves, what is refused and why, masks and attention in the compute dtype,
a bf16 run that trains, and what the TRL engine is handed."""

import json
from pathlib import Path

import pytest
import torch

from preftune.config import DataConfig, TrainConfig
from preftune.data.fit import fit
from preftune.data.prepare import prepare
from preftune.dpo.engines import ENGINES, TrainJob
from preftune.dpo.logps import (
    PAIR_ATTENTION,
    PairLogpsModule,
    additive_mask,
    pack_pair,
    pack_row,
    row_logps,
)
from preftune.errors import PreftuneError
from preftune.models import load_model
import preftune.precision
from preftune.precision import resolve


@pytest.fixture(scope="module")
def pairs(tiny_tokenizer):
    return fit(tiny_tokenizer, prepare(DataConfig(fraction=0.03, seed=3)).train[:4], 256, "train")[0]


@pytest.mark.parametrize("units", [True, False])
@pytest.mark.parametrize("precision,expected", [("auto", None), ("fp32", "fp32"), ("bf16", "bf16")])
def test_precision_on_cpu(precision, expected, units, monkeypatch):
    """auto: bf16 on a CPU with bf16 units (measured against fp32: bench/README.md), fp32 on one without."""
    monkeypatch.delenv(preftune.precision.AUTO_ENV)
    monkeypatch.setattr(preftune.precision, "cpu_has_bf16", lambda: units)
    assert resolve(precision, cuda=False) == (expected or ("bf16" if units else "fp32"))


def test_fp16_on_cpu_is_refused_with_the_reason():
    with pytest.raises(PreftuneError, match="--precision fp16 needs a CUDA GPU: on CPU accelerate and the Trainer "
                                            "do not run fp16 mixed precision"):
        resolve("fp16", cuda=False)


def test_fp16_on_cpu_stops_train_before_any_work(tiny_model, tmp_path, capsys):
    from preftune.cli import main

    code = main(["train", "--model", str(tiny_model), "--output-dir", str(tmp_path / "runs"), "--max-pairs", "4",
                 "--fraction", "0.03", "--precision", "fp16"])
    assert code == 2 and "preftune: error: --precision fp16 needs a CUDA GPU" in capsys.readouterr().err
    assert not list((tmp_path / "runs").glob("*"))


@pytest.mark.parametrize("config", ["TrainConfig", "SFTConfig"])  # every verb with --precision
def test_help_says_what_bf16_costs_on_cpu(config):
    import preftune.config

    help_text = getattr(preftune.config, config).__dataclass_fields__["precision"].metadata["help"]
    assert "~10x slower" in help_text and "fp16 needs a CUDA GPU" in help_text


def bf16_step(tiny_model, tokenizer, pairs, out):
    cfg = TrainConfig(output_dir=str(out), model=str(tiny_model), lr=1e-2, batch_size=4, max_length=256,
                      precision="bf16")
    out.mkdir(parents=True)
    return ENGINES["fast"](TrainJob(str(tiny_model), tokenizer, pairs, cfg, 0, out, 4, out / "log.jsonl"))


def test_a_bf16_run_trains_and_its_masks_are_bf16(tiny_model, tiny_tokenizer, pairs, tmp_path, monkeypatch):
    """The block-diagonal mask path (models without transformers' attention registry) builds its masks in
    the compute dtype: a float32 mask beside bf16 queries is what SDPA rejects."""
    from safetensors.torch import load_file

    import preftune.dpo.logps as logps

    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(logps, "supports_pair_attention", lambda model: False)
    dtypes = []
    monkeypatch.setattr(logps, "additive_mask", lambda allowed, dtype: dtypes.append(dtype) or additive_mask(allowed, dtype))
    result = bf16_step(tiny_model, tiny_tokenizer, pairs, tmp_path / "run")
    assert dtypes and set(dtypes) == {torch.bfloat16}
    assert result.log[0]["loss"] == pytest.approx(0.693147, abs=1e-3)  # π = π_ref, both in bf16
    assert json.loads(json.dumps(result.log[0]))["grad_norm"] > 0
    before, after = load_file(tiny_model / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    assert all(after[k].dtype == torch.float32 for k in after)  # mixed precision: fp32 weights
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert list((tmp_path / "cache" / "ref_logps").glob("*-bf16.jsonl"))  # never mixed with fp32 values


def test_the_per_pair_attention_runs_in_bf16(tiny_model, tiny_tokenizer, pairs):
    from transformers import AttentionInterface

    import preftune.dpo.logps as logps

    seen = []

    def spy(module, query, key, value, mask, **kwargs):
        out, weights = logps.pair_attention(module, query, key, value, mask, **kwargs)
        seen.append((value.dtype, out.dtype))  # q and k come out of RoPE in fp32; SDPA's autocast runs them in bf16
        return out, weights

    AttentionInterface.register(PAIR_ATTENTION, spy)
    try:
        module = PairLogpsModule(load_model(str(tiny_model)), dtype=torch.bfloat16)
        packed = [pack_pair(tiny_tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
        out = row_logps(module, pack_row(packed))
    finally:
        AttentionInterface.register(PAIR_ATTENTION, logps.pair_attention)
    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}
    assert out.dtype == torch.float32 and out.isfinite().all()  # log-probs summed in fp32


@pytest.mark.parametrize("units", [True, False])
@pytest.mark.parametrize("precision,bf16,fp16", [("auto", None, False), ("fp32", False, False), ("bf16", True, False)])
def test_the_trl_engine_gets_the_precision(tiny_model, tiny_tokenizer, pairs, tmp_path, precision, bf16, fp16, units,
                                           monkeypatch):
    from preftune.dpo.engines.trl import dpo_config

    monkeypatch.delenv(preftune.precision.AUTO_ENV)
    monkeypatch.setattr(preftune.precision, "cpu_has_bf16", lambda: units)
    bf16 = units if bf16 is None else bf16  # auto: bf16 where the CPU has bf16 units

    cfg = TrainConfig(output_dir=str(tmp_path), model=str(tiny_model), engine="trl", precision=precision)
    args = dpo_config(TrainJob(str(tiny_model), tiny_tokenizer, pairs, cfg, 0, tmp_path, 4, tmp_path / "log"))
    assert (args.bf16, args.fp16, args.use_cpu) == (bf16, fp16, True)


def test_the_flag_names_match_the_dtypes():
    from preftune.config import PRECISION_NAMES
    from preftune.precision import DTYPES

    assert PRECISION_NAMES == ("auto", *DTYPES)


# ---- inference in --precision: eval, judge, demo; runs record theirs --------------------------------


@pytest.fixture(scope="module")
def bf16_run(tiny_model, tmp_path_factory):
    """A run trained with --precision auto where auto picks bf16 (as on a CPU with bf16 units)."""
    from preftune.runs.dpo import train

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(preftune.precision.AUTO_ENV, "bf16")
        cfg = TrainConfig(output_dir=str(tmp_path_factory.mktemp("runs")), model=str(tiny_model), lr=1e-2,
                          batch_size=4, max_length=192, max_pairs=4, max_eval_pairs=6)
        return train(DataConfig(fraction=0.03, seed=3), cfg)


def test_a_run_records_the_precision_auto_resolved_to_and_is_validated_in_it(bf16_run):
    config = json.loads((bf16_run / "preftune_config.json").read_text())
    assert config["train"]["precision"] == "auto" and config["precision"] == "bf16"
    assert json.loads((bf16_run / "eval.json").read_text())["precision"] == "bf16"


def test_eval_auto_is_the_runs_own_precision_so_validation_numbers_repeat(bf16_run, tmp_path):
    """`preftune eval` in another precision than the run's validation gave other numbers for the same pairs."""
    import shutil

    from preftune.cli import main

    run = Path(shutil.copytree(bf16_run, tmp_path / bf16_run.name))
    trained = json.loads((run / "eval.json").read_text())
    assert main(["eval", str(run)]) == 0  # auto: bf16, the run's, although $PREFTUNE_AUTO_PRECISION is fp32
    again = json.loads((run / "eval.json").read_text())
    assert again["precision"] == "bf16" and again["mean_margin"] == trained["mean_margin"]
    assert main(["eval", str(run), "--precision", "fp32"]) == 0
    assert json.loads((run / "eval.json").read_text())["precision"] == "fp32"


def test_eval_auto_for_a_run_that_predates_the_record_is_this_machines_auto(bf16_run):
    from preftune.dpo.evaluate import eval_precision
    from preftune.runs.results import Run

    config = json.loads((bf16_run / "preftune_config.json").read_text())
    del config["precision"]  # an older folder: its train setting 'auto' says nothing about what ran
    assert Run(bf16_run, config).precision is None
    assert eval_precision(Run(bf16_run, config)) == resolve("auto") == "fp32"
    assert eval_precision(Run(bf16_run, {**config, "precision": "bf16"})) == "bf16"


def test_the_judge_generates_in_its_precision(tiny_model, monkeypatch):
    from preftune.judge import generate
    from preftune.judge.judge import model_generator

    seen = []
    monkeypatch.setattr(generate, "generate_many", lambda *a, **k: seen.append(torch.is_autocast_enabled("cpu")))
    for precision in ("bf16", "fp32"):
        model_generator(str(tiny_model), 2, "tuned", precision)(["a prompt"], [])
    assert seen == [True, False]
    assert not torch.is_autocast_enabled("cpu")


def test_the_demo_streams_each_step_in_its_precision_and_none_between(tiny_model, monkeypatch):
    """Autocast is per thread: left on across a yield, it would run the page's own code in bf16."""
    from preftune.judge import generate
    from preftune.serve.demo import Demo, DemoSpec

    def steps(*args):
        for i in range(3):
            yield (i, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))

    monkeypatch.setattr(generate, "stream_texts", steps)
    demo = Demo(DemoSpec(policy=str(tiny_model), base=str(tiny_model), beta=0.1, name="tiny"), "bf16")
    seen = []
    for item in demo.stream([1, 2, 3], generate.Decoding()):
        seen.append((item, torch.is_autocast_enabled("cpu")))
    assert seen == [((i, True, torch.bfloat16), False) for i in range(3)]
    assert demo.precision == "bf16"
