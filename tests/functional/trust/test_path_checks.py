"""Path-on-plane checks: random-walk calibration, brute-force baselines, bilinear interpolation, true
losses at snapshots against naive evaluation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers.exact_hessian import Reference, ce, cnn, make_batches

from lightning_landscape.functional import (
    loss_surface,
    path_loss_check,
    path_plane_fit,
    random_walk_baseline,
    random_walk_verdict,
    snapshot_losses,
    trajectory_pca,
)
from lightning_landscape.functional.trust.path import bilinear, subsample
from lightning_landscape.records.record import SurfaceRecord


def _walk(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` snapshots of a Gaussian random walk and the centre one step after the last."""
    g = torch.Generator().manual_seed(seed)
    positions = torch.randn(n + 1, dim, generator=g, dtype=torch.float64).cumsum(0)
    return positions[:n], positions[n]


@pytest.mark.parametrize("centred", [False, True])
def test_a_pure_random_walk_is_not_called_structured_in_95_percent_of_seeds(centred):
    n, dim = 16, 400
    calls = []
    for seed in range(100):
        snaps, centre = _walk(n, dim, seed)
        pca = trajectory_pca(snaps, centre, centred=centred)
        verdict = random_walk_verdict(pca.explained_variance_ratio.tolist(), n, dim, pca.convention)
        calls.append(verdict.structured)
    assert sum(not c for c in calls) >= 95


def test_a_straight_or_drifting_path_is_structured():
    n, dim = 16, 400
    g = torch.Generator().manual_seed(0)
    drift = torch.randn(dim, generator=g, dtype=torch.float64)
    snaps, centre = _walk(n, dim, 1)
    drifting = snaps + torch.arange(n, dtype=torch.float64)[:, None] * 3 * drift
    pca = trajectory_pca(drifting, centre + n * 3 * drift)
    verdict = random_walk_verdict(pca.explained_variance_ratio.tolist(), n, dim)
    assert verdict.structured and verdict.p_value < 0.01
    assert random_walk_verdict([1.0, 0.0], n, dim, "centred").structured


@pytest.mark.parametrize("convention", ["offsets", "centred"])
def test_the_wishart_baseline_matches_brute_force_random_walks(convention):
    n, dim = 10, 50
    base = random_walk_baseline(n, dim, convention, samples=2000, seed=1)
    brute = []
    for seed in range(300):
        snaps, centre = _walk(n, dim, 1000 + seed)
        brute.append(
            float(trajectory_pca(snaps, centre, centred=convention == "centred").explained_variance_ratio[0])
        )
    # the two distributions agree: medians and upper quantiles within sampling error
    assert np.median(brute) == pytest.approx(np.median(base.pc1), abs=0.02)
    assert np.quantile(brute, 0.9) == pytest.approx(np.quantile(base.pc1, 0.9), abs=0.03)


def test_uneven_times_change_the_baseline_and_even_times_do_not():
    even = random_walk_baseline(8, 100, samples=500)
    same = random_walk_baseline(8, 100, samples=500, times=list(range(9)))
    np.testing.assert_allclose(even.pc1, same.pc1)
    # the centre right at the last snapshot: one offset fewer, the rest a shorter walk
    at_last = random_walk_baseline(8, 100, samples=500, times=[*range(8), 7])
    assert abs(np.median(at_last.pc1) - np.median(even.pc1)) > 1e-3
    with pytest.raises(ValueError, match="times"):
        random_walk_baseline(8, 100, times=[0, 1])


def test_on_plane_share_and_distances_against_a_direct_projection():
    g = torch.Generator().manual_seed(3)
    snaps, centre = torch.randn(7, 40, generator=g, dtype=torch.float64), torch.zeros(40, dtype=torch.float64)
    for centred in (False, True):
        pca = trajectory_pca(snaps, centre, centred=centred)
        fit = path_plane_fit(pca)
        v = pca.components.double()
        d = snaps - centre
        residual = d - (d @ v.T) @ v
        np.testing.assert_allclose(fit.distances, residual.norm(dim=1).numpy(), atol=1e-9)
        share = 1 - float((residual**2).sum() / (d**2).sum())
        assert fit.on_plane_share == pytest.approx(share, abs=1e-12)
        if not centred:  # offsets convention: the share is the plane's explained variance
            assert share == pytest.approx(float(pca.explained_variance_ratio.sum()), abs=1e-12)


def test_bilinear_is_exact_on_bilinear_functions_and_never_extrapolates():
    xs, ys = np.linspace(-1, 2, 4), np.array([-1.0, -0.5, 0.0, 1.5])
    gx, gy = np.meshgrid(xs, ys)
    rec = SurfaceRecord(xs, ys, 1 + 2 * gx - 3 * gy + 0.5 * gx * gy)
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-1, 2, 30), rng.uniform(-1, 1.5, 30)])
    np.testing.assert_allclose(bilinear(rec, pts), 1 + 2 * pts[:, 0] - 3 * pts[:, 1] + 0.5 * pts.prod(1))
    assert np.isnan(bilinear(rec, np.array([[2.1, 0.0], [0.0, -1.01]]))).all()
    rec.losses[0, 0] = np.nan
    assert np.isnan(bilinear(rec, np.array([[-0.9, -0.9]])))[0]


def test_snapshot_losses_match_a_naive_copy_and_leave_the_model_as_it_was():
    model, batches = cnn(0), make_batches("cnn")
    state = copy.deepcopy(model.state_dict())
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    g = torch.Generator().manual_seed(0)
    snaps = flat + 0.1 * torch.randn(5, flat.numel(), generator=g, dtype=torch.float64)
    losses = snapshot_losses(model, ce, batches, snaps, indices=[0, 3, 4])
    ref = Reference(model, batches)  # functional_call in eval mode: independent of the perturbation code
    np.testing.assert_allclose(losses, [ref.loss_at(snaps[i]) for i in (0, 3, 4)], rtol=1e-12)
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    with pytest.raises(ValueError, match="indices"):
        snapshot_losses(model, ce, batches, snaps, indices=[5])


def test_path_loss_check_reports_where_the_contour_under_the_path_misleads():
    model, batches = cnn(0), make_batches("cnn")
    params = list(model.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    g = torch.Generator().manual_seed(1)
    snaps = flat + 0.05 * torch.randn(6, flat.numel(), generator=g, dtype=torch.float64)
    pca = trajectory_pca(snaps, flat)
    comps = [[t.clone() for t in _split(c, params)] for c in pca.components]
    surface = loss_surface(model, ce, batches, comps, resolution=5, span=float(pca.coords.abs().max()) * 1.3)
    true = snapshot_losses(model, ce, batches, snaps)
    check = path_loss_check(surface, pca.coords.numpy(), true)
    ref = Reference(model, batches)
    on_plane = [ref.loss_at(flat + pca.coords[i].double() @ pca.components.double()) for i in range(6)]
    # the surface value at a projection approximates the loss at the projected point, not at the snapshot
    assert check.outside == 0
    assert np.max(np.abs(check.surface_losses - on_plane)) < np.max(np.abs(true - on_plane)) + 1e-12
    assert check.max(relative=False) == pytest.approx(float(np.max(np.abs(true - check.surface_losses))))
    assert check.max() == pytest.approx(check.max(relative=False) / check.loss_range)


def _split(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, offset = [], 0
    for p in like:
        out.append(flat[offset : offset + p.numel()].view(p.shape))
        offset += p.numel()
    return out


def test_subsample_keeps_both_ends():
    assert subsample(64, 8).tolist() == [0, 9, 18, 27, 36, 45, 54, 63]
    with pytest.raises(ValueError, match="points"):
        subsample(10, 1)
