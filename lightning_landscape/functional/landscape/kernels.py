"""Exact, faster kernels for the loop engine's forward passes: max pooling without indices on the CPU.

On the CPU, ``F.max_pool2d`` on a contiguous NCHW tensor runs ``max_pool2d_with_indices`` even when no
gradient is wanted; measured here it was 60 % of a small CNN's forward pass, about ten times the cost
of the same maximum taken as elementwise ``torch.maximum`` over strided views. A maximum is exact in
floating point, so that substitute gives the same values bit for bit (NaN propagates in both). Inside
:func:`fast_pooling` (only while nothing requires grad), non-overlapping 2-D max pooling of contiguous
CPU tensors (``kernel_size == stride``, no padding or dilation, no indices) takes the substitute;
every other call runs PyTorch's own kernel. Nothing about the model changes: the override is a torch
function mode, active for the block only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["fast_pooling", "max_pool2d_exact", "uses_max_pooling"]


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], int):
        return int(value[0]), int(value[0])
    return None


def max_pool2d_exact(x: Tensor, kernel: tuple[int, int]) -> Tensor:
    """``F.max_pool2d(x, kernel)`` (stride = kernel, floor mode) as a chain of ``torch.maximum`` over
    strided views: the same values bit for bit, without computing indices."""
    kh, kw = kernel
    h, w = (x.shape[-2] // kh) * kh, (x.shape[-1] // kw) * kw
    rows = x[..., :h, 0:w:kw]
    for j in range(1, kw):
        rows = torch.maximum(rows, x[..., :h, j:w:kw])
    out = rows[..., 0:h:kh, :]
    for i in range(1, kh):
        out = torch.maximum(out, rows[..., i:h:kh, :])
    return out


def _exact_kernel(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[int, int] | None:
    """The kernel of a ``F.max_pool2d`` call the substitute computes exactly, or None."""
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
    bound = dict(zip(names, args))
    bound.update(kwargs)
    x = bound.get("input")
    if not isinstance(x, Tensor) or x.device.type != "cpu" or x.dim() not in (3, 4):
        return None
    if not x.is_floating_point() or x.requires_grad or not x.is_contiguous() or x.numel() == 0:
        return None
    kernel = _pair(bound.get("kernel_size"))
    stride = bound.get("stride")
    stride = kernel if stride is None or stride == [] or stride == () else _pair(stride)
    if kernel is None or stride != kernel or bound.get("return_indices", False):
        return None
    if _pair(bound.get("padding", 0)) != (0, 0) or _pair(bound.get("dilation", 1)) != (1, 1):
        return None
    h, w = x.shape[-2], x.shape[-1]
    if h < kernel[0] or w < kernel[1]:
        return None
    if bound.get("ceil_mode", False) and (h % kernel[0] or w % kernel[1]):
        return None  # ceil mode pools a partial window at the edge
    return kernel


class _FastPooling(TorchFunctionMode):
    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.max_pool2d and not torch.is_grad_enabled():
            kernel = _exact_kernel(args, kwargs)
            if kernel is not None:
                return max_pool2d_exact(args[0] if args else kwargs["input"], kernel)
        return func(*args, **kwargs)


def uses_max_pooling(model: nn.Module) -> bool:
    """Whether ``model`` holds an ``nn.MaxPool2d`` (where :func:`fast_pooling` is worth its per-op cost);
    False for a ``torch.compile``-d model (its graph has its own kernels)."""
    if hasattr(model, "_orig_mod"):
        return False
    return any(isinstance(m, nn.MaxPool2d) for m in model.modules())


@contextlib.contextmanager
def fast_pooling(enabled: bool = True) -> Iterator[None]:
    """Inside the block, exact max pooling without indices on the CPU (see the module docstring).

    Example::

        >>> x = torch.randn(2, 3, 8, 8)
        >>> with torch.no_grad(), fast_pooling():
        ...     fast = F.max_pool2d(x, 2)
        >>> bool(torch.equal(fast, F.max_pool2d(x, 2)))
        True
    """
    if not enabled:
        yield
        return
    with _FastPooling():
        yield
