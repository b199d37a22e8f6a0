import dataclasses
import json
import re

import numpy as np
import pytest

from lightning_landscape import (
    LineRecord,
    MetricsRecord,
    RecordError,
    SurfaceRecord,
    load_record,
    load_records,
)
from lightning_landscape.plots.landscape import (
    contour_figure,
    contour_levels,
    figure_to_png,
    line_figure,
    surface3d_figure,
)
from lightning_landscape.records.record import save_record


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


# --------------------------------------------------------------------------- consistency of the arrays


def _good(kind):
    xs = np.linspace(-1, 1, 7)
    if kind == "surface":
        return _surface()
    if kind == "line":
        return LineRecord(xs, xs**2, {"global_step": 1})
    return MetricsRecord.from_dict({"hessian/lambda_max": 2.0, "sharpness/sam": 0.1}, {"global_step": 1})


# (kind, arrays replacing or added to a good record's (None removes one), what the message must say)
INCONSISTENT = [
    ("surface", {"losses": np.ones((3, 2))}, r"`losses` has shape \(3, 2\); expected \(ny, nx\) = \(5, 5\)"),
    ("surface", {"xs": np.linspace(-1, 1, 7)}, r"`losses` has shape \(5, 5\); expected .* = \(5, 7\)"),
    ("surface", {"losses": None}, r"missing array\(s\) 'losses'"),
    ("surface", {"xs": None, "ys": None}, r"missing array\(s\) 'xs', 'ys'"),
    ("surface", {"xs": np.zeros((5, 1))}, r"`xs` has shape \(5, 1\); expected 1-D"),
    ("surface", {"losses": np.ones(25)}, r"`losses` has shape \(25,\); expected 2-D"),
    ("surface", {"losses": np.full((5, 5), "a")}, r"`losses` has dtype <U1; expected real numbers"),
    ("surface", {"losses": np.ones((5, 5), dtype=bool)}, r"`losses` has dtype bool"),
    ("surface", {"path": np.zeros((4, 3))}, r"`path` has shape \(4, 3\); expected \(n, 2\)"),
    ("surface", {"path": np.zeros(4)}, r"`path` has shape \(4,\); expected 2-D"),
    ("surface", {"xs": np.linspace(1, -1, 5)}, r"`xs` must be a non-empty, finite, strictly increasing"),
    ("surface", {"ys": np.array([0.0, np.nan, 1, 2, 3])}, r"`ys` must be a .*finite"),
    ("surface", {"xs": np.zeros(0), "losses": np.zeros((5, 0))}, r"`xs` must be a non-empty"),
    ("surface", {"batch_losses": np.ones((4, 5, 5))}, r"`batch_losses` has shape \(4, 5, 5\); expected"),
    ("surface", {"extra": np.ones((4, 5, 5))}, r"`extra` has shape \(4, 5, 5\).*\(5, 5\)"),
    ("line", {"batch_losses": np.ones((6, 3))}, r"`batch_losses` has shape \(6, 3\); expected \(n, n\)"),
    ("line", {"losses": np.ones(6)}, r"`losses` has shape \(6,\); expected \(n,\) = \(7,\)"),
    ("line", {"alphas": None}, r"missing array\(s\) 'alphas'"),
    ("line", {"metric": np.ones(3)}, r"`metric` has shape \(3,\).*`losses` \(7,\)"),
    ("metrics", {"values": np.ones(3)}, r"`values` has shape \(3,\); expected \(n,\) = \(2,\)"),
    ("metrics", {"names": np.array([1.0, 2.0])}, r"`names` has dtype float64; expected unicode strings"),
    ("metrics", {"names": np.array(["a", "a"])}, r"`names` repeats 'a'"),
    ("metrics", {"values": None}, r"missing array\(s\) 'values'"),
]


def _write_arrays(folder, name, record, changes):
    """Save a good record, then overwrite its .npz with ``changes`` applied (bypassing save checks)."""
    save_record(record, folder, name)
    arrays = {**record.arrays(), **changes}
    np.savez(folder / f"{name}.npz", **{k: v for k, v in arrays.items() if v is not None})


@pytest.mark.parametrize("kind, changes, message", INCONSISTENT)
def test_inconsistent_arrays_are_refused_naming_file_and_fault(tmp_path, kind, changes, message):
    _write_arrays(tmp_path, "bad", _good(kind), changes)
    with pytest.raises(RecordError, match=rf"bad\.npz: inconsistent {kind} record: {message}"):
        load_record(tmp_path / "bad.json")
    save_record(_good(kind), tmp_path, "good")
    with pytest.raises(RecordError, match=r"bad\.npz"):
        load_records(tmp_path)
    with pytest.warns(RuntimeWarning, match=r"skipped 1 unreadable record.*bad\.npz"):
        assert [r.kind for r in load_records(tmp_path, errors="warn")] == [kind]


@pytest.mark.parametrize("kind, changes, message", INCONSISTENT)
def test_save_record_refuses_what_load_would_refuse(tmp_path, kind, changes, message):
    record = _good(kind)
    known = set(record.arrays()) | ({"path"} if kind == "surface" else set())
    if not set(changes) <= known or (kind == "metrics" and "names" in changes):
        return  # unknown arrays cannot be set on the record; `arrays()` writes names as strings
    bad = dataclasses.replace(record, **changes)
    with pytest.raises(ValueError, match=rf"record 'r': inconsistent {kind} arrays: {message}"):
        save_record(bad, tmp_path, "r")
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.parametrize(
    "kind, extra",
    [
        ("surface", {"stderr_map": np.ones((5, 5, 4)), "metric": np.zeros((5, 5))}),
        ("line", {"per_batch": np.ones((7, 3))}),
        ("metrics", {"stderr": np.ones(2)}),
    ],
)
def test_arrays_a_kind_does_not_know_pass_when_per_point(tmp_path, kind, extra):
    _write_arrays(tmp_path, "r", _good(kind), extra)
    rec = load_record(tmp_path / "r.json")
    assert rec.kind == kind and not set(extra) & set(vars(rec))  # read, and left out of the record


def test_meta_that_is_not_an_object_is_refused(tmp_path):
    save_record(_good("line"), tmp_path, "l")
    (tmp_path / "l.json").write_text(json.dumps({"format_version": 1, "kind": "line", "meta": [1, 2]}))
    with pytest.raises(RecordError, match=r"l\.json: `meta` must be a JSON object"):
        load_record(tmp_path / "l.json")


def test_missing_npz_is_reported_not_skipped(tmp_path):
    for name in ("a", "b", "c"):
        save_record(_good("line"), tmp_path, name)
    (tmp_path / "a.npz").unlink()
    (tmp_path / "c.npz").unlink()
    (tmp_path / "logger.json").write_text(json.dumps({"not": "a record"}))  # another tool's JSON: ignored
    with pytest.raises(RecordError, match=r"a\.json: its arrays a\.npz are missing"):
        load_record(tmp_path / "a.json")
    with pytest.raises(RecordError, match=r"2 record\(s\) have no \.npz arrays .*a\.json.*c\.json"):
        load_records(tmp_path)
    with pytest.warns(RuntimeWarning, match=r"skipped 2 unreadable record\(s\).*a\.json \(no \.npz\)"):
        assert len(load_records(tmp_path, errors="warn")) == 1
    with pytest.raises(ValueError, match="`errors` must be 'raise' or 'warn'"):
        load_records(tmp_path, errors="ignore")  # type: ignore[arg-type]


def _write_meta(folder, name, meta):
    """A good line record whose sidecar's ``meta`` is replaced by ``meta`` (as a hand edit would)."""
    a = np.linspace(-1, 1, 3)
    save_record(LineRecord(a, a**2, {"global_step": 1}), folder, name)
    (folder / f"{name}.json").write_text(json.dumps({"format_version": 1, "kind": "line", "meta": meta}))


@pytest.mark.parametrize(
    "meta, field",
    [
        (None, "`meta` must be a JSON object, got null"),
        ({"global_step": "twelve"}, "`global_step` must be a whole number >= 0, got 'twelve'"),
        ({"global_step": 12.5}, "`global_step` must be a whole number"),
        ({"global_step": -1}, "`global_step` must be a whole number"),
        ({"global_step": True}, "`global_step` must be a whole number"),
        ({"global_step": None}, "`global_step` must be a whole number"),
        ({"epoch": "3"}, "`epoch` must be a whole number"),
        ({"stage": 5}, "`stage` must be a string, got 5"),
        ({"stage": None}, "`stage` must be a string, got None"),
        ({"name": 5}, "`name` must be a string"),
        ({"run_id": 7}, "`run_id` must be a non-empty string"),
        ({"run_id": ""}, "`run_id` must be a non-empty string"),
        ({"errors": ["trace"]}, "`errors` must be a JSON object"),
        ({"axis": "x"}, "`axis` must be a whole number"),
    ],
)
def test_corrupt_meta_is_refused_naming_file_and_field(tmp_path, meta, field):
    # Issue 21 item 3: such records used to load (a final surface then silently demoted to "no final").
    _write_meta(tmp_path, "bad", meta)
    with pytest.raises(RecordError, match=rf"bad\.json: .*{re.escape(field)}"):
        load_record(tmp_path / "bad.json")
    with pytest.raises(RecordError, match=r"bad\.json"):
        load_records(tmp_path)


def test_meta_without_meta_key_is_refused(tmp_path):
    _write_meta(tmp_path, "bad", None)
    (tmp_path / "bad.json").write_text(json.dumps({"format_version": 1, "kind": "line"}))
    with pytest.raises(RecordError, match=r"bad\.json: `meta` must be a JSON object, got nothing"):
        load_record(tmp_path / "bad.json")


def test_save_record_refuses_meta_that_load_would_refuse(tmp_path):
    a = np.linspace(-1, 1, 3)
    with pytest.raises(ValueError, match=r"record 'a': meta `stage` must be a string, got 5"):
        save_record(LineRecord(a, a**2, {"global_step": 3, "stage": 5}), tmp_path, "a")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_unknown_meta_keys_and_numpy_steps_pass(tmp_path):
    a = np.linspace(-1, 1, 3)
    save_record(LineRecord(a, a**2, {"global_step": np.int64(3), "mine": "x", "seed": None}), tmp_path, "b")
    save_record(LineRecord(a, a**2, {"global_step": 1}), tmp_path, "c")
    save_record(LineRecord(a, a**2, {}), tmp_path, "d")  # made by hand: no step, sorts first
    assert [r.meta.get("global_step") for r in load_records(tmp_path)] == [None, 1, 3]


def _line(meta):
    a = np.linspace(-1, 1, 3)
    return LineRecord(a, a**2, {"global_step": 1, **meta})


def test_load_records_refuses_a_folder_that_mixes_runs_naming_them(tmp_path):
    # Issue 21 item 1: a second run's records in the first's folder were read as one run.
    save_record(_line({"run_id": "20260101-000000-aaaaaa"}), tmp_path, "a")
    save_record(_line({"run_id": "20260101-000000-aaaaaa"}), tmp_path / "sub", "b")
    save_record(_line({"run_id": "20260202-000000-bbbbbb"}), tmp_path, "c")
    for errors in ("raise", "warn"):
        with pytest.raises(RecordError, match=r"mixes the records of 2 runs") as caught:
            load_records(tmp_path, errors=errors)
        text = str(caught.value)
        assert "run 20260101-000000-aaaaaa (2 record(s) in " in text and str(tmp_path / "sub") in text
        assert "run 20260202-000000-bbbbbb (1 record(s) in " in text


def test_records_without_run_id_are_one_legacy_run(tmp_path):
    save_record(_line({}), tmp_path, "a")  # written by 0.1: no run id
    save_record(_line({"global_step": 2}), tmp_path, "b")
    assert len(load_records(tmp_path)) == 2
    save_record(_line({"run_id": "20260202-000000-bbbbbb"}), tmp_path, "c")
    with pytest.raises(RecordError, match=r"2 runs: run \(no run id: written by lightning-landscape 0\.1\)"):
        load_records(tmp_path)


def test_record_folder_skips_folders_of_other_runs(tmp_path):
    from lightning_landscape.records.identity import own_record_folder, record_folder

    assert record_folder(tmp_path, None, "r1") == tmp_path / "landscape"  # nothing there yet
    save_record(_line({"run_id": "r1"}), tmp_path / "landscape", "a")
    assert record_folder(tmp_path, None, "r1") == tmp_path / "landscape"  # its own folder
    assert record_folder(tmp_path, None, "r2") == tmp_path / "landscape-2"
    save_record(_line({"run_id": "r2"}), tmp_path / "landscape-2", "a")
    save_record(_line({}), tmp_path / "landscape-3", "a")  # a legacy run is another run too
    assert record_folder(tmp_path, None, "r3") == tmp_path / "landscape-4"
    assert record_folder(tmp_path, "pca", "r3") == tmp_path / "landscape" / "pca"  # per callback name
    assert own_record_folder(tmp_path, None, "r2") == tmp_path / "landscape-2"
    assert own_record_folder(tmp_path, None, "r9") is None
    (tmp_path / "landscape-5" / "figures").mkdir(parents=True)  # figures and other files are not records
    assert record_folder(tmp_path, None, "r3") == tmp_path / "landscape-4"
