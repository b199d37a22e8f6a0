"""When the callback works and how much: snapshot and landscape cadence, the resume guard, the budget.

:class:`LandscapeSchedule` is plain Python (no Trainer, no torch): the callback tells it what happened
(a training batch and how long it took, an epoch end, how long a landscape took) and asks it what to do
(snapshot now? which landscape, if any, and how large?). Its state is a handful of primitives,
checkpointed with the callback.

The cost model counts work in forward passes over one probe batch: a landscape one pass per grid or
line point and probe batch, a metric its measured equivalent (:func:`estimated_cost`). The budget
converts time to that unit with measured costs: the wall time of the training batches (the callback
times each one), the seconds per forward pass of the probe (timed on the first landscape's points;
before that a training step is taken to cost 3 passes of its batch) and each landscape's fixed cost
(its plane, files and figures, measured). Without measured times (a schedule fed no seconds) a training
step counts as 3 passes, and every decision is the same on every run. Under DDP the callback shares
rank zero's measurements (:meth:`LandscapeSchedule.share`) so that every rank plans the same landscape.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal

from lightning_landscape.callback.sizing import (
    HESSIAN_PLANE_ITERATIONS,
    SMALLEST_FINAL,
    SMALLEST_LANCZOS,
    Plan,
    Stage,
    ladder,
    reduced_note,
    reduction,
)

__all__ = [
    "HESSIAN_PLANE_ITERATIONS",
    "SMALLEST_FINAL",
    "SMALLEST_LANCZOS",
    "LandscapeSchedule",
    "Plan",
    "estimated_cost",
    "expected_batches",
]

BudgetFinal = bool | Literal["auto"]

TRAIN_STEP_COST = 3.0  # a training step costs about 3 forward passes (forward + backward) of its batch
FIRST_SHARE = 1 / 3  # most of the run's budget the first periodic landscape takes (the final one the rest)
FINAL_FIXED = 1.5  # a final landscape's fixed cost (figures, files) relative to a periodic one's


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


def expected_batches(
    per_epoch: float, max_epochs: int | None, max_steps: int = -1, accumulate: int = 1
) -> float | None:
    """Training batches a ``fit`` will run, from the Trainer's limits (None: not known in advance).

    Example::

        >>> expected_batches(23, 5), expected_batches(23, -1, max_steps=40, accumulate=2)
        (115.0, 80.0)
    """
    out = math.inf
    if max_epochs is not None and max_epochs >= 0 and math.isfinite(per_epoch):
        out = per_epoch * max_epochs
    if max_steps is not None and max_steps >= 0:
        out = min(out, float(max_steps * max(accumulate, 1)))
    return float(out) if math.isfinite(out) else None


class LandscapeSchedule:
    r"""When to snapshot, when to compute a landscape and how large, within an overhead budget.

    Periodic landscapes come every ``every_n_epochs`` epochs, at most once per global step (a resumed
    run does not repeat one). ``max_overhead`` bounds the callback's seconds as a fraction of the seconds
    of training so far, as measured (without measured times, work counted in forward passes, a training
    batch as ``TRAIN_STEP_COST``). Later periodic landscapes must fit with the final landscape's full
    work set aside, else they are skipped until training has caught up. The first periodic landscape and
    the final one depend on ``budget_final``:

    - ``"auto"`` (the default): both are always computed, sized to the budget: the first takes at most
      a third of the whole run's budget (from ``expected_batches``), the final one what is left at the
      end. What does not fit is reduced (:func:`~lightning_landscape.callback.sizing.ladder`: the grid,
      the indicators and expensive metrics, Lanczos steps, probe batches) down to a 5 x 5 surface with
      9-point lines and a 5-step ``lambda_max`` on one probe batch, computed even when that exceeds
      the budget: every run shows a landscape. Options in ``explicit`` (``"resolution"``,
      ``"final_resolution"``, ``"metrics"``, ``"final_metrics"``) are never reduced.
    - ``False``: both at their configured size (told what they cost when that exceeds the budget).
    - ``True``: the first at its configured size, the final one must fit: coarser until it does
      (fewer grid points, then fewer metrics, down to 5 x 5), or skipped.

    ``max_overhead=None`` computes everything. Override :meth:`plan` to decide differently.

    Example::

        >>> s = LandscapeSchedule(every_n_epochs=1, resolution=5, final_resolution=9, line_resolution=7,
        ...                       metrics={}, final_metrics={}, max_overhead=0.1, budget_final=False)
        >>> for _ in range(8):
        ...     s.count_batch()
        >>> s.plan("periodic", world_size=1, probe_batches=2).resolution  # the first: always
        5
        >>> s.charge(s.plan("periodic", 1, 2))
        >>> s.plan("periodic", world_size=1, probe_batches=2) is None  # 2 * (25 + 7) > 0.1 * 3 * 8
        True
        >>> auto = LandscapeSchedule(resolution=5, final_resolution=9, line_resolution=7, metrics={},
        ...                          final_metrics={})  # budget_final="auto"
        >>> for _ in range(8):
        ...     auto.count_batch(seconds=0.003)  # measured: 3 ms a batch (a pass: 1 ms until timed)
        >>> p = auto.plan("final", world_size=1, probe_batches=2)  # 0.1 * 24 ms allows 2.4 passes
        >>> (p.resolution, p.line_resolution, p.probe_batches, p.reduced, p.budget["restore"])
        (5, 7, 1, True, 'budget_final=False')
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
        budget_final: BudgetFinal = "auto",
        hessian_plane: bool = False,
        bn: str = "interpolate",
        metric: bool = False,
        reliability: Callable[[Plan], float] | None = None,
        final: bool = True,
        explicit: Collection[str] = (),
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
        self.explicit = frozenset(explicit)  # size options the user set: never reduced
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
        self.train_seconds = 0.0  # measured wall time of the training batches (0: not timed)
        self.timed_batches = 0  # the batches train_seconds covers
        self.pass_seconds = 0.0  # measured seconds per forward pass over one probe batch (0: not yet)
        self.fixed_seconds = 0.0  # measured fixed seconds of a periodic landscape (plane, files, figures)
        self.landscape_seconds = 0.0  # measured wall time of the landscapes so far
        self.landscape_work = 0.0  # their counted work (what landscape_seconds paid for)
        self.landscapes = 0  # landscapes timed
        self.figure_seconds = 0.0  # figures' building and rendering time so far (measured)
        self.planned_seconds = 0.0  # what the cost model predicted the landscapes would take, when planned
        self.expected: float | None = None  # training batches this fit will run (None: not known)
        self.told: set[str] = set()  # the cost notes already given in this fit
        self.waiting: tuple[float, float] | None = None  # the work of the last periodic skipped, and reserve

    # ------------------------------------------------------------------ what happened

    def count_batch(self, step: int | None = None, seconds: float | None = None) -> None:
        """One training batch ended (at global ``step``, if given), having taken ``seconds``."""
        self.train_batches += 1
        if step is not None:
            self.step = int(step)
        if seconds is not None and math.isfinite(seconds) and seconds >= 0:
            self.train_seconds += float(seconds)
            self.timed_batches += 1

    def start_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def expect(self, batches: float | None) -> None:
        """The training batches this ``fit`` will run in all (:func:`expected_batches`; None: unknown)."""
        self.expected = float(batches) if batches is not None and math.isfinite(batches) else None

    def observed(
        self,
        plan: Plan,
        seconds: float,
        point_seconds: float | None = None,
        world_size: int = 1,
        probe_batches: int = 1,
    ) -> None:
        """A landscape planned as ``plan`` took ``seconds`` in all, ``point_seconds`` of it evaluating its
        grid and line points on ``probe_batches`` batches (the first one measures a forward pass)."""
        if plan.probe_batches:
            probe_batches = min(probe_batches, plan.probe_batches)
        passes = plan.points / max(world_size, 1) * probe_batches
        if self.pass_seconds == 0 and point_seconds is not None and point_seconds > 0 and passes > 0:
            self.pass_seconds = float(point_seconds) / passes
        self.landscape_seconds += max(float(seconds), 0.0)
        self.landscape_work += self._work(plan, world_size, probe_batches)
        self.landscapes += 1
        self._update_fixed()

    def figures(self, seconds: float) -> None:
        """The figures' building and rendering time so far in this ``fit`` (measured by the renderer)."""
        self.figure_seconds = max(float(seconds), self.figure_seconds)  # the renderer's total of this fit
        self._update_fixed()

    def share(self, broadcast: Callable[[Any], Any]) -> None:
        """Take rank zero's measurements (``broadcast(obj)`` returns rank zero's ``obj``; a collective),
        so that every rank makes the same decisions."""
        keys: tuple[str, ...] = (
            "train_seconds",
            "timed_batches",
            "pass_seconds",
            "fixed_seconds",
            "expected",
        )
        keys += ("landscape_seconds", "landscapes", "figure_seconds")
        values = broadcast(tuple(getattr(self, k) for k in keys))
        for k, v in zip(keys, values):
            setattr(self, k, v)

    def skip(self) -> int:
        """A periodic landscape was skipped for the budget; return how many so far."""
        self.skipped += 1
        return self.skipped

    def charge(self, plan: Plan | None) -> None:
        """Book the work of a landscape about to be computed."""
        if plan is not None:
            self.spent += plan.cost
            self.planned_seconds += self.seconds(plan.cost) or 0.0
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
        With measured times, the landscape's fixed cost (plane, files, figures) is added, converted.
        """
        return self._work(plan, world_size, probe_batches) + self._fixed_work(plan.stage)

    def _work(self, plan: Plan, world_size: int, probe_batches: int) -> float:
        if plan.probe_batches:
            probe_batches = min(probe_batches, plan.probe_batches)
        per_point = 2.0 if self.bn == "recompute" else 1.0
        surface, line = plan.resolution**2, plan.line_resolution
        points = per_point * plan.points
        if self.metric:
            points += line + (surface if plan.stage == "final" else 0)
        if plan.reliability and self.reliability is not None:
            points += self.reliability(plan)
        per_rank = estimated_cost(plan.metrics)
        if self.hessian_plane:
            per_rank += 3.9 * plan.hessian_iterations
        return probe_batches * (points / max(world_size, 1) + per_rank)

    # ------------------------------------------------------------------ the measured costs

    @property
    def timed(self) -> bool:
        """Whether training was timed (else a training step counts as 3 forward passes)."""
        return self.timed_batches > 0 and self.train_seconds > 0

    def seconds_per_pass(self) -> float | None:
        """Seconds per forward pass over one probe batch: measured on the first landscape's points, or
        before that a third of a training batch's measured time; None without measured times."""
        if not self.timed:
            return None
        if self.pass_seconds > 0:
            return self.pass_seconds
        return self.train_seconds / self.timed_batches / TRAIN_STEP_COST

    def training_work(self) -> float:
        """The training work so far, in forward passes over one probe batch."""
        per_pass = self.seconds_per_pass()
        if per_pass is None:
            return TRAIN_STEP_COST * self.train_batches
        return self.train_seconds / self.timed_batches * self.train_batches / per_pass

    def seconds(self, work: float) -> float | None:
        """``work`` (forward passes over one probe batch) in seconds (None without measured times)."""
        per_pass = self.seconds_per_pass()
        return None if per_pass is None else work * per_pass

    def training_seconds(self) -> float:
        """The measured wall time of the training batches so far (0 without measured times)."""
        return self.train_seconds / self.timed_batches * self.train_batches if self.timed else 0.0

    def _fixed_work(self, stage: str) -> float:
        per_pass = self.seconds_per_pass()
        if per_pass is None or self.fixed_seconds <= 0:
            return 0.0
        return self.fixed_seconds * (FINAL_FIXED if stage == "final" else 1.0) / per_pass

    def _update_fixed(self) -> None:
        per_pass = self.seconds_per_pass()
        if self.landscapes == 0 or per_pass is None:
            return
        rest = self.landscape_seconds + self.figure_seconds - self.landscape_work * per_pass
        self.fixed_seconds = max(rest, 0.0) / self.landscapes

    # ------------------------------------------------------------------ the budget

    def used(self) -> float:
        """The callback's work so far in forward passes: its measured time (landscapes and figures)
        converted when timed, else the counted :attr:`spent`."""
        per_pass = self.seconds_per_pass()
        if per_pass is None or self.landscapes == 0:
            return self.spent
        return (self.landscape_seconds + self.figure_seconds) / per_pass

    def allowance(self) -> float:
        """The work the budget allows so far (infinite without ``max_overhead``)."""
        if self.max_overhead is None:
            return float("inf")
        return self.max_overhead * self.training_work()

    def run_allowance(self) -> float:
        """The work the budget will allow over the whole run (``expected`` batches; so far if unknown)."""
        if self.max_overhead is None:
            return float("inf")
        if self.expected is None or self.train_batches == 0:
            return self.allowance()
        return self.allowance() * max(self.expected / self.train_batches, 1.0)

    def fits(self, cost: float) -> bool:
        return self.max_overhead is None or self.used() + cost <= self.allowance()

    def plan(self, stage: Stage, world_size: int, probe_batches: int) -> Plan | None:
        """The landscape to compute now (``None``: skip it). Override to decide differently."""
        final = stage == "final"
        full = self._costed(self._configured(stage), world_size, probe_batches)
        if self.max_overhead is None:
            return full
        if not final and self.periodic > 0:  # a later periodic landscape: it fits, or it waits
            reserve = self.final_reserve(world_size, probe_batches)
            if self.fits(full.cost + reserve):
                return full
            self.waiting = (full.cost, reserve)  # what did not fit, for the message
            return None
        if self.budget_final == "auto":
            limit = self.allowance() - self.used()
            if not final:  # the first: a share of the whole run's budget
                limit = max(limit, FIRST_SHARE * self.run_allowance() - self.used())
            return self._sized(stage, world_size, probe_batches, limit)
        if not final or self.budget_final is False or self.fits(full.cost):
            return full
        return self._strict(world_size, probe_batches)

    def _sized(self, stage: Stage, world_size: int, probe_batches: int, limit: float) -> Plan:
        """The largest landscape of ``stage`` whose work is within ``limit``, else the smallest kept."""
        top = self._configured(stage)
        final = stage == "final"
        grid_fixed = ("final_resolution" if final else "resolution") in self.explicit
        metrics_fixed = ("final_metrics" if final else "metrics") in self.explicit
        candidates = ladder(top, self.resolution, probe_batches, grid_fixed, metrics_fixed)
        plan = None
        for candidate in candidates:
            plan = self._costed(candidate, world_size, probe_batches)
            if plan.cost <= limit:
                break
        assert plan is not None  # the ladder starts with the configured landscape
        if plan.reduced:
            plan = dataclasses.replace(plan, budget=reduction(top, plan, probe_batches, self.max_overhead))
        return plan

    def _strict(self, world_size: int, probe_batches: int) -> Plan | None:
        """``budget_final=True``: coarser until the final landscape fits; None if not even 5 x 5 does.

        First fewer grid points (down to the periodic resolution), then fewer metrics, then fewer points
        still, down to a 5 x 5 surface with 9-point lines, no metrics, no indicators.
        """
        stage: Stage = "final"
        reliable = self.reliability is not None
        floor = min(self.resolution, self.final_resolution)
        candidates = [
            (r, spec, reliable)
            for spec in (self.final_metrics, self.metrics, {})
            for r in range(self.final_resolution - 2, floor - 1, -2)
        ] + [(r, {}, False) for r in range(floor - 2, SMALLEST_FINAL - 1, -2)]
        for r, spec, rel in candidates:
            line = min(self.line_resolution, 2 * r - 1)
            smaller = Plan(stage, r, line, dict(spec), reduced=True, reliability=rel)
            plan = self._costed(smaller, world_size, probe_batches)
            if self.fits(plan.cost):
                return plan
        return None  # not even a 5 x 5 surface fits: the budget is a promise, keep it

    def final_reserve(self, world_size: int, probe_batches: int) -> float:
        """The work set aside for the final landscape at its configured size: 0 without one, and with
        ``budget_final=True`` (the final landscape then takes what the budget has left)."""
        if not self.final or self.budget_final is True:
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

    # ------------------------------------------------------------------ what to tell the user

    def explain(self, plan: Plan | None, stage: Stage) -> str | None:
        """What the user should know about a decision of :meth:`plan` (None: computed as configured)."""
        if plan is None and stage == "periodic":
            return (
                f"skipping periodic landscapes that would take the callback above max_overhead="
                f"{self.max_overhead} of {self._budget_words(self.waiting)}; they resume as training "
                "accumulates. Pass `max_overhead=None` to compute all of them."
            )
        if plan is None:
            return (
                "the final landscape was skipped: even a 5 x 5 surface would take the callback above "
                f"max_overhead={self.max_overhead} of {self._budget_words()}. Pass `budget_final=False` (or "
                "`max_overhead=None`) to compute it anyway."
            )
        if plan.reduced and plan.budget:
            return reduced_note(plan, self.max_overhead, self._cost_words(plan.cost))
        if plan.reduced:
            return (
                f"the final landscape was reduced to {plan.resolution} x {plan.resolution} points (asked: "
                f"{self.final_resolution}) with metrics {sorted(plan.metrics) or 'none'} to stay within "
                f"max_overhead={self.max_overhead} of {self._budget_words()}. Pass `budget_final=False` for "
                "the full one."
            )
        return None

    def _budget_words(self, waiting: tuple[float, float] | None = None) -> str:
        """What the budget measures, how much of it the callback has used and, when given, ``waiting``: the
        work of the landscape that did not fit and that set aside for the final one (the skip messages)."""
        train, per_pass = self.training_seconds(), self.seconds_per_pass()
        if per_pass is None or train <= 0:  # no measured times: work counted in forward passes
            unit, scale, used, total = "", 1.0, self.used(), self.training_work()
            words = (
                f"the training work of the {self.train_batches} training batches so far, counted in forward "
                f"passes over one probe batch as no time was measured (a training batch counts as "
                f"{TRAIN_STEP_COST:g}): the callback has used {used:.3g} of {total:.3g}"
            )
        else:
            unit, scale, used = " s", per_pass, self.used() * per_pass
            words = (
                f"the training time so far, timed: the callback has taken {used:.3g} s, {used / train:.2g} "
                f"of the {train:.3g} s of training over {self.train_batches} batches"
            )
        if waiting is not None:
            words += f", and the next one would take about {waiting[0] * scale:.3g}{unit}"
            aside = f" with {waiting[1] * scale:.3g}{unit} set aside for the final one at its configured size"
            words += aside if waiting[1] else ""  # its full size: on a short run it is reduced when it comes
        return words

    def _cost_words(self, work: float) -> str:
        seconds = self.seconds(work)
        train = self.training_seconds()
        if seconds is None or train <= 0:
            return ""
        return f", about {seconds:.2g} s ({seconds / train:.2g}x the {train:.2g} s of training so far)"

    def cost_note(self, plan: Plan | None, stage: Stage) -> str | None:
        """Once per ``fit`` and stage: what a landscape computed beyond the budget because the user asked
        for it (``budget_final=False``, ``max_overhead=None``, explicit sizes) costs; None otherwise."""
        if plan is None or plan.reduced or not self.timed or stage in self.told:
            return None
        if stage == "periodic" and self.periodic > 0:
            return None
        budget = self.max_overhead if self.max_overhead is not None else 0.1
        if self.used() + plan.cost <= budget * self.training_work():
            return None
        self.told.add(stage)
        why = (
            "max_overhead=None"
            if self.max_overhead is None
            else "budget_final=False"
            if self.budget_final is False and stage == "final"
            else "the options set explicitly"
        )
        which = "final landscape" if stage == "final" else "first periodic landscape"
        return (
            f"the {which} ({plan.resolution} x {plan.resolution}, metrics {sorted(plan.metrics) or 'none'}) "
            f"is computed in full as asked ({why}){self._cost_words(plan.cost)}, beyond "
            f"{budget:g} of the training time."
        )

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
            "train_seconds": self.train_seconds,
            "timed_batches": self.timed_batches,
            "pass_seconds": self.pass_seconds,
            "fixed_seconds": self.fixed_seconds,
            "landscape_seconds": self.landscape_seconds,
            "landscape_work": self.landscape_work,
            "landscapes": self.landscapes,
            "figure_seconds": self.figure_seconds,
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
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.timed_batches = int(state.get("timed_batches", 0))
        self.pass_seconds = float(state.get("pass_seconds", 0.0))
        self.fixed_seconds = float(state.get("fixed_seconds", 0.0))
        self.landscape_seconds = float(state.get("landscape_seconds", 0.0))
        self.landscape_work = float(state.get("landscape_work", 0.0))
        self.landscapes = int(state.get("landscapes", 0))
        self.figure_seconds = float(state.get("figure_seconds", 0.0))
