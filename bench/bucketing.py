"""Several pairs per forward, the two ways issue 13 §1 names, against one pair per forward:

  single    one pair per forward: the fast engine's path on a CPU (`--pack-tokens 0`): a row of one
            prefix-shared pair (PairLogpsModule, per-pair attention)
  packed    all the pairs in one row (`--pack-tokens` large): positions restart per pair, per-pair attention
  bucketed  a length-bucketed batch: each pair one row of an (N, T) batch right-padded to the longest, each
            row with its pair's prefix-sharing mask (pad positions masked) as a 4-D additive attention mask
            (not in the engine: written here to measure it)

    .venv/bin/python bench/bucketing.py [--pairs 4] [--threads 1] [--rounds 3] [--max-length 512]

Default model, the first shipped TL;DR training pairs fitted to max_length. Forward + backward with the
same loss (DPO sigmoid against a zero reference, as bench/profile_step.py), timed as CPU seconds per pair
(`time.process_time`), best of `--rounds` interleaved rounds; each way's peak RSS is measured in a
process of its own (one forward + backward after loading the model). The three ways compute the same
per-pair log-probs (checked first: within 1e-4), so the times compare equal work. Prints a Markdown table
and writes bench/results/bucketing.json. ~2–4 minutes on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
WAYS = ("single", "packed", "bucketed")
TOLERANCE = 1e-4  # max |Δ log-prob sum| between the ways: equal work, or the times mean nothing
BETA = 0.1


@dataclass(frozen=True)
class Bucket:
    """N pairs as the rows of one padded batch; completion tokens addressed by (row, column)."""

    ids: torch.Tensor  # (N, T), right-padded
    positions: torch.Tensor  # (N, T): each pair's positions (restarting for the rejected part), 0 on pads
    mask: torch.Tensor  # (N, 1, T, T) additive: 0 where a query sees a key, the dtype's lowest value elsewhere
    rows: torch.Tensor  # (M,) batch row of each completion token's predictor, M = Σ (C + R)
    cols: torch.Tensor  # (M,) its column (the hidden state that predicts the token)
    targets: torch.Tensor  # (M,) the column of the token itself
    slots: torch.Tensor  # (M,) 2i for pair i's chosen tokens, 2i + 1 for its rejected ones


def bucket_batch(pairs: Sequence, pad_id: int, dtype: torch.dtype = torch.float32) -> Bucket:
    """The pairs (logps.PackedPair) as one (N, T) batch. A pad query sees only itself, so no softmax row
    is empty; no real token sees a pad."""
    from preftune.dpo.logps import pair_allowed, pair_positions, predictor_positions

    n, T = len(pairs), max(len(p) for p in pairs)
    ids = torch.full((n, T), pad_id, dtype=torch.long)
    positions = torch.zeros((n, T), dtype=torch.long)
    allowed = torch.eye(T, dtype=torch.bool).repeat(n, 1, 1)  # (N, T, T)
    rows, cols, targets, slots = [], [], [], []
    for i, p in enumerate(pairs):
        P, C, R = p.prompt_len, p.chosen_len, p.rejected_len
        ids[i, : len(p)] = torch.tensor(p.ids)
        positions[i, : len(p)] = pair_positions(P, C, R)
        allowed[i, : len(p), : len(p)] = pair_allowed(P, C, R)
        predictors, tokens = predictor_positions(p)
        rows.append(torch.full_like(predictors, i))
        cols.append(predictors)
        targets.append(tokens)
        slots.append(torch.tensor([2 * i] * C + [2 * i + 1] * R, dtype=torch.long))
    mask = torch.zeros((n, 1, T, T), dtype=dtype).masked_fill(~allowed[:, None], torch.finfo(dtype).min)
    return Bucket(ids, positions, mask, torch.cat(rows), torch.cat(cols), torch.cat(targets), torch.cat(slots))


def bucketed_logps(model, b: Bucket) -> torch.Tensor:
    """(N, 2) summed log-probs of (chosen, rejected) per row; the LM head over completion positions only,
    log-probs as logit[target] − logsumexp(logits), as PairLogpsModule computes them."""
    from preftune.dpo.logps import slot_sums

    hidden = model.get_decoder()(input_ids=b.ids, position_ids=b.positions, attention_mask=b.mask,
                                 use_cache=False).last_hidden_state  # (N, T, H)
    logits = model.get_output_embeddings()(hidden[b.rows, b.cols]).float()  # (M, V)
    token_logps = logits.gather(-1, b.ids[b.rows, b.targets][:, None]).squeeze(-1) - logits.logsumexp(-1)  # (M,)
    return slot_sums(token_logps, b.slots, b.ids.shape[0])


def forwards(way: str, model, pairs: Sequence, pad_id: int) -> Iterator[torch.Tensor]:
    """(n, 2) policy log-probs, one tensor per forward, as `way` runs the pairs (the caller may backward
    each before the next forward, as the engine does per row)."""
    from preftune.dpo.logps import PairLogpsModule, pack_row, row_logps

    if way == "bucketed":  # the model's own attention (SDPA) with the 4-D mask
        yield bucketed_logps(model, bucket_batch(pairs, pad_id))
        return
    module = PairLogpsModule(model)  # per-pair attention, the engine's default
    try:
        for row in ([[p] for p in pairs] if way == "single" else [list(pairs)]):
            yield row_logps(module, pack_row(row))
    finally:
        module.release()  # the model's attention back, for the bucketed way


def forward_backward(way: str, model, pairs: Sequence, pad_id: int) -> None:
    from preftune.dpo.losses import LOSSES

    model.zero_grad(set_to_none=True)
    for pol in forwards(way, model, pairs, pad_id):
        zero = torch.zeros(len(pol))
        losses, _, _ = LOSSES["sigmoid"](pol[:, 0], pol[:, 1], zero, zero, BETA)
        (losses.sum() / len(pairs)).backward()


@torch.no_grad()
def all_logps(way: str, model, pairs: Sequence, pad_id: int) -> torch.Tensor:
    return torch.cat(list(forwards(way, model, pairs, pad_id)))


def shipped_pairs(tokenizer, n: int, max_length: int) -> list:
    """The first n shipped TL;DR training pairs, fitted to max_length, prefix-shared (logps.PackedPair)."""
    from preftune.config import DataConfig
    from preftune.data.fit import fit
    from preftune.data.prepare import prepare
    from preftune.dpo.logps import pack_pair

    pairs = fit(tokenizer, prepare(DataConfig()).train[:n], max_length, "bench")[0]
    return [pack_pair(tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]


def setup(args):
    from preftune.config import DEFAULT_MODEL
    from preftune.models import load_model, load_tokenizer, resolve_model

    torch.set_num_threads(args.threads)
    path = resolve_model(DEFAULT_MODEL).path
    tokenizer = load_tokenizer(path)
    pairs = shipped_pairs(tokenizer, args.pairs, args.max_length)
    model = load_model(path).train()  # SmolLM2 has no dropout: train mode computes what eval does
    return model, pairs, tokenizer.pad_token_id


def rss_gib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, GiB (Linux)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) / 2**20


def memory_child(args) -> None:
    """One forward + backward the `args.rss_of` way in this fresh process: its peak RSS from the loaded
    model on (the peak is reset after loading, so a spike while loading does not hide the way's own)."""
    model, pairs, pad_id = setup(args)
    after_load = rss_gib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak RSS (VmHWM) := the current RSS
    forward_backward(args.rss_of, model, pairs, pad_id)
    print("RESULT " + json.dumps({"rss_after_load_gib": after_load, "peak_rss_gib": rss_gib("VmHWM")}), flush=True)


def peak_rss(way: str, args) -> dict:
    cmd = [sys.executable, __file__, "--rss-of", way, "--pairs", str(args.pairs), "--threads", str(args.threads),
           "--max-length", str(args.max_length)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        raise SystemExit(f"memory of '{way}' failed:\n{done.stderr[-4000:]}")
    return json.loads(next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))[7:])


def markdown(r: dict) -> str:
    lines = [f"{r['pairs']} pairs ({r['real_tokens']} tokens, {r['mean_pair_tokens']:.0f} per prefix-shared pair), "
             f"{r['threads']} thread(s), max_length {r['max_length']}; load average {r['load_avg_1min'][0]:.1f} → "
             f"{r['load_avg_1min'][1]:.1f}; max |Δ log-prob| vs single: packed {r['max_abs_diff']['packed']:.1e}, "
             f"bucketed {r['max_abs_diff']['bucketed']:.1e}", "",
             "| way | forwards | tokens (with padding) | CPU s/pair (best) | all rounds | peak RSS GiB (after load) |",
             "|---|---|---|---|---|---|"]
    for way, w in r["ways"].items():
        lines.append(f"| {way} | {w['forwards']} | {w['tokens']} | **{w['s_per_pair']:.2f}** | "
                     f"{', '.join(f'{x:.2f}' for x in w['rounds'])} | {w['peak_rss_gib']:.2f} "
                     f"({w['rss_after_load_gib']:.2f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4, help="shipped training pairs (N)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds; the best counts")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "bucketing.json")
    parser.add_argument("--rss-of", choices=WAYS, help=argparse.SUPPRESS)  # child: one way's peak RSS
    args = parser.parse_args()
    if args.rss_of:
        return memory_child(args)

    sys.path.insert(0, str(HERE))
    from dpo_throughput import code_state

    load_before = os.getloadavg()[0]
    model, pairs, pad_id = setup(args)
    single = all_logps("single", model, pairs, pad_id)
    diffs = {way: (all_logps(way, model, pairs, pad_id) - single).abs().max().item() for way in WAYS[1:]}
    assert max(diffs.values()) <= TOLERANCE, f"the ways compute different log-probs: max |Δ| {diffs}"
    rounds: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(args.rounds):
        for way in WAYS:
            t0 = time.process_time()
            forward_backward(way, model, pairs, pad_id)
            rounds[way].append((time.process_time() - t0) / len(pairs))
    del model
    lengths = [len(p) for p in pairs]
    shape = {"single": (len(pairs), sum(lengths)), "packed": (1, sum(lengths)),
             "bucketed": (1, len(pairs) * max(lengths))}  # forwards, tokens including padding
    report = {
        **code_state(), "pairs": len(pairs), "threads": args.threads, "max_length": args.max_length,
        "real_tokens": sum(lengths), "mean_pair_tokens": sum(lengths) / len(lengths), "max_abs_diff": diffs,
        "ways": {way: {"forwards": shape[way][0], "tokens": shape[way][1], "s_per_pair": min(rounds[way]),
                       "rounds": rounds[way], **peak_rss(way, args)} for way in WAYS},
    }
    report["load_avg_1min"] = [load_before, os.getloadavg()[0]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


if __name__ == "__main__":
    main()
