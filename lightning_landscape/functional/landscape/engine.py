"""The evaluation engine shared by surfaces, lines, barriers and sharpness samples.

``evaluate_points`` gives, for each row ``c`` of a coefficient table, the loss at
``origin + sum_k c_k d_k`` on every probe batch (not only their mean: the spread over batches is the
probe noise), optionally a metric beside it, with the buffers set by a :class:`BufferPlan`. The model
is observed in eval mode under ``no_grad`` and restored exactly (see :func:`observation`); the
origin defaults to the current weights. Two paths give the same values within float rounding: the
loop (weights moved in place, one forward pass per point and batch) and the batched path
(:mod:`lightning_landscape.functional.landscape.batched`, many points per vmapped forward pass).
"""

from __future__ import annotations

import contextlib
import time
import types
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape.functional.landscape.batched import evaluate_points_batched
from lightning_landscape.functional.landscape.bn import BufferPlan, recompute_session, statistics_pass
from lightning_landscape.functional.landscape.costs import (
    EngineCosts,
    compile_pays,
    measured_costs,
    probe_signature,
    remember_costs,
)
from lightning_landscape.functional.landscape.kernels import fast_pooling, uses_max_pooling
from lightning_landscape.functional.landscape.params import Direction, LossFn, WeightPerturbation, observation
from lightning_landscape.functional.objective import Engine, Objective, check_engine

__all__ = [
    "Engine",
    "EngineCosts",
    "Evaluation",
    "Progress",
    "auto_engine",
    "check_engine",
    "compile_pays",
    "evaluate_points",
    "evaluate_points_of",
]

#: ``progress(done, total)``: called from Python as points are dispatched (no host sync), monotone,
#: ending with ``done == total``.
Progress = Callable[[int, int], None]

# Models "auto" found it cannot vmap (weakly held: forgotten with the model). Only which path runs is
# remembered, never values, so the engine stays a pure function of its inputs. Plain loss evaluations
# and evaluations with buffers or a metric are remembered apart (one may batch where the other cannot).
_CANNOT_VMAP: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_CANNOT_VMAP_EXTRA: weakref.WeakKeyDictionary[nn.Module, set[tuple[str, bool]]] = weakref.WeakKeyDictionary()


@dataclass
class Evaluation:
    """Per-batch values at each point: ``losses[n, b]`` (and ``metrics[n, b]``) for point ``n``, batch ``b``.

    ``engine`` is the path that ran (``"loop"``, ``"vmap"`` or ``"compile"``), ``note`` says why it
    fell back, ``reason`` why "auto" chose it (None for an engine asked for by name).
    """

    losses: np.ndarray
    metrics: np.ndarray | None
    engine: str
    note: str | None = None
    reason: str | None = None


def auto_engine(model: nn.Module, params: Sequence[Tensor]) -> Engine:
    """The "auto" rule between the loop and vmap, deterministic so that identical runs give identical records.

    Batched where it pays, on accelerators: one vmapped forward pass over a chunk of points replaces
    many small kernel launches. On the CPU, the loop: measured there, batching won only for models of
    a few thousand parameters and lost up to 2.3x on larger ones (benchmarks/bench_floor.py).
    "compile" is chosen only by :func:`compile_pays`, from measured costs.
    """
    if model in _CANNOT_VMAP or all(p.device.type == "cpu" for p in params):
        return "loop"
    return "vmap"


def _auto_reason(model: nn.Module, engine: Engine) -> str:
    if model in _CANNOT_VMAP:
        return "auto: the loop (vmap failed earlier on this model)"
    if engine == "loop":
        return "auto: the loop on the CPU (batching loses on compute-bound CPU models)"
    return "auto: vmap on an accelerator (one batched pass replaces many small kernel launches)"


_FLOATS = (torch.float32, torch.float64)


def checked_scalar(value: Any, what: str = "loss_fn") -> Tensor:
    """``value`` as a 0-d float32/float64 tensor; a ValueError naming ``what`` unless a scalar tensor."""
    if type(value) is Tensor and value.dim() == 0 and value.dtype in _FLOATS and not value.requires_grad:
        return value  # the loop's usual case (a loss computed under no_grad): nothing to convert
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise ValueError(
            f"`{what}` must return a scalar tensor, got {type(value).__name__}"
            + (f" of shape {tuple(value.shape)}" if isinstance(value, Tensor) else "")
        )
    value = value.detach()
    value = value if value.dim() == 0 else value.reshape(())
    return value if value.dtype in _FLOATS else value.float()


def evaluate_points(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    params: Sequence[Tensor],
    directions: Sequence[Direction],
    coefficients: np.ndarray,
    *,
    engine: Engine = "auto",
    chunk_size: int | None = None,
    origin: Sequence[Tensor] | None = None,
    buffers: BufferPlan | None = None,
    metric_fn: LossFn | None = None,
    progress: Progress | None = None,
) -> Evaluation:
    """Per-batch losses (and metrics) at ``origin + coefficients[n] @ directions``; one host sync at the end.

    The thin entry of :func:`evaluate_points_of` (``params`` taken as given; see there).
    """
    objective = Objective(
        model, loss_fn, batches, params, engine=engine, chunk_size=chunk_size, metric_fn=metric_fn
    )
    return evaluate_points_of(
        objective, directions, coefficients, origin=origin, buffers=buffers, progress=progress
    )


def evaluate_points_of(
    objective: Objective,
    directions: Sequence[Direction],
    coefficients: np.ndarray,
    *,
    origin: Sequence[Tensor] | None = None,
    buffers: BufferPlan | None = None,
    progress: Progress | None = None,
) -> Evaluation:
    """Per-batch losses (and metrics) of ``objective`` at ``origin + coefficients[n] @ directions``.

    The engine, chunk size and metric are the objective's; its ``bn`` is not read here: ``buffers``
    says how the statistics follow each point.

    With an interpolating :class:`BufferPlan`, each row carries the buffer coefficients after the weight
    coefficients: the buffers at row ``n`` are ``base + coefficients[n, k:] @ buffers.directions``
    (``k = len(directions)``), so the caller chooses how statistics follow the weights (held at the
    ends of a line, say).

    ``engine="loop"`` moves the weights in place from a saved copy for each point (foreach kernels,
    no model copies, no host sync per point); ``"vmap"`` evaluates chunks of ``chunk_size`` points
    (default: from a memory budget) in one vmapped forward pass and raises if the model cannot be
    vmapped. ``"auto"`` is batched on accelerators and the loop on the CPU (see :func:`auto_engine`),
    compiled only where the costs measured for this model and probe set say compiling repays itself
    (:func:`~lightning_landscape.functional.landscape.costs.compile_pays`; ``Evaluation.reason`` says
    why); a model that cannot be vmapped goes to the loop (``Evaluation.note`` says so). ``"compile"``: the
    loop's points through a ``torch.compile``-d evaluation
    (:mod:`~lightning_landscape.functional.landscape.engine`).

    ``progress(done, total)`` is called every few points (after each chunk when batched) and at the end,
    from Python, without a host synchronisation: on an accelerator ``done`` counts points dispatched.
    """
    model, batches, metric_fn, engine = (
        objective.model,
        objective.batches,
        objective.metric_fn,
        objective.engine,
    )
    coefficients = np.asarray(coefficients, dtype=np.float64).reshape(len(coefficients), -1)
    move = WeightPerturbation(objective.params, directions)  # validates shapes, casts directions once
    if buffers is not None and buffers.mode == "keep":
        buffers = None
    n_buffer = len(buffers.directions) if buffers is not None and buffers.mode == "interpolate" else 0
    if coefficients.shape[1] != len(move.directions) + n_buffer:
        raise ValueError(
            f"{coefficients.shape[1]} coefficients per point for {len(move.directions)} directions"
            + (f" and {n_buffer} buffer directions" if n_buffer else "")
        )
    if origin is not None:
        if len(origin) != len(move.params):
            raise ValueError(
                f"`origin` has {len(origin)} tensors, expected one per parameter ({len(move.params)})"
            )
        for o, p in zip(origin, move.params):
            if o.shape != p.shape:
                raise ValueError(f"`origin`: a tensor of shape {tuple(o.shape)} for {tuple(p.shape)}")
        origin = [o.detach().to(device=p.device, dtype=p.dtype) for o, p in zip(origin, move.params)]
    width = len(batches) * (2 if metric_fn is not None else 1)
    progress = _monotone(progress, len(coefficients))
    if len(coefficients) == 0:
        empty = np.zeros((0, len(batches)))
        return Evaluation(empty, empty.copy() if metric_fn is not None else None, "loop")

    def batched(coef: np.ndarray) -> Tensor:
        return evaluate_points_batched(
            objective, move.directions, coef, origin=origin, buffers=buffers, progress=progress
        )

    def loop(coef: np.ndarray) -> Tensor:
        return _evaluate_points_loop(objective, move, coef, origin, buffers, progress)

    extra = (buffers.mode if buffers is not None else "keep", metric_fn is not None)
    plain = extra == ("keep", False)
    may_fall_back = engine == "auto"
    note: str | None = None
    reason: str | None = None
    signature = probe_signature(objective.batches, metric_fn is not None, buffers, repr(_SETTINGS))
    if engine == "auto":
        engine = auto_engine(model, move.params)
        reason = _auto_reason(model, engine)
        if engine == "vmap" and not plain and extra in _CANNOT_VMAP_EXTRA.get(model, set()):
            engine = "loop"
            note = "vmap failed earlier on this model; evaluated with the loop"
            reason = "auto: the loop (vmap failed earlier on this model with these options)"
        if model not in _CANNOT_COMPILE:
            cached = model in _COMPILED and _COMPILED[model][0] == _settings_key()
            costs = measured_costs(model, signature, engine, graph_cached=cached)
            pays, why = compile_pays(len(coefficients), costs)
            reason = f"auto: compile ({why})" if pays else f"{reason}; {why}"
            if pays:
                engine = "compile"
    timing: dict[str, float] = {}
    start = time.perf_counter()
    with observation(model):
        if engine == "loop":
            values = loop(coefficients)
        elif engine == "compile":
            values, engine, note = evaluate_compiled(
                objective, move, coefficients, origin, buffers, loop, timing
            )
        else:
            try:
                values = batched(coefficients)
            except Exception as err:
                if not may_fall_back:
                    raise
                values = loop(coefficients)  # cannot be vmapped (.item(), data-dependent control flow, ...)
                # Remembered after the loop worked: a failing loss_fn is not the model's fault.
                if plain:
                    _CANNOT_VMAP.add(model)
                else:
                    _CANNOT_VMAP_EXTRA.setdefault(model, set()).add(extra)
                engine = "loop"
                note = f"vmap failed ({type(err).__name__}); evaluated with the loop"
    out = values.double().cpu().numpy().reshape(len(coefficients), width)
    if note is None:  # a fallback's time includes the failed attempt: not the cost of either engine
        remember_costs(model, signature, str(engine), len(coefficients), time.perf_counter() - start, timing)
    if progress is not None:
        progress(len(coefficients), len(coefficients))
    losses = out[:, : len(batches)]
    metrics = out[:, len(batches) :] if metric_fn is not None else None
    return Evaluation(losses, metrics, str(engine), note, reason)


def _monotone(progress: Progress | None, total: int) -> Progress | None:
    """``progress`` over ``total`` points, told only of advances (a vmap that fell back to the loop
    starts again from zero; the caller is not told twice)."""
    if progress is None:
        return None
    best = [-1]

    def report(done: int, _total: int) -> None:
        if done > best[0]:
            best[0] = done
            progress(done, total)

    return report


def _evaluate_points_loop(
    objective: Objective,
    move: WeightPerturbation,
    coefficients: np.ndarray,
    origin: list[Tensor] | None,
    buffers: BufferPlan | None,
    progress: Progress | None = None,
) -> Tensor:
    """One forward pass per point and batch; per point, two foreach kernels and no host sync.

    Max pooling runs through :func:`~lightning_landscape.functional.landscape.kernels.fast_pooling`
    (exact, without the indices PyTorch's CPU kernel computes).

    Points come row by row (a surface's ``y`` is constant along a row), so ``w0 + sum_{k>=1} c_k d_k``
    is built once per row into a buffer, and each point is ``copy(buffer) + c_0 d_0``. Losses stay on
    the device, unreduced, until one stack at the end: ``(n, B)`` losses, then ``(n, B)`` metrics.
    """
    model, loss_fn, batches, metric_fn = (
        objective.model,
        objective.loss_fn,
        objective.batches,
        objective.metric_fn,
    )
    losses: list[Tensor] = []
    metrics: list[Tensor] = []
    n_points = len(coefficients)
    every = max(1, n_points // 50)  # progress about 50 times per evaluation
    pooling = fast_pooling(uses_max_pooling(model))  # exact: the same values bit for bit
    with walk_points(objective, move, origin, buffers) as move_to, pooling:
        for index, full in enumerate(coefficients.tolist()):
            if progress is not None and index and index % every == 0:
                progress(index, n_points)
            move_to(full)
            losses.extend(checked_scalar(loss_fn(model, batch)) for batch in batches)
            if metric_fn is not None:
                metrics.extend(checked_scalar(metric_fn(model, batch), "metric_fn") for batch in batches)
    n = len(coefficients)
    stacked = torch.stack(losses).view(n, len(batches))
    if metric_fn is None:
        return stacked
    return torch.cat([stacked.double(), torch.stack(metrics).double().view(n, len(batches))], dim=1)


@contextlib.contextmanager
def walk_points(
    objective: Objective,
    move: WeightPerturbation,
    origin: Sequence[Tensor] | None,
    buffers: BufferPlan | None,
) -> Iterator[Callable[[list[float]], None]]:
    """The loop engines' walk over points (eager and compiled): ``move_to(row)`` puts the model at one.

    Inside the block the weights are saved by ``move`` (and restored after), gradients are off, and
    BatchNorm statistics to recompute have their session open. Points come row by row, so
    ``origin + sum_{k>=1} c_k d_k`` is rebuilt into a row buffer only when the row changes, and each
    point is ``copy(buffer) + c_0 d_0``; interpolated buffers follow the row's trailing coefficients, and
    with statistics to recompute, one statistics pass runs over the batches at every point.
    """
    model, loss_fn, batches = objective.model, objective.loss_fn, objective.batches
    params, dirs = move.params, move.directions
    norms = buffers.norms if buffers is not None and buffers.mode == "recompute" else []
    with move, torch.no_grad(), recompute_session(norms):
        saved = move._saved
        assert saved is not None
        anchor = list(saved if origin is None else origin)
        n_dirs = len(dirs)
        base = anchor if n_dirs == 1 else [t.clone() for t in anchor]
        previous: list[float] | None = [] if n_dirs == 1 else None

        def move_to(full: list[float]) -> None:
            nonlocal previous
            first, rest = full[0], full[1:n_dirs]
            if rest != previous:
                torch._foreach_copy_(base, anchor)
                for c, d in zip(rest, dirs[1:]):
                    if c != 0.0:
                        torch._foreach_add_(base, d, alpha=c)
                previous = rest
            torch._foreach_copy_(params, base)
            if first != 0.0:
                torch._foreach_add_(params, dirs[0], alpha=first)
            if buffers is not None and buffers.mode == "interpolate":
                buffers.set_buffers(full[n_dirs:])
            if norms:
                with statistics_pass(norms):
                    for batch in batches:
                        loss_fn(model, batch)

        yield move_to


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


def _settings_key() -> tuple[Any, ...]:
    return (_SETTINGS["backend"], _SETTINGS["mode"], repr(_SETTINGS["options"]))


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
    loss_fn: LossFn, metric_fn: LossFn | None, model: nn.Module, batch: Any
) -> tuple[Tensor, Tensor | None]:
    """The loss (and metric) on one probe batch at the current weights."""
    loss = checked_scalar(loss_fn(model, batch))
    if metric_fn is None:
        return loss, None
    return loss, checked_scalar(metric_fn(model, batch), "metric_fn")


def compiled_loss(model: nn.Module) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """The compiled ``(loss_fn, metric_fn, model, batch) -> (loss, metric)`` of ``model``, made once.

    ``loss`` is ``loss_fn(model, batch)`` (``metric`` likewise, or None without ``metric_fn``): one
    graph per probe batch *shape*, called once per batch: equal batches share it, and it compiles
    faster than one graph holding every batch (benchmarks/results/compile.txt: 32 s against 41 s cold
    on the benchmark CNN).

    Compilation itself happens at the first call (and again for each new guard combination, see the
    module docstring); it raises there if the loss is not one graph or the compiler fails.

    Example::

        >>> net = nn.Linear(3, 1)
        >>> compiled_loss(net) is compiled_loss(net)
        True
    """
    key = _settings_key()
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
    objective: Objective,
    move: WeightPerturbation,
    coefficients: np.ndarray,
    origin: Sequence[Tensor] | None,
    buffers: BufferPlan | None,
    loop: Callable[[np.ndarray], Tensor],
    timing: dict[str, float] | None = None,
) -> tuple[Tensor, Engine, str | None]:
    """The loop engine's points through the compiled evaluation of ``model``; ``loop`` if that fails.

    Same arguments and result layout as the loop engine of
    :func:`~lightning_landscape.functional.landscape.engine.evaluate_points` (``(n, B)`` losses, then ``(n,
    B)``
    metrics in float64 with ``metric_fn``), called inside its observation. Returns the values, the
    engine that ran (``"compile"`` or ``"loop"``) and a note when it fell back. If the compiled run
    raises, ``loop(coefficients)`` runs: when it works, the model is remembered as one that cannot be
    compiled and a :class:`CompileFallbackWarning` says why, once; when it raises too, its error
    propagates (the fault is ``loss_fn``'s, not the compiler's). ``timing`` receives the seconds of
    the first compiled call (``"first"``) and whether it compiled a new graph (``"new_graph"``: 1.0).
    """
    model = objective.model
    if model in _CANNOT_COMPILE:
        return loop(coefficients), "loop", "compile failed earlier on this model; evaluated with the loop"
    compiled = compiled_loss(model)
    try:
        values = _compiled_points(compiled, objective, move, coefficients, origin, buffers, timing)
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


def _frame_count() -> int:
    """Frames dynamo has compiled in this process (a new graph of ours moves it)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # pragma: no cover - a torch without dynamo's counters
        return 0


def _compiled_points(
    compiled: Callable[..., tuple[Tensor, Tensor | None]],
    objective: Objective,
    move: WeightPerturbation,
    coefficients: np.ndarray,
    origin: Sequence[Tensor] | None,
    buffers: BufferPlan | None,
    timing: dict[str, float] | None = None,
) -> Tensor:
    """The loop engine's point order and weight moves, one compiled call per point.

    The weights are moved exactly as in the loop engine, by ``engine.walk_points`` (row buffer, foreach
    kernels, restored by ``move``); recomputed BatchNorm statistics come from an eager pass with
    ``loss_fn`` (its Python-side running average does not compile as one graph), the evaluation from
    the compiled one.
    """
    model, loss_fn, batches, metric_fn = (
        objective.model,
        objective.loss_fn,
        objective.batches,
        objective.metric_fn,
    )
    losses: list[Tensor] = []
    metrics: list[Tensor] = []
    frames = _frame_count()
    with walk_points(objective, move, origin, buffers) as move_to:
        for index, full in enumerate(coefficients.tolist()):
            move_to(full)
            if index == 0:
                started = time.perf_counter()
            for batch in batches:
                loss, metric = compiled(loss_fn, metric_fn, model, batch)
                losses.append(loss)
                if metric is not None:
                    metrics.append(metric)
            if index == 0 and timing is not None:
                timing["first"] = time.perf_counter() - started
                timing["new_graph"] = float(_frame_count() != frames)
    n = len(coefficients)
    stacked = torch.stack(losses).view(n, len(batches))
    if metric_fn is None:
        return stacked
    return torch.cat([stacked.double(), torch.stack(metrics).double().view(n, len(batches))], dim=1)
