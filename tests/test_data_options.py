"""The training-pair options --min-confidence and --length-balance (preftune.data.options, .balance):
exact per-band results on hand-built pairs, mirror bands, seeded determinism, the confidence filter's
counts and its error, train-only application before --max-pairs, and the statistics a run writes."""

import json
import logging

import pytest

from preftune.config import DataConfig, TrainConfig
from preftune.data.balance import balanced_indices, band_counts, side_counts
from preftune.data.options import NO_CONFIDENCE, select_train_pairs
from preftune.data.pairs import Pair
from preftune.errors import PreftuneError


class WordTokenizer:
    """Tokens = words: lengths that can be read off the test data."""

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [t.split() for t in texts]}


def pairs_with_deltas(deltas: list[int]) -> list[Pair]:
    """One pair per Δ: rejected 40 words, chosen 40 + Δ words; post_id p<i>."""
    return [Pair("P", " ".join(["w"] * (40 + d)), " ".join(["w"] * 40), f"p{i}", f"f:{i}") for i, d in enumerate(deltas)]


def cfg(**kw) -> DataConfig:
    return DataConfig(fraction=0.03, seed=3, **kw)


def test_balance_keeps_min_per_band_and_side_exactly():
    """Band 0 (|Δ| 1–9): 3 longer, 1 shorter → 1 + 1. Band 1 (10–19): 2 longer, 3 shorter → 2 + 2.
    Band 2: one longer, no mirror → 0. Band 3: two shorter, no mirror → 0. Δ = 0 (×2): kept.
    14 pairs → 8, removed 6, each for "length balance"."""
    deltas = [1, 2, 3, -5, 10, 15, -11, -12, -19, 25, -30, -31, 0, 0]
    pairs = pairs_with_deltas(deltas)
    kept, stats = select_train_pairs(pairs, cfg(length_balance=True), WordTokenizer())
    lb = stats["length_balance"]
    assert lb["bands_before"] == {"0-9": {"chosen_longer": 3, "chosen_shorter": 1},
                                  "10-19": {"chosen_longer": 2, "chosen_shorter": 3},
                                  "20-29": {"chosen_longer": 1, "chosen_shorter": 0},
                                  "30-39": {"chosen_longer": 0, "chosen_shorter": 2}}
    assert lb["bands_after"] == {"0-9": {"chosen_longer": 1, "chosen_shorter": 1},
                                 "10-19": {"chosen_longer": 2, "chosen_shorter": 2}}
    assert lb["before"] == {"chosen_longer": 6, "chosen_shorter": 6, "equal": 2}
    assert lb["after"] == {"chosen_longer": 3, "chosen_shorter": 3, "equal": 2}
    assert (stats["pairs_before"], stats["pairs_after"], len(kept)) == (14, 8, 8)
    assert stats["removed"]["skipped"] == {"length balance": 6} and stats["removed"]["kept"] == 8
    ids = [int(p.post_id[1:]) for p in kept]
    assert ids == sorted(ids)  # original order
    assert {3, 4, 5, 12, 13} <= set(ids)  # band 0's shorter, band 1's two longer, the equal pairs: all kept
    assert len({0, 1, 2} & set(ids)) == 1 and len({6, 7, 8} & set(ids)) == 2 and not {9, 10, 11} & set(ids)

def test_mirror_bands_are_by_absolute_difference():
    """+9 and −10 are in different bands (0 and 1): neither has a mirror, both go. +10 and −19 share
    band 1: both stay. +0 stays."""
    chosen, rejected = [29, 20, 30, 20, 20], [20, 30, 20, 39, 20]  # Δ = +9, −10, +10, −19, 0
    assert balanced_indices(chosen, rejected, seed=0) == [2, 3, 4]
    assert side_counts(chosen, rejected) == {"chosen_longer": 2, "chosen_shorter": 2, "equal": 1}
    assert band_counts(chosen, rejected) == {"0-9": {"chosen_longer": 1, "chosen_shorter": 0},
                                             "10-19": {"chosen_longer": 1, "chosen_shorter": 2}}


def test_balance_is_seeded():
    """Same seed, same pairs; the seed picks which of the larger side are kept."""
    chosen, rejected = [25] * 20 + [15] * 5, [20] * 25  # band 0: 20 longer, 5 shorter
    first = balanced_indices(chosen, rejected, seed=1)
    assert first == balanced_indices(chosen, rejected, seed=1) and len(first) == 10
    assert set(range(20, 25)) <= set(first)  # the whole smaller side
    assert any(balanced_indices(chosen, rejected, seed=s) != first for s in range(2, 6))


def test_balance_is_what_the_reward_model_uses():
    """One owner: the reward model's length_balanced is the data package's."""
    from preftune.data import balance
    from preftune.runs import rm

    assert rm.length_balanced is balance.length_balanced and rm.BALANCE_BIN == balance.BALANCE_BIN == 10


def conf_pair(i: int, raw: int | None) -> Pair:
    meta = {"confidence_raw": raw, "confidence": None if raw in (None, 5) else abs(raw - 5)}
    return Pair("P", " c", " r", f"p{i}", f"f:{i}", meta=meta)


def test_min_confidence_counts_each_reason():
    """Raw 1–9 → strength |raw − 5|: 1→4, 2→3, 4→1, 5→0, 6→1, 9→4, None. ≥ 3 keeps raw 1, 2, 9; removes
    three as below 3 and the one without a confidence, counted apart."""
    pairs = [conf_pair(i, raw) for i, raw in enumerate([1, 2, 4, 5, 6, 9, None])]
    kept, stats = select_train_pairs(pairs, cfg(min_confidence=3), None)
    assert [p.post_id for p in kept] == ["p0", "p1", "p5"]
    assert stats["min_confidence"] == {"threshold": 3, "before": 7, "after": 3}
    assert stats["removed"]["skipped"] == {"confidence below 3": 3, NO_CONFIDENCE: 1}
    assert stats["removed"]["examples"][NO_CONFIDENCE] == ["f:6"]
    assert stats["confidence_kept"] == {"3": 1, "4": 2}


def test_min_confidence_on_data_without_confidence_is_an_error():
    pairs = [Pair("P", " c", " r", "p0", "data.jsonl:1"), Pair("P", " c2", " r", "p1", "data.jsonl:2")]
    with pytest.raises(PreftuneError, match=r"--min-confidence 2: none of the 2 training pairs has a labeller "
                                            r"confidence \(e\.g\. data\.jsonl:1\)"):
        select_train_pairs(pairs, cfg(min_confidence=2), None)


def test_nothing_left_is_an_error_and_no_option_changes_nothing():
    with pytest.raises(PreftuneError, match="no training pairs left after the training-pair options"):
        select_train_pairs([conf_pair(0, 4)], cfg(min_confidence=2), None)
    pairs = [conf_pair(0, 4), conf_pair(1, None)]
    kept, stats = select_train_pairs(pairs, cfg(), None)  # no tokenizer needed when no option is set
    assert kept == pairs and stats["removed"]["skipped"] == {} and "length_balance" not in stats
    assert stats["confidence_kept"] == {"1": 1, "none": 1}


def test_confidence_filter_runs_before_balancing():
    """Balancing sees only the confident pairs: the unsure chosen-longer pair is gone before it could be
    the mirror of the chosen-shorter one."""
    pairs = [Pair("P", "a b c", "a", "p0", "f:0", meta={"confidence_raw": 5}),  # Δ +2, unsure
             Pair("P", "a", "a b c", "p1", "f:1", meta={"confidence_raw": 9}),  # Δ −2
             Pair("P", "a b", "a", "p2", "f:2", meta={"confidence_raw": 1})]  # Δ +1
    kept, stats = select_train_pairs(pairs, cfg(min_confidence=1, length_balance=True), WordTokenizer())
    assert [p.post_id for p in kept] == ["p1", "p2"]
    assert stats["removed"]["skipped"] == {"confidence below 1": 1}
    assert stats["length_balance"]["before_pairs"] == 2 and stats["length_balance"]["after_pairs"] == 2


def test_options_belong_to_train_not_to_data_prepare():
    from preftune.cli import build_parser

    parser = build_parser()
    for verb in (["train"], ["sweep"], ["rm", "train"]):
        ns = parser.parse_args([*verb, "--min-confidence", "2", "--length-balance"])
        assert ns.min_confidence == 2 and ns.length_balance is True
    for verb in (["data", "prepare", "--out", "x"], ["data", "inspect"]):  # they write/read every split
        with pytest.raises(PreftuneError, match="unrecognized arguments: --length-balance"):
            parser.parse_args([*verb, "--length-balance"])
    with pytest.raises(PreftuneError, match=r"--min-confidence must be in \[1, 4\], got 5"):
        DataConfig(min_confidence=5)


# ---- in a run --------------------------------------------------------------------------------------


def tiny_train_cfg(model, out, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), model=str(model), lr=1e-2, batch_size=4, epochs=1, max_length=512,
                max_pairs=4, max_eval_pairs=6, gradient_checkpointing=False, evaluate=False)
    return TrainConfig(**{**base, **kw})


def test_options_change_train_only_and_come_before_max_pairs(tiny_model, tmp_path):
    """Validation and test are exactly those of a run without the options; the train pool is filtered,
    and --max-pairs samples from it."""
    from preftune.runs.dpo import prepare_run_data

    plain = prepare_run_data(cfg(), tiny_train_cfg(tiny_model, tmp_path, max_pairs=None))
    data = prepare_run_data(cfg(min_confidence=3, length_balance=True), tiny_train_cfg(tiny_model, tmp_path))
    assert data.eval_pairs == plain.eval_pairs and data.test_pairs == plain.test_pairs
    assert data.fit["eval"] == plain.fit["eval"]
    options = data.stats["train_options"]
    assert options["pairs_before"] == plain.fit["train"]["total"] == plain.stats["train_options"]["pairs_after"]
    assert data.fit["train"]["total"] == 4 < options["pairs_after"] < options["pairs_before"]  # --max-pairs 4 of the pool
    assert set(options["confidence_kept"]) <= {"3", "4"}
    assert all(abs(p.meta["confidence_raw"] - 5) >= 3 for p in data.train_pairs)
    after = options["length_balance"]["after"]
    assert after["chosen_longer"] == after["chosen_shorter"]
    assert sum(options["removed"]["skipped"].values()) == options["pairs_before"] - options["pairs_after"]


def test_a_run_records_the_option_statistics(tiny_model, tmp_path, caplog):
    from preftune.runs.dpo import train
    from preftune.runs.folder import CONFIG_FILE

    with caplog.at_level(logging.INFO):
        run = train(cfg(min_confidence=2, length_balance=True), tiny_train_cfg(tiny_model, tmp_path))
    config = json.loads((run / CONFIG_FILE).read_text())
    assert config["data"]["min_confidence"] == 2 and config["data"]["length_balance"] is True
    options = config["data_stats"]["train_options"]
    assert options["min_confidence"]["threshold"] == 2 and options["length_balance"]["bin_tokens"] == 10
    assert options["removed"]["total"] == options["pairs_before"] and options["removed"]["kept"] == options["pairs_after"]
    assert options["pairs_after"] < options["pairs_before"]
    assert "--length-balance: kept" in caplog.text and "--min-confidence 2: kept" in caplog.text


def test_rm_train_balances_once(tiny_model, tmp_path, caplog):
    """`rm train --length-balance` with the default --debias balance: balanced once, before --max-pairs, in
    the RM tokenizer's tokens; its preftune_config.json records the counts."""
    from preftune.config import RewardConfig
    from preftune.runs.folder import CONFIG_FILE
    from preftune.runs.rm import train_reward_model

    rm_cfg = RewardConfig(output_dir=str(tmp_path), model=str(tiny_model), lr=1e-2, batch_size=4, max_length=512,
                          max_pairs=4, max_eval_pairs=4, logging_steps=1)
    with caplog.at_level(logging.INFO):
        folder = train_reward_model(cfg(length_balance=True), rm_cfg)
    config = json.loads((folder / CONFIG_FILE).read_text())
    options = config["train_options"]
    assert config["debias"] == "balance" and config["train_pairs"] == 4 < options["pairs_after"]
    assert options["length_balance"]["after"]["chosen_longer"] == options["length_balance"]["after"]["chosen_shorter"]
    assert "were length-balanced by --length-balance; not again" in caplog.text
    assert "rm train: length-balanced: kept" not in caplog.text
