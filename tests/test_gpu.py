"""What only a CUDA GPU can show: every inference path runs its model on the GPU and computes what the
CPU computes; the fast engine trains in bf16 there; a torchrun launch of one process trains (and
refuses --fsdp, which needs two); torch's FSDP2 — what `--fsdp` shards with — trains the engine's
module on CUDA/NCCL. Skipped without CUDA; bench/gpu_check.py runs them (`pytest -m gpu`) on a GPU
machine and records each outcome.

Run as a script (`torchrun --nproc_per_node 1 tests/test_gpu.py fsdp2 MODEL OUT`), it is the FSDP2
child process of `test_fsdp2_trains_the_engines_module_on_one_gpu`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch)")]

PROMPT = ("SUBREDDIT: r/test\nTITLE: Bread\nPOST: I went to the shop and bought bread, then forgot it on the bus "
          "and had to go back for it.\nTL;DR:")
DATA_ARGS = ["--fraction", "0.03", "--max-pairs", "12", "--max-eval-pairs", "4"]
TRAIN_ARGS = ["--lr", "1e-2", "--batch-size", "4", "--max-length", "256"]
RUN = "dpo_model_lr0.01_bs4_epoch1"


@pytest.fixture(scope="module")
def pairs(tiny_tokenizer):
    from preftune.config import DataConfig
    from preftune.data.fit import fit
    from preftune.data.prepare import prepare

    return fit(tiny_tokenizer, prepare(DataConfig(fraction=0.03, seed=3)).train[:4], 256, "train")[0]


def cpu_logps(model_path, tokenizer, pairs) -> torch.Tensor:
    """(N, 2) fp32 log-probs of the pairs computed on the CPU: what the GPU paths must reproduce."""
    from preftune.dpo.logps import (
        PairLogpsModule,
        default_pack_tokens,
        pack_pair,
        pairs_logps,
    )
    from preftune.models import load_model

    packed = [pack_pair(tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
    module = PairLogpsModule(load_model(str(model_path))).eval()
    return pairs_logps(module, packed, default_pack_tokens()).float()


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def test_this_gpu_runs_bf16_and_is_the_inference_device():
    from preftune.models import inference_device
    from preftune.precision import resolve

    assert resolve("auto") == "bf16", torch.cuda.get_device_name(0)  # what every GPU run trains in by default
    assert resolve("fp16") == "fp16"  # refused on CPU, allowed here
    assert inference_device() == torch.device("cuda", 0)


def test_evaluation_scores_on_the_gpu_as_the_cpu_does(tiny_model, tiny_tokenizer, pairs):
    from preftune.dpo.evaluate import score_pairs
    from preftune.models import load_model

    model = load_model(str(tiny_model))
    logps, _ = score_pairs(model, tiny_tokenizer, pairs)
    assert device_of(model).type == "cuda"  # placed by score_pairs itself
    torch.testing.assert_close(logps, cpu_logps(tiny_model, tiny_tokenizer, pairs), atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("precision,atol,rtol", [("fp32", 1e-3, 1e-4), ("bf16", 0.5, 0.02)])
def test_the_reference_pass_runs_on_the_gpu(tiny_model, tiny_tokenizer, pairs, tmp_path, monkeypatch,
                                            precision, atol, rtol):
    """bf16: an autocast pass, so only close to fp32 (sums of ~30 tokens' log-probs, bf16's 8-bit mantissa)."""
    from preftune.dpo import refcache
    from preftune.dpo.logps import pack_pair
    from preftune.models import load_model

    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path))
    seen = []
    original = refcache.pairs_logps

    def spy(module, *args, **kwargs):
        seen.append((device_of(module).type, module.dtype))
        return original(module, *args, **kwargs)

    monkeypatch.setattr(refcache, "pairs_logps", spy)
    packed = [pack_pair(tiny_tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
    ref = refcache.reference_logps(packed, str(tiny_model), lambda: load_model(str(tiny_model)), precision=precision)
    assert seen and {s[0] for s in seen} == {"cuda"}
    assert {s[1] for s in seen} == {torch.bfloat16 if precision == "bf16" else torch.float32}
    torch.testing.assert_close(ref, cpu_logps(tiny_model, tiny_tokenizer, pairs), atol=atol, rtol=rtol)


def test_the_judge_generates_on_the_gpu_reproducibly(tiny_model, monkeypatch):
    """Sampling draws from per-row generators on the model's device: the same seed gives the same text."""
    from preftune.judge import generate
    from preftune.judge.generate import Decoding
    from preftune.judge.judge import model_generator

    devices = []
    original = generate.generate_many

    def spy(model, *args, **kwargs):
        devices.append(device_of(model).type)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(generate, "generate_many", spy)
    decodings = [Decoding(max_new_tokens=8), Decoding(temperature=0.7, top_p=0.95, max_new_tokens=8, seed=1)]
    prompts = [PROMPT, PROMPT[:60] + "\nTL;DR:"]
    runs = [model_generator(str(tiny_model), 2, "tiny")(prompts, decodings) for _ in range(2)]
    assert devices == ["cuda", "cuda"]
    texts = [{name: [g.text for g in gens] for name, gens in run.items()} for run in runs]
    assert texts[0] == texts[1] and any(g.tokens for gens in runs[0].values() for g in gens)


def test_the_demo_streams_and_scores_on_the_gpu(tiny_model):
    """Policy and reference are the same weights here, so the run's implicit reward must be 0."""
    from preftune.judge.generate import Decoding
    from preftune.serve.demo import Demo, DemoSpec, prompt

    demo = Demo(DemoSpec(policy=str(tiny_model), base=str(tiny_model), beta=0.1, name="tiny"))
    decoding = Decoding(temperature=0.7, top_p=0.95, max_new_tokens=8, seed=3)
    fields = ("test", "Bread", "I went to the shop and bought bread, then forgot it on the bus.")
    *_, sides = demo.stream_sides(demo.check(*fields, decoding), decoding)
    loaded = demo.load()
    assert {device_of(m).type for m in (loaded.policy, loaded.base, loaded.reference)} == {"cuda"}
    summaries = demo.score(prompt(*fields), [s.text for s in sides], sides)
    assert [s.tokens for s in summaries] == [s.tokens for s in sides]
    assert all(math.isfinite(s.reward) and abs(s.reward) < 1e-4 for s in summaries), summaries


def test_the_fast_engine_trains_in_bf16_on_the_gpu(tiny_model, tiny_tokenizer, pairs, tmp_path, monkeypatch):
    """--precision auto: the policy and the reference run under bf16 autocast on the GPU; 2 steps move
    every weight; step 1's loss is log 2 (policy = reference) up to bf16 rounding of two packings."""
    from preftune.config import TrainConfig
    from preftune.dpo.engines import ENGINES, TrainJob, fast
    from preftune.models import load_model

    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    computed_in = []  # (device, dtype) of a decoder MLP's output, every forward of every loaded model

    def watch(module, inputs, out):
        computed_in.append((out.device.type, out.dtype))

    def load_and_watch(*args, **kwargs):
        model = load_model(*args, **kwargs)
        model.model.layers[0].mlp.down_proj.register_forward_hook(watch)
        return model

    monkeypatch.setattr(fast, "load_model", load_and_watch)
    cfg = TrainConfig(output_dir=str(tmp_path), model=str(tiny_model), lr=1e-3, batch_size=2, epochs=1, beta=0.1,
                      max_length=256, engine="fast", precision="auto")
    job = TrainJob(str(tiny_model), tiny_tokenizer, pairs, cfg, 0, tmp_path, 2, tmp_path / "log.jsonl")
    torch.cuda.reset_peak_memory_stats()
    result = ENGINES["fast"](job)

    assert result.steps == 2 and set(computed_in) == {("cuda", torch.bfloat16)}
    assert torch.cuda.max_memory_allocated() > 0
    losses = [r["loss"] for r in result.log]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(math.log(2), abs=0.05)
    before = dict(load_model(str(tiny_model)).named_parameters())
    unmoved = [n for n, p in result.model.named_parameters() if torch.equal(p.detach().cpu(), before[n].detach())]
    assert not unmoved, unmoved


def torchrun(*args: str, env: dict | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--standalone", *args]
    env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)


def preftune_train(tiny_model, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return torchrun("-m", "preftune", "train", "--model", str(tiny_model), "--output-dir", str(out), *DATA_ARGS,
                    *TRAIN_ARGS, *extra, env={"PREFTUNE_CACHE": str(out.parent / "cache")})


def test_a_one_process_torchrun_launch_trains_on_the_gpu(tiny_model, tmp_path):
    done = preftune_train(tiny_model, tmp_path / "runs")
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / RUN
    assert json.loads((run / "preftune_config.json").read_text())["world_size"] == 1
    losses = [json.loads(line)["loss"] for line in (run / "train_log.jsonl").open()]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert json.loads((run / "eval.json").read_text())["n"] == 4


def test_fsdp_on_one_process_is_refused_before_any_work(tiny_model, tmp_path):
    """preftune's --fsdp needs 2+ processes (transformers' FSDP2 plan does not shard a group of one);
    a 1-GPU machine can check only that the refusal is one clear line."""
    done = preftune_train(tiny_model, tmp_path / "runs", "--fsdp")
    assert done.returncode != 0
    assert "preftune: error: --fsdp shards the model across processes" in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_fsdp2_trains_the_engines_module_on_one_gpu(tiny_model, tmp_path):
    """torch's fully_shard per decoder layer and the root (what transformers' plan applies for --fsdp),
    on a one-GPU NCCL mesh: the fast engine's module computes the unsharded model's log-probs and
    gradients in bf16, and fused AdamW steps the DTensor parameters."""
    out = tmp_path / "fsdp2.json"
    done = torchrun(__file__, "fsdp2", str(tiny_model), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["backend"] == "nccl" and r["device"] == "cuda"
    assert r["dtensor_params"] == r["params"] > 0
    assert r["logps_max_abs_diff"] < 1e-3 and r["grad_max_rel_diff"] < 1e-2
    assert r["grads_finite"] and r["all_moved"]


# ---- the FSDP2 child process (run by torchrun, one rank) ------------------------------------------


def fsdp2_child(model_path: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from preftune.dpo.logps import PairLogpsModule, pack_pair, pack_row, row_logps
    from preftune.models import load_model, load_tokenizer

    cuda = torch.cuda.is_available()  # on CPU (gloo) this child runs too: how it is developed without a GPU
    device, backend = ("cuda", "nccl") if cuda else ("cpu", "gloo")
    dist.init_process_group(backend)
    tokenizer = load_tokenizer(model_path)
    row = pack_row([pack_pair(tokenizer, PROMPT, " Forgot my bread on the bus.", " Bread."),
                    pack_pair(tokenizer, PROMPT[:80] + "\nTL;DR:", " Shop.", " Went to the shop, got bread.")])
    plain, sharded = (load_model(model_path).to(device) for _ in range(2))
    mesh = init_device_mesh(device, (1,))
    for layer in sharded.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    results = []
    for model in (plain, sharded):
        module = PairLogpsModule(model, dtype=torch.bfloat16).train()
        logps = row_logps(module, row)  # (2, 2)
        logps.sum().backward()
        results.append(logps.detach().float().cpu())
    grads = [(p.grad, q.grad.full_tensor()) for p, q in zip(plain.parameters(), sharded.parameters())]
    before = [p.detach().full_tensor().clone() for p in sharded.parameters()]
    optimizer = torch.optim.AdamW(sharded.parameters(), lr=1e-3, fused=True)  # the fast engine's optimizer
    optimizer.step()
    params = list(sharded.parameters())
    Path(out).write_text(json.dumps({
        "backend": backend, "device": device, "params": len(params),
        "dtensor_params": sum(type(p).__name__ == "DTensor" for p in params),
        "logps_max_abs_diff": (results[0] - results[1]).abs().max().item(),
        "grad_max_rel_diff": max(((a - b).norm() / a.norm().clamp(min=1e-12)).item() for a, b in grads),
        "grads_finite": all(bool(torch.isfinite(b).all()) for _, b in grads),
        "all_moved": all(not torch.equal(p.detach().full_tensor(), b) for p, b in zip(params, before)),
    }))
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1:2] == ["fsdp2"]:
        fsdp2_child(*sys.argv[2:4])
    else:
        raise SystemExit(f"usage: torchrun --nproc_per_node 1 {sys.argv[0]} fsdp2 MODEL_FOLDER OUT_JSON")
