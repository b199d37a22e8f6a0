"""Helpers shared by the functional modules (internal): argument checks, the parameter resolver, the loss
check, the work dtype, probe metadata, and the context every second derivative runs in.

Each decision lives here once; the public modules import these names (none of them is private to
another module).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_landscape.functional import checks as check
from lightning_landscape.functional.landscape.params import LossFn, landscape_parameters

__all__ = [
    "NonFiniteError",
    "check_batches",
    "check_int",
    "check_positive",
    "nonfinite_warning",
    "norm64",
    "probe_meta",
    "probe_size",
    "rademacher",
    "resolve_params",
    "scalar_loss",
    "second_order",
    "work_dtype",
]


class NonFiniteError(ArithmeticError):
    """A loss, gradient or operator product that is NaN or infinite."""


# --------------------------------------------------------------------------------------- argument checks


def check_int(name: str, value: Any, minimum: int) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is an integer (not a bool) ``>= minimum``."""
    check.positive_int(name, value, minimum=minimum)


def check_positive(name: str, value: Any) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a positive finite number."""
    check.positive_number(name, value)


def check_batches(batches: Sequence[Any]) -> list[Any]:
    """The probe batches as a list; a ValueError naming ``batches`` if there are none."""
    batches = list(batches)
    if not batches:
        raise ValueError("`batches` is empty: at least one probe batch is needed")
    return batches


def resolve_params(
    model: nn.Module, params: Sequence[Tensor] | None, *, require_grad: bool = True
) -> list[Tensor]:
    """The parameters a computation is about: the given ones, or the model's trainable floating-point ones.

    The one resolver of the package. ``None`` means :func:`landscape_parameters` (trainable floating-point
    parameters, tied ones once). Given parameters must be floating-point tensors; with ``require_grad``
    (anything that differentiates: gradients, Hessians) each must also require grad. Evaluating the loss
    at moved weights (surfaces, lines) does not differentiate and accepts frozen parameters.
    """
    if params is None:
        return [p for _, p in landscape_parameters(model)]
    params = list(params)
    if not params:
        raise ValueError("`params` is empty")
    for i, p in enumerate(params):
        if not isinstance(p, Tensor) or not p.is_floating_point():
            raise ValueError(f"`params`[{i}] is not a floating-point tensor")
        if require_grad and not p.requires_grad:
            raise ValueError(
                f"`params`[{i}] (shape {tuple(p.shape)}) does not require grad: derivatives are taken with "
                "respect to trainable parameters only"
            )
    return params


def scalar_loss(loss_fn: LossFn, model: nn.Module, batch: Any, *, differentiable: bool = True) -> Tensor:
    """``loss_fn(model, batch)`` as a 0-d tensor; a ValueError naming ``loss_fn`` if it is not a scalar
    (or, with ``differentiable``, if it does not depend on the parameters through autograd)."""
    loss = loss_fn(model, batch)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(
            f"`loss_fn` must return a scalar tensor, got {type(loss).__name__}"
            + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
        )
    if differentiable and not loss.requires_grad:
        raise ValueError(
            "`loss_fn` returned a loss that does not depend on the parameters through autograd "
            "(detached, or computed under torch.no_grad)"
        )
    return loss.reshape(())


def work_dtype(t: Tensor | torch.dtype) -> torch.dtype:
    """float64 for float64 tensors, float32 for everything else (bf16/fp16 included)."""
    dtype = t if isinstance(t, torch.dtype) else t.dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def norm64(tensors: Sequence[Tensor]) -> float:
    """The Euclidean norm of a list of tensors taken as one vector, accumulated in float64.

    Example::

        >>> norm64([torch.tensor([3.0]), torch.tensor([[4.0]])])
        5.0
    """
    return float(
        torch.sqrt(sum(((t.double() ** 2).sum() for t in tensors), torch.zeros((), dtype=torch.float64)))
    )


# --------------------------------------------------------------------------------------- probes


def probe_size(batches: Sequence[Any]) -> int:
    """Number of samples in the probe batches (the first dimension of each batch's first tensor).

    Example::

        >>> probe_size([(torch.zeros(8, 3), torch.zeros(8)), {"x": torch.zeros(5, 3)}])
        13
    """

    def first_tensor(obj: Any) -> Tensor | None:
        if isinstance(obj, Tensor):
            return obj
        if isinstance(obj, dict):
            obj = list(obj.values())
        if isinstance(obj, (list, tuple)):
            for item in obj:
                found = first_tensor(item)
                if found is not None:
                    return found
        return None

    total = 0
    for b in batches:
        t = first_tensor(b)
        total += int(t.shape[0]) if t is not None and t.dim() > 0 else 1
    return total


def probe_meta(batches: Sequence[Any]) -> dict[str, int]:
    """What every curvature and sharpness result says about its probe set."""
    return {"probe_batches": len(batches), "probe_samples": probe_size(batches)}


def rademacher(n: int, generator: torch.Generator) -> Tensor:
    """``n`` independent +-1 values (int8, on the CPU) from ``generator``: the same on every device."""
    return torch.randint(0, 2, (n,), generator=generator, dtype=torch.int8).mul_(2).sub_(1)


def nonfinite_warning(what: str, err: Exception) -> None:
    warnings.warn(f"{what}: {err}; the result is NaN", RuntimeWarning, stacklevel=3)


# --------------------------------------------------------------------------------------- second order


@contextlib.contextmanager
def second_order() -> Iterator[None]:
    """Kernels that can be differentiated twice, for the length of a block; everything restored after.

    Fused attention kernels (flash, memory-efficient, cuDNN attention, the CPU flash kernel) and cuDNN
    RNNs have no double backward. Inside the block scaled-dot-product attention runs on the math
    backend, cuDNN is off, and the fused fast path of ``nn.MultiheadAttention`` /
    ``nn.TransformerEncoderLayer`` is disabled (PyTorch only takes it when nothing requires grad, but
    a model whose attention is frozen still sees it otherwise). Training steps, outside the block,
    keep the user's kernels.
    """
    mha = getattr(torch.backends, "mha", None)
    fastpath = mha.get_fastpath_enabled() if mha is not None else None
    cudnn = torch.backends.cudnn.enabled
    with contextlib.ExitStack() as stack:
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        except ImportError:  # torch < 2.3
            kernels = {"enable_flash": False, "enable_mem_efficient": False, "enable_math": True}
            stack.enter_context(torch.backends.cuda.sdp_kernel(**kernels))
        # Only `enabled` is switched (torch.backends.cudnn.flags would also reset benchmark/deterministic).
        torch.backends.cudnn.enabled = False
        if mha is not None:
            mha.set_fastpath_enabled(False)
        try:
            yield
        finally:
            torch.backends.cudnn.enabled = cudnn
            if mha is not None:
                mha.set_fastpath_enabled(fastpath)
