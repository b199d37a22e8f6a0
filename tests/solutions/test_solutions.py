"""compare_solutions end to end: two runs written through run_weights, one plane, the barrier, the figures."""

import copy
import json
import shutil
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
from lightning_landscape.solutions.weights import MANIFEST, load_run_weights, save_run_weights


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


# Frozen parameters (issue 21, item 6): each run's own model, whatever the passed model holds.


def _frozen_net(seed, backbone=None):
    """Linear (frozen) -> BatchNorm1d -> Tanh -> Linear; ``backbone``: the frozen layer's weights (a seed)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    )
    if backbone is not None:
        torch.manual_seed(backbone)
        net[0].load_state_dict(torch.nn.Linear(4, 8).state_dict())
    net[0].requires_grad_(False)
    return net


def _frozen_batches():
    g = torch.Generator().manual_seed(3)
    return [
        (2 * torch.randn(16, 4, generator=g) + 1, torch.randint(0, 3, (16,), generator=g)) for _ in range(3)
    ]


def _train_frozen(model, batches, folder, lr, **save):
    """Train the trainable layers (the frozen one stays), save the run; return its full state dict."""
    w0, b0 = weights(model), buffer_snapshot(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(10):
        for batch in batches:
            opt.zero_grad()
            ce(model, batch).backward()
            opt.step()
    model.eval()
    save_run_weights(folder / "landscape" / "weights", model, w0, initial_buffers=b0, **save)
    return copy.deepcopy(model.state_dict())


def _loss_of(state, batches):
    """Independent reference: the full state loaded into a fresh model, evaluated with ``ce``."""
    fresh = _frozen_net(99)
    fresh.load_state_dict(state)
    return _own(fresh, batches)


@pytest.fixture(scope="module")
def frozen_runs(tmp_path_factory):
    logs = tmp_path_factory.mktemp("frozen")
    batches = _frozen_batches()
    init = _frozen_net(0, backbone=10)  # one initialization with a loaded backbone
    states = {"init": copy.deepcopy(init.state_dict())}
    states["a"] = _train_frozen(copy.deepcopy(init), batches, logs / "a", 0.5)
    states["b"] = _train_frozen(copy.deepcopy(init), batches[::-1], logs / "b", 0.2)
    other = copy.deepcopy(init)  # the same trainable start, another backbone
    other[0].load_state_dict(_frozen_net(0, backbone=11)[0].state_dict())
    states["c"] = _train_frozen(other, batches, logs / "c", 0.5)
    return logs, states, batches


def test_each_runs_frozen_parameters_are_used(frozen_runs):
    logs, states, batches = frozen_runs
    model = _frozen_net(5)  # a fresh instance: another backbone than the runs'
    before = copy.deepcopy(model.state_dict())
    result = compare_solutions(model, ce, batches, logs / "a", logs / "b", resolution=3, barrier_resolution=5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    own = [_loss_of(states[k], batches) for k in ("init", "a", "b")]
    assert own[1] != pytest.approx(
        _loss_of({**states["a"], "0.weight": before["0.weight"]}, batches), rel=1e-3
    )
    np.testing.assert_allclose(result.surface.meta["point_losses"], own, rtol=1e-5)
    for rec in (result.barrier, result.naive_barrier):
        np.testing.assert_allclose(rec.losses[[0, -1]], own[1:], rtol=1e-5)
        assert rec.meta["frozen_interpolated"] == []
    run = load_run_weights(logs / "a", model)
    assert run.final_frozen is run.initial_frozen
    assert torch.equal(run.final_frozen["0.weight"], states["a"]["0.weight"])


def test_runs_with_different_frozen_parameters(frozen_runs):
    logs, states, batches = frozen_runs
    with pytest.raises(ValueError, match=r"frozen parameters \['0.weight', '0.bias'\] differ"):
        compare_solutions(_frozen_net(5), ce, batches, logs / "a", logs / "c", resolution=3)
    result = compare_solutions(
        _frozen_net(5),
        ce,
        batches,
        logs / "a",
        logs / "c",
        shared_plane=False,
        barrier_resolution=3,
        save=False,
    )
    own = [_loss_of(states[k], batches) for k in ("a", "c")]
    for rec in (result.barrier, result.naive_barrier):
        np.testing.assert_allclose(rec.losses[[0, -1]], own, rtol=1e-5)
        assert rec.meta["frozen_interpolated"] == ["0.weight", "0.bias"]
    # The naive curve's midpoint: the average of the two full state dicts (frozen layer included).
    mid = {k: (v + states["c"][k]) / 2 if v.is_floating_point() else v for k, v in states["a"].items()}
    assert result.naive_barrier.losses[1] == pytest.approx(_loss_of(mid, batches), rel=1e-5)
    full = [torch.cat([s[k].reshape(-1) for k in s if "running" not in k and "num_batches" not in k]) for s in
            (states["a"], states["c"])]  # fmt: skip
    assert result.barrier.meta["distance"] == pytest.approx(float((full[0] - full[1]).norm()), rel=1e-5)


def test_frozen_parameters_changed_during_a_run(tmp_path):
    batches = _frozen_batches()
    init = _frozen_net(0, backbone=10)
    start = {n: p.detach().clone() for n, p in init.named_parameters() if not p.requires_grad}
    _train_frozen(copy.deepcopy(init), batches, tmp_path / "a", 0.5)
    moved = copy.deepcopy(init)
    with torch.no_grad():
        moved[0].bias.add_(1.0)  # the frozen layer changed during the run (given: stored)
    _train_frozen(moved, batches, tmp_path / "b", 0.5, initial_frozen=start)
    run = load_run_weights(tmp_path / "b")
    assert torch.equal(run.initial_frozen["0.bias"], start["0.bias"])
    assert torch.equal(run.final_frozen["0.bias"], start["0.bias"] + 1.0)
    with pytest.raises(ValueError, match=r"outside the landscape \['0.bias'\] changed during run 'b'"):
        compare_solutions(_frozen_net(5), ce, batches, tmp_path / "a", tmp_path / "b", resolution=3)
    # A parameter outside `names` that trains, with no initial values given: unknown, refused the same way.
    net = _frozen_net(0)
    net[0].requires_grad_(True)
    names = ["3.weight", "3.bias"]
    w0 = [p.detach().clone() for n, p in net.named_parameters() if n in names]
    save_run_weights(tmp_path / "c", net, w0, initial_buffers=buffer_snapshot(net), names=names)
    assert json.loads((tmp_path / "c" / MANIFEST).read_text())["initial_frozen"] == "unknown"
    assert load_run_weights(tmp_path / "c").initial_frozen is None
    with pytest.raises(ValueError, match=r"`initial_frozen` must hold the parameters outside `names`"):
        save_run_weights(tmp_path / "d", net, w0, initial_buffers=buffer_snapshot(net), names=names,
                         initial_frozen={"0.weight": net[0].weight})  # fmt: skip


def test_weights_written_before_frozen_parameters_were_saved(frozen_runs, tmp_path):
    logs, states, batches = frozen_runs
    # A folder as 0.1 wrote it: version 1, no frozen parameters.
    for run in ("a", "b"):
        src, dst = logs / run / "landscape" / "weights", tmp_path / run / "landscape" / "weights"
        dst.mkdir(parents=True)
        manifest = json.loads((src / MANIFEST).read_text())
        assert manifest["format_version"] == 2 and manifest["frozen_names"] == ["0.weight", "0.bias"]
        manifest = {k: v for k, v in manifest.items() if not k.startswith(("frozen_", "initial_frozen"))}
        (dst / MANIFEST).write_text(json.dumps({**manifest, "format_version": 1}))
        with np.load(src / "weights.npz", allow_pickle=False) as data:
            np.savez(dst / "weights.npz", **{k: data[k] for k in data.files if "frozen" not in k})
    assert load_run_weights(tmp_path / "a").final_frozen is None
    model = _frozen_net(0, backbone=10)  # the runs' own backbone: the 0.1 behaviour is then right
    with pytest.warns(
        UserWarning, match=r"before frozen parameters were saved: the model's own values of \["
    ):
        result = compare_solutions(
            model, ce, batches, tmp_path / "a", tmp_path / "b", resolution=3, save=False
        )
    own = [_loss_of(states[k], batches) for k in ("a", "b")]
    np.testing.assert_allclose(result.barrier.losses[[0, -1]], own, rtol=1e-5)
    # An old folder beside a new one with another backbone: the line interpolates the model's and its.
    with pytest.warns(UserWarning, match="before frozen parameters were saved"):
        result = compare_solutions(
            model,
            ce,
            batches,
            tmp_path / "a",
            logs / "c",
            shared_plane=False,
            barrier_resolution=3,
            save=False,
        )
    own = [_loss_of(states[k], batches) for k in ("a", "c")]
    np.testing.assert_allclose(result.barrier.losses[[0, -1]], own, rtol=1e-5)
    manifest = json.loads((tmp_path / "a" / "landscape" / "weights" / MANIFEST).read_text())
    (tmp_path / "a" / "landscape" / "weights" / MANIFEST).write_text(
        json.dumps({**manifest, "format_version": 3})
    )
    with pytest.raises(ValueError, match="format_version 3 is not supported"):
        load_run_weights(tmp_path / "a")
    # A model without frozen parameters is written as version 1, which 0.1 reads.
    net = torch.nn.Linear(2, 1)
    save_run_weights(tmp_path / "v1", net, [p.detach().clone() for p in net.parameters()])
    assert json.loads((tmp_path / "v1" / MANIFEST).read_text())["format_version"] == 1


def test_the_same_run_given_twice(frozen_runs, tmp_path):
    logs, _, batches = frozen_runs
    with pytest.raises(ValueError, match=r"`run_a` and `run_b` are the same run \(both are"):
        compare_solutions(_frozen_net(5), ce, batches, logs / "a", logs / "a" / "landscape" / "weights")
    shutil.copytree(logs / "a", tmp_path / "copy")
    with pytest.raises(ValueError, match=r"are the same run \(.* hold identical final weights"):
        compare_solutions(_frozen_net(5), ce, batches, logs / "a", tmp_path / "copy", shared_plane=False)


def test_a_second_run_folder_gets_the_log_directory_label(tmp_path):
    # A second run into one log directory writes to landscape-2/ (issue 21): still the log directory's run.
    model = torch.nn.Linear(2, 1)
    init = [p.detach().clone() for p in model.parameters()]
    save_run_weights(tmp_path / "sgd" / "landscape-2" / "weights", model, init)
    save_run_weights(tmp_path / "sam" / "landscape" / "weights", model, init)
    assert run_labels(tmp_path / "sgd", tmp_path / "sam") == ("sgd", "sam")
    assert default_shared_dir(tmp_path / "sgd", tmp_path / "sam") == tmp_path / "shared_sgd_vs_sam"
