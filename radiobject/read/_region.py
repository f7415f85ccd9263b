"""Region reads: voxels of a volume in a box, from the block cache, the local tier or storage.

A region read asks TileDB only for the tiles the block cache (:mod:`radiobject.read._cache`)
lacks, in one query, and assembles the answer from blocks; whole volumes, regions too
large for the cache, and one-off unaligned regions take their own strategies. The storage
queries themselves, their overlap meter and the local tier's fills live here too. Handles
come from :mod:`radiobject.read._handles`; the names of both modules are re-exported.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tiledb
from cachetools import LRUCache

from radiobject._errors import NotFoundError
from radiobject._process import Resource
from radiobject._tiledb_errors import tiledb_errors
from radiobject.config import get_config
from radiobject.read._cache import BlockCache, CacheCounters, block_cache
from radiobject.read._handles import _HANDLES as _HANDLES
from radiobject.read._handles import ArrayInfo, forget_array, open_array
from radiobject.read._local_tier import FILL_IDLE_S, LocalTier, local_tier, tier_state
from radiobject.read._shared_store import get_shared_store

__all__ = [
    "ArrayInfo",
    "BlockCache",
    "CacheCounters",
    "block_cache",
    "forget_array",
    "open_array",
    "read_region",
    "served_locally",
    "whole_volume_budget",
]

Bounds = tuple[tuple[int, int], ...]


class ReadOverlap:
    """Counts the storage queries of this process, and those that overlapped another one.

    Every storage query enters and leaves this meter (a lock and a few integers: cheap
    enough to stay on). A query *overlapped* when another query of this process was in
    flight at any moment between its start and its end (threads reading volumes at once);
    it is counted in ``overlapped`` when it ends. ``queries`` counts queries started.
    Both are monotonic: subtract two snapshots.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local = threading.local()
        self.inflight = 0
        self.queries = 0
        self.overlapped = 0
        self._last_overlap = -1  # number of the latest query that started beside another
        self.next_trim = -1  # ``queries`` at which to call on_many_queries next (-1: not yet)

    def snapshot(self) -> tuple[int, int]:
        """``(queries, overlapped)`` now."""
        with self._lock:
            return self.queries, self.overlapped

    def __enter__(self) -> None:
        with self._lock:
            number = self.queries
            self.queries += 1
            if self.inflight:  # it overlaps every query in flight, and they overlap it
                self._last_overlap = number
            self.inflight += 1
        self._local.number = number
        self._local.start = time.perf_counter_ns()

    def __exit__(self, *exc: object) -> None:
        number = self._local.number
        cache = block_cache()  # the query's time, for the loader's "where the time goes"
        with cache._lock:
            cache.counters.storage_ns += time.perf_counter_ns() - self._local.start
        with self._lock:
            self.inflight -= 1
            # a query that started beside another, or during which another started
            if self._last_overlap >= number:
                self.overlapped += 1


# per process: a forked child counts its own queries (none in flight), under its own lock
_READ_OVERLAP: Resource[ReadOverlap] = Resource("storage query meter", ReadOverlap)


def read_overlap() -> ReadOverlap:
    """This process's :class:`ReadOverlap` meter of storage queries."""
    return _READ_OVERLAP.get()


SPLIT_BYTES = 4 << 20  # a read at least this large is split in slabs, read on threads at once


def _read_into(handle: tiledb.Array, info: ArrayInfo, bounds: Bounds) -> np.ndarray | None:
    """``bounds`` read by TileDB straight into a fresh array, or None if unsupported.

    The array is allocated here in the volume's cell order (C, or Fortran for column-major
    arrays, whose tiles then copy in long runs): no buffer size estimate, no result buffers
    of TileDB-Py's, no second copy. This drives TileDB-Py's core query object
    (``tiledb.libtiledb.Query``, whose submit releases the GIL). A read of
    :data:`SPLIT_BYTES` or more is cut along its slowest axis, on tile edges, into
    ``ReadConfig.concurrency`` slabs, each a contiguous part of the array that one query
    fills, on threads at once: TileDB decodes and copies one query's tiles mostly on one
    thread. ``Array.read_subarray`` (row-major only) is the caller's fallback when the
    object is missing or a query is left incomplete.
    """
    try:
        import tiledb.libtiledb as lt
    except ImportError:
        return None
    if not all(hasattr(lt, name) for name in ("Query", "QueryStatus", "LayoutType")):
        return None
    shape = tuple(hi - lo for lo, hi in bounds)
    out = np.empty(shape, dtype=info.dtype, order="F" if info.order == "F" else "C")
    parts = get_config().read.concurrency if out.nbytes >= SPLIT_BYTES else 1
    slabs = _slabs(bounds, info, out, parts)
    others = [_SLAB_POOL.get().submit(_fill, handle, info, b, view) for b, view in slabs[1:]]
    complete = _fill(handle, info, *slabs[0])
    complete = all([complete, *(f.result() for f in others)])  # every slab, even after one
    return out if complete else None


def _fill(handle: tiledb.Array, info: ArrayInfo, bounds: Bounds, view: np.ndarray) -> bool:
    """One core query writing ``bounds`` into the contiguous ``view``; whether it completed."""
    import tiledb.libtiledb as lt

    query = lt.Query(handle.ctx, handle.array, lt.QueryType.READ)
    query.layout = lt.LayoutType.COL_MAJOR if info.order == "F" else lt.LayoutType.ROW_MAJOR
    sub = tiledb.Subarray(handle, ctx=handle.ctx)
    sub.add_ranges([[(lo, hi - 1)] for lo, hi in bounds])
    query.set_subarray(sub)
    query.set_data_buffer(info.attr, view, view.size)
    query._submit()
    return bool(query.query_status() == lt.QueryStatus.COMPLETE)


def _slabs(
    bounds: Bounds, info: ArrayInfo, out: np.ndarray, parts: int
) -> list[tuple[Bounds, np.ndarray]]:
    """``bounds`` cut into up to ``parts`` slabs, each with its (contiguous) view of ``out``.

    The cuts fall on tile edges along the slowest axis of ``out``: the first for C order,
    the last for Fortran order.
    """
    axis = len(bounds) - 1 if info.order == "F" else 0
    lo, hi = bounds[axis]
    tile = info.tiles[axis]
    edges = list(range((lo // tile + 1) * tile, hi, tile))  # inner tile edges
    parts = min(parts, len(edges) + 1)
    if parts < 2:
        return [(bounds, out)]
    cuts = [lo] + [edges[round(i * (len(edges) + 1) / parts) - 1] for i in range(1, parts)] + [hi]
    slabs = []
    for a, b in itertools.pairwise(cuts):
        part = tuple((a, b) if d == axis else r for d, r in enumerate(bounds))
        index = tuple(slice(a - lo, b - lo) if d == axis else slice(None) for d in range(out.ndim))
        slabs.append((part, out[index]))
    return slabs


def _slab_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=8, thread_name_prefix="radiobject-slab")


_SLAB_POOL: Resource[ThreadPoolExecutor] = Resource("slab reader threads", _slab_pool)


# (every n queries, a call): set by radiobject.read._stats to trim TileDB's record of queries
on_many_queries: tuple[int, Callable[[], None]] | None = None


def _after_query() -> None:
    hook = on_many_queries
    meter = read_overlap()
    if hook is None or 0 <= meter.next_trim > meter.queries:
        return
    every, trim = hook
    with meter._lock:
        queries = meter.queries
        due = 0 <= meter.next_trim <= queries
        if meter.next_trim < 0 or due:  # another thread may have moved it on meanwhile
            meter.next_trim = queries + every
    if due:
        trim()


def _query(handle: tiledb.Array, info: ArrayInfo, bounds: Bounds) -> np.ndarray:
    try:
        return _query_once(handle, info, bounds)
    except NotFoundError:
        # a handle kept open on an array removed or rewritten since: open it anew, so the
        # read (or its error, "could not open volume") is what a fresh process gets
        forget_array(info.uri)
        handle, info = open_array(info.uri, handle.ctx)
        return _query_once(handle, info, bounds)
    finally:
        _after_query()


def _query_once(handle: tiledb.Array, info: ArrayInfo, bounds: Bounds) -> np.ndarray:
    # both ways release the GIL while TileDB works, so threads read in parallel
    with read_overlap(), tiledb_errors(info.uri, "read volume"):
        out = _read_into(handle, info, bounds)
        if out is not None:
            return out
        sub = tiledb.Subarray(handle, ctx=handle.ctx)
        sub.add_ranges([[(lo, hi - 1)] for lo, hi in bounds])
        result: np.ndarray = handle.read_subarray(sub)[info.attr]
        return result


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


def _fetch_lock(uri: str) -> threading.Lock:
    return _FETCH_LOCKS.get()(uri)


def served_locally(uri: str, auto_tier_mb: int = 0) -> bool:
    """Whether reads of ``uri`` are served by the local tier now, without a TileDB query.

    ``auto_tier_mb`` is the reader's automatic tier budget (see :func:`read_region`).

    True when the tier is on and this process has the volume's entry open (and no whole copy
    in the RAM cache takes precedence). Such reads decode blosc2 blocks holding the GIL:
    reading several of them on threads only adds hand-offs, while TileDB queries run in
    parallel. Cheap (a few dictionary lookups): nothing is opened or checked here.
    """
    tier = local_tier(auto_tier_mb)
    if tier is None:
        return False
    key = tier_state().known_key(uri)
    return key is not None and tier.is_open(key) and block_cache().get((uri, _WHOLE)) is None


def _tile_range(bounds: Bounds, tiles: tuple[int, ...]) -> tuple[list[int], list[int]]:
    first = [lo // t for (lo, _), t in zip(bounds, tiles, strict=True)]
    last = [(hi - 1) // t for (_, hi), t in zip(bounds, tiles, strict=True)]
    return first, last


def read_region(
    uri: str,
    ctx: tiledb.Ctx,
    bounds: Bounds,
    *,
    whole_on_miss: bool = False,
    auto_tier_mb: int = 0,
) -> np.ndarray:
    """Voxels of ``uri`` in the half-open ``bounds`` (one (start, stop) per axis).

    Served from the block cache where it can be; the tiles it lacks are read from storage
    in one query and cached. A region none of whose tiles was read before, and that does not
    fall on tile edges, is read exactly and not cached (one-off reads skip the larger
    tile-aligned fetch); touching those tiles again caches them, while the volumes read
    recently fit the cache (:meth:`BlockCache.working_set_fits`). Once they do not, an
    unaligned region with a missing tile is read exactly and nothing is admitted: a later
    epoch never reads more from storage than the first, however large the cohort.

    With ``whole_on_miss`` a miss fetches every tile of the volume at once
    and keeps it as one block (cheaper when many more reads of the volume follow, as with
    many patches per volume), while what this process reads fits its cache (always for a
    loader's shared store, which keeps its own budget). A whole volume asked for is kept the
    same way while the volumes read recently fit the cache, and read straight into the
    answer (no copy kept) once they do not. Regions too large for the cache are read
    straight from storage.

    The local tier serves and fills the read when ``ReadConfig.local_tier_mb`` turns it on,
    or, with that setting at ``None``, when the reader passes its automatic budget in
    ``auto_tier_mb`` (a training loader's dataset over a cohort larger than the RAM cache):
    the tier is that reader's decision, not a switch of the process.
    """
    handle, info = open_array(uri, ctx)
    cache = block_cache()
    tier = local_tier(auto_tier_mb)
    if tier is not None and cache.get((uri, _WHOLE)) is None:
        out = _read_tier(tier, cache, handle, info, ctx, bounds)
        if out is not None:
            return out
    tiles = info.tiles
    first, last = _tile_range(bounds, tiles)
    n_tiles = int(np.prod([b - a + 1 for a, b in zip(first, last, strict=True)]))
    tile_bytes = int(np.prod(tiles)) * info.dtype.itemsize
    counters = cache.counters
    volume_bytes = info.dtype.itemsize * int(np.prod(info.shape))
    whole_region = all(lo == 0 and hi == n for (lo, hi), n in zip(bounds, info.shape, strict=True))
    if whole_region and volume_bytes * 4 <= cache.maxsize:
        # kept whole (one more copy) while the volumes read recently fit the cache; once
        # they do not (a scan of a cohort larger than the cache), read straight into the
        # answer: a volume admitted now would be evicted before it is read again
        cache.touch_volume(uri, volume_bytes)
        if (
            whole_on_miss
            or get_shared_store() is not None
            or cache.get((uri, _WHOLE)) is not None
            or cache.working_set_fits()
        ):
            return _read_via_whole(cache, handle, info, bounds, n_tiles, tier)
        return _read_uncached(cache, handle, info, bounds, n_tiles)
    if n_tiles * tile_bytes * 4 > cache.maxsize:
        return _read_uncached(cache, handle, info, bounds, n_tiles)

    keys = list(itertools.product(*[range(a, b + 1) for a, b in zip(first, last, strict=True)]))
    first_touch = not cache.seen_before([(uri, k) for k in keys])
    cache.touch_volume(uri, volume_bytes)
    fits = cache.working_set_fits()
    # a loader's shared store keeps whole volumes within its own budget; this process's
    # cache only while what it reads fits (or for a volume it still holds whole)
    if (
        whole_on_miss
        and volume_bytes * 4 <= cache.maxsize
        and (fits or get_shared_store() is not None or cache.get((uri, _WHOLE)) is not None)
    ):
        return _read_via_whole(cache, handle, info, bounds, n_tiles, tier)
    blocks = {k: cache.get((uri, k)) for k in keys}
    missing = [k for k, v in blocks.items() if v is None]
    aligned = _tile_aligned(bounds, tiles, info.shape)
    if missing and not fits and not aligned:
        # the tiles read recently do not fit the cache: a block admitted now is likely evicted
        # before its next use, so read exactly the region rather than the larger tile-aligned
        # box (a tile-aligned region costs the same either way, and is admitted)
        return _read_uncached(cache, handle, info, bounds, n_tiles)
    if len(missing) == len(keys) and not aligned and first_touch:
        # first touch of these tiles: read just the region (a tile-aligned fetch decompresses
        # and copies more); the tiles are cached when a later read touches them again
        return _read_uncached(cache, handle, info, bounds, n_tiles)
    if missing:
        lo_t = [min(k[d] for k in missing) for d in range(len(tiles))]
        hi_t = [max(k[d] for k in missing) for d in range(len(tiles))]
        fetch = tuple(
            (lo * t, min((hi + 1) * t, s))
            for lo, hi, t, s in zip(lo_t, hi_t, tiles, info.shape, strict=True)
        )
        _fetch_into_cache(cache, handle, info, fetch, blocks)
    with cache._lock:
        counters.hits += n_tiles - len(missing)
        counters.misses += len(missing)
        missed = set(missing)
        counters.bytes_from_cache += sum(
            b.nbytes for k in keys if k not in missed and (b := blocks[k]) is not None
        )

    out = np.empty(tuple(hi - lo for lo, hi in bounds), dtype=info.dtype)
    for k, block in blocks.items():
        assert block is not None  # every missing block was fetched
        src, dst = [], []
        for d, (lo, hi) in enumerate(bounds):
            t0 = k[d] * tiles[d]
            a, b = max(lo, t0), min(hi, t0 + block.shape[d])
            src.append(slice(a - t0, b - t0))
            dst.append(slice(a - lo, b - lo))
        out[tuple(dst)] = block[tuple(src)]
    return out


def _read_uncached(
    cache: BlockCache, handle: tiledb.Array, info: ArrayInfo, bounds: Bounds, n_tiles: int
) -> np.ndarray:
    """Exactly ``bounds`` from storage, not cached; its ``n_tiles`` tiles count as misses."""
    out = _query(handle, info, bounds)
    with cache._lock:
        cache.counters.misses += n_tiles
        cache.counters.bytes_from_storage += out.nbytes
        cache.counters.storage_queries += 1
    return out


def _tile_aligned(bounds: Bounds, tiles: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether ``bounds`` starts and ends on tile edges (or the volume's end)."""
    return all(
        lo % t == 0 and (hi % t == 0 or hi == n)
        for (lo, hi), t, n in zip(bounds, tiles, shape, strict=True)
    )


_WHOLE = (-1,)  # cache key of a volume held as one block


def whole_volume_budget() -> int:
    """Bytes this process may keep as whole volumes: its loader's shared store, or its cache."""
    store = get_shared_store()
    return store.budget_bytes if store is not None else block_cache().maxsize


def _read_via_whole(
    cache: BlockCache,
    handle: tiledb.Array,
    info: ArrayInfo,
    bounds: Bounds,
    n_tiles: int,
    tier: LocalTier | None,
) -> np.ndarray:
    """Serve ``bounds`` from the whole volume, held in the cache as one block.

    The first read of the volume fetches all of it in one query (one thread does; threads
    wanting the same volume wait for it), and offers it to the read's ``tier``. Hits and
    misses count the tiles ``bounds`` touches.
    """
    store = get_shared_store()
    key = (info.uri, _WHOLE)
    volume = cache.get(key) if store is None else None
    hit = volume is not None
    if store is not None:  # a loader's workers share whole volumes through shared memory

        def load() -> np.ndarray:
            data = _query(handle, info, tuple((0, n) for n in info.shape))
            with cache._lock:
                cache.counters.storage_queries += 1
                cache.counters.bytes_from_storage += data.nbytes
            _offer_tier(tier, cache, handle, info, data)
            return data

        volume, hit = store.fetch(info.uri, load)
    elif volume is None:
        with _fetch_lock(info.uri):
            volume = cache.get(key)
            hit = volume is not None
            if volume is None:
                volume = _query(handle, info, tuple((0, n) for n in info.shape))
                cache.put(key, volume)
                with cache._lock:
                    cache.counters.storage_queries += 1
                    cache.counters.bytes_from_storage += volume.nbytes
                _offer_tier(tier, cache, handle, info, volume)
    out = volume[tuple(slice(lo, hi) for lo, hi in bounds)].copy()
    with cache._lock:
        if hit:
            cache.counters.hits += n_tiles
            cache.counters.bytes_from_cache += out.nbytes
        else:
            cache.counters.misses += n_tiles
    return out


def _offer_tier(
    tier: LocalTier | None,
    cache: BlockCache,
    handle: tiledb.Array,
    info: ArrayInfo,
    volume: np.ndarray,
) -> None:
    """A whole volume just read from storage: write it to ``tier`` in the background."""
    if tier is None:
        return
    state = tier_state()
    key = state.key(info.uri, handle.ctx)

    def offer() -> None:
        if _tier_has(tier, cache, key) is False:
            _write_tier(tier, cache, key, volume)

    state.submit(key, offer)


def _tier_has(tier: LocalTier, cache: BlockCache, key: str) -> bool | None:
    """Whether entry ``key`` is in the tier (None: it failed to open, the tier is off now)."""
    try:
        return tier.open(key) is not None
    except Exception as exc:  # an intact entry blosc2 cannot open: not absent (see open)
        _tier_failed(tier, cache, exc)
        return None


def _tier_failed(tier: LocalTier, cache: BlockCache, exc: Exception) -> None:
    """The tier failed to open or decode an intact entry: count it, turn it off, warn once."""
    with cache._lock:
        cache.counters.tier_errors += 1
    tier_state().disable(tier, exc, failed="cannot read its intact entries")


def _fetch_into_cache(
    cache: BlockCache,
    handle: tiledb.Array,
    info: ArrayInfo,
    fetch: Bounds,
    blocks: dict[tuple[int, ...], np.ndarray | None],
) -> None:
    """Read the tile-aligned box ``fetch`` in one query, cut it into blocks, cache them."""
    tiles = info.tiles
    data = _query(handle, info, fetch)
    lo_t = [lo // t for (lo, _), t in zip(fetch, tiles, strict=True)]
    hi_t = [(hi - 1) // t for (_, hi), t in zip(fetch, tiles, strict=True)]
    for k in itertools.product(*[range(a, b + 1) for a, b in zip(lo_t, hi_t, strict=True)]):
        sl = tuple(
            slice(
                k[d] * tiles[d] - fetch[d][0],
                min((k[d] + 1) * tiles[d], info.shape[d]) - fetch[d][0],
            )
            for d in range(len(tiles))
        )
        block = np.ascontiguousarray(data[sl])
        if k in blocks and blocks[k] is None:
            blocks[k] = block
        cache.put((info.uri, k), block)
    with cache._lock:
        cache.counters.storage_queries += 1
        cache.counters.bytes_from_storage += data.nbytes


def _read_tier(
    tier: LocalTier,
    cache: BlockCache,
    handle: tiledb.Array,
    info: ArrayInfo,
    ctx: tiledb.Ctx,
    bounds: Bounds,
) -> np.ndarray | None:
    """``bounds`` from the local tier, or None (a miss).

    From a volume's second miss on, a miss queues a background fill of the whole volume: a
    volume read once is not worth a whole read.
    """
    state = tier_state()
    key = state.key(info.uri, ctx)
    try:
        out = tier.read(key, bounds)
    except Exception as exc:  # not a missing entry (that is None): see LocalTier.open
        _tier_failed(tier, cache, exc)
        state.warn_pending()  # a reading thread: warn now
        return None
    with cache._lock:
        if out is not None:
            cache.counters.tier_hits += 1
            cache.counters.bytes_from_tier += out.nbytes
        else:
            cache.counters.tier_misses += 1
    if out is None and state.worth_filling(key):

        def fill() -> None:
            if _tier_has(tier, cache, key) is not False:  # filled meanwhile, or failing
                return
            volume = _query(handle, info, tuple((0, n) for n in info.shape))
            with cache._lock:
                cache.counters.storage_queries += 1
                cache.counters.bytes_from_storage += volume.nbytes
            _write_tier(tier, cache, key, volume)

        state.submit(key, fill)
    return out


def _write_tier(tier: LocalTier, cache: BlockCache, key: str, volume: np.ndarray) -> None:
    """Publish ``volume`` to the tier; a folder that cannot be written turns the tier off."""
    state = tier_state()
    try:
        written = tier.write(key, volume, idle_s=FILL_IDLE_S)
    except OSError as exc:
        state.disable(tier, exc)
        return
    if not written:
        with state.lock:
            state.rejected[key] = True
    else:
        with cache._lock:
            cache.counters.tier_fills += 1
            cache.counters.bytes_to_tier += tier.entry_bytes(key)


def fill_local_tier(uri: str, ctx: tiledb.Ctx) -> bool:
    """Put the whole volume ``uri`` in the local tier now, unless it is there already.

    Returns whether it was written (False: already there, or larger than the budget).

    Raises:
        ConfigurationError: the tier is off (``ReadConfig.local_tier_mb`` is 0 or None: the
            automatic tier is a training loader's own, never filled ahead of time).
        OSError: the tier's folder cannot be written.
    """
    from radiobject._errors import ConfigurationError

    tier = local_tier()
    if tier is None:
        state = tier_state()
        with state.lock:
            broken = [t.broken for t in state.tiers.values() if t.broken is not None]
        why = f"it broke in this process ({broken[0]})" if broken else "it is off"
        raise ConfigurationError(
            f"cannot fill the local read tier with {uri}: {why}; turn it on with "
            "configure(read=ReadConfig(local_tier_mb=...)) and a writable local_tier_dir"
        )
    handle, info = open_array(uri, ctx)
    key = tier_state().key(uri, ctx)
    if tier.entry_bytes(key) and tier.open(key) is not None:  # on disk, not just held open
        return False
    cache = block_cache()
    volume = _query(handle, info, tuple((0, n) for n in info.shape))
    with cache._lock:
        cache.counters.storage_queries += 1
        cache.counters.bytes_from_storage += volume.nbytes
    written = tier.write(key, volume)
    if written:
        with cache._lock:
            cache.counters.tier_fills += 1
            cache.counters.bytes_to_tier += tier.entry_bytes(key)
    return written
