"""One plane through three solutions and the barrier between two: against numpy and model copies."""

import copy

import numpy as np
import pytest
import torch
from helpers.bn_models import accuracy, bn_batches, bn_cnn, ce, naive_point, train_steps, weights
from torch import nn

from lightning_landscape.functional import (
    barrier,
    buffer_snapshot,
    flatten,
    landscape_parameters,
    loss_surface,
    plane_through,
    shared_plane_surface,
)
from lightning_landscape.functional.solutions.plane import (
    barycentric_buffer_coefficients,
    nearest_point_of_triangle,
)


def _random_weights(seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, generator=g, dtype=dtype), torch.randn(5, generator=g, dtype=dtype)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plane_coordinates_are_exact(dtype):
    w0, w1, w2 = (_random_weights(s, dtype) for s in (0, 1, 2))
    plane = plane_through(w0, w1, w2)
    # Reference: numpy float64 least squares of w1 - w0, w2 - w0 in the orthonormal basis.
    flat = [flatten(w, torch.float64).numpy() for w in (w0, w1, w2)]
    e = np.stack([flatten(d, torch.float64).numpy() for d in plane.directions], axis=1)
    np.testing.assert_allclose(e.T @ e, np.eye(2), atol=1e-6)
    for i in range(3):
        coef, *_ = np.linalg.lstsq(e, flat[i] - flat[0], rcond=None)
        np.testing.assert_allclose(plane.points[i], coef, atol=1e-6)
        np.testing.assert_allclose(flat[0] + e @ plane.points[i], flat[i], atol=1e-6)  # on the plane
    assert plane.points[1, 1] == 0.0 and plane.points[1, 0] == pytest.approx(
        np.linalg.norm(flat[1] - flat[0])
    )
    assert plane.directions[0][0].dtype == dtype


def test_projection_of_snapshots_and_collinear_points():
    w0, w1, w2 = (_random_weights(s) for s in (0, 1, 2))
    plane = plane_through(w0, w1, w2)
    on = [[a + 0.3 * (b - a) + 0.2 * (c - a) for a, b, c in zip(w0, w1, w2)]]
    off = [[t + 0.0 for t in on[0]]]
    off[0][1] = off[0][1] + torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0])  # leaves the plane
    coords, dist = plane.project(on + off)
    expected = 0.3 * plane.points[1] + 0.2 * plane.points[2]
    np.testing.assert_allclose(coords[0], expected, atol=1e-5)
    assert dist[0] < 1e-5
    e = np.stack([flatten(d, torch.float64).numpy() for d in plane.directions], axis=1)
    out = np.zeros(17)
    out[-1] = 1.0
    np.testing.assert_allclose(dist[1], np.linalg.norm(out - e @ (e.T @ out)), rtol=1e-5)
    flat = torch.stack([flatten(w) for w in on + off])  # a recorder's (n, P) buffer gives the same
    np.testing.assert_allclose(plane.project(flat)[0], coords, atol=1e-6)
    with pytest.raises(ValueError, match="collinear"):
        plane_through(w0, w1, [a + 2 * (b - a) for a, b in zip(w0, w1)])
    with pytest.raises(ValueError, match="`w1` equals `w0`"):
        plane_through(w0, w0, w2)
    with pytest.raises(ValueError, match="`w2` equals `w1`: the two solutions are one point"):
        plane_through(w0, w1, [t.clone() for t in w1])


def test_loss_surface_at_the_three_points_is_each_models_loss():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(2)]
    models = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        models.append(nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)))
    w = [weights(m) for m in models]
    plane = plane_through(*w)
    probe = copy.deepcopy(models[0])
    with torch.no_grad():
        probe[0].weight.add_(1.0)  # the model's own weights do not matter with an explicit origin
    rec = loss_surface(
        probe, ce, batches, plane.directions, xs=plane.points[:, 0], ys=plane.points[:, 1], origin=w[0]
    )
    own = [naive_point(m, weights(m), batches) for m in models]
    np.testing.assert_allclose(np.diag(rec.losses), own, atol=1e-6)


@pytest.fixture(scope="module")
def three_runs():
    """A shared initialization and two runs (different data orders and learning rates) with snapshots."""
    batches = bn_batches(4)
    init = bn_cnn(0)
    runs, paths = [], []
    for order, lr in (([0, 1, 2, 3], 0.1), ([3, 2, 1, 0], 0.05)):
        model = copy.deepcopy(init)
        path = [flatten(weights(model))]
        for _ in range(2):
            train_steps(model, [batches[i] for i in order], epochs=1, lr=lr)
            path.append(flatten(weights(model)))
        runs.append(model)
        paths.append(torch.stack(path))
    return init, runs, paths, batches[:3]


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_shared_plane_surface(three_runs, engine):
    init, (run1, run2), paths, batches = three_runs
    models = (init, run1, run2)
    template = copy.deepcopy(run1)
    before = {k: v.clone() for k, v in template.state_dict().items()}
    rec = shared_plane_surface(
        template,
        ce,
        batches,
        *(weights(m) for m in models),
        trajectories=paths,
        resolution=5,
        buffers=[buffer_snapshot(m) for m in models],
        metric_fn=accuracy,
        engine=engine,
    )
    assert all(torch.equal(before[k], v) for k, v in template.state_dict().items())
    assert rec.meta["bn"] == "interpolate" and rec.losses.shape == (5, 5) and rec.metrics.shape == (5, 5)
    own = [naive_point(m, weights(m), batches) for m in models]
    np.testing.assert_allclose(rec.meta["point_losses"], own, atol=1e-6)  # each model, own statistics
    own_acc = [naive_point(m, weights(m), batches, fn=accuracy) for m in models]
    np.testing.assert_allclose(rec.meta["point_metrics"], own_acc, atol=1e-6)
    points = np.asarray(rec.meta["points"])
    assert rec.path.shape == (3, 2) and rec.path2.shape == (3, 2)
    np.testing.assert_allclose(rec.path[0], points[0], atol=1e-5)  # both paths start at w0 ...
    np.testing.assert_allclose(rec.path[-1], points[1], atol=1e-5)  # ... and end at their solution
    np.testing.assert_allclose(rec.path2[-1], points[2], atol=1e-5)
    every = np.concatenate([points, rec.path, rec.path2])
    assert rec.xs.min() < every[:, 0].min() and rec.xs.max() > every[:, 0].max()
    assert rec.ys.min() < every[:, 1].min() and rec.ys.max() > every[:, 1].max()
    # A grid point inside the triangle against a model copy with barycentric statistics.
    plane = plane_through(*(weights(m) for m in models))
    bufs = [buffer_snapshot(m) for m in models]
    inside = [(i, j) for i in range(5) for j in range(5) if _inside(points, np.array([rec.xs[j], rec.ys[i]]))]
    assert inside
    for i, j in inside[:2]:
        x, y = rec.xs[j], rec.ys[i]
        s, t = np.linalg.solve(np.stack([points[1], points[2]], axis=1), [x, y])
        point = [o + x * a + y * b for o, a, b in zip(plane.origin, *plane.directions)]
        buf = {n: bufs[0][n] + s * (bufs[1][n] - bufs[0][n]) + t * (bufs[2][n] - bufs[0][n]) for n in bufs[0]}
        assert rec.losses[i, j] == pytest.approx(naive_point(init, point, batches, buf), rel=1e-5)


def _triangle_samples(points, n=1500):
    """A dense barycentric sampling of the triangle: the points and their ``(s, t)``."""
    s, t = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    keep = s + t <= 1
    st = np.stack([s[keep], t[keep]], axis=1)
    return points[0] + st @ (points[1:] - points[0]), st


def _brute_nearest(samples, p):
    """The nearest of the samples to ``p``, and its ``(s, t)``."""
    points, st = samples
    k = int(np.argmin(((points - p) ** 2).sum(axis=1)))
    return points[k], st[k]


def test_statistics_outside_the_triangle_are_the_nearest_points():
    # Against a dense sampling of the triangle: an obtuse, a thin and a right triangle, points all round.
    rng = np.random.default_rng(0)
    for points in (
        np.array([[0.0, 0.0], [3.0, 0.0], [2.6, 0.4]]),
        np.array([[0.0, 0.0], [1.0, 0.0], [-2.0, 0.3]]),
        np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]]),
    ):
        weights_ = rng.dirichlet(np.ones(3), size=5)  # and a few inside
        coords = np.concatenate([rng.uniform(-2.5, 4.0, size=(40, 2)), weights_ @ points])
        nearest = nearest_point_of_triangle(points, coords)
        st = barycentric_buffer_coefficients(points, coords)
        samples = _triangle_samples(points, n=600)
        for p, q, c in zip(coords, nearest, st):
            ref, _ = _brute_nearest(samples, p)
            # Not farther than the best sample, and within the sampling's spacing of it.
            assert np.linalg.norm(p - q) <= np.linalg.norm(p - ref) + 1e-12
            assert np.linalg.norm(q - ref) < 0.02
            np.testing.assert_allclose(points[0] + c @ (points[1:] - points[0]), q, atol=1e-9)
            assert c.min() >= 0 and c.sum() <= 1 + 1e-12
        inside = [_inside(points, p) for p in coords]
        assert any(inside) and not all(inside)
        np.testing.assert_array_equal(nearest[inside], coords[inside])  # inside: the point itself


def test_shared_plane_outside_the_triangle_uses_the_nearest_points_statistics(three_runs):
    init, (run1, run2), _, batches = three_runs
    models = (init, run1, run2)
    rec = shared_plane_surface(
        copy.deepcopy(run1),
        ce,
        batches,
        *(weights(m) for m in models),
        resolution=7,
        margin=0.6,
        buffers=[buffer_snapshot(m) for m in models],
    )
    points = np.asarray(rec.meta["points"])
    plane = plane_through(*(weights(m) for m in models))
    bufs = [buffer_snapshot(m) for m in models]
    outside = [
        (i, j) for i in range(7) for j in range(7) if not _inside(points, np.array([rec.xs[j], rec.ys[i]]))
    ]
    checked = 0
    samples = _triangle_samples(points)
    for i, j in outside[::4]:
        x, y = rec.xs[j], rec.ys[i]
        _, (s, t) = _brute_nearest(samples, np.array([x, y]))
        point = [o + x * a + y * b for o, a, b in zip(plane.origin, *plane.directions)]
        buf = {n: bufs[0][n] + s * (bufs[1][n] - bufs[0][n]) + t * (bufs[2][n] - bufs[0][n]) for n in bufs[0]}
        assert rec.losses[i, j] == pytest.approx(naive_point(init, point, batches, buf), rel=2e-4)
        checked += 1
    assert checked >= 6


def _inside(points, p):
    s, t = np.linalg.solve(np.stack([points[1] - points[0], points[2] - points[0]], axis=1), p - points[0])
    return s >= 0 and t >= 0 and s + t <= 1


@pytest.fixture(scope="module")
def two_seeds():
    batches = bn_batches(4)
    return [train_steps(bn_cnn(seed), batches, epochs=3) for seed in (1, 2)], batches[:3]


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_barrier_between_two_seeds(two_seeds, engine):
    (m1, m2), batches = two_seeds
    template = copy.deepcopy(m1)
    template.train()
    before = {k: v.clone() for k, v in template.state_dict().items()}
    w1, w2, b1, b2 = weights(m1), weights(m2), buffer_snapshot(m1), buffer_snapshot(m2)
    kw = {"resolution": 5, "engine": engine, "metric_fn": accuracy}
    fixed = barrier(template, ce, batches, w1, w2, b1, b2, bn="recompute", **kw)
    naive = barrier(template, ce, batches, w1, w2, b1, b2, bn="interpolate", **kw)
    assert all(torch.equal(before[k], v) for k, v in template.state_dict().items()) and template.training
    own = [naive_point(m, weights(m), batches) for m in (m1, m2)]
    for rec in (fixed, naive):  # both curves start and end at the models' own losses
        np.testing.assert_allclose(rec.losses[[0, -1]], own, atol=1e-6)
        assert rec.meta["endpoints"] == "own statistics"
    for a, value, naive_value in zip(fixed.alphas[1:-1], fixed.losses[1:-1], naive.losses[1:-1]):
        point = [(1 - a) * x + a * y for x, y in zip(w1, w2)]
        assert value == pytest.approx(naive_point(m1, point, batches, recompute=True), rel=1e-5)
        buf = {n: (1 - a) * b1[n] + a * b2[n] for n in b1}
        assert naive_value == pytest.approx(naive_point(m1, point, batches, buf), rel=1e-5)
    assert np.abs(fixed.losses - naive.losses).max() > 0.05  # re-estimating statistics changes the curve
    chord = (1 - fixed.alphas) * fixed.losses[0] + fixed.alphas * fixed.losses[-1]
    assert fixed.meta["barrier"] == pytest.approx((fixed.losses - chord).max())
    assert fixed.meta["barrier"] >= 0 and fixed.meta["bn"] == "recompute"
    acc = [naive_point(m, weights(m), batches, fn=accuracy) for m in (m1, m2)]
    np.testing.assert_allclose(fixed.metrics[[0, -1]], acc, atol=1e-6)
    m_chord = (1 - fixed.alphas) * fixed.metrics[0] + fixed.alphas * fixed.metrics[-1]
    assert fixed.meta["metric_below_chord"] == pytest.approx((m_chord - fixed.metrics).max())
    # 3 interior points x (loss + metric + recompute) + 2 endpoints x (loss + metric), per batch.
    assert fixed.meta["forward_passes"] == (3 * 3 + 2 * 2) * len(batches)


def test_barrier_without_buffers_recomputes_the_endpoints_and_bad_arguments(two_seeds):
    (m1, m2), batches = two_seeds
    w1, w2 = weights(m1), weights(m2)
    rec = barrier(m1, ce, batches, w1, w2, resolution=3)
    assert rec.meta["endpoints"] == "recomputed"
    assert rec.losses[0] == pytest.approx(naive_point(m1, w1, batches, recompute=True), rel=1e-5)
    assert rec.meta["distance"] == pytest.approx(
        float(flatten(w2, torch.float64).sub(flatten(w1, torch.float64)).norm())
    )
    with pytest.raises(ValueError, match="`buffers2`"):
        barrier(m1, ce, batches, w1, w2, buffers1=buffer_snapshot(m1))
    with pytest.raises(ValueError, match="`bn`='interpolate'"):
        barrier(m1, ce, batches, w1, w2, bn="interpolate")
    with pytest.raises(ValueError, match="`resolution`"):
        barrier(m1, ce, batches, w1, w2, resolution=2)
    with pytest.raises(ValueError, match="`w2`"):
        barrier(m1, ce, batches, w1, w2[:-1])
    assert [n for n, _ in landscape_parameters(m1)]  # the template is intact
