"""Two runs told apart on the same pairs: the paired bootstrap of their length-balanced accuracy difference
(stats.paired_balanced_difference) on hand-worked cases, its refusals, and sweep/paired.py's reading of
eval.json's per-pair outcomes and choice of the plain DPO baseline."""

import pytest

from preftune.errors import PreftuneError
from preftune.stats import (
    MIN_RESAMPLES,
    PairOutcome,
    length_strata,
    paired_balanced_difference,
)
from preftune.sweep import paired


def run(correct: list[int], longer: list[bool], posts: list[str] | None = None) -> list[PairOutcome]:
    """Outcomes of pairs k0, k1, …: chosen 10 tokens vs 5 where `longer`, else 5 vs 10; one post per pair
    unless `posts` says otherwise."""
    posts = posts or [f"p{i}" for i in range(len(correct))]
    return [PairOutcome(f"k{i}", posts[i], float(c), 10 if lo else 5, 5 if lo else 10)
            for i, (c, lo) in enumerate(zip(correct, longer))]


# 4 posts, each one chosen-longer and one chosen-shorter pair (keys k0..k7: even longer, odd shorter)
LONGER = [True, False] * 4
POSTS = [f"p{i // 2}" for i in range(8)]


def test_identical_runs_differ_by_exactly_zero():
    a = run([1, 0, 1, 1, 0, 0, 1, 0], LONGER, POSTS)
    d = paired_balanced_difference(a, a)
    assert d["difference"] == 0.0 and d["ci95"] == (0.0, 0.0)
    assert d["n"] == 8 and d["posts"] == 4 and d["resamples"] == MIN_RESAMPLES == 2000 and d["resamples_used"] == 2000


def test_a_run_that_flips_known_pairs():
    """B is wrong everywhere. A is right on 2 of the 4 chosen-longer pairs and 1 of the 4 chosen-shorter:
    balanced A = ½(2/4 + 1/4) = 0.375, B = 0, so A − B = 0.375 (and B − A = −0.375)."""
    b = run([0] * 8, LONGER, POSTS)
    a = run([1, 1, 1, 0, 0, 0, 0, 0], LONGER, POSTS)
    assert paired_balanced_difference(a, b)["difference"] == pytest.approx(0.375)
    assert paired_balanced_difference(b, a)["difference"] == pytest.approx(-0.375)
    # the same as length_strata's balanced accuracies, subtracted
    lens = ([o.chosen_len for o in a], [o.rejected_len for o in a])
    assert paired_balanced_difference(a, b)["difference"] == pytest.approx(
        length_strata([o.correct for o in a], *lens)["length_balanced_accuracy"]
        - length_strata([o.correct for o in b], *lens)["length_balanced_accuracy"])


def test_a_difference_every_resample_shares_has_a_zero_width_interval():
    """A beats B on every chosen-longer pair and they agree on every chosen-shorter one: in any resample
    Δ = ½(1 + 0) = 0.5, so the paired interval is [0.5, 0.5] (unpaired accuracies would vary)."""
    b = run([0, 1, 0, 0, 0, 1, 0, 0], LONGER, POSTS)
    a = run([1, 1, 1, 0, 1, 1, 1, 0], LONGER, POSTS)
    d = paired_balanced_difference(a, b)
    assert d["difference"] == pytest.approx(0.5) and d["ci95"] == pytest.approx((0.5, 0.5))


def noisy(n_posts: int, per_post: int) -> tuple[list[PairOutcome], list[PairOutcome]]:
    """A right on every pair of the even posts, B on every pair of the odd ones: pairs of a post move
    together; overall, A − B = 0."""
    n = n_posts * per_post
    posts = [f"p{i // per_post}" for i in range(n)]
    longer = [i % 2 == 0 for i in range(n)]
    even = [(i // per_post) % 2 == 0 for i in range(n)]
    return run([int(e) for e in even], longer, posts), run([int(not e) for e in even], longer, posts)


def test_posts_are_resampled_whole():
    """The same outcomes with each pair its own post: the clustered interval is wider, since 8 pairs of a
    post agree with each other (a bootstrap over pairs would claim 8× the evidence)."""
    a, b = noisy(10, 8)
    clustered = paired_balanced_difference(a, b)
    alone = paired_balanced_difference(*[[PairOutcome(o.key, o.key, o.correct, o.chosen_len, o.rejected_len)
                                          for o in side] for side in (a, b)])
    assert clustered["difference"] == alone["difference"] == pytest.approx(0.0)
    assert clustered["posts"] == 10 and alone["posts"] == 80
    width = {k: d["ci95"][1] - d["ci95"][0] for k, d in (("clustered", clustered), ("alone", alone))}
    assert width["clustered"] > 2 * width["alone"]


def test_the_interval_is_seeded():
    a, b = noisy(30, 2)
    assert paired_balanced_difference(a, b, seed=3) == paired_balanced_difference(a, b, seed=3)
    assert len({paired_balanced_difference(a, b, seed=s)["ci95"] for s in range(6)}) > 1  # the seed is used
    with pytest.raises(ValueError, match="at least 2000"):
        paired_balanced_difference(a, b, reps=1999)
    assert paired_balanced_difference(a, b, reps=3000)["resamples"] == 3000


@pytest.mark.parametrize("edit,message", [
    (lambda b: b[:-1], r"different pairs \(1 only in A, 0 only in B, e.g. k7\)"),
    (lambda b: [*b[:-1], PairOutcome("other", "p3", 0.0, 5, 10)], r"1 only in A, 1 only in B"),
    (lambda b: [*b, b[0]], r"run B's per-pair outcomes name a pair twice \(k0\)"),
    (lambda b: [PairOutcome("k0", "p0", 0.0, 5, 10), *b[1:]], r"pair k0 has another post or length stratum"),
])
def test_pairs_not_common_to_both_runs_are_refused(edit, message):
    a = run([1] * 8, LONGER, POSTS)
    with pytest.raises(PreftuneError, match=message):
        paired_balanced_difference(a, edit(run([0] * 8, LONGER, POSTS)))


def test_without_a_stratum_or_a_second_post_there_is_no_interval():
    only_longer = run([1, 0, 1], [True] * 3)
    assert paired_balanced_difference(only_longer, only_longer)["difference"] is None
    one_post = run([1, 0], [True, False], ["p", "p"])
    d = paired_balanced_difference(one_post, one_post)
    assert d["difference"] == 0.0 and d["ci95"] is None


# ---- sweep/paired.py -------------------------------------------------------------------------------


def columns(outcomes: list[PairOutcome]) -> dict:
    return {"key": [o.key for o in outcomes], "post_id": [o.post_id for o in outcomes],
            "correct": [o.correct == 1 for o in outcomes], "chosen_tokens": [int(o.chosen_len) for o in outcomes],
            "rejected_tokens": [int(o.rejected_len) for o in outcomes]}


def test_versus_reads_eval_json_and_says_why_it_cannot():
    a, b = run([1, 1, 1, 0, 0, 0, 0, 0], LONGER, POSTS), run([0] * 8, LONGER, POSTS)
    v = paired.versus({"pair_outcomes": columns(a)}, "A", {"pair_outcomes": columns(b)}, "B")
    assert v["status"] == "computed" and v["baseline"] == "B" and v["difference"] == pytest.approx(0.375)
    assert v["distinguishable"] == (v["ci95"][0] > 0) and isinstance(v["ci95"], list)
    assert paired.interval_text(v).startswith("+0.375 [")
    old = paired.versus({"accuracy": 0.5}, "A", {"pair_outcomes": columns(b)}, "B")
    assert old["difference"] is None and old["ci95"] is None and old["distinguishable"] is None
    assert old["status"] == "not available: A's eval.json predates per-pair outcomes (evaluate it again: preftune eval RUN)"
    damaged = paired.versus({"pair_outcomes": {**columns(a), "correct": [True]}}, "A", {"pair_outcomes": columns(b)}, "B")
    assert "pair_outcomes is damaged" in damaged["status"]
    assert "different pairs" in paired.versus({"pair_outcomes": columns(a[:4])}, "A", {"pair_outcomes": columns(b)},
                                              "B")["status"]


def test_the_verdict_says_whether_the_interval_excludes_zero():
    a, b = run([1, 1, 1, 0, 1, 1, 1, 0], LONGER, POSTS), run([0, 1, 0, 0, 0, 1, 0, 0], LONGER, POSTS)
    apart = paired.versus({"pair_outcomes": columns(a)}, "A", {"pair_outcomes": columns(b)}, "B")
    assert apart["distinguishable"] and "A is distinguishable from the baseline B" in paired.verdict("A", apart)
    same = paired.versus({"pair_outcomes": columns(a)}, "A", {"pair_outcomes": columns(a)}, "B")
    assert same["distinguishable"] is False and "not distinguishable" in paired.verdict("A", same)
    assert "includes 0" in paired.verdict("A", same)


@pytest.mark.parametrize("config,plain", [
    ({"train": {"loss": "sigmoid", "nll_weight": 0.0}, "data": {"length_balance": False}}, True),
    ({"train": {"loss": "sigmoid"}}, True),  # a run from before these settings: plain
    ({"train": {"loss": "hinge"}}, False),
    ({"train": {"loss": "sigmoid", "nll_weight": 1.0}}, False),
    ({"train": {"loss": "sigmoid", "label_smoothing": 0.1}}, False),
    ({"train": {"loss": "sigmoid"}, "data": {"length_balance": True}}, False),
    ({"train": {"loss": "sigmoid"}, "data": {"min_confidence": 2}}, False),
])
def test_plain_dpo_is_loss_sigmoid_with_no_extras(config, plain):
    assert paired.is_plain_dpo(config) is plain


def test_the_report_baseline_is_the_one_plain_run():
    plain, hinge = {"train": {"loss": "sigmoid"}}, {"train": {"loss": "hinge"}}
    assert paired.plain_baseline([("a", plain), ("b", hinge)])[0] == "a"
    assert paired.plain_baseline([("b", hinge)]) == (None, "no baseline: no plain DPO run (loss sigmoid, no extras) "
                                                           "among these runs")
    name, why = paired.plain_baseline([("a", plain), ("c", plain), ("b", hinge)])
    assert name is None and why == "no baseline: 2 plain DPO runs (a, c), none singled out"
