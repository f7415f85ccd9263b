"""RadiObject: subjects (``obs_meta``) and their collections of volumes."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tiledb

from radiobject._context import get_tiledb_ctx, local_ctx, portable_ctx, unpickled_ctx
from radiobject._errors import (
    AlignmentError,
    IngestError,
    NotFoundError,
    OutOfBoundsError,
    tiledb_errors,
)
from radiobject.storage._collection import VolumeCollection
from radiobject.storage._dataframe import Dataframe
from radiobject.storage._group import add_members, create_group, group_meta, join, new_target

__all__ = ["RadiObject"]

KIND = "RadiObject"


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


class RadiObject:
    """Subjects and their volumes: ``obs_meta`` plus named collections (``radi.T1w``).

    Views (``head``, ``filter``, ``iloc``, ``select_collections``) are cheap; ``write(uri)``
    materialises one. ``repr`` reads metadata only, never voxels.

    >>> from radiobject.data import make_sample_radiobject
    >>> import tempfile, os
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=4,
    ...                               shape=(16, 16, 12), progress=False)
    >>> radi.collection_names
    ['FLAIR', 'T1w', 'seg']
    >>> len(radi.filter("age > 0")), radi.T1w is not None
    (4, True)
    """

    def __init__(
        self,
        uri: str | Path,
        ctx: tiledb.Ctx | None = None,
        *,
        _subjects: Sequence[str] | None = None,
        _collections: Sequence[str] | None = None,
    ) -> None:
        self.uri = str(uri).rstrip("/")
        self._ctx = ctx
        self._subjects = None if _subjects is None else list(_subjects)
        self._collections = None if _collections is None else list(_collections)
        self._meta = group_meta(self.uri, KIND, self.ctx)
        self._obs_meta_df: pd.DataFrame | None = None
        self._all_names: list[str] | None = None

    @property
    def ctx(self) -> tiledb.Ctx:
        """The TileDB context in use."""
        return local_ctx(self._ctx)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_ctx": portable_ctx(self._ctx)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _ctx=unpickled_ctx(state["_ctx"]))

    # -- subjects --------------------------------------------------------------------------
    @property
    def obs_meta_table(self) -> Dataframe:
        """The stored subject table."""
        return Dataframe(join(self.uri, "obs_meta"), ctx=self._ctx)

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

    def __len__(self) -> int:
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
            uri = join(self.uri, "collections")
            with tiledb_errors(uri, "list collections"), tiledb.Group(uri, ctx=self.ctx) as g:
                self._all_names = sorted(m.name for m in g)
        names = self._all_names
        if self._collections is None:
            return list(names)
        return [n for n in names if n in self._collections]

    def collection(self, name: str) -> VolumeCollection:
        """The collection ``name``, restricted to this view's subjects."""
        if name not in self.collection_names:
            raise NotFoundError(
                f"no collection {name!r} in {self.uri!r}; collections are {self.collection_names}"
            )
        coll = VolumeCollection(
            join(self.uri, "collections", name), ctx=self._ctx, _obs_meta=self.obs_meta_table
        )
        if self._subjects is not None:
            keep = set(self._subjects)
            coll = coll._view(
                [o for o, s in zip(coll.obs_ids, coll.obs_subject_ids, strict=True) if s in keep]
            )
        return coll

    def __getitem__(self, name: str) -> VolumeCollection:
        return self.collection(name)

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
        cols = ", ".join(self.collection_names)
        return f"<RadiObject ({kind}{len(self)} subjects; collections: {cols}) at {self.uri!r}>"

    def _repr_html_(self) -> str:
        table = self.describe().to_html()
        meta_cols = ", ".join(html.escape(c) for c in self.obs_meta_table.columns)
        return (
            f"<b>RadiObject</b> at <code>{html.escape(self.uri)}</code>: {len(self)} subjects"
            f"<br>obs_meta columns: {meta_cols}{table}"
        )

    # -- writing ---------------------------------------------------------------------------
    def write(self, uri: str | Path, *, progress: bool = False) -> RadiObject:
        """Materialise this RadiObject (or view) at ``uri``."""
        return RadiObject.from_collections(
            uri,
            {n: self.collection(n) for n in self.collection_names},
            obs_meta=self.obs_meta,
            progress=progress,
            ctx=self._ctx,
        )

    def add_collection(
        self,
        name: str,
        source: VolumeCollection | Any,
        *,
        progress: bool = True,
        is_mask: bool | None = None,
    ) -> VolumeCollection:
        """Add a collection from a :class:`VolumeCollection` or image sources (as ``from_images``).

        Every subject of the new collection must already be in ``obs_meta``.
        """
        from radiobject.ingest._files import collection_from_files, write_collection_from_volumes

        if name in self.collection_names:
            raise IngestError(f"{self.uri!r} already has a collection {name!r}")
        target = join(self.uri, "collections", name)
        known = set(self.obs_meta_table.ids())
        if isinstance(source, VolumeCollection):
            subjects = set(source.obs_subject_ids)
        else:
            from radiobject.ingest._files import resolve_sources

            subjects = {sid for _, sid in resolve_sources(source, name)}
        unknown = sorted(subjects - known)
        if unknown:
            raise IngestError(
                f"subjects {unknown[:5]} of collection {name!r} are not in obs_meta of "
                f"{self.uri!r}; add them to obs_meta first"
            )
        if isinstance(source, VolumeCollection):
            write_collection_from_volumes(
                source, target, progress=progress, ctx=self._ctx, name=name
            )
        else:
            collection_from_files(
                target, source, name=name, progress=progress, ctx=self._ctx, is_mask=is_mask
            )
        add_members(join(self.uri, "collections"), [name], self.ctx)
        self._all_names = None
        if self._collections is not None:  # a view of some collections also shows the new one
            self._collections.append(name)
        return self.collection(name)

    @classmethod
    def from_collections(
        cls,
        uri: str | Path,
        collections: Mapping[str, VolumeCollection],
        *,
        obs_meta: pd.DataFrame | None = None,
        validate_alignment: bool = True,
        progress: bool = True,
        ctx: tiledb.Ctx | None = None,
    ) -> RadiObject:
        """A new RadiObject at ``uri`` holding copies of ``collections`` (views allowed)."""
        from radiobject.ingest._files import write_collection_from_volumes

        return _build(
            str(uri),
            collections,
            obs_meta,
            validate_alignment,
            progress,
            ctx,
            lambda target, name, src: write_collection_from_volumes(
                src, target, progress=progress, ctx=ctx, name=name
            ),
            lambda src: src.obs_subject_ids,
        )

    @classmethod
    def from_images(
        cls,
        uri: str | Path,
        images: Mapping[str, Any],
        *,
        obs_meta: pd.DataFrame | None = None,
        validate_alignment: bool = True,
        masks: Sequence[str] | None = None,
        progress: bool = True,
        ctx: tiledb.Ctx | None = None,
    ) -> RadiObject:
        """Ingest images into a new RadiObject at ``uri``.

        Args:
            uri: target (must not exist); a local path or ``s3://bucket/prefix``.
            images: collection name -> a glob (``"dir/*.nii.gz"``), a folder of NIfTI files or
                DICOM series, a list of paths, or a list of ``(path, subject_id)`` pairs.
                Subject ids come from file names by :func:`radiobject.subject_id_from_path`.
            obs_meta: one row per subject with an ``obs_subject_id`` column (age, diagnosis ...).
                Every subject with images must have a row.
            validate_alignment: check that each subject's volumes share shape and affine.
            masks: names of mask collections (default: guessed from names and voxel values).
            progress: show progress bars.
            ctx: TileDB context.
        """
        from radiobject.ingest._files import collection_from_files, resolve_sources

        resolved = {name: resolve_sources(src, name) for name, src in images.items()}
        mask_set = set(masks) if masks is not None else None
        return _build(
            str(uri),
            resolved,
            obs_meta,
            validate_alignment,
            progress,
            ctx,
            lambda target, name, pairs: collection_from_files(
                target,
                [(p, s) for p, s in pairs],
                name=name,
                progress=progress,
                ctx=ctx,
                is_mask=None if mask_set is None else name in mask_set,
            ),
            lambda pairs: [s for _, s in pairs],
        )

    @classmethod
    def _from_items(
        cls,
        uri: str,
        sources: Mapping[str, Sequence[Any]],
        *,
        obs_meta: pd.DataFrame | None = None,
        masks: Sequence[str] = (),
        progress: bool = True,
        ctx: tiledb.Ctx | None = None,
    ) -> RadiObject:
        """A new RadiObject from lazily loaded items (see ``radiobject.ingest._files.Item``)."""
        from radiobject.ingest._files import write_collection

        return _build(
            uri,
            sources,
            obs_meta,
            True,
            progress,
            ctx,
            lambda target, name, items: write_collection(
                target, items, name=name, is_mask=name in masks, ctx=ctx, progress=progress
            ),
            lambda items: [it.obs_subject_id for it in items],
        )


def _build(
    uri: str,
    sources: Mapping[str, Any],
    obs_meta: pd.DataFrame | None,
    validate_alignment: bool,
    progress: bool,
    ctx: tiledb.Ctx | None,
    write: Any,
    subjects_of: Any,
) -> RadiObject:
    given, ctx = ctx, ctx or get_tiledb_ctx()
    if not sources:
        raise IngestError("a RadiObject needs at least one collection")
    subjects: list[str] = []
    for src in sources.values():
        subjects.extend(s for s in subjects_of(src) if s not in subjects)
    obs_meta = _check_obs_meta(obs_meta, subjects)
    with new_target(uri, ctx):
        create_group(uri, KIND, ctx)
        create_group(join(uri, "collections"), "collections", ctx)
        Dataframe.from_pandas(join(uri, "obs_meta"), obs_meta, index="obs_subject_id", ctx=ctx)
        for name, src in sources.items():
            write(join(uri, "collections", name), name, src)
        add_members(join(uri, "collections"), list(sources), ctx)
        add_members(uri, ["obs_meta", "collections"], ctx)
        radi = RadiObject(uri, ctx=ctx)
        if validate_alignment:
            _check_alignment(radi)
    # without a context of its own, the new object follows configure() (e.g. S3 set later)
    radi._ctx = given
    return radi


def _check_obs_meta(obs_meta: pd.DataFrame | None, subjects: list[str]) -> pd.DataFrame:
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


def _check_alignment(radi: RadiObject) -> None:
    seen: dict[str, tuple[str, tuple[int, ...], np.ndarray]] = {}
    for name in radi.collection_names:
        coll = radi.collection(name)
        for obs_id, sid in zip(coll.obs_ids, coll.obs_subject_ids, strict=True):
            shape = coll.volume_shape(obs_id)[:3]
            affine = coll.volume_affine(obs_id)
            if sid not in seen:
                seen[sid] = (name, shape, affine)
                continue
            first, ref_shape, ref_affine = seen[sid]
            if shape != ref_shape or not np.allclose(affine, ref_affine, atol=1e-3):
                what = f"shape {shape} vs {ref_shape}" if shape != ref_shape else "affine"
                raise AlignmentError(
                    f"subject {sid!r}: {name!r} and {first!r} are not on the same grid ({what}); "
                    "resample them first or pass validate_alignment=False"
                )
