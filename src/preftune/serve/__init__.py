"""Serve a run: `preftune serve` (a Gradio demo, base vs DPO-tuned, side by side) and `preftune space`
(the same demo as a Hugging Face Space folder, optionally pushed).

    demo.py      what is served: model specs, request checks, the side-by-side stream, implicit rewards
    (decoding is preftune.judge.generate's: the judge's decoder, streamed)
    feedback.py  votes → summarize_from_feedback rows, appended under a file lock
    app.py       the Gradio page and `serve`
    space.py     the Space folder and its push

This module stays light (the CLI imports it for --help): gradio and torch load inside the handlers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from preftune.config import ServeConfig, SpaceConfig, add_arguments, from_args


def cmd_serve(ns: argparse.Namespace) -> None:
    from preftune.serve.app import serve

    serve(Path(ns.run_dir), from_args(ServeConfig, ns))


def cmd_space(ns: argparse.Namespace) -> None:
    from preftune.serve.space import space

    space(Path(ns.run_dir), ns.out, from_args(SpaceConfig, ns))  # the raw --out: Path("") would be "."


def add_cli(verbs) -> None:
    sv = verbs.add_parser("serve", help="a web demo of a run: base vs DPO-tuned summaries side by side, with votes")
    sv.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `preftune train`")
    add_arguments(sv, ServeConfig)
    sv.set_defaults(func=cmd_serve)

    sp = verbs.add_parser("space", help="write (and --push) a Hugging Face Space running the demo of a run")
    sp.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `preftune train`")
    sp.add_argument("--out", required=True, metavar="DIR", help="folder to write the Space into")
    add_arguments(sp, SpaceConfig)
    sp.set_defaults(func=cmd_space)
