"""`preftune push RM_DIR`: a reward model folder (rm_config.json + rm_eval.json beside a tiny BERT scorer
and its tokenizer, built here) goes to the local Hub server with a card that says what it scores and how
well; keys another preftune version lacks show as n/a."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_server import HubServer

from preftune.cli import main

TOKEN = "hf_PreftuneRmSecret0b7e44a1c9"
USER = "tester"
WORDS = "the a cat dog rent job car post title tldr subreddit summary got up my is and to".split()


def reward_model(folder: Path, heads: tuple[str, ...]) -> Path:
    """A 1-layer BertForSequenceClassification with one output per head, and a word-piece tokenizer."""
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertTokenizerFast,
    )

    folder.mkdir(parents=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ":", ".", "/"]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})
    assert len(tokenizer) == len(words)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=len(heads),
                        id2label=dict(enumerate(heads)), label2id={h: i for i, h in enumerate(heads)})
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def stratum(accuracy, n):
    return {"n": n, "accuracy": accuracy, "ci95": [accuracy - 0.15, accuracy + 0.12]}


def odin_folder(root: Path) -> Path:
    """As the length-debiased `preftune rm train` writes it, with the keys another helper is adding."""
    folder = reward_model(root / "reward_model", ("quality", "length"))
    config = {"preftune_version": "0.1.0", "base_model": "distilbert/distilbert-base-uncased", "model_source": "hub",
              "data": {"dataset": "tldr-sample", "fraction": 1.0, "eval_fraction": 0.1, "test_fraction": 0.1, "seed": 3},
              "rm": {"lr": 1e-4, "batch_size": 8, "epochs": 1, "length_weight": 1.0, "ortho_weight": 1.0},
              "max_length": 64, "debias": "odin", "heads": ["quality", "length"], "steps": 12, "train_pairs": 96,
              "train_runtime_s": 3.5, "eval_pairs": 40, "train_post_ids": ["a", "b"]}
    evaluation = {"n": 40, "posts": 38, "accuracy": 0.625, "accuracy_ci95": [0.468, 0.759],
                  "chosen_longer": stratum(0.7, 26), "chosen_shorter": stratum(0.5, 14),
                  "equal_length": {"n": 0, "accuracy": None, "ci95": None},
                  "length_balanced_accuracy": 0.6, "length_balanced_ci95": [0.44, 0.76], "longer_wins_baseline": 0.65,
                  "length_unit": "tokens of the reward model's tokenizer", "rm_picks_longer": 0.55,
                  "length_pearson": 0.12, "reward_length_spearman": 0.09, "correlation_n": 80, "bt_loss": 0.66,
                  "mean_margin": 0.2, "length_head": {"pearson": 0.91},
                  "accuracy_by_confidence": {"4": {"n": 10, "accuracy": 0.8, "ci95": [0.49, 0.94]}}}
    (folder / "rm_config.json").write_text(json.dumps(config))
    (folder / "rm_eval.json").write_text(json.dumps(evaluation))
    (folder / "rm_train_log.jsonl").write_text('{"step": 1, "loss": 0.69}\n')
    return folder


def old_folder(root: Path) -> Path:
    """A single-head folder from before the length metrics and the debias settings."""
    folder = reward_model(root / "old_rm", ("reward",))
    (folder / "rm_config.json").write_text(json.dumps({"base_model": "/home/me/models/minilm", "max_length": 64,
                                                       "data": {"dataset": "/home/me/data/prefs.jsonl"},
                                                       "train_post_ids": []}))
    (folder / "rm_eval.json").write_text(json.dumps({"n": 40, "posts": 30, "accuracy": 0.6,
                                                     "accuracy_ci95": [0.45, 0.74]}))
    return folder


@pytest.fixture(scope="module")
def hub():
    with HubServer({TOKEN: USER}) as server:
        yield server


def push(hub, *args, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home), "HF_TOKEN": TOKEN,
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    return subprocess.run([sys.executable, "-m", "preftune", "push", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=180)


def test_a_reward_model_round_trips_with_a_card_that_says_what_it_scores(hub, tmp_path):
    from huggingface_hub import ModelCard, snapshot_download
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = odin_folder(tmp_path / "runs")
    repo_id = f"{USER}/tldr-rm"
    result = push(hub, folder, "--repo-id", repo_id, home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"push: {repo_id} ← {hub.url}/{repo_id}/commit/" in result.stdout
    local = Path(snapshot_download(repo_id, endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / "cache"))
    assert {"README.md", "rm_config.json", "rm_eval.json", "model.safetensors", "config.json"} <= \
        {p.name for p in local.iterdir()}

    texts = ["title: my cat\npost: the cat got my dog\ntldr: cat and dog"]
    scores = []
    for where in (folder, local):
        tokenizer = AutoTokenizer.from_pretrained(where)
        assert tokenizer.unk_token_id not in tokenizer(texts)["input_ids"][0]  # the word pieces came along
        with torch.no_grad():
            scores.append(AutoModelForSequenceClassification.from_pretrained(where).eval()(
                **tokenizer(texts, return_tensors="pt")).logits)
    assert torch.equal(*scores) and scores[0].shape == (1, 2)

    card = ModelCard.load(local / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "distilbert/distilbert-base-uncased" and data["license"] == "apache-2.0"
    assert data["pipeline_tag"] == "text-classification" and "reward-model" in data["tags"] and "odin" in data["tags"]
    results = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results == {("validation", "accuracy"): 0.625, ("validation", "length_balanced_accuracy"): 0.6,
                       ("validation", "accuracy_chosen_longer"): 0.7, ("validation", "accuracy_chosen_shorter"): 0.5}
    for line in ("**Bradley–Terry** model", "`logits[:, 0]` is the **quality head: the score to use**",
                 "`logits[:, 1]` is the length head",
                 "40 preference pairs from 38 posts of the validation split of `tldr-sample` (fraction 1.0, validation "
                 "0.1, test 0.1, seed 3; split by post",
                 "| held-out pairwise accuracy | 0.6250 (95% CI 0.4680–0.7590, Wilson, n=40) |",
                 "| length-balanced accuracy (a pure length counter scores 0.5) | 0.6000 (95% CI 0.4400–0.7600, "
                 "Agresti–Caffo) |",
                 "| accuracy where the chosen summary is shorter | 0.5000 (95% CI 0.3500–0.6200, Wilson, n=14) |",
                 "| score vs summary length: Pearson | 0.1200 (over 80 held-out summaries) |",
                 "| score vs summary length: Spearman | 0.0900 |", "| length head vs summary length: Pearson | 0.9100 |",
                 "| length debiasing | odin |", "| heads | quality, length |", 'model_id = "tester/tldr-rm"',
                 "logits[:, 0]  # the quality head"):
        assert line in card.text, line
    assert TOKEN not in result.stdout + result.stderr


def test_a_single_head_folder_of_an_older_preftune_shows_what_it_has_and_na_for_the_rest(hub, tmp_path):
    """num_labels=1, no debias/heads keys, no length metrics: pushed, read back, scored the same."""
    from huggingface_hub import ModelCard, snapshot_download
    from transformers import AutoModelForSequenceClassification

    folder = old_folder(tmp_path)
    result = push(hub, folder, "--repo-id", f"{USER}/old-rm", "--license", "mit", home=tmp_path)
    assert result.returncode == 0, result.stderr
    local = Path(snapshot_download(f"{USER}/old-rm", endpoint=hub.url, token=TOKEN, cache_dir=tmp_path / "cache"))
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    with torch.no_grad():
        scores = [AutoModelForSequenceClassification.from_pretrained(f).eval()(ids).logits for f in (folder, local)]
    assert torch.equal(*scores) and scores[0].shape == (1, 1)
    card = ModelCard.load(local / "README.md")
    text, data = card.text, card.data.to_dict()
    for line in ("| held-out pairwise accuracy | 0.6000 (95% CI 0.4500–0.7400, Wilson, n=40) |",
                 "| length-balanced accuracy (a pure length counter scores 0.5) | n/a |",
                 "| score vs summary length: Pearson | n/a |", "| accuracy where the chosen summary is longer | n/a |",
                 "One output: `logits[:, 0]` is the score. Not length-debiased (debias: n/a",
                 "validation split of `prefs.jsonl` (split settings n/a;", "logits[:, 0]  # the reward head"):
        assert line in text, line
    assert "/home/me" not in str(card) and "base_model" not in data and data["license"] == "mit"
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("accuracy", 0.6)]


def test_a_reward_model_dry_run_stages_beside_it(tmp_path, capsys):
    folder = odin_folder(tmp_path / "runs")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert main(["push", str(folder), "--dry-run", "--namespace", "me"]) == 0
    staged = tmp_path / "runs" / "hub_upload" / "reward_model"
    assert "→ me/reward_model" in capsys.readouterr().out and (staged / "README.md").is_file()
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert main(["push", str(folder), "--dry-run", "--stage-dir", str(folder / "x")]) == 2
    assert "is inside the reward model folder" in capsys.readouterr().err


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "rm_eval.json").unlink(), "is not a finished reward model folder: it lacks rm_eval.json"),
    (lambda f: (f / "model.safetensors").unlink(), "it lacks model weights (*.safetensors)"),
    (lambda f: (f / "rm_eval.json").write_text("{torn"), "rm_eval.json: not valid JSON"),
    (lambda f: (f / "rm_eval.json").write_text('{"n": 40}'), "rm_eval.json: key 'accuracy' missing"),
    (lambda f: (f / "rm_config.json").write_text("[1]"), "rm_config.json: expected a JSON object, got a list"),
])
def test_a_damaged_reward_model_folder_is_one_line(tmp_path, capsys, damage, message):
    folder = odin_folder(tmp_path)
    damage(folder)
    assert main(["push", str(folder), "--dry-run", "--namespace", "me"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("preftune: error:") == 1
    assert not (tmp_path / "hub_upload").exists()  # checked before anything is written
