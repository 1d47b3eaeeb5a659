"""DPO losses on numbers worked by hand."""

import math

import pytest
import torch

from preftune.dpo.logps import ld_token_weights
from preftune.dpo.losses import (
    LOSSES,
    confidence_weights,
    configured,
    hinge_loss,
    ipo_loss,
    is_reference_free,
    ld_alpha,
    ld_dpo_loss,
    ld_logps,
    nll_term,
    pair_rewards,
    rdpo_loss,
    reward_name,
    sigmoid_loss,
    sigmoid_norm_loss,
    simpo_loss,
    smoothed_nll,
    smooths,
)


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


def test_trl_engine_loss_types_are_trl_names():
    """Every loss the TRL engine maps to TRL is one of DPOConfig's loss types, and config lists the same."""
    from trl import DPOConfig

    from preftune.config import ENGINE_LOSSES
    from preftune.dpo.engines.trl import TRL_LOSSES

    help_text = next(f for f in DPOConfig.__dataclass_fields__.values() if f.name == "loss_type").metadata["help"]
    assert all(f"'{trl_name}'" in help_text for trl_name in TRL_LOSSES.values()) and "'sft'" in help_text
    assert ENGINE_LOSSES["trl"] == tuple(TRL_LOSSES) and set(TRL_LOSSES) <= set(LOSSES)


# ---- length-aware losses ----------------------------------------------------------------------------

ARGS = (logps(-8.0), logps(-15.0), logps(-10.0), logps(-14.0))  # h = 3: log-ratios +2 (chosen), −1 (rejected)


def test_rdpo_by_hand_and_alpha_zero_is_dpo():
    """β = 0.5, h = 3 → 1.5; |y_w| = 10, |y_l| = 4, α = 0.1: + 0.1·6 = 0.6 → z = 2.1;
    loss = log(1 + e^−2.1) = log(1.1224564) = 0.1155186. Rewards are DPO's: 1.0 and −0.5."""
    losses, cr, rr = rdpo_loss(*ARGS, beta=0.5, nc=logps(10), nr=logps(4), alpha=0.1)
    assert losses.item() == pytest.approx(0.1155186, abs=1e-6)
    assert (cr.item(), rr.item()) == (1.0, -0.5)
    # a longer chosen completion earns its allowance: the loss is lower than DPO's 0.2014133
    assert losses.item() < sigmoid_loss(*ARGS, beta=0.5)[0].item()
    for nc, nr in ((10, 4), (3, 9)):
        assert torch.equal(rdpo_loss(*ARGS, beta=0.5, nc=logps(nc), nr=logps(nr), alpha=0.0)[0],
                           sigmoid_loss(*ARGS, beta=0.5)[0])


def test_sigmoid_norm_by_hand():
    """Per-token log-ratios: chosen +2 over 2 tokens = +1, rejected −1 over 4 tokens = −0.25, Δ = 1.25;
    β = 2: loss = log(1 + e^−2.5) = log(1.0820850) = 0.0788897. Logged rewards: summed, β·2 = 4, β·−1 = −2."""
    losses, cr, rr = sigmoid_norm_loss(*ARGS, beta=2.0, nc=logps(2), nr=logps(4))
    assert losses.item() == pytest.approx(0.0788897, abs=1e-6)
    assert (cr.item(), rr.item()) == (4.0, -2.0)


def test_simpo_by_hand_and_it_ignores_the_reference():
    """Mean log-probs: chosen −8/4 = −2, rejected −15/5 = −3; β = 2: rewards −4 and −6, margin 2;
    γ = 1: loss = −log σ(2 − 1) = log(1 + e^−1) = 0.3132617."""
    nc, nr = logps(4), logps(5)
    losses, cr, rr = simpo_loss(logps(-8.0), logps(-15.0), None, None, beta=2.0, nc=nc, nr=nr, gamma=1.0)
    assert losses.item() == pytest.approx(0.3132617, abs=1e-6)
    assert (cr.item(), rr.item()) == (-4.0, -6.0)
    other_ref = simpo_loss(logps(-8.0), logps(-15.0), logps(-1.0), logps(-99.0), beta=2.0, nc=nc, nr=nr, gamma=1.0)
    assert torch.equal(other_ref[0], losses)
    assert is_reference_free("simpo") and not is_reference_free("rdpo")


def test_simpo_matches_trl_cpo_trainers_simpo_loss():
    """TRL's CPOTrainer.cpo_loss (loss_type "simpo") on the same mean log-probs, called unbound with just
    the attributes it reads: building a CPOTrainer needs a model and a dataset, which the formula does not."""
    from types import SimpleNamespace

    from trl.experimental.cpo import CPOTrainer

    torch.manual_seed(0)
    pc, pr = -20 * torch.rand(6, dtype=torch.float64), -20 * torch.rand(6, dtype=torch.float64)
    nc, nr = torch.randint(1, 30, (6,)), torch.randint(1, 30, (6,))
    for beta, gamma in ((2.0, 1.0), (2.5, 1.375), (0.1, 0.5)):
        trainer = SimpleNamespace(alpha=0.0, beta=beta, simpo_gamma=gamma, loss_type="simpo", label_smoothing=0.0,
                                  accelerator=SimpleNamespace(device="cpu"))
        trl_losses, trl_cr, trl_rr = CPOTrainer.cpo_loss(trainer, pc / nc, pr / nr)  # TRL averages per token first
        losses, cr, rr = simpo_loss(pc, pr, None, None, beta, nc, nr, gamma=gamma)
        assert torch.allclose(losses, trl_losses) and torch.allclose(cr, trl_cr) and torch.allclose(rr, trl_rr)


def test_ld_logps_by_hand():
    """Chosen tokens log-probs −1, −2, −3 (3 tokens), rejected five of −1 (5 tokens), after 2 prompt
    positions and with padding (log-probs 0 outside completions, as TRL's): shared length 3.
    α = 0.5: chosen −6 (no tail), rejected −3 + 0.5·(−2) = −4; α = 1: −6, −5 (plain sums); α = 0: −6, −3."""
    per_token = torch.tensor([[0, 0, -1, -2, -3, 0, 0], [0, 0, -1, -1, -1, -1, -1]], dtype=torch.float64)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]])
    assert ld_logps(per_token, mask, 0.5).tolist() == [-6.0, -4.0]
    assert ld_logps(per_token, mask, 1.0).tolist() == [-6.0, -5.0]
    assert ld_logps(per_token, mask, 0.0).tolist() == [-6.0, -3.0]
    # the packed layout's per-token weights (logps.ld_token_weights) give the same sums
    w = ld_token_weights(3, 5, 0.5)
    assert w.tolist() == [1, 1, 1, 1, 1, 1, 0.5, 0.5]
    tokens = torch.tensor([-1, -2, -3, -1, -1, -1, -1, -1], dtype=torch.float64)
    assert [(tokens * w)[:3].sum().item(), (tokens * w)[3:].sum().item()] == [-6.0, -4.0]


def test_ld_logps_matches_the_packed_weights_on_random_batches():
    """Two implementations of LD-DPO's masks (TRL's padded batch, preftune's packed rows) agree."""
    torch.manual_seed(1)
    for _ in range(5):
        lens = torch.randint(1, 9, (2, 3))  # (chosen, rejected) × 3 pairs
        T = 12
        per_token, mask = torch.zeros(6, T, dtype=torch.float64), torch.zeros(6, T, dtype=torch.long)
        expected = []
        for j in range(3):
            c, r = lens[0, j].item(), lens[1, j].item()
            tok = -torch.rand(c + r, dtype=torch.float64)
            per_token[j, 2 : 2 + c], per_token[3 + j, 2 : 2 + r] = tok[:c], tok[c:]
            mask[j, 2 : 2 + c], mask[3 + j, 2 : 2 + r] = 1, 1
            weighted = tok * ld_token_weights(c, r, 0.3).double()
            expected.append((weighted[:c].sum(), weighted[c:].sum()))
        got = ld_logps(per_token, mask, 0.3)
        assert torch.allclose(got[:3], torch.stack([e[0] for e in expected]))
        assert torch.allclose(got[3:], torch.stack([e[1] for e in expected]))


def test_ld_dpo_with_alpha_one_is_dpo():
    per_token = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]], dtype=torch.float64)
    ref_token = torch.tensor([[-1.5, -1.0, 0.0], [-0.4, -0.6, -0.2]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    pol, ref = ld_logps(per_token, mask, 1.0), ld_logps(ref_token, mask, 1.0)
    assert torch.allclose(pol, per_token.sum(1)) and torch.allclose(ref, ref_token.sum(1))
    assert torch.equal(ld_dpo_loss(pol[:1], pol[1:], ref[:1], ref[1:], 0.1)[0],
                       sigmoid_loss(pol[:1], pol[1:], ref[:1], ref[1:], 0.1)[0])


@pytest.mark.parametrize("name", ["sigmoid", "sigmoid_norm", "ld_dpo", "rdpo"])
def test_dpo_family_is_log2_when_policy_equals_reference(name):
    """At π = π_ref every log-ratio is 0: log 2 — for R-DPO only where |y_w| = |y_l| (else −log σ(α·Δ|y|))."""
    lp, n = logps(-12.0, -3.5), logps(7, 7)
    losses = LOSSES[name](lp, lp - 1, lp, lp - 1, 0.1, n, n)[0]
    assert torch.allclose(losses, torch.full((2,), math.log(2), dtype=torch.float64))
    unequal = rdpo_loss(lp, lp - 1, lp, lp - 1, 0.1, logps(9, 9), logps(7, 7), alpha=0.01)[0]
    assert torch.allclose(unequal, torch.full((2,), -math.log(1 / (1 + math.exp(-0.02))), dtype=torch.float64))


def test_nll_term_is_the_token_mean_over_the_batch():
    """Chosen sums −6 (3 tokens) and −4 (2 tokens): 10 / 5 = 2. With the first over 4 tokens: 10 / 6 = 1.6667,
    not the mean of per-sequence means ½(6/4 + 4/2) = 1.75."""
    assert nll_term(logps(-6.0, -4.0), 5).item() == pytest.approx(2.0)
    assert nll_term(logps(-6.0, -4.0), 6).item() == pytest.approx(10 / 6)


def test_configured_binds_each_losss_own_setting():
    from preftune.config import TrainConfig

    cfg = TrainConfig(loss="rdpo", rdpo_alpha=0.1)
    assert configured(cfg)(*ARGS, 0.5, logps(10), logps(4))[0].item() == pytest.approx(0.1155186, abs=1e-6)
    assert configured(TrainConfig(loss="simpo", simpo_gamma=0.0, beta=2.0)).keywords == {"gamma": 0.0}
    assert configured(TrainConfig()) is sigmoid_loss
    assert ld_alpha(TrainConfig(loss="ld_dpo", ld_alpha=0.25)) == 0.25 and ld_alpha(TrainConfig()) is None


def test_pair_rewards_by_hand():
    """β = 2; log-ratios +2 over 2 tokens, −1 over 4; policy sums −8 (4 tokens), −15 (5 tokens)."""
    nc, nr = logps(2), logps(4)
    assert [t.item() for t in pair_rewards("dpo", *ARGS, 2.0, nc, nr)] == [4.0, -2.0]
    assert [t.item() for t in pair_rewards("per_token", *ARGS, 2.0, nc, nr)] == [2.0, -0.5]
    assert [t.item() for t in pair_rewards("simpo", *ARGS, 2.0, logps(4), logps(5))] == [-4.0, -6.0]
    assert [t.item() for t in pair_rewards("ld_dpo", *ARGS, 2.0, nc, nr)] == [4.0, -2.0]  # on LD log-probs
    assert {reward_name(n) for n in ("sigmoid", "hinge", "ipo", "rdpo")} == {"dpo"}
    assert (reward_name("simpo"), reward_name("sigmoid_norm"), reward_name("ld_dpo")) == ("simpo", "per_token",
                                                                                          "ld_dpo")


# ---- label smoothing (conservative DPO) and confidence weights ----------------------------------------


def test_label_smoothing_by_hand():
    """B = −log σ(−z) = z − log σ(z), so (1−ε)·(−log σ(z)) + ε·B = −log σ(z) + ε·z. Margins z as above:
    sigmoid, β = 0.5, h = 3 → z = 1.5, ε = 0.1: 0.2014133 + 0.15 = 0.3514133;
    sigmoid_norm, β = 2, Δ = 1.25 → z = 2.5, ε = 0.2: 0.0788897 + 0.5 = 0.5788897;
    rdpo, z = 1.5 + 0.1·6 = 2.1, ε = 0.1: 0.1155195 + 0.21 = 0.3255195;
    simpo, z = 2 − 1 = 1, ε = 0.25: 0.3132617 + 0.25 = 0.5632617. Rewards do not change."""
    losses, cr, rr = sigmoid_loss(*ARGS, beta=0.5, label_smoothing=0.1)
    assert losses.item() == pytest.approx(0.3514133, abs=1e-6) and (cr.item(), rr.item()) == (1.0, -0.5)
    norm = sigmoid_norm_loss(*ARGS, beta=2.0, nc=logps(2), nr=logps(4), label_smoothing=0.2)[0]
    assert norm.item() == pytest.approx(0.5788897, abs=1e-6)
    rdpo = rdpo_loss(*ARGS, beta=0.5, nc=logps(10), nr=logps(4), alpha=0.1, label_smoothing=0.1)[0]
    assert rdpo.item() == pytest.approx(0.3255195, abs=1e-6)
    simpo = simpo_loss(logps(-8.0), logps(-15.0), None, None, beta=2.0, nc=logps(4), nr=logps(5), gamma=1.0,
                       label_smoothing=0.25)[0]
    assert simpo.item() == pytest.approx(0.5632617, abs=1e-6)
    assert torch.equal(ld_dpo_loss(*ARGS, 0.5, label_smoothing=0.1)[0], losses)  # DPO's, on LD log-probs
    assert torch.equal(sigmoid_loss(*ARGS, beta=0.5, label_smoothing=0.0)[0], sigmoid_loss(*ARGS, beta=0.5)[0])


def test_label_smoothing_stops_pushing_at_one_minus_epsilon():
    """d/dz [−log σ(z) + ε·z] = −σ(−z) + ε: at z = 1.5, ε = 0.1: −(1 − 0.8175745) + 0.1 = −0.0824255 (still
    pushing the margin up, less than DPO's −0.1824255); zero at σ(z) = 0.9, z = log 9; pulling back beyond.
    At π = π_ref (z = 0) the loss stays log 2 for every ε."""
    z = torch.tensor([1.5, math.log(9), 4.0], dtype=torch.float64, requires_grad=True)
    smoothed_nll(z, 0.1).sum().backward()
    assert z.grad[0].item() == pytest.approx(-0.0824255, abs=1e-6)
    assert z.grad[1].item() == pytest.approx(0.0, abs=1e-12) and z.grad[2].item() > 0
    zero = torch.zeros(1, dtype=torch.float64)
    assert smoothed_nll(zero, 0.3).item() == pytest.approx(math.log(2))


def test_the_sigmoid_family_is_what_config_lets_label_smoothing_apply_to():
    from preftune.config import SMOOTHED_LOSSES, TRL_SMOOTHED_LOSSES, TrainConfig

    assert tuple(n for n in LOSSES if smooths(n)) == SMOOTHED_LOSSES and not smooths("hinge") and not smooths("ipo")
    assert set(TRL_SMOOTHED_LOSSES) <= set(SMOOTHED_LOSSES)
    assert configured(TrainConfig(loss="rdpo", rdpo_alpha=0.1, label_smoothing=0.1)).keywords == {
        "alpha": 0.1, "label_smoothing": 0.1}
    assert configured(TrainConfig(label_smoothing=0.1))(*ARGS, 0.5)[0].item() == pytest.approx(0.3514133, abs=1e-6)


def test_simpo_smoothing_matches_trl_cpo_trainers():
    """TRL's CPOTrainer smooths SimPO as conservative DPO does: the same ε formula on the same margin."""
    from types import SimpleNamespace

    from trl.experimental.cpo import CPOTrainer

    torch.manual_seed(0)
    pc, pr = -20 * torch.rand(6, dtype=torch.float64), -20 * torch.rand(6, dtype=torch.float64)
    nc, nr = torch.randint(1, 30, (6,)), torch.randint(1, 30, (6,))
    trainer = SimpleNamespace(alpha=0.0, beta=2.0, simpo_gamma=1.0, loss_type="simpo", label_smoothing=0.2,
                              accelerator=SimpleNamespace(device="cpu"))
    trl_losses = CPOTrainer.cpo_loss(trainer, pc / nc, pr / nr)[0]
    assert torch.allclose(simpo_loss(pc, pr, None, None, 2.0, nc, nr, gamma=1.0, label_smoothing=0.2)[0], trl_losses)
    assert not torch.allclose(simpo_loss(pc, pr, None, None, 2.0, nc, nr, gamma=1.0)[0], trl_losses)


def test_confidence_weights_by_hand():
    """Strengths 1, 4, 3, 4 (extra.confidence e.g. 4, 9, 2, 1): mean 3, weights 1/3, 4/3, 1, 4/3 (mean 1).
    Per-pair losses 0.6, 0.3, 0.9, 0.2: weighted batch mean (0.2 + 0.4 + 0.9 + 0.2667) / 4 = 0.441667, where
    the plain mean is 0.5: the barely-sure pair's large loss counts a third."""
    w = confidence_weights([1, 4, 3, 4])
    assert torch.allclose(w, torch.tensor([1 / 3, 4 / 3, 1.0, 4 / 3])) and w.mean().item() == pytest.approx(1.0)
    losses = torch.tensor([0.6, 0.3, 0.9, 0.2])
    assert (w * losses).mean().item() == pytest.approx(0.441667, abs=1e-6)
    assert confidence_weights([2, 0, 2, 4]).tolist() == [1.0, 0.0, 1.0, 2.0]  # raw 5 (unsure): weight 0
