"""The `preftune` command: verbs only. Each parses its flags (generated from the config dataclasses)
and calls one function. Every verb with settings also takes `--config FILE.yaml` (config_files.py).
User errors, a mistyped flag included, print one line and exit 2; no traceback."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from preftune.config import (DEFAULT_MODEL, DataConfig, EvalConfig, InspectConfig, TrainConfig, add_arguments,
                             from_args)
from preftune import __version__
from preftune.config_files import add_config_file_options, parse_args
from preftune.errors import PreftuneError


class Parser(argparse.ArgumentParser):
    """argparse, with its errors (unknown flag, invalid choice, missing verb) raised as one-line
    PreftuneErrors that `main` prints like every other user error. Sub-parsers inherit the class."""

    def error(self, message: str):
        raise PreftuneError(f"{message} (see `{self.prog} --help`)")


def cmd_data_prepare(ns: argparse.Namespace) -> None:
    from preftune.data import prepare, write_prepared

    prepared = prepare(from_args(DataConfig, ns), tokenizer=ns.model)
    write_prepared(prepared, Path(ns.out))
    print(f"wrote {ns.out}/train.jsonl ({len(prepared.train):,} pairs), {ns.out}/eval.jsonl "
          f"({len(prepared.eval):,} pairs), {ns.out}/stats.json")


def cmd_data_inspect(ns: argparse.Namespace) -> None:
    import json

    from preftune.data.inspect import format_report, inspect_data
    from preftune.models import load_tokenizer, resolve_model

    cfg = from_args(InspectConfig, ns)
    data_cfg = from_args(DataConfig, ns)
    tokenizer = load_tokenizer(resolve_model(cfg.model).path)
    log = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if cfg.json else print
    report = inspect_data(data_cfg, tokenizer, cfg.model, cfg.max_length, cfg.samples, cfg.length_sample, log)
    print(json.dumps(report, indent=2, ensure_ascii=False) if cfg.json else format_report(report))


def cmd_data_formats(ns: argparse.Namespace) -> None:
    from preftune.data.adapters import ADAPTERS

    for adapter in ADAPTERS.values():
        print(f"{adapter.name:<24} {adapter.description}")


def cmd_train(ns: argparse.Namespace) -> None:
    from preftune.data.adapters import parse_column_map
    from preftune.train import train

    data_cfg, train_cfg = from_args(DataConfig, ns), from_args(TrainConfig, ns)
    parse_column_map(data_cfg.column_map)  # a malformed --column-map fails before the model is resolved
    train(data_cfg, train_cfg)


def cmd_eval(ns: argparse.Namespace) -> None:
    from preftune.evaluate import evaluate_run

    evaluate_run(Path(ns.run_dir), from_args(EvalConfig, ns))


def cmd_env(ns: argparse.Namespace) -> None:
    from preftune.env import report

    print(report(as_json=ns.json))


# Verbs defined outside this file: "module:function", where function(verbs) adds a subparser whose
# `func` default handles the verb. Adding a verb = its module + one line here. Keep imports inside
# the handlers so `preftune --help` stays fast.
VERB_MODULES: list[str] = [
    "preftune.serve:add_cli",
    "preftune.report:add_cli",
    "preftune.sweep:add_cli",
    "preftune.hub:add_cli",
    "preftune.judge:add_cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="preftune",
        description="Preference-tune a causal LM with DPO: prepare data, train, evaluate.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"preftune {__version__}",
                        help="print preftune's version and exit (`preftune env` for everything a bug report needs)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    data = verbs.add_parser("data", help="inspect, prepare and list preference data")
    data_verbs = data.add_subparsers(dest="data_verb", required=True, metavar="ACTION")
    prep = data_verbs.add_parser("prepare", help="clean, sample and split a dataset by post into train/eval JSONL")
    add_arguments(prep, DataConfig)
    prep.add_argument("--model", default=DEFAULT_MODEL, help="model whose chat template renders message-list "
                      "formats (conversational, ultrafeedback); not loaded for other formats (default: %(default)s)")
    prep.add_argument("--out", required=True, help="output folder for train.jsonl, eval.jsonl, stats.json")
    prep.set_defaults(func=cmd_data_prepare)
    insp = data_verbs.add_parser("inspect", help="rows, skips, duplicates, labels and token lengths of a dataset")
    add_arguments(insp, DataConfig, skip=("fraction", "eval_fraction"))
    add_arguments(insp, InspectConfig)
    insp.set_defaults(func=cmd_data_inspect)
    formats = data_verbs.add_parser("formats", help="list the registered row adapters")
    formats.set_defaults(func=cmd_data_formats)

    tr = verbs.add_parser("train", help="one DPO run → OUTPUT/dpo_model_lr{lr}_bs{bs}_epoch{epoch}/, then eval")
    add_arguments(tr, DataConfig)
    add_arguments(tr, TrainConfig)
    tr.set_defaults(func=cmd_train)

    ev = verbs.add_parser("eval", help="held-out preference accuracy, margins and drift of a run folder")
    ev.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `preftune train`")
    add_arguments(ev, EvalConfig)
    ev.set_defaults(func=cmd_eval)

    env = verbs.add_parser("env", help="versions, torch build and devices, caches, offline defaults: paste it into "
                                       "a bug report")
    env.add_argument("--json", action="store_true", help="print one JSON object instead of the list")
    env.set_defaults(func=cmd_env)

    for entry in VERB_MODULES:
        module, function = entry.split(":")
        getattr(importlib.import_module(module), function)(verbs)
    add_config_file_options(parser, skip=("preftune env",))  # --config FILE.yaml on every other command
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from preftune import log

    log.setup()
    try:
        ns = parse_args(build_parser(), argv)  # with --config FILE, the file's settings under the flags given
        if getattr(ns, "report_to", "none") != "none":  # train, sweep, rm train: a missing tracker, before any work
            from preftune.trackers import require

            require(ns.report_to)
        ns.func(ns)
    except PreftuneError as e:
        print(f"preftune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("preftune: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
