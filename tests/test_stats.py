"""TileDBStats and the block cache: real hits and misses, counted per tile block."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from radiobject import CacheStats, ReadConfig, S3Stats, TileConfig, TileDBStats, Volume, configure
from tests.conftest import arange_volume

TILE = TileConfig(extents=(16, 16, 16))


@pytest.fixture
def vol(tmp_path) -> Volume:
    """A 48^3 float64 volume (kept float64: integers=False) in 27 tiles of 16^3 (32 KiB each)."""
    return Volume.from_numpy(
        tmp_path / "v", arange_volume((48, 48, 48), "float64"), tile=TILE, integers=False
    )


def read(vol: Volume, index) -> tuple[CacheStats, S3Stats, np.ndarray]:
    with TileDBStats() as stats:
        out = vol[index]
    return stats.cache_stats(), stats.s3_stats(), out


REGION = np.s_[0:32, 0:32, 0:16]  # 2 x 2 x 1 tiles


def test_counters_equal_the_tiles_touched(vol):
    expected = arange_volume((48, 48, 48), "float64")[REGION]
    first, io_first, out = read(vol, REGION)
    np.testing.assert_array_equal(out, expected)
    assert (first.hits, first.misses) == (0, 4)
    assert first.storage_queries == 1  # the four tiles come in one query
    assert first.bytes_from_storage == 4 * 16**3 * 8
    assert first.bytes_from_cache == 0
    assert io_first.read_ops > 0
    assert io_first.bytes_read > 0

    again, io_again, out = read(vol, REGION)
    np.testing.assert_array_equal(out, expected)
    assert (again.hits, again.misses) == (4, 0)
    assert again.storage_queries == 0
    assert again.bytes_from_cache == 4 * 16**3 * 8
    assert again.bytes_from_storage == 0
    assert io_again.read_ops == 0  # nothing reached TileDB
    assert again.hit_rate > first.hit_rate
    assert again.hit_rate == 1.0


def test_a_first_read_off_the_tile_grid_is_exact_and_a_second_one_caches(vol):
    from radiobject import clear_caches
    from radiobject.read._region import block_cache

    clear_caches()
    off_grid = np.s_[8:24, 8:24, 8:24]  # 8 tiles of 16^3, none read yet
    expected = arange_volume((48, 48, 48), "float64")[off_grid]
    first, _, out = read(vol, off_grid)
    np.testing.assert_array_equal(out, expected)
    assert (first.hits, first.misses, first.storage_queries) == (0, 8, 1)
    assert first.bytes_from_storage == 16**3 * 8  # the region only, not its 8 tiles
    assert len(block_cache()) == 0
    second, _, out = read(vol, off_grid)  # touched again: its tiles are fetched and kept
    np.testing.assert_array_equal(out, expected)
    assert (second.hits, second.misses) == (0, 8)
    assert second.bytes_from_storage == 8 * 16**3 * 8
    assert len(block_cache()) == 8
    third, _, out = read(vol, off_grid)
    np.testing.assert_array_equal(out, expected)
    assert (third.hits, third.misses, third.storage_queries) == (8, 0, 0)
    clear_caches()  # cold again: forgets what was read, too
    again, _, _ = read(vol, off_grid)
    assert again.bytes_from_storage == 16**3 * 8


@pytest.mark.parametrize(
    ("index", "tiles"),
    [
        (np.s_[0:16, 0:16, 0:16], 1),
        (np.s_[8:24, 8:24, 8:24], 8),  # one 16^3 patch off the grid touches 8 tiles
        (np.s_[15:17, 0:1, 0:1], 2),
        (np.s_[:, :, 20], 9),  # an axial plane crosses 3 x 3 tiles
        (np.s_[5, 5, 5], 1),
        (np.s_[...], 27),
    ],
)
def test_tile_counts(vol, index, tiles):
    first, _, out = read(vol, index)
    np.testing.assert_array_equal(out, arange_volume((48, 48, 48), "float64")[index])
    assert first.hits + first.misses == tiles
    assert first.misses == tiles


def test_partial_overlap_hits_only_the_cached_tiles(vol):
    read(vol, np.s_[0:16, 0:16, 0:32])  # tiles (0,0,0) and (0,0,1)
    stats, _, out = read(vol, np.s_[0:16, 0:32, 0:32])  # those two and two new ones
    assert (stats.hits, stats.misses) == (2, 2)
    np.testing.assert_array_equal(out, arange_volume((48, 48, 48), "float64")[0:16, 0:32, 0:32])


def test_a_cached_tile_between_missing_ones(vol):
    read(vol, np.s_[0:16, 0:16, 16:32])  # the middle tile of a column of three
    stats, _, out = read(vol, np.s_[0:16, 0:16, 0:48])
    assert (stats.hits, stats.misses) == (1, 2)
    assert stats.storage_queries == 1
    assert stats.evictions == 0  # the cache is far from full: nothing was dropped
    np.testing.assert_array_equal(out, arange_volume((48, 48, 48), "float64")[0:16, 0:16, :])
    again, _, _ = read(vol, np.s_[0:16, 0:16, 0:48])
    assert (again.hits, again.misses, again.evictions) == (3, 0, 0)


def test_no_cache_means_every_read_is_a_storage_read(vol):
    with configure(read=ReadConfig(cache_mb=0)):
        for _ in range(3):
            stats, io, out = read(vol, REGION)
            assert (stats.hits, stats.misses) == (0, 4)
            assert stats.storage_queries == 1
            assert stats.bytes_from_storage == 4 * 16**3 * 8
            assert stats.capacity_bytes == 0
            assert stats.size_bytes == 0
            assert io.read_ops > 0
        np.testing.assert_array_equal(out, arange_volume((48, 48, 48), "float64")[REGION])


def sweep(volumes: list[Volume]) -> CacheStats:
    """Read every tile of every volume once, tile by tile."""
    with TileDBStats() as stats:
        for vol in volumes:
            for i in range(3):
                for j in range(3):
                    for k in range(3):
                        vol[i * 16 : i * 16 + 16, j * 16 : j * 16 + 16, k * 16 : k * 16 + 16]
    return stats.cache_stats()


def test_bigger_cache_gives_a_higher_hit_rate(tmp_path):
    # working set: 2 x 27 tiles x 32 KiB = 1.7 MiB, larger than a 1 MiB cache
    volumes = [
        Volume.from_numpy(
            tmp_path / f"v{n}",
            arange_volume((48, 48, 48), "float64") + n,
            tile=TILE,
            integers=False,
        )
        for n in range(2)
    ]
    rates = {}
    for mb in (1, 8):
        with configure(read=ReadConfig(cache_mb=mb)):
            sweep(volumes)  # warm up
            second = sweep(volumes)
            assert second.hits + second.misses == 54
            assert second.capacity_bytes == mb * 1024 * 1024
            assert second.size_bytes <= second.capacity_bytes
            rates[mb] = (second.hit_rate, second.evictions)
    small_rate, small_evictions = rates[1]
    big_rate, big_evictions = rates[8]
    assert big_rate > small_rate
    assert big_rate == 1.0  # everything fits
    assert small_evictions > 0  # the small cache really had to drop blocks
    assert big_evictions == 0


def test_a_new_cache_budget_starts_empty(vol):
    read(vol, REGION)
    with configure(read=ReadConfig(cache_mb=4)):
        stats, _, _ = read(vol, REGION)
    assert stats.misses == 4


def test_stats_inside_the_block(vol):
    with TileDBStats() as stats:
        vol[REGION]
        during = stats.cache_stats()
        vol[REGION]
    assert (during.hits, during.misses) == (0, 4)
    assert (stats.cache_stats().hits, stats.cache_stats().misses) == (4, 4)
    assert stats.cache_stats().hit_rate == 0.5


def test_nested_stats_blocks(vol):
    with TileDBStats() as outer:
        vol[REGION]
        with TileDBStats() as inner:
            vol[REGION]
        vol[np.s_[32:48, 0:16, 0:16]]
    assert (inner.cache_stats().hits, inner.cache_stats().misses) == (4, 0)
    assert (outer.cache_stats().hits, outer.cache_stats().misses) == (4, 5)
    assert outer.s3_stats().read_ops > 0


def test_empty_stats():
    with TileDBStats() as stats:
        pass
    assert stats.cache_stats().hit_rate == 0.0
    assert stats.cache_stats().hits + stats.cache_stats().misses == 0
    assert stats.s3_stats() == S3Stats()
    assert S3Stats().parallelization_rate == 0.0
    total = CacheStats(hits=1, misses=3) + CacheStats(hits=2, misses=2)
    assert (total.hits, total.misses, total.hit_rate) == (3, 5, 3 / 8)


# -- overlap of queries, nesting, and who owns TileDB's statistics ---------------------------


def test_a_query_overlaps_when_another_is_in_flight_at_any_moment():
    from radiobject.read._region import ReadOverlap

    meter = ReadOverlap()
    with meter:  # alone
        pass
    assert meter.snapshot() == (1, 0)

    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with meter:
            first_in.set()
            second_in.wait(5)  # the second query starts while this one runs
        first_out.set()

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(5)
    with meter:
        second_in.set()
        first_out.wait(5)  # the first ends while this one runs
    thread.join()
    assert meter.snapshot() == (3, 2)  # both overlapped, the lone one did not
    with meter:  # alone again: earlier overlaps do not leak into it
        pass
    assert meter.snapshot() == (4, 2)


def test_parallelized_reads_counts_queries_beside_another_in_flight(vol):
    from radiobject.read._region import read_overlap

    with configure(read=ReadConfig(cache_mb=0)):
        with TileDBStats() as alone:
            vol[REGION]
        assert (alone.s3_stats().queries, alone.s3_stats().parallelized_reads) == (1, 0)

        entered, release = threading.Event(), threading.Event()

        def other_query() -> None:  # another thread's query, in flight throughout
            with read_overlap():
                entered.set()
                release.wait(5)

        thread = threading.Thread(target=other_query)
        thread.start()
        entered.wait(5)
        with TileDBStats() as beside:
            vol[REGION]
            vol[REGION]
        release.set()
        thread.join()
    io = beside.s3_stats()
    assert (io.queries, io.parallelized_reads) == (2, 2)
    assert io.parallelization_rate == 1.0
    assert io.read_ops > 0


def test_nested_and_concurrent_blocks_count_the_same_reads(vol):
    # cache off: each read of REGION is the same TileDB work, so counts add up exactly
    with configure(read=ReadConfig(cache_mb=0)):
        vol[REGION]  # opened and warm: later reads are alike
        with TileDBStats() as outer:
            vol[REGION]
            with TileDBStats() as inner:
                vol[REGION]
            done = threading.Event()
            side: list[TileDBStats] = []

            def other_block() -> None:
                with TileDBStats() as stats:
                    vol[REGION]
                side.append(stats)
                done.set()

            threading.Thread(target=other_block).start()
            done.wait(30)
    one = inner.s3_stats()
    assert one.read_ops > 0
    assert one.bytes_read > 0
    assert side[0].s3_stats().read_ops == one.read_ops
    assert outer.s3_stats().read_ops == 3 * one.read_ops
    assert outer.s3_stats().bytes_read == 3 * one.bytes_read
    assert outer.s3_stats().queries == 3


def test_statistics_the_user_turned_on_are_left_alone(vol):
    import tiledb

    from radiobject.read._stats import tiledb_counters

    with configure(read=ReadConfig(cache_mb=0)):
        tiledb.stats_enable()
        try:
            vol[REGION]
            before = tiledb_counters()
            with TileDBStats() as stats:
                vol[REGION]
            after = tiledb_counters()
            assert tiledb.main.stats_enabled()  # still on: they are the user's
        finally:
            tiledb.stats_reset()  # TileDB-Py's reset turns statistics on: disable after it
            tiledb.stats_disable()
    reads = stats.s3_stats().read_ops
    assert reads > 0
    # nothing was reset: the user's counters still hold the read before the block
    assert after[_read_ops_key(after)] == before[_read_ops_key(before)] + reads


def _read_ops_key(counters: dict[str, int]) -> str:
    return next(k for k in counters if k.endswith(".VFS.read_ops_num"))


def test_clear_caches_empties_the_block_cache_and_a_workers_shared_store(vol, tmp_path):
    from radiobject import clear_caches
    from radiobject.read._shared_store import SharedStore, set_shared_store

    read(vol, REGION)
    warm, _, _ = read(vol, REGION)
    assert warm.misses == 0
    clear_caches()
    cold, _, _ = read(vol, REGION)
    assert (cold.hits, cold.misses) == (0, 4)

    store = SharedStore(tmp_path / "shm", budget_bytes=1 << 20)
    store.directory.mkdir()
    set_shared_store(store)  # as in a loader worker
    try:
        store.fetch("a", lambda: np.arange(4.0))
        assert store.fetch("a", lambda: np.arange(4.0))[1]  # stored: a hit
        clear_caches()
        assert list(store.directory.glob("*.npy")) == []
        assert not store.fetch("a", lambda: np.arange(4.0))[1]  # cold again
    finally:
        set_shared_store(None)


def test_tiledb_is_asked_for_its_counters_at_the_edges_only(vol, monkeypatch):
    import radiobject.read._stats as stats_module

    dumps = []
    dump = stats_module._raw_counters
    monkeypatch.setattr(stats_module, "_raw_counters", lambda: dumps.append(1) or dump())
    with configure(read=ReadConfig(cache_mb=0)):
        with TileDBStats() as stats:
            for k in range(0, 48, 4):  # twelve storage queries
                vol[k : k + 2, 0:2, 0:2]
        assert stats.s3_stats().queries == 12
        assert len(dumps) == 1  # leaving (entering resets), never per query
        with TileDBStats() as outer:
            vol[REGION]
            with TileDBStats():
                vol[REGION]
        assert outer.s3_stats().queries == 2
        assert len(dumps) == 1 + 3  # the inner block's two edges, the outer's exit


def test_tiledbs_record_of_queries_is_reset_when_a_block_opens(vol):
    from radiobject.read._stats import _raw_counters

    with configure(read=ReadConfig(cache_mb=0)):
        vol[REGION]  # opened: later reads are alike
        with TileDBStats() as first:
            vol[REGION]
        vol[REGION]  # outside any block
        assert _raw_counters() != {}
        with TileDBStats() as second:
            # reset as it opened: its exit does not walk the earlier queries again
            assert _raw_counters() == {}
            vol[REGION]
    assert first.s3_stats().read_ops == second.s3_stats().read_ops > 0


def test_stats_without_storage_counters_leave_tiledb_alone(vol, monkeypatch):
    import radiobject.read._stats as stats_module
    from radiobject import ConfigurationError

    dumps = []
    dump = stats_module._raw_counters
    monkeypatch.setattr(stats_module, "_raw_counters", lambda: dumps.append(1) or dump())
    with TileDBStats(storage=False) as stats:
        vol[REGION]
        vol[REGION]
    assert (stats.cache_stats().hits, stats.cache_stats().misses) == (4, 4)
    assert dumps == []
    with pytest.raises(ConfigurationError, match=r"TileDBStats\(storage=False\)"):
        stats.s3_stats()


@pytest.mark.parametrize(("size", "patch", "cache_mb"), [(80, 20, 1), (48, 12, 2)])
def test_an_epoch_never_reads_more_than_the_first_when_the_cohort_does_not_fit(
    tmp_path, size, patch, cache_mb
):
    # 8 float64 volumes (16^3 tiles) larger than the cache together, a random unaligned patch
    # per volume per epoch; later epochs touch tiles read before. With 48^3 volumes and a
    # 2 MiB cache, the tiles an epoch touches (~8 x 4 x 32 KiB) fit, but their volumes do not
    volumes = [
        Volume.from_numpy(
            tmp_path / f"v{n}", arange_volume((size,) * 3, "float64") + n, tile=TILE, integers=False
        )
        for n in range(8)
    ]
    rng = np.random.default_rng(0)
    per_epoch = []
    with configure(read=ReadConfig(cache_mb=cache_mb)):
        for _epoch in range(4):
            with TileDBStats(storage=False) as stats:
                for n, vol in enumerate(volumes):
                    x, y, z = (int(v) for v in rng.integers(1, size - patch, size=3))
                    box = np.s_[x : x + patch, y : y + patch, z : z + patch]
                    expected = arange_volume((size,) * 3, "float64") + n
                    np.testing.assert_array_equal(vol[box], expected[box])
            per_epoch.append(stats.cache_stats().bytes_from_storage)
    assert per_epoch[0] == 8 * patch**3 * 8  # exact regions, nothing more
    assert all(b <= per_epoch[0] for b in per_epoch[1:]), per_epoch


def test_a_working_set_that_fits_is_still_cached_on_the_second_touch(tmp_path):
    vol = Volume.from_numpy(
        tmp_path / "v", arange_volume((48, 48, 48), "float64"), tile=TILE, integers=False
    )
    with configure(read=ReadConfig(cache_mb=8)):
        read(vol, np.s_[1:20, 1:20, 1:20])  # first touch: exact, not cached
        read(vol, np.s_[1:20, 1:20, 1:20])  # second touch: its 8 tiles are admitted
        stats, _, _ = read(vol, np.s_[1:20, 1:20, 1:20])
    assert (stats.hits, stats.misses, stats.bytes_from_storage) == (8, 0, 0)


@pytest.fixture
def trim_every_3(monkeypatch):
    from radiobject.read import _stats, _storage

    calls = []

    def trim() -> None:
        calls.append(1)
        _stats.trim_query_record()

    monkeypatch.setattr(_storage, "on_many_queries", (3, trim))
    monkeypatch.setattr(_storage.read_overlap(), "next_trim", -1)
    return calls


def one_voxel_reads(vol: Volume, n: int) -> None:
    for i in range(n):
        vol[i : i + 1, 0:1, 0:1]


def test_tiledb_query_record_is_trimmed_without_changing_a_block(vol, trim_every_3, monkeypatch):
    import tiledb

    from radiobject.read import _storage
    from radiobject.read._stats import _stats_enabled

    with configure(read=ReadConfig(cache_mb=0)):
        one_voxel_reads(vol, 10)  # warm: handles and fragment metadata loaded
        with TileDBStats() as trimmed:
            one_voxel_reads(vol, 10)
        assert len(trim_every_3) == 6  # every 3 queries after the first
        one_voxel_reads(vol, 7)  # outside any block: statistics reset and stay off
        assert len(trim_every_3) >= 8
        assert not _stats_enabled()
        monkeypatch.setattr(_storage, "on_many_queries", None)
        with TileDBStats() as plain:
            one_voxel_reads(vol, 10)
        assert trimmed.s3_stats().read_ops == plain.s3_stats().read_ops > 0
        assert trimmed.s3_stats().bytes_read == plain.s3_stats().bytes_read
        assert trimmed.s3_stats().queries == plain.s3_stats().queries == 10
        tiledb.stats_enable()  # the user's statistics: never reset by a trim
        try:
            tiledb.stats_reset()
            one_voxel_reads(vol, 7)
            from radiobject.read._stats import _raw_counters

            assert sum(v for k, v in _raw_counters().items() if k.endswith("read_ops_num")) > 0
        finally:
            tiledb.stats_reset()
            tiledb.stats_disable()


def test_a_whole_volume_is_kept_while_the_volumes_read_fit_the_cache(tmp_path):
    from radiobject import clear_caches
    from radiobject.read._region import _WHOLE, block_cache

    clear_caches()
    # 40 volumes of 32 KiB against a 1 MiB cache: the first 32 fit it, the rest do not
    data = [arange_volume((16, 16, 16), "float64") + i for i in range(40)]
    vols = [
        Volume.from_numpy(tmp_path / f"v{i}", d, tile=TILE, integers=False)  # stored float64
        for i, d in enumerate(data)
    ]
    with configure(read=ReadConfig(cache_mb=1)):
        kept = []
        for vol, expected in zip(vols, data, strict=True):
            first, _, out = read(vol, ...)
            np.testing.assert_array_equal(out, expected)
            assert (first.hits, first.misses, first.storage_queries) == (0, 1, 1)
            assert first.bytes_from_storage == expected.nbytes
            kept.append(block_cache().get((vol.uri, _WHOLE)) is not None)
            out[:] = -1  # the answer is the caller's own array, never the cache's
        assert kept == [True] * 32 + [False] * 8  # past the budget: read straight, not kept
        again, _, out = read(vols[0], ...)
        np.testing.assert_array_equal(out, data[0])
        assert (again.hits, again.misses, again.storage_queries) == (1, 0, 0)
        assert again.bytes_from_cache == data[0].nbytes
    with configure(read=ReadConfig(cache_mb=0)):
        for _ in range(2):  # no cache: every read is one query straight into the answer
            off, _, out = read(vols[0], ...)
            np.testing.assert_array_equal(out, data[0])
            assert (off.hits, off.misses, off.storage_queries) == (0, 1, 1)
