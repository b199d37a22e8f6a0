"""A callback's life over fits: fresh starts, resumed state, warnings, epochs, reuse at the last step."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers.models import TinyNet, ce_loss, loader
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_landscape import LossLandscapeCallback

QUIET = {"resolution": 3, "final_resolution": 5, "line_resolution": 5, "num_batches": 2, "log_figures": False}


def run(trainer_kwargs, cb, seed=0, **over):
    pl.seed_everything(seed)
    trainer = pl.Trainer(**{**trainer_kwargs, **over}, callbacks=[cb] if isinstance(cb, pl.Callback) else cb)
    trainer.fit(TinyNet(), loader(32, 8, shuffle=True))
    return trainer


def assert_same_records(a, b):
    assert [r.meta["name"] for r in a] == [r.meta["name"] for r in b]
    for ra, rb in zip(a, b):
        for key, value in ra.arrays().items():
            np.testing.assert_array_equal(value, rb.arrays()[key], err_msg=f"{ra.meta['name']}: {key}")
        assert untimed(ra.meta) == untimed(rb.meta)


def untimed(meta):
    """Metadata without wall-clock times (the one thing two identical runs may differ in)."""
    if isinstance(meta, dict):
        return {k: untimed(v) for k, v in meta.items() if k != "seconds"}
    return meta


def test_a_reused_callback_starts_fresh(trainer_kwargs, tmp_path, monkeypatch):
    # no measured time (a frozen clock): the budget's decisions are counted, the same on both runs
    module = importlib.import_module("lightning_landscape.callback.callback")
    monkeypatch.setattr(module, "clock", lambda: 0.0)
    kwargs = {**QUIET, "max_overhead": 0.5, "snapshot_every_n_steps": 2, "metrics": ("sam",)}
    reused = LossLandscapeCallback(**kwargs)
    for seed in (0, 1):  # the natural SGD-vs-SAM loop, one callback object
        run(trainer_kwargs, reused, seed, default_root_dir=str(tmp_path / f"reused{seed}"))
    fresh = LossLandscapeCallback(**kwargs)
    run(trainer_kwargs, fresh, 1, default_root_dir=str(tmp_path / "fresh"))
    assert reused.recorder.steps == fresh.recorder.steps == [0, 2, 4, 6, 8]
    assert torch.equal(reused.recorder.stacked(), fresh.recorder.stacked())
    assert reused.schedule.state_dict() == fresh.schedule.state_dict()
    assert_same_records(reused.records, fresh.records)


def test_warnings_are_shown_once_counted_and_point_at_the_callers_code(trainer_kwargs):
    def broken(model, batch):
        raise KeyError("no such column")

    cb = LossLandscapeCallback(**QUIET, loss_fn=broken, metrics=None, final_metrics=None, max_overhead=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(trainer_kwargs, cb, max_epochs=3)
    ours = [w for w in caught if "LossLandscapeCallback" in str(w.message)]
    failed = [w for w in ours if "failed and was skipped" in str(w.message)]
    assert len(failed) == 1 and "the surface at step 4 failed" in str(failed[0].message)
    (summary,) = [w for w in ours if "repeated" in str(w.message)]
    assert "the surface failed: 4 times" in str(summary.message)  # 3 periodic landscapes and the final one
    for w in ours:  # not at callback.py or any file of the package: at this test (the `fit` call)
        assert Path(w.filename).resolve() == Path(__file__).resolve(), w.filename


def test_a_failing_metric_is_named(trainer_kwargs):
    def nan_loss(model, batch):
        return ce_loss(model, batch) * float("nan")

    cb = LossLandscapeCallback(**QUIET, loss_fn=nan_loss, metrics=("eigenvalues",), final_metrics=None)
    with pytest.warns(RuntimeWarning, match="metric 'eigenvalues' at step 4 failed"):
        run(trainer_kwargs, cb)


def test_settings_are_logged_even_when_every_landscape_is_skipped(trainer_kwargs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    cb = LossLandscapeCallback(**QUIET, every_n_epochs=None, budget_final=True, max_overhead=0.01)
    with pytest.warns(RuntimeWarning, match="final landscape was skipped"):
        run(trainer_kwargs, cb, logger=logger)
    assert cb.records == []
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    acc.Reload()
    (text,) = acc.Tensors("landscape/settings/text_summary")
    assert "| budget_final | True |" in text.tensor_proto.string_val[0].decode()


def test_epochs_agree_across_record_types_and_with_the_progress_bar(trainer_kwargs):
    cb = LossLandscapeCallback(**QUIET, max_overhead=None, metrics=("sam",), final_metrics=("sam",))
    run(trainer_kwargs, cb, max_epochs=3)
    periodic = [(r.kind, r.meta["epoch"]) for r in cb.records if r.meta["stage"] == "periodic"]
    kinds = (
        "surface",
        "line",
        "metrics",
        "reliability",
        "line",
        "line",
    )  # + the reliability's distance lines
    assert periodic == [(k, e) for e in (0, 1, 2) for k in kinds]
    # The final records: the last epoch run (2, 0-based), as the last periodic ones, not max_epochs (3).
    assert {r.meta["epoch"] for r in cb.records if r.meta["stage"] == "final"} == {2}


class Counting:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model, batch):
        self.calls += 1
        return ce_loss(model, batch)


class Nudge(pl.Callback):
    """Moves the weights at the end of training, before the landscape callback sees them."""

    def on_train_end(self, trainer, pl_module) -> None:
        with torch.no_grad():
            pl_module.net[0].bias.add_(0.5)


@pytest.mark.parametrize("nudged", [False, True])
def test_the_final_landscape_reuses_what_the_last_periodic_one_computed(trainer_kwargs, nudged):
    loss = Counting()
    kwargs = {**QUIET, "final_resolution": 3, "metrics": None, "final_metrics": None, "max_overhead": None}
    cb = LossLandscapeCallback(**kwargs, loss_fn=loss)
    run(trainer_kwargs, [Nudge(), cb] if nudged else cb)
    # Per periodic landscape: 3 x 3 surface + 5-point line, on 2 batches, and the reliability indicators
    # (a random plane: no snapshot path; 3 directions x 4 points + 2 axes x 2 signs x 5 distances); the
    # final one adds 2 axis lines.
    periodic, axes = 2 * (9 + 5 + 32), 2 * 2 * 5
    final = axes + (periodic if nudged else 0)  # at other weights it computes everything again
    assert loss.calls == 2 * periodic + final
    trust = [r for r in cb.records if r.kind == "reliability"]
    assert [r.meta["stage"] for r in trust] == ["periodic", "periodic", "final"]
    assert ("reused_from" in trust[-1].meta) != nudged
    assert trust[-1].meta["name"] == "final_reliability_step00000008"
    surfaces = [r for r in cb.records if r.kind == "surface"]
    last, fin = surfaces[-2], surfaces[-1]
    assert fin.meta["stage"] == "final" and (("reused_from" in fin.meta) != nudged)
    if not nudged:
        np.testing.assert_array_equal(fin.losses, last.losses)
        assert fin.meta["name"] == "final_surface_step00000008" and fin.meta["epoch"] == 1
    else:
        assert not np.array_equal(fin.losses, last.losses)


def test_a_01_checkpoint_state_loads(trainer_kwargs, tmp_path):
    cb = LossLandscapeCallback(**QUIET, max_overhead=None, snapshot_every_n_steps=2)
    run(trainer_kwargs, cb)
    state = cb.state_dict()
    old = {"recorder": state["recorder"], "written": ["x"], "seed": 0, "name": "", **state["schedule"]}
    for key in ("periodic", "step", "epoch"):  # keys 0.1 did not have
        old.pop(key)
    other = LossLandscapeCallback(**QUIET, max_overhead=None, snapshot_every_n_steps=2)
    other.load_state_dict(old)
    assert other.recorder.steps == cb.recorder.steps and other.schedule.spent == cb.schedule.spent
    assert other.schedule.periodic == 1 and other.schedule.last_landscape_step == 8
