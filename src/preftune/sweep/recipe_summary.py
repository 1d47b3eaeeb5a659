"""ROOT/recipe.json, what a finished recipe measured: every run's validation numbers with its paired interval
against the baseline run (sweep/paired.py), the selection and whether it is distinguishable from the
baseline, the selected run's test numbers, its two judgements (vs the base model, vs its own SFT model),
the reward model's numbers; every path inside ROOT written relative to ROOT. And its printed form.
Keys: docs/recipe.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from preftune import fmt
from preftune.runs.folder import (
    CONFIG_FILE,
    JUDGE_TEST_FILE,
    METRICS_FILE,
    RM_EVAL_FILE,
    read_json,
)
from preftune.runs.results import read_eval
from preftune.sweep import paired
from preftune.sweep.paired import OUTCOMES_KEY

JUDGE_VS_SFT_FILE = "judge_test_vs_sft.json"  # the selected run judged against the SFT model it started from
NO_SFT = "no sft step: the DPO runs start from the base model, so the judgement vs the base is the one vs SFT's start"


def run_label(run: Path) -> str:
    return f"{run.parent.name}/{run.name}"


def compare_with_baseline(runs: list[Path], rows: list[dict], baseline: Path | None, why: str) -> None:
    """Each row gets `vs_baseline`: its validation length-balanced accuracy minus the baseline run's, paired
    (None without a baseline; `why` says why there is none)."""
    evals = {run: read_eval(run / "eval.json") for run in runs}
    for run, row in zip(runs, rows):
        row["vs_baseline"] = None if baseline is None else paired.versus(evals[run], row["run"], evals[baseline],
                                                                          run_label(baseline))
        if baseline is None:
            row["vs_baseline_status"] = why


def portable(obj: Any, root: Path) -> Any:
    """`obj` with every path inside ROOT (absolute, or as ROOT was given) relative to ROOT, also within a
    text ("local folder ROOT/sft/…" → "local folder sft/…"): recipe.json names no one's disk."""
    if isinstance(obj, dict):
        return {k: portable(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v, root) for v in obj]
    if not isinstance(obj, str):
        return obj
    absolute = {str(root.resolve()), str(root.absolute())}
    if obj in absolute or obj == str(root):
        return "."
    if not root.is_absolute() and obj.startswith(f"{root}/"):  # a path as ROOT was given, relative
        return obj[len(str(root)) + 1:]
    for prefix in absolute:
        obj = obj.replace(f"{prefix}/", "")
    return obj


def _recipe_path(path: str) -> str:
    """The recipe file relative to the working folder when inside it (as a checkout names it)."""
    p = Path(path).resolve()
    return p.relative_to(Path.cwd()).as_posix() if p.is_relative_to(Path.cwd()) else path


def summarize(recipe: dict, root: Path, root_as_given: str, steps: dict, runs: list[Path], rows: list[dict],
              selected: Path, baseline: Path | None, why: str, sft_run: Path | None, wall_s: float) -> dict:
    """recipe.json's content (paths made relative to ROOT by `portable`)."""
    test = read_eval(selected / "test.json")
    chosen = next(r for r, run in zip(rows, runs) if run == selected)
    vs = chosen.get("vs_baseline")
    summary = {
        "recipe": _recipe_path(recipe["path"]),
        "paths": "relative to root",
        "steps": steps,
        "wall_s_total": round(sum(s.get("wall_s", 0) for s in steps.values()), 1),
        "wall_s_this_invocation": round(wall_s, 1),
        "rank_by": recipe["select"]["rank_by"],
        "runs_compared": len(runs),
        "runs": rows,
        "baseline": None if baseline is None else run_label(baseline),
        "baseline_reason": why,
        "selected_run": run_label(selected),
        "selected_path": str(selected),
        "selected_vs_baseline": vs,
        "selected_vs_baseline_ci": (vs or {}).get("ci95"),
        "selection_verdict": paired.verdict(run_label(selected), vs) if baseline else f"{run_label(selected)}: {why}",
        "selected_config": read_json(selected / CONFIG_FILE),
        "train_pairs_used": (read_json(selected / METRICS_FILE, missing_ok=True) or {}).get("train_pairs"),
        "sft_rows_used": None if sft_run is None else (read_json(sft_run / METRICS_FILE, missing_ok=True)
                                                        or {}).get("train_rows"),
        # test.json keeps its per-pair outcomes; the summary, the numbers
        "test": None if test is None else {k: v for k, v in test.items() if k != OUTCOMES_KEY},
        "judge_test": read_json(selected / JUDGE_TEST_FILE, missing_ok=True),
        "judge_test_vs_sft": None if sft_run is None else read_json(selected / JUDGE_VS_SFT_FILE, missing_ok=True),
        "judge_vs_sft_skipped": NO_SFT if sft_run is None else None,
        "rm_eval": read_json(root / "reward_model" / RM_EVAL_FILE, missing_ok=True),
    }
    return {"root": root_as_given, **portable(summary, root)}


def lc_win_rate(judge: dict | None) -> tuple[float | None, list | None]:
    """(length-controlled win rate, its interval) of a judgement's headline decoding (greedy if judged)."""
    decodings = (judge or {}).get("decodings") or {}
    head = decodings.get("greedy") or next(iter(decodings.values()), {})
    tb = head.get("tuned_vs_base") or {}
    return tb.get("length_controlled_win_rate"), tb.get("length_controlled_ci95")


def _f(x, digits: int = 3) -> str:
    return fmt.number(x, digits, gap="–")


def format_summary(s: dict) -> str:
    lines = [f"recipe {s['recipe']}: {s['runs_compared']} runs compared on validation by {s['rank_by']}", "",
             f"  {'run':<52}{'acc':>7}{'bal':>7}{'shorter':>9}{'longer':>8}{'longer-wins':>12}{'wall s':>8}"
             "  Δ bal. vs baseline [95% CI]"]
    for r in s["runs"]:
        mark = "*" if r["path"] == s["selected_path"] else " "
        vs = r.get("vs_baseline")
        lines.append(f"{mark} {r['run']:<52}{_f(r['accuracy']):>7}{_f(r['length_balanced_accuracy']):>7}"
                     f"{_f(r['chosen_shorter_accuracy']):>9}{_f(r['chosen_longer_accuracy']):>8}"
                     f"{_f(r['longer_wins_baseline']):>12}{_f(r['wall_s'], 0):>8}  "
                     + ("baseline" if vs and r["run"] == vs["baseline"] else paired.interval_text(vs) if vs else "–"))
    t = s["test"] or {}
    lines += ["", f"selection: {s.get('selection_verdict') or s.get('baseline_reason') or 'no paired comparison'}",
              f"selected {s['selected_run']}, on test (n={t.get('n')}): accuracy {_f(t.get('accuracy'))}, "
              f"length-balanced {fmt.cell(t.get('length_balanced_accuracy'), t.get('length_balanced_ci95'))}, "
              f"longer wins {_f(t.get('longer_wins_baseline'))}"]
    for label, key in (("the base model", "judge_test"), ("its SFT model", "judge_test_vs_sft")):
        if s.get(key):
            rate, ci = lc_win_rate(s[key])
            lines.append(f"judged vs {label} on {s[key].get('posts')} test posts: length-controlled win rate "
                         f"{fmt.cell(rate, ci)}")
    if s.get("judge_vs_sft_skipped"):
        lines.append(f"not judged vs an SFT model: {s['judge_vs_sft_skipped']}")
    lines.append(f"total wall time of all steps: {s['wall_s_total']:.0f} s")
    return "\n".join(lines)
