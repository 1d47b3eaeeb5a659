"""The model card: every metric block labelled with the data and split it was computed on, with
intervals and n; the test block says how the run was chosen; older runs still make a card; the judge's
results when the run folder has a judge.json."""

import json

from test_report import fake_eval, fake_run, give_test_split, old_eval

from preftune.config import PushConfig
from preftune.hub.card import model_card


def card_of(run) -> str:
    return str(model_card(run, "me/run", PushConfig()))


def test_card_carries_the_judged_win_rate_and_verdict(tmp_path):
    run = fake_run(tmp_path, 5e-6, 4, 0.625)
    plain = card_of(run)
    assert "judged win rate" not in plain
    judge = {"verdict_strength": "weak", "rm_accuracy": 0.69,
             "verdict": ["WEAK VERDICT: the reward model cannot be told apart from a length counter."],
             "decodings": {"greedy": {"tuned_vs_base": {"n": 24, "win_rate": 0.7083, "ci95": [0.5083, 0.8509],
                                                         "length_controlled_win_rate": 0.6312}}}}
    (run / "judge.json").write_text(json.dumps(judge))
    card = card_of(run)
    assert "| judged win rate over the base model (greedy, reward-model judge) | 0.7083 (95% CI 0.5083–0.8509, n=24) |" in card
    assert "| length-controlled judged win rate | 0.6312 |" in card
    assert "- WEAK VERDICT: the reward model cannot be told apart from a length counter." in card


def test_every_metric_block_names_its_data_and_split(tmp_path):
    run = fake_run(tmp_path, 5e-6, 4, 0.625, balanced=0.58)
    give_test_split(run, accuracy=0.575)
    test = json.loads((run / "test.json").read_text())
    (run / "test.json").write_text(json.dumps({**test, "selection": {"rank_by": "length_balanced_accuracy",
                                                                       "rank": 1, "runs_compared": 6}}))
    (run / "eval_cnndm.json").write_text(json.dumps({**fake_eval(0.55), "dataset": "cnndm"}))
    card = card_of(run)
    validation, test_at, transfer = (card.index(t) for t in ("### validation split of `tldr-sample`",
                                                              "### test split of `tldr-sample`",
                                                              "### validation split of `cnndm` (another dataset"))
    assert validation < test_at < transfer
    assert "Runs are compared and chosen on this split." in card[validation:test_at]
    assert "chosen on validation length-balanced accuracy from 6 runs compared (rank 1)" in card[test_at:transfer]
    assert "| preference accuracy (implicit reward) | 0.6250 (95% CI 0.4836–0.7478, Wilson, n=48) |" in card
    assert "| length-balanced accuracy (length alone scores 0.5) | 0.5800 (95% CI 0.4800–0.6800, Agresti–Caffo) |" in card
    assert "| accuracy where the chosen summary is longer | 0.7800 (95% CI 0.6111–0.8889, Wilson, n=32) |" in card
    assert "| preference accuracy (implicit reward) | 0.5750 (95% CI 0.4220–0.7149, Wilson, n=40) |" in card[test_at:]
    assert "| 'longer summary wins' baseline on the same pairs | 0.6500 |" in card
    assert "| test fraction of posts |" in card and "Stale" not in card
    data = model_card(run, "me/run", PushConfig()).data.to_dict()
    splits = {(r["dataset"]["split"], m["type"]) for r in data["model-index"][0]["results"] for m in r["metrics"]}
    assert {("validation", "length_balanced_accuracy"), ("test", "accuracy"),
            ("validation", "accuracy_chosen_shorter")} <= splits


def test_a_stale_test_result_is_labelled(tmp_path):
    run = fake_run(tmp_path, 5e-6, 4, 0.625)
    give_test_split(run, accuracy=0.575)
    (run / "model.safetensors").write_bytes(b"retrained weights")
    assert "**Stale**: the weights or pairs changed after it was computed." in card_of(run)


def test_a_run_from_before_the_strata_and_the_test_split_still_makes_a_card(tmp_path):
    run = fake_run(tmp_path, 5e-6, 4, None, evaluation=old_eval(0.6))
    card = card_of(run)
    assert "### validation split of `tldr-sample`" in card and "lengths in characters (an older preftune)" in card
    assert "| length-balanced accuracy (length alone scores 0.5) | n/a |" in card
    assert "| accuracy where the chosen summary is shorter | 0.4000 (95% CI 0.1982–0.6425, Wilson, n=15) |" in card
    assert "No test split: the run predates it (test: n/a)." in card
    assert "| test fraction of posts | none (the run predates the test split) |" in card


def test_an_unevaluated_run_says_so(tmp_path):
    assert "This run was not evaluated." in card_of(fake_run(tmp_path, 5e-6, 4, None))


def test_metrics_on_other_data_are_never_labelled_as_held_out(tmp_path):
    """`preftune eval RUN --dataset OTHER` results: another dataset is a transfer measure, the full dataset of
    which the training data are a part may share posts with training, the run's own data re-prepared is held
    out; each says so in its title, its note and its model-index entry, and a local path shows by name only."""
    run = fake_run(tmp_path, 5e-6, 4, 0.625)
    results = {"eval_cnndm.jsonl-1a2b3c4d.json": ("/home/me/data/cnndm.jsonl", 0.55),
               "eval_openai-summarize_from_feedback.json": ("openai/summarize_from_feedback", 0.66),
               "test_tldr-sample.json": ("tldr-sample", 0.6)}
    for name, (dataset, accuracy) in results.items():
        split = "test" if name.startswith("test") else "validation"
        (run / name).write_text(json.dumps({**fake_eval(accuracy, split=split), "dataset": dataset}))
    card = card_of(run)
    titles = [line for line in card.splitlines() if line.startswith("### ")]
    assert titles == ["### validation split of `tldr-sample` (held out from training)",
                      "### validation split of `cnndm.jsonl` (another dataset: transfer)",
                      "### validation split of `openai/summarize_from_feedback` (overlaps the training data: not held "
                      "out)",
                      "### test split of `tldr-sample` (the run's own data, re-prepared by `preftune eval --dataset`)"]
    blocks = dict(zip(titles, ("### " + b for b in card.split("### ")[1:])))
    assert "a dataset this run was not trained on" in blocks[titles[1]] and "A transfer measure" in blocks[titles[1]]
    assert "posts that training never saw" not in blocks[titles[1]] + blocks[titles[2]]
    assert "**not a held-out measure**" in blocks[titles[2]]
    assert "posts that training never saw" in blocks[titles[3]] and "/home/me" not in card

    data = model_card(run, "me/run", PushConfig()).data.to_dict()
    named = {(m["type"], r["dataset"]["name"]): m["value"] for r in data["model-index"][0]["results"]
             for m in r["metrics"]}
    assert named["accuracy", "tldr-sample (validation split)"] == 0.625
    assert named["accuracy", "cnndm.jsonl (validation split; transfer: not the training data)"] == 0.55
    assert named["accuracy", "openai/summarize_from_feedback (validation split; may overlap the training data)"] == 0.66
    assert named["accuracy", "tldr-sample (test split)"] == 0.6
    datasets = {r["dataset"]["name"]: (r["dataset"]["type"], r["dataset"].get("config"))
                for r in data["model-index"][0]["results"]}
    assert len(datasets) == len(data["model-index"][0]["results"]) == 4  # one entry per result file: none merged
    assert datasets["cnndm.jsonl (validation split; transfer: not the training data)"] == ("local", None)
    assert datasets["openai/summarize_from_feedback (validation split; may overlap the training data)"] == \
        ("openai/summarize_from_feedback", "comparisons")
    assert datasets["tldr-sample (validation split)"] == ("openai/summarize_from_feedback", None)


def test_two_local_datasets_are_two_model_index_entries(tmp_path):
    """The Hub groups a model-index by dataset type, config and split: a run trained on a local file and
    evaluated on another local file must not publish the transfer numbers under the training data's name."""
    run = fake_run(tmp_path, 5e-6, 4, 0.625)
    config = json.loads((run / "preftune_config.json").read_text())
    config["data"]["dataset"] = str(tmp_path / "mine.jsonl")
    (run / "preftune_config.json").write_text(json.dumps(config))
    (run / "eval.json").write_text(json.dumps({**fake_eval(0.625), "dataset": str(tmp_path / "mine.jsonl")}))
    (run / "eval_cnndm.json").write_text(json.dumps({**fake_eval(0.55), "dataset": str(tmp_path / "cnndm.jsonl")}))
    (run / "eval_cnndm2.json").write_text(json.dumps({**fake_eval(0.5), "dataset": str(tmp_path / "x" / "cnndm.jsonl")}))
    results = model_card(run, "me/run", PushConfig()).data.eval_results
    by_name = {}
    for r in results:
        by_name.setdefault((r.dataset_name, r.dataset_config), {})[r.metric_type] = r.metric_value
    assert {k: v["accuracy"] for k, v in by_name.items()} == {
        ("mine.jsonl (validation split)", None): 0.625,
        ("cnndm.jsonl (validation split; transfer: not the training data)", "cnndm.jsonl"): 0.55,
        ("cnndm.jsonl (validation split; transfer: not the training data)", "eval_cnndm2.json"): 0.5}
    from huggingface_hub import ModelCard

    (tmp_path / "README.md").write_text(str(model_card(run, "me/run", PushConfig())))
    back = ModelCard.load(tmp_path / "README.md").data.eval_results  # as the Hub reads it back
    assert sorted((r.dataset_config or "", r.metric_value) for r in back if r.metric_type == "accuracy") == \
        [("", 0.625), ("cnndm.jsonl", 0.55), ("eval_cnndm2.json", 0.5)]


def test_the_card_links_only_pages_that_exist(tmp_path):
    import re

    card = card_of(fake_run(tmp_path, 5e-6, 4, 0.625))
    assert "pypi.org" not in card  # preftune is not on PyPI
    assert {re.match(r"https?://([^/]+)", url)[1] for url in re.findall(r"\((https?://[^)\s]+)\)", card)} \
        <= {"huggingface.co"}


def test_the_judge_block_and_the_curves_say_what_they_show(tmp_path):
    run = fake_run(tmp_path, 5e-6, 4, 0.625)
    (run / "judge.json").write_text(json.dumps({"posts": 24, "decodings": {"greedy": {"tuned_vs_base": {
        "n": 24, "win_rate": 0.7, "ci95": [0.5, 0.85]}}}}))
    card = card_of(run)
    assert "### Judged generations (validation split of `tldr-sample`, 24 posts)" in card
    assert "faint, each batch's own value" in card and "exponential moving average" in card
