"""Critical sharpness along the optimizer's own update, every N optimizer steps (no Lightning math here).

:class:`CriticalSharpnessMonitor` keeps the weights from before an optimizer step (``capture``, at the
start of the training batch, with the learning rate then in force) and, once the step is taken
(``measure``, at the end of the batch), takes ``(w_after - w_before) / lr`` as the update per unit learning
rate, puts ``w_before`` back, runs :func:`~lightning_landscape.functional.critical_sharpness` along it on
the probe batches, and puts ``w_after`` back by copy (bit for bit). Whatever the optimizer did (SGD,
momentum, Adam, AdamW with its decay, SAM's base step at the perturbed gradient) is the direction, so no
optimizer state is read except the learning rate and the stability threshold
(:func:`~lightning_landscape.functional.stability_threshold`) that ``critical/ratio`` divides by.

A mini-batch step need not go down on the probe batches; when the probe loss goes up at every step tried
along it down to ``lr / 1000`` (``lambda_c > 2000 / lr``, or an ascent direction) the step is logged as
``critical/uphill`` 1.0 (else 0.0) without ``lambda_c``. Each search takes at most 20 loss evaluations.

Scalars (under the callback's ``landscape/[NAME/]`` prefix): ``critical/uphill``, ``critical/lambda_c``,
``critical/eta_c``, ``critical/evaluations``, ``critical/ratio`` and ``critical/threshold`` (when the
optimizer has a known threshold), and with a second probe ``critical/relative_lambda_c``,
``critical/relative_eta_c``: the second loss searched along the first loss's update, and
``critical/relative_uphill`` (1.0 when the update raises the second loss at every small step).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_landscape.callback.probe import ProbeSet
from lightning_landscape.functional import checks as check
from lightning_landscape.functional.curvature.critical import CriticalSharpness, critical_sharpness
from lightning_landscape.functional.curvature.stability import StabilityThreshold, stability_threshold
from lightning_landscape.functional.landscape.params import LossFn
from lightning_landscape.records.record import LineRecord

__all__ = ["CriticalSharpnessMonitor"]


class CriticalSharpnessMonitor:
    """When and how the callback measures critical sharpness along the optimizer's update.

    Args:
        every_n_steps: measure the update of every optimizer step whose number (``global_step`` before it)
            is a multiple of this; ``None`` for never.
        probe: ``(dataloader, loss_fn)`` of a second loss searched along the first loss's update (relative
            critical sharpness); its first ``num_batches`` batches are its probe set.
        num_batches: batches taken from the second probe's loader.
        rtol: relative accuracy of each ``eta_c``.

    Example::

        >>> monitor = CriticalSharpnessMonitor(every_n_steps=10)
        >>> monitor.wants(0), monitor.wants(5), monitor.wants(20)
        (True, False, True)
        >>> CriticalSharpnessMonitor(every_n_steps=0)
        Traceback (most recent call last):
        ...
        ValueError: `critical_sharpness` must be an integer >= 1 or None, got 0
    """

    def __init__(
        self,
        every_n_steps: int | None,
        probe: tuple[Iterable[Any], LossFn] | None = None,
        num_batches: int = 4,
        rtol: float = 1e-2,
    ) -> None:
        self.every_n_steps = check.positive_int("critical_sharpness", every_n_steps, allow_none=True)
        if probe is not None:
            if not isinstance(probe, (tuple, list)) or len(probe) != 2:
                raise ValueError(f"`critical_probe` must be a pair (dataloader, loss_fn), got {probe!r}")
            check.iterable_arg("critical_probe", probe[0], allow_none=False)
            check.callable_arg("critical_probe", probe[1], "loss_fn(model, batch)", allow_none=False)
            if every_n_steps is None:
                raise ValueError(
                    "`critical_probe` is searched along the updates that `critical_sharpness` measures: "
                    "pass `critical_sharpness=N` (every N optimizer steps) too"
                )
        self.second = ProbeSet(num_batches, probe[0], probe[1]) if probe is not None else None
        self.rtol = rtol
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new ``fit``)."""
        self._saved: tuple[int, list[Tensor], float, StabilityThreshold] | None = None
        self._eta: float | None = None  # the last eta_c: the next search's first guess
        self.history: list[tuple[int, str, dict[str, float]]] = []
        self.last: CriticalSharpness | None = None
        self.last_step = -1
        self._new = False  # a measurement not yet given to line_record()
        if self.second is not None:
            self.second.reset()

    def state_dict(self) -> dict[str, Any]:
        """The series so far and the next search's first guess, as plain lists, strings and floats (a
        checkpoint loads with ``weights_only=True``): a resumed ``fit`` continues the series."""
        return {
            "history": [
                [int(step), str(kind), {str(k): float(v) for k, v in scalars.items()}]
                for step, kind, scalars in self.history
            ],
            "eta": self._eta,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (the last measurement's line is not kept: the next one draws it)."""
        self.history = [
            (int(step), str(kind), {str(k): float(v) for k, v in scalars.items()})
            for step, kind, scalars in state.get("history", [])
        ]
        eta = state.get("eta")
        self._eta = None if eta is None else float(eta)

    @property
    def enabled(self) -> bool:
        return self.every_n_steps is not None

    def wants(self, step: int) -> bool:
        """Whether the step taken from ``global_step == step`` is to be measured."""
        return self.every_n_steps is not None and self._saved is None and step % self.every_n_steps == 0

    def pending(self, step: int) -> bool:
        """Whether a captured step has been taken (``global_step`` moved past the captured one)."""
        return self._saved is not None and step > self._saved[0]

    def capture(self, step: int, params: Sequence[Tensor], optimizers: Sequence[Any]) -> None:
        """Keep the weights before the step from ``step`` and the learning rate in force."""
        if len(optimizers) != 1:
            raise ValueError(
                f"critical sharpness needs exactly one optimizer, the trainer has {len(optimizers)}"
            )
        threshold = stability_threshold(optimizers[0])
        lr = threshold.lr
        if not (isinstance(lr, float) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"no single positive learning rate to divide the update by ({threshold.reason})")
        with torch.no_grad():
            self._saved = (step, [p.detach().clone() for p in params], lr, threshold)

    def drop(self) -> None:
        """Forget a captured step (its measurement failed)."""
        self._saved = None

    def measure(
        self,
        model: nn.Module,
        params: Sequence[Tensor],
        loss_fn: LossFn,
        batches: Sequence[Any],
        step: int,
        relative: tuple[LossFn, Sequence[Any]] | None = None,
    ) -> dict[str, float]:
        """The critical sharpness of the step taken since :meth:`capture`, from the weights before it.

        The model is at the weights after the step; it is put at those before for the searches and back
        after them by copy, bit for bit. Returns the scalars (see the module's docstring).
        """
        if self._saved is None:
            raise RuntimeError("CriticalSharpnessMonitor.measure() without a captured step")
        _, before, lr, threshold = self._saved
        self._saved = None
        params = list(params)
        with torch.no_grad():
            after = [p.detach().clone() for p in params]
            torch._foreach_copy_(params, before)  # the search starts from the weights before the step
            # (after - before) / lr, in the saved copy itself (two copies of the weights held, not three);
            # float32 for low-precision parameters
            wide = [torch.float64 if p.dtype == torch.float64 else torch.float32 for p in params]
            direction = [b.to(w) for b, w in zip(before, wide)]  # no copy when already wide
            del before
            torch._foreach_sub_(direction, [a.to(d.dtype) for a, d in zip(after, direction)])
            torch._foreach_div_(direction, -lr)
            try:
                result = self._search(model, params, loss_fn, batches, direction, self._eta or lr, lr)
                second = None
                if relative is not None:
                    second = self._search(model, params, relative[0], relative[1], direction, lr, lr)
            finally:
                torch._foreach_copy_(params, after)
        scalars: dict[str, float] = {"critical/uphill": float(result is None)}
        if result is not None:
            scalars.update(result.scalars())
            if result.bracketed:
                self._eta = result.eta_c
            if threshold.available:
                scalars["critical/ratio"] = result.lambda_c / threshold.threshold
        if threshold.available:
            scalars["critical/threshold"] = threshold.threshold
        if relative is not None:
            scalars["critical/relative_uphill"] = float(second is None)
        if second is not None:
            scalars["critical/relative_lambda_c"] = second.lambda_c
            if second.bracketed:
                scalars["critical/relative_eta_c"] = second.eta_c
        self.history.append((step, "periodic", dict(scalars)))
        if result is not None:
            self.last, self.last_step, self._new = result, step, True
        return scalars

    def _search(
        self,
        model: nn.Module,
        params: list[Tensor],
        loss_fn: LossFn,
        batches: Sequence[Any],
        direction: list[Tensor],
        eta0: float,
        lr: float,
    ) -> CriticalSharpness | None:
        """The search along ``direction``, or ``None`` if the loss goes up at every small step along it."""
        try:
            return critical_sharpness(
                model, loss_fn, batches, direction, rtol=self.rtol, eta0=eta0, params=params,
                max_evaluations=20, eta_min=lr * 1e-3,
            )  # fmt: skip
        except ValueError as err:
            if "does not go down" not in str(err):
                raise
            return None

    def line_record(self, common: dict[str, Any]) -> LineRecord | None:
        """The loss along the last measured update as a line record (``alphas`` are the steps ``eta``), with
        the series so far in its meta; ``None`` if nothing was measured since the last call."""
        if self.last is None or not self._new:
            return None
        self._new = False
        etas, losses = self.last.line()
        meta = {
            **common,
            "directions": "critical",
            "label": "loss along the update",
            "measured_step": self.last_step,
            "lambda_c": self.last.lambda_c,
            "eta_c": self.last.eta_c,
            "evaluations": self.last.evaluations,
            "history_steps": [s for s, _, _ in self.history],
            "history_lambda_c": [v.get("critical/lambda_c", math.nan) for _, _, v in self.history],
            "history_ratio": [v.get("critical/ratio", math.nan) for _, _, v in self.history],
            "history_relative_lambda_c": [
                v.get("critical/relative_lambda_c", math.nan) for _, _, v in self.history
            ],
        }
        return LineRecord(np.asarray(etas), np.asarray(losses), meta)
