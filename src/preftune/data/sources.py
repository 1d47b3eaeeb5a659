"""Sources: where raw rows come from. Each yields `Record`s (a dict row, its file, its line/row number).

A SRC is one of: the name of a shipped sample, a local file, a local folder of files, or a hub id.
Files are read as a stream, line by line, so memory stays bounded on large JSON-lines files.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from preftune.errors import DataError, PreftuneError

# name → file inside preftune/data/sample/ (see PROVENANCE.md there)
SHIPPED: dict[str, str] = {"tldr-sample": "tldr_comparisons.jsonl.gz"}

# hub id → the config to load when --hub-config is not given
HUB_DEFAULT_CONFIGS: dict[str, str] = {"openai/summarize_from_feedback": "comparisons"}

DATA_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


@dataclass(frozen=True)
class Record:
    row: dict
    source: str  # file path or hub id[split]
    line: int  # 1-based line (JSON lines) or row number


def shipped_path(name: str) -> Path:
    return Path(str(resources.files("preftune.data") / "sample" / SHIPPED[name]))


def describe(spec: str) -> str:
    """A one-line description of where SRC resolves to (printed before loading)."""
    if spec in SHIPPED:
        return f"shipped sample '{spec}' ({shipped_path(spec).name}, see preftune/data/sample/PROVENANCE.md)"
    if Path(spec).exists():
        return f"local {'folder' if Path(spec).is_dir() else 'file'} {spec}"
    return f"hub dataset {spec}"


def iter_records(spec: str, hub_config: str | None = None, split: str = "train") -> Iterator[Record]:
    """Yield every row of SRC, in a deterministic order (folders: files sorted by name)."""
    if spec in SHIPPED:
        yield from _iter_file(shipped_path(spec), label=f"{spec}/{SHIPPED[spec]}")
        return
    path = Path(spec)
    if path.is_dir():
        for file in data_files(path):
            yield from _iter_file(file)
    elif path.is_file():
        yield from _iter_file(path)
    elif _looks_like_hub_id(spec):
        yield from _iter_hub(spec, hub_config or HUB_DEFAULT_CONFIGS.get(spec), split)
    else:
        raise PreftuneError(
            f"dataset '{spec}' not found: it is not a file, a folder, a shipped sample "
            f"({', '.join(SHIPPED)}) or a hub id (owner/name)"
        )


def data_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(DATA_SUFFIXES))
    if not files:
        raise PreftuneError(f"{folder}: no data files ({', '.join(DATA_SUFFIXES)}) in this folder")
    return files


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def _open_text_lines(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        yield from fh


def _iter_file(path: Path, label: str | None = None) -> Iterator[Record]:
    """JSON lines (also a .json file holding JSON lines, as OpenAI's files do) or a JSON array."""
    source = label or str(path)
    lines = _open_text_lines(path)
    lineno = 0
    try:
        for lineno, raw in enumerate(lines, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(source, lineno, None, f"not valid UTF-8 (byte {e.start}): {e.reason}") from None
            if not text.strip():
                continue
            if lineno == 1 and text.lstrip().startswith("["):
                yield from _iter_json_array(path, source)
                return
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(source, lineno, None, f"malformed JSON line ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(source, lineno, None, f"expected a JSON object, got {type(row).__name__}")
            yield Record(row, source, lineno)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(source, lineno + 1, None, f"corrupt or truncated gzip data ({e})") from None
    if lineno == 0:
        raise DataError(source, None, None, "file is empty: no rows")


def _iter_json_array(path: Path, source: str) -> Iterator[Record]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        try:
            rows = json.load(fh)
        except json.JSONDecodeError as e:
            raise DataError(source, e.lineno, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(source, i, None, f"row {i}: expected a JSON object, got {type(row).__name__}")
        yield Record(row, f"{source}[row]", i)


def _iter_hub(hub_id: str, config: str | None, split: str) -> Iterator[Record]:
    import datasets  # heavy import, only when a hub id is used

    label = f"{hub_id}[{config or 'default'}/{split}]"
    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "could not load"
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = (
            "offline mode is on and it is not in the local cache"
            if offline
            else "the hub could not be reached or the dataset/config/split does not exist"
        )
        raise PreftuneError(
            f"cannot load hub dataset {label}: {hint} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "Download it where there is network, or pass a local file/folder with --dataset."
        ) from None
    for i, row in enumerate(ds, start=1):
        yield Record(dict(row), label, i)
