"""`preftune push --dry-run` never deletes or writes inside a run folder: every file of the run (and of
its ROOT) hashes the same before and after, for stage folders that are refused before any work (the
run itself, inside it, its parent, an ancestor, a file, /dev/null, empty, unwritable, someone else's
folder) and for the ones that work. `--best N` never picks a run without a valid ranking metric.
In-process and offline (--namespace: no whoami); the real Hub client is exercised in test_hub.py."""

import hashlib
import json
import math
import os
import shutil
import sys
from pathlib import Path

import pytest
from test_report import fake_eval
from test_run_folder import model_run  # noqa: F401 - the fixture

from preftune.cli import main


def hashes(folder: Path) -> dict[str, str]:
    """Every file under folder (symlinks as their target text), by relative path."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def dry_run(target: Path, *args: str) -> list[str]:
    return ["push", str(target), "--dry-run", "--namespace", "me", *args]


def stage(run: Path, where) -> str:
    return str(where(run)) if callable(where) else where


REFUSED = [
    ("the run's parent (the issue's case)", lambda r: r.parent, "is a parent of the run folder"),
    ("the run itself", lambda r: r, "is the run folder"),
    ("inside the run", lambda r: r / "stage", "is inside the run folder"),
    ("an ancestor of the run", lambda r: r.parent.parent, "is a parent of the run folder"),
    ("a symlink to the run's parent", lambda r: link(r.parent.parent / "alias", r.parent), "is a parent of the run"),
    ("a file", lambda r: write(r.parent.parent / "a-file", "x"), "is a file"),
    ("/dev/null", "/dev/null", "is not a folder"),
    ("empty", "", "--stage-dir is empty"),
    ("someone else's folder", lambda r: write(r.parent.parent / "mine" / r.name / "keep.txt", "mine").parent.parent,
     "exists and was not staged by `preftune push --dry-run`"),
    ("a symlink named like the run", lambda r: link(r.parent.parent / "st" / r.name, r).parent,
     "exists and was not staged by `preftune push --dry-run`"),
]


def link(path: Path, target: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target, target_is_directory=True)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("case, where, message", REFUSED, ids=[c[0] for c in REFUSED])
def test_a_dry_run_never_deletes_or_writes_inside_a_run(model_run, capsys, case, where, message):  # noqa: F811
    root = model_run.parent
    everything = root.parent
    target = stage(model_run, where)
    before, around = hashes(root), hashes(everything)
    assert main(dry_run(model_run, "--stage-dir", target)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("preftune: error:") == 1 and "Traceback" not in err
    assert hashes(root) == before
    assert hashes(everything) == around  # refused before any work: nothing written anywhere


@pytest.mark.parametrize("case, where", [
    ("read-only folder", lambda r: chmod(r.parent.parent / "ro", 0o555)),
    ("under a filesystem that takes no folders", "/sys/preftune-stage"),
])
def test_an_unwritable_stage_dir_is_refused(model_run, capsys, case, where):  # noqa: F811
    if case == "read-only folder" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; the /sys case covers root")
    if case.startswith("under") and not sys.platform.startswith("linux"):
        pytest.skip("/sys is Linux's")
    before = hashes(model_run.parent)
    assert main(dry_run(model_run, "--stage-dir", stage(model_run, where))) == 2
    assert "cannot be written" in capsys.readouterr().err
    assert hashes(model_run.parent) == before


def chmod(path: Path, mode: int) -> Path:
    path.mkdir()
    path.chmod(mode)
    return path


def test_best_refuses_a_stage_dir_that_is_root(model_run, capsys):  # noqa: F811
    root = model_run.parent
    before = hashes(root)
    assert main(dry_run(root, "--best", "1", "--stage-dir", str(root))) == 2
    assert f"is a parent of the run folder {model_run}" in capsys.readouterr().err
    assert hashes(root) == before


def test_dry_runs_that_work_leave_the_run_untouched(model_run, tmp_path, capsys):  # noqa: F811
    """A fresh stage folder, the same one again (preftune's own staging is replaced), the default
    ROOT/hub_upload, and a run that holds its own README.md (never written through a hard link)."""
    (model_run / "README.md").write_text("the run's own notes\n")
    (model_run / "preferences.jsonl").write_text('{"votes": "people\'s input"}\n')  # published only by `data push`
    before = hashes(model_run)
    staged = tmp_path / "stage"
    for args in (["--stage-dir", str(staged)], ["--stage-dir", str(staged)], []):
        assert main(dry_run(model_run, *args)) == 0, capsys.readouterr().err
        assert hashes(model_run) == before
    assert (staged / ".preftune-stage").is_file() and (staged / model_run.name / "README.md").read_text().startswith("---")
    assert (model_run.parent / "hub_upload" / model_run.name / "model.safetensors").is_file()
    assert (model_run / "README.md").read_text() == "the run's own notes\n"
    assert not (staged / model_run.name / "preferences.jsonl").exists()
    assert "preferences.jsonl (the demo's votes) is not uploaded with the model" in capsys.readouterr().out


def nan_run(root: Path, name: str, accuracy: float) -> Path:
    run = root / name
    shutil.copytree(root / "run", run)
    (run / "eval.json").write_text(json.dumps({**fake_eval(0.99, balanced=0.95), "accuracy": accuracy}))
    return run


def test_best_never_picks_a_run_without_a_valid_ranking(model_run, capsys):  # noqa: F811
    root = model_run.parent
    nan_run(root, "diverged", math.nan)  # a bare NaN: higher balanced accuracy, but no valid ranking
    (root / "old").mkdir()
    shutil.copytree(model_run, root / "old", dirs_exist_ok=True)
    old = json.loads((root / "run" / "eval.json").read_text())
    (root / "old" / "eval.json").write_text(json.dumps({k: v for k, v in old.items()
                                                         if k not in ("length_balanced_accuracy", "chosen_longer")}))
    assert main(dry_run(root, "--best", "3")) == 0
    out = capsys.readouterr().out
    assert "→ me/run:" in out and "diverged" not in out.split("warning")[0] and "→ me/old" not in out
    assert "only 1 run(s) under" in out and "have a valid validation length_balanced_accuracy; pushing 1, not 3" in out
    assert sorted(p.name for p in (root / "hub_upload").iterdir()) == ["run"]
    assert main(dry_run(root, "--best", "2", "--rank-by", "accuracy")) == 0  # the old run has accuracy
    assert "→ me/old:" in capsys.readouterr().out


def test_best_with_no_valid_ranking_is_an_error(model_run, capsys):  # noqa: F811
    (model_run / "eval.json").write_text('{"accuracy": NaN, "mean_margin": NaN}')
    assert main(dry_run(model_run.parent, "--best", "1")) == 2
    assert "holds no runs with a valid validation length_balanced_accuracy to rank" in capsys.readouterr().err


def test_best_refuses_runs_scored_on_different_data(model_run, capsys):  # noqa: F811
    root = model_run.parent
    other = nan_run(root, "other", 0.99)  # a better number, on other data: not comparable
    config = json.loads((other / "preftune_config.json").read_text())
    config["data"]["seed"] = config["data"].get("seed", 42) + 1
    (other / "preftune_config.json").write_text(json.dumps(config))
    before = hashes(root)
    assert main(dry_run(root, "--best", "1")) == 2
    err = capsys.readouterr().err
    assert "holds runs scored on different validation data (2 groups:" in err and err.count("preftune: error:") == 1
    assert "--best cannot rank them against each other" in err
    assert hashes(root) == before
