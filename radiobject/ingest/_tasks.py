"""The work sent to executors: "read this source and write this volume", returning metadata.

Every task is a plain picklable object run by a module-level function, so it runs on a
thread, in a process pool or on a Dask worker alike. A worker builds its TileDB context
from the settings the task carries (:mod:`radiobject.ingest._remote`) and writes tiles and
compression from the :class:`radiobject.WriteConfig` the task carries: nothing depends on
the settings in force in the worker's process. Only small metadata comes back (shape,
affine, dtype, the mask guess and, for masks, the foreground index).

A task is idempotent: a volume already written whole at its URI (its array exists and holds
the ``obs_id`` metadata, committed after its voxels) is kept and described, anything known
to be something else there is removed and written again (a URI that cannot be checked, e.g.
on a transient S3 error, is never removed: the task fails and a rerun resumes). So a
resumed ingest skips finished volumes, and a task a cluster runs twice (a lost worker) does
no harm.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import tiledb

from radiobject._errors import IngestError, RadiObjectError, StorageError
from radiobject.config import WriteConfig
from radiobject.ingest._remote import ctx_from_settings
from radiobject.ingest._sources import MASK_NAMES, Geometry, looks_like_mask
from radiobject.read._scaling import ScaledVoxels, Scaling
from radiobject.storage._coarse import (
    build_coarse,
    coarse_method,
    level_voxels,
    stored_coarse,
    write_coarse,
)
from radiobject.storage._foreground import ForegroundIndex, compute_foreground
from radiobject.storage._group import remove
from radiobject.storage._volume import Volume, storage_dtype

__all__ = [
    "VolumeTask",
    "Written",
    "index_foreground",
    "read_header",
    "rebuild_level",
    "write_volume",
]


@dataclass(frozen=True)
class VolumeTask:
    """Read one source and write it as the volume array at ``uri``.

    ``run`` names the ingest run, so a cluster that remembers results by the task's
    arguments never hands back another run's result (or error).
    """

    uri: str
    load: Callable[[], tuple[np.ndarray | ScaledVoxels, np.ndarray]]
    source: str
    obs_id: str
    obs_subject_id: str
    collection: str
    is_mask: bool | None
    shape: tuple[int, ...] | None  # from the header, when it was read
    write: WriteConfig
    run: str
    settings: Mapping[str, str] = field(default_factory=dict, repr=False)
    coarse_uri: str | None = None  # where its coarse level goes (at factor write.coarse)


@dataclass(frozen=True, eq=False)
class Written:
    """What a task reports about the volume it wrote (or found whole)."""

    shape: tuple[int, ...]
    affine: np.ndarray
    dtype: str
    looks_like_mask: bool
    foreground: ForegroundIndex | None
    reused: bool
    coarse_method: str | None = None  # of the coarse level written (or found whole)


def _stored(task: VolumeTask, ctx: tiledb.Ctx) -> tuple[tuple[int, ...], str, np.ndarray] | None:
    """Shape, dtype and affine of a volume already written whole at ``task.uri``, else None.

    What is known not to be that volume (an array without the ``obs_id`` committed after
    its voxels, or with another one; a group; a local array that does not open) is removed.
    When a remote URI cannot be checked (a storage error, e.g. a transient S3 failure),
    nothing is removed: the error says so, and running the ingest again resumes.
    """
    try:
        kind = tiledb.object_type(task.uri, ctx=ctx)
        whole = None
        if kind == "array":
            with tiledb.open(task.uri, ctx=ctx) as arr:
                if "obs_id" in arr.meta and arr.meta["obs_id"] == task.obs_id:
                    shape = tuple(int(d.domain[1]) - int(d.domain[0]) + 1 for d in arr.domain)
                    affine = np.array(json.loads(arr.meta["affine"]), dtype=np.float64)
                    meta = {k: arr.meta[k] for k in arr.meta}
                    scaling = Scaling.from_meta(meta, np.dtype(arr.attr(0).dtype))
                    whole = (shape, str(scaling.logical), affine)
    except tiledb.TileDBError as e:
        if not _remote(task.uri):  # a local array that does not open is damaged, not away
            remove(task.uri, ctx)
            return None
        raise StorageError(
            f"cannot tell whether the volume {task.obs_id!r} at {task.uri!r} was written whole "
            f"({e}); nothing was removed. If storage is reachable again, run the ingest again "
            "to resume; if the array there is damaged, remove it first"
        ) from e
    if whole is None and kind is not None:
        remove(task.uri, ctx)  # cut short (no obs_id yet), another volume's, or not an array
    return whole


def _remote(uri: str) -> bool:
    """Whether ``uri`` is on object storage (``s3://`` ...), where errors may be transient."""
    return "://" in uri and not uri.startswith("file://")


def write_volume(task: VolumeTask, ctx: tiledb.Ctx | None = None) -> Written:
    """Run ``task``: write its volume (or keep it when already whole) and describe it.

    Errors name the source: an :class:`IngestError` as raised, any other radiobject error
    with the source added, anything else as an :class:`IngestError`.
    """
    ctx = ctx if ctx is not None else ctx_from_settings(task.settings)
    try:
        return _write(task, ctx)
    except IngestError:
        raise
    except RadiObjectError as e:
        raise type(e)(f"{e} (while ingesting {task.source!r} as {task.obs_id!r})") from e
    except Exception as e:
        raise IngestError(
            f"cannot ingest {task.source!r} as {task.obs_id!r} at {task.uri!r}: "
            f"{type(e).__name__}: {e}"
        ) from e


def _write(task: VolumeTask, ctx: tiledb.Ctx) -> Written:
    stored = _stored(task, ctx)
    source: np.ndarray | ScaledVoxels | None = None
    if stored is not None:
        shape, dtype, affine = stored
    else:
        loaded, affine = task.load()
        source = loaded if isinstance(loaded, ScaledVoxels) else np.asarray(loaded)
        if task.shape is not None and tuple(source.shape) != tuple(task.shape):
            raise IngestError(
                f"{task.source!r} holds voxels of shape {source.shape} but its header says "
                f"{tuple(task.shape)}; the file is inconsistent: re-export it"
            )
        Volume.from_numpy(
            task.uri,
            source,
            affine=affine,
            tile=task.write.tile,
            compression=task.write.compression,
            integers=task.write.integers,
            ctx=ctx,
            metadata={"obs_id": task.obs_id, "obs_subject_id": task.obs_subject_id},
        )
        # reads return the source's dtype (its reader's, for scaled integers)
        shape, dtype = tuple(int(n) for n in source.shape), str(storage_dtype(source.dtype))

    def voxels() -> np.ndarray:  # the values, as reads return them
        if isinstance(source, ScaledVoxels):
            return source.values()
        return source if source is not None else Volume(task.uri, ctx=ctx).to_numpy()

    guess = False
    if task.is_mask is None:
        guess = task.collection.lower() in MASK_NAMES or (
            np.dtype(dtype).kind in "biu" and looks_like_mask(task.collection, voxels())
        )
    mask = task.is_mask if task.is_mask is not None else guess
    return Written(
        shape=shape,
        affine=np.asarray(affine, dtype=np.float64),
        dtype=dtype,
        looks_like_mask=guess,
        foreground=compute_foreground(voxels()) if mask else None,
        reused=stored is not None,
        coarse_method=_write_level(task, ctx, source, coarse_method(mask)),
    )


def _write_level(
    task: VolumeTask, ctx: tiledb.Ctx, source: np.ndarray | ScaledVoxels | None, method: str
) -> str | None:
    """Write the volume's coarse level (unless one is whole); its method, or None if off.

    Made from the voxels in hand (a few z planes at a time); a resumed task that kept its
    volume reads it back once.
    """
    if task.coarse_uri is None or not task.write.coarse:
        return None
    volume = Volume(task.uri, ctx=ctx)
    if stored_coarse(task.coarse_uri, volume, method, ctx) is not None:
        return method
    factor = task.write.coarse
    if isinstance(source, ScaledVoxels):
        small = level_voxels(source.raw, factor, method, volume.scaling, source.slope, source.inter)
    elif source is not None:
        small = level_voxels(source, factor, method, volume.scaling)
    else:
        small = build_coarse(volume, factor, method)
    write_coarse(task.coarse_uri, volume, small, factor, method, ctx)
    return method


def rebuild_level(
    uri: str, coarse_uri: str, factor: int, method: str, settings: Mapping[str, str], run: str
) -> None:
    """Write the coarse level of the stored volume at ``uri`` again, by ``method``.

    For the volumes whose task guessed another mask flag than the collection's.
    """
    ctx = ctx_from_settings(settings)
    volume = Volume(uri, ctx=ctx)
    write_coarse(coarse_uri, volume, build_coarse(volume, factor, method), factor, method, ctx)


def read_header(header: Callable[[], Geometry], run: str) -> Geometry:
    """Call a source's header reader (``run`` as in :class:`VolumeTask`)."""
    return header()


def index_foreground(uri: str, settings: Mapping[str, str], run: str) -> ForegroundIndex:
    """The foreground index of the stored mask volume at ``uri``."""
    return compute_foreground(Volume(uri, ctx=ctx_from_settings(settings)).to_numpy())
