"""Trajectory PCA (Li et al., 2018): the plane that best holds the optimizer's path.

The snapshots' offsets from the centre weights, ``D = S - c`` (n x P), are decomposed through the
small n x n Gram matrix ``D D^T`` (never a P x P matrix and never ``D`` itself: columns are processed
in chunks). With ``D D^T = U diag(lam) U^T`` the principal directions are ``v_k = D^T u_k / sqrt(lam_k)``
and the snapshots' least-squares coordinates in the plane are ``D v_k = sqrt(lam_k) u_k``.

Two conventions (``convention`` in the result; compare numbers only within one):

- ``"offsets"`` (default, ``centred=False``): the offsets are not mean-centred. The plane is the best
  rank-2 fit *through the current weights*, so it is exactly the plane drawn around (0, 0), and
  ``explained_variance_ratio`` is the share of the path's squared distance from the current weights
  that the plane captures (PC1 + PC2 = 1 minus the residual of the drawn path).
- ``"centred"`` (``centred=True``): the offsets are mean-centred first, as scikit-learn's PCA does in
  Li et al.'s code: the directions and ratios describe the spread of the path around its own mean.
  Offsets of a near-straight path are dominated by one direction either way, but a curved path gives
  different numbers (0.87/0.13 one way and 0.70/0.30 the other on one test path). The plane is still
  drawn through the current weights, and ``coords`` are the projections of the (uncentred) offsets,
  so the path ends at (0, 0) in both conventions.

Caveat: PCA of a pure random walk also looks structured (smooth cosine-shaped paths; Antognini &
Sohl-Dickstein, 2018): PC1 ~ 0.61, PC1+PC2 ~ 0.76 of the variance when centred, and even PC1 ~ 0.81,
PC1+PC2 ~ 0.90 under the offsets convention (long walks, high dimension). Read the explained variance
against :func:`lightning_landscape.functional.trust.path.random_walk_baseline` (same count, same
convention) before reading the path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_landscape.functional import checks as check

__all__ = ["TrajectoryPCA", "trajectory_pca"]

# float64 elements of the one (n, chunk) work buffer both passes reuse: 8 MiB, whatever the model size.
_CHUNK_ELEMENTS = 1 << 20


@dataclass
class TrajectoryPCA:
    """Result of :func:`trajectory_pca`.

    Attributes:
        components: ``(k, P)`` orthonormal principal directions, float32 (float64 if the input was).
        explained_variance_ratio: ``(k,)`` share of the offsets' squared norm along each direction.
        coords: ``(n, k)`` least-squares coordinates of each snapshot in the plane.
        singular_values: ``(k,)`` ``sqrt(lam_k)`` (of the centred offsets under ``"centred"``).
        convention: ``"offsets"`` (not mean-centred, the default) or ``"centred"``.
        offset_norms: ``(n,)`` each snapshot's distance ``||s_i - c||`` from the centre, float64
            (with ``coords`` it gives each snapshot's distance from the plane, for free).
    """

    components: Tensor
    explained_variance_ratio: Tensor
    coords: Tensor
    singular_values: Tensor
    convention: str = "offsets"
    offset_norms: Tensor | None = None


def _column_chunks(num_params: int, rows: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(rows, 1))
    return [slice(a, min(a + step, num_params)) for a in range(0, num_params, step)]


def _dot(x: Tensor, y: Tensor, all_reduce: Callable[[Tensor], Tensor] | None) -> Tensor:
    local = torch.dot(x, y)
    return local if all_reduce is None else all_reduce(local.double().cpu()).to(x)


def trajectory_pca(
    snapshots: Tensor | Sequence[Tensor],
    centre: Tensor,
    k: int = 2,
    *,
    centred: bool = False,
    release: Callable[[], None] | None = None,
    all_reduce: Callable[[Tensor], Tensor] | None = None,
) -> TrajectoryPCA:
    """Top-``k`` principal directions of ``snapshots - centre``, with coordinates and explained variance.

    Args:
        snapshots: ``(n, P)`` tensor, or a sequence of ``n`` flat ``(P,)`` tensors, of any float dtype
            (bfloat16/float16 snapshots are widened chunk by chunk). A view of a recorder's buffer
            works as is: it is read, never copied whole.
        centre: ``(P,)`` flat weights the offsets are taken from (usually the current weights).
        k: number of directions.
        centred: mean-centre the offsets first (Li et al.'s scikit-learn convention) instead of taking
            them from ``centre`` as they are (the default); see the module docstring.
        release: called after each column chunk is read (a memory-mapped snapshot buffer hands its
            pages back there, so resident memory stays bounded).
        all_reduce: for snapshots that are this process's slices of sharded parameters (see
            :mod:`~lightning_landscape.functional.landscape.shards`): sums a tensor over the processes in
            place. The Gram matrix is summed (and the random fill's dot products), so every process gets
            the plane of the full vectors; ``components`` are this process's slices of it.

    Memory: besides the ``(k, P)`` result, one ``(n, chunk)`` float64 work buffer of at most
    ``_CHUNK_ELEMENTS`` elements (8 MiB) and small ``n x n`` matrices; never a copy of the snapshots.

    When the offsets span fewer than ``k`` dimensions (say, two snapshots), the missing directions
    are seeded random unit vectors orthogonal to the others, with explained variance 0.

    Example::

        >>> centre = torch.zeros(3)
        >>> snaps = torch.tensor([[4.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
        >>> pca = trajectory_pca(snaps, centre)
        >>> pca.components.abs()[0].argmax().item()  # PC1 is mostly the first axis
        0
        >>> round(float(pca.explained_variance_ratio.sum()), 6)  # the path lies in a plane
        1.0
    """
    check.positive_int("k", k)
    rows = list(snapshots) if not isinstance(snapshots, Tensor) else list(snapshots.unbind(0))
    n = len(rows)
    if n < 1:
        raise ValueError("`snapshots` is empty: trajectory PCA needs at least one snapshot")
    num_params = centre.numel()
    out_dtype = torch.float64 if centre.dtype == torch.float64 else torch.float32
    device = centre.device
    flat_centre = centre.reshape(-1)
    chunks = _column_chunks(num_params, n)
    work = torch.empty(n, chunks[0].stop - chunks[0].start, dtype=torch.float64, device=device)

    def offsets(cols: slice) -> Tensor:  # (n, chunk) float64, in the reused work buffer
        d = work[:, : cols.stop - cols.start]
        for i, r in enumerate(rows):
            d[i].copy_(r.reshape(-1)[cols])
        d -= flat_centre[cols].to(torch.float64)
        if release is not None:
            release()
        return d

    gram = torch.zeros(n, n, dtype=torch.float64, device=device)
    for cols in chunks:
        d = offsets(cols)
        gram += d @ d.T
    if all_reduce is not None:
        gram = all_reduce(gram.cpu()).to(device)
    offset_norms = gram.diagonal().clamp_min(0.0).sqrt().cpu()
    full = gram
    if centred:  # H G H with H = I - 11^T / n: the Gram matrix of the mean-centred offsets
        gram = gram - gram.mean(0, keepdim=True)
        gram = gram - gram.mean(1, keepdim=True)
    lam, u = torch.linalg.eigh(gram)  # ascending
    lam, u = lam.flip(0).clamp_min(0.0), u.flip(1)
    total = lam.sum()
    tol = max(float(lam[0]) * 1e-12, float(full.diagonal().sum()) * 1e-24, 1e-300)
    rank = min(k, int((lam > tol).sum()))

    # Each component is a combination of the offsets, v_j = D^T w_j, so both passes read D as is and the
    # coordinates are D v_j = G w_j. Centred: eigenvectors of H G H with lam > 0 lie in H's range, so
    # D_c^T u = D^T H u = D^T u (u is re-centred against rounding).
    basis = u[:, :rank] - u[:, :rank].mean(0, keepdim=True) if centred else u[:, :rank]
    coef = [basis[:, j] * lam[j].rsqrt() for j in range(rank)]
    if centred and rank < k:
        # The centred offsets miss at most one direction of the path: its mean. Take it next (made
        # orthogonal to the others), so that a short path still lies in the plane drawn.
        a = torch.full((n,), 1.0 / n, dtype=torch.float64, device=device)
        for w in coef:
            a = a - (w @ full @ a) * w
        norm_sq = float(a @ full @ a)
        if norm_sq > tol:
            coef.append(a / norm_sq**0.5)
    weights = torch.stack(coef) if coef else torch.zeros(0, n, dtype=torch.float64, device=device)
    filled = len(coef)

    components = torch.zeros(k, num_params, dtype=out_dtype, device=device)
    if filled > 0:
        for cols in chunks:
            components[:filled, cols] = (weights @ offsets(cols)).to(out_dtype)
    generator = torch.Generator().manual_seed(0)
    for j in range(filled, k):  # fill a degenerate plane with random orthogonal directions
        v = components[j]
        v.copy_(torch.randn(num_params, generator=generator, dtype=out_dtype))
        for _ in range(2):  # twice: re-orthogonalization keeps float32 at working accuracy
            for i in range(j):
                v -= _dot(v, components[i], all_reduce) * components[i]
        v /= _dot(v, v, all_reduce) ** 0.5

    ratio = torch.zeros(k, dtype=torch.float64)
    sv = torch.zeros(k, dtype=torch.float64)
    if total > 0:
        ratio[:rank] = (lam[:rank] / total).cpu()
    sv[:rank] = lam[:rank].sqrt().cpu()
    coords = torch.zeros(n, k, dtype=torch.float64)
    if centred:
        coords[:, :filled] = (full @ weights.T).cpu()
    else:  # G u / sqrt(lam) = u sqrt(lam), the latter without a division by a small eigenvalue
        coords[:, :rank] = (u[:, :rank] * lam[:rank].sqrt()).cpu()
    return TrajectoryPCA(
        components=components,
        explained_variance_ratio=ratio,
        coords=coords,
        singular_values=sv,
        convention="centred" if centred else "offsets",
        offset_norms=offset_norms,
    )
