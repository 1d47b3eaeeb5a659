"""`preftune report`: a leaderboard ranked on validation (CSV, JSON, printed), four PNG plots and a
self-contained report.html; test metrics for the chosen runs only, with the number of runs compared;
NaN and older runs ranked last; wide values keep the table aligned. Run folders are written by hand
here (no training needed); test.json is computed for real in test_train.py."""

import base64
import csv
import json
import math
import re
from pathlib import Path

import pytest

from preftune.config import ReportConfig, run_name
from preftune.runs.results import open_run
from preftune.stats import wilson_interval
from preftune.fmt import display_width
from preftune.sweep.leaderboard import FIELDS
from preftune.sweep.plots import PLOTS
from preftune.sweep.report import format_leaderboard, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_eval(accuracy: float, margin: float = 0.1, balanced: float | None = None, n: int = 48,
              split: str = "validation") -> dict:
    """An eval.json as evaluate writes it: 32 chosen-longer and 16 chosen-shorter pairs whose
    accuracies are balanced ± 0.2 (so their mean is the balanced accuracy)."""
    balanced = accuracy - 0.05 if balanced is None else balanced
    longer, shorter = balanced + 0.2, balanced - 0.2

    def stratum(acc, k):
        return {"n": k, "accuracy": acc, "ci95": list(wilson_interval(acc * k, k))}

    return {"split": split, "dataset": "tldr-sample", "n": n, "posts": 20, "beta": 0.1, "length_unit": "tokens",
            "accuracy": accuracy, "accuracy_ci95": list(wilson_interval(accuracy * n, n)),
            "length_balanced_accuracy": balanced, "length_balanced_ci95": [balanced - 0.1, balanced + 0.1],
            "chosen_longer": stratum(longer, 32), "chosen_shorter": stratum(shorter, 16),
            "equal_length": {"n": 0, "accuracy": None, "ci95": None}, "longer_wins_baseline": 0.65,
            "mean_margin": margin, "mean_chosen_reward": margin / 2, "mean_rejected_reward": -margin / 2,
            "mean_logp_drift": -1.5, "mean_abs_logp_drift_per_token": 0.05, "reference_logp_accuracy": 0.5,
            "chosen_shorter_n": 16, "chosen_shorter_accuracy": shorter, "ties": 0}


def old_eval(accuracy: float, margin: float = 0.1) -> dict:
    """An eval.json of preftune before the length strata: no intervals, no chosen_longer, no balance."""
    return {"n": 48, "posts": 20, "beta": 0.1, "accuracy": accuracy, "ties": 0, "mean_margin": margin,
            "mean_chosen_reward": margin / 2, "mean_rejected_reward": -margin / 2, "mean_logp_drift": -1.5,
            "mean_abs_logp_drift_per_token": 0.05, "reference_logp_accuracy": 0.5, "longer_wins_baseline": 0.65,
            "chosen_shorter_n": 15, "chosen_shorter_accuracy": 0.4}


def fake_run(root: Path, lr: float, bs: int, accuracy: float | None, margin: float = 0.1, epochs: int = 1,
             steps: int = 6, beta: float = 0.1, name: str | None = None, balanced: float | None = None,
             evaluation: dict | None = None) -> Path:
    """A finished run folder as train.run writes it (config, metrics, eval, per-step log), without a
    model or a test split (like a run trained before preftune kept one)."""
    run = root / (name or run_name(lr, bs, epochs))
    run.mkdir(parents=True)
    train = {"lr": lr, "batch_size": bs, "epochs": epochs, "beta": beta, "loss": "sigmoid", "lora": False,
             "engine": "trl", "model": "tiny", "max_length": 192}
    config = {"run_name": run.name, "data": {"dataset": "tldr-sample", "fraction": 0.05, "eval_fraction": 0.1,
                                             "seed": 42}, "train": train}
    (run / "preftune_config.json").write_text(json.dumps(config))
    log = [{"step": s, "loss": math.log(2) * math.exp(-lr * 1e4 * s / steps), "rewards/accuracies": min(1, s / steps),
            "rewards/margins": lr * 1e4 * s / steps} for s in range(1, steps + 1)]
    (run / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    metrics = {"steps": steps, "train_runtime_s": 10.0 * bs, "train_pairs": steps * bs, "tokens_per_s": 300.0 + bs,
               "pairs_per_s": 0.5, "final": {k: v for k, v in log[-1].items() if k != "step"}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    if evaluation is not None or accuracy is not None:
        (run / "eval.json").write_text(json.dumps(evaluation or fake_eval(accuracy, margin, balanced)))
    return run


def give_test_split(run: Path, accuracy: float | None = None) -> None:
    """test_pairs.jsonl (and weights) as a run trained with a test split has; with `accuracy`, a fresh
    test.json too (its fingerprint matches, so report reuses it instead of loading a model)."""
    (run / "model.safetensors").write_bytes(b"weights")
    (run / "test_pairs.jsonl").write_text(json.dumps({"prompt": "P", "chosen": " a", "rejected": " b",
                                                      "post_id": "t1"}) + "\n")
    if accuracy is not None:
        test = {**fake_eval(accuracy, split="test", n=40), "fingerprint": open_run(run).fingerprint("test")}
        (run / "test.json").write_text(json.dumps(test))


def quiet(root: Path, **kw) -> dict:
    return report(root, ReportConfig(**kw))


def rows_of(root: Path) -> list[dict]:
    return json.loads((root / "leaderboard.json").read_text())


@pytest.fixture
def root(tmp_path):
    fake_run(tmp_path, 1e-6, 4, 0.55, margin=0.01, balanced=0.52)
    fake_run(tmp_path, 5e-6, 4, 0.625, margin=0.05, balanced=0.58)
    fake_run(tmp_path, 1e-6, 8, 0.625, margin=0.09, balanced=0.58)  # same balance and accuracy: larger margin first
    fake_run(tmp_path, 5e-6, 8, None)  # trained without evaluation: listed last, unranked
    (tmp_path / (run_name(1e-5, 4, 1) + ".partial")).mkdir()  # interrupted: listed, not ranked
    return tmp_path


def test_leaderboard_ranks_by_balanced_accuracy_then_accuracy_then_margin(root):
    quiet(root)
    rows = rows_of(root)
    assert [r["run"] for r in rows] == [run_name(1e-6, 8, 1), run_name(5e-6, 4, 1), run_name(1e-6, 4, 1),
                                        run_name(5e-6, 8, 1)]
    assert [r["rank"] for r in rows] == [1, 2, 3, None]
    assert {r["runs_compared"] for r in rows} == {3} and {r["rank_by"] for r in rows} == {"length_balanced_accuracy"}
    best = rows[0]
    assert (best["lr"], best["batch_size"], best["accuracy"], best["mean_margin"]) == (1e-6, 8, 0.625, 0.09)
    assert best["length_balanced_accuracy"] == 0.58 and best["chosen_longer_n"] == 32 and best["chosen_shorter_n"] == 16
    assert best["chosen_longer_accuracy"] == pytest.approx(0.78) and best["chosen_shorter_accuracy"] == pytest.approx(0.38)
    assert (best["accuracy_ci95_low"], best["accuracy_ci95_high"]) == pytest.approx(wilson_interval(30, 48))
    assert best["mean_logp_drift"] == -1.5 and best["train_runtime_s"] == 80.0 and best["tokens_per_s"] == 308.0
    assert rows[3]["accuracy"] is None and rows[3]["steps"] == 6


def test_rank_by_chooses_the_metric(tmp_path):
    """A length counter (high accuracy, balanced 0.5) beats a run with signal beyond length only when
    ranked by raw accuracy."""
    fake_run(tmp_path, 1e-6, 4, 0.70, balanced=0.50, name="length_counter")
    fake_run(tmp_path, 1e-6, 8, 0.60, balanced=0.58, name="beyond_length")
    quiet(tmp_path)
    assert [r["run"] for r in rows_of(tmp_path)] == ["beyond_length", "length_counter"]
    quiet(tmp_path, rank_by="accuracy")
    assert [r["run"] for r in rows_of(tmp_path)] == ["length_counter", "beyond_length"]


def test_csv_matches_json(root):
    quiet(root)
    with open(root / "leaderboard.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    rows = rows_of(root)
    assert list(table[0]) == FIELDS and len(table) == len(rows) == 4
    for line, row in zip(table, rows):
        for key in ("run", "accuracy", "length_balanced_accuracy", "chosen_longer_n", "accuracy_ci95_low"):
            assert line[key] == ("" if row[key] is None else str(row[key])), key


def test_printed_table_and_unfinished_runs(root, capsys):
    quiet(root)
    text = capsys.readouterr().out
    table = format_leaderboard(rows_of(root))
    assert table in text
    first = table.splitlines()[2]
    assert first.split()[:3] == ["1", run_name(1e-6, 8, 1), "0.580"]
    assert "0.625 [0.48–0.75] n=48" in first and "0.780 [0.61–0.89] n=32" in first and "0.380 [0.19–0.62] n=16" in first
    assert table.splitlines()[-1].split()[:2] == ["–", run_name(5e-6, 8, 1)]
    assert f"unfinished (interrupted or running): {run_name(1e-5, 4, 1)}.partial" in text


def test_plots_are_pngs_and_the_html_embeds_them(root):
    import matplotlib.image

    written = quiet(root)
    assert set(PLOTS) == {"curves.png", "accuracy_grid.png", "length_strata.png", "margins.png"}
    for name in PLOTS:
        data = (root / name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        height, width, _ = matplotlib.image.imread(root / name).shape
        assert width > 400 and height > 200, name
    html = written["report.html"].read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted((root / n).read_bytes() for n in PLOTS)
    assert not re.search(r'(src|href)="(?!data:)', html)  # self-contained: nothing fetched
    assert run_name(1e-6, 8, 1) in html and "0.580 [0.48–0.68]" in html and "0.780 [0.61–0.89] n=32" in html
    assert f"{run_name(1e-5, 4, 1)}.partial" in html


def test_report_is_reproducible(root):
    quiet(root)
    first = {n: (root / n).read_bytes() for n in ("leaderboard.csv", "leaderboard.json", "report.html")}
    quiet(root)
    assert first == {n: (root / n).read_bytes() for n in first}


def test_sweep_progress_names_missing_runs(root, capsys):
    planned = [run_name(1e-6, 4, 1), run_name(1e-5, 4, 1)]
    (root / "sweep.json").write_text(json.dumps({"runs": planned, "grid": {"lr": [1e-6, 1e-5], "batch_size": [4]},
                                                 "data": {"dataset": "tldr-sample", "fraction": 1.0,
                                                          "eval_fraction": 0.1, "seed": 42},
                                                 "train": {"model": "tiny"}}))
    quiet(root)
    assert f"sweep: 1/2 runs finished; not finished: {run_name(1e-5, 4, 1)}" in capsys.readouterr().out


@pytest.mark.parametrize("setup, message", [
    (lambda p: (p / "x.partial").mkdir(), "holds no finished runs (folders with preftune_config.json); "
                                          "unfinished: x.partial"),
    (lambda p: None, "holds no finished runs"),
    (lambda p: (p / "file").write_text("x"), "is not a folder of runs (it is a file)"),
])
def test_nothing_to_report_is_a_clear_error(tmp_path, capsys, setup, message):
    from preftune.cli import main

    setup(tmp_path)
    target = tmp_path / "file" if (tmp_path / "file").exists() else tmp_path
    assert main(["report", str(target)]) == 2
    assert message in capsys.readouterr().err


def test_judge_results_join_the_leaderboard(root):
    """A run with a judge.json shows its judged win rate; runs without one have empty judge columns."""
    run = root / run_name(5e-6, 4, 1)
    judge = {"verdict_strength": "weak", "rm_accuracy": 0.69,
             "decodings": {"greedy": {"tuned_vs_base": {"n": 24, "win_rate": 0.7083, "ci95": [0.51, 0.85],
                                                         "length_controlled_win_rate": 0.631}}}}
    (run / "judge.json").write_text(json.dumps(judge))
    quiet(root)
    rows = {r["run"]: r for r in rows_of(root)}
    assert rows[run.name]["judge_win_rate"] == 0.7083 and rows[run.name]["judge_n"] == 24
    assert rows[run.name]["judge_verdict_strength"] == "weak"
    assert rows[run_name(1e-6, 4, 1)]["judge_win_rate"] is None
    with open(root / "leaderboard.csv") as fh:
        csv_rows = {r["run"]: r for r in csv.DictReader(fh)}
    assert csv_rows[run.name]["judge_win_rate"] == "0.7083"


# ---- rankings: NaN, older runs -------------------------------------------------------------------


def strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"bare {constant} in JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("damage", ["accuracy", "mean_margin", "length_balanced_accuracy"])
def test_a_run_with_nan_metrics_ranks_last_and_the_json_stays_strict(tmp_path, damage):
    fake_run(tmp_path, 1e-6, 4, 0.55, balanced=0.52)
    evaluation = {**fake_eval(0.9, balanced=0.8), damage: math.nan}
    fake_run(tmp_path, 1e-6, 8, None, evaluation=evaluation)  # json.dumps writes a bare NaN
    assert "NaN" in (tmp_path / run_name(1e-6, 8, 1) / "eval.json").read_text()
    quiet(tmp_path)
    rows = strict_json((tmp_path / "leaderboard.json").read_text())
    assert [(r["run"], r["rank"]) for r in rows] == [(run_name(1e-6, 4, 1), 1), (run_name(1e-6, 8, 1), None)]
    assert rows[0]["runs_compared"] == 1 and rows[1][damage] is None


def test_runs_from_before_the_length_strata_still_report_with_gaps(tmp_path, capsys):
    fake_run(tmp_path, 1e-6, 4, None, evaluation=old_eval(0.6))
    fake_run(tmp_path, 1e-6, 8, 0.55, balanced=0.52)
    quiet(tmp_path)
    rows = {r["run"]: r for r in rows_of(tmp_path)}
    old = rows[run_name(1e-6, 4, 1)]
    assert old["rank"] is None and old["length_balanced_accuracy"] is None and old["chosen_longer_n"] is None
    assert old["chosen_shorter_accuracy"] == 0.4 and old["chosen_shorter_n"] == 15  # the older keys, still read
    line = next(l for l in capsys.readouterr().out.splitlines() if run_name(1e-6, 4, 1) in l and "–" in l)
    assert "0.600 [0.46–0.73] n=48" in line and "0.400 [0.20–0.64] n=15" in line
    quiet(tmp_path, rank_by="accuracy")
    assert rows_of(tmp_path)[0]["run"] == run_name(1e-6, 4, 1)  # ranked by a metric it has


def test_wide_values_keep_the_table_aligned(tmp_path, capsys):
    long_name = "run_" + "x" * 240  # near the 255-byte limit of a folder name
    fake_run(tmp_path, 1e-6, 4, 0.55, name=long_name)
    wide = fake_run(tmp_path, 1e-6, 8, 0.6, name="wide_ナ名前_run")
    metrics = json.loads((wide / "metrics.json").read_text())
    (wide / "metrics.json").write_text(json.dumps({**metrics, "tokens_per_s": 1e300, "train_runtime_s": 10**30}))
    quiet(tmp_path)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith(("#", "-", "1 ", "2 "))][:4]
    rule = lines[1]
    assert rule.startswith("-") and display_width(rule) < 260
    assert [display_width(line) for line in lines] == [display_width(rule)] * 4  # every row as wide as the rule
    for line in lines[2:]:
        assert len([c for c in line.split("  ") if c.strip()]) == len(rule.split()), line
    assert "1e+300" in "\n".join(lines) and "…" in "\n".join(lines) and long_name in json.dumps(rows_of(tmp_path))


# ---- choose on validation, report on test --------------------------------------------------------


def test_test_metrics_for_the_chosen_run_only(tmp_path, capsys):
    best = fake_run(tmp_path, 1e-6, 8, 0.625, balanced=0.60)
    other = fake_run(tmp_path, 1e-6, 4, 0.55, balanced=0.52)
    give_test_split(best, accuracy=0.575)
    give_test_split(other, accuracy=0.912)  # computed earlier by hand: never shown for an unselected run
    fake_run(tmp_path, 5e-6, 4, None)
    written = quiet(tmp_path)
    rows = {r["run"]: r for r in rows_of(tmp_path)}
    chosen = rows[best.name]
    assert chosen["selected"] and chosen["test_accuracy"] == 0.575 and chosen["test_pairs"] == 40
    assert chosen["runs_compared"] == 2 and chosen["test_status"] == "computed"
    assert not rows[other.name]["selected"] and rows[other.name]["test_accuracy"] is None
    out = capsys.readouterr().out
    assert "test (chosen on validation length-balanced accuracy from 2 runs compared" in out
    assert "0.575 [0.42–0.71] n=40" in out and "0.912" not in out
    html = written["report.html"].read_text()
    assert "from 2 runs compared" in html and "0.575 [0.42–0.71] n=40" in html and "0.912" not in html
    stored = json.loads((best / "test.json").read_text())
    assert stored["selection"] == {"rank_by": "length_balanced_accuracy", "rank": 1, "runs_compared": 2}


def test_select_n_and_runs_that_predate_the_test_split(tmp_path, capsys):
    a = fake_run(tmp_path, 1e-6, 8, 0.625, balanced=0.60)
    b = fake_run(tmp_path, 1e-6, 4, 0.55, balanced=0.52)
    give_test_split(b, accuracy=0.5)
    quiet(tmp_path, select=2)
    rows = {r["run"]: r for r in rows_of(tmp_path)}
    assert rows[a.name]["test_status"] == "n/a (run predates the test split)" and rows[a.name]["test_accuracy"] is None
    assert rows[b.name]["test_accuracy"] == 0.5 and rows[b.name]["selected"]
    assert f"#1 {a.name}: test: n/a (run predates the test split)" in capsys.readouterr().out
    quiet(tmp_path, select=0)
    assert not any(r["selected"] for r in rows_of(tmp_path))


def test_report_flags(tmp_path, capsys):
    from preftune.cli import main

    fake_run(tmp_path, 1e-6, 4, 0.7, balanced=0.5, name="a")
    fake_run(tmp_path, 1e-6, 8, 0.6, balanced=0.58, name="b")
    assert main(["report", str(tmp_path), "--rank-by", "accuracy", "--select", "0"]) == 0
    assert [r["run"] for r in rows_of(tmp_path)] == ["a", "b"]
    try:
        code = main(["report", str(tmp_path), "--rank-by", "loss"])
    except SystemExit as e:  # argparse's choices, where the CLI passes them
        code = e.code
    assert code == 2 and "--rank-by" in capsys.readouterr().err


def test_the_ranking_choices_match_the_metrics_report_knows():
    import dataclasses

    from preftune.config import PushConfig
    from preftune.sweep.leaderboard import RANKINGS

    choices = [{f.name: f for f in dataclasses.fields(cls)}["rank_by"].metadata["choices"]
               for cls in (ReportConfig, PushConfig)]
    assert choices[0] == choices[1] == tuple(RANKINGS)


# ---- runs scored on different data; smoothed curves ----------------------------------------------


def on_other_data(run: Path, **data) -> Path:
    """The run, as if trained and evaluated with other data settings (e.g. seed, dataset)."""
    config = json.loads((run / "preftune_config.json").read_text())
    config["data"].update(data)
    (run / "preftune_config.json").write_text(json.dumps(config))
    if "dataset" in data:
        evaluation = json.loads((run / "eval.json").read_text())
        (run / "eval.json").write_text(json.dumps({**evaluation, "dataset": data["dataset"]}))
    return run


def test_runs_scored_on_different_data_are_never_ranked_against_each_other(tmp_path, capsys):
    a = fake_run(tmp_path, 1e-6, 4, 0.60, balanced=0.55, name="a")
    b = fake_run(tmp_path, 1e-6, 8, 0.62, balanced=0.57, name="b")
    other = on_other_data(fake_run(tmp_path, 5e-6, 4, 0.90, balanced=0.80, name="easy"), dataset="/data/cnndm.jsonl")
    reseeded = on_other_data(fake_run(tmp_path, 5e-6, 8, 0.70, balanced=0.70, name="reseeded"), seed=7)
    give_test_split(b, accuracy=0.575)
    written = quiet(tmp_path)
    rows = rows_of(tmp_path)
    assert [(r["run"], r["data_group"], r["rank"], r["runs_compared"]) for r in rows] == [
        ("b", 1, 1, 2), ("a", 1, 2, 2), ("easy", 2, 1, 1), ("reseeded", 3, 1, 1)]
    assert rows[0]["eval_data"] == "tldr-sample (fraction 0.05, validation 0.1, test 0.0, seed 42)"
    assert rows[2]["eval_data"] == "cnndm.jsonl (fraction 0.05, validation 0.1, test 0.0, seed 42)"
    assert rows[3]["eval_data"].endswith("seed 7)")

    out = capsys.readouterr().out
    assert "warning: these runs were scored on different validation data (3 groups): each group is ranked on its own" \
        in out
    assert "[group 1] validation data: tldr-sample (fraction 0.05, validation 0.1, test 0.0, seed 42): 2 runs, 2 ranked" \
        in out and "[group 2] validation data: cnndm.jsonl" in out
    assert out.index("[group 1]") < out.index(" b ") < out.index(" a ") < out.index("[group 2]") < out.index("easy")
    assert "validation data: cnndm.jsonl (fraction 0.05, validation 0.1, test 0.0, seed 42); test metrics" in out
    html = written["report.html"].read_text()
    assert "<strong>Warning:</strong> these runs were scored on different validation data (3 groups)" in html
    assert html.count("<h3>[group ") == 3 and "/data/" not in html
    chosen = {r["run"] for r in rows if r["selected"]}
    assert chosen == {"b", "easy", "reseeded"}  # the best of each group, each tested against its own group only
    assert {r["run"]: r["test_status"] for r in rows if r["selected"]}["easy"] == "n/a (run predates the test split)"


def test_runs_on_the_same_data_make_one_table_that_says_which_data(root, capsys):
    written = quiet(root)
    out = capsys.readouterr().out
    assert "warning" not in out and "[group" not in out
    assert "; validation data: tldr-sample (fraction 0.05, validation 0.1, test 0.0, seed 42):" in out
    assert {r["data_group"] for r in rows_of(root)} == {1}
    assert "Validation data: <code>tldr-sample (fraction 0.05, validation 0.1, test 0.0, seed 42)</code>" in \
        written["report.html"].read_text()


def test_max_eval_pairs_is_part_of_the_data(tmp_path):
    fake_run(tmp_path, 1e-6, 4, 0.6, name="all")
    capped = fake_run(tmp_path, 1e-6, 8, 0.7, name="capped")
    config = json.loads((capped / "preftune_config.json").read_text())
    config["train"]["max_eval_pairs"] = 16
    (capped / "preftune_config.json").write_text(json.dumps(config))
    quiet(tmp_path)
    assert [(r["run"], r["data_group"], r["rank"]) for r in rows_of(tmp_path)] == [("all", 1, 1), ("capped", 2, 1)]
    assert rows_of(tmp_path)[1]["eval_data"].endswith("seed 42, at most 16 pairs)")


def test_smoothing_is_a_bias_corrected_moving_average():
    from preftune.sweep.plots import smooth, smoothing_span

    assert smooth([0.7] * 50) == pytest.approx([0.7] * 50)  # no pull towards 0 at the start
    assert smooth([1.0, 0.0, 1.0], span=1) == [1.0, 0.0, 1.0]  # span 1: the values themselves
    alpha = 2 / 4
    m1, m2 = alpha * 1.0, (1 - alpha) * alpha * 1.0 + alpha * 0.0
    assert smooth([1.0, 0.0], span=3) == pytest.approx([m1 / alpha, m2 / (1 - (1 - alpha) ** 2)])
    noisy = [0.5 + (0.3 if i % 2 else -0.3) for i in range(200)]  # batch-size-8 style noise around 0.5
    assert max(abs(v - 0.5) for v in smooth(noisy)[50:]) < 0.05
    assert [smoothing_span(n) for n in (3, 10, 100, 2000)] == [1, 2, 20, 50]


def test_curves_draw_the_raw_values_faint_under_the_smoothed_line():
    from preftune.sweep.plots import _pyplot, plot_smoothed, smooth

    plt = _pyplot()
    fig, ax = plt.subplots()
    log = [{"step": s, "loss": 0.69 + (0.2 if s % 2 else -0.2)} for s in range(1, 101)]
    plot_smoothed(ax, log, "loss", "run")
    raw, smoothed = ax.get_lines()
    assert list(raw.get_ydata()) == [r["loss"] for r in log] and raw.get_alpha() < 0.5
    assert list(smoothed.get_ydata()) == smooth([r["loss"] for r in log]) and smoothed.get_alpha() in (None, 1)
    assert smoothed.get_color() == raw.get_color() and smoothed.get_label() == "run" and raw.get_label().startswith("_")
    plt.close(fig)


def outcomes(correct: list[int]) -> dict:
    """eval.json's pair_outcomes: 4 posts, each a chosen-longer pair (even keys) and a chosen-shorter one."""
    return {"key": [f"k{i}" for i in range(8)], "post_id": [f"p{i // 2}" for i in range(8)],
            "correct": [bool(c) for c in correct], "chosen_tokens": [10 if i % 2 == 0 else 5 for i in range(8)],
            "rejected_tokens": [5 if i % 2 == 0 else 10 for i in range(8)]}


def with_loss(run: Path, loss: str, **train) -> Path:
    config = json.loads((run / "preftune_config.json").read_text())
    config["train"].update(loss=loss, **train)
    (run / "preftune_config.json").write_text(json.dumps(config))
    return run


def test_each_run_is_paired_with_the_plain_dpo_run(tmp_path, capsys):
    """The baseline (the one loss-sigmoid run without extras) is right on 0 of 4 chosen-longer pairs and 2 of
    4 chosen-shorter: balanced 0.25. The hinge run is right on all chosen-longer pairs and the same shorter
    ones: 0.75, so +0.5 in every resample, an interval [0.5, 0.5]: distinguishable. A run whose eval.json
    predates per-pair outcomes has no interval, and the table says so."""
    base = fake_run(tmp_path, 1e-6, 8, 0.5, balanced=0.25,
                    evaluation={**fake_eval(0.5, balanced=0.25), "pair_outcomes": outcomes([0, 1, 0, 1, 0, 0, 0, 0])})
    hinge = with_loss(fake_run(tmp_path, 1e-6, 4, 0.75, balanced=0.75, name="hinge", evaluation={
        **fake_eval(0.75, balanced=0.75), "pair_outcomes": outcomes([1, 1, 1, 1, 1, 0, 1, 0])}), "hinge")
    with_loss(fake_run(tmp_path, 1e-6, 2, 0.6, balanced=0.6, name="old"), "ipo")
    with_loss(fake_run(tmp_path, 1e-6, 1, 0.6, balanced=0.55, name="rpo", evaluation={
        **fake_eval(0.6, balanced=0.55), "pair_outcomes": outcomes([0, 1, 0, 1, 0, 1, 0, 1])}), "sigmoid", nll_weight=1.0)
    written = quiet(tmp_path)
    rows = {r["run"]: r for r in rows_of(tmp_path)}
    assert {r["baseline"] for r in rows.values()} == {base.name}  # rpo has an extra (nll_weight): not plain
    h = rows[hinge.name]
    assert h["vs_baseline_difference"] == pytest.approx(0.5) and h["vs_baseline_distinguishable"] is True
    assert (h["vs_baseline_ci95_low"], h["vs_baseline_ci95_high"]) == pytest.approx((0.5, 0.5))
    assert rows["rpo"]["vs_baseline_difference"] == pytest.approx(0.25)  # ½(0 + 2/4)
    assert rows[base.name]["vs_baseline_difference"] == 0.0 and rows[base.name]["vs_baseline_status"] == "computed"
    assert rows["old"]["vs_baseline_difference"] is None and rows["old"]["vs_baseline_status"] == \
        "not available: old's eval.json predates per-pair outcomes (evaluate it again: preftune eval RUN)"
    out = capsys.readouterr().out
    note = (f"paired intervals vs baseline {base.name} (the one plain DPO run (loss sigmoid, no extras)), on "
            f"validation only; hinge is distinguishable from the baseline {base.name}")
    assert note in out and "+0.500 [+0.500, +0.500]" in out and "baseline" in out
    html = written["report.html"].read_text()
    assert "hinge is distinguishable from the baseline" in html and "+0.500 [+0.500, +0.500]" in html
    assert "Δ bal. vs baseline [95% CI]" in out
    assert "n/a" in next(line for line in out.splitlines() if line.split()[1:2] == ["old"])  # no interval: says so


def test_with_several_plain_runs_the_report_names_no_baseline(root, capsys):
    quiet(root)
    assert "paired intervals: no baseline: 4 plain DPO runs (dpo_model_lr1e-06_bs4_epoch1, " in capsys.readouterr().out
    assert all(r["baseline"] is None and r["vs_baseline_difference"] is None for r in rows_of(root))
