"""The functional half of lightning-landscape: pure torch functions, no Lightning import.

Each function takes a model, a ``loss_fn(model, batch) -> scalar tensor`` and a list of probe
batches already on the model's device, and returns a typed record or tensors. Use them from a
notebook or script; :class:`lightning_landscape.LossLandscapeCallback` calls the same functions.
Each one builds an :class:`Objective` (model, loss, probe batches, parameters and evaluation options,
resolved once) and hands it to its core; the callback builds one per landscape and calls the cores.

On a model sharded by FSDP2 (``DTensor`` parameters) the functions find the sharding themselves and give
the unsharded numbers: each call is then a collective, every process must make it with the same
arguments and probe batches, and directions come back as ``DTensor``s; those that cannot work sharded
raise a ``ValueError`` naming what does (see docs/scaling.md).
"""

from lightning_landscape.functional.curvature.blocks import BlockCurvature, block_curvature, parameter_blocks
from lightning_landscape.functional.curvature.critical import CriticalSharpness, critical_sharpness
from lightning_landscape.functional.curvature.estimators import (
    HutchinsonResult,
    LanczosResult,
    hutchinson,
    lanczos,
)
from lightning_landscape.functional.curvature.hessian import (
    HessianEigenvalues,
    HessianTrace,
    hessian_directions,
    hessian_eigenvalues,
    hessian_trace,
)
from lightning_landscape.functional.curvature.operators import (
    HessianOperator,
    ScaledOperator,
    hessian_operator,
    hessian_vector_product,
)
from lightning_landscape.functional.curvature.sharpness import (
    AverageSharpness,
    SamSharpness,
    average_sharpness,
    loss_gradient,
    sam_sharpness,
)
from lightning_landscape.functional.curvature.stability import (
    EdgeOfStability,
    StabilityThreshold,
    adam_preconditioner,
    edge_of_stability_ratio,
    stability_threshold,
)
from lightning_landscape.functional.landscape.bn import BN_MODES, buffer_snapshot, landscape_buffers
from lightning_landscape.functional.landscape.directions import (
    filter_normalize,
    filter_normalized_directions,
    random_direction,
)
from lightning_landscape.functional.landscape.engine import CompileFallbackWarning, compile_settings
from lightning_landscape.functional.landscape.noise import ProbeNoise, probe_noise
from lightning_landscape.functional.landscape.params import (
    Direction,
    LossFn,
    WeightPerturbation,
    flatten,
    landscape_parameters,
    observation,
    preserved_random_state,
    unflatten,
)
from lightning_landscape.functional.landscape.sharding import PointShard, evaluate_sharded, shard_rows
from lightning_landscape.functional.landscape.surface import (
    evaluate_loss,
    interpolation_line,
    loss_line,
    loss_surface,
    odd_grid,
)
from lightning_landscape.functional.landscape.trajectory import TrajectoryPCA, trajectory_pca
from lightning_landscape.functional.objective import Objective, probe_size
from lightning_landscape.functional.solutions.barrier import barrier
from lightning_landscape.functional.solutions.plane import Plane, plane_through, shared_plane_surface
from lightning_landscape.functional.trust.path import (
    PathLossCheck,
    PathPlaneFit,
    RandomWalkBaseline,
    RandomWalkVerdict,
    path_loss_check,
    path_plane_fit,
    random_walk_baseline,
    random_walk_verdict,
    snapshot_losses,
)
from lightning_landscape.functional.trust.reliability import (
    ReliabilitySettings,
    ReliabilityThresholds,
    landscape_reliability,
    reliability_cost,
    reliability_summary,
)
from lightning_landscape.functional.trust.sensitivity import (
    DirectionSensitivity,
    DistanceProfile,
    RandomDirectionCurvature,
    direction_sensitivity,
    distance_profile,
    random_direction_curvature,
)

__all__ = [
    "BN_MODES",
    "AverageSharpness",
    "BlockCurvature",
    "CompileFallbackWarning",
    "CriticalSharpness",
    "Direction",
    "DirectionSensitivity",
    "DistanceProfile",
    "EdgeOfStability",
    "HessianEigenvalues",
    "HessianOperator",
    "HessianTrace",
    "HutchinsonResult",
    "LanczosResult",
    "LossFn",
    "Objective",
    "PathLossCheck",
    "PathPlaneFit",
    "Plane",
    "PointShard",
    "ProbeNoise",
    "RandomDirectionCurvature",
    "RandomWalkBaseline",
    "RandomWalkVerdict",
    "ReliabilitySettings",
    "ReliabilityThresholds",
    "SamSharpness",
    "ScaledOperator",
    "StabilityThreshold",
    "TrajectoryPCA",
    "WeightPerturbation",
    "adam_preconditioner",
    "average_sharpness",
    "barrier",
    "block_curvature",
    "buffer_snapshot",
    "compile_settings",
    "critical_sharpness",
    "direction_sensitivity",
    "distance_profile",
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
    "landscape_buffers",
    "landscape_parameters",
    "landscape_reliability",
    "loss_gradient",
    "loss_line",
    "loss_surface",
    "observation",
    "odd_grid",
    "parameter_blocks",
    "path_loss_check",
    "path_plane_fit",
    "plane_through",
    "preserved_random_state",
    "probe_noise",
    "probe_size",
    "random_direction",
    "random_direction_curvature",
    "random_walk_baseline",
    "random_walk_verdict",
    "reliability_cost",
    "reliability_summary",
    "sam_sharpness",
    "shard_rows",
    "shared_plane_surface",
    "snapshot_losses",
    "stability_threshold",
    "trajectory_pca",
    "unflatten",
]
