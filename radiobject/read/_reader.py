"""The reader: one per process (and so one per loader worker), the only way voxels are read.

Three steps a sample goes through, each one method here::

    plan = dataset.plan(key)                  # what it reads (radiobject.ml, pure)
    arrays = reader().fetch(plan.reads)       # the policy's chain of sources, per region
    reader().decode(plan.reads, arrays, into=batch[i])  # stored integers -> float32 values

:meth:`Reader.fetch` asks :class:`~radiobject.read._policy.ReadPolicy` for the chain of
sources of each region (RAM blocks, the shared store, the local tier, TileDB) and takes the
answer of the first that serves. The reader owns its policy and sources, and each source
its counters; a forked child builds its own reader on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from radiobject._process import Resource
from radiobject.config import config_version
from radiobject.read._cache import block_cache
from radiobject.read._handles import handles_generation, open_array
from radiobject.read._local_tier import local_tier, tier_state
from radiobject.read._policy import ReadPolicy
from radiobject.read._prefetch import Planner, Prefetch, Prefetcher, RegionLike
from radiobject.read._shared_store import get_shared_store
from radiobject.read._source import Bounds, Region, Source

__all__ = ["Reader", "RegionLike", "reader"]


R = TypeVar("R", bound=RegionLike)
_ROUTES = 4096  # volumes whose route a reader keeps (then it starts afresh)


class Reader:
    """Reads regions through one chain of sources chosen by one :class:`ReadPolicy`.

    Args:
        first: sources to try before the standard ones (see :class:`ReadPolicy`).

    >>> import numpy as np, tempfile, os
    >>> from radiobject import Volume
    >>> vol = Volume.from_numpy(os.path.join(tempfile.mkdtemp(), "v"),
    ...                         np.arange(512, dtype=np.uint16).reshape(8, 8, 8))
    >>> r = Reader()
    >>> r.read(vol.uri, vol.ctx, ((0, 2), (0, 1), (3, 5))).tolist()
    [[[3, 4]], [[67, 68]]]
    >>> r.policy.storage.counters.hits  # one region, served by TileDB
    1
    """

    def __init__(self, first: tuple[Source, ...] = ()) -> None:
        self.policy = ReadPolicy(block_cache(), first)
        # (uri, id(ctx), auto_tier_mb) -> (settings version, handles closed, handle, info,
        # tier, its entry name): what a volume's reads share, worked out once per volume
        self._routes: dict[tuple[str, int, int], tuple[int, int, Any, Any, Any, str | None]] = {}
        self._prefetcher = Prefetcher(self.read_planned)

    @property
    def sources(self) -> tuple[Source, ...]:
        """The sources of this reader, in the order the policy would try them."""
        return self.policy.sources

    def region(
        self, uri: str, ctx: Any, bounds: Bounds, whole_on_miss: bool = False, auto_tier_mb: int = 0
    ) -> Region:
        """The :class:`Region` of a read.

        Its volume's handle and local tier are looked up once per volume and kept while the
        settings and the volume's handle stay (a tier that broke is looked up again).
        """
        key = (uri, id(ctx), auto_tier_mb)
        route = self._routes.get(key)
        version, closed = config_version(), handles_generation()
        if (
            route is None
            or route[0] != version
            or route[1] != closed
            or (route[4] is not None and route[4].broken is not None)
        ):
            handle, info = open_array(uri, ctx)
            tier = local_tier(auto_tier_mb)
            entry = None if tier is None else tier_state().key(uri, ctx)
            if len(self._routes) >= _ROUTES:
                self._routes.clear()
            route = self._routes[key] = (version, closed, handle, info, tier, entry)
        return Region(uri, ctx, bounds, route[2], route[3], whole_on_miss, route[4], route[5])

    def in_memory(self, uri: str) -> bool:
        """Whether ``uri`` is held whole in memory: this process's cache or its shared store.

        Its reads are then copies that hold the GIL: threads would only take turns (see
        ``VolumeCollectionDataset.__getitems__``). Cheap: a lookup, nothing is read.
        """
        if self.policy.ram.holds(uri):
            return True
        store = get_shared_store()
        return store is not None and store.holds(uri)

    def get(self, region: Region, out: np.ndarray | None = None) -> np.ndarray:
        """The stored voxels of ``region``, from the first source of its chain that serves."""
        if out is None:
            info = region.info
            out = np.empty(region.shape, info.dtype, order="F" if info.order == "F" else "C")
        chain = self.policy.chain(region)
        try:
            for source in chain:
                if source.get(region, out):
                    return out
        finally:
            chain.close()  # the policy ends what it reserved for this read (a tier fill)
        raise AssertionError(f"no source served {region}: the chain ends with storage")

    def read(
        self,
        uri: str,
        ctx: Any,
        bounds: Bounds,
        *,
        whole_on_miss: bool = False,
        auto_tier_mb: int = 0,
    ) -> np.ndarray:
        """Voxels of ``uri`` in the half-open ``bounds``, as stored."""
        return self.get(self.region(uri, ctx, bounds, whole_on_miss, auto_tier_mb))

    def read_planned(self, read: RegionLike) -> np.ndarray:
        """The stored voxels of one planned read."""
        region = self.region(read.uri, read.ctx, read.bounds, read.whole_on_miss, read.auto_tier_mb)
        return self.get(region)

    def prefetch(
        self, planner: Planner, keys: Sequence[tuple[int, int]], depth: int, threads: int
    ) -> None:
        """Plan and start reading, on threads, what follows the batch starting at ``keys[0]``.

        Up to ``depth`` samples of ``planner``'s schedule (its loader's pass order), within
        ``ReadConfig.read_ahead_mb``; :meth:`fetch` takes them (see
        :mod:`radiobject.read._prefetch`).
        """
        state = self._prefetcher.state(planner, create=True)
        assert state is not None
        state.advance(planner, keys, depth, threads)

    def prefetched(self, planner: Any, *, create: bool = False) -> Prefetch | None:
        """The read-ahead state of ``planner`` (made when ``create``), or None."""
        return self._prefetcher.state(planner, create)

    def fetch(
        self,
        reads: Sequence[R],
        take: Callable[[R], np.ndarray | None] | None = None,
    ) -> list[np.ndarray]:
        """The stored voxels of each of ``reads``, in order.

        ``take`` gives a read's voxels if they were read ahead (None: read it now; e.g.
        ``reader().prefetched(dataset).take``). A failed read raises its own error, read
        ahead or not, with a note naming the region and the volume.
        """
        out = []
        for read in reads:
            try:
                got = None if take is None else take(read)
                if got is None:  # not read ahead: read it now (inline: one frame less)
                    region = self.region(
                        read.uri, read.ctx, read.bounds, read.whole_on_miss, read.auto_tier_mb
                    )
                    got = self.get(region)
                out.append(got)
            except Exception as exc:
                exc.add_note(f"reading {read.name} region {list(read.bounds)} of {read.uri!r}")
                raise
        return out

    def decode(
        self,
        reads: Sequence[RegionLike],
        arrays: Sequence[np.ndarray],
        into: np.ndarray | None = None,
        dtype: Any = np.float32,
    ) -> np.ndarray:
        """The ``"image"`` voxels of ``reads`` as ``(C, ...)`` values, into ``into`` if given.

        Stored integers become ``dtype`` values in one pass per channel (cast, scale and
        offset: each volume's :class:`~radiobject.read._scaling.Scaling`), written straight
        into ``into`` (e.g. the sample's slot of its batch). Without ``into``, one channel
        whose stored dtype is already ``dtype`` is returned without a copy. A read with a
        ``resample`` (a volume on another grid) is decoded, then resampled to its sample's
        box (:class:`~radiobject.read.Resample`).
        """
        chans = [
            (r, a, getattr(r, "resample", None))
            for r, a in zip(reads, arrays, strict=True)
            if r.name == "image"
        ]
        if len(chans) == 1 and into is None and chans[0][2] is None:
            read, chan, _ = chans[0]
            values: np.ndarray = self.scaling(read).decode(chan, dtype)[None]
            return values
        if into is None:
            _, block, resample = chans[0]
            shape = block.shape if resample is None else resample.shape + block.shape[3:]
            into = np.empty((len(chans), *shape), dtype)
        for c, (read, chan, resample) in enumerate(chans):
            if resample is None:
                self.scaling(read).decode(chan, dtype, out=into[c])
            else:  # a volume on another grid: its block decoded, then resampled to the box
                resample.apply(self.scaling(read).decode(chan, dtype), read.bounds, out=into[c])
        return into

    @staticmethod
    def scaling(read: RegionLike) -> Any:
        """How the stored voxels of ``read`` become values (cast, scale, offset)."""
        return open_array(read.uri, read.ctx)[1].values


_READER: Resource[Reader] = Resource("reader", Reader)


def reader() -> Reader:
    """The reader of this process (a forked child, e.g. a loader worker, builds its own)."""
    return _READER.get()
