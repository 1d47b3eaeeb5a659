"""The prepared folder written by `preftune data prepare` and read back as is by every verb:
train.jsonl, eval.jsonl (the validation split, by its name before the test split existed), test.jsonl
and stats.json, whose marker says the folder is one. Reading checks every line (a damaged file is one
error naming file, line and field) and the folder as a whole (missing splits, no training pairs, a
post in two splits); a folder from before the test split loads with an empty test split."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preftune.data.files import JsonFieldError, first_line, loads, text_lines
from preftune.data.pairs import CUTS, Pair
from preftune.data.rows import RowError, group_id, preview, require, wrong_type
from preftune.data.sources import SHIPPED, path_kind
from preftune.data.split import split_stats
from preftune.errors import DataError, PreftuneError

logger = logging.getLogger(__name__)

PREPARED_MARKER = "preftune_prepared"  # key in stats.json of a `preftune data prepare` folder
SPLIT_FILES = {"train": "train.jsonl", "validation": "eval.jsonl", "test": "test.jsonl"}  # eval.jsonl: its old name
STATS_FILE = "stats.json"


@dataclass
class Prepared:
    train: list[Pair]
    validation: list[Pair]
    test: list[Pair]
    stats: dict

    @property
    def eval(self) -> list[Pair]:
        """The validation split, by its name before the test split existed."""
        return self.validation

    def splits(self) -> dict[str, list[Pair]]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


def describe_splits(prepared: Prepared) -> str:
    return ", ".join(f"{name} {len(pairs):,} pairs / {len({p.post_id for p in pairs}):,} posts"
                     for name, pairs in prepared.splits().items())


def write_jsonl(path: Path, pairs: Iterable[Pair]) -> None:
    """One pair per line, written to a temporary file then renamed: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for p in pairs:
                fh.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def read_jsonl(path: Path) -> list[Pair]:
    """The pairs of a prepared split file (train.jsonl, eval.jsonl, test.jsonl, a run's eval_pairs.jsonl),
    each checked: a damaged line is one error naming the file, line and field."""
    path, pairs = Path(path), []
    for lineno, text in text_lines(path, str(path)):
        if not text.strip():
            continue
        try:
            row = loads(text)
        except JsonFieldError as e:
            raise DataError(str(path), lineno, e.key, f"{e.message}; the file is damaged: prepare the data "
                            "again") from None
        except json.JSONDecodeError as e:
            raise DataError(str(path), lineno, None, f"malformed JSON line ({e.msg}): the file is damaged; prepare "
                            "the data again") from None
        pairs.append(pair_from_row(row, str(path), lineno))
    return pairs


def pair_from_row(row: Any, source: str, line: int) -> Pair:
    """A Pair from one line of a split file, its fields checked (older files lack cut/turns: defaults)."""
    if not isinstance(row, dict):
        raise DataError(source, line, None, f"expected a JSON object (a pair), got {type(row).__name__}")
    try:
        for key in ("prompt", "chosen", "rejected"):
            require(row, key, str, key)
        group_id(require(row, "post_id", (str, int), "post_id"), "post_id")
        for key, kind in (("source", str), ("meta", dict), ("cut", str), ("body_span", list), ("turns", list)):
            if row.get(key) is not None:
                require(row, key, kind, key)
        span, turns = row.get("body_span"), row.get("turns") or []
        if span is not None and not (len(span) == 2 and all(_index(v) for v in span) and span[0] <= span[1]):
            raise wrong_type("body_span", "[start, end] character offsets", span)
        if not all(_index(t) for t in turns):
            raise wrong_type("turns", "a list of character offsets", turns)
        if row.get("cut") not in (None, *CUTS):
            raise RowError("cut", f"unknown trimming policy {preview(row['cut'])}; expected one of: {', '.join(CUTS)}")
    except RowError as e:
        raise DataError(source, line, e.field, f"{e.message}: the file is damaged; prepare the data again") from None
    return Pair.from_json(row)


def _index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def write_prepared(prepared: Prepared, out: Path) -> None:
    """train.jsonl, eval.jsonl (validation), test.jsonl, then stats.json: the marker that makes the folder a
    prepared folder is written last (and removed first), so an interrupted write is never taken for one."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / STATS_FILE).unlink(missing_ok=True)
        for name, pairs in prepared.splits().items():
            write_jsonl(out / SPLIT_FILES[name], pairs)
        tmp = out / f".{STATS_FILE}.tmp"
        tmp.write_text(json.dumps(prepared.stats, indent=2) + "\n", encoding="utf-8")
        tmp.replace(out / STATS_FILE)
    except OSError as e:
        raise PreftuneError(f"{out}: cannot write the prepared folder ({e.strerror or e}): choose another "
                            "--out") from None


def check_out(out: str, dataset: str) -> Path:
    """The --out folder of `data prepare`, refused before any work when writing there would fail or
    destroy something: a file, an empty name, the dataset's own folder (the prepared files would be read
    back as data) or one of its files, or a folder holding split files preftune did not write."""
    if not out or not out.strip():
        raise PreftuneError("--out is empty: name the folder for train.jsonl, eval.jsonl, test.jsonl, stats.json")
    path = Path(out).expanduser()
    kind = path_kind(path)
    if kind not in ("dir", "missing"):
        raise PreftuneError(f"--out {out} is {'a file' if kind == 'file' else 'not a folder'}: name a folder")
    target = path.resolve()
    source = Path(dataset).expanduser()
    if dataset.strip() and dataset not in SHIPPED and path_kind(source) in ("dir", "file"):
        src = source.resolve()
        if path_kind(source) == "dir" and (target == src or src in target.parents):
            raise PreftuneError(f"--out {out} is inside --dataset {dataset}: the prepared files would be read back as "
                                "data; choose a folder outside it")
        if src.parent == target and src.name in (*SPLIT_FILES.values(), STATS_FILE):
            raise PreftuneError(f"--out {out} would overwrite the --dataset file {dataset}; choose another folder")
    if kind == "dir" and not is_prepared_dir(str(path)):
        clash = [n for n in (*SPLIT_FILES.values(), STATS_FILE) if (path / n).exists()]
        if clash:
            raise PreftuneError(f"--out {out} holds {', '.join(clash)}, not written by `preftune data prepare` "
                                "(no stats.json marker): choose another folder, or move those files")
    parent = next((p for p in (target, *target.parents) if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise PreftuneError(f"--out {out}: {parent} is a file, so the folder cannot be made: choose another --out")
    if not os.access(parent, os.W_OK):
        raise PreftuneError(f"--out {out}: {parent} is not writable: choose another folder")
    return path


def is_prepared_dir(spec: str) -> bool:
    """A folder written by `preftune data prepare`: its stats.json carries the marker. A folder with a
    stats.json that cannot be read next to a train.jsonl is a damaged prepared folder: an error, not
    raw data to re-split."""
    if not spec or not spec.strip():
        return False
    folder = Path(spec).expanduser()
    try:
        if not (folder / STATS_FILE).is_file():
            return False
    except OSError:
        return False
    try:
        return bool(_read_stats(folder).get(PREPARED_MARKER))
    except PreftuneError:
        if (folder / SPLIT_FILES["train"]).exists():
            raise
        return False


def _read_stats(folder: Path) -> dict:
    path = folder / STATS_FILE
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(str(path), None, None, f"cannot read the prepared folder's statistics ({first_line(e)}): "
                        "prepare the data again") from None
    if not isinstance(stats, dict):
        raise DataError(str(path), None, None, f"expected a JSON object, got {type(stats).__name__}: prepare the "
                        "data again")
    return stats


def load_prepared(folder: Path) -> Prepared:
    """A folder written by `preftune data prepare`: its split is used as is. A folder from before the test
    split (no test.jsonl) loads with an empty test split; without train.jsonl or eval.jsonl, with no
    training pairs, or with a post in two splits, it is an error."""
    stats = _read_stats(folder)
    splits: dict[str, list[Pair]] = {}
    for name, file in SPLIT_FILES.items():
        path = folder / file
        if path_kind(path) == "missing" and name == "test":
            logger.info(f"data: {folder} has no {file} (prepared before the test split existed): test is empty; "
                        "prepare the data again for one")
            splits[name] = []
            continue
        if path_kind(path) != "file":
            raise DataError(str(folder), None, None, f"incomplete prepared folder: no {file} ({name} split); prepare "
                            "the data again with `preftune data prepare`")
        splits[name] = read_jsonl(path)
    if not splits["train"]:
        raise DataError(str(folder / SPLIT_FILES["train"]), None, None, "no training pairs: prepare the data again")
    _check_disjoint(folder, splits)
    prepared = Prepared(splits["train"], splits["validation"], splits["test"], stats)
    for name, pairs in prepared.splits().items():  # old folders: the same keys as new ones
        if not isinstance(stats.get(name), dict):
            stats[name] = split_stats(pairs)
    stats.setdefault("eval", stats["validation"])
    logger.info(f"data: prepared folder {folder}: {describe_splits(prepared)} (split as prepared)")
    return prepared


def _check_disjoint(folder: Path, splits: dict[str, list[Pair]]) -> None:
    seen: dict[str, str] = {}
    for name, pairs in splits.items():
        for post in {p.post_id for p in pairs}:
            if post in seen:
                raise DataError(str(folder), None, None, f"post '{post[:40]}' is in both {seen[post]} and {name}: the "
                                "splits must not share posts; prepare the data again")
            seen[post] = name
