"""BatchNorm-aware lines and surfaces: keep / interpolate / recompute, against a model copy per point."""

import copy

import numpy as np
import pytest
import torch
from helpers.bn_models import accuracy, bn_batches, bn_cnn, ce, naive_point, train_steps, weights
from helpers.bn_models import state_copy as _state
from torch import nn

from lightning_landscape.functional import (
    buffer_snapshot,
    filter_normalized_directions,
    interpolation_line,
    landscape_buffers,
    landscape_parameters,
    loss_line,
    loss_surface,
)


@pytest.fixture(scope="module")
def trained():
    """The initial model (weights and buffers) and the same model after a few epochs."""
    batches = bn_batches(4)
    model = bn_cnn(0)
    w_init, b_init = weights(model), buffer_snapshot(model)
    initial = copy.deepcopy(model)
    train_steps(model, batches, epochs=3)
    return initial, model, w_init, b_init, batches[:3]


def _assert_restored(model, before, flags, momenta, rng):
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in model.modules()] == flags
    assert [getattr(m, "momentum", None) for m in model.modules()] == momenta
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_interpolation_endpoints_are_the_real_models(trained, engine):
    initial, model, w_init, b_init, batches = trained
    model.train()
    rec = interpolation_line(
        model, ce, batches, w_init, resolution=5, alpha_range=(0.0, 1.0), start_buffers=b_init, engine=engine
    )
    assert rec.meta["bn"] == "interpolate" and rec.meta["engine"] == engine
    initial_loss = naive_point(initial, weights(initial), batches)  # the initial model, as it was
    final_loss = naive_point(model, weights(model), batches)
    assert rec.losses[0] == pytest.approx(initial_loss, abs=1e-6)
    assert rec.losses[-1] == pytest.approx(final_loss, abs=1e-6)
    # Without the start buffers (today's default), alpha = 0 is not the initial model.
    keep = interpolation_line(model, ce, batches, w_init, resolution=5, alpha_range=(0.0, 1.0), engine=engine)
    assert keep.meta["bn"] == "keep"
    assert abs(keep.losses[0] - initial_loss) > 1e-3
    assert keep.losses[-1] == pytest.approx(final_loss, abs=1e-6)


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_interpolated_buffers_match_a_copy_per_point(trained, engine):
    _initial, model, w_init, b_init, batches = trained
    rec = interpolation_line(model, ce, batches, w_init, resolution=5, start_buffers=b_init, engine=engine)
    assert np.isfinite(rec.losses).all()  # no negative variances beyond the ends
    w_end, b_end = weights(model), buffer_snapshot(model)
    for alpha, value in zip(rec.alphas, rec.losses):
        point = [s + alpha * (e - s) for s, e in zip(w_init, w_end)]
        held = min(max(alpha, 0.0), 1.0)  # statistics are held at the ends beyond [0, 1]
        bufs = {n: b_init[n] + held * (b_end[n] - b_init[n]) for n in b_end}
        assert value == pytest.approx(naive_point(model, point, batches, bufs), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_recompute_matches_a_copy_per_point_and_restores_everything(trained, engine):
    _initial, model, _w, _b, batches = trained
    model.train()
    model[1].momentum = 0.3
    before, rng = _state(model), torch.get_rng_state()
    flags = [m.training for m in model.modules()]
    momenta = [getattr(m, "momentum", None) for m in model.modules()]
    params = [p for _, p in landscape_parameters(model)]
    d1, d2 = filter_normalized_directions(params, seed=2)
    rec = loss_surface(model, ce, batches, (d1, d2), resolution=3, span=0.5, bn="recompute", engine=engine)
    _assert_restored(model, before, flags, momenta, rng)
    assert rec.meta["bn"] == "recompute" and rec.meta["bn_layers"] == 2
    keep = loss_surface(model, ce, batches, (d1, d2), resolution=3, span=0.5, engine=engine)
    w = weights(model)
    for i, y in enumerate(rec.ys):
        for j, x in enumerate(rec.xs):
            point = [p + x * a + y * b for p, a, b in zip(w, d1, d2)]
            ref = naive_point(model, point, batches, recompute=True)
            assert rec.losses[i, j] == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert np.abs(rec.losses - keep.losses).max() > 1e-3  # re-estimating changes the picture
    model[1].momentum = 0.1


def test_recompute_is_deterministic_and_ignores_dropout(trained):
    _initial, model, _w, _b, batches = trained
    params = [p for _, p in landscape_parameters(model)]
    (d,) = filter_normalized_directions(params, count=1, seed=4)
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        runs.append(loss_line(model, ce, batches, d, resolution=3, bn="recompute").losses)
    np.testing.assert_array_equal(runs[0], runs[1])


def test_sync_batchnorm_recomputes_locally(trained):
    _initial, model, _w, _b, batches = trained
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in sync.modules())
    (d,) = filter_normalized_directions([p for _, p in landscape_parameters(model)], count=1, seed=1)
    ref = loss_line(model, ce, batches, d, resolution=3, bn="recompute").losses
    got = loss_line(sync, ce, batches, d, resolution=3, bn="recompute").losses
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert all("forward" not in m.__dict__ for m in sync.modules())


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_forward_passes_are_counted(trained, engine):
    _initial, model, _w, _b, batches = trained
    calls = {"loss": 0, "metric": 0}

    def loss(m, b):
        calls["loss"] += 1
        return ce(m, b)

    def acc(m, b):
        calls["metric"] += 1
        return accuracy(m, b)

    dirs = filter_normalized_directions([p for _, p in landscape_parameters(model)], seed=0)
    rec = loss_surface(
        model, loss, batches, dirs, resolution=3, bn="recompute", metric_fn=acc, engine=engine, chunk_size=9
    )
    assert rec.meta["forward_passes"] == 9 * len(batches) * 3
    if engine == "loop":  # the vmap path calls each function once per chunk, not once per point
        assert calls["loss"] + calls["metric"] == rec.meta["forward_passes"]
    plain = loss_surface(model, ce, batches, dirs, resolution=3, engine=engine)
    assert plain.meta["forward_passes"] == 9 * len(batches) and plain.meta["bn"] == "keep"


def test_buffer_snapshot_and_bad_bn_arguments(trained):
    _initial, model, w_init, b_init, batches = trained
    assert list(b_init) == [n for n, _ in landscape_buffers(model)]
    assert all(b.is_floating_point() for b in b_init.values())
    dirs = filter_normalized_directions([p for _, p in landscape_parameters(model)], seed=0)
    with pytest.raises(ValueError, match="`bn`"):
        loss_surface(model, ce, batches, dirs, resolution=3, bn="mean")
    with pytest.raises(ValueError, match="`bn`"):
        loss_surface(model, ce, batches, dirs, resolution=3, bn="interpolate")
    with pytest.raises(ValueError, match="`start_buffers`"):
        interpolation_line(model, ce, batches, w_init, resolution=3, bn="interpolate")
    wrong = dict(b_init)
    wrong.pop("1.running_mean")
    with pytest.raises(ValueError, match=r"`start_buffers`.*1\.running_mean"):
        interpolation_line(model, ce, batches, w_init, resolution=3, start_buffers=wrong)
    bad_shape = {**b_init, "1.running_mean": torch.zeros(7)}
    with pytest.raises(ValueError, match="`start_buffers`"):
        interpolation_line(model, ce, batches, w_init, resolution=3, start_buffers=bad_shape)


class _ItemBN(nn.Module):
    """A BatchNorm model that calls ``.item()`` in forward: the batched engine cannot run it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.bn, self.out = nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)

    def forward(self, x):
        return self.out(self.bn(self.lin(x))) * (1.0 + 0.0 * self.lin.weight.sum().item())


def test_auto_falls_back_to_the_loop_with_a_note(monkeypatch):
    from lightning_landscape.functional.landscape import engine as engine_module

    monkeypatch.setattr(engine_module, "auto_engine", lambda m, p: "vmap")  # as on an accelerator
    torch.manual_seed(0)
    model = _ItemBN()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(2)]
    (d,) = filter_normalized_directions([p for _, p in landscape_parameters(model)], count=1)
    rec = loss_line(model, ce, batches, d, resolution=3, bn="recompute", metric_fn=accuracy)
    assert rec.meta["engine"] == "loop" and "vmap failed" in rec.meta["engine_note"]
    ref = loss_line(model, ce, batches, d, resolution=3, bn="recompute", metric_fn=accuracy, engine="loop")
    np.testing.assert_array_equal(rec.losses, ref.losses)
    np.testing.assert_array_equal(rec.metrics, ref.metrics)
    again = loss_line(model, ce, batches, d, resolution=3, bn="recompute", metric_fn=accuracy)
    assert again.meta["engine"] == "loop" and "earlier" in again.meta["engine_note"]  # not retried
    with pytest.raises(RuntimeError):
        loss_line(model, ce, batches, d, resolution=3, bn="recompute", engine="vmap")
