"""One local data file → its rows (`Record`s), by suffix: JSON lines or a JSON array, CSV, Parquet;
JSON and CSV optionally gzipped. Read as a stream (JSON lines and CSV line by line, Parquet in record
batches), so memory stays bounded; a JSON array is parsed whole. `Record.line` is the 1-based line in
JSON-lines and CSV files (for CSV, the line the record starts on), the row number elsewhere (sources
labelled `FILE[row]`). A file that cannot be read as what its name says is one line naming the file
(and line), never a traceback or a silently shorter file.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from preftune.errors import DataError

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


# ---- Parquet -------------------------------------------------------------------------------------


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
