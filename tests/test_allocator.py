"""Freed memory kept for reuse between reads: fewer page faults, and 0 restores the defaults."""

from __future__ import annotations

import os
import resource

import numpy as np
import pytest

from radiobject import Volume, configure
from radiobject._allocator import applied, retain_freed_memory
from radiobject._context import get_tiledb_ctx

GLIBC = retain_freed_memory(256)


def _faults_per_read(vol: Volume, n: int = 8) -> float:
    with configure(read={"cache_mb": 0}):  # every read goes to TileDB
        vol.to_numpy()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            vol.to_numpy()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n


@pytest.fixture
def vol(tmp_path) -> Volume:
    data = np.random.default_rng(0).random((64, 64, 64), dtype=np.float32)
    return Volume.from_numpy(tmp_path / "v", data)


@pytest.mark.skipif(not GLIBC, reason="the allocator settings need glibc")
def test_kept_memory_spares_the_page_faults_of_every_read(vol):
    with configure(read={"retain_freed_mb": 0}):
        trimmed = _faults_per_read(vol)  # TileDB trims after each query: pages come back
        assert get_tiledb_ctx().config()["sm.mem.malloc_trim"] == "true"
    kept = _faults_per_read(vol)
    assert get_tiledb_ctx().config()["sm.mem.malloc_trim"] == "false"
    assert trimmed > 100  # 8 tiles of 128 KiB and the result, faulted in again each read
    assert kept < trimmed / 4


@pytest.mark.skipif(not GLIBC, reason="the allocator settings need glibc")
def test_setting_follows_the_config_in_force(vol):
    with configure(read={"retain_freed_mb": 64}):
        vol[0:1, 0:1, 0:1]
        assert applied() == (os.getpid(), 64)
        with configure(read={"retain_freed_mb": 0}):
            vol[0:1, 0:1, 0:1]
            assert applied() == (os.getpid(), 0)
    vol[0:1, 0:1, 0:1]
    assert applied() == (os.getpid(), 256)
