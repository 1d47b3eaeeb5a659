"""Where models run outside the training engines: this process's GPU when there is one, else the CPU.

No GPU here: the device rule is tested as a pure function, and each inference path is checked to put
its model where `inference_device()` says (a path that forgot would run a GPU user's evaluation,
reference pass, judge or demo on the CPU, silently and ~50× slower)."""

import pytest
import torch

import preftune.dpo.refcache
import preftune.models
from preftune.data.pairs import Pair
from preftune.dpo.logps import pack_pair
from preftune.models import inference_device, load_model


def test_the_inference_device_is_this_ranks_gpu_when_there_is_one():
    assert inference_device(cuda=False, environ={"LOCAL_RANK": "1"}) == torch.device("cpu")
    assert inference_device(cuda=True, environ={}) == torch.device("cuda", 0)
    assert inference_device(cuda=True, environ={"LOCAL_RANK": "1"}) == torch.device("cuda", 1)  # torchrun's rank-local GPU


class Spy:
    """inference_device() that records its callers' placements and answers the CPU (the only device here)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return torch.device("cpu")


@pytest.fixture
def spy(monkeypatch):
    s = Spy()
    monkeypatch.setattr(preftune.models, "inference_device", s)  # function-level imports read it here
    monkeypatch.setattr(preftune.dpo.refcache, "inference_device", s)
    return s


PAIRS = [Pair(prompt="SUBREDDIT: r/x\nPOST: a short post\nTL;DR:", chosen=" short", rejected=" a longer summary",
              post_id="p1", source="test:1")]


def test_evaluation_places_the_policy(spy, tiny_model, tiny_tokenizer):
    from preftune.dpo.evaluate import score_pairs

    score_pairs(load_model(str(tiny_model)), tiny_tokenizer, PAIRS)
    assert spy.calls == 1


def test_the_reference_pass_places_the_reference(spy, tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    from preftune.dpo.refcache import reference_logps

    monkeypatch.setenv("PREFTUNE_CACHE", str(tmp_path))
    packed = [pack_pair(tiny_tokenizer, p.prompt, p.chosen, p.rejected) for p in PAIRS]
    reference_logps(packed, str(tiny_model), lambda: load_model(str(tiny_model)))
    assert spy.calls == 1
    reference_logps(packed, str(tiny_model), lambda: load_model(str(tiny_model)))  # cached: nothing loaded or placed
    assert spy.calls == 1


def test_the_judge_places_the_model_it_generates_with(spy, tiny_model):
    from preftune.judge.generate import Decoding
    from preftune.judge.judge import model_generator

    model_generator(str(tiny_model), 2, "tiny")([PAIRS[0].prompt], [Decoding(max_new_tokens=2)])
    assert spy.calls == 1


def test_the_demo_places_both_models(spy, tiny_model):
    from preftune.serve.demo import DemoSpec, _load

    _load(DemoSpec(policy=str(tiny_model), base=str(tiny_model), beta=0.1, name="tiny"))
    assert spy.calls == 1  # one device for both sides
