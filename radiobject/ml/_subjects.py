"""Which volumes a dataset reads: collections matched by subject, and a label per volume."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from radiobject._errors import AlignmentError, ConfigurationError, LabelError, RadiObjectError
from radiobject.read import GridMap, grid_map, same_grid, versioned
from radiobject.storage import VolumeCollection, now_ms

__all__ = [
    "Labels",
    "VolumeRef",
    "align",
    "as_collections",
    "data_version",
    "pinned",
    "reference_of",
    "resolve_labels",
    "to_tensor",
    "to_tensor_rows",
]

Labels = str | Mapping[str, Any] | pd.DataFrame | pd.Series | Callable[[str], Any] | None


@dataclass(frozen=True)
class VolumeRef:
    """What a dataset needs to read one subject: its volume URIs (one per channel) and shape."""

    obs_id: str
    obs_subject_id: str
    uris: tuple[str, ...]
    shape: tuple[int, ...]
    grids: tuple[GridMap | None, ...] = ()
    """Per channel, the map from the reference grid into its volume (None: on that grid;
    empty: every channel on one grid, no reference)."""

    def grid(self, channel: int) -> GridMap | None:
        """The map of channel ``channel`` from the reference grid, or None (on that grid)."""
        return self.grids[channel] if self.grids else None


def as_collections(collections: Any) -> list[VolumeCollection]:
    """One collection or a sequence of them, checked."""
    if isinstance(collections, VolumeCollection):
        return [collections]
    out = list(collections) if isinstance(collections, (list, tuple)) else [collections]
    for c in out:
        if not isinstance(c, VolumeCollection):
            raise RadiObjectError(
                f"collections must be VolumeCollection objects (e.g. radi.T1w), got {type(c)!r}"
            )
    if not out:
        raise RadiObjectError("at least one collection is needed")
    return out


def data_version(collections: Sequence[VolumeCollection]) -> int | None:
    """The version ``collections`` are open at (TileDB ms), or None when at the newest.

    Raises:
        ConfigurationError: they are open at different versions.
    """
    stamps = {c.at for c in collections}
    if len(stamps) > 1:
        raise ConfigurationError(
            f"the collections of one dataset are open at different versions "
            f"{sorted(map(str, stamps))}; open them from one RadiObject(uri, at=...)"
        )
    return stamps.pop()


def pinned(
    collections: Sequence[VolumeCollection], at: int | None = None
) -> tuple[list[VolumeCollection], int]:
    """``(collections as of one version, that version)``: what a dataset reads, fixed.

    Collections open at a version keep it. Collections at the newest data are read as of
    ``at`` (default: now), so a write made after the dataset was built (a corrected mask, a
    new subject) is not seen by it, nor by a loader's workers or a resume from its state:
    the version it records is the one it reads.

    >>> import tempfile, numpy as np
    >>> ct = VolumeCollection.from_numpy(tempfile.mkdtemp() + "/CT", [np.zeros((4, 4, 2))])
    >>> (fixed,), version = pinned([ct])
    >>> ct.volume(ct.obs_ids[0]).write_region(((0, 1), (0, 1), (0, 1)), np.ones((1, 1, 1)))
    >>> fixed.at == version, float(fixed.iloc[0][0, 0, 0]), float(ct.iloc[0][0, 0, 0])
    (True, 0.0, 1.0)

    Raises:
        ConfigurationError: the collections are open at different versions.
    """
    stamp = data_version(collections)
    if stamp is not None:
        return list(collections), stamp
    stamp = now_ms() if at is None else int(at)
    return [c.as_of(stamp) for c in collections], stamp


def reference_of(collections: Sequence[VolumeCollection]) -> VolumeCollection | None:
    """The reference collection of ``collections`` (see ``RadiObject.reference``), or None.

    Raises:
        ConfigurationError: they come from cohorts with different references.
    """
    named = [c for c in collections if c.reference is not None]
    if not named:
        return None
    names = sorted({str(c.reference) for c in named})
    if len(names) > 1:
        raise ConfigurationError(
            f"the collections of one dataset name different reference grids {names}; take "
            "them from one RadiObject"
        )
    return named[0].reference_collection()


def align(
    collections: Sequence[VolumeCollection], reference: VolumeCollection | None = None
) -> list[VolumeRef]:
    """Match the volumes of several collections by subject (the first collection leads).

    Without ``reference`` every subject's channels must share one shape. With it (a
    collection, e.g. ``radi.T1w`` of a RadiObject whose ``reference`` is ``"T1w"``) each
    volume's :attr:`VolumeRef.shape` is its reference volume's, and a channel on another
    grid gets its :class:`~radiobject.read.GridMap` in :attr:`VolumeRef.grids`.
    """
    if reference is not None:
        return _align_to(collections, reference)
    first = collections[0]
    tables = []
    for coll in collections:
        obs = coll.obs_columns("obs_subject_id", "volume", "shape")
        if coll is first and len(obs) == 0:
            raise RadiObjectError(f"collection {first.name!r} has no volumes to load")
        # a collection read at a version names its arrays by versioned keys (see read)
        obs["uri"] = [versioned(coll.uri + "/" + v, coll.at) for v in obs["volume"]]
        tables.append(obs.set_index("obs_subject_id"))
    refs = []
    lead = tables[0]
    rows = lead[["uri", "shape", "obs_id"]].to_dict("records")
    for sid, row in zip(lead.index, rows, strict=True):
        uris, shape = [row["uri"]], str(row["shape"])
        for coll, table in zip(collections[1:], tables[1:], strict=True):
            if sid not in table.index:
                raise AlignmentError(
                    f"subject {sid!r} has a {first.name!r} volume but none in {coll.name!r}; "
                    f"filter the collections to the same subjects"
                )
            other = table.loc[sid]
            if str(other["shape"]).split(",")[:3] != shape.split(",")[:3]:
                raise AlignmentError(
                    f"subject {sid!r}: {first.name!r} has shape {shape} but {coll.name!r} has "
                    f"{other['shape']}; channels must share a grid"
                )
            uris.append(other["uri"])
        dims = tuple(int(v) for v in shape.split(","))
        refs.append(VolumeRef(str(row["obs_id"]), str(sid), tuple(uris), dims))
    return refs


def _align_to(
    collections: Sequence[VolumeCollection], reference: VolumeCollection
) -> list[VolumeRef]:
    """:func:`align` on the grids of ``reference``'s volumes."""
    grids = _geometry(reference)
    tables = [_geometry(c) for c in collections]
    if not tables[0]:
        raise RadiObjectError(f"collection {collections[0].name!r} has no volumes to load")
    refs = []
    for sid, lead in tables[0].items():
        if sid not in grids:
            raise AlignmentError(
                f"subject {sid!r} has no volume in the reference collection {reference.name!r} "
                "(the grid its samples are planned in); filter it out"
            )
        ref = grids[sid]
        uris, maps = [], []
        for coll, table in zip(collections, tables, strict=True):
            if sid not in table:
                raise AlignmentError(
                    f"subject {sid!r} has a {collections[0].name!r} volume but none in "
                    f"{coll.name!r}; filter the collections to the same subjects"
                )
            vol = table[sid]
            uris.append(vol.uri)
            same = same_grid(vol.shape, vol.affine, ref.shape, ref.affine)
            maps.append(None if same else grid_map(ref.affine, vol.affine, vol.shape))
        shape = (*ref.shape[:3], *lead.shape[3:])
        refs.append(VolumeRef(lead.obs_id, sid, tuple(uris), shape, tuple(maps)))
    return refs


@dataclass(frozen=True)
class _Stored:
    """One stored volume's id, array and geometry (from its collection's ``obs``)."""

    obs_id: str
    uri: str
    shape: tuple[int, ...]
    affine: np.ndarray


def _geometry(coll: VolumeCollection) -> dict[str, _Stored]:
    """The volumes of ``coll`` by subject, with their shapes and affines."""
    obs = coll.obs_columns("obs_subject_id", "volume", "shape", "affine")
    return {
        str(sid): _Stored(
            str(oid),
            versioned(coll.uri + "/" + str(member), coll.at),
            tuple(int(v) for v in str(shape).split(",")),
            np.array(json.loads(str(affine)), dtype=np.float64),
        )
        for oid, sid, member, shape, affine in zip(
            obs["obs_id"],
            obs["obs_subject_id"],
            obs["volume"],
            obs["shape"],
            obs["affine"],
            strict=True,
        )
    }


def resolve_labels(
    labels: Labels, collection: VolumeCollection, refs: Sequence[VolumeRef]
) -> tuple[dict[str, Any], list[Any] | None]:
    """Label per obs_id, and the class names when labels were strings (encoded as indices)."""
    if labels is None:
        return {}, None
    if isinstance(labels, str):
        series = collection.column(labels)
        values = {r.obs_id: series.get(r.obs_id) for r in refs}
    elif isinstance(labels, pd.Series):
        values = _lookup(labels.to_dict(), refs)
    elif isinstance(labels, pd.DataFrame):
        key = next((k for k in ("obs_id", "obs_subject_id") if k in labels.columns), None)
        frame = labels.set_index(key) if key else labels
        if frame.shape[1] != 1:
            raise LabelError(
                f"a labels DataFrame needs one label column besides obs_id/obs_subject_id; "
                f"got columns {list(frame.columns)}"
            )
        values = _lookup(frame.iloc[:, 0].to_dict(), refs)
    elif isinstance(labels, Mapping):
        values = _lookup(dict(labels), refs)
    elif callable(labels):
        values = {r.obs_id: labels(r.obs_id) for r in refs}
    else:
        raise LabelError(
            f"labels must be a column name, dict, DataFrame or callable, got {labels!r}"
        )
    missing = [k for k, v in values.items() if v is None or (isinstance(v, float) and np.isnan(v))]
    if missing:
        raise LabelError(
            f"no label for volume(s) {missing[:5]} of collection {collection.name!r}; give every "
            "volume a label or filter the collection first"
        )
    classes = None
    if any(isinstance(v, str) for v in values.values()):
        classes = sorted({str(v) for v in values.values()})
        values = {k: classes.index(str(v)) for k, v in values.items()}
    return values, classes


def _lookup(mapping: dict[Any, Any], refs: Sequence[VolumeRef]) -> dict[str, Any]:
    return {r.obs_id: mapping.get(r.obs_id, mapping.get(r.obs_subject_id)) for r in refs}


_INTEGERS = (int, np.integer, bool)  # labels made int64 tensors (to_tensor, to_tensor_rows)
_FLOATS = (float, np.floating)  # labels made float32 tensors


def to_tensor(value: Any) -> Any:
    """A label as a tensor (integers as int64, floats as float32); anything else as it is."""
    if isinstance(value, _INTEGERS):
        return torch.tensor(int(value))
    if isinstance(value, _FLOATS):
        return torch.tensor(float(value), dtype=torch.float32)
    return value


def to_tensor_rows(values: Sequence[Any]) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    """Labels of a batch as one tensor and its rows, each row equal to ``to_tensor(value)``.

    When every value is an integer (int64), or every value a float (float32); else None
    (each label is then made with :func:`to_tensor`).

    >>> whole, rows = to_tensor_rows([2, 0, 1])
    >>> whole.tolist(), rows[0].dtype, rows[0].shape
    ([2, 0, 1], torch.int64, torch.Size([]))
    >>> to_tensor_rows([1, 0.5]) is None
    True
    """
    try:
        if all(isinstance(v, _INTEGERS) for v in values):
            whole = torch.from_numpy(np.array([int(v) for v in values], dtype=np.int64))
        elif all(isinstance(v, _FLOATS) for v in values):
            whole = torch.from_numpy(np.array([float(v) for v in values], dtype=np.float32))
        else:
            return None
    except OverflowError:  # beyond int64: to_tensor says so, value by value
        return None
    return whole, list(whole.unbind())
