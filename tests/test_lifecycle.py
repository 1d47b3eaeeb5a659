"""The run lifecycle every trainer shares (runs/lifecycle.py): NAME.partial → NAME, what makes two runs
the same run (old folders without a `kind` included), the log rewound to a checkpoint; and, for each
command (`train`, `rm train`, `sft` with each engine), a process SIGKILLed mid-training and run again
with the same command ends with the same folder as an uninterrupted run; each command's --help offers
the lifecycle's flags."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preftune.config import DataConfig, SFTConfig, TrainConfig
from preftune.errors import PreftuneError
from preftune.runs.lifecycle import (
    begin_partial,
    check_destination,
    finish_partial,
    resume_point,
    rewind,
    run_spec,
    stored_spec,
)

DATA = DataConfig(fraction=0.03, seed=3)


# ---- NAME.partial → NAME -------------------------------------------------------------------------


def test_partial_lifecycle(tmp_path):
    partial = begin_partial(tmp_path / "run")
    assert partial == tmp_path / "run.partial" and partial.is_dir()
    (partial / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"w")
    final = finish_partial(partial)
    assert final == tmp_path / "run" and (final / "model.safetensors").is_file()
    assert not (final / "checkpoints").exists() and not partial.exists()


def test_an_existing_run_needs_overwrite_and_is_replaced_only_at_the_end(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "old").write_text("old")
    with pytest.raises(PreftuneError, match="run already exists; pass --overwrite to replace it"):
        check_destination(tmp_path / "run", overwrite=False)
    check_destination(tmp_path / "run", overwrite=True)
    partial = begin_partial(tmp_path / "run")
    assert (tmp_path / "run" / "old").is_file()  # untouched until the new run is complete
    (partial / "new").write_text("new")
    final = finish_partial(partial)
    assert [p.name for p in final.iterdir()] == ["new"]


def test_a_leftover_partial_is_emptied_unless_resuming(tmp_path):
    (tmp_path / "run.partial").mkdir()
    (tmp_path / "run.partial" / "train_log.jsonl").write_text("{}\n")
    assert list(begin_partial(tmp_path / "run", resume=True).iterdir())  # kept: the run continues
    assert not list(begin_partial(tmp_path / "run").iterdir())  # emptied: a fresh start


# ---- the same run, resumed -----------------------------------------------------------------------


def checkpoint(partial: Path, step: int) -> Path:
    folder = partial / "checkpoints" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "preftune_checkpoint.json").write_text(json.dumps({"step": step, "elapsed_s": 1.0}))
    return folder


def test_only_a_partial_of_the_same_settings_and_kind_is_resumed(tmp_path):
    """The spec ignores what changes neither the result nor the evaluation; a DPO folder from before
    kinds (no "kind") is a DPO run's; an SFT folder of the same name is not a DPO run to resume."""
    cfg = TrainConfig(output_dir=str(tmp_path), lr=1e-3)
    partial = tmp_path / "run.partial"
    partial.mkdir()
    spec = run_spec("dpo", DATA, cfg, ())
    (partial / "preftune_config.json").write_text(json.dumps({"run_name": "run", **spec}))  # before kinds
    assert resume_point(partial, "dpo", DATA, cfg) is None  # no complete checkpoint yet
    checkpoint(partial, 2)
    (partial / "checkpoints" / "checkpoint-4").mkdir()  # killed while saving: no marker
    assert resume_point(partial, "dpo", DATA, cfg).name == "checkpoint-2"
    again = TrainConfig(output_dir="elsewhere", lr=1e-3, save_steps=3, logging_steps=5, report_to="tensorboard",
                        max_eval_pairs=4, pack_tokens=100)
    assert resume_point(partial, "dpo", DATA, again).name == "checkpoint-2"
    assert resume_point(partial, "dpo", DATA, TrainConfig(output_dir=str(tmp_path), lr=2e-3)) is None
    assert resume_point(partial, "dpo", DataConfig(fraction=0.5, seed=3), cfg) is None
    assert stored_spec(partial, "sft") is None
    sft = SFTConfig(output_dir=str(tmp_path), lr=1e-3)
    (partial / "preftune_config.json").write_text(json.dumps({"kind": "sft", **run_spec("sft", DATA, sft, ())}))
    assert resume_point(partial, "dpo", DATA, cfg) is None and resume_point(partial, "sft", DATA, sft) is not None


def test_rewind_drops_later_log_lines_a_torn_line_and_other_checkpoints(tmp_path):
    partial = tmp_path / "run.partial"
    two, four = checkpoint(partial, 2), checkpoint(partial, 4)
    (partial / "checkpoints" / "checkpoint-6").mkdir()
    log = "".join(json.dumps({"step": s, "loss": 1 / s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo'
    (partial / "train_log.jsonl").write_text(log)
    assert rewind(partial, four) == 4
    assert [json.loads(line)["step"] for line in (partial / "train_log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert sorted(p.name for p in (partial / "checkpoints").iterdir()) == ["checkpoint-4"] and not two.exists()


# ---- each command, killed and run again ----------------------------------------------------------

# `preftune ARGV`, SIGKILLing itself right after the per-step log line of step KILL_AT is written (every
# trainer writes it through engines.base.append_log): with --save-steps 2 and step 3, after checkpoint-2.
DRIVER = """
import importlib, os, pkgutil, signal, sys, time
import preftune.dpo.engines as engines
import preftune.dpo.engines.base as base
import preftune.runs.rm
from preftune.cli import main

for info in pkgutil.iter_modules(engines.__path__):
    importlib.import_module(f"preftune.dpo.engines.{info.name}")
kill_at, append_log = int(os.environ.get("KILL_AT", "0")), base.append_log
pause_at, pause_dir = int(os.environ.get("PAUSE_AT", "0")), os.environ.get("PAUSE_DIR", "")

def append_then_die(path, record):
    append_log(path, record)
    if record.get("step") == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    if record.get("step") == pause_at:  # say so, then wait for PAUSE_DIR/go
        open(os.path.join(pause_dir, "paused"), "w").close()
        while not os.path.exists(os.path.join(pause_dir, "go")):
            time.sleep(0.05)

for module in list(sys.modules.values()):
    if getattr(module, "append_log", None) is append_log and module.__name__.startswith("preftune."):
        module.append_log = append_then_die
sys.exit(main(sys.argv[1:]))
"""
TINY = ["--fraction", "0.03", "--seed", "3", "--lr", "1e-2", "--batch-size", "2", "--max-length", "192",
        "--save-steps", "2", "--logging-steps", "1"]
COMMANDS = {  # command → (its argv, its folder's name): 4 optimizer steps each
    "train": (["train", "--max-pairs", "8", "--max-eval-pairs", "4", "--no-gradient-checkpointing"],
              "dpo_model_lr0.01_bs2_epoch1"),
    "rm train": (["rm", "train", "--max-pairs", "8", "--max-eval-pairs", "4", "--debias", "none"], "reward_model"),
    "sft fast": (["sft", "--max-rows", "8", "--engine", "fast"], "sft_model_lr0.01_bs2_epoch1"),
    "sft trl": (["sft", "--max-rows", "8", "--engine", "trl"], "sft_model_lr0.01_bs2_epoch1"),
}
KINDS = {"train": "dpo", "rm train": "rm", "sft fast": "sft", "sft trl": "sft"}


def driver_env(tmp_path: Path, **extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PREFTUNE_CACHE": str(tmp_path / "cache"), **extra}


def preftune(argv: list[str], tmp_path: Path, kill_at: int = 0) -> subprocess.CompletedProcess:
    env = driver_env(tmp_path, KILL_AT=str(kill_at))
    return subprocess.run([sys.executable, "-c", DRIVER, *argv], env=env, capture_output=True, text=True, timeout=300)


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_killed_and_run_again_matches_an_uninterrupted_run(command, tiny_model, tmp_path):
    args, name = COMMANDS[command]
    argv = [*args, "--model", str(tiny_model), *TINY]
    killed = preftune([*argv, "--output-dir", str(tmp_path / "killed")], tmp_path, kill_at=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    partial = tmp_path / "killed" / f"{name}.partial"
    assert steps_logged(partial) == [1, 2, 3] and not (tmp_path / "killed" / name).exists()
    assert sorted(p.name for p in (partial / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]

    resumed = preftune([*argv, "--output-dir", str(tmp_path / "killed")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resume: {name} from checkpoints/checkpoint-2 (step 2)" in resumed.stdout
    straight = preftune([*argv, "--output-dir", str(tmp_path / "straight")], tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]

    run, reference = tmp_path / "killed" / name, tmp_path / "straight" / name
    assert steps_logged(run) == steps_logged(reference) == [1, 2, 3, 4]  # step 3 logged once, not twice
    assert not (run / "checkpoints").exists() and not partial.exists()
    a, b = load_file(run / "model.safetensors"), load_file(reference / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[json.loads(line)["loss"] for line in (r / "train_log.jsonl").read_text().splitlines()]
              for r in (run, reference)]
    assert losses[0] == losses[1]
    config = json.loads((run / "preftune_config.json").read_text())
    assert config["kind"] == KINDS[command] and config["world_size"] == 1
    assert [e["kind"] for e in config["chain"]] == ["base", config["kind"]] and config["chain"][-1]["run"] == name


@pytest.mark.parametrize("command", [["train"], ["sft"], ["rm", "train"]])
def test_every_trainer_offers_the_lifecycles_flags(command, capsys):
    from preftune.cli import main

    with pytest.raises(SystemExit):
        main([*command, "--help"])
    out = capsys.readouterr().out
    for flag in ("--report-to", "--tracker-project", "--precision", "--save-steps", "--config", "--overwrite"):
        assert flag in out, flag


# ---- one writer per run folder -------------------------------------------------------------------


def test_a_second_writer_of_a_running_run_is_refused_and_the_first_finishes(tiny_model, tmp_path):
    """Two real processes: the first `sft` pauses after step 2 with NAME.partial live; the same command
    run meanwhile stops in one line naming the folder, touches nothing, and the first finishes."""
    args, name = COMMANDS["sft fast"]
    argv = [sys.executable, "-c", DRIVER, *args, "--model", str(tiny_model), *TINY, "--output-dir", str(tmp_path / "runs")]
    first = subprocess.Popen(argv, env=driver_env(tmp_path, PAUSE_AT="2", PAUSE_DIR=str(tmp_path)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "paused").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
            time.sleep(0.1)
        partial = tmp_path / "runs" / f"{name}.partial"
        before = sorted(p.relative_to(partial) for p in partial.rglob("*"))
        second = preftune([*args, "--model", str(tiny_model), *TINY, "--output-dir", str(tmp_path / "runs")], tmp_path)
        assert second.returncode == 2
        assert second.stderr.strip() == (f"preftune: error: another process is writing {tmp_path / 'runs' / name} (a preftune run "
                                         f"holds {tmp_path / 'runs' / ('.' + name + '.lock')}); wait for it to finish, "
                                         "or write elsewhere (another --output-dir or --name)")
        assert sorted(p.relative_to(partial) for p in partial.rglob("*")) == before  # untouched
        (tmp_path / "go").touch()
        err = first.communicate(timeout=240)[1]
    finally:
        first.kill()
    assert first.returncode == 0, err[-3000:]
    assert steps_logged(tmp_path / "runs" / name) == [1, 2, 3, 4] and not partial.exists()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [name]  # its lock file gone with it


LOCK_HOLDER = """
import sys, time
from preftune.config import TrainConfig
from preftune.runs.lifecycle import begin
life = begin("dpo", TrainConfig(output_dir=sys.argv[1]))
print("locked", flush=True)
time.sleep(300)
"""


def test_the_run_lock_is_the_oss_a_killed_holder_leaves_none(tmp_path):
    """A process that dies holding ROOT/NAME's lock (SIGKILL: nothing of it runs) does not block the re-run."""
    from preftune.runs.lifecycle import begin

    cfg = TrainConfig(output_dir=str(tmp_path))
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path)], env=driver_env(tmp_path),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(PreftuneError, match=f"another process is writing {tmp_path / cfg.run_name} "):
            begin("dpo", cfg)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert (tmp_path / f".{cfg.run_name}.lock").exists()  # the file stays behind; the lock does not
    with begin("dpo", cfg) as life:
        assert life.held is not None
    assert life.held is None
    with begin("dpo", cfg):  # released by the `with`: taken again in the same process
        pass


# ---- the chain of the model a run starts from ------------------------------------------------------


@pytest.mark.parametrize("content, message", [
    ('{"kind": "sft", "chain": [{"kind": "ba', "not valid JSON"),
    ('["sft"]', "expected a JSON object, got a list"),
    ('{"kind": "sft", "run_name": "s"}', "key 'chain' must be a list of steps"),
    ('{"kind": "sft", "chain": [{"kind": "base"}, "sft"]}', "key 'chain' must be a list of steps"),
])
def test_a_damaged_config_of_the_starting_model_is_an_error_before_any_work(tmp_path, content, message):
    """A damaged SFT config silently dropped the SFT step from the DPO run's chain (base → DPO)."""
    from preftune.runs.lifecycle import begin

    model = tmp_path / "sft_model_lr1e-05_bs8_epoch1"
    model.mkdir()
    (model / "preftune_config.json").write_text(content)
    with pytest.raises(PreftuneError, match=f"^{model / 'preftune_config.json'}: {message}"):
        begin("dpo", TrainConfig(model=str(model), output_dir=str(tmp_path / "runs")))
    assert not (tmp_path / "runs").exists()  # nothing left behind


def test_the_chain_of_a_starting_run_is_read_at_begin(tmp_path):
    from preftune.runs.lifecycle import begin

    model = tmp_path / "sft"
    model.mkdir()
    (model / "preftune_config.json").write_text(json.dumps(
        {"kind": "sft", "chain": [{"kind": "base", "model": "m"}, {"kind": "sft", "run": "sft", "path": "/gone"}]}))
    with begin("dpo", TrainConfig(model=str(model), output_dir=str(tmp_path / "runs"))) as life:
        assert [e["kind"] for e in life.base_chain] == ["base", "sft"]
        assert life.base_chain[-1]["path"] == str(model.resolve())
    old_dpo = tmp_path / "old"  # a DPO run from before kinds and chains: base → DPO, rebuilt
    old_dpo.mkdir()
    (old_dpo / "preftune_config.json").write_text(json.dumps({"train": {"model": "tiny"}}))
    with begin("dpo", TrainConfig(model=str(old_dpo), output_dir=str(tmp_path / "runs"))) as life:
        assert [e["kind"] for e in life.base_chain] == ["base", "dpo"]
