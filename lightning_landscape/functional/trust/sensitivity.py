"""Would another direction or another distance show the same landscape? (reliability, part 1)

- :func:`distance_profile`: the loss along one direction at log-spaced distances (both signs) and the
  **basin radius**, the distance at which the loss first rises by ``delta`` above the centre. It does
  not depend on the span anyone picked for a contour.
- :func:`direction_sensitivity`: short 1-D lines along a few extra seeded filter-normalized random
  directions; the spread of the curvature at the centre and of the basin width across them.
- :func:`random_direction_curvature`: the mean curvature ``d^T H d`` over random unit directions, which
  equals ``trace(H) / P`` (Boettcher & Wheeler, 2024): a forward-pass-only cross-check of a trace.

All evaluations go through :func:`lightning_landscape.functional.loss_line` (weights moved in place and
restored exactly, state observed). Pass ``centre_loss`` (the surface's centre) to save one evaluation.

Sharded parameters (FSDP2: the objective's parameters are this process's slices) take a ``layout``
(:class:`~lightning_landscape.functional.landscape.shards.ShardLayout`): the random directions are then the
unsharded ones for the same seed, sliced, and norms are summed over processes, so every process computes
the numbers one unsharded process would (every process evaluates every point: each forward is collective).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape.functional.landscape.directions import filter_normalized_directions, random_direction
from lightning_landscape.functional.landscape.params import Direction, LossFn
from lightning_landscape.functional.landscape.sharding import PointShard
from lightning_landscape.functional.landscape.shards import (
    ShardLayout,
    sharded_filter_normalized_directions,
    sharded_random_direction,
)
from lightning_landscape.functional.landscape.surface import Engine, loss_line_of, odd_grid
from lightning_landscape.functional.objective import Objective
from lightning_landscape.records.record import LineRecord

__all__ = [
    "DEFAULT_DISTANCES",
    "Basin",
    "DirectionSensitivity",
    "DistanceProfile",
    "RandomDirectionCurvature",
    "basin_threshold",
    "crossing_distance",
    "direction_sensitivity",
    "direction_sensitivity_of",
    "distance_profile",
    "distance_profile_of",
    "random_direction_curvature",
    "random_direction_curvature_of",
]

DEFAULT_DISTANCES: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def basin_threshold(
    centre_loss: float, delta: float = 0.1, relative: bool = True, min_delta: float = 1e-3
) -> float:
    """The rise above the centre that leaves the basin: ``max(delta * |centre_loss|, min_delta)`` when
    ``relative``, else ``delta``.

    Example::

        >>> basin_threshold(2.0), basin_threshold(0.0), basin_threshold(2.0, 0.5, relative=False)
        (0.2, 0.001, 0.5)
    """
    if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta > 0):
        raise ValueError(f"`delta` must be a positive number, got {delta!r}")
    if not (isinstance(min_delta, (int, float)) and math.isfinite(min_delta) and min_delta >= 0):
        raise ValueError(f"`min_delta` must be a non-negative number, got {min_delta!r}")
    if not relative:
        return float(delta)
    return max(float(delta) * abs(float(centre_loss)), float(min_delta))


@dataclass(frozen=True)
class Basin:
    """When the loss has left the basin around the centre: see :func:`basin_threshold`.

    Example::

        >>> Basin(delta=0.5, relative=False).threshold(2.0)
        0.5
    """

    delta: float = 0.1
    relative: bool = True
    min_delta: float = 1e-3

    def threshold(self, centre_loss: float) -> float:
        """The rise above ``centre_loss`` that leaves the basin."""
        return basin_threshold(centre_loss, self.delta, self.relative, self.min_delta)


def crossing_distance(
    distances: Sequence[float] | np.ndarray, rises: Sequence[float] | np.ndarray, threshold: float
) -> float:
    """The first distance at which ``rises`` (loss minus centre loss, at increasing ``distances > 0``)
    reaches ``threshold``; ``inf`` if it never does (the basin is wider than the last distance).

    Between the last point below and the first point at or above, the rise is interpolated as a power
    law (linearly in log-rise vs log-distance): exact for ``rise = a t^p`` (so for a quadratic basin),
    and in general within the bracketing grid step. Before the first point the rise is taken as
    quadratic from the centre; a non-positive rise below is interpolated linearly. A non-finite loss
    counts as having left the basin.

    Example::

        >>> t = np.array([0.01, 0.1, 1.0, 10.0])
        >>> round(crossing_distance(t, 0.5 * 4.0 * t**2, 0.08), 9)  # sqrt(2 * 0.08 / 4)
        0.2
    """
    t = np.asarray(distances, dtype=np.float64)
    r = np.asarray(rises, dtype=np.float64)
    if t.ndim != 1 or t.shape != r.shape or t.size == 0:
        raise ValueError(f"`distances` and `rises` must be 1-D of one length, got {t.shape} and {r.shape}")
    if np.any(t <= 0) or np.any(np.diff(t) <= 0):
        raise ValueError("`distances` must be positive and increasing")
    r = np.where(np.isfinite(r), r, np.inf)
    above = np.flatnonzero(r >= threshold)
    if above.size == 0:
        return math.inf
    k = int(above[0])
    if k == 0:
        return float(t[0] * math.sqrt(threshold / r[0])) if math.isfinite(r[0]) else float(t[0])
    t0, t1, r0, r1 = t[k - 1], t[k], r[k - 1], r[k]
    if not math.isfinite(r1):
        return float(t0)  # left the basin somewhere in (t0, t1]: say the earliest
    if r0 > 0:
        frac = (math.log(threshold) - math.log(r0)) / (math.log(r1) - math.log(r0))
        return float(math.exp(math.log(t0) + frac * (math.log(t1) - math.log(t0))))
    return float(t0 + (threshold - r0) / (r1 - r0) * (t1 - t0))


@dataclass
class DistanceProfile:
    """Result of :func:`distance_profile`: the loss at ``±distances * unit`` along one direction.

    Attributes:
        distances: ``(m,)`` increasing positive coefficients along the direction (already times ``unit``).
        losses_pos, losses_neg: ``(m,)`` loss at ``+distances`` and ``-distances``.
        centre_loss: loss at the centre.
        threshold: the rise that leaves the basin (:func:`basin_threshold`).
        radius_pos, radius_neg: basin radius on each side (``inf``: wider than the last distance).
        unit: the axis unit the distances were given in.
    """

    distances: np.ndarray
    losses_pos: np.ndarray
    losses_neg: np.ndarray
    centre_loss: float
    threshold: float
    radius_pos: float
    radius_neg: float
    unit: float = 1.0

    @property
    def radius(self) -> float:
        """The basin radius along the axis: where the loss first rises by ``threshold``, either side."""
        return min(self.radius_pos, self.radius_neg)

    def to_record(self, meta: dict[str, Any] | None = None) -> LineRecord:
        """A :class:`LineRecord` (signed ``alphas`` with the centre at 0; kind ``"distance"`` in meta)."""
        alphas = np.concatenate([-self.distances[::-1], [0.0], self.distances])
        losses = np.concatenate([self.losses_neg[::-1], [self.centre_loss], self.losses_pos])
        info = {
            "directions": "distance",
            "unit": self.unit,
            "centre_loss": self.centre_loss,
            "threshold": self.threshold,
            "radius_pos": self.radius_pos,
            "radius_neg": self.radius_neg,
            "radius": self.radius,
        }
        return LineRecord(alphas=alphas, losses=losses, meta={**info, **(meta or {})})


def _norm(tensors: Sequence[Tensor], layout: ShardLayout | None) -> float:
    """The Euclidean norm of ``tensors`` as one vector (float64); of slices, summed over processes."""
    if layout is not None:
        return layout.norm(tensors)
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def _centre(objective: Objective, centre_loss: float | None) -> float:
    return float(centre_loss) if centre_loss is not None else objective.loss()


def distance_profile(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    direction: Direction,
    distances: Sequence[float] = DEFAULT_DISTANCES,
    *,
    unit: float = 1.0,
    delta: float = 0.1,
    relative: bool = True,
    min_delta: float = 1e-3,
    centre_loss: float | None = None,
    params: Sequence[Tensor] | None = None,
    shard: PointShard | None = None,
    engine: Engine = "auto",
) -> DistanceProfile:
    """Loss at ``w ± t * unit * direction`` for each ``t`` in ``distances``, and the basin radius.

    Costs ``2 * len(distances)`` evaluations of the loss over ``batches`` (one more without
    ``centre_loss``). The radius is exact for a power-law rise (a quadratic basin: ``sqrt(2 delta /
    lambda)`` along an eigenvector of eigenvalue ``lambda``) and otherwise bracketed by the grid step
    around it (a factor 10 with the default decades); see :func:`crossing_distance`.

    Example::

        >>> model = nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(0.0)
        >>> batch = (torch.tensor([[1.0]]), torch.tensor([[0.0]]))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()    # w^2: curvature 2
        >>> prof = distance_profile(model, mse, [batch], [torch.ones(1, 1)], delta=0.01, relative=False)
        >>> round(prof.radius, 6)  # sqrt(2 * 0.01 / 2)
        0.1
    """
    objective = Objective.build(model, loss_fn, batches, params, shard=shard, engine=engine)
    return distance_profile_of(
        objective, direction, distances, unit=unit, basin=Basin(delta, relative, min_delta),
        centre_loss=centre_loss,
    )  # fmt: skip


def distance_profile_of(
    objective: Objective,
    direction: Direction,
    distances: Sequence[float] = DEFAULT_DISTANCES,
    *,
    unit: float = 1.0,
    basin: Basin = Basin(),
    centre_loss: float | None = None,
) -> DistanceProfile:
    """:func:`distance_profile` of ``objective`` (the core)."""
    t = np.asarray(distances, dtype=np.float64)
    if t.ndim != 1 or t.size == 0 or np.any(~np.isfinite(t)) or np.any(t <= 0) or np.any(np.diff(t) <= 0):
        raise ValueError(f"`distances` must be positive, finite and increasing, got {distances!r}")
    if not (isinstance(unit, (int, float)) and math.isfinite(unit) and unit > 0):
        raise ValueError(f"`unit` must be a positive number, got {unit!r}")
    t = t * float(unit)
    centre = _centre(objective, centre_loss)
    line = loss_line_of(objective, direction, np.concatenate([t, -t]))
    pos, neg = line.losses[: t.size], line.losses[t.size :]
    threshold = basin.threshold(centre)
    return DistanceProfile(
        distances=t,
        losses_pos=pos,
        losses_neg=neg,
        centre_loss=centre,
        threshold=threshold,
        radius_pos=crossing_distance(t, pos - centre, threshold),
        radius_neg=crossing_distance(t, neg - centre, threshold),
        unit=float(unit),
    )


def _spread(values: np.ndarray) -> float:
    """Coefficient of variation ``std / |mean|`` (sample std); NaN unless >= 2 finite values, all of them."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2 or not np.all(np.isfinite(v)) or v.mean() == 0:
        return math.nan
    return float(v.std(ddof=1) / abs(v.mean()))


@dataclass
class DirectionSensitivity:
    """Result of :func:`direction_sensitivity`: lines along ``count`` extra random directions.

    Attributes:
        alphas: ``(points,)`` coefficients along each direction (the centre, 0, included).
        losses: ``(count, points)`` loss along each direction.
        curvatures: ``(count,)`` second difference at the innermost pair, ``(L(h) + L(-h) - 2 L(0)) / h^2``.
        fit_curvatures: ``(count,)`` twice the leading coefficient of a least-squares quadratic
            over all points.
        widths: ``(count,)`` basin width, the radii on both sides added (``inf``: wider than the line).
        threshold: the rise that leaves the basin.
        seed: the seed the directions were drawn from (after ``skip`` draws).
    """

    alphas: np.ndarray
    losses: np.ndarray
    curvatures: np.ndarray
    fit_curvatures: np.ndarray
    widths: np.ndarray
    threshold: float
    seed: int

    @property
    def curvature_spread(self) -> float:
        """``std / |mean|`` of the curvatures across directions (0: every direction agrees)."""
        return _spread(self.curvatures)

    @property
    def width_spread(self) -> float:
        """``std / mean`` of the basin widths (NaN if any width is beyond the line)."""
        return _spread(self.widths)


def direction_sensitivity(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    count: int = 3,
    points: int = 5,
    span: float = 1.0,
    seed: int = 0,
    *,
    skip: int = 2,
    include_1d: bool = False,
    delta: float = 0.1,
    relative: bool = True,
    min_delta: float = 1e-3,
    centre_loss: float | None = None,
    params: Sequence[Tensor] | None = None,
    shard: PointShard | None = None,
    engine: Engine = "auto",
) -> DirectionSensitivity:
    """Curvature and basin width along ``count`` seeded filter-normalized random directions.

    Each line has ``points`` evenly spaced coefficients over ``[-span, span]`` (odd, so 0 is one of
    them); the centre is evaluated once for all (not at all with ``centre_loss``), so the cost is
    ``count * (points - 1)`` evaluations of the loss over ``batches``. The directions continue the
    sequence of :func:`filter_normalized_directions` with the plane's ``seed`` after its first ``skip``
    draws (the plane's two directions), so they always differ from the plane drawn.

    Example::

        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = nn.Linear(3, 1)
        >>> batch = (torch.randn(8, 3), torch.randn(8, 1))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> sens = direction_sensitivity(model, mse, [batch], count=3, points=5)
        >>> sens.losses.shape, bool(np.all(sens.curvatures > 0))
        ((3, 5), True)
    """
    objective = Objective.build(model, loss_fn, batches, params, shard=shard, engine=engine)
    return direction_sensitivity_of(
        objective, count, points, span, seed, skip=skip, include_1d=include_1d,
        basin=Basin(delta, relative, min_delta), centre_loss=centre_loss,
    )  # fmt: skip


def direction_sensitivity_of(
    objective: Objective,
    count: int = 3,
    points: int = 5,
    span: float = 1.0,
    seed: int = 0,
    *,
    skip: int = 2,
    include_1d: bool = False,
    basin: Basin = Basin(),
    centre_loss: float | None = None,
    layout: ShardLayout | None = None,
) -> DirectionSensitivity:
    """:func:`direction_sensitivity` of ``objective`` (the core); ``layout``: of sharded parameters (the
    objective's are then this process's slices; the directions are the unsharded ones, sliced)."""
    layout = objective.layout if layout is None else layout  # a sharded objective brings its own
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"`count` must be a positive integer, got {count!r}")
    if isinstance(span, bool) or not isinstance(span, (int, float)) or not (math.isfinite(span) and span > 0):
        raise ValueError(f"`span` must be a positive number (the lines cover [-span, span]), got {span!r}")
    alphas = odd_grid(span, points, name="points")
    params = objective.params
    centre = _centre(objective, centre_loss)
    mid = points // 2
    others = np.delete(alphas, mid)
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise ValueError(f"`skip` must be a non-negative integer, got {skip!r}")
    if layout is not None:
        drawn = sharded_filter_normalized_directions(
            layout, count=count + skip, seed=seed, include_1d=include_1d
        )
    else:
        drawn = filter_normalized_directions(params, count=count + skip, seed=seed, include_1d=include_1d)
    directions = drawn[skip:]
    del drawn
    threshold = basin.threshold(centre)
    losses = np.empty((count, points))
    curv, fit, widths = np.empty(count), np.empty(count), np.empty(count)
    h = alphas[mid + 1]
    for i, d in enumerate(directions):
        line = loss_line_of(objective, d, others)
        losses[i] = np.insert(line.losses, mid, centre)
        curv[i] = (losses[i, mid + 1] + losses[i, mid - 1] - 2.0 * centre) / h**2
        finite = np.isfinite(losses[i])
        fit[i] = 2.0 * np.polyfit(alphas[finite], losses[i, finite], 2)[0] if finite.sum() >= 3 else math.nan
        t = alphas[mid + 1 :]
        widths[i] = crossing_distance(t, losses[i, mid + 1 :] - centre, threshold) + crossing_distance(
            t, losses[i, mid - 1 :: -1] - centre, threshold
        )
    return DirectionSensitivity(alphas, losses, curv, fit, widths, threshold, int(seed))


@dataclass
class RandomDirectionCurvature:
    """Result of :func:`random_direction_curvature`.

    Attributes:
        curvatures: ``(count,)`` ``d^T H d`` along each random unit direction (central second difference).
        step: the distance ``h`` of the second difference.
        num_params: ``P``, the dimension the directions live in.
    """

    curvatures: np.ndarray
    step: float
    num_params: int

    @property
    def mean(self) -> float:
        return float(np.mean(self.curvatures))

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` (NaN with one direction)."""
        n = self.curvatures.size
        return float(np.std(self.curvatures, ddof=1) / math.sqrt(n)) if n > 1 else math.nan

    def agreement(self, trace: float) -> dict[str, float]:
        """How well the mean agrees with ``trace / P``: ``expected``, ``ratio`` (mean / expected) and
        ``z`` ((mean - expected) / stderr; the trace's own error is not in it)."""
        expected = float(trace) / self.num_params
        ratio = self.mean / expected if expected != 0 else math.nan
        z = (self.mean - expected) / self.stderr if self.stderr > 0 else math.nan
        return {"expected": expected, "ratio": ratio, "z": z}


def random_direction_curvature(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    count: int = 8,
    step: float | None = None,
    seed: int = 0,
    *,
    centre_loss: float | None = None,
    params: Sequence[Tensor] | None = None,
    shard: PointShard | None = None,
    engine: Engine = "auto",
) -> RandomDirectionCurvature:
    """Curvature ``d^T H d`` along ``count`` seeded random unit directions (Gaussian, normalized to unit
    norm over all ``params``), by central second differences at distance ``step``.

    For directions uniform on the sphere ``E[d d^T] = I / P``, so the mean is ``trace(H) / P``
    (Boettcher & Wheeler, 2024): compare with :func:`hessian_trace` through
    :meth:`RandomDirectionCurvature.agreement`. ``step`` defaults to ``0.01 * ||w||`` (large enough that
    a float32 loss resolves the rise, small enough to stay local). Costs ``2 * count`` evaluations of
    the loss over ``batches`` (one more without ``centre_loss``).

    Example::

        >>> model = nn.Linear(4, 1, bias=False)
        >>> batch = (torch.eye(4, dtype=torch.float32), torch.zeros(4, 1))
        >>> half_sq = lambda m, b: 0.5 * (m(b[0]) ** 2).sum()   # Hessian I: trace / P = 1
        >>> est = random_direction_curvature(model, half_sq, [batch], count=4, step=0.1)
        >>> round(est.mean, 3), round(est.agreement(trace=4.0)["ratio"], 3)
        (1.0, 1.0)
    """
    objective = Objective.build(model, loss_fn, batches, params, shard=shard, engine=engine)
    return random_direction_curvature_of(objective, count, step, seed, centre_loss=centre_loss)


def random_direction_curvature_of(
    objective: Objective,
    count: int = 8,
    step: float | None = None,
    seed: int = 0,
    *,
    centre_loss: float | None = None,
    layout: ShardLayout | None = None,
) -> RandomDirectionCurvature:
    """:func:`random_direction_curvature` of ``objective`` (the core); ``layout``: of sharded parameters
    (the objective's are then this process's slices; directions drawn full and sliced, norms summed)."""
    layout = objective.layout if layout is None else layout  # a sharded objective brings its own
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"`count` must be a positive integer, got {count!r}")
    params = objective.params
    num_params = layout.numel if layout is not None else sum(p.numel() for p in params)
    if step is None:
        norm = _norm(params, layout)
        step = 0.01 * norm if norm > 0 else 1e-2
    if not (isinstance(step, (int, float)) and math.isfinite(step) and step > 0):
        raise ValueError(f"`step` must be a positive number, got {step!r}")
    centre = _centre(objective, centre_loss)
    generator = torch.Generator().manual_seed(int(seed))
    curv = np.empty(count)
    for i in range(count):
        d = (
            random_direction(params, generator)
            if layout is None
            else sharded_random_direction(layout, generator)
        )
        norm = _norm(d, layout)
        d = [t / norm for t in d]
        line = loss_line_of(objective, d, np.array([-step, step]))
        curv[i] = (line.losses[0] + line.losses[1] - 2.0 * centre) / step**2
    return RandomDirectionCurvature(curvatures=curv, step=float(step), num_params=num_params)
