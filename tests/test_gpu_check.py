"""bench/gpu_check.py, kept from rotting without a GPU: its dry run (tiny models, CPU, fp32) writes every
part with its outcome and measurements; a failing part is recorded and the next one still runs; the
pytest outcomes and the package preflight are read as stated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO
from test_bench import bench_module


@pytest.fixture(scope="module")
def check():
    return bench_module("gpu_check")


def test_the_dry_run_writes_every_part(tiny_model, tmp_path):
    out = tmp_path / "gpu_check.json"
    cmd = [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run", "--model", str(tiny_model),
           "--out", str(out), "--commit", "0" * 40]
    env = {**os.environ, "PREFTUNE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["dry_run"] is True and r["ok"] is True
    assert {"commit", "dirty", "device", "torch", "cuda", "total_s"} <= set(r["provenance"])
    assert r["provenance"]["device"].startswith("CPU") and r["preflight"]["cuda"] is False
    parts = r["parts"]
    assert list(parts) == ["gpu_tests", "benchmark", "one_b"]
    assert all(p["ok"] is True and p["error"] is None and p["seconds"] > 0 for p in parts.values())

    tests = parts["gpu_tests"]  # collected, and every one skipped for want of CUDA
    assert "tests/test_gpu.py" in tests["files"] and "tests/test_gpu_check.py" not in tests["files"]
    assert tests["collected"] >= 10 and tests["counts"]["skipped"] == tests["collected"]
    assert all(t["test"].startswith("tests.test_gpu::") and "CUDA" in t["message"] for t in tests["tests"])

    bench = parts["benchmark"]  # 2 pairs, batch 2: one step of each config
    assert bench["pairs"] == 2 and bench["precision"] == "fp32" and bench["fast_vs_trl_pairs_per_s"] > 0
    for config in bench["configs"].values():
        assert config["steps"] == 1 and config["pairs_per_s"] > 0 and config["peak_gpu_mem_gib"] is None
        assert config["losses"][0] == pytest.approx(0.693147, abs=1e-4)  # policy = reference at step 1

    one_b = parts["one_b"]  # the same code path as the ~1B run, on the tiny shape
    full, lora = one_b["runs"]["full"], one_b["runs"]["lora"]
    assert full["params"] == lora["params"] == full["trainable_params"] > lora["trainable_params"] > 0
    for run in (full, lora):
        assert run["steps"] == len(run["step_s"]) == len(run["losses"]) == one_b["steps"]
        assert all(s > 0 for s in run["step_s"]) and run["peak_gpu_mem_gib"] is None


def test_a_failing_part_is_recorded_and_the_next_still_runs(check):
    def broken():
        raise RuntimeError("CUDA out of memory")

    report, saved = {"parts": {}}, []
    check.run_parts({"a": broken, "b": lambda: {"ok": True, "x": 1}}, report, lambda r: saved.append(dict(r["parts"])))
    assert report["parts"]["a"]["ok"] is False and "RuntimeError: CUDA out of memory" in report["parts"]["a"]["error"]
    assert report["parts"]["b"]["ok"] is True and report["parts"]["b"]["x"] == 1
    assert [list(s) for s in saved] == [["a"], ["a", "b"]]  # written after every part
    assert check.overall_ok({"parts": {name: {"ok": True} for name in check.PARTS}})
    assert not check.overall_ok({"parts": {name: {"ok": True} for name in check.PARTS[:-1]}})  # a part missing
    assert not check.overall_ok({"parts": {name: {"ok": name != "one_b"} for name in check.PARTS}})


def test_each_pytest_outcome_is_read_from_the_junit_file(check, tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite name="pytest">'
                   '<testcase classname="tests.test_gpu" name="test_a" time="1.5"/>'
                   '<testcase classname="tests.test_gpu" name="test_b" time="0.1"><failure message="assert 1 == 2">'
                   'trace</failure></testcase>'
                   '<testcase classname="tests.test_gpu" name="test_c" time="0"><skipped message="needs a CUDA GPU"/>'
                   '</testcase><testcase classname="" name="tests.test_x" time="0"><error message="collection failure">'
                   'ModuleNotFoundError</error></testcase></testsuite></testsuites>')
    assert [(t["test"], t["outcome"], t["message"]) for t in check.parse_junit(xml)] == [
        ("tests.test_gpu::test_a", "passed", ""), ("tests.test_gpu::test_b", "failed", "assert 1 == 2"),
        ("tests.test_gpu::test_c", "skipped", "needs a CUDA GPU"), ("::tests.test_x", "error", "collection failure")]


def test_the_preflight_names_a_missing_or_too_old_package(check):
    assert check.package_status("pytest>=8")["ok"] is True
    installed = check.package_status("pytest")["installed"]
    assert check.package_status("pytest>=999") == {"name": "pytest", "wanted": ">=999", "installed": installed,
                                                   "ok": False}
    assert check.package_status("no-such-package-xyz>=1")["installed"] is None
    assert {"torch", "transformers", "trl", "pytest"} <= {r.split(">")[0].split("<")[0] for r in check.requirements()}


def test_a_child_that_outlives_its_timeout_is_killed_with_its_own_children(check, tmp_path):
    """A hung torchrun (or its NCCL worker) must not hold the GPU through the parts after it."""
    pid_file = tmp_path / "grandchild.pid"
    grandchild = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    code = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]); "
            "time.sleep(120)")
    started = time.monotonic()
    with pytest.raises(check.ChildFailed, match="timed out after 3 s"):
        check.run_process([sys.executable, "-c", code], dict(os.environ), timeout=3)
    assert time.monotonic() - started < 60  # not waiting for the grandchild's pipes to close
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.1)
    assert not alive(pid)


def alive(pid: int) -> bool:
    """Running (a killed process the init process has not reaped yet is a zombie: not running)."""
    try:
        return " Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
    except FileNotFoundError:
        return False
