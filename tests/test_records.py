import json

import numpy as np
import pytest

from lightning_landscape import LineRecord, RecordError, SurfaceRecord, load_record, load_records
from lightning_landscape.plots import (
    contour_figure,
    contour_levels,
    figure_to_png,
    line_figure,
    surface3d_figure,
)
from lightning_landscape.records import save_record


def _surface(step=3):
    xs = np.linspace(-1, 1, 5)
    losses = np.add.outer(xs**2, 2 * xs**2) + 0.5
    losses[0, 0] = np.nan
    return SurfaceRecord(
        xs,
        xs.copy(),
        losses,
        path=np.array([[0.9, 0.8], [0.0, 0.0]]),
        meta={"global_step": step, "directions": "pca", "explained_variance": [0.7, 0.2]},
    )


def test_round_trip_keeps_arrays_meta_and_nan(tmp_path):
    save_record(_surface(), tmp_path, "s")
    save_record(LineRecord(np.arange(3.0), np.array([1.0, np.inf, 2.0]), {"global_step": 1}), tmp_path, "l")
    recs = load_records(tmp_path)
    assert [r.kind for r in recs] == ["line", "surface"]  # ordered by step
    s = recs[1]
    np.testing.assert_array_equal(s.losses, _surface().losses)
    np.testing.assert_array_equal(s.path, _surface().path)
    assert s.meta["explained_variance"] == [0.7, 0.2]
    assert np.isinf(recs[0].losses[1])
    sidecar = json.loads((tmp_path / "s.json").read_text())
    assert sidecar["format_version"] == 1 and sidecar["kind"] == "surface"


def test_npz_holds_no_pickled_objects(tmp_path):
    save_record(_surface(), tmp_path, "s")
    with np.load(tmp_path / "s.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["losses", "path", "xs", "ys"]


def test_unknown_version_and_corrupt_files_name_the_file(tmp_path):
    save_record(_surface(), tmp_path, "s")
    sidecar = json.loads((tmp_path / "s.json").read_text())
    sidecar["format_version"] = 99
    (tmp_path / "s.json").write_text(json.dumps(sidecar))
    with pytest.raises(RecordError, match=r"s\.json.*format_version 99"):
        load_record(tmp_path / "s.json")
    save_record(_surface(), tmp_path, "t")
    (tmp_path / "t.npz").write_bytes(b"not a zip file")
    with pytest.raises(RecordError, match=r"t\.npz"):
        load_record(tmp_path / "t.json")
    other = tmp_path / "other"
    other.mkdir()
    (other / "u.json").write_text("{not json")
    (other / "u.npz").write_bytes(b"")
    with pytest.raises(RecordError, match=r"u\.json"):
        load_records(other)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_records(tmp_path / "nope")


def test_contour_levels_are_log_spaced_and_cover_the_data():
    values = np.array([0.1, 1.0, 10.0, np.nan])
    lv = contour_levels(values, count=5)
    np.testing.assert_allclose(lv, [0.1, 0.1 * 10**0.5, 1.0, 10**0.5, 10.0])
    shifted = contour_levels(np.array([-1.0, 9.0]), count=4)
    assert shifted[0] == -1.0 and shifted[-1] == 9.0 and np.all(np.diff(shifted) > 0)
    assert np.all(np.diff(contour_levels(np.array([2.0, 2.0]))) > 0)  # constant surface still draws


def test_figures_render_with_gaps_and_path():
    fig = contour_figure(_surface())
    ax = fig.axes[0]
    assert "PC1 (70.0% of variance)" in ax.get_xlabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"start", "end (current)", "non-finite loss"} <= set(labels)
    assert figure_to_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"
    a = np.linspace(-1, 1, 5)
    assert len(line_figure([LineRecord(a, a**2), LineRecord(a, a**2 + np.nan)]).axes[0].lines) == 2
    assert figure_to_png(surface3d_figure(_surface(), log=True))[:4] == b"\x89PNG"
