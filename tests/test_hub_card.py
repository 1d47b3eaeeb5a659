"""The model card: every metric block labelled with the data and split it was computed on, with
intervals and n; the test block says how the run was chosen; older runs still make a card; the judge's
results when the run folder has a judge.json."""

import json

from test_report import fake_eval, fake_run, give_test_split, old_eval

from preftune.config import PushConfig
from preftune.hub import model_card


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
