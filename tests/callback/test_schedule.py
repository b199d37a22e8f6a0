"""LandscapeSchedule without a Trainer: cadence, resume guard, the overhead budget and its cost model."""

from __future__ import annotations

import json

import pytest

from lightning_landscape.callback.schedule import (
    SMALLEST_LANCZOS,
    LandscapeSchedule,
    Plan,
    estimated_cost,
    expected_batches,
)

NO_METRICS = {"metrics": {}, "final_metrics": {}}


def schedule(**kwargs) -> LandscapeSchedule:
    """The rules of ``budget_final=False`` (first periodic and final landscapes at their configured size,
    the old default) unless a test says otherwise; ``budget_final="auto"`` has its own tests below."""
    base = {"resolution": 5, "final_resolution": 9, "line_resolution": 7, "budget_final": False, **NO_METRICS}
    return LandscapeSchedule(**{**base, **kwargs})


def batches(s: LandscapeSchedule, n: int) -> LandscapeSchedule:
    for _ in range(n):
        s.count_batch()
    return s


def test_snapshot_events_by_steps_and_by_epochs():
    steps = schedule(snapshot_every_n_steps=3)
    assert [steps.snapshot_event(step=s) for s in (0, 2, 3, 7, 9)] == [0, 0, 1, 2, 3]
    assert steps.snapshot_event(epoch_end=4) is None
    epochs = schedule(snapshot_every_n_steps=None, snapshot_every_n_epochs=2)
    assert epochs.snapshot_event(step=6) is None
    # Event e is the e-th multiple of the cadence; epoch_end is 0-based (epoch 1 ends the 2nd epoch).
    assert [epochs.snapshot_event(epoch_end=e) for e in range(5)] == [None, 1, None, 2, None]


def test_landscape_cadence_and_resume_guard():
    s = schedule(every_n_epochs=2)
    assert [s.landscape_due(epoch, step=4 * (epoch + 1)) for epoch in range(4)] == [False, True, False, True]
    assert s.landscape_due(3, step=16) is False  # the same step again (a resumed run): not twice
    assert schedule(every_n_epochs=None).landscape_due(0, step=4) is False


def test_cost_model_counts_points_lines_ranks_and_metrics():
    s = schedule()
    periodic = Plan("periodic", resolution=5, line_resolution=7)
    assert s.cost(periodic, world_size=1, probe_batches=2) == 2 * (25 + 7)
    final = Plan("final", resolution=9, line_resolution=7, metrics={"sam": {}})
    # Points are shared out among the ranks; metrics are computed whole on each rank. The axis lines'
    # points on the 9 x 9 grid (-1, 0, 1 of 7 points: gcd(8, 6) + 1 = 3) are taken from the surface.
    assert final.points == 81 + 7 + 2 * (7 - 3)
    assert s.cost(final, world_size=2, probe_batches=1) == pytest.approx((81 + 7 + 2 * 4) / 2 + 4.5)
    hessian = schedule(hessian_plane=True)  # Lanczos for the plane: 3.9 per step, 20 / 50 steps
    assert hessian.cost(periodic, 1, 1) == pytest.approx(25 + 7 + 3.9 * 20)
    assert hessian.cost(Plan("final", 9, 7), 1, 1) == pytest.approx(81 + 15 + 3.9 * 50)
    assert estimated_cost({"eigenvalues": {"max_iter": 10}, "trace": {"samples": 10}}) == pytest.approx(
        1.4 + 39 + 1.4 + 36
    )


def test_the_first_periodic_landscape_is_free_later_ones_must_fit():
    s = batches(schedule(max_overhead=0.1), 8)  # allowance 0.1 * 3 * 8 = 2.4; a landscape costs 64
    first = s.plan("periodic", world_size=1, probe_batches=2)
    assert first == Plan("periodic", 5, 7, {}, 64.0)
    s.charge(first)
    assert s.plan("periodic", 1, 2) is None and s.skip() == 1
    assert s.plan("periodic", 1, 2) is None  # still not: 0.1 * 3 * 8 < 64 + 64
    # The final landscape's work (2 * (81 + 15) = 192) is set aside: 64 + 64 + 192 = 320.
    batches(s, 1058)  # allowance 0.1 * 3 * 1066 = 319.8
    assert s.plan("periodic", 1, 2) is None
    batches(s, 1)  # 0.1 * 3 * 1067 = 320.1
    assert s.plan("periodic", 1, 2) is not None
    # Without a final landscape nothing is set aside: 0.1 * 3 * 428 = 128.4 >= 64 + 64.
    no_final = batches(schedule(max_overhead=0.1, final=False), 428)
    no_final.charge(no_final.plan("periodic", 1, 2))
    assert no_final.final_reserve(1, 2) == 0.0 and no_final.plan("periodic", 1, 2) is not None
    # With budget_final the final landscape takes what is left: nothing is set aside for it.
    strict = batches(schedule(max_overhead=0.1, budget_final=True), 428)
    strict.charge(strict.plan("periodic", 1, 2))
    assert strict.final_reserve(1, 2) == 0.0 and strict.plan("periodic", 1, 2) is not None
    assert batches(schedule(max_overhead=0.1), 1).final_reserve(1, 2) == 2 * (81 + 7 + 2 * 4)


@pytest.mark.parametrize("epochs", [10, 100, 1000, 5000])
def test_whole_run_stays_within_the_budget_once_first_and_final_fit(epochs):
    """A simulated run: 20 batches an epoch, a periodic landscape asked for after each, the final one."""
    s = schedule(max_overhead=0.1)
    for _ in range(epochs):
        batches(s, 20)
        s.charge(s.plan("periodic", 1, 2))
    s.charge(s.plan("final", 1, 2))
    training = 3.0 * 20 * epochs
    first_and_final = 64 + 204
    # Whatever the length, the work is the larger of the unconditional part and the budget ...
    assert s.spent <= max(first_and_final, 0.1 * training) + 1e-9
    if 0.1 * training >= first_and_final:  # ... so a long run stays within max_overhead
        assert s.spent / training <= 0.1
    # and the budget is used, not starved: the periodic landscapes fill it up to one landscape.
    assert s.spent >= min(0.1 * training, first_and_final + 64 * (epochs - 1)) - 64


def test_the_final_landscape_is_full_unless_budget_final():
    s = batches(schedule(max_overhead=0.1), 8)
    assert s.plan("final", 1, 2) == Plan("final", 9, 7, {}, 2 * (81 + 15))
    strict = batches(schedule(max_overhead=0.1, budget_final=True), 8)
    assert strict.plan("final", 1, 2) is None  # not even 5 x 5 (2 * (25 + 7 + 2 * 4) = 80 > 2.4)
    assert "budget_final=False" in strict.explain(None, "final")
    # 1 probe batch, 150 batches: allowance 45; 9 x 9 (81 + 7 + 2 * 4 = 96) and 7 x 7 (49 + 7: all the axis
    # lines' points are on its grid) do not fit; 5 x 5 (25 + 7 + 2 * (7 - 3) = 40) does.
    strict = batches(schedule(max_overhead=0.1, budget_final=True), 150)
    plan = strict.plan("final", 1, 1)
    assert plan is not None and plan.reduced and (plan.resolution, plan.line_resolution) == (5, 7)
    assert plan.cost == 25 + 7 + 8 and "reduced to 5 x 5" in strict.explain(plan, "final")
    assert "counted in forward passes over one probe batch as no time was measured" in strict.explain(
        plan, "final"
    )


def test_coarsening_drops_grid_points_then_metrics():
    metrics = {"trace": {"samples": 10}}  # 1.4 + 36 = 37.4 per probe batch
    s = schedule(max_overhead=0.1, budget_final=True, final_metrics=metrics, metrics={})
    batches(s, 400)  # allowance 120: 9 x 9 + lines + trace = 139.4 no; 7 x 7: 49 + 21 + 37.4 = 107.4 yes
    plan = s.plan("final", 1, 1)
    assert (plan.resolution, plan.metrics, plan.reduced) == (7, metrics, True)
    s = batches(schedule(max_overhead=0.1, budget_final=True, final_metrics=metrics), 300)  # allowance 90
    plan = s.plan("final", 1, 1)  # 7 x 7 with the trace (107.4) no; 5 x 5 with it (83.4) yes: points first
    assert (plan.resolution, plan.metrics) == (5, metrics)
    s = batches(schedule(max_overhead=0.1, budget_final=True, final_metrics=metrics), 250)  # allowance 75
    plan = s.plan("final", 1, 1)  # 9 x 9 without metrics: 102 no; 7 x 7: 70 yes
    assert (plan.resolution, plan.metrics) == (7, {})


def test_no_budget_computes_everything():
    s = schedule(max_overhead=None, budget_final=True)
    s.charge(s.plan("periodic", 1, 4))
    assert s.plan("periodic", 1, 4) is not None and s.plan("final", 1, 4).resolution == 9
    assert s.explain(s.plan("final", 1, 4), "final") is None


class EveryOther(LandscapeSchedule):
    """The decision is one overridable method."""

    def plan(self, stage, world_size, probe_batches):
        if stage == "periodic" and self.periodic % 2 == 1:
            self.periodic += 1
            return None
        return super().plan(stage, world_size, probe_batches)


def test_plan_is_overridable():
    s = EveryOther(resolution=3, final_resolution=3, line_resolution=3, max_overhead=None)
    decisions = []
    for _ in range(4):
        plan = s.plan("periodic", 1, 1)
        s.charge(plan)
        decisions.append(plan is not None)
    assert decisions == [True, False, True, False]


def test_state_round_trip_reset_and_old_checkpoints():
    s = batches(schedule(max_overhead=0.1), 8)
    s.start_epoch(1)
    s.count_batch(step=9)
    assert s.landscape_due(1, 9)
    s.charge(s.plan("periodic", 1, 2))
    s.skip()
    state = s.state_dict()
    assert all(isinstance(v, (int, float)) for v in state.values())  # primitives: weights_only loads
    other = schedule()
    other.load_state_dict(state)
    assert other.state_dict() == state
    other.reset()
    assert other.state_dict() == schedule().state_dict()
    # A 0.1 checkpoint: these keys at the callback's top level, beside others ("written", "recorder").
    old = {"last_landscape_step": 8, "train_batches": 8, "spent": 64.0, "skipped": 1, "written": ["a"]}
    other.load_state_dict(old)
    assert (other.periodic, other.step, other.spent, other.skipped) == (1, 8, 64.0, 1)


# ---------------------------------------------------------------------- budget_final="auto" (the default)
# Measured costs are injected as numbers, as the callback feeds them: the demo CNN on digits (23 batches an
# epoch) on a 2-core CPU took about 5 ms a training batch and 1.5 ms a forward pass of one probe batch.

PER_EPOCH, BATCH_S, PASS_S, PROBE = 23, 0.005, 0.0015, 4
RELIABILITY = 40.0  # the indicators' evaluations (reliability_cost with 64 snapshots)
TARGETS = {5: 1.5, 20: 1.2, 60: 1.1, 240: 1.1}  # issue 22: total time with the callback / without


def defaults(**kwargs) -> LandscapeSchedule:
    """The callback's default schedule (default metrics, indicators on, budget_final="auto")."""
    from lightning_landscape.callback.metrics import DEFAULT_FINAL_METRICS, DEFAULT_METRICS, resolve_metrics

    base = {
        "metrics": resolve_metrics(DEFAULT_METRICS, final=False, seed=0),
        "final_metrics": resolve_metrics(DEFAULT_FINAL_METRICS, final=True, seed=0),
        "reliability": lambda plan: RELIABILITY,
    }
    return LandscapeSchedule(**{**base, **kwargs})


def true_seconds(plan: Plan, fixed: float) -> float:
    """What a landscape takes in this simulated world: a pass per point, metric step and indicator
    evaluation on each probe batch it uses, and a fixed cost (plane, files, figures)."""
    batches = min(PROBE, plan.probe_batches or PROBE)
    work = plan.points + estimated_cost(plan.metrics) + (RELIABILITY if plan.reliability else 0.0)
    return PASS_S * batches * work + fixed * (1.5 if plan.stage == "final" else 1.0)


def simulate(s: LandscapeSchedule, epochs: int, fixed: float = 0.02) -> tuple[list[Plan], float]:
    """A run of ``epochs``, a periodic landscape asked for after each and the final one; returns the
    landscapes computed and the ratio of the whole run's time with the callback to the time without."""
    s.expect(PER_EPOCH * epochs)
    plans, spent = [], 0.0

    def run(plan: Plan) -> None:
        nonlocal spent
        s.charge(plan)
        seconds = true_seconds(plan, fixed)
        points = PASS_S * min(PROBE, plan.probe_batches or PROBE) * plan.points
        s.observed(plan, seconds, points, world_size=1, probe_batches=PROBE)
        plans.append(plan)
        spent += seconds

    for epoch in range(epochs):
        s.start_epoch(epoch)
        for _ in range(PER_EPOCH):
            s.count_batch(seconds=BATCH_S)
        if s.landscape_due(epoch, PER_EPOCH * (epoch + 1)):
            plan = s.plan("periodic", 1, PROBE)
            run(plan) if plan is not None else s.skip()
    run(s.plan("final", 1, PROBE))
    training = BATCH_S * PER_EPOCH * epochs
    return plans, (training + spent) / training


def shows_a_landscape(plan: Plan) -> bool:
    """A surface, lines and lambda_max."""
    return plan.resolution >= 5 and plan.line_resolution >= 9 and "eigenvalues" in plan.metrics


@pytest.mark.parametrize("epochs", sorted(TARGETS))
def test_auto_budget_keeps_every_run_length_within_its_target(epochs):
    plans, ratio = simulate(defaults(), epochs)
    assert ratio <= TARGETS[epochs]
    first, final = plans[0], plans[-1]
    assert (first.stage, final.stage, final.lines) == ("periodic", "final", 3)
    assert shows_a_landscape(first) and shows_a_landscape(final)
    # the old rule (first and final at full size) breaks the short runs' targets by far
    _, old = simulate(defaults(budget_final=False), epochs)
    if epochs <= 20:
        assert old > 3 * TARGETS[epochs]


def test_auto_budget_grows_the_final_landscape_with_the_run():
    sizes = {e: simulate(defaults(), e)[0][-1] for e in (5, 60, 240, 2000)}
    assert sizes[5].reduced and sizes[5].probe_batches == 1  # the smallest kept: 5 x 5 on one batch
    assert (sizes[5].resolution, sizes[5].line_resolution, sizes[5].metrics["eigenvalues"]["max_iter"]) == (
        5,
        9,  # every other point on the 5 x 5 grid: taken from the surface
        SMALLEST_LANCZOS,
    )
    cost = [simulate(defaults(), e)[0][-1].cost for e in (5, 60, 240, 2000)]
    assert cost == sorted(cost) and cost[0] < cost[-1]
    assert (sizes[2000].resolution, sizes[2000].reduced, sizes[2000].reliability) == (31, False, True)


def test_reductions_are_recorded_with_the_option_that_restores_them():
    s = defaults()
    plans, _ = simulate(s, 5)
    final = plans[-1]
    b = final.budget
    assert b["asked"] == {
        "resolution": 31,
        "line_resolution": 41,
        "metrics": ["average", "eigenvalues", "sam", "trace"],
        "reliability": True,
    }
    assert b["computed"] == {"resolution": 5, "line_resolution": 9}
    assert b["metrics_left_out"] == ["average", "sam", "trace"] and b["reliability_left_out"]
    assert b["fewer_lanczos_steps"] == {"eigenvalues": SMALLEST_LANCZOS} and b["probe_batches"] == 1
    assert b["restore"] == "budget_final=False"
    note = s.explain(final, "final")
    assert "budget_final=False" in note and "5 x 5" in note and "trace" in note and "x the" in note
    assert plans[0].budget["restore"] == "max_overhead=None"
    assert "max_overhead=None" in s.explain(plans[0], "periodic")
    json.dumps(b)  # the records' meta: plain JSON


def test_explicit_options_are_honoured_and_told_once_what_they_cost():
    # an explicit final_resolution keeps its grid (the metrics, left at their defaults, may shrink)
    plans, _ = simulate(defaults(final_resolution=31, explicit={"final_resolution"}), 5)
    assert plans[-1].resolution == 31 and plans[-1].line_resolution == 41
    assert "trace" not in plans[-1].metrics
    both = defaults(final_resolution=21, explicit={"final_resolution", "final_metrics"})
    plans, _ = simulate(both, 5)
    assert (plans[-1].resolution, set(plans[-1].metrics), plans[-1].reduced) == (
        21,
        set(both.final_metrics),
        True,
    )
    assert plans[-1].reliability is False  # not an explicit size: the indicators still go
    # budget_final=False and max_overhead=None: everything at its configured size, one note on the cost
    for kwargs in ({"budget_final": False}, {"max_overhead": None}):
        s = defaults(**kwargs)
        plans, ratio = simulate(s, 5)
        assert (plans[-1].resolution, plans[-1].reduced, plans[-1].reliability) == (31, False, True)
        assert ratio > 5
        s2 = defaults(**kwargs)
        batches(s2, 1)
        s2.count_batch(seconds=BATCH_S)
        final = s2.plan("final", 1, PROBE)
        note = s2.cost_note(final, "final")
        assert note is not None and "31 x 31" in note and next(iter(kwargs)) in note and " s (" in note
        assert s2.cost_note(final, "final") is None  # once
    # within the budget, nothing to tell
    long = defaults(budget_final=False)
    for _ in range(3000 * PER_EPOCH):
        long.count_batch(seconds=BATCH_S)
    assert long.cost_note(long.plan("final", 1, PROBE), "final") is None


def test_measured_costs_are_shared_and_checkpointed():
    s = defaults()
    simulate(s, 5)
    assert s.timed and s.pass_seconds == pytest.approx(PASS_S) and s.fixed_seconds > 0
    other = defaults()
    other.share(lambda values: values)  # a single process: its own
    assert other.train_seconds == 0
    sent = []
    s.share(lambda values: sent.append(values) or values)  # rank zero sends its measurements ...
    other.share(lambda values: sent[0])  # ... and another rank plans with them
    assert other.used() == s.used() and other.seconds_per_pass() == s.seconds_per_pass()
    assert (other.pass_seconds, other.train_seconds) == (s.pass_seconds, s.train_seconds)
    state = s.state_dict()
    assert all(isinstance(v, (int, float)) for v in state.values())
    restored = defaults()
    restored.load_state_dict(state)
    assert (
        restored.seconds_per_pass() == s.seconds_per_pass() and restored.training_work() == s.training_work()
    )


def test_expected_batches_from_the_trainer_limits():
    assert expected_batches(23, 5) == 115
    assert expected_batches(23, -1) is None and expected_batches(float("inf"), 5) is None
    assert expected_batches(23, 5, max_steps=40, accumulate=2) == 80


def test_the_skip_messages_say_what_the_budget_measures():
    # timed: 10 batches of 0.5 s; the first landscape's 64 passes took 0.64 s of its 2 s (0.01 s a pass)
    s = schedule(max_overhead=0.1)
    for _ in range(10):
        s.count_batch(seconds=0.5)
    first = s.plan("periodic", 1, 2)
    assert first is not None and first.cost == 64
    s.charge(first)
    s.observed(first, seconds=2.0, point_seconds=0.64, world_size=1, probe_batches=2)
    assert s.plan("periodic", 1, 2) is None
    note = s.explain(None, "periodic")
    assert "max_overhead=0.1 of the training time so far, timed" in note and "work" not in note
    assert "taken 2 s, 0.4 of the 5 s of training over 10 batches" in note
    # the next one: 64 passes and the measured fixed 1.36 s; the final one: 192 passes and 1.5 x 1.36 s
    assert "would take about 2 s with 3.96 s set aside for the final one at its configured size" in note
    strict = schedule(max_overhead=0.1, budget_final=True)
    for _ in range(10):
        strict.count_batch(seconds=0.5)
    strict.observed(first, seconds=2.0, point_seconds=0.64, world_size=1, probe_batches=2)
    assert strict.plan("final", 1, 2) is None
    assert "of the training time so far, timed: the callback has taken 2 s" in strict.explain(None, "final")
    # counted (no measured time): in forward passes, and it says so
    counted = batches(schedule(max_overhead=0.1), 8)
    counted.charge(counted.plan("periodic", 1, 2))
    assert counted.plan("periodic", 1, 2) is None
    note = counted.explain(None, "periodic")
    assert "counted in forward passes over one probe batch as no time was measured" in note
    assert "used 64 of 24, and the next one would take about 64 with 192 set aside for the final one" in note
