"""`preftune sft`: supervised fine-tuning on reference summaries, the step before DPO (Rafailov et al. 2023
fine-tune the base model on the task's references first, so DPO's reference model is in-distribution).

Rows are (prompt, summary + one EOS) in the exact text DPO sees, fitted to --max-length by DPO's rule
(the post is trimmed, never the summary), with the loss on the summary tokens only. --sft-data `chosen`:
the chosen summaries of the preference data's TRAIN pairs (after --min-confidence / --length-balance;
Preferred-FT, DPO paper §6); or a file, folder (one split of it) or hub id of CarperAI TL;DR rows.
docs/sft.md has the details; the run folder, resume, trackers and the chain base → SFT → DPO are the
lifecycle's (runs/lifecycle.py, docs/runs.md).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from preftune.config import SFT_CHOSEN, DataConfig, SFTConfig
from preftune.data.fit import fit
from preftune.data.pairs import Pair, Tally
from preftune.data.rows import RowError, RowSkip, text_id
from preftune.errors import DataError, PreftuneError
from preftune.runs.lifecycle import Lifecycle, begin, per_device_batch
from preftune.runs.results import read_train_log

logger = logging.getLogger(__name__)

TLDR_CUE = "TL;DR:"
POST_MARK = "\nPOST: "


# ---- rows ----------------------------------------------------------------------------------------
# An SFT row is a Pair whose chosen and rejected are the same summary: the split, the truncation rule and
# the token counting of DPO's pairs then apply unchanged (a pair's length is its longer sequence's).


def as_row(pair: Pair, summary: str) -> Pair:
    return Pair(pair.prompt, summary, summary, pair.post_id, pair.source, pair.body_span, pair.meta, pair.cut,
                pair.turns)


def chosen_rows(train_pairs: list[Pair]) -> list[Pair]:
    """One row per distinct (prompt, chosen summary) of the train pairs, in order: a summary preferred in
    several comparisons is imitated once."""
    seen, rows = set(), []
    for pair in train_pairs:
        if (pair.prompt, pair.chosen) not in seen:
            seen.add((pair.prompt, pair.chosen))
            rows.append(as_row(pair, pair.chosen))
    return rows


def _text(row: dict, key: str) -> str:
    if key not in row:
        raise RowError(key, f"missing (found: {', '.join(map(str, row))}); TL;DR SFT rows need 'prompt' and 'label'")
    if not isinstance(row[key], str):
        raise RowError(key, f"expected text, got {type(row[key]).__name__} {str(row[key])[:40]!r}")
    return row[key]


def tldr_sft_row(row: dict, source: str) -> Pair:
    """A CarperAI/openai_summarize_tldr row ({prompt: '…\\nTL;DR: ', label}) as an SFT row in preftune's
    prompt format ('…\\nTL;DR:' + ' ' + summary). The post is the trimmable span, as in DPO's TL;DR pairs;
    a prompt without a POST: line is trimmed from its start."""
    prompt, label = _text(row, "prompt").rstrip(), _text(row, "label").strip()
    if not prompt.endswith(TLDR_CUE):
        raise RowError("prompt", f"must end with '{TLDR_CUE}' (TL;DR SFT format), got …{prompt[-40:]!r}")
    if not label:
        raise RowSkip("empty summary", "label")
    cue = len(prompt) - len(TLDR_CUE) - 1 if prompt[: -len(TLDR_CUE)].endswith("\n") else len(prompt) - len(TLDR_CUE)
    post = prompt.find(POST_MARK)
    if 0 <= post < cue:
        span, cut = (post + len(POST_MARK), cue), "end"
    else:
        span, cut = (0, cue), "start"
    if span[0] >= span[1]:
        raise RowSkip("empty post", "prompt")
    return Pair(prompt, " " + label, " " + label, text_id(prompt[span[0]:span[1]]), source, span, {}, cut)


def file_rows(spec: str, split: str) -> tuple[list[Pair], Tally]:
    """Every TL;DR SFT row of `split` of a file, folder (of split files: train*, valid*, test*) or hub id; a
    malformed row stops with file, row and field."""
    from preftune.data.sources import iter_records

    rows, tally = [], Tally()
    for rec in iter_records(spec, None, split, split_flag="--sft-split"):  # a folder: only that split's files
        tally.total += 1
        where = f"{rec.source}:{rec.line}"
        try:
            rows.append(tldr_sft_row(rec.row, where))
        except RowSkip as s:
            tally.skip(s.reason, f"{where} {s.field}")
        except RowError as e:
            raise DataError(rec.source, rec.line, e.field, e.message) from None
    if not tally.total:
        raise PreftuneError(f"--sft-data {spec}: no rows")
    return rows, tally


def sample(rows: list[Pair], n: int | None, seed: int) -> list[Pair]:
    """At most n rows, a seeded sample in the original order."""
    if n is None or n >= len(rows):
        return rows
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), n))]


def load_rows(data_cfg: DataConfig, cfg: SFTConfig, tokenizer) -> tuple[list[Pair], dict]:
    """The SFT rows (before fitting) and what to record about where they came from."""
    if cfg.sft_data == SFT_CHOSEN:
        from preftune.data.options import select_train_pairs
        from preftune.data.prepare import prepare

        prepared = prepare(data_cfg, tokenizer=tokenizer)
        # --min-confidence / --length-balance: the train pairs whose chosen summaries are imitated, as `train`'s
        train_pairs, options = select_train_pairs(prepared.train, data_cfg, tokenizer)
        rows = chosen_rows(train_pairs)
        held_out = {p.post_id for p in prepared.validation + prepared.test}
        if any(r.post_id in held_out for r in rows):  # split_by_post guarantees this; a regression must not pass
            raise PreftuneError("internal error: an SFT row's post is in the validation or test split")
        info = {"source": SFT_CHOSEN, "dataset": data_cfg.dataset, "train_pairs": len(train_pairs),
                "distinct_chosen": len(rows), "held_out_posts": len(held_out), "train_options": options}
        return rows, info
    rows, tally = file_rows(cfg.sft_data, cfg.sft_split)
    logger.info(f"sft data: {cfg.sft_data}: {tally.summary()}")
    for line in tally.details():
        logger.info(line)
    return rows, {"source": cfg.sft_data, "split": cfg.sft_split, "rows": tally.to_json()}


# ---- training ------------------------------------------------------------------------------------


def check_options(data_cfg: DataConfig, cfg: SFTConfig) -> None:
    """Refuse, before any work, an option these SFT rows cannot apply (a run records what it applied)."""
    if cfg.sft_data == SFT_CHOSEN and cfg.sft_split != "train":
        raise PreftuneError(f"--sft-split {cfg.sft_split} applies to --sft-data FILE/FOLDER/hub id, not to --sft-data "
                            "chosen (always the preference data's train split): drop --sft-split")
    picked = [flag for flag, on in (("--min-confidence", data_cfg.min_confidence is not None),
                                    ("--length-balance", data_cfg.length_balance)) if on]
    if cfg.sft_data != SFT_CHOSEN and picked:
        raise PreftuneError(f"{' and '.join(picked)} choose among preference pairs; --sft-data {cfg.sft_data} holds SFT "
                            f"rows (prompt, label), not pairs: drop {' and '.join(picked)}, or use --sft-data chosen")


def sft(data_cfg: DataConfig, cfg: SFTConfig, name: str | None = None) -> Path:
    """`preftune sft`: rows → fitted rows → engine (objective "sft") → ROOT/NAME (written as NAME.partial).
    Under torchrun every rank trains; rank 0 writes. Returns the folder."""
    check_options(data_cfg, cfg)
    with begin("sft", cfg, name) as life:  # before any work; ROOT/NAME locked until the run is written
        return _sft(data_cfg, cfg, life)


def _sft(data_cfg: DataConfig, cfg: SFTConfig, life: Lifecycle) -> Path:
    from preftune.dpo.engines import ENGINES, TrainJob
    from preftune.models import load_tokenizer, resolve_model

    per_device = per_device_batch(cfg.batch_size, cfg.grad_accum, life.world_size)
    resolved = resolve_model(cfg.model)
    logger.info(f"model: {cfg.model} ← {resolved.source}")
    tokenizer = load_tokenizer(resolved.path)
    rows, source = load_rows(data_cfg, cfg, tokenizer)
    rows, fits = fit(tokenizer, sample(rows, cfg.max_rows, data_cfg.seed), cfg.max_length, "sft")
    if not rows:
        raise PreftuneError("no SFT rows left after fitting to --max-length")

    resume = life.open(data_cfg)
    job = TrainJob(resolved.path, tokenizer, rows, cfg, data_cfg.seed, life.partial, per_device, life.log_path,
                   resume_from=resume, objective="sft")
    logger.info(f"sft: {life.name}: {len(rows):,} rows × {cfg.epochs} epoch(s), batch {cfg.batch_size} "
                f"({life.world_size} process(es) × {per_device} × {cfg.grad_accum} accumulation), lr {cfg.lr}, "
                f"engine {cfg.engine}, {'LoRA' if cfg.lora else 'full fine-tune'}")
    result = ENGINES[cfg.engine](job)
    if life.rank != 0:
        return life.final
    tokenizer.save_pretrained(life.partial)
    log = read_train_log(life.log_path)  # the whole run's, a resumed one's included
    per_row = result.runtime_s / (len(rows) * cfg.epochs)
    logger.info(f"sft: {result.steps} steps in {result.runtime_s:.1f} s ({per_row:.2f} s/row)")
    data_label = SFT_CHOSEN if cfg.sft_data == SFT_CHOSEN else Path(cfg.sft_data).name or cfg.sft_data
    return life.finish(data_cfg, {
        "steps": result.steps,
        "train_runtime_s": round(result.runtime_s, 2),
        "train_rows": len(rows),
        "rows_per_s": 1 / per_row,
        "s_per_row": per_row,
        "first_loss": log[0].get("loss") if log else None,
    }, {
        "model_source": resolved.source,
        "per_device_batch_size": per_device,
        "sft_source": source,
        "fit": fits,
        # the posts imitated (sorted ids): with --sft-data chosen all from the preference data's train split
        "post_ids": sorted({r.post_id for r in rows}),
    }, life.chain_entry(data=data_label, rows=len(rows)))


def add_cli(verbs) -> None:
    from preftune.config import add_arguments

    p = verbs.add_parser("sft", help="supervised fine-tuning on reference summaries → OUTPUT/sft_model_lr{lr}_bs{bs}_"
                                     "epoch{epochs}/, a model folder `train --model` starts DPO from")
    add_arguments(p, DataConfig, title="data (--sft-data chosen: the preference data whose train split is used)")
    add_arguments(p, SFTConfig)
    p.set_defaults(func=_cmd)


def _cmd(ns) -> None:
    from preftune.config import from_args
    from preftune.data.columns import parse_column_map

    data_cfg, cfg = from_args(DataConfig, ns), from_args(SFTConfig, ns)
    parse_column_map(data_cfg.column_map)
    sft(data_cfg, cfg)
