"""Curvature of the loss at the current weights: the model-level functions.

Everything here is about the Hessian ``H`` of the *mean* loss over the probe batches,
``L(w) = (1/B) sum_b loss_fn(model, batch_b)``, with respect to the chosen parameters (trainable
floating-point ones by default), with the model observed in eval mode (BatchNorm uses its running
statistics, dropout is off) and everything restored afterwards. Averaging, not summing, keeps every
number independent of how the same data is split into batches. Each function builds the
:class:`~lightning_landscape.functional.curvature.operators.HessianOperator` and hands it to an estimator of
:mod:`lightning_landscape.functional.curvature.estimators`:

- :func:`hessian_eigenvalues`: extreme eigenvalues by Lanczos, with the Ritz residual of every pair.
- :func:`hessian_trace`: Hutchinson's estimator with seeded Rademacher probes and its standard error.
- :func:`hessian_directions`: the unit eigenvectors of ``lambda_max`` and ``lambda_min``, ready to be
  used as the two axes of :func:`loss_surface` (Boettcher & Wheeler, 2024).

Each core (``..._of``) also takes a ``layout``: the objective's parameters are then this process's slices
of a sharded model (FSDP2), and the operator is the gradient-difference one on those slices
(:mod:`~lightning_landscape.functional.curvature.sharded`), with the same estimators, probes and options.

A loss that is NaN or infinite at ``w`` gives NaN results and a ``RuntimeWarning``, never a crash.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape.functional.curvature.estimators import Which, check_lanczos_args, summarize_samples
from lightning_landscape.functional.curvature.operators import (
    hessian_operator_of,
    operator_hutchinson_samples,
    operator_lanczos,
)
from lightning_landscape.functional.curvature.sharded import check_layout, sharded_product
from lightning_landscape.functional.landscape.params import Direction, LossFn, unflatten
from lightning_landscape.functional.landscape.sharding import PointShard, evaluate_sharded
from lightning_landscape.functional.landscape.shards import ShardLayout
from lightning_landscape.functional.objective import NonFiniteError, Objective, check_int, nonfinite_warning

__all__ = [
    "HessianEigenvalues",
    "HessianTrace",
    "hessian_directions",
    "hessian_directions_of",
    "hessian_eigenvalues",
    "hessian_eigenvalues_of",
    "hessian_trace",
    "hessian_trace_of",
]


# --------------------------------------------------------------------------------------- public results


@dataclass
class HessianEigenvalues:
    """Result of :func:`hessian_eigenvalues`.

    Attributes:
        eigenvalues: Ritz values in float64: the ``k`` largest (descending) for ``which="largest"``,
            the ``k`` smallest (ascending) for ``"smallest"``, both (largest first) for ``"both"``.
        residuals: ``|H y - theta y|`` of each Ritz pair (Lanczos' estimate, exact up to rounding).
        eigenvectors: unit eigenvectors as directions aligned with the parameters, if asked for.
        iterations: Lanczos steps = Hessian-vector products spent.
        converged: every reported residual is within ``tol`` times the largest Ritz value.
        loss: the mean probe loss at ``w``.
        meta: options and probe size, for records.
    """

    eigenvalues: np.ndarray
    residuals: np.ndarray
    eigenvectors: list[Direction] | None
    iterations: int
    converged: bool
    loss: float
    history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def lambda_max(self) -> float:
        """The largest eigenvalue found (NaN if only the smallest were asked for)."""
        if self.meta.get("which") == "smallest" or not len(self.eigenvalues):
            return math.nan
        return float(np.max(self.eigenvalues))

    @property
    def lambda_min(self) -> float:
        """The smallest eigenvalue found (NaN if only the largest were asked for); ``< 0`` flags a saddle."""
        if self.meta.get("which") == "largest" or not len(self.eigenvalues):
            return math.nan
        return float(np.min(self.eigenvalues))

    def scalars(self) -> dict[str, float]:
        """Named scalars for logging: ``hessian/lambda_max``, ``hessian/lambda_max_residual``, ..."""
        out: dict[str, float] = {}
        which = self.meta.get("which")
        finite = bool(np.isfinite(self.eigenvalues).all())
        if which != "smallest":
            out["hessian/lambda_max"] = self.lambda_max
            i = int(np.argmax(self.eigenvalues)) if finite else 0
            out["hessian/lambda_max_residual"] = float(self.residuals[i])
        if which != "largest":
            out["hessian/lambda_min"] = self.lambda_min
            i = int(np.argmin(self.eigenvalues)) if finite else 0
            out["hessian/lambda_min_residual"] = float(self.residuals[i])
        out["hessian/lanczos_iterations"] = float(self.iterations)
        return out


@dataclass
class HessianTrace:
    """Result of :func:`hessian_trace`: Hutchinson's estimate with its standard error.

    Attributes:
        trace: mean of ``z^T H z`` over the Rademacher probes ``z``.
        stderr: standard error of that mean (sample standard deviation / sqrt(samples)).
        samples: each probe's ``z^T H z`` (float64).
        loss: the mean probe loss at ``w``.
    """

    trace: float
    stderr: float
    samples: np.ndarray
    loss: float
    meta: dict[str, Any] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        """``hessian/trace`` and ``hessian/trace_stderr``."""
        return {"hessian/trace": self.trace, "hessian/trace_stderr": self.stderr}


def hessian_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    k: int = 1,
    which: Which = "largest",
    max_iter: int = 100,
    tol: float = 1e-5,
    seed: int = 0,
    params: Sequence[Tensor] | None = None,
    return_eigenvectors: bool = False,
    reuse_graph: bool = True,
    max_basis: int | None = None,
) -> HessianEigenvalues:
    """Extreme eigenvalues of the Hessian of the mean probe loss, by Lanczos.

    Args:
        model: the model; observed in eval mode and restored exactly.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: probe batches on the model's device; the loss is their mean.
        k: how many eigenvalues at each requested end of the spectrum.
        which: ``"largest"`` (``lambda_max`` first), ``"smallest"`` (``lambda_min`` first) or ``"both"``
            (from the same Krylov space: the ``k`` largest, then the ``k`` smallest).
        max_iter: most Lanczos steps (Hessian-vector products).
        tol: stop when every wanted residual ``|H y - theta y|`` is within ``tol * |lambda|_max``.
        seed: seed of the Rademacher start vector (drawn on the CPU: the same on every device).
        params: the parameters (default: trainable floating-point ones); each must require grad.
        return_eigenvectors: also return unit eigenvectors as directions.
        reuse_graph: keep each batch's gradient graph across products (faster; more memory).
        max_basis: most Lanczos vectors held at once: memory is about ``max_basis + 3``
            parameter-sized vectors however large ``max_iter`` is, by thick restarts once the basis is
            full. Default: as many as fit in 64 MiB, at least 6 (so small models never restart).
            ``max_basis >= max_iter`` is plain Lanczos.

    Returns:
        A :class:`HessianEigenvalues`; NaN values and a ``RuntimeWarning`` if the loss at ``w`` is not finite.

    Example::

        >>> import torch
        >>> model = nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.zeros(2, 1))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()   # H = x^T x / 1 = I
        >>> res = hessian_eigenvalues(model, mse, [batch], which="both")
        >>> round(res.lambda_max, 6), round(res.lambda_min, 6)
        (1.0, 1.0)
    """
    check_lanczos_args(k, which, max_iter, tol)
    objective = Objective.build(model, loss_fn, batches, params, require_grad=True)
    eig = hessian_eigenvalues_of(
        objective, k, which, max_iter, tol, seed, return_eigenvectors=return_eigenvectors,
        reuse_graph=reuse_graph, max_basis=max_basis,
    )  # fmt: skip
    layout = objective.layout
    if layout is not None and eig.eigenvectors is not None:  # as DTensors, placed like the parameters
        eig.eigenvectors = [layout.wrap(v) for v in eig.eigenvectors]
    return eig


def hessian_eigenvalues_of(
    objective: Objective,
    k: int = 1,
    which: Which = "largest",
    max_iter: int = 100,
    tol: float = 1e-5,
    seed: int = 0,
    *,
    return_eigenvectors: bool = False,
    reuse_graph: bool = True,
    max_basis: int | None = None,
    layout: ShardLayout | None = None,
    start: Sequence[Tensor] | None = None,
) -> HessianEigenvalues:
    """:func:`hessian_eigenvalues` of ``objective`` (the core).

    With ``layout`` (sharded parameters; see the module docstring) the eigenvectors are this process's
    slices, signs fixed over the full vectors as unsharded; every process must call it together.
    ``start``: a warm start for Lanczos instead of the seeded Rademacher vector, one tensor per parameter
    (this process's slices when sharded), such as the eigenvectors of an earlier call at nearby weights
    (``meta["start"]`` says which start ran).
    """
    check_lanczos_args(k, which, max_iter, tol)
    layout = objective.layout if layout is None else layout  # a sharded objective brings its own
    if layout is not None:
        check_layout(objective, layout)
    params = objective.params
    meta: dict[str, Any] = {
        "which": which,
        "k": k,
        "max_iter": max_iter,
        "tol": tol,
        "seed": seed,
        "max_basis": max_basis,
        **objective.probe_meta(),
        "parameters": objective.numel if layout is None else layout.numel,
    }
    if layout is not None:
        meta["hvp"] = sharded_product(objective, layout)
    meta["start"] = "rademacher" if start is None else "warm"
    if start is not None and [t.shape for t in start] != [p.shape for p in params]:
        raise ValueError("`start` must hold one tensor per parameter, shaped like it")
    began = time.perf_counter()
    try:
        with hessian_operator_of(objective, reuse_graph, layout=layout) as op:
            first = None
            if start is not None:
                first = torch.cat(
                    [t.detach().reshape(-1).to(device=op.device, dtype=op.dtype) for t in start]
                )
            res = operator_lanczos(
                op,
                max_iter,
                tol,
                seed,
                k=k,
                which=which,
                return_vectors=return_eigenvectors,
                max_basis=max_basis,
                start=first,
            )
            loss = op.loss
            vectors = None
            if res.vectors is not None:  # signs fixed over the full vectors (collective when sharded)
                vectors = [[t.clone() for t in unflatten(op.space.fix_sign(v), params)] for v in res.vectors]
    except NonFiniteError as err:
        nonfinite_warning("hessian_eigenvalues", err)
        n = min(k, max_iter) * (2 if which == "both" else 1)
        nan = np.full(n, math.nan)
        return HessianEigenvalues(nan, nan.copy(), None, 0, False, math.nan, meta=meta)
    meta.update(
        max_basis=res.max_basis,
        basis_length=res.basis_length,
        restarts=res.restarts,
        seconds=time.perf_counter() - began,
    )
    return HessianEigenvalues(
        eigenvalues=res.values,
        residuals=res.residuals,
        eigenvectors=vectors,
        iterations=res.iterations,
        converged=res.converged,
        loss=loss,
        history=res.history,
        meta=meta,
    )


def hessian_directions(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    params: Sequence[Tensor] | None = None,
) -> tuple[tuple[Direction, Direction], HessianEigenvalues]:
    """The unit eigenvectors of ``lambda_max`` and ``lambda_min``: the axes of a Hessian-direction surface.

    Random directions mostly show the trace of the Hessian (Boettcher & Wheeler, 2024); these show its
    extremes, so a saddle (``lambda_min < 0``) is visible as one. The two vectors are orthogonal and of
    unit norm (signs fixed: the entry of largest magnitude is positive), so a span of ``s`` moves the
    weights by ``s`` in Euclidean distance.

    Returns:
        ``((d_max, d_min), eigen)`` with ``eigen`` the :class:`HessianEigenvalues` they come from.

    Example::

        >>> import torch
        >>> model = nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.zeros(2, 1))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()   # H = diag(4, 1)
        >>> (d_max, d_min), eig = hessian_directions(model, mse, [batch])
        >>> d_max[0].abs().round(decimals=4), d_min[0].abs().round(decimals=4)
        (tensor([[1., 0.]]), tensor([[0., 1.]]))
    """
    check_lanczos_args(1, "both", max_iter, tol)
    objective = Objective.build(model, loss_fn, batches, params, require_grad=True)
    (d_max, d_min), eig = hessian_directions_of(objective, max_iter, tol, seed)
    if objective.layout is not None:  # as DTensors, placed like the parameters
        d_max, d_min = objective.layout.wrap(d_max), objective.layout.wrap(d_min)
    return (d_max, d_min), eig


def hessian_directions_of(
    objective: Objective,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    *,
    layout: ShardLayout | None = None,
) -> tuple[tuple[Direction, Direction], HessianEigenvalues]:
    """:func:`hessian_directions` of ``objective`` (the core; with ``layout``, this process's slices of
    the directions)."""
    eig = hessian_eigenvalues_of(
        objective, k=1, which="both", max_iter=max_iter, tol=tol, seed=seed, return_eigenvectors=True,
        layout=layout,
    )  # fmt: skip
    if eig.eigenvectors is None or len(eig.eigenvectors) < 2:
        raise ValueError(f"could not compute two Hessian directions: {_why_no_directions(eig)}")
    return (eig.eigenvectors[0], eig.eigenvectors[1]), eig


def _why_no_directions(eig: HessianEigenvalues) -> str:
    """Why Lanczos found fewer than two eigenvectors, from what it did find."""
    if not math.isfinite(eig.loss):
        return "the loss is not finite at w"
    if eig.meta.get("parameters", 2) < 2:
        return "the model has a single parameter"
    values = np.asarray(eig.eigenvalues, dtype=np.float64)
    if values.size and np.all(values == 0):
        return (
            "the Hessian is zero at w (H v = 0: the loss is linear in these parameters, or its curvature "
            "vanishes here), so it has no directions of extreme curvature; use random or PCA directions"
        )
    return (
        f"the Hessian is degenerate at w (it acts as {float(values[0]) if values.size else 0.0:.6g} times "
        "the identity on every direction Lanczos reached: a single distinct eigenvalue); use random or PCA "
        "directions"
    )


# --------------------------------------------------------------------------------------- trace


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    samples: int = 64,
    seed: int = 0,
    params: Sequence[Tensor] | None = None,
    reuse_graph: bool = True,
    *,
    shard: PointShard | None = None,
) -> HessianTrace:
    """Hutchinson's estimate of ``tr(H)`` with Rademacher probes, and its standard error.

    Exactly ``samples`` probes are used (no early stop on a relative-change criterion, which biases
    the estimate low); report ``trace ± 2 stderr``. The probes come from a CPU generator seeded with
    ``seed``, so two runs with the same seed use the same probes. With ``shard`` (data-parallel
    processes holding the same weights), process ``r`` of ``W`` evaluates probes ``r, r + W, ...``
    and all processes get every probe's value: the same result with 1/W of the products each.

    Example::

        >>> import torch
        >>> model = nn.Linear(3, 1, bias=False)
        >>> batch = (torch.eye(3), torch.zeros(3, 1))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()   # H = 2/3 I: tr = 2, exactly per probe
        >>> res = hessian_trace(model, mse, [batch], samples=8)
        >>> round(res.trace, 6), round(res.stderr, 6)
        (2.0, 0.0)
    """
    check_int("samples", samples, 2)
    objective = Objective.build(model, loss_fn, batches, params, require_grad=True, shard=shard)
    return hessian_trace_of(objective, samples, seed, reuse_graph)


def hessian_trace_of(
    objective: Objective,
    samples: int = 64,
    seed: int = 0,
    reuse_graph: bool = True,
    *,
    layout: ShardLayout | None = None,
) -> HessianTrace:
    """:func:`hessian_trace` of ``objective`` (the core; the probes shared out by its ``shard``). With
    ``layout`` (sharded parameters) every process takes part in every probe, each on its slices of it."""
    check_int("samples", samples, 2)
    layout = objective.layout if layout is None else layout  # a sharded objective brings its own
    if layout is not None:
        check_layout(objective, layout)
    meta: dict[str, Any] = {
        "samples": samples,
        "seed": seed,
        "probes": "rademacher",
        **objective.probe_meta(),
    }
    if layout is not None:
        meta["hvp"] = sharded_product(objective, layout)
    start = time.perf_counter()
    losses: list[float] = []

    def probe_values(rows: np.ndarray) -> np.ndarray:
        """``z_i^T H z_i`` for the probe indices in ``rows``; the generator still draws every probe."""
        with hessian_operator_of(objective, reuse_graph, layout=layout) as op:
            values = operator_hutchinson_samples(op, samples, seed, indices=rows[:, 0].astype(int))
            losses.append(op.loss)
        return values

    try:
        rows = np.arange(samples, dtype=np.float64)[:, None]
        values = evaluate_sharded(probe_values, rows, objective.shard)
        loss = losses[0] if losses else math.nan
    except NonFiniteError as err:
        nonfinite_warning("hessian_trace", err)
        return HessianTrace(math.nan, math.nan, np.full(samples, math.nan), math.nan, meta=meta)
    meta["seconds"] = time.perf_counter() - start
    summary = summarize_samples(values)
    return HessianTrace(summary.trace, summary.stderr, summary.samples, loss=loss, meta=meta)
