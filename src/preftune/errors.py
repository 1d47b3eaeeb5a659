"""User-facing errors: the CLI prints these as one clear message (no traceback) and exits non-zero.
`writable_folder` is the one check that a path is a folder this process can write into."""

from __future__ import annotations

import os
from pathlib import Path


class PreftuneError(Exception):
    """An error caused by the user's input or environment, with a message that says what to do."""


class DataError(PreftuneError):
    """Bad input data. The message names the source, the line/row and the field."""

    def __init__(self, source: str, line: int | None, field: str | None, message: str):
        self.source, self.line, self.field = source, line, field
        super().__init__(f"{located(source, line, field)}: {message}")


def located(source: str, line: int | None = None, field: str | None = None) -> str:
    """"SOURCE[:LINE][: field 'FIELD']": where a DataError, or any refusal of a file's setting, begins."""
    where = source if line is None else f"{source}:{line}"
    return f"{where}: field '{field}'" if field else where


def writable_folder(path: str | Path, setting: str, fix: str) -> Path:
    """`path` as a folder this process can write into, created if missing; else one line
    "{setting}: what is wrong; {fix}", naming the file in the way (at `path` or above it)."""
    path = Path(path)
    # os.path.exists, not Path.exists: a folder we may not look into is "not there" (mkdir says why), not a traceback
    blocker = next((p for p in (path, *path.parents) if os.path.exists(p)), None)
    if blocker is not None and not blocker.is_dir():
        intended = "" if blocker == path else f" (it writes to {path})"
        raise PreftuneError(f"{setting}: {blocker} is a file, not a folder{intended}; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PreftuneError(f"{setting}: cannot create {path} ({e.strerror or e}); {fix}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PreftuneError(f"{setting}: {path} is not writable; {fix}")
    return path
