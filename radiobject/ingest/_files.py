"""Writing collections: from arrays, from volumes, from NIfTI files and DICOM series.

Subject ids from file names follow one rule (see :func:`subject_id_from_path`). Volumes are
read and written on a thread pool with a progress bar; a failed write removes the target.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tiledb

from radiobject._context import get_tiledb_ctx
from radiobject._errors import IngestError, RadiObjectError
from radiobject.parallel import map_on_threads
from radiobject.storage._collection import CORE_COLUMNS, KIND, VolumeCollection
from radiobject.storage._dataframe import Dataframe
from radiobject.storage._foreground import compute_foreground, write_foreground
from radiobject.storage._group import add_members, create_group, join, new_target
from radiobject.storage._volume import (
    Volume,
    affine_orientation,
    spacing_from_affine,
    storage_dtype,
)

__all__ = [
    "MASK_NAMES",
    "collection_from_files",
    "collection_from_numpy",
    "collection_from_volumes",
    "resolve_sources",
    "subject_id_from_path",
    "write_collection",
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


@dataclass(frozen=True)
class Item:
    """One volume to write: who it belongs to and how to load it."""

    obs_subject_id: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]  # -> (voxels, affine)
    source: str = ""
    extra: Mapping[str, Any] | None = None


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


def _loader(path: Path, fmt: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load() -> tuple[np.ndarray, np.ndarray]:
        if not path.exists():
            raise IngestError(f"{str(path)!r} does not exist")
        if path.is_dir() or fmt == "dicom":
            from radiobject.ingest._dicom import read_dicom_series

            series = read_dicom_series(path)
            return series.array, series.affine
        import nibabel as nib

        try:
            img = nib.load(str(path))
            data = np.asanyarray(img.dataobj)
        except Exception as e:
            raise IngestError(
                f"cannot read NIfTI file {str(path)!r}: {e}. Check the file is a complete "
                ".nii or .nii.gz image"
            ) from e
        if data.ndim == 5 and data.shape[3] == 1:
            data = data[:, :, :, 0, :]
        return data, np.asarray(img.affine, dtype=np.float64)

    return load


def _looks_like_mask(name: str, array: np.ndarray) -> bool:
    if name.lower() in MASK_NAMES:
        return True
    if array.dtype.kind not in "biu":
        return False
    return array.min() >= 0 and array.max() <= 255 and np.unique(array).size <= 32


def write_collection(
    uri: str,
    items: Sequence[Item],
    *,
    name: str,
    is_mask: bool | None = None,
    ctx: tiledb.Ctx | None = None,
    progress: bool = True,
) -> VolumeCollection:
    """Write ``items`` as a new collection at ``uri`` (all or nothing)."""
    given, ctx = ctx, ctx or get_tiledb_ctx()
    ids = [it.obs_subject_id for it in items]
    dupes = sorted({s for s in ids if ids.count(s) > 1})
    if dupes:
        raise IngestError(
            f"duplicate subject ids {dupes[:5]} in collection {name!r}: each subject may have "
            "one volume per collection; give explicit (path, subject_id) pairs"
        )
    if not items:
        raise IngestError(f"collection {name!r} has no volumes to write")
    with new_target(uri, ctx):
        create_group(uri, KIND, ctx, {"name": name})
        create_group(join(uri, "volumes"), "volumes", ctx)
        mask_flag: list[bool] = [] if is_mask is None else [is_mask]

        def write_one(pos_item: tuple[int, Item]) -> tuple[dict[str, Any], Any]:
            pos, item = pos_item
            array, affine = item.load()
            if not mask_flag:
                mask_flag.append(_looks_like_mask(name, array))
            member = f"volumes/{pos:05d}"
            obs_id = f"{item.obs_subject_id}_{name}"
            Volume.from_numpy(
                join(uri, member),
                array,
                affine=affine,
                ctx=ctx,
                metadata={"obs_id": obs_id, "obs_subject_id": item.obs_subject_id},
            )
            row = {
                "obs_id": obs_id,
                "obs_subject_id": item.obs_subject_id,
                "volume": member,
                "shape": ",".join(str(n) for n in array.shape),
                "spacing": ",".join(f"{s:g}" for s in spacing_from_affine(affine)),
                "orientation": affine_orientation(affine),
                "dtype": str(storage_dtype(array.dtype)),
                "affine": json.dumps(np.asarray(affine).tolist()),
                "source": item.source,
                **dict(item.extra or {}),
            }
            fg = compute_foreground(array) if mask_flag[0] else None
            return row, fg

        results = map_on_threads(
            write_one, list(enumerate(items)), progress=progress, desc=f"ingest {name}"
        )
        obs = pd.DataFrame([r for r, _ in results])
        Dataframe.from_pandas(join(uri, "obs"), obs, index="obs_id", ctx=ctx)
        members = ["obs", "volumes"]
        if mask_flag and mask_flag[0]:
            write_foreground(join(uri, "fg_index"), {r["obs_id"]: fg for r, fg in results}, ctx)
            members.append("fg_index")
        with tiledb.Group(uri, mode="w", ctx=ctx) as g:
            g.meta["is_mask"] = int(bool(mask_flag and mask_flag[0]))
        add_members(uri, members, ctx)
        add_members(join(uri, "volumes"), [r["volume"].split("/")[1] for r, _ in results], ctx)
    return VolumeCollection(uri, ctx=given)  # no context given: follow configure()


def collection_from_files(
    uri: str,
    sources: Any,
    *,
    name: str | None = None,
    fmt: str = "auto",
    is_mask: bool | None = None,
    progress: bool = True,
    ctx: tiledb.Ctx | None = None,
) -> VolumeCollection:
    """Ingest NIfTI files or DICOM series folders as a new collection at ``uri``.

    Args:
        uri: target (must not exist).
        sources: a glob (``"dir/*.nii.gz"``), a folder, a list of paths, or a list of
            ``(path, subject_id)`` pairs.
        name: collection name (default: the last part of ``uri``).
        fmt: ``"auto"``, ``"nifti"`` or ``"dicom"``.
        is_mask: force the mask flag (default: guessed from name and voxel values).
        progress: show a progress bar.
        ctx: TileDB context.
    """
    name = name or uri.rstrip("/").rsplit("/", 1)[-1]
    pairs = resolve_sources(sources, name, fmt)
    items = [Item(sid, _loader(p, fmt), source=str(p)) for p, sid in pairs]
    return write_collection(uri, items, name=name, is_mask=is_mask, ctx=ctx, progress=progress)


def collection_from_numpy(
    uri: str,
    arrays: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    *,
    name: str | None = None,
    affines: Mapping[str, np.ndarray] | Sequence[np.ndarray] | None = None,
    spacing: Sequence[float] | None = None,
    obs: pd.DataFrame | None = None,
    is_mask: bool | None = None,
    progress: bool = False,
    ctx: tiledb.Ctx | None = None,
) -> VolumeCollection:
    """Write numpy arrays as a new collection.

    Args:
        uri: target (must not exist).
        arrays: ``{subject_id: array}``, or a list (subjects named ``sub-000``, ...).
        name: collection name (default: last part of ``uri``).
        affines: per subject (same keys or order as ``arrays``); default ``diag(spacing)``.
        spacing: voxel size used when no affine is given.
        obs: extra per-volume columns, with an ``obs_subject_id`` column.
        is_mask: force the mask flag.
        progress: show a progress bar.
        ctx: TileDB context.

    >>> import numpy as np, tempfile, os
    >>> uri = os.path.join(tempfile.mkdtemp(), "CT")
    >>> c = collection_from_numpy(uri, {"a": np.zeros((4, 4, 4)), "b": np.ones((4, 4, 4))})
    >>> c.obs_ids
    ['a_CT', 'b_CT']
    """
    name = name or uri.rstrip("/").rsplit("/", 1)[-1]
    if not isinstance(arrays, Mapping):
        arrays = {f"sub-{i:03d}": a for i, a in enumerate(arrays)}
    keys = list(arrays)
    if affines is not None and not isinstance(affines, Mapping):
        affines = dict(zip(keys, affines, strict=True))
    extra = {}
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

    def loader(key: str) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
        def load() -> tuple[np.ndarray, np.ndarray]:
            aff = affines[key] if affines is not None else np.diag([*(spacing or (1, 1, 1)), 1.0])
            return np.asarray(arrays[key]), np.asarray(aff, dtype=np.float64)

        return load

    items = [Item(str(k), loader(k), source="numpy", extra=extra.get(k)) for k in keys]
    return write_collection(uri, items, name=name, is_mask=is_mask, ctx=ctx, progress=progress)


def collection_from_volumes(
    uri: str,
    volumes: Mapping[str, Volume] | Sequence[tuple[str, Volume]],
    *,
    name: str | None = None,
    is_mask: bool | None = None,
    progress: bool = False,
    ctx: tiledb.Ctx | None = None,
) -> VolumeCollection:
    """Copy :class:`Volume` objects (``{subject_id: volume}`` or pairs) into a new collection."""
    name = name or uri.rstrip("/").rsplit("/", 1)[-1]
    pairs = list(volumes.items()) if isinstance(volumes, Mapping) else list(volumes)
    items = [
        Item(str(sid), (lambda v=vol: (v.to_numpy(), v.affine)), source=vol.uri)
        for sid, vol in pairs
    ]
    return write_collection(uri, items, name=name, is_mask=is_mask, ctx=ctx, progress=progress)


def write_collection_from_volumes(
    src: VolumeCollection,
    uri: str,
    *,
    progress: bool,
    ctx: tiledb.Ctx | None,
    name: str | None = None,
) -> VolumeCollection:
    """Materialise ``src`` (a collection or a view) at ``uri``, keeping its user columns."""
    obs = src.obs
    user_cols = [c for c in obs.columns if c not in ("obs_id", *CORE_COLUMNS)]
    items = []
    for _, row in obs.iterrows():
        vol = src.volume(row["obs_id"])
        items.append(
            Item(
                str(row["obs_subject_id"]),
                (lambda v=vol: (v.to_numpy(), v.affine)),
                source=str(row["source"]),
                extra={c: row[c] for c in user_cols},
            )
        )
    if not items:
        raise RadiObjectError(f"cannot write an empty view of collection {src.name!r}")
    return write_collection(
        uri, items, name=name or src.name, is_mask=src.is_mask, ctx=ctx, progress=progress
    )
