"""The shared-solutions part of ``lightning-landscape compare`` (no torch: records only).

When two runs were compared as solutions (:func:`lightning_landscape.compare_solutions` wrote
``shared_plane``, ``barrier`` and ``barrier_naive`` into
``<common parent>/shared_<A>_vs_<B>[_<tail>]/``, or a folder given with ``--shared``), ``compare``
draws the shared plane and the barrier beside its own figure (``<out stem>_shared_plane.<ext>``,
``<out stem>_barrier.<ext>``) and tabulates :meth:`SolutionComparison.summary`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_landscape._cli_common import format_table
from lightning_landscape.solutions import SolutionComparison, default_shared_dir, load_solutions

__all__ = [
    "SHARED_PREFIX",
    "draw_shared",
    "find_shared",
    "is_shared_folder",
    "not_shared",
    "report_shared",
    "shared_outputs",
    "summary_rows",
]

SHARED_PREFIX = "shared_"


def is_shared_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder of compared solutions (named ``shared_*``), not a run."""
    return Path(path).name.startswith(SHARED_PREFIX)


def find_shared(
    run_a: str | os.PathLike, run_b: str | os.PathLike, explicit: str | None = None
) -> Path | None:
    """The folder of ``run_a`` and ``run_b``'s compared solutions: ``explicit`` (a ValueError if it is not
    a directory), else :func:`default_shared_dir` if it exists; ``None`` when there is none (a run
    without saved weights, or runs never compared)."""
    if explicit is not None:
        folder = Path(explicit)
        if not folder.is_dir():
            raise ValueError(f"--shared {explicit}: no such directory")
        return folder
    try:
        folder = default_shared_dir(run_a, run_b)
    except ValueError:  # a run without (or with several) saved weights: nothing shared to look for
        return None
    return folder if folder.is_dir() else None


def shared_outputs(out: str | os.PathLike) -> tuple[Path, Path]:
    """The shared plane's and the barrier's image paths beside ``out``.

    Example::

        >>> [p.name for p in shared_outputs("figs/compare.png")]
        ['compare_shared_plane.png', 'compare_barrier.png']
    """
    path = Path(out)
    return (
        path.with_name(f"{path.stem}_shared_plane{path.suffix}"),
        path.with_name(f"{path.stem}_barrier{path.suffix}"),
    )


def draw_shared(
    comparison: SolutionComparison, out: str | os.PathLike, levels: int = 20, log: bool = True
) -> list[Path]:
    """Write the shared plane (if computed) and the barrier figures beside ``out``; return their paths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from lightning_landscape.solution_plots import barrier_figure, shared_plane_figure

    plane_path, barrier_path = shared_outputs(out)
    figures = []
    if comparison.surface is not None:
        figures.append((shared_plane_figure(comparison.surface, levels=levels, log=log), plane_path))
    lines = [r for r in (comparison.barrier, comparison.naive_barrier) if r is not None]
    figures.append((barrier_figure(lines), barrier_path))
    written = []
    for fig, path in figures:
        path.parent.mkdir(parents=True, exist_ok=True)
        FigureCanvasAgg(fig)
        fig.savefig(path, dpi=110)
        written.append(path)
    return written


def summary_rows(comparison: SolutionComparison) -> list[list[Any]]:
    """The table of :meth:`SolutionComparison.summary`, with which run is A and which is B."""
    meta = comparison.barrier.meta
    labels = meta.get("run_labels") or ["A", "B"]
    rows: list[list[Any]] = [["shared solutions", f"A = {labels[0]}, B = {labels[1]}"]]
    rows.append(["statistics of the barrier", str(meta.get("bn", "-"))])
    rows += [[key, value] for key, value in comparison.summary().items()]
    return rows


def not_shared(paths: Sequence[str]) -> list[str]:
    """``paths`` without folders of compared solutions (``shared_*``: not runs), with a note on stderr."""
    skipped = [p for p in paths if is_shared_folder(p)]
    if skipped:
        print(f"note: skipping {', '.join(skipped)} (compared solutions, not runs)", file=sys.stderr)
    return [p for p in paths if not is_shared_folder(p)]


def report_shared(
    runs: Sequence[str], explicit: str | None, out: str | os.PathLike, levels: int = 20, log: bool = True
) -> SolutionComparison | None:
    """For two runs compared as solutions (or ``explicit``, their folder): draw the figures beside ``out``
    and print the table. Nothing for other runs; a ValueError for a folder that holds no comparison."""
    folder = find_shared(runs[0], runs[1], explicit) if len(runs) == 2 else None
    if folder is None:
        return None
    comparison = load_solutions(folder)
    written = draw_shared(comparison, out, levels, log)
    print(format_table(summary_rows(comparison)))
    print(f"wrote {', '.join(map(str, written))} (from {folder})")
    return comparison
