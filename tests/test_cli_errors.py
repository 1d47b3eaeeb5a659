"""Bad input: one clear line naming file, line and field; exit code 2; no traceback."""

import gzip
import json

import pytest
from conftest import comparison, write_jsonl

from preftune.cli import main


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def prepare(capsys, src, tmp_path, *extra):
    return run(capsys, "data", "prepare", "--dataset", str(src), "--out", str(tmp_path / "out"), *extra)


def rows_with(bad: dict, n: int = 4) -> list[dict]:
    rows = [comparison(post_id=f"p{i}", chosen=f" summary {i}") for i in range(n)]
    rows[2] = bad
    return rows


def test_missing_file(capsys, tmp_path):
    code, _, err = prepare(capsys, tmp_path / "nope.jsonl", tmp_path)
    assert code == 2
    assert "nope.jsonl' not found: it is not a file, a folder, a shipped sample (tldr-sample) or a hub id" in err
    assert "Traceback" not in err


def test_malformed_json_line(capsys, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text(json.dumps(comparison()) + "\n" + '{"info": {"id": 1},\n')
    code, _, err = prepare(capsys, src, tmp_path)
    assert code == 2 and f"{src}:2: malformed JSON line" in err


def test_missing_field(capsys, tmp_path):
    bad = comparison()
    del bad["summaries"]
    src = write_jsonl(tmp_path / "c.jsonl", rows_with(bad))
    code, _, err = prepare(capsys, src, tmp_path)
    assert code == 2
    assert f"{src}:3: field 'summaries': missing (found: batch, choice, info, split, worker)" in err


def test_choice_not_0_or_1(capsys, tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", rows_with(comparison(choice=0) | {"choice": 3}))
    code, _, err = prepare(capsys, src, tmp_path)
    assert code == 2 and f"{src}:3: field 'choice': must be 0 or 1, got 3" in err


def test_summary_text_of_wrong_type(capsys, tmp_path):
    bad = comparison()
    bad["summaries"][0]["text"] = None
    src = write_jsonl(tmp_path / "c.jsonl", rows_with(bad))
    code, _, err = prepare(capsys, src, tmp_path)
    assert code == 2 and f"{src}:3: field 'summaries[0].text': expected str, got NoneType" in err


def test_empty_summary_is_a_counted_reported_skip(capsys, tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", rows_with(comparison(post_id="p2", rejected="")))
    code, out, _ = prepare(capsys, src, tmp_path, "--eval-fraction", "0.3")
    assert code == 0
    assert "kept 3 / 4; skipped 1: empty summary (1)" in out
    assert f"empty summary: e.g. {src}:3 summaries[1].text" in out
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["rows"]["skipped"] == {"empty summary": 1}


def test_non_utf8_bytes(capsys, tmp_path):
    src = tmp_path / "c.jsonl"
    src.write_bytes(json.dumps(comparison()).encode() + b"\n" + b'{"info": "\xff\xfe"}\n')
    code, _, err = prepare(capsys, src, tmp_path)
    assert code == 2 and f"{src}:2: not valid UTF-8" in err


def test_truncated_gzip(capsys, tmp_path):
    data = gzip.compress(("".join(json.dumps(comparison(post_id=f"p{i}")) + "\n" for i in range(50))).encode())
    src = tmp_path / "c.jsonl.gz"
    src.write_bytes(data[: len(data) // 2])
    code, _, err = prepare(capsys, src, tmp_path)
    assert code == 2 and "corrupt or truncated gzip data" in err and str(src) in err


def test_empty_file(capsys, tmp_path):
    src = tmp_path / "empty.jsonl"
    src.write_text("")
    code, _, err = prepare(capsys, src, tmp_path)
    assert code == 2 and f"{src}: file is empty: no rows" in err


def test_unknown_format(capsys, tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", [comparison()])
    code, _, err = prepare(capsys, src, tmp_path, "--format", "nonsense")
    assert code == 2 and "argument --format: invalid choice: 'nonsense' (choose from 'auto', " \
                         "'summarize_from_feedback'" in err
    assert err.count("\n") == 1 and "(see `preftune data prepare --help`)" in err


def test_undetectable_columns(capsys, tmp_path):
    src = write_jsonl(tmp_path / "c.jsonl", [{"question": "q", "answer": "a"}])
    code, _, err = prepare(capsys, src, tmp_path)
    assert code == 2 and "cannot detect the data format from the columns (answer, question)" in err


@pytest.mark.parametrize("flag, value, message", [
    ("--fraction", "0", "--fraction must be in (0, 1], got 0.0"),
    ("--fraction", "1.5", "--fraction must be in (0, 1], got 1.5"),
    ("--eval-fraction", "1", "--eval-fraction must be in [0, 1), got 1.0"),
])
def test_bad_fractions(capsys, tmp_path, flag, value, message):
    code, _, err = prepare(capsys, "tldr-sample", tmp_path, flag, value)
    assert code == 2 and message in err


def broken_symlink(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    return tmp_path / "link"


def config_only(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "llama"}')
    return tmp_path / "m"


def a_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    return tmp_path / "model.safetensors"


# (flags, expected message): every case exits 2 with one line and no traceback, before any training
BAD_TRAIN_FLAGS = [
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--beta", "inf"], "--beta must be a finite number, got inf"),
    (["--loss", "sigmoidd"], "argument --loss: invalid choice: 'sigmoidd' (choose from 'sigmoid', 'hinge', 'ipo', 'sigmoid_norm', 'rdpo', 'simpo', 'ld_dpo')"),
    (["--engine", "turbo"], "argument --engine: invalid choice: 'turbo' (choose from 'fast', 'trl')"),
    (["--lrr", "1"], "unrecognized arguments: --lrr 1"),
    (["--batch-size", "two"], "argument --batch-size: invalid int value: 'two'"),
    (["--logging-steps", "0"], "--logging-steps must be > 0, got 0"),
    (["--save-steps", "-1"], "--save-steps must be ≥ 0, got -1"),
    (["--max-pairs", "0"], "--max-pairs must be > 0, got 0"),
    (["--lora-dropout", "1"], "--lora-dropout must be in [0, 1), got 1.0"),
    (["--lora-targets", " , "], "--lora-targets names no module"),
    (["--seed", "-1"], "--seed must be in [0, 4294967296), got -1"),
    (["--eval-fraction", "0.6", "--test-fraction", "0.4"], "--eval-fraction + --test-fraction must be < 1"),
    (["--column-map", "chosen"], "--column-map: expected NAME=COLUMN pairs separated by commas, got 'chosen'"),
    (["--model", "/no/such/model"], "model '/no/such/model' is neither a model folder nor a hub id: "
                                    "/no/such/model is not found"),
    (["--model", "nobody/x/y"], "model 'nobody/x/y' is neither a model folder nor a hub id: nobody/x/y is not found"),
    (["--model", "not a model"], "model 'not a model' is neither a model folder nor a hub id (OWNER/NAME)"),
    (["--model", broken_symlink], "is a broken symlink"),
    (["--model", a_file], "is a file, not a model folder: pass the folder that holds config.json"),
    (["--model", config_only], "cannot load a tokenizer from"),
    (["--batch-size", "3", "--grad-accum", "2"], "--batch-size 3 is not divisible by processes (1)"),
]


@pytest.mark.parametrize("argv, message", BAD_TRAIN_FLAGS, ids=[" ".join(map(str, a)) for a, _ in BAD_TRAIN_FLAGS])
def test_bad_train_flags(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = [str(a(tmp_path)) if callable(a) else a for a in argv]
    code, _, err = run(capsys, "train", "--output-dir", str(tmp_path / "runs"), *argv)
    assert code == 2 and message in err and "Traceback" not in err
    assert err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: VERB"),
    (["trian"], "argument VERB: invalid choice: 'trian'"),
    (["eval"], "the following arguments are required: RUN_DIR (see `preftune eval --help`)"),
])
def test_bad_verbs(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1


def test_model_folder_without_config(capsys, tmp_path):
    (tmp_path / "m").mkdir()
    code, _, err = run(capsys, "train", "--output-dir", str(tmp_path), "--model", str(tmp_path / "m"))
    assert code == 2 and "has no config.json: not a Hugging Face model folder" in err


def test_unreachable_hub_dataset_is_one_clear_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code, _, err = prepare(capsys, "nobody/no-such-dataset", tmp_path)
    assert code == 2
    assert "cannot load hub dataset nobody/no-such-dataset[default/train]: offline mode is on" in err
    assert err.count("\n") == 1


def test_eval_of_a_folder_that_is_not_a_run(capsys, tmp_path):
    code, _, err = run(capsys, "eval", str(tmp_path))
    assert code == 2 and "is not a preftune run folder (no preftune_config.json)" in err


def test_eval_max_eval_pairs_must_be_positive(capsys, tmp_path):
    code, _, err = run(capsys, "eval", str(tmp_path), "--max-eval-pairs", "0")
    assert code == 2 and "--max-eval-pairs must be > 0, got 0" in err
