"""launch.py: the commands that train in one process refuse any multi-process launch before any work;
`sweep` stops on a launch that is not one process group before its lock and plan; and the collectives
that make ranks agree (`agreed`, `gather`, `from_rank_zero`) pass through in one process and, across two
processes, give every rank the same answer or the same error."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import accelerate_fsdp_cpu_config

from preftune.errors import PreftuneError
from preftune.launch import agreed, from_rank_zero, gather, single_process

BIN = Path(sys.executable).parent
TORCHRUN = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--standalone"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# ---- one process: no group, the helpers pass through -------------------------------------------------


def test_without_a_group_the_collectives_pass_through():
    assert gather({"a": 1}) == [{"a": 1}]
    assert agreed(lambda x: x + 1, 1) == 2
    assert from_rank_zero(lambda x, y: x * y, 3, 4) == 12


def test_without_a_group_an_error_is_raised_as_it_was():
    error = PreftuneError("runs/x already exists; pass --overwrite to replace it")

    def fail():
        raise error

    for helper in (agreed, from_rank_zero):
        with pytest.raises(PreftuneError) as raised:
            helper(fail)
        assert raised.value is error  # the same exception, message unchanged: single-process behaviour is as before
    with pytest.raises(ZeroDivisionError):  # a bug is not turned into a one-line error
        agreed(lambda: 1 / 0)


@pytest.mark.parametrize("environ,asked", [
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}, "asks for 2 processes"),
    ({"ACCELERATE_USE_FSDP": "true"}, "asks for accelerate's FSDP (ACCELERATE_USE_FSDP)"),
    ({"ACCELERATE_USE_DEEPSPEED": "1"}, "asks for accelerate's DeepSpeed"),
])
def test_a_single_process_command_refuses_any_multi_process_launch(environ, asked):
    with pytest.raises(PreftuneError, match="`preftune recipe` trains in one process") as raised:
        single_process("recipe", environ)
    assert asked in str(raised.value) and "without torchrun or accelerate launch" in str(raised.value)


def test_a_plain_launch_of_a_single_process_command_passes():
    single_process("recipe", {})
    single_process("recipe", {"RANK": "0", "WORLD_SIZE": "1", "ACCELERATE_USE_FSDP": "false"})


# ---- two processes: every rank gets the same answer, or the same error ----------------------------------

TWO_RANKS = """
import json, os, sys
from pathlib import Path
import torch.distributed as dist
from preftune.errors import PreftuneError
from preftune.launch import agreed, from_rank_zero, gather
from preftune.runs.lifecycle import same_resume

dist.init_process_group("gloo")
rank = dist.get_rank()
seen = {"gather": gather(rank * 10)}

def attempt(key, fn, *args):
    try:
        seen[key] = fn(*args)
    except Exception as e:
        seen[key] = f"{type(e).__name__}: {e}"

def only_rank_one_fails():
    if rank == 1:
        raise PreftuneError("runs/x already exists")
    return "fine"

def rank_zero_only(what):
    assert rank == 0, "called on another rank"
    if what == "fail":
        raise PreftuneError("another sweep holds the lock")
    if what == "bug":
        raise ValueError("a bug")
    return {"run": "finished"}

attempt("agreed", agreed, only_rank_one_fails)
attempt("agreed_ok", agreed, lambda: rank)
attempt("from_zero", from_rank_zero, rank_zero_only, "ok")
attempt("from_zero_fails", from_rank_zero, rank_zero_only, "fail")
attempt("from_zero_bug", from_rank_zero, rank_zero_only, "bug")
attempt("resume_differs", same_resume, Path("runs/x.partial"), Path("checkpoint-4") if rank == 0 else None)
attempt("resume_same", same_resume, Path("runs/x.partial"), Path("checkpoint-4"))
Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(seen))
dist.destroy_process_group()
"""


def test_two_ranks_get_one_answer_or_one_error(tmp_path):
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS)
    done = subprocess.run([*TORCHRUN, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert zero["gather"] == one["gather"] == [0, 10]
    # rank 1 alone saw the folder: both ranks stop, with rank 1's message, named as rank 1's
    assert zero["agreed"] == one["agreed"] == "PreftuneError: rank 1 of 2: runs/x already exists"
    assert (zero["agreed_ok"], one["agreed_ok"]) == (0, 1)  # no error: each rank's own result
    assert zero["from_zero"] == one["from_zero"] == {"run": "finished"}  # run on rank 0 alone, its result on both
    assert zero["from_zero_fails"] == one["from_zero_fails"] == "PreftuneError: another sweep holds the lock"
    assert zero["from_zero_bug"] == "ValueError: a bug"  # the bug itself where it happened
    assert one["from_zero_bug"] == "PreftuneError: ValueError: a bug"  # and no rank left waiting
    assert zero["resume_differs"] == one["resume_differs"]
    assert ("ranks see different checkpoints of runs/x.partial (rank 0: checkpoint-4, rank 1: none)"
            in one["resume_differs"])
    assert zero["resume_same"] is None and one["resume_same"] is None


# ---- the commands, launched ---------------------------------------------------------------------------


def single_process_argv(command: str, tiny_model: Path, out: Path) -> list[str]:
    """Arguments that would really train (tiny model, few pairs) were the launch not refused first."""
    recipe = out.parent / "recipe.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        output_dir: {out}
        data: {{fraction: 0.03, seed: 3}}
        rm: {{model: {tiny_model}, max_pairs: 8, max_length: 256}}
        dpo: {{model: {tiny_model}, max_pairs: 8, max_eval_pairs: 4, max_length: 256, gradient_checkpointing: false}}
        runs:
          dpo: {{loss: sigmoid}}
        """))
    return ["recipe", str(recipe)]


@pytest.mark.parametrize("command", ["recipe"])  # train, sft and rm train run multi-process
def test_a_single_process_command_under_torchrun_stops_before_any_work(tiny_model, tmp_path, command):
    out = tmp_path / "out"
    done = subprocess.run([*TORCHRUN, "-m", "preftune", *single_process_argv(command, tiny_model, out)],
                          capture_output=True, text=True, timeout=300,
                          env={**ENV, "PREFTUNE_CACHE": str(tmp_path / "cache")})
    assert done.returncode != 0
    # each rank refuses on its own; torchrun may kill the second before it prints, so at least one line
    assert (f"preftune: error: `preftune {command}` trains in one process, but this launch asks for 2 processes"
            in done.stderr), done.stderr[-3000:]
    assert not out.exists() and not (tmp_path / "cache").exists()  # nothing written, no model or data loaded


def test_a_sweep_under_an_accelerate_fsdp_config_on_cpu_stops_before_its_plan(tiny_model, tmp_path):
    config = accelerate_fsdp_cpu_config(tmp_path)
    out = tmp_path / "runs"
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(config), "-m", "preftune", "sweep", "--model",
           str(tiny_model), "--output-dir", str(out), "--lr", "1e-2,5e-3", "--batch-size", "4", "--max-pairs", "8",
           "--max-length", "256", "--fraction", "0.03"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**ENV, "PREFTUNE_CACHE": str(tmp_path / "cache")})
    assert done.returncode != 0
    assert "preftune: error: this launch asks accelerate for FSDP (ACCELERATE_USE_FSDP)" in done.stderr, \
        done.stderr[-3000:]
    assert "another `preftune sweep` is running" not in done.stderr  # the launch's message, not the lock's
    assert not out.exists()  # no ROOT, no lock, no sweep.json
