"""DPO losses: small pure functions of sequence log-probs, registered by name.

Every loss takes the summed log-probs of the chosen and rejected completions under the policy and
the frozen reference, each of shape (B,), β, and the completions' token counts (B,) (only the
length-normalised IPO uses them), and returns `(losses, chosen_rewards, rejected_rewards)`, each
(B,), with the rewards detached. The implicit reward of a completion y for prompt x is
    r(x, y) = β · (log π(y|x) − log π_ref(y|x))                    (DPO paper, Rafailov et al. 2023, Eq. 5)
The TRL engine trains with TRL's implementation of the same loss; these functions are the
reference for evaluation, the tests, and the engines preftune owns.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
LossFn = Callable[..., tuple[Tensor, Tensor, Tensor]]


def implicit_rewards(policy_logps: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    """β · (log π(y|x) − log π_ref(y|x)), detached: a metric, never a gradient path."""
    return (beta * (policy_logps - ref_logps)).detach()


def _logits(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> Tensor:
    """h = (log π(y_w) − log π(y_l)) − (log π_ref(y_w) − log π_ref(y_l)), shape (B,)."""
    return (pc - pr) - (rc - rr)


def sigmoid_loss(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, beta: float, nc=None, nr=None):
    """DPO: −log σ(β·h)   (Rafailov et al. 2023, Eq. 7). At initialisation (π = π_ref) it is log 2."""
    losses = -F.logsigmoid(beta * _logits(pc, pr, rc, rr))
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


# name → loss. A sweep's `loss` axis and --loss are validated against this registry, and the TRL
# engine passes the same name to TRL's `loss_type` (all three names mean the same thing there). A loss
# that ignores the reference (SimPO-style) says so with a `reference_free = True` attribute: the fast
# engine then skips the reference pass (`is_reference_free`).
LOSSES: dict[str, LossFn] = {
    "sigmoid": sigmoid_loss,
    "hinge": hinge_loss,
    "ipo": ipo_loss,
}


def is_reference_free(name: str) -> bool:
    """Whether the registered loss `name` ignores π_ref, so no reference log-probs need computing."""
    return bool(getattr(LOSSES[name], "reference_free", False))
