"""Sequence log-probs of completions, tokenized exactly as TRL's DPOTrainer does.

`tokenize_completion` mirrors TRL 1.16: ids = tokenizer(prompt + completion + eos), and the
completion starts where those ids diverge from tokenizer(prompt). `completion_logps` runs the
decoder once and sends only completion positions through the LM head (on CPU the 49k-vocab head
over every prompt position costs more than the rest of the forward pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tokenized:
    ids: list[int]  # prompt + completion (+ EOS)
    prompt_len: int  # completion tokens are ids[prompt_len:]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def tokenize_completion(tokenizer, prompt: str, completion: str) -> Tokenized:
    eos = tokenizer.eos_token
    full = tokenizer(prompt + completion + ("" if completion.endswith(eos) else eos))["input_ids"]
    prompt_ids = tokenizer(prompt)["input_ids"]
    return Tokenized(full, _common_prefix(prompt_ids, full))


def _pad(batch: list[Tokenized], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input_ids, attention_mask, and a mask of positions that *predict* a completion token."""
    T = max(len(t.ids) for t in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), T), dtype=torch.long)
    predicts = torch.zeros((len(batch), T), dtype=torch.bool)
    for i, t in enumerate(batch):
        ids[i, : len(t.ids)] = torch.tensor(t.ids)
        attn[i, : len(t.ids)] = 1
        predicts[i, t.prompt_len - 1 : len(t.ids) - 1] = True  # position p predicts token p+1
    return ids, attn, predicts


@torch.no_grad()
def completion_logps(model, batch: list[Tokenized], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log π(completion | prompt) per sequence, shape (B,), and completion token counts (B,)."""
    ids, attn, predicts = _pad(batch, pad_id)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    hidden = decoder(input_ids=ids, attention_mask=attn).last_hidden_state  # (B, T, H)
    rows, cols = predicts.nonzero(as_tuple=True)
    logits = head(hidden[rows, cols]).float()  # (N, V): completion positions only
    targets = ids[rows, cols + 1]
    token_logps = logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)  # (N,)
    sums = torch.zeros(len(batch), dtype=token_logps.dtype).index_add_(0, rows, token_logps)
    return sums, predicts.sum(-1)
