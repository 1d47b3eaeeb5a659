"""Issue 12's measured recipe: does any objective beat "longer wins" on quality, on 2 CPU cores?

One command:   .venv/bin/python bench/quality.py
It runs `preftune recipe examples/tldr-cpu.yaml` (reward model, SFT, one DPO run per objective, selection
on validation, the selected run once on test, the judge on the test posts), then writes
bench/results/quality.json and bench/results/quality.md from the recipe's recipe.json. Resumable: run the
same command again after an interruption; finished steps are kept (the recipe's own resume).

Everything reported on test is for the one run chosen on validation; the number of runs compared is
recorded. Targets (issue 12) are checked and written as met / missed, never adjusted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RECIPE = REPO / "examples" / "tldr-cpu.yaml"
COMMAND = ".venv/bin/python bench/quality.py"

TARGETS = {  # issue 12, on the test split, for the selected run
    "test_length_balanced_accuracy": (">=", 0.65),
    "test_length_balanced_ci_low": (">", 0.55),
    "test_accuracy": (">=", 0.68),
    "test_accuracy_minus_longer_wins": (">", 0.0),
    "judge_lc_win_rate": (">", 0.60),
    "rm_abs_length_spearman": ("<=", 0.2),
    "max_wall_s_per_run": ("<=", 1800),
    "wall_s_total": ("<=", 7200),
}


def _low(ci) -> float | None:
    return ci[0] if ci else None


def _repo_relative(chain: list[dict] | None) -> list[dict] | None:
    """The chain with paths inside this checkout made relative: a committed results file names no one's disk."""
    def rel(step: dict) -> dict:
        path = step.get("path")
        if path and Path(path).is_absolute() and Path(path).resolve().is_relative_to(REPO.resolve()):
            return {**step, "path": str(Path(path).resolve().relative_to(REPO.resolve()))}
        return step
    return None if chain is None else [rel(step) for step in chain]


def quality(summary: dict, load: dict) -> dict:
    """The results file's content from a finished recipe.json."""
    test, judge, rm = summary["test"] or {}, summary.get("judge_test") or {}, summary.get("rm_eval") or {}
    decodings = judge.get("decodings", {})
    headline = decodings.get("greedy") or next(iter(decodings.values()), {})
    tb = headline.get("tuned_vs_base", {})
    shorter = test.get("chosen_shorter") or {}
    per_run = {r["run"]: r["wall_s"] for r in summary["runs"]}
    cfg = summary.get("selected_config") or {}
    out = {
        "command": COMMAND,
        "recipe": str(RECIPE.relative_to(REPO)),
        "runs_compared": summary["runs_compared"],
        "rank_by": f"validation {summary['rank_by']}",
        "selected_run": summary["selected_run"],
        "selected_loss": cfg.get("train", {}).get("loss"),
        "chain": _repo_relative(cfg.get("chain")),
        "test_n": test.get("n"),
        "test_accuracy": test.get("accuracy"),
        "test_accuracy_ci95": test.get("accuracy_ci95"),
        "test_longer_wins_baseline": test.get("longer_wins_baseline"),
        "test_length_balanced_accuracy": test.get("length_balanced_accuracy"),
        "test_length_balanced_ci95": test.get("length_balanced_ci95"),
        "test_length_balanced_ci_low": _low(test.get("length_balanced_ci95")),
        "test_chosen_shorter_accuracy": shorter.get("accuracy"),
        "test_chosen_shorter_n": shorter.get("n"),
        "test_chosen_longer_accuracy": (test.get("chosen_longer") or {}).get("accuracy"),
        "test_chosen_longer_n": (test.get("chosen_longer") or {}).get("n"),
        "judge_decoding": next((k for k, v in decodings.items() if v is headline), None),
        "judge_base": judge.get("base_model"),
        "judge_lc_win_rate": tb.get("length_controlled_win_rate"),
        "judge_lc_win_rate_ci95": tb.get("length_controlled_ci95"),
        "judge_lc_win_rate_ci_low": _low(tb.get("length_controlled_ci95")),
        "judge_win_rate": tb.get("win_rate"),
        "judge_n": judge.get("posts"),
        "judge_verdict_strength": judge.get("verdict_strength"),
        "rm_length_balanced_accuracy": rm.get("length_balanced_accuracy"),
        "rm_length_balanced_ci95": rm.get("length_balanced_ci95"),
        "rm_length_spearman": rm.get("reward_length_spearman"),
        "rm_accuracy": rm.get("accuracy"),
        "wall_s_per_run": per_run,
        "wall_s_steps": {k: v.get("wall_s") for k, v in summary["steps"].items()},
        "wall_s_total": summary["wall_s_total"],
        "validation_runs": summary["runs"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), **load},
    }
    derived = {
        "test_accuracy_minus_longer_wins": (None if out["test_accuracy"] is None or out["test_longer_wins_baseline"]
                                            is None else out["test_accuracy"] - out["test_longer_wins_baseline"]),
        "rm_abs_length_spearman": None if out["rm_length_spearman"] is None else abs(out["rm_length_spearman"]),
        "max_wall_s_per_run": max((v for v in per_run.values() if v is not None), default=None),
    }
    out["targets"] = {}
    for key, (op, bound) in TARGETS.items():
        value = out.get(key, derived.get(key))
        met = None if value is None else (value >= bound if op == ">=" else value > bound if op == ">"
                                          else value <= bound)
        out["targets"][key] = {"target": f"{op} {bound}", "value": value, "met": met}
    return out


def _f(x, spec=".3f") -> str:
    return "–" if x is None else format(x, spec)


def markdown(q: dict) -> str:
    lines = ["| run (validation) | accuracy | length-balanced | chosen-shorter | chosen-longer | longer wins | wall s |",
             "|---|---|---|---|---|---|---|"]
    for r in q["validation_runs"]:
        star = " **(selected)**" if r["run"] == q["selected_run"] else ""
        lines.append(f"| {r['run']}{star} | {_f(r['accuracy'])} | {_f(r['length_balanced_accuracy'])} | "
                     f"{_f(r['chosen_shorter_accuracy'])} (n={r['chosen_shorter_n']}) | "
                     f"{_f(r['chosen_longer_accuracy'])} (n={r['chosen_longer_n']}) | "
                     f"{_f(r['longer_wins_baseline'])} | {_f(r['wall_s'], '.0f')} |")
    lb = q["test_length_balanced_ci95"] or [None, None]
    lc = q["judge_lc_win_rate_ci95"] or [None, None]
    lines += ["", f"Selected on validation ({q['rank_by']}, {q['runs_compared']} runs): **{q['selected_run']}**. "
              f"On test (n={q['test_n']}): accuracy {_f(q['test_accuracy'])} vs longer wins "
              f"{_f(q['test_longer_wins_baseline'])}; length-balanced {_f(q['test_length_balanced_accuracy'])} "
              f"(95% CI {_f(lb[0])}–{_f(lb[1])}); chosen-shorter {_f(q['test_chosen_shorter_accuracy'])} "
              f"(n={q['test_chosen_shorter_n']}). Judge on {q['judge_n']} test posts vs {q['judge_base']} "
              f"({q['judge_decoding']}): length-controlled win rate {_f(q['judge_lc_win_rate'])} "
              f"(95% CI {_f(lc[0])}–{_f(lc[1])}); reward model length-balanced accuracy "
              f"{_f(q['rm_length_balanced_accuracy'])}, Spearman(reward, length) {_f(q['rm_length_spearman'])}. "
              f"Total wall time {q['wall_s_total'] / 60:.0f} min.", "",
              "| target | value | met |", "|---|---|---|"]
    for key, t in q["targets"].items():
        lines.append(f"| {key} {t['target']} | {_f(t['value'])} | {'yes' if t['met'] else 'no' if t['met'] is False else '–'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(RECIPE))
    parser.add_argument("--out", default=str(HERE / "results" / "quality.json"))
    parser.add_argument("--output-dir", default=None, help="the recipe's ROOT (default: the file's output_dir)")
    parser.add_argument("--note", action="append", default=[], help="a line kept under 'notes' in the results "
                        "(e.g. how this run was interrupted); repeatable")
    ns = parser.parse_args(argv)

    load_before, start = os.getloadavg(), time.monotonic()
    cmd = [sys.executable, "-m", "preftune", "recipe", ns.recipe] + (["--output-dir", ns.output_dir] if ns.output_dir
                                                                      else [])
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        print("bench/quality.py: the recipe stopped; run the same command again to continue", file=sys.stderr)
        return 1
    import yaml

    root = Path(ns.output_dir or yaml.safe_load(Path(ns.recipe).read_text())["output_dir"])
    root = root if root.is_absolute() else REPO / root
    summary = json.loads((root / "recipe.json").read_text())
    load = {"load_avg_1m_before": round(load_before[0], 2), "load_avg_1m_after": round(os.getloadavg()[0], 2),
            "wall_s_this_invocation": round(time.monotonic() - start, 1)}
    q = quality(summary, load)
    q["notes"] = ns.note
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(q, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(q) + "\n")
    print(markdown(q))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
