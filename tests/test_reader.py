"""One reader: its sources form one chain, chosen by one policy, and agree on every voxel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from radiobject import (
    RadiObjectError,
    ReadConfig,
    TileConfig,
    TileDBStats,
    Volume,
    clear_caches,
    configure,
)
from radiobject.read import (
    Reader,
    Region,
    SharedStore,
    Source,
    open_array,
    reader,
    set_shared_store,
)
from radiobject.read._local_tier import local_tier
from radiobject.read._region import fill_local_tier, forget_array
from radiobject.read._sources import (
    BlockSource,
    RamVolumeSource,
    SharedStoreSource,
    TierFillSource,
    TierSource,
)
from radiobject.read._storage import TileDBSource
from tests.conftest import arange_volume

SHAPE = (24, 20, 16)
TILES = (8, 8, 8)
REGIONS = [
    ((3, 17), (5, 9), (0, 16)),  # off the tile grid
    ((8, 16), (0, 8), (8, 16)),  # one whole tile
    ((0, 24), (0, 20), (0, 16)),  # the whole volume
    ((23, 24), (19, 20), (15, 16)),  # the last voxel
]


@pytest.fixture
def vol(tmp_path: Path) -> Volume:
    data = arange_volume(SHAPE, "float32").astype(np.uint16)  # stored as uint16
    return Volume.from_numpy(tmp_path / "v", data, tile=TileConfig(extents=TILES))


def region_of(vol: Volume, bounds, tier=None) -> Region:
    handle, info = open_array(vol.uri, vol.ctx)
    return Region(vol.uri, vol.ctx, bounds, handle, info, False, tier)


def expected(bounds) -> np.ndarray:
    return arange_volume(SHAPE, "float32").astype(np.uint16)[
        tuple(slice(lo, hi) for lo, hi in bounds)
    ]


class Constant(Source):
    """A source that serves every region of one volume with a constant."""

    name = "constant"

    def __init__(self, uri: str, value: int) -> None:
        super().__init__()
        self.uri, self.value = uri, value

    def get(self, region: Region, out: np.ndarray) -> bool:
        if region.uri != self.uri:
            return self.declined()
        out[...] = self.value
        return self.served(out)


def test_a_source_placed_first_serves_and_counts(vol):
    """A new source is a new class in the policy's chain: TileDB is never asked."""
    fake = Constant(vol.uri, 7)
    mine = Reader(first=(fake,))
    assert mine.sources[0] is fake
    with configure(read=ReadConfig(cache_mb=0)), TileDBStats() as stats:
        got = [mine.read(vol.uri, vol.ctx, b) for b in REGIONS]
    for b, a in zip(REGIONS, got, strict=True):
        assert a.shape == tuple(hi - lo for lo, hi in b)
        assert (a == 7).all()
    assert fake.counters.hits == len(REGIONS)
    assert fake.counters.bytes == sum(a.nbytes for a in got)
    assert mine.policy.storage.counters.hits == 0
    assert stats.cache_stats().storage_queries == 0


def test_a_declining_source_passes_the_read_down_the_chain(vol, tmp_path):
    fake = Constant("elsewhere", 7)
    mine = Reader(first=(fake,))
    with configure(read=ReadConfig(cache_mb=0)), TileDBStats() as stats:
        got = mine.read(vol.uri, vol.ctx, REGIONS[0])
    np.testing.assert_array_equal(got, expected(REGIONS[0]))
    assert (fake.counters.hits, fake.counters.misses) == (0, 1)
    assert mine.policy.storage.counters.hits == 1
    assert stats.cache_stats().storage_queries == 1


@pytest.mark.parametrize("bounds", REGIONS, ids=["unaligned", "tile", "whole", "voxel"])
def test_every_source_fills_out_as_tiledb_does(vol, tmp_path, bounds):
    """Each source class's get writes exactly the voxels TileDB's does, for the same region."""
    policy = Reader().policy
    cache = policy.cache
    storage = TileDBSource(cache)
    tier_source = TierSource(cache)
    with configure(read=ReadConfig(cache_mb=64, local_tier_mb=16, local_tier_dir=str(tmp_path))):
        clear_caches()
        assert fill_local_tier(vol.uri, vol.ctx)
        region = region_of(vol, bounds, local_tier())
        want = np.empty(region.shape, np.uint16)
        assert storage.get(region, want)
        np.testing.assert_array_equal(want, expected(bounds))
        store = SharedStore(tmp_path / "shm", budget_bytes=1 << 24)
        (tmp_path / "shm").mkdir()
        set_shared_store(store)
        try:
            sources = [
                tier_source,
                BlockSource(cache, storage),
                RamVolumeSource(cache, storage, tier_source),
                SharedStoreSource(cache, storage, tier_source),
            ]
            for source in sources:
                for _ in range(2):  # a miss filled from TileDB (the tier: filled), a hit
                    out = np.full(region.shape, 9999, np.uint16)
                    assert source.get(region, out), source.name
                    np.testing.assert_array_equal(out, want, err_msg=source.name)
                assert source.counters.hits >= 1, source.name
            fill = TierFillSource(cache, storage, tier_source)  # reads whole, keeps nothing
            for _ in range(2):
                out = np.full(region.shape, 9999, np.uint16)
                assert fill.get(region, out)
                np.testing.assert_array_equal(out, want, err_msg=fill.name)
            assert (fill.counters.hits, fill.counters.misses) == (0, 2)  # from storage, twice
        finally:
            set_shared_store(None)


def test_the_policy_chooses_the_tier_then_storage(vol, tmp_path):
    """With the tier on and the volume in it, the tier serves; with it off, TileDB does."""
    the = reader()
    tier, storage = the.policy.tier, the.policy.storage
    bounds = REGIONS[0]
    with configure(read=ReadConfig(cache_mb=0, local_tier_mb=16, local_tier_dir=str(tmp_path))):
        fill_local_tier(vol.uri, vol.ctx)
        before = (tier.counters.hits, storage.counters.hits)
        with TileDBStats() as stats:
            np.testing.assert_array_equal(the.read(vol.uri, vol.ctx, bounds), expected(bounds))
        assert (tier.counters.hits, storage.counters.hits) == (before[0] + 1, before[1])
        assert stats.cache_stats().tier_hits == 1
        assert stats.cache_stats().storage_queries == 0
    with configure(read=ReadConfig(cache_mb=0, local_tier_mb=0)):
        np.testing.assert_array_equal(the.read(vol.uri, vol.ctx, bounds), expected(bounds))
        assert (tier.counters.hits, storage.counters.hits) == (before[0] + 1, before[1] + 1)
    forget_array(vol.uri)


def test_fetch_then_decode_into_a_batch_slot(vol):
    """fetch returns the stored integers; decode writes float32 values into the slot given."""

    class Read:
        name, bounds, whole_on_miss, auto_tier_mb = "image", REGIONS[0], False, 0

        def __init__(self, v: Volume) -> None:
            self.uri, self.ctx = v.uri, v.ctx

    reads = [Read(vol)]
    arrays = reader().fetch(reads)
    assert arrays[0].dtype == np.uint16
    batch = np.zeros((2, 1, *arrays[0].shape), np.float32)
    got = reader().decode(reads, arrays, into=batch[1])
    assert got is batch[1] or np.shares_memory(got, batch)
    np.testing.assert_array_equal(batch[1, 0], expected(REGIONS[0]).astype(np.float32))
    assert not batch[0].any()


def test_a_failed_read_names_its_region(vol):
    class Read:
        name, bounds, whole_on_miss, auto_tier_mb = "image", ((0, 99), (0, 1), (0, 1)), False, 0

        def __init__(self, v: Volume) -> None:
            self.uri, self.ctx = v.uri, v.ctx

    with pytest.raises(RadiObjectError) as err:
        reader().fetch([Read(vol)])
    assert any(vol.uri in note and "region [(0, 99)" in note for note in err.value.__notes__)


def test_a_volume_rewritten_and_forgotten_is_read_anew(vol):
    """A volume's route (handle, tier) is kept per volume, and dropped with its handle."""
    the = reader()
    bounds = ((0, 8), (0, 8), (0, 8))
    with configure(read=ReadConfig(cache_mb=0)):
        np.testing.assert_array_equal(the.read(vol.uri, vol.ctx, bounds), expected(bounds))
        vol.write_region(bounds, np.full((8, 8, 8), 5, np.float32))
        forget_array(vol.uri)  # what a rewrite asks of this process's readers
        assert (the.read(vol.uri, vol.ctx, bounds) == 5).all()
