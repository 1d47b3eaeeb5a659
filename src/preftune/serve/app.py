"""The Gradio page: a post in, the base and the DPO-tuned model's TL;DRs side by side (streamed),
each with its length and implicit reward (the run's own rule, named on the page), and a "which is
better?" vote saved as preference data.

Offline by design: no analytics, no telemetry, no server-side rendering, the theme's fonts are
served by gradio itself (no CDN). The summarize endpoint is public API (`api_name="summarize"`),
callable with gradio_client; see docs/serve.md.
"""

from __future__ import annotations

import logging
import os
import random

# read by gradio and huggingface_hub at import time: set before importing them
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from preftune.config import ServeConfig  # noqa: E402
from preftune.judge.generate import Decoding  # noqa: E402
from preftune.serve.demo import (  # noqa: E402
    Demo,
    InputError,
    Limits,
    fields,
    limit_text,
    post_id,
    prompt,
    reward_text,
    spec_from_run,
)
from preftune.serve.feedback import append_jsonl, check_writable, comparison_row  # noqa: E402

logger = logging.getLogger(__name__)
SIDES = ("base", "DPO-tuned")
SAMPLING = Decoding(temperature=0.7, top_p=0.95, max_new_tokens=64, seed=0)  # the page's initial knob values

INTRO = """## {name}: base vs DPO-tuned TL;DRs
Paste a Reddit post (or pick a held-out one the run never trained on), then **Summarize**: both models
write a one-line TL;DR from the same prompt, seed and settings. Under each summary, its length and its
**implicit reward** by the run's own rule, the score `preftune eval` ranks its summaries by (higher: the
tuned model favours it more): {reward}. Then say which summary is better: your vote is saved as a new
preference pair."""
WRITING = "*writing…*"
SCORING = "*done · scoring…*"
SEED_MAX = 2**31 - 1


def _number(value, name: str, kind=float):
    if value is None or value == "":
        raise InputError(f"{name} is empty: give it a value.")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}.") from None
    if kind is int and number != float(value):
        raise InputError(f"{name} must be a whole number, got {value!r}.")
    return number


def sampling_from(temperature, top_p, max_new_tokens, seed) -> Decoding:
    """The page's knobs as preftune.judge.generate's Decoding (one line per summary, as the judge writes them)."""
    return Decoding(_number(temperature, "Temperature"), _number(top_p, "Top-p"),
                    _number(max_new_tokens, "Max new tokens", int), _number(seed, "Seed", int))


def new_seed(rng: random.Random | None = None) -> int:
    """A fresh seed for the one-click button (the Number field accepts 0 … SEED_MAX)."""
    return (rng or random).randint(0, SEED_MAX)


def refusal(message: str) -> str:
    """A refused request as the notice beside the inputs shows it (it stays until the next run)."""
    return f"**Cannot summarize this:** {message}"


def build_app(demo: Demo, feedback: Path) -> gr.Blocks:
    spec = demo.spec
    examples = {ex.label: ex for ex in spec.examples}
    policies = [f"base:{spec.base}", f"dpo:{spec.name}"]

    def fill(label):
        ex = examples.get(label)
        return (ex.subreddit, ex.title, ex.post) if ex else (gr.skip(), gr.skip(), gr.skip())

    def checked(subreddit, title, post, temperature, top_p, max_new_tokens, seed):
        """(Decoding, prompt ids) of a request, or InputError."""
        s = sampling_from(temperature, top_p, max_new_tokens, seed)
        return s, demo.check(subreddit, title, post, s)

    def saved_state(subreddit, title, post, s, texts, summaries) -> dict:
        subreddit, title, post = fields(subreddit, title, post)
        knobs = {k: getattr(s, k) for k in ("temperature", "top_p", "max_new_tokens", "seed")}  # saved with the vote
        return {"post": post, "title": title, "subreddit": subreddit, "texts": texts, "sampling": knobs,
                "rewards": [x.reward for x in summaries], "voted": False}

    def summarize(subreddit, title, post, temperature, top_p, max_new_tokens, seed):
        """The /summarize API (unchanged): streams both texts, then their infos; refusals are gr.Error."""
        try:
            s, ids = checked(subreddit, title, post, temperature, top_p, max_new_tokens, seed)
        except InputError as e:
            raise gr.Error(str(e), title="Cannot summarize this", print_exception=False) from None
        sides = []
        for sides in demo.stream_sides(ids, s):  # shown without leading whitespace; scored and saved as generated
            yield sides[0].text.lstrip(), sides[1].text.lstrip(), WRITING, WRITING, None
        texts = [g.text for g in sides] or ["", ""]
        summaries = demo.score(prompt(subreddit, title, post), texts, sides or None)
        last = saved_state(subreddit, title, post, s, texts, summaries)
        yield texts[0].lstrip(), texts[1].lstrip(), summaries[0].describe(), summaries[1].describe(), last

    def begin():
        """At the click, before the queue: no second run, no vote on summaries about to be replaced."""
        return gr.update(interactive=False), gr.update(interactive=False), gr.update(interactive=False), ""

    def write(subreddit, title, post, temperature, top_p, max_new_tokens, seed):
        """The page's run, part 1: the two texts, streamed. A refusal goes to the notice beside the inputs.
        Ends with the last token (scoring is part 2), handing (request, generations) on in `pending`."""
        try:
            s, ids = checked(subreddit, title, post, temperature, top_p, max_new_tokens, seed)
        except InputError as e:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), refusal(str(e)), None
            return
        sides = []
        for sides in demo.stream_sides(ids, s):
            infos = [SCORING if g.ended else WRITING for g in sides]
            yield sides[0].text.lstrip(), sides[1].text.lstrip(), *infos, "", None
        yield gr.skip(), gr.skip(), SCORING, SCORING, "", ((subreddit, title, post), s, sides)

    def scored(pending):
        """Part 2: the implicit rewards; the votes open once both summaries are complete and scored."""
        if not pending:
            return gr.skip(), gr.skip(), gr.skip(), gr.update(interactive=False), gr.update(interactive=False)
        (subreddit, title, post), s, sides = pending
        texts = [g.text for g in sides]
        summaries = demo.score(prompt(subreddit, title, post), texts, sides)
        last = saved_state(subreddit, title, post, s, texts, summaries)
        votable = gr.update(interactive=True)
        return summaries[0].describe(), summaries[1].describe(), last, votable, votable

    def vote(choice: int, last: dict | None):
        if not last:
            return "Summarize a post first, then vote.", last
        if last["voted"]:
            return "Your vote for these two summaries is already saved.", last
        if last["texts"][0].strip() == last["texts"][1].strip():
            return "The two summaries are identical: there is nothing to prefer.", last
        row = comparison_row(post_id(last["post"]), last["subreddit"], last["title"], last["post"],
                             last["texts"], policies, choice,
                             {"sampling": last["sampling"], "implicit_rewards": last["rewards"],
                              "implicit_reward_rule": reward_text(spec)})
        append_jsonl(feedback, row)
        saved = f"Saved: the **{SIDES[choice]}** summary is better (appended to `{feedback.name}`)."
        return saved, {**last, "voted": True}

    with gr.Blocks(title=f"preftune · {spec.name}") as blocks:
        gr.Markdown(INTRO.format(name=spec.name, reward=reward_text(spec)))
        models = gr.Markdown(demo.models_text(), elem_id="models")
        with gr.Row():
            with gr.Column(scale=3):
                example = gr.Dropdown(list(examples), value=None, label=f"Held-out posts ({len(examples)})",
                                      info="Fill the fields with a post from the run's evaluation split",
                                      visible=bool(examples), elem_id="example")
                with gr.Row():
                    subreddit = gr.Textbox(label="Subreddit", placeholder="relationships", scale=1,
                                           elem_id="subreddit")
                    title = gr.Textbox(label="Title", scale=3, elem_id="title")
                limit = limit_text(spec.limits, demo.chars_per_token())
                post = gr.Textbox(label="Post", lines=8, max_lines=16, elem_id="post", info=limit, placeholder=limit)
            with gr.Column(scale=1):
                temperature = gr.Slider(0, 2, value=SAMPLING.temperature, step=0.05, elem_id="temperature",
                                        label="Temperature", info="0 = greedy")
                top_p = gr.Slider(0.05, 1, value=SAMPLING.top_p, step=0.05, label="Top-p", elem_id="top-p")
                max_new = gr.Slider(1, spec.limits.max_new_tokens_cap, step=1, elem_id="max-new-tokens",
                                    value=min(SAMPLING.max_new_tokens, spec.limits.max_new_tokens_cap),
                                    label="Max new tokens")
                with gr.Row(equal_height=True):
                    seed = gr.Number(value=SAMPLING.seed, precision=0, minimum=0, maximum=SEED_MAX, label="Seed",
                                     elem_id="seed", scale=3)
                    reseed = gr.Button("New seed", elem_id="new-seed", scale=1, min_width=80)
                go = gr.Button("Summarize", variant="primary", elem_id="summarize")
                notice = gr.Markdown(elem_id="notice")
        with gr.Row(equal_height=True):
            with gr.Column():
                base_text = gr.Textbox(label=f"Base · {spec.base}", lines=3, interactive=False, elem_id="base-summary")
                base_info = gr.Markdown(elem_id="base-info")
            with gr.Column():
                tuned_text = gr.Textbox(label=f"DPO-tuned · {spec.name}", lines=3, interactive=False,
                                        elem_id="tuned-summary")
                tuned_info = gr.Markdown(elem_id="tuned-info")
        with gr.Row():
            prefer_base = gr.Button("◀ Base is better", elem_id="prefer-base", interactive=False)
            prefer_tuned = gr.Button("DPO-tuned is better ▶", elem_id="prefer-tuned", interactive=False)
        status = gr.Markdown(elem_id="vote-status")
        last, pending = gr.State(None), gr.State(None)
        api = gr.Button(visible=False)  # carries the /summarize API event (the page runs `write` + `scored`)

        example.change(fill, example, [subreddit, title, post], api_visibility="private")
        request = [subreddit, title, post, temperature, top_p, max_new, seed]
        api.click(summarize, request, [base_text, tuned_text, base_info, tuned_info, last], api_name="summarize")
        private = {"api_visibility": "private"}
        (go.click(begin, None, [go, prefer_base, prefer_tuned, notice], queue=False, **private)
         .then(write, request, [base_text, tuned_text, base_info, tuned_info, notice, pending], **private)
         .then(scored, pending, [base_info, tuned_info, last, prefer_base, prefer_tuned], show_progress="hidden",
               concurrency_id="score", concurrency_limit=1, **private)  # not queued behind other generations
         .then(lambda: gr.update(interactive=True), None, go, queue=False, **private))  # also after an error
        reseed.click(lambda: new_seed(), None, seed, queue=False, **private)
        def loaded():  # a Space builds the page before loading the models: say what loaded, once it has
            limit = limit_text(spec.limits, demo.chars_per_token())
            return demo.models_text(), gr.update(info=limit, placeholder=limit)

        blocks.load(loaded, None, [models, post], queue=False, show_progress="hidden", **private)
        # votes are instant: not queued behind generations (concurrent votes are what the file lock is for)
        prefer_base.click(lambda last: vote(0, last), last, [status, last], api_name="prefer_base",
                          concurrency_limit=None)
        prefer_tuned.click(lambda last: vote(1, last), last, [status, last], api_name="prefer_tuned",
                           concurrency_limit=None)
    return blocks


def launch(blocks: gr.Blocks, cfg: ServeConfig, **kwargs):
    """Queue (one generation at a time by default; the rest wait their turn) and serve."""
    blocks.queue(default_concurrency_limit=cfg.concurrency, max_size=cfg.queue_size)
    return blocks.launch(server_name=cfg.host, server_port=cfg.port, ssr_mode=False, show_error=True,
                         theme=gr.themes.Default(), **kwargs)


def serve(run_dir: Path, cfg: ServeConfig) -> None:
    """`preftune serve`: load the run and its base model, then serve until interrupted."""
    limits = Limits(cfg.max_post_chars, cfg.max_prompt_tokens, cfg.max_new_tokens_cap)
    demo = Demo(spec_from_run(run_dir, cfg.base, limits), cfg.precision)
    feedback = Path(cfg.feedback) if cfg.feedback else Path(run_dir) / "preferences.jsonl"
    check_writable(feedback)  # before the models load: a vote must never be the first to find out
    loaded = demo.load()
    logger.info(f"serve: tuned {demo.spec.name} ← {loaded.sources[0]}")
    logger.info(f"serve: base {demo.spec.base} ← {loaded.sources[1]}")
    if loaded.reference_source:
        logger.info(f"serve: reward reference {demo.spec.reference} ← {loaded.reference_source}")
    logger.info(f"serve: implicit reward {reward_text(demo.spec)}; {len(demo.spec.examples)} held-out posts, "
                f"votes → {feedback}")
    if cfg.port == 0:
        cfg.port = free_port(cfg.host)
    launch(build_app(demo, feedback), cfg)


def free_port(host: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
