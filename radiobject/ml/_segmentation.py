"""``SegmentationDataset``: image and mask patches, optionally centred on the foreground."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tiledb
import torch

from radiobject._errors import AlignmentError, ConfigurationError, RadiObjectError
from radiobject.ml._config import DatasetConfig, LoadingMode
from radiobject.ml._dataset import VolumeCollectionDataset, _itemsize
from radiobject.ml._params import parse_ctx, with_ctx
from radiobject.ml._plan import RegionRead, SamplePlan, grid_read
from radiobject.ml._sampling import foreground_patch_start
from radiobject.ml._slab import centre_plane
from radiobject.ml._subjects import align, as_collections, data_version, pinned
from radiobject.read import GridMap
from radiobject.storage import ForegroundIndex, VolumeCollection, foreground_digest

__all__ = ["SegmentationDataset"]


class SegmentationDataset(VolumeCollectionDataset):
    """Samples ``{"image": (C, X, Y, Z) float32, "mask": (1, X, Y, Z) int64, ...}``.

    With ``foreground_sampling``, a patch is centred on a mask voxel with probability
    ``foreground_probability`` and placed uniformly otherwise (the fg/bg ratio of MONAI's
    ``RandCropByPosNegLabeld`` and nnU-Net's oversampling). ``class_ratios`` weights the labels
    of multi-label masks (label ``k`` gets ``class_ratios[k - 1]``). The foreground comes
    from the mask collection's stored index: set-up reads that index once and never a mask.

    In ``SLAB`` mode (2.5D) the image is the slab's ``k`` planes as channels,
    ``(C * k, h, w)``, and ``"mask"`` is the mask of its centre plane only, ``(1, h, w)``
    (plane ``k // 2``, what a 2.5D network predicts); only that mask plane is read. A
    foreground-centred slab has the foreground voxel on its centre plane, unless that voxel
    lies within ``k // 2`` planes of the volume's edge (the slab stays inside the volume).

    Args:
        image: a collection or a list of collections (channels).
        mask: the mask collection (same subjects and grids).
        config: patch settings (default: whole volumes).
        transform: a callable on the sample dict (MONAI dict transforms with
            ``keys=["image", "mask"]``).
        foreground_sampling: centre patches on foreground with ``foreground_probability``.
        foreground_probability: share of patches centred on foreground (0..1).
        class_ratios: per-label weights for multi-label masks.
        labels: optional per-volume labels, as in :class:`VolumeCollectionDataset`.
        ctx: a ``tiledb.Ctx`` to read the images and masks with (default: each one's own).

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> from radiobject.ml import DatasetConfig, SegmentationDataset
    >>> config = DatasetConfig(loading_mode="patch", patch_size=(8, 8, 8), patches_per_volume=4)
    >>> ds = SegmentationDataset(radi.T1w, radi.seg, config, foreground_sampling=True,
    ...                          foreground_probability=1.0)
    >>> sample = ds[0]
    >>> tuple(sample["image"].shape), tuple(sample["mask"].shape), sample["mask"].dtype
    ((1, 8, 8, 8), (1, 8, 8, 8), torch.int64)
    >>> radi.obs_meta["diagnosis"].tolist()
    ['tumour', 'healthy']
    >>> # every patch of the tumour subject is centred on its mask; the healthy one has none
    >>> [ds[i]["obs_subject_id"] for i in range(len(ds)) if ds[i]["mask"].any()]
    ['sub-000', 'sub-000', 'sub-000', 'sub-000']
    """

    def __init__(
        self,
        image: VolumeCollection | Sequence[VolumeCollection],
        mask: VolumeCollection,
        config: DatasetConfig | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        *,
        foreground_sampling: bool = False,
        foreground_probability: float = 0.5,
        class_ratios: Sequence[float] | None = None,
        labels: Any = None,
        ctx: tiledb.Ctx | None = None,
    ) -> None:
        mask = with_ctx(mask, parse_ctx(ctx, type(self).__name__))
        if not isinstance(mask, VolumeCollection):
            raise RadiObjectError(f"mask must be a VolumeCollection (e.g. radi.seg), got {mask!r}")
        if not 0.0 <= float(foreground_probability) <= 1.0:
            raise ConfigurationError(
                f"foreground_probability must be between 0 and 1, got {foreground_probability}"
            )
        if class_ratios is not None and (
            len(class_ratios) == 0
            or any(not float(r) >= 0.0 for r in class_ratios)
            or sum(float(r) for r in class_ratios) <= 0.0
        ):
            raise ConfigurationError(
                f"class_ratios must be non-negative weights (label k gets class_ratios[k - 1]) "
                f"with at least one above 0, got {class_ratios!r}"
            )
        images = as_collections(with_ctx(image, parse_ctx(ctx, type(self).__name__)))
        fg_modes = (LoadingMode.PATCH, LoadingMode.SLAB)
        samples_foreground = (config or DatasetConfig()).loading_mode in fg_modes
        # (data_version: one version for all, or an error)
        if (
            foreground_sampling
            and samples_foreground
            and data_version([*images, mask]) is None
            and not mask.foreground_stored()  # its metadata: the entries are read once, below
        ):
            # index the masks that lack an entry and store it before the version is pinned,
            # so a read of that version finds it stored
            mask.foreground()
        # images and mask read as of one version: theirs, else the newest, pinned now
        (*images, mask), _ = pinned([*images, mask])
        self.mask = mask  # before the images: its cohort may name the reference grid
        super().__init__(images, config=config, labels=labels, transform=transform)
        self.foreground_sampling = bool(foreground_sampling)
        self.foreground_probability = float(foreground_probability)
        self.class_ratios = tuple(class_ratios) if class_ratios is not None else None
        mask_refs = {r.obs_subject_id: r for r in align([mask], self.reference)}
        self.mask_uris: list[str] = []
        self.mask_grids: list[GridMap | None] = []  # from the reference grid (None: on it)
        for ref in self.refs:
            other = mask_refs.get(ref.obs_subject_id)
            if other is None:
                raise AlignmentError(
                    f"subject {ref.obs_subject_id!r} has an image but no mask in {mask.name!r}"
                )
            if other.shape[:3] != ref.shape[:3]:
                raise AlignmentError(
                    f"subject {ref.obs_subject_id!r}: image shape {ref.shape[:3]} differs from "
                    f"mask shape {other.shape[:3]} in {mask.name!r}"
                )
            self.mask_uris.append(other.uris[0])
            self.mask_grids.append(other.grid(0))
        self.foreground: list[ForegroundIndex] | None = None
        if self.foreground_sampling and self.config.loading_mode in (
            LoadingMode.PATCH,
            LoadingMode.SLAB,
        ):
            index = mask.foreground()
            by_subject = dict(zip(mask.obs_subject_ids, mask.obs_ids, strict=True))
            stored = [index[by_subject[r.obs_subject_id]] for r in self.refs]
            self.foreground = [
                _in_reference(points, grid, r.shape[:3])
                for points, r, grid in zip(stored, self.refs, self.mask_grids, strict=True)
            ]
        # the identity of the index sampled from (as stored), recorded in a loader's state
        self.foreground_digest = None if self.foreground is None else foreground_digest(stored)

    def grid_sources(self) -> list[VolumeCollection]:
        """The images' collections and the mask's."""
        return [*super().grid_sources(), self.mask]

    def patch_start(self, index: int, rng: np.random.Generator) -> tuple[int, ...]:
        """Foreground-centred with ``foreground_probability`` when enabled, else uniform."""
        if self.foreground is None:
            return super().patch_start(index, rng)
        v = self.volume_of(index)
        start, _ = foreground_patch_start(
            self.refs[v].shape[:3],
            self.box_size(index),
            self.foreground[v],
            rng,
            self.foreground_probability,
            self.class_ratios,
        )
        return start

    def _count_stored_bytes(self) -> int:
        voxels = sum(int(np.prod(r.shape[:3])) for r in self.refs)
        masks = voxels * _itemsize(self.mask_uris[0], self.mask.ctx)
        return super()._count_stored_bytes() + masks

    def mask_read(self, index: int, box: tuple[tuple[int, int], ...]) -> RegionRead:
        """The read of item ``index``'s mask inside ``box`` (first three axes).

        In ``SLAB`` mode only the slab's centre plane of the mask is read.
        """
        uri = self.mask_uris[self.volume_of(index)]
        ctx = self.mask.ctx  # the mask collection's context, in every process
        whole = self.prefer_whole_volume(uri, ctx)
        if self.config.loading_mode is LoadingMode.SLAB:
            box = centre_plane(box[:3], self.config.slice_orientation)
        grid = self.mask_grids[self.volume_of(index)]  # on another grid: nearest, labels stay
        return grid_read("mask", uri, ctx, box[:3], whole, self.auto_tier_mb, grid, linear=False)

    def plan_reads(self, index: int, box: tuple[tuple[int, int], ...]) -> tuple[RegionRead, ...]:
        """The image channels' reads, then the mask's."""
        return (*super().plan_reads(index, box), self.mask_read(index, box))

    def build_sample(self, plan: SamplePlan, arrays: Sequence[np.ndarray]) -> dict[str, Any]:
        """Image sample plus the mask of the same region (``"mask"``)."""
        sample = super().build_sample(plan, arrays)
        ((read, mask),) = [
            (r, a) for r, a in zip(plan.reads, arrays, strict=True) if r.name == "mask"
        ]
        labels = read.scaling.decode(mask, np.int64)  # labels as int64, from any stored dtype
        if read.resample is not None:  # a mask on another grid: nearest neighbour
            labels = read.resample.apply(labels, read.bounds)
        sample["mask"] = torch.from_numpy(self.squeeze_slice(labels[None]))
        return sample


def _in_reference(
    index: ForegroundIndex, grid: GridMap | None, shape: Sequence[int]
) -> ForegroundIndex:
    """The foreground ``index`` of a mask in the reference grid of ``shape``.

    A mask on another grid has its indexed voxels mapped to the nearest reference voxel
    (inside the volume), so a foreground-centred patch is centred on the mask's foreground.
    """
    if grid is None:
        return index
    points = {k: grid.to_reference(p, shape) for k, p in index.points.items()}
    return ForegroundIndex(points=points, counts=dict(index.counts))
