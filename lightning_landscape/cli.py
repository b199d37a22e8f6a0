"""The ``lightning-landscape`` command: compare runs, re-draw saved records, summarise a run.

    lightning-landscape compare RUN_DIR RUN_DIR ... --out compare.png
    lightning-landscape plot RECORD [--style contour|filled|surface3d|line] [--log] --out FILE
    lightning-landscape summary RUN_DIR

A RUN_DIR is a run's log directory (``lightning_logs/sgd/seed0``) or its ``landscape/`` folder.
Everything is read from the records on disk (:mod:`lightning_landscape.records`); no logger is needed.
Bad input (a missing or mixed run, a corrupt or foreign record, runs on different protocols) gets a
one-line message on stderr and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_landscape.records import (
    LineRecord,
    MetricsRecord,
    RecordError,
    SurfaceRecord,
    load_record,
    load_records,
)

__all__ = ["CLIError", "Run", "load_run", "main", "run_series"]

# Settings that must agree for a comparison to be on the same protocol.
PROTOCOL_KEYS = ("directions", "resolution", "probe_batches", "probe_samples")


class CLIError(Exception):
    """Bad input to the command: printed as one line, exit status 2."""


@dataclasses.dataclass
class Run:
    """One run's records, with its final (or else latest) surface and lines picked out."""

    label: str
    path: Path
    records: list[Any]

    @property
    def surfaces(self) -> list[SurfaceRecord]:
        return [r for r in self.records if isinstance(r, SurfaceRecord)]

    @property
    def final_surface(self) -> SurfaceRecord | None:
        final = [r for r in self.surfaces if r.meta.get("stage") == "final"]
        return (final or self.surfaces or [None])[-1]

    def latest_surface(self, stage: str) -> SurfaceRecord | None:
        """The last surface of ``stage`` (``"final"`` or ``"periodic"``), if any."""
        return ([r for r in self.surfaces if r.meta.get("stage") == stage] or [None])[-1]

    def final_line(self, which: str) -> LineRecord | None:
        """The final stage's ``"interpolation"`` line, or plane-axis line ``"axis0"`` / ``"axis1"``."""
        lines = [r for r in self.records if isinstance(r, LineRecord)]
        final = [r for r in lines if r.meta.get("stage") == "final"] or lines
        for r in reversed(final):
            if which == "interpolation" and r.meta.get("directions") == "interpolation":
                return r
            if which.startswith("axis") and r.meta.get("axis") == int(which[4:]):
                return r
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "iuf":
        return float(value.ravel()[0])
    return None


def _flat_numbers(values: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(values, dict):
        for k, v in values.items():
            out.update(_flat_numbers(v, f"{prefix}{k}/"))
    else:
        x = _number(values)
        if x is not None:
            out[prefix.rstrip("/")] = x
    return out


def record_scalars(record: Any) -> dict[str, float]:
    """The scalar figures one record stands for (keys as in the loggers, without ``landscape/``).

    Surfaces give the centre loss, surface min/max and explained variance; the interpolation line
    gives the distance from the initial weights. Records of any other kind (curvature metrics, say)
    give their numeric scalar fields and the numbers under ``meta["values" | "scalars" | "metrics"]``.
    """
    meta = record.meta if isinstance(getattr(record, "meta", None), dict) else {}
    out: dict[str, float] = {}
    if isinstance(record, (SurfaceRecord, LineRecord, MetricsRecord)):
        out.update(record.scalars())
    else:
        if dataclasses.is_dataclass(record):
            for f in dataclasses.fields(record):
                if f.name != "meta":
                    out.update(_flat_numbers(getattr(record, f.name), f"{f.name}/"))
        for key in ("values", "scalars", "metrics"):
            if isinstance(meta.get(key), dict):
                out.update(_flat_numbers(meta[key]))
    return {k: v for k, v in out.items() if k}


def _diagnostic(key: str) -> bool:
    return key.endswith(("_residual", "_stderr", "lanczos_iterations", "surface_max", "grad_norm"))


def run_series(run: Run) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each scalar over training as ``(global steps, values)``: the periodic records, or the final
    ones where a figure has no periodic record."""
    points: dict[str, dict[int, float]] = {}
    for stage in ("periodic", "final"):
        seen = set(points)  # figures with periodic points take nothing from the final records
        for rec in run.records:
            if rec.meta.get("stage", "periodic") != stage:
                continue
            step = int(_number(rec.meta.get("global_step")) or 0)
            for key, value in record_scalars(rec).items():
                if key not in seen:
                    points.setdefault(key, {})[step] = value
    return {
        k: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)])) for k, v in sorted(points.items()) if v
    }


def final_figures(run: Run) -> dict[str, float]:
    """The run's figures at the end: the final records', then the last value of every other series."""
    out: dict[str, float] = {}
    final = [r for r in run.records if r.meta.get("stage") == "final"]
    for rec in final or run.records[-1:]:
        out.update(record_scalars(rec))
    for key, (_, values) in run_series(run).items():
        out.setdefault(key, float(values[-1]))
    return out


def _run_label(path: Path) -> str:
    parts = [p for p in path.resolve().parts if p != "landscape"]
    return "/".join(parts[-2:])


def load_run(run_dir: str | Path, label: str | None = None) -> Run:
    """Read a run's records; :class:`CLIError` if it is missing, empty or holds several runs."""
    path = Path(run_dir)
    if not path.exists():
        raise CLIError(f"{path}: no such run directory")
    if not path.is_dir():
        raise CLIError(f"{path}: not a directory; give a run's log directory (or its landscape/ folder)")
    folders = sorted({p.parent for p in path.rglob("*.json") if p.with_suffix(".npz").exists()})
    if not folders:
        raise CLIError(f"{path}: no lightning-landscape records found (looked for NAME.json + NAME.npz)")
    if len(folders) > 1:
        shown = ", ".join(str(f) for f in folders[:4]) + (" ..." if len(folders) > 4 else "")
        raise CLIError(f"{path}: holds the records of {len(folders)} runs ({shown}); give one run directory")
    return Run(label or _run_label(path), path, load_records(folders[0]))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    x = _number(value)
    if x is None:
        if isinstance(value, list):
            return ", ".join(_fmt(v) for v in value)
        return str(value)
    if math.isnan(x):
        return "nan"
    return f"{int(x)}" if float(x).is_integer() and abs(x) < 1e15 else f"{x:.4g}"


def format_table(rows: Sequence[Sequence[Any]]) -> str:
    """Rows as aligned text columns (first row is the header, underlined).

    Example::

        >>> print(format_table([["metric", "a"], ["loss", 0.5]]))
        metric  a
        ------  ---
        loss    0.5
    """
    cells = [[_fmt(c) if not isinstance(c, str) else c for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(len(cells[0]))]
    widths = [max(w, 3) for w in widths]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)


def _save(fig: Figure, out: str) -> None:
    path = Path(out)
    fmt = path.suffix.lstrip(".").lower()
    supported = FigureCanvasAgg.get_supported_filetypes()
    if fmt not in supported:
        raise CLIError(
            f"--out {out}: unknown image format {fmt!r}; use one of {', '.join(sorted(supported))}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)


def _settings_rows(rec: Any) -> list[list[Any]]:
    keys = (
        "stage", "epoch", "global_step", "directions", "resolution", "span", "probe_batches",
        "probe_samples", "snapshots", "seed", "explained_variance", "nonfinite",
    )  # fmt: skip
    return [[k, rec.meta[k]] for k in keys if k in rec.meta]


# --------------------------------------------------------------------------- commands


def cmd_compare(args: argparse.Namespace) -> int:
    if len(args.runs) < 2:
        raise CLIError("compare needs at least two run directories")
    resolved = [Path(r).resolve() for r in args.runs]
    if len(set(resolved)) < len(resolved):
        raise CLIError("the same run directory is given more than once")
    if args.labels is not None and len(args.labels) != len(args.runs):
        raise CLIError(f"--labels gives {len(args.labels)} names for {len(args.runs)} runs")
    runs = [load_run(r, label) for r, label in zip(args.runs, args.labels or [None] * len(args.runs))]
    if len({r.label for r in runs}) < len(runs):
        runs = [dataclasses.replace(r, label=str(r.path)) for r in runs]
    missing = [str(r.path) for r in runs if r.final_surface is None]
    if missing:
        raise CLIError(f"no loss surface to compare in: {', '.join(missing)}")
    # Compare like with like: the final surfaces, or the latest periodic ones where a run has no final.
    stage = "final" if all(r.latest_surface("final") for r in runs) else "periodic"
    if stage == "periodic":
        unfinished = ", ".join(str(r.path) for r in runs if r.latest_surface("final") is None)
        print(
            f"note: no final surface in {unfinished} (training interrupted?); comparing the latest "
            "periodic surfaces",
            file=sys.stderr,
        )
    surfaces = [r.latest_surface(stage) or r.final_surface for r in runs]
    assert all(s is not None for s in surfaces)
    differ = {
        k: [s.meta.get(k) for s in surfaces]  # type: ignore[union-attr]
        for k in PROTOCOL_KEYS
        if len({str(s.meta.get(k)) for s in surfaces}) > 1  # type: ignore[union-attr]
    }
    if differ and not args.allow_mismatch:
        detail = "; ".join(f"{k}: {', '.join(_fmt(v) for v in vals)}" for k, vals in differ.items())
        raise CLIError(
            f"the runs' surfaces are not on the same protocol ({detail}); "
            "pass --allow-mismatch to compare them anyway"
        )

    lines = {
        "interpolation: initial (0) → final (1) weights": [r.final_line("interpolation") for r in runs],
        "along plane axis 1": [r.final_line("axis0") for r in runs],
        "along plane axis 2": [r.final_line("axis1") for r in runs],
    }
    lines = {k: v for k, v in lines.items() if any(x is not None for x in v)}
    per_run = [run_series(r) for r in runs]
    # Panels for the figures people compare; diagnostics (residuals, iteration counts, standard errors,
    # the surface's maximum) stay in the printed table.
    keys = sorted({k for s in per_run for k in s if not _diagnostic(k)})
    series = {k: [s.get(k) for s in per_run] for k in keys}

    from lightning_landscape.plots import comparison_figure

    fig = comparison_figure(
        surfaces,  # type: ignore[arg-type]
        [r.label for r in runs],
        lines=lines,
        series=series,
        levels=args.levels,
        log=not args.linear,
    )
    _save(fig, args.out)
    figures = [final_figures(r) for r in runs]
    rows: list[list[Any]] = [["", *[r.label for r in runs]]]
    for key in ("global_step", "epoch", "directions", "resolution", "probe_samples"):
        rows.append([key, *[s.meta.get(key) for s in surfaces]])  # type: ignore[union-attr]
    for key in sorted({k for f in figures for k in f}):
        rows.append([key, *[f.get(key) for f in figures]])
    print(format_table(rows))
    print(f"wrote {args.out}")
    return 0


_STYLES = {"surface": ("filled", "contour", "surface3d"), "line": ("line",)}


def cmd_plot(args: argparse.Namespace) -> int:
    path = Path(args.record)
    if path.is_dir():
        raise CLIError(f"{path}: a directory; give one record file (NAME.json or NAME.npz)")
    if path.suffix not in (".json", ".npz"):
        path = path.with_name(path.name + ".json")
    if not path.with_suffix(".json").exists():
        raise CLIError(f"{path.with_suffix('.json')}: no such record")
    rec = load_record(path)
    styles = _STYLES.get(rec.kind, ())
    style = args.style or (styles[0] if styles else None)
    if style not in styles:
        raise CLIError(
            f"{path}: a {rec.kind} record cannot be drawn as {style!r}; use --style {' or '.join(styles)}"
        )
    from lightning_landscape import plots

    if style == "line":
        fig = plots.line_figure([rec], log=args.log)
    elif style == "surface3d":
        fig = plots.surface3d_figure(rec, log=args.log)
    else:
        fig = plots.contour_figure(rec, log=args.log, filled=style == "filled")
    _save(fig, args.out)
    print(f"wrote {args.out}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    run = load_run(args.run)
    kinds: dict[str, int] = {}
    for r in run.records:
        key = f"{r.kind} ({r.meta.get('stage', '?')})"
        kinds[key] = kinds.get(key, 0) + 1
    print(f"run: {run.path}")
    print("records: " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
    latest = run.final_surface
    if latest is not None:
        print()
        print(format_table([["setting", "value"], *_settings_rows(latest)]))
    print()
    series = run_series(run)
    rows: list[list[Any]] = [["figure", "final", "points"]]
    for key, value in sorted(final_figures(run).items()):
        rows.append([key, value, len(series[key][0]) if key in series else 1])
    print(format_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightning-landscape",
        description="Compare runs, re-draw saved records and summarise runs of LossLandscapeCallback.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("compare", help="runs side by side on one colour scale; final figures as a table")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run log directories (or their landscape/)")
    p.add_argument("--out", required=True, metavar="FILE", help="image to write (.png, .pdf, .svg, ...)")
    p.add_argument("--labels", nargs="+", metavar="NAME", help="one name per run (default: the path)")
    p.add_argument("--levels", type=int, default=20, help="number of shared contour levels (default 20)")
    p.add_argument("--linear", action="store_true", help="linear contour levels and line axes (default log)")
    p.add_argument("--allow-mismatch", action="store_true", help="compare runs on different protocols")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("plot", help="re-draw one saved record")
    p.add_argument("record", metavar="RECORD", help="NAME.json or NAME.npz under a run's landscape/")
    p.add_argument("--style", choices=["contour", "filled", "surface3d", "line"], default=None)
    p.add_argument("--log", action="store_true", help="log scale for the loss")
    p.add_argument("--out", required=True, metavar="FILE")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("summary", help="a run's settings and figures as a table")
    p.add_argument("run", metavar="RUN_DIR")
    p.set_defaults(func=cmd_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-landscape`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `lightning-landscape summary RUN | head`: the reader left, nothing to say
        sys.stderr.close()
        return 0
    except (CLIError, RecordError, OSError) as err:
        print(f"lightning-landscape {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
