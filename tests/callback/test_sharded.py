"""Models trained sharded (FSDP2 through ModelParallelStrategy): landscapes from each rank's slices.

The two-process fits run ``tests/helpers/fsdp_run.py`` once (every scenario) in a subprocess; every
number the callback recorded there is then recomputed on one unsharded process, with the functional API,
from the full weights (and BatchNorm statistics, and snapshots) the script gathered.
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

from lightning_landscape import compare_solutions, load_records, load_run_weights, save_run_weights
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
    landscape_reliability,
    loss_line,
    loss_surface,
    sam_sharpness,
)
from lightning_landscape.functional.landscape.params import flatten, unflatten
from lightning_landscape.functional.landscape.shards import ShardLayout, sharded_filter_normalized_directions
from lightning_landscape.functional.landscape.trajectory import trajectory_pca
from lightning_landscape.functional.trust.reliability import ReliabilitySettings

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


def test_sharded_random_directions_continue_the_unsharded_sequence():
    """Draw after draw, each rank's slices are the unsharded draws' rows (the reliability's extra directions
    skip the plane's two draws and go on: the generators must stay in step)."""
    from lightning_landscape.functional.landscape.directions import random_direction
    from lightning_landscape.functional.landscape.shards import sharded_random_direction

    params = list(_net().parameters())
    whole_generator = torch.Generator().manual_seed(7)
    whole = [random_direction(params, whole_generator) for _ in range(3)]
    for layout in _FakeShards(params).layouts:
        generator = torch.Generator().manual_seed(7)
        for full in whole:
            mine = sharded_random_direction(layout, generator)
            for i, (f, piece) in enumerate(zip(full, mine, strict=True)):
                rows = slice(layout.row_offsets[i], layout.row_offsets[i] + piece.shape[0])
                assert torch.equal(piece, f[rows])
                assert piece.untyped_storage().nbytes() == piece.numel() * piece.element_size()  # not a view


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
        [sys.executable, str(SCRIPT), str(out), "--scenarios", "pca,random,hessian,bare,bn,frozen,defaults"],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _ranks(out: Path) -> dict[int, dict]:
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}


def _gathered(out: Path, make=fsdp_run.make_net) -> tuple[nn.Module, list[torch.Tensor]]:
    """The unsharded model at the run's final weights (and BatchNorm statistics), and its initial weights
    (as directions)."""
    arrays = np.load(out / "weights.npz")
    model = make()
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(torch.from_numpy(arrays[f"final/{name}"]))
        for name, b in model.named_buffers():
            if b.is_floating_point():
                b.copy_(torch.from_numpy(arrays[f"final_buffers/{name}"]))
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
    for scenario in ("pca", "random", "hessian", "defaults"):
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
def test_fsdp_save_weights_streams_the_gathered_trajectory(fsdp_runs):
    """Every saved snapshot is the full weights gathered independently at its step, bit for bit."""
    out = fsdp_runs / "random"
    saved = load_run_weights(out / "landscape" / "weights", fsdp_run.ShardedNet())
    arrays = np.load(out / "weights.npz")
    assert saved.trajectory is not None and list(saved.steps) == arrays["steps"].tolist()
    np.testing.assert_array_equal(saved.trajectory.numpy(), arrays["trajectory"])
    np.testing.assert_array_equal(saved.initial.numpy(), arrays["trajectory"][0])


@pytest.mark.slow
def test_fsdp_save_weights_keeps_frozen_parameters_whole(fsdp_runs):
    """A frozen first layer (outside the landscape, sharded like the rest) is saved gathered, as the model
    holds it; the trainable weights as everywhere else."""
    out = fsdp_runs / "frozen"
    for rank in (0, 1):
        assert json.loads((out / f"warnings{rank}.json").read_text()) == []
    model = fsdp_run.ShardedNet()
    model.net[0].requires_grad_(False)
    saved = load_run_weights(out / "landscape" / "weights", model)
    arrays = np.load(out / "weights.npz")
    assert saved.final_frozen is not None and sorted(saved.final_frozen) == ["net.0.bias", "net.0.weight"]
    for name in ("0.weight", "0.bias"):
        np.testing.assert_array_equal(saved.final_frozen[f"net.{name}"].numpy(), arrays[f"final/{name}"])
    trainable = np.concatenate(
        [arrays[f"final/{n}"].ravel() for n in ("2.weight", "2.bias", "4.weight", "4.bias")]
    )
    np.testing.assert_array_equal(saved.final.numpy(), trainable)


@pytest.mark.slow
def test_fsdp_fit_warns_of_nothing(fsdp_runs):
    """The reliability indicators, the metrics and the BatchNorm modes all ran sharded: no warning."""
    for scenario in ("pca", "random", "bn"):
        for rank in (0, 1):
            notes = json.loads((fsdp_runs / scenario / f"warnings{rank}.json").read_text())
            assert notes == [], (scenario, rank, notes)


@pytest.mark.slow
def test_fsdp_reliability_equals_the_unsharded_one(fsdp_runs):
    """The final reliability record of the PCA run (direction sensitivity, distance profiles, trace / P,
    path fit, true losses on the path, random walk) recomputed on one unsharded process with
    :func:`landscape_reliability`, on the gathered weights and the snapshots gathered at each step."""
    out = fsdp_runs / "pca"
    model, _ = _gathered(out)
    params = list(model.parameters())
    batches = list(fsdp_run.probe_loader())
    arrays = np.load(out / "weights.npz")
    surface = _record(out, "final_surface")
    recorded = _record(out, "final_reliability")
    distances = [_record(out, f"final_distance{i}") for i in (1, 2)]
    metrics = _record(out, "final_metrics")
    steps = list(surface.meta["snapshot_steps"])
    rows = [arrays["steps"].tolist().index(s) for s in steps]
    snapshots = torch.from_numpy(arrays["trajectory"][rows])
    pca = trajectory_pca(snapshots, flatten(params))
    plane = [unflatten(c, params) for c in pca.components]
    unit = float(flatten(params, dtype=torch.float64).norm())
    assert recorded.meta["unit"] == pytest.approx(unit, rel=1e-12)
    settings = {**recorded.meta["settings"], "distances": tuple(recorded.meta["settings"]["distances"])}
    values = dict(zip([str(n) for n in recorded.names], recorded.values.tolist()))
    trace = float(metrics.values[[str(n) for n in metrics.names].index("hessian/trace")])
    expected, lines = landscape_reliability(
        model, fsdp_run.ce, batches, plane, surface, pca=pca, snapshots=snapshots,
        times=[*steps, surface.meta["global_step"]], seed=recorded.meta["seed"], unit=unit,
        noise=values.get("noise/relative_stderr"), contour_spacing=values.get("noise/contour_spacing"),
        trace=trace, settings=ReliabilitySettings(**settings),
    )  # fmt: skip
    assert [str(n) for n in expected.names] == [str(n) for n in recorded.names]
    for key in ("direction/curvature_mean", "direction/random_curvature_mean", "path/pc1", "path/structured"):
        assert key in values  # every part of the indicators ran sharded
    np.testing.assert_allclose(recorded.values, expected.values, rtol=1e-5, atol=1e-9)
    for field in ("direction_curvatures", "direction_widths", "path_losses", "path_distances"):
        np.testing.assert_allclose(
            getattr(recorded, field), getattr(expected, field), rtol=1e-5, err_msg=field
        )
    for line, reference in zip(distances, lines):
        np.testing.assert_allclose(line.alphas, reference.alphas, rtol=1e-12)
        np.testing.assert_allclose(line.losses, reference.losses, rtol=1e-5)
    assert recorded.meta["flags"] == expected.meta["flags"]


@pytest.mark.slow
def test_fsdp_at_every_default_gives_the_unsharded_line_centre_and_lambda_max(fsdp_runs):
    """The issue's check: the callback at its defaults (a fixed probe loader, TensorBoard), then everything
    recomputed on one unsharded process from the gathered final weights."""
    out = fsdp_runs / "defaults"
    folder = out / "tb" / "version_0" / "landscape"
    records = load_records(folder)
    model, start = _gathered(out)
    finals = {r.kind: r for r in records if r.meta.get("stage") == "final"}
    assert {"surface", "line", "metrics"} <= set(finals), sorted(finals)
    interpolation = next(r for r in records if r.meta.get("name", "").startswith("final_interpolation"))
    batches = list(fsdp_run.probe_loader())[: interpolation.meta["probe_batches"]]  # what the budget kept
    line = interpolation_line(
        model, fsdp_run.ce, batches, start, resolution=len(interpolation.alphas),
        alpha_range=(float(interpolation.alphas[0]), float(interpolation.alphas[-1])),
    )  # fmt: skip
    np.testing.assert_allclose(interpolation.alphas, line.alphas)
    np.testing.assert_allclose(interpolation.losses, line.losses, rtol=1e-5)
    surface = finals["surface"]
    surface_batches = list(fsdp_run.probe_loader())[: surface.meta["probe_batches"]]
    with torch.no_grad():
        reference = np.mean([float(fsdp_run.ce(model, b)) for b in surface_batches])
    assert abs(surface.losses[len(surface.ys) // 2, len(surface.xs) // 2] - reference) <= 1e-5 * reference
    metrics = finals["metrics"]
    assert metrics.meta["eigenvalues"]["hvp"] == "gathered double backward"
    recorded = float(metrics.values[[str(n) for n in metrics.names].index("hessian/lambda_max")])
    metric_batches = list(fsdp_run.probe_loader())[: metrics.meta["eigenvalues"]["probe_batches"]]
    converged = hessian_eigenvalues(model, fsdp_run.ce, metric_batches, max_iter=200, tol=1e-9)
    assert abs(recorded - converged.lambda_max) <= 1e-3 * abs(converged.lambda_max)
    assert list((out / "tb" / "version_0").glob("events.out.tfevents.*"))  # figures and scalars logged


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
    assert abs(recorded - converged.lambda_max) <= 1e-5 * abs(converged.lambda_max)
    assert metrics[-1].meta["eigenvalues"]["hvp"] == "gathered double backward"
    # the trace: the same Rademacher probes as one unsharded process (same seed), exact products
    trace = float(metrics[-1].values[names.index("hessian/trace")])
    seed, samples = metrics[-1].meta["trace"]["seed"], metrics[-1].meta["trace"]["samples"]
    exact = hessian_trace(model, fsdp_run.ce, batches, samples=samples, seed=seed)
    assert abs(trace - exact.trace) <= 1e-5 * abs(exact.trace)
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
        assert float(metrics[-1].values[names.index(recorded_key)]) == pytest.approx(value, rel=1e-5), key
    options = {k: metrics[-1].meta["eos"][k] for k in ("max_iter", "tol", "seed")}
    sgd = torch.optim.SGD(model.parameters(), lr=0.2)  # the run's optimizer: threshold 2 / lr
    eos = edge_of_stability_ratio(model, fsdp_run.ce, batches, sgd, **options)
    assert metrics[-1].meta["eos"]["hvp"] == "gathered double backward"
    for key, value in eos.scalars().items():
        assert float(metrics[-1].values[names.index(key)]) == pytest.approx(value, rel=1e-5), key


@pytest.mark.slow
def test_fsdp_sharded_hessian_difference_keeps_to_the_slices_within_its_error(fsdp_runs):
    """``sharded_hessian="difference"`` (the random-directions run): gradient differences, lambda_max within
    1e-3 of the converged one on this smooth (tanh) network."""
    out = fsdp_runs / "random"
    model, _ = _gathered(out)
    metrics = [
        r for r in load_records(out / "landscape") if r.kind == "metrics" and r.meta["stage"] == "final"
    ]
    assert metrics[-1].meta["eigenvalues"]["hvp"] == "gradient difference"
    recorded = float(metrics[-1].values[[str(n) for n in metrics[-1].names].index("hessian/lambda_max")])
    batches = list(fsdp_run.probe_loader())
    converged = hessian_eigenvalues(model, fsdp_run.ce, batches, max_iter=200, tol=1e-9)
    assert abs(recorded - converged.lambda_max) <= 1e-3 * abs(converged.lambda_max)


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


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["interpolate", "recompute"])
def test_fsdp_batch_norm_modes_equal_the_unsharded_ones(fsdp_runs, mode):
    """A BatchNorm network trained sharded under bn="interpolate" and bn="recompute": the final surface,
    axis lines and interpolation line equal the functional ones on the gathered weights and statistics."""
    out = fsdp_runs / "bn"
    model, start = _gathered(out, fsdp_run.make_bn_net)
    arrays = np.load(out / "weights.npz")
    batches = list(fsdp_run.probe_loader())
    params = list(model.parameters())
    folder = out / "landscape" / mode
    record = {n: next(r for r in load_records(folder) if r.meta["name"].startswith(f"final_{n}")) for n in
              ("surface", "line1", "line2", "interpolation")}  # fmt: skip
    plane_bn = "recompute" if mode == "recompute" else "keep"
    directions = filter_normalized_directions(params, count=2, seed=record["surface"].meta["seed"])
    surface = loss_surface(
        model, fsdp_run.ce, batches, directions, resolution=len(record["surface"].xs),
        span=record["surface"].meta["span"], bn=plane_bn,
    )  # fmt: skip
    np.testing.assert_allclose(record["surface"].losses, surface.losses, rtol=1e-5)
    for axis in (0, 1):
        alphas = record[f"line{axis + 1}"].alphas
        line = loss_line(model, fsdp_run.ce, batches, directions[axis], alphas=alphas, bn=plane_bn)
        np.testing.assert_allclose(record[f"line{axis + 1}"].losses, line.losses, rtol=1e-5)
    initial_buffers = {
        n: torch.from_numpy(arrays[f"initial_buffers/{n}"])
        for n, b in model.named_buffers()
        if b.is_floating_point()
    }
    interp = record["interpolation"]
    line = interpolation_line(
        model, fsdp_run.ce, batches, start, resolution=len(interp.alphas), alpha_range=(-0.5, 1.5),
        start_buffers=initial_buffers if mode == "interpolate" else None, bn=mode,
    )  # fmt: skip
    np.testing.assert_allclose(interp.losses, line.losses, rtol=1e-5)
    if mode == "interpolate":  # the saved weights carry both ranks' (equal) statistics, initial and final
        saved = load_run_weights(folder / "weights", fsdp_run.ShardedBNNet())
        for n, t in initial_buffers.items():
            np.testing.assert_array_equal(saved.initial_buffers[f"net.{n}"].numpy(), t.numpy())
            np.testing.assert_array_equal(
                saved.final_buffers[f"net.{n}"].numpy(), arrays[f"final_buffers/{n}"]
            )


def _unsharded_fit(out: Path, lr: float) -> Path:
    """One process, the same network and initialization as the sharded runs, another learning rate."""
    import lightning.pytorch as pl

    from lightning_landscape import LossLandscapeCallback

    class Plain(fsdp_run.ShardedNet):
        def configure_model(self) -> None:
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=lr)

        def train_dataloader(self):
            return torch.utils.data.DataLoader(fsdp_run.NoisyDataset(64, 0), batch_size=8)

    pl.seed_everything(0)
    options = {**fsdp_run.CALLBACK_OPTIONS, **fsdp_run.SCENARIOS["random"], "metrics": None,
               "final_metrics": None, "reliability": False}  # fmt: skip
    cb = LossLandscapeCallback(probe_dataloader=fsdp_run.probe_loader(), **options)
    trainer = pl.Trainer(
        default_root_dir=str(out), accelerator="cpu", devices=1, max_epochs=2, logger=False, callbacks=[cb],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(Plain())
    return out


@pytest.mark.slow
def test_fsdp_saved_weights_compare_as_the_gathered_ones(fsdp_runs, tmp_path):
    """compare_solutions and `lightning-landscape compare` on the weights the sharded run streamed give
    what they give on the same weights gathered independently and written by the unsharded writer."""
    sharded = fsdp_runs / "random"
    other = _unsharded_fit(fsdp_runs / "unsharded", lr=0.05)
    arrays = np.load(sharded / "weights.npz")
    net = fsdp_run.ShardedNet()  # names "net.*", not sharded (configure_model is not called)
    names = [n for n, _ in net.named_parameters()]
    final = [torch.from_numpy(arrays[f"final/{n.removeprefix('net.')}"]) for n in names]
    reference = save_run_weights(
        tmp_path / "gathered" / "weights", net, torch.from_numpy(arrays["trajectory"][0]), final=final,
        trajectory=torch.from_numpy(arrays["trajectory"]), steps=arrays["steps"].tolist(),
    )  # fmt: skip
    saved = load_run_weights(sharded / "landscape" / "weights", net)
    np.testing.assert_array_equal(saved.final.numpy(), torch.cat([t.reshape(-1) for t in final]).numpy())
    batches = list(fsdp_run.probe_loader())
    options = {"resolution": 5, "barrier_resolution": 5}
    mine = compare_solutions(net, fsdp_run.ce, batches, sharded, other, **options)
    theirs = compare_solutions(
        net, fsdp_run.ce, batches, reference, other, out_dir=tmp_path / "ref", **options
    )
    assert mine.summary() == theirs.summary()
    np.testing.assert_array_equal(mine.surface.losses, theirs.surface.losses)
    np.testing.assert_array_equal(mine.barrier.losses, theirs.barrier.losses)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cli = subprocess.run(
        [sys.executable, "-m", "lightning_landscape", "compare", str(sharded), str(other), "--allow-mismatch",
         "--out", str(tmp_path / "compare.png")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert (tmp_path / "compare_barrier.png").is_file()
    from lightning_landscape.cli.common import format_table
    from lightning_landscape.cli.compare import summary_rows

    printed = {line.split()[0]: line.split() for line in cli.stdout.splitlines() if line.strip()}
    table = format_table(summary_rows(theirs)).splitlines()
    expected = {line.split()[0]: line.split() for line in table if line.split()[0] in theirs.summary()}
    assert expected and all(printed.get(key) == row for key, row in expected.items()), (expected, printed)
