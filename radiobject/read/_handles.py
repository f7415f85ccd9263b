"""Open array handles, kept per process: one TileDB handle and its schema facts per volume.

Opening a volume (on S3, several requests) reads its schema and metadata once; this module
keeps the open handle with an :class:`ArrayInfo` in a bounded LRU per process, keyed by
(uri, context), opening each volume in one thread while threads wanting it wait. A forked
child opens its own. ``forget_array`` drops a volume's handles and cached blocks after it
is rewritten or removed.

A versioned key (:mod:`radiobject.read._versioned`) opens the array as of a version.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tiledb
from cachetools import LRUCache

from radiobject._process import Resource
from radiobject._tiledb_errors import tiledb_errors
from radiobject.read._cache import block_cache
from radiobject.read._local_tier import tier_state
from radiobject.read._scaling import Scaling
from radiobject.read._versioned import same_array, split_version, versioned

__all__ = ["ArrayInfo", "forget_array", "open_array"]


class _LazyMeta(Mapping[str, Any]):
    """A volume's metadata, read from storage when first looked at.

    TileDB reads an array's metadata only when asked: on S3 that is one more round trip and
    a request per metadata write (2 for a volume: 13 requests become 11 for a first patch).
    Training reads shape, dtype and tiles and never the metadata, so it is left unread until
    someone wants the affine. Pickled, it is the plain dict.
    """

    def __init__(self, uri: str, ctx: tiledb.Ctx) -> None:
        self._uri = uri
        self._ctx = ctx
        self._lock = threading.Lock()
        self._data: dict[str, Any] | None = None

    def _load(self) -> dict[str, Any]:
        if self._data is None:
            with self._lock:
                if self._data is None:
                    handle, _ = open_array(self._uri, self._ctx)
                    with tiledb_errors(self._uri, "read volume metadata"):
                        self._data = {k: handle.meta[k] for k in handle.meta}
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._load()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __repr__(self) -> str:
        return repr(self._load())

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self._load()),))


@dataclass(frozen=True)
class ArrayInfo:
    """What a volume array is, read once per process from its schema and metadata.

    ``dtype`` is the stored dtype (what region reads, the block cache and the local tier
    hold); :attr:`values` turns stored voxels into values (see :mod:`radiobject.read._scaling`),
    from the metadata, so the first look at it reads the metadata.
    """

    uri: str
    shape: tuple[int, ...]
    dtype: np.dtype
    tiles: tuple[int, ...]
    attr: str
    meta: Mapping[str, Any]  # read when first looked at (see _LazyMeta)
    order: str = "C"  # cell order: "F" for column-major arrays (read in that layout)

    @functools.cached_property
    def values(self) -> Scaling:
        """How stored voxels become values: their logical dtype, scale and offset."""
        return Scaling.from_meta(self.meta, self.dtype)


class _HandleCache(LRUCache[tuple[str, int], tuple[Any, ArrayInfo]]):
    generation = 0  # counts handles closed: a reader's routes holding one are stale

    def popitem(self) -> tuple[Any, Any]:
        key, (handle, _info) = super().popitem()
        self.generation += 1
        with contextlib.suppress(tiledb.TileDBError):
            handle.close()
        return key, (handle, _info)


class _Handles:
    """The open array handles of one process, keyed by (uri, id(ctx))."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.cache = _HandleCache(maxsize=512)
        # one lock per key being opened: other volumes open meanwhile (an S3 open is
        # several requests; threads reading ahead open many volumes at once)
        self.opening: dict[tuple[str, int], threading.Lock] = {}


# per process (radiobject._process): a forked child opens its own handles and never closes
# its parent's (freeing TileDB objects made by another process can block for ever)
_HANDLES: Resource[_Handles] = Resource("array handles", _Handles)


def open_array(
    uri: str, ctx: tiledb.Ctx, *, at: int | None = None
) -> tuple[tiledb.Array, ArrayInfo]:
    """An open read handle on ``uri`` and its :class:`ArrayInfo`, reused within the process.

    ``at`` (a TileDB timestamp in ms) opens the array as it was then; so does a versioned
    ``uri`` (:func:`versioned`). :attr:`ArrayInfo.uri` is then the versioned key.
    """
    if at is not None:
        uri = versioned(uri, at)
    base, stamp = split_version(uri)
    key = (uri, id(ctx))  # the handle holds ctx: its id is not reused while cached
    handles = _HANDLES.get()
    with handles.lock:
        hit = handles.cache.get(key)
        if hit is not None:
            return hit
        opening = handles.opening.setdefault(key, threading.Lock())
    with opening:  # one thread opens ``uri``; threads wanting it wait, others open theirs
        with handles.lock:
            hit = handles.cache.get(key)
            if hit is not None:
                return hit
        try:
            with tiledb_errors(uri, "open volume"):
                when = None if stamp is None else (0, stamp)
                handle = tiledb.open(base, mode="r", ctx=ctx, timestamp=when)
                schema = handle.schema
                dom = schema.domain
                shape = tuple(int(dom.dim(i).domain[1]) + 1 for i in range(dom.ndim))
                tiles = tuple(int(dom.dim(i).tile) for i in range(dom.ndim))
                attr = schema.attr(0)
                order = "F" if schema.cell_order == "col-major" else "C"
            meta = _LazyMeta(uri, ctx)
            info = ArrayInfo(uri, shape, np.dtype(attr.dtype), tiles, attr.name, meta, order)
            with handles.lock:
                handles.cache[key] = (handle, info)
            return handle, info
        finally:
            with handles.lock:
                handles.opening.pop(key, None)


def handles_generation() -> int:
    """How many handles this process has closed so far (a handle kept past it may be closed)."""
    return _HANDLES.get().cache.generation


def forget_array(uri: str) -> None:
    """Drop the open handles and cached blocks of ``uri`` (after it is rewritten or removed).

    A plain ``uri`` drops its versioned keys too; a versioned key drops that version only.
    """
    handles = _HANDLES.get()
    with handles.lock:
        cache = handles.cache
        for key in [k for k in cache if same_array(k[0], uri)]:
            handle, _ = cache.pop(key)
            cache.generation += 1
            handle.close()
    block_cache().drop(uri)
    tier_state().forget(uri)
