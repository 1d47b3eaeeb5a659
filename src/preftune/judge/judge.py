"""`preftune judge RUN_DIR`: did DPO make the summaries better?

For N held-out posts the tuned model and its base each write a TL;DR (greedy, and sampled at T=0.7) with
judge/generate.py's decoder; a reward model (`preftune rm train`) scores both. Reported: the tuned win
rate over the base with its interval, mean reward and length of each side, what length does to it
(win rates by length stratum, length-balanced, length-controlled, length-matched), each side against
the human reference, and a verdict whose strength follows the reward model's length-balanced accuracy.
Everything lands in RUN_DIR/judge.json, per-post samples included. Details: docs/reward-and-judge.md.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from preftune import fmt
from preftune.config import JudgeConfig, add_arguments, from_args
from preftune.data.prepare import Pair
from preftune.data.truncate import fit_pair, sequence_length
from preftune.errors import PreftuneError
from preftune.judge.reward import (
    LITERATURE,
    RewardModelFolder,
    measuring_long_texts,
    open_reward_model,
    rm_strength,
)
from preftune.runs.folder import (
    JUDGE_FILE,
    JUDGE_TEST_FILE,
    atomic_write_json,
    pairs_file,
)
from preftune.runs.results import Run, open_run
from preftune.stats import (
    bootstrap_interval,
    length_controlled_win_rate,
    length_strata,
    outcomes,
    win_stats,
)

if TYPE_CHECKING:
    from preftune.judge.generate import Decoding, Generation

logger = logging.getLogger(__name__)

RM_DEFAULT_NAME = "reward_model"
LENGTH_MATCH = 0.2  # "length-matched": the two summaries' lengths differ by at most 20%
SIDES = ("tuned", "base")
LENGTH_UNIT = "tokens of the policy's tokenizer"
TokenCounter = Callable[[list[str]], list[int]]


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


def _lc_rows(rows: list[tuple[float, float, float]]) -> float | None:
    """The length-controlled win rate of (outcome, len_a, len_b) rows (for the bootstrap)."""
    if not rows:
        return None
    results, len_a, len_b = zip(*rows)
    return length_controlled_win_rate(list(results), list(len_a), list(len_b))


def by_length(results: list[float], len_a: list[float], len_b: list[float]) -> dict:
    """Win rate of side a where it is longer / shorter / as long, and the length-balanced win rate."""
    s = length_strata(results, len_a, len_b)
    return {"a_longer": s["chosen_longer"], "a_shorter": s["chosen_shorter"], "equal_length": s["equal_length"],
            "length_balanced_win_rate": s["length_balanced_accuracy"], "length_balanced_ci95": s["length_balanced_ci95"]}


def compare(rewards_a: list[float], rewards_b: list[float], len_a: list[float], len_b: list[float],
            groups: list | None = None, reps: int = 1000) -> dict:
    """Side a against side b on the same posts: win rate (ties ½) with CI, by length stratum and
    length-balanced, length-controlled (with a bootstrap CI over `groups`, the posts) and length-matched
    win rates, and how the reward model treats length. Lengths in tokens."""
    results = outcomes(rewards_a, rewards_b)
    groups = list(range(len(results))) if groups is None else groups
    matched = [r for r, a, b in zip(results, len_a, len_b) if abs(a - b) <= LENGTH_MATCH * max(a, b, 1)]
    unequal = [(r, a > b) for r, a, b in zip(results, len_a, len_b) if a != b and r != 0.5]
    rows = list(zip(results, len_a, len_b))
    return {
        **win_stats(results),
        "mean_reward_diff": statistics.fmean(x - y for x, y in zip(rewards_a, rewards_b)) if results else None,
        "a_longer": sum(a > b for a, b in zip(len_a, len_b)),
        "length_controlled_win_rate": length_controlled_win_rate(results, len_a, len_b),
        "length_controlled_ci95": bootstrap_interval(rows, groups, _lc_rows, reps=reps),
        "length_matched": win_stats(matched),
        "by_length": by_length(results, len_a, len_b),
        # of the pairs with a winner and unequal lengths: how often the longer summary won
        "longer_won": sum((r == 1.0) == a_longer for r, a_longer in unequal) / len(unequal) if unequal else None,
    }


def side_stats(texts: list[str], rewards: list[float], lengths: list[int], gens: list | None = None) -> dict:
    """Mean reward and length of one side's summaries (and, for generated ones, how they ended)."""
    stats = {
        "mean_reward": statistics.fmean(rewards) if rewards else None,
        "mean_chars": statistics.fmean(len(t.strip()) for t in texts) if texts else None,
        "mean_tokens": statistics.fmean(lengths) if lengths else None,
        "empty": sum(not t.strip() for t in texts),
    }
    if gens is not None:  # as generated: tokens kept (after the line cut), and how each summary ended
        stats["mean_generated_tokens"] = statistics.fmean(g.tokens for g in gens) if gens else None
        stats["ended"] = dict(Counter(g.ended for g in gens))
    return stats


# ---- the judging itself --------------------------------------------------------------------------


class RewardScorer(Protocol):
    """What the judge needs of a reward model (ReferenceRM below; a table of scores in the tests)."""

    def prompt_for(self, post: Post, texts: list[str]) -> str | None: ...  # the prompt all `texts` are scored after
    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]: ...


class Generator(Protocol):
    """A model writing one summary per prompt under each decoding, {decoding.name: [Generation]}
    (model_generator below; copies in the tests)."""

    def __call__(self, prompts: list[str], decodings: list[Decoding]) -> dict[str, list[Generation]]: ...


REF = ("reference", "")  # key of the human reference summary among a post's scored texts


def judge_posts(posts: list[Post], tuned: Generator, base: Generator, rm: RewardScorer, decodings: list[Decoding],
                count_tokens: TokenCounter, examples: int = 3) -> dict:
    """Generate with both sides under each decoding, score everything with `rm`, compare. `count_tokens`
    measures every summary (generated and human) in the same tokens."""
    prompts = [p.prompt for p in posts]
    gens = {(side, name): texts  # one model at a time, every decoding (the prompts read once per model)
            for side, generator in (("tuned", tuned), ("base", base))
            for name, texts in generator(prompts, decodings).items()}
    keep, reward = _score_all(posts, gens, rm)
    length = {key: count_tokens([g.text for g in gs]) for key, gs in gens.items()}
    refs = [i for i in keep if posts[i].reference]
    if refs:
        length[REF] = dict(zip(refs, count_tokens([posts[i].reference for i in refs])))
    out: dict = {"posts": len(keep), "posts_skipped": len(posts) - len(keep),
                 "posts_with_reference": sum(posts[i].reference is not None for i in keep),
                 "length_unit": LENGTH_UNIT, "decodings": {}}
    if refs:
        out["reference"] = side_stats([posts[i].reference for i in refs], [reward[(i, REF)] for i in refs],
                                      [length[REF][i] for i in refs])
    samples = []
    for d in decodings:
        out["decodings"][d.name] = _decoding_result(posts, keep, gens, reward, length, d.name)
        samples += [{"post_id": posts[i].post_id, "decoding": d.name,
                     "tuned": gens[("tuned", d.name)][i].text, "base": gens[("base", d.name)][i].text,
                     "tokens_tuned": length[("tuned", d.name)][i], "tokens_base": length[("base", d.name)][i],
                     "reward_tuned": reward[(i, ("tuned", d.name))], "reward_base": reward[(i, ("base", d.name))],
                     "reference": posts[i].reference, "reward_reference": reward.get((i, REF))} for i in keep]
    head = {posts[i].post_id: _head(posts[i].prompt) for i in keep}
    out["examples"] = [dict(s, post=head[s["post_id"]]) for s in samples[:examples]]
    out["samples"] = samples
    return out


def _score_all(posts: list[Post], gens: dict, rm: RewardScorer) -> tuple[list[int], dict]:
    """(indices of the posts scored, {(post index, (side, decoding) | REF): reward}). Every text of a
    post is scored after one shared prompt, fitted once, so all sides read the same context."""
    texts_of = [[g[i].text for g in gens.values()] + ([p.reference] if p.reference else [])
                for i, p in enumerate(posts)]
    rm_prompts = [rm.prompt_for(p, texts) for p, texts in zip(posts, texts_of)]
    keep = [i for i, rp in enumerate(rm_prompts) if rp is not None]
    if len(keep) < len(posts):
        logger.info(f"judge: {len(posts) - len(keep)} post(s) skipped: a summary alone exceeds the reward model's "
                    "max_length")
    if not keep:
        raise PreftuneError("no post fits the reward model's max_length")
    flat = [(i, key) for i in keep for key in list(gens) + ([REF] if posts[i].reference else [])]
    texts = [posts[i].reference if key == REF else gens[key][i].text for i, key in flat]
    return keep, dict(zip(flat, rm([rm_prompts[i] for i, _ in flat], texts)))


def _decoding_result(posts: list[Post], keep: list[int], gens: dict, reward: dict, length: dict, name: str) -> dict:
    """Both sides' statistics under one decoding, tuned vs base, and each vs the human reference."""
    ids = [posts[i].post_id for i in keep]
    g = {side: [gens[(side, name)][i] for i in keep] for side in SIDES}
    r = {side: [reward[(i, (side, name))] for i in keep] for side in SIDES}
    n = {side: [length[(side, name)][i] for i in keep] for side in SIDES}
    res = {side: side_stats([x.text for x in g[side]], r[side], n[side], g[side]) for side in SIDES}
    res["tuned_vs_base"] = compare(r["tuned"], r["base"], n["tuned"], n["base"], ids)
    at = [k for k, i in enumerate(keep) if posts[i].reference]  # positions within `keep`
    if at:
        ref_r = [reward[(keep[k], REF)] for k in at]
        ref_n = [length[REF][keep[k]] for k in at]
        for side in SIDES:
            res[f"{side}_vs_reference"] = compare([r[side][k] for k in at], ref_r, [n[side][k] for k in at], ref_n,
                                                  [ids[k] for k in at])
    return res


def _head(prompt: str) -> str:
    """SUBREDDIT and TITLE lines of a TL;DR prompt: enough to recognise the post."""
    return "\n".join(prompt.splitlines()[:2])


# ---- verdict -------------------------------------------------------------------------------------


def _pct(x: float | None, ci=None) -> str:
    """"64.2% [55.0%–72.1%]"; n/a for a gap."""
    return fmt.cell(x, ci, digits=1, ci_digits=1, as_percent=True, gap=fmt.GAP)


def decoding_verdict(name: str, res: dict) -> str:
    tb = res["tuned_vs_base"]
    lo, hi = tb["ci95"]
    if lo > 0.5:
        what = "the tuned model's summaries score higher than the base model's"
    elif hi < 0.5:
        what = "the base model's summaries score higher than the tuned model's"
    else:
        what = "no detectable difference between tuned and base"
    longer = res["tuned"]["mean_tokens"] - res["base"]["mean_tokens"]
    bl = tb["by_length"]
    return (f"{name}: {what} (win rate {fmt.percent(tb['win_rate'])}, 95% CI "
            f"{fmt.span(tb['ci95'], 1, as_percent=True)}, n={tb['n']}); tuned "
            f"summaries are {abs(longer):.1f} tokens {'longer' if longer >= 0 else 'shorter'} on average; "
            "length-controlled win rate "
            f"{_pct(tb['length_controlled_win_rate'], tb['length_controlled_ci95'])}, length-balanced "
            f"{_pct(bl['length_balanced_win_rate'], bl['length_balanced_ci95'])}.")


# ---- a run folder --------------------------------------------------------------------------------


class ReferenceRM:
    """A trained reward model folder as the judge's scorer (the quality head of an ODIN RM): fits each
    post's prompt to the RM's max_length (trimming the post, keeping every summary whole), then scores
    in batches."""

    def __init__(self, folder: RewardModelFolder | Path, batch_size: int, precision: str = "fp32"):
        from preftune.judge.reward import load_reward_model

        self.folder = folder if isinstance(folder, RewardModelFolder) else open_reward_model(folder)
        self.model, self.tokenizer = load_reward_model(str(self.folder.path))
        self.max_length = self.folder.max_length
        self.batch_size, self.precision = batch_size, precision

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
        from preftune.judge.reward import score
        from preftune.precision import autocast

        with autocast(self.precision, self.model.device):
            return score(self.model, self.tokenizer, prompts, completions, self.batch_size, "judge reward").tolist()


def model_generator(path: str, batch_size: int, label: str, precision: str = "fp32") -> Generator:
    """A Generator over a causal LM folder in `precision` (autocast), loaded when called and released after."""
    from preftune.judge.generate import generate_many
    from preftune.models import inference_device, load_model, load_tokenizer
    from preftune.precision import autocast

    def run(prompts: list[str], decodings: list[Decoding]) -> dict[str, list[Generation]]:
        device = inference_device()
        with autocast(precision, device):
            return generate_many(load_model(path).to(device), load_tokenizer(path), prompts, decodings, batch_size,
                                 f"generate {label}")

    return run


def load_posts(run: Run, cfg: JudgeConfig) -> tuple[list[Post], str]:
    """The held-out posts of cfg.split: the run's saved pairs file, or (--full-split) the whole split
    re-prepared from the run's data config."""
    if not cfg.full_split:
        return held_out_posts(run.pairs(cfg.split)), pairs_file(cfg.split)  # none: which flag gives some
    from preftune.data.fit import fit
    from preftune.data.prepare import prepare
    from preftune.models import load_tokenizer

    tokenizer = load_tokenizer(str(run.path))  # also renders chat formats, as the run's data was
    prepared = prepare(run.data_config(), tokenizer=tokenizer)
    held = prepared.eval if cfg.split == "validation" else prepared.test
    if not held:
        raise PreftuneError(run.no_pairs(cfg.split))
    held, _ = fit(tokenizer, held, run.max_length, "judge")
    return held_out_posts(held), f"{cfg.split} split"


def decodings_of(cfg: JudgeConfig) -> list[Decoding]:
    from preftune.judge.generate import Decoding

    return ([Decoding(0.0, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)] if cfg.greedy else []) + \
        ([Decoding(cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)] if cfg.temperature > 0 else [])


def rm_summary(rm: RewardModelFolder) -> dict:
    """What judge.json keeps of the reward model: where it is, its heads and its held-out numbers."""
    ev = rm.eval
    return {
        "reward_model": str(rm.path),
        "reward_model_base": rm.config["base_model"],  # as requested; what was loaded is the source below
        "reward_model_source": rm.config.get("model_source"),
        "rm_debias": rm.config.get("debias", "none"),  # folders from before debiasing were plain
        "rm_heads": list(rm.heads),
        "rm_scoring_head": rm.heads[0],
        "rm_length_correction_per_token": ev.get("length_correction_per_token"),
        "rm_accuracy": ev["accuracy"],
        "rm_accuracy_ci95": ev["accuracy_ci95"],
        "rm_length_balanced_accuracy": ev.get("length_balanced_accuracy"),
        "rm_length_balanced_ci95": ev.get("length_balanced_ci95"),
        "rm_reward_length_pearson": ev.get("reward_length_pearson"),
        "rm_reward_length_spearman": ev.get("reward_length_spearman"),
        "rm_eval_pairs": ev["n"],
        "rm_longer_wins_baseline": ev.get("longer_wins_baseline"),
        "rm_picks_longer": ev.get("rm_picks_longer"),
    }


def output_name(cfg: JudgeConfig, output: str | None) -> str:
    """The file in RUN_DIR a judgement goes to: judge.json / judge_test.json, or --output (a second judgement,
    e.g. against another --base, kept beside the first): a plain name judge*.json, so no other file is hit."""
    if output is None:
        return JUDGE_FILE if cfg.split == "validation" else JUDGE_TEST_FILE
    if Path(output).name != output or not output.startswith("judge") or not output.endswith(".json"):
        raise PreftuneError(f"--output {output}: name a file in RUN_DIR as judge<anything>.json, e.g. "
                            "judge_test_vs_sft.json (no folder)")
    return output


def judge_run(run_dir: Path, cfg: JudgeConfig, output: str | None = None) -> dict:
    from preftune.judge.reward import summary_tokens
    from preftune.models import load_tokenizer, resolve_model
    from preftune.precision import resolve

    out_name = output_name(cfg, output)  # a bad name stops before any work
    run = open_run(run_dir)
    precision = resolve(cfg.precision)
    rm = open_reward_model(Path(cfg.rm) if cfg.rm else run.path.parent / RM_DEFAULT_NAME)
    base_spec = cfg.base or run.reference_model
    base = resolve_model(base_spec)
    logger.info(f"judge: {run.name} vs base {base_spec} ← {base.source}; reward model {rm.path} "
                f"(debias {rm.config.get('debias', 'none')}, scoring head: {rm.heads[0]}); {precision}")

    posts, source = load_posts(run, cfg)
    seen = rm.train_post_ids & {p.post_id for p in posts}
    if seen:
        raise PreftuneError(f"the reward model at {rm.path} was trained on {len(seen)} of the posts to judge "
                            f"(e.g. {sorted(seen)[0]}): train it on the same data, --fraction, --eval-fraction and "
                            "--seed as the run so the held-out posts are held out from both")
    posts = choose_posts(posts, cfg.n, cfg.seed)
    decodings = decodings_of(cfg)
    logger.info(f"judge: {len(posts)} held-out posts from {source} ({sum(p.reference is not None for p in posts)} "
                f"with a human reference summary); decodings: {', '.join(d.name for d in decodings)}")

    policy_tokenizer = load_tokenizer(str(run.path))
    result = judge_posts(posts, model_generator(str(run.path), cfg.batch_size, "tuned", precision),
                         model_generator(base.path, cfg.batch_size, "base", precision),
                         ReferenceRM(rm, cfg.batch_size, precision),
                         decodings, lambda texts: summary_tokens(policy_tokenizer, texts), cfg.examples)
    strength, rm_said = rm_strength(rm.eval)
    report = {
        "run": run.name,
        "base_model": base_spec,
        "base_source": base.source,
        **rm_summary(rm),
        "literature": LITERATURE,
        "verdict_strength": strength,
        "verdict": [rm_said] + [decoding_verdict(name, res) for name, res in result["decodings"].items()],
        "posts_from": source,
        "precision": precision,
        "config": asdict(cfg),
        **result,
    }
    out = run.file(out_name)
    atomic_write_json(out, report)
    logger.info(format_report(report))
    logger.info(f"judge: wrote {out}")
    return report


def format_report(r: dict) -> str:
    lines = [f"judged: {r['run']} vs {r['base_model']} on {r['posts']} held-out posts "
             f"({r['posts_with_reference']} with a human reference); "
             f"reward model {r.get('reward_model_source') or r['reward_model_base']} "
             f"(debias {r['rm_debias']}, {r['rm_scoring_head']} head); lengths in {r['length_unit']}", ""]
    lines += [f"  {v}" for v in r["verdict"]] + [""]
    for name, res in r["decodings"].items():
        tb, t, b = res["tuned_vs_base"], res["tuned"], res["base"]
        lm, bl = tb["length_matched"], tb["by_length"]
        rows = [
            (f"[{name}]", f"{'tuned':>10}  {'base':>10}"),
            ("mean reward", f"{fmt.number(t['mean_reward'], 3):>10}  {fmt.number(b['mean_reward'], 3):>10}"),
            ("mean length (tokens)", f"{fmt.number(t['mean_tokens'], 1):>10}  {fmt.number(b['mean_tokens'], 1):>10}"),
            ("mean length (chars)", f"{fmt.number(t['mean_chars'], 1):>10}  {fmt.number(b['mean_chars'], 1):>10}"),
            ("tuned win rate over base", f"{_pct(tb['win_rate'], tb['ci95'])}  "
                                         f"({tb['wins']} wins, {tb['ties']} ties, {tb['losses']} losses)"),
            ("  where tuned is longer", f"{_pct(bl['a_longer']['accuracy'], bl['a_longer']['ci95'])}  "
                                        f"(n={bl['a_longer']['n']})"),
            ("  where tuned is shorter", f"{_pct(bl['a_shorter']['accuracy'], bl['a_shorter']['ci95'])}  "
                                         f"(n={bl['a_shorter']['n']})"),
            ("length-balanced win rate", f"{_pct(bl['length_balanced_win_rate'], bl['length_balanced_ci95'])}"),
            ("length-controlled win rate", f"{_pct(tb['length_controlled_win_rate'], tb['length_controlled_ci95'])}"
                                           "  (bootstrap over posts)"),
            ("win rate, length-matched pairs", f"{_pct(lm['win_rate'], lm['ci95'])}  (n={lm['n']})"),
            ("the longer summary won", _pct(tb["longer_won"])),
        ]
        rows += [(f"{side} win rate over human ref", f"{_pct(vr['win_rate'], vr['ci95'])}  (n={vr['n']})")
                 for side in SIDES if (vr := res.get(f"{side}_vs_reference"))]
        lines += [f"    {label:<32}{value}" for label, value in rows] + [""]
    for ex in r["examples"]:
        lines.append(f"  example ({ex['decoding']}): {ex['post'].splitlines()[-1][:100]}")
        lines.append(f"    tuned ({fmt.number(ex['reward_tuned'], 3, sign=True)}): {ex['tuned'].strip()[:200]}")
        lines.append(f"    base  ({fmt.number(ex['reward_base'], 3, sign=True)}): {ex['base'].strip()[:200]}")
        if ex["reference"]:
            lines.append(f"    human ({fmt.number(ex['reward_reference'], 3, sign=True)}): {ex['reference'].strip()[:200]}")
    return "\n".join(lines)


# ---- CLI -----------------------------------------------------------------------------------------


def cmd_judge(ns: argparse.Namespace) -> None:
    judge_run(Path(ns.run_dir), from_args(JudgeConfig, ns), ns.output)


def add_cli(verbs) -> None:
    """`preftune judge` (`preftune rm train` lives with the reward model: preftune.judge.reward.add_cli)."""
    jd = verbs.add_parser("judge", help="generate summaries of held-out posts with the tuned and the base model, "
                                        "score them with the reward model, report win rates → RUN_DIR/judge.json (--split test: judge_test.json)")
    jd.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `preftune train`")
    add_arguments(jd, JudgeConfig)
    jd.add_argument("--output", metavar="judgeNAME.json", default=None,
                    help="write to RUN_DIR/judgeNAME.json instead of judge.json (judge_test.json with --split test): "
                         "a second judgement kept beside the first, e.g. against another --base")
    jd.set_defaults(func=cmd_judge)
