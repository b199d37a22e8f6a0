"""How far to trust a landscape: the indicators put together, their thresholds, flags and cost.

One call, :func:`landscape_reliability`, computes every indicator for a surface already drawn
(:mod:`~lightning_landscape.functional.trust.sensitivity` for direction and distance,
:mod:`~lightning_landscape.functional.trust.path` for the path) and :func:`reliability_summary`
turns the pieces into a :class:`~lightning_landscape.records.record.ReliabilityRecord`: scalars under
``reliability/...``, a markdown table and short flags for the figure's title.

Checks and their default thresholds (:class:`ReliabilityThresholds`):

====================  ===========================================  ==========================================
check                 value                                        fails when (flag)
====================  ===========================================  ==========================================
probe noise           median standard error / surface loss range   above the contour spacing given, else
                      (computed elsewhere, passed in)              above ``max_noise`` = 0.05
direction: curvature  std / mean of the curvature at the centre    above ``max_curvature_spread`` = 0.5
                      along extra random directions
direction: width      std / mean of the basin width along them     above ``max_width_spread`` = 0.5
trace / P             mean random-direction curvature / (tr H / P)  off 1 by more than ``max_trace_mismatch``
basin vs grid         smallest basin radius along the plane axes   below the surface's grid step
path on plane         1 - residual share of the path               below ``min_on_plane_share`` = 0.7
path losses           max |true - surface| / surface loss range    above ``max_path_disagreement`` = 0.2
random walk           PC1 and PC1 + PC2 vs random walks            not above their 1 - alpha/2 quantiles
====================  ===========================================  ==========================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import Tensor, nn

from lightning_landscape.functional.landscape.params import Direction, LossFn
from lightning_landscape.functional.landscape.sharding import PointShard
from lightning_landscape.functional.landscape.shards import ShardLayout
from lightning_landscape.functional.landscape.surface import Engine
from lightning_landscape.functional.landscape.trajectory import TrajectoryPCA
from lightning_landscape.functional.objective import Objective
from lightning_landscape.functional.trust.path import (
    PathLossCheck,
    PathPlaneFit,
    RandomWalkVerdict,
    path_loss_check,
    path_plane_fit,
    random_walk_verdict,
    snapshot_losses_of,
    subsample,
)
from lightning_landscape.functional.trust.sensitivity import (
    DEFAULT_DISTANCES,
    Basin,
    DirectionSensitivity,
    DistanceProfile,
    RandomDirectionCurvature,
    direction_sensitivity_of,
    distance_profile_of,
    random_direction_curvature_of,
)
from lightning_landscape.records.record import LineRecord, ReliabilityRecord, SurfaceRecord

__all__ = [
    "ReliabilitySettings",
    "ReliabilityThresholds",
    "landscape_reliability",
    "landscape_reliability_of",
    "reliability_cost",
    "reliability_summary",
]


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"`{name}` must be {expected}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_pos(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


@dataclass(frozen=True)
class ReliabilitySettings:
    """What :func:`landscape_reliability` evaluates (default: 40 loss evaluations, :func:`reliability_cost`).

    Attributes:
        directions: extra filter-normalized random directions for direction sensitivity (0: off).
        direction_points: points on each of their lines (odd; the centre is shared).
        direction_span: the lines cover ``[-span, span]`` (filter-normalized units).
        distances: log-spaced distances along each plane axis, both signs, in axis units (empty: off).
        path_points: snapshots whose true loss is evaluated, evenly spread (None: all; 0: off).
        trace_directions: random unit directions for the ``trace / P`` cross-check (0: off).
        trace_step: their second-difference step (default ``0.01 ||w||``).
        delta, relative, min_delta: the basin threshold, ``max(delta |L0|, min_delta)`` when
            ``relative``, else ``delta`` (see :func:`~.sensitivity.basin_threshold`).
        walk_samples: simulated random walks for the baseline.

    Example::

        >>> ReliabilitySettings(directions=0).directions
        0
    """

    directions: int = 3
    direction_points: int = 5
    direction_span: float = 1.0
    distances: tuple[float, ...] = DEFAULT_DISTANCES
    path_points: int | None = 8
    trace_directions: int = 0
    trace_step: float | None = None
    delta: float = 0.1
    relative: bool = True
    min_delta: float = 1e-3
    walk_samples: int = 1000

    def __post_init__(self) -> None:
        _check(
            _is_int(self.directions) and self.directions >= 0, "directions", self.directions, "an int >= 0"
        )
        p = self.direction_points
        _check(_is_int(p) and p >= 3 and p % 2 == 1, "direction_points", p, "an odd int >= 3")
        _check(_is_pos(self.direction_span), "direction_span", self.direction_span, "a positive number")
        d = np.asarray(self.distances, dtype=np.float64)
        ok = d.ndim == 1 and bool(np.all(np.isfinite(d))) and bool(np.all(d > 0) and np.all(np.diff(d) > 0))
        _check(ok, "distances", self.distances, "positive, finite and increasing")
        pp = self.path_points
        _check(
            pp is None or (_is_int(pp) and (pp == 0 or pp >= 2)), "path_points", pp, "None, 0 or an int >= 2"
        )
        t = self.trace_directions
        _check(_is_int(t) and (t == 0 or t >= 2), "trace_directions", t, "0 or an int >= 2")
        _check(self.trace_step is None or _is_pos(self.trace_step), "trace_step", self.trace_step, "positive")
        _check(_is_pos(self.delta), "delta", self.delta, "a positive number")
        _check(isinstance(self.relative, bool), "relative", self.relative, "a bool")
        m = self.min_delta
        _check(isinstance(m, (int, float)) and math.isfinite(m) and m >= 0, "min_delta", m, "a number >= 0")
        _check(
            _is_int(self.walk_samples) and self.walk_samples >= 100,
            "walk_samples",
            self.walk_samples,
            ">= 100",
        )


@dataclass(frozen=True)
class ReliabilityThresholds:
    """When a check fails and flags the figure (see the module docstring for each check).

    Example::

        >>> ReliabilityThresholds(min_on_plane_share=0.5).min_on_plane_share
        0.5
    """

    max_noise: float = 0.05
    max_curvature_spread: float = 0.5
    max_width_spread: float = 0.5
    max_trace_mismatch: float = 0.5
    min_on_plane_share: float = 0.7
    max_path_disagreement: float = 0.2
    alpha: float = 0.01

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            _check(_is_pos(value), name, value, "a positive number")
        _check(self.alpha < 1, "alpha", self.alpha, "in (0, 1)")
        _check(self.min_on_plane_share <= 1, "min_on_plane_share", self.min_on_plane_share, "in (0, 1]")


@dataclass
class _Summary:
    values: dict[str, float] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def check(self, check: str, value: float, threshold: str, ok: bool | None, flag: str) -> None:
        status = "n/a" if ok is None or not math.isfinite(value) else "ok" if ok else "fail"
        self.checks.append(
            {"check": check, "value": value if math.isfinite(value) else None, "threshold": threshold,
             "status": status, "flag": flag}
        )  # fmt: skip


def reliability_summary(
    *,
    noise: float | None = None,
    contour_spacing: float | None = None,
    directions: DirectionSensitivity | None = None,
    curvature: RandomDirectionCurvature | None = None,
    trace: float | None = None,
    distances: Sequence[DistanceProfile] = (),
    grid_step: float | None = None,
    path_fit: PathPlaneFit | None = None,
    path_losses: PathLossCheck | None = None,
    walk: RandomWalkVerdict | None = None,
    thresholds: ReliabilityThresholds | None = None,
    meta: dict[str, Any] | None = None,
) -> ReliabilityRecord:
    """Put the indicators of one landscape together: scalars, checks against ``thresholds``, flags.

    Every piece is optional; a check without its piece is left out. ``noise`` is the probe noise as a
    share of the surface's loss range (median standard error / range) and ``contour_spacing`` the
    spacing of neighbouring contour levels on the same scale; with both, the check is "noise above the
    contour spacing", otherwise ``noise > max_noise``.

    Example::

        >>> from lightning_landscape.functional.trust.path import PathPlaneFit
        >>> fit = PathPlaneFit(0.6, np.array([0.0, 1.0]), np.array([2.0, 1.0]), "offsets")
        >>> rec = reliability_summary(path_fit=fit, noise=0.001)
        >>> rec.flags
        ['path 40 % off-plane']
        >>> rec.scalars()["reliability/path/on_plane_share"]
        0.6
    """
    th = thresholds or ReliabilityThresholds()
    s = _Summary()
    v = s.values
    if noise is not None:
        v["noise/relative_stderr"] = float(noise)
        if contour_spacing is not None:
            v["noise/contour_spacing"] = float(contour_spacing)
            ok = float(noise) <= float(contour_spacing)
            s.check("probe noise", float(noise), f"<= contour spacing {contour_spacing:.3g}", ok,
                    "noise above contour spacing")  # fmt: skip
        else:
            s.check("probe noise", float(noise), f"<= {th.max_noise:g}", float(noise) <= th.max_noise,
                    f"probe noise {100 * float(noise):.0f} % of the loss range")  # fmt: skip
    if directions is not None:
        cv, wv = directions.curvature_spread, directions.width_spread
        v["direction/curvature_mean"] = float(np.mean(directions.curvatures))
        v["direction/curvature_spread"] = cv
        v["direction/width_mean"] = float(np.mean(directions.widths))
        v["direction/width_spread"] = wv
        s.check("curvature across directions (std/mean)", cv, f"<= {th.max_curvature_spread:g}",
                cv <= th.max_curvature_spread, f"curvature differs across directions ({cv:.2f})")  # fmt: skip
        s.check("basin width across directions (std/mean)", wv, f"<= {th.max_width_spread:g}",
                wv <= th.max_width_spread, f"basin width differs across directions ({wv:.2f})")  # fmt: skip
    if curvature is not None:
        v["direction/random_curvature_mean"] = curvature.mean
        if trace is not None:
            agree = curvature.agreement(trace)
            v["direction/trace_over_params"] = agree["expected"]
            v["direction/trace_ratio"] = ratio = agree["ratio"]
            s.check("random-direction curvature / (trace / P)", ratio, f"1 ± {th.max_trace_mismatch:g}",
                    abs(ratio - 1) <= th.max_trace_mismatch,
                    f"curvature ≠ trace/P (x{ratio:.2g})")  # fmt: skip
    radii = [p.radius for p in distances]
    for i, prof in enumerate(distances):
        v[f"distance/basin_radius_axis{i + 1}"] = prof.radius
    if distances:
        v["distance/threshold"] = distances[0].threshold
        smallest = min(radii)
        if grid_step is not None:
            s.check("smallest basin radius", smallest, f">= grid step {grid_step:.3g}", smallest >= grid_step,
                    "basin narrower than the grid spacing")  # fmt: skip
    if path_fit is not None:
        share = path_fit.on_plane_share
        v["path/on_plane_share"] = share
        v["path/max_distance_from_plane"] = path_fit.max_relative_distance
        s.check("path on the plane (share)", share, f">= {th.min_on_plane_share:g}",
                share >= th.min_on_plane_share, f"path {round(100 * (1 - share))} % off-plane")  # fmt: skip
    if path_losses is not None:
        worst = path_losses.max()
        v["path/loss_disagreement_max"] = worst
        v["path/loss_disagreement_median"] = path_losses.median()
        v["path/loss_disagreement_max_abs"] = path_losses.max(relative=False)
        v["path/points_outside_grid"] = float(path_losses.outside)
        s.check("path loss vs contour (max / range)", worst, f"<= {th.max_path_disagreement:g}",
                worst <= th.max_path_disagreement,
                f"path losses off the contour by {100 * worst:.0f} % of its range")  # fmt: skip
    if walk is not None:
        v["path/pc1"], v["path/pc12"] = walk.pc1, walk.pc12
        v["path/pc1_random_walk"], v["path/pc12_random_walk"] = walk.pc1_walk, walk.pc12_walk
        v["path/structured"] = float(walk.structured)
        v["path/random_walk_p_value"] = walk.p_value
        s.check("PC1 vs random walk", walk.pc1,
                f"> {walk.pc1_threshold:.3f} (or PC1+2 > {walk.pc12_threshold:.3f})", walk.structured,
                "PCA not more structured than a random walk")  # fmt: skip
    v["failed_checks"] = float(sum(c["status"] == "fail" for c in s.checks))
    info = {**(meta or {}), "thresholds": asdict(th)}
    if walk is not None:
        info["random_walk"] = walk.label
    arrays: dict[str, Any] = {}
    if directions is not None:
        arrays.update(direction_curvatures=directions.curvatures, direction_widths=directions.widths)
    if path_fit is not None:
        arrays["path_distances"] = path_fit.distances
    if path_losses is not None:
        arrays.update(
            path_points=path_losses.points,
            path_losses=path_losses.true_losses,
            path_surface_losses=path_losses.surface_losses,
        )
    return ReliabilityRecord.from_dict(v, s.checks, info, **arrays)


def reliability_cost(
    settings: ReliabilitySettings | None = None,
    snapshots: int = 0,
    axes: int = 2,
    centre_known: bool = True,
) -> float:
    """Evaluations of the loss over the probe set that :func:`landscape_reliability` adds (multiply by
    the number of probe batches for forward passes over one batch; the unit of the overhead budget).

    Example::

        >>> reliability_cost(snapshots=64)   # 3 x 4 + 2 x 2 x 5 + 8
        40.0
    """
    st = settings or ReliabilitySettings()
    cost = 0.0 if centre_known else 1.0
    cost += st.directions * (st.direction_points - 1)
    cost += axes * 2 * len(st.distances)
    if snapshots > 0 and st.path_points != 0:
        cost += len(subsample(snapshots, st.path_points))
    cost += 2 * st.trace_directions
    return cost


def landscape_reliability(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    plane: Sequence[Direction],
    surface: SurfaceRecord,
    *,
    params: Sequence[Tensor] | None = None,
    pca: TrajectoryPCA | None = None,
    snapshots: Tensor | Sequence[Tensor] | None = None,
    times: Sequence[float] | None = None,
    seed: int = 0,
    include_1d: bool = False,
    unit: float = 1.0,
    noise: float | None = None,
    contour_spacing: float | None = None,
    trace: float | None = None,
    settings: ReliabilitySettings | None = None,
    thresholds: ReliabilityThresholds | None = None,
    shard: PointShard | None = None,
    engine: Engine = "auto",
    layout: ShardLayout | None = None,
) -> tuple[ReliabilityRecord, list[LineRecord]]:
    """Every reliability indicator of ``surface`` (drawn on ``plane`` around the current weights).

    Args:
        plane: the surface's two directions (the distance profiles run along them).
        pca: the trajectory PCA the plane came from (path checks; omit for a random plane).
        snapshots: the snapshots of ``pca`` (``(n, P)`` or flat rows), for the true losses on the path.
        times: the snapshots' steps and then the centre's, for the random-walk baseline (default:
            evenly spaced, the centre one interval after the last snapshot).
        seed, include_1d: the plane's: the extra random directions continue its sequence after two draws.
        unit: the plane axes' unit for ``settings.distances`` (1 for filter-normalized directions; for
            unit-norm PCA directions, say, the weights' norm).
        noise, contour_spacing: probe noise and contour spacing, relative to the loss range, if known.
        trace: ``trace(H)`` over ``params`` where computed, for the ``trace / P`` cross-check
            (``settings.trace_directions > 0``).
        settings, thresholds: what to evaluate and when a check fails.
        layout: of sharded parameters (FSDP2, :class:`~lightning_landscape.functional.landscape.shards.
            ShardLayout`): ``params``, ``plane`` and ``snapshots`` are then this process's slices; the
            random directions are the unsharded ones sliced and norms are summed over processes, so the
            record is the one an unsharded process computes. Every process evaluates every point. Found
            by itself when the model's parameters are DTensors: ``plane`` may then be given as DTensors or
            full-shaped, ``snapshots`` full-length; every process must call it (a collective).

    Returns:
        The :class:`ReliabilityRecord` and one :class:`LineRecord` per plane axis (loss vs distance,
        ``meta["directions"] == "distance"``, ``meta["distance_axis"]`` 0 or 1; not ``"axis"``, which marks
        the plane-axis lines), for :func:`lightning_landscape.plots.landscape.distance_figure`.

    Example::

        >>> import torch
        >>> from lightning_landscape.functional import filter_normalized_directions, loss_surface
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Linear(3, 2)
        >>> batches = [(torch.randn(8, 3), torch.randn(8, 2))]
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> plane = filter_normalized_directions(list(model.parameters()), count=2, seed=0)
        >>> surface = loss_surface(model, mse, batches, plane, resolution=5)
        >>> record, lines = landscape_reliability(model, mse, batches, plane, surface)
        >>> sorted(k for k in record.scalars() if "basin_radius" in k)
        ['reliability/distance/basin_radius_axis1', 'reliability/distance/basin_radius_axis2']
    """
    objective = Objective.build(model, loss_fn, batches, params, shard=shard, engine=engine)
    if objective.layout is not None:  # found sharded: the plane and snapshots as this process's slices
        plane = [objective.layout.slices(d, "plane") for d in plane]
        snapshots = None if snapshots is None else objective.layout.flat_slices(snapshots)
    return landscape_reliability_of(
        objective, plane, surface, pca=pca, snapshots=snapshots, times=times, seed=seed,
        include_1d=include_1d, unit=unit, noise=noise, contour_spacing=contour_spacing, trace=trace,
        settings=settings, thresholds=thresholds, layout=layout,
    )  # fmt: skip


def landscape_reliability_of(
    objective: Objective,
    plane: Sequence[Direction],
    surface: SurfaceRecord,
    *,
    pca: TrajectoryPCA | None = None,
    snapshots: Tensor | Sequence[Tensor] | None = None,
    times: Sequence[float] | None = None,
    seed: int = 0,
    include_1d: bool = False,
    unit: float = 1.0,
    noise: float | None = None,
    contour_spacing: float | None = None,
    trace: float | None = None,
    settings: ReliabilitySettings | None = None,
    thresholds: ReliabilityThresholds | None = None,
    layout: ShardLayout | None = None,
) -> tuple[ReliabilityRecord, list[LineRecord]]:
    """:func:`landscape_reliability` of ``objective`` (the core): every evaluation with its batches,
    parameters, engine, sharding and BatchNorm statistics (``layout``: of sharded parameters)."""
    layout = objective.layout if layout is None else layout  # a sharded objective brings its own
    st = settings or ReliabilitySettings()
    on_grid = 0.0 in set(np.asarray(surface.xs).tolist()) and 0.0 in set(np.asarray(surface.ys).tolist())
    centre = surface.centre_loss if on_grid else objective.loss()
    basin = Basin(st.delta, st.relative, st.min_delta)
    sens = None
    if st.directions:
        sens = direction_sensitivity_of(
            objective, st.directions, st.direction_points, st.direction_span, seed, include_1d=include_1d,
            basin=basin, centre_loss=centre, layout=layout,
        )  # fmt: skip
    profiles = (
        [
            distance_profile_of(objective, d, st.distances, unit=unit, basin=basin, centre_loss=centre)
            for d in plane
        ]
        if st.distances
        else []
    )
    curvature = None
    if st.trace_directions:
        curvature = random_direction_curvature_of(
            objective, st.trace_directions, st.trace_step, seed, centre_loss=centre, layout=layout
        )
    fit = check = walk = None
    if pca is not None:
        fit = path_plane_fit(pca)
        count = pca.coords.shape[0]
        num_params = layout.numel if layout is not None else objective.numel
        walk = random_walk_verdict(
            pca.explained_variance_ratio[:2].tolist(), count, num_params, pca.convention,
            (thresholds or ReliabilityThresholds()).alpha, st.walk_samples, times=times,
        )  # fmt: skip
        if snapshots is not None and st.path_points != 0:
            rows = snapshots.shape[0] if isinstance(snapshots, Tensor) else len(snapshots)
            if rows != count:
                raise ValueError(f"`snapshots` has {rows} rows but `pca` was computed from {count}")
            idx = subsample(count, st.path_points)
            losses = snapshot_losses_of(objective, snapshots, idx)
            check = path_loss_check(surface, pca.coords[idx, :2].numpy(), losses)
    steps = [float(np.min(np.diff(np.asarray(a, float)))) for a in (surface.xs, surface.ys) if len(a) > 1]
    meta = {
        "settings": {**asdict(st), "distances": list(st.distances)},
        "unit": float(unit),
        "seed": int(seed),
        "convention": pca.convention if pca is not None else None,
        "probe_batches": len(objective.batches),
    }
    record = reliability_summary(
        noise=noise, contour_spacing=contour_spacing, directions=sens, curvature=curvature, trace=trace,
        distances=profiles, grid_step=min(steps) if steps else None, path_fit=fit, path_losses=check,
        walk=walk, thresholds=thresholds, meta=meta,
    )  # fmt: skip
    lines = [p.to_record({"distance_axis": i, "label": f"axis {i + 1}"}) for i, p in enumerate(profiles)]
    return record, lines
