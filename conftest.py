"""Repository-wide pytest set-up: notebooks run against a sample cohort made once per session."""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Point the tutorials' sample data at a temporary folder shared by this session."""
    if "RADIOBJECT_SAMPLE_DIR" not in os.environ:
        os.environ["RADIOBJECT_SAMPLE_DIR"] = tempfile.mkdtemp(prefix="radiobject-notebooks-")
