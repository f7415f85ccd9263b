"""The versions of a RadiObject: reading it as of one, listing them, diffing, growing it.

:class:`CohortVersions` is a base of :class:`~radiobject.storage._radiobject.RadiObject`
(as :class:`~radiobject.storage._collection_ingest.CollectionConstructors` is of
VolumeCollection): what a cohort's history needs, apart from the rest of its API. The
history itself (fragments, timestamps, what changed) is :mod:`radiobject.storage._history`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import tiledb

from radiobject._errors import VersionError
from radiobject._tiledb_errors import tiledb_errors
from radiobject.storage._collection import VolumeCollection
from radiobject.storage._dataframe import Dataframe
from radiobject.storage._group import join
from radiobject.storage._history import (
    Version,
    VersionDiff,
    as_timestamp,
    collection_arrays,
    commit_times,
    frame_changes,
    group_versions,
    now_ms,
    past_timestamp,
    volume_writes,
)
from radiobject.storage._layout import COLLECTIONS, OBS_META, VERSIONS_FROM

__all__ = ["CohortVersions"]


class CohortVersions:
    """Versions of a cohort: :attr:`at`, :meth:`as_of`, :meth:`versions`, :meth:`diff`.

    Also :meth:`add_subject`, the write that grows a cohort by a subject.

    >>> from radiobject import RadiObject
    >>> issubclass(RadiObject, CohortVersions)
    True
    """

    if TYPE_CHECKING:  # what RadiObject provides
        uri: str
        _ctx: tiledb.Ctx | None
        _at: int | None
        _subjects: list[str] | None
        _collections: list[str] | None
        _obs_meta_df: Any
        _meta: Any

        def __init__(
            self, uri: str | Path, ctx: tiledb.Ctx | None = None, *, at: Any = None
        ) -> None: ...

        @property
        def ctx(self) -> tiledb.Ctx: ...

        @property
        def obs_meta_table(self) -> Dataframe: ...

        @property
        def obs_subject_ids(self) -> list[str]: ...

        @property
        def collection_names(self) -> list[str]: ...

        def collection(self, name: str) -> VolumeCollection: ...

        def _names_now(self) -> list[str]: ...

        def _view(self, subjects: Any = None, collections: Any = None) -> Self: ...

        def __contains__(self, name: object) -> bool: ...

    @property
    def at(self) -> int | None:
        """The version read (a TileDB timestamp in ms), or None for the newest."""
        return self._at

    def as_of(self, at: Version | int | dt.datetime | str) -> Self:
        """This RadiObject (or view) as of version ``at``, read-only.

        The same as ``RadiObject(uri, at=at)``, keeping this view's subjects that existed.
        """
        then = type(self)(self.uri, ctx=self._ctx, at=at)
        if self._collections is not None:
            then = then._view(collections=[c for c in self._collections if c in then])
        if self._subjects is not None:
            there = set(then.obs_subject_ids)
            then = then._view(subjects=[s for s in self._subjects if s in there])
        return then

    def versions(self) -> list[Version]:
        """Every version of the cohort, oldest first: one per timestamp something was written.

        Each :class:`Version` names what was written then (``"obs_meta"``, ``"seg/obs"``,
        ``"seg/sub-001_seg"`` ...). Derived from the fragments of every table and volume (one
        listing per array: on S3 one LIST request each). ``pandas.DataFrame(radi.versions())``
        makes a table of them.

        >>> import numpy as np, tempfile, os
        >>> from radiobject.data import make_sample_radiobject
        >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
        ...                               shape=(16, 16, 12), progress=False)
        >>> before = radi.versions()[-1]
        >>> radi.seg.volume("sub-000_seg").write_region(((0, 2), (0, 2), (0, 2)),
        ...                                             np.ones((2, 2, 2)))
        >>> radi.versions()[-1].written  # the mask and its foreground index entry
        ('seg/foreground', 'seg/sub-000_seg')
        >>> radi.diff(before).volumes_changed
        ('sub-000_seg',)
        """
        stamped = [("obs_meta", commit_times(join(self.uri, OBS_META), self.ctx))]
        for name in self._names_now():
            for label, uri in collection_arrays(join(self.uri, COLLECTIONS, name), self.ctx):
                stamped.append((label, commit_times(uri, self.ctx)))
        return group_versions(stamped)

    def diff(
        self,
        before: Version | int | dt.datetime | str,
        after: Version | int | dt.datetime | str | None = None,
    ) -> VersionDiff:
        """What changed from version ``before`` to ``after`` (default: the newest).

        Subjects added, removed or with another ``obs_meta`` row; volumes added, removed or
        written in between (their fragments); ``obs`` rows that differ; collections added or
        removed. Reads both tables of each collection and lists the fragments of its arrays.
        """
        t0 = as_timestamp(before)
        t1 = now_ms() if after is None else as_timestamp(after)
        if t1 < t0:
            raise VersionError(f"diff needs before <= after; got {t0} and {t1}")
        old, new = type(self)(self.uri, self._ctx, at=t0), type(self)(self.uri, self._ctx, at=t1)
        meta0, meta1 = old.obs_meta_table.read(), new.obs_meta_table.read()
        s0, s1 = set(meta0["obs_subject_id"]), set(meta1["obs_subject_id"])
        c0, c1 = set(old.collection_names), set(new.collection_names)
        added, removed, changed, obs_changed = [], [], [], []
        for name in sorted(c0 | c1):
            obs0 = old.collection(name).obs_table.read() if name in c0 else None
            obs1 = new.collection(name).obs_table.read() if name in c1 else None
            ids0 = set() if obs0 is None else set(obs0["obs_id"])
            ids1 = set() if obs1 is None else set(obs1["obs_id"])
            added += sorted(ids1 - ids0)
            removed += sorted(ids0 - ids1)
            if obs0 is not None and obs1 is not None:
                obs_changed += frame_changes(obs0, obs1, "obs_id")
                coll_uri = join(self.uri, COLLECTIONS, name)
                both = obs1[obs1["obs_id"].isin(ids0)]
                arrays = [
                    (str(o), join(coll_uri, str(v)))
                    for o, v in zip(both["obs_id"], both["volume"], strict=True)
                ]
                changed += volume_writes(arrays, self.ctx, t0, t1)
        return VersionDiff(
            before=t0,
            after=t1,
            subjects_added=tuple(sorted(s1 - s0)),
            subjects_removed=tuple(sorted(s0 - s1)),
            subjects_changed=tuple(frame_changes(meta0, meta1, "obs_subject_id")),
            volumes_added=tuple(added),
            volumes_removed=tuple(removed),
            volumes_changed=tuple(sorted(changed)),
            obs_changed=tuple(sorted(obs_changed)),
            collections_added=tuple(sorted(c1 - c0)),
            collections_removed=tuple(sorted(c0 - c1)),
        )

    def drop_versions_before(self, keep_from: Version | int | dt.datetime | str) -> int:
        """Drop the versions before ``keep_from``: ``keep_from`` and later read as before.

        radiobject never consolidates nor vacuums by itself, so every version stays readable
        (and every fragment stays on disk). This is the way to drop old ones on purpose:
        each array of the cohort (``obs_meta``, every collection's ``obs``, foreground index
        and volumes) has the fragments written up to ``keep_from`` merged into one (TileDB
        consolidation, stamped with the newest of them) and the merged ones deleted
        (vacuum). Pass the oldest version a checkpoint you keep records, e.g.
        ``min(state["data_version"] for state in kept_states)``: those checkpoints resume
        exactly as before. Afterwards ``RadiObject(uri, at=v)`` with ``v`` before
        ``keep_from`` raises :class:`~radiobject.VersionError`. Returns the number of arrays
        whose fragments were merged.

        >>> import numpy as np, tempfile, os
        >>> from radiobject import RadiObject
        >>> from radiobject.data import make_sample_radiobject
        >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
        ...                               shape=(16, 16, 12), modalities=("T1w",),
        ...                               progress=False)
        >>> vol = radi.seg.volume("sub-000_seg")
        >>> vol.write_region(((0, 2), (0, 2), (0, 2)), np.full((2, 2, 2), 2))
        >>> checkpoint = radi.versions()[-1]  # the version a kept checkpoint records
        >>> vol.write_region(((0, 1), (0, 1), (0, 1)), np.full((1, 1, 1), 3))
        >>> radi.drop_versions_before(checkpoint)  # two writes become one: the mask's, its index's
        2
        >>> int(RadiObject(radi.uri, at=checkpoint).seg.volume("sub-000_seg")[0, 0, 0])
        2

        Raises:
            VersionError: this object is open at a past version, or ``keep_from`` is in the
                future.
        """
        from radiobject.read import forget_array

        self._check_writable("drop versions")
        stamp = past_timestamp(keep_from)
        arrays = [join(self.uri, OBS_META)]
        for name in self._names_now():
            coll = join(self.uri, COLLECTIONS, name)
            arrays += [uri for _, uri in collection_arrays(coll, self.ctx)]
        config = self.ctx.config()  # this context's settings (S3 ...) and the window
        config["sm.consolidation.timestamp_start"] = "0"
        config["sm.consolidation.timestamp_end"] = str(stamp)
        merged = 0
        for uri in arrays:
            if sum(t <= stamp for t in commit_times(uri, self.ctx)) < 2:
                continue  # one fragment (or none) up to then: nothing to merge
            with tiledb_errors(uri, "consolidate"):
                tiledb.consolidate(uri, config=config, ctx=self.ctx)
                tiledb.vacuum(uri, ctx=self.ctx)
            forget_array(uri)
            merged += 1
        kept = max(stamp, int(self._meta.get(VERSIONS_FROM, 0)))
        with (
            tiledb_errors(self.uri, "record the dropped versions of"),
            tiledb.Group(self.uri, mode="w", ctx=self.ctx) as group,
        ):
            group.meta[VERSIONS_FROM] = kept
        self._meta = {**self._meta, VERSIONS_FROM: kept}
        return merged

    def _check_writable(self, what: str) -> None:
        if self._at is not None:
            raise VersionError(
                f"cannot {what}: {self.uri!r} is open at version {Version(self._at).time}, "
                "read-only; open it at the newest version (RadiObject(uri)) to write"
            )

    def add_subject(
        self,
        obs_subject_id: str,
        volumes: Mapping[str, np.ndarray],
        *,
        obs_meta: Mapping[str, Any] | None = None,
        affine: np.ndarray | Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Add one subject: its volumes (collection name -> voxels) and its ``obs_meta`` row.

        Each write is a new version: a run reading an earlier one (``RadiObject(uri,
        at=...)``, a resumed loader) does not see the subject. ``obs_meta`` gives every
        column of the subject table but ``obs_subject_id``; the volumes share one grid
        (``affine``, default 1 mm voxels). Collections without the subject stay without it.
        In a cohort with a reference grid (``RadiObject.reference``) the volumes may lie on
        their own grids (``affine`` a dict: collection name -> affine) and the reference
        collection's volume is required.

        >>> import numpy as np, tempfile, os
        >>> from radiobject import RadiObject
        >>> from radiobject.data import make_sample_radiobject
        >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
        ...                               shape=(16, 16, 12), modalities=("T1w",),
        ...                               progress=False)
        >>> row = radi.obs_meta.iloc[0].drop("obs_subject_id").to_dict()
        >>> radi.add_subject("sub-new", {"T1w": np.zeros((16, 16, 12))}, obs_meta=row)
        >>> RadiObject(radi.uri).obs_subject_ids
        ['sub-000', 'sub-001', 'sub-new']

        Every input is checked before the first write, and a volume that fails to write
        removes those written before it: a refused or failed call leaves nothing behind.

        Raises:
            AlreadyExistsError: the subject is in ``obs_meta`` already (run again), or one of
                its volumes is in a collection already (an earlier call stopped half-way).
            IngestError: a collection is unknown, or a column is missing or unknown.
            AlignmentError: the volumes differ in shape or affine (without a reference
                grid), or the reference volume is missing.
            VersionError: this object is open at a past version.
        """
        from radiobject.storage._grow import add_subject

        self._check_writable(f"add subject {obs_subject_id!r}")
        collections = {  # every collection, also those a view leaves out
            n: VolumeCollection(join(self.uri, COLLECTIONS, n), ctx=self._ctx)
            for n in self._names_now()
        }
        add_subject(
            self.obs_meta_table,
            collections,
            obs_subject_id,
            volumes,
            dict(obs_meta or {}),
            affine,
            reference=getattr(self, "reference", None),
        )
        self._obs_meta_df = None
