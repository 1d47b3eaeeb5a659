"""One rule for "is this a hub id or a local path?", used by every place that takes either.

A hub id is OWNER/NAME (the Hub's own pattern: letters, digits, `-`, `_`, `.`, no leading `.`/`-`).
A spec is local when it exists (a broken symlink too), or when it *looks* local even though it does
not exist: it starts with `.`, `/` or `~`, has a backslash or more than one `/`, ends with a data-file suffix
(`runs/data.jsonl`), or its first part is an existing folder (`runs/dpo_model_…` when `runs/` is
here). A local-looking spec that does not exist is "not found" at once, instead of the Hub being
asked (which offline means ~24 s of retries before a misleading error).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from preftune.errors import PreftuneError

_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_REPO_ID = re.compile(rf"{_PART}/{_PART}")
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".gz", ".txt", ".yaml", ".yml", ".safetensors", ".bin",
                  ".gguf")


def looks_local(spec: str) -> bool:
    """True when `spec` names (or means to name) a local file or folder, existing or not."""
    if not spec:
        return False
    if os.path.lexists(Path(spec).expanduser()) or spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1:
        return True
    if spec.lower().endswith(LOCAL_SUFFIXES):
        return True
    head = spec.split("/", 1)[0]
    return "/" in spec and Path(head).is_dir()


def is_hub_id(spec: str) -> bool:
    """OWNER/NAME that does not look local (see the module docstring)."""
    return bool(_REPO_ID.fullmatch(spec)) and ".." not in spec and not spec.endswith(".git") and not looks_local(spec)


def check_repo_id(value: str, flag: str) -> str:
    """A repo id given on the command line (--repo-id, --model-repo): OWNER/NAME or a clear error."""
    if not (_REPO_ID.fullmatch(value) and ".." not in value and not value.endswith(".git")):
        raise PreftuneError(f"{flag} must look like OWNER/NAME (letters, digits, '-', '_', '.'), got '{value}'")
    return value
