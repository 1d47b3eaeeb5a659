"""`preftune report`: leaderboard ranked by held-out accuracy (CSV, JSON, printed), three PNG plots and
a self-contained report.html, from run folders written by hand here (no training needed)."""

import base64
import csv
import json
import math
import re
from pathlib import Path

import pytest

from preftune.config import run_name
from preftune.report import FIELDS, PLOTS, format_leaderboard, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(root: Path, lr: float, bs: int, accuracy: float | None, margin: float = 0.1, epochs: int = 1,
             steps: int = 6, beta: float = 0.1, name: str | None = None) -> Path:
    """A finished run folder as train.run writes it (config, metrics, eval, per-step log)."""
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
    if accuracy is not None:
        evaluation = {"n": 48, "accuracy": accuracy, "mean_margin": margin, "mean_chosen_reward": margin / 2,
                      "mean_rejected_reward": -margin / 2, "mean_logp_drift": -1.5, "chosen_shorter_accuracy": 0.4,
                      "mean_abs_logp_drift_per_token": 0.05, "longer_wins_baseline": 0.65,
                      "reference_logp_accuracy": 0.5}
        (run / "eval.json").write_text(json.dumps(evaluation))
    return run


@pytest.fixture
def root(tmp_path):
    fake_run(tmp_path, 1e-6, 4, 0.55, margin=0.01)
    fake_run(tmp_path, 5e-6, 4, 0.625, margin=0.05)
    fake_run(tmp_path, 1e-6, 8, 0.625, margin=0.09)  # same accuracy: the larger margin ranks first
    fake_run(tmp_path, 5e-6, 8, None)  # trained without evaluation: ranked last
    (tmp_path / (run_name(1e-5, 4, 1) + ".partial")).mkdir()  # interrupted: listed, not ranked
    return tmp_path


def test_leaderboard_ranks_by_accuracy_then_margin(root):
    report(root, log=lambda *a: None)
    rows = json.loads((root / "leaderboard.json").read_text())
    assert [r["run"] for r in rows] == [run_name(1e-6, 8, 1), run_name(5e-6, 4, 1), run_name(1e-6, 4, 1),
                                        run_name(5e-6, 8, 1)]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    best = rows[0]
    assert (best["lr"], best["batch_size"], best["accuracy"], best["mean_margin"]) == (1e-6, 8, 0.625, 0.09)
    assert best["mean_logp_drift"] == -1.5 and best["train_runtime_s"] == 80.0 and best["tokens_per_s"] == 308.0
    assert rows[3]["accuracy"] is None and rows[3]["steps"] == 6


def test_csv_matches_json(root):
    report(root, log=lambda *a: None)
    with open(root / "leaderboard.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    rows = json.loads((root / "leaderboard.json").read_text())
    assert list(table[0]) == FIELDS and len(table) == len(rows) == 4
    for line, row in zip(table, rows):
        assert line["run"] == row["run"]
        assert line["accuracy"] == ("" if row["accuracy"] is None else str(row["accuracy"]))


def test_printed_table_and_unfinished_runs(root):
    lines = []
    report(root, log=lines.append)
    text = "\n".join(lines)
    table = format_leaderboard(json.loads((root / "leaderboard.json").read_text()))
    assert table in text
    first = table.splitlines()[2]
    assert first.split()[:3] == ["1", run_name(1e-6, 8, 1), "0.625"]
    assert f"unfinished (interrupted or running): {run_name(1e-5, 4, 1)}.partial" in text


def test_plots_are_pngs_and_the_html_embeds_them(root):
    import matplotlib.image

    written = report(root, log=lambda *a: None)
    for name in PLOTS:
        data = (root / name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        height, width, _ = matplotlib.image.imread(root / name).shape
        assert width > 400 and height > 200, name
    html = written["report.html"].read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted((root / n).read_bytes() for n in PLOTS)
    assert not re.search(r'(src|href)="(?!data:)', html)  # self-contained: nothing fetched
    assert run_name(1e-6, 8, 1) in html and "0.625" in html
    assert f"{run_name(1e-5, 4, 1)}.partial" in html


def test_report_is_reproducible(root):
    report(root, log=lambda *a: None)
    first = {n: (root / n).read_bytes() for n in ("leaderboard.csv", "leaderboard.json", "report.html")}
    report(root, log=lambda *a: None)
    assert first == {n: (root / n).read_bytes() for n in first}


def test_sweep_progress_names_missing_runs(root):
    planned = [run_name(1e-6, 4, 1), run_name(1e-5, 4, 1)]
    (root / "sweep.json").write_text(json.dumps({"runs": planned, "grid": {"lr": [1e-6, 1e-5], "batch_size": [4]},
                                                 "data": {"dataset": "tldr-sample", "fraction": 1.0,
                                                          "eval_fraction": 0.1, "seed": 42},
                                                 "train": {"model": "tiny"}}))
    lines = []
    report(root, log=lines.append)
    assert f"sweep: 1/2 runs finished; not finished: {run_name(1e-5, 4, 1)}" in lines


def test_no_finished_runs_is_a_clear_error(tmp_path):
    from preftune.cli import main

    (tmp_path / "x.partial").mkdir()
    assert main(["report", str(tmp_path)]) == 2


def test_config_file_name_matches_evaluate():
    from preftune import evaluate, report as report_module

    assert report_module.CONFIG_FILE == evaluate.CONFIG_FILE


def test_judge_results_join_the_leaderboard(root):
    """A run with a judge.json shows its judged win rate; runs without one have empty judge columns."""
    run = root / run_name(5e-6, 4, 1)
    judge = {"verdict_strength": "weak", "rm_accuracy": 0.69,
             "decodings": {"greedy": {"tuned_vs_base": {"n": 24, "win_rate": 0.7083, "ci95": [0.51, 0.85],
                                                         "length_controlled_win_rate": 0.631}}}}
    (run / "judge.json").write_text(json.dumps(judge))
    report(root, log=lambda *a: None)
    rows = {r["run"]: r for r in json.loads((root / "leaderboard.json").read_text())}
    assert rows[run.name]["judge_win_rate"] == 0.7083 and rows[run.name]["judge_n"] == 24
    assert rows[run.name]["judge_verdict_strength"] == "weak"
    assert rows[run_name(1e-6, 4, 1)]["judge_win_rate"] is None
    with open(root / "leaderboard.csv") as fh:
        csv_rows = {r["run"]: r for r in csv.DictReader(fh)}
    assert csv_rows[run.name]["judge_win_rate"] == "0.7083"
