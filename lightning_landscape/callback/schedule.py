"""When the callback works and how much: snapshot and landscape cadence, the resume guard, the budget.

:class:`LandscapeSchedule` is plain Python (no Trainer, no torch): the callback tells it what happened
(a training batch, an epoch end) and asks it what to do (snapshot now? which landscape, if any?).
Its state is a handful of primitives, checkpointed with the callback.

The cost model counts work instead of timing it, so every rank and every identical run reaches the
same decisions without communicating: a training step costs about 3 forward passes of its batch, a
landscape one forward pass per grid or line point and probe batch, a metric its measured equivalent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["HESSIAN_PLANE_ITERATIONS", "LandscapeSchedule", "Plan", "estimated_cost"]

Stage = Literal["periodic", "final"]

# Lanczos steps of the plane of directions="hessian"
HESSIAN_PLANE_ITERATIONS: dict[str, int] = {"periodic": 20, "final": 50}
TRAIN_STEP_COST = 3.0  # a training step costs about 3 forward passes (forward + backward) of its batch
SMALLEST_FINAL = 5  # the coarsest final surface the budget may reduce to (5 x 5)


# Cost of each metric in evaluations of the loss over the probe set (forward-pass equivalents), as
# measured by benchmarks/curvature.py: a Hessian-vector product ~2.3 and its gradient graph ~1.4 (about
# 3.9 per Lanczos step with reorthogonalization), SAM a gradient and one evaluation, average sharpness
# one evaluation per sample.
# Blocks per model when a "blocks" spec does not list them (the cost model has no model to count them on).
_ASSUMED_BLOCKS = 4


def estimated_cost(spec: Mapping[str, Mapping[str, Any]]) -> float:
    """Estimated cost of a resolved metrics spec, in evaluations of the loss over the probe set.

    Example::

        >>> estimated_cost({"sam": {"rho": 0.05}, "average": {"sigma": 0.01, "samples": 16}})
        21.5
    """
    cost = 0.0
    for name, options in spec.items():
        if name in ("eigenvalues", "eos"):
            cost += 1.4 + 3.9 * float(options.get("max_iter", 20))
        elif name == "trace":
            cost += 1.4 + 3.6 * float(options.get("samples", 16))
        elif name == "sam":
            cost += 4.5
        elif name == "average":
            cost += 1.0 + float(options.get("samples", 16))
        elif name == "blocks":
            blocks = options.get("blocks")
            count = len(blocks) if blocks is not None else _ASSUMED_BLOCKS
            # Restricted products cost about as much as full ones (one backward pass each).
            per_block = 3.9 * float(options.get("max_iter", 20)) + 3.6 * float(options.get("samples", 16))
            cost += 1.4 + count * per_block
    return cost


@dataclass(frozen=True)
class Plan:
    """What one landscape evaluates, and its cost in forward passes over one probe batch (per rank)."""

    stage: Stage
    resolution: int
    line_resolution: int
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    cost: float = 0.0
    reduced: bool = False
    reliability: bool = False

    @property
    def lines(self) -> int:
        """1-D lines evaluated: the interpolation line, and at the end the two axes."""
        return 3 if self.stage == "final" else 1

    @property
    def hessian_iterations(self) -> int:
        """Lanczos steps of the Hessian plane (``directions="hessian"``)."""
        return HESSIAN_PLANE_ITERATIONS[self.stage]


class LandscapeSchedule:
    r"""When to snapshot, when to compute a landscape and how large, within an overhead budget.

    Periodic landscapes come every ``every_n_epochs`` epochs, at most once per global step (a resumed
    run does not repeat one). The first periodic landscape and the final one are computed at their
    configured size; later periodic ones must fit ``max_overhead`` (the callback's counted work as a
    fraction of the training work so far) with the final landscape's work set aside, else they are
    skipped until training has caught up. So a run long enough for the first and the final landscape
    to fit within ``max_overhead`` stays within it as a whole. With ``budget_final=True`` nothing is
    set aside and the final landscape must fit too: it is made coarser until it does (fewer grid
    points, then fewer metrics, down to 5 x 5), or skipped. ``max_overhead=None`` computes
    everything. Override :meth:`plan` to decide differently.

    Example::

        >>> s = LandscapeSchedule(every_n_epochs=1, resolution=5, final_resolution=9, line_resolution=7,
        ...                       metrics={}, final_metrics={}, max_overhead=0.1)
        >>> for _ in range(8):
        ...     s.count_batch()
        >>> s.plan("periodic", world_size=1, probe_batches=2).resolution  # the first: always
        5
        >>> s.charge(s.plan("periodic", 1, 2))
        >>> s.plan("periodic", world_size=1, probe_batches=2) is None  # 2 * (25 + 7) > 0.1 * 3 * 8
        True
    """

    def __init__(
        self,
        every_n_epochs: int | None = 1,
        snapshot_every_n_steps: int | None = 10,
        snapshot_every_n_epochs: int | None = None,
        resolution: int = 11,
        final_resolution: int = 31,
        line_resolution: int = 41,
        metrics: Mapping[str, dict[str, Any]] | None = None,
        final_metrics: Mapping[str, dict[str, Any]] | None = None,
        max_overhead: float | None = 0.1,
        budget_final: bool = False,
        hessian_plane: bool = False,
        bn: str = "interpolate",
        metric: bool = False,
        reliability: Callable[[Plan], float] | None = None,
        final: bool = True,
    ) -> None:
        self.every_n_epochs = every_n_epochs
        self.snapshot_every_n_steps = snapshot_every_n_steps
        self.snapshot_every_n_epochs = snapshot_every_n_epochs
        self.resolution = resolution
        self.final_resolution = final_resolution
        self.line_resolution = line_resolution
        self.metrics = dict(metrics or {})
        self.final_metrics = dict(final_metrics or {})
        self.max_overhead = max_overhead
        self.budget_final = budget_final
        self.hessian_plane = hessian_plane
        self.bn = bn  # "recompute" doubles every grid and line point's forward passes
        self.metric = metric  # a metric_fn: one more pass per point of interpolation line, final surface
        self.reliability = reliability  # the indicators' evaluations for a plan (None: off)
        self.final = final  # a final landscape will come: periodic ones leave room for its work
        self.reset()

    def reset(self) -> None:
        """Forget the run: a new ``fit`` that does not resume from a checkpoint starts here."""
        self.train_batches = 0  # training batches seen: the measure of training work
        self.spent = 0.0  # the callback's work so far, in forward passes over one probe batch
        self.skipped = 0  # periodic landscapes skipped to stay within max_overhead
        self.periodic = 0  # periodic landscapes computed
        self.last_landscape_step = -1  # the resume guard: not twice at one global step
        self.step = 0  # the latest global step seen
        self.epoch = -1  # the latest epoch started (0-based), -1 before the first

    # ------------------------------------------------------------------ what happened

    def count_batch(self, step: int | None = None) -> None:
        """One training batch ended (at global ``step``, if given)."""
        self.train_batches += 1
        if step is not None:
            self.step = int(step)

    def start_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self) -> int:
        """A periodic landscape was skipped for the budget; return how many so far."""
        self.skipped += 1
        return self.skipped

    def charge(self, plan: Plan | None) -> None:
        """Book the work of a landscape about to be computed."""
        if plan is not None:
            self.spent += plan.cost
            if plan.stage == "periodic":
                self.periodic += 1

    # ------------------------------------------------------------------ what to do

    def snapshot_event(self, step: int | None = None, epoch_end: int | None = None) -> int | None:
        """The snapshot event due after an optimizer ``step`` or at the end of epoch ``epoch_end``
        (0-based), or None. Event ``e`` is the ``e``-th multiple of the cadence; event 0 is the initial
        weights."""
        if step is not None and self.snapshot_every_n_steps is not None:
            return step // self.snapshot_every_n_steps
        n = self.snapshot_every_n_epochs
        if epoch_end is not None and n is not None and (epoch_end + 1) % n == 0:
            return (epoch_end + 1) // n
        return None

    def landscape_due(self, epoch: int, step: int) -> bool:
        """Whether a periodic landscape is due at the end of ``epoch`` (0-based) at global ``step``.

        Marks the step as done when it is, so a resumed run never computes two at one step.
        """
        n = self.every_n_epochs
        if n is None or (epoch + 1) % n != 0 or step == self.last_landscape_step:
            return False
        self.last_landscape_step = int(step)
        return True

    def cost(self, plan: Plan, world_size: int, probe_batches: int) -> float:
        """Forward passes over one probe batch that ``plan`` takes on each rank.

        A grid or line point costs one pass per probe batch, two with ``bn="recompute"`` (the
        statistics are re-estimated first); a ``metric_fn`` adds one on the interpolation line and the
        final surface; the reliability indicators count their evaluations (shared out like points).
        """
        per_point = 2.0 if self.bn == "recompute" else 1.0
        surface, line = plan.resolution**2, plan.line_resolution
        points = per_point * (surface + plan.lines * line)
        if self.metric:
            points += line + (surface if plan.stage == "final" else 0)
        if plan.reliability and self.reliability is not None:
            points += self.reliability(plan)
        per_rank = estimated_cost(plan.metrics)
        if self.hessian_plane:
            per_rank += 3.9 * plan.hessian_iterations
        return probe_batches * (points / max(world_size, 1) + per_rank)

    def allowance(self) -> float:
        """The work the budget allows so far (infinite without ``max_overhead``)."""
        if self.max_overhead is None:
            return float("inf")
        return self.max_overhead * TRAIN_STEP_COST * self.train_batches

    def fits(self, cost: float) -> bool:
        return self.max_overhead is None or self.spent + cost <= self.allowance()

    def plan(self, stage: Stage, world_size: int, probe_batches: int) -> Plan | None:
        """The landscape to compute now (``None``: skip it). Override to decide differently."""
        final = stage == "final"
        reliable = self.reliability is not None
        full = self._costed(self._configured(stage), world_size, probe_batches)
        free = self.budget_final is False if final else self.periodic == 0
        if free or self.fits(full.cost + (0.0 if final else self.final_reserve(world_size, probe_batches))):
            return full
        if not final:
            return None
        # Coarser: first fewer grid points (down to the periodic resolution), then fewer metrics, then
        # fewer points still, down to a 5 x 5 surface with 11-point lines, no metrics, no indicators.
        floor = min(self.resolution, self.final_resolution)
        candidates = [
            (r, spec, reliable)
            for spec in (self.final_metrics, self.metrics, {})
            for r in range(self.final_resolution - 2, floor - 1, -2)
        ] + [(r, {}, False) for r in range(floor - 2, SMALLEST_FINAL - 1, -2)]
        for r, spec, rel in candidates:
            line = min(self.line_resolution, 2 * r + 1)
            smaller = Plan(stage, r, line, dict(spec), reduced=True, reliability=rel)
            plan = self._costed(smaller, world_size, probe_batches)
            if self.fits(plan.cost):
                return plan
        return None  # not even a 5 x 5 surface fits: the budget is a promise, keep it

    def final_reserve(self, world_size: int, probe_batches: int) -> float:
        """The work set aside for the final landscape at its configured size: 0 without one, and with
        ``budget_final=True`` (the final landscape then takes what the budget has left)."""
        if not self.final or self.budget_final:
            return 0.0
        return self.cost(self._configured("final"), world_size, probe_batches)

    def _configured(self, stage: Stage) -> Plan:
        """The landscape of ``stage`` at its configured size (not yet costed)."""
        final = stage == "final"
        resolution = self.final_resolution if final else self.resolution
        metrics = self.final_metrics if final else self.metrics
        return Plan(
            stage, resolution, self.line_resolution, dict(metrics), reliability=self.reliability is not None
        )

    def explain(self, plan: Plan | None, stage: Stage) -> str | None:
        """What the user should know about a decision of :meth:`plan` (None: computed as configured)."""
        if plan is None and stage == "periodic":
            return (
                "skipping periodic landscapes that would take the callback's work above "
                f"max_overhead={self.max_overhead} of the training work so far (the final landscape's work "
                "set aside); they resume as training accumulates. Pass `max_overhead=None` to compute all "
                "of them."
            )
        if plan is None:
            return (
                "the final landscape was skipped: even a 5 x 5 surface would take the callback's work above "
                f"max_overhead={self.max_overhead} of this run's training work ({self.train_batches} "
                "batches). Pass `budget_final=False` (or `max_overhead=None`) to compute it anyway."
            )
        if plan.reduced:
            return (
                f"the final landscape was reduced to {plan.resolution} x {plan.resolution} points (asked: "
                f"{self.final_resolution}) with metrics {sorted(plan.metrics) or 'none'} to stay within "
                f"max_overhead={self.max_overhead} of the training work. Pass `budget_final=False` for the "
                "full one."
            )
        return None

    def _costed(self, plan: Plan, world_size: int, probe_batches: int) -> Plan:
        return dataclasses.replace(plan, cost=self.cost(plan, world_size, probe_batches))

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """Primitives only."""
        return {
            "last_landscape_step": self.last_landscape_step,
            "train_batches": self.train_batches,
            "spent": self.spent,
            "skipped": self.skipped,
            "periodic": self.periodic,
            "step": self.step,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; checkpoints of 0.1 (these keys at the callback's top level) too."""
        self.last_landscape_step = int(state.get("last_landscape_step", -1))
        self.train_batches = int(state.get("train_batches", 0))
        self.spent = float(state.get("spent", 0.0))
        self.skipped = int(state.get("skipped", 0))
        self.periodic = int(state.get("periodic", 1 if self.last_landscape_step >= 0 else 0))
        self.step = int(state.get("step", max(self.last_landscape_step, 0)))
        self.epoch = int(state.get("epoch", -1))
