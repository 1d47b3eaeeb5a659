"""The `preftune data` verbs (preftune.data.cli): prepare writes the three split files, inspect reads
datasets and prepared folders, formats lists the adapters, --out is checked before any work, and
every verb has --help. `main` here is `preftune ARGV` with the data verbs of preftune.data.cli, which
the other data test modules use too."""

from __future__ import annotations

import importlib
import json

import pytest
from conftest import comparison, write_jsonl

import preftune.cli
from preftune import log
from preftune.data.adapters import ADAPTERS


def main(argv) -> int:
    """`preftune ARGV` (preftune.cli.main: its error handling and exit codes) for the `data` verbs."""
    try:
        return preftune.cli.main([str(a) for a in argv])
    finally:
        log.setup()  # `inspect --json` moves log lines to stderr: back to stdout for the next test


# ---- the verbs -------------------------------------------------------------------------------------

def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, expect, absent", [
    (["data", "--help"], ["prepare", "inspect", "formats"], []),
    (["data", "prepare", "--help"], ["--test-fraction", "--eval-fraction", "--out", "test.jsonl"], []),
    (["data", "inspect", "--help"], ["--max-length", "--json", "prepared folder"], ["--test-fraction", "--fraction"]),
    (["data", "formats", "--help"], ["usage: preftune data formats"], []),
])
def test_help_for_every_data_verb(capsys, argv, expect, absent):
    with pytest.raises(SystemExit) as done:
        main(argv)
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert done.value.code == 0 and out.startswith("usage: preftune data")
    assert all(word in out for word in expect) and not any(word in out.split() for word in absent)


def test_formats_lists_every_adapter(capsys):
    code, out, _ = run(capsys, "data", "formats")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == list(ADAPTERS)


def test_prepare_writes_three_splits_and_prints_their_counts(capsys, tmp_path):
    """20 posts of one pair: validation 0.25 → 5 posts, test 0.1 → 2 posts, train the other 13."""
    src = write_jsonl(tmp_path / "c.jsonl", [comparison(post_id=f"p{i}", chosen=f" s{i}") for i in range(20)])
    out = tmp_path / "o"
    code, printed, _ = run(capsys, "data", "prepare", "--dataset", src, "--eval-fraction", "0.25", "--out", out)
    assert code == 0
    splits = {name: [json.loads(line) for line in (out / f"{name}.jsonl").open()] for name in ("train", "eval", "test")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 13, "eval": 5, "test": 2}
    assert {"prompt", "chosen", "rejected", "post_id"} <= splits["train"][0].keys()
    posts = [{r["post_id"] for r in rows} for rows in splits.values()]
    assert not posts[0] & posts[1] and not posts[0] & posts[2] and not posts[1] & posts[2]
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["train"]["pairs"], stats["validation"]["posts"], stats["test"]["posts"]) == (13, 5, 2)
    assert stats["eval"] == stats["validation"] and stats["config"]["test_fraction"] == 0.1
    assert (f"wrote {out}/train.jsonl (train: 13 pairs), {out}/eval.jsonl (validation: 5 pairs), {out}/test.jsonl "
            f"(test: 2 pairs), {out}/stats.json") in printed
    assert "train 13 pairs / 13 posts, validation 5 pairs / 5 posts, test 2 pairs / 2 posts (disjoint by post)" in printed


def out_is_a_file(tmp_path):
    (tmp_path / "o").write_text("x")
    return "tldr-sample", tmp_path / "o", f"--out {tmp_path / 'o'} is a file: name a folder"


def out_is_the_dataset(tmp_path):
    data = tmp_path / "data"
    return data, data, f"--out {data} is inside --dataset {data}: the prepared files would be read back as data"


def out_inside_the_dataset(tmp_path):
    data = tmp_path / "data"
    return data, data / "prepared", f"--out {data / 'prepared'} is inside --dataset {data}"


def out_overwrites_the_dataset(tmp_path):
    data = tmp_path / "data"
    return data / "train.jsonl", data, f"--out {data} would overwrite the --dataset file {data / 'train.jsonl'}"


def out_holds_foreign_files(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "eval.jsonl").write_text("mine\n")
    return "tldr-sample", tmp_path / "o", (f"--out {tmp_path / 'o'} holds eval.jsonl, not written by `preftune data "
                                           "prepare` (no stats.json marker): choose another folder")


def out_is_a_device(tmp_path):
    return "tldr-sample", "/dev/null", "--out /dev/null is not a folder: name a folder"


def out_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    return "tldr-sample", tmp_path / "f" / "o", f"--out {tmp_path / 'f' / 'o'}: {tmp_path / 'f'} is a file, so the folder"


def out_is_empty(tmp_path):
    return "tldr-sample", "", "--out is empty: name the folder for train.jsonl, eval.jsonl, test.jsonl, stats.json"


@pytest.mark.parametrize("case", [out_is_a_file, out_is_the_dataset, out_inside_the_dataset, out_overwrites_the_dataset,
                                  out_holds_foreign_files, out_is_a_device, out_under_a_file, out_is_empty],
                         ids=lambda c: c.__name__)
def test_bad_out_is_refused_before_any_work(capsys, tmp_path, monkeypatch, case):
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [comparison(post_id=f"p{i}") for i in range(4)])
    before = (data / "train.jsonl").read_bytes()
    module = importlib.import_module("preftune.data.prepare")  # preftune.data.prepare is also the function's name
    monkeypatch.setattr(module, "prepare", lambda *a, **k: pytest.fail("prepare ran"))
    src, out, message = case(tmp_path)
    code, _, err = run(capsys, "data", "prepare", "--dataset", src, "--out", out)
    assert code == 2 and message in err and err.count("\n") == 1
    assert (data / "train.jsonl").read_bytes() == before and sorted(p.name for p in data.iterdir()) == ["train.jsonl"]


def test_prepare_may_replace_its_own_folder(capsys, tmp_path):
    out = tmp_path / "o"
    assert run(capsys, "data", "prepare", "--fraction", "0.02", "--out", out)[0] == 0
    first = (out / "train.jsonl").read_text()
    assert run(capsys, "data", "prepare", "--fraction", "0.02", "--seed", "1", "--out", out)[0] == 0
    assert (out / "train.jsonl").read_text() != first and not [p for p in out.iterdir() if p.name.startswith(".")]
