"""--report-to: tiny runs of both engines read back with the trackers' own readers — TensorBoard's
EventAccumulator, and Trackio's local store from a real `preftune sweep` — the same keys and values as
train_log.jsonl, the settings as hyperparameters, the final eval metrics; a missing tracker package
is one line before any work."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from preftune.cli import main
from preftune.config import DataConfig, RewardConfig, TrainConfig
from preftune.dpo.engines import LOG_KEYS
from preftune.runs import trackers
from preftune.runs.dpo import train

DATA = DataConfig(fraction=0.03, seed=3)


def tiny_cfg(model, root, **kw) -> TrainConfig:
    base = dict(output_dir=str(root), model=str(model), lr=1e-2, batch_size=4, max_length=192, max_pairs=8,
                max_eval_pairs=4, gradient_checkpointing=False)
    return TrainConfig(**{**base, **kw})


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").open()]


def tensorboard_events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return events


def tensorboard_hparams(folder: Path) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = tensorboard_events(folder).PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.number_value if v.WhichOneof("kind") == "number_value" else v.string_value
            for k, v in start.hparams.items()}


@pytest.mark.parametrize("engine", ["fast", "trl"])
def test_tensorboard_holds_the_step_log_the_settings_and_the_eval_metrics(engine, tiny_model, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    cfg = tiny_cfg(tiny_model, tmp_path / "runs", engine=engine, report_to="tensorboard")
    run = train(DATA, cfg)  # train.run logs the eval metrics to the tracker after evaluating
    metrics = json.loads((run / "eval.json").read_text())
    steps = json.loads((run / "metrics.json").read_text())["steps"]

    folder = tmp_path / "runs" / "tracking" / "tensorboard" / run.name
    events = tensorboard_events(folder)
    for key in set(LOG_KEYS) - {"step"}:  # both engines: train/<every train_log.jsonl key>, at its step
        # (TRL logs the epoch once more in its end-of-training summary: same step, same value)
        scalars = {e.step: e.value for e in events.Scalars(f"train/{key}")}
        assert scalars == pytest.approx({r["step"]: r[key] for r in read_log(run)}, rel=1e-6)  # float32 in TB
    assert [(e.step, e.value) for e in events.Scalars("eval/accuracy")] == [(steps, pytest.approx(metrics["accuracy"]))]
    assert {f"eval/{k}" for k, v in metrics.items() if isinstance(v, (int, float))} <= set(events.Tags()["scalars"])

    hparams = tensorboard_hparams(folder / "hparams")
    assert (hparams["lr"], hparams["engine"], hparams["seed"], hparams["train_pairs"]) == (
        0.01, engine, 3, json.loads((run / "metrics.json").read_text())["train_pairs"])
    record = json.loads((run / trackers.RECORD_FILE).read_text())
    assert (record["report_to"], record["project"], record["run"]) == ("tensorboard", "runs", run.name)


def test_a_run_started_over_replaces_its_tensorboard_folder(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    cfg = tiny_cfg(tiny_model, tmp_path / "runs", report_to="tensorboard", evaluate=False)
    run = train(DATA, cfg)
    train(DATA, tiny_cfg(tiny_model, tmp_path / "runs", report_to="tensorboard", evaluate=False, overwrite=True))
    events = tensorboard_events(tmp_path / "runs" / "tracking" / "tensorboard" / run.name)
    assert [e.step for e in events.Scalars("train/loss")] == [r["step"] for r in read_log(run)]  # not twice


def test_rm_train_logs_its_steps_eval_metrics_and_settings(tiny_model, tmp_path):
    """`rm train --report-to tensorboard`: its loop logs through accelerate's tracking API as the fast
    engine does: train/<key> of every train_log.jsonl line at its step, eval/<metric> of rm_eval.json at
    the last step, the settings as hyperparameters."""
    from preftune.runs.rm import train_reward_model

    cfg = RewardConfig(output_dir=str(tmp_path), model=str(tiny_model), lr=1e-2, batch_size=2, max_length=192,
                       max_pairs=8, max_eval_pairs=4, logging_steps=1, debias="none", report_to="tensorboard")
    folder = train_reward_model(DATA, cfg)
    log, board = read_log(folder), tmp_path / "tracking" / "tensorboard" / "reward_model"
    events = tensorboard_events(board)
    assert len(log) == 4  # 8 pairs (less any that do not fit), 2 per step
    for key in ("loss", "accuracy", "margin", "grad_norm", "learning_rate"):
        scalars = {e.step: e.value for e in events.Scalars(f"train/{key}")}
        assert scalars == pytest.approx({r["step"]: r[key] for r in log}, rel=1e-6, abs=1e-9)  # float32 in TB
    metrics, steps = json.loads((folder / "rm_eval.json").read_text()), len(log)
    assert [(e.step, e.value) for e in events.Scalars("eval/accuracy")] == [(steps, pytest.approx(metrics["accuracy"]))]
    assert [e.value for e in events.Scalars("eval/chosen_longer/n")] == [metrics["chosen_longer"]["n"]]
    hparams = tensorboard_hparams(board / "hparams")
    assert (hparams["lr"], hparams["name"], hparams["seed"], hparams["debias"]) == (0.01, "reward_model", 3, "none")


def test_reporting_continues_the_tracker_run_of_a_resumed_training(tmp_path, monkeypatch):
    """A resumed run keeps its tracker run (W&B id, TensorBoard folder, purge of the steps after the
    checkpoint); a fresh one, or one that tracked elsewhere, starts its own."""
    cfg = TrainConfig(output_dir=str(tmp_path), report_to="tensorboard")
    run_dir = tmp_path / "r.partial"
    run_dir.mkdir()
    stale = tmp_path / "tracking" / "tensorboard" / "r" / "events.out.tfevents.old"
    stale.parent.mkdir(parents=True)
    stale.touch()
    with trackers.reporting(cfg, run_dir, "r", {"lr": 1.0}, resumed_step=4) as tracking:  # no record: fresh
        assert tracking.resumed_step is None and not stale.exists()
        assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tracking" / "tensorboard" / "r")
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ  # only for the length of the training
    stale.parent.mkdir(parents=True)
    stale.touch()
    with trackers.reporting(cfg, run_dir, "r", {"lr": 1.0}, resumed_step=4) as tracking:  # its record: resumed
        assert stale.exists()
        assert tracking.init_trackers_args()["init_kwargs"] == {"tensorboard": {"purge_step": 5}}

    trackio = TrainConfig(output_dir=str(tmp_path), report_to="trackio", tracker_project="p")
    with trackers.reporting(trackio, run_dir, "r", {}, resumed_step=None) as fresh:
        assert fresh.init_trackers_args()["init_kwargs"]["trackio"]["resume"] == "never"
    with trackers.reporting(trackio, run_dir, "r", {}, resumed_step=2) as resumed:
        assert resumed.init_trackers_args()["init_kwargs"]["trackio"]["resume"] == "allow"

    monkeypatch.setattr(trackers, "require", lambda name: None)  # W&B's bookkeeping needs no wandb package
    wandb = TrainConfig(output_dir=str(tmp_path), report_to="wandb", tracker_project="p")
    with trackers.reporting(wandb, run_dir, "r", {}, resumed_step=None) as first:
        assert os.environ["WANDB_RUN_ID"] == first.run_id and os.environ["WANDB_PROJECT"] == "p"
    with trackers.reporting(wandb, run_dir, "r", {}, resumed_step=2) as again:
        assert again.run_id == first.run_id
    with trackers.reporting(wandb, run_dir, "r", {}, resumed_step=None) as other:
        assert other.run_id != first.run_id


@pytest.mark.parametrize("tracker", ["wandb", "mlflow"])
@pytest.mark.parametrize("verb", [["train"], ["sweep", "--lr", "1e-6"], ["rm", "train"]])
def test_a_missing_tracker_package_is_one_line_before_any_work(tracker, verb, tmp_path, capsys):
    if importlib.util.find_spec(tracker) is not None:
        pytest.skip(f"{tracker} is installed here")
    assert main([*verb, "--report-to", tracker, "--output-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err == (f"preftune: error: --report-to {tracker} needs the {tracker} package, which is not installed: "
                   f"run `pip install {tracker}`\n")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("verb", [["train"], ["sweep"]])
def test_a_missing_tracker_package_named_in_a_config_file(verb, tmp_path, capsys):
    if importlib.util.find_spec("mlflow") is not None:
        pytest.skip("mlflow is installed here")
    (tmp_path / "c.yaml").write_text(f"report_to: mlflow\noutput_dir: {tmp_path / 'runs'}\n")
    assert main([*verb, "--config", str(tmp_path / "c.yaml")]) == 2
    assert "--report-to mlflow needs the mlflow package" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_step_and_eval_values():
    record = {"step": 3, "epoch": 0.5, "loss": 0.69, "rewards/chosen": 0.1, "note": "x", "flag": True}
    assert trackers.step_values(record) == {"train/epoch": 0.5, "train/loss": 0.69, "train/rewards/chosen": 0.1}
    metrics = {"accuracy": 0.75, "n": 4, "ci": [0.1, 0.9], "none": None, "nan": float("nan"),
               "by": {"a": {"accuracy": 1.0}}}
    assert trackers.eval_values(metrics) == {"eval/accuracy": 0.75, "eval/n": 4.0, "eval/by/a/accuracy": 1.0}


READ_TRACKIO = """
import json, sys
from preftune.runs import trackers
from preftune.config import TrainConfig
root, run = sys.argv[1], sys.argv[2]
from pathlib import Path
from trackio.sqlite_storage import SQLiteStorage
project = Path(root).name
print("STORE " + json.dumps({"runs": SQLiteStorage.get_runs(project),
                  "logs": {r: SQLiteStorage.get_logs(project, r) for r in SQLiteStorage.get_runs(project)},
                  "configs": list(SQLiteStorage.get_all_run_configs(project).values())}, default=str), flush=True)
"""


def test_a_sweep_logs_its_runs_to_one_trackio_project(tiny_model, tmp_path):
    """A real `preftune sweep --report-to trackio` (its own process: trackio fixes its store when first
    imported), read back with trackio's own storage API from ROOT/tracking/trackio."""
    root = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PREFTUNE_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    env.pop("TRACKIO_DIR", None)
    argv = ["--model", str(tiny_model), "--lr", "1e-2,5e-3", "--batch-size", "4", "--max-pairs", "8",
            "--max-eval-pairs", "4", "--max-length", "192", "--fraction", "0.03", "--seed", "3",
            "--report-to", "trackio", "--output-dir", str(root)]
    done = subprocess.run([sys.executable, "-m", "preftune", "sweep", *argv], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    names = ["dpo_model_lr0.01_bs4_epoch1", "dpo_model_lr0.005_bs4_epoch1"]
    assert sorted(p.name for p in (root / "tracking" / "trackio").glob("*.db")) == ["sweep.db"]

    env["TRACKIO_DIR"] = str(root / "tracking" / "trackio")
    read = subprocess.run([sys.executable, "-c", READ_TRACKIO, str(root), names[0]], capture_output=True, text=True,
                          env=env, timeout=300)
    assert read.returncode == 0, read.stderr[-2000:]
    store = json.loads(next(line for line in read.stdout.splitlines() if line.startswith("STORE "))[6:])
    assert sorted(store["runs"]) == sorted(names)
    for name in names:
        logs = [entry for entry in store["logs"][name] if "train/loss" in entry]
        log = read_log(root / name)
        assert [e["train/loss"] for e in logs] == pytest.approx([r["loss"] for r in log])
        assert [e["step"] for e in logs] == [r["step"] for r in log]
    assert {c["lr"] for c in store["configs"]} == {0.01, 0.005}
    accuracy = json.loads((root / names[0] / "eval.json").read_text())["accuracy"]
    assert [e["eval/accuracy"] for e in store["logs"][names[0]] if "eval/accuracy" in e] == [accuracy]


# ---- a tracker that cannot write ------------------------------------------------------------------


@pytest.mark.parametrize("verb, name", [(["train"], "dpo_model_lr5e-06_bs4_epoch1"),
                                        (["sft"], "sft_model_lr1e-05_bs8_epoch1"), (["rm", "train"], "reward_model")])
@pytest.mark.parametrize("blocked", ["tracking", "tracking/tensorboard"])
def test_a_tensorboard_folder_that_is_a_file_is_refused_before_any_work(verb, name, blocked, tiny_model, tmp_path,
                                                                        capsys):
    """It failed after the reference pass (train) and left NAME.partial behind."""
    root = tmp_path / "runs"
    (root / blocked).parent.mkdir(parents=True, exist_ok=True)
    (root / blocked).write_text("not a folder")
    argv = [*verb, "--model", str(tiny_model), "--fraction", "0.03", "--max-length", "192", "--report-to", "tensorboard",
            "--output-dir", str(root)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"preftune: error: --report-to tensorboard: {root / blocked} is a file, not a "
                                       f"folder (it writes to {root / 'tracking' / 'tensorboard' / name}); "
                                       "change --output-dir\n")
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.name.endswith(".lock")) == \
        sorted({"tracking", blocked})  # no NAME.partial: nothing was started


def test_a_trackio_store_that_cannot_write_fails_the_run(tiny_model, tmp_path):
    """trackio only warns when it cannot write its store (here the project's database is a folder): the
    run exited 0 with tracking.json saying where it was logged. Now the command fails, unfinished."""
    store, root = tmp_path / "store", tmp_path / "runs"
    (store / "runs.db").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PREFTUNE_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1", "TRACKIO_DIR": str(store)}
    argv = ["train", "--model", str(tiny_model), "--batch-size", "4", "--max-pairs", "8", "--max-eval-pairs", "4",
            "--max-length", "192", "--fraction", "0.03", "--report-to", "trackio", "--output-dir", str(root)]
    done = subprocess.run([sys.executable, "-m", "preftune", *argv], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"preftune: error: --report-to trackio could not write run dpo_model_lr5e-06_bs4_epoch1 to {store / 'runs.db'}; "
        "the run is not tracked (check that the trackio store, TRACKIO_DIR, is writable)")
    assert not (root / "dpo_model_lr5e-06_bs4_epoch1").exists()


def test_a_trackio_store_that_is_a_file_is_refused_before_any_work(tmp_path):
    store = tmp_path / "store"
    store.write_text("a file")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TRACKIO_DIR": str(store)}
    done = subprocess.run([sys.executable, "-m", "preftune", "sft", "--report-to", "trackio", "--output-dir",
                           str(tmp_path / "runs")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert done.stderr == f"preftune: error: --report-to trackio: {store} is a file, not a folder; change TRACKIO_DIR\n"
