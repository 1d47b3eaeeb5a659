"""The summarize_from_feedback adapter on real rows (shipped sample, CNN/DM and edit files)."""

import json

import pytest
from conftest import SFF, comparison, needs_shared, shipped_rows

from preftune.data.adapters import RowError, RowSkip, detect_format, summarize_from_feedback


def test_first_shipped_row_matches_the_documented_spot_check():
    # PROVENANCE.md: batch13 line 1, post t3_4ne9lx, choice 0 → summary 0 (sup4_ppo_rm4_t.7) is preferred
    row = shipped_rows(1)[0]
    pair = summarize_from_feedback(row)
    assert pair.post_id == "t3_4ne9lx"
    assert pair.prompt.startswith("SUBREDDIT: r/relationships\nTITLE: Unsure if new relationship will work out")
    assert pair.prompt.endswith("\nTL;DR:")
    assert pair.chosen.startswith(" Started dating this girl 3 weeks ago")
    assert pair.rejected.startswith(" Dating a girl, she says she loves me")
    assert pair.meta["chosen_policy"] == "sup4_ppo_rm4_t.7"
    start, end = pair.body_span
    assert pair.prompt[start:end] == row["info"]["post"]


def test_choice_one_picks_the_second_summary():
    pair = summarize_from_feedback(comparison(chosen=" good", rejected=" bad", choice=1))
    assert (pair.chosen, pair.rejected) == (" good", " bad")


def test_prompt_template_is_exact():
    pair = summarize_from_feedback(comparison(post="Body text."))
    assert pair.prompt == "SUBREDDIT: r/test\nTITLE: A title\nPOST: Body text.\nTL;DR:"


CNNDM_ROW = {
    "info": {"id": "abc", "site": "dailymail", "title": "Headline", "article": "The article body."},
    "summaries": [{"text": " First.", "policy": "ref"}, {"text": " Second.", "policy": "sup4_6b_t0.7"}],
    "choice": 1, "worker": "w", "batch": "batch0_cnndm", "split": "valid2",
}


def test_cnndm_row_gets_an_article_prompt():
    pair = summarize_from_feedback(CNNDM_ROW)
    assert pair.prompt == "SITE: dailymail\nTITLE: Headline\nARTICLE: The article body.\nTL;DR:"
    assert (pair.chosen, pair.rejected, pair.post_id) == (" Second.", " First.", "abc")


@needs_shared(SFF)
def test_real_cnndm_rows_adapt():
    rows = [json.loads(line) for line in (SFF / "batch0_cnndm.json").open()]
    adapted = skipped = 0
    for row in rows:
        try:
            pair = summarize_from_feedback(row)
        except RowSkip as s:
            assert s.reason == "empty summary"  # the only skip in these files: 12 rows with an empty summary
            skipped += 1
            continue
        assert pair.prompt.startswith("SITE: ") and "\nARTICLE: " in pair.prompt
        assert pair.chosen == row["summaries"][row["choice"]]["text"]
        adapted += 1
    assert (adapted, skipped) == (425, 12)


@needs_shared(SFF)
def test_real_edit_rows_without_id_and_with_r_prefix():
    rows = [json.loads(line) for line in (SFF / "edit_b2_eval_test.json").open()]
    pairs = [summarize_from_feedback(r) for r in rows]
    assert all(p.prompt.startswith("SUBREDDIT: r/") and not p.prompt.startswith("SUBREDDIT: r/r/") for p in pairs)
    assert all(p.post_id.startswith("sha1:") for p in pairs)  # no info.id: grouped by the post's text
    assert len({p.post_id for p in pairs}) == 5


@pytest.mark.parametrize("mutate, field, message", [
    (lambda r: r.pop("choice"), "choice", "missing"),
    (lambda r: r.update(choice=2), "choice", "must be 0 or 1, got 2"),
    (lambda r: r.update(choice="0"), "choice", "expected int, got str"),
    (lambda r: r.update(choice=True), "choice", "expected int, got bool"),
    (lambda r: r["summaries"].pop(), "summaries", "expected 2 summaries, got 1"),
    (lambda r: r["summaries"][1].pop("text"), "summaries[1].text", "missing"),
    (lambda r: r["info"].pop("post"), "info", "needs 'post' (TL;DR) or 'article'"),
])
def test_bad_rows_name_the_field(mutate, field, message):
    row = comparison()
    mutate(row)
    with pytest.raises(RowError) as err:
        summarize_from_feedback(row)
    assert err.value.field == field and message in err.value.message


def test_empty_summary_and_identical_pair_are_skips():
    with pytest.raises(RowSkip, match="empty summary"):
        summarize_from_feedback(comparison(rejected="  "))
    with pytest.raises(RowSkip, match="identical pair"):
        summarize_from_feedback(comparison(chosen=" same", rejected=" same"))


def test_format_detection():
    assert detect_format(comparison(), "x").name == "summarize_from_feedback"
    from preftune.errors import PreftuneError

    with pytest.raises(PreftuneError, match=r"x: cannot detect the data format from the columns \(a, b\)"):
        detect_format({"a": 1, "b": 2}, "x")
