"""Loss on a grid or a line around the current weights.

All evaluations share one engine: the model observed in eval mode under ``no_grad`` (state restored
after, see :func:`observation`), the weights moved in place from a saved copy for each point, the
loss averaged over the same fixed list of probe batches, results kept on the device until the end.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape.functional._common import probe_size, resolve_params, work_dtype
from lightning_landscape.functional.batched import evaluate_points_batched
from lightning_landscape.functional.params import (
    Direction,
    LossFn,
    WeightPerturbation,
    observation,
)
from lightning_landscape.functional.sharding import PointShard, evaluate_sharded
from lightning_landscape.records import LineRecord, SurfaceRecord

__all__ = [
    "evaluate_loss",
    "interpolation_line",
    "loss_line",
    "loss_surface",
    "odd_grid",
    "probe_size",
]


def odd_grid(span: float | tuple[float, float], resolution: int, name: str = "resolution") -> np.ndarray:
    """``resolution`` evenly spaced points over ``span``; odd, so a symmetric span contains 0 exactly."""
    if not isinstance(resolution, int) or resolution < 3 or resolution % 2 == 0:
        raise ValueError(
            f"`{name}` must be an odd integer >= 3 (so the grid contains its centre), got {resolution!r}"
        )
    lo, hi = (-float(span), float(span)) if isinstance(span, (int, float)) else map(float, span)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(
            f"`span` must be a positive number or a (low, high) pair with low < high, got {span!r}"
        )
    grid = np.linspace(lo, hi, resolution)
    if lo == -hi:
        grid[resolution // 2] = 0.0  # exactly, not 1e-17
    return grid


def _mean_loss(model: nn.Module, loss_fn: LossFn, batches: Sequence[Any]) -> Tensor:
    """Mean over batches of ``loss_fn(model, batch)``, as a float32 (or float64) 0-d tensor."""
    total: Tensor | None = None
    for batch in batches:
        loss = loss_fn(model, batch)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(
                f"`loss_fn` must return a scalar tensor, got {type(loss).__name__}"
                + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
            )
        loss = loss.detach().reshape(())
        if loss.dtype not in (torch.float32, torch.float64):
            loss = loss.float()
        total = loss if total is None else total + loss
    if total is None:
        raise ValueError("`batches` is empty: at least one probe batch is needed")
    return total / len(batches)


def evaluate_loss(model: nn.Module, loss_fn: LossFn, batches: Sequence[Any]) -> float:
    """The loss at the current weights, averaged over ``batches``, observed in eval mode."""
    with observation(model):
        return float(_mean_loss(model, loss_fn, batches))


Engine = Literal["auto", "loop", "vmap"]
_ENGINES = ("auto", "loop", "vmap")

# Models "auto" found it cannot vmap (weakly held: forgotten with the model). Only which path runs is
# remembered, never values, so the engine stays a pure function of its inputs.
_CANNOT_VMAP: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def check_engine(engine: Any, name: str = "engine") -> None:
    """Raise a ValueError naming ``name`` unless ``engine`` is one of ``"auto"``, ``"loop"``, ``"vmap"``."""
    if engine not in _ENGINES:
        raise ValueError(f"`{name}` must be one of {_ENGINES}, got {engine!r}")


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
    """Loss at ``w0 + coefficients[n] @ directions`` for each row ``n``; one host sync at the end.

    The shared engine of surfaces, lines and sharpness samples; a pure function of its inputs (the
    model is restored exactly). ``engine="loop"`` moves the weights in place from a saved copy for
    each point (foreach kernels, no model copies, no host sync per point); ``"vmap"`` evaluates
    chunks of ``chunk_size`` points (default: from a memory budget) in one vmapped forward pass
    (:mod:`lightning_landscape.functional.batched`) and raises if the model cannot be vmapped.
    ``"auto"`` is batched on accelerators and the loop on the CPU (see :func:`_auto_engine`); a model
    that cannot be vmapped goes to the loop, silently. Both paths agree within float rounding; "auto"
    is deterministic, so identical runs give bit-identical values.
    """
    check_engine(engine)
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"`chunk_size` must be a positive integer or None, got {chunk_size!r}")
    if len(batches) == 0:
        raise ValueError("`batches` is empty: at least one probe batch is needed")
    coefficients = np.asarray(coefficients, dtype=np.float64).reshape(len(coefficients), -1)
    move = WeightPerturbation(params, directions)  # validates shapes, casts directions once
    if coefficients.shape[1] != len(move.directions):
        raise ValueError(
            f"{coefficients.shape[1]} coefficients per point for {len(move.directions)} directions"
        )
    if len(coefficients) == 0:
        return np.zeros(0)

    def batched(coef: np.ndarray) -> Tensor:
        return evaluate_points_batched(
            model, loss_fn, batches, move.params, move.directions, coef, chunk_size=chunk_size
        )

    def loop(coef: np.ndarray) -> Tensor:
        return _evaluate_points_loop(model, loss_fn, batches, move, coef)

    may_fall_back = engine == "auto"
    if engine == "auto":
        engine = _auto_engine(model, move.params)
    with observation(model):
        if engine == "loop":
            values = loop(coefficients)
        else:
            try:
                values = batched(coefficients)
            except Exception:
                if not may_fall_back:
                    raise
                values = loop(coefficients)  # cannot be vmapped (.item(), data-dependent control flow, ...)
                _CANNOT_VMAP.add(model)  # after the loop worked: a failing loss_fn is not the model's fault
    return values.double().cpu().numpy()


def _auto_engine(model: nn.Module, params: Sequence[Tensor]) -> Engine:
    """The "auto" rule, deterministic so that identical runs give identical records.

    Batched where it pays, on accelerators: one vmapped forward pass over a chunk of points replaces
    many small kernel launches. On the CPU, the loop: measured there, batching won only for models of
    a few thousand parameters and lost up to 2.3x on larger ones (benchmarks/bench_floor.py).
    """
    if model in _CANNOT_VMAP or all(p.device.type == "cpu" for p in params):
        return "loop"
    return "vmap"


def _checked(loss: Any) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(
            f"`loss_fn` must return a scalar tensor, got {type(loss).__name__}"
            + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
        )
    return loss if loss.dim() == 0 else loss.reshape(())


def _evaluate_points_loop(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    move: WeightPerturbation,
    coefficients: np.ndarray,
) -> Tensor:
    """One forward pass per point and batch; per point, two foreach kernels and no host sync.

    Points come row by row (a surface's ``y`` is constant along a row), so ``w0 + sum_{k>=1} c_k d_k``
    is built once per row into a buffer, and each point is ``copy(buffer) + c_0 d_0``. Losses stay on
    the device, unreduced, until one stack at the end.
    """
    losses: list[Tensor] = []
    params, dirs = move.params, move.directions
    with move, torch.no_grad():
        saved = move._saved
        assert saved is not None
        base = saved if len(dirs) == 1 else [t.clone() for t in saved]
        previous: list[float] | None = [] if len(dirs) == 1 else None
        for row in coefficients.tolist():
            first, rest = row[0], row[1:]
            if rest != previous:
                torch._foreach_copy_(base, saved)
                for c, d in zip(rest, dirs[1:]):
                    if c != 0.0:
                        torch._foreach_add_(base, d, alpha=c)
                previous = rest
            torch._foreach_copy_(params, base)
            if first != 0.0:
                torch._foreach_add_(params, dirs[0], alpha=first)
            losses.extend(_checked(loss_fn(model, batch)) for batch in batches)
    stacked = torch.stack(losses).detach()
    if stacked.dtype not in (torch.float32, torch.float64):
        stacked = stacked.float()
    return stacked.view(len(coefficients), len(batches)).mean(1)


def _evaluate_shared(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    params: Sequence[Tensor],
    directions: Sequence[Direction],
    coefficients: np.ndarray,
    shard: PointShard | None,
    engine: Engine = "auto",
    chunk_size: int | None = None,
) -> np.ndarray:
    """:func:`_evaluate_points` on this process's rows of ``coefficients``, gathered from all processes."""

    def evaluate(rows: np.ndarray) -> np.ndarray:
        return _evaluate_points(
            model, loss_fn, batches, params, directions, rows, engine=engine, chunk_size=chunk_size
        )

    return evaluate_sharded(evaluate, coefficients, shard)


def _evaluation_meta(batches: Sequence[Any], losses: np.ndarray) -> dict[str, int]:
    """What every surface and line record says about its evaluation: probe size, non-finite points."""
    return {
        "probe_batches": len(batches),
        "probe_samples": probe_size(batches),
        "nonfinite": int((~np.isfinite(losses)).sum()),
    }


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
) -> SurfaceRecord:
    """Loss on the plane ``w + x * d1 + y * d2`` around the current weights ``w``.

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
        engine: ``"auto"`` (default: batched with ``vmap`` where the model allows it, else the loop),
            ``"loop"`` (one forward pass per point, weights moved in place) or ``"vmap"`` (batched; raises
            if the model cannot be vmapped). All give the same values within float rounding.
        chunk_size: grid points per batched forward pass (default: from a memory budget).

    Returns:
        A :class:`SurfaceRecord` with ``losses[i, j]`` at ``(xs[j], ys[i])``.

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
    params = resolve_params(model, params, require_grad=False)
    xs_arr = np.asarray(xs, dtype=np.float64) if xs is not None else odd_grid(span, resolution)
    ys_arr = np.asarray(ys, dtype=np.float64) if ys is not None else odd_grid(span, resolution)
    gx, gy = np.meshgrid(xs_arr, ys_arr)
    coefficients = np.stack([gx.ravel(), gy.ravel()], axis=1)
    losses = _evaluate_shared(
        model, loss_fn, batches, params, directions, coefficients, shard, engine=engine, chunk_size=chunk_size
    )
    losses = losses.reshape(len(ys_arr), len(xs_arr))
    meta = _evaluation_meta(batches, losses)
    return SurfaceRecord(xs=xs_arr, ys=ys_arr, losses=losses, meta=meta)


def loss_line(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    direction: Direction,
    resolution: int = 41,
    span: float | tuple[float, float] = 1.0,
    alphas: Sequence[float] | None = None,
    params: Sequence[Tensor] | None = None,
    *,
    shard: PointShard | None = None,
    engine: Engine = "auto",
    chunk_size: int | None = None,
) -> LineRecord:
    """Loss along ``w + alpha * d`` around the current weights ``w``.

    Example::

        >>> model = nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(0.0)
        >>> batch = (torch.tensor([[1.0]]), torch.tensor([[0.0]]))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> loss_line(model, mse, [batch], [torch.ones(1, 1)], resolution=5, span=2.0).losses
        array([4., 1., 0., 1., 4.])
    """
    params = resolve_params(model, params, require_grad=False)
    alphas_arr = np.asarray(alphas, dtype=np.float64) if alphas is not None else odd_grid(span, resolution)
    losses = _evaluate_shared(
        model,
        loss_fn,
        batches,
        params,
        [direction],
        alphas_arr[:, None],
        shard,
        engine=engine,
        chunk_size=chunk_size,
    )
    meta = _evaluation_meta(batches, losses)
    return LineRecord(alphas=alphas_arr, losses=losses, meta=meta)


def interpolation_line(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    start: Sequence[Tensor],
    resolution: int = 41,
    alpha_range: tuple[float, float] = (-0.5, 1.5),
    params: Sequence[Tensor] | None = None,
    *,
    shard: PointShard | None = None,
    engine: Engine = "auto",
    chunk_size: int | None = None,
) -> LineRecord:
    """The Goodfellow et al. (2015) line from weights ``start`` (alpha=0) to the current ones (alpha=1).

    The loss at ``start + alpha * (w - start)`` for ``alpha`` in ``alpha_range``; the default extends
    half the distance beyond both ends.

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
    params = resolve_params(model, params, require_grad=False)
    if len(start) != len(params):
        raise ValueError(f"`start` has {len(start)} tensors, expected one per parameter ({len(params)})")
    lo, hi = alpha_range
    if not (isinstance(resolution, int) and resolution >= 2):
        raise ValueError(f"`resolution` must be an integer >= 2, got {resolution!r}")
    if not lo < hi:
        raise ValueError(f"`alpha_range` must be (low, high) with low < high, got {alpha_range!r}")
    alphas = np.linspace(lo, hi, resolution)
    with torch.no_grad():
        direction = [
            p.detach().to(work_dtype(p)) - s.to(device=p.device, dtype=work_dtype(p))
            for p, s in zip(params, start)
        ]
    # start + alpha (w - start) = w + (alpha - 1) (w - start): evaluate around the current weights.
    losses = _evaluate_shared(
        model,
        loss_fn,
        batches,
        params,
        [direction],
        (alphas - 1.0)[:, None],
        shard,
        engine=engine,
        chunk_size=chunk_size,
    )
    meta = {
        **_evaluation_meta(batches, losses),
        "distance": float(torch.sqrt(sum((d.double() ** 2).sum() for d in direction)).item()),
    }
    return LineRecord(alphas=alphas, losses=losses, meta=meta)
