"""Small-sample statistics for comparing groups of runs (seeds): mean and spread, Welch's interval.

Pure Python and NumPy (SciPy is not a dependency): Student's t distribution through the regularized
incomplete beta function (a continued fraction, as in Numerical Recipes §6.4), its quantile by
bisection, and Welch's interval for the difference of two means with the Welch–Satterthwaite degrees
of freedom.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["WelchInterval", "betainc", "mean_std", "t_cdf", "t_quantile", "welch_interval"]


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz), converging for
    ``x < (a + 1) / (a + b + 2)``."""
    tiny, eps = 1e-300, 1e-16
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 100_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)`` for ``a, b > 0`` and ``0 <= x <= 1``.

    Example::

        >>> round(betainc(2.0, 3.0, 0.4), 12)  # P(Binomial(4, 0.4) >= 2)
        0.5248
    """
    if not (a > 0 and b > 0):
        raise ValueError(f"`a` and `b` must be positive, got {a}, {b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"`x` must be in [0, 1], got {x}")
    return _betainc(a, b, x, 1.0 - x)


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """``I_x(a, b)`` given ``y = 1 - x`` computed without cancellation by the caller."""
    if x == 0.0 or y == 0.0:
        return 0.0 if x == 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(y)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, y) / b


def _check_df(df: float) -> None:
    if not (isinstance(df, (int, float)) and df > 0):  # NaN fails too
        raise ValueError(f"`df` must be a positive number (inf for the normal distribution), got {df!r}")


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df`` (real, > 0; ``inf``: the standard normal) degrees of freedom.

    Example::

        >>> round(t_cdf(1.0, 1.0), 12)  # Cauchy: 1/2 + atan(1)/pi
        0.75
    """
    _check_df(df)
    if math.isinf(df):
        return 0.5 * math.erfc(-t / math.sqrt(2.0))
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t), t * t / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on :func:`t_cdf`).

    Example::

        >>> round(t_quantile(0.975, 4), 6)  # the table value
        2.776445
    """
    _check_df(df)
    if not 0.0 < p < 1.0:
        raise ValueError(f"`p` must be in (0, 1), got {p!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    if df > 1e5:  # the incomplete beta loses digits here; the Cornish-Fisher series is exact to O(df^-4)
        z = _bisect(lambda x: t_cdf(x, math.inf), p)
        return (
            z
            + (z**3 + z) / (4 * df)
            + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
        )
    return _bisect(lambda x: t_cdf(x, df), p)


def _bisect(cdf: Callable[[float], float], p: float) -> float:
    """The ``x >= 0`` with ``cdf(x) = p`` (``p > 1/2``) of an increasing ``cdf``."""
    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, 2.0 * hi
    while hi - lo > 1e-14 * hi:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return 0.5 * (lo + hi)


def mean_std(values: Sequence[float] | np.ndarray) -> tuple[int, float, float]:
    """``(n, mean, sample standard deviation)`` (``ddof=1``; NaN for fewer than two values).

    Example::

        >>> mean_std([1.0, 2.0, 3.0])
        (3, 2.0, 1.0)
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    n = int(x.size)
    if n and np.all(x == x[0]):  # exactly: no rounding noise from the mean of equal values
        return n, float(x[0]), 0.0 if n > 1 else math.nan
    return n, float(x.mean()) if n else math.nan, float(x.std(ddof=1)) if n > 1 else math.nan


@dataclass(frozen=True)
class WelchInterval:
    """``difference = mean(b) - mean(a)`` with its ``confidence`` interval ``[low, high]``, standard
    error and Welch–Satterthwaite degrees of freedom (``inf`` when both groups have no spread)."""

    difference: float
    low: float
    high: float
    stderr: float
    df: float
    confidence: float


def welch_interval(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> WelchInterval:
    """Welch's interval for ``mean(b) - mean(a)``: unequal variances, ``t`` with the Welch–Satterthwaite
    degrees of freedom ``(va/na + vb/nb)^2 / ((va/na)^2/(na-1) + (vb/nb)^2/(nb-1))``.

    Example::

        >>> w = welch_interval([1.0, 1.2, 1.4], [2.0, 2.2, 2.4])  # equal spreads: df = 2 (n - 1) = 4
        >>> round(w.difference, 12), round(w.df, 12), round(w.low, 4), round(w.high, 4)
        (1.0, 4.0, 0.5466, 1.4534)
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}")
    (na, ma, sa), (nb, mb, sb) = mean_std(a), mean_std(b)
    if na < 2 or nb < 2:
        raise ValueError(f"each group needs at least two values for Welch's interval, got {na} and {nb}")
    if not all(map(math.isfinite, (ma, sa, mb, sb))):
        raise ValueError("Welch's interval needs finite values")
    va, vb = sa * sa / na, sb * sb / nb
    se2 = va + vb
    df = se2 * se2 / (va * va / (na - 1) + vb * vb / (nb - 1)) if se2 > 0 else math.inf
    se = math.sqrt(se2)
    half = t_quantile(0.5 + confidence / 2.0, df) * se
    diff = mb - ma
    return WelchInterval(diff, diff - half, diff + half, se, df, confidence)
