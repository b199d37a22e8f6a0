"""Curvature of the loss at the current weights: Hessian-vector products, Lanczos, Hutchinson.

Everything here is about the Hessian ``H`` of the *mean* loss over the probe batches,
``L(w) = (1/B) sum_b loss_fn(model, batch_b)``, with respect to the chosen parameters (trainable
floating-point ones by default), with the model observed in eval mode (BatchNorm uses its running
statistics, dropout is off) and everything restored afterwards (see :func:`observation`). Averaging,
not summing, keeps every number independent of how the same data is split into batches.

- :func:`hessian_vector_product`: ``H v`` by double backward.
- :func:`hessian_eigenvalues`: extreme eigenvalues by Lanczos with full reorthogonalization, float64
  tridiagonal coefficients and the Ritz residual ``|H y - theta y|`` of every reported pair.
- :func:`hessian_trace`: Hutchinson's estimator with seeded Rademacher probes and its standard error.
- :func:`hessian_directions`: the unit eigenvectors of ``lambda_max`` and ``lambda_min``, ready to be
  used as the two axes of :func:`loss_surface` (Boettcher & Wheeler, 2024).

A loss that is NaN or infinite at ``w`` gives NaN results and a ``RuntimeWarning``, never a crash.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape import _validation as check
from lightning_landscape.functional.params import (
    Direction,
    LossFn,
    landscape_parameters,
    observation,
    unflatten,
)
from lightning_landscape.functional.sharding import PointShard, evaluate_sharded

__all__ = [
    "HessianEigenvalues",
    "HessianOperator",
    "HessianTrace",
    "hessian_directions",
    "hessian_eigenvalues",
    "hessian_operator",
    "hessian_trace",
    "hessian_vector_product",
]

Which = Literal["largest", "smallest", "both"]


class NonFiniteLoss(ArithmeticError):
    """The loss (or its gradient or a Hessian-vector product) is NaN or infinite."""


# --------------------------------------------------------------------------------------- argument checks


# The shared checks of lightning_landscape._validation: _check_int(name, value, minimum).
_check_int = check.positive_int
_check_positive = check.positive_number


def resolve_params(model: nn.Module, params: Sequence[Tensor] | None) -> list[Tensor]:
    """The parameters to differentiate: given ones (each must require grad) or the trainable ones."""
    if params is None:
        return [p for _, p in landscape_parameters(model)]
    params = list(params)
    if not params:
        raise ValueError("`params` is empty")
    for i, p in enumerate(params):
        if not isinstance(p, Tensor) or not p.is_floating_point():
            raise ValueError(f"`params`[{i}] is not a floating-point tensor")
        if not p.requires_grad:
            raise ValueError(
                f"`params`[{i}] (shape {tuple(p.shape)}) does not require grad: curvature is taken with "
                "respect to trainable parameters only"
            )
    return params


def check_batches(batches: Sequence[Any]) -> list[Any]:
    batches = list(batches)
    if not batches:
        raise ValueError("`batches` is empty: at least one probe batch is needed")
    return batches


def _scalar_loss(loss_fn: LossFn, model: nn.Module, batch: Any) -> Tensor:
    loss = loss_fn(model, batch)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(
            f"`loss_fn` must return a scalar tensor, got {type(loss).__name__}"
            + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
        )
    if not loss.requires_grad:
        raise ValueError(
            "`loss_fn` returned a loss that does not depend on the parameters through autograd "
            "(detached, or computed under torch.no_grad)"
        )
    return loss.reshape(())


# --------------------------------------------------------------------------------------- the operator


class HessianOperator:
    """``v -> H v`` for the Hessian of the mean probe loss, on flat vectors; also holds ``L(w)`` and ``g``.

    Made by :func:`hessian_operator`, valid only inside its ``with`` block. With ``reuse_graph`` the
    first-order gradient graph of every probe batch is built once and kept, so each product costs one
    extra backward pass per batch; without it each product rebuilds the graph (less memory, about
    twice the time).

    Attributes:
        loss: ``L(w)``, the mean loss over the batches (a Python float).
        grad: the flat gradient of ``L`` at ``w`` (detached).
        products: number of Hessian-vector products computed so far.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Sequence[Any],
        params: Sequence[Tensor],
        reuse_graph: bool = True,
    ) -> None:
        self.model, self.loss_fn, self.batches, self.params = model, loss_fn, list(batches), list(params)
        self.reuse_graph = reuse_graph
        self.numel = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype if self.params[0].dtype == torch.float64 else torch.float32
        self.device = self.params[0].device
        self.products = 0
        self._graphs: list[tuple[Tensor, ...]] = []
        total, grad = 0.0, torch.zeros(self.numel, dtype=self.dtype, device=self.device)
        for batch in self.batches:
            loss, grads = self._first_order(batch)
            total += float(loss)
            grad += self._flat(grads).detach()
            if reuse_graph:
                self._graphs.append(grads)
        n = len(self.batches)
        self.loss = total / n
        self.grad = grad / n
        if not (math.isfinite(self.loss) and bool(torch.isfinite(self.grad).all())):
            raise NonFiniteLoss(f"the loss at w is {self.loss} (or its gradient is not finite)")

    def _first_order(self, batch: Any) -> tuple[Tensor, tuple[Tensor, ...]]:
        loss = _scalar_loss(self.loss_fn, self.model, batch)
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        # A parameter the loss does not use has zero gradient and zero Hessian rows.
        grads = tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params))
        return loss.detach(), grads

    def _flat(self, tensors: Sequence[Tensor | None]) -> Tensor:
        return torch.cat(
            [
                (torch.zeros_like(p) if t is None else t).reshape(-1).to(self.dtype)
                for t, p in zip(tensors, self.params)
            ]
        )

    def _split(self, vector: Tensor) -> Direction:
        return unflatten(vector, self.params)

    def matvec(self, vector: Tensor) -> Tensor:
        """``H v`` for a flat vector ``v`` (length :attr:`numel`); the result is flat, in :attr:`dtype`."""
        pieces = self._split(vector)
        out = torch.zeros(self.numel, dtype=self.dtype, device=self.device)
        for i, batch in enumerate(self.batches):
            grads = self._graphs[i] if self.reuse_graph else self._first_order(batch)[1]
            if not any(g.requires_grad for g in grads):
                continue  # the gradient does not depend on w: zero Hessian for this batch
            needs = [g for g in grads if g.requires_grad]
            outs = [v for g, v in zip(grads, pieces) if g.requires_grad]
            hv = torch.autograd.grad(
                needs, self.params, grad_outputs=outs, retain_graph=self.reuse_graph, allow_unused=True
            )
            out += self._flat(hv)
        out /= len(self.batches)
        self.products += 1
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteLoss("a Hessian-vector product is not finite")
        return out


@contextlib.contextmanager
def hessian_operator(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    params: Sequence[Tensor] | None = None,
    reuse_graph: bool = True,
) -> Iterator[HessianOperator]:
    """Observe ``model`` (eval mode, state restored after) and yield its :class:`HessianOperator`.

    Example::

        >>> model = nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0]]))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> with hessian_operator(model, mse, [batch]) as H:  # H = 2 x x^T
        ...     H.matvec(torch.tensor([1.0, 0.0]))
        tensor([2., 4.])
    """
    params = resolve_params(model, params)
    batches = check_batches(batches)
    with observation(model), torch.enable_grad():
        yield HessianOperator(model, loss_fn, batches, params, reuse_graph=reuse_graph)


def hessian_vector_product(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    vector: Sequence[Tensor],
    params: Sequence[Tensor] | None = None,
) -> Direction:
    """``H v``: the Hessian of the mean probe loss times ``vector`` (a list aligned with ``params``).

    Example::

        >>> model = nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0]]))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> hessian_vector_product(model, mse, [batch], [torch.tensor([[0.0, 1.0]])])
        [tensor([[4., 8.]])]
    """
    params = resolve_params(model, params)
    if len(vector) != len(params) or any(v.shape != p.shape for v, p in zip(vector, params)):
        raise ValueError("`vector` must hold one tensor per parameter, shaped like it")
    with hessian_operator(model, loss_fn, batches, params) as op:
        flat = torch.cat([v.detach().reshape(-1).to(device=op.device, dtype=op.dtype) for v in vector])
        return [t.clone() for t in unflatten(op.matvec(flat), params)]


# --------------------------------------------------------------------------------------- Lanczos


@dataclass
class LanczosResult:
    """Ritz pairs of a symmetric operator from :func:`lanczos` (values in float64, descending)."""

    values: np.ndarray
    residuals: np.ndarray
    vectors: Tensor | None
    iterations: int
    history: np.ndarray  # the largest Ritz value after each iteration
    history_min: np.ndarray  # the smallest Ritz value after each iteration
    invariant: bool  # the Krylov space became invariant: the Ritz values are exact
    converged: bool  # every wanted residual is within tol of the largest Ritz value in magnitude


def _rademacher(n: int, generator: torch.Generator) -> Tensor:
    return torch.randint(0, 2, (n,), generator=generator, dtype=torch.int8).mul_(2).sub_(1)


def lanczos(
    matvec: Any,
    n: int,
    k: int = 1,
    which: Which = "largest",
    max_iter: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
    return_vectors: bool = False,
) -> LanczosResult:
    """Lanczos with full reorthogonalization on ``matvec`` (a symmetric operator on length-``n`` vectors).

    The basis is kept in ``dtype`` and reorthogonalized twice (classical Gram-Schmidt, twice) at every
    step; the tridiagonal coefficients are float64. The residual of a Ritz pair ``(theta, y = V s)`` is
    ``|beta_m s_m|``. Iteration stops when the wanted pairs' residuals are at most ``tol`` times the
    largest Ritz value in magnitude, when the Krylov space becomes invariant, or after ``max_iter``
    steps. The start vector is a Rademacher vector from a CPU generator seeded with ``seed``.
    """
    m_max = min(max_iter, n)
    basis = torch.empty((m_max, n), dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(int(seed))
    v = _rademacher(n, gen).to(device=device, dtype=dtype)
    basis[0] = v / torch.linalg.vector_norm(v)
    alphas: list[float] = []
    betas: list[float] = []
    history, history_min = [], []
    invariant = False
    theta = s = None
    scale = 0.0
    for j in range(m_max):
        w = matvec(basis[j]).to(dtype)
        alpha = float(torch.dot(w.double(), basis[j].double()))
        alphas.append(alpha)
        for _ in range(2):  # CGS2: full reorthogonalization against every basis vector so far
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(torch.linalg.vector_norm(w.double()))
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, s = np.linalg.eigh(t)
        scale = max(scale, float(np.abs(theta).max()), beta)
        history.append(float(theta[-1]))
        history_min.append(float(theta[0]))
        eps = float(torch.finfo(dtype).eps)
        # Invariant Krylov space: what is left of w is rounding noise (HVPs are accurate to ~eps |H|).
        if beta <= 10 * eps * max(scale, 1e-300):
            invariant = True
            beta = 0.0
        residuals = np.abs(beta * s[-1, :])
        wanted = _wanted(len(theta), k, which)
        if invariant or j + 1 == m_max or bool((residuals[wanted] <= tol * max(scale, 1e-300)).all()):
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    m = len(alphas)
    assert theta is not None and s is not None
    order = _wanted(m, k, which)
    residuals = np.abs(beta * s[-1, order])
    vectors = None
    if return_vectors:
        coeffs = torch.as_tensor(s[:, order], dtype=dtype, device=device)
        vectors = (basis[:m].T @ coeffs).T  # (len(order), n)
    return LanczosResult(
        values=theta[order],
        residuals=residuals,
        vectors=vectors,
        iterations=m,
        history=np.asarray(history),
        history_min=np.asarray(history_min),
        invariant=invariant,
        converged=invariant or bool((residuals <= tol * max(scale, 1e-300)).all()),
    )


def _wanted(m: int, k: int, which: Which) -> list[int]:
    """Indices into ascending Ritz values: largest first, then smallest first."""
    k = min(k, m)
    top = list(range(m - 1, m - 1 - k, -1))
    bottom = list(range(k))
    if which == "largest":
        return top
    if which == "smallest":
        return bottom
    return top + [i for i in bottom if i not in top]


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


def _probe_meta(batches: Sequence[Any]) -> dict[str, Any]:
    from lightning_landscape.functional.surface import probe_size  # surface imports nothing from here

    return {"probe_batches": len(batches), "probe_samples": probe_size(batches)}


def _nonfinite_warning(what: str, err: Exception) -> None:
    warnings.warn(f"{what}: {err}; the result is NaN", RuntimeWarning, stacklevel=3)


def _validate_lanczos_args(k: int, which: str, max_iter: int, tol: float) -> None:
    _check_int("k", k, 1)
    check.choice("which", which, ("largest", "smallest", "both"))
    _check_int("max_iter", max_iter, 1)
    _check_positive("tol", tol)


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

    Returns:
        A :class:`HessianEigenvalues`; NaN values and a ``RuntimeWarning`` if the loss at ``w`` is not finite.

    Example::

        >>> model = nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.zeros(2, 1))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()   # H = x^T x / 1 = I
        >>> res = hessian_eigenvalues(model, mse, [batch], which="both")
        >>> round(res.lambda_max, 6), round(res.lambda_min, 6)
        (1.0, 1.0)
    """
    _validate_lanczos_args(k, which, max_iter, tol)
    params = resolve_params(model, params)
    batches = check_batches(batches)
    meta = {
        "which": which,
        "k": k,
        "max_iter": max_iter,
        "tol": tol,
        "seed": seed,
        **_probe_meta(batches),
        "parameters": sum(p.numel() for p in params),
    }
    start = time.perf_counter()
    try:
        with hessian_operator(model, loss_fn, batches, params, reuse_graph) as op:
            res = lanczos(
                op.matvec,
                op.numel,
                k=k,
                which=which,
                max_iter=max_iter,
                tol=tol,
                seed=seed,
                dtype=op.dtype,
                device=op.device,
                return_vectors=return_eigenvectors,
            )
            loss = op.loss
    except NonFiniteLoss as err:
        _nonfinite_warning("hessian_eigenvalues", err)
        n = min(k, max_iter) * (2 if which == "both" else 1)
        nan = np.full(n, math.nan)
        return HessianEigenvalues(nan, nan.copy(), None, 0, False, math.nan, meta=meta)
    vectors = None
    if res.vectors is not None:
        vectors = [[t.clone() for t in unflatten(_fix_sign(v), params)] for v in res.vectors]
    meta["seconds"] = time.perf_counter() - start
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


def _fix_sign(v: Tensor) -> Tensor:
    """Eigenvectors are defined up to sign: make the entry of largest magnitude positive."""
    return v if v[int(v.abs().argmax())] >= 0 else -v


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

        >>> model = nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.zeros(2, 1))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()   # H = diag(4, 1)
        >>> (d_max, d_min), eig = hessian_directions(model, mse, [batch])
        >>> d_max[0].abs().round(decimals=4), d_min[0].abs().round(decimals=4)
        (tensor([[1., 0.]]), tensor([[0., 1.]]))
    """
    eig = hessian_eigenvalues(
        model,
        loss_fn,
        batches,
        k=1,
        which="both",
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        params=params,
        return_eigenvectors=True,
    )
    if eig.eigenvectors is None or len(eig.eigenvectors) < 2:
        raise ValueError(
            "could not compute two Hessian directions (the loss is not finite at w, or the model has "
            "a single parameter)"
        )
    return (eig.eigenvectors[0], eig.eigenvectors[1]), eig


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

        >>> model = nn.Linear(3, 1, bias=False)
        >>> batch = (torch.eye(3), torch.zeros(3, 1))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()   # H = 2/3 I: tr = 2, exactly per probe
        >>> res = hessian_trace(model, mse, [batch], samples=8)
        >>> round(res.trace, 6), round(res.stderr, 6)
        (2.0, 0.0)
    """
    _check_int("samples", samples, 2)
    params = resolve_params(model, params)
    batches = check_batches(batches)
    meta = {"samples": samples, "seed": seed, "probes": "rademacher", **_probe_meta(batches)}
    start = time.perf_counter()
    losses: list[float] = []

    def probe_values(rows: np.ndarray) -> np.ndarray:
        """``z_i^T H z_i`` for the probe indices in ``rows``; the generator still draws every probe."""
        wanted = {int(i) for i in rows[:, 0]}
        out = []
        gen = torch.Generator().manual_seed(int(seed))
        with hessian_operator(model, loss_fn, batches, params, reuse_graph) as op:
            for i in range(samples):
                z = _rademacher(op.numel, gen)
                if i in wanted:
                    z = z.to(device=op.device, dtype=op.dtype)
                    out.append(float(torch.dot(op.matvec(z).double(), z.double())))
            losses.append(op.loss)
        return np.asarray(out)

    try:
        values = evaluate_sharded(probe_values, np.arange(samples, dtype=np.float64)[:, None], shard)
        loss = losses[0] if losses else math.nan
    except NonFiniteLoss as err:
        _nonfinite_warning("hessian_trace", err)
        return HessianTrace(math.nan, math.nan, np.full(samples, math.nan), math.nan, meta=meta)
    meta["seconds"] = time.perf_counter() - start
    return HessianTrace(
        trace=float(values.mean()),
        stderr=float(values.std(ddof=1) / math.sqrt(samples)),
        samples=values,
        loss=loss,
        meta=meta,
    )
