"""Issues 12 and 21's measured recipe: does any objective beat "longer wins" and SFT, on 2 CPU cores?

One command:   .venv/bin/python bench/quality.py
It runs `preftune recipe examples/tldr-cpu.yaml` (reward model, SFT, one DPO run per objective, selection
on validation, the selected run once on test, the judge on the test posts), then writes
bench/results/quality.json and bench/results/quality.md from the recipe's recipe.json. Resumable: run the
same command again after an interruption; finished steps are kept (the recipe's own resume).

Everything reported on test is for the one run chosen on validation; the number of runs compared and
each run's paired interval against the baseline run are recorded, as are both judgements (vs the base, vs
the SFT model). Paths are relative to this checkout. Targets (issues 12 and 21) are written as met /
missed, never adjusted.
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
sys.path.insert(0, str(HERE))  # bench/dpo_throughput.py: the benchmarks' one git probe

from dpo_throughput import code_state  # after the path it is found on

RECIPE = REPO / "examples" / "tldr-cpu.yaml"
COMMAND = ".venv/bin/python bench/quality.py"

TARGETS = {  # issues 12 and 21, on the test split, for the selected run
    "test_length_balanced_accuracy": (">=", 0.65),
    "test_length_balanced_ci_low": (">", 0.55),
    "test_accuracy": (">=", 0.68),
    "test_accuracy_minus_longer_wins": (">", 0.0),
    "judge_lc_win_rate": (">", 0.60),  # = judge_vs_base_lc_win_rate
    "judge_vs_sft_lc_win_rate": (">=", 0.65),
    "judge_vs_sft_lc_win_rate_ci_low": (">", 0.5),
    "rm_abs_length_spearman": ("<=", 0.2),
    "max_wall_s_per_run": ("<=", 2400),  # issue 21: each DPO run ≤ 40 min (issue 12: 30)
    "wall_s_total": ("<=", 7200),
}


def _low(ci) -> float | None:
    return ci[0] if ci else None


def _in_repo(path: str | None, root: Path) -> str | None:
    """A path recipe.json records (relative to ROOT; absolute in an older one) relative to this checkout when
    inside it: a committed results file names no one's disk. Outside it: where it is, not guessed at."""
    if not path:
        return path
    full = Path(path) if Path(path).is_absolute() else root / path
    return full.resolve().relative_to(REPO.resolve()).as_posix() if full.resolve().is_relative_to(REPO.resolve()) \
        else str(full)


def _repo_relative(chain: list[dict] | None, root: Path = REPO) -> list[dict] | None:
    """The chain with its paths `_in_repo`."""
    return None if chain is None else [{**s, "path": _in_repo(s["path"], root)} if s.get("path") else s for s in chain]


def _lc(judge: dict | None) -> tuple[dict, str | None]:
    """(tuned_vs_base of a judgement's headline decoding, greedy where judged; that decoding's name)."""
    decodings = (judge or {}).get("decodings", {})
    headline = decodings.get("greedy") or next(iter(decodings.values()), {})
    return headline.get("tuned_vs_base", {}), next((k for k, v in decodings.items() if v is headline), None)


def quality(summary: dict, load: dict) -> dict:
    """The results file's content from a finished recipe.json."""
    test, judge, rm = summary["test"] or {}, summary.get("judge_test") or {}, summary.get("rm_eval") or {}
    root = Path(summary.get("root") or ".")
    root = root if root.is_absolute() else REPO / root  # bench runs the recipe from the checkout
    tb, decoding = _lc(judge)
    vs_sft, sft = _lc(summary.get("judge_test_vs_sft")), summary.get("judge_test_vs_sft") or {}
    vs_baseline = summary.get("selected_vs_baseline") or {}
    shorter = test.get("chosen_shorter") or {}
    per_run = {r["run"]: r["wall_s"] for r in summary["runs"]}
    cfg = summary.get("selected_config") or {}
    out = {
        "command": COMMAND,
        "recipe": str(RECIPE.relative_to(REPO)),
        "root": _in_repo(str(root), root),
        "runs_compared": summary["runs_compared"],
        "rank_by": f"validation {summary['rank_by']}",
        "selected_run": summary["selected_run"],
        "selected_path": _in_repo(summary.get("selected_path"), root),
        "selected_loss": cfg.get("train", {}).get("loss"),
        "chain": _repo_relative(cfg.get("chain"), root),
        "train_pairs_used": summary.get("train_pairs_used"),
        "sft_rows_used": summary.get("sft_rows_used"),
        "baseline": summary.get("baseline"),
        "selected_vs_baseline_difference": vs_baseline.get("difference"),
        "selected_vs_baseline_ci": summary.get("selected_vs_baseline_ci"),
        "selected_distinguishable_from_baseline": vs_baseline.get("distinguishable"),
        "selection_verdict": summary.get("selection_verdict") or summary.get("baseline_reason"),
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
        "judge_decoding": decoding,
        "judge_base": judge.get("base_model"),
        "judge_lc_win_rate": tb.get("length_controlled_win_rate"),
        "judge_lc_win_rate_ci95": tb.get("length_controlled_ci95"),
        "judge_lc_win_rate_ci_low": _low(tb.get("length_controlled_ci95")),
        "judge_win_rate": tb.get("win_rate"),
        "judge_n": judge.get("posts"),
        "judge_verdict_strength": judge.get("verdict_strength"),
        "judge_vs_base_lc_win_rate": tb.get("length_controlled_win_rate"),
        "judge_vs_base_lc_win_rate_ci95": tb.get("length_controlled_ci95"),
        "judge_vs_sft_base": _in_repo(sft.get("base_model"), root),
        "judge_vs_sft_decoding": vs_sft[1],
        "judge_vs_sft_lc_win_rate": vs_sft[0].get("length_controlled_win_rate"),
        "judge_vs_sft_lc_win_rate_ci95": vs_sft[0].get("length_controlled_ci95"),
        "judge_vs_sft_lc_win_rate_ci_low": _low(vs_sft[0].get("length_controlled_ci95")),
        "judge_vs_sft_win_rate": vs_sft[0].get("win_rate"),
        "judge_vs_sft_n": sft.get("posts"),
        "judge_vs_sft_skipped": summary.get("judge_vs_sft_skipped"),
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


def _versus(row: dict, baseline: str | None) -> str:
    """A run's paired Δ length-balanced accuracy vs the baseline, "+0.041 [−0.030, +0.112]"; or why not."""
    v = row.get("vs_baseline")
    if not v:
        return "–"
    if row["run"] == baseline:
        return "baseline"
    if v.get("ci95") is None:
        return "n/a"
    return f"{v['difference']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]"


def markdown(q: dict) -> str:
    lines = ["| run (validation) | accuracy | length-balanced | Δ vs baseline [95% CI] | chosen-shorter | chosen-longer "
             "| longer wins | wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in q["validation_runs"]:
        star = " **(selected)**" if r["run"] == q["selected_run"] else ""
        lines.append(f"| {r['run']}{star} | {_f(r['accuracy'])} | {_f(r['length_balanced_accuracy'])} | "
                     f"{_versus(r, q['baseline'])} | {_f(r['chosen_shorter_accuracy'])} (n={r['chosen_shorter_n']}) | "
                     f"{_f(r['chosen_longer_accuracy'])} (n={r['chosen_longer_n']}) | "
                     f"{_f(r['longer_wins_baseline'])} | {_f(r['wall_s'], '.0f')} |")
    lb = q["test_length_balanced_ci95"] or [None, None]
    lc = q["judge_lc_win_rate_ci95"] or [None, None]
    sft_ci = q["judge_vs_sft_lc_win_rate_ci95"] or [None, None]
    lines += ["", f"Selected on validation ({q['rank_by']}, {q['runs_compared']} runs): **{q['selected_run']}**. "
              f"On test (n={q['test_n']}): accuracy {_f(q['test_accuracy'])} vs longer wins "
              f"{_f(q['test_longer_wins_baseline'])}; length-balanced {_f(q['test_length_balanced_accuracy'])} "
              f"(95% CI {_f(lb[0])}–{_f(lb[1])}); chosen-shorter {_f(q['test_chosen_shorter_accuracy'])} "
              f"(n={q['test_chosen_shorter_n']}). Judge on {q['judge_n']} test posts vs {q['judge_base']} "
              f"({q['judge_decoding']}): length-controlled win rate {_f(q['judge_lc_win_rate'])} "
              f"(95% CI {_f(lc[0])}–{_f(lc[1])}); reward model length-balanced accuracy "
              f"{_f(q['rm_length_balanced_accuracy'])}, Spearman(reward, length) {_f(q['rm_length_spearman'])}. "
              f"Total wall time {q['wall_s_total'] / 60:.0f} min.", "",
              f"Selection vs the baseline (paired, validation): {q['selection_verdict'] or '–'}.", "",
              (f"What DPO adds: judged vs its own SFT model {q['judge_vs_sft_base']} on {q['judge_vs_sft_n']} test posts "
               f"({q['judge_vs_sft_decoding']}): length-controlled win rate {_f(q['judge_vs_sft_lc_win_rate'])} "
               f"(95% CI {_f(sft_ci[0])}–{_f(sft_ci[1])}); vs the base {_f(q['judge_vs_base_lc_win_rate'])}. "
               f"Trained on {q['train_pairs_used']} pairs after SFT on {q['sft_rows_used']} rows."
               if not q["judge_vs_sft_skipped"] else f"Not judged vs an SFT model: {q['judge_vs_sft_skipped']}."), "",
              "| target | value | met |", "|---|---|---|"]
    for key, t in q["targets"].items():
        lines.append(f"| {key} {t['target']} | {_f(t['value'])} | {'yes' if t['met'] else 'no' if t['met'] is False else '–'} |")
    if "commit" in q:  # files written before the probe was recorded have none
        lines += ["", f"Measured at commit {q['commit'] or 'unknown (no git)'}"
                      f"{', with uncommitted changes' if q['dirty'] else ''}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(RECIPE))
    parser.add_argument("--out", default=str(HERE / "results" / "quality.json"))
    parser.add_argument("--output-dir", default=None, help="the recipe's ROOT (default: the file's output_dir)")
    parser.add_argument("--note", action="append", default=[], help="a line kept under 'notes' in the results "
                        "(e.g. how this run was interrupted); repeatable")
    ns = parser.parse_args(argv)

    # the code this invocation runs, probed before the recipe starts (a resumed recipe's earlier steps may
    # have run at another commit: that invocation's file recorded it)
    code, load_before, start = code_state(REPO), os.getloadavg(), time.monotonic()
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
    q = {**code, **quality(summary, load), "notes": ns.note}
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(q, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(q) + "\n")
    print(markdown(q))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
