"""Truncation trims the post, never the summary, and keeps the TL;DR: cue."""

from conftest import comparison, shipped_rows

from preftune.data.adapters import summarize_from_feedback
from preftune.data.prepare import Pair, Tally
from preftune.data.truncate import fit_pair, fit_pairs, pair_length


def as_pair(row) -> Pair:
    f = summarize_from_feedback(row)
    return Pair(f.prompt, f.chosen, f.rejected, f.post_id, "test", f.body_span, f.meta)


def test_trimmed_pairs_fit_and_keep_completions(tiny_tokenizer):
    pairs = [as_pair(r) for r in shipped_rows(40)]
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
    pair = as_pair(comparison())
    assert fit_pair(tiny_tokenizer, pair, 512) is pair


def test_pair_that_cannot_fit_is_counted_not_dropped_silently(tiny_tokenizer):
    long_summary = " word" * 300
    pair = as_pair(comparison(chosen=long_summary))
    tally = Tally()
    fitted, trimmed = fit_pairs(tiny_tokenizer, [pair], 64, tally)
    assert fitted == [] and trimmed == 0
    assert tally.skipped == {"completion longer than max_length": 1}
    assert "skipped 1: completion longer than max_length (1)" in tally.summary()
