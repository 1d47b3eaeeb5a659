"""`preftune sft`: supervised fine-tuning on reference summaries, the step before DPO (Rafailov et al. 2023
fine-tune the base model on the task's references first, so DPO's reference model is in-distribution).

Rows are (prompt, summary) in the exact text DPO sees: the TL;DR prompt `SUBREDDIT: r/…\\nTITLE: …\\nPOST:
…\\nTL;DR:` and a summary starting with a space, ending with one EOS (`data.sequence`). They are fitted to
--max-length by the same rule as DPO's pairs (the post's end is trimmed, never the summary) and trained
with TRL's SFTTrainer on a prompt/completion dataset, with the loss on the summary tokens only
(`completion_only_loss`). Two sources (--sft-data):
  chosen      the chosen summaries of the preference data's TRAIN split (Preferred-FT, DPO paper §6):
              the same --dataset/--fraction/--eval-fraction/--test-fraction/--seed give the same train posts
              `preftune train` uses, so no validation or test post is ever imitated;
  a file/hub  TL;DR SFT rows as CarperAI/openai_summarize_tldr has them: `prompt` ending "TL;DR: " and
              `label`. The prompt's trailing space moves to the front of the summary: the same text, split
              where preftune's prompts end, so SFT and DPO see the same prompt tokens.
The run folder is written like a DPO run's (ROOT/NAME.partial → ROOT/NAME) and loads with
`from_pretrained`; its preftune_config.json (kind "sft") holds the chain `train --model FOLDER` extends.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict
from pathlib import Path

import preftune
from preftune.config import SFT_CHOSEN, DataConfig, SFTConfig
from preftune.data.fit import fit
from preftune.data.pairs import Pair, Tally
from preftune.data.rows import RowError, RowSkip, text_id
from preftune.data.sequence import with_eos
from preftune.errors import DataError, PreftuneError
from preftune.runs import folder as run_folder
from preftune.runs.folder import CONFIG_FILE, METRICS_FILE, TRAIN_LOG_FILE

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
    """Every TL;DR SFT row of a file, folder or hub id; a malformed row stops with file, row and field."""
    from preftune.data.sources import iter_records

    rows, tally = [], Tally()
    for rec in iter_records(spec, None, split):
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
        from preftune.data.prepare import prepare

        prepared = prepare(data_cfg, tokenizer=tokenizer)
        rows = chosen_rows(prepared.train)
        held_out = {p.post_id for p in prepared.validation + prepared.test}
        if any(r.post_id in held_out for r in rows):  # split_by_post guarantees this; a regression must not pass
            raise PreftuneError("internal error: an SFT row's post is in the validation or test split")
        info = {"source": SFT_CHOSEN, "dataset": data_cfg.dataset, "train_pairs": len(prepared.train),
                "distinct_chosen": len(rows), "held_out_posts": len(held_out)}
        return rows, info
    rows, tally = file_rows(cfg.sft_data, cfg.sft_split)
    logger.info(f"sft data: {cfg.sft_data}: {tally.summary()}")
    for line in tally.details():
        logger.info(line)
    return rows, {"source": cfg.sft_data, "split": cfg.sft_split, "rows": tally.to_json()}


# ---- training ------------------------------------------------------------------------------------


def sft_dataset(rows: list[Pair], eos: str):
    """TRL's prompt/completion format; the completion ends with exactly one EOS (TRL adds none then)."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r.prompt, "completion": with_eos(r.chosen, eos)} for r in rows])


def sft_args(cfg: SFTConfig, out_dir: Path, seed: int):
    import torch
    from trl import SFTConfig as TRLSFTConfig

    from preftune.dpo.engines.base import CHECKPOINTS_DIR
    from preftune.precision import resolve

    precision = resolve(cfg.precision)  # never TRL's bf16 default: ~10x slower on CPUs without bf16 units
    return TRLSFTConfig(
        output_dir=str(out_dir / CHECKPOINTS_DIR),
        learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs,
        max_length=cfg.max_length,  # rows arrive fitted: TRL's right-truncation never cuts a summary
        completion_only_loss=True,
        packing=False,
        activation_checkpointing=cfg.gradient_checkpointing,  # TRL's default is on
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        disable_tqdm=False,
    )


def build_trainer(model_path: str, tokenizer, rows: list[Pair], cfg: SFTConfig, seed: int, out_dir: Path):
    """TRL's SFTTrainer over the rows, logging each step to out_dir/train_log.jsonl."""
    from transformers import set_seed
    from trl import SFTTrainer

    from preftune.dpo.engines.trl import JsonlLogger
    from preftune.models import load_model

    set_seed(seed)
    trainer = SFTTrainer(model=load_model(model_path), args=sft_args(cfg, out_dir, seed),
                         train_dataset=sft_dataset(rows, tokenizer.eos_token), processing_class=tokenizer,
                         callbacks=[JsonlLogger(out_dir / TRAIN_LOG_FILE)])
    return trainer


def sft_chain(cfg: SFTConfig, name: str, final: Path, data_label: str, n_rows: int) -> list[dict]:
    entry = {"kind": run_folder.SFT_KIND, "run": name, "path": str(final.resolve()), "lr": cfg.lr,
             "bs": cfg.batch_size, "epochs": cfg.epochs, "data": data_label, "rows": n_rows}
    return run_folder.model_chain(cfg.model) + [entry]


def sft(data_cfg: DataConfig, cfg: SFTConfig, name: str | None = None) -> Path:
    """`preftune sft`: rows → fitted rows → SFTTrainer → ROOT/NAME (written as NAME.partial). Returns it."""
    from preftune.launch import single_process
    from preftune.models import load_tokenizer, resolve_model

    single_process("sft")  # several processes would each train and write alone
    name = name or cfg.run_name
    root = Path(cfg.output_dir)
    run_folder.check_destination(root / name, cfg.overwrite)  # before any work
    resolved = resolve_model(cfg.model)
    logger.info(f"model: {cfg.model} ← {resolved.source}")
    tokenizer = load_tokenizer(resolved.path)
    rows, source = load_rows(data_cfg, cfg, tokenizer)
    rows, fits = fit(tokenizer, sample(rows, cfg.max_rows, data_cfg.seed), cfg.max_length, "sft")
    if not rows:
        raise PreftuneError("no SFT rows left after fitting to --max-length")

    partial = run_folder.begin_partial(root, name, cfg.overwrite)
    trainer = build_trainer(resolved.path, tokenizer, rows, cfg, data_cfg.seed, partial)
    logger.info(f"sft: {name}: {len(rows):,} rows × {cfg.epochs} epoch(s), batch {cfg.batch_size}, lr {cfg.lr}")
    start = time.perf_counter()
    output = trainer.train()
    runtime = time.perf_counter() - start
    trainer.save_model(str(partial))
    tokenizer.save_pretrained(partial)

    log = run_folder.read_train_log(partial / TRAIN_LOG_FILE)
    run_folder.atomic_write_json(partial / METRICS_FILE, {
        "steps": output.global_step,
        "train_runtime_s": round(runtime, 2),
        "train_rows": len(rows),
        "rows_per_s": len(rows) * cfg.epochs / runtime,
        "s_per_row": runtime / (len(rows) * cfg.epochs),
        "first_loss": log[0].get("loss") if log else None,
        "final": {k: v for k, v in (log[-1] if log else {}).items() if k != "step"},
    })
    data_label = SFT_CHOSEN if cfg.sft_data == SFT_CHOSEN else Path(cfg.sft_data).name or cfg.sft_data
    run_folder.atomic_write_json(partial / CONFIG_FILE, {
        "preftune_version": preftune.__version__,
        "kind": run_folder.SFT_KIND,
        "run_name": name,
        "data": asdict(data_cfg),
        "sft": asdict(cfg),
        "model_source": resolved.source,
        "sft_source": source,
        "fit": fits,
        # the posts imitated (sorted ids): with --sft-data chosen all from the preference data's train split
        "post_ids": sorted({r.post_id for r in rows}),
        "chain": sft_chain(cfg, name, root / name, data_label, len(rows)),
    })
    logger.info(f"sft: {output.global_step} steps in {runtime:.1f} s ({runtime / (len(rows) * cfg.epochs):.2f} s/row)")
    final = run_folder.finish_partial(partial)
    logger.info(f"run: {final}")
    return final


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
