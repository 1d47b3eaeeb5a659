"""The run folder's file names and validated reading (the NAME.partial lifecycle: test_lifecycle.py). A damaged
eval.json, metrics.json, preftune_config.json, train_log.jsonl, eval_pairs.jsonl or judge.json is, for
each reader (report, push --dry-run, eval), exit 2 with one line naming the file and key, or a gap
that is shown ("–", n/a, a missing point) — never a traceback."""

import json
import math
import shutil
from pathlib import Path

import pytest
from test_report import fake_run

from preftune.errors import PreftuneError
from preftune.runs import folder as run_folder
from preftune.runs.folder import dataset_slug, result_file
from preftune.runs.results import open_run, read_eval, read_metrics, read_train_log


@pytest.mark.parametrize("spec, slug", [
    ("openai/summarize_from_feedback", "openai-summarize_from_feedback"),
    ("tldr-sample", "tldr-sample"),
    ("Some Name!", "some-name"),
    ("???", "data"),
])
def test_dataset_slug_of_a_hub_id_or_name(spec, slug):
    assert dataset_slug(spec) == slug


def test_dataset_slug_of_a_local_path_is_its_name_and_a_hash_of_where_it_is(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    where = hashlib.sha1(str(tmp_path / "a" / "CNN DM.jsonl").encode()).hexdigest()[:8]
    assert dataset_slug("a/CNN DM.jsonl") == dataset_slug(str(tmp_path / "a" / "CNN DM.jsonl")) == f"cnn-dm.jsonl-{where}"
    assert dataset_slug("./a/comparisons.jsonl") != dataset_slug("./b/comparisons.jsonl")


def test_long_dataset_specs_stay_apart():
    a, b = "x" * 70 + "-one", "x" * 70 + "-two"
    assert dataset_slug(a) != dataset_slug(b) and len(dataset_slug(a)) == 64


@pytest.mark.parametrize("split, dataset, name", [
    ("validation", None, "eval.json"), ("test", None, "test.json"),
    ("validation", "someone/cnndm_comparisons", "eval_someone-cnndm_comparisons.json"),
    ("test", "someone/cnndm_comparisons", "test_someone-cnndm_comparisons.json"),
])
def test_result_file(split, dataset, name):
    assert result_file(split, dataset) == name


def test_result_file_refuses_an_unknown_split():
    with pytest.raises(PreftuneError, match="unknown split 'train'; choose one of: validation, test"):
        result_file("train")


# ---- readers -------------------------------------------------------------------------------------


def write(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize("content, message", [
    ("{", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got a list"),
    ("null", "expected a JSON object, got null"),
    ('{"accuracy": "high"}', "key 'accuracy' must be a number or null, got text 'high'"),
    ('{"accuracy": true}', "key 'accuracy' must be a number or null, got true/false"),
    ('{"n": -3}', "key 'n' must be a count (an integer ≥ 0) or null"),
    ('{"n": 2.5}', "key 'n' must be a count"),
    ('{"accuracy_ci95": [0.1]}', "key 'accuracy_ci95' must be a [low, high] interval"),
    ('{"chosen_longer": [1, 2]}', "key 'chosen_longer' must be an object"),
    ('{"chosen_longer": {"accuracy": "x"}}', "key 'chosen_longer.accuracy' must be a number"),
    ('{"accuracy_by_confidence": {"7": {"n": "many"}}}', "key 'accuracy_by_confidence.7.n' must be a number"),
    ('{"split": 3}', "key 'split' must be text"),
])
def test_a_damaged_result_file_names_the_file_and_key(tmp_path, content, message):
    path = write(tmp_path / "eval.json", content)
    with pytest.raises(PreftuneError) as err:
        read_eval(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


def test_nan_and_null_values_are_gaps(tmp_path):
    path = write(tmp_path / "eval.json", '{"accuracy": NaN, "mean_margin": Infinity, "n": null, '
                                         '"length_balanced_ci95": [0.1, NaN], "chosen_longer": null}')
    assert read_eval(path) == {"accuracy": None, "mean_margin": None, "n": None, "length_balanced_ci95": None,
                               "chosen_longer": None, "accuracy_ci95": None}
    assert read_eval(tmp_path / "absent.json") is None


def test_an_older_eval_json_reads_as_the_strata_it_holds(tmp_path):
    path = write(tmp_path / "eval.json", {"n": 48, "accuracy": 0.625, "chosen_shorter_n": 15,
                                          "chosen_shorter_accuracy": 0.4})
    result = read_eval(path)
    assert result["chosen_shorter"]["n"] == 15 and result["chosen_shorter"]["accuracy"] == 0.4
    assert result["chosen_shorter"]["ci95"] == pytest.approx([0.1982, 0.6425], abs=1e-4)  # Wilson, 6/15
    assert result["accuracy_ci95"] == pytest.approx([0.4836, 0.7478], abs=1e-4)  # Wilson, 30/48
    assert "chosen_longer" not in result and "length_balanced_accuracy" not in result


@pytest.mark.parametrize("content, message", [
    ('{"steps": "six"}', "key 'steps' must be a number or null, got text"),
    ('{"final": [1]}', "key 'final' must be an object"),
    ('{"final": {"loss": "low"}}', "key 'final.loss' must be a number"),
])
def test_a_damaged_metrics_json_names_the_key(tmp_path, content, message):
    with pytest.raises(PreftuneError, match=message.replace("(", r"\(")):
        read_metrics(write(tmp_path / "metrics.json", content))


def test_the_train_log_leaves_damaged_lines_out_and_says_so(tmp_path, capsys):
    path = write(tmp_path / "train_log.jsonl", '{"step": 1, "loss": 0.69}\n[1, 2]\nnull\n{"step": "2"}\n'
                                               '{"step": 3, "loss": NaN, "rewards/margins": 0.1, "note": "x"}\n'
                                               '{"step": 4, "lo')
    assert read_train_log(path) == [{"step": 1, "loss": 0.69}, {"step": 3, "rewards/margins": 0.1}]
    out = capsys.readouterr().out
    assert f"{path}: 4 damaged line(s) left out of the curves (line 2: a list, not an object)" in out
    assert read_train_log(tmp_path / "absent.jsonl") == []


@pytest.mark.parametrize("config, message", [
    ("{", "preftune_config.json: not valid JSON"),
    ("[]", "preftune_config.json: expected a JSON object, got a list"),
    ({"data": {}}, "preftune_config.json: key 'train' missing"),
    ({"data": {}, "train": None}, "preftune_config.json: key 'train' must be an object, got null"),
    ({"data": [], "train": {}}, "preftune_config.json: key 'data' must be an object, got a list"),
    ({"data": {}, "train": {"beta": "0.1", "max_length": 8, "model": "m"}}, "key 'train.beta' must be a number, got text"),
    ('{"data": {}, "train": {"beta": NaN, "max_length": 8, "model": "m"}}', "key 'train.beta' must be a number > 0"),
    ({"data": {}, "train": {"beta": 0.1, "max_length": 8.5, "model": "m"}}, "key 'train.max_length' must be an integer"),
])
def test_open_run_checks_the_config(tmp_path, config, message):
    write(tmp_path / "preftune_config.json", config)
    with pytest.raises(PreftuneError, match=message.replace("(", r"\(").replace(".", r"\.")):
        open_run(tmp_path)


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "absent", "no such run folder"),
    (lambda p: write(p / "file", "x"), "is a file, not a run folder"),
    (lambda p: (p / "run.partial").mkdir() or p / "run.partial", "is an unfinished run"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "is not a preftune run folder (no preftune_config.json)"),
])
def test_open_run_says_what_a_folder_is_not(tmp_path, make, message):
    with pytest.raises(PreftuneError, match=message.replace("(", r"\(").replace(")", r"\)")):
        open_run(make(tmp_path))


def test_the_judge_summary_reads_damaged_values_as_gaps():
    judge = {"verdict_strength": 3, "decodings": {"greedy": {"tuned_vs_base": {"win_rate": "high", "n": 24,
                                                                                "ci95": [0.1, math.nan]}}}}
    summary = run_folder.judge_summary(judge)
    assert summary["judge_win_rate"] is None and summary["judge_n"] == 24 and summary["judge_win_rate_ci95"] is None
    assert summary["judge_verdict_strength"] is None and run_folder.judge_summary([1])["judge_n"] is None


# ---- damaged files × readers ---------------------------------------------------------------------

PAIRS = [{"prompt": "SUBREDDIT: r/test\nPOST: I went out and bought some bread.\nTL;DR:", "chosen": " Bought bread.",
          "rejected": " Went out for a long walk.", "post_id": f"p{i}", "source": "x"} for i in range(3)]


@pytest.fixture
def model_run(tmp_path, tiny_model):
    """A finished run folder with a real (tiny) model, so eval and push can read everything."""
    run = fake_run(tmp_path / "runs", 1e-6, 4, 0.6, name="run")
    for f in tiny_model.iterdir():
        shutil.copy2(f, run / f.name)
    config = json.loads((run / "preftune_config.json").read_text())
    config["train"]["model"] = str(tiny_model)
    write(run / "preftune_config.json", config)
    write(run / "eval_pairs.jsonl", "".join(json.dumps(p) + "\n" for p in PAIRS))
    return run


def read_with(reader: str, run: Path, capsys) -> tuple[int, str]:
    from preftune.cli import main

    capsys.readouterr()
    args = {"report": ["report", str(run.parent)],
            "push": ["push", str(run), "--dry-run", "--stage-dir", str(run.parent.parent / "stage"), "--namespace",
                     "me"],
            "eval": ["eval", str(run)]}[reader]
    code = main(args)
    captured = capsys.readouterr()
    card = run.parent.parent / "stage" / run.name / "README.md"
    shown = card.read_text() if reader == "push" and code == 0 else ""  # the card shows a push's gaps
    return code, captured.out + captured.err + shown


TORN = '{"step": 7, "loss": 0.6'
ERROR, GAP, OK = "error", "gap", "ok"
CASES = [
    # file, content, reader, outcome, text in the output (the warning or error names the file and key)
    ("preftune_config.json", "{", "report", ERROR, "preftune_config.json: not valid JSON"),
    ("preftune_config.json", "{", "push", ERROR, "preftune_config.json: not valid JSON"),
    ("preftune_config.json", "{", "eval", ERROR, "preftune_config.json: not valid JSON"),
    ("preftune_config.json", "null", "report", ERROR, "expected a JSON object, got null"),
    ("preftune_config.json", '{"data": {}, "train": []}', "push", ERROR, "key 'train' must be an object, got a list"),
    ("preftune_config.json", '{"data": {}, "train": {"beta": 0.1}}', "eval", ERROR, "key 'train.max_length' missing"),
    ("eval.json", "{", "report", GAP, "eval.json: not valid JSON"),
    ("eval.json", "{", "push", ERROR, "eval.json: not valid JSON"),
    ("eval.json", "{", "eval", OK, ""),  # eval writes a new one
    ("eval.json", "[0.6]", "report", GAP, "eval.json: expected a JSON object, got a list"),
    ("eval.json", '{"accuracy": "high"}', "report", GAP, "eval.json: key 'accuracy' must be a number or null"),
    ("eval.json", '{"accuracy": "high"}', "push", ERROR, "eval.json: key 'accuracy' must be a number or null"),
    ("eval.json", '{"accuracy": NaN, "n": 48}', "report", GAP, ""),
    ("eval.json", '{"accuracy": NaN, "n": 48}', "push", GAP, "| preference accuracy (implicit reward) | n/a (n=48) |"),
    ("eval.json", '{"chosen_longer": [1]}', "push", ERROR, "eval.json: key 'chosen_longer' must be an object"),
    ("metrics.json", "null", "report", GAP, "metrics.json: expected a JSON object, got null"),
    ("metrics.json", '{"final": [1]}', "report", GAP, "metrics.json: key 'final' must be an object"),
    ("metrics.json", '{"steps": "six"}', "push", ERROR, "metrics.json: key 'steps' must be a number or null"),
    ("metrics.json", '{"steps": NaN}', "push", GAP, "| optimizer steps | n/a |"),
    ("train_log.jsonl", '{"step": 1, "loss": 0.7}\n' + TORN, "report", GAP,
     "train_log.jsonl: 1 damaged line(s) left out of the curves (line 2: not valid JSON (torn"),
    ("train_log.jsonl", '[1]\nnull\n{"step": 2, "loss": NaN}\n', "push", GAP, "train_log.jsonl: 2 damaged line(s)"),
    ("eval_pairs.jsonl", '{"prompt": "P"', "eval", ERROR, "eval_pairs.jsonl:1: malformed JSON line"),
    ("eval_pairs.jsonl", "[1, 2]\n", "push", ERROR, "eval_pairs.jsonl:1: expected a JSON object (a pair), got list"),
    ("judge.json", "{", "report", GAP, "judge.json: not valid JSON"),
    ("judge.json", '{"decodings": [], "verdict": "x"}', "push", OK, ""),
]


@pytest.mark.parametrize("file, content, reader, outcome, text", CASES,
                         ids=[f"{c[2]}-{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_damaged_files_x_readers(model_run, capsys, file, content, reader, outcome, text):
    write(model_run / file, content)
    code, output = read_with(reader, model_run, capsys)
    assert "Traceback" not in output
    assert text in output
    if outcome == ERROR:
        assert code == 2 and output.count("preftune: error:") == 1
        assert f"{model_run / file}" in output  # the file, by its path
    else:
        assert code == 0, output
    if outcome == GAP and reader == "report":
        row = json.loads((model_run.parent / "leaderboard.json").read_text())[0]
        damaged = {"eval.json": "accuracy", "metrics.json": "steps" if "final" not in content else "final_loss",
                   "judge.json": "judge_win_rate", "train_log.jsonl": None}[file]
        assert damaged is None or row[damaged] is None
        if file == "eval.json":
            assert row["rank"] is None and "–  run" in output  # listed, unranked, its cells "–"
    if reader == "eval" and outcome == OK:
        assert read_eval(model_run / "eval.json")["n"] == len(PAIRS)


def test_a_run_without_its_model_is_not_finished(tmp_path):
    run = open_run(fake_run(tmp_path, 1e-6, 4, 0.6))
    with pytest.raises(PreftuneError, match=r"is not a finished run folder: it lacks config.json, model weights "
                                            r"\(\*.safetensors\), a tokenizer"):
        run.require_model()


def test_eval_on_test_of_a_run_from_before_the_test_split(model_run, capsys):
    from preftune.cli import main

    assert main(["eval", str(model_run), "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "has no test_pairs.jsonl: it was trained before preftune kept a test split" in err
    assert not (model_run / "test.json").exists()


# ---- folders of every kind and age ---------------------------------------------------------------


def test_folders_of_every_kind_and_age_are_told_apart(tmp_path):
    """A DPO run from before kinds (no "kind", no chain), today's DPO run, an SFT run as `sft` wrote it
    before the lifecycle, today's RM folder, and an RM folder from before kinds (rm_config.json alone) beside
    one another: `report` ranks the DPO runs only, the RM's settings are found in either shape, and a new run
    from the old SFT folder extends its chain."""
    old_dpo = fake_run(tmp_path, 1e-6, 4, 0.6)
    assert "kind" not in json.loads((old_dpo / "preftune_config.json").read_text())
    new_dpo = fake_run(tmp_path, 2e-6, 4, 0.6)
    config = json.loads((new_dpo / "preftune_config.json").read_text())
    write(new_dpo / "preftune_config.json", {**config, "kind": "dpo", "world_size": 1})
    old_sft = tmp_path / "sft_model_lr1e-05_bs8_epoch1"
    new_rm, old_rm = tmp_path / "reward_model", tmp_path / "old_reward_model"
    for folder in (old_sft, new_rm, old_rm):
        folder.mkdir()
    write(old_sft / "preftune_config.json", {
        "kind": "sft", "run_name": old_sft.name, "data": {"dataset": "tldr-sample"}, "sft": {"lr": 1e-5},
        "chain": [{"kind": "base", "model": "m"}, {"kind": "sft", "run": old_sft.name, "path": "/moved/away"}]})
    write(new_rm / "preftune_config.json", {"kind": "rm", "data": {}, "rm": {}, "max_length": 8})
    write(old_rm / "rm_config.json", {"data": {}, "rm": {}, "max_length": 8})

    assert run_folder.run_dirs(tmp_path) == ([old_dpo, new_dpo], [])
    assert run_folder.is_finished_run(old_sft) and run_folder.is_finished_run(new_rm)
    assert not run_folder.is_finished_run(old_rm)  # no preftune_config.json: only `push`/`judge` read it, as an RM
    assert run_folder.reward_model_config(new_rm) == new_rm / "preftune_config.json"
    assert run_folder.reward_model_config(old_rm) == old_rm / "rm_config.json"
    assert run_folder.reward_model_config(old_dpo) is None and run_folder.reward_model_config(old_sft) is None
    chain = run_folder.model_chain(str(old_sft))
    assert [e["kind"] for e in chain] == ["base", "sft"] and chain[-1]["path"] == str(old_sft.resolve())
    assert run_folder.chain_of(json.loads((old_dpo / "preftune_config.json").read_text()), old_dpo.name) == [
        {"kind": "base", "model": "tiny"}, {"kind": "dpo", "run": old_dpo.name}]
