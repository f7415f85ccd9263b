"""Pure rendering: window/level, colormaps, mask overlays, crosshairs, boxes and PNG encoding.

Every function takes arrays and returns arrays (or PNG bytes); nothing here reads data or
touches a widget, so each step is tested on small arrays.

Display convention: a plane ``(u, v)`` as returned by ``Volume.axial`` (``(x, y)``),
``Volume.coronal`` (``(x, z)``) or ``Volume.sagittal`` (``(y, z)``) is shown with ``u`` along
the columns and ``v`` growing upwards (:func:`to_display`), so RAS+ volumes appear with
anterior and superior at the top and the patient's right on the right (neurological view).

>>> import numpy as np
>>> rgb = render_slice(np.arange(12.0).reshape(3, 4), Window(level=5.5, width=11.0))
>>> rgb.shape, rgb.dtype.name
((4, 3, 3), 'uint8')
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DEFAULT_LABEL_COLORS",
    "WINDOW_PRESETS",
    "Fusion",
    "Window",
    "apply_colormap",
    "apply_window",
    "auto_window",
    "blend_fusion",
    "blend_heatmap",
    "crosshair_pixel",
    "display_point",
    "display_scale",
    "draw_box",
    "draw_crosshair",
    "draw_plane_box",
    "label_color",
    "overlay_mask",
    "render_indexed",
    "render_slice",
    "to_display",
    "window_for",
    "zoom",
]

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Window:
    """A display window: intensities ``level ± width / 2`` map to black..white.

    >>> Window(level=40, width=80).bounds
    (0.0, 80.0)
    """

    level: float
    width: float

    @property
    def bounds(self) -> tuple[float, float]:
        """The intensities shown as black and white."""
        return (float(self.level - self.width / 2), float(self.level + self.width / 2))

    @classmethod
    def from_bounds(cls, low: float, high: float) -> Window:
        """The window showing ``low..high`` (a zero-width range is widened to 1).

        >>> Window.from_bounds(10, 30)
        Window(level=20.0, width=20.0)
        """
        low, high = float(low), float(high)
        return cls(level=(low + high) / 2, width=max(high - low, 1e-6) if high > low else 1.0)


# (kind, a, b): "percentile" -> auto from percentiles a..b of the data; "fixed" -> level a,
# width b (Hounsfield units for CT). MR intensities have no absolute scale, so MR presets
# are percentile windows.
WINDOW_PRESETS: dict[str, tuple[str, float, float]] = {
    "MR auto (1-99%)": ("percentile", 1.0, 99.0),
    "MR soft (0.5-99.5%)": ("percentile", 0.5, 99.5),
    "MR contrast (5-95%)": ("percentile", 5.0, 95.0),
    "min-max": ("percentile", 0.0, 100.0),
    "CT brain": ("fixed", 40.0, 80.0),
    "CT subdural": ("fixed", 75.0, 215.0),
    "CT stroke": ("fixed", 40.0, 40.0),
    "CT soft tissue": ("fixed", 50.0, 400.0),
    "CT lung": ("fixed", -600.0, 1500.0),
    "CT bone": ("fixed", 400.0, 1800.0),
}

# BraTS-like defaults: 1 red, 2 green, 3 yellow, then a qualitative cycle
DEFAULT_LABEL_COLORS: dict[int, RGB] = {
    1: (230, 25, 75),
    2: (60, 180, 75),
    3: (255, 225, 25),
    4: (0, 130, 200),
    5: (245, 130, 48),
    6: (145, 30, 180),
    7: (70, 240, 240),
    8: (240, 50, 230),
}


def label_color(label: int, colors: Mapping[int, RGB] | None = None) -> RGB:
    """The colour of ``label``: from ``colors``, else the default palette (cycled).

    >>> label_color(1), label_color(9) == label_color(1)
    ((230, 25, 75), True)
    """
    if colors and int(label) in colors:
        r, g, b = (int(c) for c in colors[int(label)])
        return r, g, b
    n = len(DEFAULT_LABEL_COLORS)
    return DEFAULT_LABEL_COLORS[(int(label) - 1) % n + 1]


def auto_window(data: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> Window:
    """A window spanning percentiles ``low_pct..high_pct`` of the finite values of ``data``.

    >>> auto_window(np.arange(101.0), 10, 90)
    Window(level=50.0, width=80.0)
    """
    values = np.asarray(data, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Window(level=0.5, width=1.0)
    low, high = np.percentile(values, [low_pct, high_pct])
    if high <= low:  # flat data: show it mid-grey rather than dividing by zero
        return Window(level=float(low), width=1.0)
    return Window.from_bounds(low, high)


def window_for(preset: str, data: np.ndarray | None = None) -> Window:
    """The window of a named preset (see :data:`WINDOW_PRESETS`); percentile ones need data.

    >>> window_for("CT brain")
    Window(level=40.0, width=80.0)
    """
    if preset not in WINDOW_PRESETS:
        raise ValueError(f"unknown window preset {preset!r}; presets are {list(WINDOW_PRESETS)}")
    kind, a, b = WINDOW_PRESETS[preset]
    if kind == "fixed":
        return Window(level=a, width=b)
    if data is None:
        raise ValueError(f"window preset {preset!r} is computed from data; pass the data")
    return auto_window(data, a, b)


def apply_window(data: np.ndarray, window: Window) -> np.ndarray:
    """Intensities scaled to ``0..1`` by ``window`` (clipped), as float32.

    >>> apply_window(np.array([0.0, 25.0, 50.0, 200.0]), Window(50, 100)).tolist()
    [0.0, 0.25, 0.5, 1.0]
    """
    low, _ = window.bounds
    width = window.width if window.width > 0 else 1.0
    out = (np.asarray(data, dtype=np.float32) - np.float32(low)) / np.float32(width)
    np.clip(out, 0.0, 1.0, out=out)
    return np.asarray(np.nan_to_num(out, copy=False))


@functools.lru_cache(maxsize=32)
def _lut(cmap: str) -> np.ndarray:
    if cmap == "gray":  # matplotlib's own table, without the second it takes to import
        return np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    import matplotlib

    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(f"unknown colormap {cmap!r}; try 'gray', 'viridis' or 'magma'") from None
    table = colormap(np.linspace(0.0, 1.0, 256))[:, :3]
    return np.round(table * 255).astype(np.uint8)


def apply_colormap(normalized: np.ndarray, cmap: str = "gray") -> np.ndarray:
    """RGB ``uint8`` image ``(..., 3)`` of values in ``0..1`` through a matplotlib colormap.

    >>> apply_colormap(np.array([[0.0, 1.0]]), "gray").tolist()
    [[[0, 0, 0], [255, 255, 255]]]
    """
    return np.asarray(_lut(cmap)[_levels(normalized)])


def _levels(normalized: np.ndarray) -> np.ndarray:
    """Colormap entries ``0..255`` of values in ``0..1``."""
    return np.round(np.asarray(normalized, dtype=np.float32) * 255).astype(np.uint8)


def to_display(plane: np.ndarray) -> np.ndarray:
    """Plane ``(u, v)`` as an image: ``u`` along columns, ``v`` upwards (rows flipped).

    >>> to_display(np.array([[1, 2], [3, 4]])).tolist()
    [[2, 4], [1, 3]]
    """
    return np.flipud(np.asarray(plane).T)


def display_point(u: int, v: int, plane_shape: tuple[int, int]) -> tuple[int, int]:
    """Image ``(row, col)`` of plane voxel ``(u, v)`` after :func:`to_display`.

    >>> display_point(0, 0, (4, 3))
    (2, 0)
    """
    return int(plane_shape[1] - 1 - v), int(u)


def display_scale(
    plane_shape: tuple[int, int], spacing: tuple[float, float] = (1.0, 1.0), target: int = 256
) -> tuple[int, int]:
    """Integer enlargement ``(rows, cols)`` of a plane ``(u, v)`` for display.

    Voxels keep their physical aspect (to the nearest integer ratio) and the larger side
    grows to at most ``target`` pixels; planes already that large are not enlarged.

    >>> display_scale((48, 32), (1.0, 2.0), target=200)
    (6, 3)
    """
    su, sv = (float(s) if s > 0 else 1.0 for s in spacing)
    fine = min(su, sv)
    ru, rv = max(1, round(su / fine)), max(1, round(sv / fine))
    extent = max(plane_shape[0] * ru, plane_shape[1] * rv, 1)
    base = max(1, target // extent)
    return base * rv, base * ru


def overlay_mask(
    rgb: np.ndarray,
    mask: np.ndarray,
    opacity: float = 0.4,
    colors: Mapping[int, RGB] | None = None,
) -> np.ndarray:
    """``rgb`` with every non-zero label of ``mask`` blended in its colour at ``opacity``.

    >>> out = overlay_mask(np.zeros((1, 2, 3), np.uint8), np.array([[0, 1]]), opacity=1.0)
    >>> out[0, 0].tolist(), out[0, 1].tolist()
    ([0, 0, 0], [230, 25, 75])
    """
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask of shape {mask.shape} does not match image {rgb.shape[:2]}")
    out = rgb.copy()
    alpha = float(np.clip(opacity, 0.0, 1.0))
    if alpha == 0.0:
        return out
    labels = np.asarray(mask)
    for label in np.unique(labels):
        if label == 0:
            continue
        where = labels == label
        colour = np.array(label_color(int(label), colors), dtype=np.float32)
        blended = (1 - alpha) * out[where].astype(np.float32) + alpha * colour
        out[where] = np.round(blended).astype(np.uint8)
    return out


def blend_heatmap(
    rgb: np.ndarray, counts: np.ndarray, opacity: float = 0.6, cmap: str = "hot"
) -> np.ndarray:
    """``rgb`` with a heat map of ``counts`` (same rows and columns) blended where counts > 0.

    >>> out = blend_heatmap(np.zeros((1, 2, 3), np.uint8), np.array([[0, 4]]), opacity=1.0)
    >>> out[0, 0].tolist(), out[0, 1].tolist()
    ([0, 0, 0], [255, 255, 255])
    """
    counts = np.asarray(counts, dtype=np.float32)
    out = rgb.copy()
    top = float(counts.max()) if counts.size else 0.0
    if top <= 0:
        return out
    heat = apply_colormap(counts / top, cmap).astype(np.float32)
    where = counts > 0
    alpha = float(np.clip(opacity, 0.0, 1.0))
    out[where] = np.round((1 - alpha) * out[where] + alpha * heat[where]).astype(np.uint8)
    return out


@dataclass(frozen=True)
class Fusion:
    """A second image drawn over the first (a FLAIR over a T1w, a PET over a CT).

    Its plane (on the first image's plane grid) is windowed, coloured by ``cmap`` and
    blended in proportion to its windowed value: transparent where it is at or below the
    window, ``opacity`` where it is at or above.
    """

    plane: np.ndarray
    window: Window
    cmap: str = "hot"
    opacity: float = 0.5


def blend_fusion(rgb: np.ndarray, fusion: Fusion) -> np.ndarray:
    """``rgb`` (a plane after :func:`to_display`) with ``fusion`` blended over it.

    >>> top = Fusion(np.array([[0.0], [10.0]]), Window(5.0, 10.0), "gray", opacity=1.0)
    >>> blend_fusion(np.full((1, 2, 3), 100, np.uint8), top)[0].tolist()
    [[100, 100, 100], [255, 255, 255]]
    """
    plane = np.asarray(fusion.plane)
    shown = apply_window(to_display(plane), fusion.window)
    if shown.shape != rgb.shape[:2]:
        raise ValueError(f"overlay plane of shape {plane.shape} does not match {rgb.shape[:2]}")
    alpha = (shown * float(np.clip(fusion.opacity, 0.0, 1.0)))[..., None]
    colour = apply_colormap(shown, fusion.cmap).astype(np.float32)
    out = (1 - alpha) * rgb.astype(np.float32) + alpha * colour
    return np.asarray(np.round(out).astype(np.uint8))


def draw_crosshair(
    rgb: np.ndarray, row: int, col: int, color: RGB = (0, 255, 255), gap: int = 0
) -> np.ndarray:
    """A copy of ``rgb`` with a horizontal line at ``row`` and a vertical one at ``col``.

    ``gap`` pixels around the crossing are left clear so the voxel itself stays visible.

    >>> out = draw_crosshair(np.zeros((3, 3, 3), np.uint8), 1, 2)
    >>> out[1, 0].tolist(), out[0, 2].tolist(), out[0, 0].tolist()
    ([0, 255, 255], [0, 255, 255], [0, 0, 0])
    """
    out = rgb.copy()
    rows, cols = out.shape[:2]
    colour = np.array(color, dtype=np.uint8)
    if 0 <= row < rows:
        keep = np.ones(cols, bool)
        keep[max(col - gap, 0) : col + gap + 1] = gap == 0
        out[row, keep] = colour
    if 0 <= col < cols:
        keep = np.ones(rows, bool)
        keep[max(row - gap, 0) : row + gap + 1] = gap == 0
        out[keep, col] = colour
    return out


def draw_box(
    rgb: np.ndarray, r0: int, c0: int, r1: int, c1: int, color: RGB = (0, 255, 0)
) -> np.ndarray:
    """A copy of ``rgb`` with the outline of rows ``r0..r1-1`` and columns ``c0..c1-1``.

    >>> out = draw_box(np.zeros((5, 5, 3), np.uint8), 1, 1, 4, 4)
    >>> int(out[1, 1, 1]), int(out[2, 2, 1]), int(out[2, 3, 1])
    (255, 0, 255)
    """
    out = rgb.copy()
    rows, cols = out.shape[:2]
    r0, r1 = max(r0, 0), min(r1, rows)
    c0, c1 = max(c0, 0), min(c1, cols)
    if r1 <= r0 or c1 <= c0:
        return out
    colour = np.array(color, dtype=np.uint8)
    out[r0, c0:c1] = colour
    out[r1 - 1, c0:c1] = colour
    out[r0:r1, c0] = colour
    out[r0:r1, c1 - 1] = colour
    return out


def draw_plane_box(
    rgb: np.ndarray,
    u: tuple[int, int],
    v: tuple[int, int],
    plane_shape: tuple[int, int],
    scale: tuple[int, int] = (1, 1),
    color: RGB = (0, 255, 0),
) -> np.ndarray:
    """Outline the plane box ``u[0]..u[1]-1`` x ``v[0]..v[1]-1`` on a displayed plane.

    ``rgb`` is the plane after :func:`to_display` and an enlargement by ``scale``.

    >>> out = draw_plane_box(np.zeros((4, 4, 3), np.uint8), (0, 2), (0, 2), (4, 4))
    >>> int(out[3, 0, 1]), int(out[1, 0, 1]), int(out[0, 0, 1])
    (255, 0, 0)
    """
    rows, cols = scale
    n_v = plane_shape[1]
    r0, r1 = (n_v - v[1]) * rows, (n_v - v[0]) * rows
    return draw_box(rgb, r0, u[0] * cols, r1, u[1] * cols, color)


def zoom(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Nearest-neighbour enlargement by integer factors (voxels stay crisp squares).

    >>> zoom(np.array([[1, 2]]), 2, 1).tolist()
    [[1, 2], [1, 2]]
    """
    out = np.asarray(image)
    if rows > 1:
        out = np.repeat(out, rows, axis=0)
    if cols > 1:
        out = np.repeat(out, cols, axis=1)
    return out


def render_slice(
    plane: np.ndarray,
    window: Window,
    cmap: str = "gray",
    mask: np.ndarray | None = None,
    opacity: float = 0.4,
    colors: Mapping[int, RGB] | None = None,
    crosshair: tuple[int, int] | None = None,
    scale: tuple[int, int] = (1, 1),
    fusion: Fusion | None = None,
) -> np.ndarray:
    """A plane ``(u, v)`` as a display RGB image: windowed, coloured, overlaid, cross-haired.

    Args:
        plane: intensities, indexed ``(u, v)`` as returned by ``Volume.axial`` and friends.
        window: the display window.
        cmap: a matplotlib colormap name.
        mask: labels on the same ``(u, v)`` grid, or ``None``.
        opacity: mask opacity, 0..1.
        colors: label -> RGB, overriding :data:`DEFAULT_LABEL_COLORS`.
        crosshair: plane voxel ``(u, v)`` to mark, or ``None``.
        scale: integer enlargement ``(rows, cols)`` applied before the crosshair is drawn,
            so the lines stay one pixel wide through the middle of the voxel.
        fusion: a second image blended over this one, under the mask (see :class:`Fusion`).

    >>> rgb = render_slice(np.zeros((2, 2)), Window(1, 2), crosshair=(0, 0), scale=(3, 3))
    >>> rgb.shape, rgb[4, 1].tolist(), rgb[0, 0].tolist()
    ((6, 6, 3), [0, 255, 255], [0, 0, 0])
    """
    plane = np.asarray(plane)
    if plane.ndim != 2:
        raise ValueError(f"a slice must be 2D, got shape {plane.shape}")
    rgb = apply_colormap(apply_window(to_display(plane), window), cmap)
    if fusion is not None:
        rgb = blend_fusion(rgb, fusion)
    if mask is not None:
        if mask.shape != plane.shape:
            raise ValueError(f"mask slice of shape {mask.shape} does not match {plane.shape}")
        rgb = overlay_mask(rgb, to_display(mask), opacity, colors)
    rows, cols = scale
    rgb = zoom(rgb, rows, cols)
    if crosshair is not None:
        rgb = draw_crosshair(rgb, *crosshair_pixel(crosshair, plane.shape, scale))
    return rgb


def _labels_in(labels: np.ndarray) -> list[int]:
    """The non-zero labels of a mask plane, ascending."""
    if labels.dtype.kind in "ub" or (labels.dtype.kind == "i" and labels.min() >= 0):
        counts = np.bincount(labels.ravel().astype(np.intp))
        return [int(v) for v in np.flatnonzero(counts) if v != 0]
    return [v for v in np.unique(labels) if v != 0]


def crosshair_pixel(
    crosshair: tuple[int, int], plane_shape: tuple[int, int], scale: tuple[int, int] = (1, 1)
) -> tuple[int, int]:
    """Image ``(row, col)`` through the middle of plane voxel ``(u, v)`` enlarged by ``scale``.

    >>> crosshair_pixel((0, 0), (2, 2), (3, 3))
    (4, 1)
    """
    row, col = display_point(*crosshair, plane_shape)
    rows, cols = scale
    return row * rows + rows // 2, col * cols + cols // 2


def render_indexed(
    plane: np.ndarray,
    window: Window,
    cmap: str = "gray",
    mask: np.ndarray | None = None,
    opacity: float = 0.4,
    colors: Mapping[int, RGB] | None = None,
    scale: tuple[int, int] = (1, 1),
) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`render_slice` (without crosshair) as palette entries and a palette.

    ``palette[index]`` equals ``render_slice(...)`` pixel for pixel; the index image has a
    third of the bytes, so it encodes and travels faster. ``None`` when the plane needs more
    than 256 colours (a mask blended over many grey levels): render it as RGB then.

    >>> index, palette = render_indexed(np.arange(4.0).reshape(2, 2), Window(1.5, 3.0))
    >>> index.shape, palette[index].tolist() == render_slice(
    ...     np.arange(4.0).reshape(2, 2), Window(1.5, 3.0)).tolist()
    ((2, 2), True)
    """
    plane = np.asarray(plane)
    if plane.ndim != 2:
        raise ValueError(f"a slice must be 2D, got shape {plane.shape}")
    levels = _levels(apply_window(to_display(plane), window))
    lut = _lut(cmap)
    labels = None if mask is None else np.asarray(mask)
    if labels is not None and labels.shape != plane.shape:
        raise ValueError(f"mask slice of shape {labels.shape} does not match {plane.shape}")
    alpha = float(np.clip(opacity, 0.0, 1.0))
    present = [] if labels is None or alpha == 0.0 or not labels.any() else _labels_in(labels)
    if len(present) >= 255:  # codes would not fit in 16 bits, nor colours in a palette
        return None
    if labels is None or not present:
        index, palette = levels, lut
    else:
        # code = level + 256 * (1 + the label's rank): one table row per (label, grey level)
        shown = to_display(labels)
        code = levels.astype(np.uint16)
        table = [lut]
        for rank, label in enumerate(present, start=1):
            code[shown == label] += 256 * rank
            colour = np.array(label_color(int(label), colors), dtype=np.float32)
            blended = (1 - alpha) * lut.astype(np.float32) + alpha * colour  # as overlay_mask
            table.append(np.round(blended).astype(np.uint8))
        used = np.flatnonzero(np.bincount(code.ravel(), minlength=256 * len(table)))
        # codes that show the same colour share a palette entry
        palette, entry = np.unique(np.concatenate(table)[used], axis=0, return_inverse=True)
        if len(palette) > 256:
            return None
        lookup = np.zeros(256 * len(table), np.uint8)
        lookup[used] = entry.ravel()
        index = lookup[code]
    rows, cols = scale
    return zoom(index, rows, cols), palette
