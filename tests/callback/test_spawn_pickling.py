"""ddp_spawn sends the trainer's callbacks to its workers by pickling them (before setup and after a fit)."""

from __future__ import annotations

import pickle
from multiprocessing.reduction import ForkingPickler

import lightning.pytorch as pl
import pytest
import torch
from helpers.models import TinyNet, ce_loss, loader

from lightning_landscape import LossLandscapeCallback


def test_the_callback_crosses_processes_before_and_after_a_fit(trainer_kwargs):
    cb = LossLandscapeCallback(resolution=3, final_resolution=3, line_resolution=5, metrics=None,
                               final_metrics=None, reliability=False, max_overhead=None)  # fmt: skip
    ForkingPickler.dumps(cb)  # as Lightning's spawn launcher does, before any hook ran
    pl.Trainer(**trainer_kwargs, callbacks=[cb]).fit(TinyNet(), loader(16, 8))
    assert cb.records  # it ran, with its figure worker
    again = ForkingPickler.loads(ForkingPickler.dumps(cb))
    assert again.publisher.renderer is None and again.seed == cb.seed


def accuracy(model, batch):
    x, y = batch
    return (model(x).argmax(-1) == y).double().mean()


# Every kind of option the constructor takes (issue 21.8): a ddp_spawn fit pickles the callback with it.
# Functions are module-level (a lambda the user passes cannot cross processes, ours must not be needed).
OPTION_KINDS = {
    "defaults": {},
    "reliability mapping": {"reliability": {"directions": 2, "min_on_plane_share": 0.5}},
    "reliability off": {"reliability": False},
    "metrics mappings": {"metrics": {"sam": {"rho": 0.1}}, "final_metrics": ["eigenvalues", "trace"]},
    "functions": {"loss_fn": ce_loss, "metric_fn": accuracy, "metric_name": "acc"},
    "probe loader": {"probe_dataloader": loader(16, 8, seed=5), "num_batches": 2},
    "dtypes": {"snapshot_dtype": "bfloat16", "save_weights": True, "save_weights_dtype": torch.float16},
    "random span pair": {"directions": "random", "span": (-0.5, 1.0), "seed": 7, "include_1d": True},
    "hessian": {"directions": "hessian", "bn": "recompute", "engine": "loop", "name": "h"},
    "epochs cadence": {"snapshot_every_n_epochs": 1, "every_n_epochs": None, "snapshot_storage": "memmap"},
    "issue 21.8": {"directions": "random", "seed": 7, "resolution": 5, "final_resolution": 7,
                   "line_resolution": 9, "probe_dataloader": loader(16, 8), "max_overhead": None,
                   "metrics": None, "final_metrics": None},
}  # fmt: skip


@pytest.mark.parametrize("options", list(OPTION_KINDS.values()), ids=list(OPTION_KINDS))
def test_the_callback_pickles_with_every_kind_of_option(options):
    cb = LossLandscapeCallback(**options)
    again = pickle.loads(pickle.dumps(cb))  # the test of picklability (ddp_spawn's launcher pickles it)
    assert again._setting_values().keys() == cb._setting_values().keys()
    for key, value in cb._setting_values().items():
        if key != "probe_dataloader":
            assert getattr(again, key) == value, key
    # the budget's price of the reliability indicators came across and prices plans as before
    plan = cb.schedule.plan("final", world_size=1, probe_batches=2)
    assert plan is not None
    assert again.schedule.plan("final", world_size=1, probe_batches=2).cost == plan.cost
    assert (again.schedule.reliability is None) == (cb.schedule.reliability is None)


def test_the_callback_pickles_after_a_fit_with_every_part_used(trainer_kwargs):
    cb = LossLandscapeCallback(resolution=3, final_resolution=3, line_resolution=5, num_batches=1,
                               metrics={"sam": {"rho": 0.05}}, final_metrics=None, max_overhead=None,
                               metric_fn=accuracy, loss_fn=ce_loss, snapshot_storage="memmap",
                               snapshot_every_n_steps=2)  # fmt: skip
    ForkingPickler.dumps(cb)
    pl.Trainer(**{**trainer_kwargs, "max_epochs": 1}, callbacks=[cb]).fit(TinyNet(), loader(16, 8))
    assert any(r.kind == "reliability" for r in cb.records)
    again = pickle.loads(pickle.dumps(cb))
    assert again.schedule.reliability is not None and again.publisher.renderer is None
    # the snapshots kept in a memory-mapped file are the same on the other side
    assert cb.recorder.path is not None and len(again.recorder) == len(cb.recorder) >= 2
    assert torch.equal(again.recorder.stacked(), cb.recorder.stacked())
