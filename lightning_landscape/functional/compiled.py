"""The compiled evaluation path: ``engine="compile"``, grid points through a ``torch.compile``-d loss.

The points are visited exactly as by the loop engine (weights, and interpolated buffers, moved in
place from a saved copy; one forward pass per point and probe batch); only the evaluation at a point
runs through a compiled function instead of eagerly: the per-batch losses (and metrics) of every probe
batch together, as one graph (``fullgraph=True``), one compiled call per grid point, so that the fixed
cost of a call (guards, wrappers: tens of microseconds) is paid once per point, not once per batch.
With recomputed BatchNorm statistics, the statistics pass stays eager.

Compiled once, reused for every landscape: each model gets its own compiled function (a fresh code
object, so that its cache entries and its recompilation limit are its own and die with the model),
kept in a weak dictionary. The parameters are inputs of the graph, not constants, so moving the
weights in place (every grid point, every training step) reuses the compiled code; a new graph is
compiled only when something the guards check changes: other probe-batch shapes or another number of
probe batches, train/eval mode, grad mode, dtype, or a ``loss_fn`` with different code (``loss_fn``
objects with the same code and the same captured objects, as made afresh for each landscape, share one
graph).

A model that cannot be compiled as one graph (a graph break: Python control flow on a tensor's value,
side effects such as Lightning's ``self.log``, unsupported ops), or a compiler that fails (no C++
compiler for inductor on the CPU, too many recompilations), falls back to the loop engine with one
warning, and is remembered so that later landscapes go straight to the loop. An error that the loop
raises too (a broken ``loss_fn``) is raised, not warned about.
"""

from __future__ import annotations

import types
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape.functional.bn import BufferPlan
from lightning_landscape.functional.engine import Engine, checked_scalar, walk_points
from lightning_landscape.functional.params import LossFn, WeightPerturbation

__all__ = ["CompileFallbackWarning", "compile_settings", "compiled_loss", "evaluate_compiled"]

#: ``torch.compile`` arguments of the compiled engine (change them with :func:`compile_settings`).
_SETTINGS: dict[str, Any] = {"backend": "inductor", "mode": None, "options": None}

# One compiled function per model (weakly held: forgotten with the model). The compiled function does
# not hold the model: the model and ``loss_fn`` are arguments, and dynamo's guards keep only ids.
_COMPILED: weakref.WeakKeyDictionary[
    nn.Module, tuple[tuple[Any, ...], Callable[..., tuple[Tensor, Tensor | None]]]
] = weakref.WeakKeyDictionary()
# Models that fell back to the loop (warned about once; later calls go straight to the loop).
_CANNOT_COMPILE: weakref.WeakSet[nn.Module] = weakref.WeakSet()


class CompileFallbackWarning(UserWarning):
    """``engine="compile"`` could not compile a model's loss and evaluated it with the loop engine."""


def compile_settings(
    backend: str | Callable[..., Any] = "inductor",
    mode: str | None = None,
    options: dict[str, Any] | None = None,
) -> None:
    """Set the ``torch.compile`` backend, mode and options of ``engine="compile"`` (process-wide).

    The default is inductor with its default mode. Models compiled with other settings are compiled
    again on their next landscape; models that fell back to the loop are given another chance.
    ``mode="reduce-overhead"`` (CUDA graphs) suits small models on a GPU. ``options`` must not turn on
    ``freezing``: frozen weights would ignore the moves to the grid points.

    Example::

        >>> compile_settings(backend="eager")  # dynamo only: checks that a model compiles, no speed-up
        >>> compile_settings()  # back to inductor
    """
    if not (isinstance(backend, str) or callable(backend)):
        raise ValueError(f"`backend` must be a backend name or a callable, got {type(backend).__name__}")
    if options is not None and (not isinstance(options, dict) or options.get("freezing")):
        raise ValueError(f"`options` must be a dict without freezing=True, got {options!r}")
    _SETTINGS.update(backend=backend, mode=mode, options=options)
    _CANNOT_COMPILE.clear()


def _point_values(
    loss_fn: LossFn, metric_fn: LossFn | None, model: nn.Module, batches: Sequence[Any]
) -> tuple[Tensor, Tensor | None]:
    """Per-batch losses ``(B,)`` (and metrics) at the current weights: what one grid point needs."""
    losses = torch.stack([checked_scalar(loss_fn(model, batch)) for batch in batches])
    if metric_fn is None:
        return losses, None
    return losses, torch.stack([checked_scalar(metric_fn(model, batch), "metric_fn") for batch in batches])


def compiled_loss(model: nn.Module) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """The compiled ``(loss_fn, metric_fn, model, batches) -> (losses, metrics)`` of ``model``, made once.

    ``losses[b]`` is ``loss_fn(model, batches[b])`` (``metrics`` likewise, or None without
    ``metric_fn``), all probe batches in one graph.

    Compilation itself happens at the first call (and again for each new guard combination, see the
    module docstring); it raises there if the loss is not one graph or the compiler fails.

    Example::

        >>> net = nn.Linear(3, 1)
        >>> compiled_loss(net) is compiled_loss(net)
        True
    """
    key = (_SETTINGS["backend"], _SETTINGS["mode"], repr(_SETTINGS["options"]))
    cached = _COMPILED.get(model)
    if cached is not None and cached[0] == key:
        return cached[1]
    # A fresh code object: dynamo keeps its cache (and counts recompilations) per code object.
    code = _point_values.__code__.replace()
    function = types.FunctionType(code, _point_values.__globals__, "_landscape_loss")
    compiled = torch.compile(
        function,
        fullgraph=True,
        dynamic=False,
        backend=_SETTINGS["backend"],
        mode=_SETTINGS["mode"],
        options=_SETTINGS["options"],
    )
    _COMPILED[model] = (key, compiled)
    return compiled


def evaluate_compiled(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    move: WeightPerturbation,
    coefficients: np.ndarray,
    origin: Sequence[Tensor] | None,
    buffers: BufferPlan | None,
    metric_fn: LossFn | None,
    loop: Callable[[np.ndarray], Tensor],
) -> tuple[Tensor, Engine, str | None]:
    """The loop engine's points through the compiled evaluation of ``model``; ``loop`` if that fails.

    Same arguments and result layout as the loop engine of
    :func:`~lightning_landscape.functional.engine.evaluate_points` (``(n, B)`` losses, then ``(n, B)``
    metrics in float64 with ``metric_fn``), called inside its observation. Returns the values, the
    engine that ran (``"compile"`` or ``"loop"``) and a note when it fell back. If the compiled run
    raises, ``loop(coefficients)`` runs: when it works, the model is remembered as one that cannot be
    compiled and a :class:`CompileFallbackWarning` says why, once; when it raises too, its error
    propagates (the fault is ``loss_fn``'s, not the compiler's).
    """
    if model in _CANNOT_COMPILE:
        return loop(coefficients), "loop", "compile failed earlier on this model; evaluated with the loop"
    compiled = compiled_loss(model)
    try:
        values = _compiled_points(
            compiled, model, loss_fn, batches, move, coefficients, origin, buffers, metric_fn
        )
        return values, "compile", None
    except Exception as error:  # any failure of the compiled path falls back
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        reason = f"{type(error).__name__}: {first_line}"[:300]
    values = loop(coefficients)  # raises if the loss itself is broken: not the compiler's fault
    _CANNOT_COMPILE.add(model)
    _COMPILED.pop(model, None)
    warnings.warn(
        f'engine="compile": the loss of {type(model).__name__} could not be compiled as one graph '
        f"({reason}); it is evaluated with the loop engine (same values, eager speed).",
        CompileFallbackWarning,
        stacklevel=3,
    )
    return values, "loop", f"compile failed ({reason.split(':')[0]}); evaluated with the loop"


def _compiled_points(
    compiled: Callable[..., tuple[Tensor, Tensor | None]],
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    move: WeightPerturbation,
    coefficients: np.ndarray,
    origin: Sequence[Tensor] | None,
    buffers: BufferPlan | None,
    metric_fn: LossFn | None,
) -> Tensor:
    """The loop engine's point order and weight moves, one compiled call per point.

    The weights are moved exactly as in the loop engine, by ``engine.walk_points`` (row buffer, foreach
    kernels, restored by ``move``); recomputed BatchNorm statistics come from an eager pass with
    ``loss_fn`` (its Python-side running average does not compile as one graph), the evaluation from
    the compiled one.
    """
    losses: list[Tensor] = []
    metrics: list[Tensor] = []
    with walk_points(model, loss_fn, batches, move, origin, buffers) as move_to:
        for full in coefficients.tolist():
            move_to(full)
            point_losses, point_metrics = compiled(loss_fn, metric_fn, model, batches)
            losses.append(point_losses)
            if point_metrics is not None:
                metrics.append(point_metrics)
    stacked = torch.stack(losses)
    if metric_fn is None:
        return stacked
    return torch.cat([stacked.double(), torch.stack(metrics).double()], dim=1)
