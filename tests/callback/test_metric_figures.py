"""The figures of the metrics over training: edge-of-stability ratio and curvature per block."""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
from helpers.models import TinyNet, ce_loss, loader
from matplotlib.figure import Figure

from lightning_landscape import LossLandscapeCallback, MetricsRecord
from lightning_landscape.plots import metrics as metric_plots

SMALL = {"resolution": 3, "final_resolution": 3, "line_resolution": 3, "num_batches": 2}
METRICS = {"eos": {"max_iter": 8}, "blocks": {"max_iter": 6, "samples": 2, "blocks": ["net.0", "net.4"]}}


@pytest.fixture
def captured(monkeypatch) -> dict[str, list[Figure]]:
    """The figures the publisher's renderer builds, by builder name."""
    out: dict[str, list[Figure]] = {"stability_figure": [], "blocks_figure": []}
    for name in out:
        original = getattr(metric_plots, name)

        def capture(*args, _original=original, _name=name, **kwargs):
            fig = _original(*args, **kwargs)
            out[_name].append(fig)
            return fig

        monkeypatch.setattr(metric_plots, name, capture)
    return out


def test_stability_and_block_figures_are_logged_and_match_the_records(trainer_kwargs, tmp_path, captured):
    pl.seed_everything(0)
    cb = LossLandscapeCallback(
        max_overhead=None, loss_fn=ce_loss, metrics=METRICS, final_metrics=METRICS, seed=3, **SMALL
    )
    trainer = pl.Trainer(**trainer_kwargs, callbacks=[cb])
    trainer.fit(TinyNet(), loader(32, 8))

    pngs = {p.name for p in (tmp_path / "landscape" / "figures").glob("*.png")}
    for what in ("stability", "blocks"):
        expected = {f"landscape_{what}_step00000004.png", f"landscape_{what}_step00000008.png"}
        expected.add(f"landscape_final_{what}_step00000008.png")
        assert expected <= pngs, sorted(pngs)
    for path in (tmp_path / "landscape" / "figures").glob("landscape_*_step*.png"):
        assert path.read_bytes().startswith(b"\x89PNG")

    # What the figures show, against the records the callback kept (in the order computed).
    metrics = [r for r in cb.records if isinstance(r, MetricsRecord)]
    assert [r.meta["stage"] for r in metrics] == ["periodic", "periodic", "final"]
    values = [r.as_dict() for r in metrics]
    assert all(np.isfinite(v["eos/ratio"]) for v in values)

    stability = captured["stability_figure"]
    assert len(stability) == 3  # one per landscape, each with the history so far
    ax = stability[-1].axes[0]
    periodic, final, edge = ax.lines[:3]
    np.testing.assert_array_equal(periodic.get_xdata(), [4, 8])
    np.testing.assert_allclose(periodic.get_ydata(), [values[0]["eos/ratio"], values[1]["eos/ratio"]])
    np.testing.assert_allclose(final.get_ydata(), [values[2]["eos/ratio"]])
    np.testing.assert_array_equal(edge.get_ydata(), [1.0, 1.0])  # the edge of stability

    blocks = captured["blocks_figure"]
    assert len(blocks) == 3
    names = [k.split("/")[1] for k in values[0] if k.startswith("blocks/") and k.endswith("/lambda_max")]
    assert names == ["net.0", "net.4"]
    for ax, quantity in zip(blocks[-1].axes, ("lambda_max", "trace")):
        expected = np.array([[v[f"blocks/{b}/{quantity}"] for v in values] for b in names])
        np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), expected)
        assert [t.get_text() for t in ax.get_yticklabels()] == names
    # The periodic figure at step 4 shows only what was known then.
    first = np.asarray(blocks[0].axes[0].images[0].get_array())
    np.testing.assert_allclose(first, [[values[0][f"blocks/{b}/lambda_max"]] for b in names])


def test_no_metric_figures_without_those_metrics(trainer_kwargs, tmp_path, captured):
    pl.seed_everything(0)
    cb = LossLandscapeCallback(
        max_overhead=None, loss_fn=ce_loss, metrics=["eigenvalues"], final_metrics=["eigenvalues"], **SMALL
    )
    pl.Trainer(**{**trainer_kwargs, "max_epochs": 1}, callbacks=[cb]).fit(TinyNet(), loader(32, 8))
    pngs = {p.name for p in (tmp_path / "landscape" / "figures").glob("*.png")}
    assert not any("stability" in p or "blocks" in p for p in pngs), sorted(pngs)
    assert captured == {"stability_figure": [], "blocks_figure": []}


def test_block_matrix_and_series_from_a_history():
    history = [
        (4, "periodic", {"eos/ratio": 0.25, "blocks/a/lambda_max": 1.0, "blocks/a/trace": 3.0}),
        (6, "periodic", {"loss/centre": 1.0}),  # no metrics of these kinds: no column, no point
        (8, "periodic", {"eos/ratio": 0.75, "blocks/a/lambda_max": 2.0, "blocks/b.c/lambda_max": 5.0}),
    ]
    steps, ratios, final = metric_plots.stability_series(history)
    assert steps.tolist() == [4, 8] and ratios.tolist() == [0.25, 0.75] and not final.any()
    blocks, labels, lam = metric_plots.block_matrix(history, "lambda_max")
    assert blocks == ["a", "b.c"] and labels == ["4", "8"]
    np.testing.assert_array_equal(lam, [[1.0, 2.0], [np.nan, 5.0]])
    _, _, trace = metric_plots.block_matrix(history, "trace")
    np.testing.assert_array_equal(trace, [[3.0, np.nan], [np.nan, np.nan]])
    with pytest.raises(ValueError, match="quantity"):
        metric_plots.block_matrix(history, "trace_stderr")


def test_compare_tabulates_block_scalars_and_draws_the_ratio():
    from lightning_landscape.records.record import is_diagnostic

    assert is_diagnostic("blocks/net.0/lambda_max") and is_diagnostic("blocks/net.4/trace")
    assert not is_diagnostic("eos/ratio") and not is_diagnostic("hessian/lambda_max")
