"""`preftune recipe`: the file is checked before any step runs (file, line and key named); a whole recipe on
tiny models trains the reward model and one sweep per objective, selects on validation, computes test.json
and judge_test.json for the selected run only, and a second invocation redoes nothing."""

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

from preftune.errors import PreftuneError
from preftune.sweep.recipe import format_summary, load_recipe, run_recipe, select_run

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
])
def test_a_bad_recipe_is_refused_before_any_step(tmp_path, text, message):
    with pytest.raises(PreftuneError, match=message):
        load_recipe(write(tmp_path, text))
    assert not (tmp_path / "r").exists()


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


def test_a_whole_recipe_on_tiny_models_and_its_resume(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    recipe = write(tmp_path, f"""\
        output_dir: {tmp_path / "out"}
        {DATA.replace(chr(10), chr(10) + "        ")}
        rm:
          model: {tiny_model}
          lr: 1.0e-2
          batch_size: 4
          max_pairs: 8
          max_length: 192
        sft:
          model: {tiny_model}
          lr: 1.0e-2
          batch_size: 4
          max_rows: 4
          max_length: 192
        dpo:
          lr: 1.0e-2
          batch_size: 4
          max_pairs: 4
          max_eval_pairs: 8
          max_length: 192
          gradient_checkpointing: false
        runs:
          dpo: {{loss: sigmoid}}
          hinge: {{loss: hinge, beta: 0.5}}
        judge:
          n: 2
          max_new_tokens: 4
          temperature: 0
          examples: 0
        """)
    summary = run_recipe(recipe)
    root = tmp_path / "out"
    assert summary["runs_compared"] == 2 and {r["run"].split("/")[0] for r in summary["runs"]} == {"dpo", "hinge"}
    selected = root / "runs" / summary["selected_run"]
    others = [p for p in (root / "runs").glob("*/dpo_model_*") if p != selected]
    assert (selected / "test.json").is_file() and (selected / "judge_test.json").is_file()
    assert others and not any((p / "test.json").exists() or (p / "judge_test.json").exists() for p in others)
    assert json.loads((selected / "preftune_config.json").read_text())["train"]["loss"] == \
        {"dpo": "sigmoid", "hinge": "hinge"}[summary["selected_run"].split("/")[0]]
    assert summary["test"]["n"] > 0 and summary["judge_test"]["posts"] == 2
    assert set(summary["steps"]) == {"rm", "sft", "dpo/dpo", "dpo/hinge", "test", "judge"}
    sft = next((root / "sft").iterdir())
    config = json.loads((selected / "preftune_config.json").read_text())
    assert [c["kind"] for c in config["chain"]] == ["base", "sft", "dpo"]  # every DPO run starts from the SFT model
    assert config["train"]["model"] == str(sft) and summary["judge_test"]["base_model"] == str(tiny_model)
    on_disk = json.loads((root / "recipe.json").read_text())
    assert on_disk["selected_run"] == summary["selected_run"]

    q = bench_quality().quality(summary, {})  # bench/quality.py's results file, from this recipe.json
    required = ("runs_compared", "selected_run", "test_n", "test_accuracy", "test_longer_wins_baseline",
                "test_length_balanced_accuracy", "test_length_balanced_ci_low", "test_chosen_shorter_accuracy",
                "judge_lc_win_rate", "judge_lc_win_rate_ci_low", "judge_n", "rm_length_balanced_accuracy",
                "rm_length_spearman", "wall_s_per_run", "wall_s_total", "command")
    assert set(required) <= set(q) and q["test_n"] == summary["test"]["n"] and q["judge_n"] == 2
    assert q["test_accuracy"] == summary["test"]["accuracy"] and q["runs_compared"] == 2
    assert set(q["wall_s_per_run"]) == {r["run"] for r in summary["runs"]}
    assert all(r["wall_s"] > 0 for r in summary["runs"])  # each run's own timer (metrics.json)
    assert q["targets"]["test_accuracy"]["met"] == (q["test_accuracy"] >= 0.68)

    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.suffix != ".yaml"
              and p.name not in ("recipe.json", "recipe_state.json")}
    again = run_recipe(recipe)  # resumed: every step is complete, nothing is redone
    assert again["steps"] == summary["steps"]
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_the_committed_quality_file_names_paths_inside_the_checkout_relatively(tmp_path):
    q = bench_quality()
    chain = [{"kind": "base", "model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
             {"kind": "sft", "path": str(REPO / "runs" / "x" / "sft_model"), "lr": 2e-5},
             {"kind": "sft", "path": str(tmp_path / "elsewhere")}]
    out = q._repo_relative(chain)
    assert out[0] == chain[0] and out[1] == {"kind": "sft", "path": "runs/x/sft_model", "lr": 2e-5}
    assert out[2] == chain[2]  # outside the checkout: kept as it is, not guessed at
    assert q._repo_relative(None) is None


def test_a_settings_range_comes_from_the_command_its_section_runs():
    from preftune.sweep.recipe import SECTION_VERBS, VERB_CONFIGS, section_rules

    assert set(SECTION_VERBS.values()) <= set(VERB_CONFIGS)  # every section's command has its config classes
    # `split` is DataConfig's (any nonempty name) and JudgeConfig's (validation|test): each command its own
    assert section_rules(("judge",))["split"]["choices"] == ("validation", "test")
    assert "choices" not in section_rules(("sweep",))["split"]
    assert "simpo_gamma" in section_rules(("sweep",)) and "simpo_gamma" not in section_rules(("judge",))
