"""TileDB, the system of record, as a read :class:`~radiobject.read._source.Source`.

:class:`TileDBSource` reads a region (local or S3) straight into the answer with TileDB-Py's
core query object, in slabs on threads for large reads (:data:`SPLIT_BYTES`), and reads
whole volumes for the sources that keep them (RAM, the shared store, the local tier). Every
query passes the overlap meter (:class:`ReadOverlap`) and one error translation, and a
handle kept open on an array removed or rewritten since is opened anew.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import tiledb

from radiobject._errors import NotFoundError
from radiobject._process import Resource
from radiobject._tiledb_errors import tiledb_errors
from radiobject.config import get_config
from radiobject.read._cache import BlockCache, block_cache, fresh_array
from radiobject.read._handles import ArrayInfo, forget_array, open_array
from radiobject.read._source import Bounds, Region, Source

__all__ = ["SPLIT_BYTES", "ReadOverlap", "TileDBSource", "read_overlap"]


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


def _read_into(
    handle: tiledb.Array, info: ArrayInfo, bounds: Bounds, out: np.ndarray | None = None
) -> np.ndarray | None:
    """``bounds`` read by TileDB straight into ``out`` (or a fresh array), or None if unsupported.

    ``out`` must be contiguous in the volume's cell order (:func:`_into_order`). A fresh
    array is allocated in the volume's cell order (C, or Fortran for column-major
    arrays, whose tiles then copy in long runs; a large one in pages of its own, returned
    when dropped: :func:`~radiobject.read._cache.fresh_array`): no buffer size estimate, no
    result buffers of TileDB-Py's, no second copy. This drives TileDB-Py's core query object
    (``tiledb.libtiledb.Query``, whose submit releases the GIL). A read of
    :data:`SPLIT_BYTES` or more is cut along its slowest axis, on tile edges, into up to
    ``ReadConfig.concurrency`` slabs, each a contiguous part of the array that one query
    fills, on threads at once: TileDB decodes and copies one query's tiles mostly on one
    thread. The slabs beyond the first run on the slab threads that are free
    (:class:`_SlabThreads`: ``concurrency - 1`` shared by the reads at once); a read finding
    none free is read in one query. ``Array.read_subarray`` (row-major only) is the caller's
    fallback when the object is missing or a query is left incomplete.
    """
    try:
        import tiledb.libtiledb as lt
    except ImportError:
        return None
    if not all(hasattr(lt, name) for name in ("Query", "QueryStatus", "LayoutType")):
        return None
    if out is None:
        shape = tuple(hi - lo for lo, hi in bounds)
        out = fresh_array(shape, info.dtype, order="F" if info.order == "F" else "C")
    concurrency = get_config().read.concurrency
    threads = _SLAB_THREADS.get()
    pool, taken = threads.take(concurrency - 1 if out.nbytes >= SPLIT_BYTES else 0)
    slabs = _slabs(bounds, info, out, 1 + taken)
    threads.give_back(taken - (len(slabs) - 1))  # fewer tiles than slabs taken
    others = [threads.submit(pool, _fill, handle, info, b, v) for b, v in slabs[1:]]
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


class _SlabThreads:
    """The threads that read the slabs of large reads beyond their first: ``concurrency - 1``.

    A large read takes the threads that are free (:meth:`take`) and reads one slab per
    thread taken beside its own, so several large reads at once (a loader's reader threads
    filling the local tier) share ``ReadConfig.concurrency - 1`` threads instead of each
    fanning out: a read that finds none free reads in one query. Each thread that runs
    TileDB queries keeps its own malloc arena, ~3 MiB once it read a whole volume's slab;
    with four reader threads the loader kept four slab threads, ~12 MiB. A read alone takes
    what it took before.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.busy = 0  # slabs taken and not finished (or given back)
        self.size = 0
        self.pool: ThreadPoolExecutor | None = None

    def take(self, wanted: int) -> tuple[ThreadPoolExecutor | None, int]:
        """Up to ``wanted`` threads for one read's other slabs: the pool and how many."""
        if wanted <= 0:
            return None, 0
        with self.lock:
            if self.pool is None or self.size != wanted:  # ReadConfig.concurrency changed
                if self.pool is not None:
                    self.pool.shutdown(wait=False)  # its queued slabs still run
                self.pool = ThreadPoolExecutor(wanted, thread_name_prefix="radiobject-slab")
                self.size = wanted
            taken = max(0, min(wanted, self.size - self.busy))
            self.busy += taken
            return self.pool, taken

    def give_back(self, n: int) -> None:
        """Return ``n`` threads taken but not used."""
        if n > 0:
            with self.lock:
                self.busy -= n

    def submit(
        self, pool: ThreadPoolExecutor | None, fill: Callable[..., bool], *args: object
    ) -> Future[bool]:
        """Run ``fill(*args)`` on a thread :meth:`take` gave; the thread is free once it ends."""
        assert pool is not None  # a slab beyond the first only with a thread taken

        def run() -> bool:
            try:
                return fill(*args)
            finally:
                self.give_back(1)

        return pool.submit(run)


_SLAB_THREADS: Resource[_SlabThreads] = Resource("slab reader threads", _SlabThreads)


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


def _into_order(info: ArrayInfo, out: np.ndarray | None) -> bool:
    """Whether TileDB can write straight into ``out``: contiguous in the cell order."""
    if out is None:
        return True
    flags = out.flags
    return bool(flags.f_contiguous if info.order == "F" else flags.c_contiguous)


def _query(
    handle: tiledb.Array, info: ArrayInfo, bounds: Bounds, out: np.ndarray | None = None
) -> np.ndarray:
    """``bounds`` from storage, in one query (or slabs on threads), into ``out`` if given.

    A handle kept open on an array removed or rewritten since is opened anew and the query
    tried once more, so the read (or its error, "could not open volume") is what a fresh
    process gets. Both ways of reading release the GIL while TileDB works.
    """
    try:
        for again in (False, True):
            try:
                with read_overlap(), tiledb_errors(info.uri, "read volume"):
                    into = out if _into_order(info, out) else None
                    direct = _read_into(handle, info, bounds, into)
                    if direct is None:  # no core query object: TileDB-Py's own read
                        sub = tiledb.Subarray(handle, ctx=handle.ctx)
                        sub.add_ranges([[(lo, hi - 1)] for lo, hi in bounds])
                        direct = handle.read_subarray(sub)[info.attr]
                    if out is None or direct is out:
                        return direct
                    out[...] = direct
                    return out
            except NotFoundError:
                if again:
                    raise
                forget_array(info.uri)
                handle, info = open_array(info.uri, handle.ctx)
        raise AssertionError("unreachable: the second try returns or raises")
    finally:
        _after_query()


class TileDBSource(Source):
    """TileDB (a local folder or S3): serves every region it is asked for, never declines.

    ``get`` reads exactly the region into ``out`` (its tiles count as block-cache misses,
    as they always did); :meth:`read_box` and :meth:`read_whole` read for the sources that
    keep what they fetch (tile blocks, whole volumes). Each query counts in
    :class:`~radiobject.read._cache.CacheCounters` (``storage_queries``,
    ``bytes_from_storage``), which :class:`~radiobject.TileDBStats` reports.
    """

    name = "tiledb"

    def __init__(self, cache: BlockCache) -> None:
        super().__init__()
        self.cache = cache

    def get(self, region: Region, out: np.ndarray) -> bool:
        """Exactly ``region`` from storage into ``out``, not kept anywhere."""
        info = region.info
        _query(region.handle, info, region.bounds, out)
        n_tiles = 1
        for (lo, hi), t in zip(region.bounds, info.tiles, strict=True):
            n_tiles *= (hi - 1) // t - lo // t + 1
        cache = self.cache
        with cache._lock:
            cache.counters.misses += n_tiles
            cache.counters.bytes_from_storage += out.nbytes
            cache.counters.storage_queries += 1
        return self.served(out)

    def read_box(self, region: Region, bounds: Bounds) -> np.ndarray:
        """``bounds`` of ``region``'s volume in one query, for a source that keeps it."""
        data = _query(region.handle, region.info, bounds)
        cache = self.cache
        with cache._lock:
            cache.counters.storage_queries += 1
            cache.counters.bytes_from_storage += data.nbytes
        return data

    def read_whole(self, region: Region) -> np.ndarray:
        """The whole volume of ``region`` in one query (or slabs), for a source that keeps it."""
        return self.read_box(region, tuple((0, n) for n in region.info.shape))
