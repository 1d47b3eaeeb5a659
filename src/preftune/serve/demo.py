"""What the demo serves, apart from the web page: which models, the request checks, the side-by-side
stream, and the implicit DPO reward of each summary.

A `DemoSpec` is plain data (model specs, β, limits, example posts): `preftune serve` reads it from a
run folder, a Space reads it from its demo.json. `Demo` loads the models once, on first use, so a
Space's app object can be built (and imported by a test) without loading anything.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from preftune.data.adapters import tldr_prompt
from preftune.data.rows import text_id
from preftune.errors import PreftuneError
from preftune.runs.folder import EVAL_PAIRS_FILE, open_run, read_pairs

if TYPE_CHECKING:
    from preftune.judge.generate import Decoding, Generation


class InputError(PreftuneError):
    """A request the demo refuses; the message is shown to the person as is."""


@dataclass(frozen=True)
class Limits:
    max_post_chars: int = 8000
    max_prompt_tokens: int = 1024
    max_new_tokens_cap: int = 256


@dataclass(frozen=True)
class Example:
    post_id: str
    subreddit: str
    title: str
    post: str

    @property
    def label(self) -> str:
        return f"r/{self.subreddit}: {self.title[:80]}"


@dataclass(frozen=True)
class DemoSpec:
    policy: str  # the tuned model: a run folder or a hub id
    base: str  # the base model the run started from (DPO's reference): a folder or a hub id
    beta: float
    name: str  # the run's name, shown in the page
    examples: tuple[Example, ...] = ()
    limits: Limits = field(default_factory=Limits)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> DemoSpec:
        examples = tuple(Example(**e) for e in d.get("examples", ()))
        return cls(d["policy"], d["base"], float(d["beta"]), d["name"], examples, Limits(**d.get("limits", {})))


_TLDR = re.compile(r"SUBREDDIT: r/(?P<subreddit>[^\n]*)\nTITLE: (?P<title>[^\n]*)\nPOST: (?P<post>.*)\nTL;DR:\Z", re.S)


def read_examples(run_dir: Path, limit: int | None = None) -> tuple[Example, ...]:
    """Held-out TL;DR posts of the run (one per post), parsed back from eval_pairs.jsonl's prompts.

    The posts are as the run evaluated them: --max-length may have trimmed them. Prompts of other
    formats (CNN/DM articles) are not offered; a run without eval_pairs.jsonl offers none."""
    path = Path(run_dir) / EVAL_PAIRS_FILE
    if not path.is_file():
        return ()
    examples: dict[str, Example] = {}
    for pair in read_pairs(path):
        m = _TLDR.match(pair.prompt)
        if m and pair.post_id not in examples:
            examples[pair.post_id] = Example(pair.post_id, m["subreddit"], m["title"], m["post"])
        if limit is not None and len(examples) >= limit:
            break
    return tuple(examples.values())


def spec_from_run(run_dir: Path, base: str | None = None, limits: Limits = Limits(),
                  examples: int | None = None) -> DemoSpec:
    """The demo of a run folder (checked by preftune.runs.folder.open_run): its model, base, β and posts."""
    run = open_run(run_dir)
    name = run.config.get("run_name") if isinstance(run.config.get("run_name"), str) else run.name
    return DemoSpec(str(run_dir), base or run.reference_model, run.beta, name, read_examples(run.path, examples), limits)


@dataclass
class Loaded:
    tokenizer: object
    policy: object
    base: object
    sources: tuple[str, str]  # where each model came from, in words


@dataclass(frozen=True)
class Summary:
    text: str
    tokens: int  # tokens the model produced for it (the EOS that DPO scores after it is not counted)
    reward: float  # β·(log π − log π_ref) of the text (+ EOS) under the tuned model
    ended: str = ""  # "eos" | "newline" | "length" (cut off at max new tokens) when known

    def describe(self) -> str:
        words = len(self.text.split())
        cut = " (cut off at max new tokens)" if self.ended == "length" else ""
        return (f"{words} word{'s' * (words != 1)} · {self.tokens} token{'s' * (self.tokens != 1)}{cut} · "
                f"implicit reward {self.reward:+.3f}")


def limit_text(limits: Limits, chars_per_token: float | None = None) -> str:
    """What the post box accepts, both limits stated: the token limit usually binds first, so its size in
    characters (estimated from the tokenizer on real posts) is given when known."""
    tokens = f"{limits.max_prompt_tokens:,} tokens"
    if chars_per_token:
        approx = min(limits.max_post_chars, int(limits.max_prompt_tokens * chars_per_token) // 100 * 100)
        tokens += f" (about {approx:,} characters of English)"
    return f"Up to {tokens} and {limits.max_post_chars:,} characters (subreddit + title + post)."


def models_text(spec: DemoSpec, sources: tuple[str, str] | None) -> str:
    """Which model each side is and where it was loaded from (sources: (tuned, base), once loaded)."""
    where = sources or ("loads on the first request", "loads on the first request")
    return (f"**Base**: `{spec.base}` — {where[1]}  \n"
            f"**DPO-tuned**: `{spec.name}` (`{spec.policy}`) — {where[0]}")


class Demo:
    """The two models behind the page; loaded once (thread-safe), on `load()` or the first request."""

    def __init__(self, spec: DemoSpec):
        self.spec = spec
        self._loaded: Loaded | None = None
        self._lock = threading.Lock()

    def load(self) -> Loaded:
        with self._lock:
            if self._loaded is None:
                self._loaded = _load(self.spec)
            return self._loaded

    def check(self, subreddit: str, title: str, post: str, s: Decoding) -> list[int]:
        """The prompt's token ids, or InputError with what to change."""
        lim = self.spec.limits
        if not (post or "").strip():
            raise InputError("The post is empty: paste a post (or pick a held-out one) first.")
        chars = len(subreddit or "") + len(title or "") + len(post)
        if chars > lim.max_post_chars:
            raise InputError(f"The post is too long: {chars:,} characters; this demo takes at most "
                             f"{lim.max_post_chars:,}. Shorten it and try again.")
        if not 1 <= s.max_new_tokens <= lim.max_new_tokens_cap:
            raise InputError(f"Max new tokens must be between 1 and {lim.max_new_tokens_cap}, got {s.max_new_tokens}.")
        if not 0 <= s.temperature <= 2:
            raise InputError(f"Temperature must be between 0 and 2, got {s.temperature}.")
        if not 0 < s.top_p <= 1:
            raise InputError(f"Top-p must be in (0, 1], got {s.top_p}.")
        if s.seed < 0:
            raise InputError(f"The seed must be ≥ 0, got {s.seed}.")
        loaded = self.load()
        ids = loaded.tokenizer(prompt(subreddit, title, post))["input_ids"]
        if len(ids) > lim.max_prompt_tokens:
            raise InputError(f"The post is too long: {len(ids):,} tokens; this demo takes at most "
                             f"{lim.max_prompt_tokens:,}. Shorten it and try again.")
        context = getattr(loaded.policy.config, "max_position_embeddings", None)
        if context and len(ids) + s.max_new_tokens > context:
            raise InputError(f"Post ({len(ids):,} tokens) + max new tokens ({s.max_new_tokens}) exceed the "
                             f"model's context of {context:,} tokens.")
        return ids

    @property
    def sources(self) -> tuple[str, str] | None:
        """Where (tuned, base) came from, in words, once loaded."""
        return self._loaded.sources if self._loaded else None

    def chars_per_token(self) -> float | None:
        """Characters per prompt token on the held-out posts (None before loading or without posts)."""
        if self._loaded is None or not self.spec.examples:
            return None
        texts = [prompt(e.subreddit, e.title, e.post) for e in self.spec.examples]
        tokens = sum(len(ids) for ids in self._loaded.tokenizer(texts)["input_ids"])
        return sum(len(t) for t in texts) / tokens

    def stream_sides(self, prompt_ids: list[int], s: Decoding) -> Iterator[list[Generation]]:
        """[base, tuned] Generations (text, produced tokens, how it ended) after each decoding step."""
        from preftune.judge.generate import stream_sides

        loaded = self.load()
        yield from stream_sides([loaded.base, loaded.policy], loaded.tokenizer, prompt_ids, s)

    def stream(self, prompt_ids: list[int], s: Decoding) -> Iterator[list[str]]:
        """[base text, tuned text] after each decoding step: preftune.judge.generate's decoder, so a seed gives
        the summaries `preftune judge` would write with it."""
        from preftune.judge.generate import stream_texts

        loaded = self.load()
        yield from stream_texts([loaded.base, loaded.policy], loaded.tokenizer, prompt_ids, s)

    def score(self, prompt_text: str, texts: list[str], sides: list[Generation] | None = None) -> list[Summary]:
        """Each text's implicit DPO reward β·(log π − log π_ref), scored as a whole summary (+ EOS),
        exactly as training and evaluation score completions. Token counts: what each side produced
        (`sides`, from `stream_sides`), else the text's tokens as scored, without the EOS."""
        from preftune.dpo.logps import completion_logps, tokenize_completion

        loaded = self.load()
        batch = [tokenize_completion(loaded.tokenizer, prompt_text, t) for t in texts]
        pad = loaded.tokenizer.pad_token_id
        policy, counts = completion_logps(loaded.policy, batch, pad)  # (N,), (N,)
        reference, _ = completion_logps(loaded.base, batch, pad)
        rewards = self.spec.beta * (policy - reference)
        made = [(g.tokens, g.ended) for g in sides] if sides else [(int(n) - 1, "") for n in counts]
        return [Summary(t, n, float(r), ended) for t, (n, ended), r in zip(texts, made, rewards, strict=True)]


def fields(subreddit: str | None, title: str | None, post: str | None) -> tuple[str, str, str]:
    """The request's fields as the model sees them (and as a vote saves them)."""
    return (subreddit or "").strip().removeprefix("r/"), (title or "").strip(), (post or "").strip()


def prompt(subreddit: str, title: str, post: str) -> str:
    return tldr_prompt(*fields(subreddit, title, post))[0]


def post_id(post: str) -> str:
    return text_id(post.strip())


def _load(spec: DemoSpec) -> Loaded:
    from preftune.models import (
        inference_device,
        load_model,
        load_tokenizer,
        resolve_model,
    )

    policy, base = resolve_model(spec.policy), resolve_model(spec.base)
    tokenizer = load_tokenizer(policy.path)
    device = inference_device()
    models = load_model(policy.path).to(device).eval(), load_model(base.path).to(device).eval()
    return Loaded(tokenizer, models[0], models[1], (policy.source, base.source))
