"""Row adapters: one small pure function per source format, registered by name in `ADAPTERS`.

An adapter turns one raw row into `PairFields` or `ChatFields` (data/rows.py), raising `RowError` for a
malformed row and `RowSkip` for a documented, counted skip. Adding a format = one row function + one
`ADAPTERS` entry; `preftune data formats` and `--format` list them. Each format's fields, how its
prompt may be trimmed to fit --max-length, and its errors: docs/data.md.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from preftune.config.registries import FORMATS
from preftune.data.columns import COLUMNS, guess_column
from preftune.data.files import names
from preftune.data.rows import (
    ChatFields,
    PairFields,
    RowError,
    RowSkip,
    group_id,
    messages,
    not_empty,
    number,
    optional_text,
    preview,
    reply,
    require,
    require_columns,
    row_id,
    text,
    text_id,
    with_body,
    wrong_type,
)
from preftune.errors import PreftuneError


@dataclass(frozen=True)
class Adapter:
    name: str
    convert: Callable[[dict], PairFields | ChatFields]
    detect: Callable[[dict], bool]  # does a row of this format look like this?
    description: str
    columns: tuple[str, ...] = ()  # the columns a row needs: named when detection finds none that fits
    label: Callable[[dict], str | None] | None = None  # the row's label, for `data inspect`'s balance
    chat: bool = False  # convert returns ChatFields: needs a tokenizer's chat template


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
    for i, summary in enumerate(texts):
        if not summary.strip():
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


def scores(row: dict) -> dict:
    """score_chosen / score_rejected, used: both finite numbers (else the row is an error), chosen's above
    rejected's (below: an error, the pair looks swapped; equal: a counted skip, nothing is preferred);
    kept in the pair's meta. A row with neither has none; one without the other is an error."""
    values = number(row, "score_chosen"), number(row, "score_rejected")
    if values == (None, None):
        return {}
    if None in values:
        given, missing = ("score_chosen", "score_rejected") if values[0] is not None else ("score_rejected",
                                                                                           "score_chosen")
        raise RowError(missing, f"missing while {given} is given: both scores, or neither")
    if values[0] == values[1]:
        raise RowSkip("tied scores", "score_chosen")
    if values[0] < values[1]:
        raise RowError("score_chosen", f"{values[0]} is below score_rejected {values[1]}: are chosen "
                       "and rejected swapped?")
    return {"score_chosen": values[0], "score_rejected": values[1]}


def prompt_chosen_rejected(row: dict) -> PairFields:
    require_columns(row, ("prompt", "chosen", "rejected"))
    prompt, chosen, rejected = text(row, "prompt"), text(row, "chosen"), text(row, "rejected")
    not_empty(prompt=prompt, chosen=chosen, rejected=rejected)
    if chosen == rejected:
        raise RowSkip("identical pair", "chosen")
    return PairFields(prompt, chosen, rejected, row_id(row, prompt), (0, len(prompt)), meta=scores(row), cut="start")


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


# ---- message lists (chat) -----------------------------------------------------------------------


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
    return ChatFields(prompt, *completions, row_id(row, json.dumps(prompt, sort_keys=True)), scores(row))


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


_DECLARED: dict[str, Adapter] = {
    "summarize_from_feedback": Adapter(
        "summarize_from_feedback",
        summarize_from_feedback,
        _is_summarize_from_feedback,
        "OpenAI comparisons (info, summaries, choice; extra.confidence kept): TL;DR posts and CNN/DM articles",
        columns=("info", "summaries", "choice"),
        label=_choice_label,
    ),
    "preftune_pairs": Adapter(
        "preftune_pairs", preftune_pairs, _is_preftune_pairs,
        "pairs published by `preftune data push` (prompt, chosen, rejected, post_id, body_span, cut, turns, "
        "meta): read back exactly as prepared",
        columns=PAIR_COLUMNS,
    ),
    "prompt_chosen_rejected": Adapter(
        "prompt_chosen_rejected", prompt_chosen_rejected, _is_text_triple,
        "prompt, chosen, rejected as text (optional post_id/prompt_id groups rows for the split; optional "
        "score_chosen/score_rejected: finite, chosen's above rejected's, ties skipped)",
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
# name → adapter, in the order of config/registries.py FORMATS (detection tries them in that order)
ADAPTERS: dict[str, Adapter] = {name: _DECLARED[name] for name in FORMATS}

def detect_format(row: dict, source: str) -> Adapter:
    """The adapter whose `detect` accepts the first row; else an error naming what is missing."""
    for adapter in ADAPTERS.values():
        if adapter.detect(row):
            return adapter
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


def get_adapter(name: str) -> Adapter:
    if name not in ADAPTERS:
        raise PreftuneError(f"unknown --format '{name}'; choose one of: auto, {', '.join(ADAPTERS)}")
    return ADAPTERS[name]
