"""SAM and average-case sharpness against direct computations (torch.func) and analytic quadratics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.exact_hessian import Reference, ce, cnn, make_batches, mlp
from torch import nn

import lightning_landscape.functional.curvature.sharpness as sharpness_module
from lightning_landscape.functional import average_sharpness, loss_gradient, sam_sharpness


def _quadratic():
    """Linear least squares: L(w) = mean((X w - y)^2), so H = 2 X^T X / n exactly."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False).double()
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randn(8, 1, generator=g, dtype=torch.float64)
    mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()  # noqa: E731
    return model, [(x, y)], mse, 2 * x.T @ x / 8


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("build", [mlp, cnn], ids=["mlp", "cnn-batchnorm"])
def test_sam_matches_a_direct_computation(build, adaptive):
    model = build()
    batches = make_batches("cnn" if build is cnn else "mlp")
    ref = Reference(model, batches)
    rho = 0.1
    g = ref.grad()
    t = ref.w0.abs() if adaptive else torch.ones_like(ref.w0)
    e = rho * t * t * g / (t * g).norm()
    expected = ref.loss_at(ref.w0 + e) - ref.loss_at(ref.w0)
    res = sam_sharpness(model, ce, batches, rho=rho, adaptive=adaptive)
    assert res.sharpness == pytest.approx(expected, rel=1e-9, abs=1e-13)
    assert res.first_order == pytest.approx(rho * float((t * g).norm()), rel=1e-9)
    assert res.grad_norm == pytest.approx(float(g.norm()), rel=1e-9)
    assert res.loss == pytest.approx(ref.loss_at(ref.w0), rel=1e-12)
    assert res.curvature == pytest.approx(res.sharpness - res.first_order)
    assert model.training  # restored


def test_sam_on_a_quadratic_is_first_order_plus_half_the_curvature():
    model, batches, mse, h = _quadratic()
    rho = 0.3
    _, grad = loss_gradient(model, mse, batches)
    g = grad[0].reshape(-1)
    expected_curvature = 0.5 * rho**2 * float(g @ h @ g) / float(g @ g)
    res = sam_sharpness(model, mse, batches, rho=rho)
    assert res.first_order == pytest.approx(rho * float(g.norm()), rel=1e-12)
    assert res.curvature == pytest.approx(expected_curvature, rel=1e-9)


@pytest.mark.parametrize("adaptive", [False, True], ids=["plain", "adaptive"])
def test_average_sharpness_matches_a_direct_computation(adaptive, monkeypatch):
    model = mlp()
    batches = make_batches("mlp")
    ref = Reference(model, batches)
    sigma, samples, seed = 0.05, 7, 3
    # Reference: the documented draw order, one standard normal (float32, CPU) per parameter in turn.
    gen = torch.Generator().manual_seed(seed)
    params = [p for _, p in ref.named]
    expected = []
    for _ in range(samples):
        z = torch.cat([torch.randn(p.shape, generator=gen, dtype=torch.float32).reshape(-1) for p in params])
        d = sigma * z.double() * (ref.w0.abs() if adaptive else 1.0)
        expected.append(ref.loss_at(ref.w0 + d))
    centre = ref.loss_at(ref.w0)
    diffs = np.array(expected) - centre
    res = average_sharpness(model, ce, batches, sigma=sigma, samples=samples, adaptive=adaptive, seed=seed)
    np.testing.assert_allclose(res.losses, expected, rtol=1e-12)
    assert res.sharpness == pytest.approx(diffs.mean(), rel=1e-9)
    assert res.stderr == pytest.approx(diffs.std(ddof=1) / math.sqrt(samples), rel=1e-9)
    # Evaluating a few directions at a time gives the same numbers.
    monkeypatch.setattr(sharpness_module, "_CHUNK_ELEMENTS", 2 * ref.w0.numel())
    chunked = average_sharpness(
        model, ce, batches, sigma=sigma, samples=samples, adaptive=adaptive, seed=seed
    )
    np.testing.assert_allclose(chunked.losses, res.losses, rtol=1e-12)


@pytest.mark.parametrize("adaptive", [False, True], ids=["plain", "adaptive"])
def test_average_sharpness_of_a_quadratic_is_half_sigma_squared_trace(adaptive):
    model, batches, mse, h = _quadratic()
    sigma = 0.2
    w = model.weight.detach().reshape(-1)
    scale = w**2 if adaptive else torch.ones_like(w)
    expected = 0.5 * sigma**2 * float((torch.diag(h) * scale).sum())
    res = average_sharpness(model, mse, batches, sigma=sigma, samples=400, adaptive=adaptive, seed=0)
    assert res.stderr > 0
    assert abs(res.sharpness - expected) <= 4 * res.stderr, (res.sharpness, expected, res.stderr)


def test_bad_sharpness_arguments():
    model, batches = mlp(), make_batches("mlp")
    for kwargs, name in [({"rho": 0}, "rho"), ({"rho": -1.0}, "rho"), ({"rho": math.nan}, "rho")]:
        with pytest.raises(ValueError, match=f"`{name}`"):
            sam_sharpness(model, ce, batches, **kwargs)
    for kwargs, name in [({"sigma": 0}, "sigma"), ({"samples": 1}, "samples")]:
        with pytest.raises(ValueError, match=f"`{name}`"):
            average_sharpness(model, ce, batches, **kwargs)
    per_sample = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")  # noqa: E731
    with pytest.raises(ValueError, match="`loss_fn`"):
        sam_sharpness(model, per_sample, batches)
    with pytest.raises(ValueError, match="`loss_fn`"):
        average_sharpness(model, per_sample, batches)
    model[0].requires_grad_(False)
    with pytest.raises(ValueError, match="`params`"):
        sam_sharpness(model, ce, batches, params=[model[0].weight])


def test_non_finite_loss_gives_nan_and_a_warning():
    model, batches = mlp(), make_batches("mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    nan_loss = lambda m, b: ce(m, b) * math.nan  # noqa: E731
    with pytest.warns(RuntimeWarning, match="NaN"):
        res = sam_sharpness(model, nan_loss, batches)
    assert math.isnan(res.sharpness) and math.isnan(res.first_order)
    with pytest.warns(RuntimeWarning, match="NaN"):
        avg = average_sharpness(model, nan_loss, batches, samples=3)
    assert math.isnan(avg.sharpness) and math.isnan(avg.stderr)

    def far_is_inf(m, b):  # finite at w, infinite once the weights move far enough
        loss = ce(m, b)
        return loss if float(m[0].weight.abs().max()) < 5 else loss * math.inf

    with pytest.warns(RuntimeWarning, match="not finite"):
        avg = average_sharpness(model, far_is_inf, batches, sigma=10.0, samples=3)
    assert not math.isfinite(avg.sharpness)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_zero_gradient_gives_zero_sharpness():
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    batch = (torch.eye(2, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64))
    res = sam_sharpness(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), [batch])
    assert res.sharpness == 0.0 and res.first_order == 0.0
