"""Weights written as they arrive (``save_run_weights(stream=...)``): the same folder as from whole tensors,
one piece held at a time, every piece consumed whatever happens."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from torch import nn

from lightning_landscape.solutions.stream import StreamedWeights
from lightning_landscape.solutions.weights import load_run_weights, save_run_weights


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _vectors(net: nn.Module, snapshots: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    numel = sum(p.numel() for p in net.parameters())
    rows = torch.randn(snapshots, numel, generator=g)
    return rows[0].clone(), torch.randn(numel, generator=g), rows


def _pieces(net: nn.Module, vectors: list[torch.Tensor], alive: list[int] | None = None):
    """Each vector cut into one piece per parameter, made fresh (as a gather makes them). ``alive``: before
    each piece is made, how many earlier pieces' memory is still held (by any tensor viewing it)."""
    sizes = [p.numel() for p in net.parameters()]
    refs: list[weakref.ref] = []
    for vector in vectors:
        for part in vector.split(sizes):
            if alive is not None:
                alive.append(sum(r() is not None for r in refs))
            memory = part.numpy().copy()  # a tensor from it keeps it alive, and so does every view
            refs.append(weakref.ref(memory))
            piece = torch.from_numpy(memory)
            del memory
            yield piece
            del piece


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_a_streamed_folder_is_the_folder_of_whole_tensors(tmp_path, dtype):
    net = _net()
    buffers = {n: b.clone() for n, b in net.named_buffers() if b.is_floating_point()}
    initial, final, rows = _vectors(net, 3)
    whole = save_run_weights(
        tmp_path / "whole", net, initial, final=final, trajectory=rows, steps=[0, 2, 4],
        initial_buffers=buffers, dtype=dtype,
    )  # fmt: skip
    stream = StreamedWeights(_pieces(net, [initial, final, *rows]), 3, rows.dtype)
    streamed = save_run_weights(
        tmp_path / "streamed", net, stream=stream, steps=[0, 2, 4], initial_buffers=buffers, dtype=dtype
    )
    a, b = load_run_weights(whole, net), load_run_weights(streamed, net)
    for field in ("initial", "final", "trajectory"):
        assert getattr(a, field).dtype == getattr(b, field).dtype == (dtype or torch.float32)
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert np.array_equal(a.steps, b.steps) and a.meta == b.meta
    assert all(torch.equal(a.initial_buffers[k], b.initial_buffers[k]) for k in a.initial_buffers)
    with np.load(whole / "weights.npz") as x, np.load(streamed / "weights.npz") as y:
        assert x.files == y.files
        for key in x.files:
            if key != "write_id":
                assert x[key].dtype == y[key].dtype and np.array_equal(x[key], y[key]), key


def test_the_writer_holds_one_piece_at_a_time(tmp_path):
    net = _net()
    buffers = {n: b.clone() for n, b in net.named_buffers() if b.is_floating_point()}
    initial, final, rows = _vectors(net, 4)
    alive: list[int] = []
    stream = StreamedWeights(_pieces(net, [initial, final, *rows], alive), 4, rows.dtype)
    save_run_weights(tmp_path, net, stream=stream, steps=[0, 1, 2, 3], initial_buffers=buffers)
    assert len(alive) == (2 + 4) * 6  # every piece was made (6 vectors of 6 parameters) ...
    assert max(alive) <= 1  # ... while at most the one before it was still held


def test_a_stream_is_drained_when_writing_fails(tmp_path):
    net = _net()
    buffers = {n: b.clone() for n, b in net.named_buffers() if b.is_floating_point()}
    initial, final, rows = _vectors(net, 2)
    made: list[int] = []
    stream = StreamedWeights(_pieces(net, [initial, final, *rows], made), 2, rows.dtype)
    with pytest.raises(ValueError, match="max_bytes"):
        save_run_weights(
            tmp_path / "big", net, stream=stream, steps=[0, 1], initial_buffers=buffers, max_bytes=8
        )
    assert (
        len(made) == (2 + 2) * 6
    )  # every piece consumed: a collective behind each would not be left waiting
    short = StreamedWeights(_pieces(net, [initial, final]), 2, rows.dtype)  # no snapshot rows
    with pytest.raises(ValueError, match="ended"):
        save_run_weights(tmp_path / "short", net, stream=short, steps=[0, 1], initial_buffers=buffers)
    assert not (tmp_path / "short" / "weights.npz").exists()


def test_streamed_weights_are_given_instead_of_tensors_not_beside_them(tmp_path):
    net = _net()
    initial, final, rows = _vectors(net, 1)
    buffers = {n: b.clone() for n, b in net.named_buffers() if b.is_floating_point()}
    stream = StreamedWeights(_pieces(net, [initial, final, *rows]), 1, rows.dtype)
    with pytest.raises(ValueError, match=r"`initial`.*or as `stream`"):
        save_run_weights(tmp_path, net, initial, stream=stream, initial_buffers=buffers)
    with pytest.raises(ValueError, match="or as `stream`"):
        save_run_weights(tmp_path, net, initial_buffers=buffers)
    with pytest.raises(ValueError, match="`snapshots`"):
        StreamedWeights(iter([]), -1, torch.float32)
