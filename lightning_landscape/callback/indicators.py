"""The reliability indicators of one landscape, as the callback computes them (see docs/reliability.md).

:class:`Indicators` turns the callback's ``reliability=`` option into the core's
:class:`~lightning_landscape.functional.ReliabilitySettings` and thresholds, prices them for the budget
(:meth:`Indicators.evaluations`) and calls :func:`~lightning_landscape.functional.landscape_reliability`
on a surface the builder has just drawn, with what the landscape already knows: the probe noise of the
surface, the spacing of its contour levels, the trajectory PCA and its snapshots, and the trace where a
``trace`` metric was computed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from lightning_landscape.functional.landscape.params import Direction
from lightning_landscape.functional.landscape.shards import ShardLayout
from lightning_landscape.functional.landscape.trajectory import TrajectoryPCA
from lightning_landscape.functional.objective import Objective
from lightning_landscape.functional.trust.reliability import (
    ReliabilitySettings,
    ReliabilityThresholds,
    landscape_reliability_of,
    reliability_cost,
)
from lightning_landscape.records.record import LineRecord, ReliabilityRecord, SurfaceRecord

__all__ = ["FINAL_TRACE_DIRECTIONS", "Indicators", "contour_spacing"]

# Random unit directions of the final ``trace / P`` cross-check when a ``trace`` metric is computed
# (2 evaluations each) and the settings leave ``trace_directions`` at 0.
FINAL_TRACE_DIRECTIONS = 8
_SETTINGS = {f.name for f in dataclasses.fields(ReliabilitySettings)}
_THRESHOLDS = {f.name for f in dataclasses.fields(ReliabilityThresholds)}


def _plan_evaluations(indicators: Indicators, snapshots: int, plan: Any) -> float:
    return indicators.evaluations(plan.stage, plan.metrics, snapshots)


def contour_spacing(surface: SurfaceRecord, levels: int = 20, log: bool = True) -> float | None:
    """Median spacing of neighbouring contour levels as drawn, relative to the surface's loss range
    (the scale of the probe noise's ``relative`` number); None for a flat or empty surface."""
    from lightning_landscape.plots.landscape import contour_levels

    z = np.asarray(surface.losses, dtype=np.float64)
    z = z[np.isfinite(z)]
    if z.size == 0 or not z.max() > z.min():
        return None
    lv = contour_levels(z, levels, log)
    return float(np.median(np.diff(lv)) / (z.max() - z.min())) if len(lv) > 1 else None


class Indicators:
    """The callback's ``reliability=`` option: ``True`` (defaults), ``False`` (off) or a mapping of
    :class:`ReliabilitySettings` and :class:`ReliabilityThresholds` fields (one flat mapping).

    Example::

        >>> ind = Indicators({"directions": 2, "min_on_plane_share": 0.5})
        >>> ind.settings.directions, ind.thresholds.min_on_plane_share, ind.enabled
        (2, 0.5, True)
        >>> Indicators(False).enabled
        False
    """

    def __init__(self, option: bool | Mapping[str, Any] = True, argument: str = "reliability") -> None:
        if isinstance(option, bool):
            self.enabled = option
            self.settings, self.thresholds = ReliabilitySettings(), ReliabilityThresholds()
            return
        if not isinstance(option, Mapping):
            raise ValueError(
                f"`{argument}` must be True, False or a mapping of ReliabilitySettings / "
                f"ReliabilityThresholds fields, got {type(option).__name__}"
            )
        unknown = sorted(set(option) - _SETTINGS - _THRESHOLDS)
        if unknown:
            raise ValueError(
                f"`{argument}` has unknown keys {unknown}; expected some of {sorted(_SETTINGS | _THRESHOLDS)}"
            )
        settings = {k: v for k, v in option.items() if k in _SETTINGS}
        if "distances" in settings:
            settings["distances"] = tuple(settings["distances"])
        try:
            self.settings = ReliabilitySettings(**settings)
            self.thresholds = ReliabilityThresholds(**{k: v for k, v in option.items() if k in _THRESHOLDS})
        except ValueError as err:
            raise ValueError(f"`{argument}`: {err}") from None
        self.enabled = True

    def settings_for(self, stage: str, metrics: Mapping[str, Any]) -> ReliabilitySettings:
        """The settings of a landscape: at the end, with a ``trace`` metric, the ``trace / P`` check on."""
        st = self.settings
        if stage == "final" and "trace" in metrics and st.trace_directions == 0:
            return dataclasses.replace(st, trace_directions=FINAL_TRACE_DIRECTIONS)
        return st

    def evaluations(self, stage: str, metrics: Mapping[str, Any], snapshots: int) -> float:
        """Loss evaluations over the probe set the indicators of a landscape add (for the budget)."""
        return reliability_cost(self.settings_for(stage, metrics), snapshots=snapshots)

    def plan_cost(self, snapshots: int) -> Callable[[Any], float]:
        """``cost(plan)``: :meth:`evaluations` of a schedule's plan (its ``stage`` and ``metrics``), as a
        picklable callable (``ddp_spawn`` pickles the callback that holds it)."""
        return functools.partial(_plan_evaluations, self, snapshots)

    def compute(
        self,
        objective: Objective,
        plane: Sequence[Direction],
        surface: SurfaceRecord,
        *,
        stage: str,
        metrics: Mapping[str, Any],
        pca: TrajectoryPCA | None,
        snapshots: Tensor | None,
        steps: Sequence[int],
        step: int,
        seed: int,
        include_1d: bool,
        unit: float,
        trace: float | None,
        layout: ShardLayout | None = None,
    ) -> tuple[ReliabilityRecord, list[LineRecord]]:
        """:func:`landscape_reliability` of ``surface`` with what the landscape knows (its ``objective``:
        probe batches, loss, parameters, engine and sharding; ``layout``: of a sharded model, whose
        parameters, plane and snapshots are this rank's slices)."""
        noise = surface.meta.get("probe_noise")
        noise = float(noise) if isinstance(noise, (int, float)) and math.isfinite(noise) else None
        given = [float(s) for s in (*steps, step)]
        fits = pca is not None and len(given) == pca.coords.shape[0] + 1
        # Otherwise the random-walk baseline assumes evenly spaced snapshots.
        ordered = fits and not np.any(np.diff(given) < 0) and given[-1] > given[0]
        times: list[float] | None = given if ordered else None
        settings = self.settings_for(stage, metrics)
        return landscape_reliability_of(
            objective, plane, surface, pca=pca, snapshots=snapshots if pca is not None else None,
            times=times, seed=seed, include_1d=include_1d, unit=unit, noise=noise,
            contour_spacing=contour_spacing(surface), trace=trace if settings.trace_directions else None,
            settings=settings, thresholds=self.thresholds, layout=layout,
        )  # fmt: skip
