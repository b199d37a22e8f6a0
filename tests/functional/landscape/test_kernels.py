"""The loop engine's exact max pooling: PyTorch's values bit for bit, used only where exact."""

import copy

import numpy as np
import pytest
import torch
from helpers.exact_hessian import ce as _ce
from torch import nn
from torch.nn import functional as F

from lightning_landscape.functional import filter_normalized_directions, landscape_parameters, loss_surface
from lightning_landscape.functional.landscape import engine as engine_module
from lightning_landscape.functional.landscape import kernels
from lightning_landscape.functional.landscape.kernels import fast_pooling, max_pool2d_exact, uses_max_pooling


@pytest.mark.parametrize(
    ("shape", "kernel"),
    [((4, 3, 8, 8), 2), ((2, 5, 9, 7), 2), ((2, 3, 9, 9), 3), ((3, 6, 10), (2, 3)), ((1, 2, 6, 8), (3, 2))],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_max_pool_is_bit_identical(shape, kernel, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=dtype)
    x.view(-1)[::7] = 0.0  # ties
    x.view(-1)[3] = float("inf")
    x.view(-1)[11] = -float("inf")
    x.view(-1)[20] = float("nan")
    expected = F.max_pool2d(x, kernel)
    got = max_pool2d_exact(x, kernel if isinstance(kernel, tuple) else (kernel, kernel))
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


def _count_exact(monkeypatch):
    calls = []
    original = kernels.max_pool2d_exact

    def counted(x, kernel):
        calls.append(kernel)
        return original(x, kernel)

    monkeypatch.setattr(kernels, "max_pool2d_exact", counted)
    return calls


def test_only_exact_cases_take_the_substitute(monkeypatch):
    calls = _count_exact(monkeypatch)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), fast_pooling():
        assert torch.equal(nn.MaxPool2d(2)(x), F.max_pool2d(x, 2, stride=2))
        assert len(calls) == 2
        others = [
            lambda: F.max_pool2d(x, 3, stride=1),  # overlapping windows
            lambda: F.max_pool2d(x, 2, padding=1),
            lambda: F.max_pool2d(x, 2, dilation=2),
            lambda: F.max_pool2d(x, 3, ceil_mode=True),  # a partial window at the edge
            lambda: F.max_pool2d(x, 2, return_indices=True)[0],
            lambda: F.max_pool2d(x.transpose(2, 3), 2),  # not contiguous
        ]
        values = [f() for f in others]
    assert len(calls) == 2  # none of those
    reference = [f() for f in others]
    assert all(torch.equal(a, b) for a, b in zip(values, reference))
    with fast_pooling():  # gradients wanted: PyTorch's kernel
        F.max_pool2d(x.requires_grad_(), 2).sum().backward()
    assert len(calls) == 2


class PoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 3)
        )

    def forward(self, x):
        return self.net(x)


def test_loop_engine_is_unchanged_bit_for_bit_and_matches_a_naive_reference(monkeypatch):
    torch.manual_seed(0)
    model = PoolNet()
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(8, 2, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(2)
    ]
    params = [p for _, p in landscape_parameters(model)]
    dirs = filter_normalized_directions(params, seed=2)
    calls = _count_exact(monkeypatch)
    fast = loss_surface(model, _ce, batches, dirs, resolution=5, engine="loop").losses
    assert len(calls) == 25 * 2  # one pooling per point and batch took the substitute
    monkeypatch.setattr(engine_module, "uses_max_pooling", lambda m: False)
    plain = loss_surface(model, _ce, batches, dirs, resolution=5, engine="loop").losses
    assert len(calls) == 50
    np.testing.assert_array_equal(fast, plain)
    # independent: a deep copy per point, weights set under no_grad, float64
    grid = np.linspace(-1.0, 1.0, 5)
    ref = np.empty((5, 5))
    with torch.no_grad():
        for i, b in enumerate(grid):
            for j, a in enumerate(grid):
                m = copy.deepcopy(model).double().eval()
                for p, w, d1, d2 in zip(m.parameters(), params, *dirs):
                    p.copy_(w.double() + float(a) * d1.double() + float(b) * d2.double())
                ref[i, j] = np.mean([float(_ce(m, (x.double(), y))) for x, y in batches])
    np.testing.assert_allclose(fast, ref, rtol=1e-5, atol=1e-6)
    assert np.ptp(ref) > 1e-2


def test_used_only_for_models_with_max_pooling():
    assert uses_max_pooling(PoolNet()) and not uses_max_pooling(nn.Linear(2, 2))
    assert not uses_max_pooling(torch.compile(PoolNet()))  # a compiled graph has its own kernels
