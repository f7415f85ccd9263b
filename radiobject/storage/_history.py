"""Versions of a RadiObject: every write is a TileDB fragment with a timestamp.

TileDB keeps each write (a volume's voxels, rows of a table) as a fragment stamped with the
time (ms) it was written, and opens an array as of a timestamp: the fragments written after
it are left out. A *version* of a cohort is such a timestamp. This module lists them and
says what changed between two.

Versions are derived from the fragments themselves (their commit files), not from a log
kept beside them: every write lands in the history, whichever API made it (an ingest,
``add_subject``, ``Volume.write_region`` on a volume taken out of a collection, a
prediction writer), and a write that died half-way (no commit file) is in none. Listing
costs one LIST per array (each table, foreground index and volume): cheap locally, a few
hundred requests for a large cohort on S3, so :func:`list_versions` is a method to call,
never something a read does.

A write stamped at ``t`` is visible to a read at any ``at >= t``; a read at ``t`` sees
exactly the fragments committed at or before ``t``. Consolidation merges fragments into one
stamped with the newest of them (the versions in between can no longer be told apart), and
vacuuming deletes the merged ones: radiobject never does either. See the README section
"Versions" for how to drop old versions on purpose.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import tiledb

from radiobject._errors import VersionError
from radiobject._tiledb_errors import tiledb_errors
from radiobject.read._versioned import commit_end_ms

__all__ = ["Version", "VersionDiff", "as_timestamp", "commit_times", "now_ms"]


@dataclass(frozen=True, order=True)
class Version:
    """One version of a cohort: a TileDB timestamp (ms since the epoch, UTC).

    ``RadiObject(uri, at=version)`` reads the cohort as it was then. :attr:`written` names
    what the writes stamped at this timestamp changed (``"obs_meta"``, ``"seg/obs"``,
    ``"seg/sub-001_seg"`` ...).

    >>> v = Version(1767225600000, ("obs_meta",))
    >>> v.time
    '2026-01-01T00:00:00.000+00:00'
    >>> int(v), v == Version(1767225600000)
    (1767225600000, True)
    """

    timestamp: int
    written: tuple[str, ...] = field(default=(), compare=False)

    @property
    def datetime(self) -> dt.datetime:
        """The timestamp as an aware UTC ``datetime``."""
        return dt.datetime.fromtimestamp(self.timestamp / 1000, tz=dt.UTC)

    @property
    def time(self) -> str:
        """The timestamp in ISO 8601, to the millisecond (UTC)."""
        return self.datetime.isoformat(timespec="milliseconds")

    def __int__(self) -> int:
        return self.timestamp

    def __repr__(self) -> str:
        what = ", ".join(self.written[:3]) + (" ..." if len(self.written) > 3 else "")
        return f"Version({self.timestamp}, {self.time}: {what or 'nothing listed'})"


@dataclass(frozen=True)
class VersionDiff:
    """What changed in a cohort between two versions (``radi.diff(v1, v2)``).

    Attributes:
        before: the older version's timestamp.
        after: the newer version's timestamp.
        subjects_added: subject ids in ``obs_meta`` at ``after`` only.
        subjects_removed: subject ids in ``obs_meta`` at ``before`` only.
        subjects_changed: subjects in both whose ``obs_meta`` row differs.
        volumes_added: obs_ids (every collection) at ``after`` only.
        volumes_removed: obs_ids at ``before`` only.
        volumes_changed: obs_ids in both whose voxels were written in between.
        obs_changed: obs_ids in both whose ``obs`` row differs.
        collections_added: collections at ``after`` only.
        collections_removed: collections at ``before`` only.

    >>> from radiobject.data import make_sample_radiobject
    >>> import numpy as np, tempfile, os
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> checkpoint = radi.versions()[-1]
    >>> radi.add_subject("sub-new", {"T1w": np.zeros((16, 16, 12))},
    ...                  obs_meta=radi.obs_meta.iloc[0].drop("obs_subject_id").to_dict())
    >>> change = radi.diff(checkpoint)
    >>> change.subjects_added, change.volumes_added, change.volumes_changed, change.empty
    (('sub-new',), ('sub-new_T1w',), (), False)
    """

    before: int
    after: int
    subjects_added: tuple[str, ...] = ()
    subjects_removed: tuple[str, ...] = ()
    subjects_changed: tuple[str, ...] = ()
    volumes_added: tuple[str, ...] = ()
    volumes_removed: tuple[str, ...] = ()
    volumes_changed: tuple[str, ...] = ()
    obs_changed: tuple[str, ...] = ()
    collections_added: tuple[str, ...] = ()
    collections_removed: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """True when nothing changed."""
        return not any(
            getattr(self, name) for name in self.__dataclass_fields__ if name not in _BOUNDS
        )

    def __repr__(self) -> str:
        parts = [
            f"{name}={list(value)}"
            for name in self.__dataclass_fields__
            if name not in _BOUNDS and (value := getattr(self, name))
        ]
        return f"VersionDiff({self.before} -> {self.after}: {', '.join(parts) or 'no change'})"


_BOUNDS = ("before", "after")


def now_ms() -> int:
    """The current time as a TileDB timestamp (ms since the epoch).

    >>> now_ms() > 1_700_000_000_000
    True
    """
    return int(dt.datetime.now(tz=dt.UTC).timestamp() * 1000)


def as_timestamp(at: Version | int | dt.datetime | str) -> int:
    """A version given as a :class:`Version`, ms timestamp, ``datetime`` or ISO string, in ms.

    A naive ``datetime`` (or ISO string without an offset) is taken as UTC.

    >>> as_timestamp("2026-01-01T00:00:00"), as_timestamp(Version(5))
    (1767225600000, 5)
    """
    if isinstance(at, Version):
        return at.timestamp
    if isinstance(at, bool):
        raise VersionError(f"a version is a Version, a ms timestamp or a datetime, got {at!r}")
    if isinstance(at, int):
        if at < 0:
            raise VersionError(f"a version timestamp is ms since 1970, >= 0; got {at}")
        return at
    if isinstance(at, str):
        try:
            at = dt.datetime.fromisoformat(at)
        except ValueError as e:
            raise VersionError(
                f"cannot read {at!r} as a time; give an ISO 8601 time, a datetime, a ms "
                "timestamp or a Version from radi.versions()"
            ) from e
    if isinstance(at, dt.datetime):
        if at.tzinfo is None:
            at = at.replace(tzinfo=dt.UTC)
        return int(at.timestamp() * 1000)
    raise VersionError(
        f"a version is a Version, a ms timestamp, a datetime or an ISO string; got "
        f"{type(at).__name__}"
    )


def past_timestamp(at: Version | int | dt.datetime | str) -> int:
    """:func:`as_timestamp` of a version to read: one in the future is refused.

    A read "as of" a time still to come would see writes made before it under the same
    cache keys and recorded version; read the newest data (no ``at``) instead.

    >>> past_timestamp(5)
    5
    >>> past_timestamp(now_ms() + 86_400_000)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.VersionError: version ... is in the future ...
    """
    stamp = as_timestamp(at)
    now = now_ms()
    if stamp > now:
        raise VersionError(
            f"version {Version(stamp).time} is in the future (now {Version(now).time}): a "
            "version is a time already past; pick one of radi.versions(), or leave at=None "
            "for the newest data"
        )
    return stamp


def commit_times(uri: str, ctx: tiledb.Ctx) -> list[int]:
    """End timestamps (ms) of the committed fragments of the array at ``uri``, sorted.

    One listing of the array's ``__commits`` folder (one LIST on S3); arrays of an older
    format without commit files are read through TileDB's fragment info.
    """
    base = uri.rstrip("/")
    with tiledb_errors(base, "list the versions of"):
        try:
            names = [
                str(c).rstrip("/").rsplit("/", 1)[-1]
                for c in tiledb.VFS(ctx=ctx).ls(f"{base}/__commits")
            ]
        except tiledb.TileDBError:
            names = []
        if not names:
            if tiledb.object_type(base, ctx=ctx) != "array":
                return []
            return sorted(int(f.timestamp_range[1]) for f in tiledb.array_fragments(base, ctx=ctx))
    ends = [commit_end_ms(n) for n in names if n.endswith((".wrt", ".con"))]
    return sorted(t for t in ends if t is not None)


def group_versions(stamped: Sequence[tuple[str, Sequence[int]]]) -> list[Version]:
    """Versions from ``(label, commit times)`` of each array: one per distinct timestamp.

    >>> group_versions([("obs_meta", [5, 9]), ("T1w/obs", [5])])
    [Version(5, 1970-01-01T00:00:00.005+00:00: obs_meta, T1w/obs), Version(9, ...)]
    """
    by_time: dict[int, list[str]] = {}
    for label, times in stamped:
        for t in times:
            names = by_time.setdefault(int(t), [])
            if label not in names:
                names.append(label)
    return [Version(t, tuple(by_time[t])) for t in sorted(by_time)]


def frame_changes(before: pd.DataFrame, after: pd.DataFrame, key: str) -> list[str]:
    """Keys present in both frames whose rows differ (columns of either; NaN equals NaN)."""
    common = sorted(set(before[key]) & set(after[key]))
    if not common:
        return []
    columns = sorted((set(before.columns) | set(after.columns)) - {key})
    a = before.set_index(key).reindex(index=common, columns=columns)
    b = after.set_index(key).reindex(index=common, columns=columns)
    return [k for k in common if not _same_row(a.loc[k], b.loc[k])]


def _same_row(a: pd.Series, b: pd.Series) -> bool:
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        if _missing(x) and _missing(y):
            continue
        if x != y:
            return False
    return True


def _missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def collection_arrays(uri: str, ctx: tiledb.Ctx) -> list[tuple[str, str]]:
    """``(label, array uri)`` of the arrays of the collection at ``uri`` (newest ``obs``).

    ``obs``, the foreground index (a mask collection's) and every volume, labelled
    ``"<collection>/obs"``, ``"<collection>/foreground"`` and ``"<collection>/<obs_id>"``.
    Coarse levels are left out: they are made from the volumes, and follow them.
    """
    from radiobject.storage._dataframe import Dataframe
    from radiobject.storage._group import join
    from radiobject.storage._layout import FG_INDEX, OBS

    name = uri.rstrip("/").rsplit("/", 1)[-1]
    obs = Dataframe(join(uri, OBS), ctx=ctx).read(columns=["volume"])
    arrays = [(f"{name}/obs", join(uri, OBS)), (f"{name}/foreground", join(uri, FG_INDEX))]
    arrays += [
        (f"{name}/{o}", join(uri, str(v)))
        for o, v in zip(obs["obs_id"], obs["volume"], strict=True)
    ]
    return arrays


def volume_writes(
    arrays: Sequence[tuple[str, str]], ctx: tiledb.Ctx, after: int, until: int
) -> list[str]:
    """Labels of ``arrays`` with a fragment committed in ``(after, until]``."""
    return [
        label for label, uri in arrays if any(after < t <= until for t in commit_times(uri, ctx))
    ]


def written_between(collection: Any, after: int, until: int | None = None) -> bool:
    """Whether anything ``collection`` reads was written in ``(after, until]``.

    Its arrays (``obs``, the foreground index, the volumes of the newest ``obs``) and its
    ``obs_meta``; ``until`` None: up to now. One listing per array (a LIST request each on
    S3).
    """
    arrays = [uri for _, uri in collection_arrays(collection.uri, collection.ctx)]
    if collection._obs_meta is not None:
        arrays.append(collection._obs_meta.uri)
    return any(
        after < t and (until is None or t <= until)
        for uri in arrays
        for t in commit_times(uri, collection.ctx)
    )
