"""A run folder's names and its reading primitives: file names, the NAME.partial rule, atomic writes,
"is this a run folder?", the chain base → [SFT →] DPO, and one-line errors naming a damaged file and
key. Validated reading of result files and `open_run` are in runs/results.py; writing a run folder
(NAME.partial → NAME, checkpoints, resume) in runs/lifecycle.py. docs/runs.md lists what a folder holds.
Light on purpose: no torch, no transformers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from preftune.errors import PreftuneError

logger = logging.getLogger(__name__)

CONFIG_FILE = "preftune_config.json"
MODEL_CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
TRAIN_LOG_FILE = "train_log.jsonl"
EVAL_FILE = "eval.json"
EVAL_PAIRS_FILE = "eval_pairs.jsonl"
TEST_FILE = "test.json"
TEST_PAIRS_FILE = "test_pairs.jsonl"
JUDGE_FILE = "judge.json"
JUDGE_TEST_FILE = "judge_test.json"
RM_CONFIG_FILE = "rm_config.json"  # a reward model folder's (preftune rm train): settings, split, heads
RM_EVAL_FILE = "rm_eval.json"  # its held-out metrics
CHECKPOINTS_DIR = "checkpoints"  # = engines.CHECKPOINTS_DIR (not imported: engines import torch)
PARTIAL_SUFFIX = ".partial"
SPLITS = ("validation", "test")


# ---- which file holds what -----------------------------------------------------------------------


def dataset_slug(spec: str) -> str:
    """A dataset spec as a file-name part. A hub id or name: the spec itself; a local file or folder: its
    name + '-' + 8 hex digits of the SHA-1 of its absolute path (two `comparisons.jsonl` in different
    folders stay apart). Then lower-cased, every run of characters other than a-z, 0-9, '.', '_' and
    '-' replaced by one '-', leading/trailing '-' and '.' dropped, and cut to 64 characters (55 + '-' +
    8 hex digits of the spec's SHA-1 when longer). openai/summarize_from_feedback →
    openai-summarize_from_feedback; ../data/cnndm.jsonl → cnndm.jsonl-<8 hex>."""
    def sha(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]

    from preftune.hubids import looks_local

    name = spec
    if looks_local(spec):
        path = Path(spec).expanduser().absolute()
        name = f"{path.name}-{sha(str(path))}"
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "data"
    return slug if len(slug) <= 64 else slug[:55].rstrip("-.") + "-" + sha(spec)


def result_file(split: str = "validation", dataset: str | None = None) -> str:
    """The file a run's metrics on `split` go to: eval.json / test.json for the run's own data,
    eval_<slug>.json / test_<slug>.json for another dataset (see dataset_slug)."""
    if split not in SPLITS:
        raise PreftuneError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}")
    stem = "eval" if split == "validation" else "test"
    return f"{stem}.json" if dataset is None else f"{stem}_{dataset_slug(dataset)}.json"


def pairs_file(split: str) -> str:
    """The file holding a run's own pairs of `split` (saved at training time)."""
    return EVAL_PAIRS_FILE if split == "validation" else TEST_PAIRS_FILE


# ---- atomic writes -------------------------------------------------------------------------------


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to path so a reader sees the old file or the new one, never half of one: a temporary
    file in the same folder, flushed, then renamed over the target (atomic on POSIX and Windows)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def strict_json(obj: Any) -> Any:
    """obj with every NaN/±inf float replaced by None, so the file is strict JSON (no bare NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    """Indented strict JSON (NaN → null), written atomically."""
    atomic_write_text(path, json.dumps(strict_json(obj), indent=2, default=str, allow_nan=False) + "\n")


def write_pairs(path: Path, pairs) -> None:
    """Pairs (preftune.data.prepare.Pair) as JSON lines, written atomically."""
    atomic_write_text(path, "".join(json.dumps(p.to_json(), ensure_ascii=False) + "\n" for p in pairs))


# ---- NAME.partial → NAME -------------------------------------------------------------------------
# A folder is written as ROOT/NAME.partial/ and renamed to ROOT/NAME/ only when every file is in place
# (runs/lifecycle.py), so a folder with its final name is always complete. This is the only spelling of it.


def partial_of(final: Path) -> Path:
    """ROOT/NAME.partial for ROOT/NAME."""
    final = Path(final)
    return final.with_name(final.name + PARTIAL_SUFFIX)


def lock_of(final: Path) -> Path:
    """ROOT/.NAME.lock: the lock a writer of ROOT/NAME holds (runs/lock.py); beside the folder, so it
    outlives the rename NAME.partial → NAME."""
    final = Path(final)
    return final.with_name(f".{final.name}.lock")


def is_partial(path: Path) -> bool:
    """A NAME.partial folder's path (an interrupted or running run)."""
    return Path(path).name.endswith(PARTIAL_SUFFIX)


def final_of(path: Path) -> Path:
    """ROOT/NAME for ROOT/NAME.partial (and for ROOT/NAME itself)."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(PARTIAL_SUFFIX))


# ---- reading, validated --------------------------------------------------------------------------


def read_json(path: Path, missing_ok: bool = False) -> dict | None:
    """A JSON object from path; a clear error when it is not valid JSON or not an object. Missing: None
    if missing_ok, else an error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return None
        raise PreftuneError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PreftuneError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise PreftuneError(f"{path}: not valid JSON ({str(e)[:80]}); the file is damaged: re-create it") from None
    if not isinstance(value, dict):
        raise PreftuneError(f"{path}: expected a JSON object, got {json_kind(value)}; the file is damaged")
    return value


def json_kind(value: Any) -> str:
    """A value's type in JSON's words, for messages."""
    if value is None:
        return "null"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "text", list: "a list", dict: "an object"}
    return next((w for t, w in names.items() if type(value) is t), type(value).__name__)


def require_key(obj: dict, key: str, kind: type | tuple[type, ...], path: Path, where: str = "") -> Any:
    """obj[key] of type `kind` (bool is not a number here); else an error naming the file and key."""
    name = f"{where}.{key}" if where else key
    if key not in obj:
        raise PreftuneError(f"{path}: key '{name}' missing; the file is damaged or not preftune's")
    value = obj[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)) or not isinstance(value, kind):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        want = "a number" if set(kinds) == {int, float} else " or ".join(json_kind(k()) for k in kinds)
        got = "null" if value is None else f"{json_kind(value)} {str(value)[:40]!r}"
        raise PreftuneError(f"{path}: key '{name}' must be {want}, got {got}")
    return value


# Checkers for the values of a result file: each returns the value (NaN/±inf/null → None: a gap the
# readers show as "–") or raises naming the file and key. Keys a file lacks (older preftune) are gaps.


def damaged(path: Path, key: str, want: str, value: Any) -> PreftuneError:
    return PreftuneError(f"{path}: key '{key}' must be {want} or null, got {json_kind(value)} {str(value)[:40]!r}; "
                         "the file is damaged: re-create it (`preftune eval RUN` rewrites eval.json)")


def check_number(value: Any, path: Path, key: str) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise damaged(path, key, "a number", value)
    return value if math.isfinite(value) else None


def check_count(value: Any, path: Path, key: str) -> int | None:
    value = check_number(value, path, key)
    if value is not None and (value < 0 or value != int(value)):
        raise damaged(path, key, "a count (an integer ≥ 0)", value)
    return None if value is None else int(value)


def check_text(value: Any, path: Path, key: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise damaged(path, key, "text", value)
    return value


def check_interval(value: Any, path: Path, key: str) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise damaged(path, key, "a [low, high] interval", value)
    low, high = (check_number(v, path, f"{key}[{i}]") for i, v in enumerate(value))
    return None if low is None or high is None else [low, high]


def check_object(value: Any, path: Path, key: str) -> dict | None:
    if value is not None and not isinstance(value, dict):
        raise damaged(path, key, "an object", value)
    return value



def judge_summary(judge: dict | None) -> dict:
    """The headline of a judge.json for the leaderboard and the model card: the greedy tuned-vs-base
    win rate, its 95% CI, the length-controlled win rate, n, and whether the verdict is weak. Read
    leniently: a missing or damaged value is a gap (None), shown as "–"."""
    judge = judge if isinstance(judge, dict) else {}
    decodings = judge.get("decodings") if isinstance(judge.get("decodings"), dict) else {}
    greedy = decodings.get("greedy") if isinstance(decodings.get("greedy"), dict) else {}
    tb = greedy.get("tuned_vs_base") if isinstance(greedy.get("tuned_vs_base"), dict) else {}
    return {"judge_win_rate": _or_gap(check_number, tb.get("win_rate")),
            "judge_win_rate_ci95": _or_gap(check_interval, tb.get("ci95")),
            "judge_length_controlled_win_rate": _or_gap(check_number, tb.get("length_controlled_win_rate")),
            "judge_n": _or_gap(check_count, tb.get("n")),
            "judge_verdict_strength": _or_gap(check_text, judge.get("verdict_strength")),
            "judge_rm_accuracy": _or_gap(check_number, judge.get("rm_accuracy"))}


def _or_gap(check, value: Any) -> Any:
    try:
        return check(value, Path(JUDGE_FILE), "")
    except PreftuneError:
        return None


# ---- run folders ---------------------------------------------------------------------------------
# preftune_config.json's "kind" says which trainer wrote the folder (runs/lifecycle.py); a DPO run from
# before kinds has none, a reward model from before them only rm_config.json.

DPO_KIND, SFT_KIND, RM_KIND = "dpo", "sft", "rm"
KINDS = (DPO_KIND, SFT_KIND, RM_KIND)


def is_finished_run(path: Path) -> bool:
    """A finished run folder of any kind (DPO, SFT, RM): a folder not named NAME.partial, holding
    preftune_config.json (written when the run is complete)."""
    path = Path(path)
    return path.is_dir() and not is_partial(path) and (path / CONFIG_FILE).is_file()


def is_run_dir(path: Path) -> bool:
    """A finished DPO run folder: `preftune sft` and `rm train` write their folders beside the DPO runs;
    they have no eval to rank."""
    return is_finished_run(path) and run_kind(Path(path)) in (None, DPO_KIND)


def reward_model_config(path: Path) -> Path | None:
    """The file holding a reward model folder's settings: its preftune_config.json (kind "rm"), or for a
    folder from before kinds its rm_config.json; None when the folder holds neither."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file() and run_kind(path) == RM_KIND:
        return path / CONFIG_FILE
    return path / RM_CONFIG_FILE if (path / RM_CONFIG_FILE).is_file() else None


# ---- lineage: base → [SFT →] DPO (or base → RM) --------------------------------------------------
# preftune_config.json's "chain" lists how a run's weights came about, oldest first: {"kind": "base",
# "model": spec}, then one entry per preftune run ({"kind": "sft"|"dpo"|"rm", "run": NAME, "path": ..., settings}).
# Folders written before chains existed have none: `chain_of` rebuilds [base, dpo] from their config.

CHAIN_LABELS = {"base": "base", SFT_KIND: "SFT", DPO_KIND: "DPO", RM_KIND: "RM"}


def run_kind(path: Path) -> str | None:
    """The "kind" a folder's preftune_config.json records (None: a DPO run from before kinds, or unreadable)."""
    try:
        config = read_json(Path(path) / CONFIG_FILE, missing_ok=True)
    except PreftuneError:
        return None  # open_run names the damage when the folder is used
    kind = (config or {}).get("kind")
    return kind if isinstance(kind, str) else None


def chain_of(config: dict, name: str, path: str | None = None) -> list[dict]:
    """The chain stored in a run's config, or for an older DPO run [base, dpo] from its settings."""
    chain = config.get("chain")
    if isinstance(chain, list) and all(isinstance(e, dict) for e in chain) and chain:
        return [dict(e) for e in chain]
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    base = config.get("reference_model") or train.get("model") or "?"
    return [{"kind": "base", "model": str(base)}, {"kind": "dpo", "run": name, **({"path": path} if path else {})}]


def model_chain(spec: str) -> list[dict]:
    """The chain of the model a new run starts from: a preftune run folder's own chain (its last entry's
    path set to where it is now), else the model itself as the base. A run folder whose preftune_config.json
    is damaged is an error naming it: the chain would silently lose its steps (an SFT before this DPO)."""
    folder = Path(spec).expanduser()
    path = folder / CONFIG_FILE
    if not folder.is_dir() or not path.exists():
        return [{"kind": "base", "model": spec}]
    config = read_json(path)  # damaged: one line naming the file
    chain = config.get("chain")
    steps = isinstance(chain, list) and chain and all(isinstance(e, dict) and isinstance(e.get("kind"), str)
                                                      for e in chain)
    if ("chain" in config or config.get("kind") not in (None, DPO_KIND)) and not steps:  # old DPO runs have none
        raise PreftuneError(f"{path}: key 'chain' must be a list of steps ({{\"kind\": ...}}, oldest first), got "
                            f"{json_kind(chain)}; the file is damaged: re-create the run (--model {spec})")
    chain = chain_of(config, folder.name)
    chain[-1]["path"] = str(folder.resolve())
    return chain


def chain_text(chain: list[dict], settings: bool = False) -> str:
    """'base → SFT → DPO'; with settings, each run's lr/bs/epochs and the base model, e.g.
    'HuggingFaceTB/SmolLM2-135M-Instruct → SFT (lr 1e-05, bs 8, 1 epoch, 240 rows of chosen) → DPO'."""
    def one(entry: dict) -> str:
        kind = str(entry.get("kind", "?"))
        label = CHAIN_LABELS.get(kind, kind)
        if not settings:
            return label
        if kind == "base":
            return f"base {entry.get('model', '?')}"
        parts = [f"{k} {entry[k]}" for k in ("lr", "bs") if entry.get(k) is not None]
        if entry.get("epochs") is not None:
            parts.append(f"{entry['epochs']} epoch{'s' if entry['epochs'] != 1 else ''}")
        if entry.get("rows") is not None:
            parts.append(f"{entry['rows']} rows of {entry.get('data', '?')}")
        return label + (f" ({', '.join(parts)})" if parts else "")

    return " → ".join(one(e) for e in chain)


def run_dirs(root: Path) -> tuple[list[Path], list[Path]]:
    """(finished run folders, unfinished NAME.partial folders) directly under root, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise PreftuneError(f"{root} is not a folder of runs" + (" (it is a file)" if root.exists() else
                                                                  " (no such folder)"))
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError as e:
        raise PreftuneError(f"{root}: cannot list ({e.strerror or e})") from None
    return [p for p in children if is_run_dir(p)], [p for p in children if is_partial(p)]


