"""A run's weights on disk: exact round trip, refusal of a mismatched model, size guard, atomicity."""

import json

import numpy as np
import pytest
import torch
from helpers.bn_models import bn_batches, bn_cnn, train_steps, weights
from torch import nn

from lightning_landscape.functional import buffer_snapshot, flatten
from lightning_landscape.records.record import LineRecord, load_records, save_record
from lightning_landscape.solutions.weights import (
    MANIFEST,
    find_run_weights,
    load_run_weights,
    run_weights_nbytes,
    save_run_weights,
)


@pytest.fixture(scope="module")
def trained():
    model = bn_cnn(0)
    w0, b0 = weights(model), buffer_snapshot(model)
    snaps = [flatten(w0)]
    for _ in range(2):
        train_steps(model, bn_batches(2), epochs=1)
        snaps.append(flatten(weights(model)))
    return model.eval(), w0, b0, torch.stack(snaps)


def test_round_trip_is_exact(trained, tmp_path):
    model, w0, b0, traj = trained
    folder = tmp_path / "landscape" / "weights"
    save_run_weights(
        folder, model, w0, initial_buffers=b0, trajectory=traj, steps=[0, 2, 4], meta={"global_step": 4}
    )
    run = load_run_weights(tmp_path, model)  # found below the log directory
    assert run.directory == folder
    assert run.names == [n for n, _ in model.named_parameters()]
    assert run.shapes == [tuple(p.shape) for p in model.parameters()]
    assert torch.equal(run.initial, flatten(w0)) and torch.equal(run.final, flatten(weights(model)))
    assert torch.equal(run.trajectory, traj) and run.steps.tolist() == [0, 2, 4]
    assert run.meta == {"global_step": 4}
    now = buffer_snapshot(model)
    assert list(run.final_buffers) == list(now) == list(run.initial_buffers)
    assert all(torch.equal(run.final_buffers[k], now[k]) for k in now)
    assert all(torch.equal(run.initial_buffers[k], b0[k]) for k in b0)
    assert not torch.equal(run.final_buffers["1.running_mean"], b0["1.running_mean"])  # training moved them
    split = run.split(run.initial, like=list(model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(split, w0))


def test_bfloat16_storage_and_float64_models(trained, tmp_path):
    model, w0, b0, traj = trained
    save_run_weights(
        tmp_path, model, w0, initial_buffers=b0, trajectory=traj, steps=[0, 1, 2], dtype=torch.bfloat16
    )
    run = load_run_weights(tmp_path)
    assert run.initial.dtype == run.trajectory.dtype == torch.bfloat16
    assert torch.equal(run.trajectory, traj.to(torch.bfloat16))  # bit patterns kept
    assert torch.equal(run.final, flatten(weights(model)).to(torch.bfloat16))
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["nbytes"] == run_weights_nbytes(traj.shape[1], 3, 2) == (2 + 3) * traj.shape[1] * 2
    net = nn.Linear(3, 2).double()
    w = [p.detach().clone() for p in net.parameters()]
    save_run_weights(
        tmp_path / "f64", net, w, trajectory=torch.randn(2, 8, dtype=torch.float64), steps=[0, 1]
    )
    run = load_run_weights(tmp_path / "f64", net)
    assert run.initial.dtype == torch.float64 and torch.equal(run.initial, flatten(w))
    assert run.trajectory.dtype == torch.float64 and run.initial_buffers == {} == run.final_buffers


def test_a_mismatched_model_is_refused_naming_the_difference(trained, tmp_path):
    model, w0, b0, _ = trained
    save_run_weights(tmp_path, model, w0, initial_buffers=b0)
    wider = nn.Sequential(
        *list(bn_cnn(0))[:5], nn.Linear(144, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 3)
    )
    with pytest.raises(
        ValueError, match=r"'5.weight' has shape \(8, 144\) in the file, \(10, 144\) in the model"
    ):
        load_run_weights(tmp_path, wider)
    other = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"parameters not in the model: \['1.weight'") as err:
        load_run_weights(tmp_path, other)
    assert "'0.weight' has shape (4, 1, 3, 3) in the file, (2, 2) in the model" in str(err.value)
    assert "buffers not in the model: ['1.running_mean'" in str(err.value)
    extra = bn_cnn(0).append(nn.Linear(3, 3))
    with pytest.raises(
        ValueError, match=r"parameters of the model not in the file: \['9.weight', '9.bias'\]"
    ):
        load_run_weights(tmp_path, extra)


def test_bad_input_size_guard_and_partial_writes(trained, tmp_path):
    model, w0, b0, traj = trained
    with pytest.raises(ValueError, match="`initial_buffers` is required"):
        save_run_weights(tmp_path, model, w0)
    with pytest.raises(ValueError, match="`initial`: tensor shapes"):
        save_run_weights(tmp_path, model, w0[:-1], initial_buffers=b0)
    with pytest.raises(ValueError, match="`steps` must give the global step of each of the 3"):
        save_run_weights(tmp_path, model, w0, initial_buffers=b0, trajectory=traj)
    with pytest.raises(ValueError, match=r"above `max_bytes`=.*bfloat16"):
        save_run_weights(
            tmp_path, model, w0, initial_buffers=b0, trajectory=traj, steps=[0, 1, 2], max_bytes=1000
        )
    assert not any(tmp_path.iterdir())  # nothing written when refused
    save_run_weights(tmp_path, model, w0, initial_buffers=b0)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["write_id"] = "0" * 32  # as if the arrays were replaced after this manifest was written
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="different writes"):
        load_run_weights(tmp_path)
    with pytest.raises(ValueError, match="no saved weights"):
        (tmp_path / "empty").mkdir()
        find_run_weights(tmp_path / "empty")


def test_records_readers_skip_the_weights_folder(trained, tmp_path):
    model, w0, b0, _ = trained
    save_run_weights(tmp_path / "landscape" / "weights", model, w0, initial_buffers=b0)
    save_record(LineRecord(np.linspace(0, 1, 3), np.ones(3), {"global_step": 1}), tmp_path / "landscape", "l")
    assert [r.kind for r in load_records(tmp_path)] == ["line"]
    assert sorted(p.name for p in (tmp_path / "landscape" / "weights").iterdir()) == [MANIFEST, "weights.npz"]
    with np.load(tmp_path / "landscape" / "weights" / "weights.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["final", "final_buffers", "initial", "initial_buffers", "write_id"]


def test_frozen_parameters_are_stored_exactly_and_checked(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    net[0].requires_grad_(False)
    w0 = [p.detach().clone() for p in net[2].parameters()]
    save_run_weights(tmp_path, net, w0, dtype=torch.bfloat16)  # bfloat16 for the landscape only
    run = load_run_weights(tmp_path, net)
    assert run.names == ["2.weight", "2.bias"] and list(run.final_frozen) == ["0.weight", "0.bias"]
    assert all(torch.equal(run.final_frozen[n], p) for n, p in net[0].named_parameters(prefix="0"))
    assert run.final_frozen["0.weight"].dtype == torch.float32 and run.initial_frozen is run.final_frozen
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["nbytes"] == run_weights_nbytes(10, 0, 2) + 16 * 4  # the frozen 16 values, float32
    assert manifest["format_version"] == 2 and manifest["initial_frozen"] == "same as final"
    other = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(4, 2))
    other[0].requires_grad_(False)
    with pytest.raises(ValueError, match=r"frozen '0.weight' has shape \(4, 3\) in the file, \(5, 3\)"):
        load_run_weights(tmp_path, other)
    with pytest.raises(ValueError, match=r"frozen parameters not in the model: \['0.weight', '0.bias'\]"):
        load_run_weights(tmp_path, nn.Sequential(nn.Identity(), nn.Tanh(), net[2]))
    extra = nn.Sequential(*net, nn.Linear(2, 2).requires_grad_(False))
    with pytest.raises(ValueError, match=r"frozen parameters of the model not in the file: \['3.weight'"):
        load_run_weights(tmp_path, extra)
    trainable = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))  # requires_grad as it likes
    assert load_run_weights(tmp_path, trainable).names == ["2.weight", "2.bias"]
