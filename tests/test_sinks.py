"""Every logger's output, read back with that logger's own reader.

TensorBoard: EventAccumulator (images, scalars, mesh, text, custom-scalars layout); CSVLogger: its
metrics.csv and PNG files; W&B: the offline run's transaction log (wandb's own protobuf records) and
media files; MLflow: MlflowClient on a local file store.
"""

from __future__ import annotations

import csv
import json
import struct
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
from helpers.models import TinyNet, loader, naive_mean_loss
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from matplotlib.figure import Figure

from lightning_landscape import LossLandscapeCallback, SurfaceRecord, load_records
from lightning_landscape.sinks import (
    CSVSink,
    FileSink,
    MetricsSink,
    SinkSet,
    TensorBoardSink,
    build_sinks,
    custom_scalars_layout,
    surface_mesh,
)

SMALL = {"resolution": 3, "final_resolution": 5, "line_resolution": 5, "num_batches": 2}
FINAL_FIGURES = {"surface", "interpolation", "lines"}


def fit(trainer_kwargs: dict, logger: Any, cb: LossLandscapeCallback | None = None, **over: Any):
    pl.seed_everything(0)
    model = TinyNet()
    cb = cb or LossLandscapeCallback(max_overhead=None, **SMALL)
    trainer = pl.Trainer(**{**trainer_kwargs, **over, "logger": logger}, callbacks=[cb])
    trainer.fit(model, loader(32, 8))
    return trainer, model, cb


def final_surface(cb: LossLandscapeCallback) -> SurfaceRecord:
    return next(r for r in cb.records if isinstance(r, SurfaceRecord) and r.meta["stage"] == "final")


class OtherLogger(Logger):
    """A logger this package knows nothing about: only ``log_metrics`` and a ``log_dir``."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.metrics: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "other"

    @property
    def version(self) -> int:
        return 0

    @property
    def log_dir(self) -> str:
        return str(self.root)

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))


def _tensor(acc: Any, tag: str) -> np.ndarray:
    from tensorboard.util.tensor_util import make_ndarray

    return make_ndarray(acc.Tensors(tag)[-1].tensor_proto)


# --------------------------------------------------------------------------- several loggers at once


def test_tensorboard_csv_and_other_logger_at_once(trainer_kwargs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    tb = TensorBoardLogger(tmp_path, name="tb")
    csv_logger = CSVLogger(tmp_path, name="csv")
    other = OtherLogger(tmp_path / "other")
    trainer, model, cb = fit(trainer_kwargs, [tb, csv_logger, other])
    step = trainer.global_step
    expected = naive_mean_loss(model, [b for i, b in zip(range(2), loader(32, 8))])
    surface = final_surface(cb)
    assert surface.centre_loss == pytest.approx(expected, rel=1e-5)
    tb.experiment.flush()

    # TensorBoard: images, scalars, the final mesh, the settings text and the custom-scalars layout.
    acc = EventAccumulator(tb.log_dir, size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {f"landscape/final/{f}" for f in FINAL_FIGURES} | {"landscape/surface"} <= set(tags["images"])
    assert acc.Scalars("landscape/final/loss/centre")[0].value == pytest.approx(expected, rel=1e-5)
    mesh_tags = {f"landscape/final/surface_mesh_{part}" for part in ("VERTEX", "FACE", "COLOR")}
    assert set(acc.PluginTagToContent("mesh")) == mesh_tags
    vertices = _tensor(acc, "landscape/final/surface_mesh_VERTEX")[0]
    faces = _tensor(acc, "landscape/final/surface_mesh_FACE")[0]
    colours = _tensor(acc, "landscape/final/surface_mesh_COLOR")[0]
    assert acc.Tensors("landscape/final/surface_mesh_VERTEX")[0].step == step
    n = SMALL["final_resolution"]
    assert (
        vertices.shape == (n * n, 3) and faces.shape == (2 * (n - 1) ** 2, 3) and colours.shape == (n * n, 3)
    )
    # Vertex k = i * n + j sits at (xs[j], ys[i]); its height is the loss rescaled to the grid's width.
    for i in range(n):
        for j in range(n):
            x, y, z = vertices[i * n + j]
            assert (x, y) == pytest.approx((surface.xs[j], surface.ys[i]), abs=1e-6)
            lo, hi = surface.losses.min(), surface.losses.max()
            width = surface.xs.max() - surface.xs.min()
            assert z == pytest.approx((surface.losses[i, j] - lo) / (hi - lo) * width, rel=1e-5, abs=1e-6)
    text = _tensor(acc, "landscape/settings/text_summary").item().decode()
    assert (
        "| resolution | 3 |" in text
        and "| final_resolution | 5 |" in text
        and "| loss | training_step |" in text
    )
    layout = layout_pb2.Layout.FromString(_tensor(acc, "custom_scalars__config__").item())
    charts = {c.title: list(c.multiline.tag) for cat in layout.category for c in cat.chart}
    assert charts["loss at the centre and on the surface"] == [r"landscape/loss/.*"]
    assert layout.category[0].title == "landscape"
    assert not (Path(tb.log_dir) / "landscape" / "figures").exists()  # TensorBoard takes figures itself

    # CSV: scalars in metrics.csv, PNG files in its own log_dir.
    with open(Path(csv_logger.log_dir) / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    final = [
        (int(r["step"]), float(r["landscape/final/loss/centre"]))
        for r in rows
        if r.get("landscape/final/loss/centre")
    ]
    assert final == [(step, pytest.approx(expected, rel=1e-5))]
    pngs = sorted(p.name for p in (Path(csv_logger.log_dir) / "landscape" / "figures").glob("*.png"))
    assert {f"landscape_final_{f}_step{step:08d}.png" for f in FINAL_FIGURES} <= set(pngs)

    # Any other logger: the same scalars through log_metrics, PNG files beside the run.
    logged = {k: (s, v) for s, m in other.metrics for k, v in m.items()}
    assert logged["landscape/final/loss/centre"] == (step, pytest.approx(expected, rel=1e-5))
    other_pngs = sorted(p.name for p in (tmp_path / "other" / "landscape" / "figures").glob("*.png"))
    assert other_pngs == pngs

    # Records are written once, in the trainer's log dir (the first logger's).
    landscapes = [r for r in load_records(tb.log_dir) if r.kind not in ("metrics", "reliability")]
    distance = [r for r in landscapes if r.meta.get("directions") == "distance"]  # the reliability's
    assert (
        len(landscapes) - len(distance) == 2 * 2 + 4
    )  # 2 periodic surfaces + lines, final surface + 3 lines
    assert len(distance) == 2 * 3


# --------------------------------------------------------------------------- W&B and MLflow


def read_wandb_offline_run(run_file: Path) -> list[Any]:
    """wandb's offline transaction log: LevelDB-log framed blocks of ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", "not a wandb transaction log"
    block, pos, buf, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the rest of a block too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def test_wandb_offline_gets_images_and_scalars(trainer_kwargs, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(save_dir=str(tmp_path), project="landscape-test", offline=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, _, cb = fit(trainer_kwargs, logger, max_epochs=1)
    logger.experiment.finish()
    # teardown() shuts wandb's service process down and waits for it to exit (Process.join): after it, the
    # offline transaction log is complete on disk, so one read is enough (no polling, no clock).
    import wandb

    wandb.teardown()
    failures = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not failures, failures
    step = trainer.global_step

    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    history = [
        {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
        for record in read_wandb_offline_run(run_file)
        if record.WhichOneof("record_type") == "history"
    ]
    scalars = [h for h in history if "landscape/final/loss/centre" in h]
    assert len(scalars) == 1, [sorted(h) for h in history] and scalars[0]["trainer/global_step"] == step
    assert scalars[0]["landscape/final/loss/centre"] == pytest.approx(final_surface(cb).centre_loss, rel=1e-6)
    images = {k[: -len("/_type")]: h for h in history for k, v in h.items() if v == "images/separated"}
    assert {"landscape/surface", "landscape/interpolation"} | {
        f"landscape/final/{f}" for f in FINAL_FIGURES
    } <= set(images)
    entry = images["landscape/final/surface"]
    assert entry["trainer/global_step"] == step
    (name,) = entry["landscape/final/surface/filenames"]
    png = run_file.parent / "files" / name
    assert png.read_bytes().startswith(b"\x89PNG")
    assert (entry["landscape/final/surface/width"], entry["landscape/final/surface/height"]) == (560, 460)


def test_mlflow_file_store_gets_artifacts_and_scalars(trainer_kwargs, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this flag
    uri = f"file:{tmp_path / 'mlruns'}"
    logger = MLFlowLogger(experiment_name="landscape", tracking_uri=uri)
    trainer, _, cb = fit(trainer_kwargs, logger, max_epochs=1)
    step = trainer.global_step

    client = MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(logger.run_id, "landscape/final/loss/centre")
    assert [(m.step, m.value) for m in history] == [(step, pytest.approx(final_surface(cb).centre_loss))]
    artifacts = {Path(a.path).name for a in client.list_artifacts(logger.run_id, "landscape/figures")}
    assert {f"landscape_final_{f}_step{step:08d}.png" for f in FINAL_FIGURES} <= artifacts
    local = client.download_artifacts(
        logger.run_id, f"landscape/figures/landscape_final_surface_step{step:08d}.png", str(tmp_path)
    )
    assert Path(local).read_bytes().startswith(b"\x89PNG")
    settings = client.download_artifacts(logger.run_id, "landscape/settings.md", str(tmp_path))
    assert "| directions | pca |" in Path(settings).read_text()


# --------------------------------------------------------------------------- the sink layer itself


@pytest.mark.parametrize("package", ["lightning.pytorch", "pytorch_lightning"])
def test_logger_classes_of_both_packages_are_recognised(tmp_path, package):
    import importlib

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loggers_mod = importlib.import_module(f"{package}.loggers")
    if package == "pytorch_lightning":
        pytest.importorskip("pytorch_lightning")
    tb = loggers_mod.TensorBoardLogger(tmp_path, name="tb")
    csv_logger = loggers_mod.CSVLogger(tmp_path, name="csv")
    sinks = build_sinks([tb, csv_logger], tmp_path, settings={"resolution": 7})
    assert [type(s) for s in sinks.sinks] == [TensorBoardSink, CSVSink]
    xs = np.linspace(-1, 1, 3)
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    sinks.scalars({"landscape/loss/centre": 0.25}, 5)
    sinks.figure("landscape/surface", fig, 5)
    sinks.mesh("landscape/final/surface_mesh", SurfaceRecord(xs, xs, np.add.outer(xs, xs)), 5)
    tb.experiment.flush()
    csv_logger.save()
    acc = EventAccumulator(tb.log_dir, size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert acc.Scalars("landscape/loss/centre")[0].value == 0.25
    assert acc.Images("landscape/surface")[0].step == 5
    assert "landscape/final/surface_mesh_VERTEX" in acc.PluginTagToContent("mesh")
    assert "| resolution | 7 |" in _tensor(acc, "landscape/settings/text_summary").item().decode()
    with open(Path(csv_logger.log_dir) / "metrics.csv", newline="") as fh:
        assert [(r["step"], r["landscape/loss/centre"]) for r in csv.DictReader(fh)] == [("5", "0.25")]
    assert (
        Path(csv_logger.log_dir) / "landscape" / "figures" / "landscape_surface_step00000005.png"
    ).exists()


def test_experiment_is_not_touched_until_the_first_write(tmp_path):
    class Watched(TensorBoardLogger):
        touched = 0

        @property
        def experiment(self):
            type(self).touched += 1
            return super().experiment

    logger = Watched(tmp_path)
    sinks = build_sinks([logger], tmp_path, settings={"a": 1})
    assert Watched.touched == 0
    sinks.scalars({"landscape/loss/centre": 1.0}, 0)
    assert Watched.touched > 0


def test_only_rank_zero_writes(tmp_path):
    other = OtherLogger(tmp_path / "other")
    for rank, expected in ((1, 0), (0, 1)):
        sinks = build_sinks([other], tmp_path, rank=rank)
        sinks.scalars({"landscape/loss/centre": 1.0}, 0)
        sinks.figure("landscape/surface", Figure(), 0)
        assert len(other.metrics) == expected
    assert len(list((tmp_path / "other").rglob("*.png"))) == 1
    assert build_sinks([], tmp_path, rank=3).sinks == []  # not even files


def test_a_raising_sink_warns_once_and_the_others_go_on(tmp_path):
    class Flaky(MetricsSink):
        def begin(self, settings):
            raise ConnectionError("server down")

    other = OtherLogger(tmp_path)
    files = FileSink(tmp_path / "files")
    sinks = SinkSet([Flaky(OtherLogger(tmp_path), tmp_path), MetricsSink(other, tmp_path), files])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3):
            sinks.scalars({"landscape/loss/centre": float(step)}, step)
            sinks.figure("landscape/surface", Figure(), step)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "OtherLogger" in messages[0] and "server down" in messages[0]
    assert [s for s, _ in other.metrics] == [0, 1, 2]
    assert len(list((tmp_path / "files").glob("*.png"))) == 3


def test_surface_mesh_against_a_naive_triangulation():
    xs, ys = np.linspace(-2, 2, 4), np.linspace(-1, 1, 3)
    losses = np.add.outer(ys**2, xs**2) + 1.0
    losses[0, 3] = np.nan
    vertices, faces, colours = surface_mesh(SurfaceRecord(xs, ys, losses))
    finite = losses[np.isfinite(losses)]
    width = 4.0
    for i in range(3):
        for j in range(4):
            x, y, z = vertices[i * 4 + j]
            assert (x, y) == (pytest.approx(xs[j]), pytest.approx(ys[i]))
            if np.isfinite(losses[i, j]):
                assert z == pytest.approx((losses[i, j] - finite.min()) / np.ptp(finite) * width, rel=1e-6)
    expected_faces = []
    for i in range(2):
        for j in range(3):
            corners = [(i, j), (i, j + 1), (i + 1, j), (i + 1, j + 1)]
            if all(np.isfinite(losses[c]) for c in corners):
                k = i * 4 + j
                expected_faces += [(k, k + 1, k + 4), (k + 1, k + 5, k + 4)]
    assert sorted(map(tuple, faces.tolist())) == sorted(expected_faces)
    assert len(expected_faces) == 2 * 6 - 2  # the cell touching the NaN is a hole
    # Lowest loss gets viridis' dark end, the highest its yellow end.
    assert colours[np.nanargmin(losses)].tolist() == [68, 1, 84]
    assert colours[np.nanargmax(losses)].tolist() == [253, 231, 37]


def test_custom_scalars_layout_covers_every_logged_metric():
    import re

    patterns = [t for chart in custom_scalars_layout()["landscape"].values() for t in chart[1]]
    logged = [
        "landscape/loss/centre",
        "landscape/loss/surface_min",
        "landscape/loss/surface_max",
        "landscape/explained_variance/pc1",
        "landscape/explained_variance/pc2",
        "landscape/distance_from_init",
        "landscape/hessian/lambda_max",
        "landscape/sharpness/sam",
    ]
    for tag in logged:
        assert any(re.fullmatch(p, tag) for p in patterns), tag


def test_tensorboard_images_are_the_pixels_add_figure_writes(tmp_path):
    # Encoded faster (PNG at zlib level 1) than add_figure does, but the same image: the same size and,
    # decoded, the same pixels.
    import io

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_landscape.plots.base import PNG_LEVEL
    from lightning_landscape.plots.landscape import contour_figure
    from lightning_landscape.plots.render import render_figure
    from lightning_landscape.sinks import tensorboard_image

    xs = np.linspace(-1.0, 1.0, 5)
    record = SurfaceRecord(xs, xs, np.add.outer(xs**2, xs**2) + 0.1, meta={"global_step": 3})
    ours, theirs = TensorBoardLogger(tmp_path, name="ours"), TensorBoardLogger(tmp_path, name="theirs")
    TensorBoardSink(ours, tmp_path).figure("landscape/surface", contour_figure(record), 3)
    theirs.experiment.add_figure("landscape/surface", contour_figure(record), global_step=3)
    # and through the figure thread: PyTorch's writer takes the PNG encoded there, written as it is
    drawn = TensorBoardLogger(tmp_path, name="drawn")
    sink = TensorBoardSink(drawn, tmp_path)
    assert sink.figure_format == "png"
    sink.image("landscape/surface", render_figure(lambda: contour_figure(record), {"png"}), 3)
    images = []
    for logger in (ours, theirs, drawn):
        logger.experiment.flush()
        acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
        acc.Reload()
        (event,) = acc.Images("landscape/surface")
        pixels = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
        images.append((event.step, event.width, event.height, pixels))
    (step, width, height, pixels), (step_b, width_b, height_b, pixels_b), (*drawn_size, pixels_c) = images
    assert (step, width, height) == (step_b, width_b, height_b) == tuple(drawn_size) == (3, 560, 460)
    assert np.array_equal(pixels, pixels_b) and np.array_equal(pixels_c, pixels_b)
    assert PNG_LEVEL == 1
    # tensorboardX or another writer without PyTorch's file writer: its own add_image.
    calls = []

    class OtherWriter:
        def add_image(self, tag, image, global_step=None, dataformats="CHW"):
            calls.append((tag, image.shape, global_step, dataformats))

    tensorboard_image(OtherWriter(), "t", pixels, 4)
    assert calls == [("t", (460, 560, 3), 4, "HWC")]
