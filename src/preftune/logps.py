"""Sequence log-probs of completions, tokenized exactly as TRL's DPOTrainer does.

`tokenize_completion` mirrors TRL 1.16: ids = tokenizer(prompt + completion + eos), and the
completion starts where those ids diverge from tokenizer(prompt). `completion_logps` runs the
decoder once and sends only completion positions through the LM head (on CPU the 49k-vocab head
over every prompt position costs more than the rest of the forward pass).
"""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass

import torch

from preftune.data.sequence import sequence_text


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
    full = tokenizer(sequence_text(prompt, completion, tokenizer.eos_token))["input_ids"]
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


# ---- prefix sharing: one packed row per pair -----------------------------------------------------


@dataclass(frozen=True)
class PackedPair:
    """prompt + chosen + rejected in one row; the rejected tokens attend to the prompt, not the chosen.

    Tokens are TRL's: the prompt is the common prefix of tokenizer(prompt) with both
    tokenizer(prompt + completion + eos), and each completion is the rest of its sequence.
    """

    ids: tuple[int, ...]  # (P + C + R,)
    prompt_len: int  # P
    chosen_len: int  # C
    rejected_len: int  # R

    @property
    def key(self) -> str:
        """Content hash: changes with the text, the tokenizer, or the truncation."""
        head = f"{self.prompt_len},{self.chosen_len},{self.rejected_len}:".encode()
        return hashlib.sha256(head + array("q", self.ids).tobytes()).hexdigest()[:32]

    @property
    def real_tokens(self) -> int:
        """Tokens of the two unpacked sequences (what TRL would process, without padding)."""
        return 2 * self.prompt_len + self.chosen_len + self.rejected_len


def pack_pair(tokenizer, prompt: str, chosen: str, rejected: str) -> PackedPair:
    c = tokenize_completion(tokenizer, prompt, chosen)
    r = tokenize_completion(tokenizer, prompt, rejected)
    P = min(c.prompt_len, r.prompt_len)
    if P == 0:
        raise ValueError(f"prompt tokenizes to nothing: {prompt[:60]!r}")
    ids = tuple(c.ids) + tuple(r.ids[P:])
    return PackedPair(ids, P, len(c.ids) - P, len(r.ids) - P)


def packed_inputs(p: PackedPair, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids (1, T), position_ids (1, T), and the additive attention mask (1, 1, T, T)."""
    P, C, R = p.prompt_len, p.chosen_len, p.rejected_len
    T = P + C + R
    ids = torch.tensor(p.ids, dtype=torch.long)[None]
    positions = torch.cat([torch.arange(P + C), torch.arange(P, P + R)])[None]  # rejected restarts after the prompt
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    allowed[P + C :, P : P + C] = False  # rejected rows must not see the chosen tokens
    mask = torch.zeros(T, T, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return ids, positions, mask[None, None]


def predictor_positions(p: PackedPair) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows whose hidden state predicts each completion token, those target token positions).

    The first token of both completions is predicted by the last prompt token (row P−1)."""
    P, C, R = p.prompt_len, p.chosen_len, p.rejected_len
    chosen_rows = torch.arange(P - 1, P + C - 1)
    rejected_rows = torch.cat([torch.tensor([P - 1]), torch.arange(P + C, P + C + R - 1)])
    targets = torch.arange(P, P + C + R)
    return torch.cat([chosen_rows, rejected_rows]), targets


class PairLogpsModule(torch.nn.Module):
    """Summed log π(chosen|prompt) and log π(rejected|prompt) of one packed pair, shape (2,).

    A module (not a function) so `accelerate`/DDP wraps the whole computation: its forward runs
    the decoder once over the packed row and the LM head over completion positions only, and takes
    log-probs as logit[target] − logsumexp(logits) without a (T, V) log-softmax.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids, positions, mask, rows, targets, chosen_len):
        decoder, head = self.model.get_decoder(), self.model.get_output_embeddings()
        hidden = decoder(input_ids=ids, position_ids=positions, attention_mask=mask).last_hidden_state[0]  # (T, H)
        logits = head(hidden[rows]).float()  # (C + R, V)
        target_ids = ids[0, targets]
        token_logps = logits.gather(-1, target_ids[:, None]).squeeze(-1) - logits.logsumexp(-1)  # (C + R,)
        return torch.stack([token_logps[:chosen_len].sum(), token_logps[chosen_len:].sum()])


def packed_pair_logps(module: torch.nn.Module, p: PackedPair, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    ids, positions, mask = packed_inputs(p, dtype)
    rows, targets = predictor_positions(p)
    device = next(module.parameters()).device
    return module(ids.to(device), positions.to(device), mask.to(device), rows.to(device), targets.to(device),
                  p.chosen_len)
