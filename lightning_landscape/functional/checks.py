"""Argument checks shared by the callback, the functional core, the recorder, metrics and SAM.

Each check raises ``ValueError`` naming the argument and what was expected, and returns the value in
its normal form (a float for a number, a ``(low, high)`` pair for a span...). No Lightning import here:
:mod:`lightning_landscape.functional` uses these too.

Example::

    >>> odd_int("resolution", 11)
    11
    >>> odd_int("resolution", 10)
    Traceback (most recent call last):
    ...
    ValueError: `resolution` must be an odd integer >= 3 (so the grid contains its centre), got 10
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

__all__ = [
    "boolean",
    "callable_arg",
    "choice",
    "grid_fits_memory",
    "integer",
    "iterable_arg",
    "name_arg",
    "number",
    "odd_int",
    "positive_int",
    "positive_number",
    "span_pair",
    "value_range",
]

T = TypeVar("T")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _fail(name: str, expected: str, value: Any, owner: str = "") -> ValueError:
    where = f"{owner}: " if owner else ""
    return ValueError(f"{where}`{name}` must be {expected}, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(name: str, value: Any, owner: str = "") -> int:
    """Any integer (not a bool)."""
    if not _is_int(value):
        raise _fail(name, "an integer", value, owner)
    return int(value)


def positive_int(name: str, value: Any, minimum: int = 1, allow_none: bool = False, owner: str = "") -> Any:
    """An integer ``>= minimum`` (or ``None`` when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or value < minimum:
        raise _fail(name, f"an integer >= {minimum}" + (" or None" if allow_none else ""), value, owner)
    return int(value)


def odd_int(name: str, value: Any, minimum: int = 3) -> int:
    """An odd integer ``>= minimum``: a grid of that many points over a symmetric span contains 0."""
    if not _is_int(value) or value < minimum or value % 2 == 0:
        raise _fail(name, f"an odd integer >= {minimum} (so the grid contains its centre)", value)
    return int(value)


def number(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = True,
    owner: str = "",
) -> float:
    """A finite real number in ``[low, high)`` (each end open or closed as asked)."""
    ok = _is_real(value) and math.isfinite(float(value))
    if ok:
        x = float(value)
        ok = (x > low if low_open else x >= low) and (x < high if high_open else x <= high)
    if not ok:
        lo_b, hi_b = ("(" if low_open else "["), (")" if high_open else "]")
        if low == -math.inf and high == math.inf:
            expected = "a finite number"
        else:
            expected = f"a number in {lo_b}{low:g}, {high:g}{hi_b}"
        raise _fail(name, expected, value, owner)
    return float(value)


def positive_number(name: str, value: Any, allow_none: bool = False, owner: str = "") -> Any:
    """A finite number ``> 0`` (or ``None`` when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if not _is_real(value) or not 0 < float(value) < math.inf:
        raise _fail(name, "a positive finite number" + (" or None" if allow_none else ""), value, owner)
    return float(value)


def boolean(name: str, value: Any) -> bool:
    """``True`` or ``False`` (not a string, not a number: ``"no"`` would read as true)."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":  # NumPy's bool too
        raise _fail(name, "True or False", value)
    return bool(value)


def choice(name: str, value: Any, choices: Sequence[T]) -> T:
    """One of ``choices``."""
    try:
        ok = value in choices
    except TypeError:  # an unhashable or uncomparable value
        ok = False
    if not ok:
        raise _fail(name, f"one of {tuple(choices)}", value)
    return value


def callable_arg(name: str, value: Any, signature: str, allow_none: bool = True) -> Any:
    """A callable (or ``None``); ``signature`` says how it is called, for the message."""
    if value is None and allow_none:
        return None
    if not callable(value):
        raise ValueError(f"`{name}` must be callable as {signature}, got {type(value).__name__}")
    return value


def iterable_arg(name: str, value: Any, allow_none: bool = True) -> Any:
    """An iterable that is not a string (or ``None``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"`{name}` must be iterable, got {type(value).__name__}")
    return value


def value_range(name: str, value: Any) -> tuple[float, float]:
    """A finite ``(low, high)`` pair with ``low < high``."""
    try:
        lo, hi = (float(v) for v in value)
        ok = all(_is_real(v) for v in value) and math.isfinite(lo) and math.isfinite(hi) and lo < hi
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise _fail(name, "(low, high) with low < high", value)
    return lo, hi


def span_pair(name: str, value: Any, allow_none: bool = True) -> Any:
    """A half-width ``s > 0`` (the grid covers ``[-s, s]``) or a ``(low, high)`` pair with low < 0 < high.

    Returned as given (a number stays a number), after the check.
    """
    if value is None and allow_none:
        return None
    pair = (-value, value) if _is_real(value) else value
    try:
        lo, hi = (float(v) for v in pair)
        ok = all(_is_real(v) for v in pair) and math.isfinite(lo) and math.isfinite(hi) and lo < 0 < hi
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise _fail(name, "a positive number or a (low, high) pair with low < 0 < high", value)
    return float(value) if _is_real(value) else (float(pair[0]), float(pair[1]))


def name_arg(name: str, value: Any, allow_none: bool = True) -> Any:
    """A file- and tag-safe name: letters, digits, ``_ . -``; not ``.`` or ``..`` (they are directories)."""
    if value is None and allow_none:
        return None
    if not (isinstance(value, str) and _NAME.fullmatch(value)) or value in (".", ".."):
        raise _fail(name, "a non-empty string of letters, digits, '_', '.', '-' (not '.' or '..')", value)
    return value


# Bytes one grid point costs in host and device bookkeeping: its coefficients and loss (float64), and for
# each probe batch a loss tensor kept on the device until the end of the grid (a tensor object, ~0.5 KiB).
_POINT_BYTES, _EVALUATION_BYTES = 24, 512


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 16 * 2**30


def grid_fits_memory(
    name: str, resolution: int, num_batches: int, memory: Callable[[], int] = _memory_bytes
) -> int:
    """Refuse a ``resolution x resolution`` grid whose bookkeeping alone needs more than half the memory."""
    points = resolution * resolution
    needed = points * (_POINT_BYTES + num_batches * _EVALUATION_BYTES)
    available = memory()
    if needed > available // 2:
        raise ValueError(
            f"`{name}`={resolution} is a grid of {points:,} points: evaluating it on {num_batches} probe "
            f"batch(es) needs about {needed / 2**30:.1f} GiB of memory for its bookkeeping alone, more than "
            f"half of this machine's {available / 2**30:.1f} GiB. Use a smaller resolution (tens of points "
            "per axis show the shape)."
        )
    return resolution
