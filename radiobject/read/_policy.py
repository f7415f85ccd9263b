"""``ReadPolicy``: the one place that decides where a region's bytes come from.

For each region read it yields the chain of sources to try, in order, and decides the next
one only when the one before declined (so its bookkeeping, e.g. what the cache has seen, is
what it always was):

1. the local tier, when the read has one and no whole copy of the volume is in RAM; on a
   miss, when the tier's writers have room (:meth:`TierSource.claim
   <radiobject.read._sources.TierSource.claim>`), the volume is read whole once for the
   tier. By the read itself when it reads (nearly) all of it anyway: the whole-volume
   source below that would keep it, else the tier fill
   (:class:`~radiobject.read._sources.TierFillSource`, which keeps nothing in RAM), serves
   the region from that array and hands the same array to the tier's writer (no second
   TileDB read). Only for a volume larger than :data:`STEP_FILL_BYTES` (a CT of hundreds of
   MB, whose whole read would stall the step for seconds) does a region touching less than
   half of its tiles (:func:`fills_on_step`) read alone, while the writer reads the volume
   whole itself (:meth:`TierSource.fill_later
   <radiobject.read._sources.TierSource.fill_later>`, its tiles read twice). For BraTS-size
   volumes the step reads whole: one TileDB read per fill fills the tier sooner than a
   faster first epoch with two (quiet 2-core machine, 2 processes per variant, 20 epochs,
   a cohort four times the RAM cache: at 4 64³ patches per volume the tier was full by
   epoch 2 against 4, 1.86-1.95 s against 2.18-2.42 s to train; at 1 per volume on 96
   volumes by epoch 7 against 16, 4.7-4.9 s against 6.0-6.3 s); either way the tier fills
   as fast as its writers write;
2. whole volumes (the loader's shared store if it has one, else the RAM cache), when the
   region is the whole volume, or the plan prefers whole volumes (``whole_on_miss``), and
   what is read recently fits the cache (or the volume is held whole already);
3. tile blocks in the RAM cache, when fetching the missing tiles and keeping them is worth
   it (some tiles were cached, or touched before, or the region is tile-aligned, and the
   working set fits the cache);
4. TileDB, exactly the region, which always serves.

The policy also answers the questions the layers above ask before reading: whether a plan
fetches whole volumes on a miss (:meth:`ReadPolicy.prefer_whole_volume`, a dataset plan's
``whole_on_miss``), whether a training loader gets the automatic local tier
(:meth:`ReadPolicy.auto_tier_mb`), :meth:`ReadPolicy.served_locally` and
:meth:`ReadPolicy.whole_volume_budget`. The datasets say what they read; where the bytes
come from is decided here.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from pathlib import Path

import tiledb
from cachetools import LRUCache

from radiobject.config import get_config
from radiobject.read._cache import BlockCache
from radiobject.read._handles import open_array
from radiobject.read._local_tier import auto_budget_mb, default_tier_dir, local_tier, tier_state
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

__all__ = ["FITS_SHARE", "STEP_FILL_BYTES", "ReadPolicy", "fills_on_step"]

FITS_SHARE = 0.85  # of the whole-volume budget a dataset may fill (the rest: other reads)
# a volume up to this size (decompressed) is read whole by the read that fills the tier with
# it (a BraTS volume, 18 MB: ~15 ms of decode, and no second TileDB read for its fill); a
# larger one (a CT of hundreds of MB) only by a read touching half of its tiles
STEP_FILL_BYTES = 64 << 20


def fills_on_step(
    bounds: Bounds, tiles: tuple[int, ...], shape: tuple[int, ...], itemsize: int
) -> bool:
    """Whether the read of ``bounds`` that misses the tier should read its volume whole itself.

    True for a volume of at most :data:`STEP_FILL_BYTES` and for a region touching at least
    half of its volume's tiles: the one whole read serves the region and the fill (no
    second TileDB read, so the tier fills sooner: see the module's notes). Else (a volume
    of hundreds of MB, whose whole read would stall the step for seconds) the region is
    read alone and a tier writer reads the volume.

    >>> fills_on_step(((0, 64),) * 3, (48, 48, 48), (240, 240, 155), 2)  # BraTS, 18 MB
    True
    >>> fills_on_step(((0, 64),) * 3, (64, 64, 64), (1024, 1024, 400), 2)  # CT, 800 MB
    False
    >>> fills_on_step(((0, 900), (0, 1024), (0, 400)), (64, 64, 64), (1024, 1024, 400), 2)
    True
    """
    volume_bytes = itemsize
    touched = total = 1
    for (lo, hi), t, n in zip(bounds, tiles, shape, strict=True):
        volume_bytes *= n
        touched *= (hi - 1) // t - lo // t + 1
        total *= -(-n // t)
    return volume_bytes <= STEP_FILL_BYTES or 2 * touched >= total


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
        self.tier = TierSource(cache)
        self.fill = TierFillSource(cache, self.storage, self.tier)
        self.shared = SharedStoreSource(cache, self.storage, self.tier)
        self.ram = RamVolumeSource(cache, self.storage, self.tier)
        self.blocks = BlockSource(cache, self.storage)
        # (uri, box, reads per volume) -> whether those reads touch most of the volume
        self._reads_most: LRUCache[tuple[str, tuple[int, ...], int], bool] = LRUCache(4096)

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
                yield from self._fill(region)
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
            yield from self._fill(region)
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

    def _fill(self, region: Region) -> Iterator[Source]:
        """The fill claimed after ``region`` missed the tier: by this read, or by a writer.

        The region from its volume read whole now (:class:`TierFillSource`, which hands the
        volume to the writer) when :func:`fills_on_step`; else a writer reads the volume
        and the chain goes on to read the region alone (the claim passes to the writer: the
        release when the chain closes does nothing).
        """
        info = region.info
        if fills_on_step(region.bounds, info.tiles, info.shape, info.dtype.itemsize):
            yield self.fill
        else:
            self.tier.fill_later(region, self.storage)

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

    def prefer_whole_volume(
        self,
        uri: str,
        ctx: tiledb.Ctx,
        box: Sequence[int],
        reads_per_volume: int,
        dataset_bytes: int,
    ) -> bool:
        """Whether a miss of a dataset's read of ``uri`` should fetch the whole volume at once.

        The plan's ``whole_on_miss``, decided here for a dataset whose items read boxes of
        ``box`` voxels, ``reads_per_volume`` of them per volume and epoch, over volumes of
        ``dataset_bytes`` in all (decompressed). True while those volumes fit the
        whole-volume budget together (:data:`FITS_SHARE` of :meth:`whole_volume_budget`):
        the first epoch reads whole volumes and the later ones are served from memory. Else
        true when the reads of one volume are expected to touch at least half of its tiles
        per epoch: one query is then much cheaper than many small ones.

        >>> import numpy as np, tempfile, os
        >>> from radiobject import TileConfig, Volume
        >>> vol = Volume.from_numpy(os.path.join(tempfile.mkdtemp(), "v"),  # 6³ tiles
        ...                         np.zeros((96, 96, 96), np.uint16),
        ...                         tile=TileConfig(extents=(16, 16, 16)))
        >>> policy = ReadPolicy(BlockCache())
        >>> policy.prefer_whole_volume(vol.uri, vol.ctx, (16, 16, 16), 1, 1 << 20)  # 1 MB fit
        True
        >>> tb = 10 << 40  # a cohort larger than RAM: whole volumes when most tiles are read
        >>> [policy.prefer_whole_volume(vol.uri, vol.ctx, (16, 16, 16), n, tb) for n in (1, 20)]
        [False, True]
        """
        if dataset_bytes <= FITS_SHARE * self.whole_volume_budget():
            return True
        key = (uri, tuple(box), reads_per_volume)
        most = self._reads_most.get(key)
        if most is None:
            info = open_array(uri, ctx)[1]
            per_read = 1
            total = 1
            for b, t, n in zip(box, info.tiles, info.shape, strict=False):
                per_read *= min(-(-b // t) + 1, -(-n // t))  # tiles a box touches at most
            for n, t in zip(info.shape, info.tiles, strict=True):
                total *= -(-n // t)
            most = self._reads_most[key] = reads_per_volume * per_read >= 0.5 * total
        return most

    def auto_tier_mb(self, cohort_bytes: int) -> int:
        """The automatic local tier budget (MiB) of a training loader over ``cohort_bytes``.

        0 (no tier) unless ``ReadConfig.local_tier_mb`` is ``None`` (the user's setting
        decides otherwise) and the cohort (decompressed, as stored) exceeds the RAM cache
        (:func:`~radiobject.read._local_tier.auto_budget_mb`). The loader's dataset keeps
        the budget for its own reads (``RegionRead.auto_tier_mb``): nothing process-wide
        changes.

        >>> policy = ReadPolicy(BlockCache())
        >>> policy.auto_tier_mb(1 << 20)  # 1 MB fits the default RAM cache
        0
        """
        read = get_config().read
        if read.local_tier_mb is not None:
            return 0
        folder = Path(read.local_tier_dir or default_tier_dir())
        return auto_budget_mb(cohort_bytes, read.cache_mb * (1 << 20), folder)

    def whole_volume_budget(self) -> int:
        """Bytes this process may keep as whole volumes: its loader's shared store, or cache."""
        store = get_shared_store()
        return store.budget_bytes if store is not None else self.cache.maxsize
