"""Repository-wide pytest set-up: notebooks run against a sample cohort made once per session."""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Point the tutorials' sample data at a temporary folder shared by this session."""
    if "RADIOBJECT_SAMPLE_DIR" not in os.environ:
        os.environ["RADIOBJECT_SAMPLE_DIR"] = tempfile.mkdtemp(prefix="radiobject-notebooks-")
    # the local read tier's default folder: never the user's ~/.cache during tests (its
    # automatic default serves training loaders over cohorts larger than RAM)
    if "RADIOBJECT_TIER_DIR" not in os.environ:
        os.environ["RADIOBJECT_TIER_DIR"] = tempfile.mkdtemp(prefix="radiobject-tier-")
