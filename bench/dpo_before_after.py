"""A DPO run of the recipe's settings at two commits, interleaved (A B B A …) on one machine.

    .venv/bin/python bench/dpo_before_after.py --before REV [--after HEAD] [--pairs 24] [--rounds 1]

Each commit is checked out into a temporary git worktree and runs `preftune train` as a user would
(the recipe's DPO settings from examples/tldr-cpu.yaml: fast engine, lr 3e-5, batch 8, max_length
512, save_steps 4; --no-evaluate), in its own process. The training throughput is each run's own
metrics.json `pairs_per_s` (training loop only: the reference pass is cached and shared). Writes
bench/results/dpo_before_after.json with both commits, every run, the load and the ratio after/before.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RECIPE = ["--engine", "fast", "--lr", "3e-5", "--batch-size", "8", "--epochs", "1", "--max-length", "512",
          "--save-steps", "4", "--loss", "sigmoid", "--beta", "0.1", "--no-evaluate"]


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def train_once(src: Path, out: Path, pairs: int) -> dict:
    """One `preftune train` from the checkout at src; its metrics.json and wall time."""
    env = {**os.environ, "PYTHONPATH": str(src / "src"), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "preftune", "train", *RECIPE, "--max-pairs", str(pairs),
                    "--output-dir", str(out)], env=env, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    metrics = json.loads(next(out.glob("dpo_model_*/metrics.json")).read_text())
    return {"pairs_per_s": metrics["pairs_per_s"], "train_runtime_s": metrics["train_runtime_s"],
            "wall_s": round(wall, 1), "load_1min": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the earlier commit")
    parser.add_argument("--after", default="HEAD", help="the later commit (default HEAD)")
    parser.add_argument("--pairs", type=int, default=24, help="training pairs per run")
    parser.add_argument("--rounds", type=int, default=1, help="A B B A rounds")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "dpo_before_after.json")
    args = parser.parse_args()
    commits = {"before": git("rev-parse", args.before), "after": git("rev-parse", args.after)}
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for side, commit in commits.items():
            trees[side] = Path(tmp) / side
            git("worktree", "add", "--detach", str(trees[side]), commit)
        try:
            order = ["before", "after", "after", "before"] * args.rounds
            for i, side in enumerate(order):
                runs[side].append(train_once(trees[side], Path(tmp) / f"run{i}", args.pairs))
                print(side, runs[side][-1], flush=True)
        finally:
            for tree in trees.values():
                git("worktree", "remove", "--force", str(tree))
    median = {side: statistics.median(r["pairs_per_s"] for r in rs) for side, rs in runs.items()}
    report = {"commits": commits, "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
              "settings": {"args": RECIPE, "pairs": args.pairs, "rounds": args.rounds, "threads": os.cpu_count()},
              "runs": runs, "median_pairs_per_s": median, "ratio_after_vs_before": median["after"] / median["before"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("median_pairs_per_s", "ratio_after_vs_before")}))


if __name__ == "__main__":
    main()
