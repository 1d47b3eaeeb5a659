"""--config FILE.yaml on every command: every example under examples/ parses against its command into
valid configs, flags win over the file and the file over the defaults, and a bad file is one line
naming the file, line and key (with the closest valid key for a typo), before any work."""

import argparse
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from preftune import config
from preftune.cli import build_parser, main
from preftune.config.files import commands, parse_args
from preftune.sweep.grid import build_configs, expand, settings_from_args

RUN = "runs/some_run"  # parsing only: the run folder is not opened
EXAMPLES = {  # file → the command it is written for
    "train.yaml": ["train"],
    "rm.yaml": ["rm", "train"],
    "judge.yaml": ["judge", RUN],
    "serve.yaml": ["serve", RUN],
    "sweep.yaml": ["sweep"],
    "sft.yaml": ["sft"],
}


RECIPES = ("tldr-cpu.yaml",)  # `preftune recipe` files: a section per command


def test_every_example_is_parsed_below():
    assert sorted(p.name for p in (REPO / "examples").glob("*.yaml")) == sorted([*EXAMPLES, *RECIPES])


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_parses_against_its_commands(name):
    from preftune.sweep.recipe_file import load_recipe

    recipe = load_recipe(REPO / "examples" / name)
    assert recipe["sft"] and len(recipe["runs"]) >= 2 and recipe["select"]["rank_by"]


# the config classes each command builds from its flags (`eval` shares the name `split` with the data's)
COMMAND_CONFIGS = {
    "train.yaml": (config.DataConfig, config.TrainConfig),
    "rm.yaml": (config.DataConfig, config.RewardConfig),
    "judge.yaml": (config.JudgeConfig,),
    "serve.yaml": (config.ServeConfig,),
    "sft.yaml": (config.DataConfig, config.SFTConfig),
}


def valid_configs(ns: argparse.Namespace, name: str) -> list:
    """The config classes the command's settings make (each checks its own fields)."""
    return [config.from_args(cls, ns) for cls in COMMAND_CONFIGS[name]]


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_example_parses_against_its_command(name):
    path = REPO / "examples" / name
    values = yaml.safe_load(path.read_text())
    ns = parse_args(build_parser(), [*EXAMPLES[name], "--config", str(path)])
    if name == "sweep.yaml":
        data, base, grid = build_configs(settings_from_args(ns))
        assert len(expand(grid, base)) == 4 and base.max_pairs == values["max_pairs"]
        return
    assert valid_configs(ns, name)
    for key, value in values.items():
        assert getattr(ns, key) == (float(value) if isinstance(getattr(ns, key), float) else value), key


def write(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_flags_win_over_the_file_and_the_file_over_the_defaults(tmp_path):
    path = write(tmp_path, "lr: 1.0e-5\nmax_pairs: 8\nlora: true\nengine: trl\nmax_eval_pairs: null\n")
    ns = parse_args(build_parser(), ["train", "--config", path, "--lr", "2e-5", "--no-lora"])
    assert (ns.lr, ns.max_pairs, ns.lora, ns.engine, ns.max_eval_pairs, ns.batch_size) == (2e-5, 8, False, "trl",
                                                                                          None, 4)
    ns = parse_args(build_parser(), ["train", "--engine", "fast", "--config", path])  # a flag = its default still wins
    assert ns.engine == "fast"
    ns = parse_args(build_parser(), ["train", "--config", write(tmp_path, "lr: 2e-6\n")])  # YAML 1.1's string
    assert ns.lr == 2e-6


def test_a_required_flag_may_come_from_the_file(tmp_path, capsys):
    ns = parse_args(build_parser(), ["data", "prepare", "--config", write(tmp_path, "out: prepared\nfraction: 0.5\n")])
    assert (ns.out, ns.fraction) == ("prepared", 0.5)
    assert main(["data", "prepare", "--config", write(tmp_path, "fraction: 0.5\n")]) == 2
    assert "the following arguments are required: --out" in capsys.readouterr().err


def test_every_command_with_settings_takes_a_config_file():
    leaves = [p for p in commands(build_parser())
              if not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)]
    without = [p.prog for p in leaves if not any("--config" in a.option_strings for a in p._actions)]
    # nothing to set; a report of this machine; a recipe is itself a file of settings
    assert sorted(without) == ["preftune data formats", "preftune env", "preftune recipe"]
    assert {"preftune train", "preftune eval", "preftune rm train", "preftune judge", "preftune serve",
            "preftune sweep", "preftune report"} <= {p.prog for p in leaves}


@pytest.mark.parametrize("verb, text, message", [
    (["train"], "lrr: 1e-6\n", "c.yaml:1: field 'lrr': unknown setting; did you mean 'lr'?"),
    (["train"], "seed: 1\nmax-pairs: 8\n", "c.yaml:2: field 'max-pairs': unknown setting; did you mean 'max_pairs'?"),
    (["train"], "max_pairs: many\n", "c.yaml:1: field 'max_pairs': expected int, got 'many'"),
    (["train"], "epochs: 1.5\n", "c.yaml:1: field 'epochs': expected int, got 1.5"),
    (["train"], "lora: maybe\n", "c.yaml:1: field 'lora': expected bool, got 'maybe'"),
    (["train"], "engine: turbo\n", "c.yaml:1: field 'engine': unknown value 'turbo'; choose one of: fast, trl"),
    (["train"], "report_to: comet\n", "field 'report_to': unknown value 'comet'; choose one of: none, tensorboard"),
    (["train"], "dataset: null\n", "c.yaml:1: field 'dataset': needs a value"),
    (["train"], "lr: -1\n", "--lr must be > 0, got -1.0"),
    (["train"], "- lr\n", "c.yaml:1: expected a mapping of settings (key: value)"),
    (["train"], "lr: [1\n", "c.yaml: not valid YAML"),
    (["eval", RUN], "lora: true\n", "c.yaml:1: field 'lora': unknown setting"),
    (["rm", "train"], "name:\n", "c.yaml:1: field 'name': needs a value"),
    (["judge", RUN], "temprature: 0.5\n", "c.yaml:1: field 'temprature': unknown setting; did you mean 'temperature'?"),
    (["serve", RUN], "port: 99999\n", "--port must be in [0, 65535], got 99999"),
])
def test_a_bad_file_is_one_line_before_any_work(verb, text, message, tmp_path, capsys):
    assert main([*verb, "--config", write(tmp_path, text), *(["--output-dir", str(tmp_path / "runs")]
                                                            if verb[0] in ("train", "rm") else [])]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("where, message", [
    (lambda tmp: tmp / "nope.yaml", "nope.yaml: file not found"),
    (lambda tmp: tmp, "is a folder, not a file"),
])
def test_a_config_file_that_is_not_there(where, message, tmp_path, capsys):
    assert main(["train", "--config", str(where(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert f"preftune: error: --config {tmp_path}" in err and message in err and err.count("\n") == 1


def test_one_reader_parses_every_settings_file():
    """--config files, sweep files and recipes go through config/files.py: no other module parses YAML."""
    import re

    parsers = sorted(p.relative_to(REPO / "src").as_posix() for p in (REPO / "src").rglob("*.py")
                     if re.search(r"yaml\.(safe_load|load|compose|full_load)\(", p.read_text(encoding="utf-8")))
    assert parsers == ["preftune/config/files.py"]


@pytest.mark.parametrize("reader", ["train", "sweep", "recipe"])
def test_every_reader_words_a_file_error_the_same(reader, tmp_path, capsys):
    """The same two mistakes, in a --config file, a sweep file and a recipe section: the same messages."""
    def run(text: str) -> str:
        if reader == "recipe":
            path = tmp_path / "recipe.yaml"
            path.write_text(f"output_dir: {tmp_path / 'r'}\nruns:\n  dpo:\n" + "".join(f"    {t}\n" for t in text))
            argv = ["recipe", str(path)]
        else:
            path = tmp_path / "c.yaml"
            path.write_text("".join(f"{t}\n" for t in text))
            argv = [reader, "--config", str(path), "--output-dir", str(tmp_path / "runs")]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        return err.replace(str(path), "FILE")

    key, line = ("runs.dpo.lrr", 5) if reader == "recipe" else ("lrr", 2)
    assert "FILE: not valid YAML" in run(["lr: [1"])
    assert f"FILE:{line}: field '{key}': unknown setting" in run(["lr: 1.0e-6", "lrr: 2"])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r").exists()


def test_read_yaml_gives_the_line_of_every_key(tmp_path):
    from preftune.config.files import read_yaml

    values, lines = read_yaml(Path(write(tmp_path, "a: 1\nb:\n  c:\n    d: 2\n")))
    assert values == {"a": 1, "b": {"c": {"d": 2}}}
    assert lines == {(): 1, ("a",): 1, ("b",): 2, ("b", "c"): 3, ("b", "c", "d"): 4}


# the same file content, as a --config file (train), a sweep file and a recipe: (content, message, line)
BROKEN_FILES = {
    "a key twice": (b"lr: 1.0e-5\nmax_pairs: 8\nlr: 2.0e-5\n", "field 'lr': given twice (first on line 1)", 3),
    "a nested key twice": (b"lr: 1.0e-5\nlora: {a: 1, a: 2}\n", "field 'lora.a': given twice (first on line 2)", 2),
    "not UTF-8": (b"lr: 1.0e-5\nmodel: caf\xe9\n", "not UTF-8 text (byte 0xe9); save the file as UTF-8", 2),
    "a list": (b"# settings\n- lr: 1.0e-5\n", "expected a mapping", 2),
    "a string": (b"lr\n", "expected a mapping", 1),
}


@pytest.mark.parametrize("reader", ["train", "sweep", "recipe"])
@pytest.mark.parametrize("problem", sorted(BROKEN_FILES))
def test_every_settings_file_refuses_a_broken_file_in_one_line(reader, problem, tmp_path, capsys):
    """A key given twice (YAML keeps the last one silently), bytes that are not UTF-8 (a traceback before)
    and a document that is not a mapping: one line naming the file and line, exit 2, in every reader."""
    content, message, line = BROKEN_FILES[problem]
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    argv = ["recipe", str(path)] if reader == "recipe" else \
        [reader, "--config", str(path), "--output-dir", str(tmp_path / "runs"),  # were the file read, no training:
         "--dataset", str(tmp_path / "none.jsonl"), "--model", str(tmp_path / "no-model")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}:" in err and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_a_recipe_loses_no_objective_to_a_repeated_name(tmp_path):
    """`runs:` naming one objective twice kept only the second: now the file is refused at the second."""
    from preftune.errors import PreftuneError
    from preftune.sweep.recipe_file import load_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text("output_dir: r\nruns:\n  dpo: {loss: sigmoid}\n  simpo: {loss: simpo}\n  dpo: {loss: hinge}\n")
    with pytest.raises(PreftuneError, match=r"recipe.yaml:5: field 'runs.dpo': given twice \(first on line 3\)"):
        load_recipe(path)


def test_merge_keys_and_aliases_are_not_repeated_keys(tmp_path):
    from preftune.config.files import read_yaml

    values, _ = read_yaml(Path(write(tmp_path, "base: &b {lr: 1, seed: 2}\nrun:\n  <<: *b\n  lr: 3\nother: *b\n")))
    assert values["run"] == {"lr": 3, "seed": 2} and values["other"] == {"lr": 1, "seed": 2}
