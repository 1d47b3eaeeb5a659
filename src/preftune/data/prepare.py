"""Preparation: read → adapt → clean (duplicates, conflicting labels) → fraction → split by post.

Every row that does not reach a split is counted under a reason in a `Tally`, with a few
locations (file:line) per reason, and printed: nothing is dropped silently.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from preftune.config import DataConfig
from preftune.data.adapters import (Adapter, ChatFields, RowError, RowSkip, apply_column_map, detect_format,
                                    get_adapter, parse_column_map, source_field)
from preftune.data.sources import describe, iter_records
from preftune.errors import DataError, PreftuneError

PREPARED_MARKER = "preftune_prepared"  # key in stats.json of a `preftune data prepare` folder


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    post_id: str
    source: str  # file:line the pair came from
    body_span: tuple[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    cut: str = "end"  # how body_span is trimmed to fit max_length: "end" | "start" | "turns" (see adapters)
    turns: tuple[int, ...] = ()  # cut="turns": offsets in `prompt` where a droppable turn ends

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict) -> Pair:
        span = row.get("body_span")
        return cls(row["prompt"], row["chosen"], row["rejected"], str(row["post_id"]), row.get("source", ""),
                   tuple(span) if span else None, row.get("meta") or {}, row.get("cut") or "end",
                   tuple(row.get("turns") or ()))


@dataclass
class Tally:
    """Counts of rows seen, kept and skipped (by reason), with example locations per reason."""

    total: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(where)

    @property
    def kept(self) -> int:
        return self.total - sum(self.skipped.values())

    def summary(self) -> str:
        line = f"kept {self.kept:,} / {self.total:,}"
        if self.skipped:
            reasons = ", ".join(f"{r} ({n:,})" for r, n in self.skipped.most_common())
            line += f"; skipped {sum(self.skipped.values()):,}: {reasons}"
        return line

    def details(self) -> list[str]:
        return [f"  {reason}: e.g. {', '.join(self.examples[reason])}" for reason in self.skipped]

    def to_json(self) -> dict:
        return {"total": self.total, "kept": self.kept, "skipped": dict(self.skipped),
                "examples": {k: v for k, v in self.examples.items() if k in self.skipped}}


# ---- read + adapt --------------------------------------------------------------------------------


@dataclass
class Reading:
    """What reading SRC found besides the pairs: the format and how it was chosen, the rows tallied,
    the labels seen (where the format has one) and the chat template used (message-list formats)."""

    tally: Tally = field(default_factory=Tally)
    format: str | None = None
    detected_from: list[str] | None = None  # the columns the format was detected from; None: --format
    labels: Counter = field(default_factory=Counter)
    chat_template: str | None = None

    def describe(self) -> str:
        how = f"detected from columns {', '.join(self.detected_from)}" if self.detected_from else "--format"
        chat = f"; chat template of {self.chat_template}" if self.chat_template else ""
        return f"format {self.format} ({how}{chat})"


def chat_renderer(tokenizer, log=print):
    """A ChatRenderer for a tokenizer, or for a model spec (None: the default model), loaded now."""
    from preftune.data.chat import ChatRenderer

    if tokenizer is None or isinstance(tokenizer, str):
        from preftune.config import DEFAULT_MODEL
        from preftune.models import load_tokenizer, resolve_model

        spec = tokenizer or DEFAULT_MODEL
        log(f"data: rendering conversations with the chat template of {spec}")
        return ChatRenderer(load_tokenizer(resolve_model(spec).path), spec)
    return ChatRenderer(tokenizer, getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def iter_pairs(cfg: DataConfig, reading: Reading, tokenizer=None, log=print) -> Iterator[Pair]:
    """Every pair of SRC through one adapter, streamed; skipped rows are tallied in `reading`.

    `tokenizer` (a tokenizer, or a model spec loaded only when needed; None: the default model)
    renders message-list formats with its chat template. In a folder every file must hold the same
    format (detected per file when --format is auto)."""
    mapping = parse_column_map(cfg.column_map)
    adapter: Adapter | None = None if cfg.format == "auto" else get_adapter(cfg.format)
    per_file: dict[str, Adapter] = {}
    renderer = None
    for rec in iter_records(cfg.dataset, cfg.hub_config, cfg.split):
        try:
            row = apply_column_map(rec.row, mapping)
        except RowError as e:
            raise DataError(rec.source, rec.line, e.field, e.message) from None
        if cfg.format == "auto" and rec.source not in per_file:
            per_file[rec.source] = detected = detect_format(row, rec.source)
            if adapter is None:
                adapter, reading.detected_from = detected, sorted(row)
            elif detected is not adapter:
                first = next(iter(per_file))
                raise PreftuneError(f"{cfg.dataset} mixes data formats: {first} is {adapter.name}, {rec.source} "
                                    f"is {detected.name}; prepare them separately (or pass --format)")
        reading.format = adapter.name
        reading.tally.total += 1
        if adapter.label and (label := adapter.label(row)):
            reading.labels[label] += 1
        where = f"{rec.source}:{rec.line}"
        try:
            fields = adapter.convert(row)
            if isinstance(fields, ChatFields):
                if renderer is None:  # loaded at the first conversation: row errors before model errors
                    renderer = chat_renderer(tokenizer, log)
                    reading.chat_template = renderer.name
                fields = renderer.render(fields)
        except RowSkip as s:
            reading.tally.skip(s.reason, where + (f" {source_field(s.field, mapping)}" if s.field else ""))
            continue
        except RowError as e:
            raise DataError(rec.source, rec.line, source_field(e.field, mapping), e.message) from None
        yield Pair(fields.prompt, fields.chosen, fields.rejected, fields.post_id, where, fields.body_span,
                   fields.meta, fields.cut, fields.turns)
    if adapter is None:
        raise PreftuneError(f"{cfg.dataset}: no rows")


def load_pairs(cfg: DataConfig, tokenizer=None, log=print, reading: Reading | None = None
               ) -> tuple[list[Pair], Tally, str]:
    """All pairs of SRC through one adapter, plus the tally of skipped rows and the adapter name."""
    reading = reading or Reading()
    pairs = list(iter_pairs(cfg, reading, tokenizer, log))
    return pairs, reading.tally, reading.format


# ---- clean ---------------------------------------------------------------------------------------


def resolve_labels(pairs: list[Pair], tally: Tally) -> list[Pair]:
    """One pair per (post, prompt, {summary A, summary B}); repeated labels resolved by majority.

    OpenAI's data has the same two summaries labelled by several workers. Unanimous repeats keep one
    copy ("duplicate label"); disagreeing ones keep the majority orientation ("outvoted label") or,
    on a tie, drop all ("tied labels"). Order of first appearance is kept.
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        groups[(p.post_id, p.prompt, frozenset((p.chosen, p.rejected)))].append(i)
    keep: list[int] = []
    for members in groups.values():
        votes = Counter((pairs[i].chosen, pairs[i].rejected) for i in members)
        (top, n_top), *rest = votes.most_common()
        if rest and rest[0][1] == n_top:
            for i in members:
                tally.skip("tied labels", pairs[i].source)
            continue
        winner = next(i for i in members if (pairs[i].chosen, pairs[i].rejected) == top)
        keep.append(winner)
        for i in members:
            if i != winner:
                same = (pairs[i].chosen, pairs[i].rejected) == top
                tally.skip("duplicate label" if same else "outvoted label", pairs[i].source)
    return [pairs[i] for i in sorted(keep)]


# ---- sample + split ------------------------------------------------------------------------------


def take_fraction(pairs: list[Pair], fraction: float, seed: int) -> list[Pair]:
    """A seeded random `fraction` of the pairs (at least one), in their original order."""
    if fraction >= 1.0:
        return list(pairs)
    n = max(1, round(fraction * len(pairs)))
    chosen = sorted(random.Random(seed).sample(range(len(pairs)), n))
    return [pairs[i] for i in chosen]


def split_by_post(pairs: list[Pair], eval_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Hold out whole posts until ≥ eval_fraction of the pairs are held out; no post is in both."""
    if eval_fraction == 0:
        return list(pairs), []
    posts = sorted({p.post_id for p in pairs})
    if len(posts) < 2:
        raise PreftuneError(f"cannot split by post: the data has {len(posts)} distinct post(s); need ≥ 2")
    random.Random(seed + 1).shuffle(posts)
    per_post = Counter(p.post_id for p in pairs)
    target = math.ceil(eval_fraction * len(pairs))
    held: set[str] = set()
    for post in posts[:-1]:  # always leave at least one post for training
        if sum(per_post[h] for h in held) >= target:
            break
        held.add(post)
    return [p for p in pairs if p.post_id not in held], [p for p in pairs if p.post_id in held]


# ---- statistics ----------------------------------------------------------------------------------


def longer_wins(pairs: Iterable[Pair]) -> float | None:
    """Accuracy of the 'longer completion (in characters) is preferred' baseline. Equal lengths
    count as wrong (the baseline cannot pick), as TRL counts reward ties."""
    scores = [len(p.chosen) > len(p.rejected) for p in pairs]
    return sum(scores) / len(scores) if scores else None


def split_stats(pairs: list[Pair]) -> dict:
    by_batch = Counter(str(p.meta.get("batch")) for p in pairs if p.meta.get("batch"))
    return {
        "pairs": len(pairs),
        "posts": len({p.post_id for p in pairs}),
        "longer_wins": longer_wins(pairs),
        "by_batch": dict(sorted(by_batch.items())),
    }


# ---- the whole preparation -----------------------------------------------------------------------


@dataclass
class Prepared:
    train: list[Pair]
    eval: list[Pair]
    stats: dict


def prepare(cfg: DataConfig, log=print, tokenizer=None) -> Prepared:
    """SRC → cleaned, sampled, post-disjoint train/eval pairs, with statistics. Logs what it did.

    `tokenizer`: a tokenizer or model spec whose chat template renders message-list formats (loaded
    only for those; None: the default model)."""
    if is_prepared_dir(cfg.dataset):
        return load_prepared(Path(cfg.dataset), log)
    log(f"data: {describe(cfg.dataset)}")
    reading = Reading()
    pairs, tally, fmt = load_pairs(cfg, tokenizer, log, reading)
    pairs = resolve_labels(pairs, tally)
    log(f"data: {reading.describe()}; {tally.summary()}")
    for line in tally.details():
        log(line)
    sampled = take_fraction(pairs, cfg.fraction, cfg.seed)
    train, held = split_by_post(sampled, cfg.eval_fraction, cfg.seed)
    stats = {
        PREPARED_MARKER: True,
        "config": asdict(cfg),
        "format": fmt,
        "format_detected_from": reading.detected_from,
        "chat_template": reading.chat_template,
        "labels": dict(reading.labels),
        "rows": tally.to_json(),
        "fraction": {"of": len(pairs), "taken": len(sampled)},
        "train": split_stats(train),
        "eval": split_stats(held),
    }
    log(f"data: fraction {cfg.fraction} → {len(sampled):,} pairs; "
        f"train {len(train):,} pairs / {stats['train']['posts']:,} posts, "
        f"eval {len(held):,} pairs / {stats['eval']['posts']:,} posts (disjoint by post)")
    return Prepared(train, held, stats)


def write_jsonl(path: Path, pairs: Iterable[Pair]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for p in pairs:
            fh.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_jsonl(path: Path) -> list[Pair]:
    pairs = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                pairs.append(Pair.from_json(json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(str(path), lineno, None, f"malformed JSON line ({e.msg})") from None
            except KeyError as e:
                raise DataError(str(path), lineno, e.args[0], "missing") from None
    return pairs


def write_prepared(prepared: Prepared, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", prepared.train)
    write_jsonl(out / "eval.jsonl", prepared.eval)
    (out / "stats.json").write_text(json.dumps(prepared.stats, indent=2) + "\n")


def is_prepared_dir(spec: str) -> bool:
    stats = Path(spec) / "stats.json"
    if not stats.is_file():
        return False
    try:
        return bool(json.loads(stats.read_text()).get(PREPARED_MARKER))
    except (json.JSONDecodeError, AttributeError):
        return False


def load_prepared(folder: Path, log=print) -> Prepared:
    """A folder written by `preftune data prepare`: its split is used as is."""
    stats = json.loads((folder / "stats.json").read_text())
    train, held = read_jsonl(folder / "train.jsonl"), read_jsonl(folder / "eval.jsonl")
    log(f"data: prepared folder {folder}: train {len(train):,} pairs, eval {len(held):,} pairs (split as prepared)")
    return Prepared(train, held, stats)
