"""The objective every computation is about, built once: the loss of a model on fixed probe batches, as a
function of chosen parameters, with the options that say how each point is evaluated.

:class:`Objective` holds the model, ``loss_fn``, the probe batches, the parameters (resolved once), how
BatchNorm statistics follow a point (``bn``), the evaluation engine and its chunk size, the sharding of
points among processes and an optional metric. Surfaces, lines, Hessian products, sharpness, barriers
and the reliability indicators take it (their core functions, named ``..._of``); the public functions
(:func:`~lightning_landscape.functional.loss_surface` and the rest) keep their
``(model, loss_fn, batches, ...)`` signatures and only build one. Beside it, what every computation
shares: the loss check, the work dtype, probe metadata, the context every second derivative runs in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_landscape.functional import checks as check
from lightning_landscape.functional.landscape.bn import BNMode, BufferPlan, check_bn
from lightning_landscape.functional.landscape.params import (
    LossFn,
    landscape_parameters,
    observation,
    work_dtype,
)
from lightning_landscape.functional.landscape.sharding import PointShard
from lightning_landscape.functional.landscape.shards import ShardLayout, is_sharded, resharding

__all__ = [
    "Engine",
    "NonFiniteError",
    "Objective",
    "ShardedHessian",
    "check_batches",
    "check_engine",
    "check_int",
    "check_positive",
    "mean_loss",
    "nonfinite_warning",
    "norm64",
    "probe_meta",
    "probe_size",
    "rademacher",
    "resolve_params",
    "scalar_loss",
    "second_order",
    "work_dtype",
]

Engine = Literal["auto", "loop", "vmap", "compile"]
ShardedHessian = Literal["exact", "difference"]
_ENGINES = ("auto", "loop", "vmap", "compile")


def check_engine(engine: Any, name: str = "engine") -> None:
    """Raise a ValueError naming ``name`` unless ``engine`` is one of ``_ENGINES``."""
    check.choice(name, engine, _ENGINES)


class NonFiniteError(ArithmeticError):
    """A loss, gradient or operator product that is NaN or infinite."""


# --------------------------------------------------------------------------------------- argument checks


def check_int(name: str, value: Any, minimum: int) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is an integer (not a bool) ``>= minimum``."""
    check.positive_int(name, value, minimum=minimum)


def check_positive(name: str, value: Any) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a positive finite number."""
    check.positive_number(name, value)


def check_batches(batches: Sequence[Any]) -> list[Any]:
    """The probe batches as a list; a ValueError naming ``batches`` if there are none."""
    batches = list(batches)
    if not batches:
        raise ValueError("`batches` is empty: at least one probe batch is needed")
    return batches


def resolve_params(
    model: nn.Module, params: Sequence[Tensor] | None, *, require_grad: bool = True
) -> list[Tensor]:
    """The parameters a computation is about: the given ones, or the model's trainable floating-point ones.

    The one resolver of the package. ``None`` means :func:`landscape_parameters` (trainable floating-point
    parameters, tied ones once). Given parameters must be floating-point tensors; with ``require_grad``
    (anything that differentiates: gradients, Hessians) each must also require grad. Evaluating the loss
    at moved weights (surfaces, lines) does not differentiate and accepts frozen parameters.
    """
    if params is None:
        return [p for _, p in landscape_parameters(model)]
    params = list(params)
    if not params:
        raise ValueError("`params` is empty")
    for i, p in enumerate(params):
        if not isinstance(p, Tensor) or not p.is_floating_point():
            raise ValueError(f"`params`[{i}] is not a floating-point tensor")
        if require_grad and not p.requires_grad:
            raise ValueError(
                f"`params`[{i}] (shape {tuple(p.shape)}) does not require grad: derivatives are taken with "
                "respect to trainable parameters only"
            )
    return params


def scalar_loss(loss_fn: LossFn, model: nn.Module, batch: Any, *, differentiable: bool = True) -> Tensor:
    """``loss_fn(model, batch)`` as a 0-d tensor; a ValueError naming ``loss_fn`` if it is not a scalar
    (or, with ``differentiable``, if it does not depend on the parameters through autograd)."""
    loss = loss_fn(model, batch)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise ValueError(
            f"`loss_fn` must return a scalar tensor, got {type(loss).__name__}"
            + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
        )
    if differentiable and not loss.requires_grad:
        raise ValueError(
            "`loss_fn` returned a loss that does not depend on the parameters through autograd "
            "(detached, or computed under torch.no_grad)"
        )
    return loss.reshape(())


def norm64(tensors: Sequence[Tensor]) -> float:
    """The Euclidean norm of a list of tensors taken as one vector, accumulated in float64.

    Example::

        >>> norm64([torch.tensor([3.0]), torch.tensor([[4.0]])])
        5.0
    """
    return float(
        torch.sqrt(sum(((t.double() ** 2).sum() for t in tensors), torch.zeros((), dtype=torch.float64)))
    )


# --------------------------------------------------------------------------------------- probes


def probe_size(batches: Sequence[Any]) -> int:
    """Number of samples in the probe batches (the first dimension of each batch's first tensor).

    Example::

        >>> probe_size([(torch.zeros(8, 3), torch.zeros(8)), {"x": torch.zeros(5, 3)}])
        13
    """

    def first_tensor(obj: Any) -> Tensor | None:
        if isinstance(obj, Tensor):
            return obj
        if isinstance(obj, dict):
            obj = list(obj.values())
        if isinstance(obj, (list, tuple)):
            for item in obj:
                found = first_tensor(item)
                if found is not None:
                    return found
        return None

    total = 0
    for b in batches:
        t = first_tensor(b)
        total += int(t.shape[0]) if t is not None and t.dim() > 0 else 1
    return total


def probe_meta(batches: Sequence[Any]) -> dict[str, int]:
    """What every curvature and sharpness result says about its probe set."""
    return {"probe_batches": len(batches), "probe_samples": probe_size(batches)}


def rademacher(n: int, generator: torch.Generator) -> Tensor:
    """``n`` independent +-1 values (int8, on the CPU) from ``generator``: the same on every device."""
    return torch.randint(0, 2, (n,), generator=generator, dtype=torch.int8).mul_(2).sub_(1)


def nonfinite_warning(what: str, err: Exception) -> None:
    warnings.warn(f"{what}: {err}; the result is NaN", RuntimeWarning, stacklevel=3)


# --------------------------------------------------------------------------------------- second order


@contextlib.contextmanager
def second_order() -> Iterator[None]:
    """Kernels that can be differentiated twice, for the length of a block; everything restored after.

    Fused attention kernels (flash, memory-efficient, cuDNN attention, the CPU flash kernel) and cuDNN
    RNNs have no double backward. Inside the block scaled-dot-product attention runs on the math
    backend, cuDNN is off, and the fused fast path of ``nn.MultiheadAttention`` /
    ``nn.TransformerEncoderLayer`` is disabled (PyTorch only takes it when nothing requires grad, but
    a model whose attention is frozen still sees it otherwise). Training steps, outside the block,
    keep the user's kernels.
    """
    mha = getattr(torch.backends, "mha", None)
    fastpath = mha.get_fastpath_enabled() if mha is not None else None
    cudnn = torch.backends.cudnn.enabled
    with contextlib.ExitStack() as stack:
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        except ImportError:  # torch < 2.3
            kernels = {"enable_flash": False, "enable_mem_efficient": False, "enable_math": True}
            stack.enter_context(torch.backends.cuda.sdp_kernel(**kernels))
        # Only `enabled` is switched (torch.backends.cudnn.flags would also reset benchmark/deterministic).
        torch.backends.cudnn.enabled = False
        if mha is not None:
            mha.set_fastpath_enabled(False)
        try:
            yield
        finally:
            torch.backends.cudnn.enabled = cudnn
            if mha is not None:
                mha.set_fastpath_enabled(fastpath)


# --------------------------------------------------------------------------------------- the objective


def mean_loss(model: nn.Module, loss_fn: LossFn, batches: Sequence[Any]) -> Tensor:
    """Mean over batches of ``loss_fn(model, batch)``, as a float32 (or float64) 0-d tensor (no grad)."""
    total: Tensor | None = None
    for batch in batches:
        loss = loss_fn(model, batch)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(
                f"`loss_fn` must return a scalar tensor, got {type(loss).__name__}"
                + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else "")
            )
        loss = loss.detach().reshape(())
        if loss.dtype not in (torch.float32, torch.float64):
            loss = loss.float()
        total = loss if total is None else total + loss
    if total is None:
        raise ValueError("`batches` is empty: at least one probe batch is needed")
    return total / len(batches)


_GATHER = "gather the full weights into an unsharded copy on one process to run it"


@dataclass(frozen=True, eq=False)
class Objective:
    """The mean probe loss of a model as a function of chosen parameters, and how to evaluate it.

    Built once per landscape (as curvlinops builds its operators once from model, loss, parameters and
    data); every computation then takes it and only what is its own (directions, coefficients, seeds).
    :meth:`build` resolves the parameters once; :meth:`replace` derives an objective with other options
    (another ``bn``, no metric) without resolving anything again.

    Attributes:
        model: the model; its weights are moved in place and restored exactly by every computation.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: the probe batches, already on the model's device; the objective is their mean loss.
        params: the parameters directions are aligned with (:func:`landscape_parameters` by default).
        bn: which BatchNorm statistics each evaluated point uses (``"keep"``, ``"recompute"``, or
            ``"interpolate"`` where a computation is given the other models' buffers); see
            :mod:`lightning_landscape.functional.landscape.bn`.
        engine: ``"auto"``, ``"loop"``, ``"vmap"`` or ``"compile"`` (see :func:`loss_surface`).
        chunk_size: points per batched forward pass (default: from a memory budget).
        shard: share evaluation points out among processes (see :class:`PointShard`).
        metric_fn, metric_name: a second quantity evaluated beside the loss at every point, and its
            name in records (default: the function's ``__name__``).
        layout: the :class:`ShardLayout` of a sharded model's parameters (FSDP2 ``DTensor``s), built by
            :meth:`build`; ``params`` are then this process's slices (``layout.local``), every forward
            pass is a collective and every core that takes a ``layout=`` uses this one by default.
        sharded_hessian: how Hessian-vector products of a sharded model are taken: ``"exact"`` (double
            backward through FSDP2's gathered parameters, each process holding the full parameters while
            a curvature computation runs) or ``"difference"`` (a central difference of gradients on the
            slices: 1/W of the memory, biased where the step crosses a ReLU's kink); see
            :mod:`lightning_landscape.functional.curvature.sharded`.

    On a sharded model (parameters that are ``DTensor``s, FSDP2's ``fully_shard``) :meth:`build` finds the
    sharding itself: it builds the layout once, takes the local slices as ``params``, reshards FSDP2's
    modules after every forward without grad (so each forward gathers the moved slices) and evaluates
    point by point (``engine="loop"``). Every computation on it is then a collective: every process must
    call it, with the same arguments, and each gets the unsharded numbers.

    Example::

        >>> from lightning_landscape.functional import Objective, loss_surface
        >>> model = nn.Linear(1, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.fill_(0.0)
        >>> mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> objective = Objective.build(model, mse, [(torch.tensor([[1.0]]), torch.tensor([[2.0]]))])
        >>> objective.loss(), objective.numel, objective.probe_meta()
        (4.0, 1, {'probe_batches': 1, 'probe_samples': 1})
        >>> objective.replace(bn="recompute").bn, objective.replace(bn="recompute").params is objective.params
        ('recompute', True)
    """

    model: nn.Module
    loss_fn: LossFn
    batches: Sequence[Any]
    params: Sequence[Tensor]
    bn: BNMode = "keep"
    engine: Engine = "auto"
    chunk_size: int | None = None
    shard: PointShard | None = None
    metric_fn: LossFn | None = None
    metric_name: str | None = None
    layout: ShardLayout | None = None
    sharded_hessian: ShardedHessian = "exact"

    def __post_init__(self) -> None:
        check_engine(self.engine)
        if self.sharded_hessian not in ("exact", "difference"):
            raise ValueError(
                f"`sharded_hessian` must be 'exact' or 'difference', got {self.sharded_hessian!r}"
            )
        chunk = self.chunk_size
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise ValueError(f"`chunk_size` must be a positive integer or None, got {chunk!r}")
        if len(self.batches) == 0:
            raise ValueError("`batches` is empty: at least one probe batch is needed")
        check_bn(self.bn)

    @classmethod
    def build(
        cls,
        model: nn.Module,
        loss_fn: LossFn,
        batches: Sequence[Any],
        params: Sequence[Tensor] | None = None,
        *,
        require_grad: bool = False,
        bn: BNMode = "keep",
        engine: Engine = "auto",
        chunk_size: int | None = None,
        shard: PointShard | None = None,
        metric_fn: LossFn | None = None,
        metric_name: str | None = None,
        sharded_hessian: ShardedHessian = "exact",
    ) -> Objective:
        """The objective of ``model`` on ``batches``; ``params`` resolved once (see :func:`resolve_params`:
        ``require_grad`` for computations that differentiate).

        Sharded parameters (``DTensor``s) are found here: the objective then holds their layout and local
        slices (see the class docstring). Every forward pass of such a model involves every process, so
        ``shard`` (points shared out) is refused, and so are the batched engines (``"vmap"``,
        ``"compile"``): ``"auto"`` is the loop.
        """
        resolved = resolve_params(model, params, require_grad=require_grad)
        layout = None
        if is_sharded(resolved):
            if shard is not None:
                raise ValueError(
                    "`shard`: the parameters are sharded (DTensors), so every process takes part in every "
                    "forward pass and evaluates every point; call without `shard` on every process"
                )
            check_engine(engine)
            if engine not in ("auto", "loop"):
                raise ValueError(
                    f"`engine`={engine!r} is not supported on sharded parameters (DTensors): every forward "
                    "pass gathers the shards; use 'loop' or 'auto' (the loop)"
                )
            layout = ShardLayout.of(resolved)
            resolved, engine = layout.local, "loop"
            loss_fn = resharding(loss_fn, model)
            metric_fn = None if metric_fn is None else resharding(metric_fn, model)
        return cls(
            model, loss_fn, list(batches), resolved, bn=bn, engine=engine, chunk_size=chunk_size,
            shard=shard, metric_fn=metric_fn, metric_name=metric_name, layout=layout,
            sharded_hessian=sharded_hessian,
        )  # fmt: skip

    def unsharded(self, what: str, instead: str = _GATHER) -> Objective:
        """This objective; a ValueError if its parameters are sharded, saying that ``what`` does not work
        on them and what does (``instead``)."""
        if self.layout is not None:
            raise ValueError(
                f"{what} does not support sharded parameters (FSDP2 DTensors) yet; {instead}. The other "
                "public functions of lightning_landscape.functional that take a model work on them "
                "(loss_surface, loss_line, interpolation_line, filter_normalized_directions, "
                "hessian_eigenvalues, hessian_trace, sam_sharpness, average_sharpness, "
                "critical_sharpness, landscape_reliability, ...: see docs/scaling.md)"
            )
        return self

    def replace(self, **changes: Any) -> Objective:
        """This objective with some options changed (the parameters are not resolved again)."""
        return dataclasses.replace(self, **changes)

    def differentiable(self) -> Objective:
        """This objective, after checking that every parameter requires grad (a ValueError otherwise)."""
        params = self.params if self.layout is None else self.layout.params  # the slices hold no grad
        resolve_params(self.model, params, require_grad=True)
        return self

    @property
    def numel(self) -> int:
        """The number of parameter elements, ``P``."""
        return sum(p.numel() for p in self.params)

    @property
    def dtype(self) -> torch.dtype:
        """The work dtype of flat vectors over the parameters (see :func:`work_dtype`)."""
        return work_dtype(self.params[0])

    @property
    def metric_label(self) -> str | None:
        """The metric's name in records (None without a metric)."""
        if self.metric_fn is None:
            return None
        if self.metric_name is not None:
            return str(self.metric_name)
        name = getattr(self.metric_fn, "__name__", "metric")
        return "metric" if name == "<lambda>" else name

    def probe_meta(self) -> dict[str, int]:
        """What every result says about its probe set (see :func:`probe_meta`)."""
        return probe_meta(self.batches)

    def buffer_plan(self) -> BufferPlan | None:
        """The buffers of a computation that has no other models: ``"recompute"``'s plan, or None for
        ``"keep"``; a ValueError for ``"interpolate"`` (it needs the buffers of the models at the ends)."""
        if self.bn == "interpolate":
            raise ValueError(
                f"`bn`={self.bn!r} needs the buffers of the models at the other ends (interpolation_line's "
                "`start_buffers`, barrier or shared_plane_surface); use 'keep' or 'recompute' here"
            )
        return BufferPlan.recompute(self.model) if self.bn == "recompute" else None

    def loss(self) -> float:
        """The mean probe loss at the current weights, observed in eval mode (state restored after)."""
        with observation(self.model):
            return float(mean_loss(self.model, self.loss_fn, self.batches))
