"""Probe noise: how much of a landscape is the choice of probe batches.

Every point's loss is the mean of the losses on ``B`` probe batches. Their spread gives each point a
standard error, ``std(batch losses, ddof=1) / sqrt(B)``: how much the value would move with another
draw of ``B`` batches like these (exactly so when the batches are drawn independently). Compared with
the range of the losses over the surface or line, one number says whether the picture's relief is
larger than its noise: :attr:`ProbeNoise.relative`, the median standard error over the range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lightning_landscape.records.record import LineRecord, SurfaceRecord

__all__ = ["ProbeNoise", "probe_noise", "probe_noise_of"]


@dataclass
class ProbeNoise:
    """Probe noise of a surface or line.

    Attributes:
        stderr: standard error of each point's loss, shaped like the record's ``losses`` (NaN with a
            single probe batch: there is no spread to measure).
        median_stderr: the median of ``stderr`` over the points with a finite loss.
        loss_range: ``max - min`` of the finite losses.
        relative: ``median_stderr / loss_range`` (0 when both are 0, inf for noise on a flat landscape,
            NaN when it cannot be measured).
        batches: the number of probe batches ``B``.
    """

    stderr: np.ndarray
    median_stderr: float
    loss_range: float
    relative: float
    batches: int


def probe_noise_of(batch_losses: np.ndarray, losses: np.ndarray | None = None) -> ProbeNoise:
    """:class:`ProbeNoise` from per-batch losses (last axis: probe batches) and their means ``losses``."""
    batch_losses = np.asarray(batch_losses, dtype=np.float64)
    if batch_losses.ndim < 1:
        raise ValueError("`batch_losses` must have a last axis over probe batches")
    n = batch_losses.shape[-1]
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        means = batch_losses.mean(axis=-1) if losses is None else np.asarray(losses, dtype=np.float64)
        if n >= 2:
            # Shifted by the first batch's value (the spread is shift-invariant): identical batches
            # give exactly 0, however the mean rounds.
            stderr = (batch_losses - batch_losses[..., :1]).std(axis=-1, ddof=1) / math.sqrt(n)
        else:
            stderr = np.full(batch_losses.shape[:-1], np.nan)
    finite = np.isfinite(means) & np.isfinite(stderr)
    median = float(np.median(stderr[finite])) if finite.any() else math.nan
    good = means[np.isfinite(means)]
    spread = float(good.max() - good.min()) if good.size else math.nan
    if not (math.isfinite(median) and math.isfinite(spread)):
        relative = math.nan
    elif spread > 0:
        relative = median / spread
    else:
        relative = 0.0 if median == 0 else math.inf
    return ProbeNoise(stderr=stderr, median_stderr=median, loss_range=spread, relative=relative, batches=n)


def probe_noise(record: SurfaceRecord | LineRecord) -> ProbeNoise:
    """The probe noise of a surface or line record: the noise map and one number for the whole record.

    Needs the record's ``batch_losses`` (kept by :func:`loss_surface`, :func:`loss_line` and the other
    landscape functions); raises a ValueError for a record without them.

    Example::

        >>> from lightning_landscape.records.record import LineRecord
        >>> per_batch = np.array([[1.0, 1.2], [2.0, 2.2], [5.0, 5.2]])   # 3 points x 2 batches
        >>> rec = LineRecord(np.array([-1.0, 0.0, 1.0]), per_batch.mean(1), batch_losses=per_batch)
        >>> noise = probe_noise(rec)
        >>> noise.stderr.round(6)   # std 0.1414 / sqrt(2)
        array([0.1, 0.1, 0.1])
        >>> round(noise.relative, 6)   # 0.1 over a range of 4
        0.025
    """
    batch_losses = getattr(record, "batch_losses", None)
    if batch_losses is None:
        raise ValueError("`record` has no `batch_losses`: it was made without per-batch losses")
    return probe_noise_of(batch_losses, record.losses)
