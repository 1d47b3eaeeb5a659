"""The same `preftune train` under a 2-process launcher (gloo on CPU, the stand-in for multi-GPU)
writes one correct run folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("engine", ["fast", "trl"])
def test_two_processes_write_one_correct_run(tiny_model, tmp_path, engine):
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--standalone", "-m", "preftune", "train",
           "--model", str(tiny_model), "--output-dir", str(tmp_path), "--lr", "1e-2", "--batch-size", "4",
           "--max-pairs", "8", "--max-eval-pairs", "4", "--max-length", "256", "--fraction", "0.03",
           "--no-gradient-checkpointing", "--engine", engine]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFTUNE_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [p.name for p in tmp_path.iterdir() if p.name != "cache"]
    assert runs == ["dpo_model_lr0.01_bs4_epoch1"]  # no stray .partial folder from the other rank
    run = tmp_path / runs[0]
    config = json.loads((run / "preftune_config.json").read_text())
    assert config["world_size"] == 2 and config["per_device_batch_size"] == 2
    log = [json.loads(line) for line in (run / "train_log.jsonl").open()]
    assert len(log) == 2  # 8 pairs / (2 processes × 2 per device) = 2 optimizer steps, logged once each
    assert abs(log[0]["loss"] - 0.693147) < 1e-4
    assert json.loads((run / "eval.json").read_text())["n"] == 4
    assert done.stdout.count("evaluation on the validation split") == 1  # rank 0 alone evaluates and prints
