"""``clear_caches``: forget what this process has read, to measure cold reads."""

from __future__ import annotations

from radiobject.read._cache import block_cache
from radiobject.read._shared_store import get_shared_store

__all__ = ["clear_caches"]


def clear_caches() -> None:
    """Empty radiobject's caches of this process, so that the next reads are cold.

    Clears the RAM block cache of decompressed tiles (and its memory of which tiles were
    read once), and, in a loader worker, the whole volumes its loader shares through
    ``/dev/shm`` (for every worker of that loader). Counters keep counting.

    Scope: one process. The block cache belongs to the process, not to a TileDB context
    (every context of the process, e.g. those of ``ctx_for_threads``, shares it), and each
    loader worker has its own: calling this in the main process does not reach the workers
    of a running loader with ``persistent_workers=True``. For cold reads with workers,
    call it in the workers (e.g. from ``worker_init_fn``) or build a new loader, whose
    workers and shared store start empty. Not cleared: open array handles (schemas and
    fragment metadata, read once per process), the local read tier on disk
    (``ReadConfig.local_tier_mb``: turn it off, or point it at an empty folder, for cold
    reads) and the operating system's page cache.

    >>> import numpy as np, tempfile, os
    >>> from radiobject import TileDBStats, Volume, clear_caches
    >>> vol = Volume.from_numpy(os.path.join(tempfile.mkdtemp(), "v"), np.zeros((8, 8, 8)))
    >>> _ = vol[:, :, :]  # a whole volume read is kept in the block cache
    >>> clear_caches()
    >>> with TileDBStats() as stats:
    ...     _ = vol[:, :, :]
    >>> stats.cache_stats().hits  # cold: nothing was served from memory
    0
    """
    block_cache().clear()
    store = get_shared_store()
    if store is not None:
        store.clear()
