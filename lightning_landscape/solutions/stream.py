"""Writing a run's weights as they arrive: :class:`StreamedWeights` and the ``.npz`` writer that takes pieces.

A sharded model's weights are not whole on any process: gathered one parameter at a time, each piece is
written into its ``.npy`` member of ``weights.npz`` as it comes (header first, then the values in order),
so the writer holds one piece and never a whole vector. :func:`write_npz` writes what ``numpy.savez``
writes (uncompressed, no pickle), from arrays and :class:`StreamedArray` members alike; the format is that
of :mod:`lightning_landscape.solutions.weights`, which uses it for every folder it writes.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch loads on first use
    import torch
    from torch import Tensor

__all__ = ["StreamedArray", "StreamedWeights", "to_numpy", "write_npz"]


def to_numpy(t: Tensor) -> np.ndarray:
    """``t`` on the CPU as a numpy array; bfloat16 (no numpy type) as its uint16 bit patterns."""
    import torch

    t = t.detach().cpu().contiguous()
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


class StreamedWeights:
    """A run's flat weight vectors arriving one piece at a time, for ``save_run_weights(stream=...)``.

    ``pieces`` yields, in this order, the pieces of the initial weights, of the final weights, then of each
    of the ``snapshots`` trajectory rows: each vector is the ``P`` parameter values in ``names`` order, cut
    into pieces of any size (a sharded model's: one gathered parameter each) that never straddle two
    vectors. The writer takes them as it writes, so it never holds more than one piece; ``snapshot_dtype``
    is the trajectory's own dtype (stored as such unless ``dtype`` says otherwise). ``frozen``: the full
    final values of the floating-point parameters outside ``names`` (frozen ones), when the model's own are
    not whole tensors (a sharded model's slices: gathered by the caller); the model's by default.

    Where producing a piece is a collective (gathering a parameter from every process), every process
    must consume the same pieces in the same order: the writing process passes the stream to
    ``save_run_weights``, the others call :meth:`drain`, and the writer calls :meth:`drain` too after a
    failure (so that nobody is left waiting on a collective).

    Example::

        >>> import tempfile, torch
        >>> from lightning_landscape.solutions.weights import load_run_weights, save_run_weights
        >>> net = torch.nn.Linear(2, 1)
        >>> rows = [torch.zeros(3), torch.ones(3), torch.zeros(3), torch.full((3,), 0.5)]
        >>> stream = StreamedWeights((p for row in rows for p in row.split([2, 1])), 2, torch.float32)
        >>> folder = save_run_weights(tempfile.mkdtemp(), net, stream=stream, steps=[0, 5])
        >>> load_run_weights(folder, net).trajectory[1].tolist()
        [0.5, 0.5, 0.5]
    """

    def __init__(
        self,
        pieces: Iterator[Tensor],
        snapshots: int,
        snapshot_dtype: torch.dtype,
        frozen: Mapping[str, Tensor] | None = None,
    ) -> None:
        if isinstance(snapshots, bool) or not isinstance(snapshots, int) or snapshots < 0:
            raise ValueError(f"`snapshots` must be an integer >= 0, got {snapshots!r}")
        if frozen is not None and not isinstance(frozen, Mapping):
            raise ValueError(
                f"`frozen` must be a {{name: tensor}} mapping or None, got {type(frozen).__name__}"
            )
        self._pieces = iter(pieces)
        self.snapshots = snapshots
        self.snapshot_dtype = snapshot_dtype
        self.frozen = frozen

    def take(self, numel: int) -> Iterator[Tensor]:
        """The next vector's pieces, flat: exactly ``numel`` values (a ValueError otherwise)."""
        left = numel
        while left > 0:
            piece = next(self._pieces, None)
            if piece is None:
                raise ValueError(f"`stream` ended {left} values before the end of a vector of {numel}")
            piece = piece.detach().reshape(-1)
            if piece.numel() > left:
                raise ValueError(
                    f"`stream`: a piece of {piece.numel()} values straddles two vectors of {numel}"
                )
            left -= piece.numel()
            yield piece

    def drain(self) -> None:
        """Consume (and drop) every piece not taken yet."""
        for _ in self._pieces:
            pass


@dataclass(frozen=True)
class StreamedArray:
    """A ``.npy`` member written from pieces: ``shape`` values of ``dtype``, row after row."""

    stream: StreamedWeights
    shape: tuple[int, ...]
    dtype: torch.dtype

    def write(self, out: Any) -> None:
        """The ``.npy`` header, then ``shape[0]`` rows (one vector for a 1-d shape) taken from the stream."""
        import torch

        descr = to_numpy(torch.zeros(0, dtype=self.dtype)).dtype  # bfloat16: its uint16 bit patterns
        header = {"descr": np.lib.format.dtype_to_descr(descr), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(out, header)  # what numpy.save writes for such a header
        rows = self.shape[0] if len(self.shape) == 2 else 1
        for _ in range(rows):
            for piece in self.stream.take(self.shape[-1]):
                out.write(to_numpy(piece.to("cpu", self.dtype)).tobytes())


def write_npz(fh: Any, arrays: Mapping[str, np.ndarray | StreamedArray]) -> None:
    """``numpy.savez(fh, **arrays)`` (uncompressed, no pickle), members from pieces written as they come."""
    with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            with zf.open(f"{key}.npy", mode="w", force_zip64=True) as out:
                if isinstance(value, StreamedArray):
                    value.write(out)
                else:
                    np.lib.format.write_array(out, np.asanyarray(value), allow_pickle=False)
