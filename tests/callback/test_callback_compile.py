"""LossLandscapeCallback(engine="compile"): one compilation for the whole fit, the loop's values."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import numpy as np
import torch
from helpers.models import TinyNet, ce_loss, loader
from torch._dynamo.testing import CompileCounter

from lightning_landscape import LossLandscapeCallback
from lightning_landscape.functional.landscape.engine import CompileFallbackWarning, compile_settings

SMALL = {"resolution": 3, "final_resolution": 5, "line_resolution": 5, "num_batches": 2, "log_figures": False}


def _fit(trainer_kwargs, engine, loss_fn=ce_loss):
    pl.seed_everything(0)
    model = TinyNet()
    cb = LossLandscapeCallback(engine=engine, loss_fn=loss_fn, max_overhead=None, **SMALL)
    trainer = pl.Trainer(**{**trainer_kwargs, "max_epochs": 3}, callbacks=[cb])
    trainer.fit(model, loader(32, 8))
    return model, cb.records


def test_compile_engine_compiles_once_per_fit_and_matches_the_loop(trainer_kwargs):
    counter = CompileCounter()
    compile_settings(backend=counter)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", CompileFallbackWarning)
            model_c, records_c = _fit(trainer_kwargs, "compile")
        model_l, records_l = _fit(trainer_kwargs, "loop")
        assert counter.frame_count == 1  # every surface, line and interpolation of the fit: one graph
        landscapes_c, landscapes_l = (
            [r for r in rs if hasattr(r, "losses")] for rs in (records_c, records_l)
        )
        assert len(landscapes_c) == len(landscapes_l) >= 8
        for c, ref in zip(landscapes_c, landscapes_l):
            assert type(c) is type(ref)
            np.testing.assert_allclose(c.losses, ref.losses, rtol=1e-5, atol=1e-7)
        for p, q in zip(model_c.parameters(), model_l.parameters()):
            assert torch.equal(p, q)  # training is the same whichever engine observes it
        # The default loss (training_step, with self.log) is not one graph: the loop, one warning.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _fit(trainer_kwargs, "compile", loss_fn=None)
        fallbacks = [w for w in caught if issubclass(w.category, CompileFallbackWarning)]
        assert len(fallbacks) == 1 and "TinyNet" in str(fallbacks[0].message)
    finally:
        compile_settings()
