"""DataLoader factories and the epoch-aware sampler they share.

Every loader made here is a :class:`~radiobject.ml.RadiObjectLoader`: its ``state_dict()``
goes into the checkpoint, and ``load_state_dict()`` resumes mid-epoch with exactly the
samples the uninterrupted run would have had, whatever ``num_workers``. Loaders with
workers start them with ``forkserver``, or with ``fork`` on Linux where a forkserver worker
cannot start (a plain script without ``if __name__ == "__main__":``, a notebook's own
``worker_init_fn``), and check the start method before a worker starts; see
:mod:`radiobject.ml._start_method`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from multiprocessing.context import BaseContext
from typing import Any

import tiledb

from radiobject._errors import ConfigurationError
from radiobject.config import current_scope, get_config
from radiobject.ml._config import DatasetConfig, LoadingMode, factory_config, sample_config
from radiobject.ml._dataset import VolumeCollectionDataset
from radiobject.ml._grid import GridPatchDataset
from radiobject.ml._params import parse_batch_size, parse_loader_params, parse_num_workers
from radiobject.ml._read_ahead import ReadAheadSchedule
from radiobject.ml._recipe import recorded
from radiobject.ml._sampling import shuffled, window_shuffled
from radiobject.ml._segmentation import SegmentationDataset
from radiobject.ml._shared import SharedLoaderState, TimedCollate
from radiobject.ml._start_method import choose_start_method, mp_context
from radiobject.ml._state import RadiObjectLoader, ResumableSampler
from radiobject.ml._subjects import Labels
from radiobject.ml._tier_auto import auto_local_tier
from radiobject.ml._workers import _preload_modules, worker_init
from radiobject.storage import VolumeCollection

__all__ = [
    "EpochSampler",
    "create_inference_dataloader",
    "create_segmentation_dataloader",
    "create_training_dataloader",
    "create_validation_dataloader",
]


class EpochSampler(ResumableSampler):
    """Yields ``(epoch, index)`` so every worker draws the same sample for the same key.

    Each pass over the sampler is a new epoch (0, 1, 2 ...) unless :meth:`set_epoch` is
    called. ``shuffle_window`` shuffles within runs of that many volumes, so patches of one
    volume are read close together and share its cached tiles. A pass can start part-way
    through an epoch (:meth:`~ResumableSampler.resume_at`, used by
    :meth:`RadiObjectLoader.load_state_dict`).

    Args:
        dataset: the dataset to index.
        shuffle: shuffle the order each epoch (a function of ``seed`` and the epoch).
        seed: shuffling seed.
        shuffle_window: volumes per shuffling window (``None``: shuffle everything).

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> import torch
    >>> from torch.utils.data import DataLoader
    >>> from radiobject.ml import DatasetConfig, EpochSampler, VolumeCollectionDataset
    >>> config = DatasetConfig(loading_mode="patch", patch_size=(8, 8, 8), patches_per_volume=3)
    >>> ds = VolumeCollectionDataset(radi.T1w, config=config)
    >>> sampler = EpochSampler(ds, seed=0)
    >>> first, second = list(sampler), list(sampler)  # two passes: epochs 0 and 1
    >>> first[:2], sorted(i for _, i in first), {epoch for epoch, _ in second}
    ([(0, 0), (0, 4)], [0, 1, 2, 3, 4, 5], {1})
    >>> torch.equal(ds[first[1]]["image"], ds[first[1]]["image"])  # same key, same patch
    True
    >>> batch = next(iter(DataLoader(ds, sampler=sampler, batch_size=2)))
    >>> tuple(batch["image"].shape)
    (2, 1, 8, 8, 8)
    """

    def __init__(
        self,
        dataset: VolumeCollectionDataset,
        *,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_window: int | None = None,
    ) -> None:
        super().__init__(len(dataset), seed=seed)
        self.shuffle = shuffle
        self.shuffle_window = shuffle_window
        self._groups: list[list[int]] | None = None
        if shuffle_window:
            groups: dict[int, list[int]] = {}
            for i in range(self.n):
                groups.setdefault(dataset.volume_of(i), []).append(i)
            self._groups = list(groups.values())

    @property
    def order_name(self) -> str:
        """``"sequential"``, ``"shuffled"`` or ``"window-shuffled:<volumes>"``."""
        if not self.shuffle:
            return "sequential"
        return f"window-shuffled:{self.shuffle_window}" if self._groups else "shuffled"

    def order(self, epoch: int) -> list[int]:
        """Item order of one epoch."""
        if not self.shuffle:
            return list(range(self.n))
        if self._groups is not None:
            return window_shuffled(self._groups, self.shuffle_window or 1, self.seed, epoch)
        return [int(i) for i in shuffled(self.n, self.seed, epoch)]


def build_loader(
    dataset: VolumeCollectionDataset,
    *,
    batch_size: int,
    sampler: ResumableSampler,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
    drop_last: bool = False,
    prefetch_factor: int | None = None,
    multiprocessing_context: str | BaseContext | None = None,
    worker_init_fn: Callable[[int], None] | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> RadiObjectLoader:
    """A resumable DataLoader over ``dataset`` with radiobject's safe worker set-up."""
    batch_size = parse_batch_size(batch_size, "build_loader")
    num_workers = parse_num_workers(num_workers, "build_loader")
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        if multiprocessing_context is None:  # forkserver, or fork where only fork can work
            multiprocessing_context = choose_start_method(
                lambda: (dataset, worker_init_fn, collate_fn)
            )
        mp_ctx = mp_context(multiprocessing_context, _preload_modules(dataset))
        # a slot per batch a worker makes or has queued, and two the training loop holds
        slots = num_workers * ((prefetch_factor or 2) + 1) + 2
        shared = SharedLoaderState(mp_ctx, num_workers, batch_slots=slots)
        kwargs["multiprocessing_context"] = mp_ctx
        kwargs["worker_init_fn"] = worker_init(get_config(), num_workers, worker_init_fn, shared)
        kwargs["persistent_workers"] = True if persistent_workers is None else persistent_workers
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    kwargs["collate_fn"] = TimedCollate(collate_fn)  # times it: "where the time goes"
    # read here under the settings() block it was built in, if any (workers: worker_init)
    dataset.loader_scope = current_scope()
    dataset.failures_whole = True  # its collate and iterator raise a worker's error as it was
    if isinstance(sampler, ResumableSampler):  # the order its read-ahead foresees
        # the pass's own order (after a resume, the rest of the epoch; this rank's share)
        # workers that end with the epoch would read the next one's batches in vain
        across = num_workers == 0 or bool(kwargs.get("persistent_workers"))
        dataset.read_ahead_schedule = ReadAheadSchedule(
            sampler.pass_order, batch_size, num_workers, drop_last=drop_last, across_epochs=across
        )
        if num_workers == 0:  # workers' reads ahead end with the workers
            sampler.on_stop = dataset.stop_read_ahead
    import torch

    # a generator of the loader's own: DataLoader draws each epoch's worker base seed from
    # torch's global generator otherwise, and the user's stream would move with every epoch
    kwargs["generator"] = torch.Generator().manual_seed(int(getattr(sampler, "seed", 0)))
    return RadiObjectLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        # pinning only helps a GPU; without one torch would just warn
        pin_memory=pin_memory and torch.cuda.is_available(),
        drop_last=drop_last,
        **kwargs,
    )


_SEG_PATCH = (96, 96, 96)  # create_segmentation_dataloader's default patch (not a slab's)


def _window(dataset: VolumeCollectionDataset, shuffle_window: int | str | None) -> int | None:
    if shuffle_window == "auto":
        return 4 if dataset.items_per_volume > 1 else None
    if isinstance(shuffle_window, str):
        raise ConfigurationError(
            f"shuffle_window must be an integer, None or 'auto', got {shuffle_window!r}"
        )
    return shuffle_window


@recorded
def create_training_dataloader(
    collections: VolumeCollection | Sequence[VolumeCollection],
    labels: Labels = None,
    transform: Callable[[dict[str, Any]], Any] | None = None,
    batch_size: int = 4,
    *,
    patch_size: Sequence[int] | int | None = None,
    patches_per_volume: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
    seed: int = 0,
    config: DatasetConfig | None = None,
    shuffle_window: int | str | None = "auto",
    drop_last: bool | None = None,
    ctx: tiledb.Ctx | None = None,
    slab: int | None = None,
    axis: str = "axial",
    slab_patch: Sequence[int] | int | None = None,
    **loader_kwargs: Any,
) -> RadiObjectLoader:
    """A shuffling DataLoader of dict samples for training (MONAI dict transforms welcome).

    Args:
        collections: a collection or a list of them (stacked as channels).
        labels: a column name such as ``"diagnosis"`` (looked up in ``obs`` then
            ``obs_meta``), a dict, a DataFrame or a callable.
        transform: a callable on the sample dict, e.g. a MONAI ``Compose``.
        batch_size: samples per batch (an integer >= 1).
        patch_size: read random patches of this size: three integers ``(x, y, z)`` or one
            for a cube (default: whole volumes).
        patches_per_volume: patches per volume and epoch.
        num_workers: worker processes, >= 0 (started safely, see module docs).
        pin_memory: pin batches for faster GPU transfer.
        persistent_workers: keep workers between epochs (default: yes when
            ``num_workers > 0``: they keep their caches and open volumes between epochs).
        seed: patch positions and order derive from ``(seed, epoch, index)``.
        config: a full :class:`DatasetConfig` (overrides the patch arguments).
        shuffle_window: shuffle within windows of this many volumes (``"auto"``: 4 when a
            volume gives several patches, for cache locality; ``None``: global shuffle).
        drop_last: drop the last incomplete batch (default: yes, unless the dataset is
            smaller than one batch).
        ctx: a ``tiledb.Ctx`` to read the collections with (default: each one's own).
        slab: 2.5D samples: ``slab`` adjacent planes (any integer >= 1), read alone and
            stacked as channels, image ``(C * slab, h, w)`` (channel ``c * slab + j`` is
            plane ``j`` of collection ``c``); ``patches_per_volume`` slabs per volume and
            epoch, placed uniformly where they fit (see :class:`DatasetConfig`).
        axis: the slab's planes, ``"axial"`` (default), ``"coronal"`` or ``"sagittal"``.
        slab_patch: a 2D patch ``(h, w)`` of the slab's planes (default: whole planes).
        **loader_kwargs: ``prefetch_factor``, ``multiprocessing_context``,
            ``worker_init_fn`` or ``collate_fn`` for the DataLoader.

    >>> from radiobject.data import make_sample_radiobject
    >>> import tempfile, os
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=4,
    ...                               shape=(16, 16, 12), progress=False)
    >>> loader = create_training_dataloader(radi.T1w, labels="diagnosis", batch_size=2)
    >>> batch = next(iter(loader))
    >>> tuple(batch["image"].shape), tuple(batch["label"].shape)
    ((2, 1, 16, 16, 12), (2,))

    The same parameters mean the same in every factory, and bad values say so:

    >>> create_training_dataloader(radi.T1w, patch_size=8).dataset.config.patch_size
    (8, 8, 8)
    >>> create_training_dataloader(radi.T1w, num_workers=-1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: create_training_dataloader: num_workers must be >= 0...

    Slabs of 3 axial planes, a 2D patch of each (2.5D):

    >>> slabs = create_training_dataloader(radi.T1w, slab=3, slab_patch=(8, 8), batch_size=2)
    >>> tuple(next(iter(slabs))["image"].shape)
    (2, 3, 8, 8)
    """
    where = "create_training_dataloader"
    p = parse_loader_params(
        where,
        patch_size=patch_size,
        batch_size=batch_size,
        num_workers=num_workers,
        transform=transform,
        ctx=ctx,
    )
    cfg = sample_config(
        where, p.patch_size, config, patches_per_volume, seed, slab, axis, slab_patch
    )
    dataset = VolumeCollectionDataset(
        collections, cfg, labels=labels, transform=p.transform, ctx=p.ctx
    )
    # its reads use the local tier when the cohort exceeds the RAM cache (local_tier_mb=None)
    dataset.auto_tier_mb = auto_local_tier(dataset.collections)
    sampler = EpochSampler(
        dataset, shuffle=True, seed=cfg.seed, shuffle_window=_window(dataset, shuffle_window)
    )
    if drop_last is None:
        drop_last = len(dataset) > p.batch_size
    return build_loader(
        dataset,
        batch_size=p.batch_size,
        sampler=sampler,
        num_workers=p.num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers,
        drop_last=drop_last,
        **loader_kwargs,
    )


@recorded
def create_validation_dataloader(
    collections: VolumeCollection | Sequence[VolumeCollection],
    labels: Labels = None,
    transform: Callable[[dict[str, Any]], Any] | None = None,
    batch_size: int = 4,
    *,
    patch_size: Sequence[int] | int | None = None,
    patches_per_volume: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
    seed: int = 0,
    config: DatasetConfig | None = None,
    ctx: tiledb.Ctx | None = None,
    **loader_kwargs: Any,
) -> RadiObjectLoader:
    """A deterministic DataLoader for validation: fixed order, same patches every epoch.

    Arguments are those of :func:`create_training_dataloader`; nothing is shuffled or dropped.
    A given ``config`` is used with ``fixed_epoch=True``, so its patches never move either.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> import torch
    >>> from radiobject.ml import create_validation_dataloader
    >>> loader = create_validation_dataloader(radi.T1w, labels="diagnosis", batch_size=2,
    ...                                       patch_size=(8, 8, 8))
    >>> first, again = next(iter(loader)), next(iter(loader))  # two epochs
    >>> first["obs_id"], first["label"].tolist()
    (['sub-000_T1w', 'sub-001_T1w'], [1, 0])
    >>> torch.equal(first["image"], again["image"])  # the same patches every epoch
    True
    """
    p = parse_loader_params(
        "create_validation_dataloader",
        patch_size=patch_size,
        batch_size=batch_size,
        num_workers=num_workers,
        transform=transform,
        ctx=ctx,
    )
    cfg = factory_config(config, p.patch_size, patches_per_volume, seed, fixed_epoch=True)
    if not cfg.fixed_epoch:
        cfg = replace(cfg, fixed_epoch=True)
    dataset = VolumeCollectionDataset(
        collections, cfg, labels=labels, transform=p.transform, ctx=p.ctx
    )
    sampler = EpochSampler(dataset, shuffle=False, seed=cfg.seed)
    return build_loader(
        dataset,
        batch_size=p.batch_size,
        sampler=sampler,
        num_workers=p.num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers,
        drop_last=False,
        **loader_kwargs,
    )


@recorded
def create_inference_dataloader(
    collections: VolumeCollection | Sequence[VolumeCollection],
    transform: Callable[[dict[str, Any]], Any] | None = None,
    batch_size: int = 1,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
    patch_size: Sequence[int] | int | None = None,
    overlap: float | Sequence[float] = 0.25,
    distributed: bool = False,
    ctx: tiledb.Ctx | None = None,
    **loader_kwargs: Any,
) -> RadiObjectLoader:
    """Whole volumes in collection order (one per batch by default), or sliding-window patches.

    Every batch keeps ``"obs_id"`` and ``"obs_subject_id"`` so predictions can be written
    back (e.g. with ``VolumeCollection.from_numpy`` and the volume's affine).

    With ``patch_size``, items are the patches of MONAI's sliding-window grid (step
    ``int(patch * (1 - overlap))``, the last patch flush with the volume's end), each read
    from its own box only, with ``"patch_start"``, ``"volume_index"`` and ``"patch_index"``
    (see :class:`radiobject.ml.GridPatchDataset`); :class:`radiobject.ml.PredictionWriter`
    blends the outputs and writes them back region by region. ``distributed=True`` gives
    this rank (of an initialised ``torch.distributed`` group) every ``world_size``-th volume.
    ``transform``, ``batch_size``, ``num_workers``, ``persistent_workers``, ``patch_size``
    and ``ctx`` are those of :func:`create_training_dataloader`.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> from radiobject.ml import create_inference_dataloader
    >>> for batch in create_inference_dataloader(radi.T1w):
    ...     print(batch["obs_id"], batch["obs_subject_id"], tuple(batch["image"].shape))
    ['sub-000_T1w'] ['sub-000'] (1, 1, 16, 16, 12)
    ['sub-001_T1w'] ['sub-001'] (1, 1, 16, 16, 12)
    >>> loader = create_inference_dataloader(radi.T1w, patch_size=8, overlap=0.5, batch_size=4)
    >>> batch = next(iter(loader))
    >>> tuple(batch["image"].shape), len(loader.dataset), batch["patch_start"][1].tolist()
    ((4, 1, 8, 8, 8), 36, [0, 4, 0])
    """
    p = parse_loader_params(
        "create_inference_dataloader",
        patch_size=patch_size,
        batch_size=batch_size,
        num_workers=num_workers,
        transform=transform,
        ctx=ctx,
    )
    if p.patch_size is None:
        if distributed:
            raise ConfigurationError(
                "distributed=True shards sliding-window patches; pass patch_size, or use "
                "create_distributed_dataloader for whole volumes"
            )
        cfg = DatasetConfig(loading_mode=LoadingMode.FULL_VOLUME, fixed_epoch=True)
        dataset = VolumeCollectionDataset(collections, cfg, transform=p.transform, ctx=p.ctx)
    else:
        rank, world = _rank_and_world() if distributed else (0, 1)
        dataset = GridPatchDataset(
            collections, p.patch_size, overlap, p.transform, rank=rank, world_size=world, ctx=p.ctx
        )
    sampler = EpochSampler(dataset, shuffle=False)
    return build_loader(
        dataset,
        batch_size=p.batch_size,
        sampler=sampler,
        num_workers=p.num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers,
        drop_last=False,
        **loader_kwargs,
    )


def _rank_and_world() -> tuple[int, int]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigurationError(
            "distributed=True needs torch.distributed initialised (init_process_group) first"
        )
    return dist.get_rank(), dist.get_world_size()


@recorded
def create_segmentation_dataloader(
    image: VolumeCollection | Sequence[VolumeCollection],
    mask: VolumeCollection,
    batch_size: int = 4,
    patch_size: Sequence[int] | int | None = _SEG_PATCH,
    *,
    patches_per_volume: int = 1,
    foreground_sampling: bool = True,
    foreground_probability: float = 0.5,
    class_ratios: Sequence[float] | None = None,
    transform: Callable[[dict[str, Any]], Any] | None = None,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
    seed: int = 0,
    shuffle: bool = True,
    config: DatasetConfig | None = None,
    shuffle_window: int | str | None = "auto",
    drop_last: bool | None = None,
    ctx: tiledb.Ctx | None = None,
    slab: int | None = None,
    axis: str = "axial",
    slab_patch: Sequence[int] | int | None = None,
    **loader_kwargs: Any,
) -> RadiObjectLoader:
    """Image and mask patches for segmentation, biased toward the foreground.

    Args:
        image: image collection(s) (channels).
        mask: the mask collection, e.g. ``radi.seg``.
        batch_size: samples per batch.
        patch_size: patch shape, three integers or one for a cube (``None``: whole volumes).
        patches_per_volume: patches per volume and epoch.
        foreground_sampling: centre patches on mask voxels with ``foreground_probability``.
        foreground_probability: share of foreground-centred patches (nnU-Net uses 0.33).
        class_ratios: per-label weights for multi-label masks.
        transform: a callable on the sample dict (``keys=["image", "mask"]`` for MONAI).
        num_workers: worker processes.
        pin_memory: pin batches for faster GPU transfer.
        persistent_workers: keep workers between epochs (default: yes when
            ``num_workers > 0``: they keep their caches and open volumes between epochs).
        seed: sampling seed.
        shuffle: shuffle each epoch.
        config: a full :class:`DatasetConfig` (overrides the patch arguments).
        shuffle_window: as in :func:`create_training_dataloader`.
        drop_last: as in :func:`create_training_dataloader`.
        ctx: a ``tiledb.Ctx`` to read images and masks with (default: each one's own).
        slab: 2.5D samples of ``slab`` adjacent planes as channels, as in
            :func:`create_training_dataloader` (leave ``patch_size`` out); ``"mask"`` is
            the mask of the slab's centre plane, ``(1, h, w)``, the only mask plane read.
            Foreground sampling centres the slab on a mask voxel.
        axis: the slab's planes, ``"axial"`` (default), ``"coronal"`` or ``"sagittal"``.
        slab_patch: a 2D patch ``(h, w)`` of the slab's planes (default: whole planes).
        **loader_kwargs: further DataLoader options.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> from radiobject.ml import create_segmentation_dataloader
    >>> loader = create_segmentation_dataloader(radi.T1w, radi.seg, batch_size=4,
    ...                                         patch_size=(8, 8, 8), patches_per_volume=2)
    >>> batch = next(iter(loader))
    >>> tuple(batch["image"].shape), tuple(batch["mask"].shape), batch["mask"].dtype
    ((4, 1, 8, 8, 8), (4, 1, 8, 8, 8), torch.int64)
    >>> sorted(batch)
    ['image', 'mask', 'obs_id', 'obs_subject_id', 'patch_start']

    Slabs of 5 axial planes, each with the mask of its centre plane:

    >>> slabs = create_segmentation_dataloader(radi.T1w, radi.seg, batch_size=2, slab=5)
    >>> batch = next(iter(slabs))
    >>> tuple(batch["image"].shape), tuple(batch["mask"].shape)
    ((2, 5, 16, 16), (2, 1, 16, 16))
    """
    where = "create_segmentation_dataloader"
    p = parse_loader_params(
        where,
        patch_size=None if slab is not None and patch_size is _SEG_PATCH else patch_size,
        batch_size=batch_size,
        num_workers=num_workers,
        transform=transform,
        ctx=ctx,
    )
    cfg = sample_config(
        where, p.patch_size, config, patches_per_volume, seed, slab, axis, slab_patch
    )
    dataset = SegmentationDataset(
        image,
        mask,
        cfg,
        p.transform,
        foreground_sampling=foreground_sampling,
        foreground_probability=foreground_probability,
        class_ratios=class_ratios,
        ctx=p.ctx,
    )
    # its reads use the local tier when the cohort exceeds the RAM cache
    dataset.auto_tier_mb = auto_local_tier([*dataset.collections, dataset.mask])
    sampler = EpochSampler(
        dataset, shuffle=shuffle, seed=cfg.seed, shuffle_window=_window(dataset, shuffle_window)
    )
    if drop_last is None:
        drop_last = shuffle and len(dataset) > p.batch_size
    return build_loader(
        dataset,
        batch_size=p.batch_size,
        sampler=sampler,
        num_workers=p.num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers,
        drop_last=drop_last,
        **loader_kwargs,
    )
