"""The SFT objective of the fast engine against TRL's SFTTrainer (completion-only loss): the same token
log-probs, loss and gradients for a batch (1e-4), packed or not; the same curve through both engines
(accumulation and packing included); weights move and the loss falls; a resumed run ends on the same
weights; and 2 processes (DDP, FSDP) follow the single-process curve."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from preftune.config import DataConfig, SFTConfig
from preftune.data.fit import fit
from preftune.data.prepare import prepare
from preftune.dpo.engines import (
    CHECKPOINTS_DIR,
    ENGINES,
    SFT_LOG_KEYS,
    TrainJob,
    latest_checkpoint,
    read_checkpoint_marker,
)
from preftune.dpo.engines.fast import SFTObjective
from preftune.dpo.logps import (
    PairLogpsModule,
    pack_completion,
    pack_row,
    plan_rows,
    row_logps,
)
from preftune.models import load_model

DATA = DataConfig(fraction=0.03, seed=3)


@pytest.fixture(scope="module")
def rows(tiny_tokenizer):
    """SFT rows as `preftune sft` makes them: a pair whose rejected is its chosen summary."""
    pairs = [dataclasses.replace(p, rejected=p.chosen) for p in prepare(DATA).train[:6]]
    return fit(tiny_tokenizer, pairs, 512, "sft")[0]  # 403 to 512 tokens


def sft_cfg(model, out, **kw) -> SFTConfig:
    base = dict(output_dir=str(out), model=str(model), lr=1e-2, batch_size=6, epochs=1, max_length=512)
    return SFTConfig(**{**base, **kw})


def job(model, tokenizer, rows, out: Path, per_device: int | None = None, **kw) -> TrainJob:
    cfg = sft_cfg(model, out, **kw)
    out.mkdir(parents=True, exist_ok=True)
    return TrainJob(str(model), tokenizer, rows, cfg, 0, out, per_device or cfg.batch_size, out / "log.jsonl",
                    objective="sft")


def trl_side(tiny_model, tokenizer, rows, tmp_path):
    """TRL's numbers for one batch of all rows: each row's completion-token log-probs, the loss as its
    training step computes it (num_items_in_batch: the batch's completion tokens) and the gradients."""
    from trl import SFTTrainer

    from preftune.dpo.engines.trl_sft import sft_args, sft_dataset

    j = job(tiny_model, tokenizer, rows, tmp_path)
    trainer = SFTTrainer(model=load_model(str(tiny_model)), args=sft_args(j),
                         train_dataset=sft_dataset(rows, tokenizer.eos_token), processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    model = trainer.model.train()
    n_items = (batch["labels"][:, 1:] != -100).sum()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=n_items)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        out = model(**batch, use_cache=False, fused_lm_head=True)
    per_row = [lp[m] for lp, m in zip(out.log_probs, out.label_mask)]
    return per_row, loss.detach(), grads, int(n_items)


def fast_side(tiny_model, tokenizer, rows, pack_tokens: int):
    """The engine's SFT objective over the same batch, rows packed `pack_tokens` per forward (0: one each)."""
    j = TrainJob(str(tiny_model), tokenizer, rows, SFTConfig(), 0, Path("."), len(rows), Path("log"), objective="sft")
    objective = SFTObjective(j, "fp32")
    module = PairLogpsModule(load_model(str(tiny_model))).train()
    batch = list(range(len(rows)))
    objective.begin_step(batch)
    total, per_row = torch.zeros(()), [None] * len(rows)
    for members in plan_rows([len(objective.packed[i]) for i in batch], pack_tokens):
        loss, _ = objective.row_loss(module, members)
        loss.backward()
        total = total + loss.detach()
        row = pack_row([objective.packed[i] for i in members])
        with torch.no_grad():
            tokens = row_logps(module, row, per_token=True)
        for k, i in enumerate(members):
            per_row[i] = tokens[row.slots == 2 * k]
    grads = {n.removeprefix("model."): p.grad for n, p in module.named_parameters()}
    return per_row, total, grads, objective


def test_fast_sft_equals_trl_per_token_loss_and_gradients(tiny_model, tiny_tokenizer, rows, tmp_path):
    trl_tokens, trl_loss, trl_grads, n_items = trl_side(tiny_model, tiny_tokenizer, rows, tmp_path)
    for pack_tokens in (0, 1100, 10_000):  # one row per forward, two, all six
        tokens, loss, grads, objective = fast_side(tiny_model, tiny_tokenizer, rows, pack_tokens)
        if pack_tokens == 1100:
            assert len(plan_rows([len(p) for p in objective.packed], 1100)) == 3  # really packed
        assert objective.tokens == n_items  # the same completion tokens: the summary and its EOS
        for mine, theirs in zip(tokens, trl_tokens, strict=True):
            assert mine.shape == theirs.shape and torch.allclose(mine, theirs, atol=1e-4, rtol=0)
        assert abs(loss.item() - trl_loss.item()) < 1e-4
        assert grads.keys() == trl_grads.keys()
        for name, g in trl_grads.items():
            assert (grads[name] - g).abs().max() < 1e-4, f"pack_tokens={pack_tokens}, {name}"
            assert (grads[name] - g).norm() <= 1e-3 * g.norm(), f"pack_tokens={pack_tokens}, {name}"


def test_a_row_is_its_prompt_then_its_summary_and_one_eos(tiny_tokenizer, rows):
    p = pack_completion(tiny_tokenizer, rows[0].prompt, rows[0].chosen)
    assert p.rejected_len == 0 and p.real_tokens == len(p) == p.prompt_len + p.chosen_len
    completion = list(p.ids[p.prompt_len:])
    assert completion[-1] == tiny_tokenizer.eos_token_id and tiny_tokenizer.eos_token_id not in completion[:-1]
    assert tiny_tokenizer.decode(completion[:-1]) == rows[0].chosen
    row = pack_row([p, p])
    assert len(row.rows) == len(row.targets) == 2 * p.chosen_len  # no rejected predictor for R = 0


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_both_engines_follow_the_same_curve(tiny_model, tiny_tokenizer, rows, tmp_path, grad_accum):
    """Every step trains on all 6 rows, so the curves must match step for step: TRL with 6 rows at once or
    2 accumulation steps of 3, the fast engine with two rows per forward. The token accuracy is over the
    step's tokens; TRL averages its micro-batches' accuracies, which is the same with one micro-batch."""
    trl = ENGINES["trl"](job(tiny_model, tiny_tokenizer, rows, tmp_path / "trl", per_device=6 // grad_accum,
                             grad_accum=grad_accum, epochs=3))
    fast = ENGINES["fast"](job(tiny_model, tiny_tokenizer, rows, tmp_path / "fast", epochs=3, pack_tokens=1100))
    assert trl.steps == fast.steps == 3
    assert set(SFT_LOG_KEYS) <= trl.log[0].keys() and set(fast.log[0]) == set(SFT_LOG_KEYS)
    for a, b in zip(fast.log, trl.log, strict=True):
        assert a["step"] == b["step"] and a["epoch"] == pytest.approx(b["epoch"])
        assert a["learning_rate"] == pytest.approx(b["learning_rate"])
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
        if grad_accum == 1:
            assert a["mean_token_accuracy"] == pytest.approx(b["mean_token_accuracy"], abs=1e-6)
        assert a["num_tokens"] == b["num_tokens"]
    assert fast.log[-1]["loss"] < fast.log[0]["loss"] - 0.1
    a, b = fast.model.state_dict(), trl.model.state_dict()
    for name in b:
        assert torch.allclose(a[name], b[name], atol=1e-4), name


def test_a_fast_run_moves_every_weight_and_the_loss_falls(tiny_model, tiny_tokenizer, rows, tmp_path):
    from safetensors.torch import load_file

    result = ENGINES["fast"](job(tiny_model, tiny_tokenizer, rows, tmp_path, batch_size=3, epochs=3))
    assert result.steps == 6 and [r["step"] for r in result.log] == list(range(1, 7))
    losses = [r["loss"] for r in result.log]
    assert losses[-1] < losses[0] - 0.5 and all(0 <= r["mean_token_accuracy"] <= 1 for r in result.log)
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").open()]
    assert logged == result.log
    before, after = load_file(tiny_model / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    assert [k for k in before if torch.equal(before[k], after[k])] == []


@pytest.mark.parametrize("engine", ["fast", "trl"])
def test_resume_from_a_checkpoint_replays_the_run_exactly(tiny_model, tiny_tokenizer, rows, tmp_path, engine):
    """Uninterrupted 4 steps vs 2 steps → checkpoint → resume for 2 more: the same final weights and log."""
    settings = dict(batch_size=3, epochs=2, engine=engine, **({"pack_tokens": 1100} if engine == "fast" else {}))
    straight = ENGINES[engine](job(tiny_model, tiny_tokenizer, rows, tmp_path / "straight", **settings))
    saving = job(tiny_model, tiny_tokenizer, rows, tmp_path / "saving", save_steps=2, **settings)
    ENGINES[engine](saving)
    checkpoint = saving.out_dir / CHECKPOINTS_DIR / "checkpoint-2"  # (TRL also saves the last step)
    assert latest_checkpoint(saving.out_dir) is not None and read_checkpoint_marker(checkpoint)["step"] == 2
    resumed_job = job(tiny_model, tiny_tokenizer, rows, tmp_path / "resumed", **settings)
    resumed_job.resume_from = checkpoint
    resumed = ENGINES[engine](resumed_job)
    assert resumed.steps == straight.steps == 4 and [r["step"] for r in resumed.log] == [3, 4]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the fast engine's num_tokens counts the steps before the checkpoint too; TRL 1.16 restarts its count
    skip = {"num_tokens"} if engine == "trl" else set()
    for mine, theirs in zip(resumed.log, straight.log[2:], strict=True):
        assert {k: v for k, v in mine.items() if k not in skip} == pytest.approx(
            {k: v for k, v in theirs.items() if k not in skip})


def test_lora_runs_of_both_engines_agree_and_save_a_merged_model(tiny_model, tiny_tokenizer, rows, tmp_path):
    """The same LoRA init (seeded before the adapter), the same two steps; each folder holds the adapter
    and the merged model, which loads without peft and differs from the base."""
    from transformers import AutoModelForCausalLM

    settings = dict(batch_size=6, epochs=2, lora=True, lora_r=4, lora_alpha=8, lr=5e-2)
    logs = {}
    for engine in ("trl", "fast"):
        result = ENGINES[engine](job(tiny_model, tiny_tokenizer, rows, tmp_path / engine, engine=engine, **settings))
        logs[engine] = result.log
        assert (tmp_path / engine / "adapter" / "adapter_config.json").is_file()
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / engine)
        base = AutoModelForCausalLM.from_pretrained(tiny_model)
        q = "model.layers.0.self_attn.q_proj.weight"
        assert not torch.equal(merged.state_dict()[q], base.state_dict()[q])
    for a, b in zip(logs["fast"], logs["trl"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    assert logs["fast"][1]["loss"] < logs["fast"][0]["loss"]


@pytest.mark.parametrize("engine", ["fast", "trl"])
def test_the_step_log_reaches_the_tracker(tiny_model, tiny_tokenizer, rows, tmp_path, engine):
    """--report-to tensorboard: every logged SFT key, at its step, as train/<key>."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = sft_cfg(tiny_model, tmp_path, batch_size=3, engine=engine, report_to="tensorboard")
    out = tmp_path / f"sft_{engine}"
    out.mkdir()
    result = ENGINES[engine](TrainJob(str(tiny_model), tiny_tokenizer, rows, cfg, 0, out, 3, out / "log.jsonl",
                                      objective="sft"))
    events = EventAccumulator(str(tmp_path / "tracking" / "tensorboard" / out.name))
    events.Reload()
    for key in set(SFT_LOG_KEYS) - {"step"}:
        scalars = {e.step: e.value for e in events.Scalars(f"train/{key}")}
        assert scalars == pytest.approx({r["step"]: r[key] for r in result.log}, rel=1e-6), key


def test_an_unknown_objective_is_refused(tiny_model, tiny_tokenizer, rows, tmp_path):
    with pytest.raises(ValueError, match="objective must be one of"):
        TrainJob(str(tiny_model), tiny_tokenizer, rows, sft_cfg(tiny_model, tmp_path), 0, tmp_path, 6,
                 tmp_path / "log", objective="rm")


# ---- several processes -----------------------------------------------------------------------------

WRAPPER = """
import dataclasses, json, os, sys
from pathlib import Path
from preftune.config import DataConfig, SFTConfig
from preftune.data.fit import fit
from preftune.data.prepare import prepare
from preftune.dpo.engines import ENGINES, TrainJob
from preftune.log import setup
from preftune.models import load_tokenizer
setup()  # preftune's messages on stdout, as the CLI prints them
model, out, engine, fsdp = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "fsdp"
tokenizer = load_tokenizer(model)
pairs = [dataclasses.replace(p, rejected=p.chosen) for p in prepare(DataConfig(fraction=0.03, seed=3)).train[:8]]
rows = fit(tokenizer, pairs, 256, "sft")[0]
cfg = SFTConfig(output_dir=str(out), model=model, lr=1e-2, batch_size=5, max_length=256, engine=engine,
                pack_tokens=600, fsdp=fsdp)
out.mkdir(parents=True, exist_ok=True)
per_device = max(cfg.batch_size // int(os.environ.get("WORLD_SIZE", 1)), 1)
result = ENGINES[engine](TrainJob(model, tokenizer, rows, cfg, 0, out, per_device, out / "log.jsonl", objective="sft"))
import torch.distributed as dist
world = dist.get_world_size() if dist.is_initialized() else 1  # the group the engine trained in
if result.model is not None:
    print("RESULT", json.dumps({"steps": result.steps, "world": world}))
if dist.is_initialized():  # as preftune's CLI does: a group left to interpreter exit can abort the rank
    dist.destroy_process_group()
"""


def run_sft(tmp_path: Path, tiny_model, out: Path, engine: str, processes: int, fsdp: bool = False):
    wrapper = tmp_path / "sft_job.py"
    wrapper.write_text(WRAPPER)
    launcher = ([str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(processes), "--standalone"]
                if processes > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*launcher, str(wrapper), str(tiny_model), str(out), engine, "fsdp" if fsdp else "ddp"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))[7:])
    assert result["world"] == processes
    return [json.loads(line) for line in (out / "log.jsonl").open()], done


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_follow_one_process(tiny_model, tmp_path, mode):
    """8 rows of 256 tokens, batch 5, two rows per forward: one rank runs two forwards in a step, the
    other one (FSDP: and a dummy one), and the step's loss is still the token mean of the whole batch."""
    from transformers import AutoModelForCausalLM

    single, _ = run_sft(tmp_path, tiny_model, tmp_path / "single", "fast", 1)
    two, done = run_sft(tmp_path, tiny_model, tmp_path / mode, "fast", 2, fsdp=mode == "fsdp")
    if mode == "fsdp":
        assert "sharded across 2 processes" in done.stdout + done.stderr  # DTensor parameters seen, not assumed
    assert len(two) == len(single) == 2
    for a, b in zip(two, single):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
        assert a["mean_token_accuracy"] == pytest.approx(b["mean_token_accuracy"])
        assert a["num_tokens"] == b["num_tokens"]
    assert two[-1]["loss"] < two[0]["loss"]
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    logits = [AutoModelForCausalLM.from_pretrained(r)(input_ids=ids).logits
              for r in (tmp_path / mode, tmp_path / "single")]
    assert torch.allclose(*logits, atol=1e-3)  # the saved model is whole and the same
