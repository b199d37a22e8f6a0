"""Critical sharpness: the curvature along an update direction, from a line search of forward passes only.

Kalra et al. (2026) define the *critical learning rate* ``eta_c`` of an update direction ``d`` (the update
per unit learning rate: minus the gradient for SGD, the preconditioned step for Adam) as the smallest
``eta > 0`` at which a step makes the loss go up, ``L(w + eta d) > L(w)``, and the *critical sharpness*
``lambda_c = 2 / eta_c``. On a quadratic ``L(w) = 1/2 w^T H w - b^T w`` with gradient ``g`` at ``w``,

    ``L(w + eta d) - L(w) = eta g.d + 1/2 eta^2 d^T H d``,

so for a descent direction (``g.d < 0``) ``eta_c = -2 g.d / (d^T H d)`` and

    ``lambda_c = d^T H d / (-g.d)``.

For SGD (``d = -g``) that is the Rayleigh quotient ``g^T H g / g.g``, at most ``lambda_max(H)``; for a fixed
diagonal preconditioner ``P`` (``d = -P g``) it is ``(g^T P H P g) / (g^T P g)``, the Rayleigh quotient of
``P^1/2 H P^1/2`` (the same spectrum as ``P H``) at ``P^1/2 g``, at most ``lambda_max(P H)``. For Adam
``P = diag(1 / (sqrt(v_hat) + eps))``, so ``lambda_c`` is bounded by the preconditioned sharpness that
:func:`~lightning_landscape.functional.stability_threshold` compares.

*Relative* critical sharpness is the same search on a second loss along the first loss's update (the
pre-training loss along a fine-tuning step): call :func:`critical_sharpness` with the second ``loss_fn``
and ``batches`` and the first loss's ``direction``.

The search needs only the loss: no gradient, no second derivative, so it runs under ``torch.no_grad`` with
fused attention kernels and on sharded parameters: FSDP2's DTensor parameters are moved through their
local shards, FSDP is resharded between evaluations (so each forward gathers the moved shards) and the
loss is averaged over the processes, so every process takes the same steps.

It works on ``h(eta) = (L(w + eta d) - L(w)) / eta``, which is negative below ``eta_c`` and positive above,
and *exactly linear* in ``eta`` on a quadratic: a secant step on ``h`` lands on ``eta_c`` at once there. A
bracket is grown (or shrunk) geometrically from a first guess, steered by secant extrapolation of ``h``,
then closed by the Illinois variant of regula falsi on ``h`` with Brent's safeguards (never a step within
the tolerance of an end, a bisection when the bracket stops halving), until its width is at most ``rtol``
of its lower end. A quadratic takes 5 to 7 loss evaluations (the one at ``eta = 0`` included), at
``rtol=1e-2`` as at ``1e-6``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape.functional import checks as check
from lightning_landscape.functional.landscape.params import LossFn, WeightPerturbation, observation
from lightning_landscape.functional.landscape.shards import ShardLayout
from lightning_landscape.functional.objective import check_batches, probe_meta, resolve_params

try:  # torch >= 2.6
    from torch.distributed.fsdp import FSDPModule as _FSDPModule
    from torch.distributed.tensor import DTensor as _DTensor
except ImportError:  # pragma: no cover
    _DTensor = _FSDPModule = None  # type: ignore[assignment, misc]

__all__ = ["CriticalSharpness", "critical_sharpness"]

_GROWTH = 1e12  # how far above the first guess the bracket is sought before giving up
_SHRINK = 1e-6  # how far below it a decrease is sought before the direction is refused


@dataclass
class CriticalSharpness:
    """Result of :func:`critical_sharpness`.

    Attributes:
        lambda_c: the critical sharpness ``2 / eta_c`` (0.0 if the loss kept going down up to the largest
            step tried: ``bracketed`` is False then).
        eta_c: the critical learning rate, the midpoint of the final bracket (``inf`` if none was found).
        bracket: ``(low, high)``: the loss went down at ``low`` and not at ``high``; ``eta_c`` is within
            ``rtol * low / 2`` of the crossing when ``converged``.
        evaluations: loss evaluations over the whole probe set, the one at ``eta = 0`` included.
        forward_passes: ``evaluations * len(batches)``.
        etas, losses: every step evaluated and the mean probe loss there (``etas[0] = 0``), in the order
            evaluated; :meth:`line` gives them sorted: the 1-D landscape along the update.
        loss: the mean probe loss at ``w`` (``eta = 0``).
        converged: whether the bracket reached ``rtol`` within ``max_evaluations``.
        bracketed: whether a step that does not decrease the loss was found at all.
    """

    lambda_c: float
    eta_c: float
    bracket: tuple[float, float]
    evaluations: int
    forward_passes: int
    etas: np.ndarray
    losses: np.ndarray
    loss: float
    converged: bool
    bracketed: bool
    meta: dict[str, Any] = field(default_factory=dict)

    def line(self) -> tuple[np.ndarray, np.ndarray]:
        """``(etas, losses)`` sorted by ``eta``: the loss along the update at every step evaluated."""
        order = np.argsort(self.etas, kind="stable")
        return self.etas[order], self.losses[order]

    def scalars(self) -> dict[str, float]:
        """``critical/lambda_c``, ``critical/eta_c`` (when bracketed) and ``critical/evaluations``."""
        out = {"critical/lambda_c": self.lambda_c, "critical/evaluations": float(self.evaluations)}
        if self.bracketed:
            out["critical/eta_c"] = self.eta_c
        return out


def _sharded(t: Tensor) -> bool:
    return _DTensor is not None and isinstance(t, _DTensor)


def _reshard(model: nn.Module) -> None:
    """Put FSDP2's parameters back in their sharded form, so the next forward gathers the moved shards."""
    if _FSDPModule is not None:
        for module in model.modules():
            if isinstance(module, _FSDPModule):
                module.reshard()


def _local(t: Tensor) -> Tensor:
    """A DTensor's local shard (a view: moving it moves the parameter), else the tensor itself."""
    return t.to_local() if _sharded(t) else t  # type: ignore[attr-defined]


def _norm(tensors: Sequence[Tensor]) -> float:
    """The Euclidean norm of tensors taken as one vector, in float64; DTensors over all their shards."""
    total = 0.0
    for t in tensors:
        square = (t.detach().double() ** 2).sum()
        total += float(square.full_tensor() if _sharded(square) else square)  # type: ignore[attr-defined]
    return math.sqrt(total)


def _check_direction(direction: Sequence[Tensor], params: Sequence[Tensor]) -> list[Tensor]:
    if isinstance(direction, Tensor) or not isinstance(direction, Sequence):
        raise ValueError(
            f"`direction` must be a list of tensors, one per parameter, got {type(direction).__name__}"
        )
    direction = list(direction)
    if len(direction) != len(params):
        raise ValueError(
            f"`direction` has {len(direction)} tensors, expected one per parameter ({len(params)})"
        )
    for i, (d, p) in enumerate(zip(direction, params)):
        if not isinstance(d, Tensor) or d.shape != p.shape:
            shape = tuple(d.shape) if isinstance(d, Tensor) else type(d).__name__
            raise ValueError(f"`direction`[{i}] is {shape}, expected a tensor of shape {tuple(p.shape)}")
    norm = _norm(direction)
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError(f"`direction` must be finite and non-zero, its norm is {norm}")
    return direction


def critical_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    direction: Sequence[Tensor],
    *,
    rtol: float = 1e-2,
    eta0: float | None = None,
    params: Sequence[Tensor] | None = None,
    max_evaluations: int = 40,
    eta_min: float | None = None,
) -> CriticalSharpness:
    """The critical sharpness ``2 / eta_c`` of the mean probe loss along ``direction`` (forward passes only).

    ``eta_c`` is the smallest step ``eta`` at which ``L(w + eta d)`` is no longer below ``L(w)`` (see the
    module's docstring for the search and the closed forms on a quadratic). The model is evaluated in eval
    mode under ``torch.no_grad``; its weights, buffers, train/eval flags and random state are as before
    afterwards, bit for bit.

    Args:
        model: the model, at the weights ``w`` the step starts from.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``. A second loss along the first loss's update
            gives the *relative* critical sharpness.
        batches: the probe batches, on the model's device; ``L`` is the mean loss over them.
        direction: the update per unit learning rate, one tensor per parameter (``-grad`` for SGD).
        rtol: relative accuracy of ``eta_c`` (and so of ``lambda_c``), in ``(0, 1)``.
        eta0: the first step tried; by default the one that moves the weights by 1% of their norm
            (pass the learning rate, or the last ``eta_c``, when known: fewer evaluations).
        params: the parameters ``direction`` is aligned with (default: the trainable ones).
        max_evaluations: most loss evaluations (``converged`` is False if they run out).
        eta_min: the smallest step tried before ``direction`` is refused (default ``eta0 * 1e-6``): a
            refusal says ``lambda_c > 2 / eta_min`` or an ascent direction.

    Raises:
        ValueError: naming ``direction`` if the loss does not go down at any small step along it (an
            ascent direction, or one too small to change the loss), or for a malformed argument.

    Example::

        >>> import torch
        >>> model = nn.Linear(1, 1, bias=False)   # L(w) = (2 w)^2 / 2: H = 4
        >>> _ = model.weight.data.fill_(1.0)
        >>> batch = torch.tensor([[2.0]])
        >>> loss = lambda m, x: 0.5 * m(x).pow(2).sum()
        >>> grad = torch.tensor([[4.0]])                 # 4 w
        >>> res = critical_sharpness(model, loss, [batch], [-grad])
        >>> round(res.lambda_c, 1), res.evaluations <= 10
        (4.0, True)
    """
    check.number("rtol", rtol, 0.0, 1.0, low_open=True)
    check.positive_number("eta0", eta0, allow_none=True)
    check.positive_int("max_evaluations", max_evaluations, minimum=4)
    check.positive_number("eta_min", eta_min, allow_none=True)
    _reshard(model)  # FSDP2: the sharded parameters (DTensors) are the ones to move
    params = resolve_params(model, params, require_grad=False)
    batches = check_batches(batches)
    direction = _check_direction(direction, params)
    if eta0 is None:
        w_norm, d_norm = _norm(params), _norm(direction)
        eta0 = 0.01 * w_norm / d_norm if w_norm > 0 else 0.01 / d_norm
    # Sharded parameters (DTensors, as FSDP2 makes them) are moved through their local shards, and the
    # loss is averaged over the processes, so that every process takes the same decisions.
    sharded = any(_sharded(p) for p in params) and torch.distributed.is_initialized()
    start = time.perf_counter()
    etas: list[float] = []
    losses: list[float] = []
    local = [_local(p) for p in params]
    steps = [_local(d) for d in direction]
    if any(_sharded(p) for p in params):  # DTensors or full-shaped tensors: this process's slices
        steps = ShardLayout.of(params).slices(direction)
    with observation(model), WeightPerturbation(local, [steps]) as move:

        def loss_at(eta: float) -> float:
            move.move_to(eta)
            total: Tensor | None = None
            for batch in batches:
                value = loss_fn(model, batch)
                if not isinstance(value, Tensor) or value.numel() != 1:
                    raise ValueError(f"`loss_fn` must return a scalar tensor, got {type(value).__name__}")
                value = value.detach().double().reshape(())
                total = value if total is None else total + value
            assert total is not None
            _reshard(model)
            if sharded:
                torch.distributed.all_reduce(total)
                total = total / torch.distributed.get_world_size()
            etas.append(eta)
            losses.append(float(total) / len(batches))
            return losses[-1]

        base = loss_at(0.0)
        if not math.isfinite(base):
            raise ValueError(f"the loss at the current weights is {base}: no critical sharpness")
        search = _LineSearch(lambda eta: loss_at(eta) - base, rtol, max_evaluations - 1)
        low, high, converged = search.run(float(eta0), eta0 * _SHRINK if eta_min is None else eta_min)
    bracketed = math.isfinite(high)
    eta_c = 0.5 * (low + high) if bracketed else math.inf
    meta = {
        "rtol": rtol,
        "eta0": float(eta0),
        "converged": converged,
        "direction_norm": _norm(direction),
        "seconds": time.perf_counter() - start,
        **probe_meta(batches),
    }
    return CriticalSharpness(
        lambda_c=2.0 / eta_c if bracketed else 0.0,
        eta_c=eta_c,
        bracket=(low, high),
        evaluations=len(etas),
        forward_passes=len(etas) * len(batches),
        etas=np.array(etas, dtype=np.float64),
        losses=np.array(losses, dtype=np.float64),
        loss=base,
        converged=converged,
        bracketed=bracketed,
        meta=meta,
    )


class _LineSearch:
    """The smallest root of ``f(eta) = L(w + eta d) - L(w)`` on ``eta > 0``, through ``h = f / eta``.

    ``f(eta) < 0`` is "down"; anything else (0, positive, NaN, infinite) is "not down".
    """

    def __init__(self, f: Any, rtol: float, budget: int) -> None:
        self.f, self.rtol, self.budget = f, rtol, budget
        self.used = 0

    def h(self, eta: float) -> float:
        self.used += 1
        value = self.f(eta)
        return value / eta if math.isfinite(value) else math.inf

    def run(self, eta0: float, eta_min: float) -> tuple[float, float, bool]:
        """``(low, high, converged)``: ``h(low) < 0 <= h(high)``; ``high = inf`` if never bracketed."""
        rtol = self.rtol
        x, hx = eta0, self.h(eta0)
        previous: tuple[float, float] | None = None
        if hx < 0:  # grow until the loss stops going down
            while hx < 0:
                if self.used >= self.budget or x > eta0 * _GROWTH:
                    return x, math.inf, False
                nxt = 2.0 * x
                if previous is not None and previous[1] < hx:  # h increasing: extrapolate its root
                    root = x - hx * (x - previous[0]) / (hx - previous[1])
                    nxt = min(max(root * (1 + rtol / 2), x * (1 + rtol)), 16.0 * x)
                previous, (x, hx) = (x, hx), (nxt, self.h(nxt))
            assert previous is not None
            low, high = previous, (x, hx)
        else:  # shrink until it goes down
            while not hx < 0:
                if x <= eta_min or self.used >= self.budget:
                    raise ValueError(
                        "`direction`: the loss does not go down along it at any step tried, from "
                        f"eta={eta0:.3g} down to eta={x:.3g}: not a descent direction (for SGD pass minus "
                        "the gradient), or too small a step to change the loss"
                    )
                nxt = x / 4.0
                if previous is not None and math.isfinite(hx) and hx < previous[1]:
                    root = x - hx * (x - previous[0]) / (hx - previous[1])
                    if 0 < root < x:
                        nxt = min(max(root * (1 - rtol / 2), x / 16.0), x / (1 + rtol))
                previous, (x, hx) = (x, hx), (nxt, self.h(nxt))
            assert previous is not None
            low, high = (x, hx), previous
        return self._refine(low, high)

    def _refine(self, low: tuple[float, float], high: tuple[float, float]) -> tuple[float, float, bool]:
        """Illinois regula falsi on ``h`` inside ``[low, high]``, with Brent's safeguards."""
        (a, fa), (b, fb) = low, high  # fa, fb: the values of h the secant uses (Illinois halves them)
        replaced = ""  # which end the last step replaced
        widths = [b - a]
        while b - a > self.rtol * a:
            if self.used >= self.budget:
                return a, b, False
            tol = self.rtol * a
            stalled = len(widths) >= 3 and widths[-1] > 0.5 * widths[-3]
            if math.isfinite(fb) and not stalled:
                x = b - fb * (b - a) / (fb - fa)
            else:
                x = math.sqrt(a * b) if b > 4 * a else 0.5 * (a + b)
            x = min(max(x, a + tol / 2), b - tol / 2)
            hx = self.h(x)
            if hx < 0:
                a, fa = x, hx
                if replaced == "low":  # high kept twice in a row: halve its value (Illinois)
                    fb /= 2
                replaced = "low"
            else:
                b, fb = x, hx
                if replaced == "high":
                    fa /= 2
                replaced = "high"
            widths.append(b - a)
        return a, b, True
