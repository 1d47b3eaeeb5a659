"""DPO training throughput: TRL default vs TRL with precomputed reference vs preftune's fast engine,
the reference pass, and judge generation — one command, one run.

    .venv/bin/python bench/dpo_throughput.py            # the full benchmark (~30 min on 2 idle cores)
    .venv/bin/python bench/dpo_throughput.py --quick    # a few minutes, for development; bench/results/quick/

Same model (the default SmolLM2-135M-Instruct), same shipped TL;DR pairs, same batch size and
max_length for every config, fp32 on CPU. Each config runs in its own child process so its peak RSS
is its own; the parent measures the machine's fp32 matmul peak once and writes
bench/results/dpo_throughput.{json,md} (and curves.png) after every config and section. Run the same
command again after an interruption: what is already measured with the same settings is kept and the
rest is run (`--fresh` starts over).

Sections:
  throughput  pairs/s, real tokens/s, peak RSS, estimated GFLOP/s and % of the matmul peak per config,
              the ratios of the fast engine to TRL (ratio_vs_trl_default / ratio_vs_trl_best,
              rss_ratio_vs_trl_default, fast_pct_of_matmul_peak), and the fast engine's cold reference
              pass (reference_pct_of_matmul_peak).
  generation  summaries/s of preftune.generate on held-out shipped posts, batched and decoded as
              `preftune judge` does (generation_summaries_per_s).
  curves      both engines trained on the same fixed batch for several steps: the curves should overlap.
  sweep       a 4-run sweep (2 lr × 2 beta) with the fast engine, with the shared reference cache and
              with it cleared before every run.
Times exclude model loading. "real tokens" are the tokens of the two unpadded sequences of a pair
(prompt+chosen, prompt+rejected), the same count for every config. GPU rows say "not measured" unless
the run is on a CUDA machine.
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
CONFIGS = ("trl_default", "trl_precompute", "fast")
SECTIONS = ("throughput", "generation", "curves", "sweep")
TARGETS = {  # issue 13: key → (threshold, "≥" or "≤")
    "ratio_vs_trl_default": (6.0, "≥"), "ratio_vs_trl_best": (4.5, "≥"), "fast_pct_of_matmul_peak": (65.0, "≥"),
    "rss_ratio_vs_trl_default": (0.45, "≤"), "reference_pct_of_matmul_peak": (65.0, "≥"),
}
QUICK = {"pairs": 4, "batch_size": 4, "max_length": 256, "curve_steps": 2, "sweep_pairs": 2, "gen_posts": 4,
         "gen_tokens": 8}


# ---- the work each config does (for GFLOP/s) ----------------------------------------------------


def model_shape(model_path: str) -> dict:
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    d, layers, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * d // cfg["num_attention_heads"]
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * cfg["intermediate_size"]  # q,o + k,v + MLP
    return {"d": d, "layers": layers, "vocab": vocab, "body_params": layers * per_layer}


def forward_flops(shape: dict, rows: list[int], head_positions: int) -> float:
    """One forward over sequences of these lengths (causal attention ≈ T²/2 per layer), plus the LM
    head over `head_positions` positions. Backward ≈ 2× forward."""
    body = sum(2 * shape["body_params"] * t + 2 * shape["layers"] * shape["d"] * t * t for t in rows)
    return body + 2 * shape["d"] * shape["vocab"] * head_positions


def executed_flops(config: str, shape: dict, lengths: list[tuple[int, int, int]], batch_size: int) -> dict:
    """Estimated FLOPs of the training steps and of the reference pass, per config. The fast engine's
    attention never crosses pairs (a packed row costs its pairs' attention), so pairs are counted one by one."""
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


# ---- children: one config, generation -------------------------------------------------------------


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
                      epochs=args.epochs, beta=0.1, max_length=args.max_length, engine=engine, precision="fp32")
    job = TrainJob(args.model_path, tokenizer, pairs, cfg, 0, out, args.batch_size, out / "log.jsonl")
    precompute_s = 0.0
    if args.child == "trl_precompute":
        from preftune.engines import trl as trl_engine

        original = trl_engine.dpo_config

        def with_precompute(j, tracking=None):
            config = original(j, tracking)
            config.precompute_ref_log_probs = True
            return config

        trl_engine.dpo_config = with_precompute
        t0 = time.perf_counter()
        result = ENGINES["trl"](job)
        precompute_s = time.perf_counter() - t0 - result.runtime_s  # trainer init incl. the precompute pass
    elif args.child == "fast":
        from preftune.logps import pack_pair
        from preftune.models import load_model
        from preftune.refcache import reference_logps, weights_hash

        packed = [pack_pair(tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
        model = load_model(args.model_path)  # loaded before the clock, as the other configs' models are
        weights_hash(args.model_path)  # hashing the weight files: once per model version, not per pair
        t0 = time.perf_counter()  # cold cache (fresh PREFTUNE_CACHE): this is the once-per-sweep cost
        reference_logps(packed, args.model_path, lambda: model)  # packed as the engine packs (its default)
        precompute_s = time.perf_counter() - t0
        del model
        result = ENGINES["fast"](job)  # finds every reference log-prob in the cache
    else:
        result = ENGINES["trl"](job)
    log = [json.loads(line) for line in open(job.log_path)]
    shutil.rmtree(out, ignore_errors=True)
    print("RESULT " + json.dumps({
        "config": args.child, "train_s": result.runtime_s, "steps": result.steps, "precompute_s": precompute_s,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "log": log,
    }), flush=True)


def generation_child(args) -> None:
    """Held-out shipped posts summarized as `preftune judge` summarizes them; print one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from preftune import generate as gen
    from preftune.config import DataConfig, JudgeConfig
    from preftune.data.fit import fit
    from preftune.data.prepare import prepare
    from preftune.models import load_model, load_tokenizer

    cfg = JudgeConfig(n=args.gen_posts, max_new_tokens=args.gen_tokens)
    try:  # the judge's own decodings (greedy and T=0.7) where it exposes them
        from preftune.judge import decodings_of

        decodings = decodings_of(cfg)
    except ImportError:
        decodings = [gen.Decoding(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)]
    tokenizer = load_tokenizer(args.model_path)
    held_out = fit(tokenizer, prepare(DataConfig()).validation, args.max_length, "bench")[0]
    prompts = list(dict.fromkeys(p.prompt for p in held_out))[: cfg.n]  # one per post
    model = load_model(args.model_path)
    t0 = time.perf_counter()
    if hasattr(gen, "generate_many"):  # the prompt's KV cache shared by the decodings, as the judge does
        outs = gen.generate_many(model, tokenizer, prompts, decodings, cfg.batch_size)
    else:
        outs = {d.name: gen.generate(model, tokenizer, prompts, d, cfg.batch_size) for d in decodings}
    seconds = time.perf_counter() - t0
    summaries = [g for gens in outs.values() for g in gens]
    print("RESULT " + json.dumps({
        "posts": len(prompts), "decodings": [d.name for d in decodings], "summaries": len(summaries),
        "batch_size": cfg.batch_size, "max_new_tokens": cfg.max_new_tokens, "seconds": seconds,
        "mean_prompt_tokens": sum(len(tokenizer(p)["input_ids"]) for p in prompts) / len(prompts),
        "mean_generated_tokens": sum(g.tokens for g in summaries) / len(summaries),
        "summaries_per_s": len(summaries) / seconds,
    }), flush=True)


def run_child(kind: str, common: list[str], env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, *common]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-4000:]}")
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
    from preftune.data.fit import fit
    from preftune.data.prepare import prepare, write_jsonl
    from preftune.logps import pack_pair
    from preftune.models import load_tokenizer

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


def settings_of(args) -> dict:
    """What makes two invocations the same run (a resumed run keeps what matches)."""
    keys = ("pairs", "batch_size", "max_length", "threads", "curve_steps", "sweep_pairs", "gen_posts", "gen_tokens")
    return {k: getattr(args, k) for k in keys}


def load_previous(out: Path, settings: dict, fresh: bool) -> dict | None:
    path = out / "dpo_throughput.json"
    if fresh or not path.is_file():
        return None
    try:
        previous = json.loads(path.read_text())
    except ValueError:
        return None
    return previous if previous.get("settings") == settings else None


def summarize(report: dict) -> None:
    """The headline keys, from whatever sections are measured so far."""
    configs = report["configs"]
    peak = report["machine"]["matmul_peak_gflops"]
    if all(c in configs for c in CONFIGS):
        fast, default, precompute = configs["fast"], configs["trl_default"], configs["trl_precompute"]
        report["ratio_vs_trl_default"] = fast["pairs_per_s"] / default["pairs_per_s"]
        report["ratio_vs_trl_best"] = fast["pairs_per_s"] / max(default["pairs_per_s"], precompute["pairs_per_s"])
        report["ratio_vs_trl_default_incl_cold_reference"] = (
            fast["pairs"] / (fast["train_s"] + fast["precompute_s"]) / default["pairs_per_s"])
        report["rss_ratio_vs_trl_default"] = fast["peak_rss_gib"] / default["peak_rss_gib"]
    if "fast" in configs:
        report["fast_pct_of_matmul_peak"] = configs["fast"]["pct_of_matmul_peak"]
        report["reference_s_per_pair"] = configs["fast"]["precompute_s_per_pair"]
        report["reference_pct_of_matmul_peak"] = 100 * configs["fast"]["reference_gflops_per_s"] / peak
    if "generation" in report:
        report["generation_summaries_per_s"] = report["generation"]["summaries_per_s"]
    report["targets"] = {k: {"target": f"{op} {v:g}", "met": (report[k] >= v if op == "≥" else report[k] <= v)}
                         for k, (v, op) in TARGETS.items() if k in report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=16, help="training pairs for the throughput section")
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step (every config)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--curve-steps", type=int, default=6, help="steps on one fixed batch for the curves")
    parser.add_argument("--sweep-pairs", type=int, default=8, help="pairs per run in the sweep section")
    parser.add_argument("--gen-posts", type=int, default=16, help="held-out posts the generation section summarizes")
    parser.add_argument("--gen-tokens", type=int, default=48, help="max new tokens per summary (the judge's)")
    parser.add_argument("--skip", default="", help=f"comma-separated sections to skip: {','.join(SECTIONS[1:])}")
    parser.add_argument("--quick", action="store_true",
                        help=f"development run: {QUICK}, results in bench/results/quick/ unless --out")
    parser.add_argument("--fresh", action="store_true", help="measure everything again, ignoring earlier results")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: bench/results/)")
    # child-only arguments
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--pairs-file", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, default=5e-6, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "generation":
        return generation_child(args)
    if args.child:
        return child(args)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)

    import torch

    from preftune.config import DEFAULT_MODEL
    from preftune.logps import default_pack_tokens
    from preftune.models import resolve_model

    model_path = resolve_model(DEFAULT_MODEL).path
    shape = model_shape(model_path)
    settings = settings_of(args)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    env = {**os.environ, "PREFTUNE_CACHE": str(work / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    shutil.copytree(Path(model_path), work / "cache" / "models" / Path(model_path).name)  # no re-conversion
    lengths = prepare_pairs(model_path, args.pairs, args.max_length, work / "pairs.jsonl")
    real_tokens = sum(2 * p + c + r for p, c, r in lengths)
    common = ["--pairs-file", str(work / "pairs.jsonl"), "--model-path", model_path, "--batch-size",
              str(args.batch_size), "--max-length", str(args.max_length), "--threads", str(args.threads)]

    report = load_previous(out, settings, args.fresh)
    if report:
        print(f"resuming {out / 'dpo_throughput.json'}: keeping {', '.join(report['configs'])} "
              f"{', '.join(s for s in SECTIONS[1:] if s in report)}")
    else:
        cuda = torch.cuda.is_available()
        peak = matmul_peak_gflops(args.threads)
        print(f"matmul peak: {peak:.1f} GFLOP/s ({args.threads} threads, fp32)")
        report = {
            "settings": settings,
            "machine": {"threads": args.threads, "matmul_peak_gflops": peak, "cpus": os.cpu_count(),
                        "device": torch.cuda.get_device_name(0) if cuda else "cpu"},
            "setup": {"model": DEFAULT_MODEL, "pairs": len(lengths), "batch_size": args.batch_size,
                      "max_length": args.max_length, "precision": "fp32", "pack_tokens": default_pack_tokens(),
                      "real_tokens": real_tokens, "quick": args.quick,
                      "mean_prompt_tokens": sum(p for p, _, _ in lengths) / len(lengths),
                      "mean_pair_tokens": sum(p + c + r for p, c, r in lengths) / len(lengths)},
            "configs": {},
            "gpu": ({"measured": True} if cuda else
                    {"measured": False, "note": "not measured: no GPU was available to this run"}),
        }
    peak = report["machine"]["matmul_peak_gflops"]

    for config in CONFIGS:
        if config in report["configs"]:
            continue
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
            "reference_gflops_per_s": flops["precompute"] / r["precompute_s"] / 1e9 if r["precompute_s"] else 0.0,
        })
        r["pct_of_matmul_peak"] = 100 * r["gflops_per_s"] / peak
        report["configs"][config] = {k: v for k, v in r.items() if k != "log"}
        print(f"  {r['s_per_step']:.1f} s/step, {r['pairs_per_s']:.3f} pairs/s, peak RSS {r['peak_rss_gib']:.2f} GiB")
        summarize(report)
        save(report, out)

    if "generation" not in args.skip and "generation" not in report:
        print(f"generation: {args.gen_posts} held-out posts as the judge summarizes them …", flush=True)
        report["generation"] = run_child("generation", [*common, "--gen-posts", str(args.gen_posts),
                                                         "--gen-tokens", str(args.gen_tokens)], env)
        summarize(report)
        save(report, out)
    if "curves" not in args.skip and "curves" not in report:
        print("curves: both engines, one fixed batch, several steps …", flush=True)
        curve_common = ["--pairs-file", str(work / "curve_pairs.jsonl"), "--model-path", model_path,
                        "--batch-size", str(args.batch_size), "--max-length", "256", "--threads", str(args.threads),
                        "--lr", "2e-5", "--epochs", str(args.curve_steps)]
        prepare_pairs(model_path, args.batch_size, 256, work / "curve_pairs.jsonl")
        shutil.rmtree(work / "cache" / "ref_logps", ignore_errors=True)
        trl_curve = run_child("trl_default", curve_common, env)["log"]
        fast_curve = run_child("fast", curve_common, env)["log"]
        out.mkdir(parents=True, exist_ok=True)
        plot_curves(trl_curve, fast_curve, out / "curves.png")
        report["curves"] = {
            "steps": len(trl_curve),
            "max_abs_loss_diff": max(abs(a["loss"] - b["loss"]) for a, b in zip(trl_curve, fast_curve)),
            "trl_loss": [r["loss"] for r in trl_curve], "fast_loss": [r["loss"] for r in fast_curve],
        }
        save(report, out)
    if "sweep" not in args.skip and "sweep" not in report:
        print("sweep: 4 fast-engine runs with and without the shared reference cache …", flush=True)
        prepare_pairs(model_path, args.sweep_pairs, args.max_length, work / "sweep_pairs.jsonl")
        report["sweep"] = sweep_times(args, model_path, work / "sweep_pairs.jsonl", env)
        save(report, out)

    print(markdown(report))
    shutil.rmtree(work, ignore_errors=True)


def save(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "dpo_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "dpo_throughput.md").write_text(markdown(report))


def _target(r: dict, key: str, fmt: str, unit: str = "") -> str:
    if key not in r:
        return "not measured"
    t = r["targets"].get(key)
    verdict = f" (target {t['target']}{unit}: {'met' if t['met'] else 'NOT met'})" if t else ""
    return f"**{format(r[key], fmt)}{unit}**{verdict}"


def markdown(r: dict) -> str:
    s, m = r["setup"], r["machine"]
    lines = [
        "# DPO throughput (bench/dpo_throughput.py)", "",
        f"{s['model']}, {s['pairs']} shipped TL;DR pairs (mean prompt {s['mean_prompt_tokens']:.0f} tokens, "
        f"{s['mean_pair_tokens']:.0f} per packed pair), batch {s['batch_size']}, max_length {s['max_length']}, "
        f"{s['precision']}, fast engine --pack-tokens {s['pack_tokens']}, {m['threads']} threads on {m['device']}; "
        f"measured matmul peak {m['matmul_peak_gflops']:.0f} GFLOP/s." + (" QUICK run (development only)."
                                                                          if s.get("quick") else ""), "",
        "| config | s/step | pairs/s | real tokens/s | est. GFLOP/s (% of peak) | peak RSS GiB | ref pass s/pair | load avg (before, after) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c in r["configs"].items():
        lines.append(f"| {name} | {c['s_per_step']:.1f} | {c['pairs_per_s']:.3f} | {c['real_tokens_per_s']:.0f} | "
                     f"{c['gflops_per_s']:.0f} ({c['pct_of_matmul_peak']:.0f}%) | {c['peak_rss_gib']:.2f} | "
                     f"{c['precompute_s_per_pair']:.2f} | {c['load_avg_1min'][0]:.1f}, {c['load_avg_1min'][1]:.1f} |")
    if not r["gpu"]["measured"]:
        lines.append("| GPU rows (TRL default, TRL precompute, fast) | not measured | not measured | | | | | |")
    lines += ["", f"- fast vs TRL default, pairs/s: {_target(r, 'ratio_vs_trl_default', '.2f', '×')}",
              f"- fast vs TRL best, pairs/s: {_target(r, 'ratio_vs_trl_best', '.2f', '×')}",
              f"- fast engine's estimated FLOP rate, % of the matmul peak: "
              f"{_target(r, 'fast_pct_of_matmul_peak', '.0f', '%')}",
              f"- peak RSS fast / TRL default: {_target(r, 'rss_ratio_vs_trl_default', '.2f')}",
              f"- reference pass (fast engine, cold cache), % of the matmul peak: "
              f"{_target(r, 'reference_pct_of_matmul_peak', '.0f', '%')}"
              + (f" ({r['reference_s_per_pair']:.2f} s/pair)" if "reference_s_per_pair" in r else "")]
    if "ratio_vs_trl_default_incl_cold_reference" in r:
        lines.append(f"- fast vs TRL default counting the cold reference pass too: "
                     f"{r['ratio_vs_trl_default_incl_cold_reference']:.2f}×")
    if "generation" in r:
        g = r["generation"]
        lines.append(f"- judge generation: **{g['summaries_per_s']:.2f} summaries/s** ({g['summaries']} summaries of "
                     f"{g['posts']} held-out posts, {', '.join(g['decodings'])}, batch {g['batch_size']}, ≤ "
                     f"{g['max_new_tokens']} new tokens, mean prompt {g['mean_prompt_tokens']:.0f} tokens, mean "
                     f"summary {g['mean_generated_tokens']:.1f} tokens)")
    if "curves" in r:
        lines.append(f"- curves ({r['curves']['steps']} steps, one fixed batch): max |loss difference| "
                     f"{r['curves']['max_abs_loss_diff']:.2e}; see curves.png")
    if "sweep" in r:
        w = r["sweep"]
        lines.append(f"- 4-run sweep ({w['pairs_per_run']} pairs/run): {w['shared_cache']:.0f} s with the shared "
                     f"reference cache vs {w['no_cache']:.0f} s recomputing it every run ({w['speedup']:.2f}×)")
    if not r["gpu"]["measured"]:
        lines.append(f"- GPU: {r['gpu']['note']} (target there: fast ≥ 1.5× TRL's best config)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
