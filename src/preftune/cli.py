"""The `preftune` command: verbs only. Each parses its flags (generated from the config dataclasses)
and calls one function. Every verb with settings also takes `--config FILE.yaml` (config/files.py).
User errors, a mistyped flag included, print one line and exit 2; no traceback."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from preftune import __version__
from preftune.config import (
    DataConfig,
    EvalConfig,
    TrainConfig,
    add_arguments,
    from_args,
)
from preftune.config.files import add_config_file_options, parse_args
from preftune.errors import PreftuneError
from preftune.launch import end_group


class Parser(argparse.ArgumentParser):
    """argparse, with its errors (unknown flag, invalid choice, missing verb) raised as one-line
    PreftuneErrors that `main` prints like every other user error. Sub-parsers inherit the class."""

    def error(self, message: str):
        raise PreftuneError(f"{message} (see `{self.prog} --help`)")


def cmd_train(ns: argparse.Namespace) -> None:
    from preftune.data.columns import parse_column_map
    from preftune.runs.dpo import train

    data_cfg, train_cfg = from_args(DataConfig, ns), from_args(TrainConfig, ns)
    parse_column_map(data_cfg.column_map)  # a malformed --column-map fails before the model is resolved
    train(data_cfg, train_cfg)


def cmd_eval(ns: argparse.Namespace) -> None:
    from preftune.dpo.evaluate import evaluate_run

    evaluate_run(Path(ns.run_dir), from_args(EvalConfig, ns), recompute_test=ns.recompute_test)


def cmd_env(ns: argparse.Namespace) -> None:
    from preftune.env import report

    print(report(as_json=ns.json))


# Verbs defined outside this file: "module:function", where function(verbs) adds a subparser whose
# `func` default handles the verb. Adding a verb = its module + one line here. Keep imports inside
# the handlers so `preftune --help` stays fast.
VERB_MODULES: list[str] = [
    "preftune.data.cli:add_cli",
    "preftune.cli:add_cli",
    "preftune.serve:add_cli",
    "preftune.sweep.report:add_cli",
    "preftune.sweep.grid:add_cli",
    "preftune.hub.cli:add_cli",
    "preftune.runs.rm:add_cli",
    "preftune.judge.judge:add_cli",
    "preftune.runs.sft:add_cli",
    "preftune.sweep.recipe:add_cli",
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

    for entry in VERB_MODULES:
        module, function = entry.split(":")
        getattr(importlib.import_module(module), function)(verbs)
    add_config_file_options(parser, skip=("preftune env", "preftune recipe"))  # --config on every other command
    return parser


def add_cli(verbs) -> None:
    """`train`, `eval` and `env`: the verbs small enough to live here."""
    tr = verbs.add_parser("train", help="one DPO run → OUTPUT/dpo_model_lr{lr}_bs{bs}_epoch{epoch}/, then eval")
    add_arguments(tr, DataConfig)
    add_arguments(tr, TrainConfig)
    tr.set_defaults(func=cmd_train)

    ev = verbs.add_parser("eval", help="held-out preference accuracy, margins and drift of a run folder")
    ev.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `preftune train`")
    add_arguments(ev, EvalConfig)
    ev.add_argument("--recompute-test", action="store_true", help="compute the run's test result (test.json) "
                    "again, replacing it: it is computed once, so without this an existing one is an error")
    ev.set_defaults(func=cmd_eval)

    env = verbs.add_parser("env", help="versions, torch build and devices, caches, offline defaults: paste it into "
                                       "a bug report")
    env.add_argument("--json", action="store_true", help="print one JSON object instead of the list")
    env.set_defaults(func=cmd_env)

def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from preftune import log

    log.setup()
    try:
        ns = parse_args(build_parser(), argv)  # with --config FILE, the file's settings under the flags given
        if getattr(ns, "report_to", "none") != "none":  # train, sweep, rm train: a missing tracker, before any work
            from preftune.runs.trackers import require

            require(ns.report_to)
        ns.func(ns)
    except PreftuneError as e:
        print(f"preftune: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("preftune: interrupted", file=sys.stderr)
        return 130
    finally:
        end_group()  # under a launcher: before interpreter exit, which gloo's threads may not survive
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
