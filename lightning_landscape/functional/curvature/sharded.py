"""Curvature of a model whose parameters are shards (FSDP2), from gradients only.

FSDP2 gathers each parameter for the forward pass into a tensor that is not the sharded parameter, and
hands the gradient back to the shard in a backward hook, so ``torch.autograd.grad(loss, params,
create_graph=True)`` (the double backward of :class:`~.operators.HessianOperator`) does not see the
sharded parameters at all. What does work is ``loss.backward()``: each process gets its slice of the
gradient. So the Hessian-vector product here is a central difference of gradients::

    H v ~ (g(w + h v) - g(w - h v)) / (2 h),     h = eps^(1/3) * max(|w|, 1) / |v|

with ``eps`` the machine epsilon of the work dtype (float32: ``h |v| ~ 4.9e-3 |w|``). The step balances the
truncation error, ``O(h^2 |v|^3 |D^3 L|)``, against the rounding error of the gradients,
``O(eps |g| / h)``; both are then of order ``eps^(2/3)`` relative (about ``2e-5`` for float32 at unit
scales, and in practice within ``1e-3`` of the exact product: see the tests, which compare it with the
double-backward product on unsharded models). Each product costs two forward-backward passes per probe
batch; the weights are moved in place and restored bit for bit (:class:`~.params.WeightPerturbation`),
and the parameters' ``.grad`` are given back as they were.

SAM sharpness needs only the gradient (its norm summed over processes); average sharpness only the loss at
seeded Gaussian perturbations, drawn per full parameter and sliced as the random directions are (see
:mod:`~lightning_landscape.functional.landscape.shards`), so both give the unsharded numbers.

Lanczos runs on full-length vectors, the same on every process (the product's slices are summed into the
full vector by one all-reduce), so its basis is not sharded: memory per process is the basis's, as
unsharded. Its dot products are then local by construction.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape.functional.curvature.estimators import (
    Which,
    check_lanczos_args,
    hutchinson_samples,
    lanczos,
    summarize_samples,
)
from lightning_landscape.functional.curvature.hessian import HessianEigenvalues, HessianTrace, fix_sign
from lightning_landscape.functional.curvature.sharpness import AverageSharpness, SamSharpness
from lightning_landscape.functional.landscape.params import Direction, LossFn, WeightPerturbation, observation
from lightning_landscape.functional.landscape.shards import ShardLayout
from lightning_landscape.functional.objective import (
    NonFiniteError,
    check_int,
    check_positive,
    mean_loss,
    nonfinite_warning,
    probe_meta,
    work_dtype,
)

__all__ = [
    "GradientDifferenceOperator",
    "difference_step",
    "gradient_difference_operator",
    "local_gradient",
    "sharded_average_sharpness",
    "sharded_hessian_directions",
    "sharded_hessian_eigenvalues",
    "sharded_hessian_trace",
    "sharded_sam_sharpness",
]


def difference_step(weights_norm: float, vector_norm: float, dtype: torch.dtype) -> float:
    """The central difference's step ``h``: ``eps^(1/3) * max(|w|, 1) / |v|`` (see the module docstring)."""
    eps = torch.finfo(dtype).eps
    return eps ** (1.0 / 3.0) * max(weights_norm, 1.0) / max(vector_norm, 1e-300)


def local_gradient(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    params: Sequence[Tensor],
    layout: ShardLayout,
    dtype: torch.dtype,
) -> tuple[float, list[Tensor]]:
    """The mean probe loss and this process's slices of its gradient (in ``dtype``), by backward passes
    (call with grad enabled). The parameters' ``.grad`` are given back as they were."""
    saved = [p.grad for p in params]
    total = 0.0
    try:
        for p in params:
            p.grad = None
        for batch in batches:
            loss = loss_fn(model, batch)
            (loss / len(batches)).backward()
            total += float(loss.detach()) / len(batches)
        grads = []
        for p, view in zip(params, layout.local):
            g = p.grad
            if g is None:
                grads.append(torch.zeros_like(view, dtype=dtype))
                continue
            g = g.to_local() if hasattr(g, "to_local") else g
            grads.append(g.detach().to(dtype).clone())
    finally:
        for p, g in zip(params, saved):
            p.grad = g
    return total, grads


class GradientDifferenceOperator:
    """``v -> H v`` on full flat vectors by a central difference of gradients (see the module docstring).

    ``params`` are the model's parameters (``DTensor`` shards or plain tensors) whose ``.grad`` the
    backward passes fill; ``layout`` (default: :meth:`ShardLayout.of` ``params``) says which slice of each
    this process holds. Use inside :func:`gradient_difference_operator` (eval mode, state restored).

    Attributes:
        numel, dtype, device: the full vectors' length, dtype and device.
        loss: the mean probe loss at ``w``; gradient: this process's slices of its gradient there.
        step_scale: ``eps^(1/3) * max(|w|, 1)``; each product's step is this over ``|v|``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Sequence[Any],
        params: Sequence[Tensor],
        layout: ShardLayout | None = None,
    ) -> None:
        self.model, self.loss_fn, self.batches = model, loss_fn, list(batches)
        self.params = list(params)
        self.layout = layout if layout is not None else ShardLayout.of(self.params)
        local = self.layout.local
        self.numel = self.layout.numel
        self.dtype = work_dtype(local[0])
        self.device = local[0].device
        self.step_scale = difference_step(self.layout.norm(local), 1.0, self.dtype)
        loss, grad = self._gradient()
        self.loss = loss
        self.gradient = grad  # this process's slices of the gradient at w (work dtype)
        if not math.isfinite(loss):
            raise NonFiniteError(f"the loss at w is {loss}")

    def _gradient(self) -> tuple[float, list[Tensor]]:
        return local_gradient(self.model, self.loss_fn, self.batches, self.params, self.layout, self.dtype)

    def matvec(self, vector: Tensor) -> Tensor:
        """``H v`` for a full flat ``vector`` (the same on every process); the full result on every one."""
        vector = vector.to(device=self.device, dtype=self.dtype)
        v_norm = float(torch.linalg.vector_norm(vector.double()))
        if v_norm == 0.0:
            return torch.zeros_like(vector)
        h = self.step_scale / v_norm
        pieces = self.layout.to_local(vector)
        with WeightPerturbation(self.layout.local, [pieces]) as move:
            move.move_to(h)
            _, plus = self._gradient()
            move.move_to(-h)
            _, minus = self._gradient()
        product = [(a.double() - b.double()) / (2.0 * h) for a, b in zip(plus, minus)]
        out = self.layout.to_full(product, dtype=torch.float64).to(self.dtype)
        if not bool(torch.isfinite(out).all()):
            raise NonFiniteError("a Hessian-vector product is not finite")
        return out


@contextlib.contextmanager
def gradient_difference_operator(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    params: Sequence[Tensor],
    layout: ShardLayout | None = None,
) -> Iterator[GradientDifferenceOperator]:
    """Observe ``model`` (eval mode, state restored after); yield its :class:`GradientDifferenceOperator`."""
    with observation(model), torch.enable_grad():
        yield GradientDifferenceOperator(model, loss_fn, batches, params, layout)


def sharded_hessian_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    params: Sequence[Tensor],
    layout: ShardLayout | None = None,
    k: int = 1,
    which: Which = "largest",
    max_iter: int = 100,
    tol: float = 1e-5,
    seed: int = 0,
    max_basis: int | None = None,
    reuse_graph: bool = True,
    return_eigenvectors: bool = False,
) -> HessianEigenvalues:
    """:func:`~.hessian.hessian_eigenvalues` from gradient differences: for sharded (or any) parameters.

    The same options and result (``reuse_graph`` is accepted and has no effect; eigenvectors, if asked
    for, are this process's slices, signs fixed as unsharded); the Lanczos start vector is the same
    Rademacher vector as unsharded for the same ``seed``.
    """
    check_lanczos_args(k, which, max_iter, tol)
    meta: dict[str, Any] = {
        "which": which,
        "k": k,
        "max_iter": max_iter,
        "tol": tol,
        "seed": seed,
        "max_basis": max_basis,
        **probe_meta(list(batches)),
        "hvp": "gradient difference",
    }
    start = time.perf_counter()
    try:
        with gradient_difference_operator(model, loss_fn, batches, params, layout) as op:
            meta["parameters"] = op.numel
            res = lanczos(
                op.matvec, op.numel, k=k, which=which, max_iter=max_iter, tol=tol, seed=seed,
                dtype=op.dtype, device=op.device, max_basis=max_basis, return_vectors=return_eigenvectors,
            )  # fmt: skip
            loss = op.loss
            vectors = None
            if res.vectors is not None:  # full on every process: keep this one's slices, signs fixed
                vectors = [[t.clone() for t in op.layout.to_local(fix_sign(v))] for v in res.vectors]
    except NonFiniteError as err:
        nonfinite_warning("hessian_eigenvalues", err)
        n = min(k, max_iter) * (2 if which == "both" else 1)
        nan = np.full(n, math.nan)
        return HessianEigenvalues(nan, nan.copy(), None, 0, False, math.nan, meta=meta)
    meta.update(max_basis=res.max_basis, restarts=res.restarts, seconds=time.perf_counter() - start)
    return HessianEigenvalues(
        eigenvalues=res.values,
        residuals=res.residuals,
        eigenvectors=vectors,
        iterations=res.iterations,
        converged=res.converged,
        loss=loss,
        history=res.history,
        meta=meta,
    )


def sharded_hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    params: Sequence[Tensor],
    layout: ShardLayout | None = None,
    samples: int = 64,
    seed: int = 0,
    reuse_graph: bool = True,
) -> HessianTrace:
    """:func:`~.hessian.hessian_trace` from gradient differences: for sharded (or any) parameters.

    The same Rademacher probes as unsharded for the same ``seed`` (full-length, drawn on every process);
    ``reuse_graph`` is accepted and has no effect. Each probe costs one product (two backward passes per
    probe batch); the probes are not shared out among processes (every process takes part in each).
    """
    check_int("samples", samples, 2)
    meta: dict[str, Any] = {
        "samples": samples,
        "seed": seed,
        "probes": "rademacher",
        **probe_meta(list(batches)),
        "hvp": "gradient difference",
    }
    start = time.perf_counter()
    try:
        with gradient_difference_operator(model, loss_fn, batches, params, layout) as op:
            values = hutchinson_samples(op.matvec, op.numel, samples, seed, op.dtype, op.device)
            loss = op.loss
    except NonFiniteError as err:
        nonfinite_warning("hessian_trace", err)
        return HessianTrace(math.nan, math.nan, np.full(samples, math.nan), math.nan, meta=meta)
    meta["seconds"] = time.perf_counter() - start
    summary = summarize_samples(values)
    return HessianTrace(summary.trace, summary.stderr, summary.samples, loss=loss, meta=meta)


def sharded_sam_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    params: Sequence[Tensor],
    layout: ShardLayout | None = None,
    rho: float = 0.05,
    adaptive: bool = False,
) -> SamSharpness:
    """:func:`~.sharpness.sam_sharpness` for sharded (or any) parameters: the gradient by backward passes
    (each process its slices), its norm summed over processes, the SAM point ``w + rho g / |g|`` (ASAM:
    ``T g`` with ``T = |w|``) moved into the slices in place and evaluated by every process."""
    check_positive("rho", rho)
    meta: dict[str, Any] = {"rho": float(rho), "adaptive": bool(adaptive), **probe_meta(list(batches))}
    start = time.perf_counter()
    with observation(model):
        with torch.enable_grad():
            layout = layout if layout is not None else ShardLayout.of(list(params))
            dtype = work_dtype(layout.local[0])
            loss, grad = local_gradient(model, loss_fn, list(batches), list(params), layout, dtype)
        grad_norm = layout.norm(grad)
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            nonfinite_warning("sam_sharpness", NonFiniteError(f"the loss at w is {loss}, |g| {grad_norm}"))
            return SamSharpness(math.nan, math.nan, loss, math.nan, grad_norm, meta=meta)
        local = [p.detach() for p in layout.local]
        scaled = [g * p.abs().to(g) for g, p in zip(grad, local)] if adaptive else grad
        scaled_norm = layout.norm(scaled)
        e = [
            (s * p.abs().to(s) if adaptive else s) * (rho / (scaled_norm + 1e-12))
            for s, p in zip(scaled, local)
        ]
        centre = float(mean_loss(model, loss_fn, batches))
        with WeightPerturbation(layout.local, [e]) as move:
            move.move_to(1.0)
            perturbed = float(mean_loss(model, loss_fn, batches))
    meta["seconds"] = time.perf_counter() - start
    return SamSharpness(
        sharpness=perturbed - centre,
        first_order=float(rho) * scaled_norm,
        loss=centre,
        perturbed_loss=perturbed,
        grad_norm=grad_norm,
        meta=meta,
    )


def sharded_average_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    params: Sequence[Tensor],
    layout: ShardLayout | None = None,
    sigma: float = 0.01,
    samples: int = 16,
    adaptive: bool = False,
    seed: int = 0,
) -> AverageSharpness:
    """:func:`~.sharpness.average_sharpness` for sharded (or any) parameters: the same Gaussian draws for
    the same ``seed`` (each full parameter drawn in turn and sliced: every process draws every parameter
    of every sample, one parameter at a time), each perturbed point evaluated by every process."""
    check_positive("sigma", sigma)
    check_int("samples", samples, 2)
    layout = layout if layout is not None else ShardLayout.of(list(params))
    meta: dict[str, Any] = {
        "sigma": float(sigma),
        "samples": samples,
        "adaptive": bool(adaptive),
        "seed": seed,
        "distribution": "gaussian",
        **probe_meta(list(batches)),
    }
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    losses = np.zeros(samples)
    with observation(model):
        local = [p.detach() for p in layout.local]
        centre = float(mean_loss(model, loss_fn, batches))
        for i in range(samples):
            d = []
            for j, (p, shape) in enumerate(zip(local, layout.shapes)):
                z = layout.local_rows(j, torch.randn(shape, generator=gen, dtype=torch.float32))
                z = z.to(p.device, work_dtype(p)).to(p.dtype)
                d.append(z * (p.abs() * sigma) if adaptive else z * sigma)
            with WeightPerturbation(layout.local, [d]) as move:
                move.move_to(1.0)
                losses[i] = float(mean_loss(model, loss_fn, batches))
    meta["seconds"] = time.perf_counter() - start
    if not math.isfinite(centre):
        nonfinite_warning("average_sharpness", NonFiniteError(f"the loss at w is {centre}"))
        return AverageSharpness(math.nan, math.nan, losses, centre, meta=meta)
    with np.errstate(invalid="ignore", over="ignore"):
        diffs = losses - centre
        mean, stderr = float(diffs.mean()), float(diffs.std(ddof=1) / math.sqrt(samples))
    return AverageSharpness(sharpness=mean, stderr=stderr, losses=losses, loss=centre, meta=meta)


def sharded_hessian_directions(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    params: Sequence[Tensor],
    layout: ShardLayout | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
) -> tuple[tuple[Direction, Direction], HessianEigenvalues]:
    """:func:`~.hessian.hessian_directions` from gradient differences: the unit eigenvectors of
    ``lambda_max`` and ``lambda_min``, as this process's slices."""
    eig = sharded_hessian_eigenvalues(
        model, loss_fn, batches, params, layout, k=1, which="both", max_iter=max_iter, tol=tol, seed=seed,
        return_eigenvectors=True,
    )  # fmt: skip
    if eig.eigenvectors is None or len(eig.eigenvectors) < 2:
        raise ValueError("could not compute two Hessian directions (the loss is not finite at w?)")
    return (eig.eigenvectors[0], eig.eigenvectors[1]), eig
