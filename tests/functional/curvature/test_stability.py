"""Stability thresholds against the optimizers' own dynamics, and the (preconditioned) sharpness against
dense eigenvalues of the exact Hessian."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.exact_hessian import Reference, ce, make_batches, mlp
from lightning.pytorch.core.optimizer import LightningOptimizer

from lightning_landscape.functional import adam_preconditioner, edge_of_stability_ratio, stability_threshold
from lightning_landscape.optim import SAM

SGD_CASES = [
    ({"lr": 0.1}, 2 / 0.1),
    ({"lr": 0.05, "momentum": 0.9}, 3.8 / 0.05),
    ({"lr": 0.05, "momentum": 0.5, "dampening": 0.5}, 3.0 / (0.5 * 0.05)),
    ({"lr": 0.1, "momentum": 0.9, "nesterov": True}, 3.8 / (2.8 * 0.1)),
]


def _final_distance(kwargs, curvature, steps=400):
    """|w| after running torch.optim.SGD on the quadratic curvature/2 w^2 from w = 1."""
    w = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([w], **kwargs)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * curvature * w**2).sum().backward()
        opt.step()
    return float(w.detach().abs())


@pytest.mark.parametrize(("kwargs", "formula"), SGD_CASES)
def test_sgd_thresholds_are_where_torch_sgd_turns_unstable(kwargs, formula):
    th = stability_threshold(torch.optim.SGD([torch.zeros(1, requires_grad=True)], **kwargs))
    assert th.available and th.sharpness == "hessian"
    assert th.threshold == pytest.approx(formula, rel=1e-12)
    assert th.nesterov == kwargs.get("nesterov", False) and th.lr == kwargs["lr"]
    # The optimizer itself: stable just below the threshold, unstable just above.
    assert _final_distance(kwargs, 0.98 * th.threshold) < 1e-3
    assert _final_distance(kwargs, 1.02 * th.threshold) > 1e3


def test_adam_thresholds_wrappers_and_unknown_optimizers():
    params = [torch.zeros(2, requires_grad=True)]
    for cls in (torch.optim.Adam, torch.optim.AdamW):
        th = stability_threshold(cls(params, lr=1e-3, betas=(0.8, 0.99)))
        assert th.available and th.sharpness == "preconditioned" and th.momentum == 0.8
        assert th.threshold == pytest.approx(3.6 / (0.2 * 1e-3), rel=1e-12)
    sam = SAM(params, torch.optim.SGD, lr=0.05, momentum=0.9)
    th = stability_threshold(sam)
    assert th.threshold == pytest.approx(3.8 / 0.05) and "base optimizer of SAM" in th.rule
    assert stability_threshold(
        LightningOptimizer(torch.optim.SGD(params, lr=0.5))
    ).threshold == pytest.approx(4.0)
    rms = stability_threshold(torch.optim.RMSprop(params, lr=0.1))
    assert not rms.available and "RMSprop" in rms.reason and np.isnan(rms.threshold)
    groups = [{"params": [torch.zeros(1, requires_grad=True)], "lr": 0.1}, {"params": params, "lr": 0.2}]
    assert "learning rates" in stability_threshold(torch.optim.SGD(groups, lr=0.1)).reason


def _trained_adam(amsgrad=False):
    model = mlp()
    batches = make_batches("mlp")
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-6, amsgrad=amsgrad)
    for i in range(4):
        opt.zero_grad()
        ce(model, batches[i % 2]).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model, batches, opt


@pytest.mark.parametrize("amsgrad", [False, True])
def test_preconditioned_sharpness_matches_the_dense_computation(amsgrad):
    model, batches, opt = _trained_adam(amsgrad)
    h = Reference(model, batches).hessian()
    # P from Adam's state, computed here by hand.
    diag = []
    for p in model.parameters():
        state = opt.state[p]
        v = state["max_exp_avg_sq" if amsgrad else "exp_avg_sq"].double() / (1 - 0.99 ** float(state["step"]))
        diag.append((v.sqrt() + 1e-6).reshape(-1))
    p_diag = torch.cat(diag)
    torch.testing.assert_close(
        torch.cat([d.reshape(-1) for d in adam_preconditioner(opt, list(model.parameters()))]), p_diag
    )
    exact = float(np.linalg.eigvals((h / p_diag[:, None]).numpy()).real.max())
    n = h.shape[0]
    eos = edge_of_stability_ratio(model, ce, batches, opt, max_iter=3 * n, tol=1e-10)
    assert eos.converged and eos.threshold.sharpness == "preconditioned"
    assert eos.sharpness == pytest.approx(exact, rel=1e-6)
    assert eos.ratio == pytest.approx(exact / (3.8 / (0.1 * 0.01)), rel=1e-6)
    assert set(eos.scalars()) == {"eos/ratio", "eos/sharpness", "eos/threshold"}
    assert all(p.grad is None for p in model.parameters())


def test_sgd_compares_the_plain_hessian():
    model, batches = mlp(), make_batches("mlp")
    exact = float(torch.linalg.eigvalsh(Reference(model, batches).hessian())[-1])
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.5)
    eos = edge_of_stability_ratio(model, ce, batches, opt, max_iter=100, tol=1e-10)
    assert eos.sharpness == pytest.approx(exact, rel=1e-8)
    assert eos.ratio == pytest.approx(exact * 0.3 / 3.0, rel=1e-8)


def test_unavailable_or_unstepped_optimizers_are_value_errors():
    model, batches = mlp(), make_batches("mlp")
    with pytest.raises(ValueError, match=r"`optimizer`.*RMSprop"):
        edge_of_stability_ratio(model, ce, batches, torch.optim.RMSprop(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r"`optimizer`.*take an optimizer step"):
        edge_of_stability_ratio(model, ce, batches, torch.optim.Adam(model.parameters()))
