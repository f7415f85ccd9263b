"""TileDB groups: typed creation, metadata, all-or-nothing writes and the completeness marker.

A RadiObject or a collection is complete once the metadata key ``complete`` of its group is
set; writers set it last, after every member has landed. A writer stopped before that (a
crash, ``SIGKILL``, a machine lost) leaves an object that opens with :class:`IncompleteError`
instead of looking finished.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import tiledb

from radiobject._errors import (
    AlreadyExistsError,
    IncompleteError,
    NotFoundError,
    RadiObjectError,
)
from radiobject._tiledb_errors import tiledb_errors

__all__ = [
    "COMPLETE",
    "add_members",
    "create_group",
    "exists",
    "group_meta",
    "join",
    "mark_complete",
    "new_target",
    "remove",
    "require_complete",
]

COMPLETE = "complete"  # group metadata key, written last by a successful writer

_log = logging.getLogger(__name__)


def join(uri: str, *parts: str) -> str:
    """Join URI parts with ``/`` (works for paths and ``s3://`` alike).

    >>> join("s3://b/x/", "collections", "T1w")
    's3://b/x/collections/T1w'
    """
    return "/".join([uri.rstrip("/"), *parts])


def create_group(uri: str, kind: str, ctx: tiledb.Ctx, meta: dict[str, Any] | None = None) -> None:
    """Create a group tagged with ``kind`` (``RadiObject``, ``VolumeCollection`` ...)."""
    with tiledb_errors(uri, "create group"):
        tiledb.Group.create(uri, ctx=ctx)
        with tiledb.Group(uri, mode="w", ctx=ctx) as g:
            g.meta["radiobject_type"] = kind
            for key, value in (meta or {}).items():
                g.meta[key] = value


def add_members(uri: str, names: list[str], ctx: tiledb.Ctx) -> None:
    """Register child objects ``uri/name`` as relative members of the group at ``uri``.

    Names already registered are left as they are (a resumed write registers the rest).
    """
    with tiledb_errors(uri, "update group"):
        with tiledb.Group(uri, ctx=ctx) as g:
            known = {m.name for m in g}
        todo = [n for n in names if n not in known]
        if todo:
            with tiledb.Group(uri, mode="w", ctx=ctx) as g:
                for name in todo:
                    g.add(name, name=name, relative=True)


def mark_complete(uri: str, ctx: tiledb.Ctx) -> None:
    """Mark the group at ``uri`` complete: call it after the last write of its object."""
    with tiledb_errors(uri, "update group"), tiledb.Group(uri, mode="w", ctx=ctx) as g:
        g.meta[COMPLETE] = 1


def require_complete(uri: str, kind: str, meta: dict[str, Any]) -> None:
    """Raise :class:`IncompleteError` unless ``meta`` (of the group at ``uri``) says complete."""
    if not meta.get(COMPLETE):
        raise IncompleteError(
            f"{uri!r} holds a {kind} whose writing did not finish: the process writing it "
            "was stopped or failed before the end. Re-run the call that wrote it with "
            "resume=True to finish it (RadiObject.from_images, RadiObject.add_collection, "
            "VolumeCollection.from_niftis or from_dicoms), or remove it and write it again. "
            "(Objects written before radiobject marked finished writes lack the marker too: "
            "write them again.)"
        )


def exists(uri: str, ctx: tiledb.Ctx) -> bool:
    """True when something (a TileDB object or any folder) is stored at ``uri``."""
    with tiledb_errors(uri, "check the write target"):
        return tiledb.object_type(uri, ctx=ctx) is not None or tiledb.VFS(ctx=ctx).is_dir(uri)


def group_meta(uri: str, kind: str, ctx: tiledb.Ctx) -> dict[str, Any]:
    """Metadata of the group at ``uri``, checking it is a radiobject ``kind``."""
    with tiledb_errors(uri, f"open {kind}"):
        found = tiledb.object_type(uri, ctx=ctx)
    if found is None:
        raise NotFoundError(f"no {kind} at {uri!r}: nothing is stored there")
    with tiledb_errors(uri, f"open {kind}"):
        if found != "group":
            raise NotFoundError(f"{uri!r} is a TileDB {found}, not a {kind}")
        with tiledb.Group(uri, ctx=ctx) as g:
            meta = {k: g.meta[k] for k in g.meta}
    if meta.get("radiobject_type") != kind:
        what = meta.get("radiobject_type", "plain TileDB group")
        raise NotFoundError(f"{uri!r} holds a {what}, not a {kind}")
    return meta


def remove(uri: str, ctx: tiledb.Ctx) -> None:
    """Delete everything under ``uri`` (no error if nothing is there).

    On S3 a "directory" is a key prefix: ``is_dir`` lists ``uri/`` and ``remove_dir`` deletes
    every object under it.
    """
    with tiledb_errors(uri, "remove"):
        vfs = tiledb.VFS(ctx=ctx)
        if vfs.is_dir(uri):
            vfs.remove_dir(uri)
        elif vfs.is_file(uri):
            vfs.remove_file(uri)


@contextmanager
def new_target(uri: str, ctx: tiledb.Ctx) -> Iterator[None]:
    """Guard a write of a new object at ``uri``: it must not exist, and a failure removes it."""
    if exists(uri, ctx):
        raise AlreadyExistsError(f"{uri!r} already exists; remove it or choose a new URI")
    try:
        yield
    except BaseException:
        try:
            remove(uri, ctx)
        except RadiObjectError as cleanup:  # e.g. the endpoint went away: keep the first error
            _log.warning("could not remove the partial write at %r: %s", uri, cleanup)
        raise
