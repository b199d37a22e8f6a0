"""A slow landscape shows its progress in Lightning's bar on rank zero (none without a bar); timed."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
from helpers.models import TinyNet, ce_loss, loader

from lightning_landscape import LossLandscapeCallback
from lightning_landscape.callback import progress as _progress

QUIET = {"resolution": 3, "final_resolution": 5, "line_resolution": 3, "num_batches": 1, "log_figures": False}
QUIET.update(metrics=(), final_metrics=(), loss_fn=ce_loss, max_overhead=None, every_n_epochs=None)


def _fit(tmp_path, progress_bar: bool) -> LossLandscapeCallback:
    cb = LossLandscapeCallback(**QUIET)
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=2, logger=False, default_root_dir=tmp_path, callbacks=[cb],
        enable_progress_bar=progress_bar, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(TinyNet(), loader(16))
    return cb


@pytest.mark.parametrize("progress_bar", [True, False])
def test_progress_shows_only_with_a_progress_bar(tmp_path, capsys, monkeypatch, progress_bar):
    monkeypatch.setattr(_progress, "DELAY", 0.0)  # every landscape counts as slow
    cb = _fit(tmp_path, progress_bar)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    (final,) = [r for r in cb.records if r.kind == "surface"]
    assert final.meta["seconds"] >= 0
    if progress_bar:
        # 5 x 5 surface, an interpolation line of 3; the axis lines' 3 points each are on the grid (reused)
        assert "final landscape at step 2: 28 points in" in text
        assert "[landscape 25/28, ~" in text  # the bar showed the points done and the time left
    else:
        assert "landscape" not in text.lower()
