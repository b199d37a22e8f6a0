"""Which parameters a landscape is about, and how to move them and put them back exactly.

A *direction* in weight space is a ``list[Tensor]`` aligned with the chosen parameters: one tensor
per parameter, same shape. That one representation is used everywhere in the core; flat vectors
appear only where linear algebra over the whole space needs them (trajectory PCA).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

Direction = list[Tensor]
LossFn = Callable[[nn.Module, Any], Tensor]

__all__ = [
    "Direction",
    "LossFn",
    "WeightPerturbation",
    "flatten",
    "landscape_parameters",
    "normalize_filters",
    "observation",
    "parameters_restored",
    "preserved_random_state",
    "unflatten",
    "work_dtype",
]


def landscape_parameters(
    model: nn.Module,
    include_frozen: bool = False,
    names: Sequence[str] | None = None,
) -> list[tuple[str, nn.Parameter]]:
    """The parameters a landscape is about: trainable floating-point ones by default.

    Tied parameters appear once (``named_parameters`` de-duplicates by identity).

    Args:
        model: the module.
        include_frozen: also take parameters with ``requires_grad=False``.
        names: take exactly these parameter names (each must exist) instead of the default rule.

    Example::

        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> [name for name, _ in landscape_parameters(net)]
        ['0.weight', '0.bias', '2.weight', '2.bias']
    """
    named = dict(model.named_parameters())
    if names is not None:
        missing = [n for n in names if n not in named]
        if missing:
            raise ValueError(f"`names`: no parameters called {missing} in {type(model).__name__}")
        chosen = [(n, named[n]) for n in names]
    else:
        chosen = [
            (n, p) for n, p in named.items() if p.is_floating_point() and (include_frozen or p.requires_grad)
        ]
    if not chosen:
        raise ValueError(
            f"{type(model).__name__} has no trainable floating-point parameters to draw a landscape of"
        )
    return chosen


def work_dtype(t: Tensor | torch.dtype) -> torch.dtype:
    """float64 for float64 tensors, float32 for everything else (bf16/fp16 included)."""
    dtype = t if isinstance(t, torch.dtype) else t.dtype
    return torch.float64 if dtype == torch.float64 else torch.float32


def flatten(tensors: Sequence[Tensor], dtype: torch.dtype | None = None, device: Any = None) -> Tensor:
    """Concatenate tensors into one flat vector (a copy), optionally cast and moved."""
    return torch.cat([t.detach().reshape(-1).to(device=device, dtype=dtype) for t in tensors])


def unflatten(vector: Tensor, like: Sequence[Tensor], *, dtype: torch.dtype | None = None) -> Direction:
    """Split a flat vector into tensors shaped and placed like ``like``, typed like it or as ``dtype``.

    Pass ``dtype=torch.float32`` to keep a direction in float32 for bf16/fp16 parameters.
    """
    out: Direction = []
    offset = 0
    for t in like:
        n = t.numel()
        chunk = vector[offset : offset + n].view(t.shape)
        out.append(chunk.to(device=t.device, dtype=t.dtype if dtype is None else dtype))
        offset += n
    if offset != vector.numel():
        raise ValueError(f"vector has {vector.numel()} elements, the parameters have {offset}")
    return out


class WeightPerturbation:
    """Moves parameters to ``w0 + sum_k c_k d_k`` in place and restores ``w0`` bit for bit.

    The original values are saved once; every point starts from a copy of them (never from
    accumulated additions), so no rounding error builds up across a grid, and ``restore`` copies the
    saved values back exactly. Directions are cast to each parameter's dtype and device once.

    Example::

        >>> lin = nn.Linear(2, 1)
        >>> params = [p for _, p in landscape_parameters(lin)]
        >>> before = [p.detach().clone() for p in params]
        >>> with WeightPerturbation(params, [[torch.ones_like(p) for p in params]]) as move:
        ...     move.move_to(0.5)
        ...     bool(torch.equal(lin.bias, before[1] + 0.5))
        True
        >>> all(torch.equal(p, b) for p, b in zip(params, before))
        True
    """

    def __init__(self, params: Sequence[Tensor], directions: Sequence[Sequence[Tensor]]) -> None:
        self.params = list(params)
        for k, d in enumerate(directions):
            if len(d) != len(self.params):
                raise ValueError(
                    f"direction {k} has {len(d)} tensors, expected one per parameter ({len(self.params)})"
                )
            for t, p in zip(d, self.params):
                if t.shape != p.shape:
                    raise ValueError(
                        f"direction {k}: a tensor of shape {tuple(t.shape)} for a "
                        f"parameter of shape {tuple(p.shape)}"
                    )
        self.directions = [
            [t.detach().to(device=p.device, dtype=p.dtype) for t, p in zip(d, self.params)]
            for d in directions
        ]
        self._saved: list[Tensor] | None = None

    def __enter__(self) -> WeightPerturbation:
        with torch.no_grad():
            self._saved = [p.detach().clone() for p in self.params]
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    @torch.no_grad()
    def move_to(self, *coefficients: float) -> None:
        """Set the parameters to ``w0 + sum_k coefficients[k] * directions[k]``."""
        if self._saved is None:
            raise RuntimeError("WeightPerturbation.move_to() outside its `with` block")
        if len(coefficients) != len(self.directions):
            raise ValueError(f"{len(coefficients)} coefficients for {len(self.directions)} directions")
        torch._foreach_copy_(self.params, self._saved)
        for c, d in zip(coefficients, self.directions):
            if c != 0.0:
                torch._foreach_add_(self.params, d, alpha=float(c))

    @torch.no_grad()
    def restore(self) -> None:
        """Put the saved weights back, bit for bit."""
        if self._saved is not None:
            torch._foreach_copy_(self.params, self._saved)


@contextlib.contextmanager
def preserved_random_state(
    devices: Sequence[torch.device | str | int] = (), generators: Sequence[torch.Generator] = ()
) -> Iterator[None]:
    """Run a block and give back every random state it may draw from.

    Restores Python's ``random``, NumPy's global state, torch's CPU state and that of the CUDA
    ``devices``, and each of ``generators`` (a DataLoader's own generator, say).
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    gen_states = [(g, g.get_state()) for g in generators]
    with torch.random.fork_rng(devices=list(devices)):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            for g, state in gen_states:
                g.set_state(state)


# id(model) -> how many blocks of parameters_restored() are open on it (the outermost keeps the copy)
_RESTORING: dict[int, int] = {}


@contextlib.contextmanager
def parameters_restored(model: nn.Module) -> Iterator[None]:
    """Run a block and put every parameter of ``model`` back afterwards, bit for bit.

    One copy of the parameters at entry, copied back at exit whether or not they changed: a change
    through ``p.data`` (``p.data.add_(1)``) does not show in ``p._version``, so no cheaper test is safe.
    Blocks nest: inside another block on the same model nothing more is copied, and the outermost one
    puts the parameters back (the callback opens one around each computation, so its observations
    cost no second copy).

    Example::

        >>> lin = nn.Linear(2, 1)
        >>> before = lin.weight.detach().clone()
        >>> with parameters_restored(lin):
        ...     _ = lin.weight.data.add_(1.0)
        >>> bool(torch.equal(lin.weight, before))
        True
    """
    key = id(model)
    outermost = key not in _RESTORING
    saved: list[tuple[Tensor, Tensor]] = []
    if outermost:
        with torch.no_grad():
            saved = [(p, p.detach().clone()) for p in model.parameters()]
    _RESTORING[key] = _RESTORING.get(key, 0) + 1
    try:
        yield
    finally:
        _RESTORING[key] -= 1
        if outermost:
            del _RESTORING[key]
            with torch.no_grad():
                for p, value in saved:
                    p.copy_(value)


@contextlib.contextmanager
def observation(model: nn.Module, generators: Sequence[torch.Generator] = ()) -> Iterator[None]:
    """Look at a model without changing it: eval mode, ``no_grad``, and everything restored after.

    Restores the train/eval flag of every submodule, every parameter (a ``loss_fn`` may change them in
    place, even take an optimizer step; see :func:`parameters_restored`), every buffer (BatchNorm
    running statistics, counters) and every random state (see :func:`preserved_random_state`), so that
    training after the observation is bit-identical to training without it.
    """
    modes = {m: m.training for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = [d for d in {p.device for p in model.parameters()} if d.type == "cuda"]
    with preserved_random_state(devices, generators), parameters_restored(model), torch.no_grad():
        model.eval()
        try:
            yield
        finally:
            for m, mode in modes.items():
                m.training = mode
            for b, saved in buffers:
                b.copy_(saved)


FILTER_EPS = 1e-10  # keeps an all-zero filter of the direction at zero


def normalize_filters(
    direction: Sequence[Tensor],
    params: Sequence[Tensor],
    include_1d: bool,
    norms_1d: Callable[[int, Tensor, Tensor], tuple[Any, Any]],
) -> Direction:
    """Each filter (row) of ``direction`` rescaled to the norm of the same row of ``params`` (Li et al.,
    2018); a 1-d tensor (bias, norm weight) rescaled as a whole by ``norms_1d(i, p, d) -> (|p|, |d|)``
    with ``include_1d``, else zeroed. The arithmetic of :func:`~.directions.filter_normalize` (whole
    parameters: ``norms_1d`` their norms) and of its sharded form (rows are whole on one process, 1-d
    norms summed over the processes), in float64 when either side is."""
    out: Direction = []
    for i, (d, p) in enumerate(zip(direction, params, strict=True)):
        dtype = torch.float64 if torch.float64 in (d.dtype, p.dtype) else torch.float32
        d = d.detach().to(dtype)
        q = p.detach().to(device=d.device, dtype=dtype)
        if q.dim() <= 1:
            if include_1d:
                p_norm, d_norm = norms_1d(i, q, d)
                out.append(d * (p_norm / (d_norm + FILTER_EPS)))
            else:
                out.append(torch.zeros_like(d))
            continue
        dims = tuple(range(1, q.dim()))
        p_norm = torch.linalg.vector_norm(q, dim=dims, keepdim=True)
        d_norm = torch.linalg.vector_norm(d, dim=dims, keepdim=True)
        out.append(d * (p_norm / (d_norm + FILTER_EPS)))
    return out
