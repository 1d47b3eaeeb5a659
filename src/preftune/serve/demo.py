"""What the demo serves, apart from the web page: which models, the request checks, the side-by-side
stream, and each summary's implicit reward by the run's own rule (dpo.evaluate's, against the run's
reference: the chain's parent; none for a reference-free loss).

A `DemoSpec` is plain data (model specs, reward rule, limits, example posts): `preftune serve` reads
it from a run folder, a Space from its demo.json. `Demo` loads the models once, on first use, so a
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
from preftune.runs.folder import CHAIN_LABELS, EVAL_PAIRS_FILE
from preftune.runs.results import Run, open_run, read_pairs

if TYPE_CHECKING:
    from preftune.dpo.losses import RewardRule
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
    base: str  # the model shown beside it (default: the run's reference model): a folder or a hub id
    beta: float
    name: str  # the run's name, shown in the page
    examples: tuple[Example, ...] = ()
    limits: Limits = field(default_factory=Limits)
    reward: str | None = "dpo"  # the run's implicit reward (losses.reward_name); None: not shown (see reference)
    ld_alpha: float | None = None  # reward "ld_dpo": the LD weight of its log-probs
    reference: str | None = None  # the reward's π_ref (the chain's parent; left out: base); None: reference-free
    reference_kind: str = "base"  # the chain entry the reference is: "base", "sft" or "dpo"

    def __post_init__(self):
        if self.reference is None and self.reward not in (None, "simpo"):  # a reward that needs one: the base's
            object.__setattr__(self, "reference", self.base)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> DemoSpec:
        """A demo.json; one written before reward rules (plain DPO's reward, the base as reference) reads as such."""
        examples = tuple(Example(**e) for e in d.get("examples", ()))
        return cls(d["policy"], d["base"], float(d["beta"]), d["name"], examples, Limits(**d.get("limits", {})),
                   d.get("reward", "dpo"), d.get("ld_alpha"), d.get("reference", d["base"]),
                   d.get("reference_kind", "base"))

    @property
    def rule(self) -> RewardRule | None:
        """The reward rule (preftune.dpo.losses), or None when no reward is shown."""
        from preftune.dpo.losses import RewardRule

        return None if self.reward is None else RewardRule(self.reward, self.beta, self.ld_alpha)


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


def reference_kind(run: Run) -> str:
    """What the run's reference model is in its chain base → [SFT →] DPO: the kind of the entry before
    the run's own ("base", "sft", "dpo")."""
    chain = run.chain
    kind = chain[-2].get("kind") if len(chain) > 1 else "base"
    return kind if kind in CHAIN_LABELS else "base"


def spec_from_run(run_dir: Path, base: str | None = None, limits: Limits = Limits(),
                  examples: int | None = None) -> DemoSpec:
    """The demo of a run folder (checked by preftune.runs.folder.open_run): its model, the model shown
    beside it (`base`, else the run's reference), its reward rule and reference (those its evaluation
    uses: dpo.evaluate.run_reward_rule, Run.reference_model; whatever `base` is), and its posts."""
    from preftune.dpo.evaluate import run_reward_rule

    run = open_run(run_dir)
    name = run.config.get("run_name") if isinstance(run.config.get("run_name"), str) else run.name
    rule = run_reward_rule(run)
    reference = None if rule.reference_free else run.reference_model
    return DemoSpec(str(run_dir), base or run.reference_model, rule.beta, name, read_examples(run.path, examples),
                    limits, rule.reward, rule.ld_alpha, reference, reference_kind(run))


@dataclass
class Loaded:
    tokenizer: object
    policy: object
    base: object
    sources: tuple[str, str]  # where (tuned, base) came from, in words
    reference: object = None  # the reward's reference model (may be `base` itself); None: none needed
    reference_source: str | None = None


@dataclass(frozen=True)
class Summary:
    text: str
    tokens: int  # tokens the model produced for it (the EOS that DPO scores after it is not counted)
    reward: float | None  # the run's implicit reward of the text (+ EOS); None: not shown
    ended: str = ""  # "eos" | "newline" | "length" (cut off at max new tokens) when known

    def describe(self) -> str:
        words = len(self.text.split())
        cut = " (cut off at max new tokens)" if self.ended == "length" else ""
        reward = "" if self.reward is None else f" · implicit reward {self.reward:+.3f}"
        return f"{words} word{'s' * (words != 1)} · {self.tokens} token{'s' * (self.tokens != 1)}{cut}{reward}"


def limit_text(limits: Limits, chars_per_token: float | None = None) -> str:
    """What the post box accepts, both limits stated: the token limit usually binds first, so its size in
    characters (estimated from the tokenizer on real posts) is given when known."""
    tokens = f"{limits.max_prompt_tokens:,} tokens"
    if chars_per_token:
        approx = min(limits.max_post_chars, int(limits.max_prompt_tokens * chars_per_token) // 100 * 100)
        tokens += f" (about {approx:,} characters of English)"
    return f"Up to {tokens} and {limits.max_post_chars:,} characters (subreddit + title + post)."


def reference_label(spec: DemoSpec) -> str:
    """The reward's reference in words: "base model X", "SFT run NAME", or why there is none."""
    what = CHAIN_LABELS.get(spec.reference_kind, spec.reference_kind)
    if spec.reward is None:
        return f"none loadable here (the run's reference is a local {what} folder), so no reward is shown"
    if spec.reference is None:
        return "none (a reference-free reward)"
    return f"base model {spec.reference}" if spec.reference_kind == "base" else f"{what} run {Path(spec.reference).name}"


def reward_text(spec: DemoSpec) -> str:
    """The rule each summary is scored with, e.g. "β·(log π − log π_SFT), β = 0.1 · reference: SFT run NAME"."""
    rule = spec.rule
    formula = rule.formula(CHAIN_LABELS.get(spec.reference_kind, "ref")) if rule else "not shown"
    return f"{formula} · reference: {reference_label(spec)}"


def models_text(spec: DemoSpec, sources: tuple[str, str] | None, reference_source: str | None = None) -> str:
    """Which model each side is, the reward's rule and reference, and where each was loaded from
    (sources: (tuned, base), once loaded)."""
    where = sources or ("loads on the first request", "loads on the first request")
    lines = [f"**Base**: `{spec.base}` — {where[1]}", f"**DPO-tuned**: `{spec.name}` (`{spec.policy}`) — {where[0]}",
             f"**Implicit reward** (the run's own, as `preftune eval` scores it): {reward_text(spec)}"]
    if spec.reward is not None and spec.reference is not None:
        lines.append(f"**Reference**: `{spec.reference}` — {reference_source or 'loads on the first request'}")
    return "  \n".join(lines)


class Demo:
    """The two models behind the page; loaded once (thread-safe), on `load()` or the first request."""

    def __init__(self, spec: DemoSpec, precision: str = "auto"):
        self.spec, self.precision = spec, precision  # --precision; resolved on this machine when loading
        self._loaded: Loaded | None = None
        self._lock = threading.Lock()

    def load(self) -> Loaded:
        from preftune.precision import resolve

        with self._lock:
            if self._loaded is None:
                self.precision = resolve(self.precision)
                self._loaded = _load(self.spec)
            return self._loaded

    def _steps(self, iterator: Iterator):
        """`iterator`'s items, each computed in the demo's precision (autocast is per thread: it must not
        stay on while the page's thread holds a step)."""
        from preftune.precision import autocast

        while True:
            with autocast(self.precision, self.load().policy.device):
                item = next(iterator, StopIteration)
            if item is StopIteration:
                return
            yield item

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

    @property
    def reference_source(self) -> str | None:
        """Where the reward's reference model came from, in words, once loaded (None: none loaded)."""
        return self._loaded.reference_source if self._loaded else None

    def models_text(self) -> str:
        return models_text(self.spec, self.sources, self.reference_source)

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
        yield from self._steps(stream_sides([loaded.base, loaded.policy], loaded.tokenizer, prompt_ids, s))

    def stream(self, prompt_ids: list[int], s: Decoding) -> Iterator[list[str]]:
        """[base text, tuned text] after each decoding step: preftune.judge.generate's decoder, so a seed gives
        the summaries `preftune judge` would write with it."""
        from preftune.judge.generate import stream_texts

        loaded = self.load()
        yield from self._steps(stream_texts([loaded.base, loaded.policy], loaded.tokenizer, prompt_ids, s))

    def score(self, prompt_text: str, texts: list[str], sides: list[Generation] | None = None) -> list[Summary]:
        """The implicit reward of one or two texts by the run's rule, computed as `preftune eval` computes
        a pair's (dpo.evaluate.pair_logps, losses.RewardRule): two texts are one pair (LD-DPO weighs
        the longer one's tail past the shorter one's length), one text a pair with itself; each scored
        as a whole summary (+ EOS). Token counts: what each side produced (`sides`, from `stream_sides`),
        else the text's tokens as scored, without the EOS."""
        from preftune.data.pairs import Pair
        from preftune.dpo.evaluate import pair_logps
        from preftune.dpo.logps import pack_pair

        if len(texts) not in (1, 2):
            raise ValueError(f"score takes one or two texts (a pair), got {len(texts)}")
        loaded, rule = self.load(), self.spec.rule
        first, second = (list(texts) * 2)[:2]
        if rule is None:
            packed = pack_pair(loaded.tokenizer, prompt_text, first, second)
            counts, rewards = [packed.chosen_len, packed.rejected_len], [None, None]
        else:  # mask attention: the models' own stays in place for the generations running meanwhile
            pair = Pair(prompt_text, first, second, post_id="demo", source="demo")
            lp = pair_logps(loaded.policy, loaded.reference, loaded.tokenizer, [pair], rule.ld_alpha, attention="mask",
                            precision=self.precision)
            counts = [int(lp.chosen_tokens[0]), int(lp.rejected_tokens[0])]
            rewards = [float(r[0]) for r in lp.rewards(rule)]
        made = [(g.tokens, g.ended) for g in sides] if sides else [(n - 1, "") for n in counts[: len(texts)]]
        return [Summary(t, n, r, ended) for t, (n, ended), r in zip(texts, made, rewards[: len(texts)], strict=True)]


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
    reference = resolve_model(spec.reference) if spec.reward is not None and spec.reference is not None else None
    tokenizer = load_tokenizer(policy.path)
    device = inference_device()
    models = load_model(policy.path).to(device).eval(), load_model(base.path).to(device).eval()
    ref_model = None
    if reference is not None:  # the base side's model when it is the reference: loaded once
        same = Path(reference.path).resolve() == Path(base.path).resolve()
        ref_model = models[1] if same else load_model(reference.path).to(device).eval()
    return Loaded(tokenizer, models[0], models[1], (policy.source, base.source), ref_model,
                  reference and reference.source)
