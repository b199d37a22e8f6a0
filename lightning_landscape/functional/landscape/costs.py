"""How "auto" decides whether compiling pays: measured costs, and the prediction made from them.

``engine="auto"`` never starts a path whose one-time cost the evaluation cannot repay. Each evaluation
books what it cost (seconds a point per engine; for a compiled run, the compile time of its first
graph) per model and probe signature (the probe batches' shapes and dtypes, the metric, the buffer mode,
the compile settings), held weakly (forgotten with the model). :func:`compile_pays` turns those numbers
into a decision and a sentence for the record; unmeasured costs keep the eager engine. Only which path
runs follows from timings, never values: every engine gives the same values within float rounding.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from lightning_landscape.functional.landscape.bn import BufferPlan

__all__ = [
    "EngineCosts",
    "booked_costs",
    "compile_pays",
    "measured_costs",
    "probe_signature",
    "remember_costs",
]


@dataclass(frozen=True)
class EngineCosts:
    """Measured costs behind "auto"'s choice between an eager engine and the compiled one (seconds).

    Attributes:
        eager_per_point: one point with the eager engine "auto" would otherwise run (measured on a
            first evaluation of this model and probe set), None if not measured yet.
        compiled_per_point: one point through a compiled graph once compiled (steady state), None if
            no compiled evaluation of this model and probe set was measured.
        compile_s: what is still to pay before the compiled graph runs: 0 when the graph is compiled
            already in this process, else the measured compile time of a first graph.
    """

    eager_per_point: float | None
    compiled_per_point: float | None
    compile_s: float | None


def compile_pays(points: int, costs: EngineCosts) -> tuple[bool, str]:
    """Whether compiling repays its one-time cost on ``points`` points, and why (a clause for records).

    Compile only if ``points * (eager_per_point - compiled_per_point) > compile_s``: the time saved
    over this evaluation exceeds what compiling still costs. Unmeasured costs keep the eager engine:
    a cold compile cannot be predicted before a first graph is compiled (measured at 19-88 s on a
    CPU, benchmarks/bench_compile.py), so "auto" never starts one.

    Example::

        >>> compile_pays(1000, EngineCosts(0.010, 0.004, 0.0))[0]  # compiled earlier, 6 ms saved a point
        True
        >>> compile_pays(1000, EngineCosts(0.010, 0.004, 30.0))
        (False, 'not compiled: compiling would cost 30 s and save 6 s over 1000 points')
    """
    if costs.compiled_per_point is None or costs.compile_s is None:
        return False, (
            "not compiled: no compiled graph of this model and probe set measured "
            "(auto never starts a cold compile, which costs tens of seconds)"
        )
    if costs.eager_per_point is None:
        return False, "not compiled: the eager engine's cost per point is not measured yet"
    saved = points * (costs.eager_per_point - costs.compiled_per_point)
    if saved > costs.compile_s:
        return True, (
            f"compiled: saves {saved:.3g} s over {points} points "
            f"({costs.compiled_per_point * 1e3:.3g} vs {costs.eager_per_point * 1e3:.3g} ms a point) "
            f"for {costs.compile_s:.3g} s of compiling"
        )
    return False, (
        f"not compiled: compiling would cost {costs.compile_s:.3g} s "
        f"and save {max(saved, 0.0):.3g} s over {points} points"
    )


# Measured costs per model and probe signature (weakly held: forgotten with the model): seconds a point
# per engine, and the compile time of a first graph. Only which path runs follows from them, never values.
_COSTS: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], dict[str, float]]] = (
    weakref.WeakKeyDictionary()
)


def probe_signature(
    batches: Sequence[Any], metric: bool, buffers: BufferPlan | None, settings: str
) -> tuple[Any, ...]:
    """What a measured cost per point depends on besides the model: the probe batches' shapes and
    dtypes, the metric, the buffer mode (and the compile settings, for compiled graphs)."""

    def shapes(obj: Any) -> Any:
        if isinstance(obj, Tensor):
            return (tuple(obj.shape), obj.dtype, obj.device.type)
        if isinstance(obj, dict):
            return tuple((k, shapes(v)) for k, v in obj.items())
        if isinstance(obj, (list, tuple)):
            return tuple(shapes(v) for v in obj)
        return type(obj).__name__

    return (shapes(list(batches)), metric, buffers.mode if buffers is not None else "keep", settings)


def booked_costs(model: nn.Module) -> dict[tuple[Any, ...], dict[str, float]]:
    """What was booked for ``model``, per probe signature: seconds a point per engine (``"loop"``,
    ``"vmap"``, ``"compile"``) and ``"compile_s"``, the compile time of a first graph (a copy)."""
    return {signature: dict(known) for signature, known in _COSTS.get(model, {}).items()}


def measured_costs(
    model: nn.Module, signature: tuple[Any, ...], eager: str, *, graph_cached: bool
) -> EngineCosts:
    """The costs measured for ``model`` on ``signature``: nothing left to compile while its graph is
    cached in this process (``graph_cached``), else the compile time measured for a first graph."""
    known = _COSTS.get(model, {}).get(signature, {})
    ready = graph_cached and "compile" in known
    return EngineCosts(known.get(eager), known.get("compile"), 0.0 if ready else known.get("compile_s"))


def _record(model: nn.Module, signature: tuple[Any, ...], key: str, seconds: float) -> None:
    _COSTS.setdefault(model, {}).setdefault(signature, {})[key] = seconds


def remember_costs(
    model: nn.Module,
    signature: tuple[Any, ...],
    engine: str,
    points: int,
    seconds: float,
    timing: dict[str, float],
) -> None:
    """Book what an evaluation cost, for later "auto" choices: seconds a point of ``engine``; for a
    compiled run, the steady points apart from the first call, which compiled if the graph was new."""
    if engine != "compile":
        _record(model, signature, engine, seconds / points)
        return
    first = timing.get("first")
    if first is None or points < 2:
        return
    per_point = max(seconds - first, 0.0) / (points - 1)
    _record(model, signature, "compile", per_point)
    if timing.get("new_graph"):
        _record(model, signature, "compile_s", max(first - per_point, 0.0))
