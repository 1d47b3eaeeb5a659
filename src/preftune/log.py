"""Logging: every module logs through `logging.getLogger(__name__)` (a child of "preftune").

The library configures nothing (a `NullHandler` on "preftune", as the logging HOWTO asks of
libraries); the CLI calls `setup()` once. Under `torchrun`/`accelerate launch` only rank 0 prints
(`RankZeroFilter`): every rank runs the same code, and N copies of each line help nobody.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "preftune"
logging.getLogger(ROOT).addHandler(logging.NullHandler())


def rank() -> int:
    """This process's rank under a launcher (torchrun and accelerate set RANK), else 0."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class RankZeroFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return rank() == 0


class _StreamHandler(logging.Handler):
    """Writes to sys.stdout / sys.stderr as they are at emit time (so pytest's capture and
    contextlib.redirect_stdout see the lines)."""

    def __init__(self, stream: str):
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            out = sys.stderr if self.stream == "stderr" else sys.stdout
            out.write(self.format(record) + "\n")
            out.flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


_handler: _StreamHandler | None = None


def setup(stream: str = "stdout", level: int = logging.INFO) -> None:
    """Print preftune's messages (plain text, rank 0 only) to stdout or stderr. Idempotent: a second
    call only moves the stream (e.g. `data inspect --json` keeps stdout for the JSON)."""
    global _handler
    logger = logging.getLogger(ROOT)
    if _handler is None:
        _handler = _StreamHandler(stream)
        _handler.setFormatter(logging.Formatter("%(message)s"))
        _handler.addFilter(RankZeroFilter())
        logger.addHandler(_handler)
    _handler.stream = stream
    logger.setLevel(level)
    logger.propagate = False
