"""DPO losses: small pure functions of sequence log-probs, registered by name (docs/losses.md).

Every loss takes the summed log-probs (B,) of the chosen and rejected completions under the policy and
the frozen reference, β, and the completions' token counts (B,), and returns `(losses, chosen_rewards,
rejected_rewards)`, each (B,), rewards detached. The implicit reward of a completion y for prompt x is
    r(x, y) = β · (log π(y|x) − log π_ref(y|x))                    (DPO paper, Rafailov et al. 2023, Eq. 5)
A loss's own settings are keyword arguments, filled from TrainConfig by `configured` (`LOSS_PARAMS`); the
sigmoid family takes `label_smoothing` too (`smoothed_nll`). The reward a run is evaluated and served with:
`RewardRule` (`reward_rule`, `pair_rewards`). The TRL engine trains with TRL's implementation of each loss;
these are the reference for everything else.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preftune.config import registries

Tensor = torch.Tensor
LossFn = Callable[..., tuple[Tensor, Tensor, Tensor]]


def implicit_rewards(policy_logps: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    """β · (log π(y|x) − log π_ref(y|x)), detached: a metric, never a gradient path."""
    return (beta * (policy_logps - ref_logps)).detach()


def _logits(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> Tensor:
    """h = (log π(y_w) − log π(y_l)) − (log π_ref(y_w) − log π_ref(y_l)), shape (B,)."""
    return (pc - pr) - (rc - rr)


def smoothed_nll(z: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """−(1 − ε)·log σ(z) − ε·log σ(−z), (B,): the sigmoid family's loss of its margin z when each label is
    flipped with probability ε (conservative DPO, Mitchell 2023; TRL's label_smoothing before 1.0). ε = 0 is
    −log σ(z); at z = 0 it is log 2 for every ε. Its gradient vanishes at σ(z) = 1 − ε, not at z = ∞."""
    losses = -F.logsigmoid(z)
    if label_smoothing:
        losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-z)
    return losses


def sigmoid_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float, nc=None, nr=None,
                 label_smoothing: float = 0.0):
    """DPO: −log σ(β·h)   (Rafailov et al. 2023, Eq. 7). At initialisation (π = π_ref) it is log 2."""
    losses = smoothed_nll(beta * _logits(pc, pr, rc, rr), label_smoothing)
    return losses, implicit_rewards(pc, rc, beta), implicit_rewards(pr, rr, beta)


def hinge_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float, nc=None, nr=None):
    """SLiC-style hinge: max(0, 1 − β·h)   (Zhao et al. 2023, Eq. 3 with δ = 1/β)."""
    losses = torch.relu(1 - beta * _logits(pc, pr, rc, rr))
    return losses, implicit_rewards(pc, rc, beta), implicit_rewards(pr, rr, beta)


def ipo_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float, nc: Tensor, nr: Tensor):
    """IPO: (h̄ − 1/(2β))²   (Azar et al. 2023, Eq. 17; β plays the role of τ), where h̄ uses each
    completion's log-ratio averaged per token (nc, nr tokens), as TRL 1.16 does and as the IPO
    authors' reported results do. Rewards stay the summed β·log-ratios, as TRL logs them."""
    h_avg = (pc - rc) / nc.clamp(min=1) - (pr - rr) / nr.clamp(min=1)
    losses = (h_avg - 1 / (2 * beta)) ** 2
    return losses, implicit_rewards(pc, rc, beta), implicit_rewards(pr, rr, beta)


def rdpo_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float, nc: Tensor, nr: Tensor,
              alpha: float = 0.01, label_smoothing: float = 0.0):
    """R-DPO: −log σ(β·h + α·(|y_w| − |y_l|))   (Park et al. 2024, arXiv:2403.19159, Eq. 9), lengths in
    tokens. From the objective r − α|y|: the α term grants a longer chosen completion its length, so the
    policy need not learn length to win the margin. Rewards are DPO's β·log-ratios (the α term is an
    allowance, not reward)."""
    losses = smoothed_nll(beta * _logits(pc, pr, rc, rr) + alpha * (nc - nr), label_smoothing)
    return losses, implicit_rewards(pc, rc, beta), implicit_rewards(pr, rr, beta)


def sigmoid_norm_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float, nc: Tensor, nr: Tensor,
                      label_smoothing: float = 0.0):
    """Length-normalised DPO: −log σ(β·((log π(y_w) − log π_ref(y_w))/|y_w| − (log π(y_l) − log π_ref(y_l))/|y_l|))
    (arXiv:2407.15229; TRL loss_type "sigmoid_norm"). Per-token log-ratios are ~|y| times smaller than
    summed ones, so β must be larger (2–5; Tülu 3 uses 5). Rewards stay the summed β·log-ratios, as TRL
    logs them (evaluation ranks by the per-token ones: `pair_rewards`)."""
    chosen, rejected = (pc - rc) / nc.clamp(min=1), (pr - rr) / nr.clamp(min=1)
    losses = smoothed_nll(beta * (chosen - rejected), label_smoothing)
    return losses, implicit_rewards(pc, rc, beta), implicit_rewards(pr, rr, beta)


def simpo_loss(pc: Tensor, pr: Tensor, rc, rr, beta: float, nc: Tensor, nr: Tensor, gamma: float = 1.0,
               label_smoothing: float = 0.0):
    """SimPO: −log σ(β/|y_w|·log π(y_w) − β/|y_l|·log π(y_l) − γ)   (Meng et al. 2024, arXiv:2405.14734,
    Eq. 6). No reference model (rc, rr are ignored); γ is TRL CPOConfig's `simpo_gamma` (the margin
    itself, not γ/β). Rewards: β·mean token log-prob, the paper's Eq. 4."""
    chosen, rejected = beta * pc / nc.clamp(min=1), beta * pr / nr.clamp(min=1)
    losses = smoothed_nll(chosen - rejected - gamma, label_smoothing)
    return losses, chosen.detach(), rejected.detach()


simpo_loss.reference_free = True


def ld_dpo_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float, nc=None, nr=None,
                label_smoothing: float = 0.0):
    """LD-DPO: DPO's −log σ(β·h) on length-desensitised log-probs (arXiv:2409.06411, Eq. 12; TRL's
    DPOConfig.ld_alpha): pc..rr must come from `ld_logps`, for the policy and the reference alike."""
    return sigmoid_loss(pc, pr, rc, rr, beta, label_smoothing=label_smoothing)


ld_dpo_loss.length_desensitised = True


def ld_logps(per_token_logps: Tensor, completion_mask: Tensor, alpha: float) -> Tensor:
    """LD-DPO's sequence log-probs, exactly TRL 1.16's masks. per_token_logps, completion_mask: (2B, T),
    the batch's chosen rows then its rejected rows; returns (2B,). Each pair shares ℓ = min(|y_w|, |y_l|)
    completion tokens: log p = Σ_{k ≤ ℓ} log p_k + α·Σ_{k > ℓ} log p_k (arXiv:2409.06411, Eq. 11), so only
    the longer completion's tail is weighted; α = 1 is plain DPO, α = 0 drops the tail. The masks are
    also ANDed with completion_mask, which changes nothing where log-probs outside the completion are 0
    (TRL's are: their labels are −100) and keeps padding out where they are not."""
    position = completion_mask.cumsum(dim=1)  # 1, 2, … along each completion (0 before it)
    chosen_lens, rejected_lens = completion_mask.sum(dim=1).long().chunk(2)
    shared = torch.minimum(chosen_lens, rejected_lens).repeat(2)[:, None]  # (2B, 1)
    shared_mask = (position > 0) & (position <= shared) & completion_mask.bool()
    tail_mask = (position > shared) & completion_mask.bool()
    return (per_token_logps * shared_mask).sum(dim=1) + alpha * (per_token_logps * tail_mask).sum(dim=1)


def nll_term(chosen_logps: Tensor, chosen_tokens: Tensor | int) -> Tensor:
    """RPO's NLL term (Pang et al. 2024, arXiv:2404.19733, Eq. 3; TRL loss_type "sft"): the mean NLL per
    chosen token over the batch, −Σ log π(y_w) / Σ |y_w| (a token mean, not a mean of per-sequence means).
    chosen_logps: (B,) summed (not LD-weighted) log-probs; chosen_tokens: their total token count."""
    return -chosen_logps.sum() / chosen_tokens


# name → loss, from config/registries.py (which --loss and a sweep's `loss` axis are validated
# against; the TRL engine maps each name it supports to TRL's settings: engines/trl.py TRL_LOSSES). A loss
# that ignores the reference (SimPO) says so with a `reference_free = True` attribute: the fast engine then
# skips the reference pass (`is_reference_free`); one that needs LD-weighted log-probs, `length_desensitised = True`.
LOSSES: dict[str, LossFn] = {name: globals()[function] for name, function in registries.LOSSES.items()}

# loss → {its keyword argument: the TrainConfig field that sets it} (config.LOSS_FIELDS is the inverse)
LOSS_PARAMS: dict[str, dict[str, str]] = {"rdpo": {"alpha": "rdpo_alpha"}, "simpo": {"gamma": "simpo_gamma"}}


def is_reference_free(name: str) -> bool:
    """Whether the registered loss `name` ignores π_ref, so no reference log-probs need computing."""
    return bool(getattr(LOSSES[name], "reference_free", False))


def ld_alpha(cfg) -> float | None:
    """The LD weight the run's log-probs take (policy and reference): cfg.ld_alpha for an LD loss, else
    None (plain sums). Runs saved before ld_alpha existed have none."""
    return getattr(cfg, "ld_alpha", 0.5) if getattr(LOSSES[cfg.loss], "length_desensitised", False) else None


def smooths(name: str) -> bool:
    """Whether the registered loss `name` is of the sigmoid family, so takes --label-smoothing (the
    names are config.SMOOTHED_LOSSES, which the flag is checked against)."""
    return "label_smoothing" in inspect.signature(LOSSES[name]).parameters


def configured(cfg) -> LossFn:
    """The run's loss with its own settings bound, called as loss(pc, pr, rc, rr, beta, nc, nr).
    --label-smoothing is bound when set (runs saved before it existed have none)."""
    fn = LOSSES[cfg.loss]
    params = {arg: getattr(cfg, name) for arg, name in LOSS_PARAMS.get(cfg.loss, {}).items()}
    if getattr(cfg, "label_smoothing", 0.0):
        params["label_smoothing"] = cfg.label_smoothing
    return functools.partial(fn, **params) if params else fn


def confidence_weights(strengths: list[int]) -> Tensor:
    """(N,) --confidence-weight's weight of each training pair: its labeller's confidence strength
    |extra.confidence − 5| (0 … 4) over the mean strength of the N pairs, so the weights average 1 and
    the loss keeps its scale. Linear in the strength: why, docs/losses.md."""
    s = torch.tensor(strengths, dtype=torch.float64)
    return (s / s.mean()).float()


# ---- the implicit reward a run is evaluated with --------------------------------------------------

# loss → the reward its held-out accuracy uses (evaluate.py; recorded in eval.json as "reward")
REWARDS = {"simpo": "simpo", "sigmoid_norm": "per_token", "ld_dpo": "ld_dpo"}


def reward_name(loss: str) -> str:
    """'dpo' (β·log-ratio; also R-DPO's: its α|y| is an allowance), 'per_token', 'simpo' or 'ld_dpo'."""
    return REWARDS.get(loss, "dpo")


def pair_rewards(reward: str, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float, nc: Tensor,
                 nr: Tensor) -> tuple[Tensor, Tensor]:
    """(chosen, rejected) implicit rewards, each (N,). 'ld_dpo' takes LD-weighted log-probs (its
    reward is then DPO's on them); 'simpo' ignores rc, rr."""
    if reward == "simpo":
        return beta * pc / nc.clamp(min=1), beta * pr / nr.clamp(min=1)
    if reward == "per_token":
        return beta * (pc - rc) / nc.clamp(min=1), beta * (pr - rr) / nr.clamp(min=1)
    return beta * (pc - rc), beta * (pr - rr)


@dataclass(frozen=True)
class RewardRule:
    """A run's implicit reward: `reward_name` of its loss, its β, and for 'ld_dpo' the LD weight of the
    log-probs (policy and reference). What eval.json ranks by and what `preftune serve` shows."""

    reward: str = "dpo"
    beta: float = 0.1
    ld_alpha: float | None = None

    @property
    def reference_free(self) -> bool:
        return self.reward == "simpo"

    def rewards(self, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, nc: Tensor, nr: Tensor) -> tuple[Tensor, Tensor]:
        """(chosen, rejected) rewards, (N,) each: `pair_rewards` with this rule."""
        return pair_rewards(self.reward, pc, pr, rc, rr, self.beta, nc, nr)

    def formula(self, ref: str = "ref") -> str:
        """The reward in symbols, π_ref written π_{ref}, e.g. 'β·(log π − log π_SFT)/|y|, β = 5.0'."""
        diff = f"log π − log π_{ref}"
        text = {"dpo": f"β·({diff})", "per_token": f"β·({diff})/|y|", "simpo": "β·(log π)/|y|",
                "ld_dpo": f"β·({diff}), log-probs LD-weighted (tail past the shorter completion ×{self.ld_alpha})"}
        return f"{text.get(self.reward, self.reward)}, β = {self.beta:g}"


def reward_rule(loss: str, beta: float, ld_alpha: float | None = 0.5) -> RewardRule:
    """The rule of a run trained with `loss` (its β and, used for ld_dpo only, its ld_alpha)."""
    reward = reward_name(loss)
    lda = float(0.5 if ld_alpha is None else ld_alpha) if reward == "ld_dpo" else None  # 0.5: TrainConfig's default
    return RewardRule(reward, float(beta), lda)
