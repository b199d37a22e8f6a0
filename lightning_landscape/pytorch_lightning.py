"""The callback for the standalone ``pytorch_lightning`` package (``pip install pytorch-lightning``).

Lightning ships the same trainer under two names, ``lightning.pytorch`` and ``pytorch_lightning``, whose
classes are distinct copies. :class:`lightning_landscape.LossLandscapeCallback` is a
``lightning.pytorch.Callback``; a ``pytorch_lightning.Trainer`` calls its hooks all the same, so
``pytorch_lightning.Trainer(callbacks=[LossLandscapeCallback()])`` works. Where the type is checked, use
the class below instead: it is the same callback and also a ``pytorch_lightning.Callback``, as
``pytorch_lightning.cli.LightningCLI`` needs
(``class_path: lightning_landscape.pytorch_lightning.LossLandscapeCallback``), and so do
``Trainer(callbacks=cb)`` with a single callback and ``isinstance(cb, pytorch_lightning.Callback)``.
(Lightning's own plugins do the same: one class per namespace, built from one implementation.)

Both classes share their ``state_key``, so checkpoints move between the namespaces. The strategy check,
the loggers, SAM and the precision plugins recognise either namespace by themselves.
"""

from __future__ import annotations

import pytorch_lightning as _pl

from lightning_landscape.callback.callback import LossLandscapeCallback as _LossLandscapeCallback

__all__ = ["LossLandscapeCallback"]


# The two bases are copies of one class under two package names, so mypy sees every hook defined twice with
# "incompatible" signatures (each names its own namespace's Trainer/LightningModule types). They are the same
# methods at runtime; the [misc] ignore covers only that duplicate-definition report.
class LossLandscapeCallback(_LossLandscapeCallback, _pl.Callback):  # type: ignore[misc]
    """:class:`lightning_landscape.LossLandscapeCallback` as a ``pytorch_lightning.Callback`` too.

    Example::

        >>> import tempfile
        >>> import pytorch_lightning as pl
        >>> from pytorch_lightning.demos.boring_classes import BoringModel
        >>> cb = LossLandscapeCallback(resolution=3, final_resolution=5, line_resolution=5, num_batches=1,
        ...                            metrics=None, final_metrics=None, max_overhead=None, log_figures=False)
        >>> isinstance(cb, pl.Callback)
        True
        >>> trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, callbacks=cb,
        ...                      logger=False, default_root_dir=tempfile.mkdtemp(), enable_progress_bar=False,
        ...                      enable_model_summary=False, enable_checkpointing=False)
        >>> trainer.fit(BoringModel())
        >>> sorted({r.meta["stage"] for r in cb.records})
        ['final', 'periodic']
    """
