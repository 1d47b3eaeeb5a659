"""Sequence log-probs of completions, tokenized exactly as TRL's DPOTrainer does.

`tokenize_completion` mirrors TRL 1.16: ids = tokenizer(prompt + completion + eos), and the
completion starts where those ids diverge from tokenizer(prompt). `completion_logps` runs the
decoder once and sends only completion positions through the LM head (on CPU the 49k-vocab head
over every prompt position costs more than the rest of the forward pass).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from preftune.config import DEFAULT_PACK_TOKENS
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
    device = next(model.parameters()).device  # the inputs follow the model (a GPU's, or the CPU)
    ids, attn = ids.to(device), attn.to(device)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    hidden = decoder(input_ids=ids, attention_mask=attn).last_hidden_state  # (B, T, H)
    rows, cols = predicts.to(device).nonzero(as_tuple=True)
    logits = head(hidden[rows, cols]).float()  # (N, V): completion positions only
    targets = ids[rows, cols + 1]
    token_logps = logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)  # (N,)
    sums = torch.zeros(len(batch), dtype=token_logps.dtype, device=device).index_add_(0, rows, token_logps)
    return sums.cpu(), predicts.sum(-1)


# ---- prefix sharing: a pair is its prompt once, then both completions -----------------------------


@dataclass(frozen=True)
class PackedPair:
    """prompt + chosen + rejected in one segment; the rejected tokens attend to the prompt, not the chosen.

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
        """Tokens of the unpacked sequences (what TRL would process, without padding): prompt + chosen, and
        prompt + rejected for a pair (an SFT row, `pack_completion`, has no rejected sequence)."""
        return self.prompt_len + self.chosen_len + (self.prompt_len + self.rejected_len if self.rejected_len else 0)

    def __len__(self) -> int:
        return len(self.ids)


def pack_pair(tokenizer, prompt: str, chosen: str, rejected: str) -> PackedPair:
    c = tokenize_completion(tokenizer, prompt, chosen)
    r = tokenize_completion(tokenizer, prompt, rejected)
    P = min(c.prompt_len, r.prompt_len)
    if P == 0:
        raise ValueError(f"prompt tokenizes to nothing: {prompt[:60]!r}")
    ids = tuple(c.ids) + tuple(r.ids[P:])
    return PackedPair(ids, P, len(c.ids) - P, len(r.ids) - P)


def pack_completion(tokenizer, prompt: str, completion: str) -> PackedPair:
    """One SFT row as a segment `[prompt | completion + EOS]` with no rejected part (R = 0): tokenized as
    TRL's SFTTrainer does for prompt/completion rows (the completion, EOS included, is what follows the
    common prefix of tokenizer(prompt) and tokenizer(prompt + completion + EOS)), so the completion
    tokens are exactly those its completion-only loss covers. Packing, attention and log-probs are the
    pairs' own: a row of these is causal per segment."""
    t = tokenize_completion(tokenizer, prompt, completion)
    if t.prompt_len == 0:
        raise ValueError(f"prompt tokenizes to nothing: {prompt[:60]!r}")
    return PackedPair(tuple(t.ids), t.prompt_len, len(t.ids) - t.prompt_len, 0)


def pair_allowed(P: int, C: int, R: int) -> torch.Tensor:
    """(T, T) bool, T = P + C + R: the keys each token of a pair sees. Causal, except that rejected
    tokens do not see the chosen ones: every token sees exactly its context in TRL's two sequences."""
    allowed = torch.ones(P + C + R, P + C + R, dtype=torch.bool).tril()
    allowed[P + C :, P : P + C] = False
    return allowed


def pair_positions(P: int, C: int, R: int) -> torch.Tensor:
    """(T,) position ids: 0..P+C−1 for prompt and chosen, P..P+R−1 for rejected (restarts after the prompt)."""
    return torch.cat([torch.arange(P + C), torch.arange(P, P + R)])


def predictor_positions(p: PackedPair) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows whose hidden state predicts each completion token, those target token positions).

    The first token of both completions is predicted by the last prompt token (row P−1); a segment
    without a rejected completion (R = 0, an SFT row) has the chosen rows only."""
    P, C, R = p.prompt_len, p.chosen_len, p.rejected_len
    chosen_rows = torch.arange(P - 1, P + C - 1)
    rejected_rows = torch.cat([torch.tensor([P - 1]), torch.arange(P + C, P + C + R - 1)]) if R else chosen_rows[:0]
    targets = torch.arange(P, P + C + R)
    return torch.cat([chosen_rows, rejected_rows]), targets


# ---- several pairs per forward ------------------------------------------------------------------


@dataclass(frozen=True)
class PairSpan:
    """Where one pair sits in a packed row: its tokens are [offset, offset + P + C + R)."""

    offset: int
    prompt_len: int
    chosen_len: int
    rejected_len: int

    @property
    def end(self) -> int:
        return self.offset + self.prompt_len + self.chosen_len + self.rejected_len


@dataclass(frozen=True)
class PackedRow:
    """Several pairs in one row, [p₁ c₁ r₁ | p₂ c₂ r₂ | …]: positions restart per pair and no token
    sees another pair, so each token's context — and each pair's log-probs — are those it has alone."""

    ids: torch.Tensor  # (1, T)
    positions: torch.Tensor  # (1, T), restarting per pair
    spans: tuple[PairSpan, ...]
    rows: torch.Tensor  # (N,) rows whose hidden state predicts a completion token, N = Σ (C + R)
    targets: torch.Tensor  # (N,) the positions of those tokens
    slots: torch.Tensor  # (N,) 2j for pair j's chosen tokens, 2j + 1 for its rejected ones

    def __len__(self) -> int:
        return len(self.spans)

    def allowed(self) -> torch.Tensor:
        """(T, T) bool: block-diagonal, one `pair_allowed` block per pair."""
        T = self.ids.shape[1]
        allowed = torch.zeros(T, T, dtype=torch.bool)
        for s in self.spans:
            allowed[s.offset : s.end, s.offset : s.end] = pair_allowed(s.prompt_len, s.chosen_len, s.rejected_len)
        return allowed


def pack_row(pairs: Sequence[PackedPair]) -> PackedRow:
    spans, rows, targets, slots, offset = [], [], [], [], 0
    for j, p in enumerate(pairs):
        spans.append(PairSpan(offset, p.prompt_len, p.chosen_len, p.rejected_len))
        r, t = predictor_positions(p)
        rows.append(r + offset)
        targets.append(t + offset)
        slots.append(torch.tensor([2 * j] * p.chosen_len + [2 * j + 1] * p.rejected_len, dtype=torch.long))
        offset += len(p)
    ids = torch.tensor([i for p in pairs for i in p.ids], dtype=torch.long)[None]
    positions = torch.cat([pair_positions(p.prompt_len, p.chosen_len, p.rejected_len) for p in pairs])[None]
    return PackedRow(ids, positions, tuple(spans), torch.cat(rows), torch.cat(targets), torch.cat(slots))


def ld_token_weights(chosen_len: int, rejected_len: int, alpha: float) -> torch.Tensor:
    """(C + R,) LD-DPO weights of one pair's completion tokens, chosen then rejected (a row's order):
    1 on the first min(C, R) tokens of each, α on the longer one's tail (losses.ld_logps, per pair)."""
    shared = min(chosen_len, rejected_len)
    weights = torch.ones(chosen_len + rejected_len)
    weights[shared:chosen_len] = alpha
    weights[chosen_len + shared :] = alpha
    return weights


def row_weights(row: "PackedRow", ld_alpha: float | None) -> torch.Tensor | None:
    """(N,) LD weights of a row's completion tokens, or None (plain sums) when ld_alpha is None."""
    if ld_alpha is None:
        return None
    return torch.cat([ld_token_weights(s.chosen_len, s.rejected_len, ld_alpha) for s in row.spans])


def default_pack_tokens(pack_tokens: int | None = None) -> int:
    """--pack-tokens, or this device's default (config.DEFAULT_PACK_TOKENS) when it is None."""
    if pack_tokens is not None:
        return pack_tokens
    return DEFAULT_PACK_TOKENS["cuda" if torch.cuda.is_available() else "cpu"]


def plan_rows(lengths: Sequence[int], pack_tokens: int) -> list[list[int]]:
    """Group items (by index) into rows of at most `pack_tokens` tokens: first-fit decreasing, so few
    rows; a longer item gets a row of its own; 0: one item per row. Deterministic: a pure function of
    the lengths, so a resumed run packs the same way."""
    if pack_tokens <= 0:
        return [[i] for i in range(len(lengths))]
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        fit = next((r for r, free in enumerate(room) if lengths[i] <= free), None)
        if fit is None:
            rows.append([i])
            room.append(pack_tokens - lengths[i])
        else:
            rows[fit].append(i)
            room[fit] -= lengths[i]
    return rows


# ---- attention over packed pairs ------------------------------------------------------------------
# transformers (≥ 5) routes every attention layer of models that declare `_supports_attention_backend`
# through a registry of attention functions keyed by `config._attn_implementation`, and passes extra
# forward kwargs down to it. Registering one that knows the pair spans gives each pair its own
# attention: a causal SDPA over prompt + chosen (no mask, the fast kernel) and a small masked SDPA of
# the rejected queries over prompt + rejected keys. Nothing is computed across pairs, so a row of
# n pairs costs n pairs' attention, not (Σ T)². Models without that registry get the same pattern as a
# block-diagonal additive mask (`PackedRow.allowed`), which any attention implementation accepts.

PAIR_ATTENTION = "preftune_pairs"


def _rejected_keys(x: torch.Tensor, s: PairSpan) -> torch.Tensor:
    """(B, H, P + R, D): the prompt's and the rejected completion's keys (or values) of one pair."""
    prompt_end, chosen_end = s.offset + s.prompt_len, s.offset + s.prompt_len + s.chosen_len
    return torch.cat([x[:, :, s.offset : prompt_end], x[:, :, chosen_end : s.end]], dim=2)


def pair_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                   pair_spans: tuple[PairSpan, ...] | None = None, **kwargs):
    """An attention function for transformers' registry: (B, H, T, D) in, (B, T, H, D) out, per pair."""
    if pair_spans is None:
        raise RuntimeError(f"attention '{PAIR_ATTENTION}' runs only inside PairLogpsModule (it needs pair_spans)")
    sdpa = torch.nn.functional.scaled_dot_product_attention
    gqa = query.shape[1] != key.shape[1]  # grouped-query heads: SDPA repeats k/v itself
    outs = []
    for s in pair_spans:
        chosen_end = s.offset + s.prompt_len + s.chosen_len
        outs.append(sdpa(query[:, :, s.offset : chosen_end], key[:, :, s.offset : chosen_end],
                         value[:, :, s.offset : chosen_end], dropout_p=dropout, scale=scaling, is_causal=True,
                         enable_gqa=gqa))
        if s.rejected_len:
            P, R = s.prompt_len, s.rejected_len
            mask = torch.ones(R, P + R, dtype=torch.bool, device=query.device)
            mask[:, P:] = torch.ones(R, R, dtype=torch.bool, device=query.device).tril()
            outs.append(sdpa(query[:, :, chosen_end : s.end], _rejected_keys(key, s), _rejected_keys(value, s),
                             attn_mask=mask, dropout_p=dropout, scale=scaling, enable_gqa=gqa))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _register_pair_attention() -> bool:
    try:
        from transformers import AttentionInterface
    except ImportError:  # an older transformers: the additive-mask path only
        return False
    AttentionInterface.register(PAIR_ATTENTION, pair_attention)
    return True


HAS_ATTENTION_REGISTRY = _register_pair_attention()


def supports_pair_attention(model) -> bool:
    """Whether the model's attention layers go through transformers' attention registry."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    return HAS_ATTENTION_REGISTRY and bool(getattr(decoder, "_supports_attention_backend", False))


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(1, 1, T, T) additive mask in the compute dtype: 0 where allowed, the dtype's lowest value elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


class PairLogpsModule(torch.nn.Module):
    """Summed log π(chosen|prompt) and log π(rejected|prompt) of each pair of a packed row, (n, 2).

    A module (not a function) so `accelerate`/DDP/FSDP wrap the whole computation: its forward runs
    the model once over the row with the LM head over completion positions only (`logits_to_keep`),
    and takes log-probs as logit[target] − logsumexp(logits) without a (T, V) log-softmax.

    attention: "pairs" (per-pair attention through transformers' registry; the default where the
    model supports it) or "mask" (a block-diagonal additive mask in `dtype`, for any model). With
    "pairs" the model's attention implementation is switched while the module holds it: call
    `release()` to get the model back as it was (before saving or generating with it).
    """

    def __init__(self, model, attention: str | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        if attention not in (None, "pairs", "mask"):
            raise ValueError(f"attention must be 'pairs' or 'mask', got {attention!r}")
        self.model, self.dtype = model, dtype
        self.attention = attention or ("pairs" if supports_pair_attention(model) else "mask")
        if self.attention == "pairs" and model.config._attn_implementation != PAIR_ATTENTION:
            model._preftune_attention = model.config._attn_implementation  # on the model: never saved
            model.config._attn_implementation = PAIR_ATTENTION

    def release(self):
        """The model, with its own attention implementation back."""
        if self.model.config._attn_implementation == PAIR_ATTENTION:
            self.model.config._attn_implementation = self.model._preftune_attention
        return self.model

    def forward(self, ids, positions, rows, targets, slots, n_pairs: int, spans: tuple[PairSpan, ...],
                mask=None, weights=None, per_token: bool = False, top1: bool = False):
        """(n, 2) sums of the completion tokens' log-probs, each token times `weights` (N,) when given
        (LD-DPO); per_token: the (N,) token log-probs themselves, in the row's order, and with top1 also
        (N,) whether each token is the most likely one (SFT's token accuracy)."""
        extra = {"pair_spans": spans} if mask is None else {"attention_mask": mask}
        with torch.autocast(ids.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            # the root forward (FSDP needs it), with the LM head on the completion positions only
            out = self.model(input_ids=ids, position_ids=positions, logits_to_keep=rows, use_cache=False, **extra)
            logits = out.logits[0].float()  # (N, V)
        token_logps = logits.gather(-1, ids[0, targets][:, None]).squeeze(-1) - logits.logsumexp(-1)  # (N,)
        if per_token:
            return (token_logps, logits.argmax(-1) == ids[0, targets]) if top1 else token_logps
        return slot_sums(token_logps if weights is None else token_logps * weights, slots, n_pairs)


def slot_sums(token_logps: torch.Tensor, slots: torch.Tensor, n_pairs: int) -> torch.Tensor:
    """(n, 2) per-pair (chosen, rejected) sums of (N,) token values, by their slots (2j, 2j + 1)."""
    sums = torch.zeros(2 * n_pairs, dtype=token_logps.dtype, device=token_logps.device)
    return sums.index_add(0, slots, token_logps).view(n_pairs, 2)


def row_logps(module: torch.nn.Module, row: PackedRow, ld_alpha: float | None = None,
              per_token: bool = False, top1: bool = False):
    """(n, 2) summed log-probs of (chosen, rejected) for the n pairs of a packed row, LD-weighted with
    `ld_alpha` (LD-DPO) when given; per_token: the (N,) token log-probs instead (`slot_sums` sums
    them), with top1 paired with (N,) bool "the token is the argmax". `module` is a PairLogpsModule,
    possibly wrapped (DDP, FSDP)."""
    inner = getattr(module, "module", module)  # the PairLogpsModule inside a DDP wrapper
    device = next(module.parameters()).device
    mask = additive_mask(row.allowed(), inner.dtype).to(device) if inner.attention == "mask" else None
    weights = row_weights(row, ld_alpha)
    return module(row.ids.to(device), row.positions.to(device), row.rows.to(device), row.targets.to(device),
                  row.slots.to(device), len(row), row.spans, mask,
                  weights=None if weights is None else weights.to(device), per_token=per_token, top1=top1)


def packed_pair_logps(module: torch.nn.Module, p: PackedPair) -> torch.Tensor:
    """(2,) summed log-probs of (chosen, rejected) of one pair: a row of one."""
    return row_logps(module, pack_row([p]))[0]


@torch.no_grad()
def pairs_logps(module: PairLogpsModule, pairs: Sequence[PackedPair], pack_tokens: int, desc: str | None = None,
                ld_alpha: float | None = None) -> torch.Tensor:
    """(N, 2) log-probs of many pairs without gradients (reference pass, evaluation), `pack_tokens` per
    forward; LD-weighted with `ld_alpha` when given."""
    out = torch.zeros(len(pairs), 2)
    plan = plan_rows([len(p) for p in pairs], pack_tokens)
    with tqdm(total=len(pairs), desc=desc, unit="pair", leave=False, disable=desc is None) as bar:
        for members in plan:
            out[members] = row_logps(module, pack_row([pairs[i] for i in members]), ld_alpha).float().cpu()
            bar.update(len(members))
    return out
