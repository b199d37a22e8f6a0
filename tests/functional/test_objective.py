"""The Objective: built once, validated at construction, taken by every core computation with the same
results as the public functions that build it (references: the public functions and an exact quadratic)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from lightning_landscape.functional import (
    Objective,
    ReliabilitySettings,
    filter_normalized_directions,
    hessian_eigenvalues,
    landscape_reliability,
    loss_line,
    loss_surface,
    sam_sharpness,
    trajectory_pca,
)
from lightning_landscape.functional.curvature.hessian import hessian_eigenvalues_of
from lightning_landscape.functional.curvature.sharpness import sam_sharpness_of
from lightning_landscape.functional.landscape.params import flatten, unflatten
from lightning_landscape.functional.landscape.surface import loss_line_of, loss_surface_of, odd_grid
from lightning_landscape.functional.trust.reliability import landscape_reliability_of


def _ce(model: nn.Module, batch: Any) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def _setup() -> tuple[nn.Module, list[Any]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).eval()
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(3)]
    return model, batches


def test_build_resolves_trainable_parameters_and_replace_keeps_them() -> None:
    model, batches = _setup()
    model[0].bias.requires_grad_(False)
    objective = Objective.build(model, _ce, batches)
    assert [id(p) for p in objective.params] == [
        id(p) for p in (model[0].weight, model[1].weight, model[1].bias, model[3].weight, model[3].bias)
    ]
    assert objective.numel == 24 + 6 + 6 + 18 + 3
    derived = objective.replace(bn="recompute", metric_fn=_ce)
    assert derived.params is objective.params and derived.bn == "recompute" and objective.bn == "keep"
    assert derived.metric_label == "_ce" and objective.metric_label is None


@pytest.mark.parametrize(
    ("options", "argument"),
    [({"engine": "fast"}, "engine"), ({"chunk_size": 0}, "chunk_size"), ({"bn": "reset"}, "bn")],
)
def test_bad_options_are_refused_at_construction_naming_the_argument(options: dict, argument: str) -> None:
    model, batches = _setup()
    with pytest.raises(ValueError, match=f"`{argument}`"):
        Objective.build(model, _ce, batches, **options)


def test_empty_batches_and_frozen_parameters_are_refused() -> None:
    model, batches = _setup()
    with pytest.raises(ValueError, match="`batches` is empty"):
        Objective.build(model, _ce, [])
    frozen = [model[0].weight.detach()]
    objective = Objective.build(model, _ce, batches, frozen)  # evaluating moved weights needs no grad
    with pytest.raises(ValueError, match="does not require grad"):
        objective.differentiable()
    with pytest.raises(ValueError, match="does not require grad"):
        hessian_eigenvalues_of(objective)


def test_loss_is_the_mean_probe_loss_in_eval_mode_and_leaves_the_model_as_it_was() -> None:
    model, batches = _setup()
    model.train()
    before = [t.clone() for t in model.state_dict().values()]
    value = Objective.build(model, _ce, batches).loss()
    model.eval()
    with torch.no_grad():
        expected = float(sum(_ce(model, b) for b in batches) / len(batches))
    assert value == pytest.approx(expected, rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))


def test_cores_with_one_objective_equal_the_public_functions() -> None:
    model, batches = _setup()
    objective = Objective.build(model, _ce, batches)
    plane = filter_normalized_directions(list(objective.params), count=2, seed=3)
    grid = odd_grid(0.5, 5)
    for bn in ("keep", "recompute"):
        public = loss_surface(model, _ce, batches, plane, resolution=5, span=0.5, bn=bn)
        core = loss_surface_of(objective.replace(bn=bn), plane, grid, grid.copy())
        assert np.array_equal(public.batch_losses, core.batch_losses) and public.meta == core.meta
    line = loss_line(model, _ce, batches, plane[0], resolution=5, span=0.5, metric_fn=_ce)
    core_line = loss_line_of(objective.replace(metric_fn=_ce), plane[0], grid)
    assert np.array_equal(line.losses, core_line.losses) and np.array_equal(line.metrics, core_line.metrics)
    eig = hessian_eigenvalues(model, _ce, batches, which="both", max_iter=20)
    core_eig = hessian_eigenvalues_of(objective, which="both", max_iter=20)
    assert np.array_equal(eig.eigenvalues, core_eig.eigenvalues)
    assert sam_sharpness(model, _ce, batches).sharpness == sam_sharpness_of(objective).sharpness


def _reliability_inputs(model: nn.Module, batches: list[Any]) -> tuple[Any, ...]:
    params = [p for p in model.parameters()]
    centre = flatten(params)
    snapshots = torch.stack([centre + 0.02 * (i + 1) * torch.randn(centre.numel()) for i in range(6)])
    pca = trajectory_pca(snapshots, centre)
    plane = [unflatten(c, params) for c in pca.components]
    surface = loss_surface(model, _ce, batches, plane, resolution=5)
    return pca, snapshots, plane, surface


def test_one_reliability_computation_resolves_the_parameters_once_with_the_same_result() -> None:
    model, batches = _setup()
    pca, snapshots, plane, surface = _reliability_inputs(model, batches)
    settings = ReliabilitySettings(trace_directions=2, path_points=3)
    resolved = []

    def count(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_name in ("resolve_params", "landscape_parameters"):
            resolved.append(frame.f_code.co_name)

    sys.setprofile(count)
    try:
        record, lines = landscape_reliability(
            model, _ce, batches, plane, surface, pca=pca, snapshots=snapshots, settings=settings
        )
    finally:
        sys.setprofile(None)
    assert resolved == ["resolve_params", "landscape_parameters"]  # once, by Objective.build
    core, core_lines = landscape_reliability_of(
        Objective.build(model, _ce, batches), plane, surface, pca=pca, snapshots=snapshots, settings=settings
    )
    a, b = record.scalars(), core.scalars()
    assert a.keys() == b.keys() and np.array_equal(list(a.values()), list(b.values()), equal_nan=True)
    assert all(np.array_equal(a.losses, b.losses) for a, b in zip(lines, core_lines))
