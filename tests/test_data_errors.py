"""Bad input, every format and source: one line naming the file, the line/row and the field and what to
do (exit code 2), or a documented skip that is counted and shown in the summary. Categories: the file
system, encodings and file formats, wrong types from every source, data that would teach the wrong
thing. (More cases: test_data_adapters.py, test_data_prepare.py (prepared folders), test_data_chat.py,
test_data_cli.py (--out), test_cli_errors.py.)"""

import builtins
import csv
import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import comparison, write_jsonl
from test_data_cli import main

import preftune.data.sources as sources
from preftune.config import DataConfig
from preftune.data.prepare import Reading, iter_pairs


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
    code, out, err = prepare(capsys, src, tmp_path, "--eval-fraction", "0", "--test-fraction", "0", *extra)
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


# ---- one bad file: one line naming the file and line, and what to do -------------------------------

BAD_FILES = [  # (file name, its content: text, or bytes as written, the message with {src})
    ("a.json", '[\n  {"prompt": "p", "chosen": "a", "rejected": "b"},\n  {"prompt": \n',
     "{src}:4: malformed JSON (Expecting value at column 1)"),
    ("a.jsonl", json.dumps(triple(0)) + "\n[1, 2]\n", "{src}:2: expected a JSON object, got list"),
    ("a.jsonl", "\n \n\n", "{src}: no rows: its 3 line(s) are blank"),
    ("a.json", "[]", "{src}: no rows: the JSON array is empty"),
    ("a.json", json.dumps({"version": 1, "data": [triple(i) for i in range(3)]}, indent=2),
     "{src}: one JSON object (keys: data, version), not rows: expected JSON lines (one object per line) or a JSON "
     "array of objects; its rows may be the list under 'data': save that list"),
    ("a.jsonl", '{"prompt": "p", "chosen": " a", "rejected": " b", "chosen": " c"}\n',
     "{src}:1: field 'chosen': this key appears twice in the object: keep one"),
    ("a.jsonl", json.dumps(triple(0)) + '\n{"prompt": "Q\\ud800", "chosen": " a", "rejected": " b"}\n',
     "{src}:2: field 'prompt': unpaired surrogate '\\ud800' at character 1: not valid Unicode"),
    ("a.jsonl", '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}\n",
     "{src}:1: malformed JSON line (nested too deeply at column 1)"),
    ("a.jsonl", json.dumps(uf(0)).replace("9.0", "NaN") + "\n",
     "{src}:1: field 'score_chosen': expected a finite number, got float 'nan'"),
    ("a.jsonl.gz", json.dumps(triple(0)) + "\n", "{src}: not gzip-compressed, though its name ends in .gz: rename it "
     "to a.jsonl"),
    ("a.jsonl", gzip.compress(json.dumps(triple(0)).encode()),
     "{src}: gzip-compressed, though its name does not end in .gz: rename it to a.jsonl.gz"),
    ("a.jsonl", "".join(json.dumps(triple(i, rejected=f" good {i}")) + "\n" for i in range(3)),
     "{src}: no pairs left to prepare (kept 0 / 3; skipped 3: identical pair (3)): see the reasons above"),
    ("a.csv", 'prompt,chosen,rejected\np,a,b\n"p2,a,b\np3,a,b\n',
     "{src}:3: malformed CSV (unexpected end of data; an unclosed quote?)"),
    ("a.csv", "prompt,chosen,rejected\np,a,b\np2,a,b,extra\n",
     "{src}:3: row has 4 fields, the header has 3 (prompt, chosen, rejected)"),
    ("a.csv", "prompt,chosen,chosen,rejected\np,a,b,c\n", "{src}:1: field 'chosen': duplicate column in the header row"),
    ("a.csv", "prompt,chosen,rejected\n", "{src}: no rows: the CSV has a header only"),
    ("a.csv", "\n,,\n\n", "{src}: no rows: its lines are blank"),
    ("a.csv", "prompt,chosen,rejected,\np,a,b,\np2,a,b,oops\n",
     "{src}:3: a value in column 4, which has no name in the header row: name the column or delete it"),
    ("a.csv", "question,chosen,rejected\nq,a,b\n", "{src}:2: cannot detect the data format from the columns "
     "(chosen, question, rejected): no prompt column; pass --column-map prompt=question"),
    ("a.csv", "prompt,chosen,rejected\np,a,b\ncafé,a,b\n".encode("latin-1"),
     "{src}:3: not valid UTF-8 (byte 3): invalid continuation byte; save the file as UTF-8"),
    ("a.csv", "prompt,chosen,rejected\np,a,b\n".encode("utf-16"),
     "{src}: UTF-16/UTF-32 text (a spreadsheet's 'Unicode text'): save it as UTF-8"),
    ("a.csv", b"prompt,chosen,rejected\rp1,a,b\rp2,c,d\r",
     "{src}: its line ends are carriage returns only (classic Mac): save it with LF or CRLF line ends"),
    ("a.parquet", b"PAR1 this is not really parquet", "{src}: cannot read as Parquet ("),
]


@pytest.mark.parametrize("name, content, message", BAD_FILES,
                         ids=[f"{i}-{m.split(': ', 1)[1][:30]}" for i, (_, _, m) in enumerate(BAD_FILES)])
def test_bad_files_name_the_file_and_line(capsys, tmp_path, name, content, message):
    src = tmp_path / name
    src.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    fails(capsys, src, tmp_path, message.format(src=src))


BAD_ROWS = [  # (rows, flags, the message with {src})
    ([{"prompt": "p", "chosen": "a"}], ["--format", "prompt_chosen_rejected"],
     "{src}:1: field 'rejected': missing column rejected (found: chosen, prompt; expected: prompt, chosen, rejected)"),
    ([{"text": "x"}], ["--format", "hh_rlhf"],
     "{src}:1: field 'chosen': missing columns chosen, rejected (found: text; expected: chosen, rejected)"),
    ([triple(0), triple(1), triple(2, chosen=5)], [], "{src}:3: field 'chosen': expected str, got int '5'"),
    ([triple(0, chosen=[msg("assistant", "a")])], ["--format", "prompt_chosen_rejected"],
     "{src}:1: field 'chosen': expected str, got list \"[{{'role': 'assistant', 'content': 'a'}}]\" (a message list: "
     "use --format conversational or ultrafeedback)"),
    ([triple(0)], ["--format", "conversational"],
     "{src}:1: field 'prompt': expected a list of messages {{role, content}}, got str"),
    ([triple(0, prompt_id={"x": 1})], [], "{src}:1: field 'prompt_id': expected str or int, got dict"),
    ([hh(0), {"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hello"}], [],
     "{src}:2: field 'chosen': no '\\n\\nAssistant:' turn in '\\n\\nHuman: hi': not an HH-RLHF dialogue"),
    ([{"chosen": hh(0)["chosen"], "rejected": hh(1)["rejected"]}], [],
     "{src}:1: field 'rejected': chosen and rejected share no dialogue up to an '\\n\\nAssistant:' turn"),
]


@pytest.mark.parametrize("rows, flags, message", BAD_ROWS, ids=[m.split("'")[1] if "'" in m else m[-20:]
                                                                 for _, _, m in BAD_ROWS])
def test_bad_rows_name_the_row_and_field(capsys, tmp_path, rows, flags, message):
    src = write_jsonl(tmp_path / "a.jsonl", rows)
    fails(capsys, src, tmp_path, message.format(src=src), *flags)


# ---- counted skips ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, reason, field", [
    ({"prompt": ""}, "empty prompt", "prompt"),
    ({"chosen": "   "}, "empty chosen", "chosen"),
    ({"rejected": "\n"}, "empty rejected", "rejected"),
    ({"chosen": " same", "rejected": " same"}, "identical pair", "chosen"),
])
def test_empty_fields_and_ties_are_counted_skips(capsys, tmp_path, bad, reason, field):
    src = write_jsonl(tmp_path / "a.jsonl", [triple(0), triple(1, **bad), triple(2), triple(3)])
    skips(capsys, src, tmp_path, f"kept 3 / 4; skipped 1: {reason} (1)", f"{reason}: e.g. {src}:2 {field}")


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
    ({"score_chosen": "9"}, "score_chosen", "expected a finite number, got str '9'"),
])
def test_bad_ultrafeedback_rows(capsys, tmp_path, chat_model, over, field, message):
    src = write_jsonl(tmp_path / "a.jsonl", [uf(0), uf(1), uf(2, **over)])
    fails(capsys, src, tmp_path, f"{src}:3: field '{field}': {message}", "--model", chat_model)


def test_ultrafeedback_tied_scores_are_a_counted_skip(capsys, tmp_path, chat_model):
    src = write_jsonl(tmp_path / "a.jsonl", [uf(0), uf(1, score_rejected=9.0), uf(2)])
    skips(capsys, src, tmp_path, "kept 2 / 3; skipped 1: tied scores (1)", f"{src}:2 score_chosen",
          "--model", chat_model)


@pytest.mark.parametrize("over, field, message", [
    ({"score_chosen": 2.0, "score_rejected": 9.0}, "score_chosen",
     "2.0 is below score_rejected 9.0: are chosen and rejected swapped?"),
    ({"score_chosen": float("nan"), "score_rejected": 1.0}, "score_chosen", "expected a finite number, got float 'nan'"),
    ({"score_chosen": 9.0, "score_rejected": float("-inf")}, "score_rejected",
     "expected a finite number, got float '-inf'"),
    ({"score_chosen": "9", "score_rejected": 1}, "score_chosen", "expected a finite number, got str '9'"),
    ({"score_chosen": 9.0}, "score_rejected", "missing while score_chosen is given: both scores, or neither"),
])
def test_bad_scores_of_prompt_chosen_rejected_rows(capsys, tmp_path, over, field, message):
    """Score columns were "detected" and ignored: NaN, inf and swapped scores passed."""
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [triple(0, score_chosen=5, score_rejected=1), triple(1),
                                                         triple(2, **over)]))
    fails(capsys, src, tmp_path, f"{src}:3: field '{field}': {message}")


def test_scores_of_prompt_chosen_rejected_rows_are_used(capsys, tmp_path):
    """Tied scores are a counted skip (nothing is preferred); the others are kept in the pair's meta."""
    from preftune.config import DataConfig
    from preftune.data.prepare import prepare as prepare_pairs

    src = write_jsonl(tmp_path / "a.jsonl", [triple(0, score_chosen=8, score_rejected=3.5),
                                             triple(1, score_chosen=4, score_rejected=4), triple(2)])
    skips(capsys, src, tmp_path, "kept 2 / 3; skipped 1: tied scores (1)", f"{src}:2 score_chosen")
    pairs = prepare_pairs(DataConfig(dataset=str(src), eval_fraction=0.0, test_fraction=0.0)).train
    assert sorted((p.chosen, tuple(sorted(p.meta.items()))) for p in pairs) == [
        (" good 0", (("score_chosen", 8), ("score_rejected", 3.5))), (" good 2", ())]


# ---- --column-map --------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, message", [
    ("chosen", "--column-map: expected NAME=COLUMN pairs separated by commas, got 'chosen'"),
    ("choosen=good", "--column-map: unknown name 'choosen'; names: prompt, chosen, rejected, post_id"),
    ("chosen=a,chosen=b", "--column-map: 'chosen' is mapped twice"),
    ("chosen=a,rejected=a", "--column-map: column 'a' is mapped to both chosen and rejected"),
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
    fails(capsys, "tldr-sample", tmp_path, "argument --format: invalid choice: 'hh' (choose from 'auto', "
          "'summarize_from_feedback', 'preftune_pairs', 'prompt_chosen_rejected', 'hh_rlhf', 'conversational', 'ultrafeedback')",
          "--format", "hh")


# ---- the file system: every refusal names the path ---------------------------------------------------


def deny(monkeypatch, target, errno_=13, message="Permission denied"):
    """Make the file system refuse `target` as it does without permission (the tests run as root, for
    whom chmod 000 stops nothing): opening it, listing it, or looking at it."""
    target = str(target)
    real_open, real_scandir = builtins.open, os.scandir

    def refuse(path):
        if str(path) == target:
            raise OSError(errno_, message, target) if errno_ != 13 else PermissionError(errno_, message, target)

    def fake_open(path, *a, **k):
        refuse(path)
        return real_open(path, *a, **k)

    def fake_scandir(path="."):
        refuse(path)
        return real_scandir(path)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "scandir", fake_scandir)


def ten_rows(folder):
    folder.mkdir(exist_ok=True)
    return write_jsonl(folder / "a.jsonl", [triple(i) for i in range(10)])


def unreadable_file(tmp_path, monkeypatch):
    src = ten_rows(tmp_path / "d")
    deny(monkeypatch, src)
    return src, f"{src}: cannot read this file (Permission denied): check its permissions"


def unreadable_folder(tmp_path, monkeypatch):
    ten_rows(tmp_path / "d")
    deny(monkeypatch, tmp_path / "d")
    return tmp_path / "d", f"{tmp_path / 'd'}: cannot read this folder (Permission denied)"


def unreadable_subfolder(tmp_path, monkeypatch):
    """Not 'kept 10 / 10' while the subfolder's rows are ignored: the subfolder is named."""
    data = tmp_path / "d"
    ten_rows(data)
    ten_rows(data / "more")
    deny(monkeypatch, data / "more")
    return data, f"{data / 'more'}: cannot read this folder (inside {data}) (Permission denied): fix its permissions"


def unreadable_file_in_folder(tmp_path, monkeypatch):
    data = tmp_path / "d"
    ten_rows(data)
    other = write_jsonl(data / "b.jsonl", [triple(20)])
    deny(monkeypatch, other)
    return data, f"{other}: cannot read this file (Permission denied)"


def unreadable_parquet(tmp_path, monkeypatch):
    src = tmp_path / "a.parquet"
    src.write_bytes(b"whatever")
    deny(monkeypatch, src)
    return src, f"{src}: cannot read this file (Permission denied)"


def io_error_mid_file(tmp_path, monkeypatch):
    """A real OSError while reading (a failing disk, a network mount that went away): line named."""
    src = ten_rows(tmp_path / "d")
    real_open = builtins.open

    class Failing:
        def __init__(self, fh):
            self.fh, self.lines = fh, 0

        def read(self, n=-1):
            return self.fh.read(n)

        def seek(self, *a):
            return self.fh.seek(*a)

        def __iter__(self):
            for line in self.fh:
                self.lines += 1
                if self.lines == 3:
                    raise OSError(5, "Input/output error")
                yield line

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: Failing(real_open(p, *a, **k)) if str(p) == str(src)
                        else real_open(p, *a, **k))
    return src, f"{src}:3: cannot read this file (Input/output error)"


def stat_refused(tmp_path, monkeypatch):
    """A path whose parent may not be searched: stat itself fails."""
    src = ten_rows(tmp_path / "d")
    real_stat = Path.stat

    def fake_stat(self, *a, **k):
        if str(self) == str(src):
            raise PermissionError(13, "Permission denied", str(src))
        return real_stat(self, *a, **k)

    monkeypatch.setattr(Path, "stat", fake_stat)
    return src, f"{src}: cannot access (Permission denied): check the path and its permissions"


def broken_link(tmp_path, monkeypatch):
    src = tmp_path / "data.jsonl"
    src.symlink_to(tmp_path / "gone.jsonl")
    return src, f"{src}: a broken symbolic link → {tmp_path / 'gone.jsonl'}: fix the link or remove it"


def broken_link_in_folder(tmp_path, monkeypatch):
    data = tmp_path / "d"
    ten_rows(data)
    (data / "b.jsonl").symlink_to(tmp_path / "gone.jsonl")
    return data, f"{data / 'b.jsonl'}: a broken symbolic link → {tmp_path / 'gone.jsonl'} in {data}: fix the link"


def fifo_in_folder(tmp_path, monkeypatch):
    data = tmp_path / "d"
    ten_rows(data)
    os.mkfifo(data / "b.jsonl")  # reading it would block forever
    return data, f"{data / 'b.jsonl'}: not a regular file (a device, pipe or socket): remove it from {data}"


def device(tmp_path, monkeypatch):
    return "/dev/null", "/dev/null: not a regular file or a folder (a device, pipe or socket): pass a data file"


def empty_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --out is under the current folder, which "" is not
    return "", "--dataset is empty: pass a file, a folder, a shipped sample (tldr-sample) or a hub id"


def local_looking(spec):
    def case(tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        (tmp_path / "runs").mkdir()
        return spec, (f"dataset '{spec}' not found: it is not a file, a folder, a shipped sample (tldr-sample) or a "
                      "hub id (owner/name) (it looks like a local path: check its spelling and the current folder)")
    return case


@pytest.mark.parametrize("case", [
    unreadable_file, unreadable_folder, unreadable_subfolder, unreadable_file_in_folder, unreadable_parquet,
    io_error_mid_file, stat_refused, broken_link, broken_link_in_folder, fifo_in_folder, device, empty_name,
    local_looking("data/x.jsonl"), local_looking("./nope"), local_looking("runs/foo"), local_looking("~/no/such"),
], ids=lambda c: getattr(c, "__name__", "?"))
def test_file_system_refusals_name_the_path(capsys, tmp_path, monkeypatch, case):
    def no_hub(*_):
        raise AssertionError("a local-looking path must never reach the Hub")

    monkeypatch.setattr(sources, "_iter_hub", no_hub)
    src, message = case(tmp_path, monkeypatch)
    fails(capsys, src, tmp_path, message)


def test_folder_walk_survives_a_symlink_loop_and_a_folder_named_like_a_file(capsys, tmp_path):
    data = tmp_path / "d"
    ten_rows(data)
    (data / "loop").symlink_to(data)  # walked once, not forever
    (data / "x.jsonl").mkdir()  # a folder with a data-file name is a folder
    write_jsonl(data / "x.jsonl" / "b.jsonl", [triple(10)])
    skips(capsys, data, tmp_path, "kept 11 / 11", "format prompt_chosen_rejected")
    skips(capsys, data / "x.jsonl", tmp_path, "kept 1 / 1", "format prompt_chosen_rejected")


# ---- encodings and file formats: read as the user sees them, or refused with what to do -------------


def excel_csv(path, rows, **kw):
    """A CSV as spreadsheets save it: UTF-8 with a byte-order mark, CRLF line ends."""
    with open(path, "w", newline="", encoding="utf-8-sig") as fh:
        writer = csv.writer(fh, lineterminator="\r\n", **kw)
        writer.writerow(["prompt", "chosen", "rejected"])
        writer.writerows([[r["prompt"], r["chosen"], r["rejected"]] for r in rows])
    return path


@pytest.mark.parametrize("write", [
    lambda p: excel_csv(p / "a.csv", [triple(i) for i in range(4)]),
    lambda p: excel_csv(p / "a.csv", [triple(i) for i in range(4)], delimiter=";"),  # comma-decimal locales
    lambda p: (p / "a.csv").write_text("prompt,chosen,rejected,,\n" + "".join(  # padded, with empty rows
        f"Question {i}?, good {i}, bad {i},,\n,,,,\n" for i in range(4))),
    lambda p: (p / "a.jsonl").write_text("\ufeff" + "".join(json.dumps(triple(i)) + "\n" for i in range(4)),
                                         encoding="utf-8"),
    lambda p: (p / "a.json").write_text("\n\n" + json.dumps([triple(i) for i in range(4)], indent=2)),
    lambda p: (p / "a.jsonl").write_bytes("".join(json.dumps(triple(i)) + "\r\n" for i in range(4)).encode()),
], ids=["excel-bom-crlf", "semicolons", "padded-empty-rows", "jsonl-bom", "array-after-blank-lines", "jsonl-crlf"])
def test_spreadsheet_and_editor_files_read_as_seen(tmp_path, write):
    write(tmp_path)
    reading = Reading()
    pairs = list(iter_pairs(DataConfig(dataset=str(next(tmp_path.iterdir()))), reading))
    assert reading.format == "prompt_chosen_rejected" and reading.detected_from == ["chosen", "prompt", "rejected"]
    assert [(p.prompt, p.chosen.strip(), p.rejected.strip()) for p in pairs] == [
        (f"Question {i}?", f"good {i}", f"bad {i}") for i in range(4)]


# ---- wrong types in text fields, from every kind of source --------------------------------------------


def write_source(kind, tmp_path, value):
    """Three prompt/chosen/rejected rows whose third `chosen` is `value` (every row's, where a column
    must hold one type); returns (SRC, the location of the bad row)."""
    rows = [triple(i) for i in range(3)]
    rows[2]["chosen"] = value
    if kind == "jsonl":
        return write_jsonl(tmp_path / "a.jsonl", rows), f"{tmp_path / 'a.jsonl'}:3"
    import pyarrow as pa

    uniform = not isinstance(value, (type(None), str))
    if uniform:  # an Arrow column holds one type: every row gets a value of the bad type
        rows = [{**r, "chosen": value} for r in rows]
    table = pa.Table.from_pylist(rows)
    where = 1 if uniform else 3
    if kind == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, tmp_path / "a.parquet")
        return tmp_path / "a.parquet", f"{tmp_path / 'a.parquet'}[row]:{where}"
    from datasets import Dataset

    Dataset(table).save_to_disk(str(tmp_path / "saved"))
    return tmp_path / "saved", f"{tmp_path / 'saved'}[row]:{where}"


WRONG_TYPES = [(5, "int '5'"), (1.5, "float '1.5'"), (None, "NoneType 'None'"), ({"text": "a"}, "dict"),
               (b"bytes", "bytes b'bytes'"), ([1, 2], "list")]


@pytest.mark.parametrize("kind, value, got", [(kind, value, got) for kind in ("jsonl", "parquet", "saved")
                                              for value, got in WRONG_TYPES
                                              if not (kind == "jsonl" and isinstance(value, bytes))])  # no bytes in JSON
def test_wrong_types_are_field_errors_with_the_row(capsys, tmp_path, kind, value, got):
    src, where = write_source(kind, tmp_path, value)
    capsys.readouterr()  # datasets' progress bar
    fails(capsys, src, tmp_path, f"{where}: field 'chosen': expected str, got {got}", "--format",
          "prompt_chosen_rejected")


# ---- data that would teach the wrong thing ----------------------------------------------------------------


@pytest.mark.parametrize("good, bad, field", [
    (conv(0), {**conv(1), "chosen": [msg("assistant", "Yes."), msg("user", "And?")]}, "chosen[1].role"),
    (conv(0), {**conv(1), "rejected": [msg("assistant", "No."), msg("tool", "{}")]}, "rejected[1].role"),
    (uf(0), {**uf(1), "chosen": [msg("user", "Question 1?"), msg("assistant", "Yes."), msg("user", "Ok.")]},
     "chosen[2].role"),  # the index in the user's field: the shared prompt turn counts
])
def test_a_reply_must_end_with_the_assistant(capsys, tmp_path, chat_model, good, bad, field):
    src = write_jsonl(tmp_path / "a.jsonl", [good, bad])
    fails(capsys, src, tmp_path, f"{src}:2: field '{field}': a reply must end with an assistant message, got",
          "--model", chat_model)


@pytest.mark.parametrize("rows, reason", [
    ([hh(0), hh(1, " Sure.\n\nHuman: thanks\n\nAssistant: Bye."), hh(2)], "chosen reply holds a Human turn"),
])
def test_replies_that_would_teach_the_wrong_turn_are_counted_skips(capsys, tmp_path, rows, reason):
    src = write_jsonl(tmp_path / "a.jsonl", rows)
    skips(capsys, src, tmp_path, f"kept 2 / 3; skipped 1: {reason} (1)", f"{reason}: e.g. {src}:2 chosen")


def test_confidence_that_contradicts_the_choice_is_a_counted_skip(capsys, tmp_path):
    rows = [comparison(post_id=f"p{i}", chosen=f" s{i}", extra={"confidence": 2}) for i in range(3)]
    rows[1]["extra"]["confidence"] = 8  # 6-9 mean summary 1, but choice says 0
    src = write_jsonl(tmp_path / "a.jsonl", rows)
    skips(capsys, src, tmp_path, "kept 2 / 3; skipped 1: confidence contradicts choice (1)",
          f"{src}:2 extra.confidence")


@pytest.mark.parametrize("flags, message", [
    (["--test-fraction", "1.5"], "--test-fraction must be in [0, 1), got 1.5"),
    (["--test-fraction", "nan"], "--test-fraction must be a finite number, got nan"),
    (["--eval-fraction", "0.5", "--test-fraction", "0.5"],
     "--eval-fraction + --test-fraction must be < 1, got 0.5 + 0.5: no pair would be left to train on"),
])
def test_bad_split_flags_are_refused_before_reading(capsys, tmp_path, flags, message):
    code, out, err = prepare(capsys, "tldr-sample", tmp_path, *flags)
    assert code == 2 and message in err and out == ""  # nothing read, nothing logged


@pytest.mark.parametrize("src, flags, warning", [
    ("tldr-sample", ["--split", "validation"], "--split validation applies to hub datasets and saved DatasetDicts "
     "only; ignored for tldr-sample"),
    ("tldr-sample", ["--hub-config", "comparisons"], "--hub-config comparisons applies to hub datasets only; ignored"),
    ("PREPARED", ["--eval-fraction", "0.3", "--format", "hh_rlhf"], "is a prepared folder: its split is used as is; "
     "--format, --fraction, --eval-fraction do not apply (prepare the source again to change them)"),
])
def test_flags_that_cannot_apply_are_reported_not_ignored(capsys, tmp_path, src, flags, warning):
    if src == "PREPARED":
        src = tmp_path / "prep"
        assert run(capsys, "data", "prepare", "--fraction", "0.02", "--out", src)[0] == 0
    code, out, _ = run(capsys, "data", "prepare", "--dataset", src, "--fraction", "0.02", "--out", tmp_path / "o",
                       *flags)
    assert code == 0 and warning in out


def test_incomplete_prepared_folder_is_refused(capsys, tmp_path):
    folder = tmp_path / "prep"
    assert run(capsys, "data", "prepare", "--fraction", "0.05", "--out", folder)[0] == 0
    (folder / "eval.jsonl").unlink()
    fails(capsys, folder, tmp_path, f"{folder}: incomplete prepared folder: no eval.jsonl (validation split); "
          "prepare the data again with `preftune data prepare`")


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
