"""Repository-wide pytest set-up: notebooks run against a sample cohort made once per session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Point the tutorials' sample data at a temporary folder shared by this session."""
    if "RADIOBJECT_SAMPLE_DIR" not in os.environ:
        os.environ["RADIOBJECT_SAMPLE_DIR"] = tempfile.mkdtemp(prefix="radiobject-notebooks-")
    # the local read tier's default folder: never the user's ~/.cache during tests (its
    # automatic default turns it on for training loaders over cohorts larger than RAM)
    if "RADIOBJECT_TIER_DIR" not in os.environ:
        os.environ["RADIOBJECT_TIER_DIR"] = tempfile.mkdtemp(prefix="radiobject-tier-")


@pytest.fixture(autouse=True)
def _automatic_tier_ends_with_the_test() -> Iterator[None]:
    """A training loader that turned the automatic local tier on did so for its test only."""
    yield
    from radiobject.read._local_tier import tier_state

    tier_state().set_auto(0)
