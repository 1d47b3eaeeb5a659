"""The fast engine against TRL's DPOTrainer: same per-sequence log-probs, loss and gradients for the
same batch and weights (every loss), the same logged keys; and its own behaviour: log 2 at step 0,
every parameter moves, the reference cache is reused, invalidated and survives damaged lines."""

import json

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file, save_file

from preftune.config import DataConfig, TrainConfig
from preftune.data.fit import fit
from preftune.data.prepare import prepare
from preftune.dpo.engines.fast import _losses, _row_logps
from preftune.dpo.engines.trl import trl_loss_settings
from preftune.dpo.logps import (
    PairLogpsModule,
    ld_token_weights,
    pack_pair,
    pack_row,
    pairs_logps,
    plan_rows,
    row_logps,
    slot_sums,
)
from preftune.dpo.losses import configured, ld_alpha, ld_logps
from preftune.dpo.refcache import RefLogpCache, reference_logps
from preftune.models import load_model, load_tokenizer
from preftune.runs.dpo import train

DATA = DataConfig(fraction=0.03, seed=3)


@pytest.fixture(scope="module")
def perturbed_ref(tiny_model, tmp_path_factory):
    """A reference that differs from the policy, so the loss is not log 2 and the test has teeth."""
    folder = tmp_path_factory.mktemp("ref")
    model = load_model(str(tiny_model))
    torch.manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(folder)
    load_tokenizer(str(tiny_model)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pairs(tiny_tokenizer):
    prepared = prepare(DATA).train[:4]
    return fit(tiny_tokenizer, prepared, 256, "train")[0]


def trl_side(tiny_model, ref_path, tokenizer, pairs, cfg: TrainConfig, tmp_path):
    """TRL's own numbers for one batch: per-sequence policy log-probs (LD-weighted for ld_dpo), the loss,
    and gradients, with the TRL engine's loss settings (trl_loss_settings)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    settings = trl_loss_settings(cfg)
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=len(pairs), beta=cfg.beta,
                     max_length=256, bf16=False, use_cpu=True, report_to=[], **settings)
    rows = [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    trainer = DPOTrainer(model=load_model(str(tiny_model)), ref_model=load_model(str(ref_path)), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    model = trainer.model
    model.train()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    with torch.no_grad():  # TRL's per-sequence log-probs, exactly as its _compute_loss computes them
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        kwargs = {k: v for k, v in batch.items() if k != "completion_mask"}
        out = model(**kwargs, labels=labels, use_cache=False, fused_lm_head=True)
        per_token = out.log_probs[:, -(batch["completion_mask"].size(1) - 1):]
        lda = settings["ld_alpha"]
        logps = per_token.sum(1) if lda is None else ld_logps(per_token, batch["completion_mask"][:, 1:], lda)
    chosen, rejected = logps.chunk(2)
    return torch.stack([chosen, rejected], 1), loss.detach(), grads


def fast_side(tiny_model, ref_path, tokenizer, pairs, cfg: TrainConfig, pack_tokens):
    """The fast engine's numbers, its pairs packed into rows of at most `pack_tokens` (0: one per row), with
    the engine's own per-row helpers (LD weights, the NLL term over the batch's chosen tokens)."""
    packed = [pack_pair(tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
    lda = ld_alpha(cfg)
    ref = pairs_logps(PairLogpsModule(load_model(str(ref_path))).eval(), packed, pack_tokens, ld_alpha=lda)
    module = PairLogpsModule(load_model(str(tiny_model))).train()
    pol, total = torch.zeros(len(packed), 2), torch.zeros(())
    nll_scale = cfg.nll_weight * len(packed) / sum(p.chosen_len for p in packed)  # as the engine's step does
    for row in plan_rows([len(p) for p in packed], pack_tokens):
        row_pol, nll = _row_logps(module, pack_row([packed[i] for i in row]), lda)  # (k, 2), (k,)
        losses, _ = _losses(configured(cfg), row_pol, ref[row], cfg.beta, [packed[i] for i in row])
        total = total + (losses + nll_scale * nll).sum() / len(packed)
        pol = pol.index_put((torch.tensor(row),), row_pol)  # (N, 2)
    total.backward()
    return pol.detach(), total.detach(), {n.removeprefix("model."): p.grad for n, p in module.named_parameters()}


PARITY = [dict(loss="sigmoid"), dict(loss="hinge"), dict(loss="ipo"), dict(loss="sigmoid_norm", beta=2.0),
          dict(loss="ld_dpo", ld_alpha=0.3), dict(loss="sigmoid", nll_weight=0.5),
          dict(loss="ld_dpo", ld_alpha=0.3, nll_weight=1.0)]  # the NLL term takes unweighted log-probs


@pytest.mark.parametrize("settings", PARITY, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_parity_with_trl(tiny_model, perturbed_ref, tiny_tokenizer, pairs, settings, tmp_path):
    cfg = TrainConfig(**settings)
    trl_logps, trl_loss, trl_grads = trl_side(tiny_model, perturbed_ref, tiny_tokenizer, pairs, cfg, tmp_path)
    assert abs(trl_loss.item() - 0.6931) > 1e-3  # the perturbed reference makes this a real comparison
    for pack_tokens in (0, 500, 10_000):  # one pair per forward, two, all four
        fast_logps, fast_loss, fast_grads = fast_side(tiny_model, perturbed_ref, tiny_tokenizer, pairs, cfg,
                                                      pack_tokens)
        assert torch.allclose(fast_logps, trl_logps, atol=1e-4, rtol=0), (fast_logps - trl_logps).abs().max()
        assert abs(fast_loss.item() - trl_loss.item()) < 1e-4
        assert fast_grads.keys() == trl_grads.keys()
        for name, g in trl_grads.items():
            rel = (fast_grads[name] - g).norm() / g.norm().clamp(min=1e-12)
            assert rel < 1e-3, f"pack_tokens={pack_tokens}, {name}: relative gradient difference {rel:.2e}"


def test_nll_weight_changes_trls_loss_and_ld_changes_its_logps(tiny_model, perturbed_ref, tiny_tokenizer, pairs,
                                                               tmp_path):
    """The settings reach TRL: the parity above would also hold if both sides ignored them."""
    plain = trl_side(tiny_model, perturbed_ref, tiny_tokenizer, pairs, TrainConfig(), tmp_path)
    nll = trl_side(tiny_model, perturbed_ref, tiny_tokenizer, pairs, TrainConfig(nll_weight=0.5), tmp_path)
    ld = trl_side(tiny_model, perturbed_ref, tiny_tokenizer, pairs, TrainConfig(loss="ld_dpo", ld_alpha=0.3), tmp_path)
    assert nll[1].item() > plain[1].item() + 0.1  # + 0.5 × a per-token NLL of several nats
    assert not torch.allclose(ld[0], plain[0], atol=1e-3)


def tiny_cfg(model, out, **kw) -> TrainConfig:
    base = dict(output_dir=str(out), model=str(model), lr=1e-2, batch_size=4, max_length=192, max_pairs=8,
                max_eval_pairs=4, engine="fast")
    return TrainConfig(**{**base, **kw})


def test_fast_run_log2_every_parameter_moves_and_cache_is_reused(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    run = train(DATA, tiny_cfg(tiny_model, tmp_path / "a"))
    log = [json.loads(line) for line in (run / "train_log.jsonl").open()]
    assert log[0]["loss"] == pytest.approx(0.693147, abs=1e-5)
    assert {"rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "grad_norm",
            "learning_rate", "epoch"} <= log[0].keys()
    before, after = load_file(tiny_model / "model.safetensors"), load_file(run / "model.safetensors")
    assert [k for k in before if torch.equal(before[k], after[k])] == []
    first = capsys.readouterr().out
    n_train = json.loads((run / "metrics.json").read_text())["train_pairs"]  # max_pairs, less unfittable ones
    assert f"reference: computing log-probs of {n_train} pairs once" in first

    # a second run with other hyperparameters: every reference log-prob comes from the cache
    train(DATA, tiny_cfg(tiny_model, tmp_path / "b", lr=5e-3))
    out = capsys.readouterr().out
    assert f"reference: all {n_train} pairs' log-probs found in" in out and "reference: computing" not in out


def test_both_engines_log_the_documented_keys(tiny_model, tmp_path, monkeypatch):
    """The fast engine logs exactly engines.LOG_KEYS; the TRL engine those and TRL's own extras (the
    README says so). Each is checked on a tiny run of each engine."""
    from preftune.dpo.engines import LOG_KEYS

    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    keys = {}
    for engine in ("fast", "trl"):
        cfg = tiny_cfg(tiny_model, tmp_path / engine, engine=engine, evaluate=False, gradient_checkpointing=False)
        run = train(DATA, cfg)
        keys[engine] = {k for line in (run / "train_log.jsonl").open() for k in json.loads(line)}
    assert keys["fast"] == set(LOG_KEYS)
    assert set(LOG_KEYS) <= keys["trl"]
    readme = (REPO / "README.md").read_text()
    assert all(f"`{k}`" in readme for k in LOG_KEYS)
    assert all(f"`{k}`" in readme for k in keys["trl"] - set(LOG_KEYS))  # TRL's extras, as the README lists them


def test_a_damaged_cache_line_is_recomputed_not_a_crash(tiny_model, tmp_path, monkeypatch, tiny_tokenizer, pairs):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    packed = [pack_pair(tiny_tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
    first = reference_logps(packed, str(tiny_model), lambda: load_model(str(tiny_model)))
    cache = RefLogpCache(str(tiny_model))
    lines = cache.path.read_text().splitlines()
    damaged = [json.dumps([1, 2]), json.dumps({"key": json.loads(lines[1])["key"], "chosen": None, "rejected": 1}),
               "null", '{"key": "cut sh']
    cache.path.write_text("\n".join([lines[0], *damaged, *lines[2:]]) + "\n")
    assert len(RefLogpCache(str(tiny_model)).missing(packed)) == 1  # only the pair whose line is damaged
    assert torch.allclose(reference_logps(packed, str(tiny_model), lambda: load_model(str(tiny_model))), first)


def test_cache_is_invalidated_when_the_weights_change(tiny_model, tmp_path, monkeypatch, tiny_tokenizer, pairs):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    packed = [pack_pair(tiny_tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
    loads = []

    def loader(path):
        return lambda: loads.append(path) or load_model(str(path))

    first = reference_logps(packed, str(tiny_model), loader(tiny_model))
    again = reference_logps(packed, str(tiny_model), loader(tiny_model))
    assert torch.equal(first, again) and len(loads) == 1  # warm cache: the model is not even loaded

    changed = tmp_path / "changed"
    changed.mkdir()
    for f in tiny_model.iterdir():
        (changed / f.name).write_bytes(f.read_bytes())
    weights = load_file(changed / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1.0
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    assert RefLogpCache(str(changed)).path != RefLogpCache(str(tiny_model)).path
    other = reference_logps(packed, str(changed), loader(changed))
    assert len(loads) == 2 and not torch.equal(other, first)


def test_resume_from_a_checkpoint_replays_the_run_exactly(tiny_model, tiny_tokenizer, pairs, tmp_path, monkeypatch):
    """Uninterrupted 4 steps vs 2 steps → checkpoint → resume for 2 more: identical final weights."""
    from preftune.dpo.engines import ENGINES, TrainJob, latest_checkpoint

    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))

    def job(out, **kw):
        cfg = tiny_cfg(tiny_model, out, batch_size=2, epochs=2, **kw)
        out.mkdir(parents=True, exist_ok=True)
        return TrainJob(str(tiny_model), tiny_tokenizer, pairs, cfg, 0, out, 2, out / "log.jsonl")

    straight = ENGINES["fast"](job(tmp_path / "straight"))
    assert straight.steps == 4
    saving = job(tmp_path / "saving", save_steps=2)
    ENGINES["fast"](saving)
    checkpoint = latest_checkpoint(saving.out_dir)
    assert checkpoint is not None and checkpoint.name == "checkpoint-2"
    resumed_job = job(tmp_path / "resumed")
    resumed_job.resume_from = checkpoint
    resumed = ENGINES["fast"](resumed_job)
    assert resumed.steps == 4 and [r["step"] for r in resumed.log] == [3, 4]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.log[-1]["loss"] == straight.log[-1]["loss"]


# ---- the seam every engine shares (engines/base.py) ------------------------------------------------


@pytest.mark.parametrize("marker", ["", "{", "[]", '{"step": "2", "elapsed_s": 1.0}', '{"step": 2}',
                                    '{"step": 2, "elapsed_s": null}'])
def test_a_damaged_checkpoint_marker_is_an_incomplete_checkpoint(tmp_path, marker):
    from preftune.dpo.engines import (
        CHECKPOINT_MARKER,
        latest_checkpoint,
        read_checkpoint_marker,
        write_checkpoint_marker,
    )
    from preftune.errors import PreftuneError

    good, bad = tmp_path / "checkpoints" / "checkpoint-2", tmp_path / "checkpoints" / "checkpoint-4"
    good.mkdir(parents=True)
    bad.mkdir()
    write_checkpoint_marker(good, 2, 1.5)
    (bad / CHECKPOINT_MARKER).write_text(marker)
    assert latest_checkpoint(tmp_path) == good and read_checkpoint_marker(good) == {"step": 2, "elapsed_s": 1.5}
    with pytest.raises(PreftuneError, match=f"{CHECKPOINT_MARKER}: missing or damaged"):
        read_checkpoint_marker(bad)


def test_the_step_log_is_strict_json(tmp_path):
    from preftune.dpo.engines import append_log

    append_log(tmp_path / "log.jsonl", {"step": 1, "loss": float("nan"), "grad_norm": float("inf")})
    line = (tmp_path / "log.jsonl").read_text()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {"step": 1, "loss": None,
                                                                                   "grad_norm": None}


def test_a_reference_free_loss_skips_the_reference_pass(tiny_model, tiny_tokenizer, pairs, tmp_path, monkeypatch):
    """Any registry entry marked `reference_free` (as SimPO is) trains without the pass."""
    import torch.nn.functional as F

    from preftune.dpo import losses
    from preftune.dpo.engines import ENGINES, TrainJob

    def length_normalised(pc, pr, rc, rr, beta, nc, nr):  # SimPO without its margin: no π_ref anywhere
        return -F.logsigmoid(beta * (pc / nc - pr / nr)), (beta * pc).detach(), (beta * pr).detach()

    length_normalised.reference_free = True
    monkeypatch.setitem(losses.LOSSES, "reference_free_test", length_normalised)
    monkeypatch.setattr("preftune.dpo.engines.fast.reference_logps", lambda *a, **k: pytest.fail("reference pass ran"))
    cfg = tiny_cfg(tiny_model, tmp_path, evaluate=False)
    cfg.loss = "reference_free_test"  # not a CLI name: set after the config's own checks
    result = ENGINES["fast"](TrainJob(str(tiny_model), tiny_tokenizer, pairs, cfg, 0, tmp_path, 4, tmp_path / "log"))
    packed = [pack_pair(tiny_tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
    pol = pairs_logps(PairLogpsModule(load_model(str(tiny_model))).eval(), packed, 0)  # the initial policy
    n = torch.tensor([[p.chosen_len, p.rejected_len] for p in packed])
    expected = length_normalised(pol[:, 0], pol[:, 1], None, None, 0.1, n[:, 0], n[:, 1])[0].mean().item()
    assert result.steps == 1 and result.log[0]["loss"] == pytest.approx(expected, abs=1e-5)
    assert result.log[0]["rewards/chosen"] == pytest.approx(0.1 * result.log[0]["logps/chosen"], rel=1e-5)
    assert not losses.is_reference_free("sigmoid")


def test_simpo_run_skips_the_reference_and_is_evaluated_by_its_own_reward(tiny_model, tmp_path, monkeypatch):
    """A whole fast run of --loss simpo: no reference pass in training; eval.json ranks by β·mean log-prob
    and says so; the logged rewards are SimPO's (β·mean log-prob: negative, and below β·summed log-prob)."""
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("preftune.dpo.engines.fast.reference_logps", lambda *a, **k: pytest.fail("reference pass ran"))
    run = train(DATA, tiny_cfg(tiny_model, tmp_path, loss="simpo", beta=2.0, simpo_gamma=1.0, max_pairs=4))
    result = json.loads((run / "eval.json").read_text())
    assert result["reward"] == "simpo" and "ld_alpha" not in result
    log = [json.loads(line) for line in (run / "train_log.jsonl").open()]
    assert 0 > log[0]["rewards/chosen"] > 2.0 * log[0]["logps/chosen"]


def test_ld_reference_log_probs_are_cached_apart_and_weighted(tiny_model, tiny_tokenizer, pairs, tmp_path,
                                                              monkeypatch):
    """A plain-DPO cache is never read for LD-DPO (nor one α's for another), and LD values equal the
    per-token weighted sums; α = 1 reproduces the plain ones."""
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    packed = [pack_pair(tiny_tokenizer, p.prompt, p.chosen, p.rejected) for p in pairs]
    load = lambda: load_model(str(tiny_model))  # noqa: E731
    plain = reference_logps(packed, str(tiny_model), load)
    paths = {RefLogpCache(str(tiny_model), ld_alpha=a).path for a in (None, 0.5, 0.25, 1.0)}
    assert len(paths) == 4
    ld = reference_logps(packed, str(tiny_model), load, ld_alpha=0.5)
    assert (ld >= plain - 1e-5).all() and not torch.allclose(ld, plain)  # tails (log-probs < 0) weigh less
    module = PairLogpsModule(load()).eval()
    with torch.no_grad():
        tokens = row_logps(module, pack_row(packed[:1]), per_token=True)
    expected = slot_sums(tokens * ld_token_weights(packed[0].chosen_len, packed[0].rejected_len, 0.5),
                         pack_row(packed[:1]).slots, 1)
    assert torch.allclose(ld[:1], expected, atol=1e-5)
    assert torch.allclose(reference_logps(packed, str(tiny_model), load, ld_alpha=1.0), plain, atol=1e-5)


def test_trl_engine_refuses_a_loss_it_lacks_before_loading_anything(tiny_model, tiny_tokenizer, pairs, tmp_path,
                                                                    monkeypatch):
    """Config refuses --engine trl --loss rdpo first (test_config); should a config get past it, the
    engine itself stops before the model loads."""
    from preftune.dpo.engines import ENGINES, TrainJob
    from preftune.errors import PreftuneError

    monkeypatch.setattr("preftune.dpo.engines.trl.load_model", lambda *a, **k: pytest.fail("model loaded"))
    cfg = tiny_cfg(tiny_model, tmp_path, engine="trl")
    cfg.loss = "rdpo"  # past the config's own check
    with pytest.raises(PreftuneError, match="--loss rdpo is not in TRL's DPOTrainer; use --engine fast"):
        ENGINES["trl"](TrainJob(str(tiny_model), tiny_tokenizer, pairs, cfg, 0, tmp_path, 4, tmp_path / "log"))
