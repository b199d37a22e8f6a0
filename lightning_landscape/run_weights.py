"""Moved to :mod:`lightning_landscape.solutions.weights`; this alias keeps ``import
lightning_landscape.run_weights`` working."""

from lightning_landscape.solutions.weights import *  # noqa: F403
from lightning_landscape.solutions.weights import __all__  # noqa: F401
