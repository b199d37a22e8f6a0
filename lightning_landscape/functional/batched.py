"""The batched evaluation path: many grid points in one forward pass with ``torch.func.vmap``.

For a chunk of ``K`` grid points, the perturbed parameters ``w0 + C @ D`` are built as ``(K, *shape)``
tensors (one ``addmm`` per parameter) and the loss is evaluated for all of them at once with
``vmap`` over :func:`torch.func.functional_call`. The model's own weights are never touched. The
probe batches are not batched over (``in_dims=None``): every point sees the same batch.

``loss_fn(model, batch)`` is an arbitrary function of the *module*, so it cannot be handed to
``functional_call`` directly; it is wrapped in a small module whose ``forward(batch)`` calls
``loss_fn(model, batch)`` with the model registered as its child. ``functional_call`` on that wrapper
swaps the model's parameters (named ``model.<name>``) for the batched ones during the call.

Not every module can be vmapped (``.item()`` or data-dependent control flow in ``forward``, random
ops, in-place writes into unbatched state); :func:`evaluate_points_batched` then raises and the
caller falls back to the loop path. The chunk size comes from a memory budget: the bytes of one
point's perturbed parameters plus an estimate of one forward pass's activations (the sum of the
outputs of the leaf modules, measured once with forward hooks on the first probe batch).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import vmap

from lightning_landscape.functional.params import LossFn

__all__ = ["auto_chunk_size", "evaluate_points_batched"]

#: Default memory budget of one chunk on the CPU (bytes). Larger chunks stop paying on a CPU: the
#: per-point work no longer fits in cache and dispatch overhead is already amortised.
CPU_BUDGET = 16 * 2**20
#: Fraction of the free accelerator memory one chunk may use.
CUDA_BUDGET_FRACTION = 0.25
#: Upper bound on the chunk size whatever the budget says.
MAX_CHUNK = 1024


def _owners(model: nn.Module, params: Sequence[Tensor]) -> list[list[tuple[nn.Module, str]]]:
    """For each parameter, every ``(module, attribute)`` slot that holds it (tied weights: several)."""
    index = {id(p): i for i, p in enumerate(params)}
    owners: list[list[tuple[nn.Module, str]]] = [[] for _ in params]
    for module in model.modules():  # each module object once, however often it is registered
        for attr, p in module._parameters.items():
            if p is not None and id(p) in index:
                owners[index[id(p)]].append((module, attr))
    if any(not slots for slots in owners):
        raise ValueError("a tensor in `params` is not a parameter of the model; cannot batch over it")
    return owners


def _swapped_loss(
    model: nn.Module,
    loss_fn: LossFn,
    owners: list[list[tuple[nn.Module, str]]],
    tensors: Sequence[Tensor],
    batch: Any,
) -> Tensor:
    """``loss_fn(model, batch)`` with the parameters' slots holding ``tensors`` for the call.

    The slots are written directly (as :func:`torch.func.functional_call` does), once per
    ``(module, attribute)``, and always put back; ``functional_call`` itself is not used because a
    module registered under two paths (``nn.Sequential(lin, act, lin)``) leaves its tied weight
    restored as a plain tensor.
    """
    saved = [(module, attr, module._parameters[attr]) for slots in owners for module, attr in slots]
    try:
        for slots, t in zip(owners, tensors):
            for module, attr in slots:
                module._parameters[attr] = t  # type: ignore[assignment]
        loss = loss_fn(model, batch)
    finally:
        for module, attr, original in saved:
            module._parameters[attr] = original
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
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    params: Sequence[Tensor],
    directions: Sequence[Sequence[Tensor]],
    coefficients: np.ndarray,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
) -> Tensor:
    """Mean loss over ``batches`` at ``w0 + coefficients[n] @ directions`` for each row ``n``, vmapped.

    The caller puts the model in eval mode under ``no_grad`` (see :func:`observation`) and has cast
    ``directions`` to the parameters' dtypes and devices. Returns a 1-D tensor on the device (no host
    synchronisation); raises whatever ``vmap`` raises for a module it cannot batch.
    """
    owners = _owners(model, params)
    n_points = coefficients.shape[0]
    # One (n_dirs, numel) matrix per parameter and the coefficients in each parameter's dtype, once.
    basis = [torch.stack([d[i].reshape(-1) for d in directions]) for i in range(len(params))]
    coef: dict[tuple[torch.dtype, torch.device], Tensor] = {}
    for p in params:
        key = (p.dtype, p.device)
        if key not in coef:
            coef[key] = torch.as_tensor(coefficients, dtype=p.dtype).to(p.device)
    if chunk_size is None:
        chunk_size = auto_chunk_size(model, loss_fn, batches, params, memory_budget)

    def point_loss(point_params: list[Tensor], batch: Any) -> Tensor:
        return _swapped_loss(model, loss_fn, owners, point_params, batch)

    batched_loss = vmap(point_loss, in_dims=(0, None))
    out: list[Tensor] = []
    with _vmap_friendly_kernels():
        for start in range(0, n_points, chunk_size):
            stop = min(start + chunk_size, n_points)
            point_params = [
                torch.addmm(p.detach().reshape(1, -1), coef[(p.dtype, p.device)][start:stop], b).view(
                    stop - start, *p.shape
                )
                for p, b in zip(params, basis)
            ]
            total: Tensor | None = None
            for batch in batches:
                loss = batched_loss(point_params, batch)
                total = loss if total is None else total + loss
            assert total is not None
            out.append(total / len(batches))
            del point_params
    return torch.cat(out)
