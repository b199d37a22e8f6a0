"""Trajectory PCA (Li et al., 2018): the plane that best holds the optimizer's path.

The snapshots' offsets from the centre weights, ``D = S - c`` (n x P), are decomposed through the
small n x n Gram matrix ``D D^T`` (never a P x P matrix and never ``D`` itself: columns are processed
in chunks). With ``D D^T = U diag(lam) U^T`` the principal directions are ``v_k = D^T u_k / sqrt(lam_k)``
and the snapshots' least-squares coordinates in the plane are ``D v_k = sqrt(lam_k) u_k``.

As in Li et al. the offsets are not mean-centred: the plane is the best rank-2 fit of the offsets
from the current weights, so the centre (0, 0) is the current model. Caveat: PCA of a pure random
walk also looks structured (PC1 ~ 0.61, PC1+PC2 ~ 0.76 of the variance, smooth cosine-shaped paths;
Antognini & Sohl-Dickstein, 2018), so read the explained variance before reading the path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_landscape import _validation as check

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
        singular_values: ``(k,)`` ``sqrt(lam_k)``.
    """

    components: Tensor
    explained_variance_ratio: Tensor
    coords: Tensor
    singular_values: Tensor


def _column_chunks(num_params: int, rows: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(rows, 1))
    return [slice(a, min(a + step, num_params)) for a in range(0, num_params, step)]


def trajectory_pca(
    snapshots: Tensor | Sequence[Tensor],
    centre: Tensor,
    k: int = 2,
    *,
    release: Callable[[], None] | None = None,
) -> TrajectoryPCA:
    """Top-``k`` principal directions of ``snapshots - centre``, with coordinates and explained variance.

    Args:
        snapshots: ``(n, P)`` tensor, or a sequence of ``n`` flat ``(P,)`` tensors, of any float dtype
            (bfloat16/float16 snapshots are widened chunk by chunk). A view of a recorder's buffer
            works as is: it is read, never copied whole.
        centre: ``(P,)`` flat weights the offsets are taken from (usually the current weights).
        k: number of directions.
        release: called after each column chunk is read (a memory-mapped snapshot buffer hands its
            pages back there, so resident memory stays bounded).

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
    lam, u = torch.linalg.eigh(gram)  # ascending
    lam, u = lam.flip(0).clamp_min(0.0), u.flip(1)
    total = lam.sum()
    tol = max(float(lam[0]) * 1e-12, 1e-300)
    rank = min(k, int((lam > tol).sum()))

    components = torch.zeros(k, num_params, dtype=out_dtype, device=device)
    if rank > 0:
        weights = u[:, :rank].T * lam[:rank].rsqrt()[:, None]  # (rank, n)
        for cols in chunks:
            components[:rank, cols] = (weights @ offsets(cols)).to(out_dtype)
    generator = torch.Generator().manual_seed(0)
    for j in range(rank, k):  # fill a degenerate plane with random orthogonal directions
        v = components[j]
        v.copy_(torch.randn(num_params, generator=generator, dtype=out_dtype))
        for _ in range(2):  # twice: re-orthogonalization keeps float32 at working accuracy
            for i in range(j):
                v -= torch.dot(v, components[i]) * components[i]
        v /= v.norm()

    ratio = torch.zeros(k, dtype=torch.float64)
    sv = torch.zeros(k, dtype=torch.float64)
    if total > 0:
        ratio[:rank] = (lam[:rank] / total).cpu()
    sv[:rank] = lam[:rank].sqrt().cpu()
    coords = torch.zeros(n, k, dtype=torch.float64)
    coords[:, :rank] = (u[:, :rank] * lam[:rank].sqrt()).cpu()
    return TrajectoryPCA(
        components=components,
        explained_variance_ratio=ratio,
        coords=coords,
        singular_values=sv,
    )
