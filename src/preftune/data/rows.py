"""What an adapter makes of one raw row, and the checks its fields go through.

`PairFields` (text) or `ChatFields` (message lists, rendered by data/chat.py); `RowError` for a
malformed row (the caller adds file and line), `RowSkip` for a documented, counted skip. The helpers
check one field each and name it in the error (`field 'chosen[0].role': ...`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from preftune.data.files import names


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
    cut: str = "end"  # how body_span is trimmed: "end" | "start" | "turns" (data/truncate.py, docs/data.md)
    turns: tuple[int, ...] = ()  # cut="turns": offsets in `prompt` where a droppable turn ends


@dataclass(frozen=True)
class ChatFields:
    """A pair of message lists, rendered to text with the model's chat template by `data.chat`."""

    prompt: list[dict]  # [{role, content}], ends before the reply
    chosen: list[dict]  # the preferred reply: assistant message(s)
    rejected: list[dict]
    post_id: str
    meta: dict[str, Any] = field(default_factory=dict)


# ---- field checks -------------------------------------------------------------------------------------


def preview(value: Any, n: int = 40) -> str:
    """The start of a value for an error message (bounded: a value may be megabytes)."""
    text = value[:n] if isinstance(value, (str, bytes)) else str(value)[:n]
    return repr(text)


def wrong_type(path: str, want: str, value: Any, hint: str = "") -> RowError:
    return RowError(path, f"expected {want}, got {type(value).__name__} {preview(value)}{hint}")


def require(obj: dict, key: str, kind: type | tuple[type, ...], path: str) -> Any:
    """obj[key], checked to exist and have type `kind`; `path` names the field in errors."""
    if not isinstance(obj, dict):
        parent = path.rsplit(".", 1)[0] if "." in path else path
        raise wrong_type(parent, "an object", obj)
    if key not in obj:
        raise RowError(path, f"missing (found: {names(obj)})")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise wrong_type(path, kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind),
                         value)
    return value


def optional_text(obj: dict, key: str, path: str) -> str:
    """obj[key] when it is text, "" when absent or null; another type is an error."""
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise wrong_type(path, "str (or null)", value)
    return value


def group_id(value: Any, path: str) -> str | None:
    """A post/prompt id as text (ints too); None when absent or empty."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise wrong_type(path, "str or int", value)
    return str(value)


def text_id(text: str) -> str:
    """A stable id for rows whose source gives none (e.g. OpenAI's edit_b2 file): hash of the text."""
    return "sha1:" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def with_body(head: str, body: str, tail: str) -> tuple[str, tuple[int, int]]:
    return head + body + tail, (len(head), len(head) + len(body))


def require_columns(row: dict, expected: tuple[str, ...]) -> None:
    """A clear error naming the missing, found and expected columns."""
    missing = [c for c in expected if c not in row]
    if missing:
        raise RowError(missing[0], f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                       f"(found: {names(row)}; expected: {', '.join(expected)})")


def text(row: dict, key: str) -> str:
    value = row[key]
    if isinstance(value, str):
        return value
    hint = " (a message list: use --format conversational or ultrafeedback)" if isinstance(value, list) else ""
    raise wrong_type(key, "str", value, hint)


def not_empty(**fields: str) -> None:
    for key, value in fields.items():
        if not value.strip():
            raise RowSkip(f"empty {key}", key)


def row_id(row: dict, fallback: str) -> str:
    """The grouping key of the split: the row's post_id/prompt_id column, else a hash of the prompt."""
    for key in ("post_id", "prompt_id"):
        if (value := group_id(row.get(key), key)) is not None:
            return value
    return text_id(fallback)


def number(row: dict, key: str) -> float | None:
    value = row.get(key)
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                              or not math.isfinite(value)):
        raise wrong_type(key, "a finite number", value)
    return value


ROLES = ("system", "user", "assistant", "tool")


def messages(value: Any, path: str) -> list[dict]:
    """A list of {role, content} messages, checked; other keys of a message are not kept."""
    if not isinstance(value, list):
        raise RowError(path, f"expected a list of messages {{role, content}}, got {type(value).__name__} "
                       f"{str(value)[:40]!r}")
    out = []
    for i, message in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(message, dict):
            raise RowError(where, f"expected a message {{role, content}}, got {type(message).__name__}")
        role = require(message, "role", str, f"{where}.role")
        if role not in ROLES:
            raise RowError(f"{where}.role", f"unknown role '{role}'; expected one of: {', '.join(ROLES)}")
        out.append({"role": role, "content": require(message, "content", str, f"{where}.content")})
    return out


def reply(msgs: list[dict], path: str, offset: int = 0) -> list[dict]:
    """A completion: non-empty message(s) that start and end with the assistant's (a reply ending with a
    user turn would teach the model to write the user's words). `offset`: index of msgs[0] in the field."""
    if not msgs or not any(m["content"].strip() for m in msgs):
        raise RowSkip(f"empty {path}", path)
    for i, where in ((0, "start"), (len(msgs) - 1, "end")):
        if msgs[i]["role"] != "assistant":
            raise RowError(f"{path}[{offset + i}].role", f"a reply must {where} with an assistant message, got "
                           f"'{msgs[i]['role']}'")
    return msgs
