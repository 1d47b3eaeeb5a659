"""Any causal LM: tiny random-init models of 13 architectures, built from configs whose every dropout
rate is non-zero. `disable_dropout` makes each one's train-mode forward its eval-mode forward (each rate
alone is random until it runs; the causal LM and the reward model's classifier alike), and on each the
fast engine (one pair per forward, and packed) and the TRL engine log the same first two DPO steps —
loss, policy log-probs, grad norm — starting at log 2: π = π_ref at step 0 only with every dropout off;
and the same first two SFT steps (TRL's SFTTrainer: loss, grad norm), which a dropout left on breaks."""

import dataclasses
import math

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
)

from preftune.config import DataConfig, SFTConfig, TrainConfig
from preftune.data.fit import fit
from preftune.data.prepare import prepare
from preftune.dpo.engines import ENGINES, TrainJob, trl_sft
from preftune.models import disable_dropout

SIZES = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 512}
# model_type → what its config needs besides SIZES (None: leave that size out)
ARCHS = {"llama": {}, "qwen2": {}, "qwen3": {}, "mistral": {}, "gemma2": {}, "gemma3_text": {}, "phi3": {}, "gpt2": {},
         "gpt_neox": {}, "olmo2": {}, "granite": {},
         "falcon": {"num_kv_heads": 2, "head_dim": None},  # head_dim is derived there (no setter)
         "opt": {"ffn_dim": 64, "word_embed_proj_dim": 32}}
# dropout fields the model never reads, so no forward can show them (their heads are not built, or the
# field is kept in the config for old checkpoints): (model_type, field) → why
UNUSED = {("gpt2", "summary_first_dropout"): "the double-heads model's summary head",
          ("gpt_neox", "classifier_dropout"): "token classification only",
          ("phi3", "embd_pdrop"): "kept in the config; Phi3Model applies no embedding dropout"}
VOCAB, EOS = 512, 0  # conftest's tiny tokenizer: 512 tokens, <|eos|> first


def dropout_fields(config) -> list[str]:
    """The config's numeric fields named like a dropout rate ("drop" anywhere: broader than disable_dropout's
    own pattern, so a rate it misses is still set here)."""
    return [k for k, v in config.to_dict().items()
            if "drop" in k and isinstance(v, (int, float)) and not isinstance(v, bool)]


def tiny_config(arch: str, rate: float = 0.1, only: str | None = None):
    """A tiny config of `arch` with every dropout rate set to `rate` (or `only` that one, the others 0)."""
    sizes = {k: v for k, v in {**SIZES, **ARCHS[arch]}.items() if v is not None}
    config = AutoConfig.for_model(arch, vocab_size=VOCAB, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS,
                                  **sizes)
    for field in dropout_fields(config):
        setattr(config, field, rate if only in (None, field) else 0.0)
    return config


HEADS = {"causal": AutoModelForCausalLM, "classifier": AutoModelForSequenceClassification}  # DPO/SFT; the RM
FIELD_CASES = [pytest.param(arch, head, field, id=f"{arch}-{head}-{field}")
               for arch in ARCHS for head in HEADS for field in dropout_fields(tiny_config(arch))
               if (arch, field) not in UNUSED
               and (head == "causal" or type(tiny_config(arch)) in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING)]


def forwards(model, ids, seeds=(0, 1, 2)) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(the eval-mode logits, the train-mode logits under each seed)."""
    seeded = []
    with torch.no_grad():
        expected = model.eval()(ids).logits
        model.train()
        for seed in seeds:
            torch.manual_seed(seed)
            seeded.append(model(ids).logits)
    return expected, seeded


@pytest.mark.parametrize("arch,head,field", FIELD_CASES)
def test_disable_dropout_turns_off_each_rate(arch, head, field):
    config = tiny_config(arch, rate=0.5, only=field)
    config.num_labels = 1  # the reward model's one score
    torch.manual_seed(0)
    model = HEADS[head].from_config(config)
    ids = torch.randint(1, VOCAB, (1, 24), generator=torch.Generator().manual_seed(0))
    expected, seeded = forwards(model, ids)
    assert any(not torch.equal(out, expected) for out in seeded), f"{field}=0.5 changes nothing in train mode"
    disable_dropout(model)
    expected, seeded = forwards(model, ids)
    assert all(torch.equal(out, expected) for out in seeded), f"{field} still randomises the train-mode forward"
    assert all(getattr(model.config, f) == 0 for f in dropout_fields(model.config))  # a saved model keeps them off


# ---- fast engine vs TRL's DPOTrainer, per architecture ----------------------------------------------

DATA = DataConfig(fraction=0.03, seed=3)
COMPARED = ("loss", "logps/chosen", "logps/rejected", "grad_norm")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: a second thread costs more than it gives (measured 2× slower with 2 on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pairs(tiny_tokenizer):
    fitted = fit(tiny_tokenizer, prepare(DATA).train[:8], 192, "train")[0]
    assert len(fitted) == 8  # two steps of 4
    return fitted


@pytest.fixture(scope="session", params=list(ARCHS))
def arch_model(request, tmp_path_factory, tiny_tokenizer):
    """(arch, a saved tiny model of it with every dropout rate at 0.1 and conftest's tokenizer)."""
    folder = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config(request.param)).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return request.param, folder


def engine_log(engine: str, model, tokenizer, pairs, out, objective: str = "dpo", **settings) -> list[dict]:
    """The per-step log of a 2-step run (8 pairs or SFT rows, batch 4) of `engine` on `model`."""
    out.mkdir()
    config = {"dpo": TrainConfig, "sft": SFTConfig}[objective]
    cfg = config(output_dir=str(out), model=str(model), lr=1e-2, batch_size=4, max_length=192,
                 gradient_checkpointing=False, engine=engine, **settings)
    job = TrainJob(str(model), tokenizer, pairs, cfg, 0, out, 4, out / "train_log.jsonl", objective=objective)
    return ENGINES[engine](job).log


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def test_fast_engine_matches_trl_from_log2(arch_model, pairs, tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path / "cache"))
    arch, model = arch_model
    logs = {"trl": engine_log("trl", model, tiny_tokenizer, pairs, tmp_path / "trl"),
            "fast": engine_log("fast", model, tiny_tokenizer, pairs, tmp_path / "fast", pack_tokens=0),
            "fast packed": engine_log("fast", model, tiny_tokenizer, pairs, tmp_path / "packed", pack_tokens=4096)}
    for name, log in logs.items():
        assert [r["step"] for r in log] == [1, 2]
        assert abs(log[0]["loss"] - math.log(2)) < 1e-6, f"{arch}, {name}: step-1 loss {log[0]['loss']:.6f}, not log 2"
    for name in ("fast", "fast packed"):
        for mine, theirs in zip(logs[name], logs["trl"]):
            for key in COMPARED:
                assert relative(mine[key], theirs[key]) < 1e-4, (arch, name, mine["step"], key, mine[key], theirs[key])


# ---- fast engine vs TRL's SFTTrainer, per architecture ----------------------------------------------


@pytest.fixture(scope="module")
def sft_rows(tiny_tokenizer):
    """SFT rows as `preftune sft` makes them (rejected = chosen), of the DPO pairs' posts."""
    rows = [dataclasses.replace(p, rejected=p.chosen) for p in prepare(DATA).train[:8]]
    fitted = fit(tiny_tokenizer, rows, 192, "sft")[0]
    assert len(fitted) == 8  # two steps of 4
    return fitted


def test_fast_sft_matches_trl(arch_model, sft_rows, tiny_tokenizer, tmp_path, monkeypatch):
    """Two SFT steps (8 rows, batch 4; one row per forward, and 4): the completion-only loss and gradient
    norm of a random-init model, and of it after one AdamW step. Every dropout rate is 0.1 in the saved
    config, and a TRL run that leaves them on must miss by 1e-3 at least (1e-2 and more measured, mostly
    in the gradient: a random model's step-1 loss is near log V whatever dropout does)."""
    arch, model = arch_model
    logs = {"trl": engine_log("trl", model, tiny_tokenizer, sft_rows, tmp_path / "trl", "sft"),
            "fast": engine_log("fast", model, tiny_tokenizer, sft_rows, tmp_path / "fast", "sft", pack_tokens=0),
            "fast packed": engine_log("fast", model, tiny_tokenizer, sft_rows, tmp_path / "packed", "sft",
                                      pack_tokens=4096)}
    for name, log in logs.items():
        assert [r["step"] for r in log] == [1, 2], (arch, name)
    for name in ("fast", "fast packed"):
        for mine, theirs in zip(logs[name], logs["trl"]):
            for key in ("loss", "grad_norm"):
                assert relative(mine[key], theirs[key]) < 1e-4, (arch, name, mine["step"], key, mine[key], theirs[key])
    monkeypatch.setattr(trl_sft, "disable_dropout", lambda model: model)
    dropping = engine_log("trl", model, tiny_tokenizer, sft_rows, tmp_path / "trl dropout", "sft")
    moved = max(relative(a[key], b[key]) for a, b in zip(dropping, logs["trl"]) for key in ("loss", "grad_norm"))
    assert moved > 1e-3, f"{arch}: dropout left on moves the SFT steps by {moved:.1e} only"
