"""Typed results and their on-disk form: ``NAME.npz`` (arrays, ``allow_pickle=False``) + ``NAME.json``.

Format, version 1 (``FORMAT_VERSION``):

- ``NAME.npz``: plain numeric arrays only, written with :func:`numpy.savez` and read with
  ``allow_pickle=False``. A surface has ``xs`` (nx,), ``ys`` (ny,), ``losses`` (ny, nx) with
  ``losses[i, j]`` the loss at ``(xs[j], ys[i])`` and optionally ``path`` (n, 2); a line has
  ``alphas`` (n,) and ``losses`` (n,). Non-finite losses are stored as they came (NaN, inf).
  A metrics record (kind ``"metrics"``, added within version 1: readers of older files are
  unaffected, and older readers reject it as an unknown kind) has ``names`` (n,) of unicode strings
  such as ``"hessian/lambda_max"`` and ``values`` (n,) float64, NaN where a metric failed.
- ``NAME.json``: ``{"format_version": 1, "kind": "surface" | "line" | "metrics", "meta": {...}}``;
  ``meta`` holds what the record is about (epoch, global_step, directions, seed, probe size,
  explained variance, ...; for metrics, each metric's options and probe seeds under its name).

Both files are written to a temporary name and renamed, the JSON last, so a record whose JSON exists
is complete. Nothing here uses pickle.

Reading: :func:`load_record` / :func:`load_records` (or by hand: ``json.load`` the sidecar, check
``format_version``, ``numpy.load(..., allow_pickle=False)`` the arrays). A file that cannot be read
raises :class:`RecordError` naming it: JSON that does not parse, JSON without ``format_version``
(a foreign file), a ``format_version`` other than 1 (written by another version), an unknown
``kind``, or arrays that are truncated, not an ``.npz`` or hold pickled objects. A later format
version will get a new number; version 1 files stay readable.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "SCALAR_GROUPS",
    "LineRecord",
    "MetricsRecord",
    "Record",
    "RecordError",
    "SurfaceRecord",
    "load_record",
    "load_records",
    "save_record",
    "tag_prefix",
]

FORMAT_VERSION = 1


class RecordError(ValueError):
    """A record file that cannot be read: corrupt, foreign, or of an unknown format version."""


# The scalar schema. Each record type says which scalars it stands for (``scalars()``, keys without the
# ``landscape/`` prefix); the callback logs exactly those under ``tag_prefix(...)``, the CLI tabulates
# them, and TensorBoard's custom-scalars layout groups them by these prefixes. One place to add a name.
SCALAR_GROUPS: dict[str, tuple[str, ...]] = {
    "loss at the centre and on the surface": ("loss/",),
    "trajectory PCA explained variance": ("explained_variance/",),
    "distance from the initial weights": ("distance_from_init",),
    "curvature (Hessian)": ("hessian/",),
    "curvature per block": ("blocks/",),
    "edge of stability (sharpness / threshold)": ("eos/",),
    "sharpness": ("sharpness/",),
}


def tag_prefix(name: str | None = None, stage: str = "periodic") -> str:
    """The logged-tag prefix of a record: ``landscape/[NAME/][final/]``.

    Example::

        >>> tag_prefix(), tag_prefix("sam", "final")
        ('landscape/', 'landscape/sam/final/')
    """
    base = f"landscape/{name}/" if name else "landscape/"
    return base if stage == "periodic" else f"{base}final/"


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
    kind: ClassVar[str] = "surface"

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"xs": self.xs, "ys": self.ys, "losses": self.losses}
        if self.path is not None:
            out["path"] = self.path
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
        return out


@dataclass
class LineRecord:
    """Loss along a line: ``losses[k]`` at coefficient ``alphas[k]``."""

    alphas: np.ndarray
    losses: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "line"

    def arrays(self) -> dict[str, np.ndarray]:
        return {"alphas": self.alphas, "losses": self.losses}

    def scalars(self) -> dict[str, float]:
        """The interpolation line's distance from the initial weights; nothing for other lines."""
        distance = _finite(self.meta.get("distance"))
        if self.meta.get("directions") == "interpolation" and distance is not None:
            return {"distance_from_init": distance}
        return {}


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


Record = SurfaceRecord | LineRecord | MetricsRecord
_KINDS: dict[str, type] = {"surface": SurfaceRecord, "line": LineRecord, "metrics": MetricsRecord}


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
    """Write ``record`` as ``directory/name.npz`` + ``directory/name.json``; return the JSON path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in record.arrays().items()}
    for key, arr in arrays.items():
        if arr.dtype == object:
            raise TypeError(f"array {key!r} has dtype object; records hold numeric arrays only")
    _atomic_write(directory / f"{name}.npz", lambda fh: np.savez(fh, **arrays))
    sidecar = {"format_version": FORMAT_VERSION, "kind": record.kind, "meta": _jsonable(record.meta)}
    text = json.dumps(sidecar, indent=1, sort_keys=True).encode()
    json_path = directory / f"{name}.json"
    _atomic_write(json_path, lambda fh: fh.write(text))
    return json_path


def load_record(path: str | os.PathLike) -> Record:
    """Read one record from its ``.json`` (or ``.npz``) path. Raises :class:`RecordError` if unreadable."""
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
    cls = _KINDS.get(sidecar.get("kind"))
    if cls is None:
        raise RecordError(f"{json_path}: unknown record kind {sidecar.get('kind')!r}")
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        return cls(**arrays, meta=dict(sidecar.get("meta") or {}))
    except Exception as err:
        raise RecordError(f"{npz_path}: corrupt or foreign record arrays ({err})") from err


def load_records(directory: str | os.PathLike) -> list[Record]:
    """All records under ``directory`` (searched recursively), ordered by global step,
    periodic before final, then name.

    ``directory`` may be a run's log directory or its ``landscape/`` folder.

    Example::

        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = save_record(LineRecord(np.linspace(-1, 1, 3), np.ones(3), {"global_step": 5}), d, "l")
        >>> [(r.kind, r.meta["global_step"]) for r in load_records(d)]
        [('line', 5)]
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such directory")
    records = [load_record(p) for p in sorted(directory.rglob("*.json")) if p.with_suffix(".npz").exists()]
    stage_order = {"periodic": 0, "final": 1}
    return sorted(
        records,
        key=lambda r: (
            r.meta.get("global_step") or 0,
            stage_order.get(r.meta.get("stage", ""), 0),
            r.meta.get("name", ""),
        ),
    )
