"""Cleaning, fraction, post-disjoint split and statistics."""

import json

import pytest
from conftest import comparison, write_jsonl

from preftune.config import DataConfig
from preftune.data.prepare import Pair, Tally, prepare, resolve_labels, split_by_post, take_fraction


def quiet(*_):
    pass


@pytest.fixture(scope="module")
def shipped():
    return prepare(DataConfig(), quiet)


def test_shipped_sample_counts(shipped):
    rows = shipped.stats["rows"]
    assert rows["total"] == 1771  # batch13 (1,097) + batch18 (674)
    # hand count: repeated labels of the same two summaries of the same post
    assert rows["skipped"] == {"duplicate label": 169, "outvoted label": 44, "tied labels": 16}
    assert len(shipped.train) + len(shipped.eval) == rows["kept"] == 1542


def test_no_post_in_both_splits(shipped):
    train_posts = {p.post_id for p in shipped.train}
    eval_posts = {p.post_id for p in shipped.eval}
    assert train_posts and eval_posts and not train_posts & eval_posts
    assert 0.1 <= len(shipped.eval) / (len(shipped.train) + len(shipped.eval)) < 0.12


def test_length_baseline_matches_the_documented_rates():
    # PROVENANCE: the longer summary wins in 71% (batch13) and 56% (batch18) of raw rows
    from preftune.data.prepare import load_pairs, longer_wins

    pairs, _, _ = load_pairs(DataConfig())
    b13 = [p for p in pairs if p.meta["batch"] == "batch13"]
    b18 = [p for p in pairs if p.meta["batch"] == "batch18"]
    assert round(longer_wins(b13), 2) == 0.71 and round(longer_wins(b18), 2) == 0.56
    assert round(longer_wins(pairs), 2) == 0.65


def test_fraction_and_seed_are_deterministic(shipped):
    a = prepare(DataConfig(fraction=0.05, seed=1), quiet)
    b = prepare(DataConfig(fraction=0.05, seed=1), quiet)
    c = prepare(DataConfig(fraction=0.05, seed=2), quiet)
    assert len(a.train) + len(a.eval) == round(0.05 * 1542) == 77
    assert a.train == b.train and a.eval == b.eval
    assert {p.source for p in a.train} != {p.source for p in c.train}


def test_take_fraction_keeps_order_and_at_least_one():
    pairs = [Pair("p", f" c{i}", " r", str(i), f"f:{i}") for i in range(10)]
    assert take_fraction(pairs, 0.01, 0) and len(take_fraction(pairs, 0.01, 0)) == 1
    picked = take_fraction(pairs, 0.5, 3)
    assert len(picked) == 5 and picked == sorted(picked, key=lambda p: int(p.post_id))


def test_split_holds_out_whole_posts():
    pairs = [Pair("p", f" c{i}", " r", f"post{i % 7}", f"f:{i}") for i in range(70)]
    train, held = split_by_post(pairs, 0.3, seed=0)
    assert len(train) + len(held) == 70
    assert {p.post_id for p in train}.isdisjoint({p.post_id for p in held})
    assert len(held) >= 21  # ≥ 30%, in whole posts of 10 pairs


def test_split_needs_two_posts():
    from preftune.errors import PreftuneError

    with pytest.raises(PreftuneError, match="1 distinct post"):
        split_by_post([Pair("p", " a", " b", "one", "f:1")], 0.5, 0)


def test_repeated_labels_resolved_by_majority():
    def pair(c, r, line):
        return Pair("prompt", c, r, "post", f"f:{line}")

    tally = Tally(total=7)
    pairs = [pair(" A", " B", 1), pair(" A", " B", 2), pair(" B", " A", 3),  # 2:1 → keep A>B
             pair(" C", " D", 4), pair(" D", " C", 5),                       # 1:1 → drop both
             pair(" E", " F", 6), pair(" E", " F", 7)]                       # unanimous → keep one
    kept = resolve_labels(pairs, tally)
    assert [(p.chosen, p.source) for p in kept] == [(" A", "f:1"), (" E", "f:6")]
    assert tally.skipped == {"duplicate label": 2, "outvoted label": 1, "tied labels": 2}
    assert tally.summary() == "kept 2 / 7; skipped 5: duplicate label (2), tied labels (2), outvoted label (1)"


def test_prepare_cli_writes_splits_with_post_ids(tmp_path):
    from preftune.cli import main

    src = write_jsonl(tmp_path / "c.jsonl", [comparison(post_id=f"p{i}", chosen=f" s{i}") for i in range(20)])
    assert main(["data", "prepare", "--dataset", str(src), "--eval-fraction", "0.25", "--out", str(tmp_path / "o")]) == 0
    train = [json.loads(line) for line in (tmp_path / "o" / "train.jsonl").open()]
    held = [json.loads(line) for line in (tmp_path / "o" / "eval.jsonl").open()]
    assert len(train) == 15 and len(held) == 5
    assert {"prompt", "chosen", "rejected", "post_id"} <= train[0].keys()
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["train"]["pairs"] == 15 and stats["eval"]["posts"] == 5


def test_prepared_folder_is_reused_as_is(tmp_path):
    from preftune.data import write_prepared

    first = prepare(DataConfig(fraction=0.02), quiet)
    write_prepared(first, tmp_path)
    again = prepare(DataConfig(dataset=str(tmp_path)), quiet)
    assert again.train == first.train and again.eval == first.eval


def test_pair_json_round_trip_keeps_the_trim_policy():
    pair = Pair("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:", " d", " e", "x", "f:1", (0, 26),
                {"k": 1}, "turns", (26,))
    assert Pair.from_json(json.loads(json.dumps(pair.to_json()))) == pair
    old = {"prompt": "p", "chosen": " a", "rejected": " b", "post_id": 3, "body_span": [0, 1]}  # before cut/turns
    assert Pair.from_json(old) == Pair("p", " a", " b", "3", "", (0, 1), {}, "end", ())
