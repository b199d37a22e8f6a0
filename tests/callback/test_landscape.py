"""The final landscape's axis lines take their points on the surface's grid from the surface."""

import numpy as np
import pytest
import torch
from torch import nn

from lightning_landscape.callback.landscape import axis_line
from lightning_landscape.callback.sizing import shared_points
from lightning_landscape.functional.landscape.directions import random_direction
from lightning_landscape.functional.landscape.surface import loss_line_of, loss_surface_of, odd_grid
from lightning_landscape.functional.objective import Objective


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 3),
    )  # fmt: skip
    net.train()  # observed in eval mode: dropout off, running statistics (bn="keep")
    return net


def _loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


@pytest.mark.parametrize(("resolution", "line"), [(5, 9), (5, 7), (3, 5), (7, 13)])
def test_an_axis_line_equals_the_line_evaluated_whole(resolution, line):
    net = _bn_net()
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(2)
    ]
    objective = Objective.build(net, _loss, batches)
    d1, d2 = random_direction(objective.params, g), random_direction(objective.params, g)
    grid = odd_grid(0.7, resolution)
    surface = loss_surface_of(objective, (d1, d2), grid, grid.copy())
    alphas = odd_grid(0.7, line)
    for axis, d in enumerate((d1, d2)):
        reused = axis_line(objective, d, axis, alphas, surface)
        whole = loss_line_of(objective, d, alphas)  # the reference: every point evaluated
        np.testing.assert_allclose(reused.losses, whole.losses, rtol=1e-6, atol=0)
        np.testing.assert_allclose(reused.batch_losses, whole.batch_losses, rtol=1e-6, atol=0)
        shared = shared_points(resolution, line)
        assert reused.meta["from_surface"] == shared
        assert reused.meta["forward_passes"] == (line - shared) * len(batches)
        assert reused.meta["probe_batches"] == 2 and reused.meta["nonfinite"] == whole.meta["nonfinite"]


def test_a_surface_without_a_centre_at_zero_gives_nothing_to_take():
    net = _bn_net()
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g))]
    objective = Objective.build(net, _loss, batches)
    d1, d2 = random_direction(objective.params, g), random_direction(objective.params, g)
    shifted = np.linspace(0.1, 0.9, 5)  # no row at 0
    surface = loss_surface_of(objective, (d1, d2), shifted, shifted.copy())
    alphas = odd_grid(0.9, 9)
    line = axis_line(objective, d1, 0, alphas, surface)
    assert "from_surface" not in line.meta and line.meta["forward_passes"] == 9
    np.testing.assert_array_equal(line.losses, loss_line_of(objective, d1, alphas).losses)


def test_shared_points_counts_the_line_points_on_the_grid():
    for resolution, line in [(5, 9), (5, 11), (31, 41), (9, 7), (3, 3)]:
        grid, points = odd_grid(1.0, resolution), odd_grid(1.0, line)
        naive = sum(np.isclose(points[:, None], grid[None, :], rtol=0, atol=1e-12).any(axis=1))
        assert shared_points(resolution, line) == naive
