"""VolumeCollection: volumes of one kind (a modality or a mask), one per subject, with ``obs``."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tiledb

from radiobject._context import local_ctx, portable_ctx, unpickled_ctx
from radiobject._errors import LabelError, NotFoundError, OutOfBoundsError
from radiobject.read._versioned import versioned
from radiobject.storage._collection_derived import CollectionDerivedData
from radiobject.storage._collection_ingest import CollectionConstructors
from radiobject.storage._dataframe import Dataframe
from radiobject.storage._foreground import ForegroundIndex
from radiobject.storage._group import group_meta, join, require_complete
from radiobject.storage._history import (
    Version,
    collection_arrays,
    commit_times,
    group_versions,
    past_timestamp,
)
from radiobject.storage._layout import COLLECTION_KIND, COLLECTIONS, OBS, RADIOBJECT_KIND, REFERENCE
from radiobject.storage._volume import Volume

__all__ = ["VolumeCollection"]


class _ILoc:
    def __init__(self, owner: VolumeCollection) -> None:
        self._owner = owner

    def __getitem__(self, key: int | slice | Sequence[int]) -> Any:
        ids = self._owner.obs_ids
        if isinstance(key, (int, np.integer)):
            n = len(ids)
            if not -n <= key < n:
                raise OutOfBoundsError(
                    f"position {int(key)} is out of range for collection "
                    f"{self._owner.name!r} of {n} volumes"
                )
            return self._owner.volume(ids[int(key)])
        if isinstance(key, slice):
            return self._owner._view(ids[key])
        picked = []
        for i in key:
            if not -len(ids) <= int(i) < len(ids):
                raise OutOfBoundsError(
                    f"position {int(i)} is out of range for collection {self._owner.name!r} "
                    f"of {len(ids)} volumes"
                )
            picked.append(ids[int(i)])
        return self._owner._view(picked)


class _Loc:
    def __init__(self, owner: VolumeCollection) -> None:
        self._owner = owner

    def __getitem__(self, key: str | Sequence[str]) -> Any:
        if isinstance(key, str):
            return self._owner.volume(key)
        return self._owner._view([self._owner._check_id(k) for k in key])


_IDS = ("obs_subject_id",)  # the columns the id properties need


class VolumeCollection(CollectionConstructors, CollectionDerivedData):
    """Volumes of one kind, one row of ``obs`` each.

    A collection is opened lazily; ``head``, ``filter``, ``iloc[a:b]`` and friends return
    views (cheap objects over the same arrays) that ``write(uri)`` can materialise. New
    collections come from the class methods ``from_numpy``, ``from_volumes``, ``from_niftis``
    and ``from_dicoms`` (in :mod:`radiobject.storage._collection_ingest`); the foreground
    index, coarse levels and local-tier copies kept beside the volumes from
    :mod:`radiobject.storage._collection_derived`.

    >>> from radiobject.data import make_sample_radiobject
    >>> import tempfile, os
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=3,
    ...                               shape=(16, 16, 12), progress=False)
    >>> t1 = radi.T1w
    >>> len(t1), t1.shape, t1.iloc[0].shape
    (3, (16, 16, 12), (16, 16, 12))
    >>> len(t1.head(2)), t1.head(2).obs_ids == t1.obs_ids[:2]
    (2, True)
    """

    def __init__(
        self,
        uri: str | Path,
        ctx: tiledb.Ctx | None = None,
        *,
        _selection: Sequence[str] | None = None,
        _obs_meta: Dataframe | None = None,
        at: int | None = None,
    ) -> None:
        self.uri = str(uri).rstrip("/")
        self._ctx = ctx
        self._at = at  # the version read (TileDB timestamp, ms); None: the newest
        self._selection = None if _selection is None else tuple(_selection)
        self._obs_meta = _obs_meta
        self._meta: dict[str, Any] | None = None
        self._obs: pd.DataFrame | None = None
        self._obs_parts: dict[tuple[str, ...], pd.DataFrame] = {}
        self._fg: dict[str, ForegroundIndex] | None = None
        self._coarse_unsaved = False  # a level could not be stored: keep them in memory
        if _selection is None and _obs_meta is None:  # opened on its own: check it is whole
            require_complete(self.uri, COLLECTION_KIND, self.meta)

    # -- basics --------------------------------------------------------------------------
    @property
    def ctx(self) -> tiledb.Ctx:
        """The TileDB context in use."""
        return local_ctx(self._ctx)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_ctx"] = portable_ctx(self._ctx)  # its settings: each process builds its own
        state["_fg"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _ctx=unpickled_ctx(state["_ctx"]))

    @property
    def at(self) -> int | None:
        """The version read (a TileDB timestamp in ms), or None for the newest."""
        return self._at

    def as_of(self, at: Any) -> VolumeCollection:
        """This collection (or view) as of version ``at``: read-only, cheap (nothing is read).

        ``at`` is a :class:`radiobject.Version`, a ms timestamp, a ``datetime`` or an ISO
        string. A view keeps the volumes of its selection that existed then.

        >>> import numpy as np, tempfile, os
        >>> ct = VolumeCollection.from_numpy(os.path.join(tempfile.mkdtemp(), "CT"),
        ...                                  [np.zeros((4, 4, 2))])
        >>> before = ct.versions()[-1]
        >>> ct.volume(ct.obs_ids[0]).write_region(((0, 1), (0, 1), (0, 1)), np.ones((1, 1, 1)))
        >>> float(ct.as_of(before).iloc[0][0, 0, 0]), float(ct.iloc[0][0, 0, 0])
        (0.0, 1.0)
        """
        stamp = past_timestamp(at)
        meta = self._obs_meta
        if meta is not None:
            meta = Dataframe(meta.uri, ctx=meta._ctx, at=stamp)
        then = VolumeCollection(self.uri, ctx=self._ctx, _obs_meta=meta, at=stamp)
        then._meta = self._meta
        if self._selection is not None:
            there = set(then.obs_ids)
            then = then._view([i for i in self._selection if i in there])
        return then

    def versions(self) -> list[Version]:
        """The versions of this collection: one per timestamp its arrays were written at.

        See :meth:`radiobject.RadiObject.versions` (this lists ``obs``, the foreground index
        and the volumes of this collection only).
        """
        arrays = collection_arrays(self.uri, self.ctx)
        return group_versions([(label, commit_times(uri, self.ctx)) for label, uri in arrays])

    @property
    def meta(self) -> dict[str, Any]:
        """Group metadata (name, mask flag, ...)."""
        if self._meta is None:
            self._meta = group_meta(self.uri, COLLECTION_KIND, self.ctx)
        return self._meta

    @property
    def name(self) -> str:
        """The collection's name, e.g. ``"T1w"``."""
        return str(self.meta.get("name", self.uri.rsplit("/", 1)[-1]))

    @property
    def is_mask(self) -> bool:
        """True for label maps (segmentations); their foreground is indexed."""
        return bool(self.meta.get("is_mask", 0))

    @property
    def reference(self) -> str | None:
        """The reference collection of its RadiObject, or None (on its own, or none named).

        See :attr:`radiobject.RadiObject.reference`. The loaders plan samples in that
        collection's grid (read from its ``obs``).
        """
        if self._obs_meta is None:
            return None
        if "_reference" not in self.__dict__:
            parent = self._obs_meta.uri.rsplit("/", 1)[0]
            name = group_meta(parent, RADIOBJECT_KIND, self.ctx).get(REFERENCE)
            self._reference = None if name is None else str(name)
        return self._reference

    def reference_collection(self) -> VolumeCollection | None:
        """The collection named by :attr:`reference` (all its volumes, at this version)."""
        name = self.reference
        if name is None:
            return None
        assert self._obs_meta is not None
        parent = self._obs_meta.uri.rsplit("/", 1)[0]
        return VolumeCollection(
            join(parent, COLLECTIONS, name), ctx=self._ctx, _obs_meta=self._obs_meta, at=self._at
        )

    @property
    def is_view(self) -> bool:
        """True when this object shows a subset of the stored volumes."""
        return self._selection is not None

    @property
    def obs_table(self) -> Dataframe:
        """The stored ``obs`` table (all volumes, not only this view's)."""
        return Dataframe(join(self.uri, OBS), ctx=self._ctx, at=self._at)

    @property
    def obs(self) -> pd.DataFrame:
        """One row per volume of this collection (or view): ids, geometry and user columns."""
        if self._obs is None:
            self._obs = self._selected(self.obs_table.read())
        return self._obs.copy()

    def obs_columns(self, *names: str) -> pd.DataFrame:
        """``obs_id`` and the columns ``names`` of :attr:`obs`, reading only those columns.

        Cheaper than :attr:`obs` on wide tables (TileDB reads each column apart); read once
        per collection object.

        >>> from radiobject.data import make_sample_radiobject
        >>> import tempfile
        >>> radi = make_sample_radiobject(tempfile.mkdtemp() + "/r", n_subjects=2,
        ...                               shape=(16, 16, 8), progress=False)
        >>> radi.T1w.obs_columns("obs_subject_id").columns.tolist()
        ['obs_id', 'obs_subject_id']
        """
        return self._obs_frame(tuple(names))[["obs_id", *names]].copy()

    def _selected(self, df: pd.DataFrame) -> pd.DataFrame:
        if self._selection is None:
            return df
        return df.set_index("obs_id").loc[list(self._selection)].reset_index()

    @property
    def obs_ids(self) -> list[str]:
        """Volume ids, in order."""
        if self._selection is not None:
            return list(self._selection)
        return self._obs_frame(_IDS)["obs_id"].tolist()

    @property
    def obs_subject_ids(self) -> list[str]:
        """Subject id of each volume, in order."""
        return self._obs_frame(_IDS)["obs_subject_id"].tolist()

    def _obs_frame(self, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
        """The obs rows (all columns, or at least ``columns`` while the full table is unread)."""
        if self._obs is not None:
            return self._obs
        if columns is None:
            self.obs  # noqa: B018 - fills the cache
            assert self._obs is not None
            return self._obs
        part = next((p for k, p in self._obs_parts.items() if set(columns) <= set(k)), None)
        if part is None:
            part = self._selected(self.obs_table.read(columns=list(columns)))
            self._obs_parts[columns] = part
        return part

    def __len__(self) -> int:
        return len(self.obs_ids)

    def __iter__(self) -> Iterator[Volume]:
        for obs_id in self.obs_ids:
            yield self.volume(obs_id)

    def __contains__(self, obs_id: object) -> bool:
        return obs_id in set(self.obs_ids)

    def __repr__(self) -> str:
        kind = "view of " if self.is_view else ""
        return f"<VolumeCollection {self.name!r} ({kind}{len(self)} volumes) at {self.uri!r}>"

    @property
    def iloc(self) -> _ILoc:
        """Positional access: ``iloc[i]`` -> Volume, ``iloc[a:b]`` or a list -> view."""
        return _ILoc(self)

    @property
    def loc(self) -> _Loc:
        """Access by obs_id: ``loc["sub-01_T1w"]`` -> Volume, a list -> view."""
        return _Loc(self)

    def _check_id(self, obs_id: str) -> str:
        if obs_id not in self:
            near = [i for i in self.obs_ids if obs_id.lower() in i.lower()][:5]
            hint = f"; similar ids: {near}" if near else ""
            raise NotFoundError(f"no volume {obs_id!r} in collection {self.name!r}{hint}")
        return obs_id

    def row(self, obs_id: str) -> pd.Series:
        """The ``obs`` row of one volume."""
        frame = self._obs_frame()
        hit = frame[frame["obs_id"] == self._check_id(obs_id)]
        return hit.iloc[0]

    def volume_uri(self, obs_id: str) -> str:
        """Where the array of ``obs_id`` is stored (a versioned key when read at a version).

        See :mod:`radiobject.read._versioned`: every read function takes the key as a URI.
        """
        return versioned(join(self.uri, str(self.row(obs_id)["volume"])), self._at)

    def volume(self, obs_id: str) -> Volume:
        """The :class:`Volume` of ``obs_id``."""
        return Volume(self.volume_uri(obs_id), ctx=self._ctx)

    def volume_shape(self, obs_id: str) -> tuple[int, ...]:
        """Shape of one volume, from ``obs`` (no array is opened)."""
        return tuple(int(v) for v in str(self.row(obs_id)["shape"]).split(","))

    def volume_affine(self, obs_id: str) -> np.ndarray:
        """Affine of one volume, from ``obs``."""
        return np.array(json.loads(str(self.row(obs_id)["affine"])), dtype=np.float64)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Shape of every volume, in order (from ``obs``)."""
        return [tuple(int(v) for v in s.split(",")) for s in self._obs_frame()["shape"]]

    @property
    def is_uniform(self) -> bool:
        """True when every volume has the same shape."""
        return len(set(self.shapes)) <= 1

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The common volume shape, or ``None`` when shapes differ."""
        shapes = set(self.shapes)
        return next(iter(shapes)) if len(shapes) == 1 else None

    # -- views ---------------------------------------------------------------------------
    def _view(self, ids: Sequence[str]) -> VolumeCollection:
        view = VolumeCollection(
            self.uri, ctx=self._ctx, _selection=list(ids), _obs_meta=self._obs_meta, at=self._at
        )
        view._meta = self._meta
        return view

    def head(self, n: int = 5) -> VolumeCollection:
        """A view of the first ``n`` volumes."""
        return self._view(self.obs_ids[:n])

    def tail(self, n: int = 5) -> VolumeCollection:
        """A view of the last ``n`` volumes."""
        return self._view(self.obs_ids[-n:] if n else [])

    def sample(self, n: int, seed: int | None = None) -> VolumeCollection:
        """A view of ``n`` volumes drawn without replacement (kept in collection order)."""
        ids = self.obs_ids
        if not 0 <= n <= len(ids):
            raise OutOfBoundsError(f"cannot sample {n} of {len(ids)} volumes in {self.name!r}")
        picked = set(np.random.default_rng(seed).choice(len(ids), size=n, replace=False))
        return self._view([i for k, i in enumerate(ids) if k in picked])

    def filter(self, expr: str) -> VolumeCollection:
        """A view of the volumes whose ``obs`` row matches ``expr`` (a TileDB QueryCondition).

        Columns of ``obs_meta`` can be used too when the collection belongs to a RadiObject.
        """
        keep = set(self._matching_ids(expr))
        return self._view([i for i in self.obs_ids if i in keep])

    def _matching_ids(self, expr: str) -> list[str]:
        obs_cols = set(self.obs_table.columns)
        meta = self._obs_meta
        if meta is not None and not _names_in(expr) <= obs_cols:
            subjects = set(meta.ids(expr))
            frame = self._obs_frame()
            return frame.loc[frame["obs_subject_id"].isin(subjects), "obs_id"].tolist()
        return self.obs_table.ids(expr)

    # -- labels ---------------------------------------------------------------------------
    def column(self, name: str) -> pd.Series:
        """A column by name, per volume (indexed by obs_id): from ``obs``, else ``obs_meta``."""
        frame = self._obs_frame().set_index("obs_id")
        if name in frame.columns:
            return frame[name]
        if self._obs_meta is not None and name in self._obs_meta.columns:
            meta = self._obs_meta.read(columns=[name]).set_index("obs_subject_id")[name]
            values = frame["obs_subject_id"].map(meta)
            return values.rename(name)
        known = sorted(set(frame.columns) | set(self._obs_meta.columns if self._obs_meta else []))
        raise LabelError(
            f"no column {name!r} in the obs of collection {self.name!r}"
            + (" or in obs_meta" if self._obs_meta is not None else "")
            + f"; available columns: {known}"
        )

    # -- writing ---------------------------------------------------------------------------
    def write(self, uri: str | Path, *, progress: bool = False) -> VolumeCollection:
        """Materialise this collection (or view) as a new standalone collection at ``uri``.

        >>> import numpy as np, tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> ct = VolumeCollection.from_numpy(os.path.join(d, "CT"), [np.zeros((4, 4, 3))] * 3)
        >>> len(ct.head(2).write(os.path.join(d, "CT2")))
        2
        """
        from radiobject.ingest._writer import copy_collection

        target = copy_collection(self, str(uri), progress=progress, ctx=self._ctx)
        return VolumeCollection(target, ctx=self._ctx)


def _names_in(expr: str) -> set[str]:
    """Column names an expression mentions (identifiers outside quotes, minus keywords)."""
    import ast

    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError:
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
