"""Writing collections: volumes, the ``obs`` table and the foreground index, all or nothing.

The writers know the storage layout (:mod:`radiobject.storage._layout`) and the low-level
storage modules only; they return the URI they wrote. :class:`radiobject.VolumeCollection`
and :class:`radiobject.RadiObject` call them and wrap that URI. Volumes are read and written
on a thread pool with a progress bar; a failed write removes the target.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
import tiledb

from radiobject._context import get_tiledb_ctx
from radiobject._errors import IngestError, RadiObjectError
from radiobject.ingest._sources import Item, looks_like_mask
from radiobject.parallel import map_on_threads
from radiobject.storage._dataframe import Dataframe
from radiobject.storage._foreground import compute_foreground, write_foreground
from radiobject.storage._group import add_members, create_group, join, new_target
from radiobject.storage._layout import (
    COLLECTION_KIND,
    CORE_COLUMNS,
    FG_INDEX,
    OBS,
    VOLUMES,
    VOLUMES_KIND,
    obs_id,
    volume_member,
)
from radiobject.storage._volume import (
    Volume,
    affine_orientation,
    spacing_from_affine,
    storage_dtype,
)

__all__ = ["StoredCollection", "copy_collection", "write_collection"]


class StoredCollection(Protocol):
    """What :func:`copy_collection` needs of a source collection (or view)."""

    @property
    def name(self) -> str: ...

    @property
    def is_mask(self) -> bool: ...

    @property
    def obs(self) -> pd.DataFrame: ...

    def volume(self, obs_id: str) -> Volume: ...


def write_collection(
    uri: str,
    items: Sequence[Item],
    *,
    name: str,
    is_mask: bool | None = None,
    ctx: tiledb.Ctx | None = None,
    progress: bool = True,
) -> str:
    """Write ``items`` as a new collection called ``name`` at ``uri``; return ``uri``.

    ``is_mask=None`` guesses the mask flag from the name and the first volume's voxels.

    >>> import numpy as np, tempfile, os
    >>> from radiobject.ingest._sources import numpy_items
    >>> uri = os.path.join(tempfile.mkdtemp(), "CT")
    >>> write_collection(uri, numpy_items({"a": np.zeros((4, 4, 2))}), name="CT") == uri
    True
    """
    ctx = ctx or get_tiledb_ctx()
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
        create_group(uri, COLLECTION_KIND, ctx, {"name": name})
        create_group(join(uri, VOLUMES), VOLUMES_KIND, ctx)
        mask_flag: list[bool] = [] if is_mask is None else [is_mask]

        def write_one(pos_item: tuple[int, Item]) -> tuple[dict[str, Any], Any]:
            pos, item = pos_item
            array, affine = item.load()
            if not mask_flag:
                mask_flag.append(looks_like_mask(name, array))
            member = volume_member(pos)
            oid = obs_id(item.obs_subject_id, name)
            Volume.from_numpy(
                join(uri, member),
                array,
                affine=affine,
                ctx=ctx,
                metadata={"obs_id": oid, "obs_subject_id": item.obs_subject_id},
            )
            row = {
                "obs_id": oid,
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
        Dataframe.from_pandas(join(uri, OBS), obs, index="obs_id", ctx=ctx)
        members = [OBS, VOLUMES]
        if mask_flag and mask_flag[0]:
            write_foreground(join(uri, FG_INDEX), {r["obs_id"]: fg for r, fg in results}, ctx)
            members.append(FG_INDEX)
        with tiledb.Group(uri, mode="w", ctx=ctx) as g:
            g.meta["is_mask"] = int(bool(mask_flag and mask_flag[0]))
        add_members(uri, members, ctx)
        add_members(join(uri, VOLUMES), [r["volume"].split("/")[1] for r, _ in results], ctx)
    return uri


def copy_collection(
    src: StoredCollection,
    uri: str,
    *,
    name: str | None = None,
    progress: bool = False,
    ctx: tiledb.Ctx | None = None,
) -> str:
    """Copy ``src`` (a collection or a view) to ``uri`` with its user columns; return ``uri``."""
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
