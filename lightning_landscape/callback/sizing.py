"""How large one landscape is: its :class:`Plan`, and the smaller ones a short run's budget may take instead.

:func:`ladder` lists, from the configured landscape down to the smallest one the budget keeps (a 5 x 5
surface, 9-point lines and a 5-step ``lambda_max`` on one probe batch), the landscapes in order of
preference; :class:`~lightning_landscape.callback.schedule.LandscapeSchedule` takes the first that fits.
:func:`reduction` and :func:`reduced_note` say what a smaller one left out and which option restores it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["BRIEF_FIGURES", "ESSENTIAL_FIGURES", "HESSIAN_PLANE_ITERATIONS", "SMALLEST_FINAL",
           "SMALLEST_LANCZOS", "Plan", "ladder", "reduced_note", "reduction", "shared_points"]  # fmt: skip

Stage = Literal["periodic", "final"]

# Lanczos steps of the plane of directions="hessian"
HESSIAN_PLANE_ITERATIONS: dict[str, int] = {"periodic": 20, "final": 50}
SMALLEST_FINAL = 5  # the coarsest surface the budget may reduce to (5 x 5)
SMALLEST_LANCZOS = 5  # Lanczos steps of lambda_max in the smallest landscape (its residual is recorded)
# The figures a reduced landscape still draws: its surface, and at the end the loss along the two axes.
# Drawing is a fixed cost per figure (0.08-0.14 s of matplotlib on a CPU core), as large as the landscape
# itself on a short run; the other figures' records and scalars are kept (plot them with the CLI). They are
# drawn brief (BRIEF_FIGURES: fewer ticks, no legend or contour lines over the filling, a colour scale without
# an axes: about half the drawing).
ESSENTIAL_FIGURES = ("surface", "lines")
BRIEF_FIGURES = True


@dataclass(frozen=True)
class Plan:
    """What one landscape evaluates, and its cost in forward passes over one probe batch (per rank).

    ``reduced``: made smaller than configured to stay within ``max_overhead``; ``budget`` then says what
    was asked, what was left out and which option restores it (the records' meta ``budget``).
    """

    stage: Stage
    resolution: int
    line_resolution: int
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    cost: float = 0.0
    reduced: bool = False
    reliability: bool = False
    budget: dict[str, Any] = field(default_factory=dict, compare=False)
    probe_batches: int = 0  # evaluated on the first this many probe batches (0: all of them)

    @property
    def lines(self) -> int:
        """1-D lines evaluated: the interpolation line, and at the end the two axes."""
        return 3 if self.stage == "final" else 1

    @property
    def line_points(self) -> int:
        """Line points evaluated: the interpolation line's, and at the end each axis's points that are
        not on the surface's grid (those are taken from the surface: :func:`shared_points`)."""
        axes = self.lines - 1
        return self.line_resolution + axes * (
            self.line_resolution - shared_points(self.resolution, self.line_resolution)
        )

    @property
    def points(self) -> int:
        """Grid and line points evaluated (each on every probe batch)."""
        return self.resolution**2 + self.line_points

    @property
    def hessian_iterations(self) -> int:
        """Lanczos steps of the Hessian plane (``directions="hessian"``)."""
        return HESSIAN_PLANE_ITERATIONS[self.stage]


def shared_points(resolution: int, line_resolution: int) -> int:
    """Points of an axis line (``line_resolution`` evenly spaced over the plane's span) that lie on the
    surface's grid (``resolution`` per axis, the same span): the line runs through the grid's centre row
    or column, and its points there are grid points.

    Example::

        >>> shared_points(5, 9), shared_points(5, 11), shared_points(31, 41)
        (5, 3, 11)
    """
    return math.gcd(resolution - 1, line_resolution - 1) + 1


def ladder(
    top: Plan,
    periodic_resolution: int,
    probe_batches: int = 1,
    grid_fixed: bool = False,
    metrics_fixed: bool = False,
) -> list[Plan]:
    """The configured landscape ``top``, then smaller ones in order of preference: a slightly
    coarser grid (down to 2/3 of the points per axis), then without the reliability indicators and
    the expensive metrics (trace, average sharpness) on grids down to the periodic resolution, then
    ``lambda_max`` alone with fewer Lanczos steps, then fewer grid points down to 5 x 5, then fewer
    probe batches (half as many each time, down to one, on grids from the periodic resolution down
    to 5 x 5 again). ``grid_fixed`` keeps the grid (and the probe batches), ``metrics_fixed`` the metrics:
    options the user set explicitly.

    Example::

        >>> top = Plan("final", 9, 41, {"eigenvalues": {"max_iter": 50}, "trace": {"samples": 64}})
        >>> steps = [(p.resolution, sorted(p.metrics), p.probe_batches) for p in ladder(top, 5, 2)]
        >>> steps[:3]  # everything on a coarser grid, then without the trace
        [(9, ['eigenvalues', 'trace'], 0), (7, ['eigenvalues', 'trace'], 0), (9, ['eigenvalues'], 0)]
        >>> [p.metrics["eigenvalues"]["max_iter"] for p in ladder(top, 5, 2)][-5:]  # fewer steps, batches
        [50, 20, 10, 5, 5]
        >>> ladder(top, 5, 2)[-1].probe_batches
        1
    """
    stage, line_resolution = top.stage, top.line_resolution
    floor = top.resolution if grid_fixed else min(periodic_resolution, top.resolution)
    specs: list[tuple[dict[str, dict[str, Any]], bool]] = [(top.metrics, top.reliability)]
    eig = top.metrics.get("eigenvalues")
    if metrics_fixed:
        specs.append((top.metrics, False))
    elif eig is not None:  # lambda_max is always kept: with SAM, alone, then with fewer steps
        steps = int(eig.get("max_iter", 20))
        specs.append(({k: v for k, v in top.metrics.items() if k in ("eigenvalues", "sam")}, False))
        specs.append(({"eigenvalues": eig}, False))
        specs += [
            ({"eigenvalues": {**eig, "max_iter": n}}, False) for n in (20, 10, SMALLEST_LANCZOS) if steps > n
        ]
    else:
        specs.append(({}, False))
    ladder: list[Plan] = []
    seen: set[str] = set()

    def add(r: int, spec: dict[str, dict[str, Any]], rel: bool, batches: int = 0) -> None:
        line = line_resolution if (grid_fixed or r == top.resolution) else min(line_resolution, 2 * r - 1)
        key = repr((r, line, spec, rel, batches))
        if key not in seen:
            seen.add(key)
            reduced = bool(ladder)
            ladder.append(
                Plan(stage, r, line, dict(spec), reduced=reduced, reliability=rel, probe_batches=batches)
            )

    coarser = max(floor, (2 * top.resolution // 3) | 1)  # a slightly coarser grid with everything,
    for r in range(top.resolution, coarser - 1, -2):
        add(r, *specs[0])
    for r in range(top.resolution, floor - 1, -2):  # then without the expensive metrics, on grids
        add(r, *specs[1])  # down to the periodic resolution,
    for spec, rel in specs[2:]:  # then fewer metrics and Lanczos steps
        add(floor, spec, rel)
    if not grid_fixed:
        for r in range(floor - 2, SMALLEST_FINAL - 1, -2):  # then grid points, down to 5 x 5
            add(r, *specs[-1])
    batches = probe_batches // 2
    while batches >= 1 and not grid_fixed:  # then fewer probe batches
        for r in range(floor, SMALLEST_FINAL - 1, -2):
            add(r, *specs[-1], batches=batches)
        batches //= 2
    return ladder


def reduction(top: Plan, plan: Plan, probe_batches: int, max_overhead: float | None) -> dict[str, Any]:
    """What ``plan`` left out of the configured landscape ``top`` (plain JSON, the records' meta
    ``budget``), and the option that restores it."""
    final = plan.stage == "final"
    left = sorted(set(top.metrics) - set(plan.metrics))
    fewer = {
        k: v["max_iter"]
        for k, v in plan.metrics.items()
        if k in top.metrics and v.get("max_iter") != top.metrics[k].get("max_iter")
    }
    restore = "budget_final=False" if final else "max_overhead=None"
    asked = {
        "resolution": top.resolution,
        "line_resolution": top.line_resolution,
        "metrics": sorted(top.metrics),
        "reliability": top.reliability,
    }
    return {
        "asked": asked,
        "computed": {"resolution": plan.resolution, "line_resolution": plan.line_resolution},
        "metrics_left_out": left,
        "fewer_lanczos_steps": fewer,
        "reliability_left_out": top.reliability and not plan.reliability,
        "figures": list(ESSENTIAL_FIGURES),
        "brief_figures": BRIEF_FIGURES,
        "restore": restore,
        "probe_batches": min(plan.probe_batches or probe_batches, probe_batches),
        "probe_batches_asked": probe_batches,
        "max_overhead": max_overhead,
    }


def reduced_note(plan: Plan, max_overhead: float | None, cost: str = "") -> str:
    """The warning about a reduced ``plan`` (``cost``: what it takes, in words)."""
    b = plan.budget
    asked = b["asked"]
    final = plan.stage == "final"
    left = [
        *b["metrics_left_out"],
        *(["the reliability indicators"] if b["reliability_left_out"] else []),
    ]
    parts = [
        f"{plan.resolution} x {plan.resolution} surface and {plan.line_resolution}-point lines "
        f"(asked: {asked['resolution']} x {asked['resolution']}, {asked['line_resolution']})"
    ]
    if left:
        parts.append(f"without {', '.join(left)}")
    if b["fewer_lanczos_steps"]:
        steps = ", ".join(f"{k} {v} Lanczos steps" for k, v in b["fewer_lanczos_steps"].items())
        parts.append(f"with {steps}")
    if b["probe_batches"] < b["probe_batches_asked"]:
        parts.append(f"on {b['probe_batches']} of the {b['probe_batches_asked']} probe batches")
    figures = " and ".join(f"'{f}'" for f in b.get("figures", ESSENTIAL_FIGURES))
    brief = " in brief (fewer ticks, no legend)" if b.get("brief_figures") else ""
    parts.append(f"drawing only its {figures} figures{brief} (the other records are kept)")
    which = "final landscape" if final else "first periodic landscape"
    grid = "final_resolution" if final else "resolution"
    restore = (
        "Pass `budget_final=False` (or `max_overhead=None`) for the full final landscape, or set "
        f"`{grid}=` / `final_metrics=` explicitly to keep them."
        if final
        else f"Pass `max_overhead=None` for the full one, or set `{grid}=` / `metrics=` explicitly."
    )
    return (
        f"this run is short: the {which} was reduced to a {'; '.join(parts)}{cost} to stay near "
        f"max_overhead={max_overhead} of the training time (records' meta 'budget' lists it). " + restore
    )
