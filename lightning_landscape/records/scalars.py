"""The scalar schema: TensorBoard's scalar groups, the logged-tag prefix, which scalars are diagnostics."""

from __future__ import annotations

__all__ = ["DIAGNOSTIC_SUFFIXES", "SCALAR_GROUPS", "TABLE_ONLY_PREFIXES", "is_diagnostic", "tag_prefix"]

# The scalar schema. Each record type says which scalars it stands for (``scalars()``, keys without the
# ``landscape/`` prefix); the callback logs exactly those under ``tag_prefix(...)``, the CLI tabulates
# them, and TensorBoard's custom-scalars layout groups them by these prefixes. One place to add a name.
SCALAR_GROUPS: dict[str, tuple[str, ...]] = {
    "loss at the centre and on the surface": ("loss/",),
    "trajectory PCA explained variance": ("explained_variance/",),
    "distance from the initial weights": ("distance_from_init",),
    "curvature (Hessian)": ("hessian/",),
    "curvature per block": ("blocks/",),
    "edge of stability (sharpness / threshold)": ("eos/",),
    "sharpness": ("sharpness/",),
    "reliability (how far to trust the landscape)": ("reliability/",),
    "barrier between two solutions": ("barrier/",),
    "metric beside the loss (metric_fn)": ("metric/",),
}

# Scalars that qualify others rather than describe the landscape (residuals, standard errors, iteration
# counts, the surface's maximum, the gradient norm): tables show them, figures leave them out.
DIAGNOSTIC_SUFFIXES: tuple[str, ...] = (
    "_residual", "_stderr", "lanczos_iterations", "surface_max", "grad_norm",
)  # fmt: skip
# Families too many to draw one panel each in ``compare``: tabulated. Per-block curvature (one scalar per
# block and quantity) is drawn by the callback as one heatmap (``metric_plots.blocks_figure``); the
# reliability indicators (some thirty) qualify each run's own figures, whose titles flag failed checks.
TABLE_ONLY_PREFIXES: tuple[str, ...] = ("blocks/", "reliability/")


def is_diagnostic(key: str) -> bool:
    """Whether scalar ``key`` is a diagnostic (tabulated) rather than a figure to draw.

    Example::

        >>> is_diagnostic("hessian/lambda_max_residual"), is_diagnostic("hessian/lambda_max")
        (True, False)
        >>> is_diagnostic("blocks/net.0/lambda_max")  # per block: a table, not a panel each
        True
        >>> is_diagnostic("reliability/path/on_plane_share")  # qualifies a figure: tabulated
        True
    """
    return key.endswith(DIAGNOSTIC_SUFFIXES) or key.startswith(TABLE_ONLY_PREFIXES)


def tag_prefix(name: str | None = None, stage: str = "periodic") -> str:
    """The logged-tag prefix of a record: ``landscape/[NAME/][final/]``.

    Example::

        >>> tag_prefix(), tag_prefix("sam", "final")
        ('landscape/', 'landscape/sam/final/')
    """
    base = f"landscape/{name}/" if name else "landscape/"
    return base if stage == "periodic" else f"{base}final/"
