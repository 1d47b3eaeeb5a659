"""`preftune sweep`: settings from YAML and flags, run names, bad settings, and a sweep of a tiny model
killed with SIGKILL in the middle of a run that a re-run completes — finished runs untouched, the
interrupted run resumed from its checkpoint to the same weights as an uninterrupted run."""

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

from preftune.cli import build_parser, main
from preftune.config import DataConfig, SweepConfig, TrainConfig
from preftune.errors import PreftuneError
from preftune.sweep.grid import (
    build_configs,
    expand,
    run_state,
    settings_from_args,
    sweep_lock,
)

EXAMPLE = REPO / "examples" / "sweep.yaml"


def parse(*argv: str):
    return build_configs(settings_from_args(build_parser().parse_args(["sweep", *argv])))


def test_example_config_parses():
    data, base, grid = parse("--config", str(EXAMPLE))
    runs = expand(grid, base)
    assert [r.name for r in runs] == ["dpo_model_lr1e-06_bs4_epoch1", "dpo_model_lr1e-06_bs8_epoch1",
                                      "dpo_model_lr5e-06_bs4_epoch1", "dpo_model_lr5e-06_bs8_epoch1"]
    assert (runs[3].cfg.lr, runs[3].cfg.batch_size, runs[3].cfg.epochs) == (5e-6, 8, 1)
    assert (base.output_dir, base.max_pairs, base.max_eval_pairs, base.save_steps) == ("runs/sweep", 48, 48, 2)
    assert (data.dataset, data.fraction, data.seed) == ("tldr-sample", 1.0, 42)


def test_flags_make_the_grid_and_win_over_the_file(tmp_path):
    _, base, grid = parse("--lr", "1e-6,5e-6", "--batch-size", "4,8", "--epochs", "1,2")
    assert (grid.lr, grid.batch_size, grid.epochs) == ((1e-6, 5e-6), (4, 8), (1, 2))
    assert len({r.name for r in expand(grid, base)}) == 8
    config = tmp_path / "s.yaml"
    config.write_text("lr: [1.0e-6, 2e-6]\nmax_pairs: 16\nseed: 7\n")  # 2e-6: a string to YAML 1.1
    data, base, grid = parse("--config", str(config), "--max-pairs", "8", "--batch-size", "2")
    assert (grid.lr, grid.batch_size, base.max_pairs, data.seed) == ((1e-6, 2e-6), (2,), 8, 7)
    data, _, _ = parse("--config", str(config), "--seed", "42")  # a flag equal to its default still wins
    assert data.seed == 42


def test_suffixes_only_when_beta_or_loss_vary():
    base = TrainConfig()
    assert [r.name for r in expand(SweepConfig(lr=(1e-6,)), base)] == ["dpo_model_lr1e-06_bs4_epoch1"]
    assert [r.name for r in expand(SweepConfig(beta=(0.1, 0.5)), base)] == [
        "dpo_model_lr5e-06_bs4_epoch1_beta0.1", "dpo_model_lr5e-06_bs4_epoch1_beta0.5"]
    assert [r.name for r in expand(SweepConfig(loss=("sigmoid", "ipo")), base)] == [
        "dpo_model_lr5e-06_bs4_epoch1_loss-sigmoid", "dpo_model_lr5e-06_bs4_epoch1_loss-ipo"]
    runs = expand(SweepConfig(lr=(1e-6, 2e-6), beta=(0.1, 0.5), loss=("sigmoid", "ipo")), base)
    assert len({r.name for r in runs}) == 8
    assert {(r.cfg.beta, r.cfg.loss) for r in runs} == {(b, l) for b in (0.1, 0.5) for l in ("sigmoid", "ipo")}


def test_loss_setting_axes_multiply_only_their_losss_runs_and_name_them_when_they_vary():
    base = TrainConfig()
    runs = expand(SweepConfig(loss=("sigmoid", "rdpo"), rdpo_alpha=(0.01, 0.05)), base)
    assert [r.name for r in runs] == ["dpo_model_lr5e-06_bs4_epoch1_loss-sigmoid",
                                      "dpo_model_lr5e-06_bs4_epoch1_loss-rdpo_rdpo-alpha0.01",
                                      "dpo_model_lr5e-06_bs4_epoch1_loss-rdpo_rdpo-alpha0.05"]
    assert [(r.cfg.loss, r.cfg.rdpo_alpha) for r in runs] == [("sigmoid", 0.01), ("rdpo", 0.01), ("rdpo", 0.05)]
    runs = expand(SweepConfig(loss=("ld_dpo",), ld_alpha=(0.5,), nll_weight=(0.0, 1.0)), base)
    assert [(r.name, r.cfg.loss, r.cfg.ld_alpha, r.cfg.nll_weight) for r in runs] == [
        ("dpo_model_lr5e-06_bs4_epoch1_nll0.0", "ld_dpo", 0.5, 0.0),
        ("dpo_model_lr5e-06_bs4_epoch1_nll1.0", "ld_dpo", 0.5, 1.0)]
    runs = expand(SweepConfig(loss=("simpo",), simpo_gamma=(0.5, 1.0), beta=(2.0, 2.5)), base)
    assert [r.name for r in runs][:2] == ["dpo_model_lr5e-06_bs4_epoch1_beta2.0_simpo-gamma0.5",
                                          "dpo_model_lr5e-06_bs4_epoch1_beta2.0_simpo-gamma1.0"]
    assert len({r.name for r in runs}) == 4


def test_a_loss_setting_axis_without_its_loss_is_refused():
    with pytest.raises(PreftuneError, match="--rdpo-alpha applies to --loss rdpo only, which the grid's --loss "
                                            r"\(sigmoid, ipo\) does not include"):
        SweepConfig(loss=("sigmoid", "ipo"), rdpo_alpha=(0.05,))


@pytest.mark.parametrize("text, message", [
    ("lrr: [1e-6]\n", "s.yaml:1: field 'lrr': unknown setting; did you mean 'lr'?"),
    ("seed: 1\nmax_pairs: many\n", "s.yaml:2: field 'max_pairs': expected int, got 'many'"),
    ("epochs: [1, 2.5]\n", "s.yaml:1: field 'epochs': expected int, got 2.5"),
    ("overwrite: true\n", "s.yaml:1: field 'overwrite': unknown setting"),
    ("lr: [1e-6, 1.0e-6]\n", "s.yaml:1: field 'lr': sweep: --lr lists a value twice"),
    ("lr: [-1e-6]\n", "s.yaml:1: field 'lr': must be > 0, got -1e-06"),
    ("loss: [sigmoid, nope]\n", "s.yaml:1: field 'loss': unknown value 'nope'; choose one of: sigmoid, hinge, ipo"),
    ("engine: turbo\n", "s.yaml:1: field 'engine': unknown value 'turbo'; choose one of: fast, trl"),
    ("engine: trl\nloss: [sigmoid, simpo]\n", "s.yaml:2: field 'loss': --loss simpo is not available with --engine trl"),
    ("ld_alpha: [0.5, 1.5]\nloss: [ld_dpo]\n", "s.yaml:1: field 'ld_alpha': must be in [0, 1], got 1.5"),
    ("format: csvish\n", "s.yaml:1: field 'format': unknown value 'csvish'; choose one of: auto, summarize_from_feedback"),
    ("seed: -1\n", "s.yaml:1: field 'seed': must be in [0, 4294967296), got -1"),
    ("eval_fraction: 0.5\ntest_fraction: 0.5\n", "s.yaml:1: field 'eval_fraction': --eval-fraction + --test-fraction must be < 1"),
    ("logging_steps: 0\n", "s.yaml:1: field 'logging_steps': must be > 0, got 0"),
    ("beta: .nan\n", "s.yaml:1: field 'beta': must be a finite number, got nan"),
    ("column_map: chosen\n", "s.yaml:1: field 'column_map': --column-map: expected NAME=COLUMN pairs separated by commas, got 'chosen'"),
    ("- lr\n", "s.yaml:1: expected a mapping of settings"),
    ("lr: []\n", "s.yaml:1: field 'lr': sweep: --lr needs at least one value"),
    ("seed: 1\nrdpo_alpha: 0.1\n", "s.yaml:2: field 'rdpo_alpha': sweep: --rdpo-alpha applies to --loss rdpo only"),
    ("lr: 1.0e-6\nlr: 2.0e-6\n", "s.yaml:2: field 'lr': given twice (first on line 1)"),
    ("lr: [1e-6\n", "s.yaml: not valid YAML"),
])
def test_bad_settings_fail_before_any_work(tmp_path, capsys, text, message):
    config = tmp_path / "s.yaml"
    config.write_text(text)
    assert main(["sweep", "--config", str(config), "--output-dir", str(tmp_path / "runs"),  # were it accepted,
                 "--dataset", str(tmp_path / "none.jsonl"), "--model", str(tmp_path / "no-model")]) == 2  # no training
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_a_rule_broken_by_a_flag_names_the_flag_not_the_file(tmp_path, capsys):
    config = tmp_path / "s.yaml"
    config.write_text("seed: 1\nloss: [sigmoid]\n")
    assert main(["sweep", "--config", str(config), "--rdpo-alpha", "0.1", "--output-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "preftune: error: sweep: --rdpo-alpha applies to --loss rdpo only" in err and "s.yaml" not in err


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "4,x"], "--batch-size: expected int, got 'x'"),
    (["--loss", "sigmoid,nope"], "unknown --loss 'nope'; choose one of: sigmoid, hinge, ipo"),
    (["--lr", "1e-6,-1"], "--lr must be > 0, got -1.0"),
    (["--epochs", ","], "sweep: --epochs needs at least one value"),
    (["--engine", "turbo"], "argument --engine: invalid choice: 'turbo'"),
    (["--save-steps", "-2"], "--save-steps must be ≥ 0, got -2"),
])
def test_bad_flags(capsys, tmp_path, argv, message):
    assert main(["sweep", *argv, "--output-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("where, message", [
    (lambda tmp: str(write_file(tmp / "f")), "--output-dir: {tmp}/f is a file, not a folder; pass another folder"),
    (lambda tmp: "/dev/null", "--output-dir: /dev/null is a file, not a folder; pass another folder"),
    (lambda tmp: str(write_file(tmp / "f") / "runs"),
     "--output-dir: {tmp}/f is a file, not a folder (it writes to {tmp}/f/runs); pass another folder"),
    (lambda tmp: " ", "--output-dir is empty"),
])
def test_an_output_dir_that_cannot_hold_runs_is_refused_before_any_work(capsys, tmp_path, where, message):
    assert main(["sweep", "--lr", "1e-6", "--output-dir", where(tmp_path)]) == 2
    assert capsys.readouterr().err == f"preftune: error: {message.format(tmp=tmp_path)}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["f"])


def write_file(path: Path) -> Path:
    path.write_text("not a folder")
    return path


def test_help_lists_the_grid_and_its_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        main(["sweep", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert done.value.code == 0
    assert "DPO loss variants to try; run names get _loss-{name} when there are several. (default: sigmoid); " \
           "from: sigmoid, hinge, ipo" in out
    assert "Learning rates to try. (default: 5e-06)" in out and "{fast,trl}" in out


LOCKER = """
import sys
from pathlib import Path
from preftune.errors import PreftuneError
from preftune.sweep.grid import sweep_lock
try:
    with sweep_lock(Path(sys.argv[1])):
        print("locked")
except PreftuneError as e:
    print(e)
"""


def test_lock_keeps_a_second_sweep_out(tmp_path):
    def other_process() -> str:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        return subprocess.run([sys.executable, "-c", LOCKER, str(tmp_path)], capture_output=True, text=True,
                              env=env, timeout=60).stdout

    with sweep_lock(tmp_path):
        with pytest.raises(PreftuneError, match="another process is writing .* \\(`preftune sweep` holds"):
            with sweep_lock(tmp_path):
                pass
        assert f"another process is writing {tmp_path} (`preftune sweep` holds" in other_process()
    assert other_process() == "locked\n"  # released at the end of the first


# ---- killed with SIGKILL and re-run, with each engine ------------------------------------------------

# Runs `preftune sweep`, SIGKILLing itself right after the per-step log line KILL_AT="RUN:STEP" is written
# (both engines write it through engines.append_log): with --save-steps 2 and STEP 3 that is after
# checkpoint-2 and before checkpoint-4.
DRIVER = """
import os, signal, sys
import preftune.dpo.engines as engines
import preftune.dpo.engines.fast, preftune.dpo.engines.trl
from preftune.cli import main

run, step = os.environ.get("KILL_AT", ":0").split(":")
append_log = engines.append_log

def append_then_die(path, record):
    append_log(path, record)
    if run and run in str(path) and record.get("step") == int(step):
        os.kill(os.getpid(), signal.SIGKILL)

preftune.dpo.engines.fast.append_log = preftune.dpo.engines.trl.append_log = append_then_die
sys.exit(main(sys.argv[1:]))
"""
RUNS = ["dpo_model_lr0.01_bs2_epoch1", "dpo_model_lr0.02_bs2_epoch1", "dpo_model_lr0.03_bs2_epoch1"]
DATA = dict(fraction=0.03, seed=3)
TRAIN = dict(batch_size=2, epochs=1, max_pairs=8, max_eval_pairs=4, max_length=192, gradient_checkpointing=False,
             save_steps=2)  # 8 pairs / 2 = 4 steps per run


def sweep_argv(model: Path, root: Path, engine: str) -> list[str]:
    return ["sweep", "--model", str(model), "--lr", "0.01,0.02,0.03", "--batch-size", "2", "--max-pairs", "8",
            "--max-eval-pairs", "4", "--max-length", "192", "--fraction", "0.03", "--seed", "3",
            "--no-gradient-checkpointing", "--engine", engine, "--save-steps", "2", "--output-dir", str(root)]


def snapshot(run_dir: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(run_dir)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in run_dir.rglob("*")}


@pytest.fixture(scope="module", params=["fast", "trl"])
def killed_then_rerun(request, tiny_model, tmp_path_factory):
    engine = request.param
    root = tmp_path_factory.mktemp(f"sweep-{engine}") / "runs"
    argv = [sys.executable, "-c", DRIVER, *sweep_argv(tiny_model, root, engine)]
    env = {**os.environ, "KILL_AT": f"{RUNS[1]}:3", "OMP_NUM_THREADS": "1",
           "PREFTUNE_CACHE": str(root.parent / "cache")}
    killed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    after_kill = {
        "returncode": killed.returncode,
        "entries": sorted(p.name for p in root.iterdir()),
        "finished": snapshot(root / RUNS[0]),
        "partial_log_steps": [json.loads(line)["step"] for line in
                              (root / f"{RUNS[1]}.partial" / "train_log.jsonl").read_text().splitlines()],
        "checkpoints": sorted(p.name for p in (root / f"{RUNS[1]}.partial" / "checkpoints").iterdir()),
    }
    env.pop("KILL_AT")
    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return engine, root, after_kill, rerun.stdout


def test_sigkill_leaves_finished_runs_whole_and_the_interrupted_one_partial(killed_then_rerun):
    _, _, after_kill, _ = killed_then_rerun
    assert after_kill["returncode"] == -signal.SIGKILL
    assert RUNS[0] in after_kill["entries"] and f"{RUNS[1]}.partial" in after_kill["entries"]
    assert RUNS[1] not in after_kill["entries"] and not any(e.startswith(RUNS[2]) for e in after_kill["entries"])
    assert "eval.json" in after_kill["finished"] and "checkpoints" not in after_kill["finished"]
    assert after_kill["partial_log_steps"] == [1, 2, 3]  # step 3 was logged, then the kill
    assert "checkpoint-2" in after_kill["checkpoints"] and "checkpoint-4" not in after_kill["checkpoints"]


def test_rerun_completes_every_run_without_redoing_finished_ones(killed_then_rerun):
    _, root, after_kill, out = killed_then_rerun
    assert re.search(rf"{RUNS[0]} +finished: skipped\n", out)
    assert re.search(rf"{RUNS[1]} +resume from checkpoint-2\n", out)
    assert re.search(rf"{RUNS[2]} +new\n", out)
    assert f"resume: {RUNS[1]} from checkpoints/checkpoint-2 (step 2)" in out
    assert snapshot(root / RUNS[0]) == after_kill["finished"]  # same files, inodes and mtimes: not redone
    for name in RUNS:
        run = root / name
        assert (run / "eval.json").is_file() and (run / "model.safetensors").is_file()
        assert not (run / "checkpoints").exists() and not run.with_name(name + ".partial").exists()
        log = [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]
        assert log == [1, 2, 3, 4], name  # the resumed run's step 3 is logged once, not twice
    leaderboard = json.loads((root / "leaderboard.json").read_text())
    assert sorted(r["run"] for r in leaderboard) == RUNS and all(r["accuracy"] is not None for r in leaderboard)
    assert (root / "report.html").is_file() and "sweep: 3/3 runs finished" in out


def test_resumed_run_matches_an_uninterrupted_one(killed_then_rerun, tiny_model, tmp_path, monkeypatch):
    from preftune.runs.dpo import train

    engine, root, _, _ = killed_then_rerun
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(output_dir=str(tmp_path), model=str(tiny_model), lr=0.02, engine=engine, **TRAIN)
    straight = train(DataConfig(**DATA), replace(cfg, evaluate=False))
    resumed, reference = load_file(root / RUNS[1] / "model.safetensors"), load_file(straight / "model.safetensors")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in resumed)
    logged = [json.loads(line)["loss"] for line in (root / RUNS[1] / "train_log.jsonl").read_text().splitlines()]
    assert logged == [json.loads(line)["loss"] for line in (straight / "train_log.jsonl").read_text().splitlines()]


def test_third_run_trains_nothing(killed_then_rerun, tiny_model, capsys):
    engine, root, _, _ = killed_then_rerun
    before = {name: snapshot(root / name) for name in RUNS}
    assert main(sweep_argv(tiny_model, root, engine)) == 0
    out = capsys.readouterr().out
    assert "3 finished (skipped), 0 to train" in out and "train: " not in out
    assert {name: snapshot(root / name) for name in RUNS} == before


def test_a_finished_run_with_other_settings_is_an_error(killed_then_rerun, tiny_model, capsys):
    engine, root, _, _ = killed_then_rerun
    argv = sweep_argv(tiny_model, root, engine)
    argv[argv.index("--max-pairs") + 1] = "6"
    assert main(argv) == 2
    assert f"{root / RUNS[0]} was trained with other settings (max_pairs: 8 there, 6 now)" in capsys.readouterr().err


def test_partial_without_checkpoint_restarts(tmp_path, tiny_model):
    from preftune.sweep.grid import PlannedRun

    cfg = TrainConfig(output_dir=str(tmp_path), model=str(tiny_model), lr=0.02, **TRAIN)
    (tmp_path / (cfg.run_name + ".partial")).mkdir()
    assert run_state(tmp_path, PlannedRun(cfg.run_name, cfg), DataConfig(**DATA)) == "restart"
    assert run_state(tmp_path, PlannedRun("other", cfg), DataConfig(**DATA)) == "new"
