"""The GPU check: preftune's CUDA code paths, run once on a machine with one GPU, into ONE JSON file.

    python bench/gpu_check.py               # one CUDA GPU, ~5 min → bench/results/gpu_check.json
    python bench/gpu_check.py --dry-run     # CPU, tiny models, fp32: every part's code path in < 1 min
    python bench/gpu_check.py --preflight   # what this machine lacks (packages, GPU), then exit

Parts, each in its own processes, one failing never stopping the others: gpu_tests (`pytest -m gpu`,
each test's outcome), benchmark (fast engine vs TRL with precomputed reference), one_b (3 fast-engine
steps of a ~1B Llama built from a config, full and LoRA). How to run it on a lent machine, and what
each number means: bench/README.md, "GPU check".
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "src"), str(HERE)]  # this checkout's preftune and bench/dpo_throughput.py

import dpo_throughput as throughput

PARTS = ("gpu_tests", "benchmark", "one_b")
BENCH_CONFIGS = ("fast", "trl_precompute")  # bench/dpo_throughput.py's child configs
# Llama-3.2-1B's body (GQA 32/8 heads); with the default model's 49,152-token vocab, tied: 1.07B parameters
ONE_B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
         "num_key_value_heads": 8}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}
SETTINGS = {  # what each mode runs; the dry run keeps every code path, on tiny models in fp32
    "gpu": {"pairs": 64, "batch_size": 8, "max_length": 512, "one_b_steps": 3, "precision": "bf16",
            "bench_shape": None, "one_b_shape": ONE_B},
    "dry": {"pairs": 2, "batch_size": 2, "max_length": 256, "one_b_steps": 2, "precision": "fp32",
            "bench_shape": TINY, "one_b_shape": TINY},
}
TIMEOUT_S = {"gpu_tests": 300, "bench_child": 200, "one_b_child": 240}  # per process; a hang is a failure


class ChildFailed(Exception):
    """A child process exited non-zero, timed out, or printed no result line."""


# ---- preflight: what this machine has ---------------------------------------------------------------


def requirements() -> list[str]:
    """preftune's dependencies (pyproject.toml) and pytest: what every part imports."""
    try:
        import tomllib

        deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    except ImportError:  # Python 3.10: the installed package's metadata says the same
        import importlib.metadata

        deps = [r for r in importlib.metadata.requires("preftune") or [] if "extra ==" not in r]
    return [*deps, "pytest>=8"]


def package_status(requirement: str) -> dict:
    """{name, wanted, installed, ok} of one requirement string, e.g. 'trl>=1.16,<2'."""
    import importlib.metadata

    from packaging.requirements import Requirement

    req = Requirement(requirement)
    try:
        installed = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        installed = None
    ok = installed is not None and req.specifier.contains(installed, prereleases=True)
    return {"name": req.name, "wanted": str(req.specifier) or "any", "installed": installed, "ok": ok}


def preflight() -> dict:
    import torch

    packages = [package_status(r) for r in requirements()]
    return {"cuda": torch.cuda.is_available(), "gpus": torch.cuda.device_count(),
            "missing": [f"{p['name']} {p['wanted']} (installed: {p['installed'] or 'none'})"
                        for p in packages if not p["ok"]],
            "packages": {p["name"]: p["installed"] for p in packages}}


def provenance(commit: str | None) -> dict:
    """The code measured and the machine it ran on."""
    import torch

    code = throughput.code_state(REPO)
    if commit and code["commit"] is None:  # the tree travelled without .git: the commit as told
        code = {"commit": commit, "dirty": None, "commit_source": "--commit"}
    else:
        code["commit_source"] = "git"
    kind = throughput.device_kind()
    gpu = {}
    if kind == "cuda":
        props = torch.cuda.get_device_properties(0)
        gpu = {"gpu_memory_gib": props.total_memory / 2**30, "capability": f"{props.major}.{props.minor}",
               "gpus": torch.cuda.device_count()}
    return {**code, "device": throughput.device_name(kind), **gpu, "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if kind == "cuda" else None,
            "python": platform.python_version(), "host": platform.node(), "cpus": os.cpu_count(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}


# ---- running parts and children ---------------------------------------------------------------------


def run_parts(parts: dict, report: dict, save) -> None:
    """Each part in turn into report["parts"][name] = {ok, seconds, error, ...}: an exception is that part's
    failure (its text kept), never the others'. `save(report)` after each, so an interruption keeps them."""
    for name, part in parts.items():
        print(f"gpu_check: {name} …", flush=True)
        t0 = time.perf_counter()
        try:
            result = part()
            entry = {"ok": bool(result.pop("ok")), "error": result.pop("error", None), **result}
        except Exception as e:  # noqa: BLE001 - a part's failure is data, the next part still runs
            entry = {"ok": False, "error": f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-3)}"}
        report["parts"][name] = {"seconds": round(time.perf_counter() - t0, 2), **entry}
        print(f"gpu_check: {name}: {'ok' if entry['ok'] else 'FAILED: ' + str(entry['error'])[:2000]}", flush=True)
        save(report)


def run_process(cmd: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    """cmd in a process group of its own, killed whole at the timeout (a hung torchrun or NCCL child of
    it would otherwise hold the GPU through the next parts); ChildFailed then, with its stderr tail."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise ChildFailed(f"timed out after {timeout} s: {' '.join(cmd[1:4])}\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_child(cmd: list[str], env: dict, timeout: int) -> dict:
    """Run one child process; its `RESULT {json}` line, else ChildFailed with the end of its stderr."""
    t0 = time.perf_counter()
    done = run_process(cmd, env, timeout)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise ChildFailed(f"exit {done.returncode}: {' '.join(cmd[1:4])}\n{done.stderr[-3000:]}")
    return {**json.loads(lines[-1][len("RESULT "):]), "wall_s": round(time.perf_counter() - t0, 2)}


def child_env(work: Path) -> dict:
    """Children import this checkout's preftune, read models from folders only (no hub), and share one
    reference cache under the work folder."""
    path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PREFTUNE_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


# ---- models ----------------------------------------------------------------------------------------


def llama_config(tokenizer, shape: dict):
    """A Llama of this shape over the tokenizer's vocabulary (tied embeddings, as the default model)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), head_dim=shape["hidden_size"] // shape["num_attention_heads"],
                       max_position_embeddings=2048, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, **shape)


def build_model(folder: Path, config, tokenizer_path: str, device: str = "cpu", save_dtype: str = "float32") -> Path:
    """A randomly initialised causal LM of `config` with the tokenizer of `tokenizer_path`, saved into
    `folder` (once: a complete folder is reused). Speed and memory depend on the shapes, not the weights."""
    import torch
    from transformers import AutoModelForCausalLM

    from preftune.models import load_tokenizer

    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    with torch.device(device):  # a 1B model initialises in seconds on the GPU, minutes on a few CPU cores
        model = AutoModelForCausalLM.from_config(config)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(getattr(torch, save_dtype)).save_pretrained(tmp)
    load_tokenizer(tokenizer_path).save_pretrained(tmp)
    tmp.rename(folder)  # atomic: a half-written folder is never reused
    return folder


@functools.cache
def inputs(model_spec: str, random_weights: bool, mode: str, work: Path) -> dict:
    """What the benchmark and the 1B run share: the model (resolved once), the benchmark's model folder,
    and the shipped TL;DR pairs fitted to max_length (tokenized with the model's tokenizer)."""
    from transformers import AutoConfig

    from preftune.data.folder import read_jsonl, write_jsonl
    from preftune.models import load_tokenizer, resolve_model

    s = SETTINGS[mode]
    resolved = resolve_model(model_spec)
    if s["bench_shape"]:
        bench_model = build_model(work / "bench-model", llama_config(load_tokenizer(resolved.path), s["bench_shape"]),
                                  resolved.path)
        weights = f"random init, {json.dumps(s['bench_shape'])} over {model_spec}'s tokenizer"
    elif random_weights:
        bench_model = build_model(work / "bench-model", AutoConfig.from_pretrained(resolved.path), resolved.path)
        weights = f"random init of {model_spec}'s config (same shapes, so the same speed and memory)"
    else:
        bench_model, weights = Path(resolved.path), "pretrained"
    n = max(s["pairs"], s["one_b_steps"] * s["batch_size"])
    lengths = throughput.prepare_pairs(resolved.path, n, s["max_length"], work / "pairs.jsonl")[: s["pairs"]]
    write_jsonl(work / "bench-pairs.jsonl", read_jsonl(work / "pairs.jsonl")[: s["pairs"]])
    return {"model": model_spec, "source": resolved.source, "path": resolved.path, "bench_model": str(bench_model),
            "weights": weights, "pairs_file": str(work / "pairs.jsonl"),
            "bench_pairs_file": str(work / "bench-pairs.jsonl"), "bench_pairs": len(lengths),
            "mean_pair_tokens": sum(p + c + r for p, c, r in lengths) / len(lengths)}


# ---- the parts ---------------------------------------------------------------------------------------


def parse_junit(path: Path) -> list[dict]:
    """Each test case of a pytest --junitxml file: {test, outcome, seconds, message}."""
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (found.get("message") or found.text or "")[:1500]
                break
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": message})
    return tests


def gpu_test_files(tests: Path = REPO / "tests") -> list[str]:
    """The test modules that use the `gpu` marker: collecting only these takes seconds, and a module
    without GPU tests that cannot import here (gradio, playwright) cannot fail the check."""
    return sorted(str(p.relative_to(REPO)) for p in tests.glob("test_*.py") if "mark.gpu" in p.read_text())


def gpu_tests(dry_run: bool, cuda: bool, work: Path) -> dict:
    """`pytest -m gpu` over the modules that use the marker. With a GPU every test must pass (a skip
    fails the check); in a dry run without one, every test must be collected and skip."""
    xml, files = work / "gpu_tests.xml", gpu_test_files()
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={xml}", "-q", "-rfEs",
           *files]
    done = run_process(cmd, child_env(work), TIMEOUT_S["gpu_tests"])
    tests = parse_junit(xml) if xml.is_file() else []
    counts = {o: sum(t["outcome"] == o for t in tests) for o in ("passed", "failed", "error", "skipped")}
    expected = "skipped" if dry_run and not cuda else "passed"
    wrong = [t["test"] for t in tests if t["outcome"] != expected]
    ok = done.returncode == 0 and bool(tests) and not wrong
    error = None if ok else (f"pytest exit {done.returncode}; {len(wrong)} of {len(tests)} tests not {expected}: "
                             f"{', '.join(wrong)}\n{done.stdout[-3000:]}")
    return {"ok": ok, "error": error, "files": files, "expected": expected, "collected": len(tests), "counts": counts,
            "tests": tests}


def benchmark(data: dict, mode: str, work: Path) -> dict:
    """Fast engine vs TRL with precomputed reference on the same pairs, each config a fresh process
    (bench/dpo_throughput.py --child) with a cold reference cache: pairs/s and peak GPU memory."""
    s = SETTINGS[mode]
    configs = {}
    for name in BENCH_CONFIGS:
        shutil.rmtree(work / "cache" / "ref_logps", ignore_errors=True)
        cmd = [sys.executable, str(HERE / "dpo_throughput.py"), "--child", name, "--pairs-file",
               data["bench_pairs_file"], "--model-path", data["bench_model"], "--batch-size", str(s["batch_size"]),
               "--max-length", str(s["max_length"]), "--threads", str(os.cpu_count() or 1),
               "--precision", s["precision"]]
        try:
            r = run_child(cmd, child_env(work), TIMEOUT_S["bench_child"])
        except ChildFailed as e:
            configs[name] = {"ok": False, "error": str(e)}
            continue
        pairs = data["bench_pairs"]  # fitting to max_length may have dropped some
        configs[name] = {"ok": True, "error": None, "pairs_per_s": pairs / r["train_s"], "train_s": r["train_s"],
                         "steps": r["steps"], "s_per_step": r["train_s"] / r["steps"],
                         "reference_s": r["precompute_s"], "peak_gpu_mem_gib": r["peak_gpu_mem_gib"],
                         "peak_rss_gib": r["peak_rss_gib"], "losses": [x["loss"] for x in r["log"]],
                         "wall_s": r["wall_s"]}
    result = {"model": data["model"], "model_source": data["source"], "weights": data["weights"],
              "pairs": data["bench_pairs"], "batch_size": s["batch_size"], "max_length": s["max_length"],
              "precision": s["precision"], "mean_pair_tokens": data["mean_pair_tokens"], "configs": configs}
    fast, trl = configs["fast"], configs["trl_precompute"]
    if fast["ok"] and trl["ok"]:
        result["fast_vs_trl_pairs_per_s"] = fast["pairs_per_s"] / trl["pairs_per_s"]
        if fast["peak_gpu_mem_gib"] and trl["peak_gpu_mem_gib"]:
            result["fast_vs_trl_peak_gpu_mem"] = fast["peak_gpu_mem_gib"] / trl["peak_gpu_mem_gib"]
    failed = [f"{n}: {c['error']}" for n, c in configs.items() if not c["ok"]]
    return {"ok": not failed, "error": "\n".join(failed) or None, **result}


def one_b(data: dict, mode: str, work: Path) -> dict:
    """The fast engine training a ~1B Llama built from a config (random weights, the model's tokenizer)
    for a few steps, full fine-tune then LoRA, each in a fresh process; the first builds the model."""
    s = SETTINGS[mode]
    runs = {}
    for lora in (False, True):
        name = "lora" if lora else "full"
        cmd = [sys.executable, __file__, "--child", "one_b", "--lora", str(int(lora)), "--model-folder",
               str(work / "one-b-model"), "--tokenizer", data["path"], "--shape", json.dumps(s["one_b_shape"]),
               "--pairs-file", data["pairs_file"], "--steps", str(s["one_b_steps"]), "--batch-size",
               str(s["batch_size"]), "--max-length", str(s["max_length"]), "--precision", s["precision"]]
        try:
            runs[name] = {"ok": True, "error": None, **run_child(cmd, child_env(work), TIMEOUT_S["one_b_child"])}
        except ChildFailed as e:
            runs[name] = {"ok": False, "error": str(e)}
    failed = [f"{n}: {r['error']}" for n, r in runs.items() if not r["ok"]]
    return {"ok": not failed, "error": "\n".join(failed) or None, "shape": s["one_b_shape"],
            "steps": s["one_b_steps"], "batch_size": s["batch_size"], "max_length": s["max_length"],
            "precision": s["precision"], "tokenizer_of": data["model"], "runs": runs}


def one_b_child(args) -> None:
    """Build (once) and train the model of --shape with the fast engine; print one RESULT line: parameter
    counts, per-step seconds (from each step's log write, a sync point), losses, peak memory."""
    import peft
    import torch

    from preftune.config import TrainConfig
    from preftune.data.prepare import read_jsonl
    from preftune.dpo.engines import ENGINES, TrainJob, fast
    from preftune.models import load_tokenizer

    cuda = torch.cuda.is_available()
    t0 = time.perf_counter()
    config = llama_config(load_tokenizer(args.tokenizer), json.loads(args.shape))
    folder = build_model(Path(args.model_folder), config, args.tokenizer, "cuda" if cuda else "cpu",
                         "bfloat16" if cuda else "float32")
    build_s = time.perf_counter() - t0
    if cuda:  # the peak is training's (reference pass included), not the build's
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    pairs = read_jsonl(Path(args.pairs_file))[: args.steps * args.batch_size]
    out = Path(tempfile.mkdtemp(prefix="gpu-check-1b-"))
    cfg = TrainConfig(output_dir=str(out), model=str(folder), lr=1e-5, batch_size=args.batch_size, epochs=1,
                      beta=0.1, max_length=args.max_length, engine="fast", precision=args.precision,
                      lora=bool(args.lora))
    job = TrainJob(str(folder), load_tokenizer(str(folder)), pairs, cfg, 0, out, args.batch_size, out / "log.jsonl")

    logged, counts = [], {}
    append_log, get_peft_model = fast.append_log, peft.get_peft_model

    def timed_log(path, record):
        append_log(path, record)
        logged.append(time.perf_counter())

    def counted_peft(model, *a, **kw):
        wrapped = get_peft_model(model, *a, **kw)
        counts["trainable"] = wrapped.get_nb_trainable_parameters()[0]
        return wrapped

    fast.append_log, peft.get_peft_model = timed_log, counted_peft  # the engine imports get_peft_model per run
    result = ENGINES["fast"](job)
    params = sum(p.numel() for p in result.model.parameters())
    gaps = [b - a for a, b in itertools.pairwise(logged)]
    shutil.rmtree(out, ignore_errors=True)
    print("RESULT " + json.dumps({
        "lora": bool(args.lora), "params": params, "trainable_params": counts.get("trainable", params),
        "build_s": build_s, "steps": result.steps, "train_s": result.runtime_s,
        # step 1 also holds the loop's start-up (CUDA kernels picked, caches warmed): the rest is the steady rate
        "step_s": [result.runtime_s - sum(gaps), *gaps], "steady_step_s": sum(gaps) / len(gaps) if gaps else None,
        "losses": [r["loss"] for r in result.log], **throughput.peak_memory(cuda),
    }), flush=True)


# ---- main --------------------------------------------------------------------------------------------


def save_json(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    from preftune.runs.folder import strict_json

    tmp.write_text(json.dumps(strict_json(report), indent=1, allow_nan=False) + "\n")  # a NaN loss is null
    tmp.rename(path)


def overall_ok(report: dict) -> bool:
    return all(report["parts"].get(name, {}).get("ok") is True for name in PARTS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu_check.json", help="the JSON file written")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny random models, fp32, 1-2 steps: the code "
                        "paths without a GPU (the GPU tests are collected and skip)")
    parser.add_argument("--preflight", action="store_true", help="print what this machine lacks, then exit")
    parser.add_argument("--model", default=None, help="model whose tokenizer (and, for the benchmark, weights) the "
                        "check uses: a folder or hub id (default: preftune's default model)")
    parser.add_argument("--random-weights", action="store_true", help="benchmark a random init of --model's config: "
                        "the same speed and memory, and only config.json and the tokenizer files are needed")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--commit", default=None, help="the commit measured, where the tree has no .git")
    # child-only arguments
    parser.add_argument("--child", help=argparse.SUPPRESS)
    for flag in ("--model-folder", "--tokenizer", "--shape", "--pairs-file", "--precision"):
        parser.add_argument(flag, help=argparse.SUPPRESS)
    for flag in ("--lora", "--steps", "--batch-size", "--max-length"):
        parser.add_argument(flag, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "one_b":
        one_b_child(args)
        return 0
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    if set(chosen) - set(PARTS):
        parser.error(f"--parts: unknown {', '.join(sorted(set(chosen) - set(PARTS)))}; choose from {', '.join(PARTS)}")

    from preftune.config import DEFAULT_MODEL

    check = preflight()
    for line in check["missing"]:
        print(f"gpu_check: preflight: missing or other version: {line}", flush=True)
    if not check["cuda"]:
        print("gpu_check: preflight: no CUDA GPU visible to torch" + ("" if args.dry_run else
              " (the GPU tests will skip and fail this check; use --dry-run on a CPU)"), flush=True)
    if args.preflight:
        return 0 if check["cuda"] and not check["missing"] else 1

    mode = "dry" if args.dry_run else "gpu"
    t0 = time.perf_counter()
    report = {"check": "bench/gpu_check.py", "dry_run": args.dry_run, "ok": False,
              "provenance": provenance(args.commit), "preflight": check,
              "settings": {**SETTINGS[mode], "model": args.model or DEFAULT_MODEL,
                           "random_weights": args.random_weights},
              "parts": {}}
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    data = functools.partial(inputs, args.model or DEFAULT_MODEL, args.random_weights, mode, work)
    parts = {"gpu_tests": lambda: gpu_tests(args.dry_run, check["cuda"], work),
             "benchmark": lambda: benchmark(data(), mode, work),
             "one_b": lambda: one_b(data(), mode, work)}
    for name in PARTS:
        if name not in chosen:
            report["parts"][name] = {"ok": None, "seconds": 0.0, "error": None, "not_run": "not in --parts"}

    def save(r: dict) -> None:
        r["ok"] = overall_ok(r)
        r["provenance"]["total_s"] = round(time.perf_counter() - t0, 2)
        save_json(args.out, r)

    try:
        run_parts({name: parts[name] for name in chosen}, report, save)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"gpu_check: {'PASSED' if report['ok'] else 'FAILED'} in {report['provenance']['total_s']:.0f} s → "
          f"{args.out}", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
