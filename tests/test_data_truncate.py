"""Truncation keeps the completions: TL;DR posts lose their end (the TL;DR: cue stays), plain prompts
their start, HH dialogues their oldest whole turns; completions are never cut, and every pair that
cannot fit is a counted skip."""

from conftest import SHARED_DATA, comparison, needs_shared, shipped_rows

from preftune.config import DataConfig
from preftune.data.adapters import (
    hh_rlhf,
    prompt_chosen_rejected,
    summarize_from_feedback,
)
from preftune.data.pairs import Pair, Tally
from preftune.data.prepare import load_pairs
from preftune.data.truncate import fit_pair, fit_pairs, pair_length

HH_BASE = SHARED_DATA / "anthropic_hh_rlhf_test" / "helpful-base" / "test.jsonl.gz"


def as_pair(f) -> Pair:
    return Pair(f.prompt, f.chosen, f.rejected, f.post_id, "test", f.body_span, f.meta, f.cut, f.turns)


# ---- TL;DR: the post's end is cut ------------------------------------------------------------------


def test_trimmed_pairs_fit_and_keep_completions(tiny_tokenizer):
    pairs = [as_pair(summarize_from_feedback(r)) for r in shipped_rows(40)]
    tally = Tally()
    fitted, trimmed = fit_pairs(tiny_tokenizer, pairs, 256, tally)
    assert trimmed > 10 and len(fitted) == len(pairs) and not tally.skipped
    for before, after in zip(pairs, fitted):
        assert pair_length(tiny_tokenizer, after) <= 256
        assert (after.chosen, after.rejected) == (before.chosen, before.rejected)
        assert after.prompt.endswith("\nTL;DR:") and after.prompt.startswith(before.prompt[: before.body_span[0]])
        start, end = after.body_span
        assert before.prompt[before.body_span[0]:].startswith(after.prompt[start:end])  # a prefix of the post
        if after is not before:  # trimmed: no more than needed (one more token would not fit)
            assert pair_length(tiny_tokenizer, after) >= 256 - 8


def test_short_pairs_are_untouched(tiny_tokenizer):
    pair = as_pair(summarize_from_feedback(comparison()))
    assert fit_pair(tiny_tokenizer, pair, 512) is pair


def test_pair_that_cannot_fit_is_counted_not_dropped_silently(tiny_tokenizer):
    long_summary = " word" * 300
    pair = as_pair(summarize_from_feedback(comparison(chosen=long_summary)))
    tally = Tally()
    fitted, trimmed = fit_pairs(tiny_tokenizer, [pair], 64, tally)
    assert fitted == [] and trimmed == 0
    assert tally.skipped == {"completion longer than max_length": 1}
    assert "skipped 1: completion longer than max_length (1)" in tally.summary()


# ---- plain prompts: the prompt's start is cut --------------------------------------------------------


def test_plain_prompt_keeps_its_end(tiny_tokenizer):
    prompt = " ".join(f"word{i}" for i in range(200)) + "\nQuestion: which word came last?"
    pair = as_pair(prompt_chosen_rejected({"prompt": prompt, "chosen": " word199", "rejected": " word0"}))
    full = pair_length(tiny_tokenizer, pair)
    fitted = fit_pair(tiny_tokenizer, pair, 64)
    assert full > 64 >= pair_length(tiny_tokenizer, fitted) >= 64 - 4  # no more cut than needed
    assert prompt.endswith(fitted.prompt) and fitted.prompt.endswith("\nQuestion: which word came last?")
    assert (fitted.chosen, fitted.rejected) == (pair.chosen, pair.rejected)


def test_plain_prompt_that_cannot_fit_is_a_counted_skip(tiny_tokenizer):
    pair = as_pair(prompt_chosen_rejected({"prompt": "Q?", "chosen": " yes" * 100, "rejected": " no"}))
    tally = Tally()
    assert fit_pairs(tiny_tokenizer, [pair], 32, tally) == ([], 0)
    assert tally.skipped == {"completion longer than max_length": 1}


# ---- dialogues: the oldest whole turns are dropped -----------------------------------------------------


def dialogue(turns: int, reply: str) -> str:
    text = "".join(f"\n\nHuman: Question {t}: " + "tell me more " * 10 + f"\n\nAssistant: Answer {t}." for t in range(turns))
    return text + "\n\nHuman: Last question?\n\nAssistant:" + reply


def test_hh_drops_oldest_turns_whole(tiny_tokenizer):
    pair = as_pair(hh_rlhf({"chosen": dialogue(3, " Yes."), "rejected": dialogue(3, " No.")}))
    assert len(pair.turns) == 3
    full = pair_length(tiny_tokenizer, pair)
    fitted = fit_pair(tiny_tokenizer, pair, full - 1)
    assert fitted.prompt == dialogue(3, "")[len("\n\nHuman: Question 0: " + "tell me more " * 10 + "\n\nAssistant: Answer 0."):]
    assert fitted.prompt.startswith("\n\nHuman: Question 1:") and fitted.chosen == " Yes."
    last = "\n\nHuman: Last question?\n\nAssistant:"
    shortest = pair_length(tiny_tokenizer, Pair(last, " Yes.", " No.", "x", "t"))
    assert fit_pair(tiny_tokenizer, pair, shortest).prompt == last
    tally = Tally()
    single = as_pair(hh_rlhf({"chosen": dialogue(0, " Yes." * 50), "rejected": dialogue(0, " No.")}))
    fitted, trimmed = fit_pairs(tiny_tokenizer, [pair, single], shortest - 1, tally)
    assert fitted == [] and trimmed == 0
    assert tally.skipped == {"too long for max_length with only the last turn": 1,
                             "too long for max_length, prompt not trimmable (one turn)": 1}


@needs_shared(HH_BASE)
def test_real_hh_pairs_fit_with_whole_turns(tiny_tokenizer):
    pairs = load_pairs(DataConfig(dataset=str(HH_BASE)))[0][:200]
    tally = Tally()
    fitted, trimmed = fit_pairs(tiny_tokenizer, pairs, 160, tally)
    assert trimmed > 20 and len(fitted) + sum(tally.skipped.values()) == len(pairs)
    by_source = {p.source: p for p in pairs}
    for after in fitted:
        before = by_source[after.source]
        assert pair_length(tiny_tokenizer, after) <= 160
        assert (after.chosen, after.rejected, after.post_id) == (before.chosen, before.rejected, before.post_id)
        assert before.prompt.endswith(after.prompt) and after.prompt.startswith("\n\nHuman:")  # whole turns
