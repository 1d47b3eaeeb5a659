"""The one decoder: batched + left-padded + length-sorted gives what one prompt at a time gives, results
come back in the prompts' order, a summary stops at the end of its line (a stopping criterion) or at
EOS, seeds repeat per prompt whatever the batch, and the streamed path (the demo) writes the same
text as the batched path (the judge) for the same seed."""

import pytest
import torch

from preftune.judge.generate import (
    Decoding,
    LineEnd,
    _finish,
    first_line,
    generate,
    length_batches,
    line_ended,
    stream_texts,
    stream_tokens,
)
from preftune.models import load_model

PROMPTS = [
    "SUBREDDIT: r/test\nTITLE: A much longer title for a much longer post\nPOST: I went out and it rained a lot.\nTL;DR:",
    "SUBREDDIT: r/a\nTITLE: t\nPOST: hi\nTL;DR:",
    "SUBREDDIT: r/relationships\nTITLE: My girlfriend\nPOST: She said she likes someone else.\nTL;DR:",
    "SUBREDDIT: r/AskReddit\nTITLE: Why?\nPOST: My dog ate my homework and\nI do not know what to tell my teacher.\nTL;DR:",
]


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(str(tiny_model))


@pytest.fixture(scope="module")
def chatty_model(tiny_model, tiny_tokenizer):
    """The tiny model with a bias towards the newline token, so that summaries do end at a newline."""
    model = load_model(str(tiny_model))
    [newline] = tiny_tokenizer("\n", add_special_tokens=False)["input_ids"]
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    head.weight = model.lm_head.weight
    with torch.no_grad():
        head.bias.zero_()
        head.bias[newline] = 3.0
    model.lm_head = head
    return model


@pytest.mark.parametrize("stop_at_newline", [True, False])
def test_batched_greedy_equals_one_at_a_time(model, tiny_tokenizer, stop_at_newline):
    """Left padding, length-sorting and per-row stopping must not change a greedy continuation."""
    d = Decoding(max_new_tokens=24, stop_at_newline=stop_at_newline)
    batched = generate(model, tiny_tokenizer, PROMPTS, d, batch_size=3)
    single = [generate(model, tiny_tokenizer, [p], d, batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    assert tiny_tokenizer.padding_side == "right"  # restored


def test_greedy_is_the_argmax_continuation(model, tiny_tokenizer):
    """Computed without generate(): the argmax of the full-sequence logits, step by step."""
    [g] = generate(model, tiny_tokenizer, [PROMPTS[1]], Decoding(max_new_tokens=12, stop_at_newline=False))
    ids = tiny_tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for _ in range(12):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    new = ids[0, -12:].tolist()
    if tiny_tokenizer.eos_token_id in new:
        new = new[: new.index(tiny_tokenizer.eos_token_id)]
    assert g.text == tiny_tokenizer.decode(new, skip_special_tokens=True)


def test_stopping_at_the_line_end_keeps_the_text_of_a_full_decode(chatty_model, tiny_tokenizer):
    """Stopping early (LineEnd) gives exactly the first line of the full max_new_tokens decode, for greedy
    and sampled decodings; summaries here do end at a newline, before max_new_tokens."""
    model, ended = chatty_model, []
    for d in (Decoding(max_new_tokens=40), Decoding(temperature=1.0, max_new_tokens=40, seed=3)):
        stopped = generate(model, tiny_tokenizer, PROMPTS, d, batch_size=2)
        full = generate(model, tiny_tokenizer, PROMPTS, Decoding(d.temperature, d.top_p, 40, d.seed, False))
        assert [g.text for g in stopped] == [first_line(g.text) for g in full]
        ended += [g.ended for g in stopped]
    assert ended.count("newline") >= 2


def test_line_end_criterion_per_row(tiny_tokenizer):
    tok = tiny_tokenizer
    rows = [" a summary\nmore", "\n\n starts late", " still going"]
    ids = [tok("P:", add_special_tokens=False)["input_ids"] + tok(r, add_special_tokens=False)["input_ids"] for r in rows]
    width = max(map(len, ids))
    batch = torch.tensor([i + [tok.eos_token_id] * (width - len(i)) for i in ids])
    done = LineEnd(tok, len(tok("P:", add_special_tokens=False)["input_ids"]))(batch, None)
    assert done.tolist() == [True, False, False]
    assert line_ended(" x\n") and not line_ended("\n\n x")


def test_sampling_is_seeded_per_prompt_whatever_the_batch(model, tiny_tokenizer):
    d = Decoding(temperature=0.9, top_p=0.95, max_new_tokens=16, seed=1, stop_at_newline=False)
    a = generate(model, tiny_tokenizer, PROMPTS, d, batch_size=4)
    assert a == generate(model, tiny_tokenizer, PROMPTS, d, batch_size=4)
    assert a != generate(model, tiny_tokenizer, PROMPTS, Decoding(0.9, 0.95, 16, 2, False), batch_size=4)
    alone = [generate(model, tiny_tokenizer, [p], d, batch_size=1)[0] for p in PROMPTS]
    assert [g.text for g in alone] == [g.text for g in a]
    assert Decoding(temperature=0.7).name == "T=0.7" and Decoding().name == "greedy"


@pytest.mark.parametrize("decoding", [Decoding(0.0, 1.0, 20, 0), Decoding(0.9, 0.9, 20, 5),
                                      Decoding(1.3, 1.0, 20, 11, stop_at_newline=False)])
def test_the_demo_and_the_judge_write_the_same_text_for_the_same_seed(chatty_model, tiny_tokenizer, decoding):
    """One decoder: the streamed token-by-token path (the demo) and the batched generate path (the judge)
    agree, line ends included."""
    batched = generate(chatty_model, tiny_tokenizer, PROMPTS, decoding, batch_size=2)
    for prompt, g in zip(PROMPTS, batched):
        streamed = list(stream_texts([chatty_model], tiny_tokenizer, tiny_tokenizer(prompt)["input_ids"], decoding))
        assert streamed[-1][0] == g.text
    assert {g.ended for g in batched} & ({"newline"} if decoding.stop_at_newline else {"length"})


def test_streamed_greedy_matches_model_generate(model, tiny_tokenizer):
    """The KV-cached step loop is what model.generate does (a cache or position bug would diverge)."""
    ids = tiny_tokenizer(PROMPTS[0])["input_ids"]
    mine = list(stream_tokens(model, ids, Decoding(max_new_tokens=30), eos=set()))
    ref = model.generate(torch.tensor([ids]), max_new_tokens=30, do_sample=False, eos_token_id=None)
    assert mine == ref[0, len(ids):].tolist()


def test_length_batches_group_similar_lengths():
    assert length_batches([5, 1, 9, 3, 7], 2) == [[1, 3], [0, 4], [2]]


def test_first_line():
    assert first_line(" my summary\nSUBREDDIT: r/x") == " my summary"
    assert first_line("\n\n starts late\nmore") == "\n\n starts late"
    assert first_line(" one line") == " one line"


def test_finish_cuts_at_eos_then_first_line(tiny_tokenizer):
    tok = tiny_tokenizer
    eos = tok.eos_token_id
    body = tok(" a summary", add_special_tokens=False)["input_ids"]
    g = _finish(tok, body + [eos, eos, eos], Decoding())  # EOS, then padding (pad = EOS)
    assert (g.text, g.tokens, g.ended) == (" a summary", len(body), "eos")
    two_lines = tok(" a summary\nTITLE: again", add_special_tokens=False)["input_ids"]
    g = _finish(tok, two_lines, Decoding())
    assert g.text == " a summary" and g.ended == "newline"
    g = _finish(tok, two_lines, Decoding(stop_at_newline=False))
    assert g.text == " a summary\nTITLE: again" and g.ended == "length" and g.tokens == len(two_lines)


def test_decodings_sharing_the_prompts_cache_write_what_each_writes_alone(chatty_model, tiny_tokenizer):
    """generate_many reads each batch's prompts once for all decodings: same texts as separate calls."""
    from preftune.judge.generate import generate_many

    decodings = [Decoding(max_new_tokens=20), Decoding(temperature=0.9, max_new_tokens=20, seed=4),
                 Decoding(temperature=0.5, top_p=0.8, max_new_tokens=12, seed=4, stop_at_newline=False)]
    shared = generate_many(chatty_model, tiny_tokenizer, PROMPTS, decodings, batch_size=3)
    assert list(shared) == ["greedy", "T=0.9", "T=0.5"]
    for d in decodings:
        assert shared[d.name] == generate(chatty_model, tiny_tokenizer, PROMPTS, d, batch_size=3)
