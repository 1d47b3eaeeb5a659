"""Which precisions a throughput benchmark measures on this device, and the GEMM peak of each.

On a CPU every training config runs in fp32 (its plain name, comparable to earlier results) and again
in bf16 (`<name>_bf16`) where the CPU has bf16 units; without them bf16 is emulated (~10× slower) and
the bf16 configs are skipped with the reason recorded. On a CUDA GPU every config runs in bf16 under its
plain name, as before. Shared by bench/dpo_throughput.py and bench/sft_throughput.py.
"""

from __future__ import annotations

import time

MAIN = {"cpu": "fp32", "cuda": "bf16"}  # the precision of the plain-named configs, per device
BF16 = "_bf16"  # the suffix of a CPU run's bf16 twin of a config
NO_BF16_CPU = ("skipped: this CPU has no bf16 units (AVX512-BF16 or AMX; preftune.precision.cpu_has_bf16), "
               "so bf16 would be emulated ~10x slower than fp32")
NO_BF16_GPU = "skipped: this GPU has no bf16 support"
GEMM_N = {"cpu": 2048, "cuda": 8192}  # the square GEMM each peak is measured on


def bf16_units(device: str) -> bool:
    """Whether this device computes bf16 natively (the check `preftune.precision.resolve` warns on)."""
    import torch

    from preftune import precision  # the module, so a test can monkeypatch cpu_has_bf16

    return torch.cuda.is_bf16_supported() if device == "cuda" else precision.cpu_has_bf16()


def plan(names: tuple[str, ...], device: str, bf16: bool | None = None) -> tuple[dict[str, tuple[str, str]], dict]:
    """({config name: (base config, precision)} in the order to run them, {skipped name: why}). On a CPU each
    config's bf16 twin runs right after it, so drift in the machine's load falls on both alike."""
    if device == "cuda":
        return {name: (name, "bf16") for name in names}, {}
    bf16 = bf16_units(device) if bf16 is None else bf16
    run, skipped = {}, {}
    for name in names:
        run[name] = (name, "fp32")
        if bf16:
            run[name + BF16] = (name, "bf16")
        else:
            skipped[name + BF16] = NO_BF16_CPU
    return run, skipped


def precisions_of(used: list[str]) -> list[str]:
    """The distinct precisions in `used`, fp32 first: those a run measures a GEMM peak for."""
    return sorted(set(used), key=("fp32", "bf16", "fp16").index)


def gemm_peaks(threads: int, device: str, precisions: list[str], repeats: int = 5) -> dict[str, float]:
    """{precision: GFLOP/s of the best of `repeats` n×n GEMMs} (n: GEMM_N), the precisions alternating
    round by round so load drift falls on each alike. bf16 is a bf16 GEMM (what autocast runs a linear in)."""
    import torch

    from preftune.precision import DTYPES

    torch.set_num_threads(threads)
    n = GEMM_N[device]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)  # CUDA kernels return before they finish
    operands = {p: (torch.randn(n, n, device=device, dtype=DTYPES[p]), torch.randn(n, n, device=device,
                                                                                   dtype=DTYPES[p]))
                for p in precisions}
    best = {p: float("inf") for p in precisions}
    for a, b in operands.values():
        a @ b  # warm-up
    for _ in range(repeats):
        for p, (a, b) in operands.items():
            sync()
            t0 = time.perf_counter()
            a @ b
            sync()
            best[p] = min(best[p], time.perf_counter() - t0)
    return {p: 2 * n**3 / best[p] / 1e9 for p in precisions}
