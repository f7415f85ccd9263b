"""The compact foreground index of a mask collection.

For every mask volume and every non-zero label it keeps the voxel count and a bounded,
evenly spread sample of voxel coordinates. It is written at ingest (or on first use) and at
each write to a mask, as one sparse array beside the volumes, so a segmentation loader's
set-up reads that one array and never the masks themselves.

The index is versioned like the masks: a write of a volume's entry appends it (a new
fragment at the write's timestamp, cells keyed ``(volume, written, row)``) and a read keeps
each volume's newest entry visible at the version read. ``Volume.write_region`` on a mask
writes the new entry at the timestamp of its voxels, so the index read as of any version
is the index of the masks of that version.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tiledb

from radiobject._errors import StorageError
from radiobject._tiledb_errors import tiledb_errors

__all__ = [
    "ForegroundIndex",
    "compute_foreground",
    "foreground_digest",
    "prepare_foreground",
    "read_foreground",
    "stored_ids",
    "write_foreground",
]

MAX_POINTS = 4096


@dataclass(frozen=True)
class ForegroundIndex:
    """Foreground of one mask volume: per label, a sample of voxel coordinates."""

    points: dict[int, np.ndarray]  # label -> (n, 3) int32 coordinates
    counts: dict[int, int]  # label -> number of voxels with that label

    @property
    def labels(self) -> list[int]:
        """Non-zero labels present, sorted."""
        return sorted(self.points)

    def all_points(self) -> np.ndarray:
        """Sampled coordinates of every label, stacked ``(n, 3)``."""
        if not self.points:
            return np.zeros((0, 3), dtype=np.int32)
        return np.concatenate([self.points[k] for k in self.labels])


def compute_foreground(mask: np.ndarray, max_points: int = MAX_POINTS) -> ForegroundIndex:
    """Index the non-zero voxels of ``mask`` (3D; a 4D mask uses its first frame).

    >>> m = np.zeros((4, 4, 4), dtype=np.uint8); m[1, 2, 3] = 2
    >>> fg = compute_foreground(m)
    >>> fg.labels, fg.points[2].tolist(), fg.counts
    ([2], [[1, 2, 3]], {2: 1})
    """
    if mask.ndim == 4:
        mask = mask[..., 0]
    flat = mask.reshape(-1)
    nz = np.flatnonzero(flat)
    points, counts = {}, {}
    if nz.size:
        values = flat[nz]
        for label in np.unique(values):
            idx = nz[values == label]
            if idx.size > max_points:  # evenly spread over the scan order, deterministic
                idx = idx[np.linspace(0, idx.size - 1, max_points).astype(np.int64)]
            coords = np.stack(np.unravel_index(idx, mask.shape), axis=1).astype(np.int32)
            points[int(label)] = coords
            counts[int(label)] = int(np.count_nonzero(values == label))
    return ForegroundIndex(points=points, counts=counts)


def foreground_digest(indexes: Sequence[ForegroundIndex]) -> str:
    """SHA-256 (16 hex digits) of the foreground indexes of several volumes, in order.

    Its identity: the labels, voxel counts and sampled coordinates that foreground sampling
    draws from. An index computed from the masks and the same index read back from storage
    give the same digest; any other mask (or sampling of it) gives another.

    >>> m = np.zeros((4, 4, 4), dtype=np.uint8); m[1, 2, 3] = 1
    >>> a = foreground_digest([compute_foreground(m)])
    >>> m[0, 0, 0] = 1
    >>> len(a), a == foreground_digest([compute_foreground(m)])
    (16, False)
    """
    h = hashlib.sha256()
    for index in indexes:
        h.update(json.dumps(sorted(index.counts.items())).encode())
        for label in index.labels:
            h.update(np.ascontiguousarray(index.points[label], dtype="<i4").tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def write_foreground(
    uri: str, entries: dict[str, ForegroundIndex], ctx: tiledb.Ctx, *, at: int | None = None
) -> None:
    """Store the index of volumes (keyed by obs_id) at ``uri``: a new version of their entries.

    Each call appends one fragment stamped ``at`` (a TileDB timestamp in ms; default now):
    a read of the index as of a version sees, for each volume, the entry written last up to
    then, so the index has the history of the masks it is made from. Volumes not in
    ``entries`` keep their entries. An index of radiobject's older layout (one dense array,
    rewritten whole at each write, no history) is moved to this one first.

    >>> import tempfile, os, time
    >>> uri, ctx = os.path.join(tempfile.mkdtemp(), "fg"), tiledb.Ctx()
    >>> _ = prepare_foreground(uri, ctx)  # the empty index
    >>> t = time.time_ns() // 1_000_000  # two versions after it: t + 1 and t + 2
    >>> m = np.zeros((4, 4, 4), dtype=np.uint8); m[1, 2, 3] = 2
    >>> write_foreground(uri, {"a": compute_foreground(m)}, ctx, at=t + 1)
    >>> m[1, 2, 3] = 0; m[0, 0, 0] = 1
    >>> write_foreground(uri, {"a": compute_foreground(m)}, ctx, at=t + 2)
    >>> [read_foreground(uri, ctx, at=v)["a"].counts for v in (t + 1, t + 2)]
    [{2: 1}, {1: 1}]
    """
    with tiledb_errors(uri, "write foreground index"):
        carried = prepare_foreground(uri, ctx)
        payload = {**carried, **entries}
        if not payload:
            return
        keys = {o: _volume_key(o) for o in payload}
        with tiledb.open(uri, ctx=ctx) as arr:  # the obs_id of each key stored so far
            taken = {k: arr.meta[f"obs/{k}"] for k in keys.values() if f"obs/{k}" in arr.meta}
        clash = [o for o, k in keys.items() if taken.get(k, o) != o]
        if clash:
            raise StorageError(
                f"obs_id {clash[0]!r} hashes to the key of {taken[keys[clash[0]]]!r} in the "
                f"foreground index {uri!r}; rename one of the two volumes"
            )
        parts = [_encode(payload[o], keys[o]) for o in sorted(payload)]
        cells = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
        # a distinct ``written`` per write: the newest entry of a volume is the one read
        written = np.full(len(cells["label"]), _next_written(), dtype=np.int64)
        with tiledb.open(uri, mode="w", ctx=ctx, timestamp=at) as arr:
            dims = (cells.pop("volume"), written, cells.pop("row"))
            arr[dims] = cells
            for o, k in keys.items():
                arr.meta[f"obs/{k}"] = o


def prepare_foreground(uri: str, ctx: tiledb.Ctx) -> dict[str, ForegroundIndex]:
    """Make sure the index at ``uri`` exists in the versioned layout (create it, or move one).

    An index of the older dense layout is read, removed and recreated in the versioned
    layout; its entries are returned, for the caller to write (versions before then read
    no stored entry of them: the caller computes them from the masks of that version).
    Call before choosing the timestamp of a write, so the array exists at that timestamp.
    """
    with tiledb_errors(uri, "write foreground index"):
        found = tiledb.object_type(uri, ctx=ctx)
        carried: dict[str, ForegroundIndex] = {}
        if found == "array":
            with tiledb.open(uri, ctx=ctx) as arr:
                if arr.schema.sparse:
                    return {}
                carried = _read_dense(arr)
            tiledb.remove(uri, ctx=ctx)
        elif found is not None:
            raise StorageError(
                f"{uri!r} is a TileDB {found}, not a foreground index; remove it and call "
                "collection.foreground() to index the masks again"
            )
        # one space tile (extent = domain): TileDB's global order is then (volume, written,
        # row), the order an entry is decoded in
        dims = [
            tiledb.Dim(name=name, domain=(0, size - 1), tile=size, dtype=np.int64, ctx=ctx)
            for name, size in zip(_DIMS, (2**62, 2**62, 2**40), strict=True)
        ]
        attrs = [
            tiledb.Attr(
                name,
                dtype=dtype,
                filters=tiledb.FilterList([tiledb.ZstdFilter(ctx=ctx)], ctx=ctx),
                ctx=ctx,
            )
            for name, dtype in _ATTRS
        ]
        schema = tiledb.ArraySchema(
            domain=tiledb.Domain(*dims, ctx=ctx),
            attrs=attrs,
            sparse=True,
            capacity=65536,
            allows_duplicates=False,
            ctx=ctx,
        )
        tiledb.Array.create(uri, schema, ctx=ctx)
    return carried


_COLUMNS = ("volume", "label", "x", "y", "z")  # the older, dense layout
_DIMS = ("volume", "written", "row")
_ATTRS = (
    ("label", np.int32),
    ("x", np.int32),
    ("y", np.int32),
    ("z", np.int32),
    ("count", np.int64),
)


_SEQUENCE = itertools.count()  # next() on it is atomic: no lock (none to reset after fork)


def _next_written() -> int:
    """A ``written`` value: microseconds since the epoch, then three digits of a sequence.

    Later writes get larger values (two writes of one process in one microsecond differ by
    the sequence), so each volume's newest entry is the one with the largest value.
    """
    return (time.time_ns() // 1000) * 1000 + next(_SEQUENCE) % 1000


def _volume_key(obs_id: str) -> int:
    """The index's number for ``obs_id``: 62 bits of its SHA-256 (its obs_id in metadata)."""
    return int.from_bytes(hashlib.sha256(obs_id.encode()).digest()[:8], "little") >> 2


def _encode(index: ForegroundIndex, key: int) -> dict[str, np.ndarray]:
    """Cells of one entry: a header row (label 0), then per label its count row and points.

    A count row has ``x = -1`` and the label's voxel count; a point row its coordinates.
    The header makes an entry without foreground an entry all the same.
    """
    label, xyz, count = [np.zeros(1, np.int32)], [np.full((1, 3), -1, np.int32)], [[0]]
    for k in sorted(index.counts):
        pts = index.points.get(k, np.zeros((0, 3), np.int32)).astype(np.int32)
        label.append(np.full(len(pts) + 1, k, np.int32))
        xyz += [np.full((1, 3), -1, np.int32), pts]
        count.append([index.counts[k]] + [0] * len(pts))
    coords = np.concatenate(xyz)
    n = len(coords)
    return {
        "volume": np.full(n, key, np.int64),
        "row": np.arange(n, dtype=np.int64),
        "label": np.concatenate(label),
        "x": np.ascontiguousarray(coords[:, 0]),
        "y": np.ascontiguousarray(coords[:, 1]),
        "z": np.ascontiguousarray(coords[:, 2]),
        "count": np.concatenate([np.asarray(c, np.int64) for c in count]),
    }


def read_foreground(
    uri: str, ctx: tiledb.Ctx, *, at: int | None = None
) -> dict[str, ForegroundIndex]:
    """The whole index at ``uri`` in one read: obs_id -> :class:`ForegroundIndex`.

    ``at`` reads the index as of that version (TileDB timestamp, ms): each volume's entry
    written last up to then. Volumes without one then (indexed later, or the index is of
    the older layout, rewritten since) are left out: the caller computes them from the
    masks of the version.
    """
    arr = _open(uri, ctx, at)
    if arr is None:
        return {}
    # in the array's context: TileDB-Py's query would build its default one (see _volume)
    with tiledb_errors(uri, "read foreground index"), arr, tiledb.scope_ctx(arr.ctx):
        if not arr.schema.sparse:
            return _read_dense(arr)
        names = _names(arr)
        raw = arr.query(attrs=[a for a, _ in _ATTRS], dims=list(_DIMS), order="G")[:]
    return _decode(raw, names)


def stored_ids(uri: str, ctx: tiledb.Ctx, *, at: int | None = None) -> set[str]:
    """The obs_ids with an entry in the index at ``uri`` (as of ``at``), from its metadata.

    No entry is read: the index names each volume it holds in its metadata, written with
    the volume's entry (the older dense layout, too, names them all in its metadata).

    >>> import tempfile, os
    >>> uri, ctx = os.path.join(tempfile.mkdtemp(), "fg"), tiledb.Ctx()
    >>> stored_ids(uri, ctx)
    set()
    >>> write_foreground(uri, {"a": compute_foreground(np.ones((2, 2, 2), np.uint8))}, ctx)
    >>> stored_ids(uri, ctx)
    {'a'}
    """
    arr = _open(uri, ctx, at)
    if arr is None:
        return set()
    with tiledb_errors(uri, "read foreground index"), arr:
        if arr.schema.sparse:
            return set(_names(arr).values())
        return set(json.loads(arr.meta["obs_ids"])) if "obs_ids" in arr.meta else set()


def _open(uri: str, ctx: tiledb.Ctx, at: int | None) -> tiledb.Array | None:
    """The index at ``uri`` open for reading as of ``at``; None when there is none then."""
    if tiledb.object_type(uri, ctx=ctx) is None:
        return None
    if at is not None:
        try:
            return tiledb.open(uri, ctx=ctx, timestamp=(0, at))
        except tiledb.TileDBError:  # created after ``at``
            return None
    with tiledb_errors(uri, "read foreground index"):
        return tiledb.open(uri, ctx=ctx)


def _names(arr: tiledb.Array) -> dict[int, str]:
    """The volume keys of a versioned index and their obs_ids (its metadata)."""
    return {int(k[4:]): str(arr.meta[k]) for k in arr.meta if k.startswith("obs/")}


def _decode(raw: dict[str, np.ndarray], names: dict[int, str]) -> dict[str, ForegroundIndex]:
    """Entries from the cells of the versioned layout: the newest of each volume."""
    volume, written, row = raw["volume"], raw["written"], raw["row"]
    n = len(volume)
    if not n:
        return {}
    columns = ("volume", "written", *(a for a, _ in _ATTRS))
    dv, dw = np.diff(volume), np.diff(written)
    if np.all((dv > 0) | ((dv == 0) & ((dw > 0) | ((dw == 0) & (np.diff(row) > 0))))):
        cells = {c: raw[c] for c in columns}  # read in (volume, written, row) order
    else:
        order = np.lexsort((row, written, volume))
        cells = {c: raw[c][order] for c in columns}
    volume, written = cells["volume"], cells["written"]
    starts = np.flatnonzero(np.r_[True, volume[1:] != volume[:-1]])
    newest = np.maximum.reduceat(written, starts)
    keep = written == np.repeat(newest, np.diff(np.r_[starts, n]))
    volume, label = volume[keep], cells["label"][keep]
    x, count = cells["x"][keep], cells["count"][keep]
    coords = np.stack([x, cells["y"][keep], cells["z"][keep]], axis=1)
    points: dict[int, dict[int, np.ndarray]] = {int(v): {} for v in np.unique(volume)}
    counts: dict[int, dict[int, int]] = {v: {} for v in points}
    for v, k, c in zip(volume[x < 0], label[x < 0], count[x < 0], strict=True):
        if k:
            counts[int(v)][int(k)] = int(c)
    is_point = x >= 0  # rows of one (volume, label) are contiguous, in the order written
    pv, pk, pc = volume[is_point], label[is_point], coords[is_point]
    group = np.flatnonzero(np.r_[True, (pv[1:] != pv[:-1]) | (pk[1:] != pk[:-1])])
    for a, b in zip(group, np.r_[group[1:], len(pv)], strict=True):
        if a < b:
            points[int(pv[a])][int(pk[a])] = pc[a:b]
    return {
        names[v]: ForegroundIndex(points=points[v], counts=counts[v]) for v in points if v in names
    }


def _read_dense(arr: tiledb.Array) -> dict[str, ForegroundIndex]:
    """The index of the older layout (a dense array of rows, obs_ids and counts in metadata)."""
    if "obs_ids" not in arr.meta:  # an index of an even older layout: rebuilt by the caller
        return {}
    obs_ids = json.loads(arr.meta["obs_ids"])
    counts = json.loads(arr.meta["counts"])
    n = int(arr.meta["rows"])
    raw = arr[0:n] if n else {c: np.zeros(0, dtype=np.int32) for c in _COLUMNS}
    out: dict[str, ForegroundIndex] = {}
    volume, label = raw["volume"], raw["label"]
    coords = np.stack([raw["x"], raw["y"], raw["z"]], axis=1)
    keys = volume.astype(np.int64) * 1_000_003 + label
    if n and np.any(keys[1:] < keys[:-1]):  # rows are written grouped; this makes sure of it
        order = np.argsort(keys, kind="stable")
        volume, label, coords, keys = volume[order], label[order], coords[order], keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if n else np.zeros(0, int)
    ends = np.r_[starts[1:], n] if n else np.zeros(0, int)
    points: dict[str, dict[int, np.ndarray]] = {o: {} for o in obs_ids}
    for a, b in zip(starts, ends, strict=True):
        points[obs_ids[int(volume[a])]][int(label[a])] = coords[a:b]
    for o in obs_ids:
        out[o] = ForegroundIndex(
            points=points[o], counts={int(k): int(c) for k, c in counts[o].items()}
        )
    return out
