"""`preftune judge RUN_DIR`: did DPO make the summaries better?

Held-out preference accuracy says the policy *ranks* human pairs; only generation says it *writes*
better summaries. For N held-out posts (never trained on, by the policy or by the reward model) the
tuned model and its base each write a TL;DR (greedy, and sampled at T=0.7), a Bradley–Terry reward
model (`preftune rm train`) scores both, and the judge reports:
- the tuned model's win rate over the base (ties count half) with a 95% Wilson interval;
- mean reward and mean length of each side, and how often the reward model picks the longer one:
  DPO is known to lengthen outputs and "longer wins" already matches 65% of the shipped human labels;
- a length-controlled win rate: a logistic regression of the outcome on the length difference,
  read at equal length (as AlpacaEval's LC win rate, Dubois et al. 2024), and the plain win rate on
  length-matched pairs;
- the win rate of each model against the human reference summary where the data has one
  (policy "ref" in OpenAI's batch18);
- a verdict whose strength follows the reward model's own held-out accuracy: near 50% it says the
  verdict is weak instead of presenting it as a result.
Everything lands in RUN_DIR/judge.json, per-post samples included, so every number can be recomputed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from preftune.config import DataConfig, JudgeConfig, RewardConfig, add_arguments, from_args
from preftune.data.prepare import Pair
from preftune.data.truncate import fit_pair, sequence_length
from preftune.errors import PreftuneError
from preftune.reward import LITERATURE, LITERATURE_NOTE, RM_CONFIG_FILE, RM_EVAL_FILE, measuring_long_texts
from preftune.stats import length_controlled_win_rate, outcomes, win_stats

if TYPE_CHECKING:
    from preftune.generate import Decoding, Generation

JUDGE_FILE = "judge.json"
RM_DEFAULT_NAME = "reward_model"
LENGTH_MATCH = 0.2  # "length-matched": the two summaries' lengths differ by at most 20%
LITERATURE_LOW = 0.63  # the low end of published TL;DR reward-model accuracy (see preftune.reward)
SIDES = ("tuned", "base")


@dataclass(frozen=True)
class Post:
    post_id: str
    prompt: str
    reference: str | None  # the human-written TL;DR (policy "ref"), when the data has one
    pair: Pair  # the post's first held-out pair: how its prompt may be trimmed (body_span, cut, turns)


def held_out_posts(pairs: list[Pair]) -> list[Post]:
    """One Post per post id, in first-seen order, with the human reference summary if any pair has it."""
    first: dict[str, Pair] = {}
    refs: dict[str, str] = {}
    for p in pairs:
        first.setdefault(p.post_id, p)
        for side, text in (("chosen_policy", p.chosen), ("rejected_policy", p.rejected)):
            if p.meta.get(side) == "ref":
                refs.setdefault(p.post_id, text)
    return [Post(pid, p.prompt, refs.get(pid), p) for pid, p in first.items()]


def choose_posts(posts: list[Post], n: int, seed: int) -> list[Post]:
    if n >= len(posts):
        return list(posts)
    return [posts[i] for i in sorted(random.Random(seed).sample(range(len(posts)), n))]


def compare(rewards_a: list[float], rewards_b: list[float], len_a: list[float], len_b: list[float]) -> dict:
    """Side a against side b on the same posts: win rate (ties ½) with CI, length-controlled win
    rates, and how the reward model treats length."""
    results = outcomes(rewards_a, rewards_b)
    matched = [r for r, a, b in zip(results, len_a, len_b) if abs(a - b) <= LENGTH_MATCH * max(a, b, 1)]
    unequal = [(r, a > b) for r, a, b in zip(results, len_a, len_b) if a != b and r != 0.5]
    return {
        **win_stats(results),
        "mean_reward_diff": statistics.fmean(x - y for x, y in zip(rewards_a, rewards_b)) if results else None,
        "a_longer": sum(a > b for a, b in zip(len_a, len_b)),
        "length_controlled_win_rate": length_controlled_win_rate(results, len_a, len_b),
        "length_matched": win_stats(matched),
        # of the pairs with a winner and unequal lengths: how often the longer summary won
        "longer_won": sum((r == 1.0) == a_longer for r, a_longer in unequal) / len(unequal) if unequal else None,
    }


def side_stats(texts: list[str], rewards: list[float], gens: list | None = None) -> dict:
    """Mean reward and length of one side's summaries (and, for generated ones, how they ended)."""
    stats = {
        "mean_reward": statistics.fmean(rewards) if rewards else None,
        "mean_chars": statistics.fmean(len(t.strip()) for t in texts) if texts else None,
        "empty": sum(not t.strip() for t in texts),
    }
    if gens is not None:
        stats["mean_tokens"] = statistics.fmean(g.tokens for g in gens) if gens else None
        stats["ended"] = dict(Counter(g.ended for g in gens))
    return stats


# ---- the judging itself --------------------------------------------------------------------------


class RewardScorer(Protocol):
    """What the judge needs of a reward model (ReferenceRM below; a table of scores in the tests)."""

    def prompt_for(self, post: Post, texts: list[str]) -> str | None: ...  # the prompt all `texts` are scored after
    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]: ...


class Generator(Protocol):
    """A model writing one summary per prompt under a decoding (model_generator below; copies in the tests)."""

    def __call__(self, prompts: list[str], decoding: Decoding) -> list[Generation]: ...


REF = ("reference", "")  # key of the human reference summary among a post's scored texts


def judge_posts(posts: list[Post], tuned: Generator, base: Generator, rm: RewardScorer, decodings: list[Decoding],
                examples: int = 3, log=print) -> dict:
    """Generate with both sides under each decoding, score everything with `rm`, compare."""
    prompts = [p.prompt for p in posts]
    gens = {(side, d.name): generator(prompts, d)  # one model at a time, every decoding
            for side, generator in (("tuned", tuned), ("base", base)) for d in decodings}
    keep, reward = _score_all(posts, gens, rm, log)
    out: dict = {"posts": len(keep), "posts_skipped": len(posts) - len(keep),
                 "posts_with_reference": sum(posts[i].reference is not None for i in keep), "decodings": {}}
    refs = [i for i in keep if posts[i].reference]
    if refs:
        out["reference"] = side_stats([posts[i].reference for i in refs], [reward[(i, REF)] for i in refs])
    samples = []
    for d in decodings:
        out["decodings"][d.name] = _decoding_result(posts, keep, gens, reward, d.name)
        samples += [{"post_id": posts[i].post_id, "decoding": d.name,
                     "tuned": gens[("tuned", d.name)][i].text, "base": gens[("base", d.name)][i].text,
                     "reward_tuned": reward[(i, ("tuned", d.name))], "reward_base": reward[(i, ("base", d.name))],
                     "reference": posts[i].reference, "reward_reference": reward.get((i, REF))} for i in keep]
    head = {posts[i].post_id: _head(posts[i].prompt) for i in keep}
    out["examples"] = [dict(s, post=head[s["post_id"]]) for s in samples[:examples]]
    out["samples"] = samples
    return out


def _score_all(posts: list[Post], gens: dict, rm: RewardScorer, log) -> tuple[list[int], dict]:
    """(indices of the posts scored, {(post index, (side, decoding) | REF): reward}). Every text of a
    post is scored after one shared prompt, fitted once, so all sides read the same context."""
    texts_of = [[g[i].text for g in gens.values()] + ([p.reference] if p.reference else [])
                for i, p in enumerate(posts)]
    rm_prompts = [rm.prompt_for(p, texts) for p, texts in zip(posts, texts_of)]
    keep = [i for i, rp in enumerate(rm_prompts) if rp is not None]
    if len(keep) < len(posts):
        log(f"judge: {len(posts) - len(keep)} post(s) skipped: a summary alone exceeds the reward model's max_length")
    if not keep:
        raise PreftuneError("no post fits the reward model's max_length")
    flat = [(i, key) for i in keep for key in list(gens) + ([REF] if posts[i].reference else [])]
    texts = [posts[i].reference if key == REF else gens[key][i].text for i, key in flat]
    return keep, dict(zip(flat, rm([rm_prompts[i] for i, _ in flat], texts)))


def _decoding_result(posts: list[Post], keep: list[int], gens: dict, reward: dict, name: str) -> dict:
    """Both sides' statistics under one decoding, tuned vs base, and each vs the human reference."""
    g = {side: [gens[(side, name)][i] for i in keep] for side in SIDES}
    r = {side: [reward[(i, (side, name))] for i in keep] for side in SIDES}
    length = {side: [len(x.text.strip()) for x in g[side]] for side in SIDES}
    res = {side: side_stats([x.text for x in g[side]], r[side], g[side]) for side in SIDES}
    res["tuned_vs_base"] = compare(r["tuned"], r["base"], length["tuned"], length["base"])
    at = [k for k, i in enumerate(keep) if posts[i].reference]  # positions within `keep`
    if at:
        ref_r = [reward[(keep[k], REF)] for k in at]
        ref_len = [len(posts[keep[k]].reference.strip()) for k in at]
        for side in SIDES:
            res[f"{side}_vs_reference"] = compare([r[side][k] for k in at], ref_r, [length[side][k] for k in at], ref_len)
    return res


def _head(prompt: str) -> str:
    """SUBREDDIT and TITLE lines of a TL;DR prompt: enough to recognise the post."""
    return "\n".join(prompt.splitlines()[:2])


# ---- verdict -------------------------------------------------------------------------------------


def rm_strength(rm_eval: dict) -> tuple[str, str]:
    """How far the reward model's verdicts can be trusted, from its held-out accuracy: against chance,
    against "the longer summary wins" on the same pairs, and against the published range."""
    acc, (lo, hi), n = rm_eval["accuracy"], rm_eval["accuracy_ci95"], rm_eval["n"]
    said = f"the reward model ranks {acc:.1%} of {n} held-out human pairs correctly (95% CI {lo:.1%}–{hi:.1%}; " \
           f"{LITERATURE_NOTE})"
    if lo <= 0.5 or acc < 0.55:
        return "weak", f"WEAK VERDICT: {said}. That is too close to chance for its preferences to say which " \
                       "summaries are better; read the numbers below as description, not evidence."
    longer, picks = rm_eval.get("longer_wins_baseline"), rm_eval.get("rm_picks_longer")
    if longer is not None and lo <= longer:
        return "weak", f"WEAK VERDICT: {said}, but 'the longer summary wins' scores {longer:.1%} on the same " \
                       f"pairs and the reward model puts the longer summary first in {_pct(picks)} of them: it " \
                       "cannot be told apart from a length counter. Its raw win rate mostly says which side wrote " \
                       "longer summaries; the length-controlled and length-matched win rates show what is left " \
                       "without length, read with this judge's weakness in mind."
    if acc < LITERATURE_LOW:
        return "moderate", f"{said}: better than chance and than length alone, but below published TL;DR reward " \
                           "models, so small win-rate differences are within its error."
    return "ok", f"{said}: in the published range, and better than length alone ({longer:.1%})."


def decoding_verdict(name: str, res: dict) -> str:
    tb = res["tuned_vs_base"]
    lo, hi = tb["ci95"]
    if lo > 0.5:
        what = "the tuned model's summaries score higher than the base model's"
    elif hi < 0.5:
        what = "the base model's summaries score higher than the tuned model's"
    else:
        what = "no detectable difference between tuned and base"
    longer = res["tuned"]["mean_chars"] - res["base"]["mean_chars"]
    lc = tb["length_controlled_win_rate"]
    return (f"{name}: {what} (win rate {tb['win_rate']:.1%}, 95% CI {lo:.1%}–{hi:.1%}, n={tb['n']}); tuned "
            f"summaries are {longer:+.0f} characters longer on average; length-controlled win rate {lc:.1%}.")


# ---- a run folder --------------------------------------------------------------------------------


class ReferenceRM:
    """A trained reward model folder as the judge's scorer: fits each post's prompt to the RM's
    max_length (trimming the post, keeping every summary whole), then scores in batches."""

    def __init__(self, folder: Path, batch_size: int):
        from preftune.reward import load_reward_model

        self.model, self.tokenizer = load_reward_model(str(folder))
        self.max_length = json.loads((folder / RM_CONFIG_FILE).read_text())["max_length"]
        self.batch_size = batch_size

    def prompt_for(self, post: Post, texts: list[str]) -> str | None:
        """The post's prompt, its body trimmed just enough that every one of `texts` fits after it."""
        pair = post.pair
        with measuring_long_texts(self.tokenizer):
            while True:
                lengths = [sequence_length(self.tokenizer, pair.prompt, t) for t in texts]
                if max(lengths) <= self.max_length:
                    return pair.prompt
                longest = texts[lengths.index(max(lengths))]
                fitted = fit_pair(self.tokenizer, replace(pair, chosen=longest, rejected=longest), self.max_length)
                if fitted is None or fitted.prompt == pair.prompt:
                    return None
                pair = fitted

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        from preftune.reward import score

        return score(self.model, self.tokenizer, prompts, completions, self.batch_size, "judge reward").tolist()


def model_generator(path: str, batch_size: int, label: str) -> Generator:
    """A Generator over a causal LM folder, loaded on first use and kept for later decodings."""
    from preftune.generate import generate
    from preftune.models import load_model, load_tokenizer

    loaded: list = []

    def run(prompts: list[str], decoding) -> list:
        if not loaded:
            loaded.extend([load_model(path), load_tokenizer(path)])
        return generate(loaded[0], loaded[1], prompts, decoding, batch_size, f"generate {label} {decoding.name}")

    return run


def load_posts(run_dir: Path, run: dict, cfg: JudgeConfig, log) -> tuple[list[Post], str]:
    from preftune.data.prepare import prepare, read_jsonl
    from preftune.evaluate import EVAL_PAIRS_FILE

    if not cfg.full_split:
        return held_out_posts(read_jsonl(run_dir / EVAL_PAIRS_FILE)), EVAL_PAIRS_FILE
    from preftune.models import load_tokenizer
    from preftune.data.fit import fit

    tokenizer = load_tokenizer(str(run_dir))  # also renders chat formats, as the run's data was
    held = prepare(DataConfig(**run["data"]), log, tokenizer=tokenizer).eval
    held, _ = fit(tokenizer, held, run["train"]["max_length"], "judge")
    return held_out_posts(held), "held-out split"


def judge_run(run_dir: Path, cfg: JudgeConfig, log=print) -> dict:
    from preftune.evaluate import CONFIG_FILE
    from preftune.generate import Decoding
    from preftune.models import resolve_model

    if not (run_dir / CONFIG_FILE).is_file():
        raise PreftuneError(f"{run_dir} is not a preftune run folder (no {CONFIG_FILE})")
    run = json.loads((run_dir / CONFIG_FILE).read_text())
    rm_dir = Path(cfg.rm) if cfg.rm else run_dir.parent / RM_DEFAULT_NAME
    if not (rm_dir / RM_CONFIG_FILE).is_file():
        raise PreftuneError(f"no reward model at {rm_dir} (no {RM_CONFIG_FILE}): train one with "
                            f"`preftune rm train --output-dir {run_dir.parent}`, or pass --rm RM_DIR")
    rm_config = json.loads((rm_dir / RM_CONFIG_FILE).read_text())
    rm_eval = json.loads((rm_dir / RM_EVAL_FILE).read_text())
    base_spec = cfg.base or run["reference_model"]
    base = resolve_model(base_spec)
    log(f"judge: {run_dir.name} vs base {base_spec} ← {base.source}; reward model {rm_dir}")

    posts, source = load_posts(run_dir, run, cfg, log)
    seen = set(rm_config["train_post_ids"]) & {p.post_id for p in posts}
    if seen:
        raise PreftuneError(f"the reward model at {rm_dir} was trained on {len(seen)} of the posts to judge "
                            f"(e.g. {sorted(seen)[0]}): train it on the same data, --fraction, --eval-fraction and "
                            "--seed as the run so the held-out posts are held out from both")
    posts = choose_posts(posts, cfg.n, cfg.seed)
    decodings = ([Decoding(0.0, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)] if cfg.greedy else []) + \
        ([Decoding(cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)] if cfg.temperature > 0 else [])
    log(f"judge: {len(posts)} held-out posts from {source} ({sum(p.reference is not None for p in posts)} with a "
        f"human reference summary); decodings: {', '.join(d.name for d in decodings)}")

    result = judge_posts(posts, model_generator(str(run_dir), cfg.batch_size, "tuned"),
                         model_generator(base.path, cfg.batch_size, "base"), ReferenceRM(rm_dir, cfg.batch_size),
                         decodings, cfg.examples, log)
    strength, rm_said = rm_strength(rm_eval)
    report = {
        "run": run_dir.name,
        "base_model": base_spec,
        "base_source": base.source,
        "reward_model": str(rm_dir),
        "reward_model_base": rm_config["base_model"],
        "rm_accuracy": rm_eval["accuracy"],
        "rm_accuracy_ci95": rm_eval["accuracy_ci95"],
        "rm_eval_pairs": rm_eval["n"],
        "rm_longer_wins_baseline": rm_eval["longer_wins_baseline"],
        "rm_picks_longer": rm_eval.get("rm_picks_longer"),
        "literature": LITERATURE,
        "verdict_strength": strength,
        "verdict": [rm_said] + [decoding_verdict(name, res) for name, res in result["decodings"].items()],
        "posts_from": source,
        "config": asdict(cfg),
        **result,
    }
    tmp = run_dir / (JUDGE_FILE + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(run_dir / JUDGE_FILE)
    log(format_report(report))
    log(f"judge: wrote {run_dir / JUDGE_FILE}")
    return report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _ci(c) -> str:
    return "" if not c else f" [{c[0]:.1%}, {c[1]:.1%}]"


def format_report(r: dict) -> str:
    lines = [f"judged: {r['run']} vs {r['base_model']} on {r['posts']} held-out posts "
             f"({r['posts_with_reference']} with a human reference); reward model {r['reward_model_base']}", ""]
    lines += [f"  {v}" for v in r["verdict"]] + [""]
    for name, res in r["decodings"].items():
        tb, lm, t, b = res["tuned_vs_base"], res["tuned_vs_base"]["length_matched"], res["tuned"], res["base"]
        rows = [
            (f"[{name}]", f"{'tuned':>10}  {'base':>10}"),
            ("mean reward", f"{t['mean_reward']:>10.3f}  {b['mean_reward']:>10.3f}"),
            ("mean length (chars)", f"{t['mean_chars']:>10.1f}  {b['mean_chars']:>10.1f}"),
            ("mean length (tokens)", f"{t['mean_tokens']:>10.1f}  {b['mean_tokens']:>10.1f}"),
            ("tuned win rate over base", f"{_pct(tb['win_rate'])}{_ci(tb['ci95'])}  "
                                         f"({tb['wins']} wins, {tb['ties']} ties, {tb['losses']} losses)"),
            ("length-controlled win rate", f"{_pct(tb['length_controlled_win_rate'])}  "
                                           f"(tuned longer in {tb['a_longer']}/{tb['n']})"),
            ("win rate, length-matched pairs", f"{_pct(lm['win_rate'])}{_ci(lm['ci95'])}  (n={lm['n']})"),
            ("the longer summary won", _pct(tb["longer_won"])),
        ]
        rows += [(f"{side} win rate over human ref", f"{_pct(vr['win_rate'])}{_ci(vr['ci95'])}  (n={vr['n']})")
                 for side in SIDES if (vr := res.get(f"{side}_vs_reference"))]
        lines += [f"    {label:<32}{value}" for label, value in rows] + [""]
    for ex in r["examples"]:
        lines.append(f"  example ({ex['decoding']}): {ex['post'].splitlines()[-1][:100]}")
        lines.append(f"    tuned ({ex['reward_tuned']:+.3f}): {ex['tuned'].strip()[:200]}")
        lines.append(f"    base  ({ex['reward_base']:+.3f}): {ex['base'].strip()[:200]}")
        if ex["reference"]:
            lines.append(f"    human ({ex['reward_reference']:+.3f}): {ex['reference'].strip()[:200]}")
    return "\n".join(lines)


# ---- CLI -----------------------------------------------------------------------------------------


def cmd_rm_train(ns: argparse.Namespace) -> None:
    from preftune.reward import train_reward_model

    train_reward_model(from_args(DataConfig, ns), from_args(RewardConfig, ns))


def cmd_judge(ns: argparse.Namespace) -> None:
    judge_run(Path(ns.run_dir), from_args(JudgeConfig, ns))


def add_cli(verbs) -> None:
    """`preftune rm train` and `preftune judge`."""
    rm = verbs.add_parser("rm", help="a Bradley–Terry reward model of the human preferences")
    rm_verbs = rm.add_subparsers(dest="rm_verb", required=True, metavar="ACTION")
    tr = rm_verbs.add_parser("train", help="train a reward model on the same pairs and split as DPO → "
                                           "OUTPUT/reward_model/ with held-out pairwise accuracy")
    add_arguments(tr, DataConfig)
    add_arguments(tr, RewardConfig)
    tr.set_defaults(func=cmd_rm_train)

    jd = verbs.add_parser("judge", help="generate summaries of held-out posts with the tuned and the base model, "
                                        "score them with the reward model, report win rates → RUN_DIR/judge.json")
    jd.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `preftune train`")
    add_arguments(jd, JudgeConfig)
    jd.set_defaults(func=cmd_judge)


def judge_summary(judge: dict) -> dict:
    """The headline of a judge.json for the leaderboard and the model card: the greedy tuned-vs-base
    win rate, its 95% CI, the length-controlled win rate, n, and whether the verdict is weak."""
    greedy = (judge or {}).get("decodings", {}).get("greedy", {}).get("tuned_vs_base", {})
    return {"judge_win_rate": greedy.get("win_rate"), "judge_win_rate_ci95": greedy.get("ci95"),
            "judge_length_controlled_win_rate": greedy.get("length_controlled_win_rate"),
            "judge_n": greedy.get("n"), "judge_verdict_strength": (judge or {}).get("verdict_strength"),
            "judge_rm_accuracy": (judge or {}).get("rm_accuracy")}
