"""TileDB groups: typed creation, metadata, and all-or-nothing writes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import tiledb

from radiobject._errors import AlreadyExistsError, NotFoundError, RadiObjectError
from radiobject._tiledb_errors import tiledb_errors

__all__ = ["add_members", "create_group", "group_meta", "join", "new_target", "remove"]

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
    """Register child objects ``uri/name`` as relative members of the group at ``uri``."""
    with tiledb_errors(uri, "update group"), tiledb.Group(uri, mode="w", ctx=ctx) as g:
        for name in names:
            g.add(name, name=name, relative=True)


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
    with tiledb_errors(uri, "check the write target"):
        taken = tiledb.object_type(uri, ctx=ctx) is not None or tiledb.VFS(ctx=ctx).is_dir(uri)
    if taken:
        raise AlreadyExistsError(f"{uri!r} already exists; remove it or choose a new URI")
    try:
        yield
    except BaseException:
        try:
            remove(uri, ctx)
        except RadiObjectError as cleanup:  # e.g. the endpoint went away: keep the first error
            _log.warning("could not remove the partial write at %r: %s", uri, cleanup)
        raise
