"""Spectral estimators of a symmetric operator given only as ``matvec``: Lanczos and Hutchinson.

They know nothing about models: ``matvec`` maps a flat vector of length ``n`` (in ``dtype``, on
``device``) to another, and is assumed symmetric. They are tested against dense matrices; the model-level
functions in :mod:`lightning_landscape.functional.curvature` hand them a Hessian operator.

- :func:`lanczos`: extreme eigenpairs with full reorthogonalization, float64 projected coefficients and
  the residual ``|A y - theta y|`` of every reported pair.
- :func:`hutchinson`: ``tr(A)`` from seeded Rademacher probes, with its standard error.

A product that is NaN or infinite raises :class:`NonFiniteError` (an ``ArithmeticError``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from lightning_landscape.functional._common import NonFiniteError, check_int, check_positive, rademacher

__all__ = ["HutchinsonResult", "LanczosResult", "Which", "hutchinson", "hutchinson_samples", "lanczos"]

Which = Literal["largest", "smallest", "both"]
MatVec = Callable[[Tensor], Tensor]


@dataclass
class LanczosResult:
    """Ritz pairs of a symmetric operator from :func:`lanczos` (values in float64).

    Attributes:
        values: the wanted Ritz values: largest first (descending), then smallest (ascending).
        residuals: ``|A y - theta y|`` of each (Lanczos' estimate, exact up to rounding).
        vectors: the unit Ritz vectors as rows ``(len(values), n)``, if asked for.
        iterations: products with the operator spent.
        history: the largest Ritz value after each iteration.
        invariant: the Krylov space became invariant: the Ritz values are exact eigenvalues.
        converged: every wanted residual is within ``tol`` of the largest Ritz value in magnitude.
    """

    values: np.ndarray
    residuals: np.ndarray
    vectors: Tensor | None
    iterations: int
    history: np.ndarray
    invariant: bool
    converged: bool


def wanted_indices(m: int, k: int, which: Which) -> list[int]:
    """Indices into ``m`` ascending Ritz values: the ``k`` largest first, then the ``k`` smallest."""
    k = min(k, m)
    top = list(range(m - 1, m - 1 - k, -1))
    bottom = list(range(k))
    if which == "largest":
        return top
    if which == "smallest":
        return bottom
    return top + [i for i in bottom if i not in top]


def check_lanczos_args(k: int, which: Any, max_iter: int, tol: float) -> None:
    """ValueErrors naming the argument for the options of :func:`lanczos`."""
    check_int("k", k, 1)
    if which not in ("largest", "smallest", "both"):
        raise ValueError(f"`which` must be 'largest', 'smallest' or 'both', got {which!r}")
    check_int("max_iter", max_iter, 1)
    check_positive("tol", tol)


def lanczos(
    matvec: MatVec,
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

    Example::

        >>> a = torch.diag(torch.arange(1.0, 11.0, dtype=torch.float64))
        >>> res = lanczos(lambda v: a @ v, 10, which="both", max_iter=10)
        >>> res.values.round(8).tolist()
        [10.0, 1.0]
    """
    check_int("n", n, 1)
    check_lanczos_args(k, which, max_iter, tol)
    m_max = min(max_iter, n)
    basis = torch.empty((m_max, n), dtype=dtype, device=device)
    gen = torch.Generator().manual_seed(int(seed))
    v = rademacher(n, gen).to(device=device, dtype=dtype)
    basis[0] = v / torch.linalg.vector_norm(v)
    alphas: list[float] = []
    betas: list[float] = []
    history = []
    invariant = False
    theta = s = None
    scale = 0.0
    eps = float(torch.finfo(dtype).eps)
    for j in range(m_max):
        w = matvec(basis[j]).to(dtype)
        alpha = float(torch.dot(w.double(), basis[j].double()))
        for _ in range(2):  # CGS2: full reorthogonalization against every basis vector so far
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(torch.linalg.vector_norm(w.double()))
        if not (math.isfinite(alpha) and math.isfinite(beta)):
            raise NonFiniteError("a product with the operator is not finite")
        alphas.append(alpha)
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, s = np.linalg.eigh(t)
        scale = max(scale, float(np.abs(theta).max()), beta)
        history.append(float(theta[-1]))
        # Invariant Krylov space: what is left of w is rounding noise (products are accurate to ~eps |A|).
        if beta <= 10 * eps * max(scale, 1e-300):
            invariant = True
            beta = 0.0
        residuals = np.abs(beta * s[-1, :])
        wanted = wanted_indices(len(theta), k, which)
        if invariant or j + 1 == m_max or bool((residuals[wanted] <= tol * max(scale, 1e-300)).all()):
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    m = len(alphas)
    assert theta is not None and s is not None
    order = wanted_indices(m, k, which)
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
        invariant=invariant,
        converged=invariant or bool((residuals <= tol * max(scale, 1e-300)).all()),
    )


# --------------------------------------------------------------------------------------- Hutchinson


@dataclass
class HutchinsonResult:
    """``tr(A)`` from :func:`hutchinson`: the mean of ``z^T A z`` over the probes, its standard error and
    each probe's value."""

    trace: float
    stderr: float
    samples: np.ndarray


def hutchinson_samples(
    matvec: MatVec,
    n: int,
    samples: int,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
    indices: Sequence[int] | None = None,
) -> np.ndarray:
    """``z_i^T A z_i`` (float64) for the Rademacher probes ``z_i``, ``i`` in ``indices`` (default: all).

    The probes come in sequence from a CPU generator seeded with ``seed``; every probe up to the last
    wanted one is drawn, so probe ``i`` is the same whichever subset is asked for (data-parallel
    processes split the indices and get the same values as one process).
    """
    wanted = set(range(samples)) if indices is None else {int(i) for i in indices}
    gen = torch.Generator().manual_seed(int(seed))
    values: list[Tensor] = []
    for i in range(max(wanted) + 1 if wanted else 0):
        z = rademacher(n, gen)
        if i in wanted:
            z = z.to(device=device, dtype=dtype)
            values.append(torch.dot(matvec(z).to(dtype).double(), z.double()))
    out = torch.stack(values).cpu().numpy() if values else np.zeros(0)  # one host sync for all probes
    if not np.isfinite(out).all():
        raise NonFiniteError("a product with the operator is not finite")
    return out


def hutchinson(
    matvec: MatVec,
    n: int,
    samples: int = 64,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
) -> HutchinsonResult:
    """Hutchinson's estimate of ``tr(A)`` with ``samples`` Rademacher probes and its standard error.

    Exactly ``samples`` probes are used (no early stop on a relative-change criterion, which biases
    the estimate low); report ``trace +- 2 stderr``.

    Example::

        >>> a = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> res = hutchinson(lambda v: a @ v, 3, samples=4)   # diagonal: z^T A z = tr(A) exactly
        >>> res.trace, res.stderr
        (6.0, 0.0)
    """
    check_int("samples", samples, 2)
    values = hutchinson_samples(matvec, n, samples, seed, dtype, device)
    return summarize_samples(values)


def summarize_samples(values: np.ndarray) -> HutchinsonResult:
    """Mean and standard error (sample standard deviation / sqrt(count)) of probe values."""
    return HutchinsonResult(
        trace=float(values.mean()),
        stderr=float(values.std(ddof=1) / math.sqrt(len(values))),
        samples=values,
    )
