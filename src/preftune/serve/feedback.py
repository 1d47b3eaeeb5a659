"""Votes from the demo, appended as summarize_from_feedback comparison rows, so that
`preftune data prepare --dataset preferences.jsonl` reads them back like OpenAI's own files.

Several clicks can arrive at once (gradio runs handlers in a thread pool; several servers may share
a file): each row is one write of one line while holding an exclusive lock (`filelock`, on
FILE.lock beside the file, on every platform), so rows never interleave and none is lost. The file is
checked writable when the server starts (`check_writable`), not at the first vote.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

WORKER = "preftune-demo"


def comparison_row(post_id: str, subreddit: str, title: str, post: str, texts: list[str],
                   policies: list[str], choice: int, extra: dict | None = None) -> dict:
    """One comparison: summaries[choice] is the one the person preferred."""
    if choice not in (0, 1) or len(texts) != 2 or len(policies) != 2:
        raise ValueError(f"a comparison needs 2 summaries, 2 policies and choice 0 or 1, got choice={choice}")
    return {
        "info": {"id": post_id, "post": post, "title": title, "subreddit": subreddit},
        "summaries": [{"text": t, "policy": p} for t, p in zip(texts, policies, strict=True)],
        "choice": choice,
        "worker": WORKER,
        "batch": WORKER,
        "split": "demo",
        "extra": {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(extra or {})},
    }


def check_writable(path: Path, flag: str = "--feedback") -> None:
    """Before the demo loads its models: votes can be appended to `path` (and its FILE.lock made beside
    it), else one line naming the path in the way. Its folder is created; the file itself is not."""
    from preftune.errors import PreftuneError, writable_folder

    path = Path(path)
    if path.is_dir():
        raise PreftuneError(f"{flag} {path} is a folder; pass a file (e.g. {path / 'preferences.jsonl'})")
    writable_folder(path.parent, f"{flag} {path}", "pass another file")  # FILE.lock is made there too
    try:
        if path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND))  # opened as a vote opens it, nothing written
    except OSError as e:
        raise PreftuneError(f"{flag} {path}: cannot write it ({e.strerror or e}); pass another file") from None


def lock_for(path: Path) -> FileLock:
    """The lock every writer of `path` takes (threads and processes alike): FILE.lock beside it."""
    return FileLock(str(path) + ".lock")


def append_jsonl(path: Path, row: dict, timeout: float = -1) -> None:
    """Append one JSON line under the file's lock; wait for it at most `timeout` seconds (−1: as long as
    it takes; filelock.Timeout when it runs out)."""
    line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock_for(path).acquire(timeout=timeout):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(line)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
