"""Parameters that are shards: each process holds a slice of every parameter (FSDP2's ``fully_shard``).

A sharded model's parameters are ``DTensor``s; ``p.to_local()`` is a *view* of this process's slice (FSDP2
all-gathers the full parameter from that storage before each forward, and the optimizer updates it in
place). :class:`ShardLayout` describes them: the views, where each slice sits in its full parameter, and
the sum over processes. With it, a direction is a list of local slices aligned with the views, and
everything in the core that moves parameters in place (:class:`~.params.WeightPerturbation`) works on the
views unchanged; what needs the whole vector (norms, dot products, the trajectory's Gram matrix) takes
local sums and adds them over processes (:meth:`ShardLayout.all_reduce`).

Supported placements: ``Shard(0)`` (FSDP2's, on a one-dimensional data-parallel mesh) and ``Replicate``.
Anything else (tensor parallelism's ``Shard(1)``, two-dimensional meshes) is refused with a ValueError.

Random directions are the same whatever the sharding and the number of processes: every process draws each
*full* parameter in turn from the one seeded CPU generator (exactly the draws of
:func:`~.directions.filter_normalized_directions` on the unsharded model) and keeps its slice. The cost:
each process draws every parameter once, one parameter at a time (transient memory: the largest
parameter), and no communication. Filters (slices along dimension 0) never span two processes under
``Shard(0)``, so their norms are local; a one-dimensional parameter normalized as a whole
(``include_1d``) takes its norm across processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_landscape.functional import checks as check
from lightning_landscape.functional.landscape.params import Direction, LossFn, normalize_filters, work_dtype

__all__ = [
    "ShardLayout",
    "fsdp_modules",
    "is_sharded",
    "resharding",
    "sharded_filter_normalize",
    "sharded_filter_normalized_directions",
    "sharded_random_direction",
]


AllReduce = Callable[[Tensor], Tensor]


def _is_dtensor(t: Tensor) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def is_sharded(params: Sequence[Tensor]) -> bool:
    """Whether any of ``params`` is a ``DTensor`` (a parameter whose processes each hold a slice)."""
    return any(_is_dtensor(p) for p in params)


def fsdp_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` that FSDP2's ``fully_shard`` was applied to (they ``unshard`` and ``reshard``
    their own parameters), in module order."""
    return [
        m
        for m in model.modules()
        if callable(getattr(m, "reshard", None)) and callable(getattr(m, "unshard", None))
    ]


def resharding(loss_fn: LossFn, model: nn.Module) -> LossFn:
    """``loss_fn`` that puts every FSDP2 module of ``model`` back to its sharded state after each forward
    without grad (``loss_fn`` itself when there is none).

    FSDP2 keeps a root module's gathered parameters after a forward that no backward follows (it expects
    one); the landscape moves the local slices in place, so the next forward must gather them again.
    """
    fsdp = fsdp_modules(model)
    if not fsdp:
        return loss_fn

    def loss(module: nn.Module, batch: Any) -> Tensor:
        value = loss_fn(module, batch)
        if not torch.is_grad_enabled():
            for m in fsdp:
                m.reshard()  # type: ignore[operator]
        return value

    loss.__name__ = getattr(loss_fn, "__name__", "loss")
    return loss


def _process_group_sum(t: Tensor) -> Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@dataclass(frozen=True)
class ShardLayout:
    """Where each parameter's local slice sits in the full parameter, and the sum over processes.

    Attributes:
        params: the parameters themselves (``DTensor``s or plain tensors; their ``.grad`` is read).
        local: this process's slices (views: moving them moves the model), one per parameter.
        shapes: each full parameter's shape.
        row_offsets: the first row (dimension 0) of each slice in its full parameter (0 when replicated).
        replicated: per parameter, whether every process holds all of it (then it is not summed twice).
        all_reduce: in place, the sum of a tensor over the processes (identity in one process).
    """

    params: list[Tensor]
    local: list[Tensor]
    shapes: list[torch.Size]
    row_offsets: list[int]
    replicated: list[bool]
    all_reduce: AllReduce

    @classmethod
    def of(cls, params: Sequence[Tensor], all_reduce: AllReduce | None = None) -> ShardLayout:
        """The layout of ``params`` (``DTensor``s sharded on dimension 0, or plain tensors).

        ``all_reduce`` defaults to a sum over the default process group (identity in one process).
        """
        local, shapes, offsets, replicated = [], [], [], []
        for i, p in enumerate(params):
            if not _is_dtensor(p):
                local.append(p)
                shapes.append(p.shape)
                offsets.append(0)
                replicated.append(True)
                continue
            placements = tuple(p.placements)  # type: ignore[attr-defined]
            names = [type(pl).__name__ for pl in placements]
            dims = [getattr(pl, "dim", None) for pl in placements]
            if len(placements) != 1 or not (
                names[0] == "Replicate" or (names[0] == "Shard" and dims[0] == 0)
            ):
                raise ValueError(
                    f"`params`[{i}] is a DTensor placed as {placements}: only Shard(0) on a one-dimensional "
                    "mesh (FSDP2's fully_shard on a data-parallel mesh) or Replicate is supported"
                )
            from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

            view = p.to_local().detach()  # type: ignore[attr-defined]  # shares the storage, no history
            _, offset = compute_local_shape_and_global_offset(
                p.shape,
                p.device_mesh,  # type: ignore[attr-defined]
                placements,
            )
            local.append(view)
            shapes.append(p.shape)
            offsets.append(int(offset[0]) if len(offset) else 0)
            replicated.append(names[0] == "Replicate")
        return cls(list(params), local, shapes, offsets, replicated, all_reduce or _process_group_sum)

    @property
    def numel(self) -> int:
        """The number of elements of the full parameters, ``P``."""
        return sum(s.numel() for s in self.shapes)

    @property
    def local_numel(self) -> int:
        """The number of elements this process holds."""
        return sum(t.numel() for t in self.local)

    def _owned(self, i: int) -> bool:
        """Whether this process counts parameter ``i`` in sums (a replicated one: rank zero only)."""
        if not self.replicated[i]:
            return True
        import torch.distributed as dist

        return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0

    def sum(self, parts: Sequence[Tensor]) -> Tensor:
        """The sum over processes of per-parameter float64 partial sums (replicated ones counted once)."""
        total = torch.zeros((), dtype=torch.float64)
        for i, part in enumerate(parts):
            if self._owned(i):
                total = total + part.detach().double().sum().cpu()
        return self.all_reduce(total)

    def dot(self, x: Sequence[Tensor], y: Sequence[Tensor]) -> float:
        """``<x, y>`` of two directions held as local slices, summed over processes, in float64."""
        return float(self.sum([(a.double() * b.double()).sum() for a, b in zip(x, y, strict=True)]))

    def norm(self, x: Sequence[Tensor]) -> float:
        """The Euclidean norm of a direction held as local slices (summed over processes, float64)."""
        return self.dot(x, x) ** 0.5

    def local_rows(self, i: int, full: Tensor) -> Tensor:
        """This process's slice of a full-shaped tensor for parameter ``i``."""
        rows = self.local[i].shape[0] if self.local[i].dim() > 0 else None
        if rows is None or self.replicated[i]:
            return full
        return full[self.row_offsets[i] : self.row_offsets[i] + rows]

    def flat_ranges(self) -> list[tuple[int, int]]:
        """Per parameter, the range of the full flat vector (parameters concatenated) this process holds."""
        out, start = [], 0
        for i, shape in enumerate(self.shapes):
            n = shape.numel()
            if self.replicated[i]:
                out.append((start, start + n))
            else:
                row = n // shape[0] if len(shape) and shape[0] else 0
                a = start + self.row_offsets[i] * row
                out.append((a, a + self.local[i].numel()))
            start += n
        return out

    def gather(self, i: int, piece: Tensor) -> Tensor:
        """The full tensor of parameter ``i`` from this process's slice ``piece`` of it (any dtype), on
        every process: one all-gather of that parameter only (a collective)."""
        p = self.params[i]
        if not _is_dtensor(p) or self.replicated[i]:
            return piece
        from torch.distributed.tensor import DTensor

        dist_piece = DTensor.from_local(
            piece.detach().to(p.device),
            p.device_mesh,  # type: ignore[attr-defined]
            p.placements,  # type: ignore[attr-defined]
            run_check=False,
            shape=p.shape,
            stride=torch.empty(p.shape, device="meta").stride(),
        )
        return dist_piece.full_tensor()

    def slices(self, tensors: Sequence[Tensor], name: str = "direction") -> Direction:
        """This process's slices of ``tensors``, one per parameter: a ``DTensor``'s local tensor, the rows
        of a full-shaped plain tensor, or a tensor already shaped as the slice (taken as it is).

        A ValueError naming ``name`` for a count or shape that fits neither.
        """
        tensors = list(tensors)
        if len(tensors) != len(self.local):
            raise ValueError(
                f"`{name}` has {len(tensors)} tensors, expected one per parameter ({len(self.local)})"
            )
        out: Direction = []
        for i, t in enumerate(tensors):
            if not isinstance(t, Tensor):
                raise ValueError(f"`{name}`[{i}] is a {type(t).__name__}, expected a tensor")
            if _is_dtensor(t):
                t = t.to_local()  # type: ignore[attr-defined]
            elif t.shape == self.shapes[i]:
                t = self.local_rows(i, t)
            if t.shape != self.local[i].shape:
                raise ValueError(
                    f"`{name}`[{i}] has shape {tuple(t.shape)}, expected the parameter's "
                    f"{tuple(self.shapes[i])} (or a DTensor sharded like it)"
                )
            out.append(t)
        return out

    def flat_slices(self, rows: Tensor | Sequence[Tensor], name: str = "snapshots") -> list[Tensor]:
        """This process's part of each of ``rows``, flat vectors over the parameters (as snapshots are): a
        full one (length ``P``) cut to this process's ranges, one of this process's length as it is."""
        out: list[Tensor] = []
        for i, row in enumerate(rows.unbind(0) if isinstance(rows, Tensor) else rows):
            flat = row.reshape(-1)
            if flat.numel() == self.numel and self.numel != self.local_numel:
                flat = torch.cat([flat[a:b] for a, b in self.flat_ranges()])
            elif flat.numel() != self.local_numel:
                raise ValueError(
                    f"`{name}`: row {i} has {flat.numel()} elements, expected the parameters' {self.numel} "
                    f"(or this process's {self.local_numel})"
                )
            out.append(flat)
        return out

    def wrap(self, parts: Sequence[Tensor]) -> Direction:
        """Slices of a direction (one per parameter) as tensors placed like the parameters: a ``DTensor``
        sharded as each sharded parameter (no communication: its local tensor is the slice), else the
        slice itself. What the public functions return on a sharded model."""
        out: Direction = []
        for p, piece in zip(self.params, parts, strict=True):
            if not _is_dtensor(p):
                out.append(piece)
                continue
            from torch.distributed.tensor import DTensor

            out.append(
                DTensor.from_local(
                    piece,
                    p.device_mesh,  # type: ignore[attr-defined]
                    p.placements,  # type: ignore[attr-defined]
                    run_check=False,
                    shape=p.shape,
                    stride=torch.empty(p.shape, device="meta").stride(),
                )
            )
        return out

    def gathered(self, parts: Sequence[Tensor]) -> Iterator[Tensor]:
        """The full tensor of each parameter in turn, from this process's slices ``parts`` of them: one
        all-gather per parameter (a collective: every process consumes them all, in the same order), so
        no process holds more than one full parameter at a time."""
        for i, piece in enumerate(parts):
            yield self.gather(i, piece)

    def to_local(self, full: Tensor) -> Direction:
        """Slices of a full flat vector (length ``P``), shaped like the local views (views, no copy)."""
        return [full[a:b].view(t.shape) for (a, b), t in zip(self.flat_ranges(), self.local)]

    def to_full(self, parts: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
        """The full flat vector (length ``P``) on every process from each one's slices (one all-reduce)."""
        dtype = dtype or work_dtype(parts[0])
        out = torch.zeros(self.numel, dtype=dtype, device=parts[0].device if parts else None)
        for i, ((a, b), t) in enumerate(zip(self.flat_ranges(), parts, strict=True)):
            if self._owned(i):
                out[a:b] = t.detach().reshape(-1).to(dtype)
        return self.all_reduce(out)


def sharded_filter_normalized_directions(
    layout: ShardLayout, count: int = 2, seed: int = 0, include_1d: bool = False
) -> list[Direction]:
    """:func:`~.directions.filter_normalized_directions` of the full parameters, as this process's slices.

    The same numbers as the unsharded function for the same ``seed`` (each full parameter is drawn in turn
    from the one CPU generator and sliced; see the module docstring for the cost).
    """
    check.positive_int("count", count)
    generator = torch.Generator().manual_seed(int(seed))
    return [
        sharded_filter_normalize(layout, sharded_random_direction(layout, generator), include_1d)
        for _ in range(count)
    ]


def sharded_random_direction(layout: ShardLayout, generator: torch.Generator) -> Direction:
    """:func:`~.directions.random_direction` of the full parameters, as this process's slices.

    Each full parameter is drawn in turn from ``generator`` (the unsharded draws, in the same order) and
    sliced, so the generator ends where the unsharded one would: a sequence of directions continues alike.
    """
    direction: Direction = []
    for i, (p, shape) in enumerate(zip(layout.local, layout.shapes, strict=True)):
        full = torch.randn(shape, generator=generator, dtype=torch.float32)
        piece = layout.local_rows(i, full)
        piece = piece if piece is full else piece.clone()  # not a view that keeps the full draw alive
        direction.append(piece.to(p.device, work_dtype(p)))
    return direction


def sharded_filter_normalize(
    layout: ShardLayout, direction: Direction, include_1d: bool = False
) -> Direction:
    """:func:`~.directions.filter_normalize` on local slices: rows are whole on one process; 1-d norms
    are summed over the processes (a collective with ``include_1d``)."""

    def norms_1d(i: int, p: Tensor, d: Tensor) -> tuple[float, float]:
        sums = torch.stack([p.double().square().sum(), d.double().square().sum()]).cpu()
        if not layout.replicated[i]:
            sums = layout.all_reduce(sums)
        p_norm, d_norm = (float(s) ** 0.5 for s in sums)
        return p_norm, d_norm

    return normalize_filters(direction, layout.local, include_1d, norms_1d)
