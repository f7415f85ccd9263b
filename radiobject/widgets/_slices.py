"""The planes a viewer shows, read one partial read at a time, and the HTML around them.

No widgets here: :class:`SliceCache` wraps a :class:`radiobject.Volume` and reads a plane
only when its index changes; the HTML helpers format tables and readouts with escaping.

Scrubbing reads a new plane at every step. A plane's first read decompresses every tile it
crosses, so :class:`SliceCache` then has the tile slab around it read into radiobject's block
cache in a background thread (and the next slab when scrubbing nears its edge): the
following planes of the slab come from memory.
"""

from __future__ import annotations

import contextlib
import contextvars
import html
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from radiobject import CoarseLevel, Volume, get_config

__all__ = [
    "PLANES",
    "SliceCache",
    "box_on_plane",
    "plane_axis",
    "background_thread",
    "coarse_plane",
    "crosshair_html",
    "error_html",
    "in_background",
    "plane_index",
    "plane_spacing",
    "plane_uv",
    "readout_html",
    "row_html",
]

PLANES = ("axial", "coronal", "sagittal")
CROSSHAIR_COLOR = "#00ffff"
# the axis each plane cuts, and the two axes it shows (u along columns, v upwards)
_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}
_UV = {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}


def plane_axis(plane: str) -> int:
    """The volume axis (0: x, 1: y, 2: z) that ``plane`` cuts across.

    >>> plane_axis("coronal")
    1
    """
    return _AXIS[plane]


def plane_index(plane: str, position: Sequence[int]) -> int:
    """The slice index of ``plane`` at voxel ``position`` ``(x, y, z)``.

    >>> plane_index("coronal", (1, 2, 3))
    2
    """
    return int(position[_AXIS[plane]])


def plane_uv(plane: str, position: Sequence[int]) -> tuple[int, int]:
    """The in-plane coordinates ``(u, v)`` of voxel ``position`` on ``plane``.

    >>> plane_uv("sagittal", (1, 2, 3))
    (2, 3)
    """
    u, v = _UV[plane]
    return int(position[u]), int(position[v])


def box_on_plane(
    box: Sequence[tuple[int, int]], plane: str, index: int
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """The ``(u, v)`` ranges of voxel ``box`` on ``plane`` at ``index``; None if it misses.

    A slab of axial planes 4..6 shows as a band on the coronal and sagittal planes:

    >>> slab = ((0, 10), (0, 8), (4, 7))
    >>> box_on_plane(slab, "coronal", 3), box_on_plane(slab, "axial", 5)
    (((0, 10), (4, 7)), ((0, 10), (0, 8)))
    >>> box_on_plane(slab, "axial", 7) is None  # the plane is past the slab
    True
    """
    lo, hi = box[_AXIS[plane]]
    if not lo <= index < hi:
        return None
    u, v = _UV[plane]
    return (int(box[u][0]), int(box[u][1])), (int(box[v][0]), int(box[v][1]))


def plane_spacing(plane: str, spacing: Sequence[float]) -> tuple[float, float]:
    """Voxel size ``(u, v)`` of ``plane`` from the volume spacing ``(x, y, z)``.

    >>> plane_spacing("axial", (1.0, 2.0, 3.0))
    (1.0, 2.0)
    """
    u, v = _UV[plane]
    return float(spacing[u]), float(spacing[v])


_threads: dict[str, ThreadPoolExecutor] = {}
_threads_lock = threading.Lock()


def background_thread(name: str) -> ThreadPoolExecutor:
    """The one background thread ``name`` of all viewers: their jobs queue, not compete."""
    with _threads_lock:
        pool = _threads.get(name)
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"radiobject-{name}")
            _threads[name] = pool
        return pool


def in_background(name: str, fn: Any, *args: Any) -> Future[Any]:
    """Run ``fn(*args)`` on the background thread ``name``, in the caller's settings.

    The job runs in a copy of the caller's context, so a ``radiobject.settings()`` block
    around the call that queued it (an S3 endpoint, a cache size) holds in the thread too.
    """
    return background_thread(name).submit(contextvars.copy_context().run, fn, *args)


class SliceCache:
    """The planes shown of one volume: each read (partially) only when its index changes.

    Args:
        volume: the volume to show.
        t: the time point of a 4D volume.
        warm: read the tile slab around each new plane (and the next one when scrubbing
            nears its edge) into the block cache in the background, so that the next planes
            are served from memory. Slabs too large for the block cache are never warmed.
    """

    ahead = 0.5  # start reading the next slab this far (in tiles) before its edge

    def __init__(self, volume: Volume, t: int = 0, warm: bool = True) -> None:
        self.volume = volume
        self.t = t
        x, y, z = (int(n) for n in volume.shape[:3])
        self.shape: tuple[int, int, int] = (x, y, z)
        self.reads = 0
        self.warm = warm
        self._planes: dict[str, tuple[int, np.ndarray]] = {}
        self._tiles = tuple(int(n) for n in volume.tile_shape[:3])
        self._slabs: dict[tuple[int, int], Future[None]] = {}  # (axis, slab) -> its read
        self._last: dict[int, int] = {}  # axis -> last index read, for the scrub direction

    def plane(self, plane: str, index: int) -> np.ndarray:
        """The ``(u, v)`` plane at ``index`` (one partial read the first time)."""
        hit = self._planes.get(plane)
        if hit is not None and hit[0] == index:
            return hit[1]
        axis = _AXIS[plane]
        slab = index // self._tiles[axis]
        pending = self._slabs.get((axis, slab))
        if pending is not None and pending.cancel():  # still queued: read it here, now
            del self._slabs[(axis, slab)]
        elif pending is not None:
            pending.result()  # its tiles are being cached: wait rather than read them twice
        key: list[Any] = [slice(None)] * self.volume.ndim
        key[axis] = index
        if self.volume.ndim == 4:
            key[3] = self.t
            data = self.volume[tuple(key)]
        else:
            data = getattr(self.volume, plane)(index)
        self._planes[plane] = (index, data)
        self.reads += 1
        if self.warm:
            self._warm_around(axis, index)
        return data

    def cached(self, plane: str, index: int) -> np.ndarray | None:
        """The plane at ``index`` if it is held already (no read), else ``None``."""
        hit = self._planes.get(plane)
        return hit[1] if hit is not None and hit[0] == index else None

    def prefetch(self, position: Sequence[int], planes: Sequence[str] = PLANES) -> None:
        """Start caching the tile slabs of ``planes`` through ``position``.

        The viewer calls this once its first image is drawn, so that scrubbing from there
        reads from memory; nothing happens when ``warm`` is off. A plane wanted before its
        slab read has started is read at once instead (the slab read is dropped).
        """
        if self.warm:
            for plane in planes:
                self._warm_around(_AXIS[plane], plane_index(plane, position), first=True)

    def wait(self) -> None:
        """Wait for the slab reads in flight (a plane read waits for its own slab only)."""
        for pending in list(self._slabs.values()):
            pending.result()

    def _warm_around(self, axis: int, index: int, first: bool = False) -> None:
        """Cache the slab of ``index``, and the next one when ``index`` nears its edge.

        A first read (``step`` 0) warms nothing unless ``first``: the first image is drawn
        before any slab is read, and :meth:`prefetch` starts them after it.
        """
        tile, n = self._tiles[axis], self.shape[axis]
        step = index - self._last.get(axis, index)
        self._last[axis] = index
        if not (step or first):
            return
        wanted = [index // tile]
        reach = int(tile * self.ahead)
        ahead = index + (reach if step > 0 else -reach)
        if reach and step and 0 <= ahead < n and ahead // tile != index // tile:
            wanted.append(ahead // tile)
        for slab in wanted:
            if (axis, slab) not in self._slabs and self._slab_fits(axis):
                bounds = [(0, s) for s in self.volume.shape]
                bounds[axis] = (slab * tile, min((slab + 1) * tile, n))
                if self.volume.ndim == 4:
                    bounds[3] = (self.t, self.t + 1)
                self._slabs[(axis, slab)] = in_background("slabs", self._read_slab, bounds)

    def _slab_fits(self, axis: int) -> bool:
        # radiobject's read path caches a tile-aligned read only if 4 such reads fit in its
        # block cache; a larger slab would be read and thrown away
        tiles = [-(-n // t) for n, t in zip(self.shape, self._tiles, strict=True)]
        tiles[axis] = 1
        voxels = int(np.prod(tiles)) * int(np.prod(self._tiles))
        slab_bytes = voxels * self.volume.stored_dtype.itemsize  # the cache holds stored voxels
        return slab_bytes * 4 <= get_config().read.cache_mb * 1024 * 1024

    def _read_slab(self, bounds: list[tuple[int, int]]) -> None:
        # only a warm-up: a failing read fails again, and is reported, when the plane is read
        with contextlib.suppress(Exception):
            self.volume.read(bounds)

    def planes_at(self, position: Sequence[int]) -> dict[str, np.ndarray]:
        """The three planes through voxel ``position``."""
        return {p: self.plane(p, plane_index(p, position)) for p in PLANES}


def coarse_plane(
    level: CoarseLevel,
    plane: str,
    index: int,
    shape: Sequence[int],
    t: int = 0,
    full_size: bool = True,
) -> np.ndarray:
    """The ``(u, v)`` plane at full-resolution ``index`` from a coarse ``level``.

    Each coarse voxel is repeated ``factor`` times along both axes and the result cut to the
    plane of a volume of ``shape``, so it is drawn at the size of the real plane (and the
    crosshair and readout address it in full-resolution voxels); ``full_size=False`` gives
    the level's own plane.

    >>> level = CoarseLevel(np.arange(8.0).reshape(2, 2, 2), 2, "mean", saved=True)
    >>> coarse_plane(level, "axial", 3, (3, 4, 4)).tolist()
    [[1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 7.0, 7.0]]
    >>> coarse_plane(level, "axial", 3, (3, 4, 4), full_size=False).tolist()
    [[1.0, 3.0], [5.0, 7.0]]
    """
    axis = _AXIS[plane]
    key: list[Any] = [slice(None)] * level.voxels.ndim
    key[axis] = level.index(index, axis)
    if level.voxels.ndim == 4:
        key[3] = t
    small: np.ndarray = level.voxels[tuple(key)]
    if not full_size:
        return small
    u, v = _UV[plane]
    f = level.factor
    return np.repeat(np.repeat(small, f, axis=0), f, axis=1)[: int(shape[u]), : int(shape[v])]


def row_html(title: str, row: pd.DataFrame | pd.Series | None) -> str:
    """A one-row table with a title (cells escaped), or a note when there is no row.

    >>> "&lt;b&gt;" in row_html("obs", pd.Series({"note": "<b>"}))
    True
    """
    head = f"<b>{html.escape(title)}</b>"
    if row is None or len(row) == 0:
        return f"{head} <i>(none)</i>"
    frame = row.to_frame().T if isinstance(row, pd.Series) else row
    table = frame.to_html(index=False, escape=True, border=0, max_cols=24)
    return f"{head}<div style='overflow-x:auto;font-size:11px;max-width:100%'>{table}</div>"


def readout_html(
    position: Sequence[int],
    world: Sequence[float],
    value: float | None,
    label: int | None = None,
    mask_name: str = "",
    level: str = "",
    overlay: tuple[str, float] | None = None,
) -> str:
    """The voxel and world coordinates, the intensity under the crosshair, the level shown.

    ``overlay``: the name and value of an image overlaid at the crosshair.

    >>> html = readout_html((1, 2, 3), (0.0, 0.0, 0.0), 1.5, level="level 1 (4x)")
    >>> "value 1.5 · level 1 (4x)" in html
    True
    >>> "FLAIR 412" in readout_html((1, 2, 3), (0.0, 0.0, 0.0), 1.5, overlay=("FLAIR", 412.0))
    True
    """
    x, y, z = (int(p) for p in position)
    wx, wy, wz = (float(w) for w in world)
    text = (
        f"voxel (x, y, z) = ({x}, {y}, {z}) · world (mm) = ({wx:.1f}, {wy:.1f}, {wz:.1f})"
        f" · value {_fmt(value)}"
    )
    if label is not None:
        text += f" · {html.escape(mask_name)} label {int(label)}"
    if overlay is not None:
        text += f" · {html.escape(overlay[0])} {_fmt(overlay[1])}"
    if level:
        text += f" · {html.escape(level)}"
    return f"<code>{text}</code>"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    v = float(value)
    return f"{v:g}" if v == int(v) or abs(v) >= 1000 else f"{v:.4g}"


def crosshair_html(row: int, col: int, rows: int, cols: int) -> str:
    """A crosshair drawn by the page over an image of ``rows x cols`` pixels.

    The lines go through the middle of pixel ``(row, col)`` and scale with the image, so a
    moving crosshair sends these few bytes instead of a new PNG.

    >>> "top:25%" in crosshair_html(1, 0, 4, 4)
    True
    """
    top, left = 100.0 * row / max(rows, 1), 100.0 * col / max(cols, 1)
    height, width = 100.0 / max(rows, 1), 100.0 / max(cols, 1)
    line = f"position:absolute;background:{CROSSHAIR_COLOR};"
    return (
        "<div class='radiobject-crosshair' style='position:absolute;inset:0;"
        "pointer-events:none;overflow:hidden'>"
        f"<div style='{line}left:0;right:0;top:{top:.4g}%;height:max(1px,{height:.4g}%)'></div>"
        f"<div style='{line}top:0;bottom:0;left:{left:.4g}%;width:max(1px,{width:.4g}%)'></div>"
        "</div>"
    )


def error_html(messages: Sequence[str]) -> str:
    """Problems shown in place, escaped, one per line (empty when there are none).

    >>> error_html(["bad <mask>"])[:4], error_html([])
    ('<div', '')
    """
    if not messages:
        return ""
    lines = "<br>".join(html.escape(m) for m in messages)
    return (
        "<div style='color:#a00;background:#fee;border:1px solid #e99;padding:4px 8px;"
        f"border-radius:4px'>⚠ {lines}</div>"
    )
