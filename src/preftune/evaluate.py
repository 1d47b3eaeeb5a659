"""Held-out evaluation of a run: does the tuned policy rank the human-preferred summary higher?

For each held-out pair the implicit DPO reward of a completion is r = β·(log π − log π_ref)
(DPO paper, Eq. 5); the pair is ranked correctly when r(chosen) > r(rejected) (ties count as wrong,
as in TRL). Beside it: mean margin, log-prob drift from the reference, and the "longer completion
wins" baseline, with the model's accuracy where the chosen summary is the shorter one — so a user
sees whether the model learned more than length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from preftune.data.prepare import Pair, longer_wins
from preftune.logps import PairLogpsModule, pack_pair, packed_pair_logps


@dataclass(frozen=True)
class PairLogps:
    """Summed completion log-probs, each (N,): policy and reference, chosen and rejected."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


def score_pairs(model, tokenizer, pairs: list[Pair], desc: str = "eval") -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) summed log-probs of (chosen, rejected) and (N, 2) completion token counts.

    One packed row per pair (the prompt computed once, see logps.PackedPair), no padding."""
    packed = [pack_pair(tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
    module = PairLogpsModule(model).eval()
    with torch.no_grad():
        logps = torch.stack([packed_pair_logps(module, p) for p in tqdm(packed, desc=desc, unit="pair", leave=False)])
    return logps.float(), torch.tensor([[p.chosen_len, p.rejected_len] for p in packed])


def preference_metrics(lp: PairLogps, beta: float, pairs: list[Pair]) -> dict:
    """Accuracy, margins, drift and the length baseline from log-probs. Pure: no model involved."""
    chosen_r = beta * (lp.policy_chosen - lp.ref_chosen)  # (N,)
    rejected_r = beta * (lp.policy_rejected - lp.ref_rejected)
    margin = chosen_r - rejected_r
    correct = margin > 0
    shorter = torch.tensor([len(p.chosen) < len(p.rejected) for p in pairs], dtype=torch.bool)
    drift = torch.cat([lp.policy_chosen - lp.ref_chosen, lp.policy_rejected - lp.ref_rejected])
    tokens = torch.cat([lp.chosen_tokens, lp.rejected_tokens]).float()
    n = len(pairs)
    return {
        "n": n,
        "posts": len({p.post_id for p in pairs}),
        "beta": beta,
        "accuracy": correct.float().mean().item(),
        "ties": int((margin == 0).sum()),
        "mean_margin": margin.mean().item(),
        "mean_chosen_reward": chosen_r.mean().item(),
        "mean_rejected_reward": rejected_r.mean().item(),
        # mean over completions of log π − log π_ref: how far the policy moved on held-out text
        "mean_logp_drift": drift.mean().item(),
        "mean_abs_logp_drift_per_token": (drift.abs() / tokens.clamp(min=1)).mean().item(),
        # the base model's own ranking by likelihood, for context
        "reference_logp_accuracy": (lp.ref_chosen > lp.ref_rejected).float().mean().item(),
        "longer_wins_baseline": longer_wins(pairs),
        "chosen_shorter_n": int(shorter.sum()),
        "chosen_shorter_accuracy": correct[shorter].float().mean().item() if shorter.any() else None,
    }


def evaluate_pairs(policy, reference, tokenizer, pairs: list[Pair], beta: float) -> dict:
    """`reference` is a model, or a model folder whose log-probs come from the on-disk cache
    (computed once per pair and reused by every run evaluated against the same reference)."""
    if not pairs:
        raise ValueError("no held-out pairs to evaluate (--eval-fraction 0?)")
    pol, counts = score_pairs(policy, tokenizer, pairs, "eval policy")
    if isinstance(reference, (str, Path)):
        from preftune.models import load_model
        from preftune.refcache import reference_logps

        packed = [pack_pair(tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
        ref = reference_logps(packed, str(reference), lambda: load_model(str(reference)))
    else:
        ref, _ = score_pairs(reference, tokenizer, pairs, "eval reference")
    return preference_metrics(PairLogps(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], counts[:, 0], counts[:, 1]),
                              beta, pairs)


TABLE_ROWS = [
    ("accuracy", "DPO implicit-reward accuracy"),
    ("mean_margin", "mean reward margin (chosen − rejected)"),
    ("mean_chosen_reward", "mean reward, chosen"),
    ("mean_rejected_reward", "mean reward, rejected"),
    ("mean_logp_drift", "mean log-prob drift from reference"),
    ("mean_abs_logp_drift_per_token", "mean |drift| per token"),
    ("reference_logp_accuracy", "reference likelihood accuracy"),
    ("longer_wins_baseline", "'longer wins' baseline accuracy"),
    ("chosen_shorter_accuracy", "accuracy where chosen is shorter"),
]


def format_table(m: dict) -> str:
    lines = [f"held-out evaluation: {m['n']:,} pairs from {m['posts']:,} posts, beta={m['beta']}", ""]
    width = max(len(label) for _, label in TABLE_ROWS)
    for key, label in TABLE_ROWS:
        value = m.get(key)
        shown = "n/a" if value is None else f"{value:.4f}"
        if key == "chosen_shorter_accuracy":
            shown += f"  (n={m['chosen_shorter_n']})"
        lines.append(f"  {label:<{width}}  {shown}")
    return "\n".join(lines)


def write_eval(run_dir: Path, metrics: dict) -> None:
    tmp = run_dir / "eval.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    tmp.replace(run_dir / "eval.json")


# ---- a saved run ---------------------------------------------------------------------------------

CONFIG_FILE = "preftune_config.json"
EVAL_PAIRS_FILE = "eval_pairs.jsonl"


def evaluate_run(run_dir: Path, cfg, log=print) -> dict:
    """Evaluate a run folder on its own held-out pairs, or on --dataset's held-out split."""
    from dataclasses import replace

    from preftune.config import DataConfig
    from preftune.data.prepare import prepare, read_jsonl
    from preftune.errors import PreftuneError
    from preftune.models import load_model, load_tokenizer, resolve_model
    from preftune.data.fit import fit, subsample

    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise PreftuneError(f"{run_dir} is not a preftune run folder (no {CONFIG_FILE})")
    run = json.loads(config_path.read_text())
    tokenizer = load_tokenizer(str(run_dir))
    data_cfg = DataConfig(**run["data"])
    if cfg.dataset:
        held = prepare(replace(data_cfg, dataset=cfg.dataset), log, tokenizer=tokenizer).eval
        held, _ = fit(tokenizer, held, run["train"]["max_length"], "eval")
    else:
        held = read_jsonl(run_dir / EVAL_PAIRS_FILE)
    held = subsample(held, cfg.max_eval_pairs, data_cfg.seed)
    reference = resolve_model(run["reference_model"])
    log(f"eval: {run_dir.name} against reference {run['reference_model']} ← {reference.source}")
    metrics = evaluate_pairs(load_model(str(run_dir)), reference.path, tokenizer, held, run["train"]["beta"])
    metrics["dataset"] = cfg.dataset or run["data"]["dataset"]
    write_eval(run_dir, metrics)
    log(format_table(metrics))
    return metrics
