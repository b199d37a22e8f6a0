"""The Lightning shell and its parts: the only folder that imports Lightning (with :mod:`..sinks`).

It may import :mod:`lightning_landscape.functional`, :mod:`~lightning_landscape.records`,
:mod:`~lightning_landscape.plots`, :mod:`~lightning_landscape.solutions`, :mod:`~lightning_landscape.optim`
and :mod:`lightning_landscape.sinks`; nothing below imports it. :class:`LossLandscapeCallback` (in
:mod:`.callback`) is the hooks; the other modules are the parts it asks: options, schedule, probe, plane,
landscape, publish, module state, recorder, distributed, progress, metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_landscape.callback.callback import LossLandscapeCallback

__all__ = ["LossLandscapeCallback"]


def __getattr__(name: str) -> Any:
    # Lazy, so that importing a part (say ``callback.metrics``) does not import Lightning through the shell.
    if name == "LossLandscapeCallback":
        from lightning_landscape.callback.callback import LossLandscapeCallback

        return LossLandscapeCallback
    raise AttributeError(f"module 'lightning_landscape.callback' has no attribute {name!r}")
