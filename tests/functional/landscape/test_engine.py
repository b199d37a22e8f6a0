"""The evaluation engine: batched (vmap) path == loop path, fallback, chunking, no per-point host sync."""

import copy

import numpy as np
import pytest
import torch
from helpers.bn_models import state_copy as _state
from helpers.engine_cases import probe_case
from helpers.exact_hessian import ce as _ce
from torch import nn

from lightning_landscape import LossLandscapeCallback
from lightning_landscape.functional import (
    filter_normalized_directions,
    interpolation_line,
    landscape_parameters,
    loss_line,
    loss_surface,
)
from lightning_landscape.functional.landscape import engine as engine_module
from lightning_landscape.functional.landscape.batched import auto_chunk_size


class ItemInForward(nn.Module):
    """Calls ``.item()`` in forward: cannot be vmapped."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x):
        scale = 1.0 + 0.1 * abs(self.lin.weight.sum().item())
        return self.lin(x) * scale


def _case(kind: str):
    return probe_case(ItemInForward if kind == "item" else kind)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "transformer"])
def test_vmap_equals_loop(kind):
    model, batches, params, dirs = _case(kind)
    before = _state(model)
    loop = loss_surface(model, _ce, batches, dirs, resolution=5, span=0.7, engine="loop")
    vmap = loss_surface(model, _ce, batches, dirs, resolution=5, span=0.7, engine="vmap", chunk_size=7)
    np.testing.assert_allclose(vmap.losses, loop.losses, rtol=1e-5, atol=1e-6)
    assert np.ptp(loop.losses) > 1e-3  # the surface is not flat: the comparison means something
    line_l = loss_line(model, _ce, batches, dirs[0], resolution=7, engine="loop")
    line_v = loss_line(model, _ce, batches, dirs[0], resolution=7, engine="vmap")
    np.testing.assert_allclose(line_v.losses, line_l.losses, rtol=1e-5, atol=1e-6)
    start = [p.detach() + 0.1 * d for p, d in zip(params, dirs[1])]
    interp_l = interpolation_line(model, _ce, batches, start, resolution=5, engine="loop")
    interp_v = interpolation_line(model, _ce, batches, start, resolution=5, engine="vmap")
    np.testing.assert_allclose(interp_v.losses, interp_l.losses, rtol=1e-5, atol=1e-6)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(isinstance(p, nn.Parameter) for p in model.parameters()) and model.training


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_auto_is_the_loop_on_the_cpu_bit_for_bit(kind):
    model, batches, _params, dirs = _case(kind)
    loop = loss_surface(model, _ce, batches, dirs, resolution=5, engine="loop").losses
    auto = loss_surface(model, _ce, batches, dirs, resolution=5, engine="auto", chunk_size=4).losses
    np.testing.assert_array_equal(auto, loop)  # deterministic: identical runs give identical records
    assert engine_module.auto_engine(model, _params) == "loop"


def _independent_point_losses(model, batches, d1, d2, xs, ys):
    """Per-batch losses at every grid point, independent of the package: a deep copy of the model per
    point in eval mode, each parameter set to ``(w + y d2) + x d1`` with ``torch.add(..., alpha=)`` (a
    zero coefficient adds nothing), plain forward passes under ``no_grad``."""
    names = [n for n, _ in landscape_parameters(model)]
    w = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = np.empty((len(ys), len(xs), len(batches)))
    with torch.no_grad():
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                m = copy.deepcopy(model).eval()
                params = dict(m.named_parameters())
                for n, a, b in zip(names, d1, d2):
                    row = w[n] if y == 0.0 else torch.add(w[n], b, alpha=float(y))
                    params[n].copy_(row if x == 0.0 else torch.add(row, a, alpha=float(x)))
                out[i, j] = [float(_ce(m, batch)) for batch in batches]
    return out


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_loop_is_bit_identical_to_an_independent_loop(kind):
    # The loop engine's values are what plain forward passes of a copy of the model give at the same
    # weights, bit for bit (max pooling through the exact substitute included); any shortcut in moving
    # the weights or collecting the losses must keep that.
    model, batches, _params, (d1, d2) = _case(kind)
    xs, ys = [-0.6, -0.2, 0.0, 0.35], [-0.5, 0.0, 0.25]
    rec = loss_surface(model, _ce, batches, (d1, d2), xs=xs, ys=ys, engine="loop")
    expected = _independent_point_losses(model, batches, d1, d2, xs, ys)
    np.testing.assert_array_equal(rec.batch_losses, expected)
    assert np.ptp(expected) > 1e-3  # not flat: equality means something
    line = loss_line(model, _ce, batches, d1, alphas=xs, engine="loop")
    zero = [torch.zeros_like(t) for t in d1]
    expected_line = _independent_point_losses(model, batches, d1, zero, xs, [0.0])[0]
    np.testing.assert_array_equal(line.batch_losses, expected_line)


def test_unbatchable_module_falls_back_to_the_loop_quietly(recwarn, monkeypatch):
    # "auto" batches on accelerators; pretend to be on one so that the fallback path runs here.
    monkeypatch.setattr(
        engine_module, "auto_engine", lambda m, p: "loop" if m in engine_module._CANNOT_VMAP else "vmap"
    )
    model, batches, _params, dirs = _case("item")
    before = _state(model)
    loop = loss_surface(model, _ce, batches, dirs, resolution=3, engine="loop").losses
    auto = loss_surface(model, _ce, batches, dirs, resolution=3).losses
    np.testing.assert_array_equal(auto, loop)
    assert model in engine_module._CANNOT_VMAP
    assert not [w for w in recwarn if "vmap" in str(w.message) or "batch" in str(w.message)]
    with pytest.raises(RuntimeError):
        loss_surface(model, _ce, batches, dirs, resolution=3, engine="vmap")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())


def test_tied_weights_batched_and_restored_as_parameters():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.Tanh(), lin, nn.Linear(4, 2))
    batch = (torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1]))
    params = [p for _, p in landscape_parameters(model)]
    dirs = filter_normalized_directions(params, seed=3, include_1d=True)
    loop = loss_surface(model, _ce, [batch], dirs, resolution=3, engine="loop").losses
    vmap = loss_surface(model, _ce, [batch], dirs, resolution=3, engine="vmap").losses
    np.testing.assert_allclose(vmap, loop, rtol=1e-5, atol=1e-6)
    assert model[0] is model[2] and isinstance(model[0].weight, nn.Parameter)


@pytest.mark.parametrize("chunk", [1, 3, 25, 100])
def test_chunk_size_does_not_change_values(chunk):
    model, batches, _params, dirs = _case("mlp")
    ref = loss_surface(model, _ce, batches, dirs, resolution=5, engine="loop").losses
    got = loss_surface(model, _ce, batches, dirs, resolution=5, engine="vmap", chunk_size=chunk).losses
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_chunk_size_follows_the_memory_budget():
    model, batches, params, _dirs = _case("mlp")
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    with torch.no_grad():
        small = auto_chunk_size(model, _ce, batches, params, memory_budget=1)
        one = auto_chunk_size(model, _ce, batches, params, memory_budget=10 * param_bytes)
        ten = auto_chunk_size(model, _ce, batches, params, memory_budget=100 * param_bytes)
    assert small == 1
    assert 1 <= one < 10 and 5 * one <= ten < 100  # roughly linear in the budget, below params-only bound


def test_loop_path_has_no_host_sync_per_point(monkeypatch):
    model, batches, params, dirs = _case("mlp")
    syncs = []
    for name in ("item", "tolist", "cpu", "numpy", "__float__", "__bool__", "__int__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _name=name, _original=original, **k):
            syncs.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    coefficients = np.stack(np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5)), -1).reshape(-1, 2)
    out = engine_module.evaluate_points(model, _ce, batches, params, dirs, coefficients, engine="loop")
    out = out.losses.mean(axis=1)  # the mean over batches, on the host: after the transfer
    monkeypatch.undo()
    assert out.shape == (25,)
    assert syncs == ["cpu", "numpy"]  # the single transfer of all 25 values at the end


def test_bad_engine_and_chunk_size_raise_value_error():
    model, batches, _params, dirs = _case("mlp")
    with pytest.raises(ValueError, match="`engine`"):
        loss_surface(model, _ce, batches, dirs, resolution=3, engine="fast")
    with pytest.raises(ValueError, match="`chunk_size`"):
        loss_surface(model, _ce, batches, dirs, resolution=3, chunk_size=0)
    with pytest.raises(ValueError, match="`engine`"):
        LossLandscapeCallback(max_overhead=None, engine="gpu")
    assert LossLandscapeCallback(max_overhead=None, engine="loop").engine == "loop"
