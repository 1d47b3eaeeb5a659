"""The pair: one preference comparison as every later step sees it (prompt, chosen, rejected, the post
that groups it for the split, where it came from, and how its prompt may be trimmed), and the `Tally`
of rows kept and skipped that makes every drop counted and reported."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

CUTS = ("end", "start", "turns")  # Pair.cut: how body_span is trimmed (see adapters, truncate)


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    post_id: str
    source: str  # file:line the pair came from
    body_span: tuple[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    cut: str = "end"  # how body_span is trimmed to fit max_length: "end" | "start" | "turns" (see adapters)
    turns: tuple[int, ...] = ()  # cut="turns": offsets in `prompt` where a droppable turn ends

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict) -> Pair:
        span = row.get("body_span")
        return cls(row["prompt"], row["chosen"], row["rejected"], str(row["post_id"]), row.get("source", ""),
                   tuple(span) if span else None, row.get("meta") or {}, row.get("cut") or "end",
                   tuple(row.get("turns") or ()))


@dataclass
class Tally:
    """Counts of rows seen, kept and skipped (by reason), with example locations per reason."""

    total: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(where)

    @property
    def kept(self) -> int:
        return self.total - sum(self.skipped.values())

    def summary(self) -> str:
        line = f"kept {self.kept:,} / {self.total:,}"
        if self.skipped:
            reasons = ", ".join(f"{r} ({n:,})" for r, n in self.skipped.most_common())
            line += f"; skipped {sum(self.skipped.values()):,}: {reasons}"
        return line

    def details(self) -> list[str]:
        return [f"  {reason}: e.g. {', '.join(self.examples[reason])}" for reason in self.skipped]

    def to_json(self) -> dict:
        return {"total": self.total, "kept": self.kept, "skipped": dict(self.skipped),
                "examples": {k: v for k, v in self.examples.items() if k in self.skipped}}
