"""ReliabilityRecord: summary checks and flags, storage round trip, and the two reliability figures."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import BoundaryNorm
from matplotlib.pyplot import get_cmap

from lightning_landscape.functional import ReliabilityThresholds, reliability_summary
from lightning_landscape.functional.trust.path import PathLossCheck, PathPlaneFit, RandomWalkVerdict
from lightning_landscape.functional.trust.sensitivity import DistanceProfile
from lightning_landscape.plots.landscape import contour_levels, distance_figure, path_contour_figure
from lightning_landscape.records.record import ReliabilityRecord, SurfaceRecord, load_record, save_record


def _pieces(share: float = 0.95, structured: bool = True, worst: float = 0.05):
    fit = PathPlaneFit(share, np.array([0.1, 0.0]), np.array([1.0, 0.5]), "offsets")
    check = PathLossCheck(np.zeros((2, 2)), np.array([1.0, 1.0 + worst]), np.array([1.0, 1.0]), 1.0)
    walk = RandomWalkVerdict(structured, 0.9, 0.95, 0.85, 0.93, 0.81, 0.9, 0.001, 0.01)
    t = np.array([0.1, 1.0])
    prof = DistanceProfile(t, 1 + t**2, 1 + t**2, 1.0, 0.1, 0.316, 0.4)
    return fit, check, walk, prof


def test_a_clean_landscape_has_no_flags_and_the_failed_ones_say_why():
    fit, check, walk, prof = _pieces()
    clean = reliability_summary(path_fit=fit, path_losses=check, walk=walk, distances=[prof], grid_step=0.1)
    assert clean.flags == [] and clean.as_dict()["failed_checks"] == 0
    fit, check, walk, prof = _pieces(share=0.6, structured=False, worst=0.3)
    bad = reliability_summary(
        path_fit=fit, path_losses=check, walk=walk, distances=[prof], grid_step=0.5, noise=0.02,
        contour_spacing=0.01,
    )  # fmt: skip
    assert bad.flags == [
        "noise above contour spacing",
        "basin narrower than the grid spacing",
        "path 40 % off-plane",
        "path losses off the contour by 30 % of its range",
        "PCA not more structured than a random walk",
    ]
    assert bad.as_dict()["failed_checks"] == 5
    assert "PCA not more structured" in bad.title("loss surface")
    # thresholds are configurable: a looser plane check passes
    loose = reliability_summary(path_fit=fit, thresholds=ReliabilityThresholds(min_on_plane_share=0.5))
    assert loose.flags == []


def test_scalars_are_prefixed_and_finite_only():
    fit, _, walk, _ = _pieces()
    prof = DistanceProfile(np.array([1.0]), np.array([1.0]), np.array([1.0]), 1.0, 0.1, np.inf, np.inf)
    rec = reliability_summary(path_fit=fit, walk=walk, distances=[prof])
    scalars = rec.scalars()
    assert all(k.startswith("reliability/") for k in scalars)
    assert "reliability/distance/basin_radius_axis1" not in scalars  # inf: wider than the scan
    assert scalars["reliability/path/structured"] == 1.0


def test_round_trip_keeps_arrays_checks_and_table(tmp_path):
    fit, check, walk, prof = _pieces(share=0.6)
    rec = reliability_summary(
        path_fit=fit, path_losses=check, walk=walk, distances=[prof], meta={"global_step": 7}
    )
    save_record(rec, tmp_path, "rel")
    back = load_record(tmp_path / "rel.json")
    assert isinstance(back, ReliabilityRecord)
    assert back.as_dict() == pytest.approx(rec.as_dict(), nan_ok=True)
    np.testing.assert_array_equal(back.path_losses, rec.path_losses)
    np.testing.assert_array_equal(back.path_distances, rec.path_distances)
    assert back.flags == rec.flags == ["path 40 % off-plane"]
    assert back.markdown() == rec.markdown()
    assert back.markdown().splitlines()[0] == "| check | value | threshold | status |"


def test_path_markers_use_the_contour_colour_scale():
    xs = np.linspace(-1, 1, 5)
    rec = SurfaceRecord(xs, xs, np.add.outer(xs**2, xs**2) + 0.1)
    pts, losses = np.array([[0.5, 0.5], [0.0, 0.0], [-0.5, 0.0]]), np.array([2.0, 0.1, 0.6])
    fig = path_contour_figure(rec, pts, losses, flags=["path 40 % off-plane"])
    scatter = next(c for c in fig.axes[0].collections if c.get_label() == "true loss at snapshot")
    lv = contour_levels(rec.losses.ravel(), 20, True)
    expected = get_cmap("viridis")(BoundaryNorm(lv, ncolors=256, extend="both")(losses))
    np.testing.assert_allclose(scatter.to_rgba(scatter.get_array()), expected, atol=1e-6)
    np.testing.assert_allclose(scatter.norm.boundaries, lv)
    assert fig.axes[0].get_title().endswith("path 40 % off-plane")
    with pytest.raises(ValueError, match="points"):
        path_contour_figure(rec, pts, losses[:2])


def test_distance_figure_marks_the_radius_and_threshold():
    t = np.array([1e-2, 1e-1, 1.0])
    prof = DistanceProfile(t, np.array([1.0, 1.01, 2.0]), np.array([1.0, 1.02, 3.0]), 1.0, 0.1, 0.4, 0.3)
    fig = distance_figure([prof.to_record({"label": "PC1"})], flags=["basin narrower than the grid spacing"])
    ax = fig.axes[0]
    xs = [line.get_xdata() for line in ax.lines]
    assert any(
        len(x) == 2 and np.allclose(x, [0.3, 0.3]) for x in xs
    )  # vertical line at the radius (min of both sides)
    ys = [line.get_ydata() for line in ax.lines]
    assert any(len(y) == 2 and np.allclose(y, [1.1, 1.1]) for y in ys)  # threshold = centre + 0.1
    assert ax.get_xscale() == "log" and "basin narrower" in ax.get_title()
