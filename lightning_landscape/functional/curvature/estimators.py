"""Spectral estimators of a symmetric operator given only as ``matvec``: Lanczos and Hutchinson.

They know nothing about models: ``matvec`` maps a flat vector of length ``n`` (in ``dtype``, on
``device``) to another, and is assumed symmetric. They are tested against dense matrices; the model-level
functions in :mod:`lightning_landscape.functional.curvature.hessian` hand them a Hessian operator.

- :func:`lanczos`: extreme eigenpairs with full reorthogonalization (vectors in the operator's dtype,
  float64 projected coefficients and dot-product sums) and the residual ``|A y - theta y|`` of every
  reported pair.
- :func:`hutchinson`: ``tr(A)`` from seeded Rademacher probes, with its standard error.

Where the vectors live is a :class:`VectorSpace`: by default the whole vector on this process. An operator
whose vectors are split among processes (each holding a slice, as the gradient-difference operator of a
sharded model does: :mod:`~lightning_landscape.functional.curvature.sharded`) brings its own, which sums
the inner products over the processes and draws each process's slice of the same seeded probes; the
estimators then hold only slices (a Lanczos basis of ``1/W`` of the full length on each of ``W``
processes) and give the numbers one process would.

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

__all__ = [
    "HutchinsonResult",
    "LanczosResult",
    "VectorSpace",
    "Which",
    "hutchinson",
    "hutchinson_samples",
    "lanczos",
]

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
        basis_length: the elements of each basis vector held by this process (``n`` on one process, the
            local slice's length where the space is split among processes).
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
    basis_length: int = 0


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


_CHUNK = 1 << 16  # elements reduced by one float32 BLAS call on the CPU before float64 accumulation


def precise_dot(x: Tensor, y: Tensor) -> Tensor:
    """``x . y`` as a float64 0-d tensor on the device, accurate to about 1e-7 relative for float32 vectors.

    A float32 ``torch.dot`` (BLAS) of millions of elements on the CPU is off by up to 1e-5 of ``|x| |y|``
    (a norm of 1e7 elements: 2e-4), enough to spoil orthogonality and Ritz values; so there the vectors
    are reduced a block of :data:`_CHUNK` elements at a time by the float32 BLAS dot (no copy, no
    temporary) and the block sums are added in float64. On GPUs the float32 dot is a tree reduction,
    accurate enough; float64 vectors use the plain dot.
    """
    if x.dtype == torch.float64:
        return torch.dot(x, y)
    if x.device.type != "cpu" or x.numel() <= _CHUNK:
        return torch.dot(x, y).double()
    parts = [torch.dot(x[s : s + _CHUNK], y[s : s + _CHUNK]) for s in range(0, x.numel(), _CHUNK)]
    return torch.stack(parts).double().sum()


def _project(basis: Tensor, w: Tensor) -> Tensor:
    """``V^T w`` (float64, on the device) for the basis rows ``V`` (``m x n``), by matrix-vector products:
    on the CPU in float32 blocks of :data:`_CHUNK` columns summed in float64 (as :func:`precise_dot`)."""
    if w.dtype == torch.float64 or w.device.type != "cpu" or w.numel() <= _CHUNK:
        return torch.mv(basis, w).double()
    total = torch.zeros(basis.shape[0], dtype=torch.float64)
    for s in range(0, w.numel(), _CHUNK):
        total += torch.mv(basis[:, s : s + _CHUNK], w[s : s + _CHUNK])
    return total


class VectorSpace:
    """Where an estimator's vectors live: here the whole length-``n`` vector on this process.

    The estimators take every inner product and every probe through this object, so that a space split
    among processes (:class:`~lightning_landscape.functional.curvature.sharded.ShardedSpace`) can hold
    slices: :attr:`local_numel` elements here, partial sums added over processes by :meth:`reduce`, and
    probes drawn as the slices of the full vectors one process draws.

    Attributes:
        numel: the dimension ``n`` of the full vectors.
        local_numel: the elements of a vector held here (``n`` here).
    """

    def __init__(self, numel: int) -> None:
        self.numel = int(numel)
        self.local_numel = int(numel)

    def reduce(self, partial: Tensor) -> Tensor:
        """The sum over processes of per-process partial sums (here: ``partial`` itself)."""
        return partial

    def partial_dot(self, x: Tensor, y: Tensor) -> Tensor:
        """This process's part of ``<x, y>``, a float64 0-d tensor (:func:`precise_dot`)."""
        return precise_dot(x, y)

    def partial_project(self, basis: Tensor, w: Tensor) -> Tensor:
        """This process's part of ``V^T w`` for the basis rows ``V`` (float64)."""
        return _project(basis, w)

    def dot(self, x: Tensor, y: Tensor) -> Tensor:
        """``<x, y>`` of two vectors of the space, a float64 0-d tensor."""
        return self.reduce(self.partial_dot(x, y))

    def norm(self, v: Tensor) -> Tensor:
        """``|v|``, a 0-d tensor in ``v``'s dtype."""
        return torch.linalg.vector_norm(v)

    def project(self, basis: Tensor, w: Tensor) -> Tensor:
        """``V^T w`` (float64, one value per basis row)."""
        return self.reduce(self.partial_project(basis, w))

    def rademacher(self, generator: torch.Generator) -> Tensor:
        """This process's part of a length-``n`` Rademacher vector from ``generator`` (int8, on the CPU)."""
        return rademacher(self.numel, generator)

    def fix_sign(self, v: Tensor) -> Tensor:
        """``v`` or ``-v``: the one whose entry of largest magnitude (the first such) is positive."""
        return v if v[int(v.abs().argmax())] >= 0 else -v


def _subtract(w: Tensor, basis: Tensor, coeffs: Tensor) -> None:
    """``w -= V coeffs`` in place (one matrix-vector product, no temporary vector)."""
    w.addmv_(basis.T, coeffs.to(w.dtype), alpha=-1.0)


def _orthogonalize(w: Tensor, basis: Tensor, space: VectorSpace) -> tuple[Tensor, Tensor]:
    """Remove from ``w`` (in place) its components along the orthonormal rows of ``basis``.

    One classical Gram-Schmidt pass, and a second only where the first removed most of ``w`` (the DGKS
    criterion, as ARPACK: ``|w_after| < |w_before| / sqrt 2``, with ``|w_before|^2 = |w_after|^2 +
    |coefficients|^2``), which is when rounding can leave it short of orthogonal. Returns the summed
    coefficients ``V^T w`` and ``|w|`` after (float64 tensors on the device); one host sync a pass.
    """
    total = torch.zeros(basis.shape[0], dtype=torch.float64, device=w.device)
    for _ in range(2):
        coeffs = space.project(basis, w)
        _subtract(w, basis, coeffs)
        total += coeffs
        after = space.dot(w, w)
        kept, removed = torch.stack([after, coeffs @ coeffs]).tolist()
        if kept >= removed:
            break
    return total, after.sqrt()


def _rotate(basis: Tensor, coeffs: np.ndarray) -> None:
    """Overwrite the rows ``basis[:p]`` with ``V^T``-combinations ``coeffs`` (``m x p``) of ``basis[:m]``,
    in place.

    Column block by column block, so the extra memory is one ``p``-row block (a quarter of a vector
    in all), not ``p`` new vectors.
    """
    m, p = coeffs.shape
    n = basis.shape[1]
    c = torch.as_tensor(coeffs.T, dtype=basis.dtype, device=basis.device)  # (p, m)
    step = max(1 << 14, -(-n // (4 * p)))
    for start in range(0, n, step):
        basis[:p, start : start + step] = c @ basis[:m, start : start + step]


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
    space: VectorSpace | None = None,
    start: Tensor | None = None,
) -> LanczosResult:
    """Thick-restart Lanczos with full reorthogonalization on ``matvec`` (symmetric, on length-``n`` vectors).

    The basis grows one vector per product and is kept orthonormal: each new vector has the
    three-term recurrence applied, then one classical Gram-Schmidt pass against the whole basis (two
    matrix-vector products over the basis, held as the rows of one matrix in ``dtype``), and a second
    pass where the first removed most of it (DGKS). Dot products of float32 vectors on the CPU are
    summed in float64 a block at a time (:func:`precise_dot`). When it holds ``max_basis`` vectors, it
    restarts (Wu & Simon, 2000): the Ritz vectors nearest the wanted end(s) of the spectrum are kept,
    with the last residual vector, and the iteration goes on from there. So memory is ``max_basis + 1``
    vectors whatever ``max_iter`` is, while the wanted Ritz pairs keep improving. The projected matrix
    is float64. The residual of a Ritz pair ``(theta, y = V s)`` is ``|beta s_last|``. Iteration stops
    when the wanted pairs' residuals are at most ``tol`` times the largest Ritz value in magnitude, when
    the Krylov space becomes invariant, or after ``max_iter`` products. The start vector is a Rademacher
    vector from a CPU generator seeded with ``seed``, or ``start`` (a warm start: this process's part of
    a vector of the space, such as earlier Ritz vectors; normalized here). Two host synchronizations per
    product (the DGKS test and the coefficients).

    Args:
        max_basis: most basis vectors held (at least the number of wanted pairs + 2). Default: as many
            as fit in 64 MiB, at least 6 (:func:`default_max_basis`). ``max_basis >= max_iter`` never
            restarts (plain Lanczos, the fewest products; thick restarts need more of them to resolve an
            end of the spectrum that lies in a dense bulk, typically ``lambda_min`` of a trained network).
        space: where the vectors live (default: :class:`VectorSpace` ``(n)``, the whole vector here). A
            space split among processes makes ``matvec`` take and return this process's slices, the basis
            hold ``space.local_numel`` elements per vector, and the start vector the slice of the one
            drawn unsharded: the same Ritz values as one process, with a basis of ``1/W`` the size.

    Example::

        >>> a = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
        >>> res = lanczos(lambda v: a @ v, 100, which="both", max_iter=300, tol=1e-10, max_basis=8)
        >>> res.values.round(8).tolist(), res.converged
        ([100.0, 1.0], True)
    """
    check_int("n", n, 1)
    check_lanczos_args(k, which, max_iter, tol)
    space = space if space is not None else VectorSpace(n)
    if space.numel != n:
        raise ValueError(f"`space` is of dimension {space.numel}, but `n` is {n}")
    count = min(k, n) * (2 if which == "both" else 1)
    if max_basis is None:
        max_basis = default_max_basis(n, dtype, count)
    check_int("max_basis", max_basis, count + 2)
    cap = min(max_basis, n)
    keep = max(count, (cap - 1) // 2)  # Ritz vectors kept at a restart: room for (cap - 1 - keep) new ones
    eps = float(torch.finfo(dtype).eps)

    gen = torch.Generator().manual_seed(int(seed))
    # The basis as the rows of one matrix (filled as it grows; one row per product at most), so that
    # reorthogonalization is two matrix-vector products instead of a loop over vectors.
    basis = torch.empty((min(cap, max_iter), space.local_numel), dtype=dtype, device=device)
    if start is not None:
        if start.shape != (space.local_numel,):
            raise ValueError(
                f"`start` must be a vector of {space.local_numel} elements, got {tuple(start.shape)}"
            )
        v = start.detach().to(device=device, dtype=dtype)
        if not 0.0 < float(space.norm(v)) < math.inf:
            raise ValueError("`start` must be a non-zero, finite vector")
    else:
        v = space.rademacher(gen).to(device=device, dtype=dtype)
    torch.div(v, space.norm(v), out=basis[0])
    m = 1  # rows of `basis` in use
    t = np.zeros((cap, cap))  # the projected matrix V^T A V (float64)
    history: list[float] = []
    invariant = False
    scale, beta, iterations, restarts = 0.0, 0.0, 0, 0
    while True:
        j = m - 1
        w = matvec(basis[j]).to(dtype)
        if w.data_ptr() == basis[j].data_ptr():
            w = w.clone()  # an operator that returned its input: do not orthogonalize the basis away
        iterations += 1
        # The three-term recurrence (after a thick restart, the arrowhead's known couplings), then one
        # full reorthogonalization pass against the whole basis (a second where DGKS asks for one).
        alpha_t = space.dot(w, basis[j])
        w.addcmul_(basis[j], alpha_t.neg().to(dtype))
        for i in np.flatnonzero(t[:j, j]):
            w.add_(basis[i], alpha=-float(t[i, j]))
        coeffs, beta_t = _orthogonalize(w, basis[:m], space)
        alpha, beta = torch.stack([alpha_t + coeffs[j], beta_t]).tolist()  # the one host sync
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
        if j + 1 < cap:
            torch.div(w, beta, out=basis[m])
            m += 1
            t[j, j + 1] = t[j + 1, j] = beta
            continue
        # Thick restart: keep the Ritz vectors at the wanted end(s) and the residual direction w.
        kept = _kept(theta, k, which, keep)
        _rotate(basis[:m], s[:, kept])
        p = len(kept)
        torch.div(w, beta, out=basis[p])
        m = p + 1
        t[:] = 0.0
        t[np.arange(p), np.arange(p)] = theta[kept]
        t[:p, p] = t[p, :p] = beta * s[-1, kept]
        restarts += 1
    order = wanted_indices(len(theta), k, which)
    residuals = np.abs(beta * s[-1, order])
    vectors = None
    if return_vectors:
        coeffs_t = torch.as_tensor(s[:, order].T, dtype=dtype, device=device)  # (len(order), m)
        vectors = coeffs_t @ basis[:m]
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
        basis_length=space.local_numel,
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
    space: VectorSpace | None = None,
) -> np.ndarray:
    """``z_i^T A z_i`` (float64) for the Rademacher probes ``z_i``, ``i`` in ``indices`` (default: all).

    The probes come in sequence from a CPU generator seeded with ``seed``; every probe up to the last
    wanted one is drawn, so probe ``i`` is the same whichever subset is asked for (data-parallel
    processes split the indices and get the same values as one process). With a ``space`` split among
    processes (see :func:`lanczos`), ``matvec`` works on this process's slices of the same probes and the
    partial sums of all probes are added over the processes at once.
    """
    space = space if space is not None else VectorSpace(n)
    if space.numel != n:
        raise ValueError(f"`space` is of dimension {space.numel}, but `n` is {n}")
    wanted = set(range(samples)) if indices is None else {int(i) for i in indices}
    gen = torch.Generator().manual_seed(int(seed))
    values: list[Tensor] = []
    for i in range(max(wanted) + 1 if wanted else 0):
        z = space.rademacher(gen)
        if i in wanted:
            z = z.to(device=device, dtype=dtype)
            values.append(space.partial_dot(matvec(z).to(dtype), z))
    # one sum over processes and one host sync for all probes
    out = space.reduce(torch.stack(values)).cpu().numpy() if values else np.zeros(0)
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
