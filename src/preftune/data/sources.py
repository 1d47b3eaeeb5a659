"""Sources: where raw rows come from. Each yields `Record`s (a dict row, its file, its line/row number).

A SRC is one of: the name of a shipped sample, a local file (JSON lines, a JSON array, CSV, Parquet;
JSON and CSV optionally gzipped), a folder of such files, a folder written by `datasets`'
`save_to_disk`, or a hub id. Files are read as a stream (JSON lines and CSV line by line, Parquet in
record batches, `datasets` folders memory-mapped), so memory stays bounded on large files; a JSON
array is the exception (parsed whole: use JSON lines for big data).
`Record.line` is the 1-based line in JSON-lines and CSV files (for CSV, the line the record starts
on) and the row number elsewhere (sources labelled `FILE[row]`).

Whether SRC is a path or a hub id is `preftune.hubids`' one rule: a path that looks local but does not
exist is "not found" at once, never a Hub request. Everything the file system can refuse (a missing or
unreadable file or folder, a broken symbolic link, a device) is one line naming the path, never a
traceback and never a silently smaller dataset.
"""

from __future__ import annotations

import codecs
import csv
import errno
import gzip
import json
import logging
import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from preftune.errors import DataError, PreftuneError
from preftune.hubids import is_hub_id, looks_local

logger = logging.getLogger(__name__)

# name → file inside preftune/data/sample/ (see PROVENANCE.md there)
SHIPPED: dict[str, str] = {"tldr-sample": "tldr_comparisons.jsonl.gz"}

# hub id → the config to load when --hub-config is not given
HUB_DEFAULT_CONFIGS: dict[str, str] = {"openai/summarize_from_feedback": "comparisons"}

JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet",)
DATA_SUFFIXES = JSON_SUFFIXES + CSV_SUFFIXES + PARQUET_SUFFIXES

GZIP_MAGIC = b"\x1f\x8b"
UTF16_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
UTF8_BOM = "\ufeff"


@dataclass(frozen=True)
class Record:
    row: dict
    source: str  # file path or hub id[split]
    line: int  # 1-based line (JSON lines) or row number


def shipped_path(name: str) -> Path:
    return Path(str(resources.files("preftune.data") / "sample" / SHIPPED[name]))


# ---- what a local path is --------------------------------------------------------------------------


def path_kind(path: Path) -> str:
    """'file', 'dir', 'missing', 'broken link' or 'other' (a device, a FIFO, a socket). A path the file
    system refuses to look at (a parent without permission, a symlink loop) is one clear error."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return "broken link" if os.path.islink(path) else "missing"
        raise PreftuneError(f"{path}: cannot access ({e.strerror or e}): check the path and its permissions") from None
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def broken_link(path: Path, where: str = "") -> PreftuneError:
    try:
        target = f" → {os.readlink(path)}"
    except OSError:
        target = ""
    return PreftuneError(f"{path}: a broken symbolic link{target}{where}: fix the link or remove it")


def describe(spec: str) -> str:
    """A one-line description of where SRC resolves to (printed before loading); never raises."""
    if spec in SHIPPED:
        return f"shipped sample '{spec}' ({shipped_path(spec).name}, see preftune/data/sample/PROVENANCE.md)"
    path = Path(spec).expanduser()
    try:
        kind = path_kind(path)
    except PreftuneError:
        return f"local path {spec}"
    if kind == "dir":
        return f"saved `datasets` folder {spec}" if is_saved_dataset(path) else f"local folder {spec}"
    if kind == "file":
        return f"local file {spec}"
    return f"hub dataset {spec}" if kind == "missing" and is_hub_id(spec) else f"local path {spec}"


def iter_records(spec: str, hub_config: str | None = None, split: str = "train") -> Iterator[Record]:
    """Yield every row of SRC, in a deterministic order (folders: files sorted by path)."""
    if not spec or not spec.strip():
        raise PreftuneError("--dataset is empty: pass a file, a folder, a shipped sample "
                            f"({', '.join(SHIPPED)}) or a hub id (owner/name)")
    if spec in SHIPPED:
        _unused_flags(spec, hub_config, split)
        yield from iter_file(shipped_path(spec), label=f"{spec}/{SHIPPED[spec]}")
        return
    path = Path(spec).expanduser()
    kind = path_kind(path)
    if kind == "dir":
        if is_saved_dataset(path):
            _unused_flags(spec, hub_config, None)
            yield from _iter_saved(path, split)
        else:
            _unused_flags(spec, hub_config, split)
            for file in data_files(path):
                yield from iter_file(file)
    elif kind == "file":
        _unused_flags(spec, hub_config, split)
        yield from iter_file(path)
    elif kind == "broken link":
        raise broken_link(path)
    elif kind == "other":
        raise PreftuneError(f"{spec}: not a regular file or a folder (a device, pipe or socket): pass a data file")
    elif is_hub_id(spec):
        yield from _iter_hub(spec, hub_config or HUB_DEFAULT_CONFIGS.get(spec), split)
    else:
        local = " (it looks like a local path: check its spelling and the current folder)" if looks_local(spec) else ""
        raise PreftuneError(
            f"dataset '{spec}' not found: it is not a file, a folder, a shipped sample "
            f"({', '.join(SHIPPED)}) or a hub id (owner/name){local}"
        )


def _unused_flags(spec: str, hub_config: str | None, split: str | None) -> None:
    """Say so when --hub-config or --split cannot apply to SRC, instead of ignoring them silently."""
    if hub_config:
        logger.warning(f"data: --hub-config {hub_config} applies to hub datasets only; ignored for {spec}")
    if split not in (None, "train"):
        logger.warning(f"data: --split {split} applies to hub datasets and saved DatasetDicts only; ignored for {spec}")


def data_files(folder: Path) -> list[Path]:
    """The data files in a folder and its subfolders (e.g. HH-RLHF's helpful-base/test.jsonl.gz, ...),
    sorted by path; hidden files and folders are ignored. A subfolder that cannot be read, a broken
    symbolic link or a data-file name that is not a regular file stops with its path: a dataset must
    never be silently smaller than the folder."""
    files: list[Path] = []
    seen: set[str] = set()  # real paths of the folders walked: a symlink loop is walked once

    def walk(current: Path) -> None:
        real = os.path.realpath(current)
        if real in seen:
            return
        seen.add(real)
        try:
            with os.scandir(current) as it:
                names = sorted(entry.name for entry in it)
        except OSError as e:
            inside = "" if current == folder else f" (inside {folder})"
            raise PreftuneError(f"{current}: cannot read this folder{inside} ({e.strerror or e}): fix its "
                                "permissions, or move it out of the dataset folder") from None
        for name in names:
            if name.startswith("."):
                continue
            path = current / name
            kind = path_kind(path)
            if kind == "broken link":
                raise broken_link(path, f" in {folder}")
            if kind == "dir":
                walk(path)
            elif name.lower().endswith(DATA_SUFFIXES):
                if kind != "file":
                    raise PreftuneError(f"{path}: not a regular file (a device, pipe or socket): remove it from "
                                        f"{folder}")
                files.append(path)

    walk(folder)
    if not files:
        raise PreftuneError(f"{folder}: no data files ({', '.join(DATA_SUFFIXES)}) in this folder or its subfolders")
    return sorted(files)


# ---- bytes → text lines ------------------------------------------------------------------------------


def _open(path: Path, source: str):
    try:
        return open(path, "rb")
    except OSError as e:
        raise DataError(source, None, None, f"cannot read this file ({e.strerror or e}): check its "
                        "permissions") from None


def _check_start(head: bytes, gzipped: bool, path: Path, source: str) -> None:
    """Refuse, with what to do, the byte-level mix-ups that would otherwise read as garbage."""
    if gzipped and head and not head.startswith(GZIP_MAGIC):
        raise DataError(source, None, None, f"not gzip-compressed, though its name ends in .gz: rename it to "
                        f"{path.name[:-3]}")
    if not gzipped and head.startswith(GZIP_MAGIC):
        raise DataError(source, None, None, f"gzip-compressed, though its name does not end in .gz: rename it to "
                        f"{path.name}.gz")
    if head.startswith(UTF16_BOMS):
        raise DataError(source, None, None, "UTF-16/UTF-32 text (a spreadsheet's 'Unicode text'): save it as UTF-8")


def text_lines(path: Path, source: str) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line of a file, gunzipped if its name ends in .gz, decoded as UTF-8
    one line at a time so an error names its line; a UTF-8 byte-order mark (spreadsheets write one) is
    dropped. Unreadable, corrupt or mis-named files stop with one line naming the file."""
    gzipped = path.name.lower().endswith(".gz")
    lineno = 0
    with _open(path, source) as raw:
        try:
            head = raw.read(4)
            raw.seek(0)
            _check_start(head, gzipped, path, source)
            fh = gzip.GzipFile(fileobj=raw) if gzipped else raw
            for lineno, line in enumerate(fh, start=1):
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(source, lineno, None, f"not valid UTF-8 (byte {e.start}): {e.reason}; save the "
                                    "file as UTF-8") from None
                if lineno == 1:
                    text = text.removeprefix(UTF8_BOM)
                    if "\r" in text.rstrip("\r\n"):
                        raise DataError(source, None, None, "its line ends are carriage returns only (classic Mac): "
                                        "save it with LF or CRLF line ends")
                yield lineno, text
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise DataError(source, lineno + 1, None, f"corrupt or truncated gzip data ({e})") from None
        except OSError as e:  # after BadGzipFile, which is an OSError too
            raise DataError(source, lineno + 1, None, f"cannot read this file ({e.strerror or e})") from None


def iter_file(path: Path, label: str | None = None) -> Iterator[Record]:
    """The rows of one file, by suffix: CSV, Parquet, else JSON (lines or array)."""
    name, source = path.name.lower(), label or str(path)
    if name.endswith(CSV_SUFFIXES):
        return _iter_csv(path, source)
    if name.endswith(PARQUET_SUFFIXES):
        return _iter_parquet(path, source)
    return _iter_json_file(path, source)


# ---- JSON --------------------------------------------------------------------------------------------


class JsonFieldError(ValueError):
    """Valid JSON that preftune refuses, naming the key: a key given twice, text that is not Unicode."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def _object(pairs: list[tuple[str, object]]) -> dict:
    """json's object hook: a key given twice is an error (json keeps the last one silently)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise JsonFieldError(key, "this key appears twice in the object: keep one")
    return obj


def _object_unicode(pairs: list[tuple[str, object]]) -> dict:
    """`_object`, and an unpaired surrogate escape ("\\ud800": half of a character) is an error: no UTF-8
    file, tokenizer or prepared folder can hold it."""
    for key, value in pairs:
        for text in (key, value) if isinstance(value, str) else (key,):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise JsonFieldError(key, f"unpaired surrogate {text[e.start]!r} at character {e.start}: not valid "
                                     "Unicode (half of a character: fix or remove it)") from None
    return _object(pairs)


def loads(text: str):
    """json.loads with the checks of `_object` (surrogates only where the text escapes one: it is rare and
    the check costs); nesting too deep for Python is a decode error too."""
    hook = _object_unicode if "\\ud" in text or "\\uD" in text else _object
    try:
        return json.loads(text, object_pairs_hook=hook)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None


def _iter_json_file(path: Path, source: str) -> Iterator[Record]:
    """JSON lines (also a .json file holding JSON lines, as OpenAI's files do) or a JSON array."""
    lines = text_lines(path, source)
    last = rows = 0
    for lineno, text in lines:
        last = lineno
        if not text.strip():
            continue
        if rows == 0 and text.lstrip().startswith("["):
            lines.close()
            yield from _iter_json_document(path, source)
            return
        try:
            row = loads(text)
        except JsonFieldError as e:
            raise DataError(source, lineno, e.key, e.message) from None
        except json.JSONDecodeError as e:
            if rows == 0 and text.lstrip().startswith("{"):
                lines.close()
                _whole_object_error(path, source)  # a pretty-printed object: say so
            raise DataError(source, lineno, None, f"malformed JSON line ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(source, lineno, None, f"expected a JSON object, got {type(row).__name__}")
        rows += 1
        yield Record(row, source, lineno)
    if last == 0:
        raise DataError(source, None, None, "file is empty: no rows")
    if rows == 0:
        raise DataError(source, None, None, f"no rows: its {last} line(s) are blank")


def _whole(path: Path, source: str):
    text = "".join(t for _, t in text_lines(path, source))
    try:
        return loads(text)
    except JsonFieldError as e:
        raise DataError(source, None, e.key, e.message) from None


def _whole_object_error(path: Path, source: str) -> None:
    """Raise the error for a .json file that is one object spread over lines (if it is one)."""
    try:
        doc = _whole(path, source)
    except json.JSONDecodeError:
        return
    if isinstance(doc, dict):
        nested = [k for k, v in doc.items() if isinstance(v, list) and v and all(isinstance(r, dict) for r in v)]
        hint = f"; its rows may be the list under '{nested[0]}': save that list" if nested else ""
        raise DataError(source, None, None, f"one JSON object (keys: {names(doc)}), not rows: expected JSON lines "
                        f"(one object per line) or a JSON array of objects{hint}")


def _iter_json_document(path: Path, source: str) -> Iterator[Record]:
    try:
        rows = _whole(path, source)
    except json.JSONDecodeError as e:
        raise DataError(source, e.lineno, None, f"malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(rows, list):
        raise DataError(source, None, None, "expected a JSON array of objects or JSON lines, got "
                        f"{type(rows).__name__}")
    if not rows:
        raise DataError(source, None, None, "no rows: the JSON array is empty")
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{source}[row]", i, None, f"expected a JSON object, got {type(row).__name__}")
        yield Record(row, f"{source}[row]", i)


def names(columns, limit: int = 12, width: int = 40) -> str:
    """Column names for a message: sorted, each cut to `width` characters, at most `limit` of them."""
    cols = sorted(str(c) for c in columns)
    shown = [c if len(c) <= width else c[: width - 1] + "…" for c in cols[:limit]]
    more = f", … ({len(cols) - limit} more)" if len(cols) > limit else ""
    return (", ".join(shown) or "none") + more


# ---- CSV -----------------------------------------------------------------------------------------------


def _delimiter(header_line: str) -> str:
    """',' unless the header has none and a ';' (spreadsheets in comma-decimal locales) or a tab."""
    if "," in header_line:
        return ","
    return ";" if ";" in header_line else "\t" if "\t" in header_line else ","


def _iter_csv(path: Path, source: str) -> Iterator[Record]:
    """CSV with a header row; quoted fields may hold newlines and commas. Cells are strings. Spreadsheet
    exports read as they look: byte-order mark dropped, CRLF line ends, ';' or tab separators, empty
    trailing columns and empty rows (',,,') ignored."""
    csv.field_size_limit(2**31 - 1)  # posts are longer than the default 128 KiB limit allows
    counter = [0]  # lines read so far

    def lines() -> Iterator[str]:
        for counter[0], text in text_lines(path, source):
            yield text

    texts = lines()
    first = next(texts, None)
    if first is None:
        raise DataError(source, None, None, "file is empty: no rows")

    def with_first() -> Iterator[str]:
        yield first
        yield from texts

    reader = csv.reader(with_first(), delimiter=_delimiter(first), strict=True)
    header: list[str] | None = None
    rows, start = 0, 1
    try:
        for cells in reader:
            line, start = start, counter[0] + 1  # this record's first line; the next one's
            if not any(c.strip() for c in cells):
                continue  # a blank line, or an empty spreadsheet row
            if header is None:
                header = _header(cells, source, line)
                continue
            yield Record(_csv_row(header, cells, source, line), source, line)
            rows += 1
    except csv.Error as e:
        raise DataError(source, start, None, f"malformed CSV ({e}; an unclosed quote?)") from None
    if header is None:
        raise DataError(source, None, None, "no rows: its lines are blank")
    if rows == 0:
        raise DataError(source, None, None, "no rows: the CSV has a header only")


def _header(cells: list[str], source: str, line: int) -> list[str]:
    header = [c.strip() for c in cells]
    named = [c for c in header if c]
    dupes = sorted({c for c in named if named.count(c) > 1})
    if dupes:
        raise DataError(source, line, dupes[0], "duplicate column in the header row")
    return header


def _csv_row(header: list[str], cells: list[str], source: str, line: int) -> dict:
    if len(cells) > len(header) and not any(c.strip() for c in cells[len(header):]):
        cells = cells[: len(header)]  # trailing empty cells (spreadsheets pad rows)
    if len(cells) != len(header):
        raise DataError(source, line, None, f"row has {len(cells)} fields, the header has {len(header)} "
                        f"({names(header) if len(header) > 12 else ', '.join(header)})")
    for i, (name, cell) in enumerate(zip(header, cells), start=1):
        if not name and cell.strip():
            raise DataError(source, line, None, f"a value in column {i}, which has no name in the header row: "
                            "name the column or delete it")
    return {name: cell for name, cell in zip(header, cells) if name}


# ---- Parquet, saved `datasets` folders, the hub -------------------------------------------------------


def _iter_parquet(path: Path, source: str) -> Iterator[Record]:
    import pyarrow.parquet as pq  # installed with datasets

    with _open(path, source) as fh:
        try:
            file = pq.ParquetFile(fh)
        except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
            raise DataError(source, None, None, f"cannot read as Parquet ({first_line(e)})") from None
        if file.metadata.num_rows == 0:
            raise DataError(source, None, None, "no rows: the Parquet file is empty")
        i = 0
        batches = file.iter_batches(batch_size=1024)  # bounded memory: one record batch at a time
        while True:
            try:
                batch = next(batches, None)
                rows = [] if batch is None else batch.to_pylist()
            except Exception as e:  # noqa: BLE001 - damaged data, or text that is not UTF-8: name the rows
                raise DataError(f"{source}[row]", i + 1, None, f"cannot read rows {i + 1}-{i + 1024} (damaged "
                                f"Parquet data: {first_line(e)})") from None
            if batch is None:
                return
            for row in rows:
                i += 1
                yield Record(row, f"{source}[row]", i)


def first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    try:
        return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())
    except OSError:
        return False


def _iter_saved(path: Path, split: str) -> Iterator[Record]:
    import datasets  # heavy import, only for such folders

    try:
        ds = datasets.load_from_disk(str(path))  # memory-mapped Arrow: rows are read as iterated
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "could not load"
        raise DataError(str(path), None, None, f"cannot load this saved `datasets` folder ({type(e).__name__}: "
                        f"{first_line(e)})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise PreftuneError(f"{path}: no split '{split}' in this saved DatasetDict; its splits: "
                                f"{', '.join(ds)} (pass --split)")
        ds = ds[split]
    else:
        _unused_flags(str(path), None, split)  # one split's own folder: --split has nothing to choose
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
            f"cannot load hub dataset {label}: {hint} ({type(e).__name__}: {first_line(e)[:200]}). "
            "Download it where there is network, or pass a local file/folder with --dataset."
        ) from None
    for i, row in enumerate(ds, start=1):
        yield Record(dict(row), label, i)
