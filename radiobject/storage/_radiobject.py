"""RadiObject: subjects (``obs_meta``) and their collections of volumes."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tiledb

from radiobject._context import local_ctx, portable_ctx, unpickled_ctx
from radiobject._errors import (
    IncompleteError,
    IngestError,
    NotFoundError,
    OutOfBoundsError,
    VersionError,
)
from radiobject._tiledb_errors import tiledb_errors
from radiobject.storage._cohort_ingest import CohortConstructors
from radiobject.storage._cohort_versions import CohortVersions
from radiobject.storage._collection import VolumeCollection
from radiobject.storage._dataframe import Dataframe
from radiobject.storage._group import add_members, exists, group_meta, join, require_complete
from radiobject.storage._history import Version, commit_times, past_timestamp
from radiobject.storage._layout import (
    COLLECTIONS,
    OBS,
    OBS_META,
    RADIOBJECT_KIND,
    REFERENCE,
    VERSIONS_FROM,
)

__all__ = ["RadiObject"]


class _SubjectIndexer:
    def __init__(self, owner: RadiObject, positional: bool) -> None:
        self._owner, self._positional = owner, positional

    def __getitem__(self, key: Any) -> RadiObject:
        ids = self._owner.obs_subject_ids
        if not self._positional:
            keys = [key] if isinstance(key, str) else list(key)
            missing = [k for k in keys if k not in set(ids)]
            if missing:
                raise NotFoundError(f"no subject(s) {missing} in {self._owner.uri!r}")
            return self._owner._view(subjects=keys)
        if isinstance(key, (int, np.integer)):
            if not -len(ids) <= key < len(ids):
                raise OutOfBoundsError(
                    f"subject position {key} out of range for {len(ids)} subjects"
                )
            return self._owner._view(subjects=[ids[int(key)]])
        if isinstance(key, slice):
            return self._owner._view(subjects=ids[key])
        return self._owner._view(subjects=[ids[int(i)] for i in key])


class RadiObject(CohortConstructors, CohortVersions):
    """Subjects and their volumes: ``obs_meta`` plus named collections (``radi.T1w``).

    A RadiObject is a mapping of collection names to collections, as an xarray Dataset is of
    its variables: ``len``, ``in``, iteration, ``keys()``, ``values()``, ``items()`` and
    ``radi[name]`` all speak of collections. Subjects are rows: :attr:`n_subjects`,
    :attr:`obs_subject_ids`, :attr:`obs_meta`, and ``iloc`` / ``loc`` select them.

    Views (``head``, ``filter``, ``iloc``, ``select_collections``) are cheap; ``write(uri)``
    materialises one. ``repr`` reads metadata only, never voxels.

    >>> from radiobject.data import make_sample_radiobject
    >>> import tempfile, os
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=4,
    ...                               shape=(16, 16, 12), progress=False)
    >>> len(radi), list(radi), "T1w" in radi, "CT" in radi
    (3, ['FLAIR', 'T1w', 'seg'], True, False)
    >>> radi["T1w"].name, radi.n_subjects, radi.filter("age > 0").n_subjects
    ('T1w', 4, 4)
    """

    def __init__(
        self,
        uri: str | Path,
        ctx: tiledb.Ctx | None = None,
        *,
        at: Version | int | dt.datetime | str | None = None,
        _subjects: Sequence[str] | None = None,
        _collections: Sequence[str] | None = None,
    ) -> None:
        self.uri = str(uri).rstrip("/")
        self._ctx = ctx
        self._subjects = None if _subjects is None else list(_subjects)
        self._collections = None if _collections is None else list(_collections)
        self._meta = group_meta(self.uri, RADIOBJECT_KIND, self.ctx)
        require_complete(self.uri, RADIOBJECT_KIND, self._meta)
        self._obs_meta_df: pd.DataFrame | None = None
        self._all_names: list[str] | None = None
        self._at: int | None = None
        if at is not None:
            self._at = past_timestamp(at)
            first = commit_times(join(self.uri, OBS_META), self.ctx)
            dropped = int(self._meta.get(VERSIONS_FROM, 0))
            if self._at < dropped:
                raise VersionError(
                    f"the versions of {self.uri!r} before {Version(dropped).time} were dropped "
                    f"(drop_versions_before): {Version(self._at).time} cannot be read; pick one "
                    "of radi.versions()"
                )
            if not first or first[0] > self._at:
                raise VersionError(
                    f"{self.uri!r} has no version at or before {Version(self._at).time}: its "
                    f"first is {Version(first[0]).time if first else 'unknown'}; pick one of "
                    "radi.versions()"
                )

    @property
    def ctx(self) -> tiledb.Ctx:
        """The TileDB context in use."""
        return local_ctx(self._ctx)

    @property
    def reference(self) -> str | None:
        """The collection whose grid samples are planned in, or None (one grid for all).

        Named at ingest (``from_images(..., reference="T1w")``); the loaders resample each
        sample's box of the other collections to it (see :mod:`radiobject.read._grids`).

        >>> import numpy as np, tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> t1 = VolumeCollection.from_numpy(os.path.join(d, "T1w"), [np.zeros((8, 8, 8))])
        >>> flair = VolumeCollection.from_numpy(os.path.join(d, "FLAIR"), [np.zeros((4, 4, 3))],
        ...                                     spacing=(2.0, 2.0, 3.0))
        >>> radi = RadiObject.from_collections(os.path.join(d, "r"), {"T1w": t1, "FLAIR": flair},
        ...                                    reference="T1w", progress=False)
        >>> radi.reference, RadiObject(radi.uri).FLAIR.reference
        ('T1w', 'T1w')
        """
        name = self._meta.get(REFERENCE)
        return None if name is None else str(name)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ctx": portable_ctx(self._ctx)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _ctx=unpickled_ctx(state["_ctx"]))

    # -- subjects --------------------------------------------------------------------------
    @property
    def obs_meta_table(self) -> Dataframe:
        """The stored subject table."""
        return Dataframe(join(self.uri, OBS_META), ctx=self._ctx, at=self._at)

    @property
    def obs_meta(self) -> pd.DataFrame:
        """One row per subject (of this view): ``obs_subject_id`` and subject columns."""
        if self._obs_meta_df is None:
            df = self.obs_meta_table.read()
            if self._subjects is not None:
                df = df.set_index("obs_subject_id").loc[self._subjects].reset_index()
            self._obs_meta_df = df
        return self._obs_meta_df.copy()

    @property
    def obs_subject_ids(self) -> list[str]:
        """Subject ids, in order."""
        if self._subjects is not None:
            return list(self._subjects)
        return self.obs_meta["obs_subject_id"].tolist()

    @property
    def n_subjects(self) -> int:
        """Number of subjects (of this view); ``len(radi)`` counts collections."""
        return len(self.obs_subject_ids)

    @property
    def iloc(self) -> _SubjectIndexer:
        """Subjects by position: ``radi.iloc[0]``, ``radi.iloc[:10]`` -> view."""
        return _SubjectIndexer(self, positional=True)

    @property
    def loc(self) -> _SubjectIndexer:
        """Subjects by id: ``radi.loc["sub-001"]`` or a list -> view."""
        return _SubjectIndexer(self, positional=False)

    def _view(
        self, subjects: Sequence[str] | None = None, collections: Sequence[str] | None = None
    ) -> RadiObject:
        view = RadiObject.__new__(RadiObject)
        view.__dict__.update(self.__dict__)
        view._subjects = list(subjects) if subjects is not None else self._subjects
        view._collections = list(collections) if collections is not None else self._collections
        view._obs_meta_df = None
        return view

    def head(self, n: int = 5) -> RadiObject:
        """A view of the first ``n`` subjects."""
        return self._view(subjects=self.obs_subject_ids[:n])

    def tail(self, n: int = 5) -> RadiObject:
        """A view of the last ``n`` subjects."""
        return self._view(subjects=self.obs_subject_ids[-n:] if n else [])

    def sample(self, n: int, seed: int | None = None) -> RadiObject:
        """A view of ``n`` subjects drawn without replacement (kept in order)."""
        ids = self.obs_subject_ids
        if not 0 <= n <= len(ids):
            raise OutOfBoundsError(f"cannot sample {n} of {len(ids)} subjects")
        picked = set(np.random.default_rng(seed).choice(len(ids), size=n, replace=False))
        return self._view(subjects=[s for k, s in enumerate(ids) if k in picked])

    def filter(self, expr: str) -> RadiObject:
        """A view of the subjects whose ``obs_meta`` row matches ``expr``.

        ``expr`` is a TileDB QueryCondition, e.g. ``"age > 40 and sex == 'F'"``.
        """
        keep = set(self.obs_meta_table.ids(expr))
        return self._view(subjects=[s for s in self.obs_subject_ids if s in keep])

    # -- collections -----------------------------------------------------------------------
    @property
    def collection_names(self) -> list[str]:
        """Names of the collections (of this view), sorted."""
        if self._all_names is None:
            names = self._names_now()
            if self._at is not None:  # those whose obs table was written by then
                at = self._at
                names = [
                    n
                    for n in names
                    if any(
                        t <= at for t in commit_times(join(self.uri, COLLECTIONS, n, OBS), self.ctx)
                    )
                ]
            self._all_names = names
        names = self._all_names
        if self._collections is None:
            return list(names)
        return [n for n in names if n in self._collections]

    def _names_now(self) -> list[str]:
        uri = join(self.uri, COLLECTIONS)
        with tiledb_errors(uri, "list collections"), tiledb.Group(uri, ctx=self.ctx) as g:
            return sorted(m.name for m in g)

    def collection(self, name: str) -> VolumeCollection:
        """The collection ``name``, restricted to this view's subjects."""
        if name not in self.collection_names:
            raise NotFoundError(
                f"no collection {name!r} in {self.uri!r}; collections are {self.collection_names}"
            )
        coll = VolumeCollection(
            join(self.uri, COLLECTIONS, name),
            ctx=self._ctx,
            _obs_meta=self.obs_meta_table,
            at=self._at,
        )
        if self._subjects is not None:
            keep = set(self._subjects)
            coll = coll._view(
                [o for o, s in zip(coll.obs_ids, coll.obs_subject_ids, strict=True) if s in keep]
            )
        return coll

    # -- the mapping of collection names to collections ------------------------------------
    def __getitem__(self, name: str) -> VolumeCollection:
        return self.collection(name)

    def __len__(self) -> int:
        return len(self.collection_names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.collection_names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.collection_names

    def keys(self) -> list[str]:
        """Collection names (of this view), sorted; the same as ``list(radi)``."""
        return self.collection_names

    def values(self) -> list[VolumeCollection]:
        """The collections (of this view), in the order of :meth:`keys`."""
        return [self.collection(n) for n in self.collection_names]

    def items(self) -> list[tuple[str, VolumeCollection]]:
        """``(name, collection)`` pairs, in the order of :meth:`keys`."""
        return [(n, self.collection(n)) for n in self.collection_names]

    def get(self, name: str, default: Any = None) -> VolumeCollection | Any:
        """The collection ``name``, or ``default`` when there is none."""
        return self.collection(name) if name in self else default

    def __getattr__(self, name: str) -> VolumeCollection:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self.collection_names:
            return self.collection(name)
        raise AttributeError(
            f"RadiObject has no attribute or collection {name!r}; collections are "
            f"{self.collection_names}"
        )

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.collection_names))

    def _ipython_key_completions_(self) -> list[str]:
        return self.collection_names

    def select_collections(self, names: Sequence[str]) -> RadiObject:
        """A view with only the collections ``names``."""
        missing = [n for n in names if n not in self.collection_names]
        if missing:
            raise NotFoundError(
                f"no collection(s) {missing}; collections are {self.collection_names}"
            )
        return self._view(collections=list(names))

    def warm_local_tier(self, *, progress: bool = False) -> int:
        """Put every volume of every collection in the local read tier now.

        See :meth:`VolumeCollection.warm_local_tier`; returns how many were written.

        >>> import tempfile, os
        >>> from radiobject import ReadConfig, configure
        >>> from radiobject.data import make_sample_radiobject
        >>> d = tempfile.mkdtemp()
        >>> radi = make_sample_radiobject(os.path.join(d, "r"), n_subjects=2, shape=(8, 8, 8),
        ...                               progress=False)
        >>> with configure(read=ReadConfig(local_tier_mb=16, local_tier_dir=os.path.join(d, "t"))):
        ...     radi.warm_local_tier() == 2 * len(radi.collection_names)
        True
        """
        return sum(
            self.collection(name).warm_local_tier(progress=progress)
            for name in self.collection_names
        )

    # -- summaries -------------------------------------------------------------------------
    def describe(self) -> pd.DataFrame:
        """One row per collection: volumes, shape, dtype, spacing, mask flag (no voxel reads)."""
        rows = []
        for name in self.collection_names:
            coll = self.collection(name)
            obs = coll.obs
            rows.append(
                {
                    "collection": name,
                    "volumes": len(obs),
                    "shape": coll.shape if coll.is_uniform else "mixed",
                    "dtype": ", ".join(sorted(set(obs["dtype"]))),
                    "spacing": ", ".join(sorted(set(obs["spacing"]))),
                    "orientation": ", ".join(sorted(set(obs["orientation"]))),
                    "mask": coll.is_mask,
                }
            )
        return pd.DataFrame(rows).set_index("collection")

    def __repr__(self) -> str:
        kind = "view of " if self._subjects is not None or self._collections is not None else ""
        names = self.collection_names
        at = "" if self._at is None else f" as of {Version(self._at).time}"
        return (
            f"<RadiObject ({kind}{_count(len(names), 'collection')}: {', '.join(names)}; "
            f"{_count(self.n_subjects, 'subject')}) at {self.uri!r}{at}>"
        )

    def _repr_html_(self) -> str:
        table = self.describe().to_html()
        meta_cols = ", ".join(html.escape(c) for c in self.obs_meta_table.columns)
        return (
            f"<b>RadiObject</b> at <code>{html.escape(self.uri)}</code>: "
            f"{_count(len(self), 'collection')}, {_count(self.n_subjects, 'subject')}"
            f"<br>obs_meta columns: {meta_cols}{table}"
        )

    # -- writing ---------------------------------------------------------------------------
    def write(
        self, uri: str | Path, *, progress: bool = False, executor: Executor | None = None
    ) -> RadiObject:
        """Materialise this RadiObject (or view) at ``uri`` (``executor``: as ``from_images``)."""
        reference = self.reference if self.reference in self.collection_names else None
        return RadiObject.from_collections(
            uri,
            {n: self.collection(n) for n in self.collection_names},
            reference=reference,
            obs_meta=self.obs_meta,
            progress=progress,
            ctx=self._ctx,
            executor=executor,
        )

    def add_collection(
        self,
        name: str,
        source: VolumeCollection
        | str
        | Path
        | Sequence[str | Path]
        | Sequence[tuple[str | Path, str]],
        *,
        progress: bool = True,
        is_mask: bool | None = None,
        executor: Executor | None = None,
        resume: bool = False,
    ) -> VolumeCollection:
        """Add a collection from a :class:`VolumeCollection` or image sources (as ``from_images``).

        Every subject of the new collection must already be in ``obs_meta``. The collection
        shows up only once it is complete: an interrupted call leaves it unlisted, and the
        same call with ``resume=True`` finishes it.

        Args:
            name: the new collection's name (not one of :attr:`collection_names`).
            source: a collection or view to copy (its user columns too), or image sources as
                a value of ``from_images``'s ``images``: a glob, a folder, paths, or
                ``(path, subject_id)`` pairs.
            progress: show a progress bar.
            is_mask: force the mask flag of image sources (default: guessed from the name and
                voxel values; a copied collection keeps its flag).
            executor: where volumes are read and written (as in :meth:`from_images`).
            resume: finish an interrupted ``add_collection`` of the same ``name``.

        >>> import numpy as np, tempfile, os
        >>> from radiobject.data import make_sample_radiobject
        >>> d = tempfile.mkdtemp()
        >>> radi = make_sample_radiobject(os.path.join(d, "r"), n_subjects=2,
        ...                               shape=(16, 16, 12), progress=False)
        >>> arrays = {s: np.zeros((16, 16, 12)) for s in radi.obs_subject_ids}
        >>> ct = VolumeCollection.from_numpy(os.path.join(d, "CT"), arrays)
        >>> radi.add_collection("CT", ct, progress=False).obs_ids
        ['sub-000_CT', 'sub-001_CT']
        >>> list(radi)
        ['CT', 'FLAIR', 'T1w', 'seg']
        """
        from radiobject.ingest._sources import file_items
        from radiobject.ingest._writer import copy_items, write_collection

        self._check_writable(f"add collection {name!r}")
        if name in self.collection_names:
            raise IngestError(f"{self.uri!r} already has a collection {name!r}")
        target = join(self.uri, COLLECTIONS, name)
        if isinstance(source, VolumeCollection):  # a copy keeps its mask flag and user columns
            items, is_mask = copy_items(source), source.is_mask
        else:
            items = file_items(source, name)
        unknown = sorted({it.obs_subject_id for it in items} - set(self.obs_meta_table.ids()))
        if unknown:
            raise IngestError(
                f"subjects {unknown[:5]} of collection {name!r} are not in obs_meta of "
                f"{self.uri!r}; add them to obs_meta first"
            )
        if not resume and exists(target, self.ctx):
            raise IncompleteError(
                f"an earlier add_collection of {name!r} to {self.uri!r} did not finish; pass "
                f"resume=True to finish it, or remove {target!r}"
            )
        write_collection(
            target,
            items,
            name=name,
            is_mask=is_mask,
            ctx=self._ctx,
            progress=progress,
            executor=executor,
            resume=resume,
        )
        add_members(join(self.uri, COLLECTIONS), [name], self.ctx)
        self._all_names = None
        if self._collections is not None:  # a view of some collections also shows the new one
            self._collections.append(name)
        return self.collection(name)


def _count(n: int, noun: str) -> str:
    """``"1 subject"``, ``"3 subjects"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
