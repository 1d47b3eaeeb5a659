"""How numbers, percentages and intervals are written, in every table, card and message.

A value that is not a finite number (absent, null, NaN, damaged) is a gap: `gap` ("n/a" in prose and
cards, "–" in the report's tables). Ordinary values take `digits` decimals; a huge one (≥ 1e7) or a tiny
nonzero one (< 1e-3) switches to significant digits, so a column stays narrow and 0.0004 is not 0.000.
Intervals are "low–high" (an en dash): in prose "0.6458 (95% CI 0.5051–0.7673, Wilson, n=48)", in a
table cell "0.625 [0.47–0.76] n=40".
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

GAP = "n/a"


def finite(value: Any) -> float | int | None:
    """The value when it is a finite number (bools are not numbers), else None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def is_finite(value: Any) -> bool:
    return finite(value) is not None


def finite_pair(value: Any) -> list[float] | None:
    """A [low, high] pair of finite numbers, else None."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(finite(v) is not None for v in value):
        return list(value)
    return None


def count(value: Any) -> int | None:
    """The value when it is a count (an integer ≥ 0), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def number(value: Any, digits: int = 4, *, sign: bool = False, gap: str = GAP) -> str:
    """0.6458 (digits=4), +0.0500 (sign), 1,234 for an int, 1.235e+07 for a huge value (ints too), `gap`
    for a gap."""
    if finite(value) is None:
        return gap
    plus = "+" if sign else ""
    if abs(value) >= 1e7 or 0 < abs(value) < 1e-3:
        return f"{float(value):{plus}.{max(digits, 3)}g}"
    return f"{value:{plus},}" if isinstance(value, int) else f"{value:{plus}.{digits}f}"


def percent(value: Any, digits: int = 1, gap: str = GAP) -> str:
    """0.642 → "64.2%"; `gap` for a gap."""
    return gap if finite(value) is None else f"{value:.{digits}%}"


def setting(value: Any, gap: str = GAP) -> str:
    """A setting as the user gave it (5e-06, 0.1, sigmoid), not rounded; `gap` when unset."""
    return gap if value is None else str(value)


def span(ci: Any, digits: int = 4, *, as_percent: bool = False) -> str:
    """"0.5051–0.7673" (or "55.0%–72.1%") from a [low, high] pair; "" when there is no valid pair."""
    pair = finite_pair(ci)
    if pair is None:
        return ""
    shown = [percent(v, digits) if as_percent else number(v, digits) for v in pair]
    return "–".join(shown)


def with_ci(value: Any, ci: Any = None, n: Any = None, method: str | None = "Wilson", digits: int = 4,
            *, as_percent: bool = False, gap: str = GAP) -> str:
    """Prose: "0.6458 (95% CI 0.5051–0.7673, Wilson, n=48)"; the parts present only; a gap keeps its n."""
    shown = percent(value, digits) if as_percent else number(value, digits)
    if shown == GAP:
        return gap + (f" (n={n})" if n is not None else "")
    interval = span(ci, digits, as_percent=as_percent)
    notes = ([f"95% CI {interval}" + (f", {method}" if method else "")] if interval else [])
    notes += [f"n={n}"] if n is not None else []
    return shown + (f" ({', '.join(notes)})" if notes else "")


def cell(value: Any, ci: Any = None, n: Any = None, digits: int = 3, *, ci_digits: int | None = None,
         as_percent: bool = False, gap: str = "–") -> str:
    """A table cell: "0.625 [0.47–0.76] n=40" (the interval to one digit fewer unless `ci_digits`), or
    "64.2% [55.0%–72.1%]" `as_percent`; `gap` for a gap."""
    shown = percent(value, digits, gap) if as_percent else number(value, digits, gap=gap)
    if shown == gap:
        return shown
    interval = span(ci, digits - 1 if ci_digits is None else ci_digits, as_percent=as_percent)
    return shown + (f" [{interval}]" if interval else "") + (f" n={n}" if n is not None else "")


def display_width(text: str) -> int:
    """Columns a string takes in a terminal: wide (CJK) characters 2, combining marks 0."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def fit_cell(text: str, width: int = 48) -> str:
    """One line (control characters shown as spaces) of at most `width` columns, shortened in the middle."""
    text = "".join(" " if unicodedata.category(c).startswith("C") else c for c in str(text))
    if display_width(text) <= width:
        return text
    head, tail = text[: width // 2 - 1], text[-(width - width // 2):]
    while display_width(head) + display_width(tail) + 1 > width:
        head, tail = head[:-1], tail[1:]
    return head + "…" + tail
