"""Probe noise (per-batch losses, standard errors), metric_fn beside the loss, and the sharded path."""

import copy

import numpy as np
import pytest
import torch
from helpers.bn_models import accuracy, bn_batches, bn_cnn, ce, naive_point, train_steps, weights
from torch import nn

from lightning_landscape.functional import (
    PointShard,
    buffer_snapshot,
    filter_normalized_directions,
    interpolation_line,
    landscape_parameters,
    loss_line,
    loss_surface,
    probe_noise,
)
from lightning_landscape.records.record import LineRecord, SurfaceRecord, load_record, save_record


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def _iid_batches(count, generator, size=6):
    """Batches drawn independently from one fixed distribution (a noisy linear rule)."""
    out = []
    for _ in range(count):
        x = torch.randn(size, 5, generator=generator)
        y = ((x[:, 0] + 0.7 * torch.randn(size, generator=generator)) > 0).long() + (x[:, 1] > 0.8).long()
        out.append((x, y))
    return out


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_identical_probe_batches_have_exactly_zero_noise(engine):
    model = _mlp()
    batch = _iid_batches(1, torch.Generator().manual_seed(0))[0]
    dirs = filter_normalized_directions([p for _, p in landscape_parameters(model)], seed=0)
    rec = loss_surface(model, ce, [batch] * 3, dirs, resolution=3, engine=engine)
    assert rec.batch_losses.shape == (3, 3, 3)
    noise = probe_noise(rec)
    assert (noise.stderr == 0).all() and noise.relative == 0.0 and noise.median_stderr == 0.0
    assert rec.meta["probe_noise"] == 0.0 and rec.meta["probe_stderr_median"] == 0.0
    np.testing.assert_array_equal(rec.losses, rec.batch_losses[..., 0])


def test_standard_error_matches_the_spread_over_repeated_probe_sets():
    model = _mlp()
    (d,) = filter_normalized_directions([p for _, p in landscape_parameters(model)], count=1, seed=1)
    g = torch.Generator().manual_seed(7)
    means, stderrs = [], []
    for _ in range(60):  # 60 independent probe sets of 8 i.i.d. batches each
        rec = loss_line(model, ce, _iid_batches(8, g), d, resolution=5, span=0.8, engine="loop")
        means.append(rec.losses)
        stderrs.append(probe_noise(rec).stderr)
    spread = np.std(np.array(means), axis=0, ddof=1)  # (5,) measured over repetitions
    predicted = np.sqrt(np.mean(np.array(stderrs) ** 2, axis=0))
    ratio = np.sqrt(np.mean(predicted**2) / np.mean(spread**2))
    assert 0.8 < ratio < 1.2, (ratio, predicted, spread)
    assert (spread > 1e-3).all()  # there is noise to measure


def test_probe_noise_needs_batch_losses_and_one_batch_gives_nan():
    with pytest.raises(ValueError, match="`record`"):
        probe_noise(LineRecord(np.zeros(3), np.zeros(3)))
    model = _mlp()
    batches = _iid_batches(1, torch.Generator().manual_seed(0))
    (d,) = filter_normalized_directions([p for _, p in landscape_parameters(model)], count=1)
    rec = loss_line(model, ce, batches, d, resolution=3)
    assert np.isnan(probe_noise(rec).stderr).all() and np.isnan(rec.meta["probe_noise"])


def _naive_grid(model, batches, d1, d2, xs, ys, fn):
    w = weights(model)
    return np.array(
        [
            [
                naive_point(model, [p + x * a + y * b for p, a, b in zip(w, d1, d2)], batches, fn=fn)
                for x in xs
            ]
            for y in ys
        ]
    )


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_metric_beside_the_loss_matches_a_naive_loop(engine):
    batches = bn_batches(3)
    model = train_steps(bn_cnn(0), batches, epochs=2)
    params = [p for _, p in landscape_parameters(model)]
    d1, d2 = filter_normalized_directions(params, seed=3)
    rec = loss_surface(
        model, ce, batches, (d1, d2), resolution=3, span=0.6, metric_fn=accuracy, engine=engine
    )
    assert rec.metrics.shape == rec.losses.shape and rec.meta["metric_name"] == "accuracy"
    np.testing.assert_allclose(
        rec.metrics, _naive_grid(model, batches, d1, d2, rec.xs, rec.ys, accuracy), atol=1e-6
    )
    np.testing.assert_allclose(rec.losses, _naive_grid(model, batches, d1, d2, rec.xs, rec.ys, ce), rtol=1e-5)
    assert np.ptp(rec.metrics) > 0  # accuracy changes over the plane: the comparison means something
    line = loss_line(
        model, ce, batches, d1, resolution=5, metric_fn=lambda m, b: accuracy(m, b), engine=engine
    )
    assert line.meta["metric_name"] == "metric"
    named = loss_line(model, ce, batches, d1, resolution=5, metric_fn=accuracy, metric_name="acc")
    assert named.meta["metric_name"] == "acc"
    np.testing.assert_allclose(named.metrics, line.metrics, atol=1e-6)
    np.testing.assert_allclose(line.metrics[2], naive_point(model, weights(model), batches, fn=accuracy))


def test_metric_on_the_interpolation_line_and_a_bad_metric():
    batches = bn_batches(2)
    model = bn_cnn(0)
    w0, b0 = weights(model), buffer_snapshot(model)
    initial = copy.deepcopy(model)
    train_steps(model, batches, epochs=2)
    rec = interpolation_line(
        model, ce, batches, w0, resolution=3, alpha_range=(0.0, 1.0), start_buffers=b0, metric_fn=accuracy
    )
    assert rec.metrics[0] == pytest.approx(naive_point(initial, weights(initial), batches, fn=accuracy))
    assert rec.metrics[-1] == pytest.approx(naive_point(model, weights(model), batches, fn=accuracy))
    with pytest.raises(ValueError, match="`metric_fn`"):
        loss_line(model, ce, batches, w0, resolution=3, metric_fn=lambda m, b: m(b[0]), engine="loop")


def _two_ranks(run):
    """``run(shard)`` as rank 1 then rank 0; the fake all-gather hands rank 1's values to rank 0."""
    sent = {}

    def gather_rank1(local):
        sent[1] = local.clone()
        out = torch.full_like(local, float("nan"))
        out[-1] = 1.0
        return torch.stack([out, local])

    run(PointShard(rank=1, world_size=2, all_gather=gather_rank1))
    return run(PointShard(rank=0, world_size=2, all_gather=lambda local: torch.stack([local, sent[1]])))


@pytest.mark.parametrize("bn", ["keep", "recompute"])
def test_sharded_surface_gathers_per_batch_losses_and_metrics(bn):
    batches = bn_batches(3)
    model = train_steps(bn_cnn(0), batches, epochs=1)
    dirs = filter_normalized_directions([p for _, p in landscape_parameters(model)], seed=0)
    kwargs = {"resolution": 3, "span": 0.5, "bn": bn, "metric_fn": accuracy}
    whole = loss_surface(model, ce, batches, dirs, **kwargs)
    shared = _two_ranks(lambda shard: loss_surface(model, ce, batches, dirs, shard=shard, **kwargs))
    np.testing.assert_array_equal(shared.batch_losses, whole.batch_losses)
    np.testing.assert_array_equal(shared.metrics, whole.metrics)
    np.testing.assert_array_equal(shared.losses, whole.losses)
    assert shared.meta["forward_passes"] == whole.meta["forward_passes"]


def test_records_keep_the_new_arrays(tmp_path):
    xs = np.linspace(-1, 1, 3)
    surface = SurfaceRecord(
        xs,
        xs,
        np.ones((3, 3)),
        path=np.zeros((2, 2)),
        meta={"bn": "recompute"},
        batch_losses=np.ones((3, 3, 2)),
        metrics=np.full((3, 3), 0.5),
        path2=np.ones((4, 2)),
    )
    back = load_record(save_record(surface, tmp_path, "s"))
    for key in ("batch_losses", "metrics", "path2", "path"):
        np.testing.assert_array_equal(getattr(back, key), getattr(surface, key))
    line = LineRecord(xs, np.ones(3), batch_losses=np.ones((3, 2)), metrics=np.zeros(3))
    back = load_record(save_record(line, tmp_path, "l"))
    np.testing.assert_array_equal(back.batch_losses, line.batch_losses)
    np.testing.assert_array_equal(back.metrics, line.metrics)
    assert load_record(save_record(LineRecord(xs, np.ones(3)), tmp_path, "plain")).metrics is None
