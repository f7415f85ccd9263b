"""The sources a region's voxels can come from before TileDB: RAM, shared store, local tier.

Each is a :class:`~radiobject.read._source.Source`: ``get(region, out) -> bool`` and its
own counters (and, as always, the process's :class:`~radiobject.read._cache.CacheCounters`
that :class:`~radiobject.TileDBStats` reports). The caching sources wrap TileDB the way
zarr's cache store wraps another store: what they lack they fetch from
:class:`~radiobject.read._storage.TileDBSource` and keep. Which of them a read tries, in
what order, is :class:`~radiobject.read._policy.ReadPolicy`'s decision alone.
"""

from __future__ import annotations

import itertools
import logging
import threading
from abc import abstractmethod
from collections.abc import Callable

import numpy as np
from cachetools import LRUCache

from radiobject._process import Resource
from radiobject.config import current_scope, get_config, in_scope
from radiobject.read._cache import BlockCache
from radiobject.read._local_tier import FILL_IDLE_S, LocalTier, tier_state
from radiobject.read._shared_store import get_shared_store
from radiobject.read._source import Bounds, Region, Source
from radiobject.read._storage import TileDBSource

__all__ = [
    "WHOLE",
    "BlockSource",
    "RamVolumeSource",
    "SharedStoreSource",
    "TierFillSource",
    "TierSource",
]

WHOLE = (-1,)  # block-cache key of a volume held as one block
_log = logging.getLogger("radiobject.read")


def _automatic() -> bool:
    """Whether reads now use a loader's automatic tier (``local_tier_mb`` None), not the user's."""
    return get_config().read.local_tier_mb is None


def tile_keys(bounds: Bounds, tiles: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Indices of the tiles ``bounds`` touches."""
    ranges = [range(lo // t, (hi - 1) // t + 1) for (lo, hi), t in zip(bounds, tiles, strict=True)]
    return list(itertools.product(*ranges))


class BlockSource(Source):
    """Tile-aligned blocks in the RAM block cache; the tiles it lacks it reads in one query.

    It always serves (the policy chooses it only when fetching the missing tiles and
    keeping them is worth it); hits and misses count the tiles the region touches.
    """

    name = "ram blocks"

    def __init__(self, cache: BlockCache, storage: TileDBSource) -> None:
        super().__init__()
        self.cache = cache
        self.storage = storage

    def missing(self, region: Region, keys: list[tuple[int, ...]]) -> int:
        """How many of the tiles ``keys`` of ``region`` the cache lacks now."""
        uri, cache = region.uri, self.cache
        return sum(cache.get((uri, k)) is None for k in keys)

    def get(self, region: Region, out: np.ndarray) -> bool:
        """Assemble ``region`` from cached blocks, fetching the missing ones first."""
        uri, info, bounds, cache = region.uri, region.info, region.bounds, self.cache
        tiles = info.tiles
        keys = tile_keys(bounds, tiles)
        blocks = {k: cache.get((uri, k)) for k in keys}
        missing = [k for k, v in blocks.items() if v is None]
        if missing:
            lo_t = [min(k[d] for k in missing) for d in range(len(tiles))]
            hi_t = [max(k[d] for k in missing) for d in range(len(tiles))]
            box = tuple(
                (lo * t, min((hi + 1) * t, s))
                for lo, hi, t, s in zip(lo_t, hi_t, tiles, info.shape, strict=True)
            )
            self._fetch(region, box, blocks)
        counters = cache.counters
        with cache._lock:
            counters.hits += len(keys) - len(missing)
            counters.misses += len(missing)
            missed = set(missing)
            counters.bytes_from_cache += sum(
                b.nbytes for k in keys if k not in missed and (b := blocks[k]) is not None
            )
        for k, block in blocks.items():
            assert block is not None  # every missing block was fetched
            src, dst = [], []
            for d, (lo, hi) in enumerate(bounds):
                t0 = k[d] * tiles[d]
                a, b = max(lo, t0), min(hi, t0 + block.shape[d])
                src.append(slice(a - t0, b - t0))
                dst.append(slice(a - lo, b - lo))
            out[tuple(dst)] = block[tuple(src)]
        if missing:
            self.declined()  # served, but not from what it held
            return True
        return self.served(out)

    def _fetch(
        self, region: Region, box: Bounds, blocks: dict[tuple[int, ...], np.ndarray | None]
    ) -> None:
        """Read the tile-aligned ``box`` in one query, cut it into blocks, cache them."""
        info, cache = region.info, self.cache
        tiles = info.tiles
        data = self.storage.read_box(region, box)
        for k in tile_keys(box, tiles):
            sl = tuple(
                slice(
                    k[d] * tiles[d] - box[d][0],
                    min((k[d] + 1) * tiles[d], info.shape[d]) - box[d][0],
                )
                for d in range(len(tiles))
            )
            block = np.ascontiguousarray(data[sl])
            if k in blocks and blocks[k] is None:
                blocks[k] = block
            cache.put((info.uri, k), block)


class _FetchLocks:
    """One lock per volume, so one thread fetches a whole volume while the others wait.

    The most recently used 4096 are kept: a lock dropped while held only lets a later
    thread fetch the same volume again.
    """

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.locks: LRUCache[str, threading.Lock] = LRUCache(maxsize=4096)

    def __call__(self, uri: str) -> threading.Lock:
        with self.guard:
            lock = self.locks.get(uri)
            if lock is None:
                lock = self.locks[uri] = threading.Lock()
            return lock


_FETCH_LOCKS: Resource[_FetchLocks] = Resource("fetch locks", _FetchLocks)


class _WholeVolumeSource(Source):
    """A source of whole volumes: a region is a slice of its volume, fetched whole on a miss.

    The first read of a volume fetches all of it in one query and offers it to the read's
    local tier. Hits and misses (of the block cache's counters) count the tiles the region
    touches.
    """

    def __init__(self, cache: BlockCache, storage: TileDBSource, tier: TierSource) -> None:
        super().__init__()
        self.cache = cache
        self.storage = storage
        self.tier = tier

    def load(self, region: Region, keep: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
        """The whole volume of ``region`` from storage, offered to its tier.

        ``keep`` stores it first: the tier's publish releases the copies kept before it.
        """
        volume = self.storage.read_whole(region)
        if keep is not None:
            keep(volume)
        self.tier.offer(region, volume)
        return volume

    @abstractmethod
    def volume(self, region: Region) -> tuple[np.ndarray, bool]:
        """The whole volume of ``region`` and whether this source held it already."""

    def get(self, region: Region, out: np.ndarray) -> bool:
        """Copy ``region`` out of its whole volume (fetched now if not held)."""
        volume, hit = self.volume(region)
        out[...] = volume[tuple(slice(lo, hi) for lo, hi in region.bounds)]
        n_tiles = len(tile_keys(region.bounds, region.info.tiles))
        cache = self.cache
        with cache._lock:
            if hit:
                cache.counters.hits += n_tiles
                cache.counters.bytes_from_cache += out.nbytes
            else:
                cache.counters.misses += n_tiles
        if hit:
            return self.served(out)
        self.declined()  # served, but fetched whole from storage first
        return True


class TierFillSource(_WholeVolumeSource):
    """A volume read whole once to fill the local tier; nothing of it is kept in RAM.

    Chosen by the policy after a tier miss it claimed a fill for, when the read touches most
    of its volume (or the volume is small: ``fills_on_step``): the region is cut from the
    volume and the volume handed to the tier's writer, so the one TileDB read of a fill is
    the read that serves the region.
    """

    name = "tier fill"

    def volume(self, region: Region) -> tuple[np.ndarray, bool]:
        """The volume from storage, offered to the tier."""
        return self.load(region), False


class RamVolumeSource(_WholeVolumeSource):
    """Whole volumes kept in this process's block cache (one block per volume)."""

    name = "ram volumes"

    def holds(self, uri: str) -> bool:
        """Whether the cache holds ``uri`` whole now."""
        return self.cache.get((uri, WHOLE)) is not None

    def volume(self, region: Region) -> tuple[np.ndarray, bool]:
        """The volume from the cache; one thread fetches it, the others wait for it."""
        key = (region.uri, WHOLE)
        volume = self.cache.get(key)
        if volume is not None:
            return volume, True
        with _FETCH_LOCKS.get()(region.uri):
            volume = self.cache.get(key)
            if volume is not None:
                return volume, True
            return self.load(region, keep=lambda v: self.cache.put(key, v)), False


class SharedStoreSource(_WholeVolumeSource):
    """Whole volumes shared by a loader's workers through ``/dev/shm`` (:class:`SharedStore`)."""

    name = "shared store"

    def volume(self, region: Region) -> tuple[np.ndarray, bool]:
        """The volume from the store; one worker fetches it, the others map its file."""
        store = get_shared_store()
        assert store is not None  # the policy chooses this source only with a store
        volume, hit = store.fetch(region.uri, lambda: self.storage.read_whole(region))
        if not hit:  # offered once stored: the tier's publish releases the stored copy
            self.tier.offer(region, volume)
        return volume, hit


class TierSource(Source):
    """The local tier (:class:`~radiobject.read._local_tier.LocalTier`): blosc2 on local disk.

    A miss declines; the policy then asks :meth:`claim` whether the read should read the
    volume whole for the tier (the whole-volume sources hand it to :meth:`offer`). An entry
    that fails to open though intact turns the tier off in this process (counted, warned
    once).
    """

    name = "local tier"

    def __init__(self, cache: BlockCache) -> None:
        super().__init__()
        self.cache = cache
        self.fill_errors = 0  # fills whose whole-volume read failed in a writer

    def get(self, region: Region, out: np.ndarray) -> bool:
        """``region`` decoded from the tier into ``out``, or False (a miss)."""
        tier: LocalTier = region.tier
        state = tier_state()
        key = region.tier_key or state.key(region.uri, region.ctx)
        cache = self.cache
        try:
            found = tier.read(key, region.bounds, out)
        except Exception as exc:  # not a missing entry (that is None): see LocalTier.open
            self._failed(tier, exc)
            state.warn_pending()  # a reading thread: warn now
            return self.declined()
        with cache._lock:
            if found is not None:
                cache.counters.tier_hits += 1
                cache.counters.bytes_from_tier += out.nbytes
            else:
                cache.counters.tier_misses += 1
        if found is not None:
            return self.served(out)
        return self.declined()

    def claim(self, region: Region) -> bool:
        """After a miss: whether to read ``region``'s volume whole now and fill the tier with it.

        True when the writers have room (and the volume is not being filled, nor too large
        for the budget): a read with a tier is a read the tier is for (the user's, or a
        training loader's over a cohort larger than RAM, whose volumes are read again every
        epoch), so its first miss fills, at the pace the writers allow. Not when the entry
        was published since the read missed it (another thread's fill): no second whole
        read. The claim is the caller's to end, by handing the volume to :meth:`offer` or
        to :meth:`fill_later`, or by :meth:`release`.
        """
        tier: LocalTier | None = region.tier
        if tier is None or tier.broken is not None:
            return False
        state = tier_state()
        key = region.tier_key or state.key(region.uri, region.ctx)
        if not state.claim(key):
            return False
        if tier.entry_bytes(key) and self._has(tier, key) is not False:
            state.release(key)  # written since this read missed it: no second whole read
            return False
        return True

    def release(self, region: Region) -> None:
        """End a claim of :meth:`claim` whose volume was not offered (no-op if it was)."""
        tier_state().release(region.tier_key or tier_state().key(region.uri, region.ctx))

    def offer(self, region: Region, volume: np.ndarray) -> None:
        """A whole volume just read from storage: write it to the read's tier in the background.

        The volume is kept (not copied) until written: it must not change meanwhile.

        With a training loader's automatic tier (a cohort larger than the RAM cache: the tier
        is what serves its steady epochs), the whole copies the RAM cache and the loader's
        shared store keep of the volume are released once this process publishes the entry
        (the policy asks the tier first for a volume not held whole: they would be dead
        weight), and when the writers have no room for it (held whole, it would never be
        filled; released, a later miss fills it). A tier the user set keeps them: while the
        cohort fits RAM they are the faster copies.
        """
        tier: LocalTier | None = region.tier
        if tier is None or tier.broken is not None:
            return
        state = tier_state()
        key = region.tier_key or state.key(region.uri, region.ctx)
        automatic = _automatic()

        def offer() -> None:
            if self._has(tier, key) is False:
                self._publish(tier, key, volume, region.uri, automatic)

        if state.submit(key, offer) is None and key not in state.rejected and automatic:
            self._release(region.uri)

    def _publish(
        self, tier: LocalTier, key: str, volume: np.ndarray, uri: str, automatic: bool
    ) -> None:
        """Write ``volume`` as entry ``key``; an automatic tier's RAM copies then go."""
        if self.write(tier, key, volume) and automatic:
            self._release(uri)

    def _release(self, uri: str) -> None:
        """Drop the whole copies of ``uri`` that RAM and the loader's shared store keep."""
        self.cache.release(uri)
        store = get_shared_store()
        if store is not None:
            store.release(uri)

    def fill_later(self, region: Region, storage: TileDBSource) -> None:
        """Hand the fill claimed for ``region`` to a writer, which reads its volume whole.

        For a read that reads just its region (see ``ReadPolicy``): the writer reads the
        volume from ``storage`` and publishes it. A failed read is the fill's alone (the
        step's own read raises its own error): logged once per process, counted in
        :attr:`fill_errors`, and that volume is not tried again by this process.
        """
        tier: LocalTier | None = region.tier
        state = tier_state()
        key = region.tier_key or state.key(region.uri, region.ctx)
        if tier is None or tier.broken is not None:
            state.release(key)
            return
        scope = current_scope()  # the read's settings, for the writer's read
        automatic = _automatic()

        def fill() -> None:
            if self._has(tier, key) is not False:
                return
            try:
                with in_scope(scope):
                    volume = storage.read_whole(region)
            except Exception as exc:  # the step reads the region itself: the fill is lost
                self._fill_failed(key, exc)
                return
            self._publish(tier, key, volume, region.uri, automatic)

        state.submit(key, fill)

    def _fill_failed(self, key: str, exc: Exception) -> None:
        state = tier_state()
        with state.lock:
            state.rejected[key] = True
            self.fill_errors += 1
            first = self.fill_errors == 1
        if first:
            _log.warning(
                "radiobject's local read tier could not read a volume to fill it (%s: %s); "
                "reads of it go on from storage (further failures are counted in "
                "TierSource.fill_errors, not logged)",
                type(exc).__name__,
                exc,
            )

    def _has(self, tier: LocalTier, key: str) -> bool | None:
        """Whether entry ``key`` is in the tier (None: it failed to open, the tier is off now)."""
        try:
            return tier.open(key) is not None
        except Exception as exc:  # an intact entry blosc2 cannot open: not absent (see open)
            self._failed(tier, exc)
            return None

    def _failed(self, tier: LocalTier, exc: Exception) -> None:
        """The tier failed to open or decode an intact entry: count it, turn it off, warn once."""
        with self.cache._lock:
            self.cache.counters.tier_errors += 1
        tier_state().disable(tier, exc, failed="cannot read its intact entries")

    def write(
        self, tier: LocalTier, key: str, volume: np.ndarray, idle_s: float = FILL_IDLE_S
    ) -> bool:
        """Publish ``volume`` to the tier; a folder that cannot be written turns the tier off."""
        state = tier_state()
        try:
            written = tier.write(key, volume, idle_s=idle_s)
        except OSError as exc:
            state.disable(tier, exc)
            return False
        if not written:
            with state.lock:
                state.rejected[key] = True
        else:
            with self.cache._lock:
                self.cache.counters.tier_fills += 1
                self.cache.counters.bytes_to_tier += tier.entry_bytes(key)
        return written
