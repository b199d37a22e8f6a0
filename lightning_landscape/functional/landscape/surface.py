"""Loss on a grid or a line around the current weights.

All evaluations share one engine (:mod:`lightning_landscape.functional.landscape.engine`): the model observed
in eval mode under ``no_grad`` (state restored after, see :func:`observation`), the weights moved in
place from a saved copy for each point (or batched with ``vmap``), the loss on each of the same fixed
probe batches kept (the record's ``batch_losses``; their mean is ``losses``, their spread the probe
noise), results kept on the device until the end. Options shared by every function here: ``bn=``
(which BatchNorm statistics each point uses, see :mod:`lightning_landscape.functional.landscape.bn`) and
``metric_fn=`` (a second quantity, accuracy say, at every point beside the loss).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape.functional import checks as check
from lightning_landscape.functional.landscape.assemble import record_parts
from lightning_landscape.functional.landscape.bn import (
    BNMode,
    BufferPlan,
    aligned_buffers,
    landscape_buffers,
)
from lightning_landscape.functional.landscape.engine import (  # noqa: F401  (check_engine: re-exported)
    Engine,
    Evaluation,
    Progress,
    check_engine,
    evaluate_points_of,
)
from lightning_landscape.functional.landscape.params import (
    Direction,
    LossFn,
)
from lightning_landscape.functional.landscape.sharding import PointShard
from lightning_landscape.functional.objective import Objective, norm64, probe_size, work_dtype
from lightning_landscape.records.record import LineRecord, SurfaceRecord

__all__ = [
    "evaluate_loss",
    "interpolation_line",
    "interpolation_line_of",
    "loss_line",
    "loss_line_of",
    "loss_surface",
    "loss_surface_of",
    "odd_grid",
    "point_losses_of",
    "probe_size",
]


def odd_grid(span: float | tuple[float, float], resolution: int, name: str = "resolution") -> np.ndarray:
    """``resolution`` evenly spaced points over ``span``; odd, so a symmetric span contains 0 exactly."""
    check.odd_int(name, resolution)
    lo, hi = (-float(span), float(span)) if isinstance(span, (int, float)) else map(float, span)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(
            f"`span` must be a positive number or a (low, high) pair with low < high, got {span!r}"
        )
    grid = np.linspace(lo, hi, resolution)
    if lo == -hi:
        grid[resolution // 2] = 0.0  # exactly, not 1e-17
    return grid


def evaluate_loss(model: nn.Module, loss_fn: LossFn, batches: Sequence[Any]) -> float:
    """The loss at the current weights, averaged over ``batches``, observed in eval mode (on a sharded
    model, a collective: every process calls it)."""
    return Objective.build(model, loss_fn, batches).loss()


def point_losses_of(
    objective: Objective, directions: Sequence[Direction], coefficients: np.ndarray
) -> np.ndarray:
    """Mean loss of ``objective`` at ``w0 + coefficients[n] @ directions`` for each row ``n``.

    The current buffers at every point, this process's rows only; see
    :func:`lightning_landscape.functional.landscape.engine.evaluate_points_of`.
    """
    return evaluate_points_of(objective, directions, coefficients).losses.mean(axis=1)


def _evaluate_points(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    params: Sequence[Tensor],
    directions: Sequence[Direction],
    coefficients: np.ndarray,
    *,
    engine: Engine = "auto",
    chunk_size: int | None = None,
) -> np.ndarray:
    """:func:`point_losses_of` of the objective of ``model`` on ``batches`` (``params`` as given)."""
    objective = Objective(model, loss_fn, batches, params, engine=engine, chunk_size=chunk_size)
    return point_losses_of(objective, directions, coefficients)


def _check_origin(origin: Sequence[Tensor] | None, params: Sequence[Tensor]) -> None:
    if origin is not None and len(origin) != len(params):
        raise ValueError(f"`origin` has {len(origin)} tensors, expected one per parameter ({len(params)})")


def _local(
    objective: Objective, directions: Sequence[Direction], origin: Sequence[Tensor] | None
) -> tuple[list[Direction], Sequence[Tensor] | None]:
    """The directions and origin as this process's slices when the objective is sharded (its ``layout``:
    each given as DTensors placed like the parameters, or full-shaped); as they are otherwise."""
    layout = objective.layout
    if layout is None:
        return list(directions), origin
    _check_origin(origin, objective.params)
    local = [layout.slices(d, "directions") for d in directions]
    return local, None if origin is None else layout.slices(origin, "origin")


def loss_surface(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    directions: Sequence[Direction],
    resolution: int = 11,
    span: float | tuple[float, float] = 1.0,
    xs: Sequence[float] | None = None,
    ys: Sequence[float] | None = None,
    params: Sequence[Tensor] | None = None,
    *,
    shard: PointShard | None = None,
    engine: Engine = "auto",
    chunk_size: int | None = None,
    bn: BNMode = "keep",
    metric_fn: LossFn | None = None,
    metric_name: str | None = None,
    origin: Sequence[Tensor] | None = None,
    progress: Progress | None = None,
) -> SurfaceRecord:
    """Loss on the plane ``w + x * d1 + y * d2`` around the current weights ``w`` (or ``origin``).

    Args:
        model: the model; its weights are moved in place and restored exactly.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: probe batches, already on the model's device; the loss is their mean.
        directions: ``(d1, d2)``, each a list of tensors aligned with ``params``.
        resolution: points per axis when ``xs``/``ys`` are not given (odd, so the centre is on the grid).
        span: ``s`` for ``[-s, s]`` or a ``(low, high)`` pair, used when ``xs``/``ys`` are not given.
        xs, ys: explicit coefficients along ``d1`` and ``d2``.
        params: the parameters the directions belong to (default: :func:`landscape_parameters`).
        shard: share the grid points out among processes (see :class:`PointShard`); every process
            must call with the same arguments and gets the whole surface. Default: one process.
        engine: ``"auto"`` (default: batched with ``vmap`` on accelerators, else the loop; compiled
            only where measured costs say it repays itself, see
            :func:`~lightning_landscape.functional.landscape.costs.compile_pays`; the record's
            ``meta["engine_reason"]`` says why), ``"loop"`` (one forward pass per point, weights moved
            in place), ``"vmap"`` (batched; raises if the model cannot be vmapped) or ``"compile"``.
            All give the same values within float rounding.
        chunk_size: grid points per batched forward pass (default: from a memory budget).
        bn: ``"keep"`` the current BatchNorm statistics at every point (Li et al.'s convention) or
            ``"recompute"`` them at every point from the probe batches (one more forward pass per point
            and batch; see :mod:`lightning_landscape.functional.landscape.bn`).
        metric_fn: ``metric_fn(model, batch) -> scalar tensor`` (accuracy, say), averaged over the probe
            batches at every point like the loss (one more forward pass per point and batch).
        metric_name: the metric's name in the record (default: the function's ``__name__``).
        origin: the plane's centre, a list of tensors aligned with ``params`` (default: the current
            weights, which are restored afterwards either way).
        progress: ``progress(done, total)``, called every few points (this process's points under a
            ``shard``) and at the end; from Python, without a host synchronisation.

    Returns:
        A :class:`SurfaceRecord` with ``losses[i, j]`` at ``(xs[j], ys[i])``, ``batch_losses[i, j, b]`` on
        probe batch ``b``, ``metrics`` with ``metric_fn``; its meta says ``bn``, ``engine``,
        ``forward_passes`` and the probe noise (see :func:`probe_noise`).

    Example::

        >>> model = nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(0.0)
        >>> batch = (torch.tensor([[1.0]]), torch.tensor([[0.0]]))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> d = [torch.ones(1, 1)]
        >>> rec = loss_surface(model, mse, [batch], (d, d), resolution=3)
        >>> rec.losses  # (x + y)^2 on {-1, 0, 1}^2
        array([[4., 1., 0.],
               [1., 0., 1.],
               [0., 1., 4.]])
    """
    if len(directions) != 2:
        raise ValueError(f"`directions` must hold two directions, got {len(directions)}")
    objective = Objective.build(
        model, loss_fn, batches, params, bn=bn, engine=engine, chunk_size=chunk_size, shard=shard,
        metric_fn=metric_fn, metric_name=metric_name,
    )  # fmt: skip
    xs_arr = np.asarray(xs, dtype=np.float64) if xs is not None else odd_grid(span, resolution)
    ys_arr = np.asarray(ys, dtype=np.float64) if ys is not None else odd_grid(span, resolution)
    return loss_surface_of(objective, directions, xs_arr, ys_arr, origin=origin, progress=progress)


def loss_surface_of(
    objective: Objective,
    directions: Sequence[Direction],
    xs: np.ndarray,
    ys: np.ndarray,
    *,
    origin: Sequence[Tensor] | None = None,
    progress: Progress | None = None,
) -> SurfaceRecord:
    """:func:`loss_surface` of ``objective`` at the coefficients ``xs`` and ``ys`` (the core)."""
    if len(directions) != 2:
        raise ValueError(f"`directions` must hold two directions, got {len(directions)}")
    directions, origin = _local(objective, directions, origin)
    _check_origin(origin, objective.params)
    plan = objective.buffer_plan()
    gx, gy = np.meshgrid(xs, ys)
    coefficients = np.stack([gx.ravel(), gy.ravel()], axis=1)
    shape = (len(ys), len(xs))
    losses, per_batch, metrics, meta = record_parts(
        objective, directions, coefficients, shape, plan, origin, progress
    )
    return SurfaceRecord(xs=xs, ys=ys, losses=losses, meta=meta, batch_losses=per_batch, metrics=metrics)


def loss_line(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    direction: Direction,
    resolution: int = 41,
    span: float | tuple[float, float] = 1.0,
    alphas: Sequence[float] | np.ndarray | None = None,
    params: Sequence[Tensor] | None = None,
    *,
    shard: PointShard | None = None,
    engine: Engine = "auto",
    chunk_size: int | None = None,
    bn: BNMode = "keep",
    metric_fn: LossFn | None = None,
    metric_name: str | None = None,
    origin: Sequence[Tensor] | None = None,
    progress: Progress | None = None,
) -> LineRecord:
    """Loss along ``w + alpha * d`` around the current weights ``w`` (or ``origin``).

    Options as in :func:`loss_surface`.

    Example::

        >>> model = nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(0.0)
        >>> batch = (torch.tensor([[1.0]]), torch.tensor([[0.0]]))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> loss_line(model, mse, [batch], [torch.ones(1, 1)], resolution=5, span=2.0).losses
        array([4., 1., 0., 1., 4.])
    """
    objective = Objective.build(
        model, loss_fn, batches, params, bn=bn, engine=engine, chunk_size=chunk_size, shard=shard,
        metric_fn=metric_fn, metric_name=metric_name,
    )  # fmt: skip
    alphas_arr = np.asarray(alphas, dtype=np.float64) if alphas is not None else odd_grid(span, resolution)
    return loss_line_of(objective, direction, alphas_arr, origin=origin, progress=progress)


def loss_line_of(
    objective: Objective,
    direction: Direction,
    alphas: np.ndarray,
    *,
    origin: Sequence[Tensor] | None = None,
    progress: Progress | None = None,
) -> LineRecord:
    """:func:`loss_line` of ``objective`` at the coefficients ``alphas`` (the core)."""
    alphas = np.asarray(alphas, dtype=np.float64)
    (direction,), origin = _local(objective, [direction], origin)
    _check_origin(origin, objective.params)
    plan = objective.buffer_plan()
    losses, per_batch, metrics, meta = record_parts(
        objective, [direction], alphas[:, None], (len(alphas),), plan, origin, progress
    )
    return LineRecord(alphas=alphas, losses=losses, meta=meta, batch_losses=per_batch, metrics=metrics)


def interpolation_line(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    start: Sequence[Tensor],
    resolution: int = 41,
    alpha_range: tuple[float, float] = (-0.5, 1.5),
    params: Sequence[Tensor] | None = None,
    *,
    start_buffers: Mapping[str, Tensor] | None = None,
    bn: BNMode | None = None,
    shard: PointShard | None = None,
    engine: Engine = "auto",
    chunk_size: int | None = None,
    metric_fn: LossFn | None = None,
    metric_name: str | None = None,
    progress: Progress | None = None,
) -> LineRecord:
    """The Goodfellow et al. (2015) line from weights ``start`` (alpha=0) to the current ones (alpha=1).

    The loss at ``start + alpha * (w - start)`` for ``alpha`` in ``alpha_range``; the default extends
    half the distance beyond both ends.

    BatchNorm: with ``start_buffers`` (the start model's :func:`buffer_snapshot`), the floating-point
    buffers are interpolated with the weights by default (``bn="interpolate"``), so alpha = 0 is the
    start model and alpha = 1 the current one, statistics included; beyond the ends the statistics
    stay at the nearest end's (extrapolated running variances can turn negative). Without them the default is
    ``"keep"`` (the current statistics everywhere: alpha = 0 is then *not* the start model of a
    BatchNorm network). ``bn="recompute"`` re-estimates the statistics at every point.
    Other options as in :func:`loss_surface`.

    Example::

        >>> model = nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(1.0)
        >>> batch = (torch.tensor([[1.0]]), torch.tensor([[0.0]]))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> line = interpolation_line(model, mse, [batch], [torch.full((1, 1), 3.0)], resolution=5)
        >>> line.alphas, line.losses  # w(alpha) = 3 - 2 alpha
        (array([-0.5,  0. ,  0.5,  1. ,  1.5]), array([16.,  9.,  4.,  1.,  0.]))
    """
    if bn is None:
        bn = "interpolate" if start_buffers is not None else "keep"
    objective = Objective.build(
        model, loss_fn, batches, params, bn=bn, engine=engine, chunk_size=chunk_size, shard=shard,
        metric_fn=metric_fn, metric_name=metric_name,
    )  # fmt: skip
    if len(start) != len(objective.params):
        raise ValueError(
            f"`start` has {len(start)} tensors, expected one per parameter ({len(objective.params)})"
        )
    check.positive_int("resolution", resolution, minimum=2)
    lo, hi = check.value_range("alpha_range", alpha_range)
    alphas = np.linspace(lo, hi, resolution)
    return interpolation_line_of(objective, start, alphas, start_buffers=start_buffers, progress=progress)


def interpolation_line_of(
    objective: Objective,
    start: Sequence[Tensor],
    alphas: np.ndarray,
    *,
    start_buffers: Mapping[str, Tensor] | None = None,
    progress: Progress | None = None,
) -> LineRecord:
    """:func:`interpolation_line` of ``objective`` at ``alphas`` (the core); the statistics as the
    objective's ``bn`` says (``"interpolate"`` from ``start_buffers``)."""
    model, params, bn = objective.model, objective.params, objective.bn
    if len(start) != len(params):
        raise ValueError(f"`start` has {len(start)} tensors, expected one per parameter ({len(params)})")
    if objective.layout is not None:  # sharded: this process's slices of the start weights
        start = objective.layout.slices(start, "start")
    plan: BufferPlan | None
    if bn == "interpolate":
        if start_buffers is None and landscape_buffers(model):
            raise ValueError("`bn`='interpolate' needs `start_buffers` (the start model's buffer_snapshot)")
        first = aligned_buffers(model, start_buffers or {}, "start_buffers")
        current = [b for _, b in landscape_buffers(model)]
        with torch.no_grad():
            plan = BufferPlan.interpolate(model, None, [[c - s for c, s in zip(current, first)]])
    else:
        plan = objective.buffer_plan()
    with torch.no_grad():
        direction = [
            p.detach().to(work_dtype(p)) - s.to(device=p.device, dtype=work_dtype(p))
            for p, s in zip(params, start)
        ]
    # start + alpha (w - start) = w + (alpha - 1) (w - start): evaluate around the current weights.
    # Interpolated statistics stay at the nearest end beyond [0, 1] (an extrapolated running variance
    # can turn negative).
    coefficients = (alphas - 1.0)[:, None]
    if bn == "interpolate":
        coefficients = np.concatenate([coefficients, np.clip(alphas, 0.0, 1.0)[:, None] - 1.0], axis=1)
    losses, per_batch, metrics, meta = record_parts(
        objective, [direction], coefficients, (len(alphas),), plan, None, progress
    )
    meta["distance"] = norm64(direction) if objective.layout is None else objective.layout.norm(direction)
    return LineRecord(alphas=alphas, losses=losses, meta=meta, batch_losses=per_batch, metrics=metrics)
