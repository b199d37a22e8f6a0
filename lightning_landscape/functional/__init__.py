"""The functional half of lightning-landscape: pure torch functions, no Lightning import.

Each function takes a model, a ``loss_fn(model, batch) -> scalar tensor`` and a list of probe
batches already on the model's device, and returns a typed record or tensors. Use them from a
notebook or script; :class:`lightning_landscape.LossLandscapeCallback` calls the same functions.
"""

from lightning_landscape.functional._common import probe_size
from lightning_landscape.functional.blocks import BlockCurvature, block_curvature, parameter_blocks
from lightning_landscape.functional.curvature import (
    HessianEigenvalues,
    HessianTrace,
    hessian_directions,
    hessian_eigenvalues,
    hessian_trace,
)
from lightning_landscape.functional.directions import (
    filter_normalize,
    filter_normalized_directions,
    random_direction,
)
from lightning_landscape.functional.estimators import HutchinsonResult, LanczosResult, hutchinson, lanczos
from lightning_landscape.functional.operators import (
    HessianOperator,
    ScaledOperator,
    hessian_operator,
    hessian_vector_product,
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
from lightning_landscape.functional.sharpness import (
    AverageSharpness,
    SamSharpness,
    average_sharpness,
    loss_gradient,
    sam_sharpness,
)
from lightning_landscape.functional.stability import (
    EdgeOfStability,
    StabilityThreshold,
    adam_preconditioner,
    edge_of_stability_ratio,
    stability_threshold,
)
from lightning_landscape.functional.surface import (
    evaluate_loss,
    interpolation_line,
    loss_line,
    loss_surface,
    odd_grid,
)
from lightning_landscape.functional.trajectory import TrajectoryPCA, trajectory_pca

__all__ = [
    "AverageSharpness",
    "BlockCurvature",
    "Direction",
    "EdgeOfStability",
    "HessianEigenvalues",
    "HessianOperator",
    "HessianTrace",
    "HutchinsonResult",
    "LanczosResult",
    "LossFn",
    "PointShard",
    "SamSharpness",
    "ScaledOperator",
    "StabilityThreshold",
    "TrajectoryPCA",
    "WeightPerturbation",
    "adam_preconditioner",
    "average_sharpness",
    "block_curvature",
    "edge_of_stability_ratio",
    "evaluate_loss",
    "evaluate_sharded",
    "filter_normalize",
    "filter_normalized_directions",
    "flatten",
    "hessian_directions",
    "hessian_eigenvalues",
    "hessian_operator",
    "hessian_trace",
    "hessian_vector_product",
    "hutchinson",
    "interpolation_line",
    "lanczos",
    "landscape_parameters",
    "loss_gradient",
    "loss_line",
    "loss_surface",
    "observation",
    "odd_grid",
    "parameter_blocks",
    "preserved_random_state",
    "probe_size",
    "random_direction",
    "sam_sharpness",
    "shard_rows",
    "stability_threshold",
    "trajectory_pca",
    "unflatten",
]
