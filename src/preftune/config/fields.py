"""The machinery behind preftune's configs: a dataclass field with CLI metadata (`_opt`), its checks
(`check_fields`, run by every `Config` on construction), and the argparse flags generated from a config
class (`add_arguments`, `from_args`). The configs themselves are in preftune.config.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import operator
import types
import typing
from collections.abc import Mapping
from dataclasses import field
from typing import Any

from preftune.errors import PreftuneError


def _opt(default: Any, help: str, *, choices: tuple | None = None, ge: float | None = None,
         gt: float | None = None, le: float | None = None, lt: float | None = None, nonempty: bool | str = False,
         **extra: Any) -> Any:
    """A dataclass field with CLI metadata: help text, allowed `choices` (argparse choices too), a
    range (ge ≥, gt >, le ≤, lt <) and `nonempty` (a string that must say something; a str: what to pass instead), which
    `check_fields` enforces for every config, CLI or not."""
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "nonempty": nonempty or None,
            **extra}
    return field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


def _default(cls: type, name: str) -> Any:
    """A dataclass field's default value."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _interval(meta: Mapping) -> str:
    """'(0, 1]' from gt=0, le=1."""
    low = f"[{meta['ge']}" if "ge" in meta else f"({meta['gt']}"
    high = f"{meta['le']}]" if "le" in meta else f"{meta['lt']})"
    return f"{low}, {high}"


def check_value(value: Any, meta: Mapping, flag: str) -> None:
    """One value against a field's metadata: its choices, finiteness (floats) and range."""
    if meta.get("nonempty") and isinstance(value, str) and not value.strip():
        hint = meta["nonempty"] if isinstance(meta["nonempty"], str) else ""
        raise PreftuneError(f"{flag} is empty" + (f": {hint}" if hint else ""))
    if "choices" in meta and value not in meta["choices"]:
        raise PreftuneError(f"unknown {flag} '{value}'; choose one of: {', '.join(map(str, meta['choices']))}")
    if isinstance(value, float) and not math.isfinite(value):
        raise PreftuneError(f"{flag} must be a finite number, got {value}")
    bounds = [(key, meta[key]) for key in ("ge", "gt", "le", "lt") if key in meta]
    if not bounds:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PreftuneError(f"{flag} must be a number, got {value!r}")
    if not all(getattr(operator, key)(value, bound) for key, bound in bounds):
        if len(bounds) == 2:
            raise PreftuneError(f"{flag} must be in {_interval(meta)}, got {value}")
        key, bound = bounds[0]
        raise PreftuneError(f"{flag} must be {dict(ge='≥', gt='>', le='≤', lt='<')[key]} {bound}, got {value}")


def check_fractions(eval_fraction: float, test_fraction: float) -> None:
    """The validation and test shares: each in [0, 1), and together < 1 (training needs pairs). DataConfig's
    rule, and the split's own (data/split.py) for callers that split without a DataConfig."""
    for flag, value in (("--eval-fraction", eval_fraction), ("--test-fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise PreftuneError(f"{flag} must be in [0, 1), got {value}")
    if eval_fraction + test_fraction >= 1.0:
        raise PreftuneError(f"--eval-fraction + --test-fraction must be < 1, got {eval_fraction} + {test_fraction}: "
                            "no pair would be left to train on")


def check_fields(obj: Any) -> None:
    """Validate every field of a config against its metadata (choices, range); None passes (unset).
    A tuple field (a sweep's grid) is checked value by value."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        for item in value if isinstance(value, tuple) else (value,):
            if item is not None:
                check_value(item, f.metadata, flag_name(f.name))


class Config:
    """Base of every config: each field is checked against its metadata, then `check()` runs."""

    def __post_init__(self) -> None:
        check_fields(self)
        self.check()

    def check(self) -> None:
        """Rules between fields (a single field's rule belongs in its metadata)."""


# ---- dataclass → argparse ------------------------------------------------------------------------


def _base_type(tp: Any) -> Any:
    """`int | None` → int; `str` → str; `tuple[float, ...]` → tuple."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return typing.get_origin(tp) or tp


def _shown(default: Any) -> str:
    """A default as the user would type it."""
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return str(default)


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (), *,
                  suppress_defaults: bool = False, title: str | None = None) -> None:
    """Add one --flag per dataclass field, with the field's type, choices, default and help.

    suppress_defaults: a flag left out is absent from the parsed namespace (instead of holding its
    default), so a caller can tell "not given" from "given the default" (the sweep: flags win over
    its YAML file, which wins over the defaults). The help still shows the default.
    A tuple field (the sweep's grid) takes a comma-separated list, parsed by the caller."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title or cls.__name__.replace("Config", "").lower())
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, meta = _base_type(hints[f.name]), f.metadata
        help_text = meta.get("help", "")
        if f.default is not None:
            help_text += f" (default: {_shown(f.default)})"
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text,
                                  "default": argparse.SUPPRESS if suppress_defaults else f.default}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif tp is tuple:
            kwargs["metavar"] = "V1,V2"
            if "choices" in meta:
                kwargs["help"] += f"; from: {', '.join(meta['choices'])}"
        elif "choices" in meta:
            kwargs.update(type=tp, choices=meta["choices"])  # argparse checks them and --help lists them
        else:
            kwargs.update(type=tp, metavar=f.name.upper())
        group.add_argument(flag_name(f.name), **kwargs)


def from_args(cls: type, ns: argparse.Namespace) -> Any:
    """Build a config from parsed args (only the fields the class has)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(ns).items() if k in names})
