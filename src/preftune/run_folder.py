"""THE owner of a run folder: its file names, "is this a run folder?", atomic writes, and reading
and validating what a run holds. Every reader (eval, report, push, judge, serve) goes through here,
so a damaged file is one clear line naming the file and key, never a traceback.

A run folder (written by `preftune train`, or a sweep) holds:
    config.json, model.safetensors, tokenizer*    a standard `save_pretrained` folder
    preftune_config.json                          resolved data + train config, model source, data stats
    train_log.jsonl                               one JSON object per logged step
    metrics.json                                  steps, runtime, throughput, final logged values
    eval.json, eval_pairs.jsonl                   validation metrics and the exact pairs
    test.json, test_pairs.jsonl                   test metrics (chosen runs only) and the pairs
    judge.json                                    `preftune judge`'s result
Light on purpose: no torch, no transformers.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preftune.errors import PreftuneError

CONFIG_FILE = "preftune_config.json"
METRICS_FILE = "metrics.json"
TRAIN_LOG_FILE = "train_log.jsonl"
EVAL_FILE = "eval.json"
EVAL_PAIRS_FILE = "eval_pairs.jsonl"
TEST_FILE = "test.json"
TEST_PAIRS_FILE = "test_pairs.jsonl"
JUDGE_FILE = "judge.json"
PARTIAL_SUFFIX = ".partial"


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
    except ValueError as e:
        raise PreftuneError(f"{path}: not valid JSON ({e}); the file is damaged: re-create it") from None
    if not isinstance(value, dict):
        raise PreftuneError(f"{path}: expected a JSON object, got {type(value).__name__}; the file is damaged")
    return value


def require_key(obj: dict, key: str, kind: type | tuple[type, ...], path: Path, where: str = "") -> Any:
    """obj[key] of type `kind` (bool is not a number here); else an error naming the file and key."""
    name = f"{where}.{key}" if where else key
    if key not in obj:
        raise PreftuneError(f"{path}: key '{name}' missing; the file is damaged or not preftune's")
    value = obj[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)) or not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise PreftuneError(f"{path}: key '{name}' must be {want}, got {type(value).__name__} {str(value)[:40]!r}")
    return value


@dataclass(frozen=True)
class Run:
    """A run folder whose preftune_config.json has been read and checked."""

    path: Path
    config: dict  # preftune_config.json, validated for the keys below

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def train(self) -> dict:
        return self.config["train"]

    @property
    def beta(self) -> float:
        return float(self.train["beta"])

    @property
    def max_length(self) -> int:
        return int(self.train["max_length"])

    @property
    def reference_model(self) -> str:
        """The model the run was trained from (its DPO reference)."""
        return self.config.get("reference_model") or self.train["model"]

    def data_config(self):
        """The run's DataConfig. Runs from before the test split had none: test_fraction 0 reproduces
        their train/validation split exactly."""
        from preftune.config import DataConfig

        data = dict(self.config["data"])
        data.setdefault("test_fraction", 0.0)
        try:
            return DataConfig(**data)
        except TypeError as e:
            raise PreftuneError(f"{self.path / CONFIG_FILE}: key 'data' holds an unknown setting ({e})") from None

    def file(self, name: str) -> Path:
        return self.path / name

    def eval_pairs(self) -> list:
        """The validation pairs the run was evaluated on (eval_pairs.jsonl)."""
        return read_pairs(self.path / EVAL_PAIRS_FILE)

    def test_pairs(self) -> list:
        """The test pairs saved at training time; an error for runs from before the test split."""
        path = self.path / TEST_PAIRS_FILE
        if not path.is_file():
            raise PreftuneError(f"{self.path} has no {TEST_PAIRS_FILE}: it was trained before preftune kept a test "
                                "split. Evaluate it on a dataset instead (`preftune eval RUN --dataset SRC`).")
        return read_pairs(path)


def open_run(path: Path | str, finished: bool = True) -> Run:
    """The run folder at path, checked: a folder, with a readable preftune_config.json holding the data
    and train settings. `finished`: refuse NAME.partial folders (interrupted or still training)."""
    path = Path(path)
    if not path.exists():
        raise PreftuneError(f"{path}: no such run folder")
    if not path.is_dir():
        raise PreftuneError(f"{path} is a file, not a run folder written by `preftune train`")
    if finished and path.name.endswith(PARTIAL_SUFFIX):
        raise PreftuneError(f"{path} is an unfinished run (interrupted or still training): re-run its train/sweep "
                            "command to complete it, then use the folder without .partial")
    config = read_json(path / CONFIG_FILE, missing_ok=True)
    if config is None:
        raise PreftuneError(f"{path} is not a preftune run folder (no {CONFIG_FILE}): pass a folder written by "
                            "`preftune train` or `preftune sweep`")
    file = path / CONFIG_FILE
    require_key(config, "data", dict, file)
    train = require_key(config, "train", dict, file)
    require_key(train, "beta", (int, float), file, "train")
    require_key(train, "max_length", int, file, "train")
    require_key(train, "model", str, file, "train")
    if config.get("reference_model") is not None:
        require_key(config, "reference_model", str, file)
    return Run(path, config)


def read_pairs(path: Path) -> list:
    from preftune.data.prepare import read_jsonl

    if not Path(path).is_file():
        raise PreftuneError(f"{path}: not found (the run folder is incomplete)")
    return read_jsonl(Path(path))


def judge_summary(judge: dict | None) -> dict:
    """The headline of a judge.json for the leaderboard and the model card: the greedy tuned-vs-base
    win rate, its 95% CI, the length-controlled win rate, n, and whether the verdict is weak."""
    judge = judge if isinstance(judge, dict) else {}
    decodings = judge.get("decodings") if isinstance(judge.get("decodings"), dict) else {}
    greedy = decodings.get("greedy") if isinstance(decodings.get("greedy"), dict) else {}
    tb = greedy.get("tuned_vs_base") if isinstance(greedy.get("tuned_vs_base"), dict) else {}
    return {"judge_win_rate": tb.get("win_rate"), "judge_win_rate_ci95": tb.get("ci95"),
            "judge_length_controlled_win_rate": tb.get("length_controlled_win_rate"),
            "judge_n": tb.get("n"), "judge_verdict_strength": judge.get("verdict_strength"),
            "judge_rm_accuracy": judge.get("rm_accuracy")}
