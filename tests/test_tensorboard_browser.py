"""TensorBoard in a real browser: serve a run's log directory, open it in headless Chromium, and find
the contour image (Images tab) and a ``landscape/`` scalar chart (Scalars tab) on the page.

Needs the Debian package ``chromium`` at /usr/bin/chromium (``.ci/run`` installs it) and the pip
package ``playwright`` (its own browser download is not used). Set ``LANDSCAPE_SCREENSHOT_DIR`` to
also copy the Images-tab screenshot there as ``tensorboard.png`` (how docs/images/tensorboard.png
is made).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import lightning.pytorch as pl
import pytest
from helpers.models import TinyNet, loader
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_landscape import LossLandscapeCallback

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Chromium is not installed at /usr/bin/chromium (apt-get install chromium chromium-driver; "
        ".ci/run does this)",
    ),
]


playwright = pytest.importorskip(
    "playwright.sync_api", reason="the pip package playwright is not installed (it is in the test extra)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_tags(url: str, proc: subprocess.Popen, tries: int = 600) -> dict:
    """Poll TensorBoard until its images plugin lists a run (bounded: ``tries`` x 0.2 s)."""
    for _ in range(tries):
        if proc.poll() is not None:
            raise RuntimeError(f"tensorboard exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                tags = json.load(response)
            if tags:
                return tags
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"tensorboard did not answer {url}")


@pytest.fixture
def tensorboard_run(tmp_path, trainer_kwargs):
    """A small run logged to TensorBoard, served on a free loopback port; yields (url, log_dir)."""
    pl.seed_everything(0)
    logger = TensorBoardLogger(tmp_path / "logs", name="run")
    cb = LossLandscapeCallback(
        max_overhead=None, resolution=5, final_resolution=15, line_resolution=21, num_batches=2
    )
    trainer = pl.Trainer(**{**trainer_kwargs, "logger": logger, "max_epochs": 3}, callbacks=[cb])
    trainer.fit(TinyNet(), loader(32, 8))
    logger.experiment.flush()
    port = free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path / "logs")]
    command += ["--port", str(port), "--host", "127.0.0.1"]
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "tensorboard.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_tags(f"{url}/data/plugin/images/tags", proc)
            yield url, Path(logger.log_dir)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_tensorboard_shows_contour_and_landscape_scalars(tensorboard_run, tmp_path):
    url, _ = tensorboard_run
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})

            # Images tab: the final contour, decoded by the browser at the size it was rendered.
            page.goto(f"{url}/#images&tagFilter=landscape%2F(final%2F)%3Fsurface")
            images = page.locator('img[src*="individualImage"]')
            images.first.wait_for(state="visible", timeout=60_000)
            sizes = [
                img.evaluate("e => [e.complete, e.naturalWidth, e.naturalHeight]") for img in images.all()
            ]
            assert [True, 560, 460] in sizes, sizes  # contour_figure is 5.6 x 4.6 in at 100 dpi
            assert page.get_by_text("landscape/final/surface", exact=True).count() >= 1
            shot = tmp_path / "tensorboard_images.png"
            page.screenshot(path=str(shot))
            assert shot.read_bytes().startswith(b"\x89PNG")

            # Scalars tab: a landscape/ chart with a drawn line.
            page.goto(f"{url}/#scalars&tagFilter=landscape%2Floss%2Fcentre")
            card = page.locator("tf-scalar-card").filter(has_text="landscape/loss/centre").first
            card.wait_for(state="visible", timeout=60_000)
            lines = card.locator("path.line")
            lines.first.wait_for(state="attached", timeout=60_000)
            assert any(len(line.get_attribute("d") or "") > 10 for line in lines.all())
            page.screenshot(path=str(tmp_path / "tensorboard_scalars.png"))
        finally:
            browser.close()
    target = os.environ.get("LANDSCAPE_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(target) / "tensorboard.png")
