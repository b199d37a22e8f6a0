"""The edge of stability: the optimizer's sharpness threshold, and the measured sharpness against it.

Gradient descent with step ``lr`` on a quadratic is stable while ``lambda_max(H) < 2 / lr``; full-batch
GD drives ``lambda_max`` up to that threshold and then hovers there (Cohen et al., 2021). The threshold
depends on the optimizer (``beta`` the momentum, ``d`` the dampening):

===========================  ===========================================  ============================
optimizer                    threshold                                    sharpness compared
===========================  ===========================================  ============================
SGD                          ``2 / lr``                                   ``lambda_max(H)``
SGD, heavy-ball momentum     ``(2 + 2 beta) / ((1 - d) lr)``              ``lambda_max(H)``
SGD, Nesterov momentum       ``(2 + 2 beta) / ((1 + 2 beta) lr)``         ``lambda_max(H)``
Adam, AdamW                  ``(2 + 2 beta1) / ((1 - beta1) lr)``         ``lambda_max(P^-1 H)``
===========================  ===========================================  ============================

Each SGD row is where the linear recursion of ``torch.optim.SGD`` on ``lambda/2 w^2`` gets an
eigenvalue ``-1`` (for Nesterov as PyTorch implements it, ``w -= lr (g + beta b)``, ``b = beta b + g``).
For Adam the preconditioner is frozen, ``P = diag(sqrt(v_hat) + eps)`` from the second-moment estimate
``exp_avg_sq`` (``max_exp_avg_sq`` with ``amsgrad``) with its bias correction, and the threshold is
that of heavy-ball momentum on ``P^-1 H`` with Adam's averaging of the gradient (Cohen et al., 2022).
``lambda_max(P^-1 H)`` is computed as that of the symmetric ``P^-1/2 H P^-1/2``. A wrapper with a
``base_optimizer`` (such as :class:`lightning_landscape.optim.SAM`) is read through its base optimizer.
Weight decay is not part of the threshold (nor of the loss, unless ``loss_fn`` adds it).

On a sharded model (:func:`edge_of_stability_ratio_of` with a ``layout``) the Hessian is the
gradient-difference operator on this process's slices, and Adam's preconditioner is read from the
optimizer's state of the sharded parameters and sliced likewise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_landscape.functional.curvature.estimators import check_lanczos_args
from lightning_landscape.functional.curvature.operators import (
    ScaledOperator,
    hessian_operator_of,
    operator_lanczos,
)
from lightning_landscape.functional.curvature.sharded import check_layout, local_slices, sharded_product
from lightning_landscape.functional.landscape.params import LossFn
from lightning_landscape.functional.landscape.shards import ShardLayout
from lightning_landscape.functional.objective import NonFiniteError, Objective, nonfinite_warning, work_dtype

__all__ = [
    "EdgeOfStability",
    "StabilityThreshold",
    "adam_preconditioner",
    "edge_of_stability_ratio",
    "edge_of_stability_ratio_of",
    "stability_threshold",
]

Sharpness = Literal["hessian", "preconditioned"]


@dataclass
class StabilityThreshold:
    """What :func:`stability_threshold` reads from an optimizer.

    Attributes:
        available: whether a threshold is known for this optimizer; if not, ``reason`` says why.
        optimizer: the class name of the optimizer read (the base optimizer of a wrapper).
        threshold: the sharpness at which its iteration on a quadratic turns unstable (NaN if unknown).
        sharpness: which sharpness to compare: ``"hessian"`` (``lambda_max(H)``) or ``"preconditioned"``
            (``lambda_max(P^-1 H)``).
        rule: the formula used; lr, momentum (``beta`` or ``beta1``), dampening, nesterov: the values read.
    """

    available: bool
    optimizer: str
    threshold: float = math.nan
    sharpness: Sharpness | None = None
    rule: str = ""
    lr: float = math.nan
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    reason: str = ""


def _unwrap(optimizer: Any) -> tuple[Any, str]:
    """The optimizer whose update rule counts, looking through Lightning's wrapper and SAM-like ones."""
    note = ""
    for _ in range(4):
        inner = getattr(optimizer, "_optimizer", None)  # LightningOptimizer
        if inner is not None and not isinstance(optimizer, torch.optim.Optimizer):
            optimizer = inner
            continue
        base = getattr(optimizer, "base_optimizer", None)  # SAM and its kind
        if isinstance(base, torch.optim.Optimizer) and base is not optimizer:
            note = f"the base optimizer of {type(optimizer).__name__}"
            optimizer = base
            continue
        break
    return optimizer, note


def _single(optimizer: torch.optim.Optimizer, key: str) -> Any:
    """A hyperparameter shared by every parameter group (``None`` if the groups disagree)."""
    values = {repr(_number(g.get(key))) for g in optimizer.param_groups if g["params"]}
    if len(values) != 1:
        return None
    return _number(next(g.get(key) for g in optimizer.param_groups if g["params"]))


def _number(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else tuple(value.tolist())
    if isinstance(value, (tuple, list)):
        return tuple(_number(v) for v in value)
    return value


def stability_threshold(optimizer: Any) -> StabilityThreshold:
    """The sharpness threshold of ``optimizer`` (SGD with or without momentum or Nesterov, Adam, AdamW).

    Reads the current ``lr`` (after any scheduler) and momentum terms, which must be the same in every
    parameter group. Other optimizers, or groups that disagree, give ``available=False`` with a reason.

    Example::

        >>> opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=0.1, momentum=0.9)
        >>> th = stability_threshold(opt)
        >>> round(th.threshold, 6), th.sharpness, th.rule
        (38.0, 'hessian', '(2 + 2 beta) / ((1 - dampening) lr)')
    """
    inner, note = _unwrap(optimizer)
    name = type(inner).__name__
    if not isinstance(inner, torch.optim.Optimizer):
        return StabilityThreshold(False, name, reason=f"{name} is not a torch.optim.Optimizer")
    lr = _single(inner, "lr")
    if lr is None:
        return StabilityThreshold(False, name, reason="its parameter groups have different learning rates")
    if not isinstance(lr, (int, float)) or not lr > 0:
        return StabilityThreshold(False, name, reason=f"its learning rate is {lr!r}")
    lr = float(lr)
    if isinstance(inner, torch.optim.SGD):
        beta, dampening, nesterov = (_single(inner, k) for k in ("momentum", "dampening", "nesterov"))
        if beta is None or dampening is None or nesterov is None:
            return StabilityThreshold(
                False, name, lr=lr, reason="its parameter groups have different momentum"
            )
        beta, dampening = float(beta), float(dampening)
        if beta == 0:
            threshold, rule = 2 / lr, "2 / lr"
        elif nesterov:
            threshold, rule = (2 + 2 * beta) / ((1 + 2 * beta) * lr), "(2 + 2 beta) / ((1 + 2 beta) lr)"
        elif dampening >= 1:
            return StabilityThreshold(False, name, lr=lr, reason="its dampening is 1: it never moves")
        else:
            threshold, rule = (2 + 2 * beta) / ((1 - dampening) * lr), "(2 + 2 beta) / ((1 - dampening) lr)"
        return StabilityThreshold(
            True,
            name,
            threshold,
            "hessian",
            rule + (f" ({note})" if note else ""),
            lr,
            beta,
            dampening,
            bool(nesterov),
        )
    if type(inner) in (torch.optim.Adam, torch.optim.AdamW):
        betas = _single(inner, "betas")
        if betas is None:
            return StabilityThreshold(False, name, lr=lr, reason="its parameter groups have different betas")
        beta1 = float(betas[0])
        rule = "(2 + 2 beta1) / ((1 - beta1) lr)" + (f" ({note})" if note else "")
        return StabilityThreshold(
            True, name, (2 + 2 * beta1) / ((1 - beta1) * lr), "preconditioned", rule, lr, beta1
        )
    return StabilityThreshold(
        False, name, lr=lr, reason=f"no stability threshold is known for {name} (SGD, Adam and AdamW are)"
    )


def adam_preconditioner(optimizer: Any, params: Sequence[Tensor]) -> list[Tensor]:
    """Adam's diagonal preconditioner ``sqrt(v_hat) + eps`` for each of ``params``, from its state.

    ``v_hat = exp_avg_sq / (1 - beta2^step)`` (``max_exp_avg_sq`` with ``amsgrad``), as in
    ``torch.optim.Adam``'s update ``w -= lr m_hat / (sqrt(v_hat) + eps)``. A ValueError naming
    ``optimizer`` if a parameter has no state yet (no step taken) or is not optimized by it.
    """
    inner, _ = _unwrap(optimizer)
    groups = {id(p): g for g in inner.param_groups for p in g["params"]}
    out = []
    for i, p in enumerate(params):
        group, state = groups.get(id(p)), inner.state.get(p, {})
        if group is None:
            raise ValueError(f"`optimizer` does not optimize parameter {i} (shape {tuple(p.shape)})")
        key = "max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq"
        if key not in state or "step" not in state:
            raise ValueError(
                f"`optimizer` has no second-moment estimate for parameter {i} (shape {tuple(p.shape)}): "
                "take an optimizer step first"
            )
        step, beta2, eps = (
            float(_number(state["step"])),
            float(_number(group["betas"])[1]),
            float(group["eps"]),
        )
        v_hat = state[key].detach().double() / (1 - beta2**step)
        out.append((v_hat.sqrt() + eps).to(work_dtype(p)))
    return out


@dataclass
class EdgeOfStability:
    """Result of :func:`edge_of_stability_ratio`.

    Attributes:
        ratio: ``sharpness / threshold``; about 1 at the edge of stability, above 1 unstable.
        sharpness: ``lambda_max(H)`` or ``lambda_max(P^-1 H)`` (see ``threshold.sharpness``).
        residual: Lanczos' residual of that eigenvalue; iterations, converged: as Lanczos reports.
        threshold: what was read from the optimizer.
        loss: the mean probe loss at ``w``.
    """

    ratio: float
    sharpness: float
    residual: float
    iterations: int
    converged: bool
    threshold: StabilityThreshold
    loss: float
    meta: dict[str, Any] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        """``eos/ratio``, ``eos/sharpness`` and ``eos/threshold``."""
        return {
            "eos/ratio": self.ratio,
            "eos/sharpness": self.sharpness,
            "eos/threshold": self.threshold.threshold,
        }


def edge_of_stability_ratio(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    optimizer: Any,
    max_iter: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    params: Sequence[Tensor] | None = None,
    reuse_graph: bool = True,
    max_basis: int | None = None,
) -> EdgeOfStability:
    """The measured sharpness over ``optimizer``'s stability threshold (see :func:`stability_threshold`).

    The sharpness is the largest eigenvalue, by Lanczos, of the Hessian of the mean probe loss (SGD) or
    of Adam's preconditioned Hessian ``P^-1 H`` with ``P`` from the optimizer's current state. An
    optimizer without a known threshold is a ValueError naming ``optimizer`` and the reason.

    Example::

        >>> model = nn.Linear(1, 1, bias=False)
        >>> batch = (torch.tensor([[2.0]]), torch.tensor([[0.0]]))
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()   # H = 2 x^2 = 8
        >>> eos = edge_of_stability_ratio(model, mse, [batch], torch.optim.SGD(model.parameters(), lr=0.2))
        >>> round(eos.sharpness, 6), round(eos.threshold.threshold, 6), round(eos.ratio, 6)
        (8.0, 10.0, 0.8)
    """
    check_lanczos_args(1, "largest", max_iter, tol)
    threshold = stability_threshold(optimizer)
    if not threshold.available:
        raise ValueError(f"`optimizer`: no edge-of-stability ratio: {threshold.reason}")
    objective = Objective.build(model, loss_fn, batches, params, require_grad=True)
    return edge_of_stability_ratio_of(
        objective, optimizer, max_iter, tol, seed, reuse_graph=reuse_graph, max_basis=max_basis
    )


def edge_of_stability_ratio_of(
    objective: Objective,
    optimizer: Any,
    max_iter: int = 20,
    tol: float = 1e-3,
    seed: int = 0,
    *,
    reuse_graph: bool = True,
    max_basis: int | None = None,
    layout: ShardLayout | None = None,
) -> EdgeOfStability:
    """:func:`edge_of_stability_ratio` of ``objective`` (the core). With ``layout`` (sharded parameters:
    the objective's are this process's slices of ``layout.params``, which the optimizer updates), every
    process must call it together."""
    check_lanczos_args(1, "largest", max_iter, tol)
    threshold = stability_threshold(optimizer)
    if not threshold.available:
        raise ValueError(f"`optimizer`: no edge-of-stability ratio: {threshold.reason}")
    layout = objective.layout if layout is None else layout  # a sharded objective brings its own
    if layout is not None:
        check_layout(objective, layout)
    diagonal = None
    if threshold.sharpness == "preconditioned":
        if layout is None:
            scales = adam_preconditioner(optimizer, objective.params)
        else:  # the optimizer's state is that of the sharded parameters: keep this process's slices
            scales = local_slices(layout, adam_preconditioner(optimizer, layout.params))
        diagonal = torch.cat([d.reshape(-1) for d in scales])
    meta: dict[str, Any] = {
        "optimizer": threshold.optimizer,
        "sharpness": threshold.sharpness,
        "rule": threshold.rule,
        "lr": threshold.lr,
        "momentum": threshold.momentum,
        "max_iter": max_iter,
        "tol": tol,
        "seed": seed,
        **objective.probe_meta(),
    }
    if layout is not None:
        meta["hvp"] = sharded_product(objective, layout)
    start = time.perf_counter()
    try:
        with hessian_operator_of(objective, reuse_graph, layout=layout) as op:
            operator = op if diagonal is None else ScaledOperator(op, diagonal.rsqrt())
            res = operator_lanczos(operator, max_iter, tol, seed, max_basis=max_basis)
            loss = op.loss
    except NonFiniteError as err:
        nonfinite_warning("edge_of_stability_ratio", err)
        return EdgeOfStability(math.nan, math.nan, math.nan, 0, False, threshold, math.nan, meta=meta)
    sharpness = float(res.values[0])
    meta["seconds"] = time.perf_counter() - start
    return EdgeOfStability(
        ratio=sharpness / threshold.threshold,
        sharpness=sharpness,
        residual=float(res.residuals[0]),
        iterations=res.iterations,
        converged=res.converged,
        threshold=threshold,
        loss=loss,
        meta=meta,
    )
