"""Where volumes come from: finding files, subject ids from names, loaders, mask detection.

Subject ids from file names follow one rule (see :func:`subject_id_from_path`). Nothing here
writes; :mod:`radiobject.ingest._writer` turns :class:`Item` lists into collections.

Loaders of files and of stored volumes are plain picklable objects (:class:`FileSource`,
:class:`StoredVolume`), so the task "read this and write that" can run in another process
or on another machine of a cluster; each also reads its geometry alone (``header``), so
alignment is checked before any voxel is written.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from radiobject._errors import IngestError
from radiobject.read._scaling import ScaledVoxels
from radiobject.storage._layout import CORE_COLUMNS

if TYPE_CHECKING:
    from radiobject.storage._volume import Volume

__all__ = [
    "MASK_NAMES",
    "FileSource",
    "Geometry",
    "Item",
    "StoredVolume",
    "file_items",
    "file_loader",
    "looks_like_mask",
    "numpy_items",
    "resolve_sources",
    "subject_id_from_path",
    "volume_items",
]

MASK_NAMES = frozenset({"seg", "mask", "masks", "label", "labels", "segmentation", "lesion"})
_SUFFIXES = frozenset(
    {
        "t1",
        "t1w",
        "t1ce",
        "t1gd",
        "t1c",
        "t2",
        "t2w",
        "flair",
        "t2f",
        "t1n",
        "pd",
        "ct",
        "pet",
        "dwi",
        "adc",
        "bold",
        "swi",
    }
    | MASK_NAMES
)
_NIFTI = (".nii.gz", ".nii")


@dataclass(frozen=True, eq=False)
class Geometry:
    """The grid of a volume: its shape and its 4x4 voxel-to-world affine."""

    shape: tuple[int, ...]
    affine: np.ndarray


@dataclass(frozen=True)
class Item:
    """One volume to write: who it belongs to, how to load it and how to read its geometry.

    ``header`` is a :class:`Geometry` when it is known without reading anything, a function
    reading it (from a file's header) otherwise, or ``None`` when it is known only once the
    voxels are loaded.
    """

    obs_subject_id: str
    load: Callable[[], tuple[np.ndarray | ScaledVoxels, np.ndarray]]  # -> (voxels, affine)
    source: str = ""
    extra: Mapping[str, Any] | None = None
    header: Geometry | Callable[[], Geometry] | None = None


def subject_id_from_path(path: str | Path, collection: str | None = None) -> str:
    """The subject id a file or series folder stands for.

    The rule: drop the extension (``.nii.gz``, ``.nii``, ``.dcm``); then, if the name ends in
    ``_<suffix>`` or ``-<suffix>`` where the suffix is the collection's name or a known
    modality or mask word (t1, t1w, t1ce, t2, flair, seg, mask, ...; any case), drop that too.

    >>> subject_id_from_path("data/BraTS_00012_flair.nii.gz")
    'BraTS_00012'
    >>> subject_id_from_path("sub-01_T1w.nii.gz"), subject_id_from_path("patient_003.nii")
    ('sub-01', 'patient_003')
    """
    name = Path(path).name
    for ext in (*_NIFTI, ".dcm"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    for sep in ("_", "-"):
        head, _, tail = name.rpartition(sep)
        if head and (tail.lower() in _SUFFIXES or (collection and tail == collection)):
            return head
    return name


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(_NIFTI)


def resolve_sources(sources: Any, collection: str, fmt: str = "auto") -> list[tuple[Path, str]]:
    """Turn a glob, a folder, a list of paths or of ``(path, subject_id)`` pairs into pairs."""
    from radiobject.ingest import _dicom

    if isinstance(sources, (str, os.PathLike)):
        text = str(sources)
        path = Path(text)
        if any(c in text for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(text))
            if not found:
                raise IngestError(
                    f"the pattern {text!r} for collection {collection!r} matches no file"
                )
            paths = found
        elif path.is_dir():
            if fmt == "dicom" or (fmt == "auto" and not any(_is_nifti(p) for p in path.iterdir())):
                paths = _dicom.find_dicom_series(path)
            else:
                paths = sorted(p for p in path.iterdir() if _is_nifti(p))
            if not paths:
                raise IngestError(
                    f"the folder {text!r} for collection {collection!r} holds no NIfTI file or "
                    "DICOM series"
                )
        elif path.exists():
            paths = [path]
        else:
            raise IngestError(f"{text!r} for collection {collection!r} does not exist")
        return [(p, subject_id_from_path(p, collection)) for p in paths]
    pairs: list[tuple[Path, str]] = []
    for entry in sources:
        if isinstance(entry, (tuple, list)) and len(entry) == 2:
            pairs.append((Path(entry[0]), str(entry[1])))
        else:
            pairs.append((Path(entry), subject_id_from_path(entry, collection)))
    if not pairs:
        raise IngestError(f"no source files given for collection {collection!r}")
    return pairs


def _nifti_error(path: Path, e: Exception) -> IngestError:
    return IngestError(
        f"cannot read NIfTI file {str(path)!r}: {e}. Check the file is a complete "
        ".nii or .nii.gz image"
    )


@dataclass(frozen=True)
class FileSource:
    """A NIfTI file or a DICOM series folder: ``source()`` reads ``(voxels, affine)``.

    A 5-D NIfTI with one time point loses that axis. :meth:`header` reads the geometry only
    (the NIfTI header; the DICOM tags up to the pixel data). Instances are picklable.
    Integers with a scale (NIfTI ``scl_slope``/``scl_inter``, one DICOM rescale for all
    slices) come as :class:`ScaledVoxels`, whose ``values()`` are the reader's float voxels.

    >>> import nibabel as nib, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.nii.gz")
    >>> nib.save(nib.Nifti1Image(np.zeros((4, 3, 2), np.int16), np.eye(4)), path)
    >>> FileSource(Path(path)).header().shape, FileSource(Path(path))()[0].shape
    ((4, 3, 2), (4, 3, 2))
    """

    path: Path
    fmt: str = "auto"

    def _dicom(self) -> bool:
        if not self.path.exists():
            raise IngestError(f"{str(self.path)!r} does not exist")
        return self.path.is_dir() or self.fmt == "dicom"

    def __call__(self) -> tuple[np.ndarray | ScaledVoxels, np.ndarray]:
        if self._dicom():
            from radiobject.ingest._dicom import read_dicom_voxels

            return read_dicom_voxels(self.path)
        import nibabel as nib

        try:
            img: Any = nib.load(str(self.path))
            data = _nifti_voxels(img.dataobj)
        except Exception as e:
            raise _nifti_error(self.path, e) from e
        if data.ndim == 5 and data.shape[3] == 1:
            if isinstance(data, ScaledVoxels):
                data = ScaledVoxels(data.raw[:, :, :, 0, :], data.slope, data.inter, data.dtype)
            else:
                data = data[:, :, :, 0, :]
        return data, np.asarray(img.affine, dtype=np.float64)

    def header(self) -> Geometry:
        """The shape and affine :meth:`__call__` would return, without reading voxels."""
        if self._dicom():
            from radiobject.ingest._dicom import read_dicom_geometry

            grid, affine = read_dicom_geometry(self.path)
            return Geometry(grid, affine)
        import nibabel as nib

        try:
            img: Any = nib.load(str(self.path))
            shape: tuple[int, ...] = tuple(int(n) for n in img.shape)
            affine = np.asarray(img.affine, dtype=np.float64)
        except Exception as e:
            raise _nifti_error(self.path, e) from e
        if len(shape) == 5 and shape[3] == 1:
            shape = (*shape[:3], shape[4])
        return Geometry(shape, affine)


def _nifti_voxels(proxy: Any) -> np.ndarray | ScaledVoxels:
    """A NIfTI's voxels: its integers and ``scl_slope``/``scl_inter`` when they scale them.

    The logical dtype is the one nibabel's float path gives (``np.asanyarray(img.dataobj)``);
    it is found by scaling one voxel of the stored dtype the way nibabel's proxy does.
    """
    from nibabel.volumeutils import apply_read_scaling

    slope, inter = getattr(proxy, "slope", 1.0), getattr(proxy, "inter", 0.0)
    stored = np.dtype(getattr(proxy, "dtype", np.float64))
    scaled = (slope, inter) != (1.0, 0.0) and hasattr(proxy, "get_unscaled")
    if not scaled or stored.kind not in "iu":
        values: np.ndarray = np.asanyarray(proxy)
        return values
    raw: np.ndarray = np.asanyarray(proxy.get_unscaled())
    # as nibabel's ArrayProxy._get_scaled: the scale factors in the slope's dtype
    scl_slope, scl_inter = np.asanyarray(slope), np.asanyarray(inter)
    if np.can_cast(scl_inter, scl_slope.dtype):
        scl_inter = scl_inter.astype(scl_slope.dtype)
    # mypy is silenced on the next line: nibabel's stub says scalars, its proxy passes 0-d arrays
    dtype = apply_read_scaling(np.zeros(1, raw.dtype), scl_slope, scl_inter).dtype  # type: ignore[arg-type]
    return ScaledVoxels(raw, float(slope), float(inter), dtype)


def file_loader(path: Path, fmt: str = "auto") -> FileSource:
    """A function that reads ``path`` (a NIfTI file or a DICOM series folder) when called.

    It returns ``(voxels, affine)``; a 5-D NIfTI with one time point loses that axis.
    """
    return FileSource(Path(path), fmt)


@dataclass(frozen=True)
class StoredVolume:
    """A stored volume to copy: ``source()`` reads ``(voxels, affine)`` (picklable).

    ``settings`` are the TileDB settings to read it with (see
    :func:`radiobject.ingest._remote.tiledb_settings`), so another process reads it as this
    one would.
    """

    uri: str
    settings: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __call__(self) -> tuple[np.ndarray | ScaledVoxels, np.ndarray]:
        from radiobject.ingest._remote import ctx_from_settings
        from radiobject.read._region import read_region
        from radiobject.storage._volume import Volume

        vol = Volume(self.uri, ctx=ctx_from_settings(self.settings))
        scaling = vol.scaling
        if scaling.identity:
            return vol.to_numpy(), vol.affine
        # scaled integers are copied as they are stored, with their scale and offset
        raw = read_region(vol.uri, vol.ctx, tuple((0, n) for n in vol.shape))
        return ScaledVoxels(raw, scaling.scale, scaling.offset, scaling.logical), vol.affine


def looks_like_mask(name: str, array: np.ndarray) -> bool:
    """True when a collection called ``name`` holding ``array`` is a label map.

    Either the name is a mask word (seg, mask, label, ...), or the voxels are small
    non-negative integers with at most 32 distinct values.

    >>> import numpy as np
    >>> looks_like_mask("seg", np.zeros(3)), looks_like_mask("T1w", np.arange(3, dtype=np.uint8))
    (True, True)
    >>> looks_like_mask("T1w", np.linspace(0, 1, 5))
    False
    """
    if name.lower() in MASK_NAMES:
        return True
    if array.dtype.kind not in "biu":
        return False
    return array.min() >= 0 and array.max() <= 255 and np.unique(array).size <= 32


def file_items(sources: Any, collection: str, fmt: str = "auto") -> list[Item]:
    """Items for NIfTI files or DICOM series folders (see :func:`resolve_sources`)."""
    items = []
    for p, sid in resolve_sources(sources, collection, fmt):
        src = FileSource(p, fmt)
        items.append(Item(sid, src, source=str(p), header=src.header))
    return items


def numpy_items(
    arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    *,
    affines: Mapping[str, np.ndarray] | Sequence[np.ndarray] | None = None,
    spacing: Sequence[float] | None = None,
    obs: pd.DataFrame | None = None,
) -> list[Item]:
    """Items for in-memory arrays: ``{subject_id: array}`` or a list (``sub-000``, ...).

    ``affines`` (same keys or order) default to ``diag(spacing)``; ``obs`` adds per-volume
    columns, matched on its ``obs_subject_id`` column.

    >>> import numpy as np
    >>> [it.obs_subject_id for it in numpy_items([np.zeros((2, 2, 2))] * 2)]
    ['sub-000', 'sub-001']
    """
    if not isinstance(arrays, Mapping):
        arrays = {f"sub-{i:03d}": a for i, a in enumerate(arrays)}
    keys = list(arrays)
    if affines is not None and not isinstance(affines, Mapping):
        affines = dict(zip(keys, affines, strict=True))
    extra: dict[Any, Any] = {}
    if obs is not None:
        if "obs_subject_id" not in obs.columns:
            raise IngestError("obs must have an 'obs_subject_id' column to match the arrays")
        reserved = sorted(set(obs.columns) & {"obs_id", *CORE_COLUMNS} - {"obs_subject_id"})
        if reserved:
            raise IngestError(
                f"obs columns {reserved} are filled in by radiobject for every volume; "
                "rename them (e.g. 'tumour_volume_ml' for 'volume')"
            )
        extra = obs.set_index("obs_subject_id").to_dict(orient="index")

    def item(key: str) -> Item:
        aff = affines[key] if affines is not None else np.diag([*(spacing or (1, 1, 1)), 1.0])
        affine = np.asarray(aff, dtype=np.float64)
        return Item(
            str(key),
            lambda: (np.asarray(arrays[key]), affine),
            source="numpy",
            extra=extra.get(key),
            header=Geometry(tuple(int(n) for n in np.shape(arrays[key])), affine),
        )

    return [item(k) for k in keys]


def volume_items(volumes: Mapping[str, Volume] | Sequence[tuple[str, Volume]]) -> list[Item]:
    """Items copying stored volumes: ``{subject_id: volume}`` or ``(subject_id, volume)`` pairs."""
    from radiobject.ingest._remote import tiledb_settings

    pairs = list(volumes.items()) if isinstance(volumes, Mapping) else list(volumes)
    return [
        Item(
            str(sid),
            StoredVolume(vol.uri, tiledb_settings(vol.ctx)),
            source=vol.uri,
            header=Geometry(vol.shape, vol.affine),
        )
        for sid, vol in pairs
    ]
