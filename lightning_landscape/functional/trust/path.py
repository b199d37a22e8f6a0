"""Is the optimizer's path really on the plane drawn? (reliability, part 2)

- :func:`path_plane_fit`: the share of the path's squared distance from the centre that the plane
  captures, and each snapshot's distance from the plane (free: from the PCA's Gram matrix).
- :func:`snapshot_losses` + :func:`path_loss_check`: the true loss at the snapshots' own weights
  against the surface's value at their projections (bilinear interpolation on the grid).
- :func:`random_walk_baseline` + :func:`random_walk_verdict`: the explained variance a pure random walk
  with the same snapshots would show (PC1 ~ 0.61 for long walks; Antognini & Sohl-Dickstein, 2018) and
  whether the path is more structured than that.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape.functional.landscape.engine import checked_scalar
from lightning_landscape.functional.landscape.params import LossFn, WeightPerturbation, observation
from lightning_landscape.functional.landscape.trajectory import TrajectoryPCA
from lightning_landscape.functional.objective import Objective
from lightning_landscape.records.record import SurfaceRecord

__all__ = [
    "PathLossCheck",
    "PathPlaneFit",
    "RandomWalkBaseline",
    "RandomWalkVerdict",
    "bilinear",
    "path_loss_check",
    "path_plane_fit",
    "random_walk_baseline",
    "random_walk_verdict",
    "snapshot_losses",
    "snapshot_losses_of",
    "subsample",
]


@dataclass
class PathPlaneFit:
    """Result of :func:`path_plane_fit`.

    Attributes:
        on_plane_share: ``1 - sum_i dist_i^2 / sum_i ||s_i - c||^2`` (1: the path lies in the plane).
        distances: ``(n,)`` each snapshot's distance from the plane (through the centre).
        offset_norms: ``(n,)`` each snapshot's distance from the centre.
        convention: the PCA convention of the plane.
    """

    on_plane_share: float
    distances: np.ndarray
    offset_norms: np.ndarray
    convention: str

    @property
    def max_relative_distance(self) -> float:
        """The largest distance from the plane over the largest distance from the centre."""
        scale = float(self.offset_norms.max()) if self.offset_norms.size else 0.0
        return float(self.distances.max() / scale) if scale > 0 else 0.0


def path_plane_fit(pca: TrajectoryPCA) -> PathPlaneFit:
    """How well the plane ``centre + span(components)`` holds the snapshots, from a :class:`TrajectoryPCA`.

    The components are orthonormal and ``coords`` are the projections of the offsets, so
    ``dist_i^2 = ||s_i - c||^2 - ||coords_i||^2``; no pass over the snapshots. Under the default
    ``"offsets"`` convention the share equals the explained variance of the plane's components.

    Example::

        >>> from lightning_landscape.functional import trajectory_pca
        >>> snaps = torch.tensor([[3.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        >>> fit = path_plane_fit(trajectory_pca(snaps, torch.zeros(3), k=2))
        >>> 0.0 < fit.on_plane_share < 1.0, fit.distances.shape
        (True, (3,))
    """
    if pca.offset_norms is None:
        raise ValueError("`pca` has no offset_norms: compute it with trajectory_pca of this version")
    norms = pca.offset_norms.double().numpy()
    proj = (pca.coords.double() ** 2).sum(1).numpy()
    dist_sq = np.clip(norms**2 - proj, 0.0, None)
    total = float((norms**2).sum())
    share = 1.0 - float(dist_sq.sum()) / total if total > 0 else 1.0
    return PathPlaneFit(min(max(share, 0.0), 1.0), np.sqrt(dist_sq), norms, pca.convention)


def subsample(count: int, points: int | None) -> np.ndarray:
    """At most ``points`` indices out of ``range(count)``, evenly spread, first and last included.

    Example::

        >>> subsample(10, 4).tolist(), subsample(3, 8).tolist()
        ([0, 3, 6, 9], [0, 1, 2])
    """
    if points is None or points >= count:
        return np.arange(count)
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"`points` must be an integer >= 2 or None, got {points!r}")
    return np.unique(np.round(np.linspace(0, count - 1, points)).astype(int))


@torch.no_grad()
def snapshot_losses(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    snapshots: Tensor | Sequence[Tensor],
    indices: Sequence[int] | np.ndarray | None = None,
    params: Sequence[Tensor] | None = None,
) -> np.ndarray:
    """The loss at each snapshot's own weights (flat vectors aligned with ``params``), one evaluation each.

    The weights are copied in (cast to each parameter's dtype), the model is observed (eval mode, state
    restored, see :func:`observation`) and the saved weights are put back bit for bit. Losses stay on
    the device until one transfer at the end. ``indices`` picks some snapshots (see :func:`subsample`).

    Example::

        >>> model = nn.Linear(1, 1, bias=False)
        >>> batch = (torch.tensor([[1.0]]), torch.tensor([[0.0]]))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> snapshot_losses(model, mse, [batch], torch.tensor([[1.0], [2.0], [3.0]]))
        array([1., 4., 9.])
    """
    objective = Objective.build(model, loss_fn, batches, params)
    if objective.layout is not None:  # found sharded: this process's part of each snapshot
        snapshots = objective.layout.flat_slices(snapshots)
    return snapshot_losses_of(objective, snapshots, indices)


@torch.no_grad()
def snapshot_losses_of(
    objective: Objective,
    snapshots: Tensor | Sequence[Tensor],
    indices: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """:func:`snapshot_losses` of ``objective`` (the core).

    Of sharded parameters (the objective's are this process's slices), ``snapshots`` are this process's
    slices of each snapshot, aligned with them: each process copies its own in and every process takes
    part in every forward. Without grad (a forward that builds a graph would leave FSDP2's gathered
    parameters in place, and the next snapshot copied into the slices would not be seen)."""
    model, loss_fn, batches, params = objective.model, objective.loss_fn, objective.batches, objective.params
    rows = list(snapshots.unbind(0)) if isinstance(snapshots, Tensor) else list(snapshots)
    picked = range(len(rows)) if indices is None else [int(i) for i in indices]
    num_params = sum(p.numel() for p in params)
    for i in picked:
        if not 0 <= i < len(rows):
            raise ValueError(f"`indices`: {i} is not a snapshot index (there are {len(rows)})")
        if rows[i].numel() != num_params:
            raise ValueError(f"`snapshots`: row {i} has {rows[i].numel()} elements, parameters {num_params}")
    losses: list[Tensor] = []
    with observation(model), WeightPerturbation(params, []):
        for i in picked:
            flat, offset = rows[i].reshape(-1), 0
            for p in params:
                p.copy_(flat[offset : offset + p.numel()].view(p.shape))
                offset += p.numel()
            per_batch = torch.stack([checked_scalar(loss_fn(model, b)).detach() for b in batches])
            if per_batch.dtype not in (torch.float32, torch.float64):
                per_batch = per_batch.float()
            losses.append(per_batch.mean())
    return torch.stack(losses).double().cpu().numpy() if losses else np.zeros(0)


def bilinear(surface: SurfaceRecord, points: np.ndarray) -> np.ndarray:
    """The surface's loss at ``points`` ``(m, 2)`` of plane coordinates, interpolated bilinearly.

    NaN for a point outside the grid or next to a non-finite grid value (never extrapolated).

    Example::

        >>> xs = np.array([-1.0, 0.0, 1.0])
        >>> rec = SurfaceRecord(xs, xs, np.add.outer(xs, 10 * xs))  # losses[i, j] = ys[i] + 10 xs[j]
        >>> bilinear(rec, np.array([[0.5, 0.25], [2.0, 0.0]])).tolist()
        [5.25, nan]
    """
    xs, ys = np.asarray(surface.xs, float), np.asarray(surface.ys, float)
    z = np.asarray(surface.losses, float)
    pts = np.asarray(points, float).reshape(-1, 2)
    out = np.full(len(pts), np.nan)
    for n, (x, y) in enumerate(pts):
        if not (xs[0] <= x <= xs[-1] and ys[0] <= y <= ys[-1]):
            continue
        j = min(int(np.searchsorted(xs, x, side="right")) - 1, len(xs) - 2)
        i = min(int(np.searchsorted(ys, y, side="right")) - 1, len(ys) - 2)
        fx = (x - xs[j]) / (xs[j + 1] - xs[j])
        fy = (y - ys[i]) / (ys[i + 1] - ys[i])
        out[n] = (1 - fy) * ((1 - fx) * z[i, j] + fx * z[i, j + 1]) + fy * (
            (1 - fx) * z[i + 1, j] + fx * z[i + 1, j + 1]
        )
    return out


@dataclass
class PathLossCheck:
    """Result of :func:`path_loss_check`: true loss at the snapshots against the contour under them.

    Attributes:
        points: ``(m, 2)`` projected plane coordinates of the evaluated snapshots.
        true_losses: ``(m,)`` loss at the snapshots' own weights.
        surface_losses: ``(m,)`` surface value at the projections (NaN outside the grid).
        loss_range: the surface's finite max minus min, the scale of the relative numbers.
    """

    points: np.ndarray
    true_losses: np.ndarray
    surface_losses: np.ndarray
    loss_range: float

    @property
    def disagreement(self) -> np.ndarray:
        """``|true - surface|`` per point (NaN outside the grid)."""
        return np.abs(self.true_losses - self.surface_losses)

    def _stat(self, fn: Any, relative: bool) -> float:
        d = self.disagreement[np.isfinite(self.disagreement)]
        if d.size == 0:
            return math.nan
        value = float(fn(d))
        return value / self.loss_range if relative and self.loss_range > 0 else value

    def max(self, relative: bool = True) -> float:
        """Largest disagreement, as a share of the surface's loss range unless ``relative=False``."""
        return self._stat(np.max, relative)

    def median(self, relative: bool = True) -> float:
        """Median disagreement, as a share of the surface's loss range unless ``relative=False``."""
        return self._stat(np.median, relative)

    @property
    def outside(self) -> int:
        """How many points fell outside the grid (not compared)."""
        return int((~np.isfinite(self.surface_losses)).sum())


def path_loss_check(surface: SurfaceRecord, points: np.ndarray, true_losses: np.ndarray) -> PathLossCheck:
    """Compare ``true_losses`` at snapshots with the ``surface`` at their projected ``points``.

    Example::

        >>> xs = np.linspace(-1, 1, 3)
        >>> rec = SurfaceRecord(xs, xs, np.add.outer(xs**2, xs**2))
        >>> check = path_loss_check(rec, np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([1.5, 0.0]))
        >>> check.max(), check.median(relative=False)
        (0.25, 0.25)
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    true = np.asarray(true_losses, dtype=np.float64).reshape(-1)
    if len(pts) != len(true):
        raise ValueError(f"`points` has {len(pts)} rows but `true_losses` has {len(true)} values")
    finite = np.asarray(surface.losses, float)
    finite = finite[np.isfinite(finite)]
    loss_range = float(finite.max() - finite.min()) if finite.size else math.nan
    return PathLossCheck(pts, true, bilinear(surface, pts), loss_range)


@dataclass(frozen=True)
class RandomWalkBaseline:
    """Explained-variance ratios of simulated random walks (:func:`random_walk_baseline`).

    Attributes:
        pc1: ``(samples,)`` PC1 ratio of each simulated walk, sorted.
        pc12: ``(samples,)`` PC1 + PC2 ratio of each simulated walk, sorted.
    """

    pc1: np.ndarray
    pc12: np.ndarray
    count: int
    num_params: int | None
    convention: str

    def quantile(self, q: float) -> tuple[float, float]:
        """The ``q`` quantiles of PC1 and of PC1 + PC2."""
        return float(np.quantile(self.pc1, q)), float(np.quantile(self.pc12, q))


def _times_key(count: int, times: Sequence[float] | None) -> tuple[float, ...] | None:
    if times is None:
        return None
    t = np.asarray(times, dtype=np.float64)
    if t.shape != (count + 1,) or np.any(~np.isfinite(t)) or np.any(np.diff(t) < 0) or t[-1] <= t[0]:
        raise ValueError(
            f"`times` must hold {count + 1} non-decreasing finite values (each snapshot's step, then the "
            f"centre's), not all equal; got {times!r}"
        )
    return tuple(np.round((t - t[0]) / (t[-1] - t[0]), 12).tolist())


def random_walk_baseline(
    count: int,
    num_params: int | None = None,
    convention: str = "offsets",
    samples: int = 1000,
    seed: int = 0,
    times: Sequence[float] | None = None,
) -> RandomWalkBaseline:
    """PCA explained variance of ``samples`` Gaussian random walks with ``count`` snapshots.

    The model: snapshots at ``times[:-1]`` of a Brownian motion in ``num_params`` dimensions (default:
    evenly spaced, one step apart), the centre at ``times[-1]`` (default: one step after the last), PCA
    in the given ``convention`` as :func:`trajectory_pca` does it. Only the ``count x count`` Gram matrix
    is simulated (Bartlett's decomposition of a Wishart matrix), so any ``num_params`` costs the same;
    ``None`` is the infinite-dimensional limit, where the ratios are deterministic (and one sample is
    drawn). Seeded and cached per argument set; about a second for 1000 walks of 64 snapshots.

    Long walks in high dimension: PC1 ~ 0.61, PC1 + PC2 ~ 0.76 when centred (Antognini &
    Sohl-Dickstein, 2018), but PC1 ~ 0.81, PC1 + PC2 ~ 0.90 under the default ``"offsets"`` convention
    (offsets from the walk's end): compare a path only with the baseline of its own convention.

    Example::

        >>> centred = random_walk_baseline(200, convention="centred", samples=1)  # long walk, P -> inf
        >>> round(float(centred.pc1[0]), 2), round(float(centred.pc12[0]), 2)
        (0.61, 0.76)
        >>> offsets = random_walk_baseline(200, samples=1)  # offsets from the end look even straighter
        >>> round(float(offsets.pc1[0]), 2), round(float(offsets.pc12[0]), 2)
        (0.81, 0.9)
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"`count` must be a positive integer, got {count!r}")
    if num_params is not None and (not isinstance(num_params, int) or num_params < 1):
        raise ValueError(f"`num_params` must be a positive integer or None, got {num_params!r}")
    if convention not in ("offsets", "centred"):
        raise ValueError(f"`convention` must be 'offsets' or 'centred', got {convention!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"`samples` must be a positive integer, got {samples!r}")
    return _baseline(count, num_params, convention, samples, int(seed), _times_key(count, times))


@functools.lru_cache(maxsize=64)
def _baseline(
    count: int, num_params: int | None, convention: str, samples: int, seed: int, times: tuple | None
) -> RandomWalkBaseline:
    t = np.arange(count + 1, dtype=np.float64) if times is None else np.asarray(times)
    steps = np.sqrt(np.diff(t))  # increment scale between consecutive times (the last: to the centre)
    # offsets D_i = x(t_i) - x(t_c) = -sum_{j >= i} increment_j: D = -A S Z, Gram = A S (Z Z^T) S A^T.
    a = np.triu(np.ones((count, count))) * steps[None, :]
    rng = np.random.default_rng(seed)
    if num_params is None:
        samples = 1
        factor = np.broadcast_to(np.eye(count), (samples, count, count))  # Z Z^T / P -> I
    elif num_params >= count:  # Bartlett: Z Z^T = L L^T, L lower triangular
        factor = np.tril(rng.standard_normal((samples, count, count)), -1)
        diag = np.sqrt(rng.chisquare(num_params - np.arange(count), size=(samples, count)))
        factor[:, np.arange(count), np.arange(count)] = diag
    else:
        factor = rng.standard_normal((samples, count, num_params))
    m = a @ factor
    if convention == "centred":
        m = m - m.mean(axis=1, keepdims=True)
    lam = np.linalg.eigvalsh(m @ np.swapaxes(m, 1, 2))[:, ::-1].clip(min=0.0)
    total = lam.sum(1)
    total[total == 0] = 1.0
    pc1 = lam[:, 0] / total
    pc12 = lam[:, :2].sum(1) / total
    return RandomWalkBaseline(np.sort(pc1), np.sort(pc12), count, num_params, convention)


@dataclass
class RandomWalkVerdict:
    """Result of :func:`random_walk_verdict`.

    Attributes:
        structured: the path is more structured than a random walk with the same snapshots.
        pc1, pc12: the path's PC1 and PC1 + PC2 explained-variance ratios.
        pc1_threshold, pc12_threshold: the random walks' ``1 - alpha / 2`` quantiles.
        pc1_walk, pc12_walk: the random walks' medians (what a random walk typically shows).
        p_value: share of the random walks at least as structured (min over both statistics, x 2).
    """

    structured: bool
    pc1: float
    pc12: float
    pc1_threshold: float
    pc12_threshold: float
    pc1_walk: float
    pc12_walk: float
    p_value: float
    alpha: float

    @property
    def label(self) -> str:
        return (
            "more structured than a random walk"
            if self.structured
            else "not more structured than a random walk"
        )


def random_walk_verdict(
    explained_variance_ratio: Sequence[float],
    count: int,
    num_params: int | None = None,
    convention: str = "offsets",
    alpha: float = 0.01,
    samples: int = 1000,
    seed: int = 0,
    times: Sequence[float] | None = None,
) -> RandomWalkVerdict:
    """Is a trajectory PCA more structured than a random walk with the same snapshots?

    The test: the path's PC1 ratio, or its PC1 + PC2 ratio, lies above the ``1 - alpha / 2`` quantile of
    the random walks' (:func:`random_walk_baseline`, same count, dimension, convention and times;
    Bonferroni over the two statistics). Under the null a random walk passes with probability about
    ``alpha`` (1 % by default), so a pure random walk is called "not more structured" about 99 % of the
    time; a straight path (PC1 = 1) always passes.

    Example::

        >>> random_walk_verdict([1.0, 0.0], count=10).structured   # a straight line
        True
        >>> random_walk_verdict([0.62, 0.15], count=10).label
        'not more structured than a random walk'
    """
    if not 0 < alpha < 1:
        raise ValueError(f"`alpha` must be in (0, 1), got {alpha!r}")
    ratios = [float(r) for r in explained_variance_ratio]
    if len(ratios) < 2:
        raise ValueError(
            f"`explained_variance_ratio` must hold PC1 and PC2, got {explained_variance_ratio!r}"
        )
    base = random_walk_baseline(count, num_params, convention, samples, seed, times)
    pc1, pc12 = ratios[0], ratios[0] + ratios[1]
    q1, q12 = base.quantile(1 - alpha / 2)
    m1, m12 = base.quantile(0.5)
    tail1 = (np.count_nonzero(base.pc1 >= pc1) + 1) / (base.pc1.size + 1)
    tail12 = (np.count_nonzero(base.pc12 >= pc12) + 1) / (base.pc12.size + 1)
    structured = pc1 > q1 or pc12 > q12
    return RandomWalkVerdict(structured, pc1, pc12, q1, q12, m1, m12, min(1.0, 2 * min(tail1, tail12)), alpha)
