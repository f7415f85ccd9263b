"""The images a :class:`~radiobject.widgets._viewer.SliceViewer` shows, drawn without widgets.

Its three planes through a voxel, at full resolution (:func:`read_planes`, reading what is
not held yet) or from a coarse level (:func:`coarse_planes`, no read), and one plane drawn
in a :data:`Style` with its mask, a marked box and a fused second image, as PNG bytes
(:func:`encode_plane`: a palette image when it has few colours, RGB otherwise). The viewer
decides what to draw and when; these are pure functions of arrays and settings.
"""

from __future__ import annotations

import numpy as np

from radiobject import CoarseLevel

from ._overlay import OverlayPlanes
from ._png import encode_indexed, encode_png
from ._render import Fusion, Window, draw_plane_box, render_indexed, render_slice
from ._slices import PLANES, SliceCache, coarse_plane, plane_index

__all__ = [
    "FULL",
    "MARK_COLOR",
    "MaskPlanes",
    "Planes",
    "Style",
    "coarse_planes",
    "encode_plane",
    "read_planes",
]

FULL = "full resolution"
MARK_COLOR = (255, 200, 0)  # the outline of a marked box (mark): a slab's planes
# (plane -> (image plane, mask plane or None)) and how a plane is drawn
Planes = dict[str, tuple[np.ndarray, "np.ndarray | None"]]
# a mask on the shown grid (SliceCache) or on another one, sampled onto it (OverlayPlanes)
MaskPlanes = SliceCache | OverlayPlanes
# window, colormap, mask opacity, label colours, and the overlay's window and opacity
Style = tuple[
    Window, str, float, tuple[tuple[int, tuple[int, int, int]], ...], "tuple[Window, float] | None"
]


def read_planes(image: SliceCache, mask: MaskPlanes | None, pos: tuple[int, int, int]) -> Planes:
    """The full-resolution planes through ``pos`` (read where not held already)."""
    out: Planes = {}
    for plane in PLANES:
        index = plane_index(plane, pos)
        out[plane] = (image.plane(plane, index), None if mask is None else mask.plane(plane, index))
    return out


def coarse_planes(
    level: CoarseLevel,
    mask: CoarseLevel | OverlayPlanes | None,
    image: SliceCache,
    pos: tuple[int, int, int],
) -> Planes:
    """The planes through ``pos`` from the coarse ``level`` of ``image``, enlarged to its size.

    ``mask``: the mask's coarse level, or (on another grid) its level sampled onto these
    planes. Nothing is read.
    """
    shape, t = image.shape, image.t
    planes: Planes = {}
    for plane in PLANES:
        index = plane_index(plane, pos)
        labels: np.ndarray | None = None
        if isinstance(mask, OverlayPlanes):  # another grid's level, sampled onto this one
            labels = mask.plane(plane, index)
        elif mask is not None:
            labels = coarse_plane(mask, plane, index, shape, t)
        planes[plane] = (coarse_plane(level, plane, index, shape, t), labels)
    return planes


def encode_plane(
    data: np.ndarray,
    mask: np.ndarray | None,
    scale: tuple[int, int],
    style: Style,
    marked: tuple[tuple[int, int], tuple[int, int]] | None = None,
    fusion: Fusion | None = None,
) -> bytes:
    """One plane as PNG bytes: windowed, coloured, ``mask`` over it, ``marked`` outlined.

    A plane of few colours (no marked box, no fused image) is a palette PNG, else RGB.

    >>> from radiobject.widgets._render import Window
    >>> style = (Window(0.5, 1.0), "gray", 0.4, ((1, (255, 0, 0)),), None)
    >>> plain = encode_plane(np.eye(4), np.eye(4, dtype=np.uint8), (2, 2), style)
    >>> boxed = encode_plane(np.eye(4), None, (2, 2), style, marked=((0, 2), (0, 2)))
    >>> plain[1:4], plain[25], boxed[25]  # the PNG colour type: 3 palette, 2 RGB
    (b'PNG', 3, 2)
    """
    window, cmap, opacity, colors, _ = style
    look = {"mask": mask, "opacity": opacity, "colors": dict(colors), "scale": scale}
    plain = marked is None and fusion is None  # few colours: a palette image
    # mypy is silenced on the next line: look's values have the parameters' types
    indexed = render_indexed(data, window, cmap, **look) if plain else None  # type: ignore[arg-type]
    if indexed is not None:
        return encode_indexed(*indexed)
    # mypy is silenced on the next line: look's values have the parameters' types
    rgb = render_slice(data, window, cmap, fusion=fusion, **look)  # type: ignore[arg-type]
    if marked is not None:
        rgb = draw_plane_box(rgb, *marked, data.shape[:2], scale, color=MARK_COLOR)
    return encode_png(rgb)
