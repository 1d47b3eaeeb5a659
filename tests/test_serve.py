"""The demo without a browser: its decoding is the judge's, request checks, implicit rewards, votes as
preference data (read back by `data prepare`, no row lost on concurrent clicks, the file lock from
filelock), the run read through preftune.runs.folder, and the API through gradio_client."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
from filelock import Timeout

from preftune.config import DataConfig, ServeConfig, TrainConfig
from preftune.data.adapters import tldr_prompt
from preftune.errors import PreftuneError
from preftune.judge.generate import Decoding, generate
from preftune.serve.demo import (
    Demo,
    DemoSpec,
    InputError,
    Limits,
    limit_text,
    models_text,
    prompt,
    read_examples,
    spec_from_run,
)
from preftune.serve.feedback import append_jsonl, comparison_row, lock_for

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
POST = "I went to the shop and bought bread, then I forgot it on the bus home."


def tiny_run(model: Path, tmp_path_factory) -> Path:
    """A real run folder: one DPO step of the tiny model (eval_pairs.jsonl is written, eval skipped).
    Trained once per test session; the serve, browser and Space tests only read it."""
    from preftune.runs.dpo import train

    root = tmp_path_factory.getbasetemp() / "serve-tiny-run"
    cfg = TrainConfig(output_dir=str(root), model=str(model), lr=5e-2, batch_size=4, max_length=192, max_pairs=4,
                      max_eval_pairs=6, evaluate=False)
    if (root / cfg.run_name).is_dir():
        return root / cfg.run_name
    return train(DataConfig(fraction=0.03, seed=3), cfg)


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory) -> Path:
    return tiny_run(tiny_model, tmp_path_factory)


@pytest.fixture(scope="module")
def demo(run_dir) -> Demo:
    limits = Limits(max_post_chars=2000, max_prompt_tokens=100, max_new_tokens_cap=40)
    demo = Demo(spec_from_run(run_dir, limits=limits))
    demo.load()
    return demo


# ---- decoding (preftune.judge.generate's, tested there; here: the demo uses it) -------------------------


def test_the_demo_writes_what_the_judge_would_for_the_same_seed(demo):
    """The page's stream and `preftune judge`'s batched generation share one decoder."""
    loaded = demo.load()
    p = prompt("test", "Bread", POST)
    for d in (Decoding(0.0, 1.0, 20, 0), Decoding(1.0, 0.9, 20, 5)):
        streamed = list(demo.stream(loaded.tokenizer(p)["input_ids"], d))[-1]
        judged = [generate(m, loaded.tokenizer, [p], d)[0].text for m in (loaded.base, loaded.policy)]
        assert streamed == judged


def test_stream_yields_growing_texts_for_both_models(demo):
    loaded = demo.load()
    ids = loaded.tokenizer(prompt("test", "Bread", POST))["input_ids"]
    steps = list(demo.stream(ids, Decoding(0.7, 0.95, 25)))
    assert 1 < len(steps) <= 25
    for side in (0, 1):
        lengths = [len(step[side]) for step in steps]
        assert lengths == sorted(lengths) and len(set(lengths)) >= 3
        assert "\n" not in steps[-1][side].lstrip()


# ---- requests and rewards ------------------------------------------------------------------------


@pytest.mark.parametrize(("post", "settings", "message"), [
    ("   ", {}, "The post is empty"),
    ("x" * 1990, {}, "2,001 characters; this demo takes at most 2,000"),  # + "test" + "A title"
    (POST * 6, {}, "tokens; this demo takes at most 100"),
    (POST, {"max_new_tokens": 41}, "between 1 and 40, got 41"),
    (POST, {"max_new_tokens": 0}, "between 1 and 40, got 0"),
    (POST, {"temperature": -1.0}, "Temperature must be between 0 and 2"),
    (POST, {"top_p": 0.0}, "Top-p must be in (0, 1]"),
])
def test_check_refuses_bad_requests_with_a_clear_message(demo, post, settings, message):
    with pytest.raises(InputError) as e:
        demo.check("test", "A title", post, Decoding(**{"max_new_tokens": 20, **settings}))
    assert message in str(e.value)


def test_token_counts_are_the_tokens_produced_never_max_plus_one(demo):
    """A summary cut off at max new tokens shows exactly max tokens, and says it was cut off."""
    loaded = demo.load()
    p = prompt("test", "Bread", POST)
    d = Decoding(1.5, 1.0, 6, 3, stop_at_newline=False)  # hot and short: cut off at 6
    *_, final = demo.stream_sides(loaded.tokenizer(p)["input_ids"], d)
    assert [g.ended for g in final] == ["length", "length"] and [g.tokens for g in final] == [6, 6]
    summaries = demo.score(p, [g.text for g in final], final)
    assert [s.tokens for s in summaries] == [6, 6]
    assert all("6 tokens (cut off at max new tokens)" in s.describe() for s in summaries)
    ended = Decoding(0.0, 1.0, 40, 0)
    *_, final = demo.stream_sides(loaded.tokenizer(p)["input_ids"], ended)
    assert all(g.ended in ("eos", "newline", "length") and 0 < g.tokens <= 40 for g in final)
    assert [g.text for g in final] == list(demo.stream(loaded.tokenizer(p)["input_ids"], ended))[-1]


@pytest.mark.parametrize(("limits", "chars_per_token", "expected"), [
    (Limits(8000, 1024), 3.42, "Up to 1,024 tokens (about 3,500 characters of English) and 8,000 characters"),
    (Limits(2000, 1024), 3.42, "Up to 1,024 tokens (about 2,000 characters of English) and 2,000 characters"),
    (Limits(8000, 1024), None, "Up to 1,024 tokens and 8,000 characters"),
])
def test_the_post_box_states_the_limit_that_applies(limits, chars_per_token, expected):
    assert limit_text(limits, chars_per_token).startswith(expected)


def test_the_page_says_which_model_each_side_is_and_where_it_came_from(demo, run_dir, tiny_model):
    assert demo.chars_per_token() > 1
    text = models_text(demo.spec, demo.sources)
    assert f"**Base**: `{tiny_model}` — local folder {tiny_model}" in text
    assert f"**DPO-tuned**: `{run_dir.name}` (`{run_dir}`) — local folder {run_dir}" in text
    assert "loads on the first request" in models_text(demo.spec, None)


def test_new_seed_and_refusal_notice():
    import random

    from preftune.serve.app import SEED_MAX, new_seed, refusal

    seeds = {new_seed(random.Random(i)) for i in range(20)}
    assert len(seeds) == 20 and all(0 <= s <= SEED_MAX for s in seeds)
    assert refusal("The post is empty.") == "**Cannot summarize this:** The post is empty."


def test_implicit_reward_is_beta_times_the_logp_difference(demo):
    """Recomputed here from full-sequence logits, independently of preftune.dpo.logps."""
    loaded, text = demo.load(), " Forgot the bread on the bus."
    p = prompt("test", "Bread", POST)
    [summary] = demo.score(p, [text])
    ids = loaded.tokenizer(p + text + loaded.tokenizer.eos_token)["input_ids"]
    start = len(loaded.tokenizer(p)["input_ids"])

    def logp(model):
        with torch.no_grad():
            logps = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)  # (T-1, V)
        return logps[torch.arange(start - 1, len(ids) - 1), torch.tensor(ids[start:])].sum().item()

    assert summary.tokens == len(ids) - start - 1  # the summary's own tokens: the EOS it is scored with is not one
    assert summary.reward == pytest.approx(demo.spec.beta * (logp(loaded.policy) - logp(loaded.base)), abs=1e-4)
    assert summary.reward != 0  # the run moved the model


def test_spec_from_run_reads_beta_base_and_held_out_posts(run_dir, tiny_model):
    spec = spec_from_run(run_dir)
    assert (spec.base, spec.beta, spec.name) == (str(tiny_model), 0.1, run_dir.name)
    eval_posts = {json.loads(line)["post_id"] for line in (run_dir / "eval_pairs.jsonl").open()}
    assert {e.post_id for e in spec.examples} == eval_posts
    prompts = {json.loads(line)["prompt"] for line in (run_dir / "eval_pairs.jsonl").open()}
    assert {tldr_prompt(e.subreddit, e.title, e.post)[0] for e in spec.examples} <= prompts  # parsed back exactly
    assert DemoSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert len(read_examples(run_dir, limit=2)) == 2


def _damaged(tmp: Path, run: Path, edit) -> Path:
    copy = shutil.copytree(run, tmp / run.name, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((copy / "preftune_config.json").read_text())
    edit(config)
    (copy / "preftune_config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp, run: tmp, "is not a preftune run folder (no preftune_config.json)"),
    (lambda tmp, run: tmp / "missing", "no such run folder"),
    (lambda tmp, run: (tmp / "f.txt", (tmp / "f.txt").write_text("x"))[0], "is a file, not a run folder"),
    (lambda tmp, run: _damaged(tmp, run, lambda c: c["train"].update(beta=None)), "key 'train.beta' must be"),
    (lambda tmp, run: _damaged(tmp, run, lambda c: c.update(reference_model=3)), "key 'reference_model' must be text, got an integer"),
])
def test_serve_refuses_what_is_not_a_run(run_dir, tmp_path, capsys, make, message):
    """One line and exit 2, from preftune.runs.folder.open_run (the demo has no checks of its own)."""
    from preftune.cli import main

    path = make(tmp_path, run_dir)
    assert main(["serve", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    with pytest.raises(PreftuneError, match="preftune_config|no such|a file"):
        spec_from_run(path)


# ---- votes ---------------------------------------------------------------------------------------


def vote_row(i: int, choice: int = 0, post: str = POST, size: int = 0) -> dict:
    return comparison_row(f"post{i}", "test", "A title", post + " x" * size,
                          [f" Summary A {i}.", f" Summary B {i}."], ["base:m", "dpo:run"], choice)


def test_votes_are_read_back_by_data_prepare(tmp_path):
    """The demo's file is preference data: `preftune data prepare` turns it into pairs, chosen = the vote."""
    from preftune.cli import main

    votes = tmp_path / "preferences.jsonl"
    for i in range(6):
        append_jsonl(votes, vote_row(i, choice=i % 2, post=f"Post number {i}: I lost my keys."))
    assert main(["data", "prepare", "--dataset", str(votes), "--eval-fraction", "0", "--test-fraction", "0", "--out", str(tmp_path / "p")]) == 0
    pairs = [json.loads(line) for line in (tmp_path / "p" / "train.jsonl").open()]
    assert len(pairs) == 6
    by_post = {p["post_id"]: p for p in pairs}
    assert by_post["post1"]["chosen"] == " Summary B 1." and by_post["post1"]["rejected"] == " Summary A 1."
    assert by_post["post0"]["chosen"] == " Summary A 0."
    assert by_post["post0"]["prompt"] == prompt("test", "A title", "Post number 0: I lost my keys.")


def test_append_waits_for_the_file_lock(tmp_path):
    """While another writer holds the lock, nothing is written (a bounded wait times out, no sleeps
    involved); once it is released the row lands."""
    path = tmp_path / "votes.jsonl"
    with lock_for(path):
        with pytest.raises(Timeout):
            append_jsonl(path, vote_row(0), timeout=0.05)
        assert not path.exists() or path.read_text() == ""
    append_jsonl(path, vote_row(0), timeout=0.05)
    assert json.loads(path.read_text())["info"]["id"] == "post0"


def test_no_module_of_the_demo_or_judge_imports_fcntl():
    """preftune must import on Windows: file locks come from filelock."""
    import preftune

    root = Path(preftune.__file__).parent
    mine = [*root.glob("serve/*.py"), *root.glob("judge/*.py")]
    assert len(mine) >= 7 and [p.name for p in mine if "import fcntl" in p.read_text()] == []


def _append_many(path: str, writer: int, n: int) -> None:
    for i in range(n):
        append_jsonl(Path(path), vote_row(writer * 1000 + i, size=10_000))  # 20 kB lines: many pipe buffers


def test_concurrent_appends_lose_nothing(tmp_path):
    path = tmp_path / "votes.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(str(path), w, 25)) for w in range(4)]
    threads = [threading.Thread(target=_append_many, args=(str(path), 10 + w, 25)) for w in range(2)]
    for worker in procs + threads:
        worker.start()
    for worker in procs + threads:
        worker.join(60)
    rows = [json.loads(line) for line in path.read_text().splitlines()]  # a torn line would not parse
    assert sorted(r["info"]["id"] for r in rows) == sorted(f"post{w * 1000 + i}" for w in [0, 1, 2, 3, 10, 11]
                                                           for i in range(25))


# ---- the app, through its API ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    from preftune.serve.app import build_app, free_port, launch

    votes = tmp_path_factory.mktemp("votes") / "preferences.jsonl"
    blocks = build_app(demo, votes)
    _, url, _ = launch(blocks, ServeConfig(port=free_port("127.0.0.1")), prevent_thread_lock=True, quiet=True)
    yield url, votes
    blocks.close()


def client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)


def test_api_streams_both_summaries_then_scores_them(server):
    url, _ = server
    job = client(url).submit("test", "Bread", POST, 0.0, 1.0, 30, 0, api_name="/summarize")
    base, tuned, base_info, tuned_info = job.result(timeout=60)
    outputs = job.outputs()
    assert len(outputs) >= 3  # streamed: one update per decoding step, then the scored result
    assert len({len(o[0]) for o in outputs}) >= 3 and len({len(o[1]) for o in outputs}) >= 3
    assert base and tuned and "implicit reward" in base_info and "implicit reward" in tuned_info


def test_api_refuses_bad_input_and_keeps_serving(server):
    from gradio_client.exceptions import AppError

    c = client(server[0])
    with pytest.raises(AppError, match="tokens; this demo takes at most 100"):
        c.predict("test", "Bread", POST * 6, 0.0, 1.0, 30, 0, api_name="/summarize")
    with pytest.raises(AppError, match="The post is empty"):
        c.predict("test", "Bread", "", 0.0, 1.0, 30, 0, api_name="/summarize")
    with pytest.raises(AppError, match="40"):  # over the max-new-tokens cap (the slider's maximum)
        c.predict("test", "Bread", POST, 0.0, 1.0, 41, 0, api_name="/summarize")
    assert "implicit reward" in c.predict("test", "Bread", POST, 0.0, 1.0, 10, 0, api_name="/summarize")[2]


def test_concurrent_votes_through_the_api_all_land(server):
    """Six sessions summarize (queued), then all vote at the same instant: six rows, none torn."""
    url, votes = server
    before = len(votes.read_text().splitlines()) if votes.exists() else 0
    barrier, messages = threading.Barrier(6), []

    def session(i: int) -> None:
        c = client(url)
        base, tuned, *_ = c.predict("test", "Bread", f"{POST} Day {i}.", 1.0, 1.0, 40, i, api_name="/summarize")
        barrier.wait(60)
        messages.append((c.predict(api_name="/prefer_tuned" if i % 2 else "/prefer_base"), base, tuned))

    threads = [threading.Thread(target=session, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(messages) == 6 and all(m[0].startswith("Saved") for m in messages), [m[0] for m in messages]
    rows = [json.loads(line) for line in votes.read_text().splitlines()][before:]
    assert len(rows) == 6
    shown = {(r["summaries"][0]["text"].lstrip(), r["summaries"][1]["text"].lstrip()) for r in rows}
    assert shown == {(b, t) for _, b, t in messages}
    assert all(r["summaries"][1]["policy"].startswith("dpo:") for r in rows)


@pytest.mark.parametrize("make, message", [
    (lambda tmp: (tmp / "f", (tmp / "f").write_text("x"))[0] / "votes.jsonl",
     ": {tmp}/f is a file, not a folder; pass another file"),
    (lambda tmp: (tmp / "f", (tmp / "f").write_text("x"))[0] / "deeper" / "votes.jsonl",
     ": {tmp}/f is a file, not a folder (it writes to {tmp}/f/deeper); pass another file"),
    (lambda tmp: (tmp / "d", (tmp / "d").mkdir())[0], " is a folder; pass a file (e.g. {tmp}/d/preferences.jsonl)"),
])
def test_a_feedback_file_that_cannot_be_written_is_refused_before_the_models_load(run_dir, tmp_path, capsys,
                                                                                 monkeypatch, make, message):
    """`serve --feedback` below a file was found only by the first vote (an error in the page)."""
    from preftune.cli import main
    from preftune.serve import app

    def no(*args, **kwargs):
        raise AssertionError("reached: the check must come first")

    monkeypatch.setattr(Demo, "load", no)
    monkeypatch.setattr(app, "launch", no)
    path = make(tmp_path)
    assert main(["serve", str(run_dir), "--feedback", str(path)]) == 2
    assert capsys.readouterr().err == f"preftune: error: --feedback {path}{message.format(tmp=tmp_path)}\n"
