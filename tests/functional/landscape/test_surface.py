import copy
import math

import numpy as np
import pytest
import torch
from helpers.exact_hessian import ce as _ce
from torch import nn

from lightning_landscape.functional import (
    evaluate_loss,
    filter_normalized_directions,
    interpolation_line,
    landscape_parameters,
    loss_line,
    loss_surface,
    observation,
    odd_grid,
)
from lightning_landscape.functional.landscape.params import parameters_restored


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )


def _batches(n: int = 3):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(5, 1, 6, 6, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(n)]


def _naive_surface(model, batches, d1, d2, xs, ys):
    """Reference: a fresh copy of the model per grid point, weights loaded by name."""
    names = [n for n, _ in landscape_parameters(model)]
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = np.zeros((len(ys), len(xs)))
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            m = copy.deepcopy(model).eval()
            state = m.state_dict()
            for n, a, b in zip(names, d1, d2):
                state[n] = base[n] + x * a + y * b
            m.load_state_dict(state)
            with torch.no_grad():
                out[i, j] = np.mean([_ce(m, b).item() for b in batches])
    return out


def test_surface_matches_a_naive_loop_over_model_copies():
    model, batches = _model(), _batches()
    model.train()  # BN and dropout must be observed in eval mode
    params = [p for _, p in landscape_parameters(model)]
    d1, d2 = filter_normalized_directions(params, seed=0)
    rec = loss_surface(model, _ce, batches, (d1, d2), resolution=5, span=0.8)
    expected = _naive_surface(model, batches, d1, d2, rec.xs, rec.ys)
    np.testing.assert_allclose(rec.losses, expected, rtol=1e-5, atol=1e-6)
    assert rec.losses.shape == (5, 5)
    assert rec.meta["probe_batches"] == 3 and rec.meta["probe_samples"] == 15


def test_asymmetric_explicit_grid_is_indexed_y_then_x():
    model, batches = _model(), _batches(1)
    params = [p for _, p in landscape_parameters(model)]
    d1, d2 = filter_normalized_directions(params, seed=5)
    xs, ys = [-0.5, 0.0, 0.25, 1.0], [0.0, 0.7]
    rec = loss_surface(model, _ce, batches, (d1, d2), xs=xs, ys=ys)
    np.testing.assert_allclose(
        rec.losses, _naive_surface(model, batches, d1, d2, xs, ys), rtol=1e-5, atol=1e-6
    )


def test_observation_restores_everything_bit_for_bit():
    model, batches = _model(), _batches()
    model.train()
    model[0].weight.requires_grad_(True)
    model[1].bias.requires_grad_(False)  # frozen: not in the landscape, untouched
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    params = [p for _, p in landscape_parameters(model)]
    d1, d2 = filter_normalized_directions(params, seed=0)
    loss_surface(model, _ce, batches, (d1, d2), resolution=3)
    loss_line(model, _ce, batches, d1, resolution=5)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in model.modules()] == flags
    assert model[0].weight.requires_grad and not model[1].bias.requires_grad
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


def _changes_parameters(kind: str, model: nn.Module):
    """A loss_fn that changes every parameter in place: through ``p.data``, or by an optimizer step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_fn(m, b):
        if kind == "data":
            for p in m.parameters():
                p.data.add_(1.0)
            return _ce(m, b)
        with torch.enable_grad():
            loss = _ce(m, b)
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return loss_fn


@pytest.mark.parametrize("kind", ["data", "optimizer step"])
def test_observation_puts_back_parameters_the_loss_changes(kind):
    model, batches = _model(), _batches()
    model[0].bias.requires_grad_(False)  # frozen: outside the landscape, changed by the "data" loss only
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = _changes_parameters(kind, model)

    def unchanged() -> bool:
        return all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    with observation(model):
        loss_fn(model, batches[0])
    assert unchanged()
    evaluate_loss(model, loss_fn, batches)
    assert unchanged()
    params = [p for _, p in landscape_parameters(model)]
    d1, d2 = filter_normalized_directions(params, seed=0)
    loss_surface(model, loss_fn, batches, (d1, d2), resolution=3, engine="loop")
    assert unchanged()


def test_nested_observations_copy_the_parameters_once():
    model = _model()
    before = model[5].weight.detach().clone()
    with parameters_restored(model):
        with observation(model):
            model[5].weight.data.add_(1.0)
        assert not torch.equal(model[5].weight, before)  # the outer block keeps the copy, and puts it back
    assert torch.equal(model[5].weight, before)


@pytest.mark.parametrize(("engine", "after"), [("loop", 4), ("vmap", 2)])
def test_model_is_restored_when_the_loss_raises(engine, after):
    model, batches = _model(), _batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def failing(m, b):
        calls.append(1)
        if len(calls) > after:  # part-way through the grid
            raise RuntimeError("boom")
        return _ce(m, b)

    params = [p for _, p in landscape_parameters(model)]
    d1, d2 = filter_normalized_directions(params, seed=0)
    with pytest.raises(RuntimeError, match="boom"):
        loss_surface(model, failing, batches, (d1, d2), resolution=3, engine=engine)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training


def test_grid_is_odd_and_contains_the_centre():
    grid = odd_grid(0.3, 7)
    assert len(grid) == 7 and grid[3] == 0.0
    for bad in (2, 4, 1, 0, -3, 3.0):
        with pytest.raises(ValueError, match="`resolution`"):
            odd_grid(1.0, bad)
    with pytest.raises(ValueError, match="`span`"):
        odd_grid((1.0, -1.0), 5)


def test_centre_of_the_surface_is_the_loss_at_the_weights():
    model, batches = _model(), _batches()
    params = [p for _, p in landscape_parameters(model)]
    rec = loss_surface(model, _ce, batches, filter_normalized_directions(params, seed=0), resolution=5)
    assert rec.centre_loss == pytest.approx(evaluate_loss(model, _ce, batches), rel=1e-6)
    model.eval()
    with torch.no_grad():
        manual = sum(_ce(model, b).item() for b in batches) / len(batches)
    assert rec.centre_loss == pytest.approx(manual, rel=1e-6)


def test_analytic_quadratic_bowl():
    # loss(w) = (w1 - 1)^2 + 4 w2^2 at w = (1, 0); directions e1, e2.
    class Bowl(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([1.0, 0.0], dtype=torch.float64))

    loss = lambda m, _: (m.w[0] - 1) ** 2 + 4 * m.w[1] ** 2  # noqa: E731
    e1 = [torch.tensor([1.0, 0.0], dtype=torch.float64)]
    e2 = [torch.tensor([0.0, 1.0], dtype=torch.float64)]
    rec = loss_surface(Bowl(), loss, [None], (e1, e2), resolution=5, span=2.0)
    gx, gy = np.meshgrid(rec.xs, rec.ys)
    np.testing.assert_allclose(rec.losses, gx**2 + 4 * gy**2, atol=1e-12)
    line = loss_line(Bowl(), loss, [None], e2, resolution=5, span=1.0)
    np.testing.assert_allclose(line.losses, 4 * line.alphas**2, atol=1e-12)


def test_interpolation_line_from_initial_to_current_weights():
    model, batches = _model(), _batches()
    start = [p.detach().clone() for _, p in landscape_parameters(model)]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    rec = interpolation_line(model, _ce, batches, start, resolution=5)
    np.testing.assert_allclose(rec.alphas, [-0.5, 0.0, 0.5, 1.0, 1.5])
    # Reference: build start + alpha (end - start) in a copy.
    end = [p.detach().clone() for _, p in landscape_parameters(model)]
    names = [n for n, _ in landscape_parameters(model)]
    for alpha, value in zip(rec.alphas, rec.losses):
        m = copy.deepcopy(model).eval()
        state = m.state_dict()
        for n, s, e in zip(names, start, end):
            state[n] = s + alpha * (e - s)
        m.load_state_dict(state)
        with torch.no_grad():
            ref = np.mean([_ce(m, b).item() for b in batches])
        assert value == pytest.approx(ref, rel=1e-5)
    assert rec.meta["distance"] == pytest.approx(
        math.sqrt(sum(((e - s) ** 2).sum().item() for s, e in zip(start, end))), rel=1e-6
    )


def test_non_finite_losses_are_stored_as_they_came():
    model, batches = _model(), _batches(1)
    params = [p for _, p in landscape_parameters(model)]
    w0 = params[0].detach().clone()

    def nan_far_away(m, b):
        far = (m[0].weight - w0).norm() > 0.5 * w0.norm()
        return _ce(m, b) * (float("nan") if far else 1.0)

    rec = loss_surface(
        model, nan_far_away, batches, filter_normalized_directions(params, seed=0), resolution=5
    )
    assert np.isnan(rec.losses).any() and np.isfinite(rec.losses[2, 2])
    assert rec.meta["nonfinite"] == int(np.isnan(rec.losses).sum())


def test_loss_fn_must_return_a_scalar():
    model, batches = _model(), _batches(1)
    params = [p for _, p in landscape_parameters(model)]
    with pytest.raises(ValueError, match="scalar"):
        loss_surface(model, lambda m, b: m(b[0]), batches, filter_normalized_directions(params), resolution=3)


def test_bad_directions_are_rejected():
    model, batches = _model(), _batches(1)
    params = [p for _, p in landscape_parameters(model)]
    d1, d2 = filter_normalized_directions(params)
    with pytest.raises(ValueError, match="two directions"):
        loss_surface(model, _ce, batches, (d1,), resolution=3)
    with pytest.raises(ValueError, match="one per parameter"):
        loss_surface(model, _ce, batches, (d1[:-1], d2), resolution=3)


def test_tied_and_frozen_parameters():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.Tanh(), lin, nn.Linear(4, 2))
    model[3].weight.requires_grad_(False)
    names = [n for n, _ in landscape_parameters(model)]
    assert names == ["0.weight", "0.bias", "3.bias"]  # tied weight once, frozen weight excluded
    frozen = model[3].weight.detach().clone()
    batch = (torch.randn(3, 4), torch.tensor([0, 1, 0]))
    params = [p for _, p in landscape_parameters(model)]
    rec = loss_surface(
        model, _ce, [batch], filter_normalized_directions(params, include_1d=True), resolution=3
    )
    assert np.isfinite(rec.losses).all()
    assert torch.equal(model[3].weight, frozen)
