"""Growing a stored cohort: one more subject, with its volumes and its ``obs_meta`` row.

Each piece is a write of its own (a volume, a mask's entry of its collection's foreground
index, the collection's new ``obs`` row, the subject's ``obs_meta`` row), so each lands as a
new version and a read at an earlier version does not see the subject. The subject's
``obs_meta`` row is written last: at a version that lists the subject, its volumes (and
their foreground) are there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from radiobject._errors import AlignmentError, AlreadyExistsError, IngestError, RadiObjectError
from radiobject.storage._collection import VolumeCollection
from radiobject.storage._dataframe import Dataframe
from radiobject.storage._foreground import compute_foreground, write_foreground
from radiobject.storage._group import add_members, exists, join, remove
from radiobject.storage._layout import CORE_COLUMNS, FG_INDEX, VOLUMES, obs_id, volume_member
from radiobject.storage._volume import Volume, affine_orientation, spacing_from_affine

__all__ = ["add_subject"]

_log = logging.getLogger(__name__)


def add_subject(
    table: Dataframe,
    collections: Mapping[str, VolumeCollection],
    obs_subject_id: str,
    volumes: Mapping[str, np.ndarray],
    obs_meta: Mapping[str, Any],
    affine: np.ndarray | Mapping[str, np.ndarray] | None,
    *,
    reference: str | None = None,
) -> None:
    """Write subject ``obs_subject_id`` into the cohort of subject table ``table``.

    ``collections`` are the cohort's (name -> collection); see :meth:`RadiObject.add_subject`.
    ``reference``: the cohort's reference grid (its volumes may then differ in grid).
    """
    where = table.uri.rsplit("/", 1)[0]
    if obs_subject_id in set(table.ids()):
        raise AlreadyExistsError(
            f"subject {obs_subject_id!r} is already in {where!r}; edit its volumes with "
            "Volume.write_region instead"
        )
    if not volumes:
        raise IngestError(f"subject {obs_subject_id!r} needs at least one volume")
    unknown = sorted(set(volumes) - set(collections))
    if unknown:
        raise IngestError(
            f"no collection(s) {unknown} in {where!r}; collections are "
            f"{sorted(collections)} (add_collection adds one)"
        )
    arrays = {name: np.asarray(v) for name, v in volumes.items()}
    affines = _affines(affine, arrays, obs_subject_id)
    _check_grids(obs_subject_id, arrays, affines, reference)
    columns = [c for c in table.columns if c != "obs_subject_id"]
    missing = sorted(set(columns) - set(obs_meta))
    extra = sorted(set(obs_meta) - set(columns))
    if missing or extra:
        raise IngestError(
            f"the obs_meta row of {obs_subject_id!r} needs exactly the columns {columns}; "
            f"missing {missing}, unknown {extra}"
        )
    rows = {
        name: _row_for(collections[name], obs_subject_id, arrays[name], affines[name])
        for name in arrays
    }
    # every check before the first write: a refused subject leaves nothing behind
    targets = {name: join(collections[name].uri, member) for name, (member, _) in rows.items()}
    for name, (_, row) in rows.items():
        if row["obs_id"] in collections[name]:
            raise AlreadyExistsError(
                f"volume {row['obs_id']!r} is already in collection {name!r} of {where!r} "
                f"(its subject {obs_subject_id!r} is not in obs_meta: an earlier add_subject "
                "stopped half-way?); remove the volume or add the subject under another id"
            )
        if exists(targets[name], collections[name].ctx):
            raise AlreadyExistsError(
                f"{targets[name]!r} already exists (left by an earlier add_subject that "
                "stopped half-way?); remove it and add the subject again"
            )
    made: list[str] = []
    try:
        for name, (_, row) in rows.items():
            made.append(name)  # from here on, a failure removes it
            Volume.from_numpy(
                targets[name],
                arrays[name],
                affine=affines[name],
                ctx=collections[name]._ctx,
                metadata={"obs_id": row["obs_id"], "obs_subject_id": obs_subject_id},
            )
        for name, (_, row) in rows.items():  # a mask's entry of the foreground index
            coll = collections[name]
            if coll.is_mask:
                entry = {row["obs_id"]: compute_foreground(arrays[name])}
                write_foreground(join(coll.uri, FG_INDEX), entry, coll.ctx)
    except BaseException:  # a volume that fails removes those written before it, and itself
        for name in made:
            try:
                remove(targets[name], collections[name].ctx)
            except RadiObjectError as cleanup:  # keep the first error
                _log.warning("could not remove the partial write at %r: %s", targets[name], cleanup)
        raise
    for name, (member, row) in rows.items():
        coll = collections[name]
        add_members(join(coll.uri, VOLUMES), [member.split("/")[1]], coll.ctx)
        coll.obs_table.write_rows(pd.DataFrame([row]))
    table.write_rows(pd.DataFrame([{"obs_subject_id": obs_subject_id, **dict(obs_meta)}]))


def _affines(
    affine: np.ndarray | Mapping[str, np.ndarray] | None,
    arrays: Mapping[str, np.ndarray],
    subject: str,
) -> dict[str, np.ndarray]:
    """The affine of each volume: one for all, or one per collection (default 1 mm)."""
    if affine is None:
        return {name: np.eye(4) for name in arrays}
    if not isinstance(affine, Mapping):
        return {name: np.asarray(affine, float) for name in arrays}
    missing = sorted(set(arrays) - set(affine))
    if missing:
        raise IngestError(
            f"no affine for the {missing} volume(s) of subject {subject!r}; give one per "
            "collection, or one affine for all"
        )
    return {name: np.asarray(affine[name], float) for name in arrays}


def _check_grids(
    subject: str,
    arrays: Mapping[str, np.ndarray],
    affines: Mapping[str, np.ndarray],
    reference: str | None,
) -> None:
    """One grid for all the volumes of ``subject``, or a volume in the reference collection."""
    if reference is not None:
        if reference not in arrays:
            raise AlignmentError(
                f"subject {subject!r} needs a volume in the reference collection {reference!r} "
                f"(the grid its samples are planned in); got {sorted(arrays)}"
            )
        return
    shapes = {name: a.shape[:3] for name, a in arrays.items()}
    first = next(iter(affines.values()))
    if len(set(shapes.values())) > 1 or any(
        not np.allclose(a, first, atol=1e-3) for a in affines.values()
    ):
        raise AlignmentError(
            f"the volumes of subject {subject!r} differ in shape or affine: {shapes}; a "
            "subject's volumes share one grid unless the cohort names a reference grid"
        )


def _row_for(
    coll: VolumeCollection, subject: str, array: np.ndarray, affine: np.ndarray
) -> tuple[str, dict[str, Any]]:
    """``(volume member, obs row)`` of the new volume of ``coll``."""
    name = coll.name
    obs = coll.obs_table.read(columns=["volume"])
    taken = [int(str(v).rsplit("/", 1)[-1]) for v in obs["volume"]]
    member = volume_member(max(taken, default=-1) + 1)
    user = [c for c in coll.obs_table.columns if c not in ("obs_id", *CORE_COLUMNS)]
    if user:
        raise IngestError(
            f"collection {name!r} has user columns {user} that add_subject cannot fill; write "
            "the subject with add_collection or a new ingest"
        )
    row = {
        "obs_id": obs_id(subject, name),
        "obs_subject_id": subject,
        "volume": member,
        "shape": ",".join(str(n) for n in array.shape),
        "spacing": ",".join(f"{s:g}" for s in spacing_from_affine(affine)),
        "orientation": affine_orientation(affine),
        "dtype": str(array.dtype if array.dtype != bool else np.dtype(np.uint8)),
        "affine": json.dumps(affine.tolist()),
        "source": "add_subject",
    }
    return member, row
