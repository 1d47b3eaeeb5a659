"""The command line as a whole: every verb and sub-verb answers --help, every flag has help text, the
help quotes no timings measured on one machine, and the flags come from the configs (their choices too)."""

import argparse
import re
import subprocess
import sys

import pytest
from conftest import REPO

from preftune.cli import build_parser, main
from preftune.config import ENGINE_NAMES, FORMAT_NAMES, LOSS_NAMES


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(verb path, parser) for the root and every verb and sub-verb, found in the parser itself."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


COMMANDS = list(commands(build_parser()))
# a duration as measured on some machine: "~67 s", "26 min", "3 ms", "1.2 s per sequence"
TIMING = re.compile(r"\d(?:[\d.,]*)\s*(?:ms|s|sec|seconds?|min|minutes?|h|hours?)\b")


def test_every_verb_is_found():
    verbs = {" ".join(path) for path, _ in COMMANDS}
    assert {"data prepare", "data inspect", "data formats", "data push", "train", "eval", "sweep", "report", "push", "judge",
            "rm train", "serve", "space", "env"} <= verbs


@pytest.mark.parametrize("path, parser", COMMANDS, ids=[" ".join(p) or "preftune" for p, _ in COMMANDS])
def test_help_exits_0_and_every_flag_is_explained(path, parser, capsys):
    with pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert out.startswith(f"usage: {' '.join(('preftune', *path))}")
    unexplained = [a.option_strings or a.dest for a in parser._actions
                   if not isinstance(a, argparse._SubParsersAction) and (not a.help or a.help == argparse.SUPPRESS)]
    assert unexplained == []
    assert TIMING.findall(out) == [], "machine-specific timings belong in the README or docs, not in --help"


def test_choices_come_from_the_configs(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for names in (LOSS_NAMES, ENGINE_NAMES, FORMAT_NAMES):
        assert "{" + ",".join(names) + "}" in out


def test_the_installed_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "preftune", "--help"], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert done.returncode == 0 and "usage: preftune" in done.stdout
