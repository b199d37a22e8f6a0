"""Observing leaves the module's Python-level state as it was: attributes, containers, torchmetrics states.

By default the callback evaluates the loss through ``training_step``, hundreds of times per landscape. A
``training_step`` that appends to ``self.outs``, updates ``self.train_acc`` (a torchmetrics ``Metric``) or
counts ``self.calls += 1`` would otherwise corrupt the user's own epoch numbers. :class:`ModuleStateGuard`
snapshots, for the module and every submodule, each attribute in ``__dict__`` and puts it back on exit:

* every attribute is rebound to the object it held (attributes added inside are removed, removed ones
  come back), so ints, floats, strings and tuples come back by value;
* lists, dicts, sets, deques and bytearrays (subclasses too: ``OrderedDict``, ``defaultdict``, Lightning's
  ``AttributeDict``, and ``nn.Module``'s own ``_parameters`` / ``_modules`` / hook dicts) are copied
  shallowly and restored *in place*, so references held elsewhere stay valid;
* tensors (not parameters or buffers: those the core restores) and NumPy arrays up to ``max_copy_bytes``
  are copied and written back by value (in-place ``+=`` is undone); torchmetrics ``Metric`` states
  whatever their size; random generators (``torch.Generator``, NumPy, ``random.Random``) by their state;
* unregistered modules held in attributes (``self.metrics = [Accuracy()]``) are walked like submodules.

What it cannot undo it detects: a custom object whose attributes changed (a cheap fingerprint: identity
of each attribute value, the length of container values, the version counter of tensor values) or a
tensor too large to copy that was changed in place. :meth:`ModuleStateGuard.check` lists them, with the
attribute's path (``self.history (a Tracker)``); :attr:`ModuleStateGuard.unrestorable` holds them after
exit. With ``watch="training_step"`` the check runs after the method's first call inside the guard and
raises :class:`UnrestorableStateError` (the guard suppresses it on exit, after restoring), so at most one
call's worth of damage is done. The snapshot itself (per type: rebind, copy, fingerprint) is in
``_attr_snapshot``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

from torch import nn

from lightning_landscape.callback.attribute_snapshot import (
    DEFAULT_MAX_COPY_BYTES,
    SavedAttributes,
    snapshot_attributes,
)

__all__ = ["ModuleStateGuard", "ModuleStateKeeper", "UnrestorableStateError", "preserved_module_state"]


class UnrestorableStateError(RuntimeError):
    """A watched call changed module state that cannot be put back (see ``ModuleStateGuard.check``)."""


class ModuleStateGuard:
    """Save a module's Python-level state on entry and put it back on exit; report what cannot be.

    Args:
        module: the module (a ``LightningModule`` or any ``nn.Module``); its submodules are included.
        watch: name of a method (``"training_step"``) to check after its first call inside the guard:
            if it changed state that cannot be restored, :class:`UnrestorableStateError` is raised there
            and suppressed on exit (after restoring), leaving the description in :attr:`unrestorable`.
        max_copy_bytes: tensors and arrays up to this size are copied and restored by value; larger ones
            are watched through their version counter (torchmetrics states are always copied).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> class Net(nn.Linear):
        ...     def __init__(self):
        ...         super().__init__(2, 1)
        ...         self.outs, self.calls, self.total = [], 0, torch.zeros(())
        ...     def training_step(self, x):
        ...         loss = self(x).pow(2).mean()
        ...         self.outs.append(loss.detach()); self.calls += 1; self.total += loss.detach()
        ...         return loss
        >>> net = Net()
        >>> outs = net.outs
        >>> with ModuleStateGuard(net, watch="training_step") as guard:
        ...     _ = [net.training_step(torch.ones(3, 2)) for _ in range(5)]
        >>> net.outs is outs, net.outs, net.calls, float(net.total), guard.unrestorable
        (True, [], 0, 0.0, [])
    """

    def __init__(
        self, module: nn.Module, watch: str | None = None, max_copy_bytes: int = DEFAULT_MAX_COPY_BYTES
    ) -> None:
        if not isinstance(module, nn.Module):
            raise ValueError(f"`module` must be an nn.Module, got {type(module).__name__}")
        if watch is not None and not callable(getattr(module, watch, None)):
            raise ValueError(f"`watch` must name a method of the module, got {watch!r}")
        self.module = module
        self.watch = watch
        self.max_copy_bytes = int(max_copy_bytes)
        self.unrestorable: list[str] = []
        self._saved: list[SavedAttributes] = []
        self._raised: UnrestorableStateError | None = None

    def __enter__(self) -> ModuleStateGuard:
        self.unrestorable, self._raised = [], None
        self._saved = snapshot_attributes(self.module, self.max_copy_bytes)
        if self.watch is not None:
            self._install_watch(self.watch)
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        try:
            self.check()  # before restoring: the fingerprints compare against the live objects
        finally:
            for saved in self._saved:
                saved.restore()  # also removes the watch wrapper (an attribute added inside)
        return exc is not None and exc is self._raised  # only the watch's own error is swallowed

    def check(self) -> list[str]:
        """Each change since entry that restoring cannot undo (also kept in ``unrestorable``)."""
        for saved in self._saved:
            for change in saved.changes():
                if change not in self.unrestorable:
                    self.unrestorable.append(change)
        return list(self.unrestorable)

    def _install_watch(self, name: str) -> None:
        method = getattr(self.module, name)
        calls = 0

        @functools.wraps(method)
        def watched(*args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            if self._raised is not None:  # sticky: a caller that swallowed it (a fallback) gets it again
                raise self._raised
            out = method(*args, **kwargs)
            calls += 1
            if calls == 1 and self.check():
                self._raised = UnrestorableStateError(
                    f"{name} changed {', '.join(self.unrestorable)} in a way that cannot be undone"
                )
                raise self._raised
            return out

        object.__setattr__(self.module, name, watched)  # an instance attribute shadowing the method


@contextlib.contextmanager
def preserved_module_state(module: nn.Module, watch: str | None = None) -> Iterator[ModuleStateGuard]:
    """``with preserved_module_state(model) as guard:``; the functional spelling of :class:`ModuleStateGuard`.

    Example::

        >>> net = nn.Linear(2, 2)
        >>> net.seen = {"a"}
        >>> with preserved_module_state(net):
        ...     net.seen.add("b"); net.extra = 3.0
        >>> net.seen, hasattr(net, "extra")
        ({'a'}, False)
    """
    with ModuleStateGuard(module, watch=watch) as guard:
        yield guard


class ModuleStateKeeper:
    """The callback's policy around each computation: guard the module, warn once, stop if it must.

    One keeper per callback; :meth:`reset` at the start of each ``fit``. :meth:`run` calls ``fn`` inside a
    :class:`ModuleStateGuard` (watching ``training_step`` when the loss comes from it). If the module was
    changed in a way that cannot be restored (on any rank: one all-reduce keeps the ranks' schedules
    identical), it warns once naming the attributes; when the loss comes from ``training_step`` it stops
    calling it for the rest of the run: later :meth:`run` calls do nothing.

    Example::

        >>> keeper = ModuleStateKeeper()
        >>> net = nn.Linear(2, 2)
        >>> net.outs = []
        >>> keeper.run(None, net, False, lambda: net.outs.append(1))
        >>> net.outs, keeper.stopped
        ([], None)
    """

    def __init__(self) -> None:
        self.stopped: str | None = None  # why training_step is no longer called in this run
        self._warned = False

    def reset(self) -> None:
        """Forget a previous run's verdict (a new ``fit``)."""
        self.stopped, self._warned = None, False

    def run(
        self, trainer: Any, module: nn.Module, uses_training_step: bool, fn: Any, *args: Any, **kwargs: Any
    ) -> None:
        """``fn(*args, **kwargs)`` with ``module``'s Python state restored after it (errors propagate)."""
        if self.stopped is not None and uses_training_step:
            return
        watch = (
            "training_step"
            if uses_training_step and callable(getattr(module, "training_step", None))
            else None
        )
        guard = ModuleStateGuard(module, watch=watch)
        error: Exception | None = None
        try:
            with guard:
                fn(*args, **kwargs)
        except Exception as err:  # after the collective below, so that every rank reaches it
            error = err
        broken = bool(guard.unrestorable)
        if trainer is not None and getattr(trainer, "world_size", 1) > 1:
            from lightning_landscape.callback.distributed import agree

            broken = not agree(trainer, not broken)
        if broken:
            self._warn(guard.unrestorable, uses_training_step)
        if error is not None:
            raise error

    def _warn(self, changes: list[str], uses_training_step: bool) -> None:
        from lightning_utilities.core.rank_zero import rank_zero_warn

        what = ", ".join(changes) or "the module (on another rank)"
        if uses_training_step:
            self.stopped = what
            message = (
                f"LossLandscapeCallback: training_step changed {what} in a way that cannot be undone, so the "
                "callback stops calling training_step for this run (no further landscapes or metrics). Pass "
                "`LossLandscapeCallback(loss_fn=lambda model, batch: ...)` returning the loss without side "
                "effects."
            )
        else:
            message = (
                f"LossLandscapeCallback: loss_fn changed {what} in a way that cannot be undone; make "
                "`loss_fn` free of side effects on the module."
            )
        if not self._warned:
            self._warned = True
            rank_zero_warn(message, category=RuntimeWarning)
