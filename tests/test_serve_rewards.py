"""The demo's implicit reward is its run's own: the rule of the run's loss (sigmoid, sigmoid_norm, simpo,
ld_dpo) and the run's reference (the chain's parent: an SFT run for base → SFT → DPO; none for SimPO).
For tiny runs trained here, the demo's reward of every held-out pair's chosen and rejected summary
equals what `preftune eval` computes for that pair, and their means equal the eval.json the run wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preftune.config import DataConfig, SFTConfig, TrainConfig
from preftune.serve.demo import Demo, reward_text, spec_from_run

DATA = DataConfig(fraction=0.03, seed=3)
TOL = 1e-5


def dpo_run(root: Path, model: Path, loss: str) -> Path:
    """One DPO step at a high lr (the policy moves), evaluated on its 5 held-out pairs (eval.json)."""
    from preftune.runs.dpo import train

    cfg = TrainConfig(output_dir=str(root), model=str(model), lr=5e-2, batch_size=4, max_length=192, max_pairs=4,
                      max_eval_pairs=6, loss=loss)
    return train(DATA, cfg)


@pytest.fixture(scope="module")
def sft_dpo(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    """(SFT run, DPO run trained from it): the chain base → SFT → DPO."""
    from preftune.runs.sft import sft

    root = tmp_path_factory.mktemp("chain")
    sft_dir = sft(DATA, SFTConfig(output_dir=str(root / "sft"), model=str(tiny_model), lr=1e-2, batch_size=4,
                                  epochs=2, max_length=192, max_rows=8))
    return sft_dir, dpo_run(root / "dpo", sft_dir, "sigmoid")


def eval_rewards(run_dir: Path, pair) -> tuple[float, float]:
    """(chosen, rejected) reward of one pair as `preftune eval` computes it (evaluate_pairs on that pair alone,
    the reference's log-probs from the on-disk cache, as evaluation reads them)."""
    from preftune.dpo.evaluate import evaluate_pairs
    from preftune.models import load_model, load_tokenizer
    from preftune.runs.results import open_run

    run = open_run(run_dir)
    m = evaluate_pairs(load_model(str(run_dir)), run.reference_model, load_tokenizer(str(run_dir)), [pair], run.beta,
                       run.train["loss"], run.train["ld_alpha"])
    return m["mean_chosen_reward"], m["mean_rejected_reward"]


def check_demo_matches_eval(run_dir: Path, base: Path) -> Demo:
    """Every held-out pair: the demo's rewards = evaluation's for that pair; their means = eval.json's."""
    from preftune.runs.results import open_run

    demo = Demo(spec_from_run(run_dir, base=str(base)))  # the base side: the chain's first model, whatever the reference
    pairs = open_run(run_dir).eval_pairs()
    shown = [[s.reward for s in demo.score(p.prompt, [p.chosen, p.rejected])] for p in pairs]
    for p, (chosen, rejected) in zip(pairs, shown, strict=True):
        assert (chosen, rejected) == pytest.approx(eval_rewards(run_dir, p), abs=TOL)
    written = json.loads((run_dir / "eval.json").read_text())
    assert written["n"] == len(pairs) >= 5
    assert sum(c for c, _ in shown) / len(shown) == pytest.approx(written["mean_chosen_reward"], abs=TOL)
    assert sum(r for _, r in shown) / len(shown) == pytest.approx(written["mean_rejected_reward"], abs=TOL)
    assert any(abs(c - r) > 1e-3 for c, r in shown)  # the rewards tell the summaries apart: not all zero
    return demo


@pytest.mark.parametrize(("loss", "formula"), [
    ("sigmoid", "β·(log π − log π_base), β = 0.1"),
    ("sigmoid_norm", "β·(log π − log π_base)/|y|, β = 0.1"),
    ("simpo", "β·(log π)/|y|, β = 0.1"),
    ("ld_dpo", "β·(log π − log π_base), log-probs LD-weighted (tail past the shorter completion ×0.5), β = 0.1"),
])
def test_the_demo_scores_with_the_runs_loss_rule(tiny_model, tmp_path_factory, loss, formula):
    run_dir = dpo_run(tmp_path_factory.mktemp(loss), tiny_model, loss)
    demo = check_demo_matches_eval(run_dir, tiny_model)
    text = reward_text(demo.spec)
    assert text.startswith(formula)
    if loss == "simpo":  # reference-free: no reference named, loaded or listed
        assert demo.spec.reference is None and demo.load().reference is None
        assert text.endswith("reference: none (a reference-free reward)") and "**Reference**" not in demo.models_text()
    else:
        assert text.endswith(f"reference: base model {tiny_model}") and demo.load().reference is demo.load().base
        assert f"**Reference**: `{tiny_model}` — local folder {tiny_model}" in demo.models_text()


def test_a_run_trained_from_an_sft_run_is_scored_against_the_sft_model(sft_dpo, tiny_model):
    """The page shows the base model beside the tuned one, yet the reward's π_ref is the SFT run, as in eval."""
    sft_dir, run_dir = sft_dpo
    demo = check_demo_matches_eval(run_dir, tiny_model)
    assert demo.spec.reference == str(sft_dir) and demo.spec.base == str(tiny_model)
    assert reward_text(demo.spec) == f"β·(log π − log π_SFT), β = 0.1 · reference: SFT run {sft_dir.name}"
    loaded = demo.load()
    assert loaded.reference is not loaded.base and loaded.reference_source == f"local folder {sft_dir}"
    # by default the side beside the tuned one is the run's reference itself, loaded once
    default = Demo(spec_from_run(run_dir))
    assert default.spec.base == str(sft_dir) and default.load().reference is default.load().base


def test_a_space_of_an_sft_chained_run_shows_no_reward_rather_than_a_wrong_one(sft_dpo, tiny_model, tmp_path, capsys):
    """A Space cannot load the local SFT run the reward needs; scoring against --base instead would show a number
    unlike eval.json's. So its demo.json records no reward, the page says why, and summaries show none."""
    from dataclasses import replace

    from preftune.cli import main
    from preftune.dpo.logps import tokenize_completion
    from preftune.serve.demo import DemoSpec

    _, run_dir = sft_dpo
    base = "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert main(["space", str(run_dir), "--out", str(tmp_path / "space"), "--repo-id", "alice/x", "--base", base]) == 0
    assert "a Space cannot load: its page shows no implicit reward" in capsys.readouterr().out
    written = json.loads((tmp_path / "space" / "demo.json").read_text())
    assert (written["reward"], written["reference"], written["reference_kind"]) == (None, None, "sft")
    spec = DemoSpec.from_json(written)
    assert "not shown · reference: none loadable here (the run's reference is a local SFT folder)" in reward_text(spec)
    assert "no reward is shown" in (tmp_path / "space" / "README.md").read_text()
    local = Demo(replace(spec, policy=str(run_dir), base=str(tiny_model)))  # the same spec, models from disk
    prompt, texts = "SUBREDDIT: r/test\nTITLE: t\nPOST: I lost my keys.\nTL;DR:", [" Lost my keys.", " Keys."]
    summaries = local.score(prompt, texts)
    assert [s.reward for s in summaries] == [None, None] and local.load().reference is None
    tokenized = [tokenize_completion(local.load().tokenizer, prompt, t) for t in texts]
    assert [s.tokens for s in summaries] == [len(t.ids) - t.prompt_len - 1 for t in tokenized]  # without the EOS
    assert all("reward" not in s.describe() for s in summaries)


def test_a_demo_json_from_before_reward_rules_reads_as_plain_dpo_against_the_base():
    from preftune.serve.demo import DemoSpec

    spec = DemoSpec.from_json({"policy": "alice/run", "base": "alice/base", "beta": 0.2, "name": "run"})
    assert (spec.reward, spec.reference, spec.rule.beta) == ("dpo", "alice/base", 0.2)
    assert reward_text(spec) == "β·(log π − log π_base), β = 0.2 · reference: base model alice/base"
    assert DemoSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
