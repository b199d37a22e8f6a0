"""Typed results and their on-disk form: ``NAME.npz`` (arrays, ``allow_pickle=False``) + ``NAME.json``.

Format, version 1 (``FORMAT_VERSION``):

- ``NAME.npz``: plain numeric arrays only, written with :func:`numpy.savez` and read with
  ``allow_pickle=False``. A surface has ``xs`` (nx,), ``ys`` (ny,), ``losses`` (ny, nx) with
  ``losses[i, j]`` the loss at ``(xs[j], ys[i])`` and optionally ``path`` (n, 2); a line has
  ``alphas`` (n,) and ``losses`` (n,). Both may also have ``batch_losses`` (the loss on each probe
  batch, a last axis of length B) and ``metrics`` (like ``losses``); a surface may have ``path2`` (m, 2),
  a second path on the same plane. Non-finite losses are stored as they came (NaN, inf).
  A metrics record (kind ``"metrics"``, added within version 1: readers of older files are
  unaffected, and older readers reject it as an unknown kind) has ``names`` (n,) of unicode strings
  such as ``"hessian/lambda_max"`` and ``values`` (n,) float64, NaN where a metric failed.
  A reliability record (kind ``"reliability"``, added the same way) is described in
  :mod:`lightning_landscape.records.reliability`.
- ``NAME.json``: ``{"format_version": 1, "kind": "surface" | "line" | "metrics", "meta": {...}}``;
  ``meta`` holds what the record is about (epoch, global_step, directions, seed, probe size,
  explained variance, ...; for metrics, each metric's options and probe seeds under its name) and,
  for records the callback writes, ``run_id``: the run that wrote it (see :mod:`.identity`).

Both files are written to a temporary name and renamed, the JSON last, so a record whose JSON exists
is complete. Nothing here uses pickle.

Consistency (checked when saving and when loading): every array a kind knows has its dtype (real
numbers; unicode for ``names``) and its shape (``losses`` is ``(len(ys), len(xs))``, ``path`` is
``(n, 2)``, ``names`` and ``values`` have one length, names are unique); axes are finite, strictly
increasing and not empty. Arrays a kind does not know (added by a later version within format 1,
such as per-batch losses) pass when their shape starts with the shape of the kind's per-point array
(``losses``, or ``values`` for metrics), and are ignored by readers that do not know them.

Reading: :func:`load_record` / :func:`load_records` (or by hand: ``json.load`` the sidecar, check
``format_version``, ``numpy.load(..., allow_pickle=False)`` the arrays). A file that cannot be read
raises :class:`RecordError` naming it: JSON that does not parse, JSON without ``format_version``
(a foreign file), a ``format_version`` other than 1 (written by another version), an unknown
``kind``, a ``meta`` that is not an object or whose known keys have the wrong type
(:data:`META_TYPES`), arrays that are missing, truncated, not an ``.npz`` or hold pickled objects, or arrays
inconsistent with their kind. A later format version will get a new number; version 1 files stay
readable.

The scalar schema (``SCALAR_GROUPS``, ``tag_prefix``, ``is_diagnostic``) lives in ``_scalar_schema`` and is
imported from here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from lightning_landscape.records.identity import RUN_ID_KEY, check_one_run
from lightning_landscape.records.reliability import ReliabilityRecord
from lightning_landscape.records.scalars import (
    DIAGNOSTIC_SUFFIXES,
    SCALAR_GROUPS,
    TABLE_ONLY_PREFIXES,  # noqa: F401  (re-exported)
    is_diagnostic,
    tag_prefix,
)
from lightning_landscape.records.schema import ArraySpec, check_arrays

__all__ = [
    "DIAGNOSTIC_SUFFIXES",
    "FORMAT_VERSION",
    "META_TYPES",
    "SCALAR_GROUPS",
    "ArraySpec",
    "LineRecord",
    "MetricsRecord",
    "Record",
    "RecordError",
    "ReliabilityRecord",
    "SurfaceRecord",
    "check_arrays",
    "find_records",
    "is_diagnostic",
    "load_record",
    "load_records",
    "meta_problem",
    "save_record",
    "tag_prefix",
]

FORMAT_VERSION = 1


class RecordError(ValueError):
    """A record file that cannot be read: corrupt, foreign, or of an unknown format version."""


def _finite(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


@dataclass
class SurfaceRecord:
    """Loss on a 2-D grid: ``losses[i, j]`` is the loss at ``xs[j] * d1 + ys[i] * d2``."""

    xs: np.ndarray
    ys: np.ndarray
    losses: np.ndarray
    path: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    #: Optional: ``(ny, nx, B)`` loss on each probe batch; ``(ny, nx)`` metric; a second path ``(m, 2)``.
    batch_losses: np.ndarray | None = None
    metrics: np.ndarray | None = None
    path2: np.ndarray | None = None
    kind: ClassVar[str] = "surface"
    schema: ClassVar[dict[str, ArraySpec]] = {
        "xs": ArraySpec(("nx",)),
        "ys": ArraySpec(("ny",)),
        "losses": ArraySpec(("ny", "nx")),
        "path": ArraySpec((None, 2), required=False),
        "path2": ArraySpec((None, 2), required=False),
        "batch_losses": ArraySpec(("ny", "nx", None), required=False),
        "metrics": ArraySpec(("ny", "nx"), required=False),
    }
    axes: ClassVar[tuple[str, ...]] = ("xs", "ys")
    point_array: ClassVar[str] = "losses"

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"xs": self.xs, "ys": self.ys, "losses": self.losses}
        for key in ("path", "batch_losses", "metrics", "path2"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @property
    def centre_loss(self) -> float:
        """The loss at the grid point closest to (0, 0)."""
        return float(self.losses[int(np.abs(self.ys).argmin()), int(np.abs(self.xs).argmin())])

    def scalars(self) -> dict[str, float]:
        """Centre loss, surface min/max (finite points) and the plane's explained variance."""
        out = {"loss/centre": self.centre_loss}
        finite = self.losses[np.isfinite(self.losses)]
        if finite.size:
            out["loss/surface_min"], out["loss/surface_max"] = float(finite.min()), float(finite.max())
        ratios = self.meta.get("explained_variance") or []
        for i, ratio in enumerate(ratios[:2]):
            if _finite(ratio) is not None:
                out[f"explained_variance/pc{i + 1}"] = float(ratio)
        if self.metrics is not None:  # metric_fn beside the loss, at the centre
            centre = _finite(self.metrics[int(np.abs(self.ys).argmin()), int(np.abs(self.xs).argmin())])
            if centre is not None:
                out["metric/centre"] = centre
        return out


@dataclass
class LineRecord:
    """Loss along a line: ``losses[k]`` at coefficient ``alphas[k]``."""

    alphas: np.ndarray
    losses: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    #: Optional: ``(n, B)`` loss on each probe batch; ``(n,)`` metric beside the loss.
    batch_losses: np.ndarray | None = None
    metrics: np.ndarray | None = None
    kind: ClassVar[str] = "line"
    schema: ClassVar[dict[str, ArraySpec]] = {
        "alphas": ArraySpec(("n",)),
        "losses": ArraySpec(("n",)),
        "batch_losses": ArraySpec(("n", None), required=False),
        "metrics": ArraySpec(("n",), required=False),
    }
    axes: ClassVar[tuple[str, ...]] = ("alphas",)
    point_array: ClassVar[str] = "losses"

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"alphas": self.alphas, "losses": self.losses}
        for key in ("batch_losses", "metrics"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def scalars(self) -> dict[str, float]:
        """The interpolation line's distance from the initial weights and, with a ``metric_fn``, the metric
        at the initial (alpha = 0) and current (alpha = 1) weights; a barrier line's height
        (``barrier/height``, or ``barrier/height_naive`` for the ``barrier_naive`` record of interpolated
        statistics) and length (``barrier/distance``); nothing for other lines."""
        distance = _finite(self.meta.get("distance"))
        kind = self.meta.get("directions")
        if kind == "barrier":
            naive = self.meta.get("name") == "barrier_naive"
            out = {"barrier/height_naive" if naive else "barrier/height": _finite(self.meta.get("barrier"))}
            out["barrier/distance"] = distance
            return {k: v for k, v in out.items() if v is not None}
        if kind != "interpolation":
            return {}
        found: dict[str, float] = {"distance_from_init": distance} if distance is not None else {}
        if self.metrics is not None:  # metric_fn at the initial (alpha = 0) and current (alpha = 1) weights
            for key, alpha in (("metric/initial", 0.0), ("metric/current", 1.0)):
                k = int(np.abs(self.alphas - alpha).argmin())
                value = _finite(self.metrics[k]) if abs(self.alphas[k] - alpha) < 1e-9 else None
                if value is not None:
                    found[key] = value
        return found


@dataclass
class MetricsRecord:
    """Named scalars (curvature, sharpness) at one point of training: ``values[k]`` is ``names[k]``.

    Example::

        >>> rec = MetricsRecord.from_dict({"hessian/lambda_max": 3.5, "sharpness/sam": 0.01})
        >>> rec.as_dict()["hessian/lambda_max"]
        3.5
    """

    names: np.ndarray
    values: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "metrics"
    schema: ClassVar[dict[str, ArraySpec]] = {
        "names": ArraySpec(("n",), dtype="U"),
        "values": ArraySpec(("n",)),
    }
    unique: ClassVar[tuple[str, ...]] = ("names",)
    point_array: ClassVar[str] = "values"

    @classmethod
    def from_dict(cls, scalars: dict[str, float], meta: dict[str, Any] | None = None) -> MetricsRecord:
        names = np.array(list(scalars), dtype=np.str_)
        values = np.array([float(v) for v in scalars.values()], dtype=np.float64)
        return cls(names=names, values=values, meta=dict(meta or {}))

    def as_dict(self) -> dict[str, float]:
        """``{name: value}``."""
        return {str(n): float(v) for n, v in zip(self.names.tolist(), self.values.tolist())}

    def scalars(self) -> dict[str, float]:
        """The finite values (a failed metric is stored as NaN and not logged)."""
        return {k: v for k, v in self.as_dict().items() if np.isfinite(v)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"names": np.asarray(self.names, dtype=np.str_), "values": self.values}


Record = SurfaceRecord | LineRecord | MetricsRecord | ReliabilityRecord
_KINDS: dict[str, type] = {"surface": SurfaceRecord, "line": LineRecord, "metrics": MetricsRecord}
_KINDS["reliability"] = ReliabilityRecord


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None  # JSON has no NaN; null reads back as "unknown"
    if hasattr(value, "tolist"):  # torch tensors without importing torch here
        return _jsonable(value.tolist())
    return value


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_record(record: Record, directory: str | os.PathLike, name: str) -> Path:
    """Write ``record`` as ``directory/name.npz`` + ``directory/name.json``; return the JSON path.

    Raises ``ValueError`` (naming the record) for arrays inconsistent with the record's kind, and for a
    ``meta`` that :func:`load_record` would refuse (see :data:`META_TYPES`).
    """
    directory = Path(directory)
    arrays = {k: np.asarray(v) for k, v in record.arrays().items() if v is not None}
    for key, arr in arrays.items():
        if arr.dtype == object:
            raise TypeError(f"array {key!r} has dtype object; records hold numeric arrays only")
    try:
        check_arrays(type(record), arrays)
    except ValueError as err:
        raise ValueError(f"record {name!r}: inconsistent {record.kind} arrays: {err}") from err
    meta = _jsonable(dict(record.meta))
    problem = meta_problem(meta)
    if problem is not None:
        raise ValueError(f"record {name!r}: {problem}")
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_write(directory / f"{name}.npz", lambda fh: np.savez(fh, **arrays))  # type: ignore[arg-type]
    sidecar = {"format_version": FORMAT_VERSION, "kind": record.kind, "meta": meta}
    text = json.dumps(sidecar, indent=1, sort_keys=True).encode()
    json_path = directory / f"{name}.json"
    _atomic_write(json_path, lambda fh: fh.write(text))
    return json_path


_MISSING: Any = object()
_WHOLE = "a whole number >= 0"
_TEXT = "a string"
#: The meta keys readers rely on, with the JSON type each must have when present; null is refused for
#: the first six (what a record is: its step, stage, name, run) and read as "unknown" for the others.
META_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "global_step": ((int,), _WHOLE),
    "epoch": ((int,), _WHOLE),
    "stage": ((str,), _TEXT),
    "name": ((str,), _TEXT),
    RUN_ID_KEY: ((str,), "a non-empty string"),
    "errors": ((dict,), "a JSON object"),
    "callback_name": ((str, type(None)), _TEXT),
    "directions": ((str, type(None)), _TEXT),
    "axis": ((int, type(None)), _WHOLE),
    "explained_variance": ((list, type(None)), "a list of numbers"),
}


def meta_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with a record's ``meta`` (its known keys of the wrong type), or None.

    Example::

        >>> meta_problem({"global_step": "twelve"})
        "meta `global_step` must be a whole number >= 0, got 'twelve'"
        >>> meta_problem({"global_step": 12, "stage": "final"}) is None
        True
    """
    for key, (types, expected) in META_TYPES.items():
        if key not in meta:
            continue
        value = meta[key]
        ok = isinstance(value, types) and not isinstance(value, bool)
        if ok and expected == _WHOLE and value is not None:
            ok = value >= 0
        elif ok and key == RUN_ID_KEY:
            ok = bool(value)
        if not ok:
            return f"meta `{key}` must be {expected}, got {value!r}"
    return None


def load_record(path: str | os.PathLike) -> Record:
    """Read one record from its ``.json`` (or ``.npz``) path.

    Raises :class:`RecordError` naming the file and what is wrong: unreadable or foreign JSON, another
    format version, an unknown kind, a ``meta`` that is not an object or whose known keys have the wrong
    type (:data:`META_TYPES`: ``global_step`` a whole number, ``stage`` a string, ...), missing or corrupt
    arrays, arrays inconsistent with the kind.
    """
    path = Path(path)
    json_path, npz_path = path.with_suffix(".json"), path.with_suffix(".npz")
    try:
        sidecar = json.loads(json_path.read_text())
    except (OSError, ValueError) as err:
        raise RecordError(f"{json_path}: not a readable lightning-landscape record ({err})") from err
    if not isinstance(sidecar, dict) or "format_version" not in sidecar:
        raise RecordError(f"{json_path}: not a lightning-landscape record (no format_version)")
    version = sidecar["format_version"]
    if version != FORMAT_VERSION:
        raise RecordError(
            f"{json_path}: format_version {version!r} is not supported (this version reads "
            f"{FORMAT_VERSION}); upgrade lightning-landscape"
        )
    cls: Any = _KINDS.get(str(sidecar.get("kind")))
    if cls is None:
        raise RecordError(f"{json_path}: unknown record kind {sidecar.get('kind')!r}")
    meta = sidecar.get("meta", _MISSING)
    if not isinstance(meta, dict):
        got = "nothing" if meta is _MISSING else "null" if meta is None else type(meta).__name__
        raise RecordError(f"{json_path}: `meta` must be a JSON object, got {got}")
    problem = meta_problem(meta)
    if problem is not None:
        raise RecordError(f"{json_path}: {problem}")
    if not npz_path.is_file():
        raise RecordError(f"{json_path}: its arrays {npz_path.name} are missing (copied without them?)")
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as err:
        raise RecordError(f"{npz_path}: corrupt or foreign record arrays ({err})") from err
    try:
        check_arrays(cls, arrays)
    except ValueError as err:
        raise RecordError(f"{npz_path}: inconsistent {cls.kind} record: {err}") from err
    if dataclasses.is_dataclass(cls):  # arrays this version does not know are left out
        known = {f.name for f in dataclasses.fields(cls)} - {"meta"}
        arrays = {k: v for k, v in arrays.items() if k in known}
    try:
        return cls(**arrays, meta=dict(meta))
    except Exception as err:
        raise RecordError(f"{npz_path}: {cls.kind} record arrays do not fit ({err})") from err


def _is_sidecar(path: Path) -> bool:
    """Whether a JSON file without its ``.npz`` is a record's sidecar (it starts with ``format_version``,
    as ``save_record`` writes it) rather than some other tool's JSON."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
        # A run's saved weights (run_weights.py: manifest.json + weights.npz) are not a record.
        return b'"format_version"' in head and b'"kind": "weights"' not in head
    except OSError:
        return False


def find_records(directory: str | os.PathLike) -> list[Path]:
    """The records' ``.json`` sidecars under ``directory`` (recursively, sorted): every JSON file with an
    ``.npz`` beside it, and every record sidecar whose ``.npz`` is missing (loading reports those).
    Other JSON files (a logger's, say) are not records and are left out.
    """
    directory = Path(directory)
    return [
        p
        for p in sorted(directory.rglob("*.json"))
        if p.is_file() and (p.with_suffix(".npz").exists() or _is_sidecar(p))
    ]


def load_records(directory: str | os.PathLike, errors: Literal["raise", "warn"] = "raise") -> list[Record]:
    """All records under ``directory`` (searched recursively), ordered by global step,
    periodic before final, then name.

    ``directory`` may be a run's log directory or its ``landscape/`` folder. A record that cannot be
    read (see :func:`load_record`) raises :class:`RecordError` naming it; record sidecars whose
    ``.npz`` is missing are listed together in one error. With ``errors="warn"`` such records are
    skipped instead, with one ``RuntimeWarning`` naming them. Records of more than one run (their
    ``meta["run_id"]`` differ, see :mod:`.identity`; records without one count as one legacy run) raise
    :class:`RecordError` naming each run and its folders, with either value of ``errors``.

    Example::

        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = save_record(LineRecord(np.linspace(-1, 1, 3), np.ones(3), {"global_step": 5}), d, "l")
        >>> [(r.kind, r.meta["global_step"]) for r in load_records(d)]
        [('line', 5)]
    """
    if errors not in ("raise", "warn"):
        raise ValueError(f"`errors` must be 'raise' or 'warn', got {errors!r}")
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory")
    paths = find_records(directory)
    missing = [p for p in paths if not p.with_suffix(".npz").exists()]
    if missing and errors == "raise":
        shown = ", ".join(str(p) for p in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise RecordError(
            f"{len(missing)} record(s) have no .npz arrays beside their .json: {shown} (copied without them?)"
        )
    records: list[Record] = []
    read: list[Path] = []
    problems = [f"{p.name} (no .npz)" for p in missing]
    for p in paths:
        if p in missing:
            continue
        try:
            records.append(load_record(p))
            read.append(p)
        except RecordError as err:
            if errors == "raise":
                raise
            problems.append(str(err))
    check_one_run(directory, zip(read, (r.meta for r in records)), RecordError)
    if problems:
        warnings.warn(
            f"load_records: skipped {len(problems)} unreadable record(s) under {directory}: "
            + "; ".join(problems[:5])
            + (" ..." if len(problems) > 5 else ""),
            RuntimeWarning,
            stacklevel=2,
        )
    stage_order = {"periodic": 0, "final": 1}
    return sorted(
        records,
        key=lambda r: (
            _finite(r.meta.get("global_step")) or 0.0,  # records made by hand may have no step
            stage_order.get(str(r.meta.get("stage", "")), 0),
            str(r.meta.get("name", "")),
        ),
    )
