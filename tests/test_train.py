"""DPO training on a tiny model: log 2 at step 0, every parameter moves, reload gives the same
logits, seeded runs repeat exactly, LoRA saves a merged model."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preftune.config import DataConfig, TrainConfig
from preftune.data.prepare import prepare
from preftune.engines import ENGINES, TrainJob
from preftune.models import load_model, load_tokenizer
from preftune.train import train

DATA = DataConfig(fraction=0.03, seed=3)


def tiny_cfg(model: Path, out: Path, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), model=str(model), lr=1e-2, batch_size=4, epochs=1, max_length=192,
                max_pairs=8, max_eval_pairs=6, gradient_checkpointing=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module", params=["fast", "trl"])
def engine(request):
    return request.param


@pytest.fixture(scope="module")
def full_run(tiny_model, tmp_path_factory, engine):
    return train(DATA, tiny_cfg(tiny_model, tmp_path_factory.mktemp("runs"), engine=engine), log=lambda *a: None)


def test_run_folder_layout(full_run):
    assert full_run.name == "dpo_model_lr0.01_bs4_epoch1"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preftune_config.json", "train_log.jsonl",
                 "metrics.json", "eval.json", "eval_pairs.jsonl"):
        assert (full_run / name).is_file(), name
    assert not full_run.with_name(full_run.name + ".partial").exists()
    config = json.loads((full_run / "preftune_config.json").read_text())
    assert config["train"]["lr"] == 0.01 and config["data"]["fraction"] == 0.03
    assert json.loads((full_run / "metrics.json").read_text())["steps"] == 2


def test_step0_loss_is_log2_and_metrics_are_logged(full_run):
    log = [json.loads(line) for line in (full_run / "train_log.jsonl").open()]
    assert [r["step"] for r in log] == [1, 2]
    assert log[0]["loss"] == pytest.approx(0.693147, abs=1e-4)  # π = π_ref before the first update
    for key in ("rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "learning_rate"):
        assert key in log[0]
    assert log[1]["rewards/margins"] != 0


def test_every_parameter_moved(full_run, tiny_model):
    before, after = load_file(tiny_model / "model.safetensors"), load_file(full_run / "model.safetensors")
    assert before.keys() == after.keys()
    unmoved = [k for k in before if torch.equal(before[k], after[k])]
    assert unmoved == []


def test_eval_json_is_consistent(full_run):
    m = json.loads((full_run / "eval.json").read_text())
    fit = json.loads((full_run / "preftune_config.json").read_text())["fit"]["eval"]
    assert m["n"] == fit["kept"] == fit["total"] - sum(fit["skipped"].values()) > 0 and 0 <= m["accuracy"] <= 1 and m["beta"] == 0.1
    assert m["mean_margin"] == pytest.approx(m["mean_chosen_reward"] - m["mean_rejected_reward"], abs=1e-5)


def test_reload_gives_the_same_logits(tiny_model, tmp_path, engine):
    cfg = tiny_cfg(tiny_model, tmp_path, engine=engine)
    tokenizer = load_tokenizer(str(tiny_model))
    pairs = prepare(DATA, lambda *a: None).train[:4]
    from preftune.data.fit import fit

    pairs, _ = fit(tokenizer, pairs, cfg.max_length, "train")
    job = TrainJob(str(tiny_model), tokenizer, pairs, cfg, 0, tmp_path, 4, tmp_path / "log.jsonl")
    result = ENGINES[engine](job)
    ids = torch.tensor([tokenizer("SUBREDDIT: r/test\nTL;DR: a summary")["input_ids"]])
    result.model.eval()
    with torch.no_grad():
        expected = result.model(ids).logits
        reloaded = load_model(str(tmp_path))(ids).logits
    assert torch.equal(expected, reloaded)


def test_same_seed_same_weights(full_run, tiny_model, tmp_path, engine):
    again = train(DATA, tiny_cfg(tiny_model, tmp_path, engine=engine), log=lambda *a: None)
    a, b = load_file(full_run / "model.safetensors"), load_file(again / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_run_saves_a_merged_model_and_the_adapter(tiny_model, tmp_path, engine):
    run = train(DATA, tiny_cfg(tiny_model, tmp_path, lora=True, lr=5e-2, engine=engine), log=lambda *a: None)
    assert (run / "adapter" / "adapter_config.json").is_file()
    before, after = load_file(tiny_model / "model.safetensors"), load_file(run / "model.safetensors")
    assert before.keys() == after.keys()  # a plain model: no lora_ tensors
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(any(t in k for t in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in moved)


def test_existing_run_needs_overwrite(full_run, tiny_model, engine):
    from preftune.errors import PreftuneError

    with pytest.raises(PreftuneError, match="already exists; pass --overwrite"):
        train(DATA, tiny_cfg(tiny_model, full_run.parent, engine=engine), log=lambda *a: None)


def test_eval_command_recomputes_the_same_metrics(full_run, capsys):
    from preftune.cli import main

    before = json.loads((full_run / "eval.json").read_text())
    assert main(["eval", str(full_run)]) == 0
    after = json.loads((full_run / "eval.json").read_text())
    assert after["accuracy"] == before["accuracy"]
    assert after["mean_margin"] == pytest.approx(before["mean_margin"], abs=1e-5)
    assert "DPO implicit-reward accuracy" in capsys.readouterr().out
