"""The package's metadata: pyproject.toml reads without deprecation warnings in the build backend it names."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_license_is_an_spdx_expression_and_the_backend_reads_it():
    # Issue 21: installing warned "`project.license` as a TOML table is deprecated".
    if sys.version_info < (3, 11):
        pytest.skip("tomllib arrived in Python 3.11")
    import tomllib

    data = tomllib.loads(PYPROJECT.read_text())
    assert data["project"]["license"] == "Apache-2.0"
    (backend,) = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    assert backend == "setuptools>=77"  # the first setuptools to take `license` as an SPDX string
    setuptools = pytest.importorskip("setuptools")
    if int(re.match(r"\d+", setuptools.__version__).group()) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} here; the build installs >= 77")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the deprecation was a warning: now none may be raised
        dist = apply_configuration(Distribution(), str(PYPROJECT))
    assert dist.metadata.license_expression == "Apache-2.0"
