"""A run's weights on disk, for comparing solutions after training: ``<log_dir>/landscape/[NAME/]weights/``.

Two runs compared on one plane (:func:`lightning_landscape.solutions.compare.compare_solutions`) need each
run's
initial and final weights, BatchNorm statistics and trajectory. :func:`save_run_weights` writes them;
:func:`load_run_weights` reads them back as a :class:`RunWeights`, checked against the model.

Format, version 1 or 2 (``WEIGHTS_FORMAT_VERSION``), two files in one folder:

- ``weights.npz`` (:func:`numpy.savez`, uncompressed, read with ``allow_pickle=False``):
  ``initial`` and ``final`` (P,), the parameters concatenated in ``names`` order; optionally
  ``trajectory`` (n, P) and ``steps`` (n,) int64, the snapshot buffer and each snapshot's global step;
  ``initial_buffers`` and ``final_buffers`` (Q,), the floating-point buffers (BatchNorm running
  statistics) concatenated in ``buffer_names`` order, stored as float32 (float64 if any is float64):
  exact for every float buffer; ``final_frozen`` (F,), the floating-point parameters outside ``names``
  (frozen ones, ``requires_grad=False``) as the model holds them, stored like the buffers (exact,
  whatever ``dtype``), and ``initial_frozen`` (F,) only when their initial values were given and differ
  (frozen parameters do not train: stored once); ``write_id``, a token that ties the arrays to their
  manifest. bfloat16 has no numpy type: bfloat16 arrays are stored as their uint16 bit patterns.
- ``manifest.json``: ``format_version``, ``kind: "weights"``, ``write_id``, ``names``, ``shapes``,
  ``dtypes`` (the parameters'), ``buffer_names``, ``buffer_shapes``, ``buffer_dtypes``, ``frozen_names``,
  ``frozen_shapes``, ``frozen_dtypes``, ``frozen_storage_dtype``, ``initial_frozen`` (``"stored"``,
  ``"same as final"`` or ``"unknown"``: parameters outside ``names`` that were trainable when written,
  whose initial values were not given), ``dtype`` (of ``initial``/``final``), ``trajectory_dtype``,
  ``num_params``, ``num_snapshots``, ``nbytes``, ``meta``.

Streaming: a sharded model's weights are written as they are gathered, one parameter at a time
(``stream=``, :mod:`lightning_landscape.solutions.stream`); the file is the same.

Versions: a folder whose model has parameters outside ``names`` is written as version 2, so that a
reader of version 1 (0.1), which would evaluate the runs with its caller's frozen weights, refuses it;
any other folder is written as version 1, readable by every version. Both are read here; a folder
written before the frozen parameters were saved (no ``frozen_names``) reads with
``RunWeights.final_frozen = None``: unknown.

Size: ``(2 + n) * P`` values of the storage dtype plus ``2 * Q`` buffer values and ``F`` (``2 * F``)
frozen values; ``n`` is bounded by the snapshot buffer (``max_snapshots``, ``snapshot_budget_bytes``).
Writing refuses (ValueError) above ``max_bytes`` (2 GiB by default) and says what to change. Both files
are written under temporary names and renamed, the manifest last, and a reader checks that their
``write_id`` agree: a folder is read whole or not at all. The manifest is not named like the arrays, so
:func:`load_records` never mistakes the folder for records. Nothing here uses pickle.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lightning_landscape.records.record import _atomic_write, _jsonable
from lightning_landscape.solutions.stream import StreamedArray, StreamedWeights, to_numpy, write_npz

if TYPE_CHECKING:  # torch loads on first use: finding and reading these folders' names does not need it
    import torch
    from torch import Tensor, nn

__all__ = [
    "DEFAULT_MAX_BYTES",
    "WEIGHTS_FORMAT_VERSION",
    "RunWeights",
    "find_run_weights",
    "load_run_weights",
    "run_weights_nbytes",
    "save_run_weights",
]

WEIGHTS_FORMAT_VERSION = 2
READ_FORMAT_VERSIONS = (1, 2)
DEFAULT_MAX_BYTES = 2 * 1024**3
ARRAYS, MANIFEST = "weights.npz", "manifest.json"
_DTYPE_NAMES = ("float64", "float32", "float16", "bfloat16")


def _dtype(name: str) -> torch.dtype:
    import torch

    return getattr(torch, name if name in _DTYPE_NAMES else "float32")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _from_numpy(a: np.ndarray, dtype: str) -> Tensor:
    import torch

    if dtype == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


def _flat(
    value: Tensor | Sequence[Tensor], shapes: Sequence[torch.Size], what: str, dtype: torch.dtype
) -> Tensor:
    import torch

    numel = sum(int(np.prod(s)) for s in shapes)
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.numel() != numel:
            raise ValueError(f"`{what}` must be a flat ({numel},) tensor or one tensor per parameter")
        return value.detach().to("cpu", dtype)
    tensors = list(value)
    if len(tensors) != len(shapes) or any(t.shape != s for t, s in zip(tensors, shapes)):
        got = [tuple(t.shape) for t in tensors]
        raise ValueError(
            f"`{what}`: tensor shapes {got} do not match the parameters' {[tuple(s) for s in shapes]}"
        )
    return torch.cat([t.detach().reshape(-1).to("cpu", dtype) for t in tensors])


def run_weights_nbytes(
    num_params: int, num_snapshots: int = 0, itemsize: int = 4, trajectory_itemsize: int | None = None
) -> int:
    """Bytes of ``weights.npz``'s parameter arrays: initial + final + ``num_snapshots`` rows.

    Example::

        >>> run_weights_nbytes(1_000_000, num_snapshots=64)  # float32: 66 copies of 4 MB
        264000000
    """
    per_row = itemsize if trajectory_itemsize is None else trajectory_itemsize
    return num_params * (2 * itemsize + num_snapshots * per_row)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def save_run_weights(
    directory: str | os.PathLike,
    model: nn.Module,
    initial: Tensor | Sequence[Tensor] | None = None,
    *,
    stream: StreamedWeights | None = None,
    initial_buffers: Mapping[str, Tensor] | None = None,
    final: Tensor | Sequence[Tensor] | None = None,
    final_buffers: Mapping[str, Tensor] | None = None,
    initial_frozen: Mapping[str, Tensor] | None = None,
    trajectory: Tensor | None = None,
    steps: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    dtype: torch.dtype | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a run's weights into ``directory`` (``weights.npz`` + ``manifest.json``); return the folder.

    Args:
        directory: the folder (created); by convention ``<log_dir>/landscape/[NAME/]weights``.
        model: the trained model: names, shapes and (by default) the final weights and buffers.
        initial: the initial weights, a flat ``(P,)`` tensor (a :class:`TrajectoryRecorder`'s first
            snapshot) or one tensor per parameter.
        stream: instead of ``initial``, ``final`` and ``trajectory``: the three as pieces written as they
            come (:class:`StreamedWeights`; a sharded model's, gathered one parameter at a time). It is
            drained whatever happens, so a collective behind it is never left waiting.
        initial_buffers: the initial :func:`buffer_snapshot`; required when the model has floating-point
            buffers (a plane through the initialization uses them).
        final, final_buffers: the final weights and buffers; the model's current ones by default.
        initial_frozen: ``{name: tensor}``, the initial values of the floating-point parameters outside
            ``names`` (frozen ones), when they may have changed during training. By default they are
            taken to be their final values (the model's current ones) if they are all frozen
            (``requires_grad=False``) now, and recorded as unknown otherwise (a plane through the
            initialization then refuses this run). Their final values, the model's, are always stored
            in full and exactly, so that a comparison evaluates this run's own model.
        trajectory, steps: the snapshot buffer ``(n, P)`` (``recorder.stacked()``) and its global steps.
        names: parameter names, in the order of the flat vectors; ``landscape_parameters(model)`` by default.
        dtype: storage dtype of all weights (``torch.bfloat16`` halves the size); by default float32
            (float64 for float64 parameters) for ``initial``/``final`` and the trajectory's own dtype.
        max_bytes: refuse (ValueError) to write more than this; ``None`` for no limit.
        meta: JSON-able facts stored in the manifest (global step, epoch, seed, a label, ...).

    Example::

        >>> import tempfile
        >>> from torch import nn
        >>> net = nn.Linear(3, 2)
        >>> w0 = [p.detach().clone() for p in net.parameters()]
        >>> folder = save_run_weights(tempfile.mkdtemp(), net, w0)
        >>> load_run_weights(folder, net).final.shape
        torch.Size([8])
    """
    try:
        return _save_run_weights(
            directory, model, initial, stream, initial_buffers, final, final_buffers, initial_frozen,
            trajectory, steps, names, dtype, max_bytes, meta,
        )  # fmt: skip
    finally:
        if stream is not None:
            stream.drain()


def _save_run_weights(
    directory: str | os.PathLike,
    model: nn.Module,
    initial: Tensor | Sequence[Tensor] | None,
    stream: StreamedWeights | None,
    initial_buffers: Mapping[str, Tensor] | None,
    final: Tensor | Sequence[Tensor] | None,
    final_buffers: Mapping[str, Tensor] | None,
    initial_frozen: Mapping[str, Tensor] | None,
    trajectory: Tensor | None,
    steps: Sequence[int] | None,
    names: Sequence[str] | None,
    dtype: torch.dtype | None,
    max_bytes: int | None,
    meta: Mapping[str, Any] | None,
) -> Path:
    import torch

    from lightning_landscape.functional.landscape.bn import landscape_buffers
    from lightning_landscape.functional.landscape.params import landscape_parameters

    if stream is not None and not isinstance(stream, StreamedWeights):
        raise ValueError(f"`stream` must be a StreamedWeights or None, got {type(stream).__name__}")
    if (stream is None) == (initial is None) or (stream is not None and (final, trajectory) != (None, None)):
        raise ValueError(
            "give the weights as `initial` (with `final` and `trajectory` if any) or as `stream`, not both"
        )
    named = dict(model.named_parameters())
    if names is None:
        names = [n for n, _ in landscape_parameters(model)]
    missing = [n for n in names if n not in named]
    if missing:
        raise ValueError(f"`names`: {type(model).__name__} has no parameters called {missing}")
    params = [named[n] for n in names]
    shapes = [p.shape for p in params]
    allowed = [_dtype(n) for n in _DTYPE_NAMES]
    if dtype is not None and dtype not in allowed:
        raise ValueError(f"`dtype` must be one of {allowed} or None, got {dtype!r}")
    if max_bytes is not None and (
        isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
    ):
        raise ValueError(f"`max_bytes` must be a positive integer or None, got {max_bytes!r}")
    work = dtype or (torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32)
    num_params = sum(p.numel() for p in params)

    if trajectory is not None:
        if (
            not isinstance(trajectory, torch.Tensor)
            or trajectory.dim() != 2
            or trajectory.shape[1] != num_params
        ):
            got = (
                tuple(trajectory.shape) if isinstance(trajectory, torch.Tensor) else type(trajectory).__name__
            )
            raise ValueError(f"`trajectory` must be an (n, {num_params}) tensor, got {got}")
        if steps is None or len(steps) != trajectory.shape[0]:
            raise ValueError(
                f"`steps` must give the global step of each of the {trajectory.shape[0]} snapshots"
            )
        if not trajectory.is_floating_point():
            raise ValueError(f"`trajectory` must be floating point, got {trajectory.dtype}")
    if stream is not None and stream.snapshots and (steps is None or len(steps) != stream.snapshots):
        raise ValueError(f"`steps` must give the global step of each of the {stream.snapshots} snapshots")
    if stream is not None:
        n = stream.snapshots
        traj_dtype = (dtype or stream.snapshot_dtype) if n else None
    else:
        n = 0 if trajectory is None else int(trajectory.shape[0])
        traj_dtype = None if trajectory is None else (dtype or trajectory.dtype)
    itemsize = work.itemsize
    nbytes = run_weights_nbytes(num_params, n, itemsize, traj_dtype.itemsize if traj_dtype else None)
    if max_bytes is not None and nbytes > max_bytes:
        raise ValueError(
            f"the run's weights would take {_gb(nbytes)} (initial + final + {n} snapshots of {num_params:,} "
            f"parameters), above `max_bytes`={_gb(max_bytes)}: store them at a lower precision "
            "(`dtype=torch.bfloat16`), leave out the trajectory, keep fewer snapshots (`max_snapshots`), "
            "or raise `max_bytes` (None for no limit)"
        )

    frozen = [(n, p) for n, p in model.named_parameters() if n not in set(names) and p.is_floating_point()]
    frozen_dtype = torch.float64 if any(p.dtype == torch.float64 for _, p in frozen) else torch.float32
    given = (stream.frozen if stream is not None else None) or {}  # a sharded model's, gathered whole
    if given and sorted(given) != sorted(n for n, _ in frozen):
        raise ValueError(f"`stream.frozen` must hold {[n for n, _ in frozen]} (outside `names`)")
    frozen_final = torch.cat(
        [given.get(n, p).detach().reshape(-1).to("cpu", frozen_dtype) for n, p in frozen] or [torch.empty(0)]
    )
    frozen_initial: Tensor | None = None
    initial_state = "same as final"
    if initial_frozen is not None:
        if not isinstance(initial_frozen, Mapping):
            raise ValueError(
                f"`initial_frozen` must be a {{name: tensor}} mapping, got {type(initial_frozen).__name__}"
            )
        expected = [n for n, _ in frozen]
        wrong = sorted(set(initial_frozen) ^ set(expected)) + [
            n for n, p in frozen if n in initial_frozen and tuple(initial_frozen[n].shape) != tuple(p.shape)
        ]
        if wrong:
            raise ValueError(
                f"`initial_frozen` must hold the parameters outside `names` ({expected}) with their shapes; "
                f"these do not match: {wrong}"
            )
        frozen_initial = torch.cat(
            [initial_frozen[n].detach().reshape(-1).to("cpu", frozen_dtype) for n in expected]
            or [torch.empty(0)]
        )
        initial_state = "stored"
        if torch.equal(frozen_initial, frozen_final):
            frozen_initial, initial_state = None, "same as final"
    elif any(p.requires_grad for _, p in frozen):
        initial_state = "unknown"
    frozen_bytes = frozen_final.numel() * frozen_dtype.itemsize * (1 if frozen_initial is None else 2)
    nbytes += frozen_bytes
    if max_bytes is not None and nbytes > max_bytes:
        raise ValueError(
            f"the run's weights would take {_gb(nbytes)} (of which {_gb(frozen_bytes)} for the frozen "
            f"parameters outside the landscape, stored exactly), above `max_bytes`={_gb(max_bytes)}: "
            "store the weights at a lower precision (`dtype=torch.bfloat16`), leave out the trajectory, "
            "or raise `max_bytes` (None for no limit)"
        )

    buffers = landscape_buffers(model)
    buffer_dtype = torch.float64 if any(b.dtype == torch.float64 for _, b in buffers) else torch.float32
    if initial_buffers is None and buffers:
        raise ValueError(
            "`initial_buffers` is required: the model has floating-point buffers (BatchNorm statistics); "
            "take `buffer_snapshot(model)` before training"
        )
    arrays: dict[str, np.ndarray | StreamedArray] = {}
    if stream is not None:  # written as the pieces come, in the stream's order
        arrays["initial"] = StreamedArray(stream, (num_params,), work)
        arrays["final"] = StreamedArray(stream, (num_params,), work)
        if n:
            assert traj_dtype is not None and steps is not None
            arrays["trajectory"] = StreamedArray(stream, (n, num_params), traj_dtype)
            arrays["steps"] = np.asarray([int(s) for s in steps], dtype=np.int64)
    else:
        assert initial is not None
        arrays["initial"] = to_numpy(_flat(initial, shapes, "initial", work))
        arrays["final"] = to_numpy(_flat(params if final is None else final, shapes, "final", work))
    if trajectory is not None:
        assert traj_dtype is not None and steps is not None
        arrays["trajectory"] = to_numpy(trajectory.detach().to("cpu", traj_dtype))
        arrays["steps"] = np.asarray([int(s) for s in steps], dtype=np.int64)
    current = {name: b for name, b in buffers}
    for key, snap in (("initial_buffers", initial_buffers), ("final_buffers", final_buffers or current)):
        if not buffers:
            continue
        assert snap is not None
        missing = [name for name in current if name not in snap]
        if missing or any(snap[k].shape != b.shape for k, b in current.items()):
            raise ValueError(f"`{key}` does not match the model's floating-point buffers (missing {missing})")
        arrays[key] = to_numpy(
            torch.cat([snap[k].detach().reshape(-1).to("cpu", buffer_dtype) for k in current])
        )

    if frozen:
        arrays["final_frozen"] = to_numpy(frozen_final)
        if frozen_initial is not None:
            arrays["initial_frozen"] = to_numpy(frozen_initial)

    write_id = uuid.uuid4().hex
    arrays["write_id"] = np.array(write_id)
    manifest = {
        "format_version": WEIGHTS_FORMAT_VERSION if frozen else 1,
        "kind": "weights",
        "write_id": write_id,
        "names": list(names),
        "shapes": [list(s) for s in shapes],
        "dtypes": [_name(p.dtype) for p in params],
        "buffer_names": list(current),
        "buffer_shapes": [list(b.shape) for b in current.values()],
        "buffer_dtypes": [_name(b.dtype) for b in current.values()],
        "buffer_storage_dtype": _name(buffer_dtype),
        "frozen_names": [n for n, _ in frozen],
        "frozen_shapes": [list(p.shape) for _, p in frozen],
        "frozen_dtypes": [_name(p.dtype) for _, p in frozen],
        "frozen_storage_dtype": _name(frozen_dtype),
        "initial_frozen": initial_state,
        "dtype": _name(work),
        "trajectory_dtype": _name(traj_dtype) if traj_dtype is not None else None,
        "num_params": num_params,
        "num_snapshots": n,
        "nbytes": nbytes,
        "meta": _jsonable(dict(meta or {})),
    }
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / ARRAYS, lambda fh: write_npz(fh, arrays))
    text = json.dumps(manifest, indent=1).encode()
    _atomic_write(folder / MANIFEST, lambda fh: fh.write(text))
    return folder


@dataclass
class RunWeights:
    """A run's saved weights (see :func:`load_run_weights`); flat vectors in ``names`` order, on the CPU.

    Attributes:
        directory: the folder read.
        names, shapes, dtypes: the parameters (``dtypes`` as the model had them).
        initial, final: ``(P,)`` flat weights in the storage dtype.
        initial_buffers, final_buffers: ``{name: tensor}`` floating-point buffers, in the model's dtypes.
        trajectory: ``(n, P)`` snapshots, or ``None``; ``steps``: their global steps ``(n,)``.
        meta: what the writer stored (global step, label, ...).
        final_frozen: ``{name: tensor}`` the floating-point parameters outside ``names`` (frozen ones) as
            the trained model held them, in the model's dtypes; ``None`` for a folder written before they
            were saved (0.1): unknown.
        initial_frozen: their initial values (the same tensors as ``final_frozen`` when they did not
            change); ``None`` when unknown.
    """

    directory: Path
    names: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list[str]
    initial: Tensor
    final: Tensor
    initial_buffers: dict[str, Tensor] = field(default_factory=dict)
    final_buffers: dict[str, Tensor] = field(default_factory=dict)
    trajectory: Tensor | None = None
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    meta: dict[str, Any] = field(default_factory=dict)
    final_frozen: dict[str, Tensor] | None = None
    initial_frozen: dict[str, Tensor] | None = None

    @property
    def num_params(self) -> int:
        return int(self.initial.numel())

    def split(self, flat: Tensor, like: Sequence[Tensor] | None = None) -> list[Tensor]:
        """``flat`` as one tensor per parameter, placed and typed like ``like`` (the model's parameters)."""
        out, offset = [], 0
        for k, shape in enumerate(self.shapes):
            size = int(np.prod(shape))
            t = flat[offset : offset + size].reshape(shape)
            out.append(t.clone() if like is None else t.to(device=like[k].device, dtype=like[k].dtype))
            offset += size
        return out

    def parameters_of(self, model: nn.Module) -> list[Tensor]:
        """The model's parameters named in ``names``, in that order (after :meth:`check_model`)."""
        self.check_model(model)
        named = dict(model.named_parameters())
        return [named[n] for n in self.names]

    def check_model(self, model: nn.Module) -> None:
        """Raise a ValueError naming every difference between these weights and ``model``'s.

        Parameters: each saved name must exist with the saved shape, and the model must have no other
        trainable floating-point parameter. Frozen parameters (when the folder records them): the
        model's floating-point parameters outside ``names`` are exactly the saved ones, with their
        shapes. Buffers: the same floating-point buffers, with the same shapes.
        """
        from lightning_landscape.functional.landscape.bn import landscape_buffers

        named = dict(model.named_parameters())
        trainable = [n for n, p in named.items() if p.is_floating_point() and p.requires_grad]
        problems = []
        absent = [n for n in self.names if n not in named]
        frozen = self.final_frozen
        unsaved = [n for n in trainable if n not in set(self.names) and (frozen is None or n not in frozen)]
        if absent:
            problems.append(f"parameters not in the model: {absent}")
        if unsaved:
            problems.append(f"parameters of the model not in the file: {unsaved}")
        for n, shape in zip(self.names, self.shapes):
            if n in named and tuple(named[n].shape) != tuple(shape):
                problems.append(
                    f"{n!r} has shape {tuple(shape)} in the file, {tuple(named[n].shape)} in the model"
                )
        if frozen is not None:
            outside = {n: p for n, p in named.items() if n not in set(self.names) and p.is_floating_point()}
            gone = [n for n in frozen if n not in outside]
            if gone:
                problems.append(f"frozen parameters not in the model: {gone}")
            extra = [n for n in outside if n not in frozen and n not in set(unsaved)]
            if extra:
                problems.append(f"frozen parameters of the model not in the file: {extra}")
            for n, t in frozen.items():
                if n in outside and t.shape != outside[n].shape:
                    problems.append(
                        f"frozen {n!r} has shape {tuple(t.shape)} in the file, "
                        f"{tuple(outside[n].shape)} in the model"
                    )
        buffers = dict(landscape_buffers(model))
        saved = self.final_buffers
        gone, unsaved_buffers = [b for b in saved if b not in buffers], [b for b in buffers if b not in saved]
        if gone:
            problems.append(f"buffers not in the model: {gone}")
        if unsaved_buffers:
            problems.append(f"buffers of the model not in the file: {unsaved_buffers}")
        for n, b in buffers.items():
            if n in saved and saved[n].shape != b.shape:
                problems.append(
                    f"buffer {n!r} has shape {tuple(saved[n].shape)} in the file, "
                    f"{tuple(b.shape)} in the model"
                )
        if problems:
            raise ValueError(
                f"the weights in {self.directory} do not match {type(model).__name__}: " + "; ".join(problems)
            )


def find_run_weights(path: str | os.PathLike) -> Path:
    """The weights folder of ``path``: itself, or the one ``weights/`` folder below it (a run's log dir).

    Raises a ValueError if there is none, or several (name the callback's folder then).
    """
    path = Path(path)
    if path.is_file():
        path = path.parent
    if (path / MANIFEST).is_file():
        return path
    if not path.is_dir():
        raise ValueError(f"{path}: no such directory")
    found = sorted(p.parent for p in path.rglob(MANIFEST) if p.parent.name == "weights")
    if not found:
        raise ValueError(
            f"{path}: no saved weights (looked for weights/{MANIFEST}); train with "
            "`LossLandscapeCallback(save_weights=True)` or call `save_run_weights`"
        )
    if len(found) > 1:
        raise ValueError(
            f"{path}: holds several runs' weights ({', '.join(map(str, found))}); give one of them"
        )
    return found[0]


def load_run_weights(path: str | os.PathLike, model: nn.Module | None = None) -> RunWeights:
    """Read the weights saved by :func:`save_run_weights` (checked against ``model`` when given).

    ``path``: the weights folder, its manifest, or a folder holding exactly one ``weights/`` folder
    (a run's log directory). Raises a ValueError naming the file for a foreign, partial or newer
    folder, and naming every difference when ``model`` does not match.
    """
    folder = find_run_weights(path)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{folder / MANIFEST}: not a readable weights manifest ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("kind") != "weights":
        raise ValueError(f"{folder / MANIFEST}: not a lightning-landscape weights manifest")
    if manifest.get("format_version") not in READ_FORMAT_VERSIONS:
        raise ValueError(
            f"{folder / MANIFEST}: format_version {manifest.get('format_version')!r} is not supported "
            f"(this version reads {' and '.join(map(str, READ_FORMAT_VERSIONS))})"
        )
    try:
        with np.load(folder / ARRAYS, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as err:
        raise ValueError(f"{folder / ARRAYS}: corrupt or missing weights arrays ({err})") from err
    if str(arrays.get("write_id", "")) != manifest["write_id"]:
        raise ValueError(
            f"{folder}: {ARRAYS} and {MANIFEST} come from different writes (a write in progress?)"
        )

    import torch

    def buffers(key: str, prefix: str = "buffer") -> dict[str, Tensor]:
        if key not in arrays:
            return {}
        flat = torch.from_numpy(arrays[key])
        out, offset = {}, 0
        for n, shape, dt in zip(
            manifest[f"{prefix}_names"], manifest[f"{prefix}_shapes"], manifest[f"{prefix}_dtypes"]
        ):
            size = int(np.prod(shape))
            out[n] = flat[offset : offset + size].reshape(shape).to(_dtype(dt))
            offset += size
        return out

    final_frozen: dict[str, Tensor] | None = None
    initial_frozen: dict[str, Tensor] | None = None
    if "frozen_names" in manifest:  # absent in folders written by 0.1: unknown
        final_frozen = buffers("final_frozen", "frozen")
        state = manifest.get("initial_frozen", "same as final")
        if state == "stored":
            initial_frozen = buffers("initial_frozen", "frozen")
        elif state == "same as final":
            initial_frozen = final_frozen

    traj = arrays.get("trajectory")
    weights = RunWeights(
        directory=folder,
        names=list(manifest["names"]),
        shapes=[tuple(s) for s in manifest["shapes"]],
        dtypes=list(manifest["dtypes"]),
        initial=_from_numpy(arrays["initial"], manifest["dtype"]),
        final=_from_numpy(arrays["final"], manifest["dtype"]),
        initial_buffers=buffers("initial_buffers"),
        final_buffers=buffers("final_buffers"),
        trajectory=None if traj is None else _from_numpy(traj, manifest["trajectory_dtype"]),
        steps=arrays.get("steps", np.zeros(0, dtype=np.int64)),
        meta=dict(manifest.get("meta") or {}),
        final_frozen=final_frozen,
        initial_frozen=initial_frozen,
    )
    if model is not None:
        weights.check_model(model)
    return weights
