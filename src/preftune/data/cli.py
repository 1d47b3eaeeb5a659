"""The `preftune data` verbs: prepare, inspect, formats, push. Registered in `preftune.cli` as
"preftune.data.cli:add_cli"; heavy imports stay inside the handlers so `preftune --help` stays fast."""

from __future__ import annotations

import argparse

from preftune.config import (
    DEFAULT_MODEL,
    TRAIN_OPTIONS,
    DataConfig,
    DataPushConfig,
    InspectConfig,
    add_arguments,
    from_args,
)


def cmd_data_prepare(ns: argparse.Namespace) -> None:
    from preftune.data.folder import SPLIT_FILES, STATS_FILE, check_out
    from preftune.data.prepare import prepare, write_prepared

    cfg = from_args(DataConfig, ns)
    out = check_out(ns.out, cfg.dataset)  # before any work: a bad --out must not cost a full preparation
    prepared = prepare(cfg, tokenizer=ns.model)
    write_prepared(prepared, out)
    files = ", ".join(f"{out / SPLIT_FILES[name]} ({name}: {len(pairs):,} pairs)"
                      for name, pairs in prepared.splits().items())
    print(f"wrote {files}, {out / STATS_FILE}")


def cmd_data_inspect(ns: argparse.Namespace) -> None:
    import json

    from preftune import log
    from preftune.data.inspect import format_report, inspect_data
    from preftune.models import load_tokenizer, resolve_model

    cfg = from_args(InspectConfig, ns)
    data_cfg = from_args(DataConfig, ns)
    if cfg.json:
        log.setup(stream="stderr")  # stdout holds the JSON object only
    tokenizer = load_tokenizer(resolve_model(cfg.model).path)
    report = inspect_data(data_cfg, tokenizer, cfg.model, cfg.max_length, cfg.samples, cfg.length_sample)
    print(json.dumps(report, indent=2, ensure_ascii=False) if cfg.json else format_report(report))


def cmd_data_formats(ns: argparse.Namespace) -> None:
    from preftune.data.adapters import ADAPTERS

    for adapter in ADAPTERS.values():
        print(f"{adapter.name:<24} {adapter.description}")


def cmd_data_push(ns: argparse.Namespace) -> None:
    from preftune.hub.data import push_dataset

    push_dataset(ns.dir, from_args(DataPushConfig, ns))


def add_cli(verbs) -> None:
    """The `data` verb group: `verbs` is the subparsers object of the `preftune` parser."""
    data = verbs.add_parser("data", help="inspect, prepare, list and push preference data")
    data_verbs = data.add_subparsers(dest="data_verb", required=True, metavar="ACTION")

    def verb(name: str, about: str) -> argparse.ArgumentParser:
        return data_verbs.add_parser(name, help=about, description=about)

    prep = verb("prepare", "clean, sample and split a dataset by post into train/validation/test JSONL")
    add_arguments(prep, DataConfig, skip=TRAIN_OPTIONS)  # they choose training pairs at train time, from all splits
    prep.add_argument("--model", default=DEFAULT_MODEL, help="model whose chat template renders message-list "
                      "formats (conversational, ultrafeedback); not loaded for other formats (default: %(default)s)")
    prep.add_argument("--out", required=True, help="output folder for train.jsonl, eval.jsonl (validation), "
                      "test.jsonl, stats.json")
    prep.set_defaults(func=cmd_data_prepare)
    insp = verb("inspect", "rows, skips, duplicates, labels and token lengths of a dataset or a prepared folder")
    add_arguments(insp, DataConfig, skip=("fraction", "eval_fraction", "test_fraction", *TRAIN_OPTIONS))
    add_arguments(insp, InspectConfig)
    insp.set_defaults(func=cmd_data_inspect)
    verb("formats", "list the registered row adapters").set_defaults(func=cmd_data_formats)
    push = verb("push", "push a prepared folder (its splits) or the demo's preferences.jsonl to the Hugging Face Hub as "
                "a dataset repo: Parquet per split and a dataset card")
    push.add_argument("dir", metavar="DIR", help="a folder written by `preftune data prepare`, or the demo's "
                      "preferences.jsonl (or the run folder holding it)")
    add_arguments(push, DataPushConfig, title="push")
    push.set_defaults(func=cmd_data_push)
