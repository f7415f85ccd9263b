"""The compact foreground index of a mask collection.

For every mask volume and every non-zero label it keeps the voxel count, the bounding box
and a bounded, evenly spread sample of voxel coordinates. It is written once (at ingest
or on first use) as one sparse array beside the volumes, so a segmentation loader's
set-up reads that one array and never the masks themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tiledb

from radiobject._errors import tiledb_errors

__all__ = ["ForegroundIndex", "compute_foreground", "read_foreground", "write_foreground"]

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


def write_foreground(uri: str, entries: dict[str, ForegroundIndex], ctx: tiledb.Ctx) -> None:
    """Write the index of several volumes (keyed by obs_id) as one sparse array at ``uri``."""
    with tiledb_errors(uri, "write foreground index"):
        if tiledb.object_type(uri, ctx=ctx) is None:
            dom = tiledb.Domain(
                tiledb.Dim(name="obs_id", domain=(None, None), tile=None, dtype="ascii", ctx=ctx),
                tiledb.Dim(name="row", domain=(0, 2**40), tile=4096, dtype=np.int64, ctx=ctx),
                ctx=ctx,
            )
            attrs = [
                tiledb.Attr(
                    n,
                    dtype=np.int64 if n == "count" else np.int32,
                    filters=[tiledb.ZstdFilter()],
                    ctx=ctx,
                )
                for n in ("label", "x", "y", "z", "count")
            ]
            tiledb.Array.create(
                uri, tiledb.ArraySchema(domain=dom, attrs=attrs, sparse=True, ctx=ctx), ctx=ctx
            )
        ids, rows, cols = [], [], {n: [] for n in ("label", "x", "y", "z", "count")}
        for obs_id, fg in entries.items():
            # row 0 of every volume is a marker, so volumes without foreground are indexed too
            ids.append(obs_id)
            rows.append(0)
            for n in cols:
                cols[n].append(-1)
            r = 1
            for label in fg.labels:
                pts = fg.points[label]
                for p in pts:
                    ids.append(obs_id)
                    rows.append(r)
                    r += 1
                    cols["label"].append(label)
                    cols["x"].append(p[0])
                    cols["y"].append(p[1])
                    cols["z"].append(p[2])
                    cols["count"].append(fg.counts[label])
        with tiledb.open(uri, mode="w", ctx=ctx) as arr:
            arr[np.array(ids, dtype=object).astype(str), np.array(rows, dtype=np.int64)] = {
                "label": np.array(cols["label"], dtype=np.int32),
                "x": np.array(cols["x"], dtype=np.int32),
                "y": np.array(cols["y"], dtype=np.int32),
                "z": np.array(cols["z"], dtype=np.int32),
                "count": np.array(cols["count"], dtype=np.int64),
            }


def read_foreground(uri: str, ctx: tiledb.Ctx) -> dict[str, ForegroundIndex]:
    """The whole index at ``uri`` in one read: obs_id -> :class:`ForegroundIndex`."""
    if tiledb.object_type(uri, ctx=ctx) is None:
        return {}
    with tiledb_errors(uri, "read foreground index"), tiledb.open(uri, ctx=ctx) as arr:
        raw = arr[:]
    ids = np.array([v.decode() if isinstance(v, bytes) else v for v in raw["obs_id"]])
    out: dict[str, ForegroundIndex] = {}
    labels = raw["label"]
    coords = np.stack([raw["x"], raw["y"], raw["z"]], axis=1)
    for obs_id in np.unique(ids):
        sel = (ids == obs_id) & (labels >= 0)
        lab = labels[sel]
        pts = coords[sel]
        cnt = raw["count"][sel]
        points = {int(k): pts[lab == k] for k in np.unique(lab)}
        counts = {int(k): int(cnt[lab == k][0]) for k in np.unique(lab)}
        out[str(obs_id)] = ForegroundIndex(points=points, counts=counts)
    return out
