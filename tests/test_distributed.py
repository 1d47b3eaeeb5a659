"""The same `preftune train` under a 2-process launcher (gloo on CPU, the stand-in for multi-GPU)
writes one correct run folder; ranks that each have their own disk (as on machines without a shared
filesystem) share the reference pass, train the runs rank 0 planned, and stop together when their disks
disagree."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


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


NO_SHARED_DISK = """
import os, sys
os.environ["PREFTUNE_CACHE"] = sys.argv[1] + "-rank" + os.environ["RANK"]  # each rank its own disk
import torch.distributed as dist
from preftune.cli import main
code = main([a.replace("{rank}", os.environ["RANK"]) for a in sys.argv[2:]])  # its own output dir too
print(f"rank {os.environ['RANK']}: process group at exit:", "left" if dist.is_initialized() else "destroyed", flush=True)
raise SystemExit(code)
"""
# every rank destroys its group before interpreter exit, where gloo's threads can abort a finished run
ENDED = [f"rank {r}: process group at exit: destroyed" for r in (0, 1)]


def without_shared_disk(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    """`preftune ARGV` on 2 ranks, each with its own cache (tmp_path/cache-rankR); "{rank}" in ARGV is the rank."""
    wrapper = tmp_path / "no_shared_disk.py"
    wrapper.write_text(NO_SHARED_DISK)
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--standalone", str(wrapper),
           str(tmp_path / "cache"), *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_the_reference_pass_is_shared_by_ranks_without_a_shared_disk(tiny_model, tmp_path):
    """Two ranks, each with its own cache folder (as on two machines): they split the reference pass,
    every rank gets every value through the process group, rank 0 alone writes them, and a second run
    finds them all — rank 1 from rank 0's cache, through the group."""
    def run(lr: str) -> subprocess.CompletedProcess:
        done = without_shared_disk(
            tmp_path, "train", "--model", str(tiny_model), "--output-dir", str(tmp_path / "runs"), "--lr", lr,
            "--batch-size", "4", "--max-pairs", "8", "--max-eval-pairs", "4", "--max-length", "256",
            "--fraction", "0.03", "--pack-tokens", "400", "--no-gradient-checkpointing")
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    first = run("1e-2")
    assert "reference: computing log-probs of 8 pairs once, shared by 2 processes" in first.stdout
    written = list((tmp_path / "cache-rank0" / "ref_logps").glob("*.jsonl"))
    lines = written[0].read_text().splitlines()
    assert len(written) == 1 and len(lines) == 8 + 4 == len(set(lines))  # once each, by rank 0: train + eval pairs
    assert not (tmp_path / "cache-rank1" / "ref_logps").exists()
    log = [json.loads(line) for line in (tmp_path / "runs" / "dpo_model_lr0.01_bs4_epoch1" / "train_log.jsonl").open()]
    # π = π_ref at step 0 on every rank's pairs: each rank got the right value for each of its pairs
    assert log[0]["loss"] == pytest.approx(0.693147, abs=1e-5) and abs(log[0]["rewards/margins"]) < 1e-5

    second = run("5e-3")
    assert "reference: all 8 pairs' log-probs found" in second.stdout and "computing" not in second.stdout
    assert not (tmp_path / "cache-rank1" / "ref_logps").exists()


TINY = ["--batch-size", "4", "--max-pairs", "8", "--max-eval-pairs", "4", "--max-length", "256", "--fraction", "0.03",
        "--no-gradient-checkpointing"]


def test_a_sweep_rerun_on_ranks_without_a_shared_disk_skips_what_rank_0_finished(tiny_model, tmp_path):
    """Rank 1's output dir never holds a run (rank 0 writes them): on its own it would train both runs
    again while rank 0 skips them, and wait forever for rank 0. Every rank trains rank 0's plan."""
    runs = ["dpo_model_lr0.01_bs4_epoch1", "dpo_model_lr0.005_bs4_epoch1"]
    argv = ["sweep", "--model", str(tiny_model), "--output-dir", str(tmp_path / "runs-{rank}"), "--lr", "1e-2,5e-3",
            "--select", "0", *TINY]
    first = without_shared_disk(tmp_path, *argv)
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs-0").glob("dpo_model_*")) == sorted(runs)
    assert not list((tmp_path / "runs-1").iterdir())  # rank 1 trained, rank 0 wrote

    assert all(line in first.stdout for line in ENDED), first.stdout[-3000:]

    second = without_shared_disk(tmp_path, *argv)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "2 runs in" in second.stdout and "2 finished (skipped), 0 to train" in second.stdout
    assert not list((tmp_path / "runs-1").iterdir())


@pytest.mark.parametrize("holder", [0, 1])
def test_a_finished_run_seen_by_one_rank_only_stops_every_rank(tiny_model, tmp_path, holder):
    """Only rank HOLDER's output dir holds the finished run: every rank stops with its error (named as
    that rank's), none trains on alone or waits in a collective for the other."""
    run = "dpo_model_lr0.01_bs4_epoch1"
    (tmp_path / f"runs-{holder}" / run).mkdir(parents=True)
    done = without_shared_disk(tmp_path, "train", "--model", str(tiny_model), "--output-dir",
                               str(tmp_path / "runs-{rank}"), "--lr", "1e-2", *TINY)
    assert done.returncode != 0
    # torchrun may kill one rank once the other exits: at least one prints the agreed line
    assert f"preftune: error: rank {holder} of 2: {tmp_path / f'runs-{holder}' / run} already exists" in done.stderr, \
        done.stderr[-3000:]
    assert "process group at exit: left" not in done.stdout  # on the error path too
    for rank in (0, 1):  # nothing written on either disk
        assert [p.name for p in (tmp_path / f"runs-{rank}").glob("*")] == ([run] if rank == holder else [])


def test_two_processes_train_the_reward_model_a_single_process_trains(tiny_model, tmp_path, monkeypatch):
    """`rm train` under torchrun: one folder (rank 0 writes, evaluates, prints), trained on 2 ranks; each
    rank's loss weighted by its share of the batch, so the logged loss, accuracy and weights are those of
    one process training on the whole batch (up to float rounding)."""
    from safetensors.torch import load_file

    from preftune.config import DataConfig, RewardConfig
    from preftune.runs.rm import train_reward_model

    args = dict(model=str(tiny_model), lr=1e-2, batch_size=4, max_pairs=8, max_eval_pairs=4, max_length=192,
                debias="none", logging_steps=1)
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--standalone", "-m", "preftune",
           "rm", "train", "--output-dir", str(tmp_path / "two"), "--fraction", "0.03", "--seed", "3",
           *[f"--{k.replace('_', '-')}={v}" for k, v in args.items()]]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["reward_model"]
    two = tmp_path / "two" / "reward_model"
    assert json.loads((two / "preftune_config.json").read_text())["world_size"] == 2
    assert done.stdout.count("reward model, held-out:") == 1

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    one = train_reward_model(DataConfig(fraction=0.03, seed=3), RewardConfig(output_dir=str(tmp_path / "one"), **args))
    logs = [[json.loads(line) for line in (run / "train_log.jsonl").open()] for run in (one, two)]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [1, 2]
    for key in ("loss", "accuracy", "margin", "grad_norm"):
        assert [r[key] for r in logs[1]] == pytest.approx([r[key] for r in logs[0]], rel=1e-4, abs=1e-6), key
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_two_processes_write_one_sft_run(tiny_model, tmp_path):
    """`sft` under torchrun (the fast engine: the engine's own test holds it to one process's numbers):
    every rank trains its share of each batch, rank 0 alone writes the one folder."""
    cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--standalone", "-m", "preftune",
           "sft", "--model", str(tiny_model), "--output-dir", str(tmp_path), "--lr", "1e-2", "--batch-size", "4",
           "--max-rows", "8", "--max-length", "192", "--fraction", "0.03", "--seed", "3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["sft_model_lr0.01_bs4_epoch1"]
    run = tmp_path / "sft_model_lr0.01_bs4_epoch1"
    config = json.loads((run / "preftune_config.json").read_text())
    assert (config["kind"], config["world_size"], config["per_device_batch_size"]) == ("sft", 2, 2)
    assert [json.loads(line)["step"] for line in (run / "train_log.jsonl").open()] == [1, 2]  # logged once each
    assert (run / "model.safetensors").is_file() and (run / "tokenizer.json").is_file()
