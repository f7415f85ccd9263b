"""What one sample reads, as data: a :class:`SamplePlan` of :class:`RegionRead` items.

A dataset turns a key ``(epoch, index)`` into a plan without reading anything (patch
positions are a pure function of ``(seed, epoch, index)``), and a read executes the plan.
``__getitem__``, the loader's read-ahead, ``PatchPreview`` and the benchmarks share this one
definition of what a sample reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from radiobject.read import GridMap, Resample, Scaling, open_array, read_region

__all__ = ["RegionRead", "SamplePlan", "grid_read"]

Bounds = tuple[tuple[int, int], ...]


@dataclass(frozen=True, eq=False)
class RegionRead:
    """One region of one volume a sample reads: ``read_region(uri, ctx, bounds, ...)``.

    Attributes:
        name: what the voxels become in the sample (``"image"`` channels, ``"mask"``).
        uri: the volume array.
        ctx: the TileDB context it is opened with (its collection's).
        bounds: the half-open voxel box, one ``(start, stop)`` per axis.
        whole_on_miss: fetch the whole volume on a cache miss (see ``read_region``).
        auto_tier_mb: the automatic local tier budget of the dataset that planned the read
            (0: none; see ``read_region``). Reads of other datasets do not use it.
        resample: for a volume on another grid than the sample's (a cohort with a
            reference grid), how the block ``bounds`` becomes the sample's voxels (see
            :class:`~radiobject.read.Resample`); None: the voxels read are the sample's.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=1,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> from radiobject.ml import VolumeCollectionDataset
    >>> read = VolumeCollectionDataset(radi.T1w).plan((0, 0)).reads[0]
    >>> read.name, read.bounds, read.read().shape
    ('image', ((0, 16), (0, 16), (0, 12)), (16, 16, 12))
    """

    name: str
    uri: str
    ctx: Any
    bounds: Bounds
    whole_on_miss: bool = False
    auto_tier_mb: int = 0
    resample: Resample | None = None

    @property
    def key(self) -> tuple[str, int, Bounds, bool]:
        """Identity of the read: two reads with the same key return the same voxels."""
        return (self.uri, id(self.ctx), self.bounds, self.whole_on_miss)

    @property
    def voxels(self) -> int:
        """Voxels the read returns."""
        return int(np.prod([hi - lo for lo, hi in self.bounds]))

    def read(self) -> np.ndarray:
        """Read the region now (served from the block cache where it can be).

        The voxels come as stored (integers, as narrow as they allow): :attr:`scaling`
        turns them into values.
        """
        return read_region(
            self.uri,
            self.ctx,
            self.bounds,
            whole_on_miss=self.whole_on_miss,
            auto_tier_mb=self.auto_tier_mb,
        )

    @property
    def scaling(self) -> Scaling:
        """How the stored voxels :meth:`read` returns become values (cast, scale, offset)."""
        return open_array(self.uri, self.ctx)[1].values


def grid_read(
    name: str,
    uri: str,
    ctx: Any,
    box: Bounds,
    whole_on_miss: bool,
    auto_tier_mb: int,
    grid: GridMap | None,
    *,
    linear: bool,
) -> RegionRead:
    """The read of ``box`` (in the sample's grid) of a volume on ``grid``.

    ``grid`` None: the volume is on the sample's grid and ``box`` is read. Otherwise the
    block of the volume that resampling ``box`` needs is read (the bounding box of its
    mapped corners plus the interpolation's margin; further axes as in ``box``), with the
    :class:`~radiobject.read.Resample` (``linear``: trilinear, else nearest) that turns it
    into the sample's voxels.
    """
    if grid is None:
        return RegionRead(name, uri, ctx, box, whole_on_miss, auto_tier_mb)
    resample = Resample(grid, box[:3], linear)
    bounds = resample.source_bounds() + box[3:]
    return RegionRead(name, uri, ctx, bounds, whole_on_miss, auto_tier_mb, resample)


@dataclass(frozen=True, eq=False)
class SamplePlan:
    """Everything one sample reads, computed without reading.

    Attributes:
        key: ``(epoch, index)`` as the dataset resolves it (epoch 0 with ``fixed_epoch``).
        index: the item index.
        box: the sample's voxel box (its patch, slice or whole volume).
        reads: the regions read, in the order the sample reads them.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> from radiobject.ml import DatasetConfig, VolumeCollectionDataset
    >>> config = DatasetConfig(loading_mode="patch", patch_size=(8, 8, 8), patches_per_volume=2)
    >>> ds = VolumeCollectionDataset(radi.T1w, config)
    >>> plan = ds.plan((3, 1))
    >>> plan.start == tuple(ds[(3, 1)]["patch_start"].tolist())
    True
    """

    key: tuple[int, int]
    index: int
    box: Bounds
    reads: tuple[RegionRead, ...]

    @property
    def start(self) -> tuple[int, ...]:
        """Corner of the box in the first three axes (the sample's ``patch_start``)."""
        return tuple(lo for lo, _ in self.box[:3])
