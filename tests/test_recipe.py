"""`preftune recipe`: the file is checked before any step runs (file, line and key named); a whole recipe on
tiny models trains the reward model and one sweep per objective, selects on validation, computes test.json
and judge_test.json for the selected run only, and a second invocation redoes nothing."""

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

from preftune.errors import PreftuneError
from preftune.sweep.recipe import format_summary, run_recipe, select_run
from preftune.sweep.recipe_file import load_recipe

REPO = Path(__file__).resolve().parent.parent
DATA = "data:\n  fraction: 0.03\n  seed: 3\n"


def bench_quality():
    spec = importlib.util.spec_from_file_location("bench_quality", REPO / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("text,message", [
    ("output_dir: r\nrunz: {}\n", r"recipe.yaml:2: field 'runz'.*unknown section"),
    ("output_dir: r\nruns:\n  dpo:\n    lr: [1e-5]\n    los: sigmoid\n", r"recipe.yaml:5: field 'runs.dpo.los'.*did you mean 'loss'"),
    ("output_dir: r\nruns:\n  dpo:\n    loss: sigmoidx\n", r"recipe.yaml:4: field 'runs.dpo.loss'.*choose one of"),
    ("output_dir: r\ndata:\n  lr: 1e-5\nruns:\n  dpo: {}\n", r"recipe.yaml:3: field 'data.lr'.*not a data setting"),
    ("output_dir: r\nrm:\n  output_dir: x\nruns:\n  dpo: {}\n", r"recipe.yaml:3: field 'rm.output_dir'.*set by the recipe"),
    ("output_dir: r\nruns:\n  dpo:\n    select: 2\n", r"recipe.yaml:4: field 'runs.dpo.select'.*set by the recipe"),
    ("output_dir: r\nruns:\n  dpo:\n    lr: [1e-5, -1.0]\n", r"recipe.yaml:4: field 'runs.dpo.lr'.*must be > 0"),
    ("output_dir: r\njudge:\n  n: 0\nruns:\n  dpo: {}\n", r"recipe.yaml:3: field 'judge.n'.*must be > 0"),
    ("output_dir: r\nruns: {}\n", r"field 'runs'.*one entry per DPO objective"),
    ("runs:\n  dpo: {}\n", r"field 'output_dir'.*missing"),
    ("output_dir: r\nruns:\n  dpo: {}\nselect:\n  rank_by: loss\n", r"field 'select'.*takes rank_by"),
    ("output_dir: r\nruns:\n  dpo: {}\nselect:\n  baseline: dpoo\n",
     r"recipe.yaml:5: field 'select.baseline': 'dpoo' is not a run group; the groups under `runs` are: dpo"),
    ("output_dir: r\nruns:\n  dpo: {lr: [1e-5, 2e-5]}\nselect:\n  baseline: dpo\n",
     r"recipe.yaml:5: field 'select.baseline': run group dpo plans 2 runs \(a grid\): the baseline is one run"),
    ("output_dir: r\nruns:\n  dpo: {}\njudge:\n  output: judge_x.json\n",
     r"recipe.yaml:5: field 'judge.output': set by the recipe"),
])
def test_a_bad_recipe_is_refused_before_any_step(tmp_path, text, message):
    with pytest.raises(PreftuneError, match=message):
        load_recipe(write(tmp_path, text))
    assert not (tmp_path / "r").exists()


# the split is made once, in `data:`: every data setting a step's command takes, set in a step's section
SPLIT_KEYS = {"dataset": "tldr-sample", "format": "auto", "hub_config": "x", "split": "train", "fraction": 0.5,
              "eval_fraction": 0.2, "test_fraction": 0.2, "seed": 1, "column_map": "prompt=p"}


@pytest.mark.parametrize("section", ["rm", "sft", "dpo", "runs.simpo"])
@pytest.mark.parametrize("key", sorted(SPLIT_KEYS))
def test_a_step_section_may_not_make_its_own_split(tmp_path, section, key):
    """Per-step seeds let the SFT step imitate the selected run's test posts: refused at load, FILE:LINE."""
    own = f"    {key}: {SPLIT_KEYS[key]}\n"
    text = "output_dir: r\n" + ("" if section == "sft" else "sft: {}\n") + "runs:\n  dpo: {loss: sigmoid}\n" \
        "  simpo:\n    loss: simpo\n" + (
        own if section == "runs.simpo" else "") + (f"{section}:\n{own}" if section != "runs.simpo" else "")
    line = text.splitlines().index(own.rstrip("\n")) + 1
    with pytest.raises(PreftuneError, match=rf"recipe.yaml:{line}: field '{section}.{key}': a data setting: set it "
                                            r"once under `data:`"):
        load_recipe(write(tmp_path, text))


@pytest.mark.parametrize("text,message", [
    # the training-pair options choose one step's pairs: not the split (`data:`), nor an SFT setting
    ("data:\n  length_balance: true\n", r":3: field 'data.length_balance': chooses one step's training pairs"),
    ("sft:\n  min_confidence: 2\n", r":3: field 'sft.min_confidence': `preftune sft` does not apply it"),
    # a loss setting against the loss it belongs to: found at load, not after the reward model trained
    ("runs:\n  dpo:\n    loss: sigmoid\n    rdpo_alpha: 0.02\n",
     r":5: field 'runs.dpo.rdpo_alpha': step dpo/runs.dpo: .*--rdpo-alpha applies to --loss rdpo only"),
    ("dpo:\n  simpo_gamma: 0.5\nruns:\n  dpo: {loss: sigmoid}\n",
     r":3: field 'dpo.simpo_gamma': step dpo/runs.dpo: .*--simpo-gamma applies to --loss simpo only"),
    ("dpo:\n  engine: trl\nruns:\n  s:\n    loss: simpo\n",
     r":6: field 'runs.s.loss': step dpo/runs.s: --loss simpo is not available with --engine trl"),
    ("data:\n  eval_fraction: 0.6\n  test_fraction: 0.5\n", r":3: field 'data.eval_fraction': .*must be < 1"),
    ("sft:\n  engine: trl\n  pack_tokens: 64\n", r":4: field 'sft.pack_tokens': step sft: --pack-tokens applies "),
    ("judge:\n  temperature: 0\n  greedy: false\n", r":3: field 'judge.temperature': step judge: .*nothing to judge"),
    # every DPO run starts from one model: a run's own is refused, as is dpo.model beside an sft step
    ("runs:\n  simpo:\n    model: other/model\n",
     r":4: field 'runs.simpo.model': every DPO run starts from the same model.*`dpo.model`"),
    ("sft: {}\ndpo:\n  model: other/model\n", r":4: field 'dpo.model': the DPO runs start from the sft step's model"),
    # sections of the wrong shape
    ("select:\n  - rank_by\n", r":2: field 'select': takes rank_by.*got a list"),
    ("select: accuracy\n", r":2: field 'select': takes rank_by.*got a string"),
    ("data:\n  - seed\n", r":2: field 'data': expected a mapping of settings \(key: value\), got a list"),
    ("judge: 3\n", r":2: field 'judge': expected a mapping of settings .*got a number"),
])
def test_every_section_is_checked_before_the_first_step(tmp_path, text, message):
    path = write(tmp_path, "output_dir: r\n" + text + ("" if "runs:" in text else "runs:\n  dpo: {loss: sigmoid}\n"))
    with pytest.raises(PreftuneError, match="recipe.yaml" + message):
        load_recipe(path)


@pytest.mark.parametrize("text,message", [
    ("output_dir: [a, b]\nruns:\n  dpo: {}\n", r"recipe.yaml:1: field 'output_dir': expected a folder path, got a list"),
    ("output_dir: 7\nruns:\n  dpo: {}\n", r"recipe.yaml:1: field 'output_dir': expected a folder path, got a number"),
    ("output_dir: r\nruns:\n  - dpo\n", r"recipe.yaml:2: field 'runs': needs one entry per DPO objective.*got a list"),
    ("output_dir: r\nruns:\n  dpo: [loss, sigmoid]\n", r"recipe.yaml:3: field 'runs.dpo': expected a mapping"),
])
def test_a_section_of_the_wrong_shape_is_refused(tmp_path, text, message):
    with pytest.raises(PreftuneError, match=message):
        load_recipe(write(tmp_path, text))


def test_the_training_pair_options_are_a_dpo_or_rm_setting(tmp_path):
    recipe = load_recipe(write(tmp_path, "output_dir: r\nrm: {length_balance: true}\ndpo: {min_confidence: 2}\n"
                                         "runs:\n  dpo: {loss: sigmoid}\n  bal: {length_balance: true}\n"))
    assert recipe["rm"]["length_balance"] and recipe["runs"]["bal"]["length_balance"]


@pytest.mark.parametrize("case", ["output_dir a file", "--output-dir a file", "select a list"])
def test_a_bad_recipe_is_one_line_on_the_command_line(tmp_path, capsys, case):
    from preftune.cli import main

    (tmp_path / "taken").write_text("a file")
    out = tmp_path / ("taken" if case == "output_dir a file" else "r")
    path = write(tmp_path, f"output_dir: {out}\nruns:\n  dpo: {{loss: sigmoid}}\n"
                           + ("select: [accuracy]\n" if case == "select a list" else ""))
    extra = ["--output-dir", str(tmp_path / "taken")] if case == "--output-dir a file" else []
    assert main(["recipe", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    if case == "select a list":
        assert "recipe.yaml:4: field 'select': takes rank_by" in err
    else:
        assert err == "preftune: error: " + {
            "output_dir a file": f"{path}:1: field 'output_dir': {out} is a file, not a folder; "
                                 "set output_dir to another folder (it is created if missing)\n",
            "--output-dir a file": f"--output-dir: {tmp_path / 'taken'} is a file, not a folder; pass another folder\n",
        }[case]
    assert not (tmp_path / "r").exists()


def test_a_second_recipe_into_the_same_root_is_refused_before_any_step(tmp_path, monkeypatch):
    """Two recipes writing one ROOT would train the same steps at once: the second stops in one line."""
    from preftune.runs.lock import root_lock

    recipe = write(tmp_path, f"output_dir: {tmp_path / 'out'}\n{DATA}runs:\n  dpo: {{}}\n")
    (tmp_path / "out").mkdir()
    monkeypatch.setattr("preftune.sweep.recipe._run_steps", lambda *a: pytest.fail("a step ran"))
    with root_lock(tmp_path / "out", "recipe"):
        with pytest.raises(PreftuneError, match=r"another process is writing .*out \(`preftune recipe` holds"):
            run_recipe(recipe)


def test_selection_uses_validation_and_breaks_ties_by_accuracy(tmp_path):
    runs = []
    for name, bal, acc in [("a", 0.6, 0.7), ("b", 0.62, 0.6), ("c", 0.62, 0.65)]:
        run = tmp_path / name / "dpo_model_lr1e-05_bs8_epoch1"
        run.mkdir(parents=True)
        (run / "eval.json").write_text(json.dumps({"n": 10, "accuracy": acc, "length_balanced_accuracy": bal}))
        (run / "test.json").write_text(json.dumps({"n": 10, "accuracy": 1.0, "length_balanced_accuracy": 1.0}))
        runs.append(run)
    best, rows = select_run(runs, "length_balanced_accuracy")
    assert best == runs[2] and [r["accuracy"] for r in rows] == [0.7, 0.6, 0.65]
    assert select_run(runs, "accuracy")[0] == runs[0]


def test_the_summary_writes_gaps_and_the_test_interval_as_every_table_does():
    row = {"run": "dpo/r", "path": "/x/dpo/r", "accuracy": 0.6061, "length_balanced_accuracy": None,
           "chosen_shorter_accuracy": 0.5217, "chosen_longer_accuracy": 0.6238, "longer_wins_baseline": 0.652,
           "wall_s": None}
    text = format_summary({"recipe": "r.yaml", "runs_compared": 1, "rank_by": "accuracy", "runs": [row],
                           "selected_path": "/x/dpo/r", "selected_run": "dpo/r", "wall_s_total": 12.0,
                           "test": {"n": 155, "accuracy": 0.652, "length_balanced_accuracy": 0.5864,
                                    "length_balanced_ci95": [0.5121, 0.6607], "longer_wins_baseline": 0.645}})
    assert "* dpo/r" in text and "0.606" in text and "–" in text  # a gap is a dash, never "None"
    assert "length-balanced 0.586 [0.51–0.66]" in text and "None" not in text


def tiny_recipe(tmp_path, tiny_model, sft_lr="1.0e-2", hinge_beta=0.5, judge_n=2) -> Path:
    return write(tmp_path, f"""\
        output_dir: {tmp_path / "out"}
        data:
          fraction: 0.03
          seed: 1
          eval_fraction: 0.3          # validation pairs in both length strata: a paired interval
        rm:
          model: {tiny_model}
          lr: 1.0e-2
          batch_size: 4
          max_pairs: 8
          max_length: 192
        sft:
          model: {tiny_model}
          lr: {sft_lr}
          batch_size: 4
          max_rows: 4
          max_length: 192
        dpo:
          lr: 1.0e-2
          batch_size: 4
          max_pairs: 4
          max_length: 192
          gradient_checkpointing: false
        runs:
          dpo: {{loss: sigmoid}}
          hinge: {{loss: hinge, beta: {hinge_beta}}}
        judge:
          n: {judge_n}
          max_new_tokens: 4
          temperature: 0
          examples: 0
        """)


def test_a_whole_recipe_on_tiny_models_and_its_resume(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    recipe = tiny_recipe(tmp_path, tiny_model)
    summary = run_recipe(recipe)
    root = tmp_path / "out"
    assert summary["runs_compared"] == 2 and {r["run"].split("/")[0] for r in summary["runs"]} == {"dpo", "hinge"}
    selected = root / "runs" / summary["selected_run"]
    others = [p for p in (root / "runs").glob("*/dpo_model_*") if p != selected]
    judged = ("test.json", "judge_test.json", "judge_test_vs_sft.json")
    assert all((selected / name).is_file() for name in judged)
    assert others and not any((p / name).exists() for p in others for name in judged)
    assert json.loads((selected / "preftune_config.json").read_text())["train"]["loss"] == \
        {"dpo": "sigmoid", "hinge": "hinge"}[summary["selected_run"].split("/")[0]]
    assert summary["test"]["n"] > 0 and summary["judge_test"]["posts"] == 2
    assert set(summary["steps"]) == {"rm", "sft", "dpo/dpo", "dpo/hinge", "test", "judge", "judge_vs_sft"}
    sft = next((root / "sft").iterdir())
    config = json.loads((selected / "preftune_config.json").read_text())
    assert [c["kind"] for c in config["chain"]] == ["base", "sft", "dpo"]  # every DPO run starts from the SFT model
    assert config["train"]["model"] == str(sft) and summary["judge_test"]["base_model"] == str(tiny_model)
    # what DPO adds: the same judge against the SFT model the runs started from (recorded relative to ROOT)
    assert summary["judge_test_vs_sft"]["posts"] == 2 and summary["judge_vs_sft_skipped"] is None
    assert summary["judge_test_vs_sft"]["base_model"] == f"sft/{sft.name}"
    assert json.loads((selected / "judge_test_vs_sft.json").read_text())["base_model"] == str(sft)
    assert summary["train_pairs_used"] == 4 and summary["sft_rows_used"] == 4

    # each run paired with the baseline (the `dpo` group) on validation; the selection says where it stands
    baseline = next(r["run"] for r in summary["runs"] if r["run"].startswith("dpo/"))
    assert summary["baseline"] == baseline and summary["baseline_reason"] == "the run group named `dpo`"
    vs = {r["run"]: r["vs_baseline"] for r in summary["runs"]}
    assert vs[baseline]["status"] == "computed" and vs[baseline]["ci95"] == [0.0, 0.0]
    evals = {r["run"]: json.loads((root / r["path"] / "eval.json").read_text()) for r in summary["runs"]}
    for run, v in vs.items():  # the point estimate is the two eval.json's balanced accuracies, subtracted
        assert v["resamples"] == 2000 and v["difference"] == pytest.approx(
            evals[run]["length_balanced_accuracy"] - evals[baseline]["length_balanced_accuracy"])
    assert summary["selected_vs_baseline_ci"] == vs[summary["selected_run"]]["ci95"]
    assert summary["selection_verdict"].startswith(summary["selected_run"])

    # paths: relative to ROOT in recipe.json (ROOT itself as given), so it names no one's disk
    on_disk = json.loads((root / "recipe.json").read_text())
    assert on_disk["selected_run"] == summary["selected_run"] and on_disk["root"] == str(root)
    assert on_disk["selected_path"] == f"runs/{summary['selected_run']}"
    assert on_disk["selected_config"]["chain"][1]["path"] == f"sft/{sft.name}"
    assert str(root) not in json.dumps({k: v for k, v in on_disk.items() if k != "root"})
    assert "judged vs its SFT model on 2 test posts" in format_summary(on_disk)

    q = bench_quality().quality(summary, {})  # bench/quality.py's results file, from this recipe.json
    required = ("runs_compared", "selected_run", "test_n", "test_accuracy", "test_longer_wins_baseline",
                "test_length_balanced_accuracy", "test_length_balanced_ci_low", "test_chosen_shorter_accuracy",
                "judge_lc_win_rate", "judge_lc_win_rate_ci_low", "judge_n", "rm_length_balanced_accuracy",
                "rm_length_spearman", "wall_s_per_run", "wall_s_total", "command")
    required += ("judge_vs_sft_lc_win_rate", "judge_vs_sft_lc_win_rate_ci_low", "judge_vs_base_lc_win_rate",
                 "train_pairs_used", "sft_rows_used", "selected_vs_baseline_ci", "judge_lc_win_rate_ci95")
    assert set(required) <= set(q) and q["test_n"] == summary["test"]["n"] and q["judge_n"] == 2
    assert q["judge_vs_base_lc_win_rate"] == q["judge_lc_win_rate"] is not None
    assert q["judge_vs_sft_lc_win_rate"] is not None and q["judge_vs_sft_n"] == 2
    assert q["selected_vs_baseline_ci"] == summary["selected_vs_baseline_ci"] and q["sft_rows_used"] == 4
    assert q["chain"][1]["path"] == str(sft)  # outside the checkout: where it is, not a guess
    assert "What DPO adds: judged vs its own SFT model" in bench_quality().markdown({**q, "notes": []})
    assert "Measured at commit" not in bench_quality().markdown({**q, "notes": []})  # an older file: none said
    said = bench_quality().markdown({**q, "notes": [], "commit": "abc123", "dirty": True})
    assert said.endswith("Measured at commit abc123, with uncommitted changes.")
    assert q["test_accuracy"] == summary["test"]["accuracy"] and q["runs_compared"] == 2
    assert set(q["wall_s_per_run"]) == {r["run"] for r in summary["runs"]}
    assert all(r["wall_s"] > 0 for r in summary["runs"])  # each run's own timer (metrics.json)
    assert q["targets"]["test_accuracy"]["met"] == (q["test_accuracy"] >= 0.68)

    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.suffix != ".yaml"
              and p.name not in ("recipe.json", "recipe_state.json")}
    again = run_recipe(recipe)  # resumed: every step is complete, nothing is redone
    assert again["steps"] == summary["steps"]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    # the finished recipe edited: each changed step named key by key and refused, before any work; nothing
    # reused (the old runs were credited to the edited file, exit 0)
    def refused(**edit) -> str:
        tiny_recipe(tmp_path, tiny_model, **edit)
        with pytest.raises(PreftuneError) as error:
            run_recipe(recipe)
        assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
        message = str(error.value).replace(str(recipe), "FILE")
        assert "\n" not in message and message.endswith("Pass --overwrite to retrain them (their old runs are "
                                                        "deleted), undo the edit, or set another output_dir")
        return message

    message = refused(hinge_beta=0.25)
    assert "step dpo/runs.hinge: beta 0.5 in the finished run, 0.25 in FILE." in message and "runs.dpo" not in message
    message = refused(sft_lr="5.0e-3", judge_n=3)  # a new SFT model: every DPO run would start from another model
    for said in ("step sft: lr 0.01 in the finished run, 0.005 in FILE |",
                 f"step dpo/runs.dpo: model {sft} in the finished run, {root / 'sft' / 'sft_model_lr0.005_bs4_epoch1'}",
                 "step judge: n 2 in the finished run, 3 in FILE |",  # the judge vs SFT: its new base too
                 f"step judge_vs_sft: base {sft} in the finished run, {root / 'sft' / 'sft_model_lr0.005_bs4_epoch1'} "
                 "in FILE; n 2 in the finished run, 3 in FILE."):
        assert said in message, (said, message)

    # --overwrite: the changed objective alone is trained again; the other run is kept as it was
    tiny_recipe(tmp_path, tiny_model, hinge_beta=0.25)
    kept = next((root / "runs" / "dpo").glob("dpo_model_*"))
    kept_mtime = (kept / "preftune_config.json").stat().st_mtime_ns
    retrained = run_recipe(recipe, overwrite=True)
    hinge = next((root / "runs" / "hinge").glob("dpo_model_*"))
    assert json.loads((hinge / "preftune_config.json").read_text())["train"]["beta"] == 0.25
    assert (kept / "preftune_config.json").stat().st_mtime_ns == kept_mtime
    assert retrained["runs_compared"] == 2 and run_recipe(recipe)["steps"] == retrained["steps"]


def test_the_quality_file_names_paths_inside_the_checkout_relatively(tmp_path):
    q = bench_quality()
    chain = [{"kind": "base", "model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
             {"kind": "sft", "path": str(REPO / "runs" / "x" / "sft_model"), "lr": 2e-5},
             {"kind": "sft", "path": str(tmp_path / "elsewhere")}]
    out = q._repo_relative(chain)
    assert out[0] == chain[0] and out[1] == {"kind": "sft", "path": "runs/x/sft_model", "lr": 2e-5}
    assert out[2] == chain[2]  # outside the checkout: kept as it is, not guessed at
    assert q._repo_relative(None) is None
    # a recipe.json of this version records paths relative to ROOT: made relative to the checkout through ROOT
    relative = [{"kind": "sft", "path": "sft/sft_model"}]
    assert q._repo_relative(relative, REPO / "runs" / "x")[0]["path"] == "runs/x/sft/sft_model"
    assert q._repo_relative(relative, tmp_path)[0]["path"] == str(tmp_path / "sft" / "sft_model")


def test_a_settings_range_comes_from_the_command_its_section_runs():
    from preftune.sweep.recipe_file import SECTION_VERBS, VERB_CONFIGS, section_rules

    assert set(SECTION_VERBS.values()) <= set(VERB_CONFIGS)  # every section's command has its config classes
    # `split` is DataConfig's (any nonempty name) and JudgeConfig's (validation|test): each command its own
    assert section_rules(("judge",))["split"]["choices"] == ("validation", "test")
    assert "choices" not in section_rules(("sweep",))["split"]
    assert "simpo_gamma" in section_rules(("sweep",)) and "simpo_gamma" not in section_rules(("judge",))


@pytest.mark.parametrize("given", ["absolute", "relative"])
def test_recipe_json_names_paths_inside_root_relative_to_it(tmp_path, monkeypatch, given):
    from preftune.sweep.recipe_summary import portable

    monkeypatch.chdir(tmp_path)
    root = (tmp_path / "runs" / "r") if given == "absolute" else Path("runs/r")
    full = tmp_path / "runs" / "r"
    obj = {"path": str(root / "sft" / "m"), "source": f"local folder {full}/sft/m", "root": str(root),
           "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "other": str(tmp_path / "runs" / "r2" / "m"),
           "chain": [{"path": str(full / "runs" / "dpo" / "x")}], "n": 3}
    assert portable(obj, root) == {"path": "sft/m", "source": "local folder sft/m", "root": ".",
                                   "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "other": obj["other"],
                                   "chain": [{"path": "runs/dpo/x"}], "n": 3}


def test_the_baseline_is_select_baseline_or_the_dpo_group(tmp_path):
    from preftune.sweep.recipe_file import baseline_group, step_configs

    def baseline(text: str) -> tuple:
        recipe = load_recipe(write(tmp_path, "output_dir: r\n" + text))
        return baseline_group(recipe, step_configs(recipe, Path("r")))

    assert baseline("runs:\n  dpo: {}\n  simpo: {loss: simpo}\n") == ("dpo", "the run group named `dpo`")
    assert baseline("runs:\n  plain: {}\n  simpo: {loss: simpo}\nselect:\n  baseline: plain\n") == \
        ("plain", "select.baseline")
    assert baseline("runs:\n  simpo: {loss: simpo}\n") == \
        (None, "no baseline: no run group named `dpo` and no select.baseline")
    assert baseline("runs:\n  dpo: {lr: [1e-5, 2e-5]}\n")[1].startswith("no baseline: run group `dpo` plans 2 runs")


def test_the_judge_vs_sft_is_the_same_judge_against_the_sft_model(tmp_path):
    """With an sft step the selected run is judged twice, the second time against the SFT model, greedy (the
    headline decoding; a sampled one would double the generations); without one there is no SFT model, and
    the summary says why (recipe_summary.NO_SFT)."""
    from preftune.sweep.recipe_file import step_configs

    recipe = load_recipe(write(tmp_path, "output_dir: r\nsft: {}\njudge: {n: 5}\nruns:\n  dpo: {}\n"))
    steps = step_configs(recipe, Path("r"))
    sft = str(Path("r") / "sft" / steps.sft[1].run_name)
    assert steps.sft_model == sft and steps.judge_vs_sft.base == sft and steps.judge_vs_sft.n == 5
    assert steps.settings["judge_vs_sft"] == {**steps.settings["judge"], "base": sft, "greedy": True, "temperature": 0.0}
    assert steps.settings["judge"]["base"] == steps.base_model != sft
    recipe = load_recipe(write(tmp_path, "output_dir: r\nruns:\n  dpo: {}\n"))
    steps = step_configs(recipe, Path("r"))
    assert steps.sft_model is None and steps.judge_vs_sft is None and "judge_vs_sft" not in steps.settings
    text = format_summary({"recipe": "r.yaml", "runs_compared": 1, "rank_by": "accuracy", "runs": [],
                           "selected_path": "x", "selected_run": "dpo/x", "wall_s_total": 1.0, "test": None,
                           "judge_vs_sft_skipped": "no sft step: …"})
    assert "not judged vs an SFT model: no sft step" in text
