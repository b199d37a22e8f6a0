"""Calling a LightningModule's hooks from outside the loop without touching the user's logged metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn

__all__ = ["silenced_logging"]


def _noop_log(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def silenced_logging(module: nn.Module | None) -> Iterator[None]:
    """Turn ``module.log`` / ``module.log_dict`` into no-ops (instance attributes shadowing the methods)."""
    if module is None or not hasattr(module, "log"):
        yield
        return
    previous = {name: module.__dict__[name] for name in ("log", "log_dict") if name in module.__dict__}
    for name in ("log", "log_dict"):
        object.__setattr__(module, name, _noop_log)
    try:
        yield
    finally:
        for name in ("log", "log_dict"):
            if name in previous:
                object.__setattr__(module, name, previous[name])
            else:
                object.__delattr__(module, name)
