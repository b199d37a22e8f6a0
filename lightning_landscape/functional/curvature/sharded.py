"""Hessian-vector products of a model whose parameters are shards (FSDP2), on each process's local slices.

FSDP2 gathers each parameter for the forward pass into a tensor that is not the sharded parameter, and
hands the gradient back to the shard in a backward hook, so ``torch.autograd.grad(loss, params,
create_graph=True)`` (the double backward of :class:`~.operators.HessianOperator`) does not see the
sharded parameters at all. Two routes, the first the default (``Objective.sharded_hessian``):

- :class:`GatheredHessianOperator` (``"exact"``): the gathered tensors are leaves of the graph, and FSDP2
  gathers into the same tensors again before each backward pass, so the double backward works with
  respect to them while every FSDP2 module is unsharded (see the class). Exact; each process holds the
  full parameters while the operator lives.
- :class:`GradientDifferenceOperator` (``"difference"``, and any sharded model without FSDP2 modules):
  ``loss.backward()`` gives each process its slice of the gradient, so the product is a central difference
  of gradients::

    H v ~ (g(w + h v) - g(w - h v)) / (2 h),     h = eps^(1/3) * max(|w|, 1) / |v|

with ``eps`` the machine epsilon of the work dtype (float32: ``h |v| ~ 4.9e-3 |w|``). The step balances the
truncation error, ``O(h^2 |v|^3 |D^3 L|)``, against the rounding error of the gradients,
``O(eps |g| / h)``; both are then of order ``eps^(2/3)`` relative (about ``2e-5`` for float32 at unit
scales, and in practice within ``1e-3`` of the exact product on smooth models: see the tests). On ReLU
models it is biased where the step crosses a kink (a few % on a transformer: docs/scaling.md). Each
product costs two forward-backward passes per probe batch; the weights are moved in place and restored
bit for bit (:class:`~.params.WeightPerturbation`), and every parameter's ``.grad`` is given back as it
was.

Both are operators like the double-backward one (``numel``, ``dtype``, ``device``, ``matvec``, ``block``),
made by :func:`~.operators.hessian_operator_of` when it is given the
parameters' :class:`~lightning_landscape.functional.landscape.shards.ShardLayout`, so every model-level
function (eigenvalues, trace, Hessian directions, per-block curvature, the edge of stability) runs on it
unchanged. Their vectors are *this process's slices* (length ``ShardLayout.local_numel``, the local shards
flattened in parameter order); their :class:`ShardedSpace` sums inner products over the processes (one
all-reduce each) and draws every random probe (the Rademacher vectors of Hutchinson and of the Lanczos
start) as each *full* parameter's draw from the one seeded CPU generator, sliced: the probes one
unsharded process draws, so the numbers are the unsharded ones. A Lanczos basis then holds ``1/W`` of the
full length on each of ``W`` processes; its size (``max_basis``) is chosen from the full length, as
unsharded, so the iterations are the same. A product restricted to a block of parameters (per-block
curvature) is the product with a vector zero outside the block, read on the block.

SAM's gradient comes from the same backward passes (:func:`sharded_loss_gradient`), and average
sharpness draws its Gaussian perturbations per full parameter and slices them
(:func:`~lightning_landscape.functional.landscape.shards.sharded_random_direction`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_landscape.functional.curvature.estimators import VectorSpace
from lightning_landscape.functional.curvature.second_order import SecondOrderError, dead_end
from lightning_landscape.functional.landscape.params import Direction, LossFn, WeightPerturbation, observation
from lightning_landscape.functional.landscape.shards import ShardLayout, fsdp_modules
from lightning_landscape.functional.objective import (
    NonFiniteError,
    Objective,
    rademacher,
    scalar_loss,
    second_order,
    work_dtype,
)

__all__ = [
    "GatheredHessianOperator",
    "GradientDifferenceOperator",
    "ShardedHessianBlock",
    "ShardedSpace",
    "check_layout",
    "difference_step",
    "gathered_hessian_operator_of",
    "gradient_difference_operator_of",
    "local_gradient",
    "local_slices",
    "restrict",
    "sharded_loss_gradient",
    "sharded_product",
]


def difference_step(weights_norm: float, vector_norm: float, dtype: torch.dtype) -> float:
    """The central difference's step ``h``: ``eps^(1/3) * max(|w|, 1) / |v|`` (see the module docstring)."""
    eps = torch.finfo(dtype).eps
    return eps ** (1.0 / 3.0) * max(weights_norm, 1.0) / max(vector_norm, 1e-300)


def check_layout(objective: Objective, layout: ShardLayout) -> None:
    """A ValueError naming ``layout`` unless ``objective.params`` are shaped as its local slices, and one
    naming ``shard`` if the objective shares points out (every forward of a sharded model is collective)."""
    if len(objective.params) != len(layout.local) or any(
        p.shape != t.shape for p, t in zip(objective.params, layout.local)
    ):
        raise ValueError("`layout`: the objective's parameters must be its local slices (`layout.local`)")
    if objective.shard is not None:
        raise ValueError(
            "`shard`: the parameters are sharded (`layout`), so every process takes part in every forward "
            "pass; evaluation points cannot also be shared out among the processes"
        )


def local_slices(layout: ShardLayout, tensors: Sequence[Tensor]) -> list[Tensor]:
    """This process's slice of each of ``tensors`` (full-shaped like ``layout``'s parameters): a
    ``DTensor``'s local tensor, or the rows :meth:`ShardLayout.local_rows` of a plain one."""
    return [
        t.to_local() if hasattr(t, "to_local") else layout.local_rows(i, t) for i, t in enumerate(tensors)
    ]


def local_gradient(
    model: nn.Module, loss_fn: LossFn, batches: Sequence[Any], layout: ShardLayout, dtype: torch.dtype
) -> tuple[float, list[Tensor]]:
    """The mean probe loss and this process's slices of its gradient with respect to ``layout.params``
    (in ``dtype``), by backward passes (call with grad enabled). Every parameter's ``.grad`` is given back
    as it was (backward fills those outside the layout too)."""
    every: list[Tensor] = [p for p in model.parameters() if p.requires_grad]
    for p in layout.params:
        if all(p is not q for q in every):
            every.append(p)
    saved = [p.grad for p in every]
    total = 0.0
    try:
        for p in every:
            p.grad = None
        for batch in batches:
            loss = loss_fn(model, batch)
            (loss / len(batches)).backward()
            total += float(loss.detach()) / len(batches)
        grads = []
        for i, (p, view) in enumerate(zip(layout.params, layout.local)):
            g = p.grad
            if g is None:
                grads.append(torch.zeros_like(view, dtype=dtype))
                continue
            piece = g.to_local() if hasattr(g, "to_local") else layout.local_rows(i, g)
            grads.append(piece.detach().to(dtype).clone())
    finally:
        for p, g in zip(every, saved):
            p.grad = g
    return total, grads


def restrict(layout: ShardLayout, index: Sequence[int]) -> ShardLayout:
    """The layout of the parameters ``index`` (in that order)."""
    return ShardLayout(
        [layout.params[i] for i in index],
        [layout.local[i] for i in index],
        [layout.shapes[i] for i in index],
        [layout.row_offsets[i] for i in index],
        [layout.replicated[i] for i in index],
        layout.all_reduce,
    )


def sharded_loss_gradient(objective: Objective, layout: ShardLayout) -> tuple[float, Direction]:
    """``(L(w), grad L(w))`` as :func:`~.sharpness.loss_gradient_of`, for sharded parameters: the gradient
    as this process's slices, by backward passes (the model observed in eval mode, ``.grad`` untouched)."""
    check_layout(objective, layout)
    with observation(objective.model), torch.enable_grad():
        dtype = work_dtype(layout.local[0])
        return local_gradient(objective.model, objective.loss_fn, list(objective.batches), layout, dtype)


def _all_max(t: Tensor) -> Tensor:
    """The maximum over the processes (in place; identity in one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


class ShardedSpace(VectorSpace):
    """Vectors over (some of) a sharded model's parameters, each process holding its slices.

    A vector is this process's slices of the chosen parameters (``index``, default all), flattened and
    concatenated in parameter order. Inner products are the local partial sums added over the processes
    (a replicated parameter counted once); a Rademacher probe is drawn as each full parameter's
    ``rademacher(numel, generator)`` in turn, sliced, so that its slices on all processes are the
    length-``numel`` vector one process draws (the CPU generator draws element after element).
    """

    def __init__(self, layout: ShardLayout, index: Sequence[int] | None = None) -> None:
        self.layout = layout
        self.index = list(range(len(layout.local))) if index is None else list(index)
        full_ranges = layout.flat_ranges()
        starts, position = [], 0
        for shape in layout.shapes:
            starts.append(position)
            position += shape.numel()
        # Per chosen parameter: its range in the local vector, where its slice starts in the full parameter
        # and in the full vector of the space, its full size, and whether this process counts it in sums.
        self._pieces: list[tuple[int, int, int, int, int, bool]] = []
        local = full = 0
        for i in self.index:
            n_local, n_full = layout.local[i].numel(), layout.shapes[i].numel()
            offset = full_ranges[i][0] - starts[i]
            self._pieces.append((local, local + n_local, offset, full + offset, n_full, layout._owned(i)))
            local += n_local
            full += n_full
        super().__init__(full)
        self.local_numel = local
        owned = [(a, b) for a, b, *_, mine in self._pieces if mine and b > a]
        self._owned_ranges: list[tuple[int, int]] = []
        for a, b in owned:  # adjacent ranges merged: one partial sum each
            if self._owned_ranges and self._owned_ranges[-1][1] == a:
                self._owned_ranges[-1] = (self._owned_ranges[-1][0], b)
            else:
                self._owned_ranges.append((a, b))
        self._all_owned = self._owned_ranges == [(0, local)] or local == 0

    def reduce(self, partial: Tensor) -> Tensor:
        return self.layout.all_reduce(partial)

    def partial_dot(self, x: Tensor, y: Tensor) -> Tensor:
        if self._all_owned:
            return super().partial_dot(x, y)
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for a, b in self._owned_ranges:
            total = total + super().partial_dot(x[a:b], y[a:b])
        return total

    def partial_project(self, basis: Tensor, w: Tensor) -> Tensor:
        if self._all_owned:
            return super().partial_project(basis, w)
        total = torch.zeros(basis.shape[0], dtype=torch.float64, device=w.device)
        for a, b in self._owned_ranges:
            total = total + super().partial_project(basis[:, a:b], w[a:b])
        return total

    def norm(self, v: Tensor) -> Tensor:
        return self.dot(v, v).sqrt().to(v.dtype)

    def rademacher(self, generator: torch.Generator) -> Tensor:
        out = torch.empty(self.local_numel, dtype=torch.int8)
        for a, b, offset, _, n_full, _ in self._pieces:
            out[a:b] = rademacher(n_full, generator)[offset : offset + (b - a)]
        return out

    def fix_sign(self, v: Tensor) -> Tensor:
        """The sign rule of one process over the full vector: its first entry of largest magnitude (over
        all processes, in the full vector's order) is made positive (three all-reduces)."""
        magnitude = v.detach().abs()
        local_max = magnitude.max() if v.numel() else torch.zeros((), dtype=v.dtype, device=v.device)
        largest = _all_max(local_max.double().clone())
        hits = torch.nonzero(magnitude == largest.to(v.dtype)).reshape(-1) if v.numel() else None
        index, sign = float("inf"), -2.0
        if hits is not None and hits.numel():
            j = int(hits[0])
            a, _, _, global_offset, _, _ = next(p for p in self._pieces if p[0] <= j < p[1])
            index, sign = float(global_offset + j - a), (1.0 if float(v[j]) >= 0 else -1.0)
        first = -float(_all_max(torch.tensor(-index, dtype=torch.float64, device=v.device)))
        mine = sign if index == first else -2.0
        return v if float(_all_max(torch.tensor(mine, dtype=torch.float64, device=v.device))) >= 0 else -v


class GradientDifferenceOperator:
    """``v -> H v`` on this process's slices by a central difference of gradients (module docstring).

    ``objective.params`` are the local slices of ``layout.params`` (``layout.local``, views that move the
    parameters), whose ``.grad`` the backward passes fill. Every process must call :meth:`matvec` (and
    each block's) together: the forward passes and the norms are collective. Made inside
    :func:`gradient_difference_operator_of` (eval mode, state restored after).

    Attributes:
        numel, dtype, device: the local vectors' length (``layout.local_numel``), dtype and device.
        space: the :class:`ShardedSpace` of those vectors (full dimension ``layout.numel``).
        loss: the mean probe loss at ``w``; gradient: this process's slices of its gradient there.
        step_scale: ``eps^(1/3) * max(|w|, 1)``; each product's step is this over ``|v|``.
    """

    def __init__(self, objective: Objective, layout: ShardLayout) -> None:
        check_layout(objective, layout)
        self.model, self.loss_fn, self.batches = objective.model, objective.loss_fn, list(objective.batches)
        self.layout = layout
        self.local = list(layout.local)
        self.space = ShardedSpace(layout)
        self.numel = self.space.local_numel
        self.dtype = work_dtype(self.local[0])
        self.device = self.local[0].device
        self.step_scale = difference_step(layout.norm(self.local), 1.0, self.dtype)
        loss, grad = self._gradient()
        self.loss = loss
        self.gradient = grad
        if not math.isfinite(loss):
            raise NonFiniteError(f"the loss at w is {loss}")

    def _gradient(self) -> tuple[float, list[Tensor]]:
        return local_gradient(self.model, self.loss_fn, self.batches, self.layout, self.dtype)

    def _product(self, index: Sequence[int], vector: Tensor, space: ShardedSpace) -> Tensor:
        """``(H v)`` on the parameters ``index`` for ``v`` zero outside them (``vector``: their slices)."""
        vector = vector.to(device=self.device, dtype=self.dtype)
        v_norm = float(space.dot(vector, vector).sqrt())  # the same on every process
        if v_norm == 0.0:
            return torch.zeros_like(vector)
        h = self.step_scale / v_norm
        chosen = [self.local[i] for i in index]
        pieces = [t.view(p.shape) for t, p in zip(vector.split([p.numel() for p in chosen]), chosen)]
        with WeightPerturbation(chosen, [pieces]) as move:
            move.move_to(h)
            _, plus = self._gradient()
            move.move_to(-h)
            _, minus = self._gradient()
        # A product that is not finite shows in the estimators' summed inner products, on every process
        # alike (a check here, on one process's slices, could stop one process and not the others).
        return torch.cat(
            [((plus[i].double() - minus[i].double()) / (2.0 * h)).reshape(-1) for i in index]
        ).to(self.dtype)

    def matvec(self, vector: Tensor) -> Tensor:
        """``H v`` for this process's slices ``vector`` (length :attr:`numel`); the result's slices."""
        return self._product(range(len(self.local)), vector, self.space)

    def block(self, index: Sequence[int]) -> ShardedHessianBlock:
        """The Hessian restricted to the parameters ``index``: ``H_BB`` on their slices."""
        return ShardedHessianBlock(self, index)


class ShardedHessianBlock:
    """``H_BB`` on this process's slices of a block of parameters: the product with a vector that is zero
    outside the block, read on the block (the gathered operator differentiates with respect to the block's
    parameters only; the gradient difference moves only the block's slices). Made by the operators'
    ``block``."""

    def __init__(
        self, operator: GatheredHessianOperator | GradientDifferenceOperator, index: Sequence[int]
    ) -> None:
        self.index = list(index)
        if not self.index:
            raise ValueError("a Hessian block needs at least one parameter")
        self.operator = operator
        self.space = ShardedSpace(operator.layout, self.index)
        self.numel = self.space.local_numel
        self.dtype, self.device = operator.dtype, operator.device

    def matvec(self, vector: Tensor) -> Tensor:
        return self.operator._product(self.index, vector, self.space)


@contextlib.contextmanager
def gradient_difference_operator_of(
    objective: Objective, layout: ShardLayout
) -> Iterator[GradientDifferenceOperator]:
    """Observe the model (eval mode, state restored after); yield its :class:`GradientDifferenceOperator`."""
    with observation(objective.model), torch.enable_grad():
        yield GradientDifferenceOperator(objective, layout)


def _unsharded_names(model: nn.Module, layout: ShardLayout) -> list[str] | None:
    """Each of ``layout.params``'s name in ``model`` (its first, for a tied parameter), or None if one of
    them is not a parameter of ``model`` or a name is taken twice (then there is no gathered route)."""
    names: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), name)
    out = [names.get(id(p)) for p in layout.params]
    if any(n is None for n in out) or len(set(out)) != len(out):
        return None
    return [n for n in out if n is not None]


GATHERED = "gathered double backward"
DIFFERENCE = "gradient difference"


def sharded_product(objective: Objective, layout: ShardLayout) -> str:
    """How Hessian-vector products of a sharded objective are taken (recorded as ``meta["hvp"]``):
    :data:`GATHERED` (exact, :class:`GatheredHessianOperator`) when ``objective.sharded_hessian`` is
    ``"exact"``, the model has FSDP2 modules (``fully_shard``) and every parameter of ``layout`` is one of
    its named parameters; else :data:`DIFFERENCE` (:class:`GradientDifferenceOperator`)."""
    model = objective.model
    if objective.sharded_hessian == "exact" and fsdp_modules(model) and _unsharded_names(model, layout):
        return GATHERED
    return DIFFERENCE


class GatheredHessianOperator:
    """``v -> H v`` on this process's slices, *exactly*: by double backward through FSDP2's gathered
    parameters.

    FSDP2 all-gathers each module's parameters into plain tensors for its forward pass, registers them on
    the module in place of the shards, frees their storage after the pass and gathers into the *same*
    tensors again before the backward pass reaches them. Those tensors are leaves of the autograd graph,
    so the double backward of :class:`~.operators.HessianOperator` works with respect to them, provided
    their storage is filled when each backward pass runs. Here every FSDP2 module is unsharded
    (``FSDPModule.unshard``, public API) before the gradient graphs are built and again before each
    product (FSDP2's own backward hooks reshard after each pass); the product ``d/dw (g . v)`` takes the
    full vector ``v`` (each parameter's slices all-gathered in turn), each process's result for its own
    probe batches is averaged over the processes (one all-reduce, as FSDP2 averages gradients), and each
    process keeps its slices. Every module is resharded when the operator's block ends.

    Memory: while the operator lives, each process holds the full parameters (as FSDP2 holds them with
    ``reshard_after_forward=False``), the gradient graphs of its probe batches (``reuse_graph``, as
    unsharded) and a full-length vector per product; the estimators' vectors (the Lanczos basis) stay
    slices, 1/W of the full length. Where the gathered parameters do not fit,
    ``sharded_hessian="difference"`` (:class:`GradientDifferenceOperator`) keeps to the slices.

    Attributes:
        numel, dtype, device: the local vectors' length (``layout.local_numel``), dtype and device.
        space: the :class:`ShardedSpace` of those vectors (full dimension ``layout.numel``).
        loss: the mean probe loss at ``w`` of this process's probe batches.
    """

    def __init__(self, objective: Objective, layout: ShardLayout, reuse_graph: bool = True) -> None:
        check_layout(objective, layout)
        names = _unsharded_names(objective.model, layout)
        if names is None:
            raise ValueError("`layout`: its parameters are not all named parameters of the model")
        self.model, self.loss_fn, self.batches = objective.model, objective.loss_fn, list(objective.batches)
        self.layout, self.reuse_graph = layout, reuse_graph
        self.local = list(layout.local)
        self.space = ShardedSpace(layout)
        self.numel = self.space.local_numel
        self.dtype = work_dtype(self.local[0])
        self.device = self.local[0].device
        self._fsdp = fsdp_modules(self.model)
        self._names = names
        self._world = float(layout.all_reduce(torch.ones((), dtype=torch.float64, device=self.device)))
        self._all = list(range(len(self.local)))
        self._unshard()
        registered = dict(self.model.named_parameters(remove_duplicate=False))
        self.params = [registered[n] for n in names]  # the gathered tensors, leaves of the graphs
        if any(p.shape != s for p, s in zip(self.params, layout.shapes)):
            raise ValueError(
                "`layout`: the model's gathered parameters are not shaped as its full parameters"
            )
        self._graphs: list[tuple[Tensor | None, ...]] = []
        total = 0.0
        for b, batch in enumerate(self.batches):
            loss, grads = self._gradient(batch)
            if b == 0 and dead_end([loss], [g for g in grads if g is not None]):
                raise SecondOrderError(
                    "Hessian-vector products need second derivatives, and part of this sharded model cannot "
                    "be differentiated twice (an op under @once_differentiable, or without a double-backward "
                    "formula). Leave its parameters out with `params=`, or give it a twice-differentiable "
                    "implementation; hessian_eigenvalues on an unsharded copy names the modules."
                )
            if reuse_graph:
                self._graphs.append(grads)
            total += float(loss.detach()) / len(self.batches)
        self.loss = total
        if not math.isfinite(total):
            raise NonFiniteError(f"the loss at w is {total}")

    def _unshard(self) -> None:
        for m in self._fsdp:
            m.unshard()  # type: ignore[operator]

    def reshard(self) -> None:
        """Every FSDP2 module back to its shards (the gathered parameters' storage freed)."""
        for m in self._fsdp:
            m.reshard()  # type: ignore[operator]

    def _gradient(self, batch: Any) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        loss = scalar_loss(self.loss_fn, self.model, batch)
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        return loss, tuple(g if g is not None and g.requires_grad else None for g in grads)

    def _product(self, index: Sequence[int], vector: Tensor, space: ShardedSpace | None = None) -> Tensor:
        """``(H v)`` on the parameters ``index`` for ``v`` zero outside them (``vector``: their slices)."""
        vector = vector.to(device=self.device, dtype=self.dtype)
        chosen = [self.local[i] for i in index]
        pieces = [t.view(p.shape) for t, p in zip(vector.split([p.numel() for p in chosen]), chosen)]
        full = [  # each parameter's full vector, one all-gather each (every process, in the same order)
            self.layout.gather(i, piece).to(self.params[i].dtype) for i, piece in zip(index, pieces)
        ]
        targets = [self.params[i] for i in index]
        out = [torch.zeros(t.shape, dtype=torch.float64, device=self.device) for t in targets]
        for b, batch in enumerate(self.batches):
            self._unshard()  # FSDP2's hooks resharded after the last backward pass: gather again, in place
            grads = self._graphs[b] if self.reuse_graph else self._gradient(batch)[1]
            if not self.reuse_graph:
                self._unshard()
            pairs = [(g, v) for g, v in ((grads[i], v) for i, v in zip(index, full)) if g is not None]
            if not pairs:
                continue
            hv = torch.autograd.grad(
                [g for g, _ in pairs],
                targets,
                grad_outputs=[v for _, v in pairs],
                retain_graph=self.reuse_graph,
                allow_unused=True,
            )
            for o, h in zip(out, hv):
                if h is not None:
                    o.add_(h.detach().double())
        flat = torch.cat([o.reshape(-1) for o in out]) / (len(self.batches) * self._world)
        flat = self.layout.all_reduce(flat)  # the mean over the processes' probe batches
        sizes = [t.numel() for t in targets]
        return torch.cat(
            [
                self.layout.local_rows(i, h.view(t.shape)).reshape(-1)
                for i, h, t in zip(index, flat.split(sizes), targets)
            ]
        ).to(self.dtype)

    def matvec(self, vector: Tensor) -> Tensor:
        """``H v`` for this process's slices ``vector`` (length :attr:`numel`); the result's slices."""
        return self._product(self._all, vector)

    def block(self, index: Sequence[int]) -> ShardedHessianBlock:
        """The Hessian restricted to the parameters ``index``: ``H_BB`` on their slices."""
        return ShardedHessianBlock(self, index)


@contextlib.contextmanager
def gathered_hessian_operator_of(
    objective: Objective, layout: ShardLayout, reuse_graph: bool = True
) -> Iterator[GatheredHessianOperator]:
    """Observe the model (eval mode, state restored after) with twice-differentiable kernels; yield its
    :class:`GatheredHessianOperator`; every FSDP2 module resharded after (also on an error)."""
    fsdp = fsdp_modules(objective.model)
    with observation(objective.model), torch.enable_grad(), second_order():
        try:
            yield GatheredHessianOperator(objective, layout, reuse_graph)
        except BaseException:
            _reset_iteration(fsdp)  # a pass that stopped half-way leaves FSDP2 mid-iteration
            raise
        finally:
            for m in fsdp:
                m.reshard()  # type: ignore[operator]


def _reset_iteration(fsdp: Sequence[nn.Module]) -> None:
    """FSDP2's per-iteration state reset on each root module (``FSDPModule.reset_iter_state``, the recovery
    FSDP2 documents after an exception in a forward or backward pass), so that training's next step runs
    normally. Modules that are not roots refuse it; a torch without the method has nothing to reset."""
    for m in fsdp:
        reset = getattr(m, "reset_iter_state", None)
        if callable(reset):
            with contextlib.suppress(RuntimeError):
                reset()
