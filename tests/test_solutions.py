"""compare_solutions end to end: two runs written through run_weights, one plane, the barrier, the figures."""

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.bn_models import accuracy, bn_batches, bn_cnn, ce, naive_point, train_steps, weights

from lightning_landscape import compare_solutions
from lightning_landscape.functional import buffer_snapshot, flatten
from lightning_landscape.plots.solutions import barrier_figure, shared_plane_figure
from lightning_landscape.records.record import load_records
from lightning_landscape.solutions.compare import default_shared_dir, load_solutions, run_labels
from lightning_landscape.solutions.weights import load_run_weights, save_run_weights


def _run(model, batches, log_dir, order, lr, steps=3):
    """Train ``model`` in place (one epoch over ``order`` per step), saving its snapshots and weights."""
    w0, b0 = weights(model), buffer_snapshot(model)
    snaps = [flatten(w0)]
    for _ in range(steps):
        train_steps(model, [batches[i] for i in order], epochs=1, lr=lr)
        snaps.append(flatten(weights(model)))
    model.eval()
    save_run_weights(
        log_dir / "landscape" / "weights",
        model,
        w0,
        initial_buffers=b0,
        trajectory=torch.stack(snaps),
        steps=[len(order) * k for k in range(steps + 1)],
        meta={"global_step": len(order) * steps},
    )
    return model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs from one initialization (different data orders and learning rates), and a third seed."""
    logs = tmp_path_factory.mktemp("logs")
    batches = bn_batches(4)
    init = bn_cnn(0)
    a = _run(copy.deepcopy(init), batches, logs / "sgd" / "version_0", [0, 1, 2, 3], 0.1)
    b = _run(copy.deepcopy(init), batches, logs / "sam" / "version_0", [3, 2, 1, 0], 0.05)
    c = _run(bn_cnn(1), batches, logs / "seed1" / "version_0", [0, 1, 2, 3], 0.1)
    return logs, init, a, b, c, batches[:3]


def _own(model, batches, fn=ce):
    """The model's own mean loss on the batches, evaluated on itself (its weights and statistics)."""
    model.eval()
    with torch.no_grad():
        return float(np.mean([fn(model, b).item() for b in batches]))


def test_shared_plane_and_barrier_end_to_end(runs):
    logs, init, a, b, _, batches = runs
    template = bn_cnn(5)  # any weights: the runs' are loaded
    before = {k: v.clone() for k, v in template.state_dict().items()}
    result = compare_solutions(
        template,
        ce,
        batches,
        logs / "sgd" / "version_0",
        logs / "sam" / "version_0",
        resolution=5,
        barrier_resolution=5,
        metric_fn=accuracy,
    )
    assert all(torch.equal(before[k], v) for k, v in template.state_dict().items())
    surface = result.surface

    # The three points' coordinates against a numpy float64 Gram-Schmidt of the saved weights.
    w0, wa, wb = (flatten(weights(m), torch.float64).numpy() for m in (init, a, b))
    e1 = (wa - w0) / np.linalg.norm(wa - w0)
    r = (wb - w0) - ((wb - w0) @ e1) * e1
    e2 = r / np.linalg.norm(r)
    expected = np.array([[0, 0], [(wa - w0) @ e1, 0], [(wb - w0) @ e1, (wb - w0) @ e2]])
    np.testing.assert_allclose(surface.meta["points"], expected, atol=1e-6)
    assert surface.meta["point_labels"] == ["init", "sgd", "sam"]

    # The surface at them: each model's own loss and accuracy (own BatchNorm statistics).
    own = [naive_point(init, weights(init), batches), _own(a, batches), _own(b, batches)]
    np.testing.assert_allclose(surface.meta["point_losses"], own, atol=1e-6)
    accs = [
        naive_point(init, weights(init), batches, fn=accuracy),
        *(_own(m, batches, accuracy) for m in (a, b)),
    ]
    np.testing.assert_allclose(surface.meta["point_metrics"], accs, atol=1e-6)

    # Both trajectories: start at the initialization, end at their own solution, steps recorded.
    assert surface.path.shape == surface.path2.shape == (4, 2)
    np.testing.assert_allclose(surface.path[0], [0, 0], atol=1e-6)
    np.testing.assert_allclose(surface.path2[0], [0, 0], atol=1e-6)
    np.testing.assert_allclose(surface.path[-1], expected[1], atol=1e-5)
    np.testing.assert_allclose(surface.path2[-1], expected[2], atol=1e-5)
    assert surface.meta["path_steps"] == [[0, 4, 8, 12]] * 2

    # The barrier: endpoints are the models' own losses; re-estimated statistics change the curve.
    line, naive = result.barrier, result.naive_barrier
    assert line.meta["bn"] == "recompute" and naive.meta["bn"] == "interpolate"
    for rec in (line, naive):
        np.testing.assert_allclose(rec.losses[[0, -1]], own[1:], atol=1e-6)
    mid = [(x + y) / 2 for x, y in zip(weights(a), weights(b))]
    assert line.losses[2] == pytest.approx(naive_point(a, mid, batches, recompute=True), rel=1e-5)
    ba, bb = buffer_snapshot(a), buffer_snapshot(b)
    halfway = {k: (ba[k] + bb[k]) / 2 for k in ba}
    assert naive.losses[2] == pytest.approx(naive_point(a, mid, batches, halfway), rel=1e-5)
    assert np.abs(line.losses - naive.losses).max() > 1e-4

    # Written beside the runs, read back unchanged.
    assert result.directory == logs / "shared_sgd_vs_sam_version_0"
    assert result.directory == default_shared_dir(logs / "sgd" / "version_0", logs / "sam" / "version_0")
    loaded = {r.meta["name"]: r for r in load_records(result.directory)}
    assert sorted(loaded) == ["barrier", "barrier_naive", "shared_plane"]
    assert all(r.meta["stage"] == "shared" for r in loaded.values())
    np.testing.assert_array_equal(loaded["shared_plane"].path2, surface.path2)
    np.testing.assert_array_equal(loaded["barrier"].losses, line.losses)
    summary = load_solutions(result.directory).summary()
    assert summary == pytest.approx(result.summary())
    assert summary["barrier"] == line.meta["barrier"] and summary["loss_B"] == pytest.approx(own[2])
    assert summary["distance_init_A"] == pytest.approx(np.linalg.norm(wa - w0))

    # The figures: both paths drawn as they are in the record, both curves, the metric on a twin axis.
    fig = shared_plane_figure(loaded["shared_plane"])
    drawn = {ln.get_label(): ln.get_xydata() for ln in fig.axes[0].lines}
    np.testing.assert_allclose(drawn["sgd"], surface.path)
    np.testing.assert_allclose(drawn["sam"], surface.path2)
    fig = barrier_figure([loaded["barrier"], loaded["barrier_naive"]])
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts[0].startswith("BN statistics re-estimated") and texts[1].startswith("naive")
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel().startswith("accuracy")


def test_runs_from_different_initializations(runs, tmp_path):
    logs, _, a, _, c, batches = runs
    run_a, run_c = logs / "sgd" / "version_0", logs / "seed1" / "version_0"
    with pytest.raises(ValueError, match="runs do not start from the same initialization"):
        compare_solutions(bn_cnn(0), ce, batches, run_a, run_c, resolution=3, barrier_resolution=3)
    # Two seeds: the barrier alone, as the linear-mode-connectivity question asks it.
    result = compare_solutions(
        bn_cnn(0),
        ce,
        batches,
        run_a,
        load_run_weights(run_c),
        shared_plane=False,
        barrier_resolution=5,
        out_dir=tmp_path,
    )
    assert result.surface is None and result.directory == tmp_path
    own = [_own(a, batches), _own(c, batches)]
    for rec in (result.barrier, result.naive_barrier):
        np.testing.assert_allclose(rec.losses[[0, -1]], own, atol=1e-6)
    assert np.abs(result.barrier.losses - result.naive_barrier.losses).max() > 0.01
    assert result.barrier.meta["init_difference"] > 0.1
    assert sorted(r.meta["name"] for r in load_records(tmp_path)) == ["barrier", "barrier_naive"]


def test_bad_input_and_labels(runs, tmp_path):
    logs, *_, batches = runs
    run_a, run_b = logs / "sgd" / "version_0", logs / "sam" / "version_0"
    assert run_labels(run_a, run_b) == ("sgd", "sam")
    with pytest.raises(ValueError, match=r"'5.weight' has shape \(8, 144\) in the file"):
        wider = torch.nn.Sequential(*list(bn_cnn(0))[:5], torch.nn.Linear(144, 9))
        compare_solutions(wider, ce, batches, run_a, run_b)
    with pytest.raises(ValueError, match="no saved weights"):
        compare_solutions(bn_cnn(0), ce, batches, run_a, tmp_path)
    with pytest.raises(ValueError, match="`surface_bn` must be one of"):
        compare_solutions(bn_cnn(0), ce, batches, run_a, run_b, surface_bn="none")


def test_reading_shared_records_does_not_import_torch():
    # `lightning-landscape compare` draws these records: it must start without torch.
    code = (
        "import sys, lightning_landscape.solutions.compare, lightning_landscape.solutions.weights, "
        "lightning_landscape.plots.solutions; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pairs_of_seeds_or_versions_get_folders_of_their_own(tmp_path):
    # Before, sgd/seed0 vs sam/seed0 and sgd/seed1 vs sam/seed1 both wrote shared_sgd_vs_sam/: the
    # second pair overwrote the first and `compare` then reported the wrong pair's barrier.
    model = torch.nn.Linear(2, 1)
    init = [p.detach().clone() for p in model.parameters()]
    runs = ["sgd/seed0", "sam/seed0", "sgd/seed1", "sam/seed1", "sgd/version_0", "sgd/version_1"]
    for run in runs:
        save_run_weights(tmp_path / run / "landscape" / "weights", model, init)
    folders = [default_shared_dir(tmp_path / a, tmp_path / b) for a, b in zip(runs[::2], runs[1::2])]
    assert folders == [
        tmp_path / "shared_sgd_vs_sam_seed0",
        tmp_path / "shared_sgd_vs_sam_seed1",
        tmp_path / "sgd" / "shared_version_0_vs_version_1",
    ]
    assert run_labels(tmp_path / "sgd/seed1", tmp_path / "sam/seed1") == ("sgd", "sam")


def test_a_second_run_folder_gets_the_log_directory_label(tmp_path):
    # A second run into one log directory writes to landscape-2/ (issue 21): still the log directory's run.
    model = torch.nn.Linear(2, 1)
    init = [p.detach().clone() for p in model.parameters()]
    save_run_weights(tmp_path / "sgd" / "landscape-2" / "weights", model, init)
    save_run_weights(tmp_path / "sam" / "landscape" / "weights", model, init)
    assert run_labels(tmp_path / "sgd", tmp_path / "sam") == ("sgd", "sam")
    assert default_shared_dir(tmp_path / "sgd", tmp_path / "sam") == tmp_path / "shared_sgd_vs_sam"
