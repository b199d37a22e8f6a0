"""Curvature per block of parameters: the Hessian restricted to each block, ``H_BB``.

A *block* is a group of parameters: by default each top-level child module of the model (a parameter
held by the model itself is a block of its own), or groups the user names. For each block, ``lambda_max``
(Lanczos) and the trace (Hutchinson) of ``H_BB``, the diagonal block of the Hessian of the mean probe
loss, are estimated from products with vectors that are zero outside the block
(:meth:`HessianOperator.block`). Transformer blocks differ sharply in curvature where CNN blocks do not
(Zhang et al., 2024); the whole-model ``lambda_max`` hides which block is sharp.

On a sharded model (:func:`block_curvature_of` with a ``layout``) the products are the gradient-difference
ones on this process's slices of the block (:mod:`~lightning_landscape.functional.curvature.sharded`), with
the same probes as unsharded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor, nn

from lightning_landscape.functional.curvature.estimators import check_lanczos_args, summarize_samples
from lightning_landscape.functional.curvature.operators import (
    hessian_operator_of,
    operator_hutchinson_samples,
    operator_lanczos,
)
from lightning_landscape.functional.curvature.sharded import check_layout, restrict, sharded_product
from lightning_landscape.functional.landscape.params import LossFn
from lightning_landscape.functional.landscape.shards import ShardLayout
from lightning_landscape.functional.objective import NonFiniteError, Objective, check_int, nonfinite_warning

__all__ = ["BlockCurvature", "block_curvature", "block_curvature_of", "parameter_blocks"]

Blocks = Mapping[str, Sequence[str]] | Sequence[str]


@dataclass
class BlockCurvature:
    """Result of :func:`block_curvature`: one entry per block, in the order of :attr:`blocks`.

    Attributes:
        blocks: the block names.
        parameters: number of parameters in each block.
        lambda_max: the largest eigenvalue of each diagonal block ``H_BB`` (float64).
        residuals: ``|H_BB y - lambda y|`` of each.
        trace: Hutchinson's estimate of ``tr(H_BB)``; trace_stderr: its standard error.
        iterations: Lanczos products spent on each block.
        loss: the mean probe loss at ``w``.
    """

    blocks: list[str]
    parameters: np.ndarray
    lambda_max: np.ndarray
    residuals: np.ndarray
    trace: np.ndarray
    trace_stderr: np.ndarray
    iterations: np.ndarray
    loss: float
    meta: dict[str, Any] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        """``blocks/<block>/lambda_max``, ``blocks/<block>/trace``, ``blocks/<block>/trace_stderr``."""
        out: dict[str, float] = {}
        for i, name in enumerate(self.blocks):
            out[f"blocks/{name}/lambda_max"] = float(self.lambda_max[i])
            out[f"blocks/{name}/trace"] = float(self.trace[i])
            out[f"blocks/{name}/trace_stderr"] = float(self.trace_stderr[i])
        return out


def parameter_blocks(
    model: nn.Module, params: Sequence[Tensor], blocks: Blocks | None = None
) -> dict[str, list[int]]:
    """Block name -> indices into ``params`` of its parameters.

    ``blocks`` is ``None`` (each top-level child module that holds some of ``params``; a parameter held
    by ``model`` itself is a block named after it), a sequence of module names (each module's
    parameters), or a mapping block name -> parameter names. Parameters not in ``params`` are left out;
    a block left empty, or a parameter in two blocks, is a ValueError naming ``blocks`` (but in the default
    blocks a tied parameter belongs to the first module holding it, and a module holding nothing else is
    no block).

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> parameter_blocks(net, list(net.parameters()))
        {'0': [0, 1], '2': [2, 3]}
        >>> parameter_blocks(net, list(net.parameters()), {"weights": ["0.weight", "2.weight"]})
        {'weights': [0, 2]}
    """
    index = {id(p): i for i, p in enumerate(params)}
    named = dict(model.named_parameters())
    groups: dict[str, list[Tensor]] = {}
    if blocks is None:
        for name, p in model.named_parameters(recurse=False):
            groups[name] = [p]
        for name, child in model.named_children():
            groups[name] = list(child.parameters())
        groups = {n: g for n, g in groups.items() if any(id(p) in index for p in g)}
    elif isinstance(blocks, Mapping):
        for name, members in blocks.items():
            if isinstance(members, str) or not isinstance(members, Sequence):
                raise ValueError(f"`blocks`[{name!r}] must be a sequence of parameter names, got {members!r}")
            missing = [m for m in members if m not in named]
            if missing:
                raise ValueError(
                    f"`blocks`[{name!r}]: no parameters called {missing} in {type(model).__name__}"
                )
            groups[str(name)] = [named[m] for m in members]
    elif isinstance(blocks, Sequence) and not isinstance(blocks, str):
        modules = dict(model.named_modules())
        for name in blocks:
            if name not in modules:
                raise ValueError(f"`blocks`: no module called {name!r} in {type(model).__name__}")
            groups[name] = list(modules[name].parameters())
    else:
        raise ValueError(
            "`blocks` must be None, a sequence of module names or a mapping name -> parameter names, "
            f"got {blocks!r}"
        )
    out: dict[str, list[int]] = {}
    owner: dict[int, str] = {}
    for name, group in groups.items():
        chosen = sorted({index[id(p)] for p in group if id(p) in index})
        if blocks is None:  # a tied parameter belongs to the first module holding it (as named_parameters)
            chosen = [i for i in chosen if i not in owner]
            if not chosen:
                continue
        if not chosen:
            raise ValueError(f"`blocks`: block {name!r} holds none of the parameters curvature is taken of")
        for i in chosen:
            if i in owner:
                raise ValueError(f"`blocks`: a parameter is in both {owner[i]!r} and {name!r}")
            owner[i] = name
        out[name] = chosen
    if not out:
        raise ValueError("`blocks`: no block holds any of the parameters curvature is taken of")
    return out


def block_curvature(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    blocks: Blocks | None = None,
    max_iter: int = 20,
    tol: float = 1e-3,
    samples: int = 16,
    seed: int = 0,
    params: Sequence[Tensor] | None = None,
    reuse_graph: bool = True,
    max_basis: int | None = None,
) -> BlockCurvature:
    """``lambda_max`` and the trace of the Hessian restricted to each block of parameters.

    Args:
        model, loss_fn, batches: as in :func:`hessian_eigenvalues` (the model observed in eval mode and
            restored exactly; the loss the mean over the probe batches).
        blocks: ``None`` (top-level child modules), module names, or a mapping block name -> parameter
            names (see :func:`parameter_blocks`).
        max_iter, tol, max_basis: Lanczos options for each block's ``lambda_max`` (as in
            :func:`hessian_eigenvalues`).
        samples: Rademacher probes for each block's trace; seed: their seed (and Lanczos' start vector).
        params: the parameters curvature is taken of (default: trainable floating-point ones).

    Each block costs up to ``max_iter + samples`` Hessian-vector products restricted to it; the
    gradient graphs are built once for all blocks.

    Example::

        >>> import torch
        >>> model = nn.Sequential(nn.Linear(2, 1, bias=False), nn.Linear(1, 1, bias=False))
        >>> with torch.no_grad():
        ...     _ = model[0].weight.copy_(torch.tensor([[1.0, 0.0]]))
        ...     _ = model[1].weight.fill_(2.0)
        >>> batch = (torch.tensor([[3.0, 0.0]]), torch.zeros(1, 1))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()   # L = (b a.x)^2
        >>> res = block_curvature(model, mse, [batch], samples=2)   # H_00 = 2 b^2 x x^T, H_11 = 2 (a.x)^2
        >>> res.blocks, res.lambda_max.round(4).tolist(), res.trace.round(4).tolist()
        (['0', '1'], [72.0, 18.0], [72.0, 18.0])
    """
    check_lanczos_args(1, "largest", max_iter, tol)
    check_int("samples", samples, 2)
    objective = Objective.build(model, loss_fn, batches, params, require_grad=True)
    return block_curvature_of(objective, blocks, max_iter, tol, samples, seed, reuse_graph, max_basis)


def block_curvature_of(
    objective: Objective,
    blocks: Blocks | None = None,
    max_iter: int = 20,
    tol: float = 1e-3,
    samples: int = 16,
    seed: int = 0,
    reuse_graph: bool = True,
    max_basis: int | None = None,
    *,
    layout: ShardLayout | None = None,
) -> BlockCurvature:
    """:func:`block_curvature` of ``objective`` (the core). With ``layout`` (sharded parameters: the
    objective's are this process's slices of ``layout.params``, which name the blocks), every process
    must call it together."""
    check_lanczos_args(1, "largest", max_iter, tol)
    check_int("samples", samples, 2)
    layout = objective.layout if layout is None else layout  # a sharded objective brings its own
    if layout is not None:
        check_layout(objective, layout)
    params = objective.params
    full = params if layout is None else layout.params  # the model's own parameters: they name the blocks
    groups = parameter_blocks(objective.model, full, blocks)
    used = sorted(i for members in groups.values() for i in members)
    chosen = [params[i] for i in used]
    position = {i: k for k, i in enumerate(used)}  # index into `params` -> index into `chosen`
    names = list(groups)
    sizes = np.array([sum(full[i].numel() for i in groups[n]) for n in names], dtype=np.int64)
    meta: dict[str, Any] = {
        "block_sizes": {n: int(k) for n, k in zip(names, sizes)},
        "max_iter": max_iter,
        "tol": tol,
        "samples": samples,
        "seed": seed,
        **objective.probe_meta(),
    }
    if layout is not None:
        meta["hvp"] = sharded_product(objective, layout)
    start = time.perf_counter()
    nan = np.full(len(names), math.nan)
    rows: list[tuple[float, float, float, float, int]] = []
    sub = None if layout is None else restrict(layout, used)
    try:
        with hessian_operator_of(objective.replace(params=chosen), reuse_graph, layout=sub) as op:
            for name in names:
                block = op.block([position[i] for i in groups[name]])
                eig = operator_lanczos(block, max_iter, tol, seed, max_basis=max_basis)
                values = operator_hutchinson_samples(block, samples, seed)
                summary = summarize_samples(values)
                rows.append(
                    (
                        float(eig.values[0]),
                        float(eig.residuals[0]),
                        summary.trace,
                        summary.stderr,
                        eig.iterations,
                    )
                )
            loss = op.loss
    except NonFiniteError as err:
        nonfinite_warning("block_curvature", err)
        return BlockCurvature(
            names, sizes, nan, nan, nan, nan, np.zeros(len(names), np.int64), math.nan, meta=meta
        )
    columns = list(zip(*rows))
    meta["seconds"] = time.perf_counter() - start
    return BlockCurvature(
        blocks=names,
        parameters=sizes,
        lambda_max=np.array(columns[0]),
        residuals=np.array(columns[1]),
        trace=np.array(columns[2]),
        trace_stderr=np.array(columns[3]),
        iterations=np.array(columns[4], dtype=np.int64),
        loss=loss,
        meta=meta,
    )
