"""The one interface of every place a region's voxels can come from: :class:`Source`.

A read is a :class:`Region` (a volume, its open handle and a half-open box). A source
either fills ``out`` with the region's stored voxels and says so (``get`` returns True) or
declines (False: a miss), and counts both in its own :class:`SourceCounters`. The sources
(RAM blocks, the shared store, the local tier, TileDB) are tried in the order
:class:`~radiobject.read._policy.ReadPolicy` chooses; a new place to read from is a new
source, never a new branch in a read function.

>>> import numpy as np
>>> class Zeros(Source):
...     name = "zeros"
...     def get(self, region, out):
...         out[...] = 0
...         return self.served(out)
>>> src, out = Zeros(), np.ones((2, 2))
>>> region = Region("mem://v", None, ((0, 2), (0, 2)), None, None)
>>> src.get(region, out), out.sum(), src.counters.hits, src.counters.bytes
(True, 0.0, 1, 32)
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Bounds", "Region", "Source", "SourceCounters"]

Bounds = tuple[tuple[int, int], ...]


class Region(NamedTuple):
    """One region read: ``bounds`` of the volume ``uri``, opened with ``ctx``.

    Attributes:
        uri: the volume array.
        ctx: the TileDB context it is read with.
        bounds: the half-open voxel box, one ``(start, stop)`` per axis.
        handle: the open array (``open_array``), or None for a source that needs none.
        info: its :class:`~radiobject.read._handles.ArrayInfo` (shape, tiles, dtype, order).
        whole_on_miss: the plan prefers a whole-volume fetch on a miss.
        tier: the local tier the read may use (None: off for this read).
        tier_key: the volume's entry name in that tier (None: no tier).
    """

    uri: str
    ctx: Any
    bounds: Bounds
    handle: Any
    info: Any
    whole_on_miss: bool = False
    tier: Any = None
    tier_key: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the answer."""
        return tuple(hi - lo for lo, hi in self.bounds)

    @property
    def whole(self) -> bool:
        """Whether the region is the whole volume."""
        return all(
            lo == 0 and hi == n for (lo, hi), n in zip(self.bounds, self.info.shape, strict=True)
        )


@dataclass
class SourceCounters:
    """What one source did since the process started (monotonic).

    ``hits``: regions it served from what it held; ``misses``: regions it did not hold
    (declined, or, for a source that wraps TileDB, fetched from it first); ``bytes``: bytes
    of the hits.
    """

    hits: int = 0
    misses: int = 0
    bytes: int = 0


class Source(ABC):
    """A place a region's stored voxels can come from."""

    name: str = "source"

    def __init__(self) -> None:
        self.counters = SourceCounters()
        self._counter_lock = threading.Lock()

    @abstractmethod
    def get(self, region: Region, out: np.ndarray) -> bool:
        """Fill ``out`` (the region's shape, the volume's dtype) with its voxels, or decline."""

    def served(self, out: np.ndarray) -> bool:
        """Count a region served into ``out``; returns True (for ``return self.served(out)``)."""
        with self._counter_lock:
            self.counters.hits += 1
            self.counters.bytes += out.nbytes
        return True

    def declined(self) -> bool:
        """Count a region declined; returns False."""
        with self._counter_lock:
            self.counters.misses += 1
        return False

    def __repr__(self) -> str:
        c = self.counters
        return f"{type(self).__name__}(hits={c.hits}, misses={c.misses}, bytes={c.bytes})"
