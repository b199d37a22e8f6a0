"""The overhead budget: counted work, deterministic, periodic landscapes skipped, the final one coarsened."""

import lightning.pytorch as pl
import numpy as np
import pytest
from conftest import TinyNet, loader

from lightning_landscape import LossLandscapeCallback

SMALL = {"resolution": 5, "final_resolution": 9, "line_resolution": 7, "num_batches": 2, "log_figures": False}


def _fit(trainer_kwargs, cb, batches_per_epoch=4, epochs=2):
    pl.seed_everything(0)
    kwargs = {**trainer_kwargs, "limit_train_batches": batches_per_epoch, "max_epochs": epochs}
    pl.Trainer(**kwargs, callbacks=[cb]).fit(TinyNet(dropout=0.0), loader(8 * batches_per_epoch, 8))
    return cb


def _surfaces(cb, stage):
    return [r for r in cb.records if r.kind == "surface" and r.meta["stage"] == stage]


def test_short_run_skips_periodic_and_coarsens_the_final_landscape(trainer_kwargs):
    # 8 training batches allow 0.1 * 3 * 8 = 2.4 probe-batch forwards: no periodic 5x5 surface fits
    # (2 batches * (25 + 7) = 64), and the final one falls to the 5 x 5 floor without metrics.
    with pytest.warns(RuntimeWarning) as warned:
        cb = _fit(trainer_kwargs, LossLandscapeCallback(**SMALL))
    messages = " ".join(str(w.message) for w in warned)
    assert "skipping periodic landscapes" in messages and "final landscape was reduced to 5 x 5" in messages
    assert _surfaces(cb, "periodic") == []
    (final,) = _surfaces(cb, "final")
    assert final.losses.shape == (5, 5) and final.meta["reduced_by_max_overhead"]
    assert not [r for r in cb.records if r.kind == "metrics"]  # no room for metrics either
    assert cb._skipped == 2 and cb._train_batches == 8


def test_long_enough_run_computes_everything_within_the_budget(trainer_kwargs):
    # 2 epochs x 200 batches allow 0.1 * 3 * 200 = 60 forwards after epoch 1 and 120 at the end; each
    # periodic landscape costs 1 batch * (9 + 5) = 14 with metrics off, the full final one 9 + 3*5 = 24.
    cb = LossLandscapeCallback(
        resolution=3, final_resolution=3, line_resolution=5, num_batches=1, metrics=None, final_metrics=None
    )
    cb = _fit(trainer_kwargs, cb, batches_per_epoch=200)
    assert len(_surfaces(cb, "periodic")) == 2 and cb._skipped == 0
    (final,) = _surfaces(cb, "final")
    assert "reduced_by_max_overhead" not in final.meta
    assert cb._spent == pytest.approx(14 + 14 + 24)
    assert cb._spent <= 0.1 * 3 * cb._train_batches


def test_the_final_landscape_keeps_the_largest_grid_that_fits(trainer_kwargs):
    # 40 batches allow 0.1 * 3 * 40 = 12 forwards; even a 3 x 3 surface with its lines costs more, so the
    # final landscape falls to the floor: 5 x 5 with 11-point lines.
    cb = LossLandscapeCallback(
        every_n_epochs=None, resolution=3, final_resolution=31, line_resolution=41, num_batches=1,
        metrics=None, final_metrics=None,
    )  # fmt: skip
    with pytest.warns(RuntimeWarning, match="reduced"):
        _fit(trainer_kwargs, cb, batches_per_epoch=40, epochs=1)
    (final,) = _surfaces(cb, "final")
    assert final.losses.shape == (5, 5)  # below the periodic resolution only the 5 x 5 floor is left
    cb2 = LossLandscapeCallback(
        every_n_epochs=None, resolution=3, final_resolution=31, line_resolution=5, num_batches=1,
        metrics=None, final_metrics=None,
    )  # fmt: skip
    with pytest.warns(RuntimeWarning, match="reduced to 29 x 29"):
        # 3,200 batches allow 960 forwards: 31^2 + 3 * 5 = 976 does not fit, 29^2 + 15 = 856 does.
        _fit(trainer_kwargs, cb2, batches_per_epoch=3200, epochs=1)


def test_budget_decisions_are_deterministic(trainer_kwargs, tmp_path):
    runs = []
    for i in range(2):
        kwargs = {**trainer_kwargs, "default_root_dir": str(tmp_path / str(i))}
        with pytest.warns(RuntimeWarning):
            runs.append(_fit(kwargs, LossLandscapeCallback(**SMALL), batches_per_epoch=30, epochs=3))
    a, b = runs
    assert [r.meta["name"] for r in a.records] == [r.meta["name"] for r in b.records]
    for ra, rb in zip(a.records, b.records):
        if ra.kind != "metrics":
            np.testing.assert_array_equal(ra.losses, rb.losses)


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), float("inf"), "0.1", True])
def test_max_overhead_must_be_positive_or_none(bad):
    with pytest.raises(ValueError, match="`max_overhead`"):
        LossLandscapeCallback(max_overhead=bad)
