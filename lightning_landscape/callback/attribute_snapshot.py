"""Snapshot and restore of a module tree's Python attributes: the machinery under ``ModuleStateGuard``."""

from __future__ import annotations

import collections
import enum
import functools
import random
import types
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["DEFAULT_MAX_COPY_BYTES", "SavedAttributes", "snapshot_attributes"]

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
DEFAULT_MAX_COPY_BYTES = 64 * 2**20

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


class SavedAttributes:
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


def snapshot_attributes(module: nn.Module, max_copy_bytes: int) -> list[SavedAttributes]:
    """The saved state of the module, its submodules and the modules held in their attributes."""
    out: list[SavedAttributes] = []
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [("self", module)]
    while stack:
        path, m = stack.pop()
        if id(m) not in seen:
            seen.add(id(m))
            out.append(SavedAttributes(path, m, max_copy_bytes, stack))
    return out
