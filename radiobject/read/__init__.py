"""The read path: array handles, the RAM block cache, region reads and read statistics.

The public names (``TileDBStats``, ``CacheStats``, ``S3Stats``) are exported from
:mod:`radiobject`; the modules here are private. The names below are what the layers above
(:mod:`radiobject.ml`) use: they import them from here, never from a private module.
"""

from radiobject.read._cache import CacheCounters
from radiobject.read._handles import forget_array, open_array
from radiobject.read._local_tier import auto_budget_mb, default_tier_dir, tier_state
from radiobject.read._region import block_cache, read_region, served_locally, whole_volume_budget
from radiobject.read._scaling import Scaling
from radiobject.read._shared_store import SharedStore, set_shared_store
from radiobject.read._versioned import split_version, versioned

__all__ = [
    "CacheCounters",
    "Scaling",
    "SharedStore",
    "auto_budget_mb",
    "block_cache",
    "default_tier_dir",
    "forget_array",
    "open_array",
    "read_region",
    "served_locally",
    "set_shared_store",
    "split_version",
    "tier_state",
    "versioned",
    "whole_volume_budget",
]
