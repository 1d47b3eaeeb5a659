"""The benchmark scripts' pure parts: the targets per device (issue 13's fp32, issue 20's bf16), the headline
ratios, which configs run in which precision (bf16 skipped, with the reason, on a CPU without bf16 units),
which earlier results may join a run (same settings, same clean commit), the report's wording; bench/bucketing.py's
padded batch computing exactly what one pair per forward computes (so its timings compare equal work); and
bench/dpo_throughput.py --quick and bench/sft_throughput.py --tiny on a tiny model, end to end."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest
import torch
from conftest import REPO, shipped_rows


def bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return bench_module("dpo_throughput")


def config(pairs_per_s: float, rss: float, precompute_s: float = 2.0, setup_s: float | None = 1.0,
           precision: str = "fp32", pct: float = 50.0) -> dict:
    return {"precision": precision, "pairs": 8, "pairs_per_s": pairs_per_s, "train_s": 8 / pairs_per_s, "steps": 2,
            "s_per_step": 4 / pairs_per_s, "real_tokens_per_s": 100.0, "gflops_per_s": pct, "pct_of_matmul_peak": pct,
            "peak_rss_gib": rss, "peak_gpu_mem_gib": None, "precompute_s": precompute_s, "precompute_s_per_pair": precompute_s / 8,
            "setup_s": setup_s, "reference_gflops_per_s": 70.0, "load_avg_1min": [0.1, 0.2]}


def report(kind: str, invocations: int = 1, bf16: bool = True) -> dict:
    """A measured report: fast 2 pairs/s, TRL default 0.25, TRL precompute 0.5 → 8× and 4×; RSS 1 vs 4 GiB.
    A CPU run with bf16 units adds the bf16 twins: fast 4 pairs/s (2× its fp32, 40% of the bf16 peak), TRL
    default 0.5, TRL precompute 1.0 → 8× and 4×. Without bf16 units they are skipped, as the script skips them."""
    run = {"commit": "abc123", "dirty": False, "started": "2025-01-01T00:00:00+00:00", "load_at_start": 0.1,
           "sections": ["matmul_peak", "fast"]}
    main = bench_precision(kind)
    configs = {"trl_default": config(0.25, 4.0, 0.0, precision=main),
               "trl_precompute": config(0.5, 3.0, precision=main),
               "fast": config(2.0, 1.0, setup_s=None, precision=main)}
    skipped, gemm = {}, {"fp32": 40.0, "bf16": 100.0} if kind == "cuda" else {"fp32": 100.0}
    if kind == "cpu" and bf16:
        gemm["bf16"] = 250.0
        configs.update({"trl_default_bf16": config(0.5, 4.0, 0.0, precision="bf16", pct=30.0),
                        "trl_precompute_bf16": config(1.0, 3.0, precision="bf16", pct=30.0),
                        "fast_bf16": config(4.0, 1.0, setup_s=None, precision="bf16", pct=40.0)})
    elif kind == "cpu":
        skipped = {name: "skipped: no bf16 units" for name in ("trl_default_bf16", "trl_precompute_bf16", "fast_bf16")}
    return {
        "settings": {"pairs": 8}, "invocations": [dict(run) for _ in range(invocations)],
        "machine": {"kind": kind, "device": "NVIDIA H200" if kind == "cuda" else "CPU: test", "threads": 2, "cpus": 2,
                    "matmul_peak_gflops": 100.0, "gemm_gflops": gemm,
                    "gemm_n": 2048, "matmul_peak_load_avg_1min": [0.1, 0.1]},
        "setup": {"model": "m", "pairs": 8, "batch_size": 4, "max_length": 512, "precision": main,
                  "precisions": [main, "bf16"] if bf16 else [main], "pack_tokens": 0, "real_tokens": 800,
                  "quick": False, "mean_prompt_tokens": 40.0, "mean_pair_tokens": 100.0},
        "configs": configs,
        "skipped": skipped,
    }


def bench_precision(kind: str) -> str:
    return {"cpu": "fp32", "cuda": "bf16"}[kind]


def test_a_cpu_run_is_held_to_the_cpu_targets_and_says_the_gpu_was_not_measured(bench):
    r = report("cpu")
    bench.summarize(r)
    assert r["ratio_vs_trl_default"] == pytest.approx(8.0)
    assert r["ratio_vs_trl_best"] == pytest.approx(4.0)  # the better TRL config: precompute, 0.5 pairs/s
    assert r["rss_ratio_vs_trl_default"] == pytest.approx(0.25)
    assert r["reference_pct_of_matmul_peak"] == pytest.approx(70.0)
    assert set(r["targets"]) == set(bench.TARGETS["cpu"])
    assert r["targets"]["ratio_vs_trl_default"] == {"target": "≥ 6", "met": True}
    assert r["targets"]["ratio_vs_trl_best"] == {"target": "≥ 4.5", "met": False}
    assert r["targets"]["rss_ratio_vs_trl_default"] == {"target": "≤ 0.45", "met": True}
    # issue 20: the bf16 twins against each other and against fast fp32, each against its own precision's peak
    assert r["ratio_bf16_vs_fp32_fast"] == pytest.approx(2.0)
    assert r["ratio_vs_trl_default_bf16"] == pytest.approx(8.0)
    assert r["ratio_vs_trl_best_bf16"] == pytest.approx(4.0)  # the better bf16 TRL config: precompute, 1.0 pairs/s
    assert r["fast_pct_of_bf16_peak"] == pytest.approx(40.0) and r["fast_pct_of_matmul_peak"] == pytest.approx(50.0)
    assert (r["fp32_gemm_gflops"], r["bf16_gemm_gflops"]) == (100.0, 250.0)
    assert r["targets"]["ratio_bf16_vs_fp32_fast"] == {"target": "≥ 1.6", "met": True}
    assert r["targets"]["ratio_vs_trl_default_bf16"] == {"target": "≥ 6", "met": True}
    assert r["targets"]["ratio_vs_trl_best_bf16"] == {"target": "≥ 4.5", "met": False}
    assert r["targets"]["fast_pct_of_bf16_peak"] == {"target": "≥ 50", "met": False}
    assert r["gpu"] == {"measured": False, "note": bench.NO_GPU}
    text = bench.markdown(r)
    assert "| GPU rows (TRL default, TRL precompute, fast) | bf16 | not measured |" in text
    assert "- GPU: not measured: no GPU was available to this run" in text
    assert "(target ≥ 4.5×: NOT met)" in text
    assert "- fast bf16 vs fast fp32, pairs/s: **2.00×** (target ≥ 1.6×: met)" in text
    assert "- fast vs TRL best, both bf16: **4.00×** (target ≥ 4.5×: NOT met)" in text
    assert "| fast_bf16 | bf16 | 1.0 | 4.000 |" in text


def test_a_cpu_without_bf16_units_runs_fp32_only_and_says_why_bf16_was_skipped(bench, monkeypatch):
    import preftune.precision

    monkeypatch.setattr(preftune.precision, "cpu_has_bf16", lambda: False)
    configs, skipped = bench.precisions.plan(bench.CONFIGS, "cpu")
    assert configs == {c: (c, "fp32") for c in bench.CONFIGS}
    assert set(skipped) == set(bench.BF16_CONFIGS) and all("no bf16 units" in why for why in skipped.values())
    assert bench.generation_plan(False, "cpu") == ({"generation": "fp32"},
                                                   {"generation_bf16": bench.precisions.NO_BF16_CPU})
    r = report("cpu", bf16=False)
    bench.summarize(r)
    bf16_keys = {"ratio_bf16_vs_fp32_fast", "ratio_vs_trl_default_bf16", "ratio_vs_trl_best_bf16",
                 "fast_pct_of_bf16_peak", "bf16_gemm_gflops"}
    assert not bf16_keys & r.keys() and r["ratio_vs_trl_default"] == pytest.approx(8.0)
    assert set(r["targets"]) == set(bench.TARGETS["cpu"]) - bf16_keys  # no verdict on what was not measured
    text = bench.markdown(r)
    assert "| fast_bf16 | bf16 | skipped: no bf16 units |" in text
    assert "- fast bf16 vs fast fp32, pairs/s: not measured (skipped: no bf16 units)" in text


def test_each_config_runs_next_to_its_bf16_twin_on_a_cpu_and_in_bf16_only_on_a_gpu(bench):
    configs, skipped = bench.precisions.plan(bench.CONFIGS, "cpu", bf16=True)
    assert list(configs) == ["trl_default", "trl_default_bf16", "trl_precompute", "trl_precompute_bf16", "fast",
                             "fast_bf16"]
    assert configs["fast_bf16"] == ("fast", "bf16") and configs["fast"] == ("fast", "fp32") and skipped == {}
    assert bench.precisions.plan(bench.CONFIGS, "cuda") == ({c: (c, "bf16") for c in bench.CONFIGS}, {})
    assert bench.precisions.precisions_of(["bf16", "fp32", "bf16"]) == ["fp32", "bf16"]


def test_a_cuda_run_is_held_to_the_gpu_target_only(bench):
    r = report("cuda")
    bench.summarize(r)
    assert r["targets"] == {"ratio_vs_trl_best": {"target": "≥ 1.5", "met": True}}  # 4× ≥ 1.5×; no CPU target
    assert r["gpu"]["measured"] is True
    assert r["gpu"]["ratio_vs_trl_best"] == pytest.approx(4.0)
    assert r["gpu"]["met"] is True
    text = bench.markdown(r)
    assert "GPU rows" not in text and "not measured: no GPU" not in text
    assert "- GPU (NVIDIA H200, bf16): fast vs TRL's best config **4.00×** (target ≥ 1.5×: met)" in text
    r["configs"]["fast"]["pairs_per_s"] = 0.6  # 1.2× the better TRL config
    bench.summarize(r)
    assert r["gpu"]["met"] is False and r["targets"]["ratio_vs_trl_best"]["met"] is False


def test_the_gpu_block_waits_for_all_three_configs(bench):
    r = report("cuda")
    del r["configs"]["trl_precompute"]
    bench.summarize(r)
    assert r["gpu"]["measured"] is False and "not measured yet" in r["gpu"]["note"]
    assert "ratio_vs_trl_best" not in r["targets"]


def test_precision_follows_the_device(bench):
    assert bench.PRECISION == {"cpu": "fp32", "cuda": "bf16"}  # the plain-named configs': comparable to earlier runs
    assert set(bench.TARGETS) == set(bench.PRECISION)


def test_the_dpo_benchmark_quick_mode_measures_both_precisions_and_writes_consistent_keys(tiny_model, tmp_path):
    """`--quick` on the tiny model (demo, curves and sweep skipped): every config in fp32 and, on a CPU with
    bf16 units, in bf16; each config's share of ITS precision's GEMM peak; the headline keys are the ratios
    of the configs' own numbers; the settings name the precisions measured."""
    import json
    import sys

    from preftune.precision import cpu_has_bf16

    done = subprocess.run([sys.executable, str(REPO / "bench" / "dpo_throughput.py"), "--quick", "--model",
                           str(tiny_model), "--skip", "demo,curves,sweep", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "dpo_throughput.json").read_text())
    bf16 = cpu_has_bf16()
    precisions = ["fp32", "bf16"] if bf16 else ["fp32"]
    assert r["settings"]["precisions"] == precisions and r["settings"]["model"] == str(tiny_model)
    assert list(r["machine"]["gemm_gflops"]) == precisions
    assert r["fp32_gemm_gflops"] == r["machine"]["matmul_peak_gflops"] > 0
    names = [n for c in ("trl_default", "trl_precompute", "fast") for n in ((c, c + "_bf16") if bf16 else (c,))]
    assert list(r["configs"]) == names
    assert r["invocations"][0]["sections"] == ["matmul_peak", *names, "generation", *(["generation_bf16"] * bf16)]
    for name, c in r["configs"].items():
        assert c["precision"] == ("bf16" if name.endswith("_bf16") else "fp32")
        assert c["config"] == name.removesuffix("_bf16")  # the child that ran: the same config, another precision
        peak = r["machine"]["gemm_gflops"][c["precision"]]
        assert c["pct_of_matmul_peak"] == pytest.approx(100 * c["gflops_per_s"] / peak)
        assert c["pairs_per_s"] == pytest.approx(c["pairs"] / c["train_s"])
    configs = r["configs"]
    fp32_fast = configs["fast"]["pairs_per_s"]
    assert r["ratio_vs_trl_default"] == pytest.approx(fp32_fast / configs["trl_default"]["pairs_per_s"])
    assert r["generation"]["precision"] == "fp32" and r["generation_summaries_per_s"] > 0
    if not bf16:
        assert set(r["skipped"]) == {"trl_default_bf16", "trl_precompute_bf16", "fast_bf16", "generation_bf16"}
        assert "bf16_gemm_gflops" not in r and "ratio_bf16_vs_fp32_fast" not in r
        return
    assert r["skipped"] == {}
    fast, default, best = (configs[n]["pairs_per_s"] for n in ("fast_bf16", "trl_default_bf16", "trl_precompute_bf16"))
    assert r["ratio_bf16_vs_fp32_fast"] == pytest.approx(fast / fp32_fast)
    assert r["ratio_vs_trl_default_bf16"] == pytest.approx(fast / default)
    assert r["ratio_vs_trl_best_bf16"] == pytest.approx(fast / max(default, best))
    assert r["fast_pct_of_bf16_peak"] == configs["fast_bf16"]["pct_of_matmul_peak"]
    assert r["bf16_gemm_gflops"] == r["machine"]["gemm_gflops"]["bf16"] > 0
    assert r["generation_bf16"]["precision"] == "bf16"
    assert r["generation_summaries_per_s_bf16"] == r["generation_bf16"]["summaries_per_s"] > 0
    assert {"ratio_bf16_vs_fp32_fast", "ratio_vs_trl_best_bf16", "fast_pct_of_bf16_peak"} <= r["targets"].keys()
    assert "fast bf16 vs fast fp32" in (tmp_path / "dpo_throughput.md").read_text()


@pytest.mark.parametrize("change,kept", [
    ({}, True),
    ({"settings": {"pairs": 16}}, False),
    ({"commit": "def456"}, False),  # this checkout is at another commit
    ({"dirty": True}, False),  # this tree has uncommitted changes
    ({"earlier_dirty": True}, False),  # an earlier invocation measured uncommitted code
    ({"no_invocations": True}, False),  # a report of the old script: its code is unknown
])
def test_earlier_results_join_only_with_the_same_settings_and_clean_commit(bench, change, kept):
    previous = report("cpu")
    if change.get("earlier_dirty"):
        previous["invocations"][0]["dirty"] = True
    if change.get("no_invocations"):
        del previous["invocations"]
    settings = change.get("settings", previous["settings"])
    code = {"commit": change.get("commit", "abc123"), "dirty": change.get("dirty", False)}
    assert (bench.why_not_kept(previous, settings, code) is None) is kept


def test_the_markdown_says_when_results_come_from_several_invocations(bench):
    one, two = report("cpu"), report("cpu", invocations=2)
    bench.summarize(one)
    bench.summarize(two)
    assert "one invocation" in bench.markdown(one) and "invocations**" not in bench.markdown(one)
    assert "**These results come from 2 invocations**" in bench.markdown(two)


def test_code_state_sees_uncommitted_changes_but_not_results(bench, tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
    state = bench.code_state(tmp_path)
    assert len(state["commit"]) == 40 and state["dirty"] is False
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "dpo_throughput.json").write_text("{}")
    assert bench.code_state(tmp_path)["dirty"] is False  # the results the benchmark writes are not code
    (tmp_path / "a.py").write_text("x = 2\n")
    assert bench.code_state(tmp_path)["dirty"] is True
    assert bench.code_state(tmp_path.parent) == {"commit": None, "dirty": True}  # not a git checkout: unknown code


# ---- bench/bucketing.py ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from preftune.dpo.logps import pack_pair
    from preftune.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    rows = shipped_rows(3)
    pairs = [pack_pair(tokenizer, r["info"]["post"][: 80 + 60 * i] + "\nTL;DR:", " " + r["summaries"][0]["text"],
                       " " + r["summaries"][1]["text"]) for i, r in enumerate(rows)]
    assert len({len(p) for p in pairs}) == 3  # different lengths: the batch is padded
    return load_model(str(tiny_model)), pairs, tokenizer.pad_token_id


def test_a_bucket_masks_pads_and_shares_each_prompt(tiny):
    bucketing = bench_module("bucketing")
    _, pairs, pad_id = tiny
    b = bucketing.bucket_batch(pairs, pad_id)
    T = max(len(p) for p in pairs)
    assert b.ids.shape == b.positions.shape == (3, T) and b.mask.shape == (3, 1, T, T)
    sees = b.mask[:, 0] == 0  # (N, T, T)
    for i, p in enumerate(pairs):
        P, C, n = p.prompt_len, p.chosen_len, len(p)
        assert not sees[i, :n, n:].any()  # no real token sees a pad
        assert torch.equal(sees[i, n:, n:], torch.eye(T - n, dtype=torch.bool))  # a pad sees only itself
        assert not sees[i, P + C : n, P : P + C].any()  # rejected tokens do not see the chosen ones
        assert sees[i, P + C : n, :P].all()  # … and see the whole prompt
        assert (b.ids[i, n:] == pad_id).all()
    assert len(b.slots) == sum(p.chosen_len + p.rejected_len for p in pairs)


def test_bucketed_single_and_packed_compute_the_same_logps_and_gradients(tiny):
    bucketing = bench_module("bucketing")
    model, pairs, pad_id = tiny
    attention = model.config._attn_implementation
    single = bucketing.all_logps("single", model, pairs, pad_id)
    assert single.shape == (3, 2) and (single < 0).all()
    for way in ("packed", "bucketed"):
        assert torch.allclose(bucketing.all_logps(way, model, pairs, pad_id), single, atol=1e-5, rtol=0), way
    grads = {}
    for way in bucketing.WAYS:
        bucketing.forward_backward(way, model, pairs, pad_id)
        grads[way] = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    for way in ("packed", "bucketed"):
        for name, g in grads["single"].items():
            assert (grads[way][name] - g).norm() <= 1e-4 * g.norm().clamp(min=1e-12), (way, name)
    assert model.config._attn_implementation == attention  # each way leaves the model's attention as it found it


# ---- bench/sft_throughput.py ------------------------------------------------------------------------


def sft_report(fast_rows_per_s: float, fast_rss: float) -> dict:
    engine = {"rows": 8, "steps": 2, "train_s": 1.0, "s_per_row": 0.1, "s_per_step": 0.5, "tokens_per_s": 1.0,
              "peak_gpu_mem_gib": None, "first_loss": 2.0, "last_loss": 1.0, "load_avg_1min": [0.1, 0.2]}
    return {"machine": {"kind": "cpu", "gemm_gflops": {"fp32": 100.0}},
            "engines": {"trl": {**engine, "rows_per_s": 0.5, "peak_rss_gib": 8.0, "pct_of_matmul_peak": 40.0},
                        "fast": {**engine, "rows_per_s": fast_rows_per_s, "peak_rss_gib": fast_rss,
                                 "pct_of_matmul_peak": 60.0}}}


@pytest.mark.parametrize("fast,rss,met", [(2.0, 3.0, (True, True)), (1.0, 4.5, (False, False))])
def test_the_sft_targets_are_fast_3x_trl_at_half_its_memory(fast, rss, met):
    sft = bench_module("sft_throughput")
    r = sft_report(fast, rss)
    sft.summarize(r)
    assert r["ratio_vs_trl"] == pytest.approx(fast / 0.5) and r["rss_ratio_vs_trl"] == pytest.approx(rss / 8.0)
    assert (r["targets"]["ratio_vs_trl"]["met"], r["targets"]["rss_ratio_vs_trl"]["met"]) == met
    assert r["targets"]["ratio_vs_trl"]["target"] == "≥ 3" and r["targets"]["rss_ratio_vs_trl"]["target"] == "≤ 0.5"
    del r["engines"]["fast"]
    r.pop("ratio_vs_trl"), r.pop("rss_ratio_vs_trl")
    sft.summarize(r)  # one engine measured so far: no ratio, no verdict
    assert "ratio_vs_trl" not in r and r["targets"] == {}


def test_the_sft_bf16_ratios_are_those_of_the_bf16_engines():
    sft = bench_module("sft_throughput")
    r = sft_report(1.0, 3.0)
    r["machine"]["gemm_gflops"]["bf16"] = 250.0
    r["engines"]["trl_bf16"] = {**r["engines"]["trl"], "rows_per_s": 0.8}
    r["engines"]["fast_bf16"] = {**r["engines"]["fast"], "rows_per_s": 2.4, "pct_of_matmul_peak": 45.0}
    sft.summarize(r)
    assert r["ratio_vs_trl"] == pytest.approx(2.0)  # fp32, as before
    assert r["ratio_bf16_vs_fp32_fast"] == pytest.approx(2.4) and r["ratio_vs_trl_bf16"] == pytest.approx(3.0)
    assert (r["fast_pct_of_matmul_peak"], r["fast_pct_of_bf16_peak"]) == (60.0, 45.0)
    assert (r["fp32_gemm_gflops"], r["bf16_gemm_gflops"]) == (100.0, 250.0)


def test_the_sft_flop_estimate_counts_trl_padding_and_its_lm_head_over_every_position():
    sft = bench_module("sft_throughput")
    shape = {"d": 4, "layers": 2, "vocab": 100, "body_params": 1000}
    head = 3 * 2 * shape["d"] * shape["vocab"]  # forward + backward of the LM head at one position
    one = [(30, 10)]  # one row, batch 1: no padding; TRL's head also covers the 30 prompt positions
    assert sft.executed_flops("trl", shape, one, 1) - sft.executed_flops("fast", shape, one, 1) == 30 * head
    two = [(30, 10), (10, 10)]  # batch 2: TRL pads the second row to 40 tokens
    padded = [(30, 10), (30, 10)]
    assert sft.executed_flops("trl", shape, two, 2) == sft.executed_flops("trl", shape, padded, 2)
    assert sft.executed_flops("fast", shape, two, 2) == sum(sft.executed_flops("fast", shape, [r], 1) for r in two)
    assert sft.executed_flops("fast", shape, two, 2) < sft.executed_flops("fast", shape, padded, 2)


def test_the_sft_benchmark_tiny_mode_trains_both_engines_and_writes_its_report(tmp_path):
    """`--tiny`: a random 2-layer model, 8 rows at batch 4, both engines in their own process, in fp32 and (on
    a CPU with bf16 units) bf16; the report has every engine's numbers, the ratios of those numbers, each
    engine's share of its own precision's GEMM peak, and where they came from."""
    import json
    import sys

    from preftune.precision import cpu_has_bf16

    done = subprocess.run([sys.executable, str(REPO / "bench" / "sft_throughput.py"), "--tiny", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "sft_throughput.json").read_text())
    bf16 = cpu_has_bf16()
    names = ["trl", "trl_bf16", "fast", "fast_bf16"] if bf16 else ["trl", "fast"]
    assert list(r["engines"]) == names and r["setup"]["tiny"] is True and r["setup"]["rows"] == 8
    assert r["settings"]["precisions"] == list(r["machine"]["gemm_gflops"]) == (["fp32", "bf16"] if bf16 else ["fp32"])
    for name, e in r["engines"].items():
        assert e["rows"] == 8 and e["steps"] == 2 and e["rows_per_s"] == pytest.approx(8 / e["train_s"])
        assert e["peak_rss_gib"] > 0.1 and len(e["load_avg_1min"]) == 2 and e["last_loss"] > 0
        assert e["precision"] == ("bf16" if name.endswith("_bf16") else "fp32")
        peak = r["machine"]["gemm_gflops"][e["precision"]]
        assert e["pct_of_matmul_peak"] == pytest.approx(100 * e["gflops_per_s"] / peak)
    fast, trl = r["engines"]["fast"], r["engines"]["trl"]
    assert r["ratio_vs_trl"] == pytest.approx(fast["rows_per_s"] / trl["rows_per_s"])
    assert r["rss_ratio_vs_trl"] == pytest.approx(fast["peak_rss_gib"] / trl["peak_rss_gib"])
    assert r["fast_pct_of_matmul_peak"] == fast["pct_of_matmul_peak"] and r["fp32_gemm_gflops"] > 0
    assert set(r["targets"]) == {"ratio_vs_trl", "rss_ratio_vs_trl"}
    if bf16:
        assert r["skipped"] == {}
        fast_bf16 = r["engines"]["fast_bf16"]["rows_per_s"]
        assert r["ratio_bf16_vs_fp32_fast"] == pytest.approx(fast_bf16 / fast["rows_per_s"])
        assert r["ratio_vs_trl_bf16"] == pytest.approx(fast_bf16 / r["engines"]["trl_bf16"]["rows_per_s"])
        assert r["bf16_gemm_gflops"] > 0
    else:
        assert set(r["skipped"]) == {"trl_bf16", "fast_bf16"} and "ratio_vs_trl_bf16" not in r
    run = r["invocations"][0]
    assert run["argv"] == ["--tiny", "--out", str(tmp_path)] and run["sections"] == ["matmul_peak", *names]
    assert {"commit", "dirty", "started", "load_at_start"} <= run.keys()
    assert "TINY run" in (tmp_path / "sft_throughput.md").read_text()


def test_precision_agreement_pairs_each_pair_with_itself_not_its_position():
    """bf16 − fp32 compares the same pair's two outcomes, whatever order each run listed them in; a pair
    only one run has is refused, never paired with a neighbour."""
    from preftune.errors import PreftuneError
    from preftune.stats import PairOutcome

    agreement = bench_module("precision_agreement")

    def outcome(k: int, correct: float) -> PairOutcome:
        return PairOutcome(f"k{k}", f"p{k}", correct, 10.0 if k % 2 else 5.0, 7.0)

    fp32 = [outcome(k, float(k % 2 == 0)) for k in range(6)]
    bf16 = [outcome(k, float(k % 2 == 0)) for k in reversed(range(6))]  # the same outcomes, listed backwards
    same = agreement.paired(bf16, fp32)
    assert same["same_outcome_share"] == 1.0 and same["accuracy"]["difference"] == 0.0  # by position: none alike
    assert same["accuracy"]["ci95"] == (0.0, 0.0)  # every resample: no pair changed its outcome
    with pytest.raises(PreftuneError, match="different pairs"):
        agreement.paired(bf16[:5] + [outcome(9, 1.0)], fp32)
