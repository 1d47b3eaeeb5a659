"""preftune.fmt: one way to write a number, a percentage and an interval, gaps included."""

import math

import pytest

from preftune import fmt


@pytest.mark.parametrize("value, kwargs, shown", [
    (0.64583, {}, "0.6458"),
    (0.64583, {"digits": 3}, "0.646"),
    (0.05, {"digits": 4, "sign": True}, "+0.0500"),
    (-0.05, {"digits": 3, "sign": True}, "-0.050"),
    (48, {}, "48"),
    (12345, {}, "12,345"),  # an int is a count: no decimals, thousands separated
    (0.00042, {"digits": 3}, "0.00042"),  # tiny: significant digits, not 0.000
    (0.0, {"digits": 3}, "0.000"),  # zero is not tiny
    (123456789.0, {"digits": 1}, "1.23e+08"),  # huge: compact, at least 3 significant digits
    (10**39, {}, "1e+39"),  # a huge int too (a damaged metrics.json must not widen a column)
    (None, {}, "n/a"),
    (math.nan, {}, "n/a"),
    (math.inf, {"gap": "–"}, "–"),
    (True, {}, "n/a"),  # a bool is not a number
    ("0.5", {}, "n/a"),  # nor is text (a damaged file)
])
def test_number(value, kwargs, shown):
    assert fmt.number(value, **kwargs) == shown


def test_percent_setting_and_count():
    assert fmt.percent(0.6421) == "64.2%" and fmt.percent(None) == "n/a" and fmt.percent(math.nan, gap="–") == "–"
    assert fmt.setting(5e-06) == "5e-06" and fmt.setting(0.1) == "0.1" and fmt.setting(None) == "n/a"
    assert fmt.count(3) == 3 and fmt.count(-1) is None and fmt.count(2.0) is None and fmt.count(True) is None


def test_span_needs_a_pair_of_finite_numbers():
    assert fmt.span([0.50514, 0.76733]) == "0.5051–0.7673"
    assert fmt.span((0.55, 0.7213), 1, as_percent=True) == "55.0%–72.1%"
    for bad in (None, [], [0.1], [0.1, None], [0.1, math.nan], [0.1, 0.2, 0.3], "0.1-0.2"):
        assert fmt.span(bad) == ""


def test_with_ci_in_prose():
    assert fmt.with_ci(0.625, [0.4836, 0.7478], 48) == "0.6250 (95% CI 0.4836–0.7478, Wilson, n=48)"
    assert fmt.with_ci(0.58, [0.5, 0.66], None, "Agresti–Caffo") == "0.5800 (95% CI 0.5000–0.6600, Agresti–Caffo)"
    assert fmt.with_ci(0.7083, [0.5083, 0.8509], 24, method=None) == "0.7083 (95% CI 0.5083–0.8509, n=24)"
    assert fmt.with_ci(0.7, None, None) == "0.7000"
    assert fmt.with_ci(None, [0.1, 0.2], 40) == "n/a (n=40)"  # a gap keeps its n, loses its interval


def test_cell_for_tables():
    assert fmt.cell(0.625, [0.4836, 0.7478], 48) == "0.625 [0.48–0.75] n=48"
    assert fmt.cell(0.625, [None, None]) == "0.625"
    assert fmt.cell(math.nan, [0.1, 0.2], 48) == "–"
    assert fmt.cell(0.642, [0.55, 0.7213], digits=1, ci_digits=1, as_percent=True) == "64.2% [55.0%–72.1%]"
    assert fmt.cell(None, as_percent=True, gap="n/a") == "n/a"
