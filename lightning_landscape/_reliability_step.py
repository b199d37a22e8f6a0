"""The reliability step of a landscape: :class:`ReliabilitySteps`, a part of
:class:`~lightning_landscape._landscape.LandscapeBuilder` kept in its own module.

After the surface (:meth:`LandscapeBuilder.compute`) and the metrics, the indicators of the surface just
drawn (:class:`~lightning_landscape._indicators.Indicators`); the final landscape reuses the last periodic
one's when it reused that surface and the checks are the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_landscape._publish import record_name
from lightning_landscape.functional.params import LossFn
from lightning_landscape.records import LineRecord, ReliabilityRecord, SurfaceRecord

if TYPE_CHECKING:
    from lightning_landscape._landscape import Observation, _Drawn

__all__ = ["ReliabilitySteps"]


def _copy(record: SurfaceRecord | LineRecord | ReliabilityRecord) -> Any:
    """A copy of a record computed at the same weights, to reuse (its arrays copied, its name noted)."""
    arrays = {k: v.copy() for k, v in record.arrays().items()}
    return type(record)(**arrays, meta={**record.meta, "reused_from": record.meta["name"]})


class ReliabilitySteps:
    """The reliability indicators of the builder's latest surface (a part of ``LandscapeBuilder``)."""

    def reliability_record(self: Any, job: Observation) -> list[ReliabilityRecord | LineRecord]:
        """The reliability indicators of the surface :meth:`compute` just drew (after the metrics, so
        that a final ``trace`` feeds the ``trace / P`` cross-check): the record and the distance lines.

        Evaluated with the current BatchNorm statistics (``bn="keep"``) whatever ``bn`` is.
        """
        step, stage, plan, drawn = job.step, job.plan.stage, job.plan, self._drawn
        if not plan.reliability or drawn is None or (drawn.step, drawn.stage) != (step, stage):
            return []  # off, or the surface failed
        self._drawn = None
        self.part = "the reliability indicators"
        batches, loss_fn = job.inputs()
        settings = self.indicators.settings_for(stage, plan.metrics)
        latest = self._latest if stage == "final" and "reused_from" in drawn.surface.meta else None
        old = latest.reliability if latest is not None and latest.step == step else None
        if old is not None and old[0] == settings:  # the same surface, the same checks: reuse them
            record, lines = _copy(old[1][0]), [_copy(r) for r in old[1][1:]]
        else:
            record, lines = self._indicate(job, drawn, batches, loss_fn)
        if stage == "periodic" and self._latest is not None and self._latest.step == step:
            self._latest.reliability = (settings, [record, *lines])
        keep = ("stage", "epoch", "global_step", "callback_name", "precision", "world_size", "directions")
        base = {k: drawn.common[k] for k in keep if k in drawn.common}
        record.meta.update(
            base, name=record_name(stage, "reliability", step), surface=drawn.surface.meta["name"]
        )
        record.meta["bn"] = "keep"
        for i, line in enumerate(lines):
            line.meta.update(base, directions="distance", name=record_name(stage, f"distance{i + 1}", step))
        self.part = "the landscape"
        return [record, *lines]

    def _indicate(
        self: Any, job: Observation, drawn: _Drawn, batches: list[Any], loss_fn: LossFn
    ) -> tuple[ReliabilityRecord, list[LineRecord]]:
        plane, plan, shard = drawn.plane, job.plan, job.shard()
        with job.probe.observing(job.module):
            return self.indicators.compute(
                job.module, loss_fn, batches, job.params, plane.directions, drawn.surface, stage=plan.stage,
                metrics=plan.metrics, pca=plane.pca,
                snapshots=job.recorder.stacked() if plane.pca is not None else None,
                steps=plane.meta.get("snapshot_steps", []), step=drawn.step, seed=self.seed,
                include_1d=self.include_1d, unit=plane.unit, trace=drawn.trace, shard=shard,
                engine=self.engine,
            )  # fmt: skip
