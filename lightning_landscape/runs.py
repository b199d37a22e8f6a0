"""Moved to :mod:`lightning_landscape.records.runs`; this alias keeps ``import lightning_landscape.runs``
working."""

from lightning_landscape.records.runs import *  # noqa: F403
from lightning_landscape.records.runs import __all__  # noqa: F401
