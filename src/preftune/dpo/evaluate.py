"""Held-out evaluation of a run: does the tuned policy rank the human-preferred summary higher — and
is that more than "the longer summary wins"?

A pair is ranked correctly when r(chosen) > r(rejected) (ties count as wrong, as in TRL), r the run's
own implicit reward (losses.RewardRule, `run_reward_rule`; recorded as "reward"; docs/losses.md). Beside
accuracy and its Wilson interval: margins, log-prob drift, accuracy by length stratum in tokens and the
length-balanced accuracy (preftune.stats.length_strata), and by labeller confidence where rows carry it;
per pair, what a paired comparison of two runs needs (`pair_outcomes`; stats.paired_balanced_difference).
`pair_logps` computes the log-probs every reward is taken from (`preftune serve` scores with it too).
Results: eval.json, test.json, eval_<slug>.json (run_folder.result_file; docs/sweeps-and-hub.md).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from preftune import fmt
from preftune.data.prepare import Pair
from preftune.dpo.logps import (
    PairLogpsModule,
    default_pack_tokens,
    pack_pair,
    pairs_logps,
)
from preftune.dpo.losses import RewardRule, reward_rule
from preftune.errors import PreftuneError
from preftune.runs import folder as run_folder
from preftune.runs.folder import CONFIG_FILE, EVAL_PAIRS_FILE  # noqa: F401 - names judge.py reads
from preftune.runs.results import Run, open_run
from preftune.stats import by_group, length_strata

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairLogps:
    """Summed completion log-probs, each (N,): policy and reference, chosen and rejected."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    def rewards(self, rule: RewardRule) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) implicit rewards by the run's rule, (N,) each."""
        return rule.rewards(self.policy_chosen, self.policy_rejected, self.ref_chosen, self.ref_rejected,
                            self.chosen_tokens, self.rejected_tokens)


def score_pairs(model, tokenizer, pairs: list[Pair], desc: str | None = "eval", ld_alpha: float | None = None,
                attention: str | None = None, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) summed log-probs of (chosen, rejected) (LD-weighted with ld_alpha) and (N, 2) completion
    token counts, computed in `precision` (autocast; log-softmax in fp32).

    Each pair's prompt computed once (logps.PackedPair), pairs packed into forwards as training packs
    them (logps.default_pack_tokens), no padding. attention "mask" leaves the model's own attention
    implementation untouched (a model that is generating meanwhile, as the demo's, needs that)."""
    from preftune.models import inference_device
    from preftune.precision import DTYPES

    packed = [pack_pair(tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
    # a GPU when there is one; rows follow the model
    module = PairLogpsModule(model.to(inference_device()), attention, DTYPES[precision]).eval()
    try:
        logps = pairs_logps(module, packed, default_pack_tokens(), desc=desc, ld_alpha=ld_alpha)  # as training packs
    finally:
        module.release()
    return logps.float(), torch.tensor([[p.chosen_len, p.rejected_len] for p in packed])


def preference_metrics(lp: PairLogps, beta: float, pairs: list[Pair], reward: str = "dpo") -> dict:
    """Accuracy (with its interval), margins, drift, and accuracy by length stratum and by labeller
    confidence, from log-probs, ranked by the implicit `reward` (losses.pair_rewards). Pure: no model
    involved."""
    chosen_r, rejected_r = lp.rewards(RewardRule(reward, beta))  # (N,) each
    margin = chosen_r - rejected_r
    correct = (margin > 0).float().tolist()  # a NaN margin is never > 0: wrong, and counted below
    drift = torch.cat([lp.policy_chosen - lp.ref_chosen, lp.policy_rejected - lp.ref_rejected])
    tokens = torch.cat([lp.chosen_tokens, lp.rejected_tokens]).float()
    strata = length_strata(correct, lp.chosen_tokens.tolist(), lp.rejected_tokens.tolist())
    confidence = by_group(correct, [p.meta.get("confidence") for p in pairs])
    nonfinite = int((~torch.isfinite(margin)).sum())
    if nonfinite:
        logger.warning(f"warning: {nonfinite} of {len(pairs)} pairs have a non-finite reward margin (the model "
                       "diverged?); their metrics are null and the run ranks last")
    return {
        "n": strata["n"],
        "posts": len({p.post_id for p in pairs}),
        "beta": beta,
        "reward": reward,
        "length_unit": "tokens",
        "accuracy": strata["accuracy"],
        "accuracy_ci95": strata["accuracy_ci95"],
        "length_balanced_accuracy": strata["length_balanced_accuracy"],
        "length_balanced_ci95": strata["length_balanced_ci95"],
        "chosen_longer": strata["chosen_longer"],
        "chosen_shorter": strata["chosen_shorter"],
        "equal_length": strata["equal_length"],
        # "longer completion (in tokens) wins" on the same pairs: what length alone gets
        "longer_wins_baseline": strata["longer_wins_baseline"],
        **({"accuracy_by_confidence": confidence} if confidence else {}),
        "ties": int((margin == 0).sum()),
        **({"nonfinite_pairs": nonfinite} if nonfinite else {}),
        "mean_margin": margin.mean().item(),
        "mean_chosen_reward": chosen_r.mean().item(),
        "mean_rejected_reward": rejected_r.mean().item(),
        # mean over completions of log π − log π_ref: how far the policy moved on held-out text
        "mean_logp_drift": drift.mean().item(),
        "mean_abs_logp_drift_per_token": (drift.abs() / tokens.clamp(min=1)).mean().item(),
        # the base model's own ranking by likelihood, for context
        "reference_logp_accuracy": (lp.ref_chosen > lp.ref_rejected).float().mean().item(),
        # the keys of older preftune versions, kept for their readers (= chosen_shorter above)
        "chosen_shorter_n": strata["chosen_shorter"]["n"],
        "chosen_shorter_accuracy": strata["chosen_shorter"]["accuracy"],
        "pair_outcomes": pair_outcomes(pairs, correct, lp.chosen_tokens.tolist(), lp.rejected_tokens.tolist()),
    }


def pair_keys(pairs: list[Pair]) -> list[str]:
    """A key per pair that another run's evaluation of the same pair shares: "POST:" + 12 hex digits of the
    SHA-1 of its two completions (its prompt may be trimmed otherwise); a repeat of a pair gets "#2", "#3"."""
    keys, seen = [], {}
    for p in pairs:
        digest = hashlib.sha1((p.chosen + "\0" + p.rejected).encode()).hexdigest()[:12]
        key = f"{p.post_id}:{digest}"
        seen[key] = seen.get(key, 0) + 1
        keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return keys


def pair_outcomes(pairs: list[Pair], correct: list[float], chosen_tokens: list[int], rejected_tokens: list[int]) -> dict:
    """Per pair, as columns (eval.json's `pair_outcomes`): its key, post id, whether it was ranked right,
    and its completions' lengths in tokens: what `preftune report` and the recipe pair two runs on."""
    return {"key": pair_keys(pairs), "post_id": [p.post_id for p in pairs], "correct": [c == 1.0 for c in correct],
            "chosen_tokens": [int(n) for n in chosen_tokens], "rejected_tokens": [int(n) for n in rejected_tokens]}


def evaluate_pairs(policy, reference, tokenizer, pairs: list[Pair], beta: float, loss: str = "sigmoid",
                   ld_alpha: float = 0.5, precision: str = "fp32") -> dict:
    """`reference` is a model, or a model folder whose log-probs come from the on-disk cache
    (computed once per pair and reused by every run evaluated against the same reference). `loss`
    (and `ld_alpha` for ld_dpo): the run's, which choose its implicit reward. SimPO's reward needs no
    reference; it is still scored, for the drift metrics."""
    return evaluate_by(reward_rule(loss, beta, ld_alpha), policy, reference, tokenizer, pairs, precision)


def evaluate_by(rule: RewardRule, policy, reference, tokenizer, pairs: list[Pair], precision: str = "fp32") -> dict:
    """`evaluate_pairs` with the run's reward rule (`run_reward_rule`) given as such."""
    if not pairs:
        raise PreftuneError("no held-out pairs to evaluate (--eval-fraction 0?)")
    metrics = preference_metrics(pair_logps(policy, reference, tokenizer, pairs, rule.ld_alpha, "eval",
                                            precision=precision), rule.beta, pairs, rule.reward)
    return {**metrics, "precision": precision, **({"ld_alpha": rule.ld_alpha} if rule.ld_alpha is not None else {})}


def pair_logps(policy, reference, tokenizer, pairs: list[Pair], ld_alpha: float | None = None,
               desc: str | None = None, attention: str | None = None, precision: str = "fp32") -> PairLogps:
    """The log-probs every implicit reward is computed from (LD-weighted with ld_alpha), in `precision`.
    `reference`: a model, a model folder (its log-probs from the on-disk cache, kept per precision and
    shared by every run evaluated against it), or None where the reward needs none (SimPO's: zeros)."""
    pol, counts = score_pairs(policy, tokenizer, pairs, desc and f"{desc} policy", ld_alpha, attention, precision)
    if reference is None:
        ref = torch.zeros_like(pol)
    elif isinstance(reference, (str, Path)):
        from preftune.dpo.refcache import reference_logps
        from preftune.models import load_model

        packed = [pack_pair(tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
        ref = reference_logps(packed, str(reference), lambda: load_model(str(reference)), ld_alpha=ld_alpha,
                              precision=precision)
    else:
        ref, _ = score_pairs(reference, tokenizer, pairs, desc and f"{desc} reference", ld_alpha, attention,
                             precision)
    return PairLogps(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], counts[:, 0], counts[:, 1])


def run_reward_rule(run: Run) -> RewardRule:
    """The implicit reward of a saved run, from its train settings (loss, beta, ld_alpha): the one its
    evaluation ranks by and its demo shows. A run saved before losses had settings: plain DPO's."""
    loss = run.train.get("loss")
    return reward_rule(loss if isinstance(loss, str) else "sigmoid", run.beta, run.train.get("ld_alpha", 0.5))


# ---- the printed table ---------------------------------------------------------------------------

# (key, label); a stratum key shows its accuracy, interval and n.
TABLE_ROWS = [
    ("accuracy", "DPO implicit-reward accuracy"),
    ("length_balanced_accuracy", "length-balanced accuracy (length alone: 0.5)"),
    ("chosen_longer", "accuracy where chosen is longer"),
    ("chosen_shorter", "accuracy where chosen is shorter"),
    ("equal_length", "accuracy where lengths are equal"),
    ("longer_wins_baseline", "'longer wins' baseline accuracy"),
    ("mean_margin", "mean reward margin (chosen − rejected)"),
    ("mean_chosen_reward", "mean reward, chosen"),
    ("mean_rejected_reward", "mean reward, rejected"),
    ("mean_logp_drift", "mean log-prob drift from reference"),
    ("mean_abs_logp_drift_per_token", "mean |drift| per token"),
    ("reference_logp_accuracy", "reference likelihood accuracy"),
]
INTERVALS = {"accuracy": "accuracy_ci95", "length_balanced_accuracy": "length_balanced_ci95"}


def _shown(value, ci=None, n=None) -> str:
    """A metric as "0.6458 [0.505–0.767] n=48"; a gap as "n/a n=0" (its n kept: why it is a gap)."""
    shown = fmt.cell(value, ci, n, 4, ci_digits=3, gap="n/a")
    return f"{shown} n={n}" if shown == "n/a" and n is not None else shown


def describe(m: dict) -> str:
    """What a result was computed on, e.g. "validation split of tldr-sample"."""
    return f"{m.get('split') or 'held-out'} split of {m.get('dataset') or 'the run data'}"


def format_table(m: dict) -> str:
    """A result (eval.json and kin) as printed text; keys an older file lacks show as n/a."""
    lines = [f"evaluation on the {describe(m)}: {m.get('n') or 0:,} pairs from {m.get('posts') or 0:,} posts, "
             f"beta={m.get('beta')}, lengths in {m.get('length_unit', 'characters (older preftune)')}, "
             f"implicit reward: {m.get('reward', 'dpo')}", ""]
    width = max(len(label) for _, label in TABLE_ROWS)
    for key, label in TABLE_ROWS:
        if key in ("chosen_longer", "chosen_shorter", "equal_length"):
            s = m.get(key) or {}
            shown = _shown(s.get("accuracy"), s.get("ci95"), s.get("n"))
        else:
            shown = _shown(m.get(key), m.get(INTERVALS.get(key, "")), m.get("n") if key == "accuracy" else None)
        lines.append(f"  {label:<{width}}  {shown}")
    if m.get("accuracy_by_confidence"):
        lines += ["", "  accuracy by labeller confidence:"]
        lines += [f"    {group:>4}  {_shown(s.get('accuracy'), s.get('ci95'), s.get('n'))}"
                  for group, s in m["accuracy_by_confidence"].items()]
    lines += ["", "  intervals: 95%; Wilson for accuracies, Agresti–Caffo for the length-balanced mean"]
    return "\n".join(lines)


# ---- a saved run ---------------------------------------------------------------------------------


def other_dataset_pairs(run: Run, split: str, dataset: str, tokenizer) -> list[Pair]:
    """`dataset` prepared with the run's fractions and seed, its `split` taken and fitted to the run's
    max_length (message-list formats rendered with the run's tokenizer)."""
    from preftune.data.fit import fit
    from preftune.data.prepare import prepare

    data_cfg = run.data_config()
    prepared = prepare(replace(data_cfg, dataset=dataset), tokenizer=tokenizer)
    held = prepared.validation if split == "validation" else prepared.test
    if not held:
        raise PreftuneError(f"{dataset} has no {split} pairs with the run's split settings (validation fraction "
                            f"{data_cfg.eval_fraction}, test fraction {data_cfg.test_fraction})"
                            + ("; the run predates the test split" if not run.has_test_split else ""))
    return fit(tokenizer, held, run.max_length, split)[0]


def check_test_once(run: Run, name: str, recompute: bool) -> None:
    """A test result is computed once per run: an existing one is replaced only with `recompute`
    (--recompute-test), and then it says so."""
    path = run.path / name
    if not name.startswith("test") or not path.exists():
        return
    if not recompute:
        raise PreftuneError(f"{path} exists: a run's test result is computed once, so that nothing is chosen on test; "
                            "pass --recompute-test to compute it again (it replaces the stored one)")
    logger.warning(f"eval: --recompute-test: computing {name} of {run.name} again; the stored result is replaced")


def eval_precision(run: Run, precision: str = "auto") -> str:
    """--precision of `preftune eval`: 'auto' is the run's own (what it was validated in), when recorded and
    runnable here; otherwise what --precision auto picks on this machine."""
    from preftune.precision import resolve

    if precision == "auto" and run.precision is not None:
        try:
            return resolve(run.precision)
        except PreftuneError as e:  # fp16 training on a GPU, evaluated on a CPU: said, then auto's pick
            logger.warning(f"eval: the run's precision {run.precision} does not run here ({e}); using auto's")
    return resolve(precision)


def evaluate_split(run: Run, split: str = "validation", dataset: str | None = None, max_pairs: int | None = None,
                   extra: dict | None = None, recompute_test: bool = False, precision: str = "auto") -> dict:
    """Score a run on `split` (of its own data, or of `dataset`) in `eval_precision`, write the result
    file, return it. `extra` is stored alongside (the report's record of how the run was selected). A
    test result that exists is an error unless `recompute_test`."""
    from preftune.data.fit import subsample
    from preftune.models import load_model, load_tokenizer, resolve_model

    name = run_folder.result_file(split, dataset)  # checks the split before any work
    check_test_once(run, name, recompute_test)
    run.require_model()
    held = run.pairs(split) if dataset is None else None  # a damaged pairs file stops here, before loading
    tokenizer = load_tokenizer(str(run.path))
    if held is None:
        held = other_dataset_pairs(run, split, dataset, tokenizer)
    held = subsample(held, max_pairs, run.seed)
    reference = resolve_model(run.reference_model)
    precision = eval_precision(run, precision)
    logger.info(f"eval: {run.name} on the {split} split of {dataset or run.dataset} ({len(held):,} pairs), against "
                f"reference {run.reference_model} ← {reference.source}, {precision}")
    metrics = evaluate_by(run_reward_rule(run), load_model(str(run.path)), reference.path, tokenizer, held, precision)
    result = {"split": split, "dataset": dataset or run.dataset, **metrics, **(extra or {})}
    if dataset is None and max_pairs is None:  # the run's own pairs, all of them: report can tell when stale
        result["fingerprint"] = run.fingerprint(split)
    run_folder.atomic_write_json(run.path / name, result)
    return result


def evaluate_run(run_dir: Path, cfg, recompute_test: bool = False) -> dict:
    """`preftune eval RUN`: evaluate a run folder on its validation (or --split test) pairs, or on
    --dataset's; print the table and write the result file (a test one once, unless --recompute-test)."""
    run = open_run(run_dir)
    metrics = evaluate_split(run, cfg.split, cfg.dataset, cfg.max_eval_pairs, recompute_test=recompute_test,
                             precision=cfg.precision)
    logger.info(format_table(metrics))
    logger.info(f"eval: {run.path / run_folder.result_file(cfg.split, cfg.dataset)}")
    return metrics
