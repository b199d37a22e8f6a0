import pytest
import torch

from lightning_landscape.functional import trajectory_pca


def _naive(snaps: torch.Tensor, centre: torch.Tensor):
    d = (snaps - centre).double()
    _, s, vh = torch.linalg.svd(d, full_matrices=False)
    return vh[:2], (s[:2] ** 2) / (s**2).sum(), d @ vh[:2].T


def test_matches_an_svd_of_the_offsets():
    g = torch.Generator().manual_seed(0)
    snaps = torch.randn(9, 50, generator=g) * torch.linspace(3, 0.1, 50)
    centre = torch.randn(50, generator=g)
    pca = trajectory_pca(snaps, centre)
    vh, ratio, coords = _naive(snaps, centre)
    for k in range(2):
        sign = torch.sign(pca.components[k].double() @ vh[k])
        torch.testing.assert_close(pca.components[k].double() * sign, vh[k], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(pca.coords[:, k] * sign, coords[:, k], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pca.explained_variance_ratio, ratio, atol=1e-6, rtol=1e-6)


def test_components_are_orthonormal_and_coords_are_least_squares():
    g = torch.Generator().manual_seed(1)
    snaps, centre = torch.randn(6, 30, generator=g), torch.zeros(30)
    pca = trajectory_pca(snaps, centre)
    v = pca.components.double()
    torch.testing.assert_close(v @ v.T, torch.eye(2, dtype=torch.float64), atol=1e-6, rtol=0)
    lstsq = torch.linalg.lstsq(v.T, (snaps - centre).double().T).solution.T
    torch.testing.assert_close(pca.coords, lstsq, atol=1e-5, rtol=1e-5)


def test_a_path_in_a_plane_is_recovered_exactly():
    plane = torch.linalg.qr(torch.randn(200, 2, generator=torch.Generator().manual_seed(2)))[0].T
    t = torch.linspace(0, 1, 12)
    coefficients = torch.stack([3 * (1 - t), torch.sin(3 * t)], dim=1)
    centre = torch.randn(200)
    snaps = centre + coefficients @ plane
    pca = trajectory_pca(snaps, centre)
    assert pca.explained_variance_ratio.sum().item() == pytest.approx(1.0, abs=1e-9)
    recon = pca.coords.float() @ pca.components + centre
    torch.testing.assert_close(recon, snaps, atol=1e-4, rtol=1e-4)


def test_degenerate_trajectory_gets_an_orthogonal_second_axis():
    snaps = torch.stack([torch.ones(10), torch.zeros(10)])
    pca = trajectory_pca(snaps, torch.zeros(10))
    assert pca.explained_variance_ratio.tolist() == pytest.approx([1.0, 0.0])
    assert abs(float(pca.components[0] @ pca.components[1])) < 1e-6
    assert float(pca.components[1].norm()) == pytest.approx(1.0, abs=1e-6)


def test_large_parameter_count_uses_the_small_gram_matrix():
    # 3 x 4M float32 snapshots; a P x P matrix could never be formed here.
    g = torch.Generator().manual_seed(3)
    snaps = torch.randn(3, 4_000_000, generator=g)
    pca = trajectory_pca(snaps, torch.zeros(4_000_000))
    assert pca.components.shape == (2, 4_000_000)
    assert pca.explained_variance_ratio.sum() <= 1.0 + 1e-9


def test_empty_input_is_rejected():
    with pytest.raises(ValueError, match="snapshots"):
        trajectory_pca([], torch.zeros(3))
