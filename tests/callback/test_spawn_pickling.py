"""ddp_spawn sends the trainer's callbacks to its workers by pickling them (before setup and after a fit)."""

from __future__ import annotations

from multiprocessing.reduction import ForkingPickler

import lightning.pytorch as pl
from helpers.models import TinyNet, loader

from lightning_landscape import LossLandscapeCallback


def test_the_callback_crosses_processes_before_and_after_a_fit(trainer_kwargs):
    cb = LossLandscapeCallback(resolution=3, final_resolution=3, line_resolution=5, metrics=None,
                               final_metrics=None, reliability=False, max_overhead=None)  # fmt: skip
    ForkingPickler.dumps(cb)  # as Lightning's spawn launcher does, before any hook ran
    pl.Trainer(**trainer_kwargs, callbacks=[cb]).fit(TinyNet(), loader(16, 8))
    assert cb.records  # it ran, with its figure worker
    again = ForkingPickler.loads(ForkingPickler.dumps(cb))
    assert again.publisher.renderer is None and again.seed == cb.seed
