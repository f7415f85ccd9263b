"""Large reads: one query per slab straight into the answer, on threads at once."""

from __future__ import annotations

import numpy as np
import pytest

import radiobject.read._storage as region
from radiobject import ReadConfig, TileConfig, TileDBStats, Volume, clear_caches, configure
from radiobject.read._handles import ArrayInfo
from tests.conftest import arange_volume


def info(shape, tiles, order="C") -> ArrayInfo:
    return ArrayInfo("mem://v", shape, np.dtype(np.int16), tiles, "v", {}, order)


@pytest.mark.parametrize(
    ("bounds", "tiles", "order", "parts", "cuts"),
    [
        (((0, 240), (0, 240), (0, 155)), (48, 48, 39), "C", 2, [(0, 96), (96, 240)]),
        (((0, 240), (0, 240), (0, 155)), (48, 48, 39), "C", 3, [(0, 96), (96, 144), (144, 240)]),
        (((10, 100), (0, 8), (0, 8)), (32, 8, 8), "C", 2, [(10, 64), (64, 100)]),
        (((0, 20), (0, 16), (0, 12)), (20, 16, 1), "F", 2, [(0, 6), (6, 12)]),  # along z
        (((5, 30), (0, 8), (0, 8)), (32, 8, 8), "C", 2, [(5, 30)]),  # within one tile: whole
        (((0, 64), (0, 8), (0, 8)), (32, 8, 8), "C", 4, [(0, 32), (32, 64)]),  # 2 tiles, 2 slabs
    ],
)
def test_slabs_are_cut_on_tile_edges_into_contiguous_views(bounds, tiles, order, parts, cuts):
    shape = tuple(hi for _, hi in bounds)
    box = tuple(hi - lo for lo, hi in bounds)
    out = np.empty(box, np.int16, order=order)
    slabs = region._slabs(bounds, info(shape, tiles, order), out, parts)
    axis = len(bounds) - 1 if order == "F" else 0
    assert [b[axis] for b, _ in slabs] == cuts
    for b, view in slabs:
        assert view.flags.c_contiguous if order == "C" else view.flags.f_contiguous
        assert view.shape == tuple(hi - lo for lo, hi in b)
        assert np.shares_memory(view, out)
        assert all(b[d] == bounds[d] for d in range(len(bounds)) if d != axis)


@pytest.mark.parametrize("orientation", ["isotropic", "axial"])
@pytest.mark.parametrize("cache_mb", [512, 0])
@pytest.mark.parametrize("concurrency", [1, 2, 3])
def test_split_reads_equal_numpy(tmp_path, monkeypatch, orientation, cache_mb, concurrency):
    monkeypatch.setattr(region, "SPLIT_BYTES", 1)  # every read is split where it can be
    data = arange_volume((40, 36, 30, 2), "float32")
    vol = Volume.from_numpy(
        tmp_path / "v", data, tile=TileConfig(orientation=orientation, isotropic_extent=8)
    )
    clear_caches()
    with configure(read=ReadConfig(cache_mb=cache_mb, concurrency=concurrency)):
        for _ in range(3):  # straight, kept whole, from the cache
            np.testing.assert_array_equal(vol.to_numpy(), data)
        box = np.s_[3:37, 5:30, 1:29, 0:2]
        for _ in range(2):
            np.testing.assert_array_equal(vol[box], data[box])
        np.testing.assert_array_equal(vol.axial(7), data[:, :, 7])


def test_a_split_read_counts_one_storage_query(tmp_path, monkeypatch):
    monkeypatch.setattr(region, "SPLIT_BYTES", 1)
    data = arange_volume((32, 32, 32), "int16")
    vol = Volume.from_numpy(tmp_path / "v", data, tile=TileConfig(extents=(8, 8, 8)))
    clear_caches()
    with configure(read=ReadConfig(cache_mb=0, concurrency=4)), TileDBStats() as stats:
        np.testing.assert_array_equal(vol.to_numpy(), data)
    cache = stats.cache_stats()
    assert (cache.storage_queries, cache.misses) == (1, 64)
    assert cache.bytes_from_storage == data.nbytes


def test_an_incomplete_query_falls_back_to_read_subarray(tmp_path, monkeypatch):
    data = arange_volume((24, 20, 16), "int16")
    vol = Volume.from_numpy(tmp_path / "v", data, tile=TileConfig(extents=(8, 8, 8)))
    clear_caches()
    calls = []

    def incomplete(*args):
        calls.append(args[2])
        return False

    monkeypatch.setattr(region, "_fill", incomplete)
    with configure(read=ReadConfig(cache_mb=0)):
        np.testing.assert_array_equal(vol.to_numpy(), data)
        np.testing.assert_array_equal(vol[1:9, 2:3, 4:16], data[1:9, 2:3, 4:16])
    assert len(calls) == 2


def test_a_failing_slab_raises_with_the_volume(tmp_path, monkeypatch):
    from radiobject._errors import RadiObjectError

    monkeypatch.setattr(region, "SPLIT_BYTES", 1)
    data = arange_volume((32, 8, 8), "int16")
    vol = Volume.from_numpy(tmp_path / "v", data, tile=TileConfig(extents=(8, 8, 8)))
    clear_caches()
    real = region._fill

    def second_slab_fails(handle, info, bounds, view):
        if bounds[0][0] > 0:
            import tiledb

            raise tiledb.TileDBError("disk went away")
        return real(handle, info, bounds, view)

    monkeypatch.setattr(region, "_fill", second_slab_fails)
    with configure(read=ReadConfig(cache_mb=0, concurrency=2)), pytest.raises(RadiObjectError) as e:
        vol.to_numpy()
    assert vol.uri in str(e.value)


def test_large_reads_at_once_share_concurrency_minus_one_slab_threads(tmp_path, monkeypatch):
    # four reader threads each fanning its read out to a slab thread kept four slab threads,
    # each with its own malloc arena; with concurrency 2 they share one
    import threading

    monkeypatch.setattr(region, "SPLIT_BYTES", 1)
    data = arange_volume((32, 16, 16), "int16")
    vols = [
        Volume.from_numpy(tmp_path / f"v{i}", data, tile=TileConfig(extents=(8, 8, 8)))
        for i in range(4)
    ]
    clear_caches()
    callers = threading.Barrier(4, timeout=30)  # every read has taken its slab threads
    all_in = threading.Event()
    slab_fills, whole_fills = [], []
    real = region._fill

    def fill(handle, info, bounds, view):
        if threading.current_thread().name.startswith("radiobject-slab"):
            assert all_in.wait(timeout=30)  # held until every read has decided
            slab_fills.append(bounds)
        else:
            callers.wait()
            all_in.set()
            if bounds[0] == (0, 32):
                whole_fills.append(bounds)
        return real(handle, info, bounds, view)

    monkeypatch.setattr(region, "_fill", fill)
    results: dict[int, np.ndarray] = {}

    def read(i: int) -> None:
        results[i] = vols[i].to_numpy()

    with configure(read=ReadConfig(cache_mb=0, concurrency=2)):
        threads = [threading.Thread(target=read, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert len(results) == 4
    for out in results.values():
        np.testing.assert_array_equal(out, data)
    assert len(slab_fills) == 1  # one read took the one slab thread ...
    assert len(whole_fills) == 3  # ... the others read in one query each


def test_a_read_alone_still_reads_its_slabs_on_threads(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(region, "SPLIT_BYTES", 1)
    data = arange_volume((32, 16, 16), "int16")
    vol = Volume.from_numpy(tmp_path / "v", data, tile=TileConfig(extents=(8, 8, 8)))
    clear_caches()
    names = []
    real = region._fill

    def fill(handle, info, bounds, view):
        names.append(threading.current_thread().name.startswith("radiobject-slab"))
        return real(handle, info, bounds, view)

    monkeypatch.setattr(region, "_fill", fill)
    with configure(read=ReadConfig(cache_mb=0, concurrency=3)):
        for _ in range(2):  # the threads are free again once a read ends
            names.clear()
            np.testing.assert_array_equal(vol.to_numpy(), data)
            assert sorted(names) == [False, True, True]
