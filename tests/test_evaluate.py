"""Evaluation metrics on hand-computed cases (accuracy with its interval, length strata, the balanced
accuracy a length counter scores 0.5 on, labeller confidence), the printed table, and completion-only
log-probs vs a full forward."""

import pytest
import torch

from preftune.data.prepare import Pair
from preftune.dpo.evaluate import PairLogps, format_table, preference_metrics
from preftune.dpo.logps import completion_logps, tokenize_completion
from preftune.errors import PreftuneError
from preftune.models import load_model
from preftune.stats import length_strata, wilson_interval


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
    # strata by token counts: pair 1 chosen longer (2 > 1, right), pair 2 shorter (wrong), pair 3 equal
    assert m["chosen_longer"] == {"n": 1, "accuracy": 1.0, "ci95": pytest.approx(wilson_interval(1, 1))}
    assert m["chosen_shorter"]["n"] == 1 and m["chosen_shorter"]["accuracy"] == 0.0
    assert m["equal_length"]["n"] == 1 and m["equal_length"]["accuracy"] == 0.0
    assert m["length_balanced_accuracy"] == pytest.approx(0.5)  # ½(1/1 + 0/1)
    assert m["accuracy_ci95"] == pytest.approx(wilson_interval(1, 3)) and "accuracy_by_confidence" not in m
    assert "accuracy where chosen is shorter" in format_table(m)


def lp_from(margins: list[float], chosen_len: list[int], rejected_len: list[int]) -> PairLogps:
    """Log-probs whose β=1 reward margins are `margins` (reference all zero)."""
    n = len(margins)
    return PairLogps(torch.tensor(margins, dtype=torch.float), torch.zeros(n), torch.zeros(n), torch.zeros(n),
                     torch.tensor(chosen_len), torch.tensor(rejected_len))


def pairs_with(confidence: list) -> list[Pair]:
    return [Pair("p", " c", " r", f"post{i}", "s", meta={} if c is None else {"confidence": c})
            for i, c in enumerate(confidence)]


def test_a_length_counter_scores_exactly_half_balanced():
    """A policy whose margin is the length difference (it prefers the longer summary) is right on all
    8 chosen-longer pairs and wrong on all 4 chosen-shorter ones: 8/12 = 0.667 accuracy, equal to the
    'longer wins' baseline, and length-balanced accuracy ½(8/8 + 0/4) = 0.5 exactly."""
    chosen = [10] * 8 + [5] * 4
    rejected = [5] * 8 + [10] * 4
    m = preference_metrics(lp_from([c - r for c, r in zip(chosen, rejected)], chosen, rejected), 1.0,
                           pairs_with([None] * 12))
    assert m["accuracy"] == pytest.approx(8 / 12) == m["longer_wins_baseline"]
    assert m["length_balanced_accuracy"] == 0.5
    assert m["chosen_longer"]["accuracy"] == 1.0 and m["chosen_shorter"]["accuracy"] == 0.0
    # Agresti–Caffo: p̃ = 9/10 and 1/6; half-width = 1.96·√(0.9·0.1/10 + (1/6)(5/6)/6)/2 = 1.96·0.1793/2 = 0.1757
    assert m["length_balanced_ci95"] == pytest.approx((0.5 - 0.1757, 0.5 + 0.1757), abs=1e-4)


def test_accuracy_by_labeller_confidence():
    """Confidence 9: 2 of 2 right; confidence 3: 1 of 2; a row without one is left out of the groups."""
    m = preference_metrics(lp_from([1, 1, 1, -1, 1], [2] * 5, [1] * 5), 1.0, pairs_with([9, 9, 3, 3, None]))
    groups = m["accuracy_by_confidence"]
    assert list(groups) == ["3", "9"]
    assert groups["9"]["n"] == 2 and groups["9"]["accuracy"] == 1.0 and groups["3"]["accuracy"] == 0.5
    assert groups["3"]["ci95"] == pytest.approx(wilson_interval(1, 2))
    table = format_table({"split": "validation", "dataset": "d", **m})
    assert "accuracy by labeller confidence:" in table and "   9  1.0000 [0.342–1.000] n=2" in table


def test_non_finite_margins_are_counted_and_kept_out_of_the_accuracy(capsys):
    m = preference_metrics(lp_from([1.0, float("nan"), -1.0], [2, 2, 2], [1, 1, 1]), 1.0, pairs_with([None] * 3))
    assert m["nonfinite_pairs"] == 1 and m["accuracy"] == pytest.approx(1 / 3)  # NaN counts as wrong
    assert m["mean_margin"] != m["mean_margin"]  # NaN: written as null, so the run ranks last
    assert "1 of 3 pairs have a non-finite reward margin" in capsys.readouterr().out


def test_the_printed_table_shows_intervals_and_n():
    m = preference_metrics(lp_from([1, 1, -1, 1], [3, 3, 1, 1], [1, 1, 3, 3]), 0.5, pairs_with([None] * 4))
    table = format_table({"split": "test", "dataset": "tldr-sample", **m})
    assert table.startswith("evaluation on the test split of tldr-sample: 4 pairs from 4 posts, beta=0.5, lengths "
                            "in tokens")
    assert "  DPO implicit-reward accuracy                  0.7500 [0.301–0.954] n=4\n" in table
    assert "  length-balanced accuracy (length alone: 0.5)  0.7500 [0.426–1.000]\n" in table
    assert "  accuracy where chosen is longer               1.0000 [0.342–1.000] n=2\n" in table
    assert "  accuracy where chosen is shorter              0.5000 [0.095–0.905] n=2\n" in table
    assert "  accuracy where lengths are equal              n/a n=0\n" in table
    assert "  'longer wins' baseline accuracy               0.5000\n" in table


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


def test_each_loss_is_evaluated_by_its_own_implicit_reward():
    """One pair, β = 1: policy −6 (3 tokens) vs −4 (1 token), reference −9 vs −5.
    dpo: +3 vs +1 → right. per_token (sigmoid_norm): +1 vs +1 → tie, wrong. simpo: −2 vs −4 → right,
    and without the reference: moving it changes nothing."""
    pairs = pairs_with([None])
    lp = PairLogps(torch.tensor([-6.0]), torch.tensor([-4.0]), torch.tensor([-9.0]), torch.tensor([-5.0]),
                   torch.tensor([3]), torch.tensor([1]))
    assert preference_metrics(lp, 1.0, pairs)["reward"] == "dpo"  # the default: old runs evaluate as before
    assert preference_metrics(lp, 1.0, pairs, "dpo")["accuracy"] == 1.0
    m = preference_metrics(lp, 1.0, pairs, "per_token")
    assert (m["accuracy"], m["ties"], m["reward"]) == (0.0, 1, "per_token")
    m = preference_metrics(lp, 1.0, pairs, "simpo")
    assert (m["accuracy"], m["mean_margin"], m["reward"]) == (1.0, 2.0, "simpo")
    moved = PairLogps(lp.policy_chosen, lp.policy_rejected, torch.tensor([0.0]), torch.tensor([-50.0]),
                      lp.chosen_tokens, lp.rejected_tokens)
    assert preference_metrics(moved, 1.0, pairs, "simpo")["mean_margin"] == 2.0
    assert "implicit reward: simpo" in format_table(m)


# ---- a run's test result: computed once; a run without test pairs says which flag gives them ----------


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory):
    from preftune.config import DataConfig, TrainConfig
    from preftune.runs.dpo import train

    cfg = TrainConfig(output_dir=str(tmp_path_factory.mktemp("runs")), model=str(tiny_model), lr=1e-2, batch_size=4,
                      max_length=192, max_pairs=8, max_eval_pairs=4, gradient_checkpointing=False, evaluate=False)
    return train(DataConfig(fraction=0.03, seed=3), cfg)


def test_a_test_result_is_computed_once_unless_recompute_test(tiny_run, tmp_path, capsys, caplog):
    """A later `eval --split test` silently replaced the test result it promised to compute once."""
    import json
    import shutil

    from preftune.cli import main

    run = shutil.copytree(tiny_run, tmp_path / tiny_run.name)
    assert main(["eval", str(run), "--split", "test"]) == 0
    stored = json.loads((run / "test.json").read_text())
    (run / "test.json").write_text(json.dumps({**stored, "note": "the first result"}))
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "test"]) == 2
    assert capsys.readouterr().err == (
        f"preftune: error: {run / 'test.json'} exists: a run's test result is computed once, so that nothing is "
        "chosen on test; pass --recompute-test to compute it again (it replaces the stored one)\n")
    assert json.loads((run / "test.json").read_text())["note"] == "the first result"
    assert main(["eval", str(run), "--split", "validation"]) == 0  # validation: as often as wanted
    assert main(["eval", str(run), "--split", "validation"]) == 0
    with caplog.at_level("WARNING"):
        assert main(["eval", str(run), "--split", "test", "--recompute-test"]) == 0
    assert "--recompute-test: computing test.json of" in caplog.text
    again = json.loads((run / "test.json").read_text())
    assert "note" not in again and again["accuracy"] == stored["accuracy"]


def without_test_split(run, tmp_path):
    """The run as trained with --test-fraction 0: an empty test_pairs.jsonl, test_fraction 0 recorded."""
    import json
    import shutil

    copy = shutil.copytree(run, tmp_path / run.name)
    (copy / "test_pairs.jsonl").write_text("")
    config = json.loads((copy / "preftune_config.json").read_text())
    config["data"]["test_fraction"] = 0.0
    (copy / "preftune_config.json").write_text(json.dumps(config))
    return copy


def test_a_run_without_test_pairs_names_the_flag_that_gives_them(tiny_run, tmp_path, capsys):
    """`eval --split test` said "--eval-fraction 0?" and `judge --split test` "no post fits the reward
    model's max_length"; the report names --test-fraction too."""
    from preftune.cli import main
    from preftune.config import JudgeConfig
    from preftune.judge.judge import load_posts
    from preftune.runs.results import open_run
    from preftune.sweep.leaderboard import chosen_test_result

    run = without_test_split(tiny_run, tmp_path)
    message = (f"{run} has no test split: it was trained with --test-fraction 0 (test_pairs.jsonl is empty); train it "
               "again with --test-fraction > 0 (e.g. 0.1) for test pairs, or use --dataset SRC")
    assert main(["eval", str(run), "--split", "test"]) == 2
    assert capsys.readouterr().err == f"preftune: error: {message}\n"
    for full_split in (False, True):
        with pytest.raises(PreftuneError) as error:
            load_posts(open_run(run), JudgeConfig(split="test", full_split=full_split))
        assert str(error.value) == message
    selection = {"rank_by": "accuracy", "rank": 1, "runs_compared": 1}
    assert chosen_test_result(open_run(run), selection) == (
        None, "n/a (no test split: trained with --test-fraction 0; train with --test-fraction > 0 for one)")


def test_each_pair_outcome_is_stored_for_paired_comparisons():
    """eval.json keeps, per pair, its key, post, whether it was right and its lengths: enough to recompute the
    length-balanced accuracy, and to pair it with another run's. The same pair twice gets a second key."""
    from preftune.sweep.paired import read_outcomes

    chosen, rejected = [10, 10, 5, 5, 7], [5, 5, 10, 10, 7]
    pairs = [Pair("p", " c", " r", "post0", "s"), Pair("p", " c", " r", "post0", "s"),
             Pair("p", " c2", " r", "post1", "s"), Pair("q", " c3", " r", "post1", "s"), Pair("p", " e", " r", "post2", "s")]
    m = preference_metrics(lp_from([1, -1, 1, 0, 1], chosen, rejected), 1.0, pairs)
    cols = m["pair_outcomes"]
    assert cols["correct"] == [True, False, True, False, True] and cols["post_id"] == [p.post_id for p in pairs]
    assert cols["chosen_tokens"] == chosen and cols["rejected_tokens"] == rejected
    assert cols["key"][1] == cols["key"][0] + "#2" and len(set(cols["key"])) == 5
    assert cols["key"][0].startswith("post0:") and cols["key"][2] != cols["key"][3]  # the texts are in the key
    outcomes = read_outcomes(m, "run")
    again = length_strata([o.correct for o in outcomes], [o.chosen_len for o in outcomes],
                          [o.rejected_len for o in outcomes])
    assert again["length_balanced_accuracy"] == m["length_balanced_accuracy"] == pytest.approx(0.5 * (1 / 2 + 1 / 2))


def test_an_eval_file_from_before_the_per_pair_outcomes_still_loads(tmp_path):
    import json

    from preftune.runs.results import read_eval

    (tmp_path / "eval.json").write_text(json.dumps({"n": 4, "accuracy": 0.5, "length_balanced_accuracy": 0.5}))
    assert read_eval(tmp_path / "eval.json")["accuracy"] == 0.5
