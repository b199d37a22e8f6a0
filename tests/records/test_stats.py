"""Student's t and Welch's interval against printed tables, closed forms and (when installed) SciPy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lightning_landscape.records.stats import betainc, mean_std, t_cdf, t_quantile, welch_interval

# Quantiles of Student's t as printed in tables (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2).
TABLE = [
    (0.975, 1, 12.7062047362),
    (0.975, 2, 4.30265272975),
    (0.975, 3, 3.18244630528),
    (0.975, 4, 2.77644510520),
    (0.975, 5, 2.57058183564),
    (0.975, 10, 2.22813885196),
    (0.975, 30, 2.04227245630),
    (0.975, 120, 1.97993040505),
    (0.975, math.inf, 1.95996398454),
    (0.995, 1, 63.6567411629),
    (0.995, 5, 4.03214298356),
    (0.995, 10, 3.16927267262),
    (0.95, 7, 1.89457860506),
]


@pytest.mark.parametrize("p, df, expected", TABLE)
def test_t_quantile_matches_the_table(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, rel=1e-10)
    assert t_quantile(1 - p, df) == pytest.approx(-expected, rel=1e-10)
    assert t_cdf(expected, df) == pytest.approx(p, rel=1e-11)


@pytest.mark.parametrize("p", [0.5000001, 0.6, 0.9, 0.975, 0.9999])
def test_t_quantile_matches_closed_forms_at_one_and_two_degrees_of_freedom(p):
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)  # Cauchy
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)


@pytest.mark.parametrize("n, k, x", [(4, 2, 0.4), (10, 3, 0.05), (30, 20, 0.7), (7, 7, 0.99)])
def test_betainc_is_the_binomial_tail(n, k, x):
    # I_x(k, n - k + 1) = P(Binomial(n, x) >= k): an independent sum.
    tail = sum(math.comb(n, j) * x**j * (1 - x) ** (n - j) for j in range(k, n + 1))
    assert betainc(k, n - k + 1, x) == pytest.approx(tail, rel=1e-12)


def test_t_matches_scipy_at_fractional_and_large_degrees_of_freedom():
    stats = pytest.importorskip("scipy.stats")
    for df in (0.3, 1.7, 2.5, 3.7, 11.2, 1e3, 1e5, 3e5, 1e9):
        for p in (0.5000001, 0.6, 0.975, 0.999999):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9), (p, df)
        if df <= 1e5:
            for t in (1e-3, 0.5, -2.0, 40.0):
                assert t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), rel=1e-9), (t, df)


def test_welch_interval_by_hand():
    a, b = [1.0, 1.5, 1.1, 2.0], [3.0, 2.1, 4.4]
    ma, mb = sum(a) / 4, sum(b) / 3
    va = sum((x - ma) ** 2 for x in a) / 3 / 4  # variance of the mean
    vb = sum((x - mb) ** 2 for x in b) / 2 / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)
    w = welch_interval(a, b)
    assert w.difference == pytest.approx(mb - ma, rel=1e-14)
    assert w.stderr == pytest.approx(math.sqrt(va + vb), rel=1e-14)
    assert w.df == pytest.approx(df, rel=1e-14)
    half = t_quantile(0.975, df) * math.sqrt(va + vb)
    assert (w.low, w.high) == pytest.approx((mb - ma - half, mb - ma + half), rel=1e-14)
    # Equal spreads and sizes: df = 2 (n - 1), a table value.
    w = welch_interval([1.0, 1.2, 1.4], [2.0, 2.2, 2.4])
    assert w.df == pytest.approx(4.0, rel=1e-12)
    assert w.high - w.difference == pytest.approx(2.77644510520 * math.sqrt(2 * 0.04 / 3), rel=1e-10)
    stats = pytest.importorskip("scipy.stats")
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    w = welch_interval(a, b)
    assert (w.low, w.high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_welch_edge_cases_and_bad_input():
    w = welch_interval([1.0, 1.0], [2.0, 2.0])  # no spread: a point interval
    assert (w.low, w.difference, w.high, w.df) == (1.0, 1.0, 1.0, math.inf)
    assert mean_std([2.0])[2] != mean_std([2.0])[2]  # NaN for one value
    with pytest.raises(ValueError, match="at least two values"):
        welch_interval([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        welch_interval([1.0, np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="`confidence`"):
        welch_interval([1.0, 2.0], [1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="`df`"):
        t_quantile(0.9, 0)
    with pytest.raises(ValueError, match="`df`"):
        t_cdf(0.9, float("nan"))
    with pytest.raises(ValueError, match="`p`"):
        t_quantile(1.0, 3)
