"""The constructors of VolumeCollection: ``radiobject.ingest`` writes, the class wraps the URI.

:class:`CollectionConstructors` is a base of
:class:`~radiobject.storage._collection.VolumeCollection`: its class methods write a new
collection from numpy arrays, stored volumes, NIfTI files or DICOM series, then open it
with ``cls(uri, ctx=ctx)``. The read API lives in :mod:`radiobject.storage._collection`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pandas as pd
import tiledb

from radiobject.storage._volume import Volume

__all__ = ["CollectionConstructors"]


class CollectionConstructors:
    """Class methods that write a new collection and open it (bases VolumeCollection).

    >>> import numpy as np, tempfile, os
    >>> from radiobject import VolumeCollection
    >>> issubclass(VolumeCollection, CollectionConstructors)
    True
    >>> uri = os.path.join(tempfile.mkdtemp(), "CT")
    >>> ct = VolumeCollection.from_numpy(uri, [np.ones((4, 4, 3))])
    >>> type(ct).__name__, ct.obs_ids
    ('VolumeCollection', ['sub-000_CT'])
    """

    if TYPE_CHECKING:
        # what every constructor ends in, ``cls(uri, ctx=ctx)``: VolumeCollection.__init__
        def __init__(self, uri: str | Path, ctx: tiledb.Ctx | None = None) -> None: ...

    @classmethod
    def from_numpy(
        cls,
        uri: str | Path,
        arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray],
        *,
        name: str | None = None,
        affines: Mapping[str, np.ndarray] | Sequence[np.ndarray] | None = None,
        spacing: Sequence[float] | None = None,
        obs: pd.DataFrame | None = None,
        is_mask: bool | None = None,
        progress: bool = False,
        ctx: tiledb.Ctx | None = None,
    ) -> Self:
        """Write numpy arrays as a new collection at ``uri``.

        Args:
            uri: target (must not exist); a local path or ``s3://bucket/prefix``.
            arrays: ``{subject_id: array}``, or a list (subjects named ``sub-000``, ...).
            name: collection name (default: the last part of ``uri``).
            affines: one 4x4 affine per subject (same keys or order as ``arrays``);
                default ``diag(spacing)``.
            spacing: voxel size used when no affine is given (default 1 mm).
            obs: extra per-volume columns, with an ``obs_subject_id`` column.
            is_mask: force the mask flag (default: guessed from the name and voxel values).
            progress: show a progress bar.
            ctx: TileDB context (default: the one of :func:`radiobject.configure`).

        >>> import numpy as np, tempfile, os
        >>> from radiobject import VolumeCollection
        >>> uri = os.path.join(tempfile.mkdtemp(), "CT")
        >>> arrays = {"a": np.arange(48).reshape(4, 4, 3), "b": np.ones((4, 4, 3))}
        >>> ct = VolumeCollection.from_numpy(uri, arrays, spacing=(1.0, 1.0, 2.5))
        >>> ct.obs_ids, ct.shape, ct.obs["spacing"].tolist()
        (['a_CT', 'b_CT'], (4, 4, 3), ['1,1,2.5', '1,1,2.5'])
        """
        from radiobject.ingest._sources import numpy_items
        from radiobject.ingest._writer import write_collection

        uri = str(uri)
        items = numpy_items(arrays, affines=affines, spacing=spacing, obs=obs)
        name = name or _default_name(uri)
        target = write_collection(
            uri, items, name=name, is_mask=is_mask, ctx=ctx, progress=progress
        )
        return cls(target, ctx=ctx)

    @classmethod
    def from_volumes(
        cls,
        uri: str | Path,
        volumes: Mapping[str, Volume] | Sequence[tuple[str, Volume]],
        *,
        name: str | None = None,
        is_mask: bool | None = None,
        progress: bool = False,
        ctx: tiledb.Ctx | None = None,
    ) -> Self:
        """Copy stored :class:`Volume` objects into a new collection at ``uri``.

        Args:
            uri: target (must not exist).
            volumes: ``{subject_id: volume}`` or ``(subject_id, volume)`` pairs.
            name: collection name (default: the last part of ``uri``).
            is_mask: force the mask flag (default: guessed from the name and voxel values).
            progress: show a progress bar.
            ctx: TileDB context.

        >>> import numpy as np, tempfile, os
        >>> from radiobject import Volume, VolumeCollection
        >>> d = tempfile.mkdtemp()
        >>> vol = Volume.from_numpy(os.path.join(d, "v"), np.arange(48).reshape(4, 4, 3))
        >>> VolumeCollection.from_volumes(os.path.join(d, "T1w"), {"s1": vol}).obs_ids
        ['s1_T1w']
        """
        from radiobject.ingest._sources import volume_items
        from radiobject.ingest._writer import write_collection

        uri = str(uri)
        target = write_collection(
            uri,
            volume_items(volumes),
            name=name or _default_name(uri),
            is_mask=is_mask,
            ctx=ctx,
            progress=progress,
        )
        return cls(target, ctx=ctx)

    @classmethod
    def from_niftis(
        cls,
        uri: str | Path,
        sources: str | Path | Sequence[str | Path] | Sequence[tuple[str | Path, str]],
        *,
        name: str | None = None,
        is_mask: bool | None = None,
        progress: bool = True,
        ctx: tiledb.Ctx | None = None,
        executor: Executor | None = None,
        resume: bool = False,
    ) -> Self:
        """Ingest NIfTI files as a new collection at ``uri``.

        Args:
            uri: target (must not exist).
            sources: a glob (``"dir/*.nii.gz"``), a folder, a list of paths, or a list of
                ``(path, subject_id)`` pairs. Subject ids come from file names by
                :func:`radiobject.subject_id_from_path` unless given.
            name: collection name (default: the last part of ``uri``).
            is_mask: force the mask flag (default: guessed from the name and voxel values).
            progress: show a progress bar.
            ctx: TileDB context.
            executor: where volumes are read and written (as in ``RadiObject.from_images``).
            resume: finish an interrupted write at ``uri`` (volumes written whole are kept).

        >>> import nibabel as nib, numpy as np, tempfile, os
        >>> from radiobject import VolumeCollection
        >>> d = tempfile.mkdtemp()
        >>> img = nib.Nifti1Image(np.arange(48, dtype=np.int16).reshape(4, 4, 3), np.eye(4))
        >>> nib.save(img, os.path.join(d, "sub-01_T1w.nii.gz"))
        >>> t1 = VolumeCollection.from_niftis(os.path.join(d, "T1w"), d + "/*.nii.gz",
        ...                                   progress=False)
        >>> t1.obs_subject_ids, t1.shape
        (['sub-01'], (4, 4, 3))
        """
        return cls._from_files(
            uri, sources, "nifti", name, is_mask, progress, ctx, executor, resume
        )

    @classmethod
    def from_dicoms(
        cls,
        uri: str | Path,
        sources: str | Path | Sequence[str | Path] | Sequence[tuple[str | Path, str]],
        *,
        name: str | None = None,
        is_mask: bool | None = None,
        progress: bool = True,
        ctx: tiledb.Ctx | None = None,
        executor: Executor | None = None,
        resume: bool = False,
    ) -> Self:
        """Ingest DICOM series folders (one series per folder) as a new collection at ``uri``.

        Needs ``pydicom`` (``pip install radiobject[dicom]``).

        Args:
            uri: target (must not exist).
            sources: a folder of series folders, a glob, a list of series folders, or a list
                of ``(folder, subject_id)`` pairs. Subject ids come from folder names by
                :func:`radiobject.subject_id_from_path` unless given.
            name: collection name (default: the last part of ``uri``).
            is_mask: force the mask flag (default: guessed from the name and voxel values).
            progress: show a progress bar.
            ctx: TileDB context.
            executor: where volumes are read and written (as in ``RadiObject.from_images``).
            resume: finish an interrupted write at ``uri`` (volumes written whole are kept).

        >>> import tempfile, os
        >>> from radiobject import VolumeCollection
        >>> VolumeCollection.from_dicoms(os.path.join(tempfile.mkdtemp(), "CT"), "no/such/dir")
        Traceback (most recent call last):
        ...
        radiobject._errors.IngestError: 'no/such/dir' for collection 'CT' does not exist
        """
        return cls._from_files(
            uri, sources, "dicom", name, is_mask, progress, ctx, executor, resume
        )

    @classmethod
    def _from_files(
        cls,
        uri: str | Path,
        sources: Any,
        fmt: str,
        name: str | None,
        is_mask: bool | None,
        progress: bool,
        ctx: tiledb.Ctx | None,
        executor: Executor | None,
        resume: bool,
    ) -> Self:
        from radiobject.ingest._sources import file_items
        from radiobject.ingest._writer import write_collection

        uri = str(uri)
        name = name or _default_name(uri)
        items = file_items(sources, name, fmt)
        target = write_collection(
            uri,
            items,
            name=name,
            is_mask=is_mask,
            ctx=ctx,
            progress=progress,
            executor=executor,
            resume=resume,
        )
        return cls(target, ctx=ctx)


def _default_name(uri: str) -> str:
    """A collection's default name: the last part of its URI."""
    return uri.rstrip("/").rsplit("/", 1)[-1]
