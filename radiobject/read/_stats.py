"""``TileDBStats``: what a block of code read, from radiobject's cache and TileDB's counters.

>>> from radiobject import TileDBStats
>>> with TileDBStats() as stats:
...     pass
>>> stats.cache_stats().hits
0
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from radiobject._errors import ConfigurationError
from radiobject._process import Resource
from radiobject.read import _storage
from radiobject.read._cache import CacheCounters, block_cache
from radiobject.read._storage import read_overlap

__all__ = ["CacheStats", "S3Stats", "TileDBStats", "tiledb_counters"]


@dataclass(frozen=True)
class CacheStats:
    """Block-cache activity in one process: real hits and misses, counted per tile block.

    Attributes:
        hits: tile blocks served from memory.
        misses: tile blocks that had to be read from storage.
        evictions: blocks dropped to stay within the budget.
        bytes_from_cache: bytes of the blocks served from memory.
        bytes_from_storage: bytes read from storage (decompressed).
        storage_queries: TileDB queries issued by the read path (a read that fills the local
            read tier is one query: its volume, read whole, serves the region and the fill).
        storage_ns: time spent in those queries (read and decode), summed over threads.
        tier_hits: regions served from the local read tier (``ReadConfig.local_tier_mb``).
        tier_misses: regions the tier lacked (a miss worth filling reads its volume whole,
            once, and hands it to a background writer).
        bytes_from_tier: bytes of the regions served from the tier (decompressed).
        tier_fills: volumes written to the tier by this process.
        bytes_to_tier: bytes those volumes take on disk (compressed).
        tier_errors: entries present and intact that the tier failed to open (e.g. a blosc2
            that changed its API): the tier turns off in the process with one warning.
        size_bytes: bytes held by the cache at the end.
        capacity_bytes: the cache budget of this process.

    >>> import os, tempfile
    >>> import numpy as np
    >>> from radiobject import TileDBStats, Volume
    >>> vol = Volume.from_numpy(os.path.join(tempfile.mkdtemp(), "v"), np.zeros((64, 64, 48)))
    >>> with TileDBStats() as stats:
    ...     for _ in range(3):
    ...         patch = vol[0:8, 0:8, 0:8]  # one tile block each time
    >>> cache = stats.cache_stats()
    >>> cache.hits + cache.misses, cache.hits > 0, cache.bytes_from_storage > 0
    (3, True, True)
    """

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_from_cache: int = 0
    bytes_from_storage: int = 0
    storage_queries: int = 0
    storage_ns: int = 0
    tier_hits: int = 0
    tier_misses: int = 0
    bytes_from_tier: int = 0
    tier_fills: int = 0
    bytes_to_tier: int = 0
    tier_errors: int = 0
    size_bytes: int = 0
    capacity_bytes: int = 0

    @property
    def hit_rate(self) -> float:
        """Share of tile blocks served from memory (0 when nothing was read)."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __add__(self, other: CacheStats) -> CacheStats:
        return CacheStats(**{k: getattr(self, k) + getattr(other, k) for k in self.__dict__})


@dataclass(frozen=True)
class S3Stats:
    """Storage I/O seen by TileDB (for S3 and local files alike), from TileDB's own counters.

    TileDB 2.30 counts storage operations per VFS, not per backend: it has no S3-only
    counter, no count of HTTP requests and no counter of parallel reads. On S3 a read is a
    ranged GET unless TileDB's read-ahead cache already holds it (small metadata reads), so
    the server sees at most ``read_ops`` GETs; TileDB does not count its ListObjects requests.

    Cost: ``read_ops``, ``bytes_read`` and ``requests`` come from TileDB's statistics, read at
    the edges of a :class:`TileDBStats` block (tens of microseconds per TileDB query there,
    nothing per query inside); ``parallelized_reads`` and ``queries`` are radiobject's own
    counters, free.

    Attributes:
        read_ops: reads TileDB issued to storage (``VFS.read_ops_num``). A read TileDB splits
            over ``S3Config.max_parallel_ops`` connections (reads of at least twice
            ``vfs.min_parallel_size``, 10 MiB by default) counts each part.
        parallelized_reads: storage *queries* of this process (one per region or volume
            radiobject asks TileDB for, not TileDB's read operations) that overlapped another
            query of this process in flight, e.g. threads of ``map_on_threads``: counted by
            radiobject around each query, at no cost to it. A query counts once it has ended.
            Parts of one split read are not seen here (they show in ``read_ops``), nor are
            queries of other processes (loader workers).
        bytes_read: bytes fetched from storage (compressed, as stored).
        requests: storage requests: reads plus object sizes and existence checks
            (``VFS.read_ops_num + file_size_num + is_object_num``). On S3 the checks are
            one HEAD each and the reads at most one GET each (see above).
        queries: storage queries radiobject issued in this process (ended or not), the
            denominator of :attr:`parallelization_rate`.

    >>> import os, tempfile
    >>> import numpy as np
    >>> from radiobject import TileDBStats, Volume
    >>> vol = Volume.from_numpy(os.path.join(tempfile.mkdtemp(), "v"), np.ones((32, 32, 24)))
    >>> with TileDBStats() as stats:
    ...     voxels = vol.to_numpy()
    >>> io = stats.s3_stats()  # local files are counted too
    >>> io.read_ops > 0, io.bytes_read > 0, io.requests >= io.read_ops
    (True, True, True)
    >>> io.parallelization_rate  # one query at a time
    0.0
    """

    read_ops: int = 0
    parallelized_reads: int = 0
    bytes_read: int = 0
    requests: int = 0
    queries: int = 0

    @property
    def parallelization_rate(self) -> float:
        """Share of storage queries that overlapped another one (0 when none was made)."""
        return min(1.0, self.parallelized_reads / self.queries) if self.queries else 0.0


# TileDB's counters, made monotonic: what earlier resets cleared is kept in ``_folded``
# per process: a reading thread may hold it at the moment of a fork
_LOCK: Resource[threading.RLock] = Resource("statistics lock", threading.RLock)
_blocks = 0  # TileDBStats blocks open in this process
_owned = False  # TileDB statistics were turned on by TileDBStats (not by the user)
_folded: dict[str, int] = {}


def _raw_counters() -> dict[str, int]:
    import tiledb

    try:
        from tiledb.main import stats_raw_dump_str

        raw: Any = stats_raw_dump_str()
    except ImportError:  # older tiledb-py: the first context only
        raw = tiledb.stats_dump(json=True, print_out=False)
    data: Any = json.loads(raw) if isinstance(raw, str) else raw
    total: dict[str, int] = {}
    for entry in data if isinstance(data, list) else [data]:
        for k, v in (entry.get("counters") or {}).items():
            total[k] = total.get(k, 0) + int(v)
    return total


def _stats_enabled() -> bool:
    try:
        from tiledb.main import stats_enabled

        return bool(stats_enabled())
    except ImportError:  # cannot tell: assume the user's, never reset them
        return True


TRIM_EVERY = 10_000  # storage queries between two trims of TileDB's record of queries


def trim_query_record() -> None:
    """Empty TileDB's record of queries, without disturbing an open :class:`TileDBStats`.

    TileDB 2.30 keeps a record of every query (measured: 13.6 kB each, with its statistics
    never turned on in the process; 100k one-voxel reads grew RSS by 1.3 GB). A reset
    empties the records (the growth falls to ~4 kB per query, measured with a reset every
    5,000 queries: TileDB keeps something of every query even then). The read path calls
    this every :data:`TRIM_EVERY` queries. Inside a block that owns the statistics, the
    counters are first folded into the running total (the block's numbers are unchanged);
    statistics the user turned on are theirs and left alone.

    Outside any block, with the statistics off (nobody's: TileDB counts nothing then), the
    reset is the one process-wide call kept, for the measurement that keeps it: 8,000
    one-voxel reads, cache off, grew RSS by 12.2 kB per query without it against 4.5 kB
    with a reset every 2,000 queries (2-core machine, one run each), i.e. some 1.2 GB per
    100k patches of a cohort larger than RAM. It loses no count anyone could read; what
    another thread can see is TileDB-Py's ``stats_enabled()`` true for the duration of the
    call (TileDB-Py's reset turns it on; it is turned off again at once).

    >>> trim_query_record()
    """
    import tiledb

    with _LOCK.get():
        if _blocks:
            if _owned:
                _counters(reset=True)  # fold, then reset: the blocks' counters stay exact
            return
        if _stats_enabled():  # the user's (TileDBStats disables its own when the last closes)
            return
        tiledb.stats_reset()  # TileDB-Py's reset also turns the statistics on: off again
        tiledb.stats_disable()


_storage.on_many_queries = (TRIM_EVERY, trim_query_record)


def tiledb_counters() -> dict[str, int]:
    """TileDB's process-wide counters right now, summed over every context (needs stats on).

    TileDB keeps counters per context; ``tiledb.stats_dump(json=True)`` returns only the
    first context's, so a context built by a later ``configure(...)`` would go unseen.

    Not cheap: TileDB (2.30) keeps a record of every query its contexts made (about 12 kB
    each until a reset, also while statistics are off) and this walks them all: some
    20-35 us per query recorded since the last reset, and about 2 us per query the process
    ever made (a reset empties the records but keeps them). While :class:`TileDBStats` owns
    TileDB's statistics, a call moves the counters into a running total and resets TileDB's
    (the counters stay monotonic), so the next call walks only what came after.

    >>> with TileDBStats():
    ...     before = tiledb_counters()
    ...     after = tiledb_counters()  # nothing read in between
    >>> all(after.get(k, 0) >= v for k, v in before.items())
    True
    """
    return _counters(reset=True)


def _counters(reset: bool) -> dict[str, int]:
    """The monotonic counters; with ``reset``, TileDB's are moved into the running total."""
    with _LOCK.get():
        live = _raw_counters()
        if not _owned:
            return live
        total = dict(_folded)
        for k, v in live.items():
            total[k] = total.get(k, 0) + v
        if reset:
            import tiledb

            _folded.update(total)
            tiledb.stats_reset()
        return total


def _open_block() -> dict[str, int]:
    """Count one more open block; TileDB's counters now (the block's baseline)."""
    import tiledb

    global _blocks, _owned
    with _LOCK.get():
        _blocks += 1
        if _blocks > 1 or _stats_enabled():  # counted already: fold, keeping edges cheap
            return _counters(reset=True)
        # no block open and the statistics are nobody's: drop what TileDB recorded since
        # the last block (one walk of it), and count from zero
        tiledb.stats_reset()
        tiledb.stats_enable()
        _owned = True
        _folded.clear()
        return {}


def _close_block() -> dict[str, int]:
    """Count one block less; TileDB's counters now."""
    import tiledb

    global _blocks, _owned
    with _LOCK.get():
        last = _blocks == 1  # the next block to open resets: no reset (walk) here
        counters = _counters(reset=not last)
        _blocks -= 1
        if last and _owned:
            tiledb.stats_disable()
            _owned = False
        return counters


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    # a context freed during the block takes its counters with it: never count below zero
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def _sum(counters: dict[str, int], suffix: str, contains: str = "") -> int:
    return sum(v for k, v in counters.items() if k.endswith(suffix) and contains in k)


@dataclass
class TileDBStats:
    """Collect read statistics for the ``with`` block, cheaply enough to leave on.

    ``cache_stats()`` reports radiobject's tile-block cache in this process;
    ``s3_stats()`` and ``counters`` report TileDB's own I/O counters.

    Nothing is measured per query beyond what the read path always counts (a few integers):
    counters are read when the block opens and when it closes. The edges are what cost:
    TileDB's counters come from a walk over TileDB's record of its queries
    (:func:`tiledb_counters`). The outermost block resets that record as it opens (a walk
    over the queries made since the previous outermost block opened, in it or outside
    blocks) and reads the counters as it closes (a walk over its own queries); nested or
    concurrent blocks move the counters into a running total and reset at their edges, so
    blocks may nest or run in several threads at once. Measured on 2 shared cores
    (``benchmarks/telemetry_overhead.py``): tens of microseconds per TileDB query walked,
    plus about 2 us per query the process ever made; never anything per query inside the
    block. If you turned TileDB's statistics on yourself (``tiledb.stats_enable()``), they
    are yours: nothing is reset, and each edge walks every query since your last reset
    (TileDB-Py's ``tiledb.stats_reset()`` turns them on, too).

    Reading ``s3_stats()`` inside the block costs one such edge; ``cache_stats()`` is cheap.
    ``TileDBStats(storage=False)`` leaves TileDB alone: no walks at all, ``cache_stats()``
    only (what ``LoaderTuner`` uses when the reads happen in loader workers).

    >>> with TileDBStats() as stats:
    ...     pass
    >>> stats.s3_stats().parallelization_rate
    0.0
    """

    counters: dict[str, int] = field(default_factory=dict)
    storage: bool = field(default=True, kw_only=True)  # read TileDB's counters at the edges
    _cache_before: CacheCounters | None = None
    _cache_after: CacheCounters | None = None
    _tdb_before: dict[str, int] = field(default_factory=dict)
    _queries_before: tuple[int, int] = (0, 0)
    _queries_after: tuple[int, int] | None = None

    def __enter__(self) -> TileDBStats:
        self._tdb_before = _open_block() if self.storage else {}
        self._queries_before = read_overlap().snapshot()
        self._queries_after = None
        self._cache_before = block_cache().counters.copy()
        self._cache_after = None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cache_after = block_cache().counters.copy()
        self._queries_after = read_overlap().snapshot()
        if self.storage:
            self.counters = _diff(_close_block(), self._tdb_before)

    def cache_stats(self) -> CacheStats:
        """Block-cache hits, misses and bytes during the block (so far, if still inside)."""
        cache = block_cache()
        after = self._cache_after or cache.counters.copy()
        before = self._cache_before or CacheCounters()
        delta = {k: getattr(after, k) - getattr(before, k) for k in before.__dict__}
        return CacheStats(**delta, size_bytes=cache.currsize, capacity_bytes=cache.maxsize)

    def s3_stats(self) -> S3Stats:
        """Storage reads, parallel queries, bytes and S3 requests during the block.

        Raises:
            ConfigurationError: the block was opened with ``storage=False``.
        """
        if not self.storage:
            raise ConfigurationError(
                "s3_stats() needs TileDB's counters, which TileDBStats(storage=False) does not "
                "read: open the block with TileDBStats() (its edges cost tens of microseconds "
                "per TileDB query), or use cache_stats()"
            )
        c = (
            self.counters
            if self._cache_after is not None
            else _diff(tiledb_counters(), self._tdb_before)
        )
        queries_after, overlapped_after = self._queries_after or read_overlap().snapshot()
        queries_before, overlapped_before = self._queries_before
        return S3Stats(
            read_ops=_sum(c, ".VFS.read_ops_num"),
            parallelized_reads=min(
                overlapped_after - overlapped_before, queries_after - queries_before
            ),
            bytes_read=_sum(c, ".VFS.read_byte_num"),
            requests=sum(_sum(c, f".VFS.{name}") for name in _REQUEST_COUNTERS),
            queries=queries_after - queries_before,
        )


# TileDB's VFS counters of operations that are one request each on S3 (GET, HEAD, HEAD)
_REQUEST_COUNTERS = ("read_ops_num", "file_size_num", "is_object_num")
