"""Reading what a run folder holds, validated: result files (eval/test/judge), metrics, the training
log, the saved pairs, and `open_run`, the checked entry every reader (eval, report, push, judge, serve)
goes through. A damaged file is one clear line naming the file and key (or a gap the caller shows as
"–"), never a traceback. File names and primitives: runs/folder.py. Light: no torch, no transformers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preftune.config.registries import PRECISIONS
from preftune.errors import PreftuneError
from preftune.runs.folder import (
    CONFIG_FILE,
    EVAL_PAIRS_FILE,
    JUDGE_FILE,
    METRICS_FILE,
    MODEL_CONFIG_FILE,
    TEST_PAIRS_FILE,
    TRAIN_LOG_FILE,
    chain_of,
    check_count,
    check_interval,
    check_number,
    check_object,
    check_text,
    final_of,
    is_partial,
    json_kind,
    pairs_file,
    read_json,
    require_key,
    result_file,
)

logger = logging.getLogger(__name__)


STRATUM = {"n": check_count, "accuracy": check_number, "ci95": check_interval}


def _stratum(value: Any, path: Path, key: str) -> dict | None:
    value = check_object(value, path, key)
    return None if value is None else _checked(value, STRATUM, path, key)


def _strata(value: Any, path: Path, key: str) -> dict | None:
    value = check_object(value, path, key)
    return None if value is None else {str(g): _stratum(v, path, f"{key}.{g}") for g, v in value.items()}


def _numbers(value: Any, path: Path, key: str) -> dict | None:
    value = check_object(value, path, key)
    return None if value is None else {k: check_number(v, path, f"{key}.{k}") for k, v in value.items()}


EVAL_SCHEMA = {
    **dict.fromkeys(("split", "dataset", "length_unit", "fingerprint", "reward"), check_text),
    **dict.fromkeys(("n", "posts", "ties", "chosen_shorter_n", "nonfinite_pairs"), check_count),
    **dict.fromkeys(("beta", "accuracy", "mean_margin", "mean_chosen_reward", "mean_rejected_reward", "mean_logp_drift",
                     "mean_abs_logp_drift_per_token", "reference_logp_accuracy", "longer_wins_baseline",
                     "chosen_shorter_accuracy", "length_balanced_accuracy", "ld_alpha"), check_number),
    **dict.fromkeys(("accuracy_ci95", "length_balanced_ci95"), check_interval),
    **dict.fromkeys(("chosen_longer", "chosen_shorter", "equal_length"), _stratum),
    "accuracy_by_confidence": _strata,
    "selection": check_object,
}
METRICS_SCHEMA = {
    **dict.fromkeys(("steps", "train_pairs", "train_tokens"), check_count),
    **dict.fromkeys(("train_runtime_s", "tokens_per_s", "pairs_per_s"), check_number),
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
                                               f"{json_kind(record)}, not an object"))
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
    def precision(self) -> str | None:
        """The precision the run trained and was validated in (fp32, bf16, fp16); None when its folder
        predates the record and its setting was 'auto' (what that meant depended on the machine)."""
        used = self.config.get("precision") or self.train.get("precision")
        return used if used in PRECISIONS else None

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
        """The run's own pairs of `split`, to score: none is an error naming the flag that would give some."""
        pairs = self.eval_pairs() if split == "validation" else self.test_pairs()
        if not pairs:
            raise PreftuneError(self.no_pairs(split))
        return pairs

    def no_pairs(self, split: str) -> str:
        """Why the run has no `split` pairs, and which flag of `train` would have given it some."""
        flag, key = ("--eval-fraction", "eval_fraction") if split == "validation" else ("--test-fraction", "test_fraction")
        fraction = self.config["data"].get(key)
        if not fraction:
            return (f"{self.path} has no {split} split: it was trained with {flag} 0 ({pairs_file(split)} is empty); "
                    f"train it again with {flag} > 0 (e.g. 0.1) for {split} pairs, or use --dataset SRC")
        return (f"{self.path} has no {split} pairs: {flag} {fraction} of its data gave none ({pairs_file(split)} is "
                f"empty); train it again with a larger {flag} or more data, or use --dataset SRC")

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
    if finished and is_partial(path):
        raise PreftuneError(f"{path} is an unfinished run (interrupted or still training): re-run its train/sweep "
                            f"command to complete it, then use {final_of(path).name}")
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


