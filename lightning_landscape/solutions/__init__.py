"""Comparing solutions after training: a run's weights on disk, and two runs on one plane with their barrier.

It imports :mod:`lightning_landscape.records` and :mod:`lightning_landscape.functional` (never Lightning):
:mod:`.weights` writes and reads a run's weights, :mod:`.compare` puts two runs on one plane
(the math is in :mod:`lightning_landscape.functional.solutions`). ``compare_solutions`` and the rest are
re-exported here, as ``lightning_landscape.solutions`` was one module before.
"""

from lightning_landscape.solutions.compare import (
    SolutionComparison,
    compare_solutions,
    default_shared_dir,
    load_solutions,
    run_labels,
)

__all__ = ["SolutionComparison", "compare_solutions", "default_shared_dir", "load_solutions", "run_labels"]
