"""The recipe file of `preftune recipe`: `load_recipe` checks each section against the command its step
runs (config/files.py's reader and rules), then `step_configs` builds every step's configs, so a wrong
key or value, a data setting outside `data:`, a model a run would not start from or a loss setting
against its loss stops before the first step with FILE:LINE and the field to change. Rules: docs/recipe.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preftune import config
from preftune.config import (
    TRAIN_OPTIONS,
    DataConfig,
    JudgeConfig,
    ReportConfig,
    RewardConfig,
    SFTConfig,
)
from preftune.config.files import (
    check_setting,
    field_rules,
    parser_hints,
    read_yaml,
    yaml_kind,
)
from preftune.errors import DataError, PreftuneError

# section → the command whose flags it holds. `data` and `dpo` are merged into the steps that use them.
SECTION_VERBS: dict[str, tuple[str, ...]] = {
    "data": ("sweep",), "rm": ("rm", "train"), "sft": ("sft",), "dpo": ("sweep",), "judge": ("judge",),
}
# a command's config classes (preftune.config), in the order a flag's name is looked up: a name two commands
# share (e.g. --lr, --max-length) takes its range from the command the section runs
VERB_CONFIGS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("sweep",): ("SweepConfig", "TrainConfig", "DataConfig", "ReportConfig"),
    ("rm", "train"): ("RewardConfig", "DataConfig"), ("sft",): ("SFTConfig", "DataConfig"), ("judge",): ("JudgeConfig",),
}
TOP_KEYS = ("output_dir", "data", "rm", "sft", "dpo", "runs", "select", "judge")
SET_BY_RECIPE = {"rm": ("output_dir", "name"), "sft": ("output_dir",), "dpo": ("output_dir", "select", "rank_by"),
                 "runs": ("output_dir", "select", "rank_by"),
                 "judge": ("split", "rm", "output")}  # where each step writes and what it reads: the recipe decides
RANK_KEYS_ALLOWED = ("length_balanced_accuracy", "accuracy", "chosen_shorter_accuracy", "mean_margin")
RM_NAME = "reward_model"
DEFAULT_BASELINE = "dpo"  # the run group the others are compared with, unless select.baseline names one
DATA_KEYS = tuple(f.name for f in dataclasses.fields(DataConfig))
# what makes the split (data, its sample, the split itself): `data:` only, so every step sees one split
SPLIT_KEYS = tuple(k for k in DATA_KEYS if k not in TRAIN_OPTIONS)
ONE_SPLIT = "a data setting: set it once under `data:` (every step shares one train / validation / test split)"
PAIR_OPTION = ("chooses one step's training pairs after the split, not the split: set it under `rm`, `dpo` "
               "(every DPO run) or `runs.NAME`")
REPORT_KEYS = tuple(f.name for f in dataclasses.fields(ReportConfig))


# ---- the sections ---------------------------------------------------------------------------------


def _command_hints(verb: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, tuple]]:
    from preftune.cli import build_parser

    parser = build_parser()
    for word in verb:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    if verb == ("sweep",):  # the sweep reads its own file: its grid keys take lists
        from preftune.sweep.grid import _settable
        return _settable(), parser_hints(parser)[1]
    return parser_hints(parser)


def section_rules(verb: tuple[str, ...]) -> dict:
    """Each setting's field metadata (choices, range) in `verb`'s config classes, its own first."""
    return field_rules(tuple(getattr(config, name) for name in VERB_CONFIGS[verb]))


def _refusal(section: str, key: str) -> str | None:
    """Why `key` may not be set in `section` (a recipe rule beyond the command's own), or None."""
    if key in SET_BY_RECIPE.get(section, ()):
        return "set by the recipe (each step's output goes under output_dir)"
    if section == "data":
        return ("not a data setting (put run settings under `dpo`, or a step's own section)" if key not in DATA_KEYS
                else PAIR_OPTION if key in TRAIN_OPTIONS else None)
    if key in SPLIT_KEYS:
        return ONE_SPLIT
    if section == "sft" and key in TRAIN_OPTIONS:
        return "`preftune sft` does not apply it (it imitates the chosen summary of every train post): delete it"
    if section == "runs" and key == "model":
        return ("every DPO run starts from the same model, so the objectives are compared alone: set it once as "
                "`dpo.model` (or `sft.model` with an sft step)")
    return None


def _check_section(path: Path, lines: dict, where: tuple[str, ...], values: Any, verb: tuple[str, ...]) -> dict:
    """A section's settings, each checked as a --config file's are (config.files.check_setting) against the
    command's flags and its config fields' ranges, and against the recipe's rules (`_refusal`). Returned
    coerced (a grid key as a tuple): each step's command reads them from the settings file the recipe writes."""
    line = lines.get(where)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise DataError(str(path), line, ".".join(where), f"expected a mapping of settings (key: value), got "
                                                          f"{yaml_kind(values)}")
    hints, choices = _command_hints(verb)
    rules = section_rules(verb)
    checked = {}
    for key, value in values.items():
        at = lines.get((*where, str(key)), line)
        name = ".".join((*where, str(key)))
        refused = _refusal(where[0], str(key))  # `runs.NAME` sections: where[0] is "runs"
        if refused:
            raise DataError(str(path), at, name, refused)
        checked[key] = check_setting(key, value, hints, choices,
                                     lambda message, at=at, name=name: DataError(str(path), at, name, message),
                                     what=f"setting for `preftune {' '.join(verb)}`", rule=rules.get(key))
    return checked


def load_recipe(path: Path) -> dict:
    """The recipe file, every section checked against its command's flags and every step's configs built
    (`step_configs`) before anything runs. The sections, coerced, plus `path` and `lines` (key → line)."""
    path = Path(path)
    recipe, lines = read_yaml(path, "recipe")
    if not isinstance(recipe, dict):
        raise DataError(str(path), lines.get((), 1), None, f"expected a mapping with sections ({', '.join(TOP_KEYS)}),"
                                                           f" got {yaml_kind(recipe)}")
    for key in recipe:
        if key not in TOP_KEYS:
            raise DataError(str(path), lines.get((str(key),)), str(key),
                            f"unknown section; the sections are: {', '.join(TOP_KEYS)}")
    out = recipe.get("output_dir")
    if out is None or out == "":
        raise DataError(str(path), lines.get(("output_dir",), 1), "output_dir", "missing: the folder every step "
                                                                                 "writes under")
    if not isinstance(out, str) or not out.strip():
        raise DataError(str(path), lines.get(("output_dir",)), "output_dir",
                        f"expected a folder path, got {yaml_kind(out)} ({out!r})")
    for section, verb in SECTION_VERBS.items():
        recipe[section] = _check_section(path, lines, (section,), recipe.get(section), verb) if section in recipe \
            else ({} if section != "sft" else None)
    if recipe["sft"] is not None and "model" in recipe["dpo"]:
        raise DataError(str(path), lines.get(("dpo", "model")), "dpo.model",
                        "the DPO runs start from the sft step's model: set the base model as `sft.model`")
    runs = recipe.get("runs")
    if not isinstance(runs, dict) or not runs:
        raise DataError(str(path), lines.get(("runs",)), "runs", "needs one entry per DPO objective, e.g. "
                        "`dpo: {loss: sigmoid}`" + ("" if runs is None else f", got {yaml_kind(runs)}"))
    for name, settings in runs.items():
        if not isinstance(name, str) or not name.replace("-", "_").isidentifier():
            raise DataError(str(path), lines.get(("runs", str(name))), f"runs.{name}",
                            "a run group's name is a folder name: letters, digits, '-' and '_'")
        runs[name] = _check_section(path, lines, ("runs", name), settings, ("sweep",))
    select = {} if recipe.get("select") is None else recipe["select"]
    rank_by = select.get("rank_by", RANK_KEYS_ALLOWED[0]) if isinstance(select, dict) else None
    if not isinstance(select, dict) or set(select) - {"rank_by", "baseline"} or rank_by not in RANK_KEYS_ALLOWED:
        raise DataError(str(path), lines.get(("select", "rank_by"), lines.get(("select",))), "select",
                        f"takes rank_by: one of {', '.join(RANK_KEYS_ALLOWED)} (validation metrics), and baseline: "
                        "a run group's name, as a mapping (select: {rank_by: accuracy}); got "
                        + (f"{yaml_kind(select)}" if not isinstance(select, dict)
                           else ", ".join(f"{k}: {v!r}" for k, v in select.items())))
    baseline = select.get("baseline")
    if baseline is not None and baseline not in runs:
        raise DataError(str(path), lines.get(("select", "baseline")), "select.baseline",
                        f"{baseline!r} is not a run group; the groups under `runs` are: {', '.join(map(str, runs))}")
    recipe.update(select={"rank_by": rank_by, "baseline": baseline}, path=str(path), lines=lines)
    steps = step_configs(recipe, Path(out))  # every step's configs: the rules between settings, loss flags included
    if baseline is not None and len(steps.dpo[baseline][2]) != 1:
        raise DataError(str(path), lines.get(("select", "baseline")), "select.baseline",
                        f"run group {baseline} plans {len(steps.dpo[baseline][2])} runs (a grid): the baseline is "
                        "one run; name a group of one run")
    return recipe


def baseline_group(recipe: dict, steps: Steps) -> tuple[str | None, str]:
    """(the run group whose one run the others are compared with, why) or (None, why there is none):
    `select.baseline`, else the group named `dpo` (plain DPO in the shipped recipes) when it is one run."""
    named = recipe["select"].get("baseline")
    if named is not None:
        return named, "select.baseline"
    if DEFAULT_BASELINE not in steps.dpo:
        return None, f"no baseline: no run group named `{DEFAULT_BASELINE}` and no select.baseline"
    if len(steps.dpo[DEFAULT_BASELINE][2]) != 1:
        return None, (f"no baseline: run group `{DEFAULT_BASELINE}` plans {len(steps.dpo[DEFAULT_BASELINE][2])} runs; "
                      "name a group of one run as select.baseline")
    return DEFAULT_BASELINE, f"the run group named `{DEFAULT_BASELINE}`"


# ---- every step's configs ------------------------------------------------------------------------


@dataclass
class Steps:
    """Each step's settings (the --config file its command reads) and the configs its command builds."""

    settings: dict[str, dict]  # "rm", "sft", "dpo/NAME", "judge" → settings
    rm: tuple[DataConfig, RewardConfig]
    sft: tuple[DataConfig, SFTConfig] | None
    dpo: dict[str, tuple[DataConfig, Any, list]]  # NAME → (data, base TrainConfig, its planned runs)
    judge: JudgeConfig
    base_model: str  # what the judge compares the selected run with
    sft_model: str | None = None  # the sft step's model (the DPO runs' start): judged against as well
    judge_vs_sft: JudgeConfig | None = None  # that judgement: `judge`, greedy only, base = sft_model


def _blame(recipe: dict, sections: list[tuple[str, ...]], step: str, error: PreftuneError) -> DataError:
    """A rule between settings broken (e.g. `--rdpo-alpha applies to --loss rdpo only`) as FILE:LINE naming
    the first flag of the message that one of `sections` (most specific first) sets, else the section."""
    for flag in re.findall(r"--([a-z0-9][a-z0-9-]*)", str(error)):
        key = flag.replace("-", "_")
        for where in sections:
            values = recipe.get(where[0]) if len(where) == 1 else recipe["runs"][where[1]]
            if values and key in values:
                return DataError(recipe["path"], recipe["lines"].get((*where, key)), ".".join((*where, key)),
                                 f"step {step}: {error}")
    return DataError(recipe["path"], recipe["lines"].get(sections[0]), ".".join(sections[0]), f"step {step}: {error}")


def _build(recipe: dict, sections: list[tuple[str, ...]], step: str, make):
    try:
        return make()
    except PreftuneError as e:
        raise _blame(recipe, sections, step, e) from None


def _split(settings: dict) -> tuple[dict, dict]:
    """(the DataConfig settings, the rest)."""
    return ({k: v for k, v in settings.items() if k in DATA_KEYS},
            {k: v for k, v in settings.items() if k not in DATA_KEYS})


def _trainer(cls: type, settings: dict):
    """A step's (DataConfig, config of `cls`), its tracker's package checked."""
    from preftune.runs import trackers

    data, rest = _split(settings)
    cfg = cls(**rest)
    trackers.require(cfg.report_to)
    return DataConfig(**data), cfg


def step_configs(recipe: dict, root: Path) -> Steps:
    """Every step's settings and configs for ROOT, each command's own rules applied (a broken one named by
    `_blame`). The DPO runs start from the SFT run this recipe makes (its folder is known from its settings)."""
    from preftune.sweep.grid import build_configs, expand

    data = recipe["data"]
    _build(recipe, [("data",)], "data", lambda: DataConfig(**data))
    settings = {"rm": {**data, **recipe["rm"], "output_dir": str(root), "name": RM_NAME}}
    rm = _build(recipe, [("rm",), ("data",)], "rm", lambda: _trainer(RewardConfig, settings["rm"]))
    model, sft = recipe["dpo"].get("model"), None
    if recipe["sft"] is not None:
        settings["sft"] = {**data, **recipe["sft"], "output_dir": str(root / "sft")}
        sft = _build(recipe, [("sft",), ("data",)], "sft", lambda: _trainer(SFTConfig, settings["sft"]))
        model = str(root / "sft" / sft[1].run_name)
    dpo = {}
    for name, own in recipe["runs"].items():
        # select 0: the sweep's own report scores no run on test; the recipe chooses across all groups
        merged = {**data, **recipe["dpo"], **own, "output_dir": str(root / "runs" / name), "select": 0}
        if model is not None:
            merged["model"] = model
        settings[f"dpo/{name}"] = merged
        sections = [("runs", name), ("dpo",), ("data",)]
        data_cfg, base, grid = _build(recipe, sections, f"dpo/runs.{name}",
                                      lambda m=merged: build_configs({k: v for k, v in m.items() if k not in REPORT_KEYS}))
        dpo[name] = (data_cfg, base, expand(grid, base))
    base_model = sft[1].model if sft else next(iter(dpo.values()))[1].model
    settings["judge"] = {**recipe["judge"], "split": "test", "rm": str(root / RM_NAME)}
    settings["judge"].setdefault("base", base_model)
    judge = _build(recipe, [("judge",)], "judge", lambda: JudgeConfig(**settings["judge"]))
    vs_sft = None
    if sft is not None:  # what DPO adds: the same judge against the SFT model, greedy (the headline decoding)
        settings["judge_vs_sft"] = {**settings["judge"], "base": model, "greedy": True, "temperature": 0.0}
        vs_sft = _build(recipe, [("judge",)], "judge_vs_sft", lambda: JudgeConfig(**settings["judge_vs_sft"]))
    return Steps(settings, rm, sft, dpo, judge, base_model, model if sft is not None else None, vs_sft)
