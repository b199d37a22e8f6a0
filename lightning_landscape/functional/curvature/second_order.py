"""Which graphs can be differentiated twice: the check every Hessian-vector product makes, and the error that
names the modules that cannot.

A Hessian-vector product differentiates the gradient's graph once more. An op without a double-backward
formula raises when the second pass reaches it (``NotImplemented``), but one wrapped in
``@once_differentiable`` (``Error`` nodes) is never reached, since nothing leads past it, so the second
derivative would silently miss a term: :func:`dead_end` finds such nodes in a gradient's graph, and
:func:`explain_second_order` raises a :class:`SecondOrderError` naming the innermost modules that cannot be
differentiated twice. Used by the double-backward operator and by the exact sharded one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_landscape.functional.landscape.params import LossFn

__all__ = ["DEAD_ENDS", "SecondOrderError", "dead_end", "explain_second_order", "graph_nodes", "tensors_in"]


class SecondOrderError(RuntimeError):
    """Part of the model cannot be differentiated twice, so its Hessian-vector products do not exist."""


def tensors_in(obj: Any) -> list[Tensor]:
    """The tensors in ``obj`` (a tensor, or dicts, lists and tuples of them), in order."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in tensors_in(item)]
    return []


# Autograd nodes that end a second backward pass: ``NotImplemented`` raises when reached (an op without a
# double-backward formula, such as a fused attention kernel), ``Error`` (from ``@once_differentiable``) is
# never reached because nothing leads past it, so the second derivative silently misses a term.
DEAD_ENDS = ("NotImplemented", "Error", "DelayedError")
_SECOND_ORDER_MESSAGES = ("derivative for", "differentiate twice", "double backward", "not implemented")


def graph_nodes(roots: Sequence[Any], stop: set[Any] | None = None) -> set[Any]:
    """The autograd nodes reachable from ``roots`` (tensors or nodes), not entering ``stop``."""
    stop = stop or set()
    seen: set[Any] = set()
    todo = [r.grad_fn if isinstance(r, Tensor) else r for r in roots]
    while todo:
        node = todo.pop()
        if node is None or node in seen or node in stop:
            continue
        seen.add(node)
        todo.extend(nxt for nxt, _ in node.next_functions)
    return seen


def dead_end(outputs: Sequence[Tensor], grads: Sequence[Tensor]) -> bool:
    """Whether the graph of ``grads`` (first derivatives of ``outputs``) has a node a second pass cannot
    cross; the forward graph of ``outputs`` is not walked again."""
    forward = graph_nodes(outputs)
    return any(
        type(n).__name__ in DEAD_ENDS for n in graph_nodes([g for g in grads if g is not None], forward)
    )


def _twice_differentiable(inputs: list[Tensor], outputs: list[Tensor]) -> bool:
    """Whether ``outputs`` can be differentiated twice with respect to ``inputs``."""
    try:
        # Grad outputs that require grad, as in a real second pass (where they depend on the weights).
        ones = [torch.ones_like(o, requires_grad=True) for o in outputs]
        grads = torch.autograd.grad(outputs, inputs, ones, create_graph=True, allow_unused=True)
    except RuntimeError:
        return False
    return not dead_end(outputs, grads)


def _modules_without_double_backward(model: nn.Module, loss_fn: LossFn, batch: Any) -> list[str]:
    """The innermost modules whose forward pass cannot be differentiated twice (``type (name)``).

    Run only after a Hessian-vector product failed: one forward pass records every module's inputs and
    outputs, then each module is tried on its own, and the failing ones with no failing submodule are
    named (a failure in a parent's own code, such as a functional attention call, names the parent).
    """
    calls: list[tuple[str, nn.Module, list[Tensor], list[Tensor]]] = []

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            inputs = [t for t in tensors_in((args, kwargs)) if t.requires_grad and t.is_floating_point()]
            inputs += [p for p in module.parameters() if p.requires_grad]
            outputs = [t for t in tensors_in(output) if t.requires_grad and t.is_floating_point()]
            if inputs and outputs:
                calls.append((name, module, inputs, outputs))

        return hook

    handles = [m.register_forward_hook(record(n), with_kwargs=True) for n, m in model.named_modules()]
    try:
        loss_fn(model, batch)
    finally:
        for h in handles:
            h.remove()
    failing = {name: module for name, module, i, o in calls if not _twice_differentiable(i, o)}

    def inside(child: str, parent: str) -> bool:
        return child != parent and (parent == "" or child.startswith(parent + "."))

    innermost = [n for n in failing if not any(inside(other, n) for other in failing)]
    return [f"{type(failing[n]).__name__} ({'the model' if n == '' else repr(n)})" for n in innermost]


def explain_second_order(
    model: nn.Module, loss_fn: LossFn, err: BaseException, batch: Any, certain: bool = False
) -> None:
    """Raise a :class:`SecondOrderError` naming the modules of ``model`` that have no double backward, when
    that is what ``err`` is about (``certain``: a dead end was found in the graph); else return."""
    culprits = _modules_without_double_backward(model, loss_fn, batch)
    message = str(err).splitlines()[0] if str(err) else type(err).__name__
    if not (culprits or certain or any(m in message for m in _SECOND_ORDER_MESSAGES)):
        return  # some other failure (out of memory, a shape error): let it through unchanged
    where = ", ".join(culprits) or "code outside any module (in `loss_fn` or a module's own forward)"
    raise SecondOrderError(
        "Hessian-vector products need second derivatives, and this cannot be differentiated twice: "
        f"{where} ({message}). Leave its parameters out with `params=`, or give it a twice-"
        "differentiable implementation."
    ) from err
