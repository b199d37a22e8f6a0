"""Moved to :mod:`lightning_landscape.records.stats`; this alias keeps ``import lightning_landscape.stats``
working."""

from lightning_landscape.records.stats import *  # noqa: F403
from lightning_landscape.records.stats import __all__  # noqa: F401
