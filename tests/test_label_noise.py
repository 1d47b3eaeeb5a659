"""--label-smoothing and --confidence-weight on a tiny model: conservative DPO in the fast engine matches
TRL's DPOTrainer (loss and gradients), the settings reach TRL, a confidence-weighted run logs the
weighted loss and records the flag, and what cannot be applied is refused in one line."""

import json

import pytest
import test_fast_engine
import torch
from conftest import comparison, write_jsonl
from test_fast_engine import DATA, fast_side, tiny_cfg, trl_side

from preftune.config import DataConfig, TrainConfig
from preftune.data.options import confidence_strength
from preftune.dpo.engines.fast import batches
from preftune.dpo.engines.trl import trl_loss_settings
from preftune.errors import PreftuneError
from preftune.runs.dpo import prepare_run_data, train

pairs, perturbed_ref = test_fast_engine.pairs, test_fast_engine.perturbed_ref  # its fixtures, shared
SMOOTHED = [{"label_smoothing": 0.1}, {"loss": "ld_dpo", "ld_alpha": 0.3, "label_smoothing": 0.2},
            {"label_smoothing": 0.25, "nll_weight": 0.5}]


@pytest.mark.parametrize("settings", SMOOTHED, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_label_smoothing_parity_with_trl(tiny_model, perturbed_ref, tiny_tokenizer, pairs, settings, tmp_path):
    """The fast engine's conservative DPO and TRL's (its sigmoid and robust terms, engines/trl.py) give the
    same first-step loss (within 1e-4) and gradients, one pair per forward and all four in one."""
    cfg = TrainConfig(**settings)
    trl_logps, trl_loss, trl_grads = trl_side(tiny_model, perturbed_ref, tiny_tokenizer, pairs, cfg, tmp_path)
    for pack_tokens in (0, 10_000):
        fast_logps, fast_loss, fast_grads = fast_side(tiny_model, perturbed_ref, tiny_tokenizer, pairs, cfg,
                                                      pack_tokens)
        assert torch.allclose(fast_logps, trl_logps, atol=1e-4, rtol=0)
        assert abs(fast_loss.item() - trl_loss.item()) < 1e-4, (fast_loss.item(), trl_loss.item())
        for name, g in trl_grads.items():
            rel = (fast_grads[name] - g).norm() / g.norm().clamp(min=1e-12)
            assert rel < 1e-3, f"pack_tokens={pack_tokens}, {name}: relative gradient difference {rel:.2e}"


def test_label_smoothing_reaches_trl(tiny_model, perturbed_ref, tiny_tokenizer, pairs, tmp_path):
    """The parity above would hold if both sides ignored ε: TRL's loss moves by ε·mean(z) (−log σ(z) + ε·z,
    test_losses), which the fast side computes from the same log-probs."""
    plain = trl_side(tiny_model, perturbed_ref, tiny_tokenizer, pairs, TrainConfig(), tmp_path)[1]
    smoothed = trl_side(tiny_model, perturbed_ref, tiny_tokenizer, pairs, TrainConfig(label_smoothing=0.2), tmp_path)[1]
    fast_plain = fast_side(tiny_model, perturbed_ref, tiny_tokenizer, pairs, TrainConfig(), 0)[1]
    fast_smoothed = fast_side(tiny_model, perturbed_ref, tiny_tokenizer, pairs, TrainConfig(label_smoothing=0.2), 0)[1]
    assert abs((smoothed - plain).item()) > 1e-3
    assert (smoothed - plain).item() == pytest.approx((fast_smoothed - fast_plain).item(), abs=1e-4)


def two_steps(engine: str, model, tokenizer, pairs8, out, **settings) -> list[dict]:
    """The per-step log of a 2-step run (8 pairs, batch 4) of `engine`, as test_architectures runs them."""
    from preftune.dpo.engines import ENGINES, TrainJob

    out.mkdir()
    cfg = TrainConfig(output_dir=str(out), model=str(model), lr=1e-2, batch_size=4, max_length=192,
                      gradient_checkpointing=False, engine=engine, **settings)
    return ENGINES[engine](TrainJob(str(model), tokenizer, pairs8, cfg, 0, out, 4, out / "log.jsonl")).log


def test_both_engines_train_the_same_smoothed_steps(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    """Two optimizer steps of each engine at ε = 0.2 log the same loss, log-probs and gradient norm (1e-4
    relative). Step 1 (π = π_ref, z = 0): loss log 2, and the gradient is (−σ(0) + ε)/(−σ(0)) = 1 − 2ε = 0.6
    times plain DPO's, so its norm is too (the logged norm is the one before clipping)."""
    import math

    from preftune.data.fit import fit
    from preftune.data.prepare import prepare

    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    pairs8 = fit(tiny_tokenizer, prepare(DATA).train[:8], 192, "train")[0]
    logs = {engine: two_steps(engine, tiny_model, tiny_tokenizer, pairs8, tmp_path / engine, label_smoothing=0.2)
            for engine in ("fast", "trl")}
    plain = two_steps("fast", tiny_model, tiny_tokenizer, pairs8, tmp_path / "plain")
    assert logs["fast"][0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert logs["fast"][0]["grad_norm"] == pytest.approx(0.6 * plain[0]["grad_norm"], rel=1e-4)
    for mine, theirs in zip(logs["fast"], logs["trl"], strict=True):
        for key in ("loss", "logps/chosen", "logps/rejected", "grad_norm"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4), (mine["step"], key)


def test_trl_settings_for_label_smoothing():
    """cDPO = 2(1−ε)·sigmoid − (1−2ε)·robust_ε in TRL's terms; ε = 0 keeps the plain settings."""
    settings = trl_loss_settings(TrainConfig(label_smoothing=0.1, nll_weight=0.5))
    assert settings["loss_type"] == ["sigmoid", "robust", "sft"] and settings["label_smoothing"] == 0.1
    assert settings["loss_weights"] == pytest.approx([1.8, -0.8, 0.5])
    assert trl_loss_settings(TrainConfig())["loss_type"] == ["sigmoid"]


@pytest.mark.parametrize("settings, message", [
    ({"loss": "hinge", "label_smoothing": 0.1}, "--label-smoothing applies to the sigmoid-family losses .*--loss hinge"),
    ({"loss": "ipo", "label_smoothing": 0.1}, "got --loss ipo"),
    ({"loss": "sigmoid_norm", "beta": 2.0, "label_smoothing": 0.1, "engine": "trl"},
     "--label-smoothing with --loss sigmoid_norm is not available with --engine trl .*use --engine fast"),
    ({"label_smoothing": 0.5}, r"--label-smoothing must be in \[0, 0.5\), got 0.5"),
    ({"confidence_weight": True, "engine": "trl"}, "--confidence-weight is not available with --engine trl .*per-pair"),
])
def test_what_cannot_be_applied_is_refused_in_one_line(settings, message):
    with pytest.raises(PreftuneError, match=message) as err:
        TrainConfig(**settings)
    assert "\n" not in str(err.value)


def test_a_confidence_weighted_run_logs_the_weighted_loss_and_records_the_flag(tiny_model, tmp_path, monkeypatch):
    """At step 1 π = π_ref, so every pair's loss is log 2 and the logged loss is log 2 × the mean weight of
    the first batch's pairs (strength / mean strength of the training pairs), not log 2."""
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    cfg = tiny_cfg(tiny_model, tmp_path / "runs", confidence_weight=True, evaluate=False)
    train_pairs = prepare_run_data(DATA, cfg).train_pairs
    strengths = torch.tensor([float(confidence_strength(p)) for p in train_pairs])
    weights = strengths / strengths.mean()
    first = batches(len(train_pairs), cfg.batch_size, cfg.epochs, DATA.seed)[0]
    expected = torch.log(torch.tensor(2.0)).item() * weights[first].mean().item()
    assert abs(weights[first].mean().item() - 1) > 0.02  # the weighting shows in this batch

    run = train(DATA, cfg)
    log = [json.loads(line) for line in (run / "train_log.jsonl").open()]
    assert log[0]["loss"] == pytest.approx(expected, abs=1e-5)
    assert json.loads((run / "preftune_config.json").read_text())["train"]["confidence_weight"] is True


def no_confidence_rows(n: int, with_confidence=lambda i: False) -> list[dict]:
    """summarize_from_feedback rows of n posts (choice 0), extra.confidence 1-4 where `with_confidence(i)`."""
    return [comparison(f"p{i}", post=f"Post {i}: I went to the shop and bought bread number {i}.",
                       chosen=f" Bought bread {i}.", rejected=f" Went out {i} times.",
                       **({"extra": {"confidence": 1 + i % 4}} if with_confidence(i) else {})) for i in range(n)]


def test_confidence_weight_is_refused_for_data_without_confidences(tiny_model, tmp_path, monkeypatch):
    """Refused in one line naming the data file, before the reference pass; with some pairs lacking one,
    --min-confidence 1 (which skips them) makes the run possible."""
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    data = write_jsonl(tmp_path / "nocf.jsonl", no_confidence_rows(40))
    monkeypatch.setattr("preftune.dpo.engines.fast.reference_logps", lambda *a, **k: pytest.fail("reference pass"))
    cfg = tiny_cfg(tiny_model, tmp_path / "runs", confidence_weight=True, evaluate=False)
    with pytest.raises(PreftuneError, match=r"--confidence-weight: 8 of 8 training pairs have no labeller confidence "
                                            r"\(e.g. .*nocf.jsonl:\d+\)") as err:
        train(DataConfig(dataset=str(data)), cfg)
    assert "\n" not in str(err.value)

    monkeypatch.undo()
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    mixed = write_jsonl(tmp_path / "mixed.jsonl", no_confidence_rows(40, lambda i: i % 2 == 0))
    with pytest.raises(PreftuneError, match="training pairs have no labeller confidence"):
        train(DataConfig(dataset=str(mixed)), tiny_cfg(tiny_model, tmp_path / "m1", confidence_weight=True))
    run = train(DataConfig(dataset=str(mixed), min_confidence=1),
                tiny_cfg(tiny_model, tmp_path / "m2", confidence_weight=True, evaluate=False))
    assert json.loads((run / "metrics.json").read_text())["train_pairs"] == 8


def test_a_sweep_carries_both_settings_to_every_run_and_refuses_a_loss_that_cannot_take_them():
    from preftune.sweep.grid import build_configs

    _, base, grid = build_configs({"label_smoothing": 0.1, "confidence_weight": True, "loss": ("sigmoid", "ld_dpo")})
    assert (base.label_smoothing, base.confidence_weight, grid.loss) == (0.1, True, ("sigmoid", "ld_dpo"))
    with pytest.raises(PreftuneError, match="got --loss hinge"):
        build_configs({"label_smoothing": 0.1, "loss": ("sigmoid", "hinge")})
