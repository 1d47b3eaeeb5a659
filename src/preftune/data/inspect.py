"""`preftune data inspect`: what is in a preference dataset, before training on it.

One streaming pass over SRC through the adapter `prepare` uses: rows kept and skipped (by reason),
distinct prompts, label balance, repeated comparisons, ties and empty fields; then token lengths with
the model's tokenizer on a seeded sample of at most --length-sample pairs, and how many exceed
--max-length. Per pair only two 8-byte digests are kept, so memory stays small. Details: docs/data.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field

from preftune import fmt
from preftune.config import DataConfig
from preftune.data.files import names
from preftune.data.pairs import Pair
from preftune.data.prepare import Reading, iter_pairs
from preftune.data.sequence import with_eos
from preftune.data.sources import describe
from preftune.data.split import confidence_counts
from preftune.data.truncate import fit_pair, pair_length, unfit_reason

PERCENTILES = (50, 90, 99)


def digest(*parts: str) -> int:
    """A 64-bit content key (collisions are negligible below billions of rows)."""
    return int.from_bytes(hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest(), "little")


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile: the smallest value with at least q% of the values at or below it."""
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def summarize_lengths(values: list[int]) -> dict:
    ordered = sorted(values)
    return {**{f"p{q}": percentile(ordered, q) for q in PERCENTILES}, "max": ordered[-1]} if ordered else {}


def repeated_labels(groups: dict[int, int]) -> dict:
    """What `prepare.resolve_labels` will do with repeated comparisons; `groups` maps each (post,
    prompt, {a, b}) to its label counts packed as forward << 32 | reverse."""
    out = Counter({"duplicate label": 0, "outvoted label": 0, "tied labels": 0})
    for packed in groups.values():
        forward, reverse = packed >> 32, packed & 0xFFFFFFFF
        if forward == reverse:
            out["tied labels"] += forward + reverse
        else:
            out["duplicate label"] += max(forward, reverse) - 1
            out["outvoted label"] += min(forward, reverse)
    return dict(out)


@dataclass
class Scan:
    """The streaming aggregates of one pass."""

    kept: int = 0
    longer: int = 0
    confidence: Counter = field(default_factory=Counter)  # labeller confidence → pairs (where rows carry it)
    prompts: set = field(default_factory=set)
    groups: dict = field(default_factory=dict)
    sample: list = field(default_factory=list)  # reservoir of pairs for token lengths
    first: list = field(default_factory=list)  # the first pairs, shown as examples

    def add(self, pair: Pair, rng: random.Random, sample_size: int, examples: int) -> None:
        self.kept += 1
        self.longer += len(pair.chosen) > len(pair.rejected)
        if "confidence_raw" in pair.meta:
            self.confidence[pair.meta["confidence_raw"]] += 1
        self.prompts.add(digest(pair.prompt))
        a, b = sorted((pair.chosen, pair.rejected))
        key = digest(pair.post_id, pair.prompt, a, b)
        self.groups[key] = self.groups.get(key, 0) + (1 << 32 if pair.chosen == a else 1)
        if len(self.first) < examples:
            self.first.append(pair)
        if len(self.sample) < sample_size:  # reservoir sampling (Algorithm R)
            self.sample.append(pair)
        elif (j := rng.randrange(self.kept)) < sample_size:
            self.sample[j] = pair


def token_lengths(tokenizer, pairs: list[Pair]) -> dict[str, list[int]]:
    """Per pair: prompt tokens (with the special tokens the tokenizer adds), chosen and rejected tokens
    (with the EOS TRL appends), and prompt + the longer completion. Prompt and completions are
    tokenized apart (each prompt once: it is most of the text), so a pair's total can differ from
    TRL's by a merge at the seam; `over_length` re-measures the pairs near the limit exactly."""
    out = {"prompt": [len(ids) for ids in tokenizer([p.prompt for p in pairs])["input_ids"]]}
    for name in ("chosen", "rejected"):
        ids = tokenizer([with_eos(getattr(p, name), tokenizer.eos_token) for p in pairs], add_special_tokens=False)["input_ids"]
        out[name] = [len(i) for i in ids]
    out["sequence"] = [p + max(c, r) for p, c, r in zip(out["prompt"], out["chosen"], out["rejected"])]
    return out


SEAM_MARGIN = 8  # tokens: far more than a merge across the prompt/completion seam can change


def over_length(tokenizer, pairs: list[Pair], sequence: list[int], max_length: int) -> dict:
    """Pairs longer than max_length, measured exactly as TRL does (truncate.pair_length) for every pair
    within SEAM_MARGIN of the limit, and what training would do with them (truncate.fit_pair)."""
    trimmed, skipped = 0, Counter()
    for pair, n in zip(pairs, sequence):
        if n > max_length - SEAM_MARGIN and pair_length(tokenizer, pair) > max_length:
            if fit_pair(tokenizer, pair, max_length) is None:
                skipped[unfit_reason(pair)] += 1
            else:
                trimmed += 1
    return {"limit": max_length, "over": trimmed + sum(skipped.values()), "trimmed": trimmed,
            "skipped": dict(skipped)}


def shorten(text: str, n: int = 160) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def inspect_data(cfg: DataConfig, tokenizer, tokenizer_name: str, max_length: int, samples: int = 3,
                 length_sample: int = 5000) -> dict:
    """The report of `preftune data inspect` as a dict (see the module docstring). SRC may also be a
    prepared folder: its pairs (all splits) are inspected as they are."""
    reading, scan, rng = Reading(), Scan(), random.Random(cfg.seed)
    for pair in iter_pairs(cfg, reading, tokenizer):
        scan.add(pair, rng, length_sample, samples)
    tally = reading.tally
    repeats = repeated_labels(scan.groups)
    report = {
        "dataset": cfg.dataset,
        "source": describe(cfg.dataset),
        "format": reading.format,
        "detected_from": reading.detected_from,
        "chat_template": reading.chat_template,
        "rows": tally.total,
        "kept": scan.kept,
        "skipped": dict(tally.skipped.most_common()),
        "skip_examples": {k: v for k, v in tally.examples.items() if k in tally.skipped},
        "distinct_prompts": len(scan.prompts),
        "labels": dict(sorted(reading.labels.items())) or None,
        "chosen_longer": scan.longer / scan.kept if scan.kept else None,
        "repeated": repeats,
        "pairs_after_cleaning": scan.kept - sum(repeats.values()),
        "identical_pairs": tally.skipped.get("identical pair", 0),
        "empty_fields": {k: n for k, n in tally.skipped.items() if k.startswith("empty ")},
        "confidence": confidence_counts(scan.confidence) or None,
        "splits": reading.splits,
    }
    if scan.sample:
        lengths = token_lengths(tokenizer, scan.sample)
        report["tokens"] = {"tokenizer": tokenizer_name, "pairs": len(scan.sample),
                            "sampled": len(scan.sample) < scan.kept,
                            **{k: summarize_lengths(v) for k, v in lengths.items()}}
        report["max_length"] = over_length(tokenizer, scan.sample, lengths["sequence"], max_length)
    report["samples"] = [{"source": p.source, "prompt": shorten(p.prompt), "chosen": shorten(p.chosen),
                          "rejected": shorten(p.rejected)} for p in scan.first]
    return report


# ---- the human table ------------------------------------------------------------------------------


def _share(n: int, total: int) -> str:
    return f"{n:,} ({fmt.percent(n / total)})" if total else f"{n:,}"


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in d.items() if v) or "none"


WIDTH = 160  # characters of a value shown in the table: a 5 MB post or a 300-character column name ends in "…"


def format_report(r: dict) -> str:
    rows, kept = r["rows"], r["kept"]
    how = (f"detected from columns {names(r['detected_from'])}" if r["detected_from"]
           else "a prepared folder" if r.get("splits") else "--format")
    lines = [
        ("dataset", r["source"]),
        ("format", f"{r['format']} ({how})" + (f"; chat template of {r['chat_template']}" if r["chat_template"] else "")),
        ("rows", f"{rows:,}"),
        ("kept", f"{_share(kept, rows)}; skipped {rows - kept:,}" + (f": {_counts(r['skipped'])}" if r["skipped"] else "")),
        ("distinct prompts", f"{r['distinct_prompts']:,}"),
        ("label balance", ", ".join(f"{k}: {_share(v, sum(r['labels'].values()))}" for k, v in r["labels"].items())
         if r["labels"] else "not in this format"),
        ("chosen is longer", f"{fmt.percent(r['chosen_longer'])} of kept pairs" if r["chosen_longer"] is not None else "-"),
        ("repeated pairs", f"{_counts(r['repeated'])} → {r['pairs_after_cleaning']:,} pairs after `prepare`"),
        ("identical pairs", f"{r['identical_pairs']:,} (chosen == rejected, skipped)"),
        ("empty fields", _counts(r["empty_fields"])),
    ]
    if r.get("confidence"):
        total = sum(r["confidence"].values())
        lines.append(("confidence", ", ".join(f"{k}: {_share(n, total)}" for k, n in r["confidence"].items())
                      + " (labeller's extra.confidence: 1-4 prefer summary 0, 6-9 summary 1; 1 and 9 the surest)"))
    if r.get("splits"):
        lines.insert(3, ("splits", ", ".join(f"{k} {n:,}" for k, n in r["splits"].items()) + " pairs (as prepared)"))
    out = [f"{k:<18} {shorten(v, WIDTH)}" for k, v in lines]
    if "tokens" in r:
        out += ["", *token_table(r["tokens"], r["max_length"])]
    if r["samples"]:
        out.append("")
        for s in r["samples"]:
            out.append(f"[{shorten(s['source'], WIDTH)}]")
            out += [f"  {k:<9}{shorten(json.dumps(s[k], ensure_ascii=False), WIDTH)}"
                    for k in ("prompt", "chosen", "rejected")]
    return "\n".join(out)


def token_table(t: dict, m: dict) -> list[str]:
    """Percentiles of token lengths, columns as wide as their widest number (a 5 MB post has millions)."""
    keys, parts = ("p50", "p90", "p99", "max"), ("prompt", "chosen", "rejected", "sequence")
    width = max(8, *(len(f"{t[name][k]:,}") + 2 for name in parts for k in keys))
    scope = f"a random sample of {t['pairs']:,} pairs" if t["sampled"] else f"all {t['pairs']:,} kept pairs"
    out = [shorten(f"tokens ({t['tokenizer']}, {scope}; completions include EOS; sequence = prompt + longer "
                   "completion)", 2 * WIDTH),
           f"  {'':<10}" + "".join(f"{k:>{width}}" for k in keys)]
    out += [f"  {name:<10}" + "".join(f"{t[name][k]:>{width},}" for k in keys) for name in parts]
    over = (f"{_share(m['over'], t['pairs'])} exceed --max-length {m['limit']}: {m['trimmed']:,} would have their "
            "prompt trimmed")
    skipped = f", {sum(m['skipped'].values()):,} skipped ({_counts(m['skipped'])})" if m["skipped"] else ""
    return out + [over + skipped]
