"""Sources: where raw rows come from. Each yields `Record`s (a dict row, its file, its line/row number).

A SRC is one of: the name of a shipped sample, a local file (JSON lines, a JSON array, CSV, Parquet;
JSON and CSV optionally gzipped), a folder of such files, a folder written by `datasets`'
`save_to_disk`, or a hub id. Files are read as a stream (JSON lines and CSV line by line, Parquet in
record batches, `datasets` folders memory-mapped), so memory stays bounded on large files; a JSON
array is the exception (parsed whole: use JSON lines for big data).
`Record.line` is the 1-based line in JSON-lines and CSV files (for CSV, the line the record starts
on) and the row number elsewhere (sources labelled `FILE[row]`).
"""

from __future__ import annotations

import csv
import gzip
import io
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

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet",)
DATA_SUFFIXES = JSON_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES


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
    if is_saved_dataset(Path(spec)):
        return f"saved `datasets` folder {spec}"
    if Path(spec).exists():
        return f"local {'folder' if Path(spec).is_dir() else 'file'} {spec}"
    return f"hub dataset {spec}"


def iter_records(spec: str, hub_config: str | None = None, split: str = "train") -> Iterator[Record]:
    """Yield every row of SRC, in a deterministic order (folders: files sorted by name)."""
    if spec in SHIPPED:
        yield from iter_file(shipped_path(spec), label=f"{spec}/{SHIPPED[spec]}")
        return
    path = Path(spec)
    if is_saved_dataset(path):
        yield from _iter_saved(path, split)
    elif path.is_dir():
        for file in data_files(path):
            yield from iter_file(file)
    elif path.is_file():
        yield from iter_file(path)
    elif _looks_like_hub_id(spec):
        yield from _iter_hub(spec, hub_config or HUB_DEFAULT_CONFIGS.get(spec), split)
    else:
        raise PreftuneError(
            f"dataset '{spec}' not found: it is not a file, a folder, a shipped sample "
            f"({', '.join(SHIPPED)}) or a hub id (owner/name)"
        )


def data_files(folder: Path) -> list[Path]:
    """The data files in a folder and its subfolders (e.g. HH-RLHF's helpful-base/test.jsonl.gz, ...),
    sorted by path; hidden files and folders are ignored."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(DATA_SUFFIXES)
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise PreftuneError(f"{folder}: no data files ({', '.join(DATA_SUFFIXES)}) in this folder or its subfolders")
    return files


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def _open_text_lines(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as fh:
        yield from fh


def iter_file(path: Path, label: str | None = None) -> Iterator[Record]:
    """The rows of one file, by suffix: CSV, Parquet, else JSON (lines or array)."""
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return _iter_csv(path, label or str(path))
    if name.endswith(PARQUET_SUFFIXES):
        return _iter_parquet(path, label or str(path))
    return _iter_json_file(path, label)


def _iter_json_file(path: Path, label: str | None = None) -> Iterator[Record]:
    """JSON lines (also a .json file holding JSON lines, as OpenAI's files do) or a JSON array."""
    source = label or str(path)
    lines = _open_text_lines(path)
    lineno = rows = 0
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
            rows += 1
            yield Record(row, source, lineno)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(source, lineno + 1, None, f"corrupt or truncated gzip data ({e})") from None
    if lineno == 0:
        raise DataError(source, None, None, "file is empty: no rows")
    if rows == 0:
        raise DataError(source, None, None, f"no rows: its {lineno} line(s) are blank")


def _iter_json_array(path: Path, source: str) -> Iterator[Record]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        try:
            rows = json.load(fh)
        except json.JSONDecodeError as e:
            raise DataError(source, e.lineno, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(rows, list):
        raise DataError(source, None, None, f"expected a JSON array of objects or JSON lines, got {type(rows).__name__}")
    if not rows:
        raise DataError(source, None, None, "no rows: the JSON array is empty")
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(source, i, None, f"row {i}: expected a JSON object, got {type(row).__name__}")
        yield Record(row, f"{source}[row]", i)


def _decoded_lines(path: Path, source: str, counter: list[int]) -> Iterator[str]:
    """Text lines of a (gzipped) file, decoded one at a time so an error names its line; counter[0]
    is the number of lines read so far."""
    try:
        for raw in _open_text_lines(path):
            counter[0] += 1
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(source, counter[0], None, f"not valid UTF-8 (byte {e.start}): {e.reason}") from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(source, counter[0] + 1, None, f"corrupt or truncated gzip data ({e})") from None


def _iter_csv(path: Path, source: str) -> Iterator[Record]:
    """CSV with a header row; quoted fields may hold newlines and commas. Cells are strings."""
    csv.field_size_limit(2**31 - 1)  # posts are longer than the default 128 KiB limit allows
    counter = [0]
    reader = csv.reader(_decoded_lines(path, source, counter), strict=True)
    header, rows, start = None, 0, 1
    try:
        for cells in reader:
            line, start = start, counter[0] + 1  # this record's first line; the next one's
            if not cells:
                continue  # a blank line
            if header is None:
                header = [c.strip() for c in cells]
                dupes = sorted({c for c in header if header.count(c) > 1})
                if dupes:
                    raise DataError(source, line, dupes[0], "duplicate column in the header row")
                continue
            if len(cells) != len(header):
                raise DataError(source, line, None, f"row has {len(cells)} fields, the header has {len(header)} "
                                f"({', '.join(header)})")
            rows += 1
            yield Record(dict(zip(header, cells)), source, line)
    except csv.Error as e:
        raise DataError(source, start, None, f"malformed CSV ({e}; an unclosed quote?)") from None
    if header is None:
        raise DataError(source, None, None, "file is empty: no rows")
    if rows == 0:
        raise DataError(source, None, None, "no rows: the CSV has a header only")


def _iter_parquet(path: Path, source: str) -> Iterator[Record]:
    import pyarrow.parquet as pq  # installed with datasets

    try:
        file = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
        raise DataError(source, None, None, f"cannot read as Parquet ({str(e).splitlines()[0][:160]})") from None
    if file.metadata.num_rows == 0:
        raise DataError(source, None, None, "no rows: the Parquet file is empty")
    i = 0
    for batch in file.iter_batches(batch_size=1024):  # bounded memory: one record batch at a time
        for row in batch.to_pylist():
            i += 1
            yield Record(row, f"{source}[row]", i)


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


def _iter_saved(path: Path, split: str) -> Iterator[Record]:
    import datasets  # heavy import, only for such folders

    try:
        ds = datasets.load_from_disk(str(path))  # memory-mapped Arrow: rows are read as iterated
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "could not load"
        raise DataError(str(path), None, None, f"cannot load this saved `datasets` folder ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160]})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise PreftuneError(f"{path}: no split '{split}' in this saved DatasetDict; its splits: "
                                f"{', '.join(ds)} (pass --split)")
        ds = ds[split]
    label = f"{path}[{split}]" if (path / "dataset_dict.json").is_file() else str(path)
    if len(ds) == 0:
        raise DataError(label, None, None, "no rows")
    for i, row in enumerate(ds, start=1):
        yield Record(dict(row), f"{label}[row]" if "[" not in label else label, i)


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
