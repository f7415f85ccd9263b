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

from radiobject.read._region import CacheCounters, block_cache, read_overlap

__all__ = ["CacheStats", "S3Stats", "TileDBStats", "tiledb_counters"]

_enable_lock = threading.Lock()
_enabled = 0


@dataclass(frozen=True)
class CacheStats:
    """Block-cache activity in one process: real hits and misses, counted per tile block.

    Attributes:
        hits: tile blocks served from memory.
        misses: tile blocks that had to be read from storage.
        evictions: blocks dropped to stay within the budget.
        bytes_from_cache: bytes of the blocks served from memory.
        bytes_from_storage: bytes read from storage (decompressed).
        storage_queries: TileDB queries issued by the read path.
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

    Attributes:
        read_ops: reads TileDB issued to storage (``VFS.read_ops_num``). A read TileDB splits
            over ``S3Config.max_parallel_ops`` connections (reads of at least twice
            ``vfs.min_parallel_size``, 10 MiB by default) counts each part.
        parallelized_reads: reads TileDB made while two or more volume queries of this
            process were in flight (e.g. threads of ``map_on_threads``), measured around each
            query. Parts of one split read are not seen here (they show in ``read_ops``).
        bytes_read: bytes fetched from storage (compressed, as stored).
        requests: storage requests: reads plus object sizes and existence checks
            (``VFS.read_ops_num + file_size_num + is_object_num``). On S3 the checks are
            one HEAD each and the reads at most one GET each (see above).

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

    @property
    def parallelization_rate(self) -> float:
        """Share of reads that ran concurrently with others (0 when nothing was read)."""
        return self.parallelized_reads / self.read_ops if self.read_ops else 0.0


def tiledb_counters() -> dict[str, int]:
    """TileDB's process-wide counters right now, summed over every context (needs stats on).

    TileDB keeps counters per context; ``tiledb.stats_dump(json=True)`` returns only the
    first context's, so a context built by a later ``configure(...)`` would go unseen.
    """
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


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    # a context freed during the block takes its counters with it: never count below zero
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def _sum(counters: dict[str, int], suffix: str, contains: str = "") -> int:
    return sum(v for k, v in counters.items() if k.endswith(suffix) and contains in k)


@dataclass
class TileDBStats:
    """Collect read statistics for the ``with`` block.

    ``cache_stats()`` reports radiobject's tile-block cache in this process;
    ``s3_stats()`` and ``counters`` report TileDB's own I/O counters.

    >>> with TileDBStats() as stats:
    ...     pass
    >>> stats.s3_stats().parallelization_rate
    0.0
    """

    counters: dict[str, int] = field(default_factory=dict)
    _cache_before: CacheCounters | None = None
    _cache_after: CacheCounters | None = None
    _tdb_before: dict[str, int] = field(default_factory=dict)
    _parallel_before: int = 0
    _parallel_after: int | None = None

    def __enter__(self) -> TileDBStats:
        import tiledb

        global _enabled
        with _enable_lock:
            if _enabled == 0:
                tiledb.stats_enable()
                read_overlap.counter = _vfs_read_ops
            _enabled += 1
        self._parallel_before = read_overlap.parallel_ops
        self._parallel_after = None
        self._tdb_before = tiledb_counters()
        self._cache_before = block_cache().counters.copy()
        self._cache_after = None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import tiledb

        global _enabled
        self._cache_after = block_cache().counters.copy()
        self.counters = _diff(tiledb_counters(), self._tdb_before)
        self._parallel_after = read_overlap.parallel_ops
        with _enable_lock:
            _enabled -= 1
            if _enabled == 0:
                read_overlap.counter = None
                tiledb.stats_disable()

    def cache_stats(self) -> CacheStats:
        """Block-cache hits, misses and bytes during the block (so far, if still inside)."""
        cache = block_cache()
        after = self._cache_after or cache.counters.copy()
        before = self._cache_before or CacheCounters()
        delta = {k: getattr(after, k) - getattr(before, k) for k in before.__dict__}
        return CacheStats(**delta, size_bytes=cache.currsize, capacity_bytes=cache.maxsize)

    def s3_stats(self) -> S3Stats:
        """Storage reads, parallel reads, bytes and S3 requests during the block."""
        c = (
            self.counters
            if self._cache_after is not None
            else _diff(tiledb_counters(), self._tdb_before)
        )
        read_ops = _sum(c, ".VFS.read_ops_num")
        after = self._parallel_after
        overlapped = (read_overlap.parallel_ops if after is None else after) - self._parallel_before
        return S3Stats(
            read_ops=read_ops,
            parallelized_reads=max(0, min(read_ops, overlapped)),
            bytes_read=_sum(c, ".VFS.read_byte_num"),
            requests=sum(_sum(c, f".VFS.{name}") for name in _REQUEST_COUNTERS),
        )


# TileDB's VFS counters of operations that are one request each on S3 (GET, HEAD, HEAD)
_REQUEST_COUNTERS = ("read_ops_num", "file_size_num", "is_object_num")


def _vfs_read_ops() -> int:
    return _sum(tiledb_counters(), ".VFS.read_ops_num")
