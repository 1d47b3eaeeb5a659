"""SFT training throughput: preftune's fast engine vs TRL's SFTTrainer on the same rows, one command.

    .venv/bin/python bench/sft_throughput.py          # 32 rows, batch 8, max_length 512, 2 threads (~10 min)
    .venv/bin/python bench/sft_throughput.py --tiny   # seconds: a tiny random model → bench/results/tiny/

Each engine in its own child process, in fp32 and again in bf16 on a CPU with bf16 units (bf16 only on
CUDA; bench/precisions.py). Writes bench/results/sft_throughput.{json,md}: rows/s, estimated GFLOP/s and
% of the GEMM peak of its precision, peak RSS, the ratios, the targets, and provenance as
bench/dpo_throughput.py records it; bench/README.md explains the keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the DPO benchmark's helpers: device, memory, load, provenance

import dpo_throughput as dpo  # noqa: E402 (after the path it is found on)
import precisions  # noqa: E402 (bench/precisions.py)

RESULTS = HERE / "results"
ENGINES = ("trl", "fast")  # at the device's main precision; a CPU run adds their bf16 twins (trl_bf16, fast_bf16)
TARGETS = {"cpu": {"ratio_vs_trl": (3.0, "≥"), "rss_ratio_vs_trl": (0.5, "≤")}, "cuda": {}}  # CPU targets only
TINY = {"rows": 8, "batch_size": 4, "max_length": 256}


# ---- the rows and the tiny model ---------------------------------------------------------------------


def prepare_rows(model_path: str, n: int, max_length: int, path: Path) -> list[tuple[int, int]]:
    """The first n distinct (prompt, chosen summary) rows of the shipped train split, as SFT rows (rejected =
    chosen), fitted to max_length and written to `path`; returns their (prompt, completion) token counts."""
    from preftune.config import DataConfig
    from preftune.data.fit import fit
    from preftune.data.prepare import prepare, write_jsonl
    from preftune.dpo.logps import pack_completion
    from preftune.models import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    rows = list({(p.prompt, p.chosen): dataclasses.replace(p, rejected=p.chosen)
                 for p in prepare(DataConfig()).train}.values())[:n]
    rows, _ = fit(tokenizer, rows, max_length, "bench")
    write_jsonl(path, rows)
    packed = [pack_completion(tokenizer, r.prompt, r.chosen) for r in rows]
    return [(p.prompt_len, p.chosen_len) for p in packed]


def build_tiny_model(folder: Path) -> Path:
    """A 2-layer Llama (random weights) and a 512-token byte-level BPE trained on the shipped posts."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from preftune.config import DataConfig
    from preftune.data.prepare import prepare

    texts = [t for p in prepare(DataConfig()).train[:300] for t in (p.prompt, p.chosen)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=512, special_tokens=["<|eos|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eos|>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---- child: one engine ---------------------------------------------------------------------------------


def child(args) -> None:
    """Train one engine on the rows file; print one JSON line with its measurements."""
    import torch

    torch.set_num_threads(args.threads)
    from preftune.config import SFTConfig
    from preftune.data.prepare import read_jsonl
    from preftune.dpo.engines import ENGINES as TRAIN
    from preftune.dpo.engines import TrainJob
    from preftune.models import load_tokenizer

    rows = read_jsonl(Path(args.rows_file))
    tokenizer = load_tokenizer(args.model_path)
    out = Path(tempfile.mkdtemp(prefix=f"bench-sft-{args.child}-"))
    cfg = SFTConfig(output_dir=str(out), model=args.model_path, lr=args.lr, batch_size=args.batch_size, epochs=1,
                    max_length=args.max_length, engine=args.child, precision=args.precision)
    job = TrainJob(args.model_path, tokenizer, rows, cfg, 0, out, args.batch_size, out / "log.jsonl", objective="sft")
    result = TRAIN[args.child](job)  # runtime_s: the training loop, model loading and data preparation excluded
    log = [json.loads(line) for line in job.log_path.read_text().splitlines()]
    shutil.rmtree(out, ignore_errors=True)
    print("RESULT " + json.dumps({"engine": args.child, "precision": cfg.precision, "train_s": result.runtime_s,
                                  "steps": result.steps,
                                  **dpo.peak_memory(torch.cuda.is_available()), "log": log}), flush=True)


def run_child(engine: str, common: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", engine, *common]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{engine} failed:\n{done.stderr[-4000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


# ---- the report ------------------------------------------------------------------------------------------


def executed_flops(engine: str, shape: dict, lengths: list[tuple[int, int]], batch_size: int) -> float:
    """Estimated FLOPs of one epoch (dpo_throughput.forward_flops; forward + backward = 3× forward, neither
    engine checkpoints by default): the fast engine runs each row unpadded and its LM head over the summary
    positions only; TRL pads each batch to its longest row and runs the head over every position."""
    flops = 0.0
    for start in range(0, len(lengths), batch_size):
        batch = lengths[start : start + batch_size]
        if engine == "trl":
            rows = [max(p + c for p, c in batch)] * len(batch)
            flops += 3 * dpo.forward_flops(shape, rows, sum(rows))
        else:
            flops += 3 * dpo.forward_flops(shape, [p + c for p, c in batch], sum(c for _, c in batch))
    return flops


def engine_numbers(r: dict, lengths: list[tuple[int, int]], flops: float, peak: float) -> dict:
    """One engine's measurements as the report keeps them (the per-step log reduced to its first/last loss);
    `peak`: the GEMM peak of the precision it ran in."""
    rows, tokens = len(lengths), sum(p + c for p, c in lengths)
    gflops = flops / r["train_s"] / 1e9
    return {"precision": r["precision"], "rows": rows, "steps": r["steps"], "train_s": r["train_s"],
            "rows_per_s": rows / r["train_s"], "s_per_row": r["train_s"] / rows,
            "s_per_step": r["train_s"] / r["steps"],
            "tokens_per_s": tokens / r["train_s"], "gflops_per_s": gflops, "pct_of_matmul_peak": 100 * gflops / peak,
            "peak_rss_gib": r["peak_rss_gib"], "peak_gpu_mem_gib": r["peak_gpu_mem_gib"],
            "first_loss": r["log"][0]["loss"], "last_loss": r["log"][-1]["loss"], "load_avg_1min": r["load_avg_1min"]}


def summarize(report: dict) -> None:
    """The headline ratios of whatever engines are measured, and the targets of the run's device."""
    engines = report["engines"]
    for precision, gflops in report["machine"]["gemm_gflops"].items():
        report[f"{precision}_gemm_gflops"] = gflops
    if all(e in engines for e in ENGINES):
        report["ratio_vs_trl"] = engines["fast"]["rows_per_s"] / engines["trl"]["rows_per_s"]
        report["rss_ratio_vs_trl"] = engines["fast"]["peak_rss_gib"] / engines["trl"]["peak_rss_gib"]
    if "fast" in engines:
        report["fast_pct_of_matmul_peak"] = engines["fast"]["pct_of_matmul_peak"]
    if "fast_bf16" in engines:  # a CPU run's bf16 twins
        report["fast_pct_of_bf16_peak"] = engines["fast_bf16"]["pct_of_matmul_peak"]
        if "fast" in engines:
            report["ratio_bf16_vs_fp32_fast"] = engines["fast_bf16"]["rows_per_s"] / engines["fast"]["rows_per_s"]
        if "trl_bf16" in engines:
            report["ratio_vs_trl_bf16"] = engines["fast_bf16"]["rows_per_s"] / engines["trl_bf16"]["rows_per_s"]
    report["targets"] = {k: {"target": f"{op} {v:g}", "met": report[k] >= v if op == "≥" else report[k] <= v}
                         for k, (v, op) in TARGETS[report["machine"]["kind"]].items() if k in report}


def markdown(r: dict) -> str:
    s, m = r["setup"], r["machine"]
    lines = [
        "# SFT throughput (bench/sft_throughput.py)", "",
        f"{s['model']}, {s['rows']} rows (chosen summaries of the shipped train split; mean prompt "
        f"{s['mean_prompt_tokens']:.0f} tokens, mean summary {s['mean_completion_tokens']:.0f}), batch "
        f"{s['batch_size']}, max_length {s['max_length']}, {', '.join(s['precisions'])} (plain-named engines "
        f"{s['precision']}), fast engine --pack-tokens {s['pack_tokens']}, {m['threads']} threads, {m['device']}; "
        f"measured GEMM peaks ({m['gemm_n']}²) {dpo._peaks(m)} GFLOP/s ({dpo._load(m['matmul_peak_load_avg_1min'])})."
        + (" TINY run (a random 2-layer model: checks the script, measures nothing)." if s["tiny"] else ""), "",
        dpo.provenance(r), "",
        ("| engine | precision | rows/s | s/row | tokens/s | est. GFLOP/s (% of its precision's peak) | "
         "peak RSS GiB | first → last loss | load avg (before, after) |"),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in r["engines"].items():
        lines.append(f"| {name} | {e['precision']} | {e['rows_per_s']:.3f} | {e['s_per_row']:.2f} | "
                     f"{e['tokens_per_s']:.0f} | {e['gflops_per_s']:.0f} ({e['pct_of_matmul_peak']:.0f}%) | "
                     f"{dpo._memory(e)} | {e['first_loss']:.3f} → {e['last_loss']:.3f} | "
                     f"{e['load_avg_1min'][0]:.1f}, {e['load_avg_1min'][1]:.1f} |")
    for name, why in r["skipped"].items():
        lines.append(f"| {name} | bf16 | {why} | | | | | | |")
    lines += ["", f"- fast vs TRL SFTTrainer, rows/s: {dpo._target(r, 'ratio_vs_trl', '.2f', '×')}",
              f"- peak RSS fast / TRL: {dpo._target(r, 'rss_ratio_vs_trl', '.2f')}"]
    if m["kind"] == "cpu":
        bf16 = {key: dpo._target(r, key, ".2f", "×", "fast_bf16") for key in ("ratio_bf16_vs_fp32_fast",
                                                                           "ratio_vs_trl_bf16")}
        lines += [f"- fast bf16 vs fast fp32, rows/s: {bf16['ratio_bf16_vs_fp32_fast']}",
                  f"- fast vs TRL SFTTrainer, both bf16, rows/s: {bf16['ratio_vs_trl_bf16']}"]
    if m["kind"] != "cpu":
        lines.append("- the targets are the CPU's; this run was on a GPU")
    return "\n".join(lines) + "\n"


def save(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sft_throughput.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "sft_throughput.md").write_text(markdown(report))


# ---- parent -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=32, help="SFT rows each engine trains on (one epoch)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per optimizer step (both engines)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each engine's process")
    parser.add_argument("--model", default=None, help="model to train (default: preftune's default model)")
    parser.add_argument("--tiny", action="store_true",
                        help=f"a tiny random model and {TINY}: checks the script in seconds; results in "
                             "bench/results/tiny/ unless --out")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: bench/results/)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--rows-file", help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, default=1e-5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
    out = args.out or (RESULTS / "tiny" if args.tiny else RESULTS)

    from preftune.config import DEFAULT_MODEL
    from preftune.dpo.logps import default_pack_tokens
    from preftune.models import resolve_model

    load_at_start = os.getloadavg()[0]
    if load_at_start > dpo.BUSY_LOAD:
        print(f"WARNING: 1-min load average {load_at_start:.2f} > {dpo.BUSY_LOAD}: other work on this machine will "
              "skew every number; run the benchmark on an idle machine", flush=True)
    device = dpo.device_kind()
    precision = dpo.PRECISION[device]  # the plain-named engines'; bf16 twins on a CPU with bf16 units
    runs, skipped = precisions.plan(ENGINES, device)
    measured = precisions.precisions_of([p for _, p in runs.values()])
    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    if args.tiny:
        model_name, model_path = "tiny random Llama (2 layers)", str(build_tiny_model(work / "tiny"))
    else:
        model_name = args.model or DEFAULT_MODEL
        model_path = resolve_model(model_name).path
    lengths = prepare_rows(model_path, args.rows, args.max_length, work / "rows.jsonl")
    shape = dpo.model_shape(model_path)
    common = ["--rows-file", str(work / "rows.jsonl"), "--model-path", model_path, "--batch-size", str(args.batch_size),
              "--max-length", str(args.max_length), "--threads", str(args.threads)]
    peaks, peak_load = dpo.with_load(lambda: precisions.gemm_peaks(args.threads, device, measured))
    invocation = {**dpo.code_state(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "load_at_start": load_at_start, "sections": ["matmul_peak"],
                  "argv": sys.argv[1:] if argv is None else argv}
    report = {
        "settings": {"rows": args.rows, "batch_size": args.batch_size, "max_length": args.max_length,
                     "threads": args.threads, "device": device, "precision": precision, "precisions": measured,
                     "tiny": args.tiny},
        "invocations": [invocation],
        "machine": {"kind": device, "device": dpo.device_name(device), "threads": args.threads, "cpus": os.cpu_count(),
                    "matmul_peak_gflops": peaks[precision], "gemm_gflops": peaks, "gemm_n": precisions.GEMM_N[device],
                    "matmul_peak_load_avg_1min": peak_load},
        "setup": {"model": model_name, "rows": len(lengths), "batch_size": args.batch_size,
                  "max_length": args.max_length, "precision": precision, "precisions": measured,
                  "pack_tokens": default_pack_tokens(),
                  "tiny": args.tiny, "steps": math.ceil(len(lengths) / args.batch_size),
                  "mean_prompt_tokens": sum(p for p, _ in lengths) / len(lengths),
                  "mean_completion_tokens": sum(c for _, c in lengths) / len(lengths)},
        "engines": {},
        "skipped": skipped,  # engines not measured, and why
    }
    for name, (engine, engine_precision) in runs.items():  # each fp32 engine, then its bf16 twin
        print(f"{name} …", flush=True)
        t0 = time.perf_counter()
        result, load = dpo.with_load(functools.partial(run_child, engine, [*common, "--precision", engine_precision]))
        invocation["sections"].append(name)
        flops = executed_flops(engine, shape, lengths, args.batch_size)
        report["engines"][name] = {**engine_numbers({**result, "load_avg_1min": load}, lengths, flops,
                                                    peaks[engine_precision]), "wall_s": time.perf_counter() - t0}
        e = report["engines"][name]
        print(f"  {e['rows_per_s']:.3f} rows/s ({e['s_per_row']:.2f} s/row), peak RSS {e['peak_rss_gib']:.2f} GiB")
        summarize(report)
        save(report, out)
    print(markdown(report))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
