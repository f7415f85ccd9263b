"""``ReadPolicy``: the one place that decides where a region's bytes come from.

For each region read it yields the chain of sources to try, in order, and decides the next
one only when the one before declined (so its bookkeeping, e.g. what the cache has seen, is
what it always was):

1. the local tier, when the read has one and no whole copy of the volume is in RAM; on a
   miss worth filling (:meth:`TierSource.claim <radiobject.read._sources.TierSource.claim>`:
   the user's tier, a plan that reads most of its volume, or a volume missed before) the
   volume is read whole once, by the whole-volume source below that would keep it, else by
   the tier fill (:class:`~radiobject.read._sources.TierFillSource`, which keeps nothing in
   RAM); the region is served from that array and the same array is handed to the tier's
   writer: a fill costs no second TileDB read;
2. whole volumes (the loader's shared store if it has one, else the RAM cache), when the
   region is the whole volume, or the plan prefers whole volumes (``whole_on_miss``), and
   what is read recently fits the cache (or the volume is held whole already);
3. tile blocks in the RAM cache, when fetching the missing tiles and keeping them is worth
   it (some tiles were cached, or touched before, or the region is tile-aligned, and the
   working set fits the cache);
4. TileDB, exactly the region, which always serves.

The policy also answers the two questions the layers above ask before reading:
:meth:`ReadPolicy.served_locally` and :meth:`ReadPolicy.whole_volume_budget`.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

from radiobject.read._cache import BlockCache
from radiobject.read._local_tier import local_tier, tier_state
from radiobject.read._shared_store import get_shared_store
from radiobject.read._source import Bounds, Region, Source
from radiobject.read._sources import (
    BlockSource,
    RamVolumeSource,
    SharedStoreSource,
    TierFillSource,
    TierSource,
    tile_keys,
)
from radiobject.read._storage import TileDBSource

__all__ = ["ReadPolicy"]


def _tile_aligned(bounds: Bounds, tiles: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether ``bounds`` starts and ends on tile edges (or the volume's end)."""
    return all(
        lo % t == 0 and (hi % t == 0 or hi == n)
        for (lo, hi), t, n in zip(bounds, tiles, shape, strict=True)
    )


class ReadPolicy:
    """Chooses, per region, the chain of sources a reader tries (see the module's text).

    Args:
        cache: the process's block cache (its budget and working set inform the choice).
        first: sources tried before all others, in order (a new kind of source is a new
            class placed here, never a branch in a read function).

    >>> from radiobject.read._cache import BlockCache
    >>> policy = ReadPolicy(BlockCache())
    >>> [s.name for s in policy.sources]
    ['local tier', 'tier fill', 'shared store', 'ram volumes', 'ram blocks', 'tiledb']
    """

    def __init__(self, cache: BlockCache, first: tuple[Source, ...] = ()) -> None:
        self.cache = cache
        self.first = first
        self.storage = TileDBSource(cache)
        self.tier = TierSource(cache, self.storage)
        self.fill = TierFillSource(cache, self.storage, self.tier)
        self.shared = SharedStoreSource(cache, self.storage, self.tier)
        self.ram = RamVolumeSource(cache, self.storage, self.tier)
        self.blocks = BlockSource(cache, self.storage)

    @property
    def sources(self) -> tuple[Source, ...]:
        """Every source the policy may choose, in the order it would try them."""
        return (
            *self.first,
            self.tier,
            self.fill,
            self.shared,
            self.ram,
            self.blocks,
            self.storage,
        )

    def chain(self, region: Region) -> Generator[Source, None, None]:
        """The sources to try for ``region``, each decided when the one before declined.

        Close the generator when done (the reader does): a fill claimed after a tier miss
        and not used is released then.
        """
        yield from self.first
        fill = False
        try:
            if region.tier is not None and not self.ram.holds(region.uri):
                yield self.tier
                # a miss: read the volume whole now (once) if it is worth keeping in the
                # tier and the writers have room, and hand that same array to the writer
                fill = self.tier.claim(region)
            yield from self._after_tier(region, fill)
        finally:
            if fill:
                self.tier.release(region)  # no-op once the volume was handed over

    def _after_tier(self, region: Region, fill: bool) -> Iterator[Source]:
        """The chain after the local tier; ``fill``: a fill was claimed (read it whole)."""
        cache, uri, info = self.cache, region.uri, region.info
        itemsize = info.dtype.itemsize
        volume_bytes = itemsize
        for n in info.shape:
            volume_bytes *= n
        maxsize = cache.maxsize
        whole = self.shared if get_shared_store() is not None else self.ram
        if region.whole and volume_bytes * 4 <= maxsize:
            # kept whole (one more copy) while the volumes read recently fit the cache; once
            # they do not (a scan of a cohort larger than the cache), read straight into the
            # answer: a volume admitted now would be evicted before it is read again
            cache.touch_volume(uri, volume_bytes)
            if (
                region.whole_on_miss
                or whole is self.shared
                or self.ram.holds(uri)
                or cache.working_set_fits()
            ):
                yield whole
            if fill:
                yield self.fill
            yield self.storage
            return
        if fill and region.whole:
            yield self.fill
        keys = tile_keys(region.bounds, info.tiles)
        tile_bytes = itemsize
        for t in info.tiles:
            tile_bytes *= t
        if len(keys) * tile_bytes * 4 > maxsize:  # too large for the cache: read it straight
            if fill:
                yield self.fill
            yield self.storage
            return
        first_touch = not cache.seen_before([(uri, k) for k in keys])
        cache.touch_volume(uri, volume_bytes)
        fits = cache.working_set_fits()
        # a loader's shared store keeps whole volumes within its own budget; this process's
        # cache only while what it reads fits (or for a volume it still holds whole)
        if (
            region.whole_on_miss
            and volume_bytes * 4 <= maxsize
            and (fits or whole is self.shared or self.ram.holds(uri))
        ):
            yield whole
        if fill:
            yield self.fill  # the region from the volume read whole, which fills the tier
        missing = self.blocks.missing(region, keys)
        aligned = _tile_aligned(region.bounds, info.tiles, info.shape)
        # read exactly the region (nothing admitted) rather than fetch and keep the larger
        # tile-aligned box when the tiles read recently do not fit the cache (a block
        # admitted now is likely evicted before its next use; an aligned region costs the
        # same either way), or on the first touch of these tiles (a later read touching them
        # again caches them)
        exact = missing and not aligned and (not fits or (missing == len(keys) and first_touch))
        if not exact:
            yield self.blocks
        yield self.storage

    def served_locally(self, uri: str, auto_tier_mb: int = 0) -> bool:
        """Whether reads of ``uri`` are served by the local tier now, without a TileDB query.

        ``auto_tier_mb`` is the reader's automatic tier budget (see ``read_region``).

        True when the tier is on and this process has the volume's entry open (and no whole
        copy in the RAM cache takes precedence). Such reads decode blosc2 blocks holding the
        GIL: reading several of them on threads only adds hand-offs, while TileDB queries
        run in parallel. Cheap (a few dictionary lookups): nothing is opened or checked.
        """
        tier = local_tier(auto_tier_mb)
        if tier is None:
            return False
        key = tier_state().known_key(uri)
        return key is not None and tier.is_open(key) and not self.ram.holds(uri)

    def whole_volume_budget(self) -> int:
        """Bytes this process may keep as whole volumes: its loader's shared store, or cache."""
        store = get_shared_store()
        return store.budget_bytes if store is not None else self.cache.maxsize
