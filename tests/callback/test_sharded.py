"""Models trained sharded (FSDP2 through ModelParallelStrategy): landscapes from each rank's slices.

The two-process fits run ``tests/helpers/fsdp_run.py`` once (both scenarios) in a subprocess; every
number the callback recorded there is then recomputed on one unsharded process, with the functional API,
from the full weights the script gathered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_landscape import load_records, load_run_weights
from lightning_landscape.callback.distributed import check_strategy
from lightning_landscape.functional import (
    average_sharpness,
    block_curvature,
    edge_of_stability_ratio,
    filter_normalized_directions,
    hessian_directions,
    hessian_eigenvalues,
    hessian_trace,
    interpolation_line,
    loss_surface,
    sam_sharpness,
)
from lightning_landscape.functional.landscape.shards import ShardLayout, sharded_filter_normalized_directions
from lightning_landscape.functional.landscape.trajectory import trajectory_pca

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "helpers" / "fsdp_run.py"
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

import fsdp_run  # noqa: E402  (the script's model, loss and probe set: the reference uses the same)

# --------------------------------------------------------------------------- without processes


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return fsdp_run.make_net()


def test_model_parallel_with_tensor_parallelism_is_refused_naming_what_works():
    check_strategy(ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1))
    with pytest.raises(MisconfigurationException, match="tensor_parallel_size=1") as info:
        check_strategy(ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2))
    assert "DDP" in str(info.value)


class _FakeShards:
    """Two 'processes' in one: rank r's layout over row-slices of plain tensors, summed by hand."""

    def __init__(self, params: list[torch.Tensor], world: int = 2) -> None:
        self.layouts = []
        for rank in range(world):
            local, offsets = [], []
            for p in params:
                rows = -(-p.shape[0] // world)
                a, b = min(rank * rows, p.shape[0]), min((rank + 1) * rows, p.shape[0])
                local.append(p.detach()[a:b])
                offsets.append(a)
            layout = ShardLayout(
                params, local, [p.shape for p in params], offsets, [False] * len(params), lambda t: t
            )
            self.layouts.append(layout)


def test_sharded_random_directions_are_the_unsharded_ones_sliced():
    params = list(_net().parameters())
    whole = filter_normalized_directions(params, count=2, seed=3, include_1d=True)
    shards = _FakeShards(params).layouts
    for layout in shards:
        # include_1d needs the 1-d norms summed over ranks: without the other rank they differ, so test
        # the default (1-d zeroed) here, and the 2-d rows, which are whole on each rank
        mine = sharded_filter_normalized_directions(layout, count=2, seed=3)
        for d_whole, d_mine in zip(whole, mine):
            for i, (full, piece) in enumerate(zip(d_whole, d_mine)):
                rows = slice(layout.row_offsets[i], layout.row_offsets[i] + piece.shape[0])
                expected = full[rows] if full.dim() > 1 else torch.zeros_like(piece)
                torch.testing.assert_close(piece, expected, rtol=1e-6, atol=0)


def test_trajectory_pca_of_slices_with_summed_gram_is_the_whole_plane():
    g = torch.Generator().manual_seed(0)
    snaps, centre = torch.randn(5, 40, generator=g, dtype=torch.float64), torch.randn(40, dtype=torch.float64)
    whole = trajectory_pca(snaps, centre)
    parts = [slice(0, 23), slice(23, 40)]
    grams: list[torch.Tensor] = []

    def all_reduce(t: torch.Tensor) -> torch.Tensor:  # the other rank's Gram matrix, computed first
        other = next(s for s in parts if s != current)
        d = snaps[:, other] - centre[other]
        return t + (d @ d.T).to(t)

    pieces = []
    for current in parts:
        pca = trajectory_pca(snaps[:, current], centre[current], all_reduce=all_reduce)
        pieces.append(pca.components)
        grams.append(pca.coords)
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole.components, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grams[0], whole.coords)


# --------------------------------------------------------------------------- 2 processes on the CPU


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), "--scenarios", "pca,random,hessian,bare"],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _ranks(out: Path) -> dict[int, dict]:
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}


def _gathered(out: Path) -> tuple[nn.Module, list[torch.Tensor]]:
    """The unsharded model at the run's final weights, and its initial weights (as directions)."""
    arrays = np.load(out / "weights.npz")
    model = fsdp_run.make_net()
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(torch.from_numpy(arrays[f"final/{name}"]))
    start = [torch.from_numpy(arrays[f"initial/{name}"]) for name in named]
    return model, start


def _record(out: Path, name: str):
    return next(r for r in load_records(out / "landscape") if r.meta.get("name", "").startswith(name))


@pytest.mark.slow
def test_fsdp_fit_keeps_shards_and_a_smaller_snapshot_buffer(fsdp_runs):
    for scenario in ("pca", "random"):
        ranks = _ranks(fsdp_runs / scenario)
        assert sorted(ranks) == [0, 1]
        assert sum(r["local_numel"] for r in ranks.values()) == ranks[0]["full_numel"]
        for r in ranks.values():
            assert r["param_types"] == ["DTensor"] and r["global_step"] == 16
            assert r["snapshot_buffer_bytes"] <= 0.6 * r["unsharded_buffer_bytes"]
            assert "final_surface_step00000016" in r["records"]


@pytest.mark.slow
def test_observing_a_sharded_fit_does_not_change_its_training(fsdp_runs):
    bare = np.load(fsdp_runs / "bare" / "weights.npz")
    for scenario in ("pca", "random", "hessian"):
        observed = np.load(fsdp_runs / scenario / "weights.npz")
        assert sorted(observed.files) == sorted(bare.files)
        for key in bare.files:  # initial and final weights, bit for bit
            np.testing.assert_array_equal(observed[key], bare[key], err_msg=f"{scenario}: {key}")


@pytest.mark.slow
def test_fsdp_save_weights_writes_the_gathered_run(fsdp_runs):
    out = fsdp_runs / "random"
    saved = load_run_weights(out / "landscape" / "weights", fsdp_run.ShardedNet())  # names "net.*"
    arrays = np.load(out / "weights.npz")
    names = [n for n, _ in fsdp_run.make_net().named_parameters()]
    assert saved.names == [f"net.{n}" for n in names] and saved.meta["sharded"] is True
    full = {k: np.concatenate([arrays[f"{k}/{n}"].reshape(-1) for n in names]) for k in ("initial", "final")}
    np.testing.assert_array_equal(saved.initial.numpy(), full["initial"])
    np.testing.assert_array_equal(saved.final.numpy(), full["final"])
    assert saved.trajectory is not None and saved.trajectory.shape == (9, full["final"].size)
    np.testing.assert_array_equal(saved.trajectory[-1].numpy(), full["final"])  # the last snapshot: step 16
    assert list(saved.steps) == list(range(0, 17, 2))


@pytest.mark.slow
def test_fsdp_fit_says_what_is_not_supported_sharded_and_nothing_else_fails(fsdp_runs):
    notes = json.loads((fsdp_runs / "random" / "warnings0.json").read_text())
    text = " ".join(notes)
    assert "reliability indicators are not supported on sharded parameters" in text
    for metric in ("eigenvalues", "trace", "sam", "average", "blocks", "eos"):  # these never failed
        assert f"metric {metric!r}" not in text
    pca = " ".join(json.loads((fsdp_runs / "pca" / "warnings0.json").read_text()))
    assert "metric" not in pca, pca  # blocks and eos among its final metrics
    assert all("reliability" in note for note in notes), notes  # and nothing else was skipped


@pytest.mark.slow
def test_fsdp_interpolation_line_and_centre_equal_the_unsharded_ones(fsdp_runs):
    out = fsdp_runs / "pca"
    model, start = _gathered(out)
    batches = list(fsdp_run.probe_loader())
    recorded = _record(out, "final_interpolation")
    line = interpolation_line(
        model, fsdp_run.ce, batches, start, resolution=len(recorded.alphas), alpha_range=(-0.5, 1.5)
    )
    np.testing.assert_allclose(recorded.alphas, line.alphas)
    np.testing.assert_allclose(recorded.losses, line.losses, rtol=1e-5)
    surface = _record(out, "final_surface")
    centre = surface.losses[len(surface.ys) // 2, len(surface.xs) // 2]
    with torch.no_grad():
        reference = np.mean([float(fsdp_run.ce(model, b)) for b in batches])
    assert abs(centre - reference) <= 1e-5 * abs(reference)


@pytest.mark.slow
def test_fsdp_lambda_max_is_a_converged_lanczos_of_the_gathered_model(fsdp_runs):
    out = fsdp_runs / "pca"
    model, _ = _gathered(out)
    metrics = [
        r for r in load_records(out / "landscape") if r.kind == "metrics" and r.meta["stage"] == "final"
    ]
    assert metrics, "no final metrics record"
    names = [str(n) for n in metrics[-1].names]
    recorded = float(metrics[-1].values[names.index("hessian/lambda_max")])
    batches = list(fsdp_run.probe_loader())
    converged = hessian_eigenvalues(model, fsdp_run.ce, batches, which="both", max_iter=200, tol=1e-9)
    assert abs(recorded - converged.lambda_max) <= 1e-3 * abs(converged.lambda_max)
    # the trace: the same Rademacher probes as one unsharded process (same seed), products by differences
    trace = float(metrics[-1].values[names.index("hessian/trace")])
    seed, samples = metrics[-1].meta["trace"]["seed"], metrics[-1].meta["trace"]["samples"]
    exact = hessian_trace(model, fsdp_run.ce, batches, samples=samples, seed=seed)
    assert abs(trace - exact.trace) <= 1e-3 * abs(exact.trace)
    sam = sam_sharpness(model, fsdp_run.ce, batches, rho=metrics[-1].meta["sam"]["rho"])
    assert float(metrics[-1].values[names.index("sharpness/sam")]) == pytest.approx(sam.sharpness, rel=1e-4)
    options = {k: metrics[-1].meta["average"][k] for k in ("sigma", "samples", "adaptive", "seed")}
    average = average_sharpness(model, fsdp_run.ce, batches, **options)
    recorded_average = float(metrics[-1].values[names.index("sharpness/average")])
    assert recorded_average == pytest.approx(average.sharpness, rel=1e-3, abs=1e-6)
    # per-block curvature and the edge of stability: the same options and seeds on the gathered model
    options = {k: metrics[-1].meta["blocks"][k] for k in ("max_iter", "tol", "samples", "seed")}
    blocks = block_curvature(model, fsdp_run.ce, batches, **options)  # blocks "0", "2", "4": the Linears
    assert metrics[-1].meta["blocks"]["blocks"] == ["net.0", "net.2", "net.4"]
    for key, value in blocks.scalars().items():
        recorded_key = key.replace("blocks/", "blocks/net.")
        assert float(metrics[-1].values[names.index(recorded_key)]) == pytest.approx(value, rel=1e-3), key
    options = {k: metrics[-1].meta["eos"][k] for k in ("max_iter", "tol", "seed")}
    sgd = torch.optim.SGD(model.parameters(), lr=0.2)  # the run's optimizer: threshold 2 / lr
    eos = edge_of_stability_ratio(model, fsdp_run.ce, batches, sgd, **options)
    assert metrics[-1].meta["eos"]["hvp"] == "gradient difference"
    for key, value in eos.scalars().items():
        assert float(metrics[-1].values[names.index(key)]) == pytest.approx(value, rel=1e-3), key


@pytest.mark.slow
def test_fsdp_seeded_random_surface_equals_the_unsharded_one(fsdp_runs):
    out = fsdp_runs / "random"
    model, _ = _gathered(out)
    batches = list(fsdp_run.probe_loader())
    recorded = _record(out, "final_surface")
    assert recorded.meta["directions"] == "random"
    directions = filter_normalized_directions(list(model.parameters()), count=2, seed=recorded.meta["seed"])
    surface = loss_surface(
        model, fsdp_run.ce, batches, directions, resolution=len(recorded.xs), span=recorded.meta["span"]
    )
    np.testing.assert_allclose(recorded.xs, surface.xs)
    np.testing.assert_allclose(recorded.losses, surface.losses, rtol=1e-5)


@pytest.mark.slow
def test_fsdp_hessian_plane_is_the_unsharded_one(fsdp_runs):
    out = fsdp_runs / "hessian"
    model, _ = _gathered(out)
    batches = list(fsdp_run.probe_loader())
    recorded = _record(out, "final_surface")
    assert recorded.meta["directions"] == "hessian"
    iterations = recorded.meta["lanczos_iterations"]
    (d1, d2), eig = hessian_directions(model, fsdp_run.ce, batches, max_iter=iterations, tol=1e-4, seed=0)
    assert recorded.meta["lambda_max"] == pytest.approx(eig.lambda_max, rel=1e-3)
    surface = loss_surface(
        model, fsdp_run.ce, batches, [d1, d2], resolution=len(recorded.xs), span=recorded.meta["span"]
    )
    np.testing.assert_allclose(recorded.losses, surface.losses, rtol=1e-3)
