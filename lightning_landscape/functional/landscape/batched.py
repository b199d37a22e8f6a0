"""The batched evaluation path: many grid points in one forward pass with ``torch.func.vmap``.

For a chunk of ``K`` grid points, the perturbed parameters ``w0 + C @ D`` are built as ``(K, *shape)``
tensors (one ``addmm`` per parameter) and the loss is evaluated for all of them at once with
``vmap`` over :func:`torch.func.functional_call`. The model's own weights are never touched. The
probe batches are not batched over (``in_dims=None``): every point sees the same batch.

``loss_fn(model, batch)`` is an arbitrary function of the *module*, so it cannot be handed to
``functional_call`` directly; it is wrapped in a small module whose ``forward(batch)`` calls
``loss_fn(model, batch)`` with the model registered as its child. ``functional_call`` on that wrapper
swaps the model's parameters (named ``model.<name>``) for the batched ones during the call.

Buffers are batched the same way when a :class:`BufferPlan` asks for it: interpolated buffers are
built like the weights, and recomputed BatchNorm statistics are ``(K, C)`` tensors that one vmapped
forward pass per probe batch (normalization layers in train mode) fills in place before the
evaluation. Every value is kept per probe batch (the probe noise is their spread).

Not every module can be vmapped (``.item()`` or data-dependent control flow in ``forward``, random
ops, in-place writes into unbatched state); :func:`evaluate_points_batched` then raises and the
caller falls back to the loop path. The chunk size comes from a memory budget: the bytes of one
point's perturbed parameters plus an estimate of one forward pass's activations (the sum of the
outputs of the leaf modules, measured once with forward hooks on the first probe batch).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import vmap

from lightning_landscape.functional.landscape.bn import BufferPlan, recompute_session, statistics_pass
from lightning_landscape.functional.landscape.params import LossFn
from lightning_landscape.functional.objective import Objective

__all__ = ["auto_chunk_size", "evaluate_points_batched"]

#: Default memory budget of one chunk on the CPU (bytes). Larger chunks stop paying on a CPU: the
#: per-point work no longer fits in cache and dispatch overhead is already amortised.
CPU_BUDGET = 16 * 2**20
#: Fraction of the free accelerator memory one chunk may use.
CUDA_BUDGET_FRACTION = 0.25
#: Upper bound on the chunk size whatever the budget says.
MAX_CHUNK = 1024


def _slots(model: nn.Module, tensors: Sequence[Tensor], kind: str) -> list[list[tuple[nn.Module, str]]]:
    """For each tensor, every ``(module, attribute)`` slot of ``module._<kind>`` that holds it."""
    index = {id(t): i for i, t in enumerate(tensors)}
    owners: list[list[tuple[nn.Module, str]]] = [[] for _ in tensors]
    for module in model.modules():
        for attr, t in getattr(module, f"_{kind}").items():
            if t is not None and id(t) in index:
                owners[index[id(t)]].append((module, attr))
    if any(not slots for slots in owners):
        raise ValueError(f"a tensor to batch over is not among the model's {kind}")
    return owners


def _swapped_loss(
    model: nn.Module,
    loss_fn: LossFn,
    owners: list[list[tuple[nn.Module, str]]],
    tensors: Sequence[Tensor],
    batch: Any,
    buffer_owners: list[list[tuple[nn.Module, str]]] = (),  # type: ignore[assignment]
    buffer_tensors: Sequence[Tensor] = (),
) -> Tensor:
    """``loss_fn(model, batch)`` with the parameters' slots holding ``tensors`` for the call.

    The slots are written directly (as :func:`torch.func.functional_call` does), once per
    ``(module, attribute)``, and always put back; ``functional_call`` itself is not used because a
    module registered under two paths (``nn.Sequential(lin, act, lin)``) leaves its tied weight
    restored as a plain tensor. Buffers given in ``buffer_tensors`` are swapped the same way.
    """
    swaps: list[tuple[dict[str, Any], str, Tensor]]
    swaps = [(module._parameters, attr, t) for slots, t in zip(owners, tensors) for module, attr in slots]
    swaps += [
        (module._buffers, attr, t)
        for slots, t in zip(buffer_owners, buffer_tensors)
        for module, attr in slots
    ]
    saved = [(store, attr, store[attr]) for store, attr, _ in swaps]
    try:
        for store, attr, t in swaps:
            store[attr] = t
        loss = loss_fn(model, batch)
    finally:
        for store, attr, original in saved:
            store[attr] = original
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError("`loss_fn` must return a scalar tensor")
    loss = loss.reshape(())
    return loss if loss.dtype in (torch.float32, torch.float64) else loss.float()


@contextlib.contextmanager
def _vmap_friendly_kernels() -> Iterator[None]:
    """Route attention through composite kernels that have batching rules, and keep vmap quiet.

    The fused fast paths of ``nn.TransformerEncoderLayer`` / ``nn.MultiheadAttention`` and the fused
    scaled-dot-product kernels have no vmap batching rule (vmap would fall back to a slow per-point
    loop); the math backend is made of ops that batch.
    """
    mha = getattr(torch.backends, "mha", None)
    fastpath = mha.get_fastpath_enabled() if mha is not None else None
    with contextlib.ExitStack() as stack:
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        except ImportError:  # torch < 2.3
            pass
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        if mha is not None:
            mha.set_fastpath_enabled(False)
        try:
            yield
        finally:
            if mha is not None:
                mha.set_fastpath_enabled(fastpath)


def _activation_bytes(model: nn.Module, loss_fn: LossFn, batch: Any) -> int:
    """Bytes of the outputs of the leaf modules in one ``loss_fn(model, batch)`` (an upper-bound proxy)."""
    total = 0

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal total
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, Tensor):
                total += t.numel() * t.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if next(m.children(), None) is None]
    try:
        loss_fn(model, batch)
    finally:
        for h in handles:
            h.remove()
    return total


def auto_chunk_size(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    params: Sequence[Tensor],
    memory_budget: int | None = None,
) -> int:
    """Grid points per vmapped forward pass that fit in ``memory_budget`` bytes.

    One point costs its perturbed parameters plus roughly twice the activations of one forward pass
    over the largest probe batch (the outputs of the leaf modules, measured once with hooks). The
    default budget is 16 MiB on the CPU and a quarter of the free memory on a CUDA device.
    """
    device = params[0].device
    if memory_budget is None:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            memory_budget = int(free * CUDA_BUDGET_FRACTION)
        else:
            memory_budget = CPU_BUDGET
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    act_bytes = _activation_bytes(model, loss_fn, batches[0])
    per_point = param_bytes + 2 * act_bytes + 1
    return int(max(1, min(MAX_CHUNK, memory_budget // per_point)))


def evaluate_points_batched(
    objective: Objective,
    directions: Sequence[Sequence[Tensor]],
    coefficients: np.ndarray,
    *,
    memory_budget: int | None = None,
    origin: Sequence[Tensor] | None = None,
    buffers: BufferPlan | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Per-batch losses of ``objective`` at ``origin + coefficients[n] @ directions`` for each row ``n``,
    vmapped (``objective.chunk_size`` points at a time; default: from ``memory_budget``).

    Returns an ``(n, B)`` tensor on the device (no host synchronisation), or ``(n, 2B)`` float64 with
    ``metric_fn`` (losses, then metrics). ``origin`` defaults to the current weights. With a
    :class:`BufferPlan`, the buffers are batched too: interpolated ones are built like the weights;
    recomputed running statistics start at zero mean and unit variance for every point of a chunk and
    are accumulated by one vmapped forward pass per probe batch in train mode (the normalization
    layers only) before the evaluation. The caller puts the model in eval mode under ``no_grad`` (see
    :func:`observation`) and has cast ``directions`` to the parameters' dtypes and devices; raises
    whatever ``vmap`` raises for a module it cannot batch.
    """
    model, loss_fn, batches, params = objective.model, objective.loss_fn, objective.batches, objective.params
    chunk_size, metric_fn = objective.chunk_size, objective.metric_fn
    owners = _slots(model, params, "parameters")
    anchors = list(params) if origin is None else list(origin)
    n_points, n_dirs = coefficients.shape[0], len(directions)
    buffer_coefficients = coefficients[:, n_dirs:]
    coefficients = coefficients[:, :n_dirs]
    # One (n_dirs, numel) matrix per parameter and the coefficients in each parameter's dtype, once.
    basis = [torch.stack([d[i].reshape(-1) for d in directions]) for i in range(len(params))]
    coef: dict[tuple[torch.dtype, torch.device, bool], Tensor] = {}

    def coefficients_like(t: Tensor, buffer: bool = False) -> Tensor:
        key = (t.dtype, t.device, buffer)
        if key not in coef:
            table = buffer_coefficients if buffer else coefficients
            coef[key] = torch.as_tensor(np.ascontiguousarray(table), dtype=t.dtype).to(t.device)
        return coef[key]

    mode = buffers.mode if buffers is not None else "keep"
    norms = buffers.norms if buffers is not None and mode == "recompute" else []
    if mode == "interpolate":
        assert buffers is not None
        buffer_slots = _slots(model, buffers.tensors, "buffers")
        buffer_basis = [
            torch.stack([d[i].reshape(-1) for d in buffers.directions]) for i in range(len(buffers.tensors))
        ]
    elif norms:
        # batch_norms() lists only layers that track running statistics: none of these is None.
        stats = cast(list[Tensor], [t for m in norms for t in (m.running_mean, m.running_var)])
        buffer_slots = _slots(model, stats, "buffers")
    else:
        buffer_slots = []
    if chunk_size is None:
        chunk_size = auto_chunk_size(model, loss_fn, batches, params, memory_budget)

    def call(fn: LossFn) -> Any:
        def point(point_params: list[Tensor], point_buffers: list[Tensor], batch: Any) -> Tensor:
            return _swapped_loss(model, fn, owners, point_params, batch, buffer_slots, point_buffers)

        return vmap(point, in_dims=(0, 0, None))

    batched_loss = call(loss_fn)
    batched_metric = call(metric_fn) if metric_fn is not None else None
    out: list[Tensor] = []
    with _vmap_friendly_kernels(), recompute_session(norms):
        for start in range(0, n_points, chunk_size):
            stop = min(start + chunk_size, n_points)
            k = stop - start
            point_params = [
                torch.addmm(a.detach().reshape(1, -1), coefficients_like(p)[start:stop], b).view(k, *p.shape)
                for p, a, b in zip(params, anchors, basis)
            ]
            point_buffers: list[Tensor] = []
            if mode == "interpolate":
                assert buffers is not None
                point_buffers = [
                    torch.addmm(b0.reshape(1, -1), coefficients_like(t, True)[start:stop], b).view(
                        k, *t.shape
                    )
                    for t, b0, b in zip(buffers.tensors, buffers.base, buffer_basis)
                ]
            elif norms:
                point_buffers = [
                    (torch.zeros if i % 2 == 0 else torch.ones)(k, *t.shape, dtype=t.dtype, device=t.device)
                    for i, t in enumerate(stats)
                ]
                with statistics_pass(norms):  # fills point_buffers in place, batch after batch
                    for batch in batches:
                        batched_loss(point_params, point_buffers, batch)
            values = [batched_loss(point_params, point_buffers, batch) for batch in batches]
            if batched_metric is not None:
                values = [v.double() for v in values]
                values += [batched_metric(point_params, point_buffers, b).double() for b in batches]
            out.append(torch.stack(values, dim=1))
            del point_params, point_buffers
            if progress is not None:  # points dispatched (no host sync)
                progress(stop, n_points)
    return torch.cat(out)
