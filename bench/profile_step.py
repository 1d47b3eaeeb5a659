"""Where one fast-engine training step spends its time: torch.profiler over forward + backward of one
batch (packed as the engine packs it), self CPU time grouped by kind of op, and the optimizer step
(clipping + fused AdamW) timed apart.

    .venv/bin/python bench/profile_step.py [--pairs 4] [--threads 1] [--pack-tokens N] [--max-length 512]

Uses the default model and the first shipped TL;DR training pairs; prints a table (and --json).
The profiler adds overhead to every op; the shares, not the absolute seconds, are the point.
"""

from __future__ import annotations

import argparse
import json
import re
import time

KINDS = [  # first match wins: (kind, pattern over aten op names)
    ("matmul (linear layers, LM head)", r"^aten::(mm|addmm|bmm|matmul|linear|baddbmm)$"),
    ("attention (SDPA kernels)", r"scaled_dot_product|flash_attention"),
    ("log-softmax of the LM head (logsumexp, gather)", r"^aten::(logsumexp|gather|exp|sub|log|amax|max)$"),
    ("elementwise (RMSNorm, RoPE, SiLU, residuals)", r"^aten::(mul|add|add_|silu|silu_backward|pow|rsqrt|mean|neg|div|"
     r"sum|sigmoid|mul_|addcmul_|addcdiv_|sqrt|lerp_|_foreach_.*|where|masked_fill|tanh)$"),
    ("memory (copies, fills, concatenation, indexing)", r"^aten::(copy_|fill_|zero_|cat|index|index_add|index_put_|"
     r"embedding_dense_backward|clone|contiguous|empty|empty_like|zeros|zeros_like|new_zeros|_to_copy|slice_backward|"
     r"index_select|embedding|scatter_add_|_embedding_bag|narrow|stack|select_backward|as_strided_scatter)$"),
]


def kind_of(name: str) -> str:
    return next((kind for kind, pattern in KINDS if re.search(pattern, name)), "other")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4, help="pairs in the profiled batch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pack-tokens", type=int, default=None, help="default: the engine's")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(args.threads)
    from preftune.config import DEFAULT_DATASET, DEFAULT_MODEL, DataConfig
    from preftune.data.fit import fit
    from preftune.data.prepare import prepare
    from preftune.dpo.logps import (
        PairLogpsModule,
        default_pack_tokens,
        pack_pair,
        pack_row,
        plan_rows,
        row_logps,
    )
    from preftune.dpo.losses import LOSSES
    from preftune.models import load_model, load_tokenizer, resolve_model

    path = resolve_model(DEFAULT_MODEL).path
    tokenizer = load_tokenizer(path)
    pairs = fit(tokenizer, prepare(DataConfig(dataset=DEFAULT_DATASET)).train[: args.pairs], args.max_length, "bench")[0]
    packed = [pack_pair(tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
    budget = default_pack_tokens(args.pack_tokens)
    rows = plan_rows([len(p) for p in packed], budget)
    model = load_model(path)
    module = PairLogpsModule(model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0, fused=True)  # as the engine
    ref = torch.zeros(len(packed), 2)

    def forward_backward() -> None:
        for row in rows:
            pol = row_logps(module, pack_row([packed[i] for i in row]))
            losses, _, _ = LOSSES["sigmoid"](pol[:, 0], pol[:, 1], ref[row, 0], ref[row, 1], 0.1)
            (losses.sum() / len(packed)).backward()

    def optimizer_step() -> float:
        t0 = time.process_time()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.process_time() - t0

    forward_backward()  # warm-up: allocator, kernels, optimizer state
    optimizer_step()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        forward_backward()
    wall = time.perf_counter() - t0
    shares: dict[str, float] = {}
    for event in prof.key_averages():
        shares[kind_of(event.key)] = shares.get(kind_of(event.key), 0.0) + event.self_cpu_time_total / 1e6
    shares["optimizer: clipping + fused AdamW (timed apart)"] = optimizer_step()
    total = sum(shares.values())
    report = {"pairs": len(packed), "rows": len(rows), "tokens": sum(len(p) for p in packed),
              "threads": args.threads, "pack_tokens": budget, "profiled_forward_backward_wall_s": wall,
              "self_cpu_s": total, "by_kind_s": dict(sorted(shares.items(), key=lambda kv: -kv[1]))}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['pairs']} pairs in {report['rows']} forward(s), {report['tokens']} tokens, "
          f"{args.threads} thread(s); forward + backward {wall:.1f} s wall (profiled); {total:.1f} s CPU in all")
    for kind, seconds in report["by_kind_s"].items():
        print(f"  {kind:52s} {seconds:7.2f} s  {100 * seconds / total:5.1f}%")


if __name__ == "__main__":
    main()
