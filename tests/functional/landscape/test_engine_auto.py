"""engine="auto" compiles only when the measured costs say it pays, and every record says why it chose.

Deterministic: costs are injected as numbers (never timed in a test); compiling uses dynamo's
"aot_eager" backend (no C++ compilation).
"""

import numpy as np
import pytest
from helpers.engine_cases import probe_case
from helpers.exact_hessian import ce as _ce

from lightning_landscape.functional import loss_line, loss_surface
from lightning_landscape.functional.landscape import costs as costs_module
from lightning_landscape.functional.landscape import engine as engine_module
from lightning_landscape.functional.landscape.engine import EngineCosts, compile_pays, compile_settings


@pytest.mark.parametrize(
    ("points", "costs", "expected", "says"),
    [
        (10**6, EngineCosts(0.010, None, None), False, "no compiled graph"),  # never a cold compile
        (10**6, EngineCosts(None, 0.001, 0.0), False, "not measured"),
        (1000, EngineCosts(0.010, 0.004, 30.0), False, "cost 30 s and save 6 s"),  # cold: not repaid
        (10_000, EngineCosts(0.010, 0.004, 30.0), True, "saves 60 s"),  # repaid by enough points
        (5000, EngineCosts(0.010, 0.004, 30.0), False, "save 30 s"),  # break-even is not a gain
        (1, EngineCosts(0.010, 0.004, 0.0), True, "for 0 s of compiling"),  # graph cached: any gain
        (10**6, EngineCosts(0.004, 0.010, 0.0), False, "save 0 s"),  # compiled is slower (an MLP)
    ],
)
def test_compile_pays_only_when_the_saving_repays_the_compile(points, costs, expected, says):
    pays, reason = compile_pays(points, costs)
    assert pays is expected
    assert says in reason


def test_auto_says_why_it_ran_the_loop_on_the_cpu():
    model, batches, _params, dirs = probe_case("cnn")
    rec = loss_surface(model, _ce, batches, dirs, resolution=3)
    assert rec.meta["engine"] == "loop"
    assert "the loop on the CPU" in rec.meta["engine_reason"]
    assert "never starts a cold compile" in rec.meta["engine_reason"]
    named = loss_surface(model, _ce, batches, dirs, resolution=3, engine="loop")
    assert "engine_reason" not in named.meta  # asked for by name: nothing was chosen
    np.testing.assert_array_equal(rec.losses, named.losses)


@pytest.fixture
def aot_eager():
    compile_settings(backend="aot_eager")
    yield
    compile_settings()


def test_auto_compiles_when_injected_costs_say_it_pays(aot_eager, monkeypatch):
    model, batches, _params, dirs = probe_case("mlp")
    loop = loss_surface(model, _ce, batches, dirs, resolution=5, engine="loop").losses
    # A compiled evaluation books its measured costs for this model and probe set.
    loss_surface(model, _ce, batches, dirs, resolution=5, engine="compile")
    [booked] = costs_module.booked_costs(model).values()
    assert {"loop", "compile", "compile_s"} <= set(booked)
    # Numbers injected: a cached graph 4x faster than the loop pays at once ...
    fast = EngineCosts(eager_per_point=0.008, compiled_per_point=0.002, compile_s=0.0)
    monkeypatch.setattr(engine_module, "measured_costs", lambda m, s, e, graph_cached: fast)
    rec = loss_surface(model, _ce, batches, dirs, resolution=5)
    assert rec.meta["engine"] == "compile" and rec.meta["engine_reason"].startswith("auto: compile")
    np.testing.assert_allclose(rec.losses, loop, rtol=1e-5, atol=1e-6)
    # ... a compiled graph slower than the loop never does, and neither does an unrepaid compile.
    for costs in (EngineCosts(0.002, 0.008, 0.0), EngineCosts(0.008, 0.002, 1e6)):
        monkeypatch.setattr(engine_module, "measured_costs", lambda m, s, e, graph_cached, c=costs: c)
        line = loss_line(model, _ce, batches, dirs[0], resolution=5)
        assert line.meta["engine"] == "loop" and "not compiled" in line.meta["engine_reason"]


def test_measured_compile_cost_is_zero_only_while_the_graph_is_cached(aot_eager):
    model, batches, _params, dirs = probe_case("mlp")
    loss_surface(model, _ce, batches, dirs, resolution=3, engine="loop")
    [signature] = costs_module.booked_costs(model)
    assert costs_module.measured_costs(model, signature, "loop", graph_cached=False).compile_s is None
    loss_surface(model, _ce, batches, dirs, resolution=3, engine="compile")
    warm = costs_module.measured_costs(model, signature, "loop", graph_cached=True)
    assert warm.compile_s == 0.0 and warm.compiled_per_point is not None and warm.eager_per_point
    cold = costs_module.measured_costs(model, signature, "loop", graph_cached=False)
    assert cold.compile_s is not None  # the first graph's compile time, paid again by a new graph
    compile_settings(backend="eager")  # other settings: a new signature, nothing measured for it
    rec = loss_surface(model, _ce, batches, dirs, resolution=3)
    assert rec.meta["engine"] == "loop" and "no compiled graph" in rec.meta["engine_reason"]
