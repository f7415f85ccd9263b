"""The constructors of RadiObject: ``radiobject.ingest`` writes, the class opens the result.

:class:`CohortConstructors` is a base of :class:`~radiobject.storage._radiobject.RadiObject`
(as :class:`~radiobject.storage._collection_ingest.CollectionConstructors` is of
``VolumeCollection``): its class methods write a new cohort from collections or image files,
then open it with ``cls(uri, ctx=ctx)``. The read API lives in
:mod:`radiobject.storage._radiobject`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import pandas as pd
import tiledb

from radiobject._context import get_tiledb_ctx

if TYPE_CHECKING:
    from radiobject.storage._collection import VolumeCollection

__all__ = ["CohortConstructors"]


class CohortConstructors:
    """Class methods that write a new RadiObject and open it (a base of RadiObject).

    >>> import numpy as np, tempfile, os
    >>> from radiobject import RadiObject, VolumeCollection
    >>> issubclass(RadiObject, CohortConstructors)
    True
    >>> d = tempfile.mkdtemp()
    >>> ct = VolumeCollection.from_numpy(os.path.join(d, "CT"), [np.ones((4, 4, 3))])
    >>> type(RadiObject.from_collections(os.path.join(d, "r"), {"CT": ct}, progress=False))
    <class 'radiobject.storage._radiobject.RadiObject'>
    """

    if TYPE_CHECKING:
        _ctx: tiledb.Ctx | None

        # what every constructor ends in, ``cls(uri, ctx=ctx)``: RadiObject.__init__
        def __init__(self, uri: str | Path, ctx: tiledb.Ctx | None = None) -> None: ...

    @classmethod
    def from_collections(
        cls,
        uri: str | Path,
        collections: Mapping[str, VolumeCollection],
        *,
        obs_meta: pd.DataFrame | None = None,
        validate_alignment: bool = True,
        progress: bool = True,
        ctx: tiledb.Ctx | None = None,
        executor: Executor | None = None,
        reference: str | None = None,
    ) -> Self:
        """A new RadiObject at ``uri`` holding copies of ``collections`` (views allowed).

        Args:
            uri: target (must not exist).
            collections: name -> collection or view; the subjects are the union of theirs.
            obs_meta: one row per subject with an ``obs_subject_id`` column (default: ids only).
            validate_alignment: check that each subject's volumes share shape and affine.
            progress: show progress bars.
            ctx: TileDB context.
            executor: where volumes are copied (as in :meth:`from_images`).
            reference: the collection whose grid samples are planned in; the others may
                lie on other grids (as in :meth:`from_images`).

        >>> import numpy as np, tempfile, os
        >>> from radiobject import RadiObject, VolumeCollection
        >>> d = tempfile.mkdtemp()
        >>> ct = VolumeCollection.from_numpy(os.path.join(d, "CT"), [np.ones((4, 4, 3))] * 2)
        >>> radi = RadiObject.from_collections(os.path.join(d, "r"), {"CT": ct}, progress=False)
        >>> list(radi), radi.obs_subject_ids
        (['CT'], ['sub-000', 'sub-001'])
        """
        from radiobject.ingest._writer import copy_items, write_radiobject

        target = write_radiobject(
            str(uri),
            {name: copy_items(src) for name, src in collections.items()},
            obs_meta=obs_meta,
            masks={name: src.is_mask for name, src in collections.items()},
            validate_alignment=validate_alignment,
            ctx=ctx,
            progress=progress,
            executor=executor,
            reference=reference,
        )
        return cls._opened(target, ctx)

    @classmethod
    def from_images(
        cls,
        uri: str | Path,
        images: Mapping[str, Any],
        *,
        obs_meta: pd.DataFrame | None = None,
        validate_alignment: bool = True,
        masks: Sequence[str] | None = None,
        progress: bool = True,
        ctx: tiledb.Ctx | None = None,
        executor: Executor | None = None,
        resume: bool = False,
        reference: str | None = None,
    ) -> Self:
        """Ingest images into a new RadiObject at ``uri``.

        Each volume is read and written by one task on ``executor``; only small metadata
        comes back, and the tables and groups are written here. Every subject's volumes are
        checked to share one grid from the file headers before any voxel is written. The
        object is marked complete last: one whose ingest was killed opens with
        :class:`radiobject.IncompleteError`, and the same call with ``resume=True`` finishes
        it, keeping the volumes already written whole.

        Args:
            uri: target (must not exist); a local path or ``s3://bucket/prefix``.
            images: collection name -> a glob (``"dir/*.nii.gz"``), a folder of NIfTI files or
                DICOM series, a list of paths, or a list of ``(path, subject_id)`` pairs.
                Subject ids come from file names by :func:`radiobject.subject_id_from_path`.
            obs_meta: one row per subject with an ``obs_subject_id`` column (age, diagnosis ...).
                Every subject with images must have a row.
            validate_alignment: check that each subject's volumes share shape and affine.
            masks: names of mask collections (default: guessed from names and voxel values).
            progress: show progress bars.
            ctx: TileDB context.
            executor: a ``concurrent.futures.Executor`` to read and write the volumes on:
                threads (the default, ``ReadConfig.max_workers`` of them), a
                ``ProcessPoolExecutor`` with a ``forkserver`` or ``spawn`` context, or a Dask
                cluster's ``client.get_executor()`` (``pip install radiobject[dask]``). The
                TileDB settings (S3 endpoint, credentials ...) and the ``WriteConfig`` in force
                here travel with each task.
            resume: finish an interrupted ingest at ``uri`` (a finished one is returned as it
                is); a failure then keeps what was written, for the next ``resume=True``.
            reference: the collection whose grid samples are planned in (e.g. ``"T1w"``;
                every subject needs a volume there). The others may differ in shape,
                spacing and orientation and are stored as they are; the loaders read just
                the bounding box of a sample in each and resample it (:attr:`reference`).

        >>> import tempfile, os
        >>> from radiobject import RadiObject
        >>> from radiobject.data import write_sample_niftis
        >>> d = tempfile.mkdtemp()
        >>> images, subjects = write_sample_niftis(d, n_subjects=2, shape=(16, 16, 12))
        >>> sorted(images)
        ['FLAIR', 'T1w', 'seg']
        >>> radi = RadiObject.from_images(os.path.join(d, "radi"), images, obs_meta=subjects,
        ...                               progress=False)
        >>> list(radi), radi.n_subjects, radi.seg.is_mask
        (['FLAIR', 'T1w', 'seg'], 2, True)
        """
        from radiobject.ingest._sources import file_items
        from radiobject.ingest._writer import write_radiobject

        resolved = {name: file_items(src, name) for name, src in images.items()}
        target = write_radiobject(
            str(uri),
            resolved,
            obs_meta=obs_meta,
            masks=None if masks is None else {name: name in masks for name in resolved},
            validate_alignment=validate_alignment,
            ctx=ctx,
            progress=progress,
            executor=executor,
            resume=resume,
            reference=reference,
        )
        return cls._opened(target, ctx)

    @classmethod
    def _from_items(
        cls,
        uri: str,
        sources: Mapping[str, Sequence[Any]],
        *,
        obs_meta: pd.DataFrame | None = None,
        masks: Sequence[str] = (),
        progress: bool = True,
        ctx: tiledb.Ctx | None = None,
    ) -> Self:
        """A new RadiObject from lazily loaded items (see ``radiobject.ingest._sources.Item``)."""
        from radiobject.ingest._writer import write_radiobject

        target = write_radiobject(
            uri,
            sources,
            obs_meta=obs_meta,
            masks={name: name in masks for name in sources},
            ctx=ctx,
            progress=progress,
        )
        return cls._opened(target, ctx)

    @classmethod
    def _opened(cls, uri: str, ctx: tiledb.Ctx | None) -> Self:
        # without a context of its own, the new object follows configure() (e.g. S3 set later)
        radi = cls(uri, ctx=ctx if ctx is not None else get_tiledb_ctx())
        radi._ctx = ctx
        return radi
