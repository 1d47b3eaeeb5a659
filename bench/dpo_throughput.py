"""DPO training throughput (TRL default, TRL with precomputed reference, preftune's fast engine; fp32 and
bf16 on a CPU with bf16 units), the reference pass, judge generation, the demo stream, curves, a sweep.

    .venv/bin/python bench/dpo_throughput.py            # the full benchmark (~40 min on 2 idle cores)
    .venv/bin/python bench/dpo_throughput.py --quick    # a few minutes, for development; bench/results/quick/

Each config in its own child process; results in bench/results/dpo_throughput.{json,md} after every
config and section, resumed after an interruption when settings and clean commit match (`--fresh`: start
over). bench/README.md says what each section and key measures, and the targets.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))  # bench/precisions.py

import precisions  # after the path it is found on

CONFIGS = ("trl_default", "trl_precompute", "fast")  # the configs at the device's main precision
BF16_CONFIGS = tuple(c + precisions.BF16 for c in CONFIGS)  # a CPU run's bf16 twins
SECTIONS = ("throughput", "generation", "demo", "curves", "sweep")
TARGETS = {  # per device: key → (threshold, "≥" or "≤"); issue 13's (fp32 on a CPU), then issue 20's (bf16)
    "cpu": {"ratio_vs_trl_default": (6.0, "≥"), "ratio_vs_trl_best": (4.5, "≥"),
            "fast_pct_of_matmul_peak": (65.0, "≥"), "rss_ratio_vs_trl_default": (0.45, "≤"),
            "reference_pct_of_matmul_peak": (65.0, "≥"),
            "ratio_bf16_vs_fp32_fast": (1.6, "≥"), "ratio_vs_trl_default_bf16": (6.0, "≥"),
            "ratio_vs_trl_best_bf16": (4.5, "≥"), "fast_pct_of_bf16_peak": (50.0, "≥")},
    "cuda": {"ratio_vs_trl_best": (1.5, "≥")},  # "fast ≥ 1.5× TRL's best config"
}
PRECISION = precisions.MAIN  # what the plain-named configs compute in, per device
NO_GPU = "not measured: no GPU was available to this run"
BUSY_LOAD = 0.5  # a 1-min load average above this at the start: warn, the numbers will be low
QUICK = {"pairs": 4, "batch_size": 4, "max_length": 256, "curve_steps": 2, "sweep_pairs": 2, "gen_posts": 4,
         "gen_tokens": 8, "demo_posts": 1, "demo_tokens": 8}


def device_kind() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(kind: str) -> str:
    import torch

    if kind == "cuda":
        return torch.cuda.get_device_name(0)
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    return f"CPU: {names[0] if names else platform.processor() or platform.machine()}"


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


# ---- children: one config, generation, demo -------------------------------------------------------


def trl_timers() -> dict:
    """Seconds spent from now on in DPOTrainer.__init__ ("init") and in its reference pass
    (`_precompute_ref_logps`, summed over calls: the train dataset, an eval dataset if any)."""
    from trl.trainer.dpo_trainer import DPOTrainer

    spent = {"init": 0.0, "precompute": 0.0}

    def timed(fn, key):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - t0

        return wrapper

    DPOTrainer.__init__ = timed(DPOTrainer.__init__, "init")
    DPOTrainer._precompute_ref_logps = timed(DPOTrainer._precompute_ref_logps, "precompute")
    return spent


def peak_memory(cuda: bool) -> dict:
    """This process's peak RSS, and on CUDA torch's peak GPU allocation (GiB)."""
    import torch

    gpu = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "peak_gpu_mem_gib": gpu}


def child(args) -> None:
    """Train one config on the pairs file; print one JSON line with its measurements."""
    import torch

    torch.set_num_threads(args.threads)
    from preftune.config import TrainConfig
    from preftune.data.prepare import read_jsonl
    from preftune.dpo.engines import ENGINES, TrainJob
    from preftune.models import load_tokenizer

    cuda = torch.cuda.is_available()
    pairs = read_jsonl(Path(args.pairs_file))
    tokenizer = load_tokenizer(args.model_path)
    out = Path(tempfile.mkdtemp(prefix=f"bench-{args.child}-"))
    engine = "fast" if args.child == "fast" else "trl"
    cfg = TrainConfig(output_dir=str(out), model=args.model_path, lr=args.lr, batch_size=args.batch_size,
                      epochs=args.epochs, beta=0.1, max_length=args.max_length, engine=engine,
                      precision=args.precision)
    job = TrainJob(args.model_path, tokenizer, pairs, cfg, 0, out, args.batch_size, out / "log.jsonl")
    precompute_s, setup_s = 0.0, None
    if args.child == "fast":
        from preftune.dpo.logps import pack_pair
        from preftune.dpo.refcache import reference_logps, weights_hash
        from preftune.models import load_model

        packed = [pack_pair(tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
        model = load_model(args.model_path).to("cuda" if cuda else "cpu")  # before the clock, as the others' are
        weights_hash(args.model_path)  # hashing the weight files: once per model version, not per pair
        t0 = time.perf_counter()  # cold cache (fresh PREFTUNE_CACHE): this is the once-per-sweep cost
        # packed as the engine packs (its default), in the run's precision: the engine finds these in the cache
        reference_logps(packed, args.model_path, lambda: model, precision=args.precision)
        precompute_s = time.perf_counter() - t0  # the log-probs come back on the CPU: the GPU is done
        del model
        result = ENGINES["fast"](job)
    else:
        spent = trl_timers()
        if args.child == "trl_precompute":
            from preftune.dpo.engines import trl as trl_engine

            original = trl_engine.dpo_config

            def with_precompute(j, tracking=None):
                config = original(j, tracking)
                config.precompute_ref_log_probs = True
                return config

            trl_engine.dpo_config = with_precompute
        result = ENGINES["trl"](job)
        # the reference pass alone; the rest of the trainer's init (for TRL default: loading the reference)
        precompute_s, setup_s = spent["precompute"], spent["init"] - spent["precompute"]
    log = [json.loads(line) for line in open(job.log_path)]
    shutil.rmtree(out, ignore_errors=True)
    print("RESULT " + json.dumps({
        "config": args.child, "precision": cfg.precision, "train_s": result.runtime_s, "steps": result.steps,
        "precompute_s": precompute_s, "setup_s": setup_s, **peak_memory(cuda), "log": log,
    }), flush=True)


def held_out_prompts(tokenizer, n: int, max_length: int) -> list[str]:
    """The first n held-out shipped posts' prompts (one per post), fitted to max_length as the judge does."""
    from preftune.config import DataConfig
    from preftune.data.fit import fit
    from preftune.data.prepare import prepare

    held_out = fit(tokenizer, prepare(DataConfig()).validation, max_length, "bench")[0]
    return list(dict.fromkeys(p.prompt for p in held_out))[:n]


def generation_child(args) -> None:
    """Held-out shipped posts summarized as `preftune judge` summarizes them, in --precision (inside
    preftune.precision.autocast, as preftune generates); print one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from preftune.config import JudgeConfig
    from preftune.judge import generate as gen
    from preftune.judge.judge import decodings_of
    from preftune.models import inference_device, load_model, load_tokenizer
    from preftune.precision import autocast

    cfg = JudgeConfig(n=args.gen_posts, max_new_tokens=args.gen_tokens)
    decodings = decodings_of(cfg)  # the judge's own decodings (greedy and T=0.7)
    tokenizer = load_tokenizer(args.model_path)
    prompts = held_out_prompts(tokenizer, cfg.n, args.max_length)
    device = inference_device()  # where `preftune judge` generates
    model = load_model(args.model_path).to(device)
    t0 = time.perf_counter()
    with autocast(args.precision, device):
        outs = gen.generate_many(model, tokenizer, prompts, decodings, cfg.batch_size)  # prompt KV cache shared
    seconds = time.perf_counter() - t0
    summaries = [g for gens in outs.values() for g in gens]
    print("RESULT " + json.dumps({
        "precision": args.precision, "posts": len(prompts), "decodings": [d.name for d in decodings],
        "summaries": len(summaries),
        "batch_size": cfg.batch_size, "max_new_tokens": cfg.max_new_tokens, "seconds": seconds,
        "mean_prompt_tokens": sum(len(tokenizer(p)["input_ids"]) for p in prompts) / len(prompts),
        "mean_generated_tokens": sum(g.tokens for g in summaries) / len(summaries),
        "summaries_per_s": len(summaries) / seconds,
    }), flush=True)


def demo_child(args) -> None:
    """The demo's side-by-side stream on held-out shipped posts, with the page's default sampling; the
    default model loaded twice (base and tuned: same shape, same cost). Print one JSON line."""
    import dataclasses

    import torch

    torch.set_num_threads(args.threads)
    from preftune.judge.generate import stream_sides
    from preftune.models import inference_device, load_model, load_tokenizer
    from preftune.serve.app import SAMPLING

    decoding = dataclasses.replace(SAMPLING, max_new_tokens=args.demo_tokens or SAMPLING.max_new_tokens)
    tokenizer = load_tokenizer(args.model_path)
    prompts = [tokenizer(p)["input_ids"] for p in held_out_prompts(tokenizer, args.demo_posts, args.max_length)]
    device = inference_device()  # where the demo runs them (serve.demo)
    models = [load_model(args.model_path).to(device).eval(), load_model(args.model_path).to(device).eval()]
    for _ in stream_sides(models, tokenizer, prompts[0][-32:], dataclasses.replace(decoding, max_new_tokens=1)):
        pass  # warm-up, untimed: a served page has answered requests before
    first, tokens, seconds = [], 0, 0.0
    for ids in prompts:
        t0 = time.perf_counter()
        stream = stream_sides(models, tokenizer, ids, decoding)
        sides = next(stream)  # both sides' first token: what the page shows first
        first.append(time.perf_counter() - t0)
        for sides in stream:
            pass
        seconds += time.perf_counter() - t0
        tokens += sum(s.tokens for s in sides)  # produced by both sides, EOS not counted
    print("RESULT " + json.dumps({
        "posts": len(prompts), "decoding": dataclasses.asdict(decoding), "seconds": seconds, "tokens": tokens,
        "mean_prompt_tokens": sum(len(ids) for ids in prompts) / len(prompts), "first_token_s": first,
        "first_token_s_mean": sum(first) / len(first), "first_token_s_max": max(first),
        "tokens_per_s": tokens / seconds,
    }), flush=True)


CHILDREN = {"generation": generation_child, "demo": demo_child}  # any other --child: a training config


def run_child(kind: str, common: list[str], env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, *common]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-4000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


# ---- parent --------------------------------------------------------------------------------------


def with_load(run):
    """run()'s result, with the 1-min load average before and after it: other work on the machine skews it."""
    before = os.getloadavg()[0]
    result = run()
    return result, [before, os.getloadavg()[0]]


def prepare_pairs(model_path: str, n: int, max_length: int, path: Path) -> list[tuple[int, int, int]]:
    """The first n shipped TL;DR training pairs, fitted to max_length; returns their token lengths."""
    from preftune.config import DataConfig
    from preftune.data.fit import fit
    from preftune.data.prepare import prepare, write_jsonl
    from preftune.dpo.logps import pack_pair
    from preftune.models import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    pairs = prepare(DataConfig()).train[:n]
    pairs, _ = fit(tokenizer, pairs, max_length, "bench")
    write_jsonl(path, pairs)
    packed = [pack_pair(tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
    return [(p.prompt_len, p.chosen_len, p.rejected_len) for p in packed]


def sweep_times(args, model_path: str, pairs_file: Path, precision: str, env: dict) -> dict:
    """4 fast-engine runs (lr × beta) on the same pairs: shared cache vs cache cleared every run."""
    code = f"""
import json, os, shutil, sys, tempfile, time
import torch
torch.set_num_threads({args.threads})
from pathlib import Path
from preftune.config import TrainConfig
from preftune.data.prepare import read_jsonl
from preftune.dpo.engines import ENGINES, TrainJob
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
            cfg = TrainConfig(output_dir=str(out), model={model_path!r}, lr=lr, beta=beta, precision={precision!r},
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


# ---- which results belong to one run ---------------------------------------------------------------


def settings_of(args, device: str, measured: list[str]) -> dict:
    """What makes two invocations the same run (a resumed run keeps what matches): the precisions measured too."""
    keys = ("pairs", "batch_size", "max_length", "threads", "curve_steps", "sweep_pairs", "gen_posts", "gen_tokens",
            "demo_posts", "demo_tokens", "model")
    return {**{k: getattr(args, k) for k in keys}, "device": device, "precision": PRECISION[device],
            "precisions": measured}


def generation_plan(bf16: bool, device: str) -> tuple[dict[str, str], dict[str, str]]:
    """({generation section: precision}, {skipped section: why}): fp32 always, bf16 where the device has it."""
    if bf16:
        return {"generation": "fp32", "generation_bf16": "bf16"}, {}
    return {"generation": "fp32"}, {"generation_bf16": precisions.NO_BF16_GPU if device == "cuda"
                                    else precisions.NO_BF16_CPU}


def code_state(repo: Path = HERE.parent) -> dict:
    """The code being measured: git HEAD, and whether the tree differs from it (bench/results/ aside).
    Unknown (no git): dirty, so never merged with another invocation."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)

    try:
        head, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "--", ".", ":(exclude)bench/results")
    except OSError:  # no git, or no such folder
        return {"commit": None, "dirty": True}
    if head.returncode or status.returncode:
        return {"commit": None, "dirty": True}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def why_not_kept(previous: dict, settings: dict, code: dict) -> str | None:
    """Why an earlier report cannot join this run, or None when it can: only the same settings, measured
    by the same committed code (every contributing invocation, and this one, on a clean tree)."""
    runs = previous.get("invocations") or []
    if previous.get("settings") != settings:
        return "other settings"
    if code["dirty"] or code["commit"] is None:
        return "this tree has uncommitted changes"
    if not runs or any(r.get("commit") != code["commit"] or r.get("dirty", True) for r in runs):
        return "measured by other code (another commit, or uncommitted changes)"
    return None


def load_previous(out: Path, settings: dict, code: dict, fresh: bool) -> dict | None:
    path = out / "dpo_throughput.json"
    if fresh or not path.is_file():
        return None
    try:
        previous = json.loads(path.read_text())
    except ValueError:
        return None
    reason = why_not_kept(previous, settings, code)
    if reason:
        print(f"not resuming {path}: {reason}; measuring everything")
        return None
    return previous


# ---- the report ------------------------------------------------------------------------------------


def gpu_block(report: dict) -> dict:
    """Issue 13's GPU row: fast vs TRL's better config against its target, when the run is on a GPU."""
    if report["machine"]["kind"] != "cuda":
        return {"measured": False, "note": NO_GPU}
    if "ratio_vs_trl_best" not in report:
        return {"measured": False, "note": "not measured yet: the throughput configs have not all run"}
    return {"measured": True, "device": report["machine"]["device"], "precision": report["setup"]["precision"],
            "ratio_vs_trl_best": report["ratio_vs_trl_best"], **report["targets"]["ratio_vs_trl_best"]}


def summarize(report: dict) -> None:
    """The headline keys, from whatever sections are measured so far; the targets of the run's device."""
    configs, machine = report["configs"], report["machine"]
    peak = machine["matmul_peak_gflops"]
    for precision, gflops in machine["gemm_gflops"].items():
        report[f"{precision}_gemm_gflops"] = gflops
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
    if all(c in configs for c in BF16_CONFIGS):  # a CPU run's bf16 twins
        fast, default, precompute = (configs[c + precisions.BF16] for c in ("fast", "trl_default", "trl_precompute"))
        report["ratio_vs_trl_default_bf16"] = fast["pairs_per_s"] / default["pairs_per_s"]
        report["ratio_vs_trl_best_bf16"] = fast["pairs_per_s"] / max(default["pairs_per_s"], precompute["pairs_per_s"])
    if "fast_bf16" in configs:
        report["fast_pct_of_bf16_peak"] = configs["fast_bf16"]["pct_of_matmul_peak"]
        if "fast" in configs:
            report["ratio_bf16_vs_fp32_fast"] = configs["fast_bf16"]["pairs_per_s"] / configs["fast"]["pairs_per_s"]
    if "generation" in report:
        report["generation_summaries_per_s"] = report["generation"]["summaries_per_s"]
    if "generation_bf16" in report:
        report["generation_summaries_per_s_bf16"] = report["generation_bf16"]["summaries_per_s"]
        if "generation" in report:
            report["ratio_bf16_vs_fp32_generation"] = (report["generation_summaries_per_s_bf16"]
                                                       / report["generation_summaries_per_s"])
    if "demo" in report:
        report["demo_first_token_s"] = report["demo"]["first_token_s_mean"]
        report["demo_tokens_per_s"] = report["demo"]["tokens_per_s"]
    report["targets"] = {k: {"target": f"{op} {v:g}", "met": (report[k] >= v if op == "≥" else report[k] <= v)}
                         for k, (v, op) in TARGETS[report["machine"]["kind"]].items() if k in report}
    report["gpu"] = gpu_block(report)


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
    parser.add_argument("--demo-posts", type=int, default=4, help="held-out posts the demo section streams")
    parser.add_argument("--demo-tokens", type=int, default=None,
                        help="max new tokens per side in the demo section (default: the page's, serve.app.SAMPLING)")
    parser.add_argument("--skip", default="", help=f"comma-separated sections to skip: {','.join(SECTIONS[1:])}")
    parser.add_argument("--quick", action="store_true",
                        help=f"development run: {QUICK}, results in bench/results/quick/ unless --out")
    parser.add_argument("--fresh", action="store_true", help="measure everything again, ignoring earlier results")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: bench/results/)")
    parser.add_argument("--model", default=None,
                        help="model folder or hub id to benchmark (default: preftune's default model; a tiny "
                             "random model with --quick checks the script in a minute)")
    # child-only arguments
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--pairs-file", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, default=5e-6, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return CHILDREN.get(args.child, child)(args)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - set(SECTIONS[1:]):
        parser.error(f"--skip: unknown section(s) {', '.join(sorted(skip - set(SECTIONS[1:])))}; "
                     f"choose from {', '.join(SECTIONS[1:])}")
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)

    from preftune.config import DEFAULT_MODEL
    from preftune.dpo.logps import default_pack_tokens
    from preftune.models import resolve_model

    load_at_start = os.getloadavg()[0]
    if load_at_start > BUSY_LOAD:
        print(f"WARNING: 1-min load average {load_at_start:.2f} > {BUSY_LOAD}: other work on this machine will skew "
              "every number; run the benchmark on an idle machine", flush=True)
    device = device_kind()
    precision = PRECISION[device]  # the plain-named configs'; bf16 twins on a CPU with bf16 units
    bf16 = precisions.bf16_units(device)
    configs, skipped = precisions.plan(CONFIGS, device, bf16)
    generations, skipped_generations = generation_plan(bf16, device)
    measured = precisions.precisions_of([p for _, p in configs.values()] + list(generations.values()))
    args.model = args.model or DEFAULT_MODEL
    model_path = resolve_model(args.model).path
    shape = model_shape(model_path)
    settings = settings_of(args, device, measured)
    code = code_state()
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    env = {**os.environ, "PREFTUNE_CACHE": str(work / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    shutil.copytree(Path(model_path), work / "cache" / "models" / Path(model_path).name)  # no re-conversion
    lengths = prepare_pairs(model_path, args.pairs, args.max_length, work / "pairs.jsonl")
    real_tokens = sum(2 * p + c + r for p, c, r in lengths)
    common = ["--pairs-file", str(work / "pairs.jsonl"), "--model-path", model_path, "--batch-size",
              str(args.batch_size), "--max-length", str(args.max_length), "--threads", str(args.threads)]

    invocation = {**code, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "load_at_start": load_at_start, "sections": []}  # the sections this invocation measured
    report = load_previous(out, settings, code, args.fresh)
    if report:
        print(f"resuming {out / 'dpo_throughput.json'}: keeping {', '.join(report['configs'])} "
              f"{', '.join(s for s in SECTIONS[1:] if s in report)}")
    else:
        print(f"GEMM peaks on {device} ({', '.join(measured)}) …", flush=True)
        peaks, load = with_load(lambda: precisions.gemm_peaks(args.threads, device, measured))
        print("GEMM peaks: " + ", ".join(f"{p} {g:.1f} GFLOP/s" for p, g in peaks.items())
              + f" ({args.threads} threads, {device})")
        invocation["sections"].append("matmul_peak")
        report = {
            "settings": settings,
            "invocations": [],
            "machine": {"kind": device, "device": device_name(device), "threads": args.threads,
                        "cpus": os.cpu_count(), "matmul_peak_gflops": peaks[precision], "gemm_gflops": peaks,
                        "gemm_n": precisions.GEMM_N[device], "matmul_peak_load_avg_1min": load},
            "setup": {"model": args.model, "pairs": len(lengths), "batch_size": args.batch_size,
                      "max_length": args.max_length, "precision": precision, "precisions": measured,
                      "pack_tokens": default_pack_tokens(), "real_tokens": real_tokens, "quick": args.quick,
                      "mean_prompt_tokens": sum(p for p, _, _ in lengths) / len(lengths),
                      "mean_pair_tokens": sum(p + c + r for p, c, r in lengths) / len(lengths)},
            "configs": {},
            "skipped": {**skipped, **skipped_generations},  # configs and sections not measured, and why
        }
        summarize(report)
    report["invocations"].append(invocation)  # the same dict: sections are added as they are measured
    peaks = report["machine"]["gemm_gflops"]

    def measure(section: str, run) -> dict:
        print(f"{section} …", flush=True)
        result, load = with_load(run)
        invocation["sections"].append(section)
        return {**result, "load_avg_1min": load}

    for name, (config, config_precision) in configs.items():  # each fp32 config, then its bf16 twin
        if name in report["configs"]:
            continue
        shutil.rmtree(work / "cache" / "ref_logps", ignore_errors=True)  # every config starts cold
        r = measure(name, functools.partial(run_child, config, [*common, "--precision", config_precision], env))
        flops = executed_flops(config, shape, lengths, args.batch_size)
        r.update({  # r["precision"]: the precision the child trained in (its TrainConfig's)
            "pairs": len(lengths), "pairs_per_s": len(lengths) / r["train_s"],
            "real_tokens_per_s": real_tokens / r["train_s"], "s_per_step": r["train_s"] / r["steps"],
            "gflops_per_s": flops["steps"] / r["train_s"] / 1e9,
            "precompute_s_per_pair": r["precompute_s"] / len(lengths),
            "reference_gflops_per_s": flops["precompute"] / r["precompute_s"] / 1e9 if r["precompute_s"] else 0.0,
        })
        r["pct_of_matmul_peak"] = 100 * r["gflops_per_s"] / peaks[config_precision]  # of its own precision's peak
        report["configs"][name] = {k: v for k, v in r.items() if k != "log"}
        print(f"  {r['s_per_step']:.1f} s/step, {r['pairs_per_s']:.3f} pairs/s, peak RSS {r['peak_rss_gib']:.2f} GiB")
        summarize(report)
        save(report, out)

    for name, gen_precision in ({} if "generation" in skip else generations).items():
        if name in report:
            continue
        report[name] = measure(name, functools.partial(run_child, "generation", [
            *common, "--precision", gen_precision, "--gen-posts", str(args.gen_posts), "--gen-tokens",
            str(args.gen_tokens)], env))
        summarize(report)
        save(report, out)
    if "demo" not in skip and "demo" not in report:
        report["demo"] = measure("demo", lambda: run_child(
            "demo", [*common, "--demo-posts", str(args.demo_posts)]
            + (["--demo-tokens", str(args.demo_tokens)] if args.demo_tokens else []), env))
        summarize(report)
        save(report, out)
    if "curves" not in skip and "curves" not in report:
        curve_common = ["--pairs-file", str(work / "curve_pairs.jsonl"), "--model-path", model_path,
                        "--batch-size", str(args.batch_size), "--max-length", "256", "--threads", str(args.threads),
                        "--precision", precision, "--lr", "2e-5", "--epochs", str(args.curve_steps)]
        prepare_pairs(model_path, args.batch_size, 256, work / "curve_pairs.jsonl")
        shutil.rmtree(work / "cache" / "ref_logps", ignore_errors=True)
        logs = measure("curves", lambda: {"trl": run_child("trl_default", curve_common, env)["log"],
                                          "fast": run_child("fast", curve_common, env)["log"]})
        out.mkdir(parents=True, exist_ok=True)
        plot_curves(logs["trl"], logs["fast"], out / "curves.png")
        report["curves"] = {
            "steps": len(logs["trl"]),
            "max_abs_loss_diff": max(abs(a["loss"] - b["loss"]) for a, b in zip(logs["trl"], logs["fast"])),
            "trl_loss": [r["loss"] for r in logs["trl"]], "fast_loss": [r["loss"] for r in logs["fast"]],
            "load_avg_1min": logs["load_avg_1min"],
        }
        save(report, out)
    if "sweep" not in skip and "sweep" not in report:
        prepare_pairs(model_path, args.sweep_pairs, args.max_length, work / "sweep_pairs.jsonl")
        report["sweep"] = measure("sweep", lambda: sweep_times(args, model_path, work / "sweep_pairs.jsonl",
                                                               precision, env))
        save(report, out)

    save(report, out)  # this invocation is listed even when it found everything measured
    print(markdown(report))
    shutil.rmtree(work, ignore_errors=True)


def save(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "dpo_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "dpo_throughput.md").write_text(markdown(report))


def _target(r: dict, key: str, fmt: str, unit: str = "", skipped: str | None = None) -> str:
    """A headline number with its target's verdict; "not measured" (and why, when a config it needs was skipped)."""
    if key not in r:
        why = r.get("skipped", {}).get(skipped)
        return f"not measured ({why})" if why else "not measured"
    t = r["targets"].get(key)
    verdict = f" (target {t['target']}{unit}: {'met' if t['met'] else 'NOT met'})" if t else ""
    return f"**{format(r[key], fmt)}{unit}**{verdict}"


def _load(load: list[float]) -> str:
    before, after = load
    return f"load avg {before:.1f} → {after:.1f}"


def _memory(c: dict) -> str:
    gpu = c.get("peak_gpu_mem_gib")
    return f"{c['peak_rss_gib']:.2f}" + (f" (GPU {gpu:.2f})" if gpu is not None else "")


def _seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def provenance(r: dict) -> str:
    """Which code measured the results, and whether they come from more than one invocation."""
    runs = r["invocations"]
    what = "; ".join(f"{run['started']}, load average {run['load_at_start']:.2f} at its start: "
                     f"{', '.join(run['sections']) or 'nothing new'}" for run in runs)
    commit = (runs[0]["commit"] or "unknown")[:12]
    state = "uncommitted changes" if runs[0]["dirty"] else "clean tree"
    if len(runs) == 1:
        return f"Commit {commit} ({state}), one invocation ({what})."
    return (f"Commit {commit} ({state}). **These results come from {len(runs)} invocations** of the script "
            f"(same settings, same commit, clean tree): {what}.")


def _peaks(m: dict) -> str:
    return ", ".join(f"{p} {g:.0f}" for p, g in m["gemm_gflops"].items())


def markdown(r: dict) -> str:
    s, m = r["setup"], r["machine"]
    lines = [
        "# DPO throughput (bench/dpo_throughput.py)", "",
        f"{s['model']}, {s['pairs']} shipped TL;DR pairs (mean prompt {s['mean_prompt_tokens']:.0f} tokens, "
        f"{s['mean_pair_tokens']:.0f} per packed pair), batch {s['batch_size']}, max_length {s['max_length']}, "
        f"{', '.join(s['precisions'])} (plain-named configs {s['precision']}), fast engine --pack-tokens "
        f"{s['pack_tokens']}, {m['threads']} threads, {m['device']}; measured GEMM peaks ({m['gemm_n']}²) "
        f"{_peaks(m)} GFLOP/s ({_load(m['matmul_peak_load_avg_1min'])})."
        + (" QUICK run (development only)." if s.get("quick") else ""), "",
        provenance(r), "",
        ("| config | precision | s/step | pairs/s | real tokens/s | est. GFLOP/s (% of its precision's peak) | "
         "peak RSS GiB | ref pass s/pair | TRL setup s | load avg (before, after) |"),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in r["configs"].items():
        lines.append(f"| {name} | {c['precision']} | {c['s_per_step']:.1f} | {c['pairs_per_s']:.3f} | "
                     f"{c['real_tokens_per_s']:.0f} | {c['gflops_per_s']:.0f} ({c['pct_of_matmul_peak']:.0f}%) | "
                     f"{_memory(c)} | {c['precompute_s_per_pair']:.2f} | {_seconds(c.get('setup_s'))} | "
                     f"{c['load_avg_1min'][0]:.1f}, {c['load_avg_1min'][1]:.1f} |")
    for name, why in r["skipped"].items():
        if name in BF16_CONFIGS:
            lines.append(f"| {name} | bf16 | {why} | | | | | | | |")
    if m["kind"] == "cpu":
        lines.append("| GPU rows (TRL default, TRL precompute, fast) | bf16 | not measured | not measured "
                     "| | | | | | |")
    lines += ["", f"- fast vs TRL default, pairs/s: {_target(r, 'ratio_vs_trl_default', '.2f', '×')}",
              f"- fast vs TRL best, pairs/s: {_target(r, 'ratio_vs_trl_best', '.2f', '×')}",
              f"- fast engine's estimated FLOP rate, % of the matmul peak: "
              f"{_target(r, 'fast_pct_of_matmul_peak', '.0f', '%')}",
              f"- peak RSS fast / TRL default: {_target(r, 'rss_ratio_vs_trl_default', '.2f')}",
              f"- reference pass (fast engine, cold cache), % of the matmul peak: "
              f"{_target(r, 'reference_pct_of_matmul_peak', '.0f', '%')}"
              + (f" ({r['reference_s_per_pair']:.2f} s/pair)" if "reference_s_per_pair" in r else "")]
    if m["kind"] == "cpu":  # issue 20: the same configs in bf16
        bf16 = {key: _target(r, key, fmt, unit, "fast_bf16") for key, fmt, unit in (
            ("ratio_bf16_vs_fp32_fast", ".2f", "×"), ("ratio_vs_trl_default_bf16", ".2f", "×"),
            ("ratio_vs_trl_best_bf16", ".2f", "×"), ("fast_pct_of_bf16_peak", ".0f", "%"))}
        lines += [f"- fast bf16 vs fast fp32, pairs/s: {bf16['ratio_bf16_vs_fp32_fast']}",
                  f"- fast vs TRL default, both bf16: {bf16['ratio_vs_trl_default_bf16']}",
                  f"- fast vs TRL best, both bf16: {bf16['ratio_vs_trl_best_bf16']}",
                  f"- fast bf16's estimated FLOP rate, % of the bf16 GEMM peak: {bf16['fast_pct_of_bf16_peak']}"]
    if "trl_precompute" in r["configs"]:
        c = r["configs"]["trl_precompute"]
        lines.append(f"- TRL's reference pass (`_precompute_ref_logps` alone): {c['precompute_s']:.1f} s "
                     f"({c['precompute_s_per_pair']:.2f} s/pair); the rest of its trainer setup {c['setup_s']:.1f} s")
    if "ratio_vs_trl_default_incl_cold_reference" in r:
        lines.append(f"- fast vs TRL default counting the cold reference pass too: "
                     f"{r['ratio_vs_trl_default_incl_cold_reference']:.2f}×")
    for name in ("generation", "generation_bf16"):
        if name in r:
            g = r[name]
            lines.append(f"- judge generation, {g['precision']}: **{g['summaries_per_s']:.2f} summaries/s** "
                         f"({g['summaries']} summaries of {g['posts']} held-out posts, {', '.join(g['decodings'])}, "
                         f"batch {g['batch_size']}, ≤ {g['max_new_tokens']} new tokens, mean prompt "
                         f"{g['mean_prompt_tokens']:.0f} tokens, mean summary {g['mean_generated_tokens']:.1f} tokens; "
                         f"{_load(g['load_avg_1min'])})")
        elif name in r["skipped"]:
            lines.append(f"- judge generation, bf16: not measured ({r['skipped'][name]})")
    if "ratio_bf16_vs_fp32_generation" in r:
        lines.append(f"- judge generation bf16 vs fp32, summaries/s: {r['ratio_bf16_vs_fp32_generation']:.2f}×")
    if "demo" in r:
        d = r["demo"]
        lines.append(f"- demo stream (two models side by side, T={d['decoding']['temperature']:g}, top-p "
                     f"{d['decoding']['top_p']:g}, ≤ {d['decoding']['max_new_tokens']} new tokens each): first step "
                     f"**{d['first_token_s_mean']:.2f} s** (max {d['first_token_s_max']:.2f}), **"
                     f"{d['tokens_per_s']:.1f} tokens/s** over both sides ({d['tokens']} tokens, {d['posts']} held-out "
                     f"posts, mean prompt {d['mean_prompt_tokens']:.0f} tokens; {_load(d['load_avg_1min'])})")
    if "curves" in r:
        lines.append(f"- curves ({r['curves']['steps']} steps, one fixed batch): max |loss difference| "
                     f"{r['curves']['max_abs_loss_diff']:.2e}; see curves.png ({_load(r['curves']['load_avg_1min'])})")
    if "sweep" in r:
        w = r["sweep"]
        lines.append(f"- 4-run sweep ({w['pairs_per_run']} pairs/run): {w['shared_cache']:.0f} s with the shared "
                     f"reference cache vs {w['no_cache']:.0f} s recomputing it every run ({w['speedup']:.2f}×; "
                     f"{_load(w['load_avg_1min'])})")
    g = r["gpu"]
    if g["measured"]:
        lines.append(f"- GPU ({g['device']}, {g['precision']}): fast vs TRL's best config "
                     f"**{g['ratio_vs_trl_best']:.2f}×** "
                     f"(target {g['target']}×: {'met' if g['met'] else 'NOT met'}); the CPU targets do not apply")
    else:
        lines.append(f"- GPU: {g['note']} (target there: fast ≥ 1.5× TRL's best config)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
