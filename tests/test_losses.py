"""DPO losses on numbers worked by hand."""

import math

import pytest
import torch

from preftune.losses import LOSSES, hinge_loss, ipo_loss, sigmoid_loss


def logps(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_sigmoid_loss_is_log2_when_policy_equals_reference():
    lp = logps(-12.0, -3.5)
    losses, cr, rr = sigmoid_loss(lp, lp - 1, lp, lp - 1, beta=0.1)
    assert torch.allclose(losses, torch.full((2,), math.log(2), dtype=torch.float64))
    assert torch.equal(cr, torch.zeros(2, dtype=torch.float64)) and torch.equal(rr, cr)


def test_sigmoid_loss_by_hand():
    """π(y_w) rose by 2 nats and π(y_l) fell by 1 vs the reference: h = (−8 − −15) − (−10 − −14) = 3.
    β = 0.5: loss = −log σ(1.5) = log(1 + e^−1.5) = 0.201413; rewards 0.5·2 = 1.0 and 0.5·−1 = −0.5."""
    losses, cr, rr = sigmoid_loss(logps(-8.0), logps(-15.0), logps(-10.0), logps(-14.0), beta=0.5)
    assert losses.item() == pytest.approx(0.2014133, abs=1e-6)
    assert (cr.item(), rr.item()) == (1.0, -0.5)


def test_hinge_and_ipo_by_hand():
    # h = 3 as above; β = 0.5: hinge = max(0, 1 − 1.5) = 0
    args = (logps(-8.0), logps(-15.0), logps(-10.0), logps(-14.0))
    assert hinge_loss(*args, beta=0.5)[0].item() == 0.0
    # IPO per token: chosen log-ratio +2 over 2 tokens = +1, rejected −1 over 4 tokens = −0.25,
    # h̄ = 1.25; β = 0.5: (1.25 − 1)² = 0.0625
    assert ipo_loss(*args, beta=0.5, nc=logps(2), nr=logps(4))[0].item() == pytest.approx(0.0625)
    # h = −1, β = 0.1: hinge = 1 − (−0.1) = 1.1
    assert hinge_loss(logps(-2.0), logps(-1.0), logps(-1.0), logps(-1.0), beta=0.1)[0].item() == pytest.approx(1.1)


def test_rewards_are_detached_and_loss_has_gradients():
    pc = logps(-5.0).requires_grad_()
    losses, cr, rr = sigmoid_loss(pc, logps(-6.0), logps(-5.0), logps(-6.0), beta=0.1)
    assert not cr.requires_grad and not rr.requires_grad
    losses.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.1 * 0.5)  # d/dpc −log σ(β h) at h = 0 is −β·σ(0)


def test_registry_names_match_trl_loss_types():
    from trl import DPOConfig

    help_text = next(f for f in DPOConfig.__dataclass_fields__.values() if f.name == "loss_type").metadata["help"]
    for name in LOSSES:
        assert f"'{name}'" in help_text
