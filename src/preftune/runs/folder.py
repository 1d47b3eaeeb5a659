"""THE owner of a run folder: its file names, "is this a run folder?", atomic writes, the NAME.partial
→ NAME lifecycle, and reading and validating what a run holds. Every reader (eval, report, push, judge,
serve) goes through here, so a damaged file is one clear line naming the file and key (or a gap the
caller shows as "–"), never a traceback.

A run folder (written by `preftune train`, or a sweep) holds:
    config.json, model.safetensors, tokenizer*    a standard `save_pretrained` folder
    preftune_config.json                          resolved data + train config, model source, data stats
    train_log.jsonl                               one JSON object per logged step
    metrics.json                                  steps, runtime, throughput, final logged values
    eval.json, eval_pairs.jsonl                   validation metrics and the exact pairs
    test_pairs.jsonl, test.json                   the test pairs (saved at training time, not evaluated)
                                                  and their metrics (only for runs chosen on validation)
    eval_<slug>.json, test_<slug>.json            metrics on another dataset (`preftune eval --dataset`)
    judge.json                                    `preftune judge`'s result (validation posts)
    judge_test.json                               `preftune judge --split test`'s result (test posts)
Light on purpose: no torch, no transformers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
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
# A folder is written as ROOT/NAME.partial/ and renamed to ROOT/NAME/ only when every file is in place,
# so a folder with its final name is always complete (runs and reward models alike).


def partial_of(final: Path) -> Path:
    final = Path(final)
    return final.with_name(final.name + PARTIAL_SUFFIX)


def check_destination(final: Path, overwrite: bool) -> None:
    """Refuse to replace an existing ROOT/NAME unless --overwrite: call before any work."""
    final = Path(final)
    if final.exists() and not overwrite:
        raise PreftuneError(f"{final} already exists; pass --overwrite to replace it")
    if final.exists() and not final.is_dir():
        raise PreftuneError(f"{final} exists and is a file, not a folder; move it away first")


def begin_partial(root: Path, name: str, overwrite: bool, resume: bool = False) -> Path:
    """ROOT/NAME.partial, ready to write into. Refuses when ROOT/NAME exists and not `overwrite`. An
    existing NAME.partial is kept as it is when `resume` (an interrupted run continuing from its
    checkpoint), and otherwise emptied (a leftover of an interrupted attempt)."""
    final = Path(root) / name
    check_destination(final, overwrite)
    partial = partial_of(final)
    if partial.exists() and not resume:
        logger.info(f"restart: {partial} holds no complete checkpoint of these settings; starting it over")
        shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
    try:
        partial.mkdir(parents=True, exist_ok=resume)
    except OSError as e:
        raise PreftuneError(f"cannot create {partial} ({e.strerror or e}); check --output-dir") from None
    return partial


def finish_partial(partial: Path) -> Path:
    """Drop the checkpoints of NAME.partial (kept until now so a kill during evaluation resumes), then
    rename it to NAME, replacing an older NAME (begin_partial checked --overwrite). Returns NAME."""
    partial = Path(partial)
    if not partial.name.endswith(PARTIAL_SUFFIX):
        raise ValueError(f"{partial} is not a NAME{PARTIAL_SUFFIX} folder")
    final = partial.with_name(partial.name[: -len(PARTIAL_SUFFIX)])
    shutil.rmtree(partial / CHECKPOINTS_DIR, ignore_errors=True)
    if final.exists():  # --overwrite
        shutil.rmtree(final)
    partial.rename(final)
    return final


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
        raise PreftuneError(f"{path}: expected a JSON object, got {_json_kind(value)}; the file is damaged")
    return value


def _json_kind(value: Any) -> str:
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
        want = "a number" if set(kinds) == {int, float} else " or ".join(_json_kind(k()) for k in kinds)
        got = "null" if value is None else f"{_json_kind(value)} {str(value)[:40]!r}"
        raise PreftuneError(f"{path}: key '{name}' must be {want}, got {got}")
    return value


# Checkers for the values of a result file: each returns the value (NaN/±inf/null → None: a gap the
# readers show as "–") or raises naming the file and key. Keys a file lacks (older preftune) are gaps.


def _damaged(path: Path, key: str, want: str, value: Any) -> PreftuneError:
    return PreftuneError(f"{path}: key '{key}' must be {want} or null, got {_json_kind(value)} {str(value)[:40]!r}; "
                         "the file is damaged: re-create it (`preftune eval RUN` rewrites eval.json)")


def _number(value: Any, path: Path, key: str) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _damaged(path, key, "a number", value)
    return value if math.isfinite(value) else None


def _count(value: Any, path: Path, key: str) -> int | None:
    value = _number(value, path, key)
    if value is not None and (value < 0 or value != int(value)):
        raise _damaged(path, key, "a count (an integer ≥ 0)", value)
    return None if value is None else int(value)


def _text(value: Any, path: Path, key: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _damaged(path, key, "text", value)
    return value


def _interval(value: Any, path: Path, key: str) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _damaged(path, key, "a [low, high] interval", value)
    low, high = (_number(v, path, f"{key}[{i}]") for i, v in enumerate(value))
    return None if low is None or high is None else [low, high]


def _object(value: Any, path: Path, key: str) -> dict | None:
    if value is not None and not isinstance(value, dict):
        raise _damaged(path, key, "an object", value)
    return value


STRATUM = {"n": _count, "accuracy": _number, "ci95": _interval}


def _stratum(value: Any, path: Path, key: str) -> dict | None:
    value = _object(value, path, key)
    return None if value is None else _checked(value, STRATUM, path, key)


def _strata(value: Any, path: Path, key: str) -> dict | None:
    value = _object(value, path, key)
    return None if value is None else {str(g): _stratum(v, path, f"{key}.{g}") for g, v in value.items()}


def _numbers(value: Any, path: Path, key: str) -> dict | None:
    value = _object(value, path, key)
    return None if value is None else {k: _number(v, path, f"{key}.{k}") for k, v in value.items()}


EVAL_SCHEMA = {
    **dict.fromkeys(("split", "dataset", "length_unit", "fingerprint", "reward"), _text),
    **dict.fromkeys(("n", "posts", "ties", "chosen_shorter_n", "nonfinite_pairs"), _count),
    **dict.fromkeys(("beta", "accuracy", "mean_margin", "mean_chosen_reward", "mean_rejected_reward", "mean_logp_drift",
                     "mean_abs_logp_drift_per_token", "reference_logp_accuracy", "longer_wins_baseline",
                     "chosen_shorter_accuracy", "length_balanced_accuracy", "ld_alpha"), _number),
    **dict.fromkeys(("accuracy_ci95", "length_balanced_ci95"), _interval),
    **dict.fromkeys(("chosen_longer", "chosen_shorter", "equal_length"), _stratum),
    "accuracy_by_confidence": _strata,
    "selection": _object,
}
METRICS_SCHEMA = {
    **dict.fromkeys(("steps", "train_pairs", "train_tokens"), _count),
    **dict.fromkeys(("train_runtime_s", "tokens_per_s", "pairs_per_s"), _number),
    "final": _numbers,
}


def _checked(obj: dict, schema: dict, path: Path, where: str = "") -> dict:
    """obj with every key of the schema it holds checked (keys outside the schema pass unchanged)."""
    return {k: schema[k](v, path, f"{where}.{k}" if where else k) if k in schema else v for k, v in obj.items()}


def read_eval(path: Path) -> dict | None:
    """A result file (eval.json, test.json, eval_<slug>.json), checked; None when there is none. An
    older preftune's file holds the chosen-shorter stratum as flat keys: read as the stratum it is."""
    obj = read_json(path, missing_ok=True)
    if obj is None:
        return None
    result = _checked(obj, EVAL_SCHEMA, Path(path))
    if "accuracy_ci95" not in result:
        result["accuracy_ci95"] = _wilson(result.get("accuracy"), result.get("n"))
    n, accuracy = result.get("chosen_shorter_n"), result.get("chosen_shorter_accuracy")
    if result.get("chosen_shorter") is None and n is not None:
        result["chosen_shorter"] = {"n": n, "accuracy": accuracy, "ci95": _wilson(accuracy, n)}
    return result


def _wilson(accuracy: float | None, n: int | None) -> list[float] | None:
    """The Wilson interval of an accuracy over n pairs (exact: accuracy·n pairs were right)."""
    from preftune.stats import wilson_interval

    ci = wilson_interval(accuracy * n, n) if accuracy is not None and n else None
    return list(ci) if ci else None


def read_metrics(path: Path) -> dict | None:
    """metrics.json, checked; None when there is none."""
    obj = read_json(path, missing_ok=True)
    return None if obj is None else _checked(obj, METRICS_SCHEMA, Path(path))


def read_judge(path: Path) -> dict | None:
    """judge.json as an object (judge_summary reads its shape leniently); None when there is none."""
    return read_json(path, missing_ok=True)


def read_train_log(path: Path) -> list[dict]:
    """The per-step training log: records with an integer "step" and the finite numbers logged with it.
    A damaged line (torn by a kill, not an object, no step) is left out — a gap in the curves — and one
    warning names the file and the first such line; a non-number or NaN value is a missing point."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return []
    except OSError as e:
        logger.warning(f"warning: {path}: cannot read ({e.strerror or e}); its curves are left out")
        return []
    records, bad = [], []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            bad.append(f"line {lineno}: not valid JSON" + (" (torn: written when the run stopped?)"
                                                           if lineno == len(lines) else ""))
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, bool) or not isinstance(step, int):
            bad.append(f"line {lineno}: " + ("no integer 'step'" if isinstance(record, dict) else
                                               f"{_json_kind(record)}, not an object"))
            continue
        records.append({"step": step, **{k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))
                                         and not isinstance(v, bool) and math.isfinite(v)}})
    if bad:
        logger.warning(f"warning: {path}: {len(bad)} damaged line(s) left out of the curves ({bad[0]})")
    return records


def read_pairs(path: Path) -> list:
    """The pairs of a JSONL file the run wrote (eval_pairs.jsonl, test_pairs.jsonl)."""
    from preftune.data.prepare import read_jsonl

    path = Path(path)
    if not path.is_file():
        raise PreftuneError(f"{path}: not found (the run folder is incomplete)")
    try:
        return read_jsonl(path)
    except PreftuneError:
        raise
    except (OSError, UnicodeDecodeError) as e:
        raise PreftuneError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    except (TypeError, AttributeError, ValueError) as e:  # a line that is JSON but not a pair object
        raise PreftuneError(f"{path}: a line is not a pair object ({type(e).__name__}: {str(e)[:60]}); "
                            "the file is damaged") from None


# ---- run folders ---------------------------------------------------------------------------------


def is_finished_run(path: Path) -> bool:
    """A finished run folder of any kind (DPO or SFT): a folder not named NAME.partial, holding
    preftune_config.json (written when the run is complete)."""
    path = Path(path)
    return path.is_dir() and not path.name.endswith(PARTIAL_SUFFIX) and (path / CONFIG_FILE).is_file()


def is_run_dir(path: Path) -> bool:
    """A finished DPO run folder: a finished run that is not an SFT run (`preftune sft` writes its folders
    beside the DPO runs; they have no eval to rank)."""
    return is_finished_run(path) and run_kind(Path(path)) != SFT_KIND


# ---- lineage: base → SFT → DPO -------------------------------------------------------------------
# preftune_config.json's "chain" lists how a run's weights came about, oldest first: {"kind": "base",
# "model": spec}, then one entry per preftune run ({"kind": "sft"|"dpo", "run": NAME, "path": ..., settings}).
# Folders written before chains existed have none: `chain_of` rebuilds [base, dpo] from their config.

SFT_KIND = "sft"
CHAIN_LABELS = {"base": "base", "sft": "SFT", "dpo": "DPO"}


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
    path set to where it is now), else the model itself as the base."""
    folder = Path(spec).expanduser()
    config = None
    if folder.is_dir():
        try:
            config = read_json(folder / CONFIG_FILE, missing_ok=True)
        except PreftuneError:
            config = None
    if not config:
        return [{"kind": "base", "model": spec}]
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
    return [p for p in children if is_run_dir(p)], [p for p in children if p.name.endswith(PARTIAL_SUFFIX)]


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

    @property
    def chain(self) -> list[dict]:
        """How its weights came about, oldest first (base → [SFT →] DPO; see `chain_of`)."""
        return chain_of(self.config, self.name)

    @property
    def dataset(self) -> str:
        return str(self.config["data"].get("dataset", "?"))

    @property
    def seed(self) -> int:
        """The run's data seed (what --max-eval-pairs samples with; checked by open_run)."""
        return int(self.config["data"].get("seed", 42))

    def data_config(self):
        """The run's DataConfig. Runs from before the test split had none: test_fraction 0 reproduces
        their train/validation split exactly."""
        from preftune.config import DataConfig

        data = dict(self.config["data"])
        data.setdefault("test_fraction", 0.0)
        where = f"{self.path / CONFIG_FILE}: key 'data'"
        try:
            return DataConfig(**data)
        except TypeError as e:
            raise PreftuneError(f"{where} does not hold valid data settings ({e})") from None
        except PreftuneError as e:
            raise PreftuneError(f"{where}: {e}") from None

    def file(self, name: str) -> Path:
        return self.path / name

    def require_model(self) -> None:
        """The run holds a loadable model and tokenizer (config.json, *.safetensors, tokenizer files)."""
        missing = [what for what, present in (
            (MODEL_CONFIG_FILE, (self.path / MODEL_CONFIG_FILE).is_file()),
            ("model weights (*.safetensors)", any(self.path.glob("*.safetensors"))),
            ("a tokenizer (tokenizer.json or tokenizer_config.json)",
             any((self.path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))))
            if not present]
        if missing:
            raise PreftuneError(f"{self.path} is not a finished run folder: it lacks {', '.join(missing)}")

    # what the run holds, checked (None: the file is absent)
    def metrics(self) -> dict | None:
        return read_metrics(self.path / METRICS_FILE)

    def evaluation(self, split: str = "validation", dataset: str | None = None) -> dict | None:
        return read_eval(self.path / result_file(split, dataset))

    def judge(self) -> dict | None:
        return read_judge(self.path / JUDGE_FILE)

    def train_log(self) -> list[dict]:
        return read_train_log(self.path / TRAIN_LOG_FILE)

    def results(self) -> list[tuple[str, dict]]:
        """Every result file of the run (eval.json, test.json, eval_<slug>.json, …), checked, by name."""
        names = sorted(p.name for p in self.path.glob("*.json") if re.fullmatch(r"(eval|test)(_.+)?\.json", p.name))
        return [(n, r) for n in names if (r := read_eval(self.path / n)) is not None]

    @property
    def has_test_split(self) -> bool:
        """False for runs trained before preftune kept a test split (no test_pairs.jsonl)."""
        return (self.path / TEST_PAIRS_FILE).is_file()

    def eval_pairs(self) -> list:
        """The validation pairs the run was evaluated on (eval_pairs.jsonl)."""
        return read_pairs(self.path / EVAL_PAIRS_FILE)

    def test_pairs(self) -> list:
        """The test pairs saved at training time; an error for runs from before the test split."""
        if not self.has_test_split:
            raise PreftuneError(f"{self.path} has no {TEST_PAIRS_FILE}: it was trained before preftune kept a test "
                                "split. Evaluate it on a dataset instead (`preftune eval RUN --dataset SRC`).")
        return read_pairs(self.path / TEST_PAIRS_FILE)

    def pairs(self, split: str) -> list:
        return self.eval_pairs() if split == "validation" else self.test_pairs()

    def fingerprint(self, split: str) -> str:
        """What a result on the run's own `split` depends on: the pairs' bytes and the weights' sizes and
        modification times. A result file recording another fingerprint is stale."""
        digest = hashlib.sha256()
        pairs = self.path / pairs_file(split)
        digest.update(pairs.read_bytes() if pairs.is_file() else b"")
        for weights in sorted(self.path.glob("*.safetensors")):
            stat = weights.stat()
            digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]


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
    data = require_key(config, "data", dict, file)
    if "seed" in data:
        require_key(data, "seed", int, file, "data")
    train = require_key(config, "train", dict, file)
    beta = require_key(train, "beta", (int, float), file, "train")
    if not (math.isfinite(beta) and beta > 0):
        raise PreftuneError(f"{file}: key 'train.beta' must be a number > 0, got {beta}; the file is damaged")
    require_key(train, "max_length", int, file, "train")
    require_key(train, "model", str, file, "train")
    if config.get("reference_model") is not None:
        require_key(config, "reference_model", str, file)
    return Run(path, config)


def judge_summary(judge: dict | None) -> dict:
    """The headline of a judge.json for the leaderboard and the model card: the greedy tuned-vs-base
    win rate, its 95% CI, the length-controlled win rate, n, and whether the verdict is weak. Read
    leniently: a missing or damaged value is a gap (None), shown as "–"."""
    judge = judge if isinstance(judge, dict) else {}
    decodings = judge.get("decodings") if isinstance(judge.get("decodings"), dict) else {}
    greedy = decodings.get("greedy") if isinstance(decodings.get("greedy"), dict) else {}
    tb = greedy.get("tuned_vs_base") if isinstance(greedy.get("tuned_vs_base"), dict) else {}
    return {"judge_win_rate": _or_gap(_number, tb.get("win_rate")),
            "judge_win_rate_ci95": _or_gap(_interval, tb.get("ci95")),
            "judge_length_controlled_win_rate": _or_gap(_number, tb.get("length_controlled_win_rate")),
            "judge_n": _or_gap(_count, tb.get("n")),
            "judge_verdict_strength": _or_gap(_text, judge.get("verdict_strength")),
            "judge_rm_accuracy": _or_gap(_number, judge.get("rm_accuracy"))}


def _or_gap(check, value: Any) -> Any:
    try:
        return check(value, Path(JUDGE_FILE), "")
    except PreftuneError:
        return None
