"""Scale-out that is proven, on 2 CPU processes (torchrun, gloo): both engines train with FSDP through
the path that really shards on CPU (transformers' FSDP2 plan: torch's `fully_shard`, checked by the
DTensor parameters), save a whole model that loads, and follow the single-process loss curve. A launch
whose processes would not train as one group stops with one line before any work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import accelerate_fsdp_cpu_config

from preftune.errors import PreftuneError
from preftune.launch import env_world, group_mismatch, unapplied_plugin

BIN = Path(sys.executable).parent
DATA_ARGS = ["--fraction", "0.03", "--max-pairs", "12", "--max-eval-pairs", "4"]
TRAIN_ARGS = ["--lr", "1e-2", "--batch-size", "4", "--max-length", "256", "--no-gradient-checkpointing"]
RUN = "dpo_model_lr0.01_bs4_epoch1"


def preftune_train(launcher: list[str], tiny_model, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [*launcher, "-m", "preftune", "train", "--model", str(tiny_model), "--output-dir", str(out),
           *DATA_ARGS, *TRAIN_ARGS, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFTUNE_CACHE": str(out.parent / "cache")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def curve(run: Path) -> list[tuple[float, float]]:
    return [(r["loss"], r["grad_norm"]) for r in map(json.loads, (run / "train_log.jsonl").open())]


@pytest.mark.parametrize("engine,extra", [("fast", ["--pack-tokens", "450"]), ("trl", [])])
def test_fsdp_on_two_processes_follows_one_process(tiny_model, tmp_path, engine, extra):
    """The fast engine packs pairs into rows here: ranks with fewer rows join every FSDP forward."""
    from transformers import AutoModelForCausalLM

    torchrun = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--standalone"]
    sharded = preftune_train(torchrun, tiny_model, tmp_path / "fsdp", "--engine", engine, "--fsdp", *extra)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert "sharded across 2 processes" in sharded.stdout  # DTensor parameters seen, not assumed
    single = preftune_train([sys.executable], tiny_model, tmp_path / "single", "--engine", engine, *extra)
    assert single.returncode == 0, single.stderr[-3000:]

    run, alone = tmp_path / "fsdp" / RUN, tmp_path / "single" / RUN
    assert [p.name for p in (tmp_path / "fsdp").iterdir()] == [RUN]  # one run folder, no stray .partial
    assert json.loads((run / "preftune_config.json").read_text())["world_size"] == 2
    (a, b) = curve(run), curve(alone)
    assert len(a) == len(b) == 3 and a[0][0] == pytest.approx(0.693147, abs=1e-5)
    for (loss, norm), (loss1, norm1) in zip(a, b):
        assert loss == pytest.approx(loss1, abs=1e-4) and norm == pytest.approx(norm1, rel=1e-3)
    assert a[-1][0] < a[0][0] - 1e-3  # it trained

    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    logits = [AutoModelForCausalLM.from_pretrained(r)(input_ids=ids).logits for r in (run, alone)]
    assert torch.allclose(*logits, atol=1e-3), (logits[0] - logits[1]).abs().max()  # saved whole, loads
    assert json.loads((run / "eval.json").read_text())["n"] == 4  # rank 0 evaluated the gathered model


def test_an_accelerate_fsdp_config_on_cpu_stops_before_any_work(tiny_model, tmp_path):
    """Measured with accelerate 1.15: an FSDP config on CPU is not applied (independent processes, or DDP)."""
    config = accelerate_fsdp_cpu_config(tmp_path)
    launcher = [str(BIN / "accelerate"), "launch", "--config_file", str(config)]
    done = preftune_train(launcher, tiny_model, tmp_path / "runs")
    assert done.returncode != 0
    # Each process refuses on its own; torchrun may kill the second before it prints, so at least one line.
    assert "preftune: error: this launch asks accelerate for FSDP (ACCELERATE_USE_FSDP)" in done.stderr
    assert not (tmp_path / "runs").exists()  # no process wrote anything


@pytest.mark.parametrize("environ,message", [
    ({"RANK": "0", "WORLD_SIZE": "two"}, "are not integers"),
    ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, "need 0 <= RANK < WORLD_SIZE"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "need 0 <= RANK < WORLD_SIZE"),
    ({"RANK": "1", "WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but MASTER_ADDR is not"),
])
def test_a_launch_environment_that_cannot_be_one_group_is_refused(environ, message):
    with pytest.raises(PreftuneError, match=message):
        env_world(environ)


def test_the_launch_environment_of_a_plain_run_and_of_torchrun():
    assert env_world({}) == (0, 1)
    assert env_world({"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}) == (1, 2)


@pytest.mark.parametrize("env,accelerate,group,agrees", [
    ((1, 2), (1, 2), (1, 2), True),
    ((1, 2), (0, 1), (1, 2), False),  # accelerate believes it is alone: it would train and write alone
    ((0, 2), (0, 2), (0, 1), False),  # no torch process group behind accelerate's view
])
def test_the_three_views_of_the_group_must_agree(env, accelerate, group, agrees):
    problem = group_mismatch(env, accelerate, group)
    assert (problem is None) == agrees
    if problem:
        assert f"rank {env[0]} of {env[1]}" in problem and "torchrun --nproc_per_node N" in problem


@pytest.mark.parametrize("environ,cuda,refused", [
    ({"ACCELERATE_USE_FSDP": "true"}, False, "FSDP"),
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, False, "DeepSpeed"),
    ({"ACCELERATE_USE_FSDP": "true"}, True, None),  # on CUDA accelerate applies it
    ({"ACCELERATE_USE_FSDP": "false"}, False, None),
])
def test_an_accelerate_plugin_cpu_would_ignore_is_refused(environ, cuda, refused):
    problem = unapplied_plugin(environ, cuda)
    assert (problem is None) if refused is None else (f"accelerate for {refused}" in problem)
