"""Reliability indicators on cases where every number is known (a quadratic loss with a known Hessian,
exact Hessians of small nets, straight and random-walk trajectories, numpy SVD references)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from helpers.exact_hessian import Reference, ce, make_batches, mlp
from torch import nn

from lightning_landscape.functional import (
    ReliabilitySettings,
    ReliabilityThresholds,
    direction_sensitivity,
    distance_profile,
    filter_normalized_directions,
    landscape_reliability,
    loss_surface,
    random_direction,
    random_direction_curvature,
    reliability_cost,
    trajectory_pca,
)
from lightning_landscape.functional.trust.sensitivity import basin_threshold, crossing_distance

ROWS, COLS = 4, 5
P = ROWS * COLS
CENTRE_LOSS = 2.0


class Quadratic(nn.Module):
    """``loss = c + 0.5 (w - w*)^T H (w - w*)`` with ``w = w*`` at the start: the Hessian is ``H``.

    ``w`` is 2-D so that filter normalization has non-zero rows to scale to.
    """

    def __init__(self, eigenvalues: torch.Tensor, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=torch.float64))[0]
        self.register_buffer("q", q)
        self.register_buffer("lam", eigenvalues.double())
        self.register_buffer("h", q @ torch.diag(eigenvalues.double()) @ q.T)
        w_star = torch.randn(ROWS, COLS, generator=g, dtype=torch.float64) + 1.0
        self.register_buffer("w_star", w_star)
        self.w = nn.Parameter(w_star.clone())


def quad_loss(model: Quadratic, batch: object) -> torch.Tensor:
    d = (model.w - model.w_star).reshape(-1)
    return CENTRE_LOSS + 0.5 * d @ model.h @ d


def _quadratic(seed: int = 0) -> Quadratic:
    return Quadratic(torch.linspace(0.5, 8.0, P, dtype=torch.float64), seed)


def _flat(d: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in d])


# ----------------------------------------------------------------------------- distance sensitivity


@pytest.mark.parametrize("k", [0, 7, P - 1])
def test_basin_radius_along_eigen_directions_is_sqrt_2delta_over_lambda(k):
    model = _quadratic()
    direction = [model.q[:, k].reshape(ROWS, COLS).clone()]
    prof = distance_profile(model, quad_loss, [None], direction, delta=0.1)
    delta = 0.1 * CENTRE_LOSS
    expected = math.sqrt(2 * delta / float(model.lam[k]))
    # A power-law rise is interpolated exactly (log-log), so only rounding separates the two.
    assert prof.radius_pos == pytest.approx(expected, rel=1e-9)
    assert prof.radius_neg == pytest.approx(expected, rel=1e-9)
    assert prof.threshold == pytest.approx(delta)
    t = np.array([1e-3, 1e-2, 1e-1, 1.0, 10.0])
    np.testing.assert_allclose(prof.losses_pos, CENTRE_LOSS + 0.5 * float(model.lam[k]) * t**2, rtol=1e-12)


def test_basin_radius_of_a_non_power_law_rise_is_bracketed_by_the_grid():
    # rise = 0.5 a t^2 + b t^4: the crossing is interpolated between the two grid points around it, so it
    # is exact at those points and within the grid step (here a decade) in between; measured below.
    t = np.array([1e-3, 1e-2, 1e-1, 1.0, 10.0])
    a, b = 1.0, 50.0
    worst = 0.0
    for threshold in np.geomspace(1e-5, 1e3, 41):
        roots = np.roots([b, 0.0, 0.5 * a, 0.0, -threshold])
        true = float(max(r.real for r in roots if abs(r.imag) < 1e-9 and r.real > 0))
        est = crossing_distance(t, 0.5 * a * t**2 + b * t**4, threshold)
        k = int(np.searchsorted(t, true))
        lo, hi = (t[k - 1], t[k]) if 0 < k < len(t) else (0.0, t[0])
        assert lo * (1 - 1e-12) <= est <= hi * (1 + 1e-12)
        worst = max(worst, abs(est / true - 1))
    assert worst < 0.15  # measured 0.11, at the decade where t^2 gives way to t^4


def test_crossing_distance_edges():
    t = np.array([0.1, 1.0, 10.0])
    assert crossing_distance(t, [0.5, 2.0, 5.0], 0.125) == pytest.approx(0.05)  # quadratic below t[0]
    assert crossing_distance(t, [0.0, 0.01, 0.02], 1.0) == math.inf  # wider than the scan
    assert crossing_distance(t, [0.0, np.nan, 5.0], 1.0) == pytest.approx(0.1)  # non-finite = left
    assert crossing_distance(t, [-0.1, 0.9, 5.0], 0.4) == pytest.approx(0.1 + 0.5 / 1.0 * 0.9)  # linear
    with pytest.raises(ValueError, match="distances"):
        crossing_distance([1.0, 0.5], [0.0, 1.0], 0.1)
    assert basin_threshold(0.001) == 1e-3 and basin_threshold(-3.0) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="delta"):
        basin_threshold(1.0, delta=0.0)


# ----------------------------------------------------------------------------- direction sensitivity


def test_direction_sensitivity_matches_the_quadratic_form_along_each_direction():
    model = _quadratic()
    params = [model.w]
    sens = direction_sensitivity(model, quad_loss, [None], count=3, points=5, span=1.0, seed=4)
    drawn = filter_normalized_directions(params, count=5, seed=4)
    plane, extra = drawn[:2], drawn[2:]
    kappa = np.array([float(_flat(d) @ model.h @ _flat(d)) for d in extra])
    np.testing.assert_allclose(sens.curvatures, kappa, rtol=1e-9)
    np.testing.assert_allclose(sens.fit_curvatures, kappa, rtol=1e-9)
    np.testing.assert_allclose(sens.widths, 2 * np.sqrt(2 * 0.1 * CENTRE_LOSS / kappa), rtol=1e-9)
    assert sens.curvature_spread == pytest.approx(np.std(kappa, ddof=1) / np.mean(kappa))
    # the extra directions continue the plane's sequence: none of them is a plane axis
    for d in extra:
        for p in plane:
            assert not torch.allclose(d[0], p[0])
    assert sens.losses[:, 2].tolist() == [CENTRE_LOSS] * 3


def test_width_beyond_the_line_is_infinite_and_its_spread_unknown():
    model = _quadratic()
    sens = direction_sensitivity(model, quad_loss, [None], count=2, points=3, span=1e-3, seed=0)
    assert np.all(np.isinf(sens.widths)) and math.isnan(sens.width_spread)
    with pytest.raises(ValueError, match="points"):
        direction_sensitivity(model, quad_loss, [None], points=4)
    with pytest.raises(ValueError, match="span"):
        direction_sensitivity(model, quad_loss, [None], span=(-1.0, 2.0))


def test_random_direction_curvature_mean_is_trace_over_p_on_a_quadratic():
    model = _quadratic()
    est = random_direction_curvature(model, quad_loss, [None], count=200, step=0.3, seed=3)
    gen = torch.Generator().manual_seed(3)
    ref = []
    for _ in range(200):
        d = _flat(random_direction([model.w], gen))
        d = d / d.norm()
        ref.append(float(d @ model.h @ d))
    np.testing.assert_allclose(est.curvatures, ref, rtol=1e-8)  # exact per direction on a quadratic
    trace = float(model.lam.sum())
    agree = est.agreement(trace)
    assert agree["expected"] == pytest.approx(trace / P)
    assert abs(agree["z"]) < 4 and agree["ratio"] == pytest.approx(1.0, abs=0.1)


def test_random_direction_curvature_agrees_with_an_exact_hessian_trace():
    model, batches = mlp(0), make_batches("mlp")
    ref = Reference(model, batches)
    trace = float(torch.trace(ref.hessian()))
    est = random_direction_curvature(model, ce, batches, count=100, step=1e-3, seed=0)
    assert est.num_params == ref.w0.numel()
    assert abs(est.agreement(trace)["z"]) < 4


# ----------------------------------------------------------------------------- PCA conventions


def _curved_path(n: int = 12, dim: int = 60, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, 3, generator=g, dtype=torch.float64))[0].T
    t = torch.linspace(0, 1, n, dtype=torch.float64)[:, None]
    coef = torch.cat([3 * (1 - t), torch.sin(4 * t), 0.2 * torch.cos(7 * t)], dim=1)
    centre = torch.randn(dim, generator=g, dtype=torch.float64)
    return centre + coef @ basis, centre


@pytest.mark.parametrize("centred", [False, True])
def test_both_conventions_match_an_svd(centred):
    snaps, centre = _curved_path()
    pca = trajectory_pca(snaps, centre, centred=centred)
    d = (snaps - centre).numpy()
    x = d - d.mean(0) if centred else d
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    np.testing.assert_allclose(pca.explained_variance_ratio.numpy(), s[:2] ** 2 / (s**2).sum(), atol=1e-10)
    for k in range(2):
        v = pca.components[k].numpy()
        sign = np.sign(v @ vt[k])
        np.testing.assert_allclose(v * sign, vt[k], atol=1e-8)
        np.testing.assert_allclose(pca.coords[:, k].numpy() * sign, d @ vt[k], atol=1e-8)  # uncentred offsets
    assert pca.convention == ("centred" if centred else "offsets")
    np.testing.assert_allclose(pca.offset_norms.numpy(), np.linalg.norm(d, axis=1), rtol=1e-12)


def test_the_conventions_differ_on_a_curved_path():
    snaps, centre = _curved_path()
    a = trajectory_pca(snaps, centre).explained_variance_ratio
    b = trajectory_pca(snaps, centre, centred=True).explained_variance_ratio
    assert abs(float(a[0] - b[0])) > 0.05


def test_a_straight_path_is_entirely_on_the_plane_in_both_conventions():
    from lightning_landscape.functional import path_plane_fit

    g = torch.Generator().manual_seed(0)
    direction, centre = torch.randn(100, generator=g), torch.randn(100, generator=g)
    for n in (2, 9):
        snaps = centre + torch.linspace(1, 0.1, n)[:, None] * direction
        for centred in (False, True):
            fit = path_plane_fit(trajectory_pca(snaps, centre, centred=centred))
            assert fit.on_plane_share == pytest.approx(1.0, abs=1e-9)
            assert fit.max_relative_distance < 1e-6


# ----------------------------------------------------------------------------- one call, costed


class Counting:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, model, batch):
        self.calls += 1
        return self.fn(model, batch)


def test_landscape_reliability_counts_its_cost_and_leaves_no_trace():
    model = _quadratic()
    g = torch.Generator().manual_seed(5)
    t = torch.linspace(1.0, 0.05, 12, dtype=torch.float64)[:, None]
    a, b = torch.randn(2, P, generator=g, dtype=torch.float64)
    offsets = t * a + t**2 * b  # a curved path
    snaps = (
        model.w.detach().reshape(-1) + offsets + 1e-3 * torch.randn(12, P, generator=g, dtype=torch.float64)
    )
    pca = trajectory_pca(snaps, model.w.detach().reshape(-1))
    plane = [[c.reshape(ROWS, COLS)] for c in pca.components]
    surface = loss_surface(model, quad_loss, [None, None], plane, resolution=9, span=1.5)
    before = model.w.detach().clone()
    rng = torch.get_rng_state()
    counting = Counting(quad_loss)
    settings = ReliabilitySettings(trace_directions=2)
    record, lines = landscape_reliability(
        model, counting, [None, None], plane, surface, pca=pca, snapshots=snaps, settings=settings, trace=1.0
    )
    assert counting.calls == 2 * reliability_cost(settings, snapshots=12)  # two probe batches
    assert torch.equal(model.w.detach(), before) and torch.equal(torch.get_rng_state(), rng)
    scalars = record.scalars()
    for key in ("direction/curvature_spread", "distance/basin_radius_axis1", "path/on_plane_share",
                "path/loss_disagreement_max", "path/pc1", "failed_checks"):  # fmt: skip
        assert f"reliability/{key}" in scalars
    # along the PCA axes (unit vectors) the radius is sqrt(2 delta / v^T H v)
    v = pca.components[0].double()
    assert scalars["reliability/distance/basin_radius_axis1"] == pytest.approx(
        math.sqrt(2 * 0.1 * CENTRE_LOSS / float(v @ model.h @ v)), rel=1e-9
    )
    # the true path losses are those of the quadratic at the snapshots
    idx = [0, 2, 3, 5, 6, 8, 9, 11]  # subsample(12, 8)
    d = snaps[idx] - model.w_star.reshape(-1)
    np.testing.assert_allclose(record.path_losses, CENTRE_LOSS + 0.5 * ((d @ model.h) * d).sum(1), rtol=1e-12)
    assert [ln.meta["distance_axis"] for ln in lines] == [0, 1] and lines[0].meta["directions"] == "distance"
    with pytest.raises(ValueError, match="snapshots"):
        landscape_reliability(model, quad_loss, [None], plane, surface, pca=pca, snapshots=snaps[:5])


def test_default_cost_is_at_most_a_quarter_of_a_default_landscape():
    periodic = 11**2 + 41  # surface + interpolation line, per probe batch (metrics not counted)
    assert reliability_cost(snapshots=64) / periodic <= 0.25
    assert reliability_cost(snapshots=3) == 3 * 4 + 2 * 2 * 5 + 3
    assert reliability_cost(ReliabilitySettings(directions=0, distances=(), path_points=0), 64) == 0


def test_settings_and_thresholds_reject_bad_values():
    with pytest.raises(ValueError, match="direction_points"):
        ReliabilitySettings(direction_points=4)
    with pytest.raises(ValueError, match="distances"):
        ReliabilitySettings(distances=(1.0, 0.1))
    with pytest.raises(ValueError, match="path_points"):
        ReliabilitySettings(path_points=1)
    with pytest.raises(ValueError, match="alpha"):
        ReliabilityThresholds(alpha=1.5)
    with pytest.raises(ValueError, match="min_on_plane_share"):
        ReliabilityThresholds(min_on_plane_share=2.0)


def test_the_model_is_left_as_it_was_with_batchnorm_and_dropout():
    from helpers.exact_hessian import cnn

    model, batches = cnn(0), make_batches("cnn")
    state = copy.deepcopy(model.state_dict())
    params = [p for p in model.parameters()]
    d1, d2 = filter_normalized_directions(params, count=2, seed=0)
    surface = loss_surface(model, ce, batches, (d1, d2), resolution=3)
    landscape_reliability(model, ce, batches, (d1, d2), surface, settings=ReliabilitySettings(directions=1))
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
