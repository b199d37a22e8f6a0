"""Runs read back from their records: the surface and lines at the end, each scalar over training and at
the end, the protocol they were measured on; groups of runs (seeds) as mean, spread and Welch intervals.

A run's *protocol* is what must agree for its numbers to be compared with another run's:

- of its surface (:data:`PROTOCOL_KEYS`): the directions (``pca``, ``random``, ``hessian``), the grid
  ``resolution``, the probe set's size (``probe_batches``, ``probe_samples``) and, for random
  directions, ``include_1d``;
- of each curvature or sharpness metric (:data:`METRIC_PROTOCOL_OPTIONS`): its options (``max_iter``,
  ``tol``, ``which``, ``k``, ``samples``, ``rho``, ``sigma``, ``adaptive``, probe distribution) and the
  probe set's size.

Seeds (of the directions, of the probes), the span of a trajectory-PCA plane (fitted to each run's
path), timings and the number of parameters are not part of it: they differ between seeds by design.
A metric present in one run and absent in another (it failed there) is not a mismatch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_landscape.records.record import (
    LineRecord,
    MetricsRecord,
    SurfaceRecord,
    find_records,
    load_records,
)
from lightning_landscape.records.stats import WelchInterval, mean_std, welch_interval

__all__ = [
    "METRIC_PROTOCOL_OPTIONS",
    "PROTOCOL_KEYS",
    "Group",
    "Run",
    "RunError",
    "ScalarComparison",
    "compare_groups",
    "comparison_stage",
    "end_values",
    "group_line",
    "group_series",
    "load_run",
    "protocol",
    "protocol_differences",
    "record_scalars",
    "representative",
    "run_series",
]

PROTOCOL_KEYS = ("directions", "resolution", "probe_batches", "probe_samples", "include_1d")
METRIC_PROTOCOL_OPTIONS = (
    "which", "k", "max_iter", "tol", "samples", "probes", "rho", "adaptive", "sigma", "distribution",
    "probe_batches", "probe_samples",
)  # fmt: skip


class RunError(ValueError):
    """A run directory that cannot be read as one run (missing, empty, several runs in one)."""


@dataclasses.dataclass
class Run:
    """One run's records, with the surface and lines at its end picked out."""

    label: str
    path: Path
    records: list[Any]

    @property
    def surfaces(self) -> list[SurfaceRecord]:
        return [r for r in self.records if isinstance(r, SurfaceRecord)]

    @property
    def end_surface(self) -> SurfaceRecord | None:
        """The final surface, or else the latest periodic one (an interrupted run)."""
        return self.latest_surface("final") or next(reversed(self.surfaces), None)

    def latest_surface(self, stage: str) -> SurfaceRecord | None:
        """The last surface of ``stage`` (``"final"`` or ``"periodic"``), if any."""
        return next((r for r in reversed(self.surfaces) if r.meta.get("stage") == stage), None)

    def latest_metrics(self, stage: str) -> MetricsRecord | None:
        """The last metrics record of ``stage``, if any."""
        found = [r for r in self.records if isinstance(r, MetricsRecord) and r.meta.get("stage") == stage]
        return next(reversed(found), None)

    def end_line(self, which: str) -> LineRecord | None:
        """The ``"interpolation"`` line or plane-axis line ``"axis0"`` / ``"axis1"`` of the final stage,
        or else the latest periodic one."""
        lines = [r for r in self.records if isinstance(r, LineRecord)]
        final = [r for r in lines if r.meta.get("stage") == "final"] or lines
        for r in reversed(final):
            if which == "interpolation" and r.meta.get("directions") == "interpolation":
                return r
            if which.startswith("axis") and r.meta.get("axis") == int(which[4:]):
                return r
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "iuf":
        return float(value.ravel()[0])
    return None


def _flat_numbers(values: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(values, dict):
        for k, v in values.items():
            out.update(_flat_numbers(v, f"{prefix}{k}/"))
    else:
        x = _number(values)
        if x is not None:
            out[prefix.rstrip("/")] = x
    return out


def record_scalars(record: Any) -> dict[str, float]:
    """The scalars one record stands for (keys as in the loggers, without ``landscape/``): its
    ``scalars()`` (the schema in :mod:`.records`); for a record type without one, its numeric scalar
    fields and the numbers under ``meta["values" | "scalars" | "metrics"]``."""
    if callable(getattr(record, "scalars", None)):
        out = dict(record.scalars())
    else:
        meta = record.meta if isinstance(getattr(record, "meta", None), dict) else {}
        out = {}
        if dataclasses.is_dataclass(record):
            for f in dataclasses.fields(record):
                if f.name != "meta":
                    out.update(_flat_numbers(getattr(record, f.name), f"{f.name}/"))
        for key in ("values", "scalars", "metrics"):
            if isinstance(meta.get(key), dict):
                out.update(_flat_numbers(meta[key]))
    return {k: v for k, v in out.items() if k}


def run_series(
    run: Run, stages: Sequence[str] = ("periodic", "final")
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each scalar over training as ``(global steps, values)``: the periodic records, or the final
    ones where a scalar has no periodic record (only the ``stages`` given)."""
    points: dict[str, dict[int, float]] = {}
    for stage in stages:
        seen = set(points)  # scalars with periodic points take nothing from the final records
        for rec in run.records:
            if rec.meta.get("stage", "periodic") != stage:
                continue
            step = int(_number(rec.meta.get("global_step")) or 0)
            for key, value in record_scalars(rec).items():
                if key not in seen:
                    points.setdefault(key, {})[step] = value
    return {
        k: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)])) for k, v in sorted(points.items()) if v
    }


def end_values(run: Run, stage: str = "final") -> dict[str, float]:
    """Each scalar at the end of the run: with ``stage="final"`` the final records' values, then the
    last value of every other series; with ``"periodic"`` the last periodic value of each."""
    out: dict[str, float] = {}
    if stage == "final":
        for rec in run.records:
            if rec.meta.get("stage") == "final":
                out.update(record_scalars(rec))
    stages = ("periodic", "final") if stage == "final" else ("periodic",)
    for key, (_, values) in run_series(run, stages).items():
        out.setdefault(key, float(values[-1]))
    return out


def _run_label(path: Path) -> str:
    parts = [p for p in path.resolve().parts if p != "landscape"]
    return "/".join(parts[-2:])


def load_run(run_dir: str | Path, label: str | None = None) -> Run:
    """Read a run's records; :class:`RunError` if it is missing, empty or holds several runs (a
    :class:`~lightning_landscape.records.record.RecordError` if a record cannot be read)."""
    path = Path(run_dir)
    if not path.exists():
        raise RunError(f"{path}: no such run directory")
    if not path.is_dir():
        raise RunError(f"{path}: not a directory; give a run's log directory (or its landscape/ folder)")
    # Folders of compared solutions (``shared_*``, written by compare_solutions) are not runs.
    found = [
        p for p in find_records(path) if not any(x.startswith("shared_") for x in p.relative_to(path).parts)
    ]
    folders = sorted({p.parent for p in found})
    if not folders:
        raise RunError(f"{path}: no lightning-landscape records found (looked for NAME.json + NAME.npz)")
    if len(folders) > 1:
        shown = ", ".join(str(f) for f in folders[:4]) + (" ..." if len(folders) > 4 else "")
        raise RunError(f"{path}: holds the records of {len(folders)} runs ({shown}); give one run directory")
    return Run(label or _run_label(path), path, load_records(folders[0]))


def comparison_stage(runs: Sequence[Run]) -> str:
    """``"final"`` when every run has a final surface, else ``"periodic"`` (compare like with like)."""
    return "final" if all(r.latest_surface("final") for r in runs) else "periodic"


def protocol(run: Run, stage: str) -> dict[str, Any]:
    """The settings of ``run`` at ``stage`` that define its protocol (see the module docstring)."""
    out: dict[str, Any] = {}
    surface = run.latest_surface(stage) or run.end_surface
    if surface is not None:
        out.update({k: surface.meta[k] for k in PROTOCOL_KEYS if surface.meta.get(k) is not None})
    metrics = run.latest_metrics(stage)
    for name, options in (metrics.meta if metrics is not None else {}).items():
        if isinstance(options, dict):
            for key in METRIC_PROTOCOL_OPTIONS:
                if options.get(key) is not None:
                    out[f"{name}.{key}"] = options[key]
    return out


def protocol_differences(runs: Sequence[Run], stage: str) -> dict[str, list[Any]]:
    """The protocol settings on which ``runs`` disagree: ``{key: [value per run (None: not set)]}``."""
    settings = [protocol(r, stage) for r in runs]
    keys = sorted({k for s in settings for k in s})
    out = {}
    for key in keys:
        values = [s.get(key) for s in settings]
        if len({repr(v) for v in values if v is not None}) > 1:
            out[key] = values
    return out


@dataclasses.dataclass
class Group:
    """Runs of one setting (seeds, say) under a name."""

    name: str
    runs: list[Run]


@dataclasses.dataclass
class ScalarComparison:
    """One scalar at the end of training over groups: ``stats[g] = (n, mean, std)`` per group, and
    ``differences[g]`` (``mean(g) - mean(first)`` with its Welch interval; None for the first group or
    where a group has fewer than two values)."""

    key: str
    values: list[list[float]]
    stats: list[tuple[int, float, float]]
    differences: list[WelchInterval | None]


def compare_groups(groups: Sequence[Group], stage: str, confidence: float = 0.95) -> list[ScalarComparison]:
    """Every scalar's end value (:func:`end_values` at ``stage``) per group: mean, standard deviation,
    and each group's difference from the first with Welch's ``confidence`` interval.

    Example::

        >>> import tempfile
        >>> from lightning_landscape.records.record import save_record
        >>> runs = []
        >>> for v in (1.0, 1.2, 1.4, 2.0, 2.2, 2.4):
        ...     d = tempfile.mkdtemp()
        ...     _ = save_record(MetricsRecord.from_dict({"hessian/trace": v}, {"stage": "final"}), d, "m")
        ...     runs.append(load_run(d))
        >>> (row,) = compare_groups([Group("a", runs[:3]), Group("b", runs[3:])], "final")
        >>> [round(x, 4) for x in (row.stats[0][1], row.differences[1].low, row.differences[1].high)]
        [1.2, 0.5466, 1.4534]
    """
    ends = [[end_values(run, stage) for run in g.runs] for g in groups]
    rows = []
    for key in sorted({k for per_group in ends for end in per_group for k in end}):
        values = [
            [end[key] for end in per_group if key in end and math.isfinite(end[key])] for per_group in ends
        ]
        stats = [mean_std(v) for v in values]
        differences: list[WelchInterval | None] = [None]
        for v in values[1:]:
            ok = len(v) > 1 and len(values[0]) > 1
            differences.append(welch_interval(values[0], v, confidence) if ok else None)
        rows.append(ScalarComparison(key, values, stats, differences))
    return rows


def group_series(group: Group) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each scalar over training for a group: ``(steps, mean, std)`` over the runs that have a value at
    each step (std NaN where only one has)."""
    points: dict[str, dict[int, list[float]]] = {}
    for run in group.runs:
        for key, (steps, values) in run_series(run).items():
            for step, value in zip(steps.tolist(), values.tolist()):
                points.setdefault(key, {}).setdefault(step, []).append(value)
    out = {}
    for key, by_step in sorted(points.items()):
        at = sorted(by_step)
        stats = [mean_std(by_step[s]) for s in at]
        out[key] = (np.array(at), np.array([m for _, m, _ in stats]), np.array([s for _, _, s in stats]))
    return out


def group_line(
    group: Group, which: str = "interpolation"
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A group's ``which`` line (see :meth:`Run.end_line`) as ``(alphas, mean, std)`` over its runs, or
    None where a run lacks it or the runs' ``alphas`` differ."""
    lines = [run.end_line(which) for run in group.runs]
    if not lines or any(ln is None for ln in lines):
        return None
    alphas = lines[0].alphas  # type: ignore[union-attr]
    if any(ln.alphas.shape != alphas.shape or not np.allclose(ln.alphas, alphas) for ln in lines):  # type: ignore[union-attr]
        return None
    losses = np.stack([np.asarray(ln.losses, dtype=np.float64) for ln in lines])  # type: ignore[union-attr]
    std = losses.std(axis=0, ddof=1) if len(lines) > 1 else np.full(alphas.shape, np.nan)
    return alphas, losses.mean(axis=0), std


def representative(group: Group, stage: str) -> Run:
    """The run whose surface at ``stage`` has the centre loss closest to the group's median (the first
    such run on a tie); runs without a surface are passed over."""
    with_surface = [(r, r.latest_surface(stage) or r.end_surface) for r in group.runs]
    scored = [(r, s.centre_loss) for r, s in with_surface if s is not None]
    if not scored:
        raise RunError(f"group {group.name!r}: no loss surface in any of its runs")
    finite = [c for _, c in scored if math.isfinite(c)]
    if not finite:
        return scored[0][0]
    median = float(np.median(finite))
    return min(scored, key=lambda rc: abs(rc[1] - median) if math.isfinite(rc[1]) else math.inf)[0]
