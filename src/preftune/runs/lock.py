"""One writer per folder: a run folder (ROOT/NAME, written as NAME.partial) and a sweep's or recipe's ROOT.

The lock is the OS's (flock / LockFileEx, through `filelock`), taken without waiting: a second writer is
refused in one line and the first goes on untouched; the OS releases it when its holder dies, so a
killed run's re-run is never blocked by a stale lock file. docs/runs.md ("One writer at a time").
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from preftune.errors import PreftuneError
from preftune.runs.folder import lock_of


class FolderLock:
    """An exclusive, non-waiting lock on `target`, held in `lock_file` until `release` (or process death)."""

    def __init__(self, target: Path, lock_file: Path, writer: str):
        from filelock import FileLock

        self.target, self.lock_file, self.writer = Path(target), Path(lock_file), writer
        self._lock = FileLock(self.lock_file, timeout=0)

    def acquire(self) -> FolderLock:
        from filelock import Timeout

        try:
            self._lock.acquire()
        except Timeout:
            raise PreftuneError(f"another process is writing {self.target} ({self.writer} holds {self.lock_file}); "
                                "wait for it to finish, or write elsewhere (another --output-dir or --name)") from None
        except OSError as e:
            raise PreftuneError(f"cannot lock {self.target} ({self.lock_file}: {e.strerror or e}); "
                                "check --output-dir") from None
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def run_lock(final: Path) -> FolderLock:
    """The lock of run folder ROOT/NAME (and its NAME.partial): ROOT/.NAME.lock, beside them, so it
    outlives the rename NAME.partial → NAME. Not yet taken: `acquire` it (or use it as a context manager)."""
    return FolderLock(Path(final), lock_of(Path(final)), "a preftune run")


@contextlib.contextmanager
def root_lock(root: Path, command: str):
    """Hold ROOT/.<command>.lock while `preftune <command>` (sweep, recipe) writes ROOT: a second one into
    the same ROOT is refused. ROOT must exist."""
    lock = FolderLock(Path(root), Path(root) / f".{command}.lock", f"`preftune {command}`")
    with lock:
        yield lock
