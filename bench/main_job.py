"""The main job (scripts/main.sh's `preftune train`) at two commits, interleaved (A B B A …), end to end.

    .venv/bin/python bench/main_job.py --before REV [--after HEAD] [--rounds 1]

Each commit is checked out into a temporary git worktree and runs the command scripts/main.sh runs (its
set-up aside: the same .venv serves both), as a user would, in its own process, with its own empty
reference log-prob cache (the converted default model is shared: converting it is set-up, not the job).
The time is the process's wall time, model loading, reference pass, training and evaluation included.
Writes bench/results/main_job.json with both commits, every run, the load and the ratio before/after.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def main_job_args(tree: Path) -> list[str]:
    """The `preftune train` flags of the commit's own scripts/main.sh (its last command)."""
    text = (tree / "scripts" / "main.sh").read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.strip().startswith("exec .venv/bin/preftune train"))
    return [a for a in shlex.split(line)[3:] if a != "$@"]


def run_once(tree: Path, work: Path, shared_models: Path) -> dict:
    """One main job from the checkout at `tree`; wall time, the precision it ran in, the load after."""
    cache = work / "cache"
    cache.mkdir(parents=True)
    (cache / "models").symlink_to(shared_models)
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1", "PREFTUNE_CACHE": str(cache)}
    env.pop("PREFTUNE_AUTO_PRECISION", None)  # what a user gets
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "preftune", "train", *main_job_args(tree)], cwd=work, env=env, check=True,
                   capture_output=True, text=True)
    wall = time.perf_counter() - started
    run = next((work / "runs").glob("dpo_model_*"))
    config = json.loads((run / "preftune_config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    return {"wall_s": round(wall, 1), "precision": config.get("precision", "fp32 (not recorded: auto was fp32 here)"),
            "pairs_per_s": metrics["pairs_per_s"], "eval_accuracy": json.loads((run / "eval.json").read_text())["accuracy"],
            "load_1min": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the earlier commit")
    parser.add_argument("--after", default="HEAD", help="the later commit (default HEAD)")
    parser.add_argument("--rounds", type=int, default=1, help="A B B A rounds")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "main_job.json")
    args = parser.parse_args()
    shared = Path(os.environ.get("PREFTUNE_CACHE") or Path.home() / ".cache" / "preftune") / "models"
    commits = {"before": git("rev-parse", args.before), "after": git("rev-parse", args.after)}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {side: Path(tmp) / side for side in commits}
        for side, commit in commits.items():
            git("worktree", "add", "--detach", str(trees[side]), commit)
        try:
            for i, side in enumerate(["before", "after", "after", "before"] * args.rounds):
                runs[side].append(run_once(trees[side], Path(tmp) / f"run{i}", shared))
                print(side, runs[side][-1], flush=True)
        finally:
            for tree in trees.values():
                git("worktree", "remove", "--force", str(tree))
    median = {side: statistics.median(r["wall_s"] for r in rs) for side, rs in runs.items()}
    report = {"command": "the `preftune train` line of scripts/main.sh", "commits": commits,
              "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
              "settings": {"rounds": args.rounds, "threads": os.cpu_count()}, "runs": runs,
              "median_wall_s": median, "speedup_after_vs_before": median["before"] / median["after"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("median_wall_s", "speedup_after_vs_before")}))


if __name__ == "__main__":
    main()
