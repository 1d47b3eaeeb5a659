"""Row adapters: one small pure function per source format, registered by name.

An adapter turns one raw row into `PairFields` (prompt, chosen, rejected, the post id that groups
rows for the split, and the span of the prompt that may be trimmed to fit --max-length). It raises
`RowError` for a malformed row (the caller adds file and line) and `RowSkip` for the documented,
counted skips. Adding a format = one row function + one `ADAPTERS` entry.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class RowError(Exception):
    """A malformed row: names the field and what is wrong with it."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"field '{field}': {message}")


class RowSkip(Exception):
    """A row skipped by design (counted and reported under `reason`)."""

    def __init__(self, reason: str, field: str | None = None):
        self.reason, self.field = reason, field
        super().__init__(reason)


@dataclass(frozen=True)
class PairFields:
    prompt: str
    chosen: str
    rejected: str
    post_id: str
    # [start, end) character span of `prompt` that may be cut to fit --max-length (the post body).
    body_span: tuple[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Adapter:
    name: str
    convert: Callable[[dict], PairFields]
    detect: Callable[[dict], bool]  # does a row of this format look like this?
    description: str


# ---- helpers -------------------------------------------------------------------------------------


def require(obj: dict, key: str, kind: type | tuple[type, ...], path: str) -> Any:
    """obj[key], checked to exist and have type `kind`; `path` names the field in errors."""
    if not isinstance(obj, dict) or key not in obj:
        found = ", ".join(sorted(obj)) if isinstance(obj, dict) else type(obj).__name__
        raise RowError(path, f"missing (found: {found})")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RowError(path, f"expected {want}, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def text_id(text: str) -> str:
    """A stable id for rows whose source gives none (e.g. OpenAI's edit_b2 file): hash of the text."""
    return "sha1:" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def with_body(head: str, body: str, tail: str) -> tuple[str, tuple[int, int]]:
    return head + body + tail, (len(head), len(head) + len(body))


# ---- summarize_from_feedback (OpenAI comparisons: TL;DR and CNN/DM rows) ------------------------


def tldr_prompt(subreddit: str, title: str, post: str) -> tuple[str, tuple[int, int]]:
    """The TL;DR prompt of the original pipeline; the span covers the post, the part we may trim."""
    subreddit = subreddit.removeprefix("r/")  # OpenAI's edit_b2 rows write "r/..."
    return with_body(f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: ", post, "\nTL;DR:")


def cnndm_prompt(site: str, title: str, article: str) -> tuple[str, tuple[int, int]]:
    """CNN/DM rows have an article and a news site instead of a post and a subreddit."""
    return with_body(f"SITE: {site}\nTITLE: {title}\nARTICLE: ", article, "\nTL;DR:")


def summarize_from_feedback(row: dict) -> PairFields:
    info = require(row, "info", dict, "info")
    summaries = require(row, "summaries", list, "summaries")
    if len(summaries) != 2:
        raise RowError("summaries", f"expected 2 summaries, got {len(summaries)}")
    choice = require(row, "choice", int, "choice")
    if choice not in (0, 1):
        raise RowError("choice", f"must be 0 or 1, got {choice}")
    texts = [require(s, "text", str, f"summaries[{i}].text") for i, s in enumerate(summaries)]
    for i, text in enumerate(texts):
        if not text.strip():
            raise RowSkip("empty summary", f"summaries[{i}].text")
    if texts[0] == texts[1]:
        raise RowSkip("identical pair", "summaries")

    title = info.get("title") or ""
    if "post" in info:
        body = require(info, "post", str, "info.post")
        prompt, span = tldr_prompt(info.get("subreddit") or "", title, body)
    elif "article" in info:
        body = require(info, "article", str, "info.article")
        prompt, span = cnndm_prompt(info.get("site") or "", title, body)
    else:
        raise RowError("info", f"needs 'post' (TL;DR) or 'article' (CNN/DM); found: {', '.join(sorted(info))}")
    if not body.strip():
        raise RowSkip("empty post", "info.post" if "post" in info else "info.article")

    post_id = info.get("id") or text_id(body)
    policies = [s.get("policy") for s in summaries]
    meta = {
        "batch": row.get("batch"),
        "split": row.get("split"),
        "chosen_policy": policies[choice],
        "rejected_policy": policies[1 - choice],
    }
    return PairFields(prompt, texts[choice], texts[1 - choice], str(post_id), span, meta)


def _is_summarize_from_feedback(row: dict) -> bool:
    return {"info", "summaries", "choice"} <= row.keys()


ADAPTERS: dict[str, Adapter] = {
    "summarize_from_feedback": Adapter(
        "summarize_from_feedback",
        summarize_from_feedback,
        _is_summarize_from_feedback,
        "OpenAI comparisons (info, summaries, choice): TL;DR posts and CNN/DM articles",
    ),
}


def detect_format(row: dict, source: str) -> Adapter:
    """The adapter whose `detect` accepts the first row; a clear error when none does."""
    for adapter in ADAPTERS.values():
        if adapter.detect(row):
            return adapter
    from preftune.errors import PreftuneError

    raise PreftuneError(
        f"{source}: cannot detect the data format from the columns ({', '.join(sorted(row))}). "
        f"Known formats: {'; '.join(f'{a.name}: {a.description}' for a in ADAPTERS.values())}. "
        "Pass --format NAME."
    )


def get_adapter(name: str) -> Adapter:
    if name not in ADAPTERS:
        from preftune.errors import PreftuneError

        raise PreftuneError(f"unknown --format '{name}'; choose one of: auto, {', '.join(ADAPTERS)}")
    return ADAPTERS[name]
