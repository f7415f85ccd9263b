"""The private APIs of other libraries that radiobject reaches into, in the versions installed.

pyproject.toml bounds those libraries above; a lock refresh that raises a bound must keep these
green (or the fallbacks below must take over).
"""

import inspect

import numpy as np
import pytest

import radiobject
import radiobject.read._region


@pytest.mark.parametrize("orientation", ["axial", "isotropic"])
def test_tiledb_core_query_reads_into_our_buffer(tmp_path, orientation):

    data = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4)
    vol = radiobject.Volume.from_numpy(
        str(tmp_path / "v"), data, tile=radiobject.TileConfig(orientation=orientation)
    )
    handle, info = radiobject.read._region.open_array(vol.uri, radiobject.get_tiledb_ctx())
    out = radiobject.read._storage._read_into(handle, info, ((1, 5), (0, 3), (2, 4)))
    assert out is not None, "TileDB-Py's core Query changed: reads fall back to read_subarray"
    # axial tiles are column-major cells, read in that layout
    assert out.flags.f_contiguous if orientation == "axial" else out.flags.c_contiguous
    np.testing.assert_array_equal(out, data[1:5, 0:3, 2:4])


def test_tiledb_stats_raw_dump_str_lists_every_context(tmp_path):
    import json

    import tiledb
    from tiledb.main import stats_raw_dump_str

    vol = radiobject.Volume.from_numpy(str(tmp_path / "v"), np.zeros((8, 8, 8), np.float32))
    tiledb.stats_enable()
    try:
        contexts = [tiledb.Ctx(), tiledb.Ctx()]  # two live contexts, each reading
        for ctx in contexts:
            with tiledb.open(vol.uri, ctx=ctx) as array:
                array[:]
        dump = json.loads(stats_raw_dump_str())
    finally:
        tiledb.stats_disable()
    # a list with an entry per context (tiledb.stats_dump shows the first context only)
    assert isinstance(dump, list)
    assert len(dump) >= len(contexts)
    reads = [(e.get("counters") or {}).get("Context.VFS.read_ops_num", 0) for e in dump]
    assert sum(r > 0 for r in reads) >= len(contexts)


def test_torchio_image_parses_paths_with_verify():
    tio = pytest.importorskip("torchio")
    hook = tio.Image._parse_single_path
    assert "verify" in inspect.signature(hook).parameters


def test_blosc2_ext_ndarray_decodes_a_slice_into_our_buffer(tmp_path):
    """The local tier decodes patches through ``blosc2_ext.NDArray.get_slice_numpy``."""
    blosc2 = pytest.importorskip("blosc2")
    from radiobject.read import _tier_entries

    ext = blosc2.blosc2_ext.NDArray
    assert hasattr(ext, "get_slice_numpy"), "blosc2 changed: tier reads fall back to array[...]"
    data = np.arange(6 * 5 * 4, dtype=np.uint16).reshape(6, 5, 4)
    tier = _tier_entries.LocalTier(tmp_path, budget_bytes=1 << 20)
    assert tier.write("k", data)
    array = tier.open("k")
    assert isinstance(array, ext)
    out = np.empty((3, 2, 2), dtype=np.uint16)
    _tier_entries._decode_into(array, ((1, 4), (2, 4), (0, 2)), out)
    np.testing.assert_array_equal(out, data[1:4, 2:4, 0:2])
    assert _tier_entries._EXT_NDARRAY is ext  # the fast path, not the fallback


def test_multiprocessing_queue_internals_that_direct_queue_writes_through():
    """``ml._queues.DirectQueue`` writes small messages with a Queue's own lock and pipe.

    It uses ``multiprocessing.queues.Queue``'s ``_thread`` (its feeder), ``_closed``, ``_sem``
    (the bound on unread messages), ``_wlock`` and ``_send_bytes`` (CPython 3.11-3.13 have
    them). Without them the loader's workers cannot start: a new Python must pass this first.
    """
    import multiprocessing

    from radiobject.ml._queues import DirectQueue

    q = DirectQueue(ctx=multiprocessing.get_context("spawn"))
    try:
        for name in ("_thread", "_closed", "_sem", "_wlock", "_send_bytes"):
            assert hasattr(q, name), f"multiprocessing.queues.Queue has no {name} any more"
        q.put([1, 2, 3])
        assert q.get(timeout=10) == [1, 2, 3]
        assert q.direct_puts == 1
        assert not q.feeder_started()
    finally:
        q.close()
        q.join_thread()
