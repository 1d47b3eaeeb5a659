"""Bad input, every format and source: one line naming the file, the line/row and the field (exit code 2),
or a documented skip that is counted and shown in the summary. (More cases: test_cli_errors.py,
test_adapters.py, test_data_chat.py.)"""

import csv
import gzip
import json
import shutil

import pytest
from conftest import write_jsonl

from preftune.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def prepare(capsys, src, tmp_path, *extra):
    return run(capsys, "data", "prepare", "--dataset", src, "--out", tmp_path / "out", *extra)


def fails(capsys, src, tmp_path, message, *extra):
    """Assert `data prepare` stops with exactly one line holding `message`, and no traceback."""
    code, _, err = prepare(capsys, src, tmp_path, *extra)
    assert code == 2, err
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def skips(capsys, src, tmp_path, summary, example, *extra):
    """Assert `data prepare` succeeds and reports the skip: the summary and an example file:line."""
    code, out, err = prepare(capsys, src, tmp_path, "--eval-fraction", "0", *extra)
    assert code == 0, err
    assert summary in out and example in out, out


def msg(role, content):
    return {"role": role, "content": content}


def triple(i: int, **over) -> dict:
    return {"prompt": f"Question {i}?", "chosen": f" good {i}", "rejected": f" bad {i}", **over}


def hh(i: int, chosen=" Yes.", rejected=" No.") -> dict:
    head = f"\n\nHuman: Question {i}?\n\nAssistant:"
    return {"chosen": head + chosen, "rejected": head + rejected}


def conv(i: int) -> dict:
    return {"prompt": [msg("user", f"Question {i}?")], "chosen": [msg("assistant", f"Yes {i}.")],
            "rejected": [msg("assistant", f"No {i}.")]}


def uf(i: int, **over) -> dict:
    user = msg("user", f"Question {i}?")
    return {"prompt": f"Question {i}?", "chosen": [user, msg("assistant", "Yes.")],
            "rejected": [user, msg("assistant", "No.")], "score_chosen": 9.0, "score_rejected": 2.0, **over}


@pytest.fixture(scope="module")
def chat_model(tiny_model, tmp_path_factory):
    """The tiny model with a ChatML-like chat template (enough to render message lists)."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-chat-plain")
    shutil.copytree(tiny_model, folder, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}{{ eos_token }}\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok.save_pretrained(folder)
    return folder


# ---- JSON files ------------------------------------------------------------------------------------


def test_malformed_json_array(capsys, tmp_path):
    src = tmp_path / "a.json"
    src.write_text('[\n  {"prompt": "p", "chosen": "a", "rejected": "b"},\n  {"prompt": \n')
    fails(capsys, src, tmp_path, f"{src}:4: malformed JSON (Expecting value at column 1)")


def test_json_line_that_is_not_an_object(capsys, tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps(triple(0)) + "\n" + "[1, 2]\n")
    fails(capsys, src, tmp_path, f"{src}:2: expected a JSON object, got list")


def test_file_of_blank_lines(capsys, tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text("\n \n\n")
    fails(capsys, src, tmp_path, f"{src}: no rows: its 3 line(s) are blank")


def test_empty_json_array(capsys, tmp_path):
    src = tmp_path / "a.json"
    src.write_text("[]")
    fails(capsys, src, tmp_path, f"{src}: no rows: the JSON array is empty")


# ---- prompt / chosen / rejected text -----------------------------------------------------------------


def test_missing_columns_name_found_and_expected(capsys, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "chosen": "a"}])
    fails(capsys, src, tmp_path, f"{src}:1: field 'rejected': missing column rejected "
          "(found: chosen, prompt; expected: prompt, chosen, rejected)", "--format", "prompt_chosen_rejected")


def test_hh_missing_columns(capsys, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    fails(capsys, src, tmp_path, f"{src}:1: field 'chosen': missing columns chosen, rejected "
          "(found: text; expected: chosen, rejected)", "--format", "hh_rlhf")


def test_wrong_column_type(capsys, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [triple(0), triple(1), triple(2, chosen=5)])
    fails(capsys, src, tmp_path, f"{src}:3: field 'chosen': expected str, got int '5'")


def test_message_list_where_text_is_expected_gives_a_hint(capsys, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [triple(0, chosen=[msg("assistant", "a")])])
    fails(capsys, src, tmp_path, f"{src}:1: field 'chosen': expected str, got list",
          "--format", "prompt_chosen_rejected")
    _, _, err = prepare(capsys, src, tmp_path, "--format", "prompt_chosen_rejected")
    assert "(a message list: use --format conversational or ultrafeedback)" in err


def test_text_where_messages_are_expected(capsys, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [triple(0)])
    fails(capsys, src, tmp_path, f"{src}:1: field 'prompt': expected a list of messages {{role, content}}, got str",
          "--format", "conversational")


def test_group_id_of_wrong_type(capsys, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [triple(0, prompt_id={"x": 1})])
    fails(capsys, src, tmp_path, f"{src}:1: field 'prompt_id': expected str or int, got dict")


@pytest.mark.parametrize("bad, reason, field", [
    ({"prompt": ""}, "empty prompt", "prompt"),
    ({"chosen": "   "}, "empty chosen", "chosen"),
    ({"rejected": "\n"}, "empty rejected", "rejected"),
    ({"chosen": " same", "rejected": " same"}, "identical pair", "chosen"),
])
def test_empty_fields_and_ties_are_counted_skips(capsys, tmp_path, bad, reason, field):
    src = write_jsonl(tmp_path / "a.jsonl", [triple(0), triple(1, **bad), triple(2), triple(3)])
    skips(capsys, src, tmp_path, f"kept 3 / 4; skipped 1: {reason} (1)", f"{reason}: e.g. {src}:2 {field}")


# ---- HH-RLHF ------------------------------------------------------------------------------------------


def test_hh_row_without_an_assistant_turn(capsys, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [hh(0), {"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hello"}])
    fails(capsys, src, tmp_path, f"{src}:2: field 'chosen': no '\\n\\nAssistant:' turn in '\\n\\nHuman: hi': "
          "not an HH-RLHF dialogue")


def test_hh_dialogues_that_share_no_prompt(capsys, tmp_path):
    a, b = hh(0), hh(1)
    src = write_jsonl(tmp_path / "a.jsonl", [{"chosen": a["chosen"], "rejected": b["rejected"]}])
    fails(capsys, src, tmp_path, f"{src}:1: field 'rejected': chosen and rejected share no dialogue up to an "
          "'\\n\\nAssistant:' turn")


def test_hh_identical_and_empty_replies_are_counted_skips(capsys, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [hh(0), hh(1, " Same.", " Same."), hh(2, " Yes.", " "), hh(3), hh(4)])
    skips(capsys, src, tmp_path, "kept 3 / 5; skipped 2: identical pair (1), empty rejected (1)",
          f"empty rejected: e.g. {src}:3 rejected")


# ---- message lists ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mutate, field, message", [
    (lambda r: r["chosen"].__setitem__(0, "Yes"), "chosen[0]", "expected a message {role, content}, got str"),
    (lambda r: r["prompt"][0].pop("role"), "prompt[0].role", "missing (found: content)"),
    (lambda r: r["prompt"][0].update(role="human"), "prompt[0].role",
     "unknown role 'human'; expected one of: system, user, assistant, tool"),
    (lambda r: r["rejected"][0].update(content=None), "rejected[0].content", "expected str, got NoneType"),
    (lambda r: r["chosen"][0].update(role="user"), "chosen[0].role",
     "a reply must start with an assistant message, got 'user'"),
    (lambda r: r["prompt"].append(msg("assistant", "Hm.")), "prompt[1].role",
     "the prompt must end before the reply, not with an assistant message"),
])
def test_bad_messages_name_the_message(capsys, tmp_path, chat_model, mutate, field, message):
    bad = conv(1)
    mutate(bad)
    src = write_jsonl(tmp_path / "a.jsonl", [conv(0), bad])
    fails(capsys, src, tmp_path, f"{src}:2: field '{field}': {message}", "--model", chat_model)


def test_conversation_with_empty_reply_is_a_counted_skip(capsys, tmp_path, chat_model):
    empty = conv(1)
    empty["rejected"] = []
    src = write_jsonl(tmp_path / "a.jsonl", [conv(0), empty, conv(2)])
    skips(capsys, src, tmp_path, "kept 2 / 3; skipped 1: empty rejected (1)", f"{src}:2 rejected",
          "--model", chat_model)


@pytest.mark.parametrize("over, field, message", [
    ({"rejected": [msg("user", "Other?"), msg("assistant", "No.")]}, "chosen",
     "chosen and rejected share no first turn: cannot find the prompt"),
    ({"prompt": "Something else"}, "prompt", "'Something else' is not the conversation's last user turn"),
    ({"score_chosen": 2.0, "score_rejected": 9.0}, "score_chosen",
     "2.0 is below score_rejected 9.0: are chosen and rejected swapped?"),
    ({"score_chosen": "9"}, "score_chosen", "expected a number, got str '9'"),
])
def test_bad_ultrafeedback_rows(capsys, tmp_path, chat_model, over, field, message):
    src = write_jsonl(tmp_path / "a.jsonl", [uf(0), uf(1), uf(2, **over)])
    fails(capsys, src, tmp_path, f"{src}:3: field '{field}': {message}", "--model", chat_model)


def test_ultrafeedback_tied_scores_are_a_counted_skip(capsys, tmp_path, chat_model):
    src = write_jsonl(tmp_path / "a.jsonl", [uf(0), uf(1, score_rejected=9.0), uf(2)])
    skips(capsys, src, tmp_path, "kept 2 / 3; skipped 1: tied scores (1)", f"{src}:2 score_chosen",
          "--model", chat_model)


# ---- --column-map --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ("chosen", "--column-map: expected NAME=COLUMN pairs separated by commas, got 'chosen'"),
    ("choosen=good", "--column-map: unknown name 'choosen'; names: prompt, chosen, rejected, post_id"),
    ("chosen=a,chosen=b", "--column-map: 'chosen' is mapped twice"),
])
def test_malformed_column_map(capsys, tmp_path, spec, message):
    fails(capsys, "tldr-sample", tmp_path, message, "--column-map", spec)


def test_column_map_to_a_missing_column(capsys, tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "good": "a", "worse": "b"}])
    fails(capsys, src, tmp_path, f"{src}:1: field 'bad': missing column (found: good, prompt, worse); "
          "--column-map rejected=bad", "--column-map", "chosen=good,rejected=bad")


def test_errors_in_mapped_columns_use_the_users_names(capsys, tmp_path):
    rows = [{"q": "p", "good": "a", "bad": "b"}, {"q": "p2", "good": 7, "bad": "b"}]
    src = write_jsonl(tmp_path / "a.jsonl", rows)
    fails(capsys, src, tmp_path, f"{src}:2: field 'good': expected str, got int", "--column-map",
          "prompt=q,chosen=good,rejected=bad")


# ---- CSV -------------------------------------------------------------------------------------------------


def test_csv_unclosed_quote(capsys, tmp_path):
    src = tmp_path / "a.csv"
    src.write_text('prompt,chosen,rejected\np,a,b\n"p2,a,b\np3,a,b\n')
    fails(capsys, src, tmp_path, f"{src}:3: malformed CSV (unexpected end of data; an unclosed quote?)")


def test_csv_ragged_row(capsys, tmp_path):
    src = tmp_path / "a.csv"
    src.write_text("prompt,chosen,rejected\np,a,b\np2,a,b,extra\n")
    fails(capsys, src, tmp_path, f"{src}:3: row has 4 fields, the header has 3 (prompt, chosen, rejected)")


def test_csv_duplicate_column(capsys, tmp_path):
    src = tmp_path / "a.csv"
    src.write_text("prompt,chosen,chosen,rejected\np,a,b,c\n")
    fails(capsys, src, tmp_path, f"{src}:1: field 'chosen': duplicate column in the header row")


def test_csv_header_only(capsys, tmp_path):
    src = tmp_path / "a.csv"
    src.write_text("prompt,chosen,rejected\n")
    fails(capsys, src, tmp_path, f"{src}: no rows: the CSV has a header only")


def test_csv_non_utf8(capsys, tmp_path):
    src = tmp_path / "a.csv"
    src.write_bytes(b"prompt,chosen,rejected\np,a,b\ncaf\xe9,a,b\n")
    fails(capsys, src, tmp_path, f"{src}:3: not valid UTF-8 (byte 3): invalid continuation byte")


def test_csv_embedded_newlines_keep_line_numbers_right(capsys, tmp_path):
    src = tmp_path / "a.csv"
    with open(src, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "chosen", "rejected"])
        for i in range(3):  # each record spans three lines: 2-4, 5-7, 8-10
            writer.writerow([f"line one {i}\nline two\nline three", " same" if i == 2 else f" a{i}", " same"])
    skips(capsys, src, tmp_path, "kept 2 / 3; skipped 1: identical pair (1)", f"identical pair: e.g. {src}:8 chosen")


def test_truncated_gzip_csv(capsys, tmp_path):
    body = "prompt,chosen,rejected\n" + "".join(f"p{i},a{i},b{i}\n" for i in range(2000))
    data = gzip.compress(body.encode())
    src = tmp_path / "a.csv.gz"
    src.write_bytes(data[: len(data) // 2])
    code, _, err = prepare(capsys, src, tmp_path)
    assert code == 2 and f"{src}:" in err and "corrupt or truncated gzip data" in err


# ---- Parquet -----------------------------------------------------------------------------------------------


def test_parquet_that_is_not_parquet(capsys, tmp_path):
    src = tmp_path / "a.parquet"
    src.write_bytes(b"PAR1 this is not really parquet")
    fails(capsys, src, tmp_path, f"{src}: cannot read as Parquet (")


def test_parquet_wrong_column_type(capsys, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "a.parquet"
    pq.write_table(pa.table({"prompt": ["p1", "p2"], "chosen": [1, 2], "rejected": ["b", "c"]}), src)
    fails(capsys, src, tmp_path, f"{src}[row]:1: field 'chosen': expected str, got int", "--format",
          "prompt_chosen_rejected")


def test_parquet_without_rows(capsys, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = tmp_path / "a.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), src)
    fails(capsys, src, tmp_path, f"{src}: no rows: the Parquet file is empty")


# ---- folders, saved datasets, formats ---------------------------------------------------------------------


def test_folder_mixing_formats(capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "a.jsonl", [triple(0)])
    write_jsonl(data / "b.jsonl", [hh(0)])
    fails(capsys, data, tmp_path, f"{data} mixes data formats: {data / 'a.jsonl'} is prompt_chosen_rejected, "
          f"{data / 'b.jsonl'} is hh_rlhf; prepare them separately (or pass --format)")


def test_folder_without_data_files(capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "README.md").write_text("hi")
    fails(capsys, data, tmp_path, f"{data}: no data files (.jsonl, .json, .jsonl.gz, .json.gz, .csv, .csv.gz, "
          ".parquet) in this folder or its subfolders")


def test_saved_dataset_dict_without_the_split(capsys, tmp_path):
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "saved"
    DatasetDict({"train": Dataset.from_list([triple(0), triple(1)])}).save_to_disk(str(folder))
    capsys.readouterr()  # datasets' progress bar
    fails(capsys, folder, tmp_path, f"{folder}: no split 'validation' in this saved DatasetDict; its splits: train "
          "(pass --split)", "--split", "validation")


def test_unknown_format_lists_every_format(capsys, tmp_path):
    fails(capsys, "tldr-sample", tmp_path, "unknown --format 'hh'; choose one of: auto, summarize_from_feedback, "
          "prompt_chosen_rejected, hh_rlhf, conversational, ultrafeedback", "--format", "hh")


# ---- data inspect -----------------------------------------------------------------------------------------


def test_inspect_reports_bad_rows_the_same_way(capsys, tmp_path, tiny_model):
    src = write_jsonl(tmp_path / "a.jsonl", [triple(0), triple(1, rejected=None)])
    code, _, err = run(capsys, "data", "inspect", "--dataset", src, "--model", tiny_model)
    assert code == 2 and f"{src}:2: field 'rejected': expected str, got NoneType" in err


@pytest.mark.parametrize("argv, message", [
    (["--length-sample", "0"], "--length-sample must be > 0, got 0"),
    (["--max-length", "-1"], "--max-length must be > 0, got -1"),
    (["--model", "/no/such/model"], "model '/no/such/model' is neither a model folder nor a hub id"),
])
def test_inspect_bad_flags(capsys, argv, message):
    code, _, err = run(capsys, "data", "inspect", *argv)
    assert code == 2 and message in err
