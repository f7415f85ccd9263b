"""The block cache: a bounded LRU of decompressed tiles per process, with true counters.

TileDB 2.30 has no tile cache of its own. :class:`BlockCache` keeps decompressed,
tile-aligned blocks keyed by (uri, tile index) within ``ReadConfig.cache_mb`` (shared out
among a loader's workers), counts hits, misses, evictions and bytes served from memory,
storage and the local tier in :class:`CacheCounters`, and tracks the working set (tiles
read once, volumes read recently) that decides what a region read admits.
"""

from __future__ import annotations

import mmap
import threading
from dataclasses import dataclass

import numpy as np
from cachetools import LRUCache

from radiobject._allocator import applied as allocator_applied
from radiobject._process import Resource
from radiobject.config import config_version, get_config
from radiobject.read._versioned import same_array

__all__ = ["MAPPED_BYTES", "BlockCache", "CacheCounters", "block_cache", "fresh_array"]

MAPPED_BYTES = 4 << 20  # an array this large gets pages of its own (see fresh_array)


def fresh_array(shape: tuple[int, ...], dtype: np.dtype, order: str = "C") -> np.ndarray:
    """An uninitialised array for a large read (a whole volume), its memory its own.

    Arrays of :data:`MAPPED_BYTES` or more live in an anonymous private mapping of their
    own, unmapped when the last reference goes, so a whole volume read and then dropped
    (handed to the local tier's writer, evicted from this cache, released once the tier
    serves it) returns its pages to the system at once. From malloc it would not: after
    freeing one volume glibc raises its mapping threshold above a volume's size, the next
    ones come from the heap and the arenas of the reading threads, and what a loader's
    first epoch freed stayed in the process (about 80 MiB of a 24-volume cohort four times
    the RAM cache). The allocator's settings are left alone: only these arrays are mapped.
    Each costs its page faults (~2 ms of system time for a 17 MB volume, beside ~17 ms to
    decode it), except when the user asked malloc to keep freed memory for reuse
    (``ReadConfig.retain_freed_mb``): then they come from malloc, as asked.

    >>> a = fresh_array((256, 256, 64), np.dtype(np.uint16))  # 8 MiB: mapped
    >>> isinstance(a.base, mmap.mmap), a.flags.writeable, a.flags.c_contiguous
    (True, True, True)
    >>> fresh_array((4, 4), np.dtype(np.float32), order="F").flags.f_contiguous  # small
    True
    """
    dtype = np.dtype(dtype)
    nbytes = dtype.itemsize
    for n in shape:
        nbytes *= n
    private, anonymous = getattr(mmap, "MAP_PRIVATE", None), getattr(mmap, "MAP_ANONYMOUS", None)
    # small, no private mappings (Windows), or freed memory kept for reuse as the user asked
    if nbytes < MAPPED_BYTES or private is None or anonymous is None or allocator_applied():
        return np.empty(shape, dtype=dtype, order="F" if order == "F" else "C")
    buffer = mmap.mmap(-1, nbytes, flags=private | anonymous)
    return np.ndarray(shape, dtype=dtype, buffer=buffer, order="F" if order == "F" else "C")


@dataclass
class CacheCounters:
    """Counters of the block cache since the process started (monotonic)."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_from_cache: int = 0
    bytes_from_storage: int = 0
    storage_queries: int = 0
    storage_ns: int = 0  # time in storage queries (read and decode), summed over threads
    tier_hits: int = 0
    tier_misses: int = 0
    bytes_from_tier: int = 0
    tier_fills: int = 0
    bytes_to_tier: int = 0
    tier_errors: int = 0  # entries the tier failed to open though present and intact

    def copy(self) -> CacheCounters:
        """A snapshot of the counters."""
        return CacheCounters(**self.__dict__)


_SEEN_MAX = 1 << 16  # tile keys remembered as read once (a few MB at most)
_RECENT_WINDOW = 2  # volumes remembered as read recently: at most this many budgets of bytes
_RECENT_MAX = 4096


class BlockCache:
    """A bounded LRU of decompressed tile blocks, keyed by (uri, tile index)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.counters = CacheCounters()
        self._maxsize = -1
        self._version = -1
        self._lru: LRUCache[tuple[str, tuple[int, ...]], np.ndarray] = LRUCache(maxsize=1)
        # tiles read once without being cached (see ``read_region``): a second touch caches
        self._seen: LRUCache[tuple[str, tuple[int, ...]], bool] = LRUCache(maxsize=_SEEN_MAX)
        # volumes read recently, with their bytes: the working set (``working_set_fits``)
        self._recent: LRUCache[str, int] = LRUCache(maxsize=_RECENT_MAX)
        self._recent_bytes = 0
        self.worker_share = 1

    def _sync(self) -> None:
        version = config_version()
        if version == self._version:
            return
        self._version = version
        size = get_config().read.cache_mb * 1024 * 1024 // max(1, self.worker_share)
        if size != self._maxsize:  # a new budget starts an empty cache
            self._lru = LRUCache(maxsize=max(size, 1), getsizeof=lambda a: a.nbytes)
            self._maxsize = size
            self._recent.clear()
            self._recent_bytes = 0

    @property
    def maxsize(self) -> int:
        """Bytes the cache may hold in this process."""
        with self._lock:
            self._sync()
            return self._maxsize

    @property
    def currsize(self) -> int:
        """Bytes the cache holds now."""
        return int(self._lru.currsize) if self._maxsize > 0 else 0

    def __len__(self) -> int:
        return len(self._lru) if self._maxsize > 0 else 0

    def get(self, key: tuple[str, tuple[int, ...]]) -> np.ndarray | None:
        with self._lock:
            return self._lru.get(key)

    def put(self, key: tuple[str, tuple[int, ...]], block: np.ndarray) -> None:
        with self._lock:
            if block.nbytes > self._maxsize:
                return
            added = 0 if key in self._lru else 1  # a block fetched again replaces itself
            before = len(self._lru)
            self._lru[key] = block
            evicted = before + added - len(self._lru)
            self.counters.evictions += max(0, evicted)

    def seen_before(self, keys: list[tuple[str, tuple[int, ...]]]) -> bool:
        """Whether any of ``keys`` was read before; all of them count as read from now on."""
        with self._lock:
            before = any(k in self._seen for k in keys)
            for k in keys:
                self._seen[k] = True
            return before

    def touch_volume(self, uri: str, volume_bytes: int) -> None:
        """Note that ``uri`` (``volume_bytes`` once decompressed) was read just now."""
        with self._lock:
            if uri in self._recent:
                self._recent[uri]  # refresh its recency
                return
            window = _RECENT_WINDOW * max(self._maxsize, 0)
            while self._recent and (
                len(self._recent) >= _RECENT_MAX or self._recent_bytes + volume_bytes > window
            ):
                self._recent_bytes -= self._recent.popitem()[1]
            self._recent[uri] = volume_bytes
            self._recent_bytes += volume_bytes

    def working_set_fits(self) -> bool:
        """Whether the volumes read recently fit the cache together, whole.

        Random patches of a volume touch all of its tiles over a few epochs, so the working
        set is the volumes being read, not the tiles read so far. While it fits, a tile read
        twice is worth keeping: it stays until its next use. Once it does not (a cohort
        larger than the cache, read in a shuffled order), a block admitted now is evicted
        before it is read again, and the tile-aligned fetch that admits it reads more than
        the region asked for: every epoch would read more from storage than the first.
        ``read_region`` then stops admitting blocks fetched for unaligned regions.
        """
        with self._lock:
            self._sync()
            return self._recent_bytes <= self._maxsize

    def drop(self, uri: str) -> None:
        with self._lock:
            for key in [k for k in self._lru if same_array(k[0], uri)]:
                del self._lru[key]
            for key in [k for k in self._seen if same_array(k[0], uri)]:
                del self._seen[key]
            for name in [n for n in self._recent if same_array(n, uri)]:
                self._recent_bytes -= self._recent.pop(name)

    def release(self, uri: str) -> int:
        """Drop the blocks (and whole copy) of exactly ``uri``; returns the bytes dropped.

        For a volume another tier now serves (the local tier, tried before the RAM cache):
        its copies here would never be read again, and the budget is better spent on volumes
        the tier does not hold. What was read (the working set) is kept; these are not
        evictions (counted only when the budget pushes a block out).
        """
        with self._lock:
            keys = [k for k in self._lru if k[0] == uri]
            dropped = 0
            for key in keys:
                dropped += int(self._lru.pop(key).nbytes)
            return dropped

    def clear(self) -> None:
        """Empty the cache and forget what was read (counters keep counting)."""
        with self._lock:
            self._lru.clear()
            self._seen.clear()
            self._recent.clear()
            self._recent_bytes = 0


_BLOCK_CACHE: Resource[BlockCache] = Resource("block cache", BlockCache)


def block_cache() -> BlockCache:
    """The block cache of this process (a forked child starts with an empty one)."""
    return _BLOCK_CACHE.get()
