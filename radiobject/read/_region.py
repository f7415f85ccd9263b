"""Region reads as functions: :func:`read_region` and the questions asked before reading.

Each is one call on this process's :class:`~radiobject.read._reader.Reader` (its policy
decides, its sources serve); :func:`fill_local_tier` puts a whole volume in the local tier
ahead of time. The storage queries live in :mod:`radiobject.read._storage`, the sources in
:mod:`radiobject.read._sources`; their names used elsewhere are re-exported here.
"""

from __future__ import annotations

import numpy as np
import tiledb

from radiobject._errors import ConfigurationError
from radiobject.read._cache import BlockCache, CacheCounters, block_cache
from radiobject.read._handles import _HANDLES as _HANDLES
from radiobject.read._handles import ArrayInfo, forget_array, open_array
from radiobject.read._local_tier import local_tier, tier_state
from radiobject.read._reader import reader
from radiobject.read._source import Bounds
from radiobject.read._sources import WHOLE as _WHOLE
from radiobject.read._storage import ReadOverlap, read_overlap

__all__ = [
    "_WHOLE",
    "ArrayInfo",
    "BlockCache",
    "CacheCounters",
    "ReadOverlap",
    "block_cache",
    "fill_local_tier",
    "forget_array",
    "open_array",
    "read_overlap",
    "read_region",
    "served_locally",
    "whole_volume_budget",
]


def read_region(
    uri: str,
    ctx: tiledb.Ctx,
    bounds: Bounds,
    *,
    whole_on_miss: bool = False,
    auto_tier_mb: int = 0,
) -> np.ndarray:
    """Voxels of ``uri`` in the half-open ``bounds`` (one (start, stop) per axis), as stored.

    Read by this process's reader, from the first source that serves in the chain its
    :class:`~radiobject.read._policy.ReadPolicy` chooses. A region none of whose tiles was
    read before, and that does not fall on tile edges, is read exactly and not cached
    (one-off reads skip the larger tile-aligned fetch); touching those tiles again caches
    them, while the volumes read recently fit the cache. Once they do not, an unaligned
    region with a missing tile is read exactly and nothing is admitted: a later epoch never
    reads more from storage than the first, however large the cohort.

    With ``whole_on_miss`` a miss fetches every tile of the volume at once and keeps it as
    one block (cheaper when many more reads of the volume follow, as with many patches per
    volume), while what this process reads fits its cache (always for a loader's shared
    store, which keeps its own budget). A whole volume asked for is kept the same way while
    the volumes read recently fit the cache, and read straight into the answer (no copy
    kept) once they do not. Regions too large for the cache are read straight from storage.

    The local tier serves and fills the read when ``ReadConfig.local_tier_mb`` turns it on,
    or, with that setting at ``None``, when the reader passes its automatic budget in
    ``auto_tier_mb`` (a training loader's dataset over a cohort larger than the RAM cache):
    the tier is that reader's decision, not a switch of the process.
    """
    return reader().read(uri, ctx, bounds, whole_on_miss=whole_on_miss, auto_tier_mb=auto_tier_mb)


def served_locally(uri: str, auto_tier_mb: int = 0) -> bool:
    """Whether reads of ``uri`` are served by the local tier now (see ``ReadPolicy``)."""
    return reader().policy.served_locally(uri, auto_tier_mb)


def whole_volume_budget() -> int:
    """Bytes this process may keep as whole volumes: its loader's shared store, or its cache."""
    return reader().policy.whole_volume_budget()


def fill_local_tier(uri: str, ctx: tiledb.Ctx) -> bool:
    """Put the whole volume ``uri`` in the local tier now, unless it is there already.

    Returns whether it was written (False: already there, or larger than the budget).

    Raises:
        ConfigurationError: the tier is off (``ReadConfig.local_tier_mb`` is 0 or None: the
            automatic tier is a training loader's own, never filled ahead of time).
        OSError: the tier's folder cannot be written.
    """
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
    key = tier_state().key(uri, ctx)
    if tier.entry_bytes(key) and tier.open(key) is not None:  # on disk, not just held open
        return False
    whole = tuple((0, n) for n in open_array(uri, ctx)[1].shape)
    volume = reader().policy.storage.read_whole(reader().region(uri, ctx, whole))
    written = tier.write(key, volume)
    if written:
        cache = block_cache()
        with cache._lock:
            cache.counters.tier_fills += 1
            cache.counters.bytes_to_tier += tier.entry_bytes(key)
    return written
