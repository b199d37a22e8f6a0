"""engine="compile": same values as the loop, compiled once per model, one warning where it cannot compile.

Most tests compile with dynamo's "aot_eager" backend or a counting backend (fast: no C++ compilation);
the inductor test (the default backend, real generated code) is marked slow.
"""

import warnings

import numpy as np
import pytest
import torch
from helpers.engine_cases import probe_case
from helpers.exact_hessian import ce as _ce
from torch import nn
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters
from torch.nn import functional as F

from lightning_landscape.functional import (
    buffer_snapshot,
    interpolation_line,
    loss_line,
    loss_surface,
)
from lightning_landscape.functional.landscape import engine as compiled_module
from lightning_landscape.functional.landscape.engine import CompileFallbackWarning, compile_settings
from lightning_landscape.functional.landscape.surface import check_engine


def _fresh_loss():
    """A new closure with the same code each call, as the callback makes one per landscape."""
    scale = 1.0

    def loss(model, batch):
        return scale * F.cross_entropy(model(batch[0]), batch[1])

    return loss


class BranchOnData(nn.Module):
    """Python control flow on a tensor's value in forward: a graph break, so not one graph."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x):
        out = self.lin(x)
        return out * 2.0 if out.sum() > 0 else out


def _case(kind: str, last: int = 8):
    """Model (in train mode, with non-trivial BN statistics), 3 probe batches (last of size ``last``)."""
    return probe_case(BranchOnData if kind == "branch" else kind, sizes=(8, 8, last))


@pytest.fixture
def backend():
    """Compile with a counting dynamo-only backend for the test; the defaults again after."""
    counter = CompileCounter()
    compile_settings(backend=counter)
    yield counter
    compile_settings()


def _all_three(model, batches, params, dirs, engine, loss=_ce):
    start = [p.detach() + 0.1 * d for p, d in zip(params, dirs[1])]
    return (
        loss_surface(model, loss, batches, dirs, resolution=5, span=0.7, engine=engine).losses,
        loss_line(model, loss, batches, dirs[0], resolution=7, engine=engine).losses,
        interpolation_line(model, loss, batches, start, resolution=5, engine=engine).losses,
    )


def _accuracy(model, batch):
    return (model(batch[0]).argmax(1) == batch[1]).float().mean()


def _assert_same(compiled, loop, rtol=1e-5):
    for c, ref in zip(compiled, loop):
        np.testing.assert_allclose(c, ref, rtol=rtol, atol=1e-6)
    assert np.ptp(loop[0]) > 1e-3  # the surface is not flat: the comparison means something


@pytest.mark.parametrize("kind", ["mlp", "cnn", "transformer"])
def test_compiled_graph_equals_loop_and_leaves_no_trace(kind):
    compile_settings(backend="aot_eager")  # the decomposed (ATen) graph inductor would start from
    try:
        model, batches, params, dirs = _case(kind)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        rng = torch.get_rng_state()
        with warnings.catch_warnings():
            warnings.simplefilter("error", CompileFallbackWarning)  # it must really compile
            compiled = _all_three(model, batches, params, dirs, "compile")
        loop = _all_three(model, batches, params, dirs, "loop")
    finally:
        compile_settings()
    _assert_same(compiled, loop)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)


def test_batchnorm_modes_metrics_and_per_batch_losses_equal_the_loop():
    """Recomputed and interpolated BN statistics, a metric beside the loss, the loss of each batch."""
    compile_settings(backend="aot_eager")
    try:
        model, batches, params, dirs = _case("cnn", last=5)
        start = [p.detach() + 0.2 * d for p, d in zip(params, dirs[1])]
        start_buffers = {
            k: v * 1.5 if v.is_floating_point() else v for k, v in buffer_snapshot(model).items()
        }
        out = {}
        for engine in ("compile", "loop"):
            surface = loss_surface(
                model, _ce, batches, dirs, resolution=3, bn="recompute", metric_fn=_accuracy, engine=engine
            )
            line = interpolation_line(
                model, _ce, batches, start, resolution=5, start_buffers=start_buffers, engine=engine
            )
            out[engine] = (surface, line)
    finally:
        compile_settings()
    for compiled, loop in zip(out["compile"], out["loop"]):
        assert compiled.meta["engine"] == "compile" and loop.meta["engine"] == "loop"
        np.testing.assert_allclose(compiled.losses, loop.losses, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(compiled.batch_losses, loop.batch_losses, rtol=1e-5, atol=1e-6)
        assert compiled.batch_losses.shape[-1] == 3 and np.ptp(loop.losses) > 1e-3
    np.testing.assert_array_equal(out["compile"][0].metrics, out["loop"][0].metrics)
    assert out["loop"][1].meta["bn"] == "interpolate" and out["loop"][0].meta["bn"] == "recompute"


def test_weights_moved_in_place_do_not_recompile(backend):
    model, batches, _params, dirs = _case("cnn", last=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    first = loss_surface(model, _fresh_loss(), batches, dirs, resolution=3, engine="compile").losses
    assert backend.frame_count == 2  # one graph per batch shape (8, 8 and 5 samples: two shapes)
    for batch in batches:  # training moves the weights (in place) and the BN statistics
        optimizer.zero_grad()
        _ce(model, batch).backward()
        optimizer.step()
    second = loss_surface(model, _fresh_loss(), batches, dirs, resolution=3, engine="compile").losses
    loss_line(model, _fresh_loss(), batches, dirs[0], resolution=3, engine="compile")
    assert backend.frame_count == 2  # the same graphs for every later landscape of the fit
    assert not np.allclose(first, second)  # and they see the new weights
    model.train()
    loop = loss_surface(model, _ce, batches, dirs, resolution=3, engine="loop").losses
    np.testing.assert_allclose(second, loop, rtol=1e-5, atol=1e-6)


def test_graph_break_falls_back_to_the_loop_with_one_warning(backend):
    model, batches, params, dirs = _case("branch")
    loop = _all_three(model, batches, params, dirs, "loop")
    with pytest.warns(CompileFallbackWarning, match="BranchOnData") as record:
        compiled = _all_three(model, batches, params, dirs, "compile")
    assert len([w for w in record if w.category is CompileFallbackWarning]) == 1
    _assert_same(compiled, loop, rtol=0)  # the loop itself: bit for bit
    assert backend.frame_count == 0


def test_a_broken_loss_raises_instead_of_warning(backend):
    model, batches, _params, dirs = _case("mlp")

    def per_sample(m, b):
        return F.cross_entropy(m(b[0]), b[1], reduction="none")

    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        with pytest.raises(ValueError, match="scalar"):
            loss_surface(model, per_sample, batches, dirs, resolution=3, engine="compile")
    assert model not in compiled_module._CANNOT_COMPILE


def test_engine_and_settings_are_checked():
    check_engine("compile")
    with pytest.raises(ValueError, match="`engine`"):
        check_engine("compiled")
    with pytest.raises(ValueError, match="freezing"):
        compile_settings(options={"freezing": True})
    with pytest.raises(ValueError, match="`backend`"):
        compile_settings(backend=3)  # type: ignore[arg-type]


@pytest.mark.slow
def test_inductor_equals_loop_and_compiles_once_per_model():
    """The default backend: generated code, so values agree within float rounding, not bit for bit."""
    compile_settings()
    for kind in ("mlp", "cnn", "transformer"):
        model, batches, params, dirs = _case(kind)
        graphs = counters["stats"]["unique_graphs"]
        with warnings.catch_warnings():
            warnings.simplefilter("error", CompileFallbackWarning)
            compiled = _all_three(model, batches, params, dirs, "compile", loss=_fresh_loss())
            _assert_same(compiled, _all_three(model, batches, params, dirs, "loop"), rtol=1e-4)
            with torch.no_grad():
                for p, d in zip(params, dirs[0]):
                    p.add_(d, alpha=0.05)
            again = _all_three(model, batches, params, dirs, "compile", loss=_fresh_loss())
            _assert_same(again, _all_three(model, batches, params, dirs, "loop"), rtol=1e-4)
        assert counters["stats"]["unique_graphs"] - graphs == 1, kind  # weights moved: no recompile
