"""bf16 against fp32 on the recipe's selected configuration: is bf16 the same model, faster?

    .venv/bin/python bench/precision_agreement.py [--root runs/precision-check] [--ref-pairs 64]

Round 1's recipe (examples/tldr-cpu.yaml at 7ab742c: tldr-sample, 10% validation, 10% test, seed 42), its
selected run (SFT on 112 chosen rows, then sigmoid_norm β 3.0, 256 pairs, lr 3e-5, batch 8, fast
engine): the SFT model once in fp32, then the DPO run twice from it, `--precision fp32` and
`--precision bf16`, each validated in its own precision. Compares per validation pair, with paired
intervals (posts resampled); the reference pass's per-token log-probs at both precisions; each run's
training pairs/s. Each step is a `preftune` command; a finished one is skipped, a killed one resumes.
Writes bench/results/precision_agreement.json. Never reads the test split's pairs.
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

DATA = ["--dataset", "tldr-sample", "--fraction", "1.0", "--eval-fraction", "0.1", "--test-fraction", "0.1",
        "--seed", "42"]
SFT = ["--sft-data", "chosen", "--lr", "2e-5", "--batch-size", "8", "--max-rows", "112", "--max-length", "512",
       "--engine", "fast", "--precision", "fp32", "--save-steps", "4"]
DPO = ["--engine", "fast", "--loss", "sigmoid_norm", "--beta", "3.0", "--lr", "3e-5", "--batch-size", "8",
       "--epochs", "1", "--max-pairs", "256", "--max-length", "512", "--save-steps", "4"]
PRECISIONS = ("fp32", "bf16")


def preftune(*args: str) -> float:
    """Run one preftune command (its output streams through); its wall time."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "preftune", *args], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - started


def finished(root: Path) -> Path | None:
    runs = [p for p in root.glob("*_model_*") if (p / "metrics.json").is_file() and not p.name.endswith(".partial")]
    return runs[0] if runs else None


def paired(x: list, y: list) -> dict:
    """Run x − run y on the same pairs (stats.PairOutcome lists): accuracy and length-balanced accuracy, each
    with the 95% interval of a paired bootstrap over posts (preftune's own, as `preftune report` uses)."""
    from preftune.stats import (
        MIN_RESAMPLES,
        aligned,
        bootstrap_interval,
        paired_balanced_difference,
    )

    rows = aligned(x, y)  # by pair key, refusing pairs not in both: a difference of the same pair's outcomes
    deltas = [a.correct - b.correct for a, b in rows]
    mean = lambda values: sum(values) / len(values)
    return {"accuracy": {"difference": mean(deltas), "ci95": bootstrap_interval(deltas, [a.post_id for a, _ in rows],
                                                                              mean, MIN_RESAMPLES),
                         "resamples": MIN_RESAMPLES, "seed": 0},
            "length_balanced_accuracy": paired_balanced_difference(x, y),
            "same_outcome_share": sum(d == 0 for d in deltas) / len(deltas)}


def per_pair(run: Path, precision: str) -> list:
    """Each validation pair's outcome (stats.PairOutcome) under the run's reward rule, scored in `precision`."""
    from preftune.dpo.evaluate import pair_keys, pair_logps, run_reward_rule
    from preftune.models import load_model, load_tokenizer
    from preftune.runs.results import open_run
    from preftune.stats import PairOutcome

    r = open_run(run)
    pairs = r.pairs("validation")
    lp = pair_logps(load_model(str(run)), r.reference_model, load_tokenizer(str(run)), pairs, precision=precision)
    chosen, rejected = lp.rewards(run_reward_rule(r))
    return [PairOutcome(k, p.post_id, float(c > j), float(a), float(b)) for k, p, c, j, a, b in
            zip(pair_keys(pairs), pairs, chosen.tolist(), rejected.tolist(), lp.chosen_tokens.tolist(),
                lp.rejected_tokens.tolist(), strict=True)]


def reference_tokens(model_path: str, pairs, n: int) -> dict:
    """Per-token log-probs of the reference pass (the SFT model) on n validation pairs at fp32 and bf16."""
    import torch

    from preftune.dpo.logps import PairLogpsModule, pack_pair, pack_row, row_logps
    from preftune.models import load_model, load_tokenizer
    from preftune.precision import DTYPES

    tok, model = load_tokenizer(model_path), load_model(model_path).eval()
    token_d, pair_d = [], []
    with torch.no_grad():
        for p in pairs[:n]:
            row = pack_row([pack_pair(tok, p.prompt, p.chosen, p.rejected)])
            lp = {name: row_logps(PairLogpsModule(model, dtype=DTYPES[name]), row, per_token=True).float()
                  for name in PRECISIONS}
            d = (lp["bf16"] - lp["fp32"]).abs()
            token_d.append(d)
            pair_d.append(abs(float(lp["bf16"].sum() - lp["fp32"].sum())))
    allt = torch.cat(token_d)
    return {"pairs": min(n, len(pairs)), "tokens": allt.numel(), "max_abs_token_logp_diff": allt.max().item(),
            "mean_abs_token_logp_diff": allt.mean().item(),
            "mean_abs_pair_sum_diff": sum(pair_d) / len(pair_d), "max_abs_pair_sum_diff": max(pair_d)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "precision-check")
    parser.add_argument("--ref-pairs", type=int, default=64, help="validation pairs for the reference pass comparison")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "precision_agreement.json")
    args = parser.parse_args()
    root, walls, code = args.root, {}, code_state(REPO)  # the code measured: probed before the runs start
    if finished(root / "sft") is None:
        walls["sft"] = preftune("sft", *DATA, *SFT, "--output-dir", str(root / "sft"))
    sft = finished(root / "sft")
    for name in PRECISIONS:
        if finished(root / name) is None:
            walls[name] = preftune("train", *DATA, *DPO, "--model", str(sft), "--precision", name,
                                   "--output-dir", str(root / name))
    runs = {name: finished(root / name) for name in PRECISIONS}
    metrics = {n: json.loads((r / "metrics.json").read_text()) for n, r in runs.items()}
    evals = {n: json.loads((r / "eval.json").read_text()) for n, r in runs.items()}

    from preftune.runs.results import open_run

    outcomes = {name: per_pair(run, name) for name, run in runs.items()}
    outcomes["fp32_run_scored_bf16"] = per_pair(runs["fp32"], "bf16")
    compare = {f"{other}_minus_fp32": paired(outcomes[other], outcomes["fp32"])
               for other in ("bf16", "fp32_run_scored_bf16")}
    reference = reference_tokens(str(sft), open_run(runs["fp32"]).pairs("validation"), args.ref_pairs)
    main_cmp = compare["bf16_minus_fp32"]
    agree = all(lo <= 0 <= hi for lo, hi in (main_cmp["accuracy"]["ci95"], main_cmp["length_balanced_accuracy"]["ci95"]))
    speed = metrics["bf16"]["pairs_per_s"] / metrics["fp32"]["pairs_per_s"]
    report = {
        "command": ".venv/bin/python bench/precision_agreement.py",
        **code,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "all cores"),
                    "load_1min_at_end": os.getloadavg()[0]},
        "settings": {"data": DATA, "sft": SFT, "dpo": DPO, "sft_run": sft.name},
        "wall_s_this_invocation": {k: round(v, 1) for k, v in walls.items()},
        "validation": {n: {k: evals[n][k] for k in ("n", "accuracy", "accuracy_ci95", "length_balanced_accuracy",
                                                    "length_balanced_ci95", "longer_wins_baseline", "mean_margin")}
                       for n in PRECISIONS},
        "paired": compare,
        "reference_pass": reference,
        "train_pairs_per_s": {n: metrics[n]["pairs_per_s"] for n in PRECISIONS},
        "train_runtime_s": {n: metrics[n]["train_runtime_s"] for n in PRECISIONS},
        "wall_s": {n: metrics[n].get("wall_s") for n in PRECISIONS},
        "ratio_bf16_vs_fp32_train": speed,
        "rule": "switch --precision auto to bf16 when the paired 95% intervals of bf16 − fp32 validation accuracy "
                "and length-balanced accuracy (posts resampled, 2,000 times) both contain 0",
        "validation_agrees": agree,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("validation", "paired", "reference_pass", "ratio_bf16_vs_fp32_train",
                                             "validation_agrees")}, indent=1))


if __name__ == "__main__":
    main()
