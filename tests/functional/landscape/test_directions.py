import pytest
import torch
from torch import nn

from lightning_landscape.functional import (
    filter_normalize,
    filter_normalized_directions,
    landscape_parameters,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


def test_each_filter_has_the_norm_of_the_weights_filter():
    params = [p for _, p in landscape_parameters(_net())]
    (d,) = filter_normalized_directions(params, count=1, seed=3)
    for t, p in zip(d, params):
        if p.dim() <= 1:
            assert torch.count_nonzero(t) == 0
            continue
        for i in range(p.shape[0]):  # naive loop over filters
            torch.testing.assert_close(t[i].norm(), p[i].detach().norm(), rtol=1e-5, atol=1e-6)


def test_include_1d_rescales_biases_and_norm_weights_as_a_whole():
    params = [p for _, p in landscape_parameters(_net())]
    (d,) = filter_normalized_directions(params, count=1, seed=3, include_1d=True)
    for t, p in zip(d, params):
        if p.dim() == 1 and p.norm() > 0:  # a zero bias gets a zero direction (its norm is 0)
            assert torch.count_nonzero(t) == t.numel()
            torch.testing.assert_close(t.norm(), p.detach().norm(), rtol=1e-5, atol=1e-6)


def test_directions_are_seeded_gaussian_not_uniform():
    big = nn.Linear(400, 300)
    params = list(big.parameters())
    a1, a2 = filter_normalized_directions(params, seed=7)
    b1, b2 = filter_normalized_directions(params, seed=7)
    c1, _ = filter_normalized_directions(params, seed=8)
    assert torch.equal(a1[0], b1[0]) and torch.equal(a2[0], b2[0])
    assert not torch.equal(a1[0], c1[0]) and not torch.equal(a1[0], a2[0])
    # Direction before rescaling is N(0, 1): rescaling a row keeps its sign pattern and zero mean.
    row_normalized = a1[0] / a1[0].norm(dim=1, keepdim=True)
    assert abs(row_normalized.mean().item()) < 2e-3  # uniform [0, 1) would give a large positive mean
    assert (a1[0] < 0).float().mean().item() == pytest.approx(0.5, abs=0.02)


def test_directions_follow_the_parameters_device_and_shape():
    params = [p for _, p in landscape_parameters(_net())]
    d1, d2 = filter_normalized_directions(params, seed=0)
    assert [t.shape for t in d1] == [p.shape for p in params]
    assert all(t.device == p.device and t.dtype == torch.float32 for t, p in zip(d2, params))


def test_filter_normalize_on_a_hand_computed_case():
    w = [torch.tensor([[3.0, 4.0], [0.0, 2.0]])]
    d = filter_normalize([torch.tensor([[0.0, 2.0], [1.0, 1.0]])], w)
    expected = torch.tensor([[0.0, 5.0], [2 / 2**0.5, 2 / 2**0.5]])
    torch.testing.assert_close(d[0], expected)


def test_count_must_be_positive():
    with pytest.raises(ValueError, match="`count`"):
        filter_normalized_directions([torch.zeros(2, 2)], count=0)
