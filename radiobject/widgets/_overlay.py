"""Overlays on another grid: a volume sampled onto the plane a viewer shows, through the affines.

A subject's collections may live on different grids (a 1 mm T1w, a 2 x 2 x 3 mm FLAIR, a mask
of either). To overlay one on a plane of another, each pixel of the displayed plane goes
world position -> the other volume's voxel coordinates (:func:`plane_coordinates`), only the
bounding box of those coordinates is read (:func:`footprint`), and the plane is sampled from
it (:func:`sample`): the nearest voxel for masks, linear interpolation for images. Points
outside the other volume get 0. :class:`OverlayPlanes` does this per plane, like
:class:`~radiobject.widgets._slices.SliceCache` does for a volume on the shown grid.

The other volume's voxel ``i`` covers ``i - 0.5 .. i + 0.5``: a point there is inside it (the
nearest voxel is ``i``; linear interpolation holds the edge voxel's value out to the edge).

>>> import numpy as np
>>> coarse = np.diag([2.0, 2.0, 2.0, 1.0])  # the other volume: 2 mm voxels, moved by
>>> coarse[:3, 3] = -0.5                        # half a millimetre
>>> coords = plane_coordinates("axial", 2, (4, 4, 4), np.eye(4), coarse)
>>> coords[3, 1].tolist()  # shown voxel (3, 1, 2) sits at other voxel (1.75, 0.75, 1.25)
[1.75, 0.75, 1.25]
>>> other = np.arange(8.0).reshape(2, 2, 2)
>>> sample(other, coords, linear=False).tolist()  # x or y = 3: past the other volume, 0
[[1.0, 3.0, 3.0, 0.0], [5.0, 7.0, 7.0, 0.0], [5.0, 7.0, 7.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from radiobject import CoarseLevel, Volume

__all__ = [
    "OverlayPlanes",
    "coarse_affine",
    "footprint",
    "map_position",
    "plane_coordinates",
    "same_grid",
    "sample",
]

# the axis each plane cuts, and the two axes it shows (as in _slices)
_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}
_UV = {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}
_EDGE = 1e-6  # voxel units: points this close past the edge are inside (rounding of affines)


def same_grid(
    shape: Sequence[int], affine: np.ndarray, other_shape: Sequence[int], other: np.ndarray
) -> bool:
    """Whether two volumes share one grid: the same shape and (to 1e-4 mm) the same affine.

    >>> same_grid((4, 4, 4), np.eye(4), (4, 4, 4), np.eye(4) + 1e-6)
    True
    """
    return tuple(shape[:3]) == tuple(other_shape[:3]) and bool(
        np.allclose(affine, other, rtol=0.0, atol=1e-4)
    )


def plane_coordinates(
    plane: str, index: int, shape: Sequence[int], affine: np.ndarray, other: np.ndarray
) -> np.ndarray:
    """Voxel coordinates, in a volume of affine ``other``, of each voxel of a displayed plane.

    The plane is ``plane`` (``"axial"``, ``"coronal"``, ``"sagittal"``) at ``index`` of a
    volume of ``shape`` and ``affine``; the result has shape ``(U, V, 3)``, indexed like the
    plane (``(x, y)`` for axial).
    """
    u_axis, v_axis = _UV[plane]
    n_u, n_v = int(shape[u_axis]), int(shape[v_axis])
    mapping = np.linalg.inv(np.asarray(other, dtype=np.float64)) @ np.asarray(affine, np.float64)
    voxels = np.zeros((n_u, n_v, 4))
    voxels[..., u_axis] = np.arange(n_u)[:, None]
    voxels[..., v_axis] = np.arange(n_v)[None, :]
    voxels[..., _AXIS[plane]] = index
    voxels[..., 3] = 1.0
    out: np.ndarray = voxels @ mapping.T
    return out[..., :3]


def map_position(
    position: Sequence[int], affine: np.ndarray, other: np.ndarray, other_shape: Sequence[int]
) -> tuple[int, int, int] | None:
    """The voxel of a volume of ``other`` affine at the world point of voxel ``position``.

    ``None`` when that point is outside the other volume (of ``other_shape``).

    >>> map_position((4, 4, 4), np.eye(4), np.diag([2.0, 2.0, 2.0, 1.0]), (3, 3, 3))
    (2, 2, 2)
    >>> map_position((9, 4, 4), np.eye(4), np.diag([2.0, 2.0, 2.0, 1.0]), (3, 3, 3)) is None
    True
    """
    point = np.array([*[float(p) for p in position[:3]], 1.0])
    mapped = np.linalg.inv(np.asarray(other, np.float64)) @ np.asarray(affine, np.float64)
    coords = (mapped @ point)[:3]
    if not _inside(coords, other_shape):
        return None
    x, y, z = (int(np.floor(c + 0.5)) for c in np.clip(coords, 0, np.asarray(other_shape[:3]) - 1))
    return x, y, z


def _inside(coords: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Which points lie in the volume's extent (voxel ``i`` covers ``i - 0.5 .. i + 0.5``)."""
    upper = np.asarray(shape[:3], dtype=np.float64) - 0.5 + _EDGE
    inside: np.ndarray = np.all((coords >= -0.5 - _EDGE) & (coords < upper), axis=-1)
    return inside


def footprint(
    coords: np.ndarray, shape: Sequence[int], linear: bool
) -> tuple[tuple[int, int], ...] | None:
    """The voxel box to read to sample ``coords`` from a volume of ``shape`` (None: all outside).

    Nearest: the voxels nearest the points; linear: the voxels around them (clipped).

    >>> footprint(np.array([[0.2, 1.5, 3.0], [0.4, 2.5, 3.0]]), (4, 4, 4), linear=True)
    ((0, 2), (1, 4), (3, 4))
    """
    inside = _inside(coords, shape)
    if not inside.any():
        return None
    points = coords[inside]
    box = []
    for axis, n in enumerate(shape[:3]):
        c = np.clip(points[:, axis], 0.0, n - 1.0)
        if linear:
            lo, hi = int(np.floor(c.min())), int(np.floor(c.max())) + 2
        else:
            lo, hi = int(np.floor(c.min() + 0.5)), int(np.floor(c.max() + 0.5)) + 1
        box.append((max(lo, 0), min(hi, int(n))))
    return tuple(box)


def sample(
    block: np.ndarray,
    coords: np.ndarray,
    linear: bool,
    full_shape: Sequence[int] | None = None,
    offset: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """``block`` sampled at ``coords`` (``(..., 3)`` voxel coordinates), 0 outside the volume.

    ``block`` holds the voxels ``offset .. offset + block.shape`` of a volume of
    ``full_shape`` (default: ``block`` is the whole volume); ``coords`` are in the volume's
    voxels. Nearest (masks; ``block``'s dtype) or trilinear (images; float32) sampling.
    """
    full = tuple(block.shape[:3]) if full_shape is None else tuple(full_shape[:3])
    inside = _inside(coords, full)
    local = np.clip(coords, 0.0, np.asarray(full, np.float64) - 1.0) - np.asarray(offset)
    hi = np.asarray(block.shape[:3]) - 1
    if not linear:
        idx = np.clip(np.floor(local + 0.5).astype(np.intp), 0, hi)
        near: np.ndarray = block[idx[..., 0], idx[..., 1], idx[..., 2]]
        near[~inside] = 0
        return near
    lo = np.clip(np.floor(local).astype(np.intp), 0, hi)
    frac = (local - lo).astype(np.float32)
    up = np.minimum(lo + 1, hi)
    out = np.zeros(coords.shape[:-1], np.float32)
    for corner in range(8):
        pick = [(up if corner >> a & 1 else lo)[..., a] for a in range(3)]
        weight = np.ones(coords.shape[:-1], np.float32)
        for a in range(3):
            weight *= frac[..., a] if corner >> a & 1 else 1.0 - frac[..., a]
        out += weight * block[pick[0], pick[1], pick[2]].astype(np.float32)
    out[~inside] = 0.0
    return out


def coarse_affine(level: CoarseLevel, affine: np.ndarray) -> np.ndarray:
    """Voxel-to-world of a coarse ``level`` of a volume of ``affine``, as a viewer draws it.

    Level voxel ``i`` stands for the volume's block ``i * factor .. (i + 1) * factor - 1``
    (a mean of it, or one voxel of it for a mask): it is drawn over that block, so its
    centre is the block's centre, as :func:`~radiobject.widgets._slices.coarse_plane` draws
    the image's level.

    >>> level = CoarseLevel(np.zeros((2, 2, 2)), 4, "stride", saved=False)
    >>> coarse_affine(level, np.eye(4))[:3, 3].tolist()
    [1.5, 1.5, 1.5]
    """
    f = level.factor
    scale = np.diag([float(f)] * 3 + [1.0])
    scale[:3, 3] = (f - 1) / 2
    out: np.ndarray = np.asarray(affine, np.float64) @ scale
    return out


class OverlayPlanes:
    """A volume on another grid, sampled onto the planes of the volume shown.

    Reads like :class:`~radiobject.widgets._slices.SliceCache` (``plane``, ``cached``,
    ``prefetch``): each plane is computed when its index changes, from a read of only the
    box of the other volume it touches (:func:`footprint`); from memory when ``source`` is a
    coarse level.

    Args:
        source: the other volume (a :class:`~radiobject.Volume`, read by region) or its
            values in memory (a :class:`~radiobject.CoarseLevel`, with ``source_affine``
            the volume's affine).
        shape: the shown volume's grid shape.
        affine: the shown volume's affine.
        linear: linear interpolation (images) instead of the nearest voxel (masks).
        t: the time point of a 4D source.
        source_affine: the affine of the volume a ``CoarseLevel`` source belongs to.
    """

    def __init__(
        self,
        source: Volume | CoarseLevel,
        shape: Sequence[int],
        affine: np.ndarray,
        *,
        linear: bool = False,
        t: int = 0,
        source_affine: np.ndarray | None = None,
    ) -> None:
        self.source = source
        x, y, z = (int(n) for n in shape[:3])
        self.shape: tuple[int, int, int] = (x, y, z)
        self.affine = np.asarray(affine, dtype=np.float64)
        self.linear = linear
        self.t = t
        if isinstance(source, CoarseLevel):
            if source_affine is None:
                raise ValueError("a coarse level overlay needs source_affine (its volume's)")
            self.source_affine = coarse_affine(source, source_affine)
            self.source_shape: tuple[int, ...] = tuple(source.voxels.shape)
        else:
            self.source_affine = source.affine
            self.source_shape = tuple(source.shape)
        self.reads = 0  # region reads of the source volume
        self.read_voxels = 0  # the voxels they held
        self._planes: dict[str, tuple[int, np.ndarray]] = {}

    def overlaps(self) -> bool:
        """Whether any voxel of the shown grid falls inside the other volume (no read)."""
        corners = np.array(np.meshgrid(*[(0, n - 1) for n in self.shape], indexing="ij"))
        points = np.c_[corners.reshape(3, -1).T, np.ones(8)]
        mapped = points @ (np.linalg.inv(self.source_affine) @ self.affine).T
        lo, hi = mapped[:, :3].min(axis=0), mapped[:, :3].max(axis=0)
        upper = np.asarray(self.source_shape[:3]) - 0.5
        return bool(np.all(hi >= -0.5) and np.all(lo < upper))

    def plane(self, plane: str, index: int) -> np.ndarray:
        """The other volume on the shown ``(u, v)`` plane at ``index``."""
        hit = self._planes.get(plane)
        if hit is not None and hit[0] == index:
            return hit[1]
        coords = plane_coordinates(plane, index, self.shape, self.affine, self.source_affine)
        box = footprint(coords, self.source_shape, self.linear)
        if box is None:
            dtype = np.float32 if self.linear else self._dtype()
            data = np.zeros(coords.shape[:2], dtype)
        else:
            block = self._read(box)
            offset = [lo for lo, _ in box]
            data = sample(block, coords, self.linear, self.source_shape, offset)
        self._planes[plane] = (index, data)
        return data

    def cached(self, plane: str, index: int) -> np.ndarray | None:
        """The plane at ``index`` if it is held already (no read), else ``None``."""
        hit = self._planes.get(plane)
        return hit[1] if hit is not None and hit[0] == index else None

    def prefetch(self, position: Sequence[int], planes: Sequence[str] = ()) -> None:
        """Nothing to warm: each plane reads only its own footprint."""

    def wait(self) -> None:
        """No reads run in the background."""

    def _dtype(self) -> Any:
        if isinstance(self.source, CoarseLevel):
            return self.source.voxels.dtype
        return self.source.dtype

    def _read(self, box: tuple[tuple[int, int], ...]) -> np.ndarray:
        if isinstance(self.source, CoarseLevel):
            key: tuple[Any, ...] = tuple(slice(lo, hi) for lo, hi in box)
            voxels = self.source.voxels
            block: np.ndarray = voxels[key + ((self.t,) if voxels.ndim == 4 else ())]
            return block
        bounds = list(box)
        if len(self.source_shape) == 4:
            bounds.append((self.t, self.t + 1))
        block = self.source.read(bounds)
        if block.ndim == 4:
            block = block[..., 0]
        self.reads += 1
        self.read_voxels += int(block.size)
        return block
