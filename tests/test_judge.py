"""The judge: win rates by hand (ties half), by length stratum and length-balanced, length control with
its bootstrap interval; a policy that copies the preferred summaries is judged correctly (by a known
scorer, and by a trained RM, where the win rate must equal the RM's pairwise accuracy); the verdict
follows the RM's length-balanced accuracy; `preftune judge` end to end on tiny models, reading the run
and the RM through their owners."""

import json
import shutil

import pytest

from preftune.config import DataConfig, JudgeConfig, RewardConfig, TrainConfig
from preftune.data.prepare import Pair
from preftune.errors import PreftuneError
from preftune.judge.generate import Decoding, Generation
from preftune.judge.judge import (
    ReferenceRM,
    by_length,
    compare,
    held_out_posts,
    judge_posts,
)
from preftune.stats import length_controlled_win_rate, win_stats

DATA = DataConfig(fraction=0.03, seed=3)
DECODINGS = [Decoding(0.0), Decoding(0.7)]
WORDS = lambda texts: [len(t.split()) for t in texts]  # noqa: E731 - a stand-in tokenizer: one token per word


def test_win_stats_ties_count_half():
    s = win_stats([1.0, 1.0, 1.0, 0.5, 0.0])
    assert (s["wins"], s["ties"], s["losses"]) == (3, 1, 1) and s["win_rate"] == 0.7
    lo, hi = s["ci95"]
    assert lo < 0.7 < hi


def test_length_controlled_win_rate_removes_a_pure_length_effect():
    """Tuned is longer in 3/4 of the posts; the longer summary wins 80% of the time whichever side wrote
    it. Raw win rate = 0.75·0.8 + 0.25·0.2 = 0.65; at equal length the sides are even: LC ≈ 0.5."""
    results = [1.0] * 24 + [0.0] * 6 + [1.0] * 2 + [0.0] * 8  # 30 longer (24 won), 10 shorter (2 won)
    len_a = [60] * 30 + [40] * 10
    len_b = [40] * 30 + [60] * 10
    assert win_stats(results)["win_rate"] == 0.65
    assert length_controlled_win_rate(results, len_a, len_b) == pytest.approx(0.5, abs=0.01)
    # no length difference at all: LC is the plain win rate
    assert length_controlled_win_rate([1.0, 1.0, 0.0, 0.5], [5] * 4, [5] * 4) == pytest.approx(0.625, abs=0.01)


def test_compare_length_matched_and_longer_won():
    c = compare([2.0, 1.0, 0.0, 1.0], [1.0, 2.0, 1.0, 1.0], [100, 50, 100, 10], [95, 100, 40, 10])
    assert c["win_rate"] == 1.5 / 4 and c["a_longer"] == 2  # win, loss, loss, tie
    assert c["length_matched"]["n"] == 2 and c["length_matched"]["win_rate"] == 0.75  # posts 0 and 3
    assert c["length_matched"]["ci95"] == win_stats([1.0, 0.5])["ci95"]  # Wilson, as every win rate
    assert c["longer_won"] == pytest.approx(2 / 3)  # posts 0 (longer a won), 1 (longer b won), 2 (longer a lost)
    # a longer in posts 0 and 2 (won 1 of 2), shorter in post 1 (lost), as long in post 3 (tie)
    bl = c["by_length"]
    assert (bl["a_longer"]["n"], bl["a_longer"]["accuracy"]) == (2, 0.5)
    assert (bl["a_shorter"]["n"], bl["a_shorter"]["accuracy"]) == (1, 0.0)
    assert (bl["equal_length"]["n"], bl["equal_length"]["accuracy"]) == (1, 0.5)
    assert bl["length_balanced_win_rate"] == 0.25


def test_a_length_counting_judge_has_a_balanced_win_rate_of_exactly_half():
    """Tuned wins exactly where its summary is the longer one: raw win rate 70%, balanced 50%."""
    len_a = [60] * 7 + [40] * 3
    len_b = [40] * 7 + [60] * 3
    results = by_length([1.0] * 7 + [0.0] * 3, len_a, len_b)
    assert results["length_balanced_win_rate"] == 0.5
    c = compare([2.0] * 7 + [0.0] * 3, [1.0] * 10, len_a, len_b)
    assert c["win_rate"] == 0.7 and c["by_length"]["length_balanced_win_rate"] == 0.5


def test_length_controlled_win_rate_has_a_bootstrap_interval_over_posts():
    """Resampling posts: the interval holds the estimate, is seeded (same call, same interval), and
    widens when fewer posts carry the same outcomes."""
    results_a = [2.0, 0.0, 2.0, 2.0, 0.0, 2.0, 2.0, 0.0] * 5
    len_a, len_b = [30, 50, 40, 35, 60, 20, 45, 25] * 5, [40] * 40
    c = compare(results_a, [1.0] * 40, len_a, len_b, [f"p{i}" for i in range(40)], reps=400)
    lo, hi = c["length_controlled_ci95"]
    assert lo < c["length_controlled_win_rate"] < hi and 0 <= lo and hi <= 1
    again = compare(results_a, [1.0] * 40, len_a, len_b, [f"p{i}" for i in range(40)], reps=400)
    assert again["length_controlled_ci95"] == (lo, hi)
    few = compare(results_a[:8], [1.0] * 8, len_a[:8], len_b[:8], [f"p{i}" for i in range(8)], reps=400)
    assert few["length_controlled_ci95"][1] - few["length_controlled_ci95"][0] > hi - lo


# ---- a policy that copies the preferred summaries ------------------------------------------------


def copier(texts: dict[str, str]):
    """A 'policy' whose summary of a prompt is texts[prompt], whatever the decoding."""
    def generate(prompts, decodings):
        return {d.name: [Generation(texts[p], len(texts[p].split()), "eos") for p in prompts] for d in decodings}
    return generate


class TableRM:
    """A scorer with known rewards per summary text."""

    def __init__(self, rewards):
        self.rewards, self.seen = rewards, []

    def prompt_for(self, post, texts):
        return post.prompt

    def __call__(self, prompts, completions):
        self.seen += list(zip(prompts, completions))
        return [self.rewards[c] for c in completions]


def test_copying_the_preferred_summary_by_hand():
    """6 posts; tuned writes the human-preferred summary, base the other. The scorer agrees with the
    humans on posts 0–2, ties on 3, disagrees on 4–5: 3 wins + ½ tie of 6 = 58.3%. Posts 0 and 4 have a
    human reference scored 0.5: tuned (1.0 / 0.0) wins 1 of 2, base (0.0 / 1.0) wins 1 of 2."""
    pairs, rewards = [], {}
    for i in range(6):
        meta = {"chosen_policy": "sup", "rejected_policy": "ref" if i in (0, 4) else "sup2"}
        pairs.append(Pair(f"post {i} TL;DR:", f" good {i}", f" bad {i}", f"p{i}", "x", meta=meta))
        r_good, r_bad = {0: (1, 0), 1: (2, 1), 2: (1, -1), 3: (0.5, 0.5), 4: (0, 1), 5: (-1, 3)}[i]
        rewards[f" good {i}"], rewards[f" bad {i}"] = r_good, r_bad
    # the reference is the rejected summary in posts 0 and 4; score it 0.5 as a separate text
    pairs[0] = Pair(pairs[0].prompt, " good 0", " human 0", "p0", "x", meta=pairs[0].meta)
    pairs[4] = Pair(pairs[4].prompt, " good 4", " human 4", "p4", "x", meta=pairs[4].meta)
    pairs += [Pair("post 0 TL;DR:", " good 0", " bad 0", "p0", "x", meta={})]  # a second pair of post 0
    rewards[" human 0"] = rewards[" human 4"] = 0.5
    posts = held_out_posts(pairs)
    assert [p.post_id for p in posts] == [f"p{i}" for i in range(6)] and posts[0].reference == " human 0"
    tuned = copier({f"post {i} TL;DR:": f" good {i}" for i in range(6)})
    base = copier({f"post {i} TL;DR:": f" bad {i}" for i in range(6)})
    rm = TableRM(rewards)

    out = judge_posts(posts, tuned, base, rm, DECODINGS, WORDS, examples=2)
    assert out["posts"] == 6 and out["posts_with_reference"] == 2 and set(out["decodings"]) == {"greedy", "T=0.7"}
    for res in out["decodings"].values():
        tb = res["tuned_vs_base"]
        assert (tb["wins"], tb["ties"], tb["losses"]) == (3, 1, 2) and tb["win_rate"] == pytest.approx(3.5 / 6)
        assert res["tuned"]["mean_reward"] == pytest.approx((1 + 2 + 1 + 0.5 + 0 - 1) / 6)
        assert res["base"]["mean_reward"] == pytest.approx((0 + 1 - 1 + 0.5 + 1 + 3) / 6)
        assert res["tuned"]["mean_chars"] == len("good 0") and res["tuned"]["mean_tokens"] == 2
        assert res["tuned_vs_base"]["by_length"]["equal_length"]["n"] == 6  # 2 words each side
        assert res["tuned_vs_reference"]["win_rate"] == 0.5 and res["base_vs_reference"]["win_rate"] == 0.5
        assert res["tuned_vs_reference"]["n"] == 2
    assert ("post 0 TL;DR:", " human 0") in rm.seen
    s = out["samples"][4]
    assert (s["post_id"], s["tuned"], s["reward_tuned"], s["reward_base"], s["reward_reference"]) == \
        ("p4", " good 4", 0, 1, 0.5)
    assert len(out["samples"]) == 12 and len(out["examples"]) == 2


# ---- with trained tiny models --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tiny_model, tmp_path_factory):
    """A tiny DPO run and, beside it, a tiny RM trained on the same data config (so the same split)."""
    from preftune.runs.rm import train_reward_model
    from preftune.runs.dpo import train

    root = tmp_path_factory.mktemp("judge")
    run = train(DATA, TrainConfig(output_dir=str(root), model=str(tiny_model), lr=1e-2, batch_size=4, max_pairs=4,
                                  max_eval_pairs=8, max_length=192, gradient_checkpointing=False))
    train_reward_model(DATA, RewardConfig(output_dir=str(root), model=str(tiny_model), lr=1e-2, batch_size=4,
                                          max_pairs=8, max_length=192))
    return run


def test_copying_policy_win_rate_is_the_rms_accuracy(tiny_run):
    """With a real reward model: a policy that writes each pair's chosen summary, against one that writes
    the rejected, wins exactly where the RM ranks the pair right: win rate = RM pairwise accuracy."""
    import torch

    from preftune.data.fit import fit
    from preftune.data.prepare import read_jsonl
    from preftune.judge.reward import evaluate_rm, score_pairs

    rm = ReferenceRM(tiny_run.parent / "reward_model", batch_size=4)
    assert rm.folder.config["debias"] == "balance"  # the default RM is length-debiased
    pairs, seen = [], set()
    for p in read_jsonl(tiny_run / "eval_pairs.jsonl"):  # the first pair of each post, without meta (no refs)
        if p.post_id not in seen:
            seen.add(p.post_id)
            pairs.append(Pair(p.prompt, p.chosen, p.rejected, p.post_id, p.source, p.body_span))
    posts = held_out_posts(pairs)
    out = judge_posts(posts, copier({p.prompt: p.chosen for p in pairs}), copier({p.prompt: p.rejected for p in pairs}),
                      rm, [Decoding()], WORDS)
    fitted, _ = fit(rm.tokenizer, pairs, rm.max_length, "t")
    chosen_r, rejected_r = score_pairs(rm.model, rm.tokenizer, fitted)
    accuracy = evaluate_rm(rm.model, rm.tokenizer, fitted)["accuracy"]
    tb = out["decodings"]["greedy"]["tuned_vs_base"]
    assert tb["n"] == len(pairs) >= 3 and tb["ties"] == 0
    assert tb["win_rate"] == pytest.approx(accuracy)
    rewards = torch.tensor([s["reward_tuned"] for s in out["samples"]])
    assert torch.allclose(rewards, chosen_r, atol=1e-5)


def test_judge_command_end_to_end(tiny_run, capsys):
    from preftune.cli import main

    assert main(["judge", str(tiny_run), "--n", "3", "--max-new-tokens", "6", "--examples", "1"]) == 0
    report = json.loads((tiny_run / "judge.json").read_text())
    assert report["posts"] == 3 and report["posts_from"] == "eval_pairs.jsonl"
    assert report["rm_debias"] == "balance" and report["length_unit"] == "tokens of the policy's tokenizer"
    rm_eval = rm_eval_of(tiny_run)
    assert report["rm_length_balanced_accuracy"] == rm_eval["length_balanced_accuracy"]
    # a tiny RM trained on 8 pairs, measured on a handful: its balanced interval reaches 0.5
    assert rm_eval["length_balanced_ci95"] is None or rm_eval["length_balanced_ci95"][0] <= 0.5
    assert set(report["decodings"]) == {"greedy", "T=0.7"} and report["verdict_strength"] == "weak"
    assert report["verdict"][0].startswith("WEAK VERDICT")
    for name, res in report["decodings"].items():
        rows = [s for s in report["samples"] if s["decoding"] == name]
        recomputed = sum(1.0 if s["reward_tuned"] > s["reward_base"] else 0.5 if s["reward_tuned"] == s["reward_base"]
                         else 0.0 for s in rows) / len(rows)
        assert res["tuned_vs_base"]["win_rate"] == pytest.approx(recomputed)
        assert res["tuned"]["mean_generated_tokens"] <= 6 and "length_controlled_ci95" in res["tuned_vs_base"]
    printed = capsys.readouterr().out
    assert "tuned win rate over base" in printed and "length-controlled win rate" in printed
    assert "length-balanced win rate" in printed and "where tuned is shorter" in printed


def test_judge_on_the_test_split_writes_its_own_file(tiny_run):
    """--split test judges the run's test posts (test_pairs.jsonl) into judge_test.json; judge.json, what runs
    are compared on, is left as it was."""
    from preftune.cli import main
    from preftune.data.prepare import read_jsonl

    before = (tiny_run / "judge.json").read_bytes() if (tiny_run / "judge.json").exists() else None
    assert main(["judge", str(tiny_run), "--split", "test", "--n", "2", "--max-new-tokens", "4", "--examples", "0",
                 "--no-greedy"]) == 0
    report = json.loads((tiny_run / "judge_test.json").read_text())
    test_posts = {p.post_id for p in read_jsonl(tiny_run / "test_pairs.jsonl")}
    assert report["posts_from"] == "test_pairs.jsonl" and report["posts"] == 2
    assert {s["post_id"] for s in report["samples"]} <= test_posts
    assert not test_posts & {p.post_id for p in read_jsonl(tiny_run / "eval_pairs.jsonl")}
    assert ((tiny_run / "judge.json").read_bytes() if (tiny_run / "judge.json").exists() else None) == before


@pytest.mark.parametrize("tuned,base,said", [(29.4, 38.4, "9.0 tokens shorter"), (31.0, 26.0, "5.0 tokens longer")])
def test_the_verdict_says_shorter_or_longer_in_words(tuned, base, said):
    from preftune.judge.judge import decoding_verdict

    strata = {"length_balanced_win_rate": 0.9, "length_balanced_ci95": [0.8, 0.95]}
    res = {"tuned": {"mean_tokens": tuned}, "base": {"mean_tokens": base},
           "tuned_vs_base": {"ci95": [0.86, 0.97], "win_rate": 0.93, "n": 100, "length_controlled_win_rate": 0.92,
                             "length_controlled_ci95": [0.87, 0.98], "by_length": strata}}
    verdict = decoding_verdict("greedy", res)
    assert f"tuned summaries are {said} on average" in verdict and "-" not in verdict.split("on average")[0]


def rm_eval_of(run):
    return json.loads((run.parent / "reward_model" / "rm_eval.json").read_text())


def test_judge_refuses_an_rm_trained_on_the_judged_posts(tiny_run, tmp_path):
    from preftune.data.prepare import read_jsonl
    from preftune.judge.judge import judge_run

    rm = shutil.copytree(tiny_run.parent / "reward_model", tmp_path / "rm")
    config = json.loads((rm / "preftune_config.json").read_text())
    config["train_post_ids"].append(read_jsonl(tiny_run / "eval_pairs.jsonl")[0].post_id)
    (rm / "preftune_config.json").write_text(json.dumps(config))
    with pytest.raises(PreftuneError, match="was trained on 1 of the posts to judge"):
        judge_run(tiny_run, JudgeConfig(rm=str(rm), n=2))
    with pytest.raises(PreftuneError, match="no reward model at"):
        judge_run(tiny_run, JudgeConfig(rm=str(tmp_path / "missing")))


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp, run: tmp / "missing", "no such run folder"),
    (lambda tmp, run: (tmp / "file.txt", (tmp / "file.txt").write_text("x"))[0], "is a file, not a run folder"),
    (lambda tmp, run: (tmp / "empty", (tmp / "empty").mkdir())[0], "not a preftune run folder"),
    (lambda tmp, run: _damaged(tmp, run, lambda c: c["train"].update(beta="0.1")), "key 'train.beta' must be"),
    (lambda tmp, run: _damaged(tmp, run, lambda c: c.pop("train")), "key 'train' missing"),
])
def test_judge_reads_the_run_through_run_folder(tiny_run, tmp_path, make, message, capsys):
    """A path that is not a finished run is one line and exit 2 (preftune.runs.folder.open_run's checks)."""
    from preftune.cli import main

    assert main(["judge", str(make(tmp_path, tiny_run)), "--rm", str(tiny_run.parent / "reward_model")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _damaged(tmp, run, edit):
    copy = shutil.copytree(run, tmp / run.name, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((copy / "preftune_config.json").read_text())
    edit(config)
    (copy / "preftune_config.json").write_text(json.dumps(config))
    return copy


def test_a_second_judgement_goes_to_its_own_file(tiny_run, capsys):
    """--output keeps a judgement against another --base beside the first (the recipe's judge vs its SFT
    model); a name that is not RUN_DIR/judge*.json is refused before any work."""
    from preftune.cli import main

    before = {name: (tiny_run / name).read_bytes() for name in ("judge.json", "judge_test.json", "eval.json")
              if (tiny_run / name).exists()}
    for bad in ("../judge_x.json", "eval.json", "judge_x.txt"):
        assert main(["judge", str(tiny_run), "--output", bad]) == 2
        assert f"--output {bad}: name a file in RUN_DIR as judge<anything>.json" in capsys.readouterr().err
    assert main(["judge", str(tiny_run), "--split", "test", "--base", str(tiny_run), "--output", "judge_test_vs_x.json",
                 "--n", "2", "--max-new-tokens", "4", "--examples", "0", "--temperature", "0"]) == 0
    report = json.loads((tiny_run / "judge_test_vs_x.json").read_text())
    assert report["base_model"] == str(tiny_run) and report["posts"] == 2
    # the run against itself, greedy: the same summaries, every post a tie
    assert report["decodings"]["greedy"]["tuned_vs_base"]["win_rate"] == 0.5
    assert {name: (tiny_run / name).read_bytes() for name in before} == before
