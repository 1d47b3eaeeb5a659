"""DPO training throughput: TRL default vs TRL with precomputed reference vs preftune's fast engine.

One command, one run:   .venv/bin/python bench/dpo_throughput.py
Same model (the default SmolLM2-135M-Instruct), same shipped TL;DR pairs, same batch size and
max_length for every config. Each config trains in its own child process so its peak RSS is its
own; the parent measures the machine's fp32 matmul peak in the same run and writes
bench/results/dpo_throughput.{json,md} and bench/results/curves.png.

Sections:
  throughput  pairs/s, real tokens/s, peak RSS, estimated GFLOP/s (and % of the measured matmul peak)
              per config, and ratios of the fast engine to TRL (keys ratio_vs_trl_default / _best).
  curves      both engines trained on the same fixed batch for several steps: the loss and margin
              curves should overlap (same loss, same optimizer, same schedule, same data).
  sweep       a 4-run sweep (2 lr × 2 beta) with the fast engine, timed with the shared reference
              cache and with the cache cleared before every run.
Times exclude model loading. "real tokens" are the tokens of the two unpadded sequences of a pair
(prompt+chosen, prompt+rejected), the same count for every config.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


# ---- the work each config does (for GFLOP/s) ----------------------------------------------------


def model_shape(model_path: str) -> dict:
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    d, layers, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * d // cfg["num_attention_heads"]
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * cfg["intermediate_size"]  # q,o + k,v + MLP
    return {"d": d, "layers": layers, "vocab": vocab, "body_params": layers * per_layer}


def forward_flops(shape: dict, rows: list[int], head_positions: int) -> float:
    """One forward over rows of these lengths (causal attention ≈ T²/2 per layer), plus the LM head
    over `head_positions` positions. Backward ≈ 2× forward."""
    body = sum(2 * shape["body_params"] * t + 2 * shape["layers"] * shape["d"] * t * t for t in rows)
    return body + 2 * shape["d"] * shape["vocab"] * head_positions


def executed_flops(config: str, shape: dict, lengths: list[tuple[int, int, int]], batch_size: int) -> dict:
    """Estimated FLOPs of the training steps and of the reference precompute, per config."""
    steps, precompute = 0.0, 0.0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start : start + batch_size]
        if config.startswith("trl"):
            pad = max(max(p + c, p + r) for p, c, r in batch)  # TRL pads chosen+rejected rows to the batch max
            rows = [pad] * (2 * len(batch))
            fwd = forward_flops(shape, rows, sum(rows))  # the LM head runs over every position
            policy = 4 * fwd  # fwd + bwd (2×) + the gradient-checkpointing re-forward
            steps += policy + (fwd if config == "trl_default" else 0)  # + the reference forward
            precompute += fwd if config == "trl_precompute" else 0
        else:
            rows = [p + c + r for p, c, r in batch]
            fwd = forward_flops(shape, rows, sum(c + r for _, c, r in batch))
            steps += 3 * fwd  # fwd + bwd, no checkpointing
            precompute += fwd
    return {"steps": steps, "precompute": precompute}


# ---- child: one config ---------------------------------------------------------------------------


def child(args) -> None:
    """Train one config on the pairs file; print one JSON line with its measurements."""
    import torch

    torch.set_num_threads(args.threads)
    from preftune.config import TrainConfig
    from preftune.data.prepare import read_jsonl
    from preftune.engines import ENGINES, TrainJob
    from preftune.models import load_tokenizer

    pairs = read_jsonl(Path(args.pairs_file))
    tokenizer = load_tokenizer(args.model_path)
    out = Path(tempfile.mkdtemp(prefix=f"bench-{args.child}-"))
    engine = "fast" if args.child == "fast" else "trl"
    cfg = TrainConfig(output_dir=str(out), model=args.model_path, lr=args.lr, batch_size=args.batch_size,
                      epochs=args.epochs, beta=0.1, max_length=args.max_length, engine=engine)
    job = TrainJob(args.model_path, tokenizer, pairs, cfg, 0, out, args.batch_size, out / "log.jsonl")
    precompute_s = 0.0
    if args.child == "trl_precompute":
        from preftune.engines import trl as trl_engine

        original = trl_engine.dpo_config

        def with_precompute(j):
            config = original(j)
            config.precompute_ref_log_probs = True
            return config

        trl_engine.dpo_config = with_precompute
        t0 = time.perf_counter()
        result = ENGINES["trl"](job)
        precompute_s = time.perf_counter() - t0 - result.runtime_s  # trainer init incl. the precompute pass
    elif args.child == "fast":
        from preftune.logps import pack_pair
        from preftune.models import load_model
        from preftune.refcache import reference_logps

        packed = [pack_pair(tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
        t0 = time.perf_counter()  # cold cache (fresh PREFTUNE_CACHE): this is the once-per-sweep cost
        reference_logps(packed, args.model_path, lambda: load_model(args.model_path))
        precompute_s = time.perf_counter() - t0
        result = ENGINES["fast"](job)  # finds every reference log-prob in the cache
    else:
        result = ENGINES["trl"](job)
    log = [json.loads(line) for line in open(job.log_path)]
    shutil.rmtree(out, ignore_errors=True)
    print("RESULT " + json.dumps({
        "config": args.child, "train_s": result.runtime_s, "steps": result.steps, "precompute_s": precompute_s,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "log": log,
    }), flush=True)


def run_child(config: str, common: list[str], env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", config, *common]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{config} failed:\n{done.stderr[-4000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


# ---- parent --------------------------------------------------------------------------------------


def matmul_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def prepare_pairs(model_path: str, n: int, max_length: int, path: Path) -> list[tuple[int, int, int]]:
    """The first n shipped TL;DR training pairs, fitted to max_length; returns their token lengths."""
    from preftune.config import DataConfig
    from preftune.data.prepare import prepare, write_jsonl
    from preftune.logps import pack_pair
    from preftune.models import load_tokenizer
    from preftune.data.fit import fit

    tokenizer = load_tokenizer(model_path)
    pairs = prepare(DataConfig()).train[:n]
    pairs, _ = fit(tokenizer, pairs, max_length, "bench")
    write_jsonl(path, pairs)
    packed = [pack_pair(tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
    return [(p.prompt_len, p.chosen_len, p.rejected_len) for p in packed]


def sweep_times(args, model_path: str, pairs_file: Path, env: dict) -> dict:
    """4 fast-engine runs (lr × beta) on the same pairs: shared cache vs cache cleared every run."""
    code = f"""
import json, os, shutil, sys, tempfile, time
import torch
torch.set_num_threads({args.threads})
from pathlib import Path
from preftune.config import TrainConfig
from preftune.data.prepare import read_jsonl
from preftune.engines import ENGINES, TrainJob
from preftune.models import load_tokenizer
pairs = read_jsonl(Path({str(pairs_file)!r}))
tok = load_tokenizer({model_path!r})
cache = Path(os.environ["PREFTUNE_CACHE"])
times = {{}}
for mode in ("shared_cache", "no_cache"):
    shutil.rmtree(cache / "ref_logps", ignore_errors=True)
    t0 = time.perf_counter()
    for lr in (1e-5, 5e-5):
        for beta in (0.1, 0.5):
            if mode == "no_cache":
                shutil.rmtree(cache / "ref_logps", ignore_errors=True)
            out = Path(tempfile.mkdtemp())
            cfg = TrainConfig(output_dir=str(out), model={model_path!r}, lr=lr, beta=beta,
                              batch_size={args.batch_size}, max_length={args.max_length}, engine="fast")
            ENGINES["fast"](TrainJob({model_path!r}, tok, pairs, cfg, 0, out, {args.batch_size}, out / "log.jsonl"))
            shutil.rmtree(out)
    times[mode] = time.perf_counter() - t0
print("RESULT " + json.dumps(times))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"sweep failed:\n{done.stderr[-4000:]}")
    times = json.loads(next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))[7:])
    return {**times, "runs": 4, "pairs_per_run": args.sweep_pairs,
            "speedup": times["no_cache"] / times["shared_cache"]}


def plot_curves(trl_log: list[dict], fast_log: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key in zip(axes, ("loss", "rewards/margins", "logps/chosen")):
        for log, label, style in ((trl_log, "TRL DPOTrainer", "o-"), (fast_log, "preftune fast", "x--")):
            ax.plot([r["step"] for r in log], [r[key] for r in log], style, label=label)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Same fixed batch every step, same optimizer and schedule: the engines' curves overlap")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=12, help="training pairs for the throughput section")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--curve-steps", type=int, default=6, help="steps on one fixed batch for the curves")
    parser.add_argument("--sweep-pairs", type=int, default=8, help="pairs per run in the sweep section")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: curves,sweep")
    parser.add_argument("--out", type=Path, default=RESULTS)
    # child-only arguments
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--pairs-file", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, default=5e-6, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from preftune.config import DEFAULT_MODEL
    from preftune.models import resolve_model

    model_path = resolve_model(DEFAULT_MODEL).path
    shape = model_shape(model_path)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    env = {**os.environ, "PREFTUNE_CACHE": str(work / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    shutil.copytree(Path(model_path), work / "cache" / "models" / Path(model_path).name)  # no re-conversion
    peak = matmul_peak_gflops(args.threads)
    print(f"matmul peak: {peak:.1f} GFLOP/s ({args.threads} threads, fp32)")

    lengths = prepare_pairs(model_path, args.pairs, args.max_length, work / "pairs.jsonl")
    real_tokens = sum(2 * p + c + r for p, c, r in lengths)
    common = ["--pairs-file", str(work / "pairs.jsonl"), "--model-path", model_path, "--batch-size",
              str(args.batch_size), "--max-length", str(args.max_length), "--threads", str(args.threads)]
    results = {}
    for config in ("trl_default", "trl_precompute", "fast"):
        print(f"throughput: {config} …", flush=True)
        shutil.rmtree(work / "cache" / "ref_logps", ignore_errors=True)  # every config starts cold
        load_before = os.getloadavg()[0]
        r = run_child(config, common, env)
        r["load_avg_1min"] = [load_before, os.getloadavg()[0]]  # other work on the machine skews every number
        flops = executed_flops(config, shape, lengths, args.batch_size)
        r.update({
            "pairs": len(lengths), "pairs_per_s": len(lengths) / r["train_s"],
            "real_tokens_per_s": real_tokens / r["train_s"], "s_per_step": r["train_s"] / r["steps"],
            "gflops_per_s": flops["steps"] / r["train_s"] / 1e9,
            "precompute_s_per_pair": r["precompute_s"] / len(lengths),
        })
        r["pct_of_matmul_peak"] = 100 * r["gflops_per_s"] / peak
        results[config] = r
        print(f"  {r['s_per_step']:.1f} s/step, {r['pairs_per_s']:.3f} pairs/s, peak RSS {r['peak_rss_gib']:.2f} GiB")

    fast, default, precompute = results["fast"], results["trl_default"], results["trl_precompute"]
    best = max(default["pairs_per_s"], precompute["pairs_per_s"])
    report = {
        "machine": {"threads": args.threads, "matmul_peak_gflops": peak},
        "setup": {"model": DEFAULT_MODEL, "pairs": len(lengths), "batch_size": args.batch_size,
                  "max_length": args.max_length, "real_tokens": real_tokens,
                  "mean_prompt_tokens": sum(p for p, _, _ in lengths) / len(lengths)},
        "configs": {k: {x: y for x, y in v.items() if x != "log"} for k, v in results.items()},
        "ratio_vs_trl_default": fast["pairs_per_s"] / default["pairs_per_s"],
        "ratio_vs_trl_best": fast["pairs_per_s"] / best,
        "ratio_vs_trl_default_incl_cold_reference": len(lengths) / (fast["train_s"] + fast["precompute_s"])
        / default["pairs_per_s"],
        "peak_rss_vs_trl_default": fast["peak_rss_gib"] / default["peak_rss_gib"],
    }

    save(report, args.out)
    if "curves" not in args.skip:
        print("curves: both engines, one fixed batch, several steps …", flush=True)
        curve_common = ["--pairs-file", str(work / "curve_pairs.jsonl"), "--model-path", model_path,
                        "--batch-size", str(args.batch_size), "--max-length", "256", "--threads", str(args.threads),
                        "--lr", "2e-5", "--epochs", str(args.curve_steps)]
        prepare_pairs(model_path, args.batch_size, 256, work / "curve_pairs.jsonl")
        shutil.rmtree(work / "cache" / "ref_logps", ignore_errors=True)
        trl_curve = run_child("trl_default", curve_common, env)["log"]
        fast_curve = run_child("fast", curve_common, env)["log"]
        args.out.mkdir(parents=True, exist_ok=True)
        plot_curves(trl_curve, fast_curve, args.out / "curves.png")
        report["curves"] = {
            "steps": len(trl_curve),
            "max_abs_loss_diff": max(abs(a["loss"] - b["loss"]) for a, b in zip(trl_curve, fast_curve)),
            "trl_loss": [r["loss"] for r in trl_curve], "fast_loss": [r["loss"] for r in fast_curve],
        }

        save(report, args.out)
    if "sweep" not in args.skip:
        print("sweep: 4 fast-engine runs with and without the shared reference cache …", flush=True)
        prepare_pairs(model_path, args.sweep_pairs, args.max_length, work / "sweep_pairs.jsonl")
        report["sweep"] = sweep_times(args, model_path, work / "sweep_pairs.jsonl", env)

    save(report, args.out)
    print(markdown(report))
    shutil.rmtree(work, ignore_errors=True)


def save(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "dpo_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "dpo_throughput.md").write_text(markdown(report))


def markdown(r: dict) -> str:
    s = r["setup"]
    lines = [
        "# DPO throughput (bench/dpo_throughput.py)", "",
        f"{s['model']}, {s['pairs']} shipped TL;DR pairs (mean prompt {s['mean_prompt_tokens']:.0f} tokens), "
        f"batch {s['batch_size']}, max_length {s['max_length']}, fp32, {r['machine']['threads']} threads; "
        f"measured matmul peak {r['machine']['matmul_peak_gflops']:.0f} GFLOP/s.", "",
        "| config | s/step | pairs/s | real tokens/s | est. GFLOP/s (% of peak) | peak RSS GiB | ref precompute s/pair | load avg (before, after) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c in r["configs"].items():
        lines.append(f"| {name} | {c['s_per_step']:.1f} | {c['pairs_per_s']:.3f} | {c['real_tokens_per_s']:.0f} | "
                     f"{c['gflops_per_s']:.0f} ({c['pct_of_matmul_peak']:.0f}%) | {c['peak_rss_gib']:.2f} | "
                     f"{c['precompute_s_per_pair']:.2f} | {c['load_avg_1min'][0]:.1f}, {c['load_avg_1min'][1]:.1f} |")
    lines += ["", f"- fast vs TRL default: **{r['ratio_vs_trl_default']:.2f}×** pairs/s (target ≥ 3.0×)",
              f"- fast vs TRL best (precompute): **{r['ratio_vs_trl_best']:.2f}×** (target ≥ 2.2×)",
              f"- fast vs TRL default counting the cold reference pass too: "
              f"{r['ratio_vs_trl_default_incl_cold_reference']:.2f}×",
              f"- peak RSS fast / TRL default: **{r['peak_rss_vs_trl_default']:.0%}** (target ≤ 60%)"]
    if "curves" in r:
        lines.append(f"- curves ({r['curves']['steps']} steps, one fixed batch): max |loss difference| "
                     f"{r['curves']['max_abs_loss_diff']:.2e}; see curves.png")
    if "sweep" in r:
        w = r["sweep"]
        lines.append(f"- 4-run sweep ({w['pairs_per_run']} pairs/run): {w['shared_cache']:.0f} s with the shared "
                     f"reference cache vs {w['no_cache']:.0f} s recomputing it every run ({w['speedup']:.2f}×)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
