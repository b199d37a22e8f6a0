"""Hessian-vector products, Lanczos eigenvalues, Hutchinson trace and Hessian directions against the
exact float64 Hessian from ``torch.autograd.functional.hessian``."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from helpers.exact_hessian import Reference, ce, cnn, frozen_mlp, make_batches, mlp
from torch import nn

from lightning_landscape.functional import (
    hessian_directions,
    hessian_eigenvalues,
    hessian_trace,
    hessian_vector_product,
    landscape_parameters,
    loss_surface,
)

MODELS = {"mlp": (mlp, "mlp"), "cnn-batchnorm": (cnn, "cnn"), "frozen-layer": (frozen_mlp, "mlp")}


def _setup(name: str, n_batches: int = 2):
    build, kind = MODELS[name]
    model = build()
    batches = make_batches(kind, n_batches)
    ref = Reference(model, batches)
    return model, batches, ref


def _flat(direction):
    return torch.cat([t.reshape(-1) for t in direction])


@pytest.fixture(scope="module")
def exact():
    """Exact Hessian and eigenvalues per model, computed once."""
    out = {}
    for name in MODELS:
        _model, _batches, ref = _setup(name)
        h = ref.hessian()
        out[name] = (h, torch.linalg.eigvalsh(h).numpy())
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_hvp_matches_exact_hessian(name, exact):
    model, batches, _ref = _setup(name)
    h, _ = exact[name]
    params = [p for _, p in landscape_parameters(model)]
    g = torch.Generator().manual_seed(3)
    v = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
    hv = _flat(hessian_vector_product(model, ce, batches, v))
    torch.testing.assert_close(hv, h @ _flat(v), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
def test_lanczos_extremes_match_exact_eigenvalues(name, exact):
    model, batches, _ref = _setup(name)
    h, evals = exact[name]
    n = h.shape[0]
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    res = hessian_eigenvalues(model, ce, batches, k=3, which="both", max_iter=n, tol=1e-12)
    top, bottom = res.eigenvalues[:3], res.eigenvalues[3:]
    np.testing.assert_allclose(top, evals[::-1][:3], rtol=1e-6)
    np.testing.assert_allclose(bottom, evals[:3], rtol=1e-6, atol=1e-9 * evals[-1])
    assert res.lambda_max == pytest.approx(evals[-1], rel=1e-6)
    assert res.lambda_min == pytest.approx(evals[0], rel=1e-6)
    assert res.converged and np.all(res.residuals <= 1e-8 * evals[-1])


@pytest.mark.parametrize("name", ["mlp", "cnn-batchnorm"])
def test_lanczos_converges_early_and_reports_true_residuals(name, exact):
    model, batches, _ = _setup(name)
    h, evals = exact[name]
    res = hessian_eigenvalues(model, ce, batches, k=1, max_iter=40, tol=1e-7, return_eigenvectors=True)
    assert res.converged and res.iterations < h.shape[0]
    assert res.lambda_max == pytest.approx(evals[-1], rel=1e-6)
    assert math.isnan(res.lambda_min)
    y = _flat(res.eigenvectors[0])
    assert float(y.norm()) == pytest.approx(1.0, abs=1e-10)
    true_residual = float((h @ y - res.lambda_max * y).norm())
    assert true_residual == pytest.approx(float(res.residuals[0]), rel=0.05, abs=1e-12)


def test_lanczos_beats_few_iterations_of_itself():
    """With 3 iterations lambda_max is not yet exact on the MLP: the residual says so."""
    model, batches, ref = _setup("mlp")
    evals = torch.linalg.eigvalsh(ref.hessian()).numpy()
    few = hessian_eigenvalues(model, ce, batches, max_iter=3, tol=1e-12)
    assert not few.converged and few.iterations == 3
    err = abs(few.lambda_max - evals[-1])
    assert err > 0 and few.lambda_max <= evals[-1] + 1e-12  # Ritz values lie inside the spectrum
    assert few.residuals[0] > 1e-6


@pytest.mark.parametrize("name", list(MODELS))
def test_trace_within_four_standard_errors(name, exact):
    model, batches, _ = _setup(name)
    h, _ = exact[name]
    res = hessian_trace(model, ce, batches, samples=120, seed=1)
    exact_trace = float(torch.trace(h))
    assert res.stderr > 0
    assert abs(res.trace - exact_trace) <= 4 * res.stderr, (res.trace, exact_trace, res.stderr)
    # The same seed gives the same probes.
    again = hessian_trace(model, ce, batches, samples=120, seed=1)
    np.testing.assert_array_equal(res.samples, again.samples)


def test_trace_of_a_quadratic_is_exact_for_a_diagonal_hessian():
    model = nn.Linear(3, 1, bias=False).double()
    x = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    batch = (x, torch.zeros(3, 1, dtype=torch.float64))
    res = hessian_trace(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), [batch], samples=5)
    assert res.trace == pytest.approx(2 * (1 + 4 + 9) / 3, rel=1e-12) and res.stderr == pytest.approx(0)


def test_splitting_the_same_data_into_more_batches_changes_nothing():
    model = mlp()
    base = make_batches("mlp", n_batches=1, size=12)
    (x, y) = base[0]
    results = []
    for n in (1, 3, 4):
        size = 12 // n
        batches = [(x[i * size : (i + 1) * size], y[i * size : (i + 1) * size]) for i in range(n)]
        eig = hessian_eigenvalues(model, ce, batches, which="both", max_iter=51, tol=1e-12)
        tr = hessian_trace(model, ce, batches, samples=20)
        results.append((eig.lambda_max, eig.lambda_min, tr.trace))
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], rtol=1e-9)


def test_hessian_directions_are_the_extreme_eigenvectors(exact):
    model, batches, _ref = _setup("mlp")
    h, evals = exact["mlp"]
    (d_max, d_min), _eig = hessian_directions(model, ce, batches, max_iter=51, tol=1e-10)
    u, v = _flat(d_max), _flat(d_min)
    assert float(u.norm()) == pytest.approx(1, abs=1e-9) and float(v.norm()) == pytest.approx(1, abs=1e-9)
    assert abs(float(u @ v)) < 1e-8
    torch.testing.assert_close(h @ u, evals[-1] * u, rtol=0, atol=1e-7)
    torch.testing.assert_close(h @ v, evals[0] * v, rtol=0, atol=1e-7)
    # Usable as surface axes: the second difference at the centre along d_max is lambda_max.
    step = 1e-3
    surf = loss_surface(model, ce, batches, (d_max, d_min), xs=[-step, 0, step], ys=[-step, 0, step])
    curv_x = (surf.losses[1, 0] - 2 * surf.losses[1, 1] + surf.losses[1, 2]) / step**2
    curv_y = (surf.losses[0, 1] - 2 * surf.losses[1, 1] + surf.losses[2, 1]) / step**2
    assert curv_x == pytest.approx(evals[-1], rel=1e-4)
    assert curv_y == pytest.approx(evals[0], rel=1e-3, abs=1e-5)


def test_state_is_restored_bit_for_bit():
    model, batches, _ = _setup("cnn-batchnorm")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    rng = torch.get_rng_state()
    hessian_eigenvalues(model, ce, batches, max_iter=5, return_eigenvectors=True)
    hessian_trace(model, ce, batches, samples=3)
    hessian_directions(model, ce, batches, max_iter=5)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.is_grad_enabled()


def test_reuse_graph_off_gives_the_same_numbers():
    model, batches, _ = _setup("mlp")
    a = hessian_eigenvalues(model, ce, batches, which="both", max_iter=10)
    b = hessian_eigenvalues(model, ce, batches, which="both", max_iter=10, reuse_graph=False)
    np.testing.assert_allclose(a.eigenvalues, b.eigenvalues, rtol=1e-12)


def test_float32_model_gives_float64_coefficients_close_to_the_exact_values(exact):
    _model, batches, _ = _setup("mlp")
    _, evals = exact["mlp"]
    model32 = mlp().float()
    batches32 = [(x.float(), y) for x, y in batches]
    res = hessian_eigenvalues(model32, ce, batches32, which="both", max_iter=51, tol=1e-6)
    assert res.eigenvalues.dtype == np.float64
    assert res.lambda_max == pytest.approx(evals[-1], rel=1e-4)


# --------------------------------------------------------------------------- bad input


def test_non_scalar_loss_is_a_value_error():
    model, batches, _ = _setup("mlp")
    per_sample = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")  # noqa: E731
    for fn in (hessian_eigenvalues, hessian_trace):
        with pytest.raises(ValueError, match=r"`loss_fn`.*scalar"):
            fn(model, per_sample, batches)
    detached = lambda m, b: ce(m, b).detach()  # noqa: E731
    with pytest.raises(ValueError, match="`loss_fn`"):
        hessian_eigenvalues(model, detached, batches)
    assert model.training  # restored after the error


def test_parameters_without_grad_are_a_value_error():
    model = frozen_mlp()
    batches = make_batches("mlp")
    frozen = model[2].weight
    with pytest.raises(ValueError, match="`params`"):
        hessian_eigenvalues(model, ce, batches, params=[frozen])
    with pytest.raises(ValueError, match="`params`"):
        hessian_trace(model, ce, batches, params=[model[0].weight, frozen])
    assert not frozen.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"k": 0}, "k"), ({"max_iter": 0}, "max_iter"), ({"which": "top"}, "which"), ({"tol": -1}, "tol")],
)
def test_bad_lanczos_arguments(kwargs, name):
    model, batches, _ = _setup("mlp")
    with pytest.raises(ValueError, match=f"`{name}`"):
        hessian_eigenvalues(model, ce, batches, **kwargs)


def test_bad_trace_arguments_and_empty_batches():
    model, batches, _ = _setup("mlp")
    with pytest.raises(ValueError, match="`samples`"):
        hessian_trace(model, ce, batches, samples=1)
    with pytest.raises(ValueError, match="`batches`"):
        hessian_eigenvalues(model, ce, [])


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_gives_nan_and_a_warning(bad):
    model, batches, _ = _setup("mlp")
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def broken(m, b):
        return ce(m, b) * bad

    with pytest.warns(RuntimeWarning, match="NaN"):
        eig = hessian_eigenvalues(model, broken, batches, which="both")
    assert np.isnan(eig.eigenvalues).all() and math.isnan(eig.lambda_max) and not eig.converged
    with pytest.warns(RuntimeWarning, match="NaN"):
        tr = hessian_trace(model, broken, batches, samples=4)
    assert math.isnan(tr.trace) and math.isnan(tr.stderr)
    with warnings.catch_warnings(), pytest.raises(ValueError, match="Hessian directions"):
        warnings.simplefilter("ignore")
        hessian_directions(model, broken, batches)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("n_batches", [1, 3])
def test_bfloat16_and_single_parameter_products_in_float32(n_batches):
    """A bfloat16 model: products run in its dtype and come back as float32 vectors, ``H = 2 X^T X / N``
    (exact, from the data in float64) up to bfloat16 rounding; the input vector is left as it was."""
    from lightning_landscape.functional import hessian_operator

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(8, 3, generator=g).bfloat16() for _ in range(n_batches)]
    batches = [(x, torch.zeros(8, 1, dtype=torch.bfloat16)) for x in xs]
    model = nn.Linear(3, 1, bias=False).bfloat16()
    mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()  # noqa: E731
    exact = sum(2 * x.double().T @ x.double() / 8 for x in xs) / n_batches
    v = torch.tensor([1.0, -2.0, 0.5])
    with hessian_operator(model, mse, batches) as op:
        assert op.dtype == torch.float32
        out = op.matvec(v)
    assert out.dtype == torch.float32 and v.tolist() == [1.0, -2.0, 0.5]
    torch.testing.assert_close(out.double(), exact @ v.double(), rtol=3e-2, atol=3e-2)
