"""The overhead budget: counted work, deterministic; later periodic landscapes skipped, the final one kept
(or, with budget_final=True, coarsened).

The callback's clock is frozen here, so that no measured time reaches the schedule and a training step
counts as 3 forward passes (the counted model, the same on every run); tests/callback/test_schedule.py
feeds the schedule measured times as numbers.
"""

import importlib
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
from helpers.models import TinyNet, loader
from lightning.pytorch.loggers import CSVLogger

from lightning_landscape import LossLandscapeCallback

SMALL = {"resolution": 5, "final_resolution": 9, "line_resolution": 7, "num_batches": 2, "log_figures": False}
SMALL["reliability"] = False  # the costs below are the surfaces', lines' and metrics' (test_wiring: the rest)
SMALL["budget_final"] = False  # the first and final landscapes at their configured size (not "auto")


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch):
    """No measured time: the schedule counts work (deterministic decisions)."""
    module = importlib.import_module("lightning_landscape.callback.callback")
    monkeypatch.setattr(module, "clock", lambda: 0.0)


def _fit(trainer_kwargs, cb, batches_per_epoch=4, epochs=2):
    pl.seed_everything(0)
    kwargs = {**trainer_kwargs, "limit_train_batches": batches_per_epoch, "max_epochs": epochs}
    pl.Trainer(**kwargs, callbacks=[cb]).fit(TinyNet(dropout=0.0), loader(8 * batches_per_epoch, 8))
    return cb


def _surfaces(cb, stage):
    return [r for r in cb.records if r.kind == "surface" and r.meta["stage"] == stage]


def test_short_run_shows_the_first_and_final_landscapes_and_skips_the_rest(trainer_kwargs):
    # 8 training batches allow 0.1 * 3 * 8 = 2.4 probe-batch forwards: no periodic 5 x 5 surface fits
    # (2 batches * (25 + 7) = 64), nor a final one; the first periodic one and the final one are shown anyway.
    with pytest.warns(RuntimeWarning) as warned:
        cb = _fit(trainer_kwargs, LossLandscapeCallback(**SMALL, metrics=None))
    messages = " ".join(str(w.message) for w in warned)
    assert "skipping periodic landscapes" in messages and "max_overhead=None" in messages  # the way out
    assert [s.meta["epoch"] for s in _surfaces(cb, "periodic")] == [0]
    (final,) = _surfaces(cb, "final")
    assert final.losses.shape == (9, 9) and "reduced_by_max_overhead" not in final.meta
    assert cb.schedule.skipped == 1 and cb.schedule.train_batches == 8
    # Final metrics: Lanczos 50 steps 1.4 + 3.9 * 50, trace 1.4 + 3.6 * 64, SAM 4.5, average 1 + 32.
    assert cb.schedule.spent == pytest.approx(64 + 2 * (81 + 7 + 2 * 4) + 2 * (196.4 + 231.8 + 4.5 + 33))


def test_budget_final_skips_a_final_landscape_that_does_not_fit(trainer_kwargs):
    with pytest.warns(RuntimeWarning) as warned:
        strict = LossLandscapeCallback(**{**SMALL, "budget_final": True}, every_n_epochs=None)
        cb = _fit(trainer_kwargs, strict)
    messages = " ".join(str(w.message) for w in warned)
    assert "final landscape was skipped" in messages and "budget_final=False" in messages
    assert cb.records == [] and cb.schedule.spent == 0


def test_the_final_landscape_is_coarsened_to_fit(trainer_kwargs):
    # 150 batches allow 0.1 * 3 * 150 = 45 forwards; 1 probe batch, no metrics: the 5 x 5 one fits (25 and
    # 7-point lines: the interpolation line's 7 and the axes' 4 each off the grid, 25 + 7 + 8 = 40), the
    # 7 x 7 one (49 + 7, every axis point on its grid) does not.
    cb = LossLandscapeCallback(**{**SMALL, "num_batches": 1, "every_n_epochs": None, "budget_final": True})
    with pytest.warns(RuntimeWarning, match="reduced to 5 x 5"):
        _fit(trainer_kwargs, cb, batches_per_epoch=150, epochs=1)
    (final,) = _surfaces(cb, "final")
    assert final.losses.shape == (5, 5) and final.meta["reduced_by_max_overhead"]
    assert not [r for r in cb.records if r.kind == "metrics"]  # no room for metrics


def test_long_enough_run_computes_everything_within_the_budget(trainer_kwargs):
    # 2 epochs x 200 batches allow 0.1 * 3 * 200 = 60 forwards after epoch 1 and 120 at the end; each
    # periodic landscape costs 1 batch * (9 + 5) = 14 with metrics off, the full final one 9 + 5 + 2 * 2
    # = 18 (3 of each axis line's 5 points are on the 3 x 3 grid: taken from the surface).
    cb = LossLandscapeCallback(
        resolution=3,
        final_resolution=3,
        line_resolution=5,
        num_batches=1,
        metrics=None,
        final_metrics=None,
        reliability=False,
        budget_final=False,
    )
    cb = _fit(trainer_kwargs, cb, batches_per_epoch=200)
    assert len(_surfaces(cb, "periodic")) == 2 and cb.schedule.skipped == 0
    (final,) = _surfaces(cb, "final")
    assert "reduced_by_max_overhead" not in final.meta
    assert cb.schedule.spent == pytest.approx(14 + 14 + 18)
    assert cb.schedule.spent <= 0.1 * 3 * cb.schedule.train_batches


def test_the_final_landscape_keeps_the_largest_grid_that_fits(trainer_kwargs):
    cb2 = LossLandscapeCallback(
        every_n_epochs=None, resolution=3, final_resolution=13, line_resolution=5, num_batches=1,
        metrics=None, final_metrics=None, budget_final=True,
    )  # fmt: skip
    with pytest.warns(RuntimeWarning, match="reduced to 9 x 9"):
        # 500 batches allow 150 forwards; the reliability indicators take 40: neither 13^2 + 3 * 5 + 40 = 224
        # nor 11^2 + 15 + 40 = 176 fits, 9^2 + 15 + 40 = 136 does.
        _fit(trainer_kwargs, cb2, batches_per_epoch=500, epochs=1)
    (final,) = _surfaces(cb2, "final")
    assert final.losses.shape == (9, 9)


def test_budget_decisions_are_deterministic(trainer_kwargs, tmp_path):
    runs = []
    for i in range(2):
        kwargs = {**trainer_kwargs, "default_root_dir": str(tmp_path / str(i))}
        with pytest.warns(RuntimeWarning):
            # Allowance 45, 90, 135 after each epoch; a periodic landscape costs 2 * (25 + 7) = 64: the
            # first is always computed, the second skipped (128 > 90), the third fits (128 <= 135); the
            # final one is coarsened.
            cb = LossLandscapeCallback(**{**SMALL, "budget_final": True}, metrics=None)
            runs.append(_fit(kwargs, cb, batches_per_epoch=150, epochs=3))
    a, b = runs
    assert len(_surfaces(a, "periodic")) == 2 and a.schedule.skipped == 1
    assert [r.meta["name"] for r in a.records] == [r.meta["name"] for r in b.records]
    for ra, rb in zip(a.records, b.records):
        if ra.kind != "metrics":
            np.testing.assert_array_equal(ra.losses, rb.losses)


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), float("inf"), "0.1", True])
def test_max_overhead_must_be_positive_or_none(bad):
    with pytest.raises(ValueError, match="`max_overhead`"):
        LossLandscapeCallback(max_overhead=bad)


def test_a_short_run_at_the_defaults_shows_reduced_landscapes_and_says_so(trainer_kwargs, monkeypatch):
    # A clock that advances a microsecond per reading: training looks nearly free, so the budget allows
    # nothing and both landscapes are the smallest kept (deterministic whatever the machine's speed).
    ticks = iter(range(10**9))
    module = importlib.import_module("lightning_landscape.callback.callback")
    monkeypatch.setattr(module, "clock", lambda: next(ticks) * 1e-6)
    with pytest.warns(RuntimeWarning) as warned:
        cb = _fit(trainer_kwargs, LossLandscapeCallback(num_batches=2, log_figures=False), epochs=3)
    messages = [str(w.message) for w in warned]
    reduced = [m for m in messages if "was reduced" in m]
    assert len(reduced) == 2  # once for the first periodic landscape, once for the final one
    assert any("first periodic" in m and "max_overhead=None" in m for m in reduced)
    assert any("final landscape" in m and "budget_final=False" in m for m in reduced)
    assert sum("skipping periodic landscapes" in m for m in messages) == 1  # said too, not swallowed
    (first,) = _surfaces(cb, "periodic")  # the later ones wait for the budget
    (final,) = _surfaces(cb, "final")
    for surface, restore in ((first, "max_overhead=None"), (final, "budget_final=False")):
        assert surface.losses.shape == (5, 5) and surface.meta["reduced_by_max_overhead"]
        assert surface.meta["budget"]["restore"] == restore and surface.meta["budget"]["probe_batches"] == 1
    lines = [r for r in cb.records if r.kind == "line" and r.meta["stage"] == "final"]
    assert sorted(len(r.alphas) for r in lines) == [9, 9, 9]
    assert sorted(r.meta.get("from_surface", 0) for r in lines) == [0, 5, 5]  # the axes' grid points
    (metrics,) = [r for r in cb.records if r.kind == "metrics" and r.meta["stage"] == "final"]
    assert "hessian/lambda_max" in metrics.scalars() and "hessian/trace" not in metrics.scalars()
    assert metrics.meta["budget"]["metrics_left_out"] == ["average", "sam", "trace"]


def test_explicit_sizes_are_kept_on_a_short_run(trainer_kwargs, monkeypatch):
    ticks = iter(range(10**9))
    module = importlib.import_module("lightning_landscape.callback.callback")
    monkeypatch.setattr(module, "clock", lambda: next(ticks) * 1e-6)
    kwargs = {"num_batches": 2, "log_figures": False, "every_n_epochs": None, "reliability": False}
    cb = LossLandscapeCallback(**kwargs, final_resolution=9, final_metrics=("sam",))
    _fit(trainer_kwargs, cb)
    (final,) = _surfaces(cb, "final")
    assert final.losses.shape == (9, 9) and "budget" not in final.meta  # kept as asked: nothing reduced
    assert next(r for r in cb.records if r.kind == "metrics").scalars().keys() >= {"sharpness/sam"}


@pytest.mark.parametrize("max_overhead", [0.1, None])
def test_a_reduced_landscape_draws_only_its_essential_figures(
    trainer_kwargs, tmp_path, monkeypatch, max_overhead
):
    # The same short run: reduced by the budget, each landscape draws its surface (and at the end the
    # axes' lines) but not the interpolation line; without a budget every figure is drawn.
    ticks = iter(range(10**9))
    module = importlib.import_module("lightning_landscape.callback.callback")
    monkeypatch.setattr(module, "clock", lambda: next(ticks) * 1e-6)
    kwargs = {**trainer_kwargs, "logger": CSVLogger(str(tmp_path), name="csv")}
    render = importlib.import_module("lightning_landscape.plots.render")
    submitted: list[tuple[str, bool]] = []  # (tag, drawn brief)
    submit = render.FigureRenderer.submit

    def recording(self, sink, tag, step, build, *args, **kw):
        # drawn brief: matplotlib's brief figure, or straight to pixels (plots/brief.py)
        submitted.append((tag, kw.get("brief", False) or build.__module__.endswith(".brief")))
        return submit(self, sink, tag, step, build, *args, **kw)

    monkeypatch.setattr(render.FigureRenderer, "submit", recording)
    builder = importlib.import_module("lightning_landscape.callback.landscape").LandscapeBuilder
    metrics_record = builder.metrics_record

    def metrics_marked(self, job):  # marks when the metrics are computed, between the figures
        submitted.append((f"metrics {job.plan.stage}", False))
        return metrics_record(self, job)

    monkeypatch.setattr(builder, "metrics_record", metrics_marked)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cb = _fit(kwargs, LossLandscapeCallback(num_batches=2, max_overhead=max_overhead), epochs=3)
    metrics_at = [i for i, (tag, _) in enumerate(submitted) if tag.startswith("metrics")]
    marks = [submitted.pop(i)[0] for i in reversed(metrics_at)][::-1]
    drawn = sorted(p.name.rsplit("_step", 1)[0] for p in cb.publisher.record_dir.glob("figures/*.png"))
    final_budget = _surfaces(cb, "final")[0].meta.get("budget")
    if max_overhead is None:
        assert final_budget is None
        assert "landscape_final_interpolation" in drawn and "landscape_interpolation" in drawn
        assert submitted and not any(brief for _, brief in submitted)  # full figures
        # with reliability indicators (their flags go in the surface's title): drawn after the metrics
        assert metrics_at[0] == 0 and marks[-1] == "metrics final"
    else:
        assert final_budget["figures"] == ["surface", "lines"] and final_budget["brief_figures"] is True
        assert sorted(set(drawn)) == [
            "landscape_final_lines",
            "landscape_final_surface",
            "landscape_surface",
        ]
        assert sorted(submitted) == [  # drawn brief: fewer ticks, no legend; each once
            ("landscape/final/lines", True),
            ("landscape/final/surface", True),
            ("landscape/surface", True),
        ]
        # No reliability indicators: each landscape's figures started before its metrics were computed
        # (drawn meanwhile on the figure thread), the periodic one's before the final one's.
        assert metrics_at == [1, 4] and marks == ["metrics periodic", "metrics final"]
        notes = [str(w.message) for w in caught if "final landscape was reduced" in str(w.message)]
        assert len(notes) == 1 and "'surface' and 'lines' figures in brief" in notes[0]
