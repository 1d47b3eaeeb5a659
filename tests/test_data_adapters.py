"""The adapters and the sources: real rows from ../shared/data (the shipped TL;DR sample, HH-RLHF, the
CarperAI TL;DR comparison sample, OpenAI's comparison files with TL;DR, CNN/DM and edit rows) and small
files written here (CSV, Parquet, JSON arrays, folders). Message-list formats rendered with a chat
template are in test_data_chat.py; bad input of every kind in test_data_errors.py."""

import csv
import gzip
import json
import zipfile

import pytest
from conftest import (
    SFF,
    SHARED_DATA,
    comparison,
    needs_shared,
    shipped_rows,
    write_jsonl,
)

from preftune.config import DataConfig
from preftune.data.adapters import (
    detect_format,
    hh_rlhf,
    prompt_chosen_rejected,
    summarize_from_feedback,
    ultrafeedback,
)
from preftune.data.columns import apply_column_map, parse_column_map
from preftune.data.prepare import Reading, iter_pairs, load_pairs, prepare
from preftune.data.rows import ChatFields, RowError, RowSkip, text_id
from preftune.errors import PreftuneError

HH = SHARED_DATA / "anthropic_hh_rlhf_test"
CARPER = SHARED_DATA / "openai_summarize_comparisons_carperai_mini"


def pairs_of(src, **cfg):
    reading = Reading()
    pairs = list(iter_pairs(DataConfig(dataset=str(src), **cfg), reading))
    return pairs, reading


# ---- detection -----------------------------------------------------------------------------------


@pytest.mark.parametrize("row, name", [
    (comparison(), "summarize_from_feedback"),
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, "prompt_chosen_rejected"),
    ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}, "hh_rlhf"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}],
      "rejected": [{"role": "assistant", "content": "b"}]}, "conversational"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "q"}], "rejected": []}, "ultrafeedback"),
    ({"chosen": [{"role": "user", "content": "q"}], "rejected": []}, "ultrafeedback"),
    # a format's columns with a wrong type go to that format: its field check names the row and field
    ({"prompt": "p", "chosen": 5, "rejected": "b"}, "prompt_chosen_rejected"),
    ({"prompt": None, "chosen": None, "rejected": "b"}, "prompt_chosen_rejected"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}, "conversational"),
    ({"chosen": [{"role": "user", "content": "q"}], "rejected": "b"}, "ultrafeedback"),
])
def test_detection_from_columns(row, name):
    assert detect_format(row, "x").name == name


@pytest.mark.parametrize("row, message", [
    ({"question": "q", "chosen": "a", "rejected": "b"},
     "x: cannot detect the data format from the columns (chosen, question, rejected): no prompt column; pass "
     "--column-map prompt=question (HH-RLHF rows would hold whole"),
    ({"chosen": "plain text", "rejected": "more text"}, "no prompt column; pass --column-map prompt=COLUMN"),
    ({"Prompt": "q", "Chosen": "a", "Rejected": "b"},
     "no prompt, chosen, rejected columns; pass --column-map prompt=Prompt,chosen=Chosen,rejected=Rejected"),
    ({"question": "q", "good": "a", "bad": "b"},
     "(bad, good, question): no prompt, chosen, rejected columns; pass --column-map prompt=COLUMN,chosen=COLUMN,"),
    ({"prompt": "q", "good": "a", "rejected": "b"}, "no chosen column; pass --column-map chosen=good"),
    ({"info": {}, "summaries": [], "worker": "w", "batch": "b"}, "no choice column; pass --column-map choice=COLUMN"),
    ({"data": [{"prompt": "q", "chosen": "a", "rejected": "b"}]},
     "or are the rows the list under 'data'? save that list as the rows"),
    ({"c" * 300: "x"}, "(" + "c" * 39 + "…): no prompt, chosen, rejected columns"),  # long names are cut
])
def test_detection_names_what_is_missing(row, message):
    with pytest.raises(PreftuneError) as err:
        detect_format(row, "x")
    assert message in str(err.value) and str(err.value).endswith("; formats: `preftune data formats`")


# ---- summarize_from_feedback (OpenAI comparisons) ------------------------------------------------


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
    (lambda r: r["info"].update(title=7), "info.title", "expected str (or null), got int '7'"),
    (lambda r: r["info"].update(subreddit=["a"]), "info.subreddit", "expected str (or null), got list"),
    (lambda r: r["info"].update(id={"x": 1}), "info.id", "expected str or int, got dict"),
    (lambda r: r["info"].update(post=b"bytes"), "info.post", "expected str, got bytes b'bytes'"),
    (lambda r: r["summaries"].__setitem__(0, "text"), "summaries[0]", "expected an object, got str 'text'"),
    (lambda r: r.update(info="a post"), "info", "expected dict, got str 'a post'"),
    (lambda r: r.update(extra=[3]), "extra", "expected an object {confidence}, got list"),
    (lambda r: r.update(extra={"confidence": "3"}), "extra.confidence", "expected an integer 1-9 (or null), got str"),
    (lambda r: r.update(extra={"confidence": 3.5}), "extra.confidence", "got float '3.5'"),
    (lambda r: r.update(extra={"confidence": 0}), "extra.confidence", "expected an integer 1-9 (or null), got int"),
    (lambda r: r.update(extra={"confidence": 10}), "extra.confidence", "got int '10'"),
    (lambda r: r.update(extra={"confidence": True}), "extra.confidence", "got bool"),
])
def test_bad_summarize_rows_name_the_field(mutate, field, message):
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


@pytest.mark.parametrize("choice, confidence, kept", [
    (0, 1, 1), (0, 4, 4), (1, 6, 6), (1, 9.0, 9), (0, None, None), (1, 5, 5),  # 9.0: Arrow's ints with nulls
    (0, 7, "skip"), (1, 2, "skip"),  # 1-4 mean summary 0, 6-9 summary 1: a contradiction teaches noise
])
def test_labeller_confidence(choice, confidence, kept):
    row = comparison(choice=choice, extra={"confidence": confidence})
    if kept == "skip":
        with pytest.raises(RowSkip, match="confidence contradicts choice"):
            summarize_from_feedback(row)
    else:
        assert summarize_from_feedback(row).meta["confidence_raw"] == kept


# ---- Anthropic HH-RLHF ---------------------------------------------------------------------------


def test_hh_prompt_is_the_shared_dialogue_up_to_the_last_assistant_turn():
    shared = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit.\n\nAssistant:"
    pair = hh_rlhf({"chosen": shared + " An apple.", "rejected": shared + " A car."})
    assert (pair.prompt, pair.chosen, pair.rejected) == (shared, " An apple.", " A car.")
    # the oldest turn may be dropped to fit max_length: prompt[body_span[0]:turns[0]] is the first exchange
    assert pair.cut == "turns" and pair.prompt[pair.body_span[0]:pair.turns[0]] == "\n\nHuman: Hi\n\nAssistant: Hello!"
    assert pair.post_id == text_id(shared)


def test_hh_replies_that_share_a_start_keep_it_in_the_completion():
    shared = "\n\nHuman: Count.\n\nAssistant:"
    pair = hh_rlhf({"chosen": shared + " One, two.", "rejected": shared + " One, three."})
    assert (pair.chosen, pair.rejected) == (" One, two.", " One, three.")


@needs_shared(HH)
def test_hh_rlhf_real_test_files():
    # PROVENANCE.md: 2,312 + 2,354 + 1,137 + 2,749 = 8,552 rows; 0 + 2 + 2 + 32 identical pairs
    pairs, reading = pairs_of(HH)  # the folder: four subset folders, read recursively
    assert reading.format == "hh_rlhf" and reading.tally.total == 8552
    assert reading.tally.skipped["identical pair"] == 36
    assert set(reading.tally.skipped) <= {"identical pair", "empty chosen", "empty rejected"}
    assert len(pairs) == 8552 - sum(reading.tally.skipped.values())
    raw = {}
    for sub in ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled"):
        with gzip.open(HH / sub / "test.jsonl.gz", "rt", encoding="utf-8") as fh:
            for i, line in enumerate(fh, 1):
                raw[f"{HH / sub / 'test.jsonl.gz'}:{i}"] = json.loads(line)
    for p in pairs:
        row = raw[p.source]
        assert p.prompt + p.chosen == row["chosen"] and p.prompt + p.rejected == row["rejected"]
        assert p.prompt.startswith("\n\nHuman:") and p.prompt.endswith("\n\nAssistant:")
        assert p.chosen != p.rejected and p.chosen.strip() and p.rejected.strip()


# ---- prompt / chosen / rejected text: the CarperAI TL;DR comparison sample -------------------------


def test_text_triple_row():
    pair = prompt_chosen_rejected({"prompt": "Q?", "chosen": " yes", "rejected": " no", "post_id": 7})
    assert (pair.prompt, pair.chosen, pair.rejected, pair.post_id) == ("Q?", " yes", " no", "7")
    assert pair.cut == "start" and pair.body_span == (0, 2)  # plain prompts are trimmed from the start
    assert prompt_chosen_rejected({"prompt": "Q?", "chosen": "a", "rejected": "b"}).post_id == text_id("Q?")


@needs_shared(CARPER)
def test_carperai_jsonl_groups_pairs_by_prompt():
    pairs, reading = pairs_of(CARPER / "valid1.jsonl")
    assert reading.format == "prompt_chosen_rejected" and len(pairs) == 50
    assert len({p.post_id for p in pairs}) == 10  # PROVENANCE: 10 distinct prompts in valid1
    first = json.loads((CARPER / "valid1.jsonl").open().readline())
    assert pairs[0].prompt == first["prompt"] and pairs[0].chosen == first["chosen"]
    assert pairs[0].prompt.startswith("SUBREDDIT: r/relationships\nTITLE: How do I/do I at all [20 F] tell my")
    assert pairs[0].chosen.startswith("TL;DR: I'm bisexual")
    prepared = prepare(DataConfig(dataset=str(CARPER / "valid1.jsonl"), eval_fraction=0.3))
    assert not {p.prompt for p in prepared.train} & {p.prompt for p in prepared.eval}


@needs_shared(CARPER)
def test_carperai_saved_datasets_folder(tmp_path):
    """The original zip is a DatasetDict.save_to_disk tree: every split, chosen by --split."""
    with zipfile.ZipFile(CARPER / "openai_summarize_comparisons.zip") as z:
        z.extractall(tmp_path)
    folder = tmp_path / "openai_summarize_comparisons"
    counts = {}
    for split, prompts in {"train": 5, "valid1": 10, "valid2": 9, "test": 9}.items():
        pairs, reading = pairs_of(folder, split=split)
        counts[split] = (len(pairs), len({p.prompt for p in pairs}))
        assert counts[split] == (50, prompts)  # PROVENANCE: 50 rows per split, distinct prompts
        assert all(p.chosen.startswith("TL;DR: ") for p in pairs)
        assert pairs[0].source == f"{folder}[{split}]:1"
    with open(CARPER / "valid1.jsonl") as fh:
        assert [json.loads(line)["chosen"] for line in fh] == [p.chosen for p in pairs_of(folder, split="valid1")[0]]
    single, _ = pairs_of(folder / "test")  # one split's own folder (Dataset.save_to_disk)
    assert len(single) == 50 and single[0].source == f"{folder / 'test'}[row]:1"


# ---- OpenAI comparison files: the folder -----------------------------------------------------------


@needs_shared(SFF)
def test_openai_comparison_folder_mixes_tldr_and_cnndm_rows():
    pairs, tally, fmt = load_pairs(DataConfig(dataset=str(SFF)))
    # PROVENANCE: 1,097 + 674 + 437 + 437 + 5 rows; batch0_cnndm and cnndm0 each have 12 empty summaries
    assert fmt == "summarize_from_feedback" and tally.total == 2650
    assert dict(tally.skipped) == {"empty summary": 24}
    assert sum(p.prompt.startswith("SITE: ") for p in pairs) == 2 * 425
    assert sum(p.prompt.startswith("SUBREDDIT: ") for p in pairs) == 1097 + 674 + 5


# ---- UltraFeedback-style rows (the row function; rendering in test_data_chat.py) ------------------


def uf_row(**extra):
    row = {"prompt": "Name a colour.", "prompt_id": "abc",
           "chosen": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
           "rejected": [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Seven."}],
           "score_chosen": 9.0, "score_rejected": 2.0}
    row.update(extra)
    return row


def test_ultrafeedback_row_splits_the_shared_turns_off_as_the_prompt():
    chat = ultrafeedback(uf_row())
    assert isinstance(chat, ChatFields)
    assert chat.prompt == [{"role": "user", "content": "Name a colour."}]
    assert chat.chosen == [{"role": "assistant", "content": "Blue."}]
    assert chat.rejected == [{"role": "assistant", "content": "Seven."}]
    assert chat.post_id == "abc" and chat.meta == {"score_chosen": 9.0, "score_rejected": 2.0}
    # without prompt/prompt_id/scores (TRL's implicit-prompt conversational format)
    bare = ultrafeedback({"chosen": uf_row()["chosen"], "rejected": uf_row()["rejected"]})
    assert bare.prompt == chat.prompt and bare.meta == {} and bare.post_id.startswith("sha1:")


def test_ultrafeedback_tied_scores_are_a_counted_skip():
    with pytest.raises(RowSkip, match="tied scores"):
        ultrafeedback(uf_row(score_rejected=9.0))


# ---- CSV, Parquet, JSON arrays, folders, --column-map ---------------------------------------------


TRIPLES = [{"prompt": f"Post {i}, with a comma,\nand a second line.\nTL;DR:", "chosen": f" short {i}",
            "rejected": f" a \"quoted\" one {i}"} for i in range(6)]


def write_csv(path, rows, columns=("prompt", "chosen", "rejected"), opener=open):
    with opener(path, "wt", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("name, opener", [("t.csv", open), ("t.csv.gz", gzip.open)])
def test_csv_with_embedded_newlines_and_quotes(tmp_path, name, opener):
    pairs, reading = pairs_of(write_csv(tmp_path / name, TRIPLES, opener=opener))
    assert reading.format == "prompt_chosen_rejected"
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [tuple(r.values()) for r in TRIPLES]
    # each record spans 3 lines (two embedded newlines): row i starts on line 2 + 3i
    assert [p.source.rsplit(":", 1)[1] for p in pairs] == [str(2 + 3 * i) for i in range(6)]


def test_parquet_text_triples(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(TRIPLES), path, row_group_size=4)  # two row groups
    pairs, _ = pairs_of(path)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [tuple(r.values()) for r in TRIPLES]
    assert pairs[5].source == f"{path}[row]:6"


def test_json_array_file(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(TRIPLES, indent=2))
    pairs, _ = pairs_of(path)
    assert [p.chosen for p in pairs] == [r["chosen"] for r in TRIPLES]


def test_folder_of_mixed_file_types_in_one_format(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", TRIPLES[:2])
    write_csv(tmp_path / "b.csv", TRIPLES[2:4])
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "sub" / "c.jsonl", TRIPLES[4:])
    (tmp_path / "notes.txt").write_text("not data")
    pairs, _ = pairs_of(tmp_path)
    assert [p.chosen for p in pairs] == [r["chosen"] for r in TRIPLES]  # files in path order


def test_column_map_renames_custom_columns(tmp_path):
    rows = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"], "grp": f"g{i // 2}"}
            for i, r in enumerate(TRIPLES)]
    src = write_csv(tmp_path / "c.csv", rows, columns=("question", "good", "bad", "grp"))
    pairs, reading = pairs_of(src, column_map="prompt=question, chosen=good,rejected=bad,post_id=grp")
    assert reading.format == "prompt_chosen_rejected"
    assert [(p.chosen, p.post_id) for p in pairs] == [(r["good"], r["grp"]) for r in rows]


def test_column_map_helpers():
    mapping = parse_column_map("chosen=good,rejected=bad")
    assert mapping == {"chosen": "good", "rejected": "bad"}
    row = apply_column_map({"prompt": "p", "good": "a", "bad": "b", "chosen": "old"}, mapping)
    assert row == {"prompt": "p", "chosen": "a", "rejected": "b"}
    with pytest.raises(RowError, match=r"missing column \(found: good, prompt\); --column-map rejected=bad"):
        apply_column_map({"prompt": "p", "good": "a"}, mapping)


def test_every_declared_adapter_is_registered_in_detection_order():
    """config/registries.py FORMATS names the formats (and --format's choices); an adapter declared in
    data/adapters.py but missing there would never be detected or chosen."""
    from preftune.config.registries import FORMATS
    from preftune.data.adapters import _DECLARED, ADAPTERS

    assert set(_DECLARED) == set(FORMATS) and tuple(ADAPTERS) == FORMATS
    assert all(name == adapter.name for name, adapter in ADAPTERS.items())
    assert FORMATS.index("preftune_pairs") < FORMATS.index("prompt_chosen_rejected")  # a superset detects first
