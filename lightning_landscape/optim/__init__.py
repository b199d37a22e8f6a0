"""Optimizers that interact with the loss landscape (sharpness-aware minimization)."""

from lightning_landscape.optim.sam import SAM

__all__ = ["SAM"]
