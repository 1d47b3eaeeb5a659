"""Settings files: one reader (`read_yaml`, `check_setting`) for `--config FILE.yaml` on every command,
sweep files and recipes, so every file error is one line naming the file, the line and the key.

A file's keys are the command's flags with underscores; a flag on the command line wins over the file,
the file over the defaults. `add_config_file_options` gives every command a --config flag and
`parse_args` makes the file's values that command's defaults; `preftune sweep` (grid keys take lists)
and `preftune recipe` (sections) check their files with the same functions. Details:
docs/settings-files.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from preftune.config import check_value
from preftune.errors import DataError, PreftuneError

CONFIG_DEST = "config"
_TARGET = "_config_file_parser"  # namespace attribute: the parser of the command being run (set as its default)
_NOT_SETTINGS = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """A YAML or flag value checked against a field's type: lists for a sweep's grid, YAML's `1e-6`
    (a string to YAML 1.1) as a float. Raises a message naming `where`."""
    if typing.get_origin(hint) is tuple:  # a grid key: one value or a list of them
        values = value if isinstance(value, list) else [value]
        return tuple(coerce(v, typing.get_args(hint)[0], where) for v in values)
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise PreftuneError(f"{where}: needs a value")
    tp = next((a for a in typing.get_args(hint) if a is not type(None)), hint)  # `int | None` → int
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is int and isinstance(value, str) and value.strip().lstrip("+-").isdigit():  # from a flag
        return int(value)
    if tp is float and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    if tp is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise PreftuneError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def read_text(path: Path, what: str = "--config") -> str:
    """A settings file's text: UTF-8, or a one-line error naming the file and the line of the first
    byte that is not (a traceback in every command before)."""
    if not path.is_file():
        raise PreftuneError(f"{what} {path}: {'is a folder, not a file' if path.is_dir() else 'file not found'}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PreftuneError(f"{what} {path}: cannot read it ({e.strerror or e})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(str(path), data[:e.start].count(b"\n") + 1, None,
                        f"not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8") from None


def read_yaml(path: Path, what: str = "--config") -> tuple[Any, dict[tuple[str, ...], int]]:
    """A settings file's YAML and the line of each key, by its path of keys ((section, key) → line; () →
    the document's first line): the one loader of --config files, sweep files and recipes. A key given
    twice in one mapping, at any depth, is an error (YAML would keep the last one silently). `what` names
    the file in "not found" messages."""
    import yaml

    text = read_text(path, what)
    try:
        node, values = yaml.compose(text, Loader=yaml.SafeLoader), yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PreftuneError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from e
    lines: dict[tuple[str, ...], int] = {(): node.start_mark.line + 1} if node is not None else {}
    walking: set[int] = set()  # an alias may make the node graph a cycle

    def walk(node: Any, prefix: tuple[str, ...], record: bool) -> None:
        if id(node) in walking:
            return
        walking.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, Any], int] = {}
            for key, value in node.value:
                if key.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`: the keys beside it override, by design
                    walk(value, prefix, False)
                    continue
                at, line = (*prefix, str(key.value)), key.start_mark.line + 1
                ident = (key.tag, str(key.value))
                if ident in seen:
                    raise DataError(str(path), line, ".".join(at), f"given twice (first on line {seen[ident]}); "
                                    "a settings file takes each key once: delete one")
                seen[ident] = line
                if record:
                    lines[at] = line
                walk(value, at, record)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item, prefix, False)
        walking.discard(id(node))

    walk(node, (), True)
    return values, lines


def yaml_kind(value: Any) -> str:
    """What a YAML value is, in the file's words."""
    return {dict: "a mapping", list: "a list", str: "a string", bool: "true/false"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def field_rules(classes: tuple[type, ...]) -> dict[str, Mapping]:
    """Each setting's field metadata (choices, range) in the config `classes`; a name two classes share
    takes the first one's rule."""
    rules: dict[str, Mapping] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            rules.setdefault(f.name, f.metadata)
    return rules


def load_config_file(path: Path, hints: dict[str, Any], choices: dict[str, tuple] | None = None,
                     rules: dict[str, Mapping] | None = None) -> dict[str, Any]:
    """The settings of a YAML file, each checked against `hints` (key → type hint), `choices` and
    `rules` (key → field metadata): an unknown key or a wrong value names the file, line and key."""
    values, lines = read_yaml(path)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise DataError(str(path), lines.get((), 1), None, "expected a mapping of settings (key: value), got "
                        f"{yaml_kind(values)}")
    return {key: check_setting(key, value, hints, choices,
                               lambda message, key=key: DataError(str(path), lines.get((str(key),)), str(key), message),
                               rule=(rules or {}).get(key))
            for key, value in values.items()}


def check_setting(key: Any, value: Any, hints: dict[str, Any], choices: dict[str, tuple] | None, error,
                  what: str = "setting", rule: Mapping | None = None) -> Any:
    """One setting of a file against a command's `hints`, `choices` and its field's `rule` (range, each
    value of a list): the coerced value, or raises `error(message)` (the caller's DataError naming its
    file, line and key)."""
    if key not in hints:
        close = difflib.get_close_matches(str(key).replace("-", "_"), hints, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(hints)}"
        raise error(f"unknown {what}{hint}")
    try:
        value = coerce(value, hints[key], "value")
    except PreftuneError as e:
        raise error(str(e).removeprefix("value: ")) from None
    allowed = (choices or {}).get(key)
    for item in value if isinstance(value, tuple) else (value,):
        if allowed and item not in allowed:
            raise error(f"unknown value {item!r}; choose one of: {', '.join(map(str, allowed))}")
        if rule is not None and item is not None:
            try:
                check_value(item, rule, "value")
            except PreftuneError as e:
                raise error(str(e).removeprefix("value ")) from None
    return value


# ---- the commands' --config flag -----------------------------------------------------------------


def _settings_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """A command's flags a file may set: its optional arguments but help, version and --config."""
    return [a for a in parser._actions  # argparse keeps a parser's arguments here (no public accessor)
            if a.option_strings and not isinstance(a, _NOT_SETTINGS) and a.dest not in (CONFIG_DEST, _TARGET)]


def parser_hints(parser: argparse.ArgumentParser) -> tuple[dict[str, Any], dict[str, tuple]]:
    """(key → type hint, key → allowed values) of the settings a command's file may hold: its flags
    by destination, typed as the flag parses (a flag whose default is None may be set to null)."""
    hints, choices = {}, {}
    for action in _settings_actions(parser):
        if isinstance(action, (argparse.BooleanOptionalAction, argparse._StoreTrueAction,
                               argparse._StoreFalseAction)):
            tp: Any = bool
        else:
            tp = action.type if action.type in (int, float, str) else str
        hints[action.dest] = tp | None if action.default is None else tp
        if action.choices:
            choices[action.dest] = tuple(action.choices)
    return hints, choices


def commands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every parser under `parser` (itself included), verbs and their sub-verbs."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield from commands(sub)


def add_config_file_option(parser: argparse.ArgumentParser) -> None:
    """Give one command a --config FILE flag (`parse_args` applies the file)."""
    parser.add_argument(
        "--config", metavar="FILE", dest=CONFIG_DEST,
        help="YAML file of settings for this command, keys named like its flags with underscores "
             "(max_pairs: 48); a flag given on the command line wins over the file")
    parser.set_defaults(**{_TARGET: parser})


def add_config_file_options(root: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """A --config flag on every command that has settings and no --config of its own, but those
    whose `prog` ("preftune env") is in `skip`."""
    for parser in commands(root):
        has_verbs = any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
        own = any("--config" in a.option_strings for a in parser._actions)
        if not has_verbs and not own and parser.prog not in skip and _settings_actions(parser):
            add_config_file_option(parser)


def parse_args(root: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line; with --config FILE, the file's settings become the command's
    defaults and the command line is parsed again over them. A flag argparse requires may then
    come from the file instead."""
    required = [a for p in commands(root) for a in _settings_actions(p) if a.required]
    for action in required:  # first pass: only to find the command and its --config
        action.required = False
    try:
        first = root.parse_args(argv)
    finally:
        for action in required:
            action.required = True
    target, path = getattr(first, _TARGET, None), getattr(first, CONFIG_DEST, None)
    if target is not None and path:
        settings = load_config_file(Path(path), *parser_hints(target))
        target.set_defaults(**settings)
        for action in _settings_actions(target):
            action.required = action.required and action.dest not in settings
    ns = root.parse_args(argv)
    if hasattr(ns, _TARGET):
        delattr(ns, _TARGET)
    return ns
