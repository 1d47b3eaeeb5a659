"""Cleaning, fraction, the post-disjoint train / validation / test split, statistics, and the prepared
folder (written, read back, and refused when incomplete or damaged)."""

import hashlib
import json
import logging
from collections import Counter

import pytest
from conftest import comparison, shipped_rows, write_jsonl

from preftune.config import DataConfig
from preftune.data.adapters import summarize_from_feedback
from preftune.data.folder import load_prepared, read_jsonl
from preftune.data.prepare import (
    Pair,
    Prepared,
    Tally,
    prepare,
    resolve_labels,
    split_by_post,
    take_fraction,
    write_prepared,
)
from preftune.data.split import confidence_counts, split_stats
from preftune.errors import DataError, PreftuneError


@pytest.fixture(scope="module")
def shipped():
    return prepare(DataConfig())


def posts_of(pairs):
    return {p.post_id for p in pairs}


def test_shipped_sample_counts(shipped):
    rows = shipped.stats["rows"]
    assert rows["total"] == 1771  # batch13 (1,097) + batch18 (674)
    # hand count: repeated labels of the same two summaries of the same post
    assert rows["skipped"] == {"duplicate label": 169, "outvoted label": 44, "tied labels": 16}
    assert len(shipped.train) + len(shipped.validation) + len(shipped.test) == rows["kept"] == 1542


def test_no_post_in_two_splits(shipped):
    train, validation, test = posts_of(shipped.train), posts_of(shipped.validation), posts_of(shipped.test)
    assert train and validation and test
    assert not train & validation and not train & test and not validation & test
    for split in (shipped.validation, shipped.test):  # ≥ 10% each, in whole posts
        assert 0.1 <= len(split) / 1542 < 0.12


# The validation split of the code before the test split existed (its `eval`), for two configs: sha1 of
# the pairs' sources in order, computed with that code. Old run folders re-prepare exactly this.
OLD_EVAL = [({}, 1387, 155, "afd5fd68c3c97ab1"),
            ({"fraction": 0.3, "seed": 7, "eval_fraction": 0.25}, 347, 116, "c9fb64649b0a62e1")]


@pytest.mark.parametrize("config, old_train, old_eval, digest", OLD_EVAL)
@pytest.mark.parametrize("test_fraction", [0.0, 0.1, 0.3])
def test_validation_is_the_old_eval_split(config, old_train, old_eval, digest, test_fraction):
    prepared = prepare(DataConfig(test_fraction=test_fraction, **config))
    sources = "\n".join(p.source for p in prepared.validation)
    assert len(prepared.validation) == old_eval and hashlib.sha1(sources.encode()).hexdigest()[:16] == digest
    # the test split comes out of the old train split only; test_fraction=0 is the old split exactly
    assert len(prepared.train) + len(prepared.test) == old_train
    assert (len(prepared.test) == 0) == (test_fraction == 0)


def test_split_by_post_worked_by_hand():
    """10 posts × 10 pairs: validation 0.25 → 25 pairs → 3 whole posts (30); test 0.1 → 10 pairs → 1 post,
    taken from the posts after validation's; train keeps the other 6 posts."""
    pairs = [Pair("p", f" c{i}", " r", f"post{i % 10}", f"f:{i}") for i in range(100)]
    train, validation, test = split_by_post(pairs, 0.25, 0.1, seed=0)
    assert (len(train), len(validation), len(test)) == (60, 30, 10)
    assert (len(posts_of(train)), len(posts_of(validation)), len(posts_of(test))) == (6, 3, 1)
    assert not posts_of(train) & posts_of(validation) and not posts_of(test) & (posts_of(train) | posts_of(validation))
    assert split_by_post(pairs, 0.25, 0.0, seed=0)[1] == validation  # validation does not depend on test
    assert split_by_post(pairs, 0.0, 0.0, seed=0) == (pairs, [], [])
    assert [len(s) for s in split_by_post(pairs, 0.0, 0.1, seed=0)] == [90, 0, 10]


def test_split_always_leaves_a_post_for_training(caplog):
    pairs = [Pair("p", f" c{i}", " r", f"post{i % 3}", f"f:{i}") for i in range(30)]
    train, validation, test = split_by_post(pairs, 0.3, 0.6, seed=0)  # test would take 2 posts: 1 is left
    assert len(posts_of(train)) == 1 and len(posts_of(validation)) == 1 and len(posts_of(test)) == 1
    two = [Pair("p", " a", " b", f"post{i}", f"f:{i}") for i in range(2)]
    with caplog.at_level(logging.WARNING, logger="preftune"):
        train, validation, test = split_by_post(two, 0.1, 0.1, seed=0)
    assert (len(train), len(validation), test) == (1, 1, [])
    assert "too few posts (2) for a test split: test is empty" in caplog.text


@pytest.mark.parametrize("eval_fraction, test_fraction, message", [
    (0.6, 0.5, "--eval-fraction + --test-fraction must be < 1, got 0.6 + 0.5: no pair would be left to train on"),
    (0.1, 1.0, "--test-fraction must be in [0, 1), got 1.0"),
    (0.1, -0.1, "--test-fraction must be in [0, 1), got -0.1"),
    (1.0, 0.0, "--eval-fraction must be in [0, 1), got 1.0"),
])
def test_bad_split_fractions(eval_fraction, test_fraction, message):
    pairs = [Pair("p", f" c{i}", " r", f"post{i}", f"f:{i}") for i in range(10)]
    with pytest.raises(PreftuneError) as err:
        split_by_post(pairs, eval_fraction, test_fraction, 0)
    assert str(err.value) == message


def test_split_needs_two_posts():
    with pytest.raises(PreftuneError, match="1 distinct post"):
        split_by_post([Pair("p", " a", " b", "one", "f:1")], 0.5, 0.0, 0)


def test_prepared_eval_is_the_validation_split(shipped):
    assert shipped.eval is shipped.validation
    with pytest.raises(AttributeError):
        shipped.eval = []  # read-only: the alias cannot drift from validation
    stats = shipped.stats
    assert stats["eval"] == stats["validation"] and stats["validation"]["pairs"] == 155
    assert stats["test"]["pairs"] == len(shipped.test) and stats["train"]["posts"] == len(posts_of(shipped.train))


def test_length_baseline_matches_the_documented_rates():
    # PROVENANCE: the longer summary wins in 71% (batch13) and 56% (batch18) of raw rows
    from preftune.data.prepare import load_pairs, longer_wins

    pairs, _, _ = load_pairs(DataConfig())
    b13 = [p for p in pairs if p.meta["batch"] == "batch13"]
    b18 = [p for p in pairs if p.meta["batch"] == "batch18"]
    assert round(longer_wins(b13), 2) == 0.71 and round(longer_wins(b18), 2) == 0.56
    assert round(longer_wins(pairs), 2) == 0.65


def test_fraction_and_seed_are_deterministic(shipped):
    a = prepare(DataConfig(fraction=0.05, seed=1))
    b = prepare(DataConfig(fraction=0.05, seed=1))
    c = prepare(DataConfig(fraction=0.05, seed=2))
    assert len(a.train) + len(a.validation) + len(a.test) == round(0.05 * 1542) == 77
    assert (a.train, a.validation, a.test) == (b.train, b.validation, b.test)
    assert {p.source for p in a.train} != {p.source for p in c.train}


def test_take_fraction_keeps_order_and_at_least_one():
    pairs = [Pair("p", f" c{i}", " r", str(i), f"f:{i}") for i in range(10)]
    assert take_fraction(pairs, 0.01, 0) and len(take_fraction(pairs, 0.01, 0)) == 1
    picked = take_fraction(pairs, 0.5, 3)
    assert len(picked) == 5 and picked == sorted(picked, key=lambda p: int(p.post_id))


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


# ---- labeller confidence -------------------------------------------------------------------------


def test_confidence_is_kept_per_pair_and_counted_per_split(shipped):
    # PROVENANCE: the first row (post t3_4ne9lx) is choice 0 with confidence 3
    first = next(p for p in shipped.train + shipped.validation + shipped.test
                 if p.source == "tldr-sample/tldr_comparisons.jsonl.gz:1")
    assert first.meta["confidence_raw"] == 3 and first.meta["confidence"] == 2  # strength: |3 − 5|
    hand = Counter(row["extra"]["confidence"] for row in shipped_rows())
    assert set(hand) == {1, 2, 3, 4, 6, 7, 8, 9}  # 5 never occurs
    counts = Counter()
    for name in ("train", "validation", "test"):
        counts.update({int(value): n for value, n in shipped.stats[name]["by_confidence"].items()})
    assert sum(counts.values()) == 1542 and set(counts) == set(hand)  # kept pairs, every level present


def test_pairs_without_confidence():
    bare = comparison()
    bare.pop("extra", None)
    assert summarize_from_feedback(bare).meta["confidence"] is None
    rows = [comparison(post_id=f"p{i}", extra={"confidence": c}) for i, c in enumerate((None, 2))]
    assert [summarize_from_feedback(r).meta["confidence_raw"] for r in rows] == [None, 2]
    assert [summarize_from_feedback(r).meta["confidence"] for r in rows] == [None, 3]
    pairs = [Pair("p", " a", " b", f"p{i}", "f", meta={"confidence_raw": c}) for i, c in enumerate((2, None, 2, 7))]
    assert split_stats(pairs)["by_confidence"] == {"2": 2, "7": 1, "none": 1}
    assert confidence_counts(Counter({None: 3})) == {}  # such data, but no row says: no distribution
    assert split_stats([Pair("p", " a", " b", "x", "f")])["by_confidence"] == {}  # other formats


# ---- the prepared folder -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_prepared():
    return prepare(DataConfig(fraction=0.05))


def test_prepared_folder_is_reused_as_is(tmp_path, small_prepared):
    write_prepared(small_prepared, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.jsonl", "stats.json", "test.jsonl", "train.jsonl"]
    again = prepare(DataConfig(dataset=str(tmp_path)))
    assert (again.train, again.validation, again.test) == (small_prepared.train, small_prepared.validation,
                                                           small_prepared.test)
    assert again.train[0].meta["confidence"] in range(1, 10)  # meta survives the round trip


def test_prepared_folder_from_before_the_test_split(tmp_path, small_prepared, capsys):
    """An old folder: train.jsonl + eval.jsonl, stats without validation/test keys; loads with test = []."""
    write_prepared(small_prepared, tmp_path)
    (tmp_path / "test.jsonl").unlink()
    stats = json.loads((tmp_path / "stats.json").read_text())
    for key in ("validation", "test"):
        del stats[key]
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    capsys.readouterr()
    old = load_prepared(tmp_path)
    assert old.test == [] and old.validation == small_prepared.validation and old.eval == old.validation
    assert old.stats["validation"] == old.stats["eval"] and old.stats["test"]["pairs"] == 0
    out = capsys.readouterr().out
    assert f"data: {tmp_path} has no test.jsonl (prepared before the test split existed): test is empty" in out


def damage(folder, what):
    """Break a prepared folder one way; returns the message its loading must give."""
    train = folder / "train.jsonl"
    first = train.read_text().splitlines()[0]
    row = json.loads(first)
    if what == "no eval.jsonl":
        (folder / "eval.jsonl").unlink()
        return f"{folder}: incomplete prepared folder: no eval.jsonl (validation split); prepare the data again"
    if what == "no train.jsonl":
        train.unlink()
        return f"{folder}: incomplete prepared folder: no train.jsonl (train split)"
    if what == "empty train.jsonl":
        train.write_text("")
        return f"{train}: no training pairs: prepare the data again"
    if what == "eval.jsonl is a folder":
        (folder / "eval.jsonl").unlink()
        (folder / "eval.jsonl").mkdir()
        return f"{folder}: incomplete prepared folder: no eval.jsonl"
    if what == "stats.json malformed":
        (folder / "stats.json").write_text("{not json")
        return f"{folder / 'stats.json'}: cannot read the prepared folder's statistics (Expecting property name"
    if what == "stats.json a list":
        (folder / "stats.json").write_text("[1]")
        return f"{folder / 'stats.json'}: expected a JSON object, got list: prepare the data again"
    if what == "a post in two splits":
        with open(folder / "test.jsonl", "a") as fh:
            fh.write(first + "\n")
        return f"post '{row['post_id']}' is in both train and test: the splits must not share posts"
    bad = {"malformed line": "{oops", "not an object": "[1, 2]",
           "prompt not text": json.dumps({**row, "prompt": 5}),
           "no chosen": json.dumps({k: v for k, v in row.items() if k != "chosen"}),
           "bad body_span": json.dumps({**row, "body_span": [5, "x"]}),
           "unknown cut": json.dumps({**row, "cut": "middle"}),
           "duplicate key": first[:-1] + ', "prompt": "again"}'}[what]
    train.write_text(bad + "\n")
    return {"malformed line": f"{train}:1: malformed JSON line (Expecting property name",
            "not an object": f"{train}:1: expected a JSON object (a pair), got list",
            "prompt not text": f"{train}:1: field 'prompt': expected str, got int '5': the file is damaged; prepare",
            "no chosen": f"{train}:1: field 'chosen': missing (found: body_span, cut, meta, post_id, prompt, rejected",
            "bad body_span": f"{train}:1: field 'body_span': expected [start, end] character offsets, got list",
            "unknown cut": f"{train}:1: field 'cut': unknown trimming policy 'middle'; expected one of: end, start, turns",
            "duplicate key": f"{train}:1: field 'prompt': this key appears twice in the object: keep one; the file is"}[what]


@pytest.mark.parametrize("what", ["no eval.jsonl", "no train.jsonl", "empty train.jsonl", "eval.jsonl is a folder",
                                  "stats.json malformed", "stats.json a list", "a post in two splits",
                                  "malformed line", "not an object", "prompt not text", "no chosen", "bad body_span",
                                  "unknown cut", "duplicate key"])
def test_damaged_prepared_folder_is_one_clear_error(tmp_path, small_prepared, what):
    write_prepared(small_prepared, tmp_path)
    message = damage(tmp_path, what)
    with pytest.raises(DataError) as err:
        prepare(DataConfig(dataset=str(tmp_path)))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_read_jsonl_of_an_old_run_without_cut_and_turns(tmp_path):
    path = write_jsonl(tmp_path / "eval_pairs.jsonl", [{"prompt": "p", "chosen": " a", "rejected": " b", "post_id": 3,
                                                         "body_span": [0, 1]}])
    assert read_jsonl(path) == [Pair("p", " a", " b", "3", "", (0, 1), {}, "end", ())]


def test_pair_json_round_trip_keeps_the_trim_policy():
    pair = Pair("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:", " d", " e", "x", "f:1", (0, 26),
                {"k": 1}, "turns", (26,))
    assert Pair.from_json(json.loads(json.dumps(pair.to_json()))) == pair
    assert Prepared([pair], [], [], {}).splits() == {"train": [pair], "validation": [], "test": []}
