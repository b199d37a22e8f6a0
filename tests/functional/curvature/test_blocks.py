"""Curvature per block against the diagonal blocks of the exact float64 Hessian."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.exact_hessian import Reference, ce, cnn, make_batches, mlp
from torch import nn

from lightning_landscape.functional import block_curvature, parameter_blocks


def _slices(model: nn.Module) -> dict[str, slice]:
    """Parameter name -> its slice of the flat vector of trainable parameters (Reference's order)."""
    out, offset = {}, 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            out[name] = slice(offset, offset + p.numel())
            offset += p.numel()
    return out


def _exact_block(h: torch.Tensor, model: nn.Module, names: list[str]) -> torch.Tensor:
    where = _slices(model)
    idx = torch.cat([torch.arange(where[n].start, where[n].stop) for n in names])
    return h[idx][:, idx]


@pytest.mark.parametrize("build,kind", [(mlp, "mlp"), (cnn, "cnn")])
def test_default_blocks_are_the_top_level_children(build, kind):
    model = build()
    batches = make_batches(kind)
    h = Reference(model, batches).hessian()
    res = block_curvature(model, ce, batches, max_iter=200, tol=1e-10, samples=200, seed=1)
    expected = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
    assert res.blocks == expected
    for i, name in enumerate(res.blocks):
        members = [f"{name}.{n}" for n, _ in model.get_submodule(name).named_parameters()]
        block = _exact_block(h, model, members)
        assert res.parameters[i] == block.shape[0]
        assert res.lambda_max[i] == pytest.approx(float(torch.linalg.eigvalsh(block)[-1]), rel=1e-6)
        exact_trace = float(torch.trace(block))
        assert abs(res.trace[i] - exact_trace) <= 4 * res.trace_stderr[i] + 1e-12, (
            name,
            res.trace[i],
            exact_trace,
        )
    scalars = res.scalars()
    assert scalars[f"blocks/{expected[0]}/lambda_max"] == res.lambda_max[0]
    assert set(scalars) == {
        f"blocks/{b}/{k}" for b in expected for k in ("lambda_max", "trace", "trace_stderr")
    }


def test_a_tied_parameter_is_in_the_first_default_block_holding_it():
    """Tied weights (a layer's weight shared with a later one): the default blocks give the shared
    parameter to the first module holding it, as ``named_parameters`` does, instead of refusing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4)).double()
    model[2].weight = model[0].weight
    batches = make_batches("mlp")
    h = Reference(model, batches).hessian()
    res = block_curvature(model, ce, batches, max_iter=200, tol=1e-10, samples=4, seed=1)
    assert res.blocks == ["0", "2"] and list(res.parameters) == [20, 4]
    for i, names in enumerate((["0.weight", "0.bias"], ["2.bias"])):
        exact = float(torch.linalg.eigvalsh(_exact_block(h, model, names))[-1])
        assert res.lambda_max[i] == pytest.approx(exact, rel=1e-6)
    with pytest.raises(ValueError, match="a parameter is in both"):  # named blocks still may not overlap
        parameter_blocks(model, list(model.parameters()), ["0", "2"])


def test_named_groups_across_modules_match_their_exact_blocks():
    model = mlp()
    batches = make_batches("mlp")
    h = Reference(model, batches).hessian()
    groups = {"weights": ["0.weight", "2.weight"], "biases": ["2.bias", "0.bias"]}
    res = block_curvature(model, ce, batches, blocks=groups, max_iter=200, tol=1e-10, samples=100)
    for i, (name, members) in enumerate(groups.items()):
        block = _exact_block(h, model, sorted(members, key=list(_slices(model)).index))
        assert res.blocks[i] == name
        assert res.lambda_max[i] == pytest.approx(float(torch.linalg.eigvalsh(block)[-1]), rel=1e-6)
        assert abs(res.trace[i] - float(torch.trace(block))) <= 4 * res.trace_stderr[i]


def test_module_names_and_parameters_held_by_the_model_itself():
    torch.manual_seed(0)

    class WithToken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token = nn.Parameter(torch.randn(4, dtype=torch.float64))
            self.body = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()

        def forward(self, x):
            return self.body(x + self.token)

    model = WithToken()
    params = list(model.parameters())
    assert parameter_blocks(model, params) == {"token": [0], "body": [1, 2, 3, 4]}
    assert parameter_blocks(model, params, ["body.0", "body.2"]) == {"body.0": [1, 2], "body.2": [3, 4]}
    # Only the chosen parameters count: a block with none of them is an error, the others shrink.
    assert parameter_blocks(model, params[1:2]) == {"body": [0]}
    with pytest.raises(ValueError, match=r"`blocks`.*'token'"):
        parameter_blocks(model, params[1:], ["token", "body"])


def test_bad_blocks_are_value_errors():
    model = mlp()
    batches = make_batches("mlp")
    params = list(model.parameters())
    with pytest.raises(ValueError, match=r"`blocks`.*no parameters called"):
        parameter_blocks(model, params, {"a": ["0.weight", "nope"]})
    with pytest.raises(ValueError, match=r"`blocks`.*both"):
        parameter_blocks(model, params, {"a": ["0.weight"], "b": ["0.weight", "0.bias"]})
    with pytest.raises(ValueError, match="`blocks`: no module"):
        parameter_blocks(model, params, ["9"])
    with pytest.raises(ValueError, match="`blocks`"):
        parameter_blocks(model, params, "0")
    with pytest.raises(ValueError, match="`samples`"):
        block_curvature(model, ce, batches, samples=1)


def test_state_is_restored_and_a_nan_loss_gives_nan():
    model = cnn()
    batches = make_batches("cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    block_curvature(model, ce, batches, max_iter=3, samples=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.training
    with pytest.warns(RuntimeWarning, match="NaN"):
        res = block_curvature(model, lambda m, b: ce(m, b) * math.nan, batches, samples=2)
    assert np.isnan(res.lambda_max).all() and np.isnan(res.trace).all()
