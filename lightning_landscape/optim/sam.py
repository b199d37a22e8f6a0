"""Sharpness-Aware Minimization (SAM / ASAM) usable inside Lightning's automatic optimization."""

from __future__ import annotations

import contextlib
import functools
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import torch
from torch import nn
from torch.optim import Optimizer

from lightning_landscape.functional import checks as check
from lightning_landscape.optim.silence import silenced_logging

__all__ = ["SAM"]

_EPS = 1e-12
_NAMESPACE_ROOTS = (
    "lightning",
    "pytorch_lightning",
)  # lightning.pytorch.LightningModule, pytorch_lightning's

_NO_CLOSURE_MSG = (
    "SAM.step() needs a closure that re-evaluates the loss and runs backward: SAM evaluates the gradient "
    "twice per step (at w and at w + e(w)). This happens when the optimizer is stepped without a closure, "
    "for example by Lightning's `precision='16-mixed'` plugin, whose GradScaler runs the closure itself and "
    "then calls `scaler.step(optimizer)` without one. Ways out: use `precision='bf16-mixed'` (or 32-bit), "
    "which keeps the closure; or use manual optimization (`self.automatic_optimization = False`) and either "
    "pass a closure to `opt.step(closure)` or run the two passes yourself: backward at w, "
    "`sam.perturb()`, zero_grad + backward at w + e, then `opt.step()` (which restores w and applies the "
    "base optimizer; this also works with 16-mixed, the perturbation is invariant to the loss scale)."
)


def _norm_buffers(module: nn.Module) -> list[torch.Tensor]:
    """Running-statistics buffers that a forward pass in train mode would update (BatchNorm/InstanceNorm)."""
    norm_base: type = getattr(nn.modules.batchnorm, "_NormBase", nn.modules.batchnorm._BatchNorm)
    buffers: list[torch.Tensor] = []
    for m in module.modules():
        if isinstance(m, norm_base) and m.training and m.track_running_stats:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                b = getattr(m, name, None)
                if isinstance(b, torch.Tensor):
                    buffers.append(b)
    return buffers


@contextlib.contextmanager
def _frozen_norm_stats(module: nn.Module | None) -> Iterator[None]:
    """Forward passes inside use batch statistics as usual; running stats are put back exactly afterwards."""
    if module is None:
        yield
        return
    buffers = _norm_buffers(module)
    with torch.no_grad():
        saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)


def _is_lightning_module(obj: Any) -> bool:
    """A LightningModule of ``lightning.pytorch`` or of ``pytorch_lightning`` (neither is imported here)."""
    return isinstance(obj, nn.Module) and any(
        cls.__name__ == "LightningModule" and (cls.__module__ or "").split(".")[0] in _NAMESPACE_ROOTS
        for cls in type(obj).__mro__
    )


def _find_lightning_module(obj: Any, depth: int = 0) -> nn.Module | None:
    """Search (nested) ``functools.partial`` objects for a LightningModule argument."""
    if depth > 4 or not isinstance(obj, functools.partial):
        return None
    for arg in (*obj.args, *obj.keywords.values()):
        if _is_lightning_module(arg):
            return arg
    for arg in (*obj.args, *obj.keywords.values()):
        found = _find_lightning_module(arg, depth + 1)
        if found is not None:
            return found
    return _find_lightning_module(obj.func, depth + 1)


_ACCUMULATION_MSG = (
    "SAM does not support `accumulate_grad_batches` > 1 (Trainer(accumulate_grad_batches={n})) with "
    "automatic optimization: the second (perturbed) pass can only re-evaluate the last micro-batch. Use a "
    "larger batch, `accumulate_grad_batches=1`, or manual optimization."
)


def _check_accumulation(lightning_module: Any) -> None:
    """Refuse gradient accumulation under automatic optimization, once the module has a trainer."""
    trainer = getattr(lightning_module, "_trainer", None)
    n = getattr(trainer, "accumulate_grad_batches", 1) if trainer is not None else 1
    if getattr(lightning_module, "automatic_optimization", False) and isinstance(n, int) and n > 1:
        raise RuntimeError(_ACCUMULATION_MSG.format(n=n))


def _is_do_nothing(fn: Any) -> bool:
    return getattr(fn, "__name__", None) == "do_nothing_closure" and "lightning" in getattr(
        fn, "__module__", ""
    )


class SAM(Optimizer):
    r"""Sharpness-Aware Minimization (Foret et al., 2021) and Adaptive SAM (Kwon et al., 2021).

    Each :meth:`step` evaluates the gradient ``g`` at ``w``, moves to the (approximate) worst point of
    the ``rho``-ball, ``w + e(w)``, evaluates the gradient there and applies the *base optimizer* at ``w``
    with that second gradient:

    * SAM: :math:`e(w) = \rho\, g / \lVert g \rVert`
    * ASAM (``adaptive=True``): :math:`e(w) = \rho\, T_w^2 g / \lVert T_w g \rVert` with :math:`T_w = |w|`

    (a ``1e-12`` is added to the norm). The norm runs over all parameters that have a gradient, computed
    per device with ``torch._foreach_norm`` without host synchronisation per parameter. ``w`` is restored
    by copying the saved original values back, so it is bit-exact.

    The base optimizer is constructed on the *same* ``param_groups`` dicts (and SAM's ``state`` is the base
    optimizer's state), so LR schedulers attached to SAM drive the base optimizer, and
    :meth:`state_dict` / :meth:`load_state_dict` round-trip through plain tensors and primitives
    (``torch.load(weights_only=True)`` works). ``rho`` and ``adaptive`` are stored per param group and can be
    overridden per group.

    **Lightning integration.** Lightning's automatic optimization calls ``optimizer.step(closure)`` where
    the closure is ``functools.partial(precision._wrap_closure, lightning_module, optimizer, inner_closure)``
    and ``inner_closure`` runs ``training_step`` + ``zero_grad`` + ``backward``. SAM uses this as follows:

    * **Finding the module.** ``params`` may be an ``nn.Module`` (``SAM(self, torch.optim.SGD, lr=0.1)``):
      its parameters are optimized and the module is remembered (weakly). Otherwise the LightningModule is
      discovered from Lightning's closure ``partial`` at each step, so ``SAM(self.parameters(), ...)`` is
      protected as well. When neither is available (plain params, plain closure), SAM warns once and runs
      without BatchNorm/logging protection.
    * **First pass** runs the inner closure directly (inside ``DistributedDataParallel.no_sync()`` when the
      strategy wraps the model in DDP, so the ascent direction uses local gradients and costs no
      all-reduce).
    * **Second pass** runs Lightning's wrapped closure with an inner closure whose ``self.log`` /
      ``self.log_dict`` are no-ops; so ``on_before_optimizer_step`` and gradient clipping run once, on the
      gradients that the base optimizer actually uses. Running statistics of BatchNorm/InstanceNorm layers
      in train mode are saved before and copied back after the second pass: the second pass normalizes with
      batch statistics exactly like the first one, but buffers (including ``num_batches_tracked``) end up
      as after the first pass only. Lightning's ``Closure`` result is reset to the first pass, so the logged
      loss, the loss returned to the loop and the outputs passed to ``on_train_batch_end`` are those at
      ``w``. Other side effects of ``training_step`` (e.g. updating a torchmetrics object) do happen twice;
      guard them with :attr:`in_second_pass` (``self.optimizers().optimizer.in_second_pass``).
    * ``precision="16-mixed"`` (GradScaler) steps the optimizer without a closure, which raises a
      ``RuntimeError`` pointing to ``bf16-mixed`` or manual optimization. ``accumulate_grad_batches > 1``
      with automatic optimization raises as well (the second pass cannot re-evaluate earlier micro-batches):
      when ``fit`` starts with ``SAM(self, ...)``, at the first step with ``SAM(self.parameters(), ...)``.
    * Manual two-pass use (e.g. manual optimization): backward at ``w``, :meth:`perturb`, zero_grad and
      backward at ``w + e``, then ``step()`` without closure restores ``w`` and applies the base optimizer.

    Args:
        params: an ``nn.Module`` (its parameters are used and the module is remembered), or an iterable of
            parameters / param-group dicts.
        base_optimizer: an optimizer class, e.g. ``torch.optim.SGD``.
        rho: radius of the neighbourhood, finite and > 0.
        adaptive: ``True`` for ASAM.
        **base_kwargs: forwarded to ``base_optimizer``.

    Example::

        >>> import torch
        >>> from lightning_landscape.optim import SAM
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = SAM(model, torch.optim.SGD, rho=0.05, lr=0.1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)  # loss at w (before the update)
        >>> bool(torch.isfinite(loss))
        True

    In a LightningModule: ``def configure_optimizers(self): return SAM(self, torch.optim.SGD, lr=0.1)``.
    """

    def __init__(
        self,
        params: nn.Module | Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        **base_kwargs: Any,
    ) -> None:
        check.positive_number("rho", rho, owner="SAM")
        if not isinstance(adaptive, bool):  # "no" or 0 would read as a choice
            raise ValueError(f"SAM: `adaptive` must be True or False, got {adaptive!r}")
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer)):
            raise TypeError(
                "SAM: `base_optimizer` must be a torch.optim.Optimizer subclass (the class, e.g. "
                f"torch.optim.SGD, not an instance), got {base_optimizer!r}"
            )
        if base_optimizer is SAM or issubclass(base_optimizer, SAM):
            raise TypeError("SAM: `base_optimizer` cannot be SAM itself")
        self._module_ref: weakref.ReferenceType[nn.Module] | None = None
        if isinstance(params, nn.Module):
            self._module_ref = weakref.ref(params)
            if _is_lightning_module(params):  # built in configure_optimizers: refuse when fit starts
                _check_accumulation(params)
            params = [p for p in params.parameters() if p.requires_grad]
        defaults = {"rho": float(rho), "adaptive": adaptive}
        super().__init__(params, defaults)
        for i, group in enumerate(self.param_groups):  # a group may override rho and adaptive
            check.positive_number(f"param_groups[{i}]['rho']", group["rho"], owner="SAM")
            if not isinstance(group["adaptive"], bool):
                raise ValueError(
                    f"SAM: `param_groups[{i}]['adaptive']` must be True or False, got {group['adaptive']!r}"
                )
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        # Share group dicts and state with the base optimizer (schedulers, state_dict, checkpointing).
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults.update(self.base_optimizer.defaults)
        # Mutable per-step state lives in one shared object: Lightning's LightningOptimizer wrapper copies
        # the optimizer's ``__dict__``, so ``self.optimizers().perturb()`` must act on the same state.
        self._sam: dict[str, Any] = {
            "backup": None,  # list of (param, saved value) while perturbed
            "manual_pending": False,  # perturb() called, waiting for a closure-less step()
            "in_second_pass": False,
            "warned": False,
        }

    # ------------------------------------------------------------------ public helpers
    @property
    def in_second_pass(self) -> bool:
        """``True`` while the closure is being evaluated at the perturbed point ``w + e(w)``."""
        return bool(self._sam["in_second_pass"])

    @torch.no_grad()
    def perturb(self) -> None:
        """Ascent step from the current ``.grad``: save ``w`` and set ``w <- w + e(w)`` in place."""
        if self._sam["backup"] is not None:
            raise RuntimeError("SAM.perturb() called twice without restoring the weights in between.")
        with_grad = [(p, group) for group in self.param_groups for p in group["params"] if p.grad is not None]
        self._sam["backup"] = [(p, p.detach().clone()) for p, _ in with_grad]
        self._sam["manual_pending"] = True
        if not with_grad:
            return
        # Norm of (T_w) g over all params, per (device, dtype) with foreach kernels, no host sync.
        buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        for p, group in with_grad:
            v = p.grad.mul(p.abs()) if group["adaptive"] else p.grad
            buckets.setdefault((p.grad.device, p.grad.dtype), []).append(v)
        target = with_grad[0][0].device
        partial_norms = [
            torch.linalg.vector_norm(torch.stack(torch._foreach_norm(ts)).float()).to(target)
            for ts in buckets.values()
        ]
        norm = (
            torch.linalg.vector_norm(torch.stack(partial_norms))
            if len(partial_norms) > 1
            else partial_norms[0]
        )
        denom = norm + _EPS
        scales: dict[tuple[torch.device, float], torch.Tensor] = {}
        for p, group in with_grad:
            key = (p.device, group["rho"])
            if key not in scales:
                scales[key] = (group["rho"] / denom).to(p.device)
            e = p.grad * scales[key]
            if group["adaptive"]:
                e = e * p * p
            p.add_(e)

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the weights saved by :meth:`perturb` back (bit-exact). No-op when not perturbed."""
        backup = self._sam["backup"]
        if backup is None:
            return
        for p, saved in backup:
            p.copy_(saved)
        self._sam["backup"] = None

    # ------------------------------------------------------------------ step
    def _base_step(self) -> None:
        self.base_optimizer.step()

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One SAM step. ``closure`` must zero the gradients, compute the loss, backward, return the loss.

        Returns the loss at ``w`` (the first closure evaluation).
        """
        lightning_closure = (
            isinstance(closure, functools.partial)
            and getattr(closure.func, "__name__", None) == "_wrap_closure"
            and len(closure.args) == 3
            and _is_lightning_module(closure.args[0])
        )
        # Read only where ``lightning_closure`` holds (a flag that mypy cannot narrow through).
        wrapped = cast("functools.partial[Any]", closure)
        inner: Any = wrapped.args[2] if lightning_closure else closure
        if closure is None or inner is None or _is_do_nothing(inner):
            if not self._sam["manual_pending"]:
                raise RuntimeError(_NO_CLOSURE_MSG)
            if closure is not None:
                closure()  # Lightning hooks / clipping on the gradients at w + e
            self.restore()
            self._sam["manual_pending"] = False
            self._base_step()
            return None

        lightning_module = wrapped.args[0] if lightning_closure else _find_lightning_module(closure)
        own_module = self._module_ref() if self._module_ref is not None else None
        if lightning_module is None and own_module is not None and _is_lightning_module(own_module):
            lightning_module = own_module
        bn_module = lightning_module if lightning_module is not None else own_module
        if bn_module is None and not self._sam["warned"]:
            self._sam["warned"] = True
            warnings.warn(
                "SAM could not find the model (pass the nn.Module as `params`, or step inside Lightning): "
                "BatchNorm running statistics will also be updated by the second (perturbed) pass and "
                "logging is not silenced during it.",
                UserWarning,
                stacklevel=2,
            )

        ddp_model = None
        trainer = getattr(lightning_module, "_trainer", None) if lightning_module is not None else None
        if trainer is not None:
            _check_accumulation(lightning_module)  # SAM(self.parameters()) sees the trainer only here
            strategy_model = getattr(getattr(trainer, "strategy", None), "model", None)
            if isinstance(strategy_model, nn.parallel.DistributedDataParallel):
                ddp_model = strategy_model

        # (1) gradient at w (local gradients only under DDP)
        sync_ctx = ddp_model.no_sync() if ddp_model is not None else contextlib.nullcontext()
        with torch.enable_grad(), sync_ctx:
            loss = inner()
        first_result = getattr(inner, "_result", None)

        # (2) w <- w + e(w)
        self.restore()
        self.perturb()
        if not self._sam["backup"]:  # no gradients (e.g. training_step returned None): plain step
            self._sam["backup"] = None
            self._sam["manual_pending"] = False
            self._base_step()
            return loss
        try:
            # (3) gradient at w + e
            self.zero_grad(set_to_none=True)
            self._sam["in_second_pass"] = True

            def silent_inner() -> Any:
                with silenced_logging(lightning_module):
                    return inner()

            with _frozen_norm_stats(bn_module), torch.enable_grad():
                if lightning_closure:
                    wrapped.func(wrapped.args[0], wrapped.args[1], silent_inner, **wrapped.keywords)
                else:
                    silent_inner()
        finally:
            self._sam["in_second_pass"] = False
            if first_result is not None:
                inner._result = first_result
            # (4) exact restore of w
            self.restore()
            self._sam["manual_pending"] = False
        # (5) base update at w with the gradient from w + e
        self._base_step()
        return loss

    # ------------------------------------------------------------------ state
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_module_ref"] = None  # weak references cannot be pickled / deep-copied
        state["_sam"] = {**self._sam, "backup": None, "manual_pending": False}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load into the base optimizer (its state is SAM's state) and re-share the param groups."""
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
