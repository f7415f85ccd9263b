"""``VolumeCollectionDataset``: MONAI-style dict samples read straight from TileDB."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tiledb
import torch
from torch.utils.data import Dataset

from radiobject._errors import ShapeError
from radiobject.config import Scope, SliceOrientation, get_config, in_scope
from radiobject.ml._batch import read_batch
from radiobject.ml._batch_slots import LocalSlots
from radiobject.ml._config import DatasetConfig, LoadingMode
from radiobject.ml._params import parse_ctx, parse_transform, with_ctx
from radiobject.ml._plan import RegionRead, SamplePlan, grid_read
from radiobject.ml._randomness import seeded_call
from radiobject.ml._read_ahead import ReadAheadSchedule, ahead_state
from radiobject.ml._sampling import item_rng, random_patch_start, transform_seed
from radiobject.ml._shared import sync_worker
from radiobject.ml._slab import PLANE_AXIS, planes_as_channels, slab_size
from radiobject.ml._stages import sample_nbytes, stage_counters, worker_failure
from radiobject.ml._subjects import (
    Labels,
    VolumeRef,
    align,
    as_collections,
    pinned,
    reference_of,
    resolve_labels,
    to_tensor,
)
from radiobject.read import open_array, reader
from radiobject.storage import VolumeCollection

__all__ = ["VolumeCollectionDataset"]

_SLICE_AXIS: dict[SliceOrientation, int] = PLANE_AXIS


# read hooks of earlier versions: a subclass overriding one would read outside its plan
_READ_HOOKS_REMOVED = ("make_sample", "read_sample", "read_image")
_MANY_PER_VOLUME = (LoadingMode.PATCH, LoadingMode.SLAB)
# hooks a batch decoded in place leaves out (see VolumeCollectionDataset._stock_reads)
_STOCK_HOOKS = (
    "fetch", "plan_reads", "decode_image", "squeeze_slice", "build_sample", "apply_transform"
)  # fmt: skip


class VolumeCollectionDataset(Dataset[Any]):
    """Samples ``{"image": Tensor(C, X, Y, Z), "label": ..., "obs_id": ...}`` from collections.

    Each collection is a channel (e.g. ``[radi.T1w, radi.FLAIR]``); volumes are matched by
    subject. Only the voxels of each sample are read: a patch reads the tiles it touches,
    and a slab (``LoadingMode.SLAB``) only its planes, as ``(C * k, h, w)`` channels.

    Args:
        collections: a :class:`~radiobject.VolumeCollection` or a list of them (channels).
        config: what an item is (default: whole volumes).
        labels: a column name (looked up in ``obs``, then ``obs_meta``), a dict keyed by
            obs_id or subject id, a DataFrame, a Series, or a callable ``obs_id -> label``.
            String labels become class indices (sorted names in :attr:`classes`).
        transform: a callable on the sample dict, e.g. a MONAI ``Compose`` of dict transforms.
        ctx: a ``tiledb.Ctx`` to read the collections with (default: the context each was
            opened with). Bad values of ``transform`` or ``ctx`` raise ``ConfigurationError``.

    Collections of a RadiObject with a reference grid (``RadiObject.reference``) may lie on
    other grids: samples are planned in the reference's (:attr:`reference`), and each other
    channel reads the bounding box of the sample's box in its grid and resamples it
    (trilinear; masks nearest). Without one, every channel must share its subject's grid.

    :meth:`plan` says what a key reads without reading it, and is the only definition of
    it: ``self[key]`` reads exactly ``plan(key).reads`` and builds the sample from their
    voxels (the loader's read-ahead, ``ReadConfig.read_ahead``, reads the same regions
    before their batch is asked for). Subclassing changes what is planned, never how it is
    read: override :meth:`patch_start` (where patches go), :meth:`region` (the box),
    :meth:`plan_reads` (which volumes), and :meth:`build_sample` to add keys.

    >>> from radiobject.data import make_sample_radiobject
    >>> import tempfile, os
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), progress=False)
    >>> ds = VolumeCollectionDataset(radi.T1w, labels="diagnosis")
    >>> sample = ds[0]
    >>> tuple(sample["image"].shape), ds.classes
    ((1, 16, 16, 12), ['healthy', 'tumour'])
    """

    def __init__(
        self,
        collections: VolumeCollection | Sequence[VolumeCollection],
        config: DatasetConfig | None = None,
        labels: Labels = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        *,
        ctx: tiledb.Ctx | None = None,
    ) -> None:
        where = type(self).__name__
        # read as of one version: the collections' own, else the newest as of now (pinned)
        self.collections, self.data_version = pinned(
            as_collections(with_ctx(collections, parse_ctx(ctx, where)))
        )
        self.config = config or DatasetConfig()
        self.transform = parse_transform(transform, where)
        # a cohort with a reference grid: samples are planned in it (see RadiObject.reference)
        self.reference = reference_of(self.grid_sources())
        self.refs = align(self.collections, self.reference)
        self.labels, self.classes = resolve_labels(labels, self.collections[0], self.refs)
        self.epoch = 0
        self._stored_bytes: int | None = None
        self._slots: LocalSlots | None = None  # batch memory of this process (not pickled)
        self._check_patch_fits()
        self._slices = self._slice_table() if self._mode is LoadingMode.SLICE_2D else None

    def grid_sources(self) -> list[VolumeCollection]:
        """The collections whose cohort may name a reference grid (see :func:`reference_of`)."""
        return list(self.collections)

    # -- size and indexing ---------------------------------------------------------------
    @property
    def _mode(self) -> LoadingMode:
        return self.config.loading_mode

    @property
    def items_per_volume(self) -> int:
        """Items each volume contributes per epoch (patches in PATCH and SLAB modes, else 1)."""
        config = self.config
        if config.loading_mode in _MANY_PER_VOLUME:
            return config.patches_per_volume
        return 1

    def box_size(self, index: int) -> tuple[int, ...]:
        """The size ``(x, y, z)`` of item ``index``'s box in PATCH and SLAB modes.

        PATCH: ``patch_size``; SLAB: ``slab`` planes of its volume (``slab_patch`` of each).
        """
        if self._mode is LoadingMode.SLAB:
            ref = self.refs[self.volume_of(index)]
            return self._slab_size(ref)
        assert self.config.patch_size is not None
        return self.config.patch_size

    def _slab_size(self, ref: VolumeRef) -> tuple[int, int, int]:
        cfg = self.config
        assert cfg.slab is not None
        return slab_size(ref.shape, cfg.slab, cfg.slice_orientation, cfg.slab_patch, ref.obs_id)

    def _check_patch_fits(self) -> None:
        if self._mode is LoadingMode.SLAB:
            for ref in self.refs:
                self._slab_size(ref)  # a ShapeError naming the volume that is too small
            return
        patch = self.config.patch_size
        if self._mode is not LoadingMode.PATCH or patch is None:
            return
        for ref in self.refs:
            if any(p > s for p, s in zip(patch, ref.shape[:3], strict=True)):
                raise ShapeError(
                    f"patch_size {patch} is larger than volume {ref.obs_id!r} of shape "
                    f"{ref.shape[:3]}; pass a smaller patch_size"
                )

    def _slice_table(self) -> np.ndarray:
        axis = _SLICE_AXIS[self.config.slice_orientation]
        return np.array(
            [(v, s) for v, ref in enumerate(self.refs) for s in range(ref.shape[axis])],
            dtype=np.int64,
        ).reshape(-1, 2)

    def __len__(self) -> int:
        if self._slices is not None:
            return len(self._slices)
        return len(self.refs) * self.items_per_volume

    def volume_of(self, index: int) -> int:
        """Which volume (position in :attr:`refs`) item ``index`` comes from."""
        if self._slices is not None:
            return int(self._slices[index][0])
        return index // self.items_per_volume

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used by plain integer indices (samplers pass it explicitly)."""
        self.epoch = int(epoch)

    def _key(self, key: int | tuple[int, int]) -> tuple[int, int]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        index, n = int(index), len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} items")
        return (0 if self.config.fixed_epoch else int(epoch)), index % n

    _stock_reads: bool = True
    """Whether the class keeps the stock read hooks, which a batch decoded in place relies on
    (``fetch``, ``plan_reads``, ``decode_image``, ``squeeze_slice``, ``build_sample``,
    ``apply_transform``; see :mod:`radiobject.ml._batch`). Set for each subclass."""

    _stock_plan: bool = True
    """Whether the class keeps the stock :meth:`plan` (the batch path then plans the keys it
    resolved with ``_plan``, without resolving them again). Set for each subclass."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        old = [name for name in _READ_HOOKS_REMOVED if name in vars(cls)]
        if old:
            raise TypeError(
                f"{cls.__name__} overrides {', '.join(old)}, which no longer exist: a dataset "
                "plans what a sample reads and never reads it itself. Override region, "
                "patch_start or plan_reads to change what is read, and "
                "build_sample(plan, arrays) to add keys"
            )
        cls._stock_reads = all(
            getattr(cls, name) is getattr(VolumeCollectionDataset, name) for name in _STOCK_HOOKS
        )
        cls._stock_plan = cls.plan is VolumeCollectionDataset.plan

    def _load(self, key: tuple[int, int], scope: Scope | None = None) -> dict[str, Any]:
        """Plan ``key``, execute the plan, build the sample (before ``transform``).

        ``scope``: the settings of the thread this one reads for (see ``current_scope``).
        """
        with in_scope(scope):
            start = time.perf_counter_ns()  # the read's time and size: "where the time goes"
            sample = self._plan_and_read(key)
            stage_counters().add_read(time.perf_counter_ns() - start, sample_nbytes(sample))
            return sample

    def _plan_and_read(self, key: tuple[int, int]) -> dict[str, Any]:
        plan = self.plan(key)
        return self.build_sample(plan, self.fetch(plan.reads))

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        sync_worker()  # settings published by the parent apply before this read
        with in_scope(self.loader_scope):
            parsed = self._key(key)
            sample = self._load(parsed)
        sync_worker()  # and the parent sees this read in the counters
        return self.apply_transform(sample, parsed)

    def __getitems__(self, keys: Sequence[int | tuple[int, int]]) -> list[Any]:
        """Load a whole batch: reads run concurrently on threads, transforms in order.

        TileDB releases the GIL while it reads and decompresses, so the items of a batch
        are read in parallel (``ReadConfig.max_workers`` threads); a batch whose volumes are
        all in the local read tier is read in this thread (blosc2 decodes holding the GIL:
        threads would only take turns). A batch of patches without ``transform`` is
        decoded into one array (see :mod:`radiobject.ml._batch`). Transforms run one after
        another in the calling thread, each seeded from its item's key.

        In a worker of radiobject's loaders (``failures_whole``), an error goes to the loading
        process whole (see :class:`~radiobject.ml._stages.WorkerFailure`): the same error as
        with no workers. Under any other DataLoader it is raised as usual.
        """
        try:
            return read_batch(self, keys)
        except Exception as exc:
            failure = worker_failure(exc) if self.failures_whole else None
            if failure is None:
                raise
            return failure  # type: ignore[return-value]  # collated and raised as it is

    def apply_transform(self, sample: dict[str, Any], key: tuple[int, int]) -> Any:
        """``transform`` on the sample of ``key = (epoch, index)``, its randomness from the key.

        Augmentations are a function of ``(seed, epoch, index)`` like patch positions, so
        the same key gives the same sample in any process, with any number of workers, and
        after a resume. The seed is handed to the transform (MONAI's ``set_random_state``,
        :func:`~radiobject.ml.sample_generator`); global generators are never reseeded
        (see :mod:`radiobject.ml._randomness`).
        """
        if self.transform is None:
            return sample
        seed = transform_seed(self.config.seed, *key)
        start = time.perf_counter_ns()  # published with the batch (after its collate)
        out = seeded_call(self.transform, sample, seed)
        stage_counters().add_transform(time.perf_counter_ns() - start)
        return out

    auto_tier_mb: int = 0
    """The automatic local tier's budget (MiB) for this dataset's reads, 0: none.

    Set by the training loader factories when ``ReadConfig.local_tier_mb`` is ``None`` and
    the cohort exceeds the RAM cache (:func:`~radiobject.ml._tier_auto.auto_local_tier`);
    it travels with the dataset into the loader's workers. Only this dataset's reads use
    the tier: other reads of the process are not affected.
    """

    # -- plans and read-ahead -------------------------------------------------------------
    read_ahead_schedule: ReadAheadSchedule | None = None
    """The order a loader reads this dataset in (set by radiobject's loaders)."""

    failures_whole: bool = False
    """Whether a worker sends a failed batch's error whole (set by radiobject's loaders, whose
    collate and iterator raise it in the loading process; another DataLoader would try to
    collate it)."""

    loader_scope: Scope | None = None
    """The :func:`~radiobject.settings` block its loader was built in (``None``: none).

    Set by radiobject's loaders: the main process reads under those settings wherever the
    loader is iterated (worker processes get them when they start).
    """

    def plan(self, key: int | tuple[int, int]) -> SamplePlan:
        """What the sample of ``key`` reads, computed without reading anything.

        The same key always gives the same plan, and ``self[key]`` reads exactly
        ``plan(key).reads``, in that order.
        """
        return self._plan(self._key(key))

    def _plan(self, key: tuple[int, int]) -> SamplePlan:
        """:meth:`plan` of a key ``_key`` resolved already (a batch's keys are, once)."""
        epoch, index = key
        box = self.region(index, item_rng(self.config.seed, epoch, index))
        return SamplePlan((epoch, index), index, box, self.plan_reads(index, box))

    def plan_reads(self, index: int, box: tuple[tuple[int, int], ...]) -> tuple[RegionRead, ...]:
        """The regions item ``index`` reads inside ``box`` (one per channel, named "image")."""
        return self.image_reads(self.refs[self.volume_of(index)], box)

    def image_reads(
        self, ref: VolumeRef, box: tuple[tuple[int, int], ...]
    ) -> tuple[RegionRead, ...]:
        """One read per channel of ``ref`` inside ``box`` (each with its collection's context).

        A channel on another grid than the reference's reads the bounding box of ``box``
        mapped into its grid (plus the interpolation's margin) and resamples it (linear).
        """
        whole = self.prefer_whole_volume(ref.uris[0])
        return tuple(
            grid_read(
                "image", uri, coll.ctx, box, whole, self.auto_tier_mb, ref.grid(c), linear=True
            )
            for c, (uri, coll) in enumerate(zip(ref.uris, self.collections, strict=True))
        )

    def fetch(self, reads: Sequence[RegionRead]) -> list[np.ndarray]:
        """Execute ``reads``: taken from the read-ahead where it read them, else read now.

        A failed read raises its own error, read ahead or not, with a note naming the
        region and the volume.
        """
        ahead = ahead_state(self)
        return reader().fetch(reads, None if ahead is None else ahead.take)

    def read_plan(self, plan: SamplePlan) -> Any:
        """The sample of ``plan`` (its reads executed), transformed like ``self[key]``."""
        return self.apply_transform(self.build_sample(plan, self.fetch(plan.reads)), plan.key)

    @property
    def remote(self) -> bool:
        """Whether the volumes are on object storage (``s3://`` ...), not a local folder."""
        uri = self.refs[0].uris[0] if self.refs else ""
        return "://" in uri and not uri.startswith("file://")

    def read_ahead_depth(self) -> tuple[int, int]:
        """``(samples, threads)`` of the read-ahead under the settings in force.

        ``ReadConfig.read_ahead`` when set, else ``remote_read_ahead`` for volumes on object
        storage (0, off, for local ones); threads are ``max_workers``, or ``remote_threads``
        if more, for object storage.
        """
        read = get_config().read
        if not self.remote:
            return read.read_ahead, read.max_workers
        depth = read.read_ahead or read.remote_read_ahead
        return depth, max(read.max_workers, read.remote_threads)

    def _read_ahead(self, keys: Sequence[int | tuple[int, int]]) -> None:
        if self.read_ahead_schedule is None or not keys:
            return
        depth, threads = self.read_ahead_depth()
        if depth <= 0:
            return
        if not all(isinstance(k, tuple) for k in keys):
            return  # plain indices: the order is not the loader's
        first = keys[0]
        assert isinstance(first, tuple)
        reader().prefetch(self, [(int(first[0]), int(first[1]))], depth, threads)

    def stop_read_ahead(self, finished: bool = False) -> None:
        """End this process's read-ahead of the epoch in progress.

        Mid-epoch (``finished=False``) it cancels the pending reads and waits for those
        under way. An epoch run to its end keeps them: they are the next epoch's first
        batches (and its last batch's, which the sampler gave out before it was read),
        within ``ReadConfig.read_ahead_mb``, until the next epoch takes them.
        """
        if self.read_ahead_schedule is not None:
            self.read_ahead_schedule.forget()  # the next pass may be a resume's
        ahead = ahead_state(self)
        if ahead is not None and not finished:
            ahead.cancel()

    def read_ahead_itemsize(self) -> int:
        """Bytes per voxel, to bound the read-ahead's memory (the first channel's)."""
        return _itemsize(self.refs[0].uris[0], self.collections[0].ctx)

    # -- hooks ---------------------------------------------------------------------------
    def region(self, index: int, rng: np.random.Generator) -> tuple[tuple[int, int], ...]:
        """The half-open voxel box item ``index`` reads."""
        ref = self.refs[self.volume_of(index)]
        if self._mode is LoadingMode.FULL_VOLUME:
            return tuple((0, n) for n in ref.shape)
        if self._mode is LoadingMode.SLICE_2D:
            assert self._slices is not None
            axis = _SLICE_AXIS[self.config.slice_orientation]
            s = int(self._slices[index][1])
            return tuple((s, s + 1) if a == axis else (0, n) for a, n in enumerate(ref.shape))
        start = self.patch_start(index, rng)
        box = tuple((a, a + p) for a, p in zip(start, self.box_size(index), strict=True))
        return box + tuple((0, n) for n in ref.shape[3:])

    def patch_start(self, index: int, rng: np.random.Generator) -> tuple[int, ...]:
        """Corner of the patch (or slab) of item ``index``, uniform by default.

        A slab's corner is uniform among the positions where it fits: its centre plane is
        uniform over planes ``k // 2 .. n - k + k // 2``. Override to change.
        """
        shape = self.refs[self.volume_of(index)].shape[:3]
        return random_patch_start(shape, self.box_size(index), rng)

    def decode_image(
        self, plan: SamplePlan, arrays: Sequence[np.ndarray], *, out: np.ndarray | None = None
    ) -> np.ndarray:
        """The ``"image"`` reads of ``plan`` as ``(C, X, Y, Z[, T])`` float32 values.

        ``arrays`` are the voxels of ``plan.reads`` as read (stored integers); with ``out``
        (float32, of that shape) the values are written there.
        """
        # stored integers become float32 values in one pass (cast, scale and offset); a
        # float32 channel is the array the reader returned, ours: no copy
        return reader().decode(plan.reads, arrays, into=out)

    def prefer_whole_volume(self, uri: str, ctx: tiledb.Ctx | None = None) -> bool:
        """Whether a cache miss on ``uri`` should fetch the whole volume in one query.

        Always for whole volumes and slices (every slice is read over an epoch), never for
        slabs (a slab reads its planes only). Patches: the read policy decides
        (:meth:`~radiobject.read._policy.ReadPolicy.prefer_whole_volume`), from the patch
        size, the patches per volume and :meth:`stored_bytes`: true while every volume the
        dataset reads fits the cache together, or when the patches of a volume are expected
        to touch at least half of its tiles per epoch. ``ctx`` opens ``uri`` (default: the
        first collection's context).
        """
        if self._mode in (LoadingMode.FULL_VOLUME, LoadingMode.SLICE_2D):
            return True
        if self._mode is LoadingMode.SLAB:
            return False  # a slab reads its planes only, never the volume around them
        assert self.config.patch_size is not None
        return reader().policy.prefer_whole_volume(
            uri,
            ctx or self.collections[0].ctx,
            self.config.patch_size,
            self.config.patches_per_volume,
            self.stored_bytes(),
        )

    def stored_bytes(self) -> int:
        """Bytes of all the volumes this dataset reads, once decompressed (computed once)."""
        if self._stored_bytes is None:
            self._stored_bytes = self._count_stored_bytes()
        return self._stored_bytes

    def _count_stored_bytes(self) -> int:
        voxels = sum(len(r.uris) * int(np.prod(r.shape)) for r in self.refs)
        return voxels * _itemsize(self.refs[0].uris[0], self.collections[0].ctx)

    def squeeze_slice(self, array: np.ndarray) -> np.ndarray:
        """Drop the sliced axis of a ``(C, X, Y, Z)`` array in ``SLICE_2D`` mode.

        In ``SLAB`` mode its ``k`` planes become channels: ``(C * k, h, w)`` (see
        :func:`~radiobject.ml._slab.planes_as_channels`).
        """
        if self._mode is LoadingMode.SLICE_2D:
            return array.squeeze(1 + _SLICE_AXIS[self.config.slice_orientation])
        if self._mode is LoadingMode.SLAB:
            return planes_as_channels(array, self.config.slice_orientation)
        return array

    def build_sample(self, plan: SamplePlan, arrays: Sequence[np.ndarray]) -> dict[str, Any]:
        """The sample dict of ``plan`` (before ``transform``) from the voxels of its reads.

        ``arrays[i]`` holds what ``plan.reads[i]`` read. Override to add keys; it never
        reads (what a sample reads is :meth:`plan`'s).
        """
        image = np.ascontiguousarray(self.squeeze_slice(self.decode_image(plan, arrays)))
        start = torch.tensor(plan.start, dtype=torch.int64)
        return self._sample_dict(plan.index, torch.from_numpy(image), start)

    def _sample_dict(
        self, index: int, image: torch.Tensor, patch_start: torch.Tensor, label: Any = None
    ) -> dict[str, Any]:
        """The stock sample of item ``index`` around its ``image`` and ``patch_start``.

        With its volume's ``obs_id`` and ``obs_subject_id``, and its ``label`` when the
        dataset has labels: ``label`` if given (a row of a batch's labels), else made here.
        A batch decoded in place builds its samples with it too.
        """
        ref = self.refs[self.volume_of(index)]
        sample: dict[str, Any] = {
            "image": image,
            "obs_id": ref.obs_id,
            "obs_subject_id": ref.obs_subject_id,
            "patch_start": patch_start,
        }
        if self.labels:
            sample["label"] = to_tensor(self.labels[ref.obs_id]) if label is None else label
        return sample

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["transform"] = _portable(self.transform)
        state.pop("loader_scope", None)  # a worker gets its loader's settings at start
        state["_slots"] = None  # this process's batch memory
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["transform"] = _restore(state["transform"])
        self.__dict__.update(state)

    def __repr__(self) -> str:
        names = ", ".join(c.name for c in self.collections)
        return (
            f"{type(self).__name__}([{names}], {len(self.refs)} volumes, {len(self)} items, "
            f"mode={self._mode.name})"
        )


def _itemsize(uri: str, ctx: tiledb.Ctx) -> int:
    """Bytes per voxel of the volume at ``uri`` (from its schema, read once per process)."""
    return open_array(uri, ctx)[1].dtype.itemsize


class _Pickled:
    """A callable serialised with cloudpickle (lambdas and notebook functions survive spawn)."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


def _portable(obj: Any) -> Any:
    if obj is None:
        return None
    try:
        import cloudpickle
    except ImportError:  # plain pickle: functions must be importable by the workers
        return obj
    return _Pickled(cloudpickle.dumps(obj))


def _restore(obj: Any) -> Any:
    return pickle.loads(obj.payload) if isinstance(obj, _Pickled) else obj
