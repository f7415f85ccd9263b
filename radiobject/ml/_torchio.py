"""TorchIO integration: lazy ``tio.Subject``s that read their volumes from TileDB on load."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tiledb
import torch

from radiobject._context import ContextRef, get_tiledb_ctx, portable_ctx
from radiobject.ml._deps import require
from radiobject.ml._params import parse_ctx, parse_transform, with_ctx
from radiobject.ml._plan import RegionRead, SamplePlan, grid_read
from radiobject.ml._subjects import Labels, align, as_collections, reference_of, resolve_labels
from radiobject.read import Resample
from radiobject.storage import Volume, VolumeCollection

tio: Any = require("torchio")  # TorchIO ships no type information

__all__ = ["TileDBLabelMap", "TileDBScalarImage", "VolumeCollectionSubjectsDataset"]


def read_tiledb_volume(
    uri: str,
    _path: Any = None,
    *,
    ctx: ContextRef | None = None,
    bounds: tuple[tuple[int, int], ...] | None = None,
    resample: Resample | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """TorchIO reader: the volume at ``uri`` as a ``(C, X, Y, Z)`` tensor and its affine.

    ``ctx`` is the context of the volume's collection (``None``: the settings in force);
    a loading process that unpickled it builds its own with the same settings. ``bounds``
    (default: the whole volume) is the region read, as the dataset planned it. With
    ``resample`` (a volume on another grid than its cohort's reference), the region read is
    resampled to the reference grid's voxels, and the affine is the reference volume's.
    """
    vol = Volume(uri, ctx=ctx.get() if ctx is not None else None)
    data = vol.read(bounds) if bounds is not None else vol.to_numpy()
    affine = vol.affine
    if resample is not None:
        data = resample.apply(data, bounds or tuple((0, n) for n in vol.shape))
        affine = resample.grid.reference_affine(affine)
    data = data[None] if data.ndim == 3 else np.moveaxis(data, -1, 0)
    if data.dtype == np.uint16:
        data = data.astype(np.int32)
    elif data.dtype == np.uint32:
        data = data.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(data)), affine


class _TileDBImageMixin:
    """Images whose 'path' is a TileDB URI (local or s3://), read by radiobject."""

    def _parse_single_path(self, path: Any, *, verify: bool = True) -> Path:
        # the mixin's super() is TorchIO's Image, which mypy cannot see (untyped)
        parsed: Path = super()._parse_single_path(path, verify=False)  # type: ignore[misc]
        return parsed


class TileDBScalarImage(_TileDBImageMixin, tio.ScalarImage):
    """A ``tio.ScalarImage`` read lazily from a radiobject volume."""


class TileDBLabelMap(_TileDBImageMixin, tio.LabelMap):
    """A ``tio.LabelMap`` read lazily from a radiobject mask volume."""


class VolumeCollectionSubjectsDataset(tio.SubjectsDataset):
    """A ``tio.SubjectsDataset`` of lazy subjects: one image per collection, read on load.

    Mask collections (``is_mask``) become ``tio.LabelMap``; the others ``tio.ScalarImage``.
    In a cohort with a reference grid (``RadiObject.from_images(..., reference="T1w")``)
    every image is on the reference grid: a volume on another grid is read whole and
    resampled on load (trilinear; nearest neighbour for masks), as MONAI's
    ``ResampleToMatchd`` would, so TorchIO's samplers cut patches in the reference grid.
    Each subject also has ``obs_subject_id`` and, when ``labels`` is given, ``label``.
    Use it with ``tio.Queue`` and a patch sampler (every released TorchIO ``Queue`` needs
    one, e.g. ``tio.UniformSampler(patch_size)`` or ``tio.LabelSampler(patch_size, "seg")``).

    ``tio.Queue(..., num_workers=n)`` works as it is: its loading processes start with the
    platform's default start method (``fork`` on Linux), and each builds its own TileDB
    context and handles on first use (a forked process never uses its parent's). TileDB-Py
    warns once per process when it sees a ``fork`` after a context was made; for these
    subjects the warning does not apply. The subjects are picklable, so ``forkserver`` and
    ``spawn`` workers load them too.

    This dataset keeps no resume state: ``tio.Queue`` owns the order of subjects and the
    patch positions (drawn from torch's global generator in its own loader) and keeps a
    buffer of patches that no state dict captures. For exact mid-epoch resume, use
    :func:`~radiobject.ml.create_segmentation_dataloader` or
    :func:`~radiobject.ml.create_training_dataloader` (their loaders have ``state_dict``).

    :meth:`plan` says what loading subject ``i`` reads (each of its whole volumes); the
    subjects' readers are made from those plans, so a load reads exactly its plan.

    Args:
        collections: collection(s); each becomes an image keyed by its name.
        labels: per-volume labels, as in :class:`VolumeCollectionDataset`.
        transform: a TorchIO transform applied to each loaded subject.
        ctx: a ``tiledb.Ctx`` to read the collections with (default: each one's own).

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> import torch
    >>> import torchio as tio
    >>> from radiobject.ml import VolumeCollectionSubjectsDataset
    >>> ds = VolumeCollectionSubjectsDataset([radi.T1w, radi.seg], labels="diagnosis")
    >>> subject = ds[0]
    >>> subject["obs_subject_id"], subject["label"], subject["T1w"].shape
    ('sub-000', 1, (1, 16, 16, 12))
    >>> isinstance(subject["T1w"], tio.ScalarImage), isinstance(subject["seg"], tio.LabelMap)
    (True, True)
    >>> queue = tio.Queue(ds, max_length=4, samples_per_volume=2,
    ...                   sampler=tio.UniformSampler(8), num_workers=0)
    >>> batch = next(iter(torch.utils.data.DataLoader(queue, batch_size=4)))
    >>> tuple(batch["T1w"][tio.DATA].shape), tuple(batch["seg"][tio.DATA].shape)
    ((4, 1, 8, 8, 8), (4, 1, 8, 8, 8))
    """

    def __init__(
        self,
        collections: VolumeCollection | Sequence[VolumeCollection],
        labels: Labels = None,
        transform: Callable[[Any], Any] | None = None,
        *,
        ctx: tiledb.Ctx | None = None,
    ) -> None:
        where = type(self).__name__
        self.collections = as_collections(with_ctx(collections, parse_ctx(ctx, where)))
        transform = parse_transform(transform, where)
        self.reference = reference_of(self.collections)
        refs = align(self.collections, self.reference)
        values, self.classes = resolve_labels(labels, self.collections[0], refs)
        # the collections' contexts travel with the subjects to TorchIO's loading processes
        self._ctxs = [portable_ctx(coll._ctx) for coll in self.collections]
        self.refs = refs
        subjects = []
        for index, ref in enumerate(refs):
            fields: dict[str, Any] = {"obs_subject_id": ref.obs_subject_id, "obs_id": ref.obs_id}
            for coll, ctx, read in zip(
                self.collections, self._ctxs, self._planned(index), strict=True
            ):
                kind = TileDBLabelMap if coll.is_mask else TileDBScalarImage
                reader = functools.partial(
                    read_tiledb_volume,
                    read.uri,
                    ctx=ctx,
                    bounds=read.bounds,
                    resample=read.resample,
                )
                fields[read.name] = kind(read.uri, reader=reader)
            if values:
                fields["label"] = values[ref.obs_id]
            subjects.append(tio.Subject(**fields))
        super().__init__(subjects, transform=transform)

    def _planned(self, index: int, ctxs: Sequence[Any] | None = None) -> list[RegionRead]:
        """The read of each volume of subject ``index`` (the contexts ``ctxs``, else None).

        Whole volumes on the reference grid; one on another grid reads the block the whole
        reference box needs, resampled (:func:`~radiobject.ml._plan.grid_read`).
        """
        ref = self.refs[index]
        box = tuple((0, n) for n in ref.shape)
        ctxs = ctxs if ctxs is not None else [None] * len(self.collections)
        return [
            grid_read(c.name, uri, ctx, box, False, 0, ref.grid(channel), linear=not c.is_mask)
            for channel, (c, uri, ctx) in enumerate(
                zip(self.collections, ref.uris, ctxs, strict=True)
            )
        ]

    def plan(self, key: int | tuple[int, int]) -> SamplePlan:
        """What loading subject ``key`` reads (an index, or ``(epoch, index)``): whole volumes.

        A volume on another grid than the cohort's reference reads the block the reference
        volume's box maps to (its :attr:`~radiobject.ml.RegionRead.resample` says how).

        >>> import os, tempfile
        >>> from radiobject.data import make_sample_radiobject
        >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=1,
        ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
        >>> from radiobject.ml import VolumeCollectionSubjectsDataset
        >>> plan = VolumeCollectionSubjectsDataset([radi.T1w, radi.seg]).plan(0)
        >>> [(r.name, r.bounds) for r in plan.reads]
        [('T1w', ((0, 16), (0, 16), (0, 12))), ('seg', ((0, 16), (0, 16), (0, 12)))]
        """
        epoch, index = key if isinstance(key, tuple) else (0, key)
        index = int(index)
        if not -len(self.refs) <= index < len(self.refs):
            raise IndexError(f"index {index} out of range for a dataset of {len(self.refs)} items")
        index %= len(self.refs)
        ctxs = [get_tiledb_ctx() if ctx is None else ctx.get() for ctx in self._ctxs]
        box = tuple((0, n) for n in self.refs[index].shape)
        return SamplePlan((int(epoch), index), index, box, tuple(self._planned(index, ctxs)))
