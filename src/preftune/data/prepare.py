"""Preparation: read → adapt → clean (duplicates, conflicting labels) → fraction → split by post into
train / validation / test (`split.py`), written as a prepared folder (`folder.py`).

Every row that does not reach a split is counted under a reason in a `Tally`, with a few
locations (file:line) per reason, and printed: nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from preftune.config import TRAIN_OPTIONS, DataConfig, check_fractions
from preftune.data.adapters import Adapter, detect_format, get_adapter
from preftune.data.columns import apply_column_map, parse_column_map, source_field
from preftune.data.folder import (
    PREPARED_MARKER,
    Prepared,
    describe_splits,
    is_prepared_dir,
    load_prepared,
    read_jsonl,
    write_jsonl,
    write_prepared,
)
from preftune.data.pairs import Pair, Tally
from preftune.data.rows import ChatFields, RowError, RowSkip
from preftune.data.sources import describe, iter_records
from preftune.data.split import longer_wins, split_by_post, split_stats, take_fraction
from preftune.errors import DataError, PreftuneError

logger = logging.getLogger(__name__)

# Callers import these from here (their home before the data package was split by concept).
__all__ = ["Pair", "Prepared", "Reading", "Tally", "iter_pairs", "load_pairs", "longer_wins", "prepare",
           "read_jsonl", "resolve_labels", "split_by_post", "take_fraction", "write_jsonl", "write_prepared"]


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
    splits: dict[str, int] | None = None  # a prepared folder: pairs per split

    def describe(self) -> str:
        how = (f"detected from columns {', '.join(self.detected_from)}" if self.detected_from
               else "a prepared folder" if self.splits is not None else "--format")
        chat = f"; chat template of {self.chat_template}" if self.chat_template else ""
        return f"format {self.format} ({how}{chat})"


def chat_renderer(tokenizer):
    """A ChatRenderer for a tokenizer, or for a model spec (None: the default model), loaded now."""
    from preftune.data.chat import ChatRenderer

    if tokenizer is None or isinstance(tokenizer, str):
        from preftune.config import DEFAULT_MODEL
        from preftune.models import load_tokenizer, resolve_model

        spec = tokenizer or DEFAULT_MODEL
        logger.info(f"data: rendering conversations with the chat template of {spec}")
        return ChatRenderer(load_tokenizer(resolve_model(spec).path), spec)
    return ChatRenderer(tokenizer, getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def iter_pairs(cfg: DataConfig, reading: Reading, tokenizer=None) -> Iterator[Pair]:
    """Every pair of SRC through one adapter, streamed; skipped rows are tallied in `reading`.

    `tokenizer` (a tokenizer, or a model spec loaded only when needed; None: the default model)
    renders message-list formats with its chat template. In a folder every file must hold the same
    format (detected per file when --format is auto). A prepared folder yields its pairs as they are
    (train, validation, test)."""
    if is_prepared_dir(cfg.dataset):
        yield from _prepared_pairs(cfg, reading)
        return
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
            per_file[rec.source] = detected = detect_format(row, f"{rec.source}:{rec.line}")
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
                    renderer = chat_renderer(tokenizer)
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


def _load_prepared(cfg: DataConfig) -> Prepared:
    """A prepared folder as SRC: used as is, so flags that shape a preparation are said not to apply."""
    ignored = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(cfg)
               if f.name not in ("dataset", "seed", *TRAIN_OPTIONS) and getattr(cfg, f.name) != f.default]
    if ignored:
        logger.warning(f"data: {cfg.dataset} is a prepared folder: its split is used as is; {', '.join(ignored)} "
                       "do not apply (prepare the source again to change them)")
    return load_prepared(Path(cfg.dataset).expanduser())


def _prepared_pairs(cfg: DataConfig, reading: Reading) -> Iterator[Pair]:
    prepared = _load_prepared(cfg)
    text = {k: v for k, v in prepared.stats.items() if isinstance(v, str)}  # stats.json is the user's file too
    reading.format, reading.chat_template = text.get("format"), text.get("chat_template")
    reading.splits = {name: len(pairs) for name, pairs in prepared.splits().items()}
    for pairs in prepared.splits().values():
        for pair in pairs:
            reading.tally.total += 1
            yield pair


def load_pairs(cfg: DataConfig, tokenizer=None, reading: Reading | None = None) -> tuple[list[Pair], Tally, str]:
    """All pairs of SRC through one adapter, plus the tally of skipped rows and the adapter name."""
    reading = reading or Reading()
    pairs = list(iter_pairs(cfg, reading, tokenizer))
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


# ---- the whole preparation -----------------------------------------------------------------------


def prepare(cfg: DataConfig, tokenizer=None) -> Prepared:
    """SRC → cleaned, sampled, post-disjoint train/validation/test pairs, with statistics. Logs what it did.

    `tokenizer`: a tokenizer or model spec whose chat template renders message-list formats (loaded
    only for those; None: the default model)."""
    if is_prepared_dir(cfg.dataset):
        return _load_prepared(cfg)
    check_fractions(cfg.eval_fraction, cfg.test_fraction)  # before reading: a typo must not cost a full pass
    logger.info(f"data: {describe(cfg.dataset)}")
    reading = Reading()
    pairs, tally, fmt = load_pairs(cfg, tokenizer, reading)
    pairs = resolve_labels(pairs, tally)
    logger.info(f"data: {reading.describe()}; {tally.summary()}")
    for line in tally.details():
        logger.info(line)
    if not pairs:
        raise PreftuneError(f"{cfg.dataset}: no pairs left to prepare ({tally.summary()}): see the reasons above")
    sampled = take_fraction(pairs, cfg.fraction, cfg.seed)
    prepared = Prepared(*split_by_post(sampled, cfg.eval_fraction, cfg.test_fraction, cfg.seed), {})
    prepared.stats = {
        PREPARED_MARKER: True,
        "config": asdict(cfg),
        "format": fmt,
        "format_detected_from": reading.detected_from,
        "chat_template": reading.chat_template,
        "labels": dict(reading.labels),
        "rows": tally.to_json(),
        "fraction": {"of": len(pairs), "taken": len(sampled)},
        **{name: split_stats(split) for name, split in prepared.splits().items()},
    }
    prepared.stats["eval"] = prepared.stats["validation"]  # the key readers before the test split use
    logger.info(f"data: fraction {cfg.fraction} → {len(sampled):,} pairs; {describe_splits(prepared)} "
                "(disjoint by post)")
    return prepared
