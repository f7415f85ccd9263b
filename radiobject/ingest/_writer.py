"""Writing collections and RadiObjects: volumes on workers, tables and groups here.

The writers know the storage layout (:mod:`radiobject.storage._layout`) and the low-level
storage modules only; they return the URI they wrote. :class:`radiobject.VolumeCollection`
and :class:`radiobject.RadiObject` call them and wrap that URI.

How a write goes:

1. the target is checked (free, or with ``resume=True`` an unfinished object to finish);
2. for a RadiObject, every source's header is read (on the executor) and each subject's
   volumes are checked to share one grid, before any voxel is written;
3. each volume is read and written by one task on the executor (:mod:`._tasks`), which
   returns only small metadata;
4. here, in the driver: the ``obs`` tables, the foreground index, ``obs_meta``, the group
   members, and last the ``complete`` marker of each collection and of the RadiObject.

A failure (or Ctrl-C) removes the target, unless ``resume=True``: then what was written
stays for the next ``resume=True`` run. A process killed outright leaves an object without
the marker, which opens with :class:`radiobject.IncompleteError`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np
import pandas as pd
import tiledb

from radiobject._context import get_tiledb_ctx
from radiobject._errors import AlreadyExistsError, IngestError, RadiObjectError
from radiobject._tiledb_errors import tiledb_errors
from radiobject.config import get_config
from radiobject.ingest._alignment import check_alignment, check_reference
from radiobject.ingest._executors import check_executor, is_local_threads, run_tasks
from radiobject.ingest._remote import tiledb_settings
from radiobject.ingest._sources import Geometry, Item, StoredVolume
from radiobject.ingest._tasks import (
    VolumeTask,
    Written,
    index_foreground,
    read_header,
    rebuild_level,
    write_volume,
)
from radiobject.storage._coarse import coarse_method
from radiobject.storage._dataframe import Dataframe
from radiobject.storage._foreground import write_foreground
from radiobject.storage._group import (
    COMPLETE,
    add_members,
    create_group,
    exists,
    join,
    mark_complete,
    new_target,
    remove,
    require_complete,
)
from radiobject.storage._layout import (
    COARSE,
    COARSE_KIND,
    COLLECTION_KIND,
    COLLECTIONS,
    COLLECTIONS_KIND,
    CORE_COLUMNS,
    FG_INDEX,
    OBS,
    OBS_META,
    RADIOBJECT_KIND,
    REFERENCE,
    VOLUMES,
    VOLUMES_KIND,
    coarse_member,
    obs_id,
    volume_member,
)
from radiobject.storage._volume import affine_orientation, spacing_from_affine

__all__ = ["StoredCollection", "copy_collection", "write_collection", "write_radiobject"]


class StoredCollection(Protocol):
    """What :func:`copy_collection` needs of a source collection (or view)."""

    @property
    def name(self) -> str: ...

    @property
    def is_mask(self) -> bool: ...

    @property
    def obs(self) -> pd.DataFrame: ...

    def volume(self, obs_id: str) -> Any: ...


@dataclass
class _Plan:
    """One collection to write."""

    uri: str
    name: str
    items: list[Item]
    is_mask: bool | None
    done: bool = False  # already complete (a resumed write)


# -- the target: new, or an unfinished object to resume --------------------------------------


def _kind_at(uri: str, ctx: tiledb.Ctx) -> tuple[str | None, dict[str, Any]]:
    """The TileDB object type at ``uri`` and, for a group, its metadata."""
    with tiledb_errors(uri, "check the write target"):
        found = tiledb.object_type(uri, ctx=ctx)
        if found != "group":
            return found, {}
        with tiledb.Group(uri, ctx=ctx) as g:
            return found, {k: g.meta[k] for k in g.meta}


@contextmanager
def _target(uri: str, kind: str, ctx: tiledb.Ctx, resume: bool) -> Iterator[bool]:
    """Guard the write of a ``kind`` at ``uri``; yield True when it is already complete.

    Without ``resume`` the target must be free and a failure removes it. With ``resume`` an
    unfinished ``kind`` there is reused (a failure keeps it), a finished one is returned.
    """
    if not resume:
        if exists(uri, ctx):
            found, meta = _kind_at(uri, ctx)
            if found == "group" and meta.get("radiobject_type") == kind:
                require_complete(uri, kind, meta)  # unfinished: say how to finish it
        with new_target(uri, ctx):
            yield False
        return
    if not exists(uri, ctx):
        yield False
        return
    found, meta = _kind_at(uri, ctx)
    if found != "group" or meta.get("radiobject_type") not in (kind, None):
        what = meta.get("radiobject_type") or found or "folder that is not a TileDB object"
        raise AlreadyExistsError(
            f"cannot resume writing a {kind} at {uri!r}: it holds a {what}; remove it or "
            "choose another URI"
        )
    if "radiobject_type" not in meta:  # stopped between creating the group and tagging it
        with tiledb_errors(uri, "update group"), tiledb.Group(uri, mode="w", ctx=ctx) as g:
            g.meta["radiobject_type"] = kind
    yield bool(meta.get(COMPLETE))


def _ensure_group(uri: str, kind: str, ctx: tiledb.Ctx, meta: dict[str, Any] | None = None) -> None:
    """Create the group (or, resuming, reuse it and set its metadata)."""
    if not exists(uri, ctx):
        create_group(uri, kind, ctx, meta)
        return
    with tiledb_errors(uri, "update group"), tiledb.Group(uri, mode="w", ctx=ctx) as g:
        g.meta["radiobject_type"] = kind
        for key, value in (meta or {}).items():
            g.meta[key] = value


def _replace_table(uri: str, df: pd.DataFrame, index: str, ctx: tiledb.Ctx) -> None:
    remove(uri, ctx)  # a resumed write may find one from the interrupted run
    Dataframe.from_pandas(uri, df, index=index, ctx=ctx)


# -- checks ----------------------------------------------------------------------------------


def _check_items(name: str, items: Sequence[Item]) -> None:
    ids = pd.Series([it.obs_subject_id for it in items], dtype=object)
    dupes = sorted(set(ids[ids.duplicated()]))
    if dupes:
        raise IngestError(
            f"duplicate subject ids {dupes[:5]} in collection {name!r}: each subject may have "
            "one volume per collection; give explicit (path, subject_id) pairs"
        )
    if not items:
        raise IngestError(f"collection {name!r} has no volumes to write")


def check_obs_meta(obs_meta: pd.DataFrame | None, subjects: list[str]) -> pd.DataFrame:
    """``obs_meta`` checked against the subjects with images (default: their ids only)."""
    if obs_meta is None:
        return pd.DataFrame({"obs_subject_id": sorted(subjects)})
    obs_meta = obs_meta.copy()
    if "obs_subject_id" not in obs_meta.columns:
        if obs_meta.index.name == "obs_subject_id":
            obs_meta = obs_meta.reset_index()
        else:
            raise IngestError(
                f"obs_meta needs an 'obs_subject_id' column; it has {list(obs_meta.columns)}"
            )
    obs_meta["obs_subject_id"] = obs_meta["obs_subject_id"].astype(str)
    missing = sorted(set(subjects) - set(obs_meta["obs_subject_id"]))
    if missing:
        raise IngestError(
            f"subjects {missing[:5]}{' ...' if len(missing) > 5 else ''} have images but no row "
            "in obs_meta; add rows for them or pass obs_meta=None"
        )
    dupes = obs_meta["obs_subject_id"][obs_meta["obs_subject_id"].duplicated()]
    if len(dupes):
        raise IngestError(f"duplicate subject ids {sorted(set(dupes))[:5]} in obs_meta")
    return obs_meta


def _headers(
    plans: Sequence[_Plan], executor: Executor | None, run: str, progress: bool
) -> dict[tuple[str, str], Geometry]:
    """The geometry of every item whose header can be had without loading voxels."""
    known: dict[tuple[str, str], Geometry] = {}
    calls, keys = [], []
    for plan in plans:
        for it in plan.items:
            if isinstance(it.header, Geometry):
                known[(plan.name, it.obs_subject_id)] = it.header
            elif it.header is not None:
                calls.append(partial(read_header, it.header, run))
                keys.append((plan.name, it.obs_subject_id))
    found = run_tasks(calls, executor=executor, progress=progress, desc="read headers")
    known.update(zip(keys, found, strict=True))
    return known


def _geometries_from_obs(
    plans: Sequence[_Plan], ctx: tiledb.Ctx
) -> list[tuple[str, str, Geometry]]:
    out = []
    for plan in plans:
        obs = Dataframe(join(plan.uri, OBS), ctx=ctx).read(
            columns=["obs_subject_id", "shape", "affine"]
        )
        for sid, shape, affine in zip(
            obs["obs_subject_id"], obs["shape"], obs["affine"], strict=True
        ):
            geom = Geometry(
                tuple(int(v) for v in str(shape).split(",")),
                np.array(json.loads(str(affine)), dtype=np.float64),
            )
            out.append((plan.name, str(sid), geom))
    return out


# -- collections -----------------------------------------------------------------------------


def _row(plan: _Plan, pos: int, item: Item, w: Written) -> dict[str, Any]:
    return {
        "obs_id": obs_id(item.obs_subject_id, plan.name),
        "obs_subject_id": item.obs_subject_id,
        "volume": volume_member(pos),
        "shape": ",".join(str(n) for n in w.shape),
        "spacing": ",".join(f"{s:g}" for s in spacing_from_affine(w.affine)),
        "orientation": affine_orientation(w.affine),
        "dtype": w.dtype,
        "affine": json.dumps(np.asarray(w.affine).tolist()),
        "source": item.source,
        **dict(item.extra or {}),
    }


def _check_done(plan: _Plan, ctx: tiledb.Ctx) -> None:
    """A finished collection met while resuming must hold exactly the volumes asked for."""
    stored = Dataframe(join(plan.uri, OBS), ctx=ctx).ids()
    wanted = sorted(obs_id(it.obs_subject_id, plan.name) for it in plan.items)
    if stored != wanted:
        raise AlreadyExistsError(
            f"cannot resume: the finished collection {plan.name!r} at {plan.uri!r} holds other "
            f"volumes ({len(stored)}) than the ones given ({len(wanted)}); remove it or choose "
            "another URI"
        )


def _remove_strays(volumes_uri: str, keep: set[str], ctx: tiledb.Ctx) -> None:
    """Remove volume arrays an earlier (interrupted) run left beyond the ones kept."""
    with tiledb_errors(volumes_uri, "list volumes"):
        children = tiledb.VFS(ctx=ctx).ls(volumes_uri)
    for child in children:
        name = child.rstrip("/").rsplit("/", 1)[-1]
        if not name.startswith("__") and name not in keep:
            remove(join(volumes_uri, name), ctx)


def _write_plans(
    plans: Sequence[_Plan],
    *,
    ctx: tiledb.Ctx,
    executor: Executor | None,
    progress: bool,
    run: str,
    shapes: Mapping[tuple[str, str], Geometry],
) -> None:
    """Write the collections of ``plans`` (their target guarded by the caller)."""
    for plan in plans:
        _ensure_group(plan.uri, COLLECTION_KIND, ctx, {"name": plan.name})
        with tiledb.Group(plan.uri, ctx=ctx) as g:
            plan.done = bool(g.meta.get(COMPLETE, 0))
        if plan.done:
            _check_done(plan, ctx)
        else:
            _ensure_group(join(plan.uri, VOLUMES), VOLUMES_KIND, ctx)
    todo = [p for p in plans if not p.done]
    settings = tiledb_settings(ctx)
    local = is_local_threads(executor)
    write = get_config().write
    if write.coarse:
        for plan in todo:
            _ensure_group(join(plan.uri, COARSE), COARSE_KIND, ctx)
    calls = []
    for plan in todo:
        for pos, it in enumerate(plan.items):
            geom = shapes.get((plan.name, it.obs_subject_id))
            task = VolumeTask(
                uri=join(plan.uri, volume_member(pos)),
                load=it.load,
                source=it.source or obs_id(it.obs_subject_id, plan.name),
                obs_id=obs_id(it.obs_subject_id, plan.name),
                obs_subject_id=it.obs_subject_id,
                collection=plan.name,
                is_mask=plan.is_mask,
                shape=tuple(geom.shape) if geom is not None else None,
                write=write,
                run=run,
                settings=settings,
                coarse_uri=join(plan.uri, coarse_member(volume_member(pos)))
                if write.coarse
                else None,
            )
            calls.append(partial(write_volume, task, ctx) if local else partial(write_volume, task))
    desc = f"ingest {todo[0].name}" if len(todo) == 1 else "ingest"
    written = iter(run_tasks(calls, executor=executor, progress=progress, desc=desc))
    for plan in todo:
        results = [next(written) for _ in plan.items]
        _finish_collection(plan, results, ctx, executor, settings, run)


def _finish_collection(
    plan: _Plan,
    results: list[Written],
    ctx: tiledb.Ctx,
    executor: Executor | None,
    settings: Mapping[str, str],
    run: str,
) -> None:
    """The driver's part: the tables, the foreground index, the members, the marker."""
    is_mask = plan.is_mask if plan.is_mask is not None else results[0].looks_like_mask
    rows = [
        _row(plan, pos, it, w) for pos, (it, w) in enumerate(zip(plan.items, results, strict=True))
    ]
    members = [OBS, VOLUMES]
    if is_mask:
        fg = {r["obs_id"]: w.foreground for r, w in zip(rows, results, strict=True)}
        missing = [r for r in rows if fg[r["obs_id"]] is None]  # guessed apart from the first
        calls = [
            partial(index_foreground, join(plan.uri, r["volume"]), settings, run) for r in missing
        ]
        for r, index in zip(missing, run_tasks(calls, executor=executor), strict=True):
            fg[r["obs_id"]] = index
        remove(join(plan.uri, FG_INDEX), ctx)
        indexed = {k: v for k, v in fg.items() if v is not None}  # every one is indexed by now
        write_foreground(join(plan.uri, FG_INDEX), indexed, ctx)
        members.append(FG_INDEX)
    members += _finish_levels(plan, rows, results, bool(is_mask), executor, settings, run, ctx)
    _replace_table(join(plan.uri, OBS), pd.DataFrame(rows), "obs_id", ctx)
    with tiledb_errors(plan.uri, "update group"), tiledb.Group(plan.uri, mode="w", ctx=ctx) as g:
        g.meta["is_mask"] = int(bool(is_mask))
    vol_names = [r["volume"].split("/")[1] for r in rows]
    _remove_strays(join(plan.uri, VOLUMES), set(vol_names), ctx)
    add_members(plan.uri, members, ctx)
    add_members(join(plan.uri, VOLUMES), vol_names, ctx)
    mark_complete(plan.uri, ctx)


def _finish_levels(
    plan: _Plan,
    rows: list[dict[str, Any]],
    results: list[Written],
    is_mask: bool,
    executor: Executor | None,
    settings: Mapping[str, str],
    run: str,
    ctx: tiledb.Ctx,
) -> list[str]:
    """Coarse levels made with another mask guess than the collection's are made again.

    Returns the collection members to register (none when no level was written).
    """
    factor = get_config().write.coarse
    if not factor or all(w.coarse_method is None for w in results):
        return []
    want = coarse_method(is_mask)
    calls = [
        partial(
            rebuild_level,
            join(plan.uri, r["volume"]),
            join(plan.uri, coarse_member(r["volume"])),
            factor,
            want,
            settings,
            run,
        )
        for r, w in zip(rows, results, strict=True)
        if w.coarse_method != want
    ]
    run_tasks(calls, executor=executor)
    names = [r["volume"].split("/")[1] for r in rows]
    _remove_strays(join(plan.uri, COARSE), set(names), ctx)
    add_members(join(plan.uri, COARSE), names, ctx)
    return [COARSE]


def write_collection(
    uri: str,
    items: Sequence[Item],
    *,
    name: str,
    is_mask: bool | None = None,
    ctx: tiledb.Ctx | None = None,
    progress: bool = True,
    executor: Executor | None = None,
    resume: bool = False,
) -> str:
    """Write ``items`` as a new collection called ``name`` at ``uri``; return ``uri``.

    ``is_mask=None`` guesses the mask flag from the name and the first volume's voxels.
    ``executor`` runs the volume tasks (default: threads); ``resume=True`` finishes an
    interrupted write at ``uri`` (volumes already whole are kept).

    >>> import numpy as np, tempfile, os
    >>> from radiobject.ingest._sources import numpy_items
    >>> uri = os.path.join(tempfile.mkdtemp(), "CT")
    >>> write_collection(uri, numpy_items({"a": np.zeros((4, 4, 2))}), name="CT") == uri
    True
    """
    ctx = ctx or get_tiledb_ctx()
    check_executor(executor)
    _check_items(name, items)
    plan = _Plan(uri, name, list(items), is_mask)
    with _target(uri, COLLECTION_KIND, ctx, resume) as done:
        if done:
            _check_done(plan, ctx)
            return uri
        _write_plans(
            [plan],
            ctx=ctx,
            executor=executor,
            progress=progress,
            run=uuid.uuid4().hex,
            shapes={},
        )
    return uri


def write_radiobject(
    uri: str,
    sources: Mapping[str, Sequence[Item]],
    *,
    obs_meta: pd.DataFrame | None = None,
    masks: Mapping[str, bool | None] | None = None,
    validate_alignment: bool = True,
    ctx: tiledb.Ctx | None = None,
    progress: bool = True,
    executor: Executor | None = None,
    resume: bool = False,
    reference: str | None = None,
) -> str:
    """Write a RadiObject of the collections ``sources`` (name -> items) at ``uri``.

    Each subject's volumes are checked to share one grid from their headers before any
    voxel is written (items without a header are checked once written). ``masks`` forces
    the mask flag per collection (default: guessed). With ``reference`` (a collection's
    name) the collections may lie on different grids: every subject needs a volume in the
    reference collection, whose grid samples are planned in; the name is stored in the
    RadiObject's metadata (``RadiObject.reference``).

    >>> import numpy as np, tempfile, os
    >>> from radiobject.ingest._sources import numpy_items
    >>> uri = os.path.join(tempfile.mkdtemp(), "r")
    >>> write_radiobject(uri, {"CT": numpy_items([np.ones((4, 4, 2))])}, progress=False) == uri
    True
    """
    ctx = ctx or get_tiledb_ctx()
    check_executor(executor)
    if not sources:
        raise IngestError("a RadiObject needs at least one collection")
    for name, items in sources.items():
        _check_items(name, items)
    check_reference(reference, sources)
    if reference is not None:
        validate_alignment = False  # other grids are allowed: the reference's is planned in
    subjects = list(dict.fromkeys(it.obs_subject_id for its in sources.values() for it in its))
    obs_meta = check_obs_meta(obs_meta, subjects)
    masks = masks or {}
    plans = [
        _Plan(join(uri, COLLECTIONS, name), name, list(items), masks.get(name))
        for name, items in sources.items()
    ]
    run = uuid.uuid4().hex
    with _target(uri, RADIOBJECT_KIND, ctx, resume) as done:
        if done:
            with tiledb.Group(join(uri, COLLECTIONS), ctx=ctx) as g:
                stored = sorted(m.name for m in g)
            if stored != sorted(sources):
                raise AlreadyExistsError(
                    f"cannot resume: the finished RadiObject at {uri!r} holds other volumes "
                    f"(collections {stored}) than the ones given ({sorted(sources)}); remove "
                    "it or choose another URI"
                )
            for plan in plans:
                _check_done(plan, ctx)
            return uri
        shapes: dict[tuple[str, str], Geometry] = {}
        if validate_alignment:
            shapes = _headers(plans, executor, run, progress)
            check_alignment(
                [
                    (p.name, it.obs_subject_id, shapes[(p.name, it.obs_subject_id)])
                    for p in plans
                    for it in p.items
                    if (p.name, it.obs_subject_id) in shapes
                ]
            )
        meta = None if reference is None else {REFERENCE: reference}
        _ensure_group(uri, RADIOBJECT_KIND, ctx, meta)
        _ensure_group(join(uri, COLLECTIONS), COLLECTIONS_KIND, ctx)
        _write_plans(plans, ctx=ctx, executor=executor, progress=progress, run=run, shapes=shapes)
        if validate_alignment and any(it.header is None for p in plans for it in p.items):
            check_alignment(_geometries_from_obs(plans, ctx))
        _replace_table(join(uri, OBS_META), obs_meta, "obs_subject_id", ctx)
        add_members(join(uri, COLLECTIONS), list(sources), ctx)
        add_members(uri, [OBS_META, COLLECTIONS], ctx)
        mark_complete(uri, ctx)
    return uri


def copy_items(src: StoredCollection) -> list[Item]:
    """Items copying the volumes of ``src`` with their user columns (picklable loaders)."""
    obs = src.obs
    user_cols = [c for c in obs.columns if c not in ("obs_id", *CORE_COLUMNS)]
    items = []
    for _, row in obs.iterrows():
        vol = src.volume(row["obs_id"])
        geom = Geometry(
            tuple(int(v) for v in str(row["shape"]).split(",")),
            np.array(json.loads(str(row["affine"])), dtype=np.float64),
        )
        items.append(
            Item(
                str(row["obs_subject_id"]),
                StoredVolume(vol.uri, tiledb_settings(vol.ctx)),
                source=str(row["source"]),
                extra={c: row[c] for c in user_cols},
                header=geom,
            )
        )
    if not items:
        raise RadiObjectError(f"cannot write an empty view of collection {src.name!r}")
    return items


def copy_collection(
    src: StoredCollection,
    uri: str,
    *,
    name: str | None = None,
    progress: bool = False,
    ctx: tiledb.Ctx | None = None,
    executor: Executor | None = None,
    resume: bool = False,
) -> str:
    """Copy ``src`` (a collection or a view) to ``uri`` with its user columns; return ``uri``."""
    return write_collection(
        uri,
        copy_items(src),
        name=name or src.name,
        is_mask=src.is_mask,
        ctx=ctx,
        progress=progress,
        executor=executor,
        resume=resume,
    )
