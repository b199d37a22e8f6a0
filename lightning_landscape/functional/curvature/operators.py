"""Curvature as linear operators on flat vectors: ``v -> H v`` and the operators built from it.

Every operator here has ``numel`` (the length), ``dtype`` and ``device`` of the vectors it takes, and
``matvec(v)``; the estimators in :mod:`lightning_landscape.functional.curvature.estimators` take nothing else
but the operator's ``space`` (:class:`~.estimators.VectorSpace`: how inner products add up and probes are
drawn), where it has one: an operator without one works on whole vectors on this process.

- :class:`HessianOperator`: the Hessian of the *mean* probe loss ``L(w) = (1/B) sum_b loss_fn(model, b)``
  (averaged over batches, never summed, so a number does not depend on how the data is split), by
  double backward. Made by :func:`hessian_operator`, which observes the model (eval mode, everything
  restored after) with kernels that can be differentiated twice.
- :meth:`HessianOperator.block`: the Hessian restricted to a block of parameters, ``H_BB``
  (a product with a vector that is zero outside the block, read on the block).
- :class:`ScaledOperator`: ``D A D`` for a positive diagonal ``D``; with ``D = P^(-1/2)`` it has the
  eigenvalues of the preconditioned ``P^-1 H`` while staying symmetric (for Lanczos).
- :func:`hessian_operator_of` with a ``layout`` (the parameters are shards, FSDP2): the same Hessian from
  a central difference of gradients on this process's slices
  (:class:`~lightning_landscape.functional.curvature.sharded.GradientDifferenceOperator`), which every
  estimator and model-level function takes as it takes the double-backward one.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape.functional.curvature.estimators import (
    LanczosResult,
    VectorSpace,
    Which,
    hutchinson_samples,
    lanczos,
)
from lightning_landscape.functional.curvature.second_order import (
    DEAD_ENDS,
    SecondOrderError,
    explain_second_order,
    graph_nodes,
    tensors_in,
)
from lightning_landscape.functional.curvature.sharded import (
    GATHERED,
    GatheredHessianOperator,
    GradientDifferenceOperator,
    gathered_hessian_operator_of,
    gradient_difference_operator_of,
    sharded_product,
)
from lightning_landscape.functional.landscape.params import Direction, LossFn, observation, unflatten
from lightning_landscape.functional.landscape.shards import ShardLayout
from lightning_landscape.functional.objective import (
    NonFiniteError,
    Objective,
    resolve_params,
    scalar_loss,
    second_order,
)

__all__ = [
    "HessianBlock",
    "HessianOperator",
    "LinearOperator",
    "ScaledOperator",
    "SecondOrderError",
    "hessian_operator",
    "hessian_operator_of",
    "hessian_vector_product",
    "hessian_vector_product_of",
    "operator_hutchinson_samples",
    "operator_lanczos",
    "space_of",
]


# One C++ call each: a flat vector as views shaped like a list of tensors, and a list of tensors concatenated
# flat (what torch.nn.utils' parameters_to_vector does in a Python loop).
_unflatten = torch._C._nn.unflatten_dense_tensors
_flatten = torch._C._nn.flatten_dense_tensors


def _saved_storages(nodes: set[Any]) -> set[int]:
    """The storages of the tensors that the autograd ``nodes`` saved for their backward; ``{-1}`` where a
    node's saved tensors cannot be listed (then nothing may be released, see ``_release``).

    Read from the nodes once the graph is built (generated nodes expose them as ``_saved_*``, custom
    Functions as ``saved_tensors``) rather than through ``saved_tensors_hooks``, whose unpack hook would
    stay on the graph and run Python for every saved tensor of every product.
    """
    saved: set[int] = set()
    for node in nodes:
        cls = type(node)
        try:
            if isinstance(node, torch.autograd.function.BackwardCFunction):
                values: Any = node.saved_tensors
            elif getattr(torch._C._functions, cls.__name__, None) is cls and cls.__name__ != "CopySlices":
                values = [getattr(node, a) for a in dir(node) if a.startswith("_saved_")]
            else:
                return {-1}  # a node whose saved tensors are not exposed
            saved.update(t.untyped_storage().data_ptr() for t in tensors_in(values))
        except (RuntimeError, NotImplementedError):  # freed, or no plain storage (sparse, some subclasses)
            return {-1}
    return saved


def _release(grads: Sequence[Tensor | None], saved: set[int]) -> None:
    """Give back the memory of gradients kept only for their graph.

    A Hessian-vector product differentiates ``g . v`` through the graph that made ``g``; the values of
    ``g`` are never read, unless a node of that graph saved them (then they are kept). Storage resized
    to zero, as FSDP does with its unsharded parameters; the tensors keep their shape for autograd.
    """
    if -1 in saved:
        return
    for g in grads:
        if g is None or g.layout != torch.strided or type(g) is not Tensor:
            continue
        if g.untyped_storage().data_ptr() not in saved:
            g.untyped_storage().resize_(0)


class LinearOperator(Protocol):
    """What an estimator needs: the length, dtype and device of its vectors, and ``v -> A v``.

    An operator may also have a ``space`` (:class:`~.estimators.VectorSpace`) saying how its vectors'
    inner products add up and how probes are drawn (see :func:`space_of`).
    """

    numel: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, vector: Tensor) -> Tensor: ...


def space_of(operator: LinearOperator) -> VectorSpace:
    """``operator.space``, or the whole vectors of length ``operator.numel`` on this process."""
    space = getattr(operator, "space", None)
    return space if isinstance(space, VectorSpace) else VectorSpace(operator.numel)


class HessianOperator:
    """``v -> H v`` for the Hessian of the mean probe loss, on flat vectors; also holds ``L(w)``.

    Made from an :class:`~lightning_landscape.functional.objective.Objective` by :func:`hessian_operator_of`
    (or :func:`hessian_operator`), valid only inside its ``with`` block. With ``reuse_graph`` the
    first-order gradient graph of every probe batch is built once and kept, so each product costs one
    extra backward pass per batch; without it each product rebuilds the graph (less memory, about
    twice the time).

    Attributes:
        loss: ``L(w)``, the mean loss over the batches (a Python float).
        numel, dtype, device: the flat vectors' length, dtype (float64 for float64 parameters, else
            float32) and device.
    """

    def __init__(self, objective: Objective, reuse_graph: bool = True) -> None:
        self.objective = objective
        self.model, self.loss_fn = objective.model, objective.loss_fn
        self.batches, self.params = list(objective.batches), list(objective.params)
        self.reuse_graph = reuse_graph
        self.numel = objective.numel
        self.dtype = objective.dtype
        self.device = self.params[0].device
        self.space = VectorSpace(self.numel)
        # Each batch's gradient graph (create_graph) is kept for the products when ``reuse_graph``; the
        # gradients' own values are not needed for that (only their graph), so their memory is given back
        # (see ``_release``): what stays is the graph, about the size of a forward pass's activations.
        self._graphs: list[tuple[Tensor | None, ...]] = []
        # What a product needs, resolved once: each parameter's size, shape and dtype.
        self._sizes = [p.numel() for p in self.params]
        self._all = range(len(self.params))
        self._cast = any(p.dtype != self.dtype for p in self.params)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for b, batch in enumerate(self.batches):
            loss, grads = self._gradient(batch)
            if b == 0 or reuse_graph:
                live = [g for g in grads if g is not None]
                nodes = graph_nodes(live, graph_nodes([loss]))  # the gradient graph, not the forward graph
                if b == 0 and any(type(n).__name__ in DEAD_ENDS for n in nodes):
                    self._explain(RuntimeError("a node without a double backward"), batch, certain=True)
            if reuse_graph:
                _release(grads, _saved_storages(nodes))
                self._graphs.append(grads)
            total = total + loss.detach().double()
        self.loss = float(total) / len(self.batches)  # the one host sync of the set-up
        if not math.isfinite(self.loss):
            raise NonFiniteError(f"the loss at w is {self.loss}")

    def _gradient(self, batch: Any) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        """The batch's loss and its gradient with the gradient's graph."""
        loss = scalar_loss(self.loss_fn, self.model, batch)
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        # A parameter the loss does not use (None), or whose gradient does not depend on the weights, has
        # zero Hessian rows.
        return loss, tuple(g if g is not None and g.requires_grad else None for g in grads)

    def _product(self, index: Sequence[int], vector: Tensor) -> Tensor:
        """``(H v)`` on the parameters ``index`` for ``v`` zero outside them (``vector`` holds their part).

        Per batch one backward pass through its gradient graph; the first batch's result is
        concatenated into the flat output, later ones added to views of it (no other copy).
        """
        full = index is self._all
        chosen = self.params if full else [self.params[i] for i in index]
        sizes = self._sizes if full else [self._sizes[i] for i in index]
        # Views of `vector` shaped like the parameters (no copy), in one call.
        pieces = _unflatten(vector, chosen)
        if self._cast:
            pieces = [c.to(p.dtype) for c, p in zip(pieces, chosen)]
        out: Tensor | None = None
        for b, batch in enumerate(self.batches):
            # Without reuse_graph, the batch's graph is rebuilt here and freed after its product.
            grads = self._graphs[b] if self.reuse_graph else self._gradient(batch)[1]
            hv = self._backward(grads, index, pieces, chosen, batch)
            if hv is None:
                continue
            if out is None:
                dense = [vector.new_zeros(size) if h is None else h for h, size in zip(hv, sizes)]
                # (one tensor: copied, since autograd may hand back a grad output, a view of `vector`)
                out = (_flatten(dense) if len(dense) > 1 else dense[0].reshape(-1).clone()).to(self.dtype)
            else:
                used = [(o, h) for o, h in zip(out.split(sizes), hv) if h is not None]
                torch._foreach_add_([o.view(h.shape) for o, h in used], [h for _, h in used])
        if out is None:
            return torch.zeros(vector.numel(), dtype=self.dtype, device=self.device)
        return out.div_(len(self.batches)) if len(self.batches) > 1 else out

    def _backward(
        self,
        grads: Sequence[Tensor | None],
        index: Sequence[int],
        pieces: Sequence[Tensor],
        chosen: list[Tensor],
        batch: Any,
    ) -> tuple[Tensor | None, ...] | None:
        """``d/dw_B (g_B . v_B)`` (one backward pass through the gradient graph); None if ``g`` does not
        depend on ``w_B`` (a zero Hessian)."""
        pairs = [(g, v) for g, v in ((grads[i], v) for i, v in zip(index, pieces)) if g is not None]
        if not pairs:
            return None
        try:
            return torch.autograd.grad(
                [g for g, _ in pairs],
                chosen,
                grad_outputs=[v for _, v in pairs],
                retain_graph=self.reuse_graph,
                allow_unused=True,
            )
        except RuntimeError as err:
            self._explain(err, batch)
            raise

    def _explain(self, err: RuntimeError, batch: Any, certain: bool = False) -> None:
        """Raise a :class:`SecondOrderError` naming the modules that have no double backward, when that
        is what ``err`` is about (``certain``: a dead end was found in the graph)."""
        explain_second_order(self.model, self.loss_fn, err, batch, certain)

    def matvec(self, vector: Tensor) -> Tensor:
        """``H v`` for a flat vector ``v`` (length :attr:`numel`); the result is flat, in :attr:`dtype`."""
        return self._product(self._all, vector)

    def block(self, index: Sequence[int]) -> HessianBlock:
        """The Hessian restricted to the parameters ``self.params[i]`` for ``i`` in ``index``."""
        return HessianBlock(self, index)


class HessianBlock:
    """``H_BB``: the rows and columns of the Hessian that belong to a block of parameters.

    ``matvec(v_B)`` is ``(H [v_B; 0])_B``, computed by differentiating only with respect to the block
    (autograd skips what the block does not need). Made by :meth:`HessianOperator.block`.
    """

    def __init__(self, hessian: HessianOperator, index: Sequence[int]) -> None:
        self.index = list(index)
        if not self.index:
            raise ValueError("a Hessian block needs at least one parameter")
        self.hessian = hessian
        self.numel = sum(hessian.params[i].numel() for i in self.index)
        self.dtype, self.device = hessian.dtype, hessian.device
        self.space = VectorSpace(self.numel)

    def matvec(self, vector: Tensor) -> Tensor:
        return self.hessian._product(self.index, vector)


class ScaledOperator:
    """``D A D`` for the symmetric operator ``A`` and a positive diagonal ``D`` (a flat vector).

    With ``D = P^(-1/2)`` its eigenvalues are those of ``P^-1 A`` (a similarity transform), and it is
    symmetric, so Lanczos applies.

    Example::

        >>> class Diagonal:
        ...     numel, dtype, device = 2, torch.float64, torch.device("cpu")
        ...     def matvec(self, v):
        ...         return torch.tensor([4.0, 9.0], dtype=torch.float64) * v
        >>> ScaledOperator(Diagonal(), torch.tensor([0.5, 1 / 3], dtype=torch.float64)).matvec(
        ...     torch.ones(2, dtype=torch.float64))
        tensor([1., 1.], dtype=torch.float64)
    """

    def __init__(self, operator: LinearOperator, diagonal: Tensor) -> None:
        if diagonal.shape != (operator.numel,):
            raise ValueError(
                f"`diagonal` must be a flat vector of length {operator.numel}, "
                f"got shape {tuple(diagonal.shape)}"
            )
        if not bool(torch.isfinite(diagonal).all()) or bool((diagonal <= 0).any()):
            raise ValueError("`diagonal` must hold positive finite values")
        self.operator = operator
        self.numel, self.dtype, self.device = operator.numel, operator.dtype, operator.device
        self.space = space_of(operator)  # a diagonal scaling keeps the vectors where they are
        self.diagonal = diagonal.to(device=self.device, dtype=self.dtype)

    def matvec(self, vector: Tensor) -> Tensor:
        return self.operator.matvec(vector * self.diagonal).mul_(self.diagonal)


def operator_lanczos(
    operator: LinearOperator,
    max_iter: int,
    tol: float,
    seed: int,
    *,
    k: int = 1,
    which: Which = "largest",
    return_vectors: bool = False,
    max_basis: int | None = None,
    start: Tensor | None = None,
) -> LanczosResult:
    """:func:`~lightning_landscape.functional.curvature.estimators.lanczos` on ``operator``'s ``matvec``, in
    its space (:func:`space_of`), dtype and device (the other options as there).

    Example::

        >>> class Diagonal:
        ...     numel, dtype, device = 3, torch.float64, torch.device("cpu")
        ...     def matvec(self, v):
        ...         return torch.tensor([1.0, 5.0, 2.0], dtype=torch.float64) * v
        >>> operator_lanczos(Diagonal(), max_iter=10, tol=1e-10, seed=0).values.round(8).tolist()
        [5.0]
    """
    space = space_of(operator)
    return lanczos(
        operator.matvec,
        space.numel,
        k=k,
        which=which,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        dtype=operator.dtype,
        device=operator.device,
        return_vectors=return_vectors,
        max_basis=max_basis,
        space=space,
        start=start,
    )


def operator_hutchinson_samples(
    operator: LinearOperator,
    samples: int,
    seed: int = 0,
    indices: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """:func:`~lightning_landscape.functional.curvature.estimators.hutchinson_samples` of ``operator``, in
    its space (:func:`space_of`), dtype and device."""
    space = space_of(operator)
    return hutchinson_samples(
        operator.matvec, space.numel, samples, seed, operator.dtype, operator.device, indices, space=space
    )


@contextlib.contextmanager
def hessian_operator(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    params: Sequence[Tensor] | None = None,
    reuse_graph: bool = True,
) -> Iterator[HessianOperator]:
    """Observe ``model`` (eval mode, state restored after) and yield its :class:`HessianOperator`.

    Inside the block, kernels without a double backward are avoided (see ``second_order`` in
    ``_common``): math attention, cuDNN off, no fused transformer fast path.

    Example::

        >>> model = nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0]]))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> with hessian_operator(model, mse, [batch]) as H:  # H = 2 x x^T
        ...     H.matvec(torch.tensor([1.0, 0.0]))
        tensor([2., 4.])
    """
    objective = Objective.build(model, loss_fn, batches, params, require_grad=True)
    objective.unsharded(
        "hessian_operator",
        "its vectors are the whole model's; hessian_vector_product works on them, and hessian_operator_of "
        "with the objective's layout gives an operator on each process's slices",
    )
    with hessian_operator_of(objective, reuse_graph) as op:
        assert isinstance(op, HessianOperator)  # no layout: the double-backward operator
        yield op


@contextlib.contextmanager
def hessian_operator_of(
    objective: Objective, reuse_graph: bool = True, *, layout: ShardLayout | None = None
) -> Iterator[HessianOperator | GatheredHessianOperator | GradientDifferenceOperator]:
    """:func:`hessian_operator` of ``objective`` (the core; each parameter must require grad).

    With ``layout`` (a sharded model: ``objective.params`` are this process's slices of ``layout.params``),
    an operator on those slices; every process must take part in each product. By default
    (``objective.sharded_hessian == "exact"``) the exact product, by double backward through FSDP2's
    gathered parameters
    (:class:`~lightning_landscape.functional.curvature.sharded.GatheredHessianOperator`); with
    ``"difference"``, or on a model without FSDP2 modules, a central difference of gradients that keeps
    to the slices (:class:`~lightning_landscape.functional.curvature.sharded.GradientDifferenceOperator`,
    ``reuse_graph`` has no effect there).
    """
    layout = objective.layout if layout is None else layout  # a sharded objective brings its own
    if layout is not None:
        if sharded_product(objective, layout) == GATHERED:
            resolve_params(objective.model, layout.params, require_grad=True)
            with gathered_hessian_operator_of(objective, layout, reuse_graph) as exact:
                yield exact
            return
        with gradient_difference_operator_of(objective, layout) as gd:
            yield gd
        return
    objective.differentiable()
    with observation(objective.model), torch.enable_grad(), second_order():
        op: HessianOperator | GatheredHessianOperator | GradientDifferenceOperator = HessianOperator(
            objective, reuse_graph=reuse_graph
        )
        yield op


def hessian_vector_product(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    vector: Sequence[Tensor],
    params: Sequence[Tensor] | None = None,
) -> Direction:
    """``H v``: the Hessian of the mean probe loss times ``vector`` (a list aligned with ``params``).

    Example::

        >>> model = nn.Linear(2, 1, bias=False)
        >>> batch = (torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0]]))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> hessian_vector_product(model, mse, [batch], [torch.tensor([[0.0, 1.0]])])
        [tensor([[4., 8.]])]
    """
    objective = Objective.build(model, loss_fn, batches, params, require_grad=True)
    product = hessian_vector_product_of(objective, vector)
    return product if objective.layout is None else objective.layout.wrap(product)


def hessian_vector_product_of(objective: Objective, vector: Sequence[Tensor]) -> Direction:
    """:func:`hessian_vector_product` of ``objective`` (the core). A sharded objective (its ``layout``)
    takes ``vector`` full-shaped or as DTensors and gives this process's slices of ``H v``."""
    params = objective.params
    if objective.layout is not None:
        vector = objective.layout.slices(vector, "vector")
    if len(vector) != len(params) or any(v.shape != p.shape for v, p in zip(vector, params)):
        raise ValueError("`vector` must hold one tensor per parameter, shaped like it")
    with hessian_operator_of(objective) as op:
        flat = torch.cat([v.detach().reshape(-1).to(device=op.device, dtype=op.dtype) for v in vector])
        out = op.matvec(flat)
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteError("a Hessian-vector product is not finite")
        return [t.clone() for t in unflatten(out, params)]
