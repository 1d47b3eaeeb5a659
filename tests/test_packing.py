"""Several pairs per forward: a pair's log-probs do not depend on what it is packed with (1e-5), the
per-pair attention equals the block-diagonal mask, the update equals a batched step's, and rows are
planned within the token budget."""

import pytest
import torch

from preftune.config import DataConfig, TrainConfig
from preftune.data.fit import fit
from preftune.data.prepare import prepare
from preftune.dpo.engines import ENGINES, TrainJob
from preftune.dpo.engines.fast import rank_rows
from preftune.dpo.logps import (
    PairLogpsModule,
    pack_pair,
    pack_row,
    packed_pair_logps,
    pairs_logps,
    plan_rows,
    row_logps,
    supports_pair_attention,
)
from preftune.models import load_model


@pytest.fixture(scope="module")
def packed(tiny_tokenizer):
    pairs = fit(tiny_tokenizer, prepare(DataConfig(fraction=0.03, seed=3)).train[:6], 256, "train")[0]
    return [pack_pair(tiny_tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]


@pytest.mark.parametrize("attention", ["pairs", "mask"])
def test_a_pair_packed_with_others_has_its_own_logps(tiny_model, packed, attention):
    model = load_model(str(tiny_model))
    module = PairLogpsModule(model, attention=attention).eval()
    with torch.no_grad():
        alone = torch.stack([packed_pair_logps(module, p) for p in packed])  # (6, 2)
        together = row_logps(module, pack_row(packed))  # one row of 6
        reordered = row_logps(module, pack_row(packed[::-1])).flip(0)
    assert torch.allclose(together, alone, atol=1e-5, rtol=0), (together - alone).abs().max()
    assert torch.allclose(reordered, alone, atol=1e-5, rtol=0)
    assert alone.lt(0).all() and alone.isfinite().all()
    module.release()


def test_per_pair_attention_equals_the_block_diagonal_mask_in_values_and_gradients(tiny_model, packed):
    results = {}
    for attention in ("pairs", "mask"):
        model = load_model(str(tiny_model))
        module = PairLogpsModule(model, attention=attention).train()
        logps = row_logps(module, pack_row(packed[:4]))
        logps.sum().backward()
        results[attention] = logps.detach(), {n: p.grad for n, p in model.named_parameters()}
        module.release()
    (a, grads_a), (b, grads_b) = results["pairs"], results["mask"]
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    for name, g in grads_a.items():
        assert (g - grads_b[name]).norm() <= 1e-4 * grads_b[name].norm().clamp(min=1e-12), name


def test_the_model_gets_its_attention_back(tiny_model, packed):
    model = load_model(str(tiny_model))
    before = model.config._attn_implementation
    assert supports_pair_attention(model)
    module = PairLogpsModule(model)
    assert module.attention == "pairs" and model.config._attn_implementation != before
    assert module.release() is model and model.config._attn_implementation == before
    ids = torch.tensor([packed[0].ids])
    model(input_ids=ids)  # a plain forward works again


def test_pairs_logps_plans_rows_and_keeps_the_order(tiny_model, packed):
    module = PairLogpsModule(load_model(str(tiny_model))).eval()
    with torch.no_grad():
        alone = torch.stack([packed_pair_logps(module, p) for p in packed])
    for budget in (0, 300, 10_000):
        assert torch.allclose(pairs_logps(module, packed, budget), alone, atol=1e-5, rtol=0), budget


def one_step(tiny_model, tokenizer, pairs, out, pack_tokens):
    cfg = TrainConfig(output_dir=str(out), model=str(tiny_model), lr=1e-3, batch_size=len(pairs), max_length=256,
                      pack_tokens=pack_tokens)
    out.mkdir(parents=True)
    job = TrainJob(str(tiny_model), tokenizer, pairs, cfg, 0, out, len(pairs), out / "log.jsonl")
    return ENGINES["fast"](job)


def test_the_update_equals_a_batched_step(tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    """One optimizer step over 6 pairs: one pair per forward, rows of a few pairs, one row of all six,
    and the batched reference — AdamW on the gradient of the mean loss of all pairs from one forward."""
    from preftune.dpo.losses import LOSSES

    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    pairs = fit(tiny_tokenizer, prepare(DataConfig(fraction=0.03, seed=3)).train[:6], 256, "train")[0]
    runs = {n: one_step(tiny_model, tiny_tokenizer, pairs, tmp_path / str(n), n) for n in (0, 400, 10_000)}

    torch.manual_seed(0)
    model = load_model(str(tiny_model))
    module = PairLogpsModule(model).train()
    packed = [pack_pair(tiny_tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
    with torch.no_grad():
        ref = pairs_logps(PairLogpsModule(load_model(str(tiny_model))).eval(), packed, 0)
    pol = torch.stack([packed_pair_logps(module, p) for p in packed])
    losses, _, _ = LOSSES["sigmoid"](pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], 0.1)
    losses.mean().backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0).step()
    batched = module.release().state_dict()

    for n, run in runs.items():
        assert run.log[0]["loss"] == pytest.approx(losses.mean().item(), abs=1e-6)
        assert run.log[0]["grad_norm"] == pytest.approx(norm, rel=1e-5)
        weights = run.model.state_dict()
        for name, g in grads.items():
            # AdamW's first step moves a weight by lr·g/(|g| + 1e-8): ±lr where |g| ≫ 1e-8, the same in both;
            # where |g| is near 1e-8 float rounding decides, so only clear gradients are compared
            clear = g.abs() > 1e-6
            diff = (weights[name] - batched[name])[clear].abs().max().item() if clear.any() else 0.0
            assert diff < 1e-7, f"pack_tokens={n}: {name} differs by {diff:.2e} from the batched step"


@pytest.mark.parametrize("lengths,budget,rows", [
    ([5, 5, 5], 0, [[0], [1], [2]]),
    ([5, 5, 5], 10, [[0, 1], [2]]),
    ([3, 8, 5, 2], 10, [[1, 3], [2, 0]]),  # first-fit decreasing: 8+2, 5+3
    ([12, 4], 10, [[0], [1]]),  # longer than the budget: a row of its own
    ([], 10, []),
])
def test_rows_are_planned_within_the_budget(lengths, budget, rows):
    assert plan_rows(lengths, budget) == rows


def test_every_rank_knows_how_many_forwards_the_busiest_rank_runs(packed):
    batch = list(range(len(packed)))
    budget = 2 * max(len(p) for p in packed)
    plans = [rank_rows(batch, packed, budget, rank, 2) for rank in (0, 1)]
    assert plans[0][1] == plans[1][1] == max(len(rows) for rows, _ in plans)
    assert sorted(i for rows, _ in plans for row in rows for i in row) == batch
    assert all(sum(len(packed[i]) for i in row) <= budget for rows, _ in plans for row in rows)


def test_one_pair_per_forward_is_the_cpu_default():
    """Measured on CPU (bench/README.md): rows of several pairs are no faster and hold more activations."""
    from preftune.dpo.logps import default_pack_tokens

    assert default_pack_tokens() == (8192 if torch.cuda.is_available() else 0)
    assert default_pack_tokens(1500) == 1500 and default_pack_tokens(0) == 0
