"""Reference log-probs, computed once per (reference weights, tokenized pair) and kept on disk.

The reference model never changes during DPO, so log π_ref of a pair is a pure function of the
reference's weights and the pair's tokens (which already encode the text, the tokenizer and the
truncation). The cache is keyed by exactly those: a hash of the weight files, and
`PackedPair.key`. Every run of a sweep, every re-run, and evaluation share it; any change to an
input changes a key, so a stale value is never read.

Layout: $PREFTUNE_CACHE/ref_logps/<weights hash>.jsonl, one {"key", "chosen", "rejected"} per line,
appended under a file lock (several processes may fill it).
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

from preftune.errors import PreftuneError
from preftune.logps import PackedPair, PairLogpsModule, packed_pair_logps
from preftune.models import cache_dir

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
    def __init__(self, model_path: str, root: Path | None = None):
        self.path = (root or cache_dir() / "ref_logps") / f"{weights_hash(model_path)[:32]}.jsonl"
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

    def add(self, items: list[tuple[str, float, float]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self.path.with_suffix(".lock")), open(self.path, "a", encoding="utf-8") as fh:
            for key, c, r in items:
                fh.write(json.dumps({"key": key, "chosen": c, "rejected": r}) + "\n")
                self.values[key] = (c, r)

    def get(self, pairs: Sequence[PackedPair]) -> torch.Tensor:
        """(N, 2) log π_ref of (chosen, rejected) for pairs already in the cache."""
        return torch.tensor([self.values[p.key] for p in pairs], dtype=torch.float32)


def reference_logps(pairs: Sequence[PackedPair], model_path: str, load: Callable[[], torch.nn.Module],
                    flush_every: int = 32) -> torch.Tensor:
    """(N, 2) reference log-probs: read from the cache, computing (and saving) only what is missing.
    `load` is called only when something is missing, so a warm cache never loads the reference."""
    cache = RefLogpCache(model_path)
    todo = cache.missing(pairs)
    if todo:
        logger.info(f"reference: computing log-probs of {len(todo):,} pairs once (cached in {cache.path})")
        module = PairLogpsModule(load()).eval()
        batch: list[tuple[str, float, float]] = []
        with torch.no_grad():
            for p in tqdm(todo, desc="reference log-probs", unit="pair", leave=False):
                c, r = packed_pair_logps(module, p).tolist()
                batch.append((p.key, c, r))
                if len(batch) >= flush_every:  # saved as it goes: an interrupted precompute is not lost
                    cache.add(batch)
                    batch = []
        cache.add(batch)
    else:
        logger.info(f"reference: all {len(pairs):,} pairs' log-probs found in {cache.path}")
    return cache.get(pairs)
