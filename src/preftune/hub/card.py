"""The model card of a pushed run (templates/model_card.md.j2): Hub metadata (base_model, datasets,
license, tags, model-index), hyperparameters, data, metrics, the judged win rate, the curves and usage.

Every metric block and model-index entry names the data and split it was computed on, and whether that
is the run's held-out data, data the training set is a part of, or another dataset; each result file is
its own model-index entry (the Hub groups entries by dataset type, config and split, not by name).
"""

from __future__ import annotations

import json
from pathlib import Path

from preftune import fmt
from preftune.config import DEFAULT_MODEL, PushConfig
from preftune.hub.upload import CARD
from preftune.hubids import is_hub_id
from preftune.runs import folder as run_folder
from preftune.runs.results import Run, open_run
from preftune.sweep.leaderboard import RANKINGS, dataset_label
from preftune.sweep.plots import CURVES_NOTE

CURVES = "training_curves.png"
# Datasets preftune knows by another name: the shipped sample is a part of this Hub dataset.
HUB_DATASETS = {"tldr-sample": "openai/summarize_from_feedback"}
KNOWN_LICENSES = {DEFAULT_MODEL: "apache-2.0"}


# ---- metadata ------------------------------------------------------------------------------


def base_model_of(run: Run, override: str | None) -> str | None:
    """The base model's Hub id, when there is one (a local folder has none unless given)."""
    spec = override or run.reference_model
    if not is_hub_id(spec):  # e.g. an SFT run folder: the chain's base, when that is a hub id
        spec = str(run.chain[0].get("model", ""))
    return spec if is_hub_id(spec) else None


def license_of(base_model: str | None, run: Run, override: str | None) -> str:
    """--license, else the base model's (known ids, or a local base folder's own card), else 'other'."""
    if override:
        return override
    if base_model in KNOWN_LICENSES:
        return KNOWN_LICENSES[base_model]
    readme = Path(run.reference_model) / CARD
    if readme.is_file():
        from huggingface_hub import ModelCard

        license_ = ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict().get("license")
        if isinstance(license_, str):
            return license_
    return "other"


def hub_dataset(dataset: str) -> str | None:
    return HUB_DATASETS.get(dataset) or (dataset if is_hub_id(dataset) else None)


def data_relation(dataset: str, run: Run) -> str:
    """How the data a result was computed on stand to the run's training data: "own" (the same spec:
    its held-out split is the run's own), "related" (another name of the same data, e.g. the full
    openai/summarize_from_feedback of which tldr-sample is a part: its held-out split may hold posts
    the run trained on) or "other" (a dataset the run was not trained on: transfer)."""
    if dataset == run.dataset:
        return "own"
    ours, theirs = hub_dataset(run.dataset), hub_dataset(dataset)
    return "related" if ours and ours == theirs else "other"


CARD_METRICS = [("accuracy", "accuracy", "preference accuracy (DPO implicit reward)"),
                ("length_balanced_accuracy", "length_balanced_accuracy",
                 "length-balanced accuracy (mean over chosen-longer and chosen-shorter pairs)"),
                ("mean_margin", "mean_reward_margin", "mean reward margin, chosen − rejected"),
                ("mean_logp_drift", "mean_logp_drift", "mean log-prob drift from the base model")]


STRATUM_METRICS = {"chosen_longer": "accuracy where the chosen summary is longer",
                   "chosen_shorter": "accuracy where the chosen summary is shorter"}


# What each kind of result is, in a block's title and in its model-index dataset name.
TITLES = {"held-out": " (held out from training)",
          "own": " (the run's own data, re-prepared by `preftune eval --dataset`)",
          "related": " (overlaps the training data: not held out)",
          "other": " (another dataset: transfer)"}
INDEX_NOTES = {"held-out": "", "own": "", "related": "; may overlap the training data",
               "other": "; transfer: not the training data"}


def result_kind(name: str, m: dict, run: Run) -> tuple[str, str, str]:
    """(split, dataset spec, kind) of a result file; kind is "held-out" for the run's own eval.json /
    test.json, else data_relation's answer for the dataset it names."""
    split, dataset = m.get("split") or "validation", m.get("dataset") or run.dataset
    own_file = name in (run_folder.EVAL_FILE, run_folder.TEST_FILE)
    return split, dataset, "held-out" if own_file else data_relation(dataset, run)


def index_datasets(results: list[tuple[str, dict]], run: Run) -> list[tuple[str, str | None, str, str]]:
    """(type, config, split, name) of each result's model-index dataset, one distinct (type, config,
    split) per result file: the Hub groups a model-index by those (not by name), so two results sharing
    them would be published as one, under the first one's name. Type: the hub id (or "local"); config: the
    run's --hub-config for its own data, the hub dataset's default config (comparisons for
    openai/summarize_from_feedback) for other data, and where that collides, the data's name, then the
    result file's name (unique in the run folder)."""
    from preftune.data.sources import HUB_DEFAULT_CONFIGS

    out, seen = [], set()
    for name, m in results:
        split, dataset, kind = result_kind(name, m, run)
        label = f"{dataset_label(dataset)} ({split} split{INDEX_NOTES[kind]})"
        type_ = hub_dataset(dataset) or "local"
        config = run.config["data"].get("hub_config") if kind in ("held-out", "own") else HUB_DEFAULT_CONFIGS.get(type_)
        config = next((c for c in (config, dataset_label(dataset)) if (type_, c, split) not in seen), name)
        seen.add((type_, config, split))
        out.append((type_, config, split, label))
    return out


def eval_results(results: list[tuple[str, dict]], run: Run):
    """model-index entries: every result's headline metrics, as the Hub's EvalResult, each naming the
    data and split it was computed on (and whether that is the run's held-out data)."""
    from huggingface_hub import EvalResult

    entries = []
    for (name, m), (type_, config, split, label) in zip(results, index_datasets(results, run)):
        values = [(metric, title, m.get(key)) for key, metric, title in CARD_METRICS]
        values += [(f"accuracy_{key}", title, (m.get(key) or {}).get("accuracy"))
                   for key, title in STRATUM_METRICS.items()]
        entries += [EvalResult(task_type="text-generation", task_name="Preference ranking of summaries",
                               dataset_type=type_, dataset_config=config, dataset_name=label, dataset_split=split,
                               metric_type=metric, metric_name=title, metric_value=value)
                    for metric, title, value in values if value is not None]
    return entries


def result_rows(m: dict) -> list[tuple[str, str]]:
    """A result file as model-card rows, with intervals and n."""
    rows = [("preference accuracy (implicit reward)", fmt.with_ci(m.get("accuracy"), m.get("accuracy_ci95"), m.get("n"))),
            ("length-balanced accuracy (length alone scores 0.5)",
             fmt.with_ci(m.get("length_balanced_accuracy"), m.get("length_balanced_ci95"), None, "Agresti–Caffo"))]
    for key, label in (*STRATUM_METRICS.items(), ("equal_length", "accuracy where both summaries are equally long")):
        s = m.get(key) or {}
        if key != "equal_length" or s.get("n"):
            rows.append((label, fmt.with_ci(s.get("accuracy"), s.get("ci95"), s.get("n"))))
    rows += [(label, fmt.number(m.get(key))) for key, label in [
        ("longer_wins_baseline", "'longer summary wins' baseline on the same pairs"),
        ("mean_margin", "mean reward margin"), ("mean_chosen_reward", "mean reward, chosen"),
        ("mean_rejected_reward", "mean reward, rejected"),
        ("mean_logp_drift", "mean log-prob drift from the base model"),
        ("reference_logp_accuracy", "base model's own likelihood accuracy")]]
    rows += [(f"accuracy at labeller confidence {group}", fmt.with_ci(s.get("accuracy"), s.get("ci95"), s.get("n")))
             for group, s in (m.get("accuracy_by_confidence") or {}).items()]
    return rows


def _runs(n) -> str:
    return f"{n} run{'' if n == 1 else 's'}"


def result_note(name: str, m: dict, run: Run, kind: str) -> str:
    """What the pairs of a result are, and whether training could have seen them."""
    split, label = m.get("split") or "validation", dataset_label(m.get("dataset") or run.dataset)
    n, posts, unit = fmt.number(m.get("n")), fmt.number(m.get("posts")), m.get("length_unit") or "characters (an older preftune)"
    if kind in ("held-out", "own"):
        return (f"{n} preference pairs from {posts} posts that training never saw (the split is by post), in "
                f"`{name}`; lengths in {unit}.")
    prepared = f"prepared with this run's fractions and seed, in `{name}`; lengths in {unit}."
    if kind == "related":
        return (f"{n} preference pairs from {posts} posts of the {split} split of `{label}`, {prepared} The run was "
                f"trained on `{dataset_label(run.dataset)}`, a part of the same data, so some of these posts may have "
                "been in its training split: **not a held-out measure**.")
    return (f"{n} preference pairs from {posts} posts (or documents) of the {split} split of `{label}`, a dataset this "
            f"run was not trained on, {prepared} A transfer measure: not comparable with the run's own held-out "
            "numbers.")


def result_block(name: str, m: dict, run: Run) -> dict:
    """One labelled block of the card: which data and split the metrics were computed on, and how."""
    split, dataset, kind = result_kind(name, m, run)
    note = result_note(name, m, run, kind)
    selection = m.get("selection") or {}
    if split == "validation" and kind == "held-out":
        note += " Runs are compared and chosen on this split."
    elif split == "test" and kind == "held-out" and selection:
        note += (f" Computed once, after this run was chosen on validation {RANKINGS.get(selection.get('rank_by'), '')}"
                 f" from {_runs(selection.get('runs_compared'))} compared (rank {selection.get('rank')}); never used "
                 "for choosing.")
    elif split == "test" and kind == "held-out":
        note += " Computed with `preftune eval --split test`."
    if kind == "held-out" and m.get("fingerprint") and m["fingerprint"] != run.fingerprint(split):
        note += " **Stale**: the weights or pairs changed after it was computed."
    return {"title": f"{split} split of `{dataset_label(dataset)}`{TITLES[kind]}", "note": note,
            "rows": result_rows(m)}


def judge_rows(judge: dict | None) -> list[tuple[str, str]]:
    judged = run_folder.judge_summary(judge)
    if judged.get("judge_win_rate") is None:
        return []
    return [("judged win rate over the base model (greedy, reward-model judge)",
             fmt.with_ci(judged["judge_win_rate"], judged["judge_win_rate_ci95"], judged["judge_n"], method=None)),
            ("length-controlled judged win rate", fmt.number(judged["judge_length_controlled_win_rate"])),
            ("judge's verdict strength", f"{judged['judge_verdict_strength']} (reward model held-out accuracy "
                                         f"{fmt.number(judged['judge_rm_accuracy'])})")]


def judge_title(judge: dict | None, run: Run) -> str:
    """The judge block's title: the judge summarizes posts of the run's own validation split."""
    posts = (judge or {}).get("posts")
    count = f", {posts:,} posts" if isinstance(posts, int) and not isinstance(posts, bool) else ""
    return f"Judged generations (validation split of `{dataset_label(run.dataset)}`{count})"


def model_card(run_dir: Path, repo_id: str, cfg: PushConfig):
    """The README.md of the repo, as a huggingface_hub ModelCard (YAML metadata + Markdown). Reads the
    run through run_folder: a damaged file is an error naming it, before anything is staged."""
    from huggingface_hub import ModelCard, ModelCardData

    run = open_run(run_dir)
    metrics = run.metrics() or {}
    order = {run_folder.EVAL_FILE: 0, run_folder.TEST_FILE: 1}
    results = sorted(run.results(), key=lambda r: (order.get(r[0], 2), r[0]))
    judge = run.judge() or {}
    data, train = run.config["data"], run.train
    base = base_model_of(run, cfg.base_model)
    dataset = run.dataset
    dataset_id = hub_dataset(dataset)
    name = repo_id.split("/")[-1]
    tags = ["dpo", "preftune", "text-generation"] + (["trl"] if train.get("engine") == "trl" else []) \
        + (["lora"] if train.get("lora") else [])
    card_data = ModelCardData(
        base_model=base, datasets=[dataset_id] if dataset_id else None, license=license_of(base, run, cfg.license),
        library_name="transformers", pipeline_tag="text-generation", tags=tags, model_name=name,
        eval_results=eval_results(results, run) or None,
    )
    fit = run.config.get("fit") if isinstance(run.config.get("fit"), dict) else {}
    hyperparameters = [(k.replace("_", " "), fmt.setting(train.get(k))) for k in
                       ("lr", "batch_size", "epochs", "beta", "loss", "max_length", "engine", "lora", "grad_accum")]
    hyperparameters += [("optimizer steps", fmt.number(metrics.get("steps"))),
                        ("train time (s)", fmt.number(metrics.get("train_runtime_s"), 1)),
                        ("tokens/s", fmt.number(metrics.get("tokens_per_s"), 1)), ("seed", fmt.number(data.get("seed")))]
    if train.get("lora"):
        hyperparameters += [("LoRA r / alpha / targets",
                             f"{train.get('lora_r')} / {train.get('lora_alpha')} / {train.get('lora_targets')}")]
    evaluation = dict(results).get(run_folder.EVAL_FILE) or {}

    def trimmed(split: str) -> str:
        return fmt.number((fit.get(split) or {}).get("trimmed") if isinstance(fit.get(split), dict) else None)

    data_rows = [("dataset", f"`{dataset_label(dataset)}`" + (f" ([{dataset_id}](https://huggingface.co/datasets/{dataset_id}))"
                                             if dataset_id else "")),
                 ("fraction of the cleaned pairs used", fmt.setting(data.get("fraction"))),
                 ("validation fraction of posts", fmt.setting(data.get("eval_fraction"))),
                 ("test fraction of posts", fmt.setting(data.get("test_fraction")) if run.has_test_split else
                  "none (the run predates the test split)"),
                 ("split", "by post: no post in two of train / validation / test"),
                 ("training pairs", fmt.number(metrics.get("train_pairs"))),
                 ("validation pairs scored", fmt.number(evaluation.get("n"))),
                 ("pairs with their post trimmed to fit max_length",
                  f"{trimmed('train')} train, {trimmed('eval')} validation"
                  + (f", {trimmed('test')} test" if "test" in fit else ""))]
    from importlib.resources import files

    return ModelCard.from_template(
        card_data, template_str=files("preftune").joinpath("templates/model_card.md.j2").read_text(),
        name=name, repo_id=repo_id, preftune_version=run.config.get("preftune_version", "?"),
        base_model_text=f"[{base}](https://huggingface.co/{base})" if base else
        f"A local model (`{Path(str(train['model'])).name}`)",
        dataset_text=f"`{dataset_label(dataset)}`" + (f" (from [{dataset_id}](https://huggingface.co/datasets/{dataset_id}))"
                                       if dataset_id else ""),
        blocks=[result_block(n, m, run) for n, m in results], judge_rows=judge_rows(judge),
        judge_title=judge_title(judge, run), curves_note=CURVES_NOTE,
        hyperparameters=hyperparameters, data_rows=data_rows,
        example_prompt=json.dumps(_example_prompt(run), ensure_ascii=False),
        lora=bool(train.get("lora")), tldr=dataset_id == "openai/summarize_from_feedback",
        judge_verdict=[str(v) for v in judge["verdict"]] if isinstance(judge.get("verdict"), list) else [],
        has_test=run.has_test_split, chain=run_folder.chain_text(run.chain, settings=True),
    )


def _example_prompt(run: Run) -> str:
    prompts = [p.prompt for p in run.eval_pairs()] if (run.path / run_folder.EVAL_PAIRS_FILE).is_file() else []
    return min(prompts, key=len) if prompts else "SUBREDDIT: r/...\nTITLE: ...\nPOST: ...\nTL;DR:"
