"""The functional half of lightning-landscape: pure torch functions, no Lightning import.

Each function takes a model, a ``loss_fn(model, batch) -> scalar tensor`` and a list of probe
batches already on the model's device, and returns a typed record or tensors. Use them from a
notebook or script; :class:`lightning_landscape.LossLandscapeCallback` calls the same functions.
"""

from lightning_landscape.functional.directions import (
    filter_normalize,
    filter_normalized_directions,
    random_direction,
)
from lightning_landscape.functional.params import (
    Direction,
    LossFn,
    WeightPerturbation,
    flatten,
    landscape_parameters,
    observation,
    preserved_random_state,
    unflatten,
)
from lightning_landscape.functional.sharding import PointShard, evaluate_sharded, shard_rows
from lightning_landscape.functional.surface import (
    evaluate_loss,
    interpolation_line,
    loss_line,
    loss_surface,
    odd_grid,
    probe_size,
)
from lightning_landscape.functional.trajectory import TrajectoryPCA, trajectory_pca

__all__ = [
    "Direction",
    "LossFn",
    "PointShard",
    "TrajectoryPCA",
    "WeightPerturbation",
    "evaluate_loss",
    "evaluate_sharded",
    "filter_normalize",
    "filter_normalized_directions",
    "flatten",
    "interpolation_line",
    "landscape_parameters",
    "loss_line",
    "loss_surface",
    "observation",
    "odd_grid",
    "preserved_random_state",
    "probe_size",
    "random_direction",
    "shard_rows",
    "trajectory_pca",
    "unflatten",
]
