"""benchmarks/bench_baselines.py (surfaces against loss-landscapes): its argument checks, the CPU time it
books, and, where loss-landscapes is installed (benchmarks/.env), its accuracy reference."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench():
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling `common`
    if "bench_baselines" in sys.modules:
        return sys.modules["bench_baselines"]
    spec = importlib.util.spec_from_file_location("bench_baselines", BENCHMARKS / "bench_baselines.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_baselines"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--reps", "4"], "--reps must be at least 5"),
        (["--resolution", "10"], "--resolution must be an odd integer >= 3"),
        (["--models", "resnet"], "invalid choice"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(monkeypatch, capsys, argv, message):
    bench = _bench()
    monkeypatch.setattr(sys, "argv", ["bench_baselines.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cpu_time_is_booked_per_call_beside_the_interleaved_wall_time():
    bench = _bench()
    from common import alternating

    calls: list[str] = []
    cpu: dict[str, list[float]] = {"a": [], "b": []}
    fns = bench._cpu_timed({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, cpu)
    wall = alternating(fns, reps=5)
    # One warm-up round, then five rounds in alternating order: each call booked once, in both clocks.
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    assert [len(cpu["a"]), len(cpu["b"])] == [6, 6] and [len(wall["a"]), len(wall["b"])] == [5, 5]
    assert all(t >= 0.0 for t in cpu["a"] + cpu["b"])


def test_the_accuracy_reference_follows_random_planes_grid():
    # random_plane evaluates its odd columns one step off its even ones; the reference must follow that
    # (a wrong mapping gives errors of the order of the loss differences between neighbours, ~1e-2).
    pytest.importorskip("loss_landscapes")
    bench = _bench()
    bench._shims()
    theirs, ours = bench._surface_accuracy("mlp", 5)
    assert theirs < 1e-5 and ours < 1e-5
