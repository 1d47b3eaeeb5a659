"""The model card carries the judge's results when the run folder has a judge.json."""

import json

from test_report import fake_run

from preftune.config import PushConfig
from preftune.hub import model_card


def test_card_carries_the_judged_win_rate_and_verdict(tmp_path):
    run = fake_run(tmp_path, 5e-6, 4, 0.625)
    plain = str(model_card(run, "me/run", PushConfig()))
    assert "judged win rate" not in plain
    judge = {"verdict_strength": "weak", "rm_accuracy": 0.69,
             "verdict": ["WEAK VERDICT: the reward model cannot be told apart from a length counter."],
             "decodings": {"greedy": {"tuned_vs_base": {"n": 24, "win_rate": 0.7083, "ci95": [0.5083, 0.8509],
                                                         "length_controlled_win_rate": 0.6312}}}}
    (run / "judge.json").write_text(json.dumps(judge))
    card = str(model_card(run, "me/run", PushConfig()))
    assert "| judged win rate over the base model (greedy, reward-model judge) | 0.7083 (95% CI 0.5083–0.8509, n=24) |" in card
    assert "| length-controlled judged win rate | 0.6312 |" in card
    assert "- WEAK VERDICT: the reward model cannot be told apart from a length counter." in card
