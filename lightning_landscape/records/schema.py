"""Checking a record's arrays against the array schema its class declares (see :mod:`.records`).

A record class declares ``kind``, ``schema`` (array name -> :class:`ArraySpec`), ``point_array`` (the
array holding one value per evaluated point), and optionally ``axes`` (coordinate arrays: finite,
strictly increasing, not empty) and ``unique`` (arrays without repeated entries). A new kind, or a new
array of a kind, is one line in its class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ArraySpec", "check_arrays"]


@dataclass(frozen=True)
class ArraySpec:
    """What one array of a record kind must be: ``dims`` are fixed sizes (int), sizes named by a letter
    that must agree across the kind's arrays (str), or any size (None); ``dtype`` the accepted numpy
    dtype kinds (``"fiu"``: real numbers; ``"U"``: unicode strings)."""

    dims: tuple[int | str | None, ...]
    dtype: str = "fiu"
    required: bool = True


def _shape_text(dims: tuple[Any, ...]) -> str:
    return "(" + ", ".join("n" if d is None else str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def check_arrays(kind: Any, arrays: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` saying how ``arrays`` are inconsistent with record class ``kind``.

    Checks the arrays of ``kind.schema`` (presence, dtype, shape, agreement of named sizes), that the
    ``kind.axes`` are finite, strictly increasing and not empty, that ``kind.unique`` arrays hold no
    duplicates, and that every other array's shape starts with the shape of ``kind.point_array``.
    A class without a ``schema`` is not checked.

    Example::

        >>> from lightning_landscape.records.record import LineRecord
        >>> check_arrays(LineRecord, {"alphas": np.arange(7.0), "losses": np.ones((3, 2))})
        Traceback (most recent call last):
        ...
        ValueError: `losses` has shape (3, 2); expected 1-D (n,)
    """
    schema: dict[str, ArraySpec] | None = getattr(kind, "schema", None)
    if schema is None:
        return
    arrays = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    missing = [name for name, spec in schema.items() if spec.required and name not in arrays]
    if missing:
        raise ValueError(f"missing array(s) {', '.join(map(repr, missing))} of a {kind.kind} record")
    known = {name: (arrays[name], spec) for name, spec in schema.items() if name in arrays}
    sizes: dict[str, tuple[int, str]] = {}  # named size -> (size, the array that set it)
    for name, (arr, spec) in known.items():
        if arr.dtype.kind not in spec.dtype:
            words = {"fiu": "real numbers", "U": "unicode strings"}.get(spec.dtype, spec.dtype)
            raise ValueError(f"`{name}` has dtype {arr.dtype}; expected {words}")
        if arr.ndim != len(spec.dims):
            raise ValueError(
                f"`{name}` has shape {arr.shape}; expected {len(spec.dims)}-D {_shape_text(spec.dims)}"
            )
        for size, dim in zip(arr.shape, spec.dims):
            if isinstance(dim, str):
                sizes.setdefault(dim, (size, name))
    for name, (arr, spec) in known.items():
        expected = tuple(sizes[d][0] if isinstance(d, str) else d for d in spec.dims)
        if any(e is not None and e != n for e, n in zip(expected, arr.shape)):
            named = [f"{d}={sizes[d][0]} from `{sizes[d][1]}`" for d in spec.dims if isinstance(d, str)]
            raise ValueError(
                f"`{name}` has shape {arr.shape}; expected {_shape_text(spec.dims)} = {_shape_text(expected)}"
                + (f" ({', '.join(named)})" if named else "")
            )
    for name in getattr(kind, "axes", ()):
        axis = arrays[name].astype(np.float64)
        if not axis.size or not np.isfinite(axis).all() or np.any(np.diff(axis) <= 0):
            shown = np.array2string(axis, threshold=8, precision=4)
            raise ValueError(f"`{name}` must be a non-empty, finite, strictly increasing axis; got {shown}")
    for name in getattr(kind, "unique", ()):
        values = arrays[name].tolist()
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"`{name}` repeats {', '.join(map(repr, repeated))}")
    point = arrays[kind.point_array].shape
    for name, arr in arrays.items():
        if name not in schema and arr.shape[: len(point)] != point:
            raise ValueError(
                f"`{name}` has shape {arr.shape}; an array a {kind.kind} record does not know must "
                f"start with the shape of `{kind.point_array}` {point}"
            )
