"""The compact foreground index of a mask collection.

For every mask volume and every non-zero label it keeps the voxel count, the bounding box
and a bounded, evenly spread sample of voxel coordinates. It is written once (at ingest
or on first use) as one sparse array beside the volumes, so a segmentation loader's
set-up reads that one array and never the masks themselves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tiledb

from radiobject._tiledb_errors import tiledb_errors

__all__ = [
    "ForegroundIndex",
    "compute_foreground",
    "foreground_digest",
    "read_foreground",
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


def write_foreground(uri: str, entries: dict[str, ForegroundIndex], ctx: tiledb.Ctx) -> None:
    """Store the index of several volumes (keyed by obs_id) as one small array at ``uri``.

    Volumes already indexed at ``uri`` are kept; the array is rewritten with all of them.
    Layout: a dense array of rows ``(volume, label, x, y, z)`` (int32), and the obs_ids and
    per-label voxel counts in its metadata, so a reader decodes it with a few numpy calls.
    """
    merged = {**read_foreground(uri, ctx), **entries}
    obs_ids = sorted(merged)
    rows = [
        np.column_stack(
            [
                np.full(len(merged[o].points[k]), v, dtype=np.int32),
                np.full(len(merged[o].points[k]), k, dtype=np.int32),
                merged[o].points[k].astype(np.int32),
            ]
        )
        for v, o in enumerate(obs_ids)
        for k in merged[o].labels
    ]
    table = np.concatenate(rows) if rows else np.zeros((0, 5), dtype=np.int32)
    counts = {o: {str(k): c for k, c in merged[o].counts.items()} for o in obs_ids}
    with tiledb_errors(uri, "write foreground index"):
        if tiledb.object_type(uri, ctx=ctx) is not None:
            tiledb.remove(uri, ctx=ctx)
        n = max(len(table), 1)
        dom = tiledb.Domain(
            tiledb.Dim(name="row", domain=(0, n - 1), tile=min(n, 65536), dtype=np.int64, ctx=ctx),
            ctx=ctx,
        )
        attrs = [
            tiledb.Attr(name, dtype=np.int32, filters=[tiledb.ZstdFilter()], ctx=ctx)
            for name in _COLUMNS
        ]
        tiledb.Array.create(
            uri, tiledb.ArraySchema(domain=dom, attrs=attrs, sparse=False, ctx=ctx), ctx=ctx
        )
        with tiledb.open(uri, mode="w", ctx=ctx) as arr:
            if len(table):
                arr[0 : len(table)] = {
                    c: np.ascontiguousarray(table[:, i]) for i, c in enumerate(_COLUMNS)
                }
            arr.meta["obs_ids"] = json.dumps(obs_ids)
            arr.meta["counts"] = json.dumps(counts)
            arr.meta["rows"] = len(table)


_COLUMNS = ("volume", "label", "x", "y", "z")


def read_foreground(
    uri: str, ctx: tiledb.Ctx, *, at: int | None = None
) -> dict[str, ForegroundIndex]:
    """The whole index at ``uri`` in one read: obs_id -> :class:`ForegroundIndex`.

    ``at`` reads the index as of that version (TileDB timestamp, ms). An index rewritten
    since (it grows by being written anew) does not hold that version: ``{}``, and the
    caller computes the index from the masks of the version.
    """
    if tiledb.object_type(uri, ctx=ctx) is None:
        return {}
    if at is not None:
        try:
            arr = tiledb.open(uri, ctx=ctx, timestamp=(0, at))
        except tiledb.TileDBError:  # created after ``at``
            return {}
    else:
        with tiledb_errors(uri, "read foreground index"):
            arr = tiledb.open(uri, ctx=ctx)
    with tiledb_errors(uri, "read foreground index"), arr:
        if "obs_ids" not in arr.meta:  # an index of an older layout: rebuilt by the caller
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
