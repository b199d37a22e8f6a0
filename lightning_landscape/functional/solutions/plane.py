"""One plane through three solutions: initial weights and two runs' final weights, on one landscape.

Two runs that start from the same initialization ``w0`` and end at ``w1`` and ``w2`` define a plane
through all three. :func:`plane_through` orthonormalizes it (Gram-Schmidt, in float64) so that
distances on the plane are distances in weight space, and gives the exact coordinates of the three
points: ``w0 = (0, 0)``, ``w1 = (|w1 - w0|, 0)``, ``w2 = (<w2 - w0, e1>, |residual|)``. Each run's
snapshots are projected onto it (least squares, with their distance from the plane), and
:func:`shared_plane_surface` evaluates the loss over a grid that holds the three points and both paths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape.functional.landscape.assemble import record_parts
from lightning_landscape.functional.landscape.bn import (
    BNMode,
    BufferPlan,
    aligned_buffers,
    landscape_buffers,
)
from lightning_landscape.functional.landscape.engine import Engine
from lightning_landscape.functional.landscape.noise import probe_noise_of
from lightning_landscape.functional.landscape.params import Direction, LossFn
from lightning_landscape.functional.landscape.sharding import PointShard
from lightning_landscape.functional.objective import Objective, work_dtype
from lightning_landscape.records.record import SurfaceRecord

__all__ = ["Plane", "plane_through", "shared_plane_surface"]

Snapshots = Tensor | Sequence[Tensor] | Sequence[Sequence[Tensor]]


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    return float(sum((x * y).sum() for x, y in zip(a, b)))


@dataclass
class Plane:
    """An orthonormal plane ``origin + x * e1 + y * e2`` through three points of weight space.

    Attributes:
        origin: ``w0``, a list of tensors aligned with the parameters.
        directions: ``(e1, e2)``, orthonormal (float32, float64 for float64 weights).
        points: ``(3, 2)`` float64 coordinates of ``w0``, ``w1``, ``w2``.
    """

    origin: list[Tensor]
    directions: tuple[Direction, Direction]
    points: np.ndarray

    def project(self, snapshots: Snapshots) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates ``(n, 2)`` of each snapshot on the plane and its distance ``(n,)`` from it.

        ``snapshots``: an ``(n, P)`` tensor or a sequence of flat ``(P,)`` tensors (a
        :class:`TrajectoryRecorder`'s buffer, parameters concatenated in order), or a sequence of
        weight lists aligned with the parameters.
        """
        rows: list[Tensor | Sequence[Tensor]]
        rows = list(snapshots.unbind(0)) if isinstance(snapshots, Tensor) else list(snapshots)
        coords, dists = np.zeros((len(rows), 2)), np.zeros(len(rows))
        if not rows:
            return coords, dists
        first = rows[0]
        device = first.device if isinstance(first, Tensor) else first[0].device
        flat = [
            torch.cat([t.reshape(-1).to(device, torch.float64) for t in ts])
            for ts in (self.origin, *self.directions)
        ]
        numel = flat[0].numel()
        for i, row in enumerate(rows):
            s = row if isinstance(row, Tensor) else torch.cat([t.reshape(-1) for t in row])
            if s.numel() != numel:
                raise ValueError(f"`snapshots`: snapshot {i} has {s.numel()} elements, the plane {numel}")
            offset = s.reshape(-1).to(device, torch.float64) - flat[0]
            x, y = float(offset @ flat[1]), float(offset @ flat[2])
            coords[i] = (x, y)
            dists[i] = float((offset - x * flat[1] - y * flat[2]).norm())
        return coords, dists


def plane_through(w0: Sequence[Tensor], w1: Sequence[Tensor], w2: Sequence[Tensor]) -> Plane:
    """The plane through ``w0``, ``w1``, ``w2`` (lists of tensors aligned with the parameters).

    ``e1 = (w1 - w0) / |w1 - w0|``; ``e2`` is ``w2 - w0`` with its ``e1`` part removed (twice, for
    float64 accuracy), normalized. Raises a ValueError if the points are (nearly) collinear.

    Example::

        >>> w0, w1, w2 = [torch.zeros(3)], [torch.tensor([2.0, 0, 0])], [torch.tensor([1.0, 3, 0])]
        >>> plane = plane_through(w0, w1, w2)
        >>> plane.points
        array([[0., 0.],
               [2., 0.],
               [1., 3.]])
    """
    if not (len(w0) == len(w1) == len(w2)) or len(w0) == 0:
        raise ValueError(
            f"`w0`, `w1`, `w2` must be weight lists of one length, got {len(w0)}, {len(w1)}, {len(w2)}"
        )
    for k, (a, b, c) in enumerate(zip(w0, w1, w2)):
        if not (a.shape == b.shape == c.shape):
            raise ValueError(
                f"tensor {k}: shapes {tuple(a.shape)}, {tuple(b.shape)}, {tuple(c.shape)} differ"
            )
    with torch.no_grad():
        base = [t.detach().to(torch.float64) for t in w0]
        u = [t.detach().to(b.device, torch.float64) - b for t, b in zip(w1, base)]
        v = [t.detach().to(b.device, torch.float64) - b for t, b in zip(w2, base)]
        a = _dot(u, u) ** 0.5
        if a == 0.0:
            raise ValueError("`w1` equals `w0`: no plane through them")
        if all(torch.equal(x, y) for x, y in zip(u, v)):
            raise ValueError("`w2` equals `w1`: the two solutions are one point (the same run given twice?)")
        e1 = [t / a for t in u]
        r, b1 = v, 0.0
        for _ in range(2):
            coef = _dot(r, e1)
            r, b1 = [t - coef * e for t, e in zip(r, e1)], b1 + coef
        b2 = _dot(r, r) ** 0.5
        if b2 <= 1e-6 * max(a, _dot(v, v) ** 0.5):  # float32 rounding is ~1e-7
            raise ValueError("`w0`, `w1`, `w2` are (nearly) collinear: they do not span a plane")
        e2 = [t / b2 for t in r]
        work = [work_dtype(t) for t in w0]
        directions = (
            [e.to(dt) for e, dt in zip(e1, work)],
            [e.to(dt) for e, dt in zip(e2, work)],
        )
    points = np.array([[0.0, 0.0], [a, 0.0], [b1, b2]])
    return Plane(origin=[t.detach() for t in w0], directions=directions, points=points)


def nearest_point_of_triangle(points: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """The Euclidean nearest point of the triangle ``points`` (3, 2) to each row of ``coords`` (n, 2).

    A point inside (or on) the triangle is its own nearest point; one outside is nearest to a point of
    one of the three edges: the closest of its projections onto the edges, each clamped to its segment.
    On the plane of :func:`plane_through` (an orthonormal basis) this is the nearest point in weight
    space too.

    Example::

        >>> tri = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
        >>> nearest_point_of_triangle(tri, np.array([[3.0, 3.0], [-1.0, 1.0], [0.5, 0.5]]))
        array([[1. , 1. ],
               [0. , 1. ],
               [0.5, 0.5]])
    """
    coords = np.asarray(coords, dtype=np.float64)
    best = coords.copy()
    gap = np.full(len(coords), np.inf)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        start, edge = points[i], points[j] - points[i]
        t = np.clip((coords - start) @ edge / max(float(edge @ edge), 1e-300), 0.0, 1.0)
        foot = start + t[:, None] * edge
        dist = np.linalg.norm(coords - foot, axis=1)
        closer = dist < gap
        best[closer], gap[closer] = foot[closer], dist[closer]
    basis = np.stack([points[1] - points[0], points[2] - points[0]], axis=1)  # 2 x 2
    st = np.linalg.solve(basis, (coords - points[0]).T).T
    inside = (st >= 0).all(axis=1) & (st.sum(axis=1) <= 1.0)
    return np.where(inside[:, None], coords, best)


def barycentric_buffer_coefficients(points: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``(s, t)`` per point such that buffers ``B0 + s (B1 - B0) + t (B2 - B0)`` follow the plane.

    Inside the triangle of the three points, the barycentric coordinates (exact at the vertices);
    outside, those of the Euclidean nearest point of the triangle (:func:`nearest_point_of_triangle`;
    extrapolated running variances can turn negative).
    """
    basis = np.stack([points[1] - points[0], points[2] - points[0]], axis=1)  # 2 x 2
    nearest = nearest_point_of_triangle(points, coords)
    st = np.linalg.solve(basis, (nearest - points[0]).T).T
    return np.clip(st, 0.0, 1.0)  # on the triangle already: only rounding is clipped


def shared_plane_surface(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    w0: Sequence[Tensor],
    w1: Sequence[Tensor],
    w2: Sequence[Tensor],
    trajectories: Sequence[Snapshots] = (),
    resolution: int = 11,
    margin: float = 0.25,
    *,
    buffers: Sequence[Mapping[str, Tensor]] | None = None,
    bn: BNMode | None = None,
    metric_fn: LossFn | None = None,
    metric_name: str | None = None,
    params: Sequence[Tensor] | None = None,
    shard: PointShard | None = None,
    engine: Engine = "auto",
    chunk_size: int | None = None,
) -> SurfaceRecord:
    """The loss on the plane through ``w0``, ``w1``, ``w2``, with the three points and up to two paths.

    Args:
        model: the architecture (its own weights and buffers are restored afterwards).
        w0, w1, w2: weight lists aligned with ``params`` (the shared initialization, run 1's and run
            2's final weights, say).
        trajectories: up to two runs' snapshots (see :meth:`Plane.project`), stored as the record's
            ``path`` and ``path2``.
        resolution: grid points per axis over the bounding box of the points and paths.
        margin: the box is widened by this fraction of its size on every side.
        buffers: ``(B0, B1, B2)``, each model's :func:`buffer_snapshot`.
        bn: ``"interpolate"`` the statistics over the triangle of the three models (the default when
            ``buffers`` are given: each vertex is then the real model; outside the triangle, those of
            its Euclidean nearest point, :func:`nearest_point_of_triangle`), ``"keep"`` the model's
            current ones (the default without ``buffers``) or ``"recompute"`` them at every point.
        metric_fn, metric_name, params, shard, engine, chunk_size: as in :func:`loss_surface`.

    Returns:
        A :class:`SurfaceRecord` on the plane; meta ``points`` (the three coordinates), ``point_losses``
        (and ``point_metrics``), ``path_distances`` (each snapshot's distance from the plane), ``bn``.
    """
    bn = ("interpolate" if buffers is not None else "keep") if bn is None else bn
    objective = Objective.build(
        model, loss_fn, batches, params, bn=bn, engine=engine, chunk_size=chunk_size, shard=shard,
        metric_fn=metric_fn, metric_name=metric_name,
    )  # fmt: skip
    params = objective.params
    for name, w in (("w0", w0), ("w1", w1), ("w2", w2)):
        if len(w) != len(params):
            raise ValueError(f"`{name}` has {len(w)} tensors, expected one per parameter ({len(params)})")
    if len(trajectories) > 2:
        raise ValueError(f"`trajectories` holds at most two runs' snapshots, got {len(trajectories)}")
    if not (isinstance(resolution, int) and resolution >= 3):
        raise ValueError(f"`resolution` must be an integer >= 3, got {resolution!r}")
    if not (isinstance(margin, (int, float)) and margin >= 0):
        raise ValueError(f"`margin` must be a number >= 0, got {margin!r}")
    if buffers is not None and len(buffers) != 3:
        raise ValueError(f"`buffers` must hold three buffer snapshots (B0, B1, B2), got {len(buffers)}")
    plane = plane_through(w0, w1, w2)
    projected = [plane.project(t) for t in trajectories]
    every = np.concatenate([plane.points, *[c for c, _ in projected]])
    lo, hi = every.min(axis=0), every.max(axis=0)
    size = np.maximum(hi - lo, 1e-12)
    lo, hi = lo - margin * size, hi + margin * size
    xs, ys = np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution)
    gx, gy = np.meshgrid(xs, ys)
    # The three points are evaluated with the grid (three more rows): their losses go to the meta.
    coords = np.concatenate([np.stack([gx.ravel(), gy.ravel()], axis=1), plane.points])
    plan: BufferPlan | None = None
    table = coords
    if bn == "interpolate":
        if buffers is None and landscape_buffers(model):
            raise ValueError("`bn`='interpolate' needs `buffers` (B0, B1, B2) of the three models")
        snaps = [aligned_buffers(model, b, f"buffers[{i}]") for i, b in enumerate(buffers or ({}, {}, {}))]
        with torch.no_grad():
            deltas = [[b - a for a, b in zip(snaps[0], s)] for s in snaps[1:]]
        plan = BufferPlan.interpolate(model, snaps[0], deltas)
        table = np.concatenate([coords, barycentric_buffer_coefficients(plane.points, coords)], axis=1)
    elif bn == "recompute":
        plan = BufferPlan.recompute(model)
    directions = list(plane.directions)
    losses, per_batch, metrics, meta = record_parts(
        objective, directions, table, (len(coords),), plan, plane.origin
    )
    n = resolution * resolution
    meta.update(
        directions="shared_plane",
        points=plane.points,
        point_labels=["w0", "w1", "w2"],
        point_losses=losses[n:],
        path_distances=[d for _, d in projected],
        resolution=resolution,
        margin=float(margin),
    )
    if metrics is not None:
        meta["point_metrics"] = metrics[n:]
    meta["nonfinite"] = int((~np.isfinite(losses[:n])).sum())
    noise = probe_noise_of(per_batch[:n], losses[:n])  # of the grid, without the three extra points
    meta["probe_stderr_median"], meta["probe_noise"] = noise.median_stderr, noise.relative
    return SurfaceRecord(
        xs=xs,
        ys=ys,
        losses=losses[:n].reshape(resolution, resolution),
        path=projected[0][0] if projected else None,
        path2=projected[1][0] if len(projected) > 1 else None,
        meta=meta,
        batch_losses=per_batch[:n].reshape(resolution, resolution, -1),
        metrics=metrics[:n].reshape(resolution, resolution) if metrics is not None else None,
    )
