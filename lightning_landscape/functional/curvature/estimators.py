"""Spectral estimators of a symmetric operator given only as ``matvec``: Lanczos and Hutchinson.

They know nothing about models: ``matvec`` maps a flat vector of length ``n`` (in ``dtype``, on
``device``) to another, and is assumed symmetric. They are tested against dense matrices; the model-level
functions in :mod:`lightning_landscape.functional.curvature.hessian` hand them a Hessian operator.

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

from lightning_landscape.functional.objective import NonFiniteError, check_int, check_positive, rademacher

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
        restarts: thick restarts done (0: plain Lanczos).
        max_basis: the most basis vectors held at once.
    """

    values: np.ndarray
    residuals: np.ndarray
    vectors: Tensor | None
    iterations: int
    history: np.ndarray
    invariant: bool
    converged: bool
    restarts: int = 0
    max_basis: int = 0


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


# The default basis budget: as many vectors as fit in BASIS_BYTES, and never fewer than MIN_BASIS. Small
# problems (up to 2M float32 parameters) keep every vector (plain Lanczos, the fewest products); large ones
# hold MIN_BASIS vectors, so a Lanczos run needs about MIN_BASIS + 3 parameter-sized vectors in all.
BASIS_BYTES = 1 << 26
MIN_BASIS = 6


def default_max_basis(n: int, dtype: torch.dtype, wanted: int = 1) -> int:
    """The basis budget used when ``max_basis`` is not given (see :data:`BASIS_BYTES`, :data:`MIN_BASIS`)."""
    per_vector = n * torch.empty((), dtype=dtype).element_size()
    return max(MIN_BASIS, 2 * wanted + 2, BASIS_BYTES // max(per_vector, 1))


def _kept(theta: np.ndarray, k: int, which: Which, keep: int) -> list[int]:
    """Indices (into ascending ``theta``) of the ``keep`` Ritz vectors kept at a restart (wanted ends)."""
    m = len(theta)
    if which == "largest":
        return list(range(m - keep, m))
    if which == "smallest":
        return list(range(keep))
    low = max(k, keep // 2)
    return list(range(low)) + list(range(m - (keep - low), m))


_CHUNK = 1 << 16  # elements multiplied at a time by `precise_dot` on the CPU
_SMALL = 1 << 21  # basis elements up to which reorthogonalization stacks the basis (a float64 copy)


def precise_dot(x: Tensor, y: Tensor) -> Tensor:
    """``x . y`` as a float64 0-d tensor on the device, accurate to about 1e-8 relative for float32 vectors.

    A float32 ``torch.dot`` (BLAS) or ``vector_norm`` of millions of elements on the CPU is off by 1e-6 to
    1e-4 of ``|x| |y|``, enough to spoil orthogonality and Ritz values; so there the products are summed
    in float64, a block at a time (no copy of the vectors). On GPUs the float32 dot is a tree reduction,
    accurate enough; float64 vectors use the plain dot.
    """
    if x.dtype == torch.float64:
        return torch.dot(x, y)
    if x.device.type != "cpu":
        return torch.dot(x, y).double()
    if x.numel() <= _CHUNK:
        return torch.dot(x.double(), y.double())
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, x.numel(), _CHUNK):
        total += torch.mul(x[start : start + _CHUNK], y[start : start + _CHUNK]).sum(dtype=torch.float64)
    return total


def _orthogonalize(w: Tensor, basis: list[Tensor]) -> Tensor:
    """Remove from ``w`` (in place) its components along the orthonormal ``basis``, twice (CGS2); return
    the summed coefficients ``V^T w`` (on the device, no host sync)."""
    total = torch.zeros(len(basis), dtype=torch.float64, device=w.device)
    if len(basis) * w.numel() <= _SMALL:  # a small basis: one float64 matrix product per pass is fastest
        v64 = torch.stack(basis).double()
        for _ in range(2):
            coeffs = v64 @ w.double()
            w -= (coeffs @ v64).to(w.dtype)
            total += coeffs
        return total
    for _ in range(2):
        coeffs = torch.stack([precise_dot(v, w) for v in basis])
        for v, c in zip(basis, coeffs.neg().to(w.dtype).unbind()):
            w.addcmul_(v, c)  # no temporary vector, no host sync
        total += coeffs
    return total


def _rotate(basis: list[Tensor], coeffs: np.ndarray) -> None:
    """Overwrite ``basis[:p]`` with ``V @ coeffs`` (``coeffs`` is ``len(basis) x p``) in place.

    Column block by column block, so the extra memory is one block of ``len(basis) + p`` rows (a quarter
    of a vector in all), not ``p`` new vectors.
    """
    m, p = coeffs.shape
    n = basis[0].numel()
    c = torch.as_tensor(coeffs.T, dtype=basis[0].dtype, device=basis[0].device)  # (p, m)
    step = max(1 << 14, -(-n // (4 * (m + p))))
    for start in range(0, n, step):
        block = torch.stack([v[start : start + step] for v in basis])  # (m, step)
        new = c @ block  # (p, step)
        for i in range(p):
            basis[i][start : start + step] = new[i]


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
    max_basis: int | None = None,
) -> LanczosResult:
    """Thick-restart Lanczos with full reorthogonalization on ``matvec`` (symmetric, on length-``n`` vectors).

    The basis grows one vector per product and is kept orthonormal (classical Gram-Schmidt, twice,
    against every basis vector). When it holds ``max_basis`` vectors, it restarts (Wu & Simon, 2000):
    the Ritz vectors nearest the wanted end(s) of the spectrum are kept, with the last residual vector,
    and the iteration goes on from there. So memory is ``max_basis + 1`` vectors whatever ``max_iter``
    is, while the wanted Ritz pairs keep improving. The projected matrix is float64. The residual of a
    Ritz pair ``(theta, y = V s)`` is ``|beta s_last|``. Iteration stops when the wanted pairs' residuals
    are at most ``tol`` times the largest Ritz value in magnitude, when the Krylov space becomes
    invariant, or after ``max_iter`` products. The start vector is a Rademacher vector from a CPU
    generator seeded with ``seed``. One host synchronization per product.

    Args:
        max_basis: most basis vectors held (at least the number of wanted pairs + 2). Default: as many
            as fit in 64 MiB, at least 6 (:func:`default_max_basis`). ``max_basis >= max_iter`` never
            restarts (plain Lanczos, the fewest products; thick restarts need more of them to resolve an
            end of the spectrum that lies in a dense bulk, typically ``lambda_min`` of a trained network).

    Example::

        >>> a = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
        >>> res = lanczos(lambda v: a @ v, 100, which="both", max_iter=300, tol=1e-10, max_basis=8)
        >>> res.values.round(8).tolist(), res.converged
        ([100.0, 1.0], True)
    """
    check_int("n", n, 1)
    check_lanczos_args(k, which, max_iter, tol)
    count = min(k, n) * (2 if which == "both" else 1)
    if max_basis is None:
        max_basis = default_max_basis(n, dtype, count)
    check_int("max_basis", max_basis, count + 2)
    cap = min(max_basis, n)
    keep = max(count, (cap - 1) // 2)  # Ritz vectors kept at a restart: room for (cap - 1 - keep) new ones
    eps = float(torch.finfo(dtype).eps)

    gen = torch.Generator().manual_seed(int(seed))
    v = rademacher(n, gen).to(device=device, dtype=dtype)
    basis = [v.div_(torch.linalg.vector_norm(v))]
    t = np.zeros((cap, cap))  # the projected matrix V^T A V (float64)
    history: list[float] = []
    invariant = False
    scale, beta, iterations, restarts = 0.0, 0.0, 0, 0
    while True:
        j = len(basis) - 1
        w = matvec(basis[j]).to(dtype)
        if w.data_ptr() == basis[j].data_ptr():
            w = w.clone()  # an operator that returned its input: do not orthogonalize the basis away
        iterations += 1
        alpha_t = precise_dot(w, basis[j])
        _orthogonalize(w, basis)
        alpha, beta = torch.stack([alpha_t, precise_dot(w, w).sqrt()]).tolist()  # the one host sync
        if not (math.isfinite(alpha) and math.isfinite(beta)):
            raise NonFiniteError("a product with the operator is not finite")
        t[j, j] = alpha
        theta, s = np.linalg.eigh(t[: j + 1, : j + 1])
        scale = max(scale, float(np.abs(theta).max()), beta)
        history.append(float(theta[-1]))
        # Invariant Krylov space: what is left of w is rounding noise (products are accurate to ~eps |A|).
        if beta <= 10 * eps * max(scale, 1e-300) or (j + 1 == n and cap == n):
            invariant, beta = True, 0.0
        residuals = np.abs(beta * s[-1, :])
        wanted = wanted_indices(j + 1, k, which)
        if invariant or iterations >= max_iter or bool((residuals[wanted] <= tol * max(scale, 1e-300)).all()):
            break
        w.div_(beta)
        if j + 1 < cap:
            basis.append(w)
            t[j, j + 1] = t[j + 1, j] = beta
            continue
        # Thick restart: keep the Ritz vectors at the wanted end(s) and the residual direction w.
        kept = _kept(theta, k, which, keep)
        _rotate(basis, s[:, kept])
        del basis[len(kept) :]
        basis.append(w)
        t[:] = 0.0
        p = len(kept)
        t[np.arange(p), np.arange(p)] = theta[kept]
        t[:p, p] = t[p, :p] = beta * s[-1, kept]
        restarts += 1
    order = wanted_indices(len(theta), k, which)
    residuals = np.abs(beta * s[-1, order])
    vectors = None
    if return_vectors:
        coeffs_t = torch.as_tensor(s[:, order].T, dtype=dtype, device=device)  # (len(order), m)
        vectors = torch.zeros((len(order), n), dtype=dtype, device=device)
        for c, b in zip(coeffs_t.T, basis):  # one vector at a time: no (m, n) temporary
            vectors.addcmul_(c[:, None], b[None, :])
    return LanczosResult(
        values=theta[order],
        residuals=residuals,
        vectors=vectors,
        iterations=iterations,
        history=np.asarray(history),
        invariant=invariant,
        converged=invariant or bool((residuals <= tol * max(scale, 1e-300)).all()),
        restarts=restarts,
        max_basis=cap,
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
    indices: Sequence[int] | np.ndarray | None = None,
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
            values.append(precise_dot(matvec(z).to(dtype), z))
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
