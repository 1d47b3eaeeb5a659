"""Row adapters: one small pure function per source format, registered by name.

An adapter turns one raw row into `PairFields` (prompt, chosen, rejected, the post id that groups
rows for the split, and the span of the prompt that may be trimmed to fit --max-length), or, for
message lists, into `ChatFields` that `preftune.data.chat` renders with the model's chat template.
It raises `RowError` for a malformed row (the caller adds file and line) and `RowSkip` for the
documented, counted skips. Adding a format = one row function + one `ADAPTERS` entry.

How each format may be trimmed to fit --max-length (`PairFields.cut`, applied in `truncate.py`;
completions are never cut):
  "end"    cut the end of `body_span` at a token boundary (TL;DR/CNN-DM: the post, keeping its start)
  "start"  cut the start of `body_span` at a token boundary (plain prompts: keep the end, next to the reply)
  "turns"  drop the oldest whole turns: remove prompt[body_span[0]:t] for the first t in `turns` that fits
           (dialogues: HH-RLHF and chat; the system message and the last user turn always stay)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from preftune.data.sources import names


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
    cut: str = "end"  # how body_span is trimmed: "end" | "start" | "turns" (see the module docstring)
    turns: tuple[int, ...] = ()  # cut="turns": offsets in `prompt` where a droppable turn ends


@dataclass(frozen=True)
class ChatFields:
    """A pair of message lists, rendered to text with the model's chat template by `data.chat`."""

    prompt: list[dict]  # [{role, content}], ends before the reply
    chosen: list[dict]  # the preferred reply: assistant message(s)
    rejected: list[dict]
    post_id: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Adapter:
    name: str
    convert: Callable[[dict], PairFields | ChatFields]
    detect: Callable[[dict], bool]  # does a row of this format look like this?
    description: str
    columns: tuple[str, ...] = ()  # the columns a row needs: named when detection finds none that fits
    label: Callable[[dict], str | None] | None = None  # the row's label, for `data inspect`'s balance
    chat: bool = False  # convert returns ChatFields: needs a tokenizer's chat template


# ---- helpers -------------------------------------------------------------------------------------


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

    title = optional_text(info, "title", "info.title")
    if "post" in info:
        body = require(info, "post", str, "info.post")
        prompt, span = tldr_prompt(optional_text(info, "subreddit", "info.subreddit"), title, body)
    elif "article" in info:
        body = require(info, "article", str, "info.article")
        prompt, span = cnndm_prompt(optional_text(info, "site", "info.site"), title, body)
    else:
        raise RowError("info", f"needs 'post' (TL;DR) or 'article' (CNN/DM); found: {names(info)}")
    if not body.strip():
        raise RowSkip("empty post", "info.post" if "post" in info else "info.article")

    post_id = group_id(info.get("id"), "info.id") or text_id(body)
    sure = confidence(row)
    if sure is not None and sure != 5 and (sure > 5) != (choice == 1):
        raise RowSkip("confidence contradicts choice", "extra.confidence")
    policies = [s.get("policy") for s in summaries]
    meta = {
        "batch": row.get("batch"),
        "split": row.get("split"),
        "chosen_policy": policies[choice],
        "rejected_policy": policies[1 - choice],
        # how sure the labeller was of the choice, 1 (barely) … 4 (sure): the distance of the 1–9 scale from
        # its midpoint (1–4 lean to summary 0, 6–9 to summary 1); "confidence_raw" keeps the 1–9 value
        "confidence": abs(sure - 5) if sure is not None and sure != 5 else None,
        "confidence_raw": sure,
    }
    return PairFields(prompt, texts[choice], texts[1 - choice], post_id, span, meta)


def confidence(row: dict) -> int | None:
    """The labeller's confidence, `extra.confidence`: 1 (summary 0, sure) … 4, 6 … 9 (summary 1, sure);
    None when the row has none."""
    extra = row.get("extra")
    if extra is None:
        return None
    if not isinstance(extra, dict):
        raise wrong_type("extra", "an object {confidence}", extra)
    value = extra.get("confidence")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # Arrow/pandas write integer columns with nulls as floats
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 9):
        raise wrong_type("extra.confidence", "an integer 1-9 (or null)", value)
    return value


def _is_summarize_from_feedback(row: dict) -> bool:
    return {"info", "summaries", "choice"} <= row.keys()


# ---- prompt / chosen / rejected as text ----------------------------------------------------------


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


def prompt_chosen_rejected(row: dict) -> PairFields:
    require_columns(row, ("prompt", "chosen", "rejected"))
    prompt, chosen, rejected = text(row, "prompt"), text(row, "chosen"), text(row, "rejected")
    not_empty(prompt=prompt, chosen=chosen, rejected=rejected)
    if chosen == rejected:
        raise RowSkip("identical pair", "chosen")
    return PairFields(prompt, chosen, rejected, row_id(row, prompt), (0, len(prompt)), cut="start")


# ---- preftune's own pairs, as `preftune data push` publishes them --------------------------------

PAIR_COLUMNS = ("prompt", "chosen", "rejected", "post_id", "body_span", "cut", "turns", "meta")
CUTS = ("end", "start", "turns")


def preftune_pairs(row: dict) -> PairFields:
    """A row of a dataset pushed by `preftune data push`: the pair exactly as prepared, with the trimmable
    span and cut rule it had (so a TL;DR post is still trimmed at its end, its header kept) and its meta
    (JSON text) restored."""
    fields = prompt_chosen_rejected({k: row[k] for k in ("prompt", "chosen", "rejected", "post_id") if k in row})
    span, cut, turns, meta = row.get("body_span"), row.get("cut") or "end", row.get("turns") or [], row.get("meta")
    if span is not None and not (isinstance(span, (list, tuple)) and len(span) == 2
                                 and all(isinstance(x, int) and 0 <= x <= len(fields.prompt) for x in span)):
        raise RowError("body_span", f"expected [start, end] offsets into the prompt or null, got {preview(span)}")
    if cut not in CUTS:
        raise RowError("cut", f"expected one of {', '.join(CUTS)}, got {preview(cut)}")
    if not isinstance(turns, (list, tuple)) or not all(isinstance(t, int) for t in turns):
        raise RowError("turns", f"expected a list of offsets, got {preview(turns)}")
    try:
        meta = json.loads(meta) if isinstance(meta, str) else (meta or {})
    except ValueError:
        raise RowError("meta", f"expected JSON text of an object, got {preview(meta)}") from None
    if not isinstance(meta, dict):
        raise RowError("meta", f"expected JSON text of an object, got {preview(meta)}")
    return PairFields(fields.prompt, fields.chosen, fields.rejected, fields.post_id,
                      tuple(span) if span is not None else None, meta, cut=cut, turns=tuple(turns))


def _is_preftune_pairs(row: dict) -> bool:
    return set(PAIR_COLUMNS) <= row.keys()


# ---- Anthropic HH-RLHF: whole dialogues, implicit prompt ----------------------------------------

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def hh_rlhf(row: dict) -> PairFields:
    """The prompt is the dialogue both share, up to and including the last shared '\n\nAssistant:'."""
    require_columns(row, ("chosen", "rejected"))
    chosen, rejected = text(row, "chosen"), text(row, "rejected")
    if chosen == rejected:
        raise RowSkip("identical pair", "chosen")
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if ASSISTANT not in value:
            raise RowError(key, f"no '\\n\\nAssistant:' turn in {value[:60]!r}: not an HH-RLHF dialogue")
    end = os.path.commonprefix([chosen, rejected]).rfind(ASSISTANT)
    if end < 0:
        raise RowError("rejected", "chosen and rejected share no dialogue up to an '\\n\\nAssistant:' turn")
    prompt = chosen[: end + len(ASSISTANT)]
    completions = {"chosen": chosen[len(prompt):], "rejected": rejected[len(prompt):]}
    not_empty(**completions)
    if HUMAN in completions["chosen"]:  # training on it would teach the model to write the human's turns
        raise RowSkip("chosen reply holds a Human turn", "chosen")
    starts = [m.start() for m in re.finditer(re.escape(HUMAN), prompt)]  # where each human turn begins
    span, turns = ((starts[0], starts[-1]), tuple(starts[1:])) if len(starts) > 1 else (None, ())
    return PairFields(prompt, completions["chosen"], completions["rejected"], text_id(prompt), span,
                      cut="turns", turns=turns)


# ---- message lists (chat) -------------------------------------------------------------------------

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


def conversational(row: dict) -> ChatFields:
    """TRL's conversational preference format: prompt, chosen and rejected are message lists."""
    require_columns(row, ("prompt", "chosen", "rejected"))
    prompt = messages(row["prompt"], "prompt")
    chosen = reply(messages(row["chosen"], "chosen"), "chosen")
    rejected = reply(messages(row["rejected"], "rejected"), "rejected")
    if not prompt or not any(m["content"].strip() for m in prompt):
        raise RowSkip("empty prompt", "prompt")
    if prompt[-1]["role"] == "assistant":
        raise RowError(f"prompt[{len(prompt) - 1}].role", "the prompt must end before the reply, not with an "
                       "assistant message")
    if chosen == rejected:
        raise RowSkip("identical pair", "chosen")
    return ChatFields(prompt, chosen, rejected, row_id(row, json.dumps(prompt, sort_keys=True)))


def number(row: dict, key: str) -> float | None:
    value = row.get(key)
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)
                              or not math.isfinite(value)):
        raise wrong_type(key, "a finite number", value)
    return value


def ultrafeedback(row: dict) -> ChatFields:
    """chosen and rejected are whole conversations; the prompt is the turns they share before the reply
    (UltraFeedback-binarized; also TRL's implicit-prompt conversational format)."""
    require_columns(row, ("chosen", "rejected"))
    chosen, rejected = messages(row["chosen"], "chosen"), messages(row["rejected"], "rejected")
    if chosen == rejected:
        raise RowSkip("identical pair", "chosen")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n and chosen[n - 1]["role"] == "assistant":  # a shared reply belongs to the completions
        n -= 1
    if n == 0:
        raise RowError("chosen", "chosen and rejected share no first turn: cannot find the prompt")
    prompt = chosen[:n]
    if "prompt" in row and row["prompt"] is not None:
        users = [m["content"] for m in prompt if m["role"] == "user"]
        if not users or text(row, "prompt").strip() != users[-1].strip():
            raise RowError("prompt", f"{preview(row['prompt'])} is not the conversation's last user turn "
                           f"{(users or [''])[-1][:40]!r}")
    completions = reply(chosen[n:], "chosen", n), reply(rejected[n:], "rejected", n)
    scores = number(row, "score_chosen"), number(row, "score_rejected")
    if None not in scores:
        if scores[0] == scores[1]:
            raise RowSkip("tied scores", "score_chosen")
        if scores[0] < scores[1]:
            raise RowError("score_chosen", f"{scores[0]} is below score_rejected {scores[1]}: are chosen "
                           "and rejected swapped?")
    meta = {k: v for k, v in zip(("score_chosen", "score_rejected"), scores) if v is not None}
    return ChatFields(prompt, *completions, row_id(row, json.dumps(prompt, sort_keys=True)), meta)


# ---- the registry ---------------------------------------------------------------------------------
# Detection looks at the columns and at the shape of prompt/chosen (text or message list) only: a row
# that has a format's columns goes to that adapter, whose field checks then name a wrong type in a given
# row ("line 3: field 'chosen': expected str, got int"), instead of detection blaming another format.


def _is_text_triple(row: dict) -> bool:
    return ({"prompt", "chosen", "rejected"} <= row.keys() and not isinstance(row["prompt"], list)
            and not isinstance(row["chosen"], list))


def _is_hh_rlhf(row: dict) -> bool:
    return ({"chosen", "rejected"} <= row.keys() and row.get("prompt") is None and isinstance(row["chosen"], str)
            and ASSISTANT in row["chosen"])


def _is_conversational(row: dict) -> bool:
    return {"prompt", "chosen", "rejected"} <= row.keys() and isinstance(row["prompt"], list)


def _is_ultrafeedback(row: dict) -> bool:
    return "rejected" in row and isinstance(row.get("chosen"), list) and not isinstance(row.get("prompt"), list)


def _choice_label(row: dict) -> str | None:
    return f"choice {row['choice']}" if row.get("choice") in (0, 1) else None


ADAPTERS: dict[str, Adapter] = {
    "summarize_from_feedback": Adapter(
        "summarize_from_feedback",
        summarize_from_feedback,
        _is_summarize_from_feedback,
        "OpenAI comparisons (info, summaries, choice; extra.confidence kept): TL;DR posts and CNN/DM articles",
        columns=("info", "summaries", "choice"),
        label=_choice_label,
    ),
    "preftune_pairs": Adapter(  # before prompt_chosen_rejected: its columns are a superset
        "preftune_pairs", preftune_pairs, _is_preftune_pairs,
        "pairs published by `preftune data push` (prompt, chosen, rejected, post_id, body_span, cut, turns, "
        "meta): read back exactly as prepared",
        columns=PAIR_COLUMNS,
    ),
    "prompt_chosen_rejected": Adapter(
        "prompt_chosen_rejected", prompt_chosen_rejected, _is_text_triple,
        "prompt, chosen, rejected as text (optional post_id/prompt_id groups rows for the split)",
        columns=("prompt", "chosen", "rejected"),
    ),
    "hh_rlhf": Adapter(
        "hh_rlhf", hh_rlhf, _is_hh_rlhf,
        "Anthropic HH-RLHF: chosen, rejected are whole '\\n\\nHuman: … \\n\\nAssistant: …' dialogues; "
        "the prompt is their shared part up to the last '\\n\\nAssistant:'",
        columns=("chosen", "rejected"),
    ),
    "conversational": Adapter(
        "conversational", conversational, _is_conversational,
        "prompt, chosen, rejected as message lists [{role, content}], rendered with the model's chat template",
        columns=("prompt", "chosen", "rejected"),
        chat=True,
    ),
    "ultrafeedback": Adapter(
        "ultrafeedback", ultrafeedback, _is_ultrafeedback,
        "chosen, rejected as whole conversations (message lists), the prompt is their shared first turns; "
        "optional prompt, prompt_id, score_chosen/score_rejected (UltraFeedback-binarized)",
        columns=("chosen", "rejected"),
        chat=True,
    ),
}

# ---- --column-map ---------------------------------------------------------------------------------

COLUMNS = ("prompt", "chosen", "rejected", "post_id", "prompt_id", "score_chosen", "score_rejected",
           "info", "summaries", "choice")


def parse_column_map(spec: str | None) -> dict[str, str]:
    """'chosen=good,rejected=bad' → {'chosen': 'good', 'rejected': 'bad'} (NAME=COLUMN)."""
    from preftune.errors import PreftuneError

    mapping: dict[str, str] = {}
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        name, sep, column = (part.strip() for part in item.partition("="))
        if not sep or not name or not column:
            raise PreftuneError(f"--column-map: expected NAME=COLUMN pairs separated by commas, got {item!r}")
        if name not in COLUMNS:
            raise PreftuneError(f"--column-map: unknown name '{name}'; names: {', '.join(COLUMNS)}")
        if name in mapping:
            raise PreftuneError(f"--column-map: '{name}' is mapped twice")
        if column in mapping.values():  # e.g. chosen=a,rejected=a: every pair would be identical
            other = next(n for n, c in mapping.items() if c == column)
            raise PreftuneError(f"--column-map: column '{column}' is mapped to both {other} and {name}")
        mapping[name] = column
    return mapping


def apply_column_map(row: dict, mapping: dict[str, str]) -> dict:
    """The row with its columns renamed NAME ← COLUMN; a mapped column the row lacks is an error."""
    if not mapping:
        return row
    for name, column in mapping.items():
        if column not in row:
            raise RowError(column, f"missing column (found: {', '.join(sorted(row))}); --column-map {name}={column}")
    out = {k: v for k, v in row.items() if k not in mapping.values()}
    out.update({name: row[column] for name, column in mapping.items()})
    return out


def source_field(field_path: str | None, mapping: dict[str, str]) -> str | None:
    """A field path in the user's column names: 'chosen[0].role' → 'good[0].role' for chosen=good."""
    if not field_path or not mapping:
        return field_path
    for name, column in mapping.items():
        if field_path == name or field_path.startswith((name + "[", name + ".")):
            return column + field_path[len(name):]
    return field_path


def detect_format(row: dict, source: str) -> Adapter:
    """The adapter whose `detect` accepts the first row; else an error naming what is missing."""
    for adapter in ADAPTERS.values():
        if adapter.detect(row):
            return adapter
    from preftune.errors import PreftuneError

    raise PreftuneError(f"{source}: cannot detect the data format from the columns ({names(row)}): "
                        f"{missing_columns(row)}; formats: `preftune data formats`")


def missing_columns(row: dict) -> str:
    """What the row lacks for the format it is closest to (most of its columns present, else the plain
    prompt/chosen/rejected one), and the --column-map that supplies it: 'no prompt column; pass
    --column-map prompt=question'."""
    unused = [str(c) for c in row if c not in COLUMNS]

    def present(name: str) -> bool:
        return name in row or guess_column(name, unused, 0) != "COLUMN"

    closest = [a for a in ADAPTERS.values() if any(c not in row for c in a.columns)]
    # the largest share of its columns present (a share, so a format with many columns does not win on count);
    # ties: the first registered
    best = max(closest, key=lambda a: sum(present(c) for c in a.columns) / len(a.columns))
    if not any(present(c) for c in best.columns):
        best = ADAPTERS["prompt_chosen_rejected"]
    missing = [c for c in best.columns if c not in row]
    pairs = ",".join(f"{name}={guess_column(name, unused, len(missing))}" for name in missing)
    what = f"no {', '.join(missing)} column{'s' if len(missing) > 1 else ''}; pass --column-map {pairs}"
    if missing == ["prompt"] and isinstance(row.get("chosen"), str):
        what += " (HH-RLHF rows would hold whole '\\n\\nHuman: … \\n\\nAssistant: …' dialogues in chosen)"
    nested = [k for k in unused if isinstance(row[k], list) and row[k] and isinstance(row[k][0], dict)]
    if len(missing) == len(best.columns) and nested:
        what += f"; or are the rows the list under '{nested[0][:40]}'? save that list as the rows"
    return what


def guess_column(name: str, unused: list[str], n_missing: int) -> str:
    """The user's column for `name`: one spelled the same but for case/spaces, else the only unused one."""
    for column in unused:
        if column.strip().lower() == name:
            return column
    return unused[0] if n_missing == 1 and len(unused) == 1 else "COLUMN"


def get_adapter(name: str) -> Adapter:
    if name not in ADAPTERS:
        from preftune.errors import PreftuneError

        raise PreftuneError(f"unknown --format '{name}'; choose one of: auto, {', '.join(ADAPTERS)}")
    return ADAPTERS[name]
