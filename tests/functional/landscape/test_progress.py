"""The evaluation's progress hook: monotone (done, total) ending at total, on every path; same values."""

import numpy as np
import pytest
import torch
from torch import nn

from lightning_landscape.callback.progress import LandscapeProgress
from lightning_landscape.functional import interpolation_line, loss_line, loss_surface
from lightning_landscape.functional.landscape.engine import evaluate_points


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    batches = [(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(2)]
    params = list(model.parameters())
    d1 = [torch.randn_like(p) for p in params]
    d2 = [torch.randn_like(p) for p in params]
    return model, batches, params, d1, d2


def _loss(m, b):
    return ((m(b[0]) - b[1]) ** 2).mean()


def _check(calls, total):
    assert calls, "never called"
    assert all(t == total for _, t in calls)
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(set(done)) == len(done)  # strictly increasing
    assert done[-1] == total and done[0] > 0


@pytest.mark.parametrize("engine", ["loop", "vmap"])
def test_evaluate_points_reports_monotone_progress_ending_at_total(engine):
    model, batches, params, d1, d2 = _setup()
    coef = np.random.default_rng(0).normal(size=(123, 2))
    calls = []
    ev = evaluate_points(model, _loss, batches, params, [d1, d2], coef, engine=engine, chunk_size=10,
                         progress=lambda d, t: calls.append((d, t)))  # fmt: skip
    _check(calls, 123)
    assert len(calls) > 5  # every few points, not only at the end
    plain = evaluate_points(model, _loss, batches, params, [d1, d2], coef, engine=engine, chunk_size=10)
    np.testing.assert_array_equal(ev.losses, plain.losses)  # observing progress changes nothing


def test_surface_and_lines_plumb_progress():
    model, batches, params, d1, d2 = _setup()
    for fn, args, total in (
        (loss_surface, ((d1, d2),), 25),
        (loss_line, (d1,), 7),
        (interpolation_line, ([p.detach() + 1 for p in params],), 7),
    ):
        calls = []
        kwargs = {"resolution": 5 if fn is loss_surface else 7}
        fn(model, _loss, batches, *args, **kwargs, progress=lambda d, t, c=calls: c.append((d, t)))
        _check(calls, total)


def test_landscape_progress_adds_parts_and_estimates_time_left():
    now = [0.0]
    p = LandscapeProgress(30, "x", bar=None, clock=lambda: now[0])
    first = p.part(20)
    now[0] = 2.0
    first(10, 20)  # half of 20 points of 30
    assert p.done == 10 and p.remaining_seconds() == pytest.approx(4.0)
    first(20, 20)
    second = p.part(10)
    second(5, 5)  # a share of 5 rows standing for the whole part's 10 points
    now[0] = 3.0
    assert p.done == 30 and p.remaining_seconds() == 0 and p.close() == pytest.approx(3.0)
