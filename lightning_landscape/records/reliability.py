"""The record of how far to trust one landscape (kind ``"reliability"``, registered in :mod:`records`).

Kept apart from :mod:`lightning_landscape.records.record` (which re-exports it) so that the record types there
stay small; like them it holds numeric arrays and JSON-able metadata only.

On disk (format version 1): ``names`` (n,) unicode and ``values`` (n,) float64, as a metrics record,
plus optional arrays: ``path_points`` (m, 2), ``path_losses`` (m,) and ``path_surface_losses`` (m,)
(true loss at evaluated snapshots and the surface under them), ``path_distances`` (n,) (each
snapshot's distance from the plane), ``direction_curvatures`` (k,) and ``direction_widths`` (k,). The
sidecar's ``meta`` has ``checks`` (one dict per check: ``check``, ``value``, ``threshold``, ``status``,
``flag``), ``flags`` and ``thresholds``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

__all__ = ["ReliabilityRecord"]

_OPTIONAL = (
    "path_points",
    "path_losses",
    "path_surface_losses",
    "path_distances",
    "direction_curvatures",
    "direction_widths",
)


@dataclass
class ReliabilityRecord:
    """Reliability indicators of one landscape: named scalars, the checks and their flags.

    Scalars are logged under ``landscape/[NAME/][final/]reliability/...``. Build one with
    :func:`lightning_landscape.functional.reliability_summary`.

    Example::

        >>> rec = ReliabilityRecord.from_dict(
        ...     {"path/on_plane_share": 0.6},
        ...     checks=[{"check": "path on the plane", "value": 0.6, "threshold": ">= 0.7",
        ...              "status": "fail", "flag": "path 40 % off-plane"}],
        ... )
        >>> rec.scalars(), rec.flags
        ({'reliability/path/on_plane_share': 0.6}, ['path 40 % off-plane'])
        >>> rec.title("loss surface")
        'loss surface — path 40 % off-plane'
    """

    names: np.ndarray
    values: np.ndarray
    path_points: np.ndarray | None = None
    path_losses: np.ndarray | None = None
    path_surface_losses: np.ndarray | None = None
    path_distances: np.ndarray | None = None
    direction_curvatures: np.ndarray | None = None
    direction_widths: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "reliability"

    @classmethod
    def from_dict(
        cls,
        values: dict[str, float],
        checks: list[dict[str, Any]] | None = None,
        meta: dict[str, Any] | None = None,
        **arrays: np.ndarray | None,
    ) -> ReliabilityRecord:
        """A record from ``{name: value}`` (names without the ``reliability/`` prefix) and its checks."""
        unknown = set(arrays) - set(_OPTIONAL)
        if unknown:
            raise ValueError(f"unknown reliability arrays {sorted(unknown)}; expected some of {_OPTIONAL}")
        checks = list(checks or [])
        info = {
            **(meta or {}),
            "checks": checks,
            "flags": [c["flag"] for c in checks if c.get("status") == "fail"],
        }
        return cls(
            names=np.array(list(values), dtype=np.str_),
            values=np.array([float(v) for v in values.values()], dtype=np.float64),
            meta=info,
            **{k: None if v is None else np.asarray(v, dtype=np.float64) for k, v in arrays.items()},
        )

    def as_dict(self) -> dict[str, float]:
        """``{name: value}`` (names without the prefix; NaN where an indicator was not computed)."""
        return {str(n): float(v) for n, v in zip(self.names.tolist(), self.values.tolist())}

    def scalars(self) -> dict[str, float]:
        """The finite values under ``reliability/...`` (a basin wider than the scan, inf, is not logged)."""
        return {f"reliability/{k}": v for k, v in self.as_dict().items() if math.isfinite(v)}

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"names": np.asarray(self.names, dtype=np.str_), "values": self.values}
        for key in _OPTIONAL:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out

    @property
    def flags(self) -> list[str]:
        """Short texts of the failed checks, for a figure's title."""
        return [str(f) for f in self.meta.get("flags", [])]

    def title(self, base: str) -> str:
        """``base``, followed by the flags when a check failed."""
        return f"{base} — {'; '.join(self.flags)}" if self.flags else base

    def markdown(self) -> str:
        """The checks as a small markdown table (for a logger's text panel and ``summary``)."""
        rows = ["| check | value | threshold | status |", "|---|---|---|---|"]
        for c in self.meta.get("checks", []):
            value = c.get("value")
            shown = (
                "n/a" if value is None else f"{value:.3g}" if isinstance(value, (int, float)) else str(value)
            )
            rows.append(
                f"| {c.get('check', '')} | {shown} | {c.get('threshold', '')} | {c.get('status', '')} |"
            )
        return "\n".join(rows)
