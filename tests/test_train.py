"""DPO training on a tiny model: log 2 at step 0, every parameter moves, reload gives the same
logits, seeded runs repeat exactly, LoRA saves a merged model; the run folder keeps its test pairs
unscored, `preftune eval --split test / --dataset` write their own files, and `preftune report`
scores the chosen run on test once (again only when the weights change)."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import comparison, write_jsonl
from safetensors.torch import load_file

from preftune.config import DataConfig, TrainConfig
from preftune.data.prepare import prepare
from preftune.dpo.engines import ENGINES, TrainJob
from preftune.models import load_model, load_tokenizer
from preftune.runs.dpo import train
from preftune.runs.folder import result_file

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
    return train(DATA, tiny_cfg(tiny_model, tmp_path_factory.mktemp("runs"), engine=engine))


def test_run_folder_layout(full_run):
    assert full_run.name == "dpo_model_lr0.01_bs4_epoch1"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preftune_config.json", "train_log.jsonl",
                 "metrics.json", "eval.json", "eval_pairs.jsonl", "test_pairs.jsonl"):
        assert (full_run / name).is_file(), name
    assert not full_run.with_name(full_run.name + ".partial").exists()
    config = json.loads((full_run / "preftune_config.json").read_text())
    assert config["train"]["lr"] == 0.01 and config["data"]["fraction"] == 0.03
    assert json.loads((full_run / "metrics.json").read_text())["steps"] == 2
    assert not (full_run / "test.json").exists()  # test pairs are kept, not scored, at training time


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
    fit = json.loads((full_run / "preftune_config.json").read_text())["fit"]
    assert m["n"] == fit["eval"]["kept"] == fit["eval"]["total"] - sum(fit["eval"]["skipped"].values()) > 0
    assert 0 <= m["accuracy"] <= 1 and m["beta"] == 0.1
    assert (m["split"], m["dataset"], m["length_unit"]) == ("validation", "tldr-sample", "tokens")
    assert m["mean_margin"] == pytest.approx(m["mean_chosen_reward"] - m["mean_rejected_reward"], abs=1e-5)
    strata = [m[k]["n"] for k in ("chosen_longer", "chosen_shorter", "equal_length")]
    assert sum(strata) == m["n"] and m["chosen_shorter_n"] == strata[1]
    assert m["accuracy_ci95"][0] <= m["accuracy"] <= m["accuracy_ci95"][1]
    test_pairs = (full_run / "test_pairs.jsonl").read_text().splitlines()
    assert len(test_pairs) == fit["test"]["kept"] > 0
    eval_posts = {json.loads(line)["post_id"] for line in (full_run / "eval_pairs.jsonl").read_text().splitlines()}
    assert not eval_posts & {json.loads(line)["post_id"] for line in test_pairs}  # disjoint by post


def test_reload_gives_the_same_logits(tiny_model, tmp_path, engine):
    cfg = tiny_cfg(tiny_model, tmp_path, engine=engine)
    tokenizer = load_tokenizer(str(tiny_model))
    pairs = prepare(DATA).train[:4]
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
    again = train(DATA, tiny_cfg(tiny_model, tmp_path, engine=engine))
    a, b = load_file(full_run / "model.safetensors"), load_file(again / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_run_saves_a_merged_model_and_the_adapter(tiny_model, tmp_path, engine):
    run = train(DATA, tiny_cfg(tiny_model, tmp_path, lora=True, lr=5e-2, engine=engine))
    assert (run / "adapter" / "adapter_config.json").is_file()
    before, after = load_file(tiny_model / "model.safetensors"), load_file(run / "model.safetensors")
    assert before.keys() == after.keys()  # a plain model: no lora_ tensors
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(any(t in k for t in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in moved)


def test_existing_run_needs_overwrite(full_run, tiny_model, engine):
    from preftune.errors import PreftuneError

    with pytest.raises(PreftuneError, match="already exists; pass --overwrite"):
        train(DATA, tiny_cfg(tiny_model, full_run.parent, engine=engine))


def test_eval_command_recomputes_the_same_metrics(full_run, capsys):
    from preftune.cli import main

    before = json.loads((full_run / "eval.json").read_text())
    assert main(["eval", str(full_run)]) == 0
    after = json.loads((full_run / "eval.json").read_text())
    assert after["accuracy"] == before["accuracy"] and after["chosen_longer"] == before["chosen_longer"]
    assert after["mean_margin"] == pytest.approx(before["mean_margin"], abs=1e-5)
    # per-pair outcomes: training's evaluation and `preftune eval` key the same pairs alike (a paired comparison)
    assert after["pair_outcomes"]["key"] == before["pair_outcomes"]["key"] and len(set(after["pair_outcomes"]["key"])) \
        == after["n"] and after["pair_outcomes"]["correct"] == before["pair_outcomes"]["correct"]
    out = capsys.readouterr().out
    assert "evaluation on the validation split of tldr-sample" in out and "DPO implicit-reward accuracy" in out


def test_eval_on_the_test_split_and_on_another_dataset_write_their_own_files(full_run, tmp_path, capsys):
    from preftune.cli import main

    validation = (full_run / "eval.json").read_bytes()
    assert main(["eval", str(full_run), "--split", "test"]) == 0
    test = json.loads((full_run / "test.json").read_text())
    assert test["split"] == "test" and test["n"] == len((full_run / "test_pairs.jsonl").read_text().splitlines())
    other = write_jsonl(tmp_path / "other.jsonl", [comparison(f"o{i}", post=f"Post number {i} about bread.",
                                                               chosen=" Short.", rejected=" A longer one.")
                                                    for i in range(400)])  # the run's --fraction 0.03 keeps 12
    assert main(["eval", str(full_run), "--dataset", str(other)]) == 0
    written = result_file("validation", str(other))
    assert written.startswith("eval_other.jsonl-")
    transfer = json.loads((full_run / written).read_text())
    assert transfer["dataset"] == str(other) and transfer["split"] == "validation"
    assert transfer["chosen_shorter"]["n"] == transfer["n"] and transfer["longer_wins_baseline"] == 0
    assert (full_run / "eval.json").read_bytes() == validation  # the run's own result is never replaced
    (full_run / "test.json").unlink()
    (full_run / written).unlink()


def test_report_scores_the_chosen_run_on_test_once(full_run, capsys):
    from preftune.config import ReportConfig
    from preftune.sweep.report import report

    root = full_run.parent
    report(root, ReportConfig(rank_by="accuracy"))
    first = json.loads((full_run / "test.json").read_text())
    assert first["split"] == "test" and first["selection"]["rank"] == 1 and first["fingerprint"]
    row = json.loads((root / "leaderboard.json").read_text())[0]
    assert row["selected"] and row["test_accuracy"] == first["accuracy"] and row["test_pairs"] == first["n"]
    assert "scoring" in capsys.readouterr().out
    report(root, ReportConfig(rank_by="accuracy"))  # fresh: reused, not scored again
    assert "scoring" not in capsys.readouterr().out
    weights = full_run / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # as if re-trained: stale
    report(root, ReportConfig(rank_by="accuracy"))
    assert "scoring" in capsys.readouterr().out
    (full_run / "test.json").unlink()
