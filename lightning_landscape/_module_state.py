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
call's worth of damage is done.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import functools
import random
import types
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["ModuleStateGuard", "ModuleStateKeeper", "UnrestorableStateError", "preserved_module_state"]

_IMMUTABLE: tuple[type, ...] = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    tuple,
    frozenset,
    range,
    torch.dtype,
)
_IMMUTABLE += (torch.device, torch.Size, enum.Enum, type)
_CALLABLES = (types.FunctionType, types.MethodType, types.BuiltinFunctionType, functools.partial)
_RNGS = (torch.Generator, np.random.Generator, np.random.RandomState, random.Random)
# Framework objects a training_step does not change (and whose internals move on their own).
_OPAQUE_KEYS = frozenset({"_trainer", "_fabric", "trainer", "fabric"})
_OPAQUE_MODULES = ("lightning", "pytorch_lightning", "lightning_fabric", "lightning_landscape", "torch")
_NO_MODULES_INSIDE = frozenset({"_parameters", "_buffers", "_modules"})
_DEFAULT_MAX_COPY_BYTES = 64 * 2**20

# What to do with a value, decided once per type (a module has ~20 attributes; a model thousands of them).
_KEEP, _MODULE, _TENSOR, _ARRAY, _DICT, _LIST, _SET, _DEQUE, _RNG, _OBJECT = range(10)
_KINDS: dict[type, int] = {}
_EMPTY: list[Any] = []  # the shallow copy of every empty container (never modified)


def _kind(tp: type) -> int:
    kind = _KINDS.get(tp)
    if kind is None:
        kind = _KINDS[tp] = _classify(tp)
    return kind


def _classify(tp: type) -> int:
    if issubclass(tp, (*_IMMUTABLE, nn.Parameter, *_CALLABLES)):  # parameters: the core restores them
        return _KEEP
    for base, kind in (
        (nn.Module, _MODULE),
        (Tensor, _TENSOR),
        (np.ndarray, _ARRAY),
        (dict, _DICT),
        ((list, bytearray), _LIST),
        (set, _SET),
        (collections.deque, _DEQUE),
        (_RNGS, _RNG),
    ):
        if issubclass(tp, base):
            return kind
    if (tp.__module__ or "").split(".")[0] in _OPAQUE_MODULES:
        return _KEEP
    return _OBJECT


class UnrestorableStateError(RuntimeError):
    """A watched call changed module state that cannot be put back (see ``ModuleStateGuard.check``)."""


def _is_metric(obj: Any) -> bool:
    """A torchmetrics ``Metric`` (recognised by its state registry: torchmetrics need not be imported)."""
    attrs = obj.__dict__
    return isinstance(attrs.get("_defaults"), dict) and isinstance(attrs.get("_reductions"), dict)


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of {value.numel() * value.element_size() / 2**20:.0f} MiB"
    name = type(value).__name__
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def _token(value: Any) -> Any:
    """What identifies a value cheaply: scalars by value, tensors by identity and version, others by id."""
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, (type(None), bool, int, str, bytes)):
        return (type(value), value)
    if isinstance(value, Tensor):
        return ("tensor", id(value), _version(value))
    if isinstance(value, (list, dict, set, collections.deque, bytearray)):
        return ("container", id(value), len(value))
    return ("object", id(value))


def _version(t: Tensor) -> int | None:
    try:
        return int(t._version)
    except (RuntimeError, AttributeError):  # inference tensors have no version counter
        return None


def _fingerprint(obj: Any) -> dict[str, Any] | None:
    """Tokens of a custom object's attributes; None when it has no ``__dict__`` to look at."""
    attrs = getattr(obj, "__dict__", None)
    if not isinstance(attrs, dict):
        return None
    try:
        return {k: _token(v) for k, v in list(attrs.items())}
    except Exception:  # a property-backed __dict__ or an exotic object: nothing to compare
        return None


def _rng_state(value: Any) -> Any:
    if isinstance(value, torch.Generator):
        return value.get_state()
    if isinstance(value, np.random.Generator):
        return value.bit_generator.state
    return value.getstate() if isinstance(value, random.Random) else value.get_state()


def _set_rng_state(value: Any, state: Any) -> None:
    if isinstance(value, torch.Generator):
        value.set_state(state)
    elif isinstance(value, np.random.Generator):
        value.bit_generator.state = state
    elif isinstance(value, random.Random):
        value.setstate(state)
    else:
        value.set_state(state)


class _Saved:
    """One object's ``__dict__``: the bindings, plus how to restore each mutable value.

    Modules found on the way (registered, or held in attributes and containers) go onto ``stack``.
    """

    def __init__(self, path: str, obj: Any, max_copy_bytes: int, stack: list[tuple[str, Any]]) -> None:
        self.path, self.obj = path, obj
        self.bindings = bindings = obj.__dict__.copy()
        metric = _is_metric(obj)
        self.containers: list[tuple[Any, int, list[Any]]] = []  # (container, kind, shallow copy)
        self.copies: list[tuple[str, Any, Any]] = []  # (key, tensor or array, copy): restored by value
        self.rng: list[tuple[Any, Any]] = []  # (generator, state)
        self.versions: list[tuple[str, Tensor, int]] = []  # tensors too large to copy: watched
        self.fingerprints: list[tuple[str, Any, dict[str, Any]]] = []  # custom objects: watched
        for key, value in bindings.items():
            kind = _KINDS.get(type(value))
            if kind is None:
                kind = _kind(type(value))
            if kind == _KEEP:
                if type(value) is tuple and value:
                    _push_modules(stack, f"{path}.{key}", enumerate(value))
            elif kind == _MODULE:
                if key not in _OPAQUE_KEYS:
                    stack.append((f"{path}.{key}", value))
            elif kind >= _DICT and kind <= _DEQUE:
                # Most are a module's empty hook dicts: nothing to copy, only to empty again.
                saved = _EMPTY if not value else list(value.items()) if kind == _DICT else list(value)
                self.containers.append((value, kind, saved))
                if key == "_modules":
                    stack.extend((f"{path}.{name}", m) for name, m in saved if m is not None)
                elif key not in _NO_MODULES_INSIDE and saved and kind != _SET:
                    _push_modules(stack, f"{path}.{key}", saved if kind == _DICT else enumerate(saved))
            elif kind == _TENSOR:
                if metric or value.numel() * value.element_size() <= max_copy_bytes:
                    with torch.no_grad():
                        self.copies.append((key, value, value.detach().clone()))
                else:
                    version = _version(value)
                    if version is not None:
                        self.versions.append((key, value, version))
            elif kind == _ARRAY:
                if metric or value.nbytes <= max_copy_bytes:
                    self.copies.append((key, value, value.copy()))
            elif kind == _RNG:
                self.rng.append((value, _rng_state(value)))
            elif key not in _OPAQUE_KEYS:  # _OBJECT
                fp = _fingerprint(value)
                if fp is not None:
                    self.fingerprints.append((key, value, fp))

    def changes(self) -> list[str]:
        """What changed that restoring cannot undo."""
        out = []
        for key, value, fp in self.fingerprints:
            if _fingerprint(value) != fp:
                out.append(f"`{self.path}.{key}` ({_describe(value)})")
        for key, value, version in self.versions:
            if _version(value) != version:
                out.append(
                    f"`{self.path}.{key}` ({_describe(value)}, changed in place and too large to copy)"
                )
        return out

    def restore(self) -> None:
        attrs, bindings = self.obj.__dict__, self.bindings
        if attrs.keys() != bindings.keys():
            for key in [k for k in attrs if k not in bindings]:
                del attrs[key]
        attrs.update(bindings)  # straight into __dict__: no __setattr__ side effects (Metric consts)
        for value, kind, saved in self.containers:
            if not saved and not value:
                continue
            if kind == _DICT:
                value.clear()
                value.update(saved)
            elif kind == _LIST:
                value[:] = saved
            elif kind == _SET:
                value.clear()
                value.update(saved)
            else:  # a deque keeps its maxlen
                value.clear()
                value.extend(saved)
        for key, value, saved in self.copies:
            if isinstance(value, Tensor):
                with torch.no_grad():
                    if value.shape == saved.shape and value.dtype == saved.dtype:
                        value.copy_(saved)
                    else:  # resized in place: give the attribute the saved copy itself
                        attrs[key] = saved
            elif value.shape == saved.shape and value.dtype == saved.dtype and value.flags.writeable:
                np.copyto(value, saved)
            else:
                attrs[key] = saved
        for value, state in self.rng:
            _set_rng_state(value, state)


def _push_modules(stack: list[tuple[str, Any]], path: str, items: Any) -> None:
    """Modules held unregistered in a container (``self.metrics = [Accuracy()]``) are walked too."""
    for k, v in items:
        if _KINDS.get(type(v)) == _MODULE or (type(v) not in _KINDS and _kind(type(v)) == _MODULE):
            stack.append((f"{path}[{k!r}]", v))


def _snapshot(module: nn.Module, max_copy_bytes: int) -> list[_Saved]:
    """The saved state of the module, its submodules and the modules held in their attributes."""
    out: list[_Saved] = []
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("self", module)]
    while stack:
        path, m = stack.pop()
        if id(m) not in seen:
            seen.add(id(m))
            out.append(_Saved(path, m, max_copy_bytes, stack))
    return out


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
        self, module: nn.Module, watch: str | None = None, max_copy_bytes: int = _DEFAULT_MAX_COPY_BYTES
    ) -> None:
        if not isinstance(module, nn.Module):
            raise ValueError(f"`module` must be an nn.Module, got {type(module).__name__}")
        if watch is not None and not callable(getattr(module, watch, None)):
            raise ValueError(f"`watch` must name a method of the module, got {watch!r}")
        self.module = module
        self.watch = watch
        self.max_copy_bytes = int(max_copy_bytes)
        self.unrestorable: list[str] = []
        self._saved: list[_Saved] = []
        self._raised: UnrestorableStateError | None = None

    def __enter__(self) -> ModuleStateGuard:
        self.unrestorable, self._raised = [], None
        self._saved = _snapshot(self.module, self.max_copy_bytes)
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
            from lightning_landscape.distributed import agree

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
