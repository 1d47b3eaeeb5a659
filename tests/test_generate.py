"""Generation: batched + left-padded gives what one prompt at a time gives, results come back in the
prompts' order, seeds repeat, a summary is cut at EOS and at its first line."""

import pytest
import torch

from preftune.generate import Decoding, _finish, first_line, generate
from preftune.models import load_model

PROMPTS = [
    "SUBREDDIT: r/test\nTITLE: A much longer title for a much longer post\nPOST: I went out and it rained a lot.\nTL;DR:",
    "SUBREDDIT: r/a\nTITLE: t\nPOST: hi\nTL;DR:",
    "SUBREDDIT: r/relationships\nTITLE: My girlfriend\nPOST: She said she likes someone else.\nTL;DR:",
]


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(str(tiny_model))


def test_batched_greedy_equals_one_at_a_time(model, tiny_tokenizer):
    """Left padding and length-sorting must not change a greedy continuation or its position."""
    d = Decoding(max_new_tokens=12, stop_at_newline=False)
    batched = generate(model, tiny_tokenizer, PROMPTS, d, batch_size=3)
    single = [generate(model, tiny_tokenizer, [p], d, batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    # and it is the argmax continuation, computed without generate()
    ids = tiny_tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for _ in range(12):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    new = ids[0, -12:].tolist()
    if tiny_tokenizer.eos_token_id in new:
        new = new[: new.index(tiny_tokenizer.eos_token_id)]
    assert batched[1].text == tiny_tokenizer.decode(new, skip_special_tokens=True)
    assert tiny_tokenizer.padding_side == "right"  # restored


def test_sampling_is_seeded(model, tiny_tokenizer):
    a = generate(model, tiny_tokenizer, PROMPTS, Decoding(temperature=0.7, max_new_tokens=10, seed=1))
    b = generate(model, tiny_tokenizer, PROMPTS, Decoding(temperature=0.7, max_new_tokens=10, seed=1))
    c = generate(model, tiny_tokenizer, PROMPTS, Decoding(temperature=0.7, max_new_tokens=10, seed=2))
    assert a == b and a != c
    assert Decoding(temperature=0.7).name == "T=0.7" and Decoding().name == "greedy"


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
