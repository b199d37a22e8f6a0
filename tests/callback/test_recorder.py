import pytest
import torch

from lightning_landscape.callback.recorder import TrajectoryRecorder, recorder_for


def _run(recorder: TrajectoryRecorder, events: int) -> None:
    for e in range(events):
        recorder.offer(e, [torch.full((3,), float(e))], step=5 * e)


@pytest.mark.parametrize("max_snapshots", [2, 3, 8, 64])
@pytest.mark.parametrize("events", [1, 7, 100, 1000])
def test_memory_is_bounded_and_the_whole_run_is_covered(max_snapshots, events):
    rec = TrajectoryRecorder(max_snapshots)
    _run(rec, events)
    assert 1 <= len(rec) <= max_snapshots
    assert rec.events[0] == 0  # the initial weights are always kept
    gaps = {b - a for a, b in zip(rec.events, rec.events[1:])}
    assert gaps <= {rec.stride}  # evenly spaced
    assert events - 1 - rec.events[-1] < rec.stride  # and reaching the latest stride-aligned event
    for snap, event in zip(rec.snapshots, rec.events):  # each snapshot is the weights at its event
        assert torch.equal(snap, torch.full((3,), float(event)))
    assert rec.steps == [5 * e for e in rec.events]


def test_snapshots_are_flat_float32_cpu_copies():
    rec = TrajectoryRecorder(4)
    w = [torch.ones(2, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.bfloat16)]
    rec.offer(0, w, step=0)
    with torch.no_grad():
        w[0].add_(1)
    assert rec.snapshots[0].dtype == torch.float32 and rec.snapshots[0].shape == (7,)
    assert rec.snapshots[0][:4].tolist() == [1.0] * 4  # a copy, not a view


def test_state_dict_round_trip_is_weights_only_loadable(tmp_path):
    rec = TrajectoryRecorder(4)
    _run(rec, 11)
    torch.save(rec.state_dict(), tmp_path / "s.pt")
    other = TrajectoryRecorder(4)
    other.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert (other.stride, other.events, other.steps) == (rec.stride, rec.events, rec.steps)
    assert all(torch.equal(a, b) for a, b in zip(other.snapshots, rec.snapshots))
    # Continuing after a reload equals continuing without one.
    for r in (rec, other):
        for e in range(11, 30):
            r.offer(e, [torch.full((3,), float(e))], step=5 * e)
    assert other.events == rec.events


def test_bad_size_is_rejected():
    with pytest.raises(ValueError, match="`max_snapshots`"):
        TrajectoryRecorder(1)


def test_a_snapshot_file_that_cannot_be_created_names_its_path(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the folder should be")
    path = blocker / "snapshots.bin"
    recorder = TrajectoryRecorder(4, path=path)
    with pytest.raises(OSError, match=r"could not create the snapshot file .*not_a_dir/snapshots\.bin"):
        recorder.offer(0, [torch.zeros(3)], step=0)


@pytest.mark.parametrize(("budget", "capacity"), [(None, 8), (3 * 4000, 3), (4000, 2)])
def test_without_writing_the_snapshots_stay_in_memory(tmp_path, budget, capacity):
    """``fast_dev_run``: whatever the storage asked, no file; where the budget holds fewer, 2 snapshots."""
    for storage in ("auto", "memory", "memmap"):
        rec, note = recorder_for(1000, 8, torch.float32, budget, storage, tmp_path, write=False)
        for event in range(10):
            rec.offer(event, [torch.full((1000,), float(event))], step=event)
        assert rec.path is None and rec.capacity == capacity and rec.steps[0] == 0
        assert (note is not None) == (capacity == 2) and list(tmp_path.iterdir()) == []
