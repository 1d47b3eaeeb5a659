"""Reference log-probs, computed once per (reference weights, tokenized pair) and kept on disk.

The reference model never changes during DPO, so log π_ref of a pair is a pure function of the
reference's weights and the pair's tokens (which already encode the text, the tokenizer and the
truncation). The cache is keyed by exactly those (a hash of the weight files, `PackedPair.key`):
every run of a sweep, re-run and evaluation share it, and a stale value is never read.

Layout: $PREFTUNE_CACHE/ref_logps/<weights hash>[-<precision>][-ld<α>].jsonl, one {"key", "chosen",
"rejected"} per line, appended under a file lock (several runs may fill it at once). LD-DPO's weighted
log-probs (`-ld<α>`) live in a file of their own per α: plain sums are never read as LD ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from filelock import FileLock
from tqdm.auto import tqdm

from preftune.dpo.logps import (
    PackedPair,
    PairLogpsModule,
    default_pack_tokens,
    pairs_logps,
)
from preftune.errors import PreftuneError
from preftune.models import cache_dir, inference_device
from preftune.precision import DTYPES

logger = logging.getLogger(__name__)

CACHE_VERSION = "1"  # bump when the way log-probs are computed changes


def weights_hash(model_path: str) -> str:
    """sha256 over config.json and the weight files of a model folder, memoised by (size, mtime)."""
    folder = Path(model_path)
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json")
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise PreftuneError(f"model folder {folder} has no weight files (*.safetensors or *.bin)")
    stamp = json.dumps([[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files])
    memo = cache_dir() / "weights_hash" / (hashlib.sha256(f"{folder.resolve()}|{stamp}".encode()).hexdigest() + ".txt")
    if memo.is_file():
        return memo.read_text().strip()
    digest = hashlib.sha256(CACHE_VERSION.encode())
    for p in files:
        digest.update(p.name.encode())
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(digest.hexdigest())
    return digest.hexdigest()


def _entry(line: str) -> tuple[str, tuple[float, float]] | None:
    """(key, (chosen, rejected)) of a cache line; None for a line cut short by a killed writer or
    otherwise damaged, whose pair is then simply recomputed."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    values = (row.get("chosen"), row.get("rejected")) if isinstance(row, dict) else ()
    if not (isinstance(row, dict) and isinstance(row.get("key"), str) and len(values) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        return None
    return row["key"], (float(values[0]), float(values[1]))


class RefLogpCache:
    """One reference's cached log-probs. fp32 values live in <weights hash>.jsonl (the name earlier
    versions used); other precisions in <weights hash>-<precision>.jsonl, never mixed with them; LD-DPO's
    values (ld_alpha given) with an -ld<α> suffix."""

    def __init__(self, model_path: str, root: Path | None = None, precision: str = "fp32",
                 ld_alpha: float | None = None):
        suffix = ("" if precision == "fp32" else f"-{precision}") + ("" if ld_alpha is None else f"-ld{ld_alpha!r}")
        self.path = (root or cache_dir() / "ref_logps") / f"{weights_hash(model_path)[:32]}{suffix}.jsonl"
        self.values: dict[str, tuple[float, float]] = {}
        if self.path.is_file():
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    entry = _entry(line)
                    if entry:
                        self.values[entry[0]] = entry[1]

    def missing(self, pairs: Sequence[PackedPair]) -> list[PackedPair]:
        seen, todo = set(), []
        for p in pairs:
            if p.key not in self.values and p.key not in seen:
                seen.add(p.key)
                todo.append(p)
        return todo

    def add(self, items: list[tuple[str, float, float]], write: bool = True) -> None:
        """Remember values; `write`: also append them to the file (one writer per process group)."""
        if write and items:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(self.path.with_suffix(".lock")), open(self.path, "a", encoding="utf-8") as fh:
                fh.writelines(json.dumps({"key": key, "chosen": c, "rejected": r}) + "\n" for key, c, r in items)
        for key, c, r in items:
            self.values[key] = (c, r)

    def get(self, pairs: Sequence[PackedPair]) -> torch.Tensor:
        """(N, 2) log π_ref of (chosen, rejected) for pairs already in the cache."""
        return torch.tensor([self.values[p.key] for p in pairs], dtype=torch.float32)


def _gather(items: list, world: int) -> list:
    """Every rank's list, concatenated, on every rank."""
    if world == 1:
        return list(items)
    import torch.distributed as dist

    lists: list = [None] * world
    dist.all_gather_object(lists, items)
    return [item for part in lists for item in part]


def _share_known(cache: RefLogpCache, pairs: Sequence[PackedPair], rank: int, world: int) -> None:
    """Values one rank has cached and another lacks travel through the process group (ranks on
    machines without a shared filesystem read different caches); after this every rank misses the
    same pairs. Rank 0 appends what it lacked to its file."""
    wanted = set(_gather([p.key for p in cache.missing(pairs)], world))
    offered = _gather([(k, *cache.values[k]) for k in sorted(wanted) if k in cache.values], world)
    cache.add(list({k: (k, c, r) for k, c, r in offered if k not in cache.values}.values()), write=rank == 0)


def reference_logps(pairs: Sequence[PackedPair], model_path: str, load: Callable[[], torch.nn.Module], *,
                    pack_tokens: int | None = None, precision: str = "fp32", flush_every: int = 32,
                    shared: bool = False, ld_alpha: float | None = None) -> torch.Tensor:
    """(N, 2) reference log-probs: read from the cache, computing only what is missing.

    `load` is called only when this process has something to compute, so a warm cache never loads the
    reference. `shared`: every rank of the process group calls this together (the engines' pass;
    evaluation runs on rank 0 alone). Then what some rank has cached reaches the others through the group;
    every rank computes its share of what none has (`pack_tokens` per forward, as training does); the
    values are gathered to every rank after each round of `flush_every` pairs per rank; and rank 0
    alone appends them to its cache file. An interrupted pass keeps its finished rounds, and no rank
    needs another machine's disk. `ld_alpha`: LD-DPO's weighted log-probs (logps.ld_token_weights),
    cached apart from plain ones."""
    from preftune.launch import group_world

    rank, world = group_world() if shared else (0, 1)
    cache = RefLogpCache(model_path, precision=precision, ld_alpha=ld_alpha)
    if world > 1:
        _share_known(cache, pairs, rank, world)
    todo = cache.missing(pairs)  # the same list on every rank
    if not todo:
        logger.info(f"reference: all {len(pairs):,} pairs' log-probs found in {cache.path}")
        return cache.get(pairs)
    logger.info(f"reference: computing log-probs of {len(todo):,} pairs once"
                + (f", shared by {world} processes" if world > 1 else "") + f" (cached in {cache.path})")
    todo.sort(key=len, reverse=True)  # strided shares of a length-sorted list: every rank gets a similar load
    mine = todo[rank::world]
    module = PairLogpsModule(load().to(inference_device()), dtype=DTYPES[precision]).eval() if mine else None
    with tqdm(total=len(todo), desc="reference log-probs", unit="pair", leave=False, disable=rank != 0) as bar:
        for start in range(0, -(-len(todo) // world), flush_every):  # the same number of rounds on every rank
            part = mine[start : start + flush_every]
            values = pairs_logps(module, part, default_pack_tokens(pack_tokens), ld_alpha=ld_alpha).tolist() if part else []
            done = _gather([(p.key, c, r) for p, (c, r) in zip(part, values)], world)
            cache.add(done, write=rank == 0)
            bar.update(len(done))
    if module is not None:
        module.release()
    return cache.get(pairs)
