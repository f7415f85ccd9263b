"""The read path: one reader per process, its sources, the policy that chains them, stats.

A sample's reads go ``plan -> reader().fetch(plan.reads) -> reader().decode(...)``: the
:class:`~radiobject.read._reader.Reader` asks its :class:`~radiobject.read._policy.ReadPolicy`
for each region's chain of sources (local tier, shared store, RAM volumes, RAM blocks,
TileDB; :mod:`radiobject.read._sources`, :mod:`radiobject.read._storage`), each one
``get(region, out) -> bool`` with its own counters.

The public names (``TileDBStats``, ``CacheStats``, ``S3Stats``) are exported from
:mod:`radiobject`; the modules here are private. The names below are what the layers above
(:mod:`radiobject.ml`) use: they import them from here, never from a private module.
"""

from radiobject.read._cache import CacheCounters
from radiobject.read._grids import GridMap, Resample, grid_map, same_grid
from radiobject.read._handles import forget_array, open_array
from radiobject.read._local_tier import auto_budget_mb, default_tier_dir, tier_state
from radiobject.read._prefetch import Prefetch
from radiobject.read._reader import Reader, reader
from radiobject.read._region import block_cache, read_region, served_locally, whole_volume_budget
from radiobject.read._scaling import Scaling
from radiobject.read._shared_store import SharedStore, set_shared_store
from radiobject.read._source import Region, Source
from radiobject.read._versioned import split_version, versioned

__all__ = [
    "CacheCounters",
    "GridMap",
    "Prefetch",
    "Reader",
    "Region",
    "Resample",
    "Scaling",
    "SharedStore",
    "Source",
    "auto_budget_mb",
    "block_cache",
    "default_tier_dir",
    "forget_array",
    "grid_map",
    "open_array",
    "read_region",
    "reader",
    "same_grid",
    "served_locally",
    "set_shared_store",
    "split_version",
    "tier_state",
    "versioned",
    "whole_volume_budget",
]
