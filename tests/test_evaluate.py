"""Evaluation metrics on a hand-computed case, and completion-only log-probs vs a full forward."""

import pytest
import torch

from preftune.data.prepare import Pair
from preftune.evaluate import PairLogps, format_table, preference_metrics
from preftune.logps import completion_logps, tokenize_completion
from preftune.models import load_model


def test_metrics_by_hand():
    """β = 0.5. Pair 1: rewards c = 0.5·(−4+5) = 0.5, r = 0.5·(−9+8) = −0.5 → margin 1, correct.
    Pair 2: c = 0.5·(−6+5) = −0.5, r = 0.5·(−3+4) = 0.5 → margin −1, wrong.
    Pair 3: c = r = 0 → tie, wrong. Accuracy 1/3, mean margin 0."""
    pairs = [Pair("p", " long chosen", " short", "a", "s"), Pair("p", " c", " longer rejected", "b", "s"),
             Pair("p", " same", " size", "c", "s")]
    lp = PairLogps(policy_chosen=torch.tensor([-4.0, -6.0, -2.0]), policy_rejected=torch.tensor([-9.0, -3.0, -2.0]),
                   ref_chosen=torch.tensor([-5.0, -5.0, -2.0]), ref_rejected=torch.tensor([-8.0, -4.0, -2.0]),
                   chosen_tokens=torch.tensor([2, 1, 1]), rejected_tokens=torch.tensor([1, 2, 1]))
    m = preference_metrics(lp, 0.5, pairs)
    assert m["n"] == 3 and m["posts"] == 3
    assert m["accuracy"] == pytest.approx(1 / 3) and m["ties"] == 1
    assert m["mean_margin"] == pytest.approx(0.0)
    assert m["mean_chosen_reward"] == pytest.approx(0.0) and m["mean_rejected_reward"] == pytest.approx(0.0)
    # drift: chosen (+1, −1, 0), rejected (−1, +1, 0) → mean 0; |drift|/token: 1/2, 1, 0, 1, 1/2, 0 → 0.5
    assert m["mean_logp_drift"] == pytest.approx(0.0)
    assert m["mean_abs_logp_drift_per_token"] == pytest.approx(0.5)
    assert m["reference_logp_accuracy"] == pytest.approx(1 / 3)  # only pair 1: −5 > −8
    assert m["longer_wins_baseline"] == pytest.approx(1 / 3)
    assert m["chosen_shorter_n"] == 1 and m["chosen_shorter_accuracy"] == 0.0
    assert "accuracy where chosen is shorter" in format_table(m)


def test_completion_logps_equal_a_full_forward(tiny_model, tiny_tokenizer):
    model = load_model(str(tiny_model))
    seqs = [tokenize_completion(tiny_tokenizer, "SUBREDDIT: r/x\nPOST: hello there\nTL;DR:", c)
            for c in (" hi", " a much longer summary of the post")]
    sums, counts = completion_logps(model, seqs, tiny_tokenizer.pad_token_id)
    for i, s in enumerate(seqs):
        ids = torch.tensor([s.ids])
        with torch.no_grad():
            logp = model(ids).logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None]).squeeze(-1)
        assert counts[i] == len(s.ids) - s.prompt_len
        assert sums[i].item() == pytest.approx(logp[s.prompt_len - 1:].sum().item(), abs=1e-4)


def test_tokenize_completion_appends_eos_once(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    a = tokenize_completion(tiny_tokenizer, "P:", " x")
    b = tokenize_completion(tiny_tokenizer, "P:", " x" + tiny_tokenizer.eos_token)
    assert a == b and a.ids[-1] == eos and a.ids[-2] != eos
