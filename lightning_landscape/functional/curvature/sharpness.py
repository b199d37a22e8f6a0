"""Sharpness of the loss at the current weights: worst-case (SAM) and average-case.

Both are about the mean loss over the probe batches with the model observed in eval mode and restored
afterwards, and both evaluate perturbed weights through the same point-evaluation engine as the loss
surfaces (so a surface's centre, a SAM loss and an average-sharpness sample are computed alike).

- :func:`sam_sharpness`: ``L(w + e) - L(w)`` with ``e = rho g / |g|`` (SAM; Foret et al., 2021) or
  ``e = rho T^2 g / |T g|``, ``T = |w|`` (ASAM; Kwon et al., 2021), reported with its first-order
  part ``rho |g|`` (``rho |T g|``), so that the curvature part ``sam - first_order`` can be read.
- :func:`average_sharpness`: ``E[L(w + d)] - L(w)`` for Gaussian ``d`` of scale ``sigma``, optionally
  scaled elementwise by ``|w|`` (adaptive), with the standard error over samples. For a quadratic
  loss it is ``sigma^2 tr(H) / 2``.

On a sharded model (the cores with a ``layout``) the gradient comes from backward passes as this
process's slices, norms are summed over the processes, the Gaussian draws are each full parameter's,
sliced, and every point is evaluated by every process: the numbers one unsharded process gives.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape.functional.curvature.sharded import check_layout, sharded_loss_gradient
from lightning_landscape.functional.landscape.directions import random_direction
from lightning_landscape.functional.landscape.params import Direction, LossFn, observation
from lightning_landscape.functional.landscape.sharding import PointShard, evaluate_sharded
from lightning_landscape.functional.landscape.shards import ShardLayout, sharded_random_direction
from lightning_landscape.functional.landscape.surface import point_losses_of
from lightning_landscape.functional.objective import Objective, check_int, check_positive, norm64, scalar_loss

__all__ = [
    "AverageSharpness",
    "SamSharpness",
    "average_sharpness",
    "average_sharpness_of",
    "loss_gradient",
    "loss_gradient_of",
    "sam_sharpness",
    "sam_sharpness_of",
]

_EPS = 1e-12
_CHUNK_ELEMENTS = 1 << 25  # parameter elements held by one chunk of average-sharpness directions


@dataclass
class SamSharpness:
    """Result of :func:`sam_sharpness`.

    Attributes:
        sharpness: ``L(w + e) - L(w)``.
        first_order: ``rho |g|`` (``rho |T g|`` for ASAM), the part a linear model of the loss predicts.
        loss: ``L(w)``; perturbed_loss: ``L(w + e)``; grad_norm: ``|g|``.
    """

    sharpness: float
    first_order: float
    loss: float
    perturbed_loss: float
    grad_norm: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def curvature(self) -> float:
        """``sharpness - first_order``: what the curvature (second and higher orders) adds."""
        return self.sharpness - self.first_order

    def scalars(self) -> dict[str, float]:
        """``sharpness/sam``, ``.../sam_first_order``, ``.../sam_curvature``, ``.../grad_norm``."""
        return {
            "sharpness/sam": self.sharpness,
            "sharpness/sam_first_order": self.first_order,
            "sharpness/sam_curvature": self.curvature,
            "sharpness/grad_norm": self.grad_norm,
        }


@dataclass
class AverageSharpness:
    """Result of :func:`average_sharpness`.

    Attributes:
        sharpness: mean of ``L(w + d_i) - L(w)`` over the samples.
        stderr: its standard error (sample standard deviation / sqrt(samples)).
        losses: each sample's ``L(w + d_i)``.
        loss: ``L(w)``.
    """

    sharpness: float
    stderr: float
    losses: np.ndarray
    loss: float
    meta: dict[str, Any] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        """``sharpness/average`` and ``sharpness/average_stderr``."""
        return {"sharpness/average": self.sharpness, "sharpness/average_stderr": self.stderr}


def loss_gradient(
    model: nn.Module, loss_fn: LossFn, batches: Sequence[Any], params: Sequence[Tensor] | None = None
) -> tuple[float, Direction]:
    """``(L(w), grad L(w))`` of the mean probe loss, observed in eval mode; ``.grad`` is not touched.

    Example::

        >>> model = nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(1.0)
        >>> batch = (torch.tensor([[2.0]]), torch.tensor([[0.0]]))
        >>> loss_gradient(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), [batch])
        (4.0, [tensor([[8.]])])
    """
    return loss_gradient_of(Objective.build(model, loss_fn, batches, params, require_grad=True))


def loss_gradient_of(objective: Objective) -> tuple[float, Direction]:
    """:func:`loss_gradient` of ``objective`` (the core; each parameter must require grad)."""
    model, loss_fn, batches, params = objective.model, objective.loss_fn, objective.batches, objective.params
    objective.differentiable()
    total = 0.0
    grad = [torch.zeros_like(p) for p in params]
    with observation(model), torch.enable_grad():
        for batch in batches:
            loss = scalar_loss(loss_fn, model, batch)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            total += float(loss.detach())
            torch._foreach_add_(
                grad, [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
            )
    n = len(batches)
    return total / n, [g / n for g in grad]


def sam_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    rho: float = 0.05,
    adaptive: bool = False,
    params: Sequence[Tensor] | None = None,
) -> SamSharpness:
    """SAM's sharpness ``L(w + e) - L(w)``, ``e = rho g/|g|`` (ASAM: ``rho T^2 g/|T g|``, ``T = |w|``).

    The gradient is that of the mean probe loss at ``w`` in eval mode (not a training mini-batch's), so
    the number is the same for every optimizer. A non-finite loss or gradient gives NaN and a
    ``RuntimeWarning``; a zero gradient gives zero sharpness.

    Example::

        >>> model = nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(1.0)
        >>> batch = (torch.tensor([[1.0]]), torch.tensor([[0.0]]))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()   # L = w^2: g = 2, L(1.5) - L(1) = 1.25
        >>> res = sam_sharpness(model, mse, [batch], rho=0.5)
        >>> round(res.sharpness, 6), round(res.first_order, 6), round(res.curvature, 6)
        (1.25, 1.0, 0.25)
    """
    check_positive("rho", rho)
    objective = Objective.build(model, loss_fn, batches, params, require_grad=True)
    return sam_sharpness_of(objective, rho, adaptive)


def sam_sharpness_of(
    objective: Objective, rho: float = 0.05, adaptive: bool = False, *, layout: ShardLayout | None = None
) -> SamSharpness:
    """:func:`sam_sharpness` of ``objective`` (the core; the perturbed point evaluated with its engine).
    With ``layout`` (sharded parameters: the objective's are this process's slices of ``layout.params``),
    every process must call it together."""
    check_positive("rho", rho)
    params = objective.params
    meta = {"rho": float(rho), "adaptive": bool(adaptive), **objective.probe_meta()}
    start = time.perf_counter()
    norm: Callable[[Sequence[Tensor]], float] = norm64
    if layout is None:
        loss, grad = loss_gradient_of(objective)
    else:
        loss, grad = sharded_loss_gradient(objective, layout)
        norm, objective = layout.norm, objective.replace(engine="loop")  # every forward is collective
    grad_norm = norm(grad)
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        warnings.warn(
            f"sam_sharpness: the loss at w is {loss} and the gradient norm {grad_norm}; the result is NaN",
            RuntimeWarning,
            stacklevel=2,
        )
        return SamSharpness(math.nan, math.nan, loss, math.nan, grad_norm, meta=meta)
    with torch.no_grad():
        scaled = [g * p.detach().abs().to(g) for g, p in zip(grad, params)] if adaptive else grad
        scaled_norm = norm(scaled)
        weights = [p.detach().abs() for p in params] if adaptive else [None] * len(params)
        e = [(s * w if w is not None else s) * (rho / (scaled_norm + _EPS)) for s, w in zip(scaled, weights)]
    losses = point_losses_of(objective, [e], np.array([[0.0], [1.0]]))
    centre, perturbed = float(losses[0]), float(losses[1])
    meta["seconds"] = time.perf_counter() - start
    return SamSharpness(
        sharpness=perturbed - centre,
        first_order=float(rho) * scaled_norm,
        loss=centre,
        perturbed_loss=perturbed,
        grad_norm=grad_norm,
        meta=meta,
    )


def average_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    sigma: float = 0.01,
    samples: int = 16,
    adaptive: bool = False,
    seed: int = 0,
    params: Sequence[Tensor] | None = None,
    *,
    shard: PointShard | None = None,
) -> AverageSharpness:
    """Average-case sharpness ``E[L(w + d)] - L(w)``, ``d ~ N(0, sigma^2 I)`` (adaptive: ``sigma |w| * z``).

    The ``samples`` Gaussian draws come in sequence from a CPU generator seeded with ``seed`` (one
    standard-normal tensor per parameter, in order, as :func:`random_direction` draws them), so two
    runs with the same seed use the same perturbations. Points are evaluated through the surfaces'
    engine, a few directions at a time to bound memory. With ``shard``, process ``r`` of ``W``
    evaluates samples ``r, r + W, ...`` and every process gets all of them (see :class:`PointShard`).

    Example::

        >>> model = nn.Linear(1, 1, bias=False)
        >>> batch = (torch.tensor([[1.0]]), torch.tensor([[0.0]]))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()   # L = w^2: E[L(w+d)] - L(w) = sigma^2
        >>> res = average_sharpness(model, mse, [batch], sigma=0.1, samples=400)
        >>> abs(res.sharpness - 0.01) < 4 * res.stderr
        True
    """
    check_positive("sigma", sigma)
    check_int("samples", samples, 2)
    objective = Objective.build(model, loss_fn, batches, params, require_grad=True, shard=shard)
    return average_sharpness_of(objective, sigma, samples, adaptive, seed)


def average_sharpness_of(
    objective: Objective,
    sigma: float = 0.01,
    samples: int = 16,
    adaptive: bool = False,
    seed: int = 0,
    *,
    layout: ShardLayout | None = None,
) -> AverageSharpness:
    """:func:`average_sharpness` of ``objective`` (the core; its samples shared out by the objective's
    ``shard``, each evaluated with its engine). With ``layout`` (sharded parameters: the objective's are
    this process's slices of ``layout.params``), each sample is drawn per full parameter and sliced, and
    evaluated by every process together."""
    check_positive("sigma", sigma)
    check_int("samples", samples, 2)
    if layout is not None:
        check_layout(objective, layout)
        objective = objective.replace(engine="loop")  # every forward is collective
    params = objective.params
    meta = {
        "sigma": float(sigma),
        "samples": samples,
        "adaptive": bool(adaptive),
        "seed": seed,
        "distribution": "gaussian",
        **objective.probe_meta(),
    }
    start = time.perf_counter()
    numel = sum(p.numel() for p in params)
    chunk = max(1, min(samples, _CHUNK_ELEMENTS // max(numel, 1)))
    with torch.no_grad():
        scale = [p.detach().abs() * sigma if adaptive else None for p in params]
    # L(w) through the same engine as the samples (a zero step along one direction), so that
    # sharpness = mean(L(w + d)) - L(w) subtracts like from like.
    zero = [[torch.zeros_like(p) for p in params]]
    centre = float(point_losses_of(objective, zero, np.zeros((1, 1)))[0])

    def sample_losses(rows: np.ndarray) -> np.ndarray:
        """``L(w + d_i)`` for the sample indices in ``rows``; the generator still draws every sample."""
        wanted = sorted(int(i) for i in rows[:, 0])
        gen = torch.Generator().manual_seed(int(seed))
        out: list[np.ndarray] = []
        pending: list[Direction] = []
        for i in range(wanted[-1] + 1 if wanted else 0):
            z = random_direction(params, gen) if layout is None else sharded_random_direction(layout, gen)
            if i not in wanted:
                continue
            with torch.no_grad():
                pending.append(
                    [zi.to(p.dtype) * (s if s is not None else sigma) for zi, p, s in zip(z, params, scale)]
                )
            if len(pending) == chunk or i == wanted[-1]:
                out.append(point_losses_of(objective, pending, np.eye(len(pending))))
                pending = []
        return np.concatenate(out) if out else np.zeros(0)

    rows = np.arange(samples, dtype=np.float64)[:, None]
    losses = [evaluate_sharded(sample_losses, rows, objective.shard)]
    all_losses = np.concatenate(losses)
    meta["seconds"] = time.perf_counter() - start
    if not math.isfinite(centre):
        warnings.warn(
            f"average_sharpness: the loss at w is {centre}; the result is NaN", RuntimeWarning, stacklevel=2
        )
        return AverageSharpness(math.nan, math.nan, all_losses, centre, meta=meta)
    bad = int((~np.isfinite(all_losses)).sum())
    if bad:
        warnings.warn(
            f"average_sharpness: {bad} of {samples} perturbed losses are not finite (sigma={sigma} is too "
            "large?); the result is not finite",
            RuntimeWarning,
            stacklevel=2,
        )
    with np.errstate(invalid="ignore", over="ignore"):
        diffs = all_losses - centre
        mean, stderr = float(diffs.mean()), float(diffs.std(ddof=1) / math.sqrt(samples))
    return AverageSharpness(
        sharpness=mean,
        stderr=stderr,
        losses=all_losses,
        loss=centre,
        meta=meta,
    )
