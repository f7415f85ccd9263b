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

from radiobject._read import CacheCounters, block_cache

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
    """Storage I/O seen by TileDB (for S3 and local files alike).

    Attributes:
        read_ops: reads TileDB issued to the storage backend (VFS read operations).
        parallelized_reads: reads that ran as part of a batch of concurrent reads.
        bytes_read: bytes fetched from storage (compressed, as stored).
        requests: HTTP requests made to S3 (0 for local files).
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
    """TileDB's process-wide counters right now (needs stats enabled)."""
    import tiledb

    raw = tiledb.stats_dump(json=True, print_out=False)
    data: Any = json.loads(raw) if isinstance(raw, str) else raw
    if isinstance(data, list):
        data = data[0] if data else {}
    return {k: int(v) for k, v in (data.get("counters") or {}).items()}


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


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

    def __enter__(self) -> TileDBStats:
        import tiledb

        global _enabled
        with _enable_lock:
            if _enabled == 0:
                tiledb.stats_enable()
            _enabled += 1
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
        with _enable_lock:
            _enabled -= 1
            if _enabled == 0:
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
        read_ops = _sum(c, "read_ops_num", "VFS")
        parallel = _sum(c, "read_ops_num", "S3") if any("S3" in k for k in c) else 0
        parallel = min(parallel, read_ops) if parallel else _parallel_local(c, read_ops)
        return S3Stats(
            read_ops=read_ops,
            parallelized_reads=parallel,
            bytes_read=_sum(c, "read_byte_num", "VFS"),
            requests=_sum(c, "num_requests", "S3") or _sum(c, "read_ops_num", "S3"),
        )


def _parallel_local(counters: dict[str, int], read_ops: int) -> int:
    # TileDB batches the tile reads of one query into one parallel VFS call; reads beyond the
    # first of each batch ran concurrently with it
    batches = _sum(counters, "Reader.loop_num")
    return max(0, read_ops - batches) if batches else 0
