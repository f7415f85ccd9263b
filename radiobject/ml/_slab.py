"""Slabs (2.5D): ``k`` adjacent planes of a volume, stacked as channels.

A slab is a box of the volume that is ``k`` voxels deep along the plane axis and spans the
plane (or a 2D patch of it) across: with axial tiles it reads exactly ``k`` tiles. These
helpers give its size, narrow it to its centre plane (the mask a 2.5D segmentation network
predicts) and turn the planes into channels; the datasets plan and build with them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from radiobject._errors import ShapeError
from radiobject.config import SliceOrientation

__all__ = ["PLANE_AXIS", "centre_plane", "planes_as_channels", "slab_size"]

PLANE_AXIS = {
    SliceOrientation.AXIAL: 2,
    SliceOrientation.CORONAL: 1,
    SliceOrientation.SAGITTAL: 0,
}
"""The volume axis ``(x, y, z)`` each plane orientation cuts across."""

Bounds = tuple[tuple[int, int], ...]


def slab_size(
    shape: Sequence[int],
    slab: int,
    orientation: SliceOrientation,
    patch: tuple[int, int] | None,
    obs_id: str = "",
) -> tuple[int, int, int]:
    """The box ``(x, y, z)`` of a slab of ``slab`` planes (``patch`` of each) in ``shape``.

    >>> slab_size((16, 12, 10), 3, SliceOrientation.AXIAL, None)
    (16, 12, 3)
    >>> slab_size((16, 12, 10), 3, SliceOrientation.SAGITTAL, (8, 4))
    (3, 8, 4)
    >>> slab_size((16, 12, 2), 3, SliceOrientation.AXIAL, None, "sub-0_T1w")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.ShapeError: a slab of 3 axial planes does not fit in volume 'sub-0_T1w'...
    """
    axis = PLANE_AXIS[orientation]
    spatial = tuple(int(n) for n in shape[:3])
    in_plane = [a for a in range(3) if a != axis]
    if slab > spatial[axis]:
        raise ShapeError(
            f"a slab of {slab} {orientation.value} planes does not fit in volume {obs_id!r} "
            f"of shape {spatial} ({spatial[axis]} planes); pass a smaller slab"
        )
    size = list(spatial)
    size[axis] = slab
    if patch is not None:
        across = tuple(spatial[a] for a in in_plane)
        if any(p > n for p, n in zip(patch, across, strict=True)):
            raise ShapeError(
                f"slab_patch {patch} is larger than the {orientation.value} planes {across} of "
                f"volume {obs_id!r} of shape {spatial}; pass a smaller slab_patch"
            )
        for a, p in zip(in_plane, patch, strict=True):
            size[a] = p
    return (size[0], size[1], size[2])


def centre_plane(box: Bounds, orientation: SliceOrientation) -> Bounds:
    """The slab's centre plane: plane ``k // 2`` of its ``k`` (the upper middle for even k).

    >>> centre_plane(((0, 16), (2, 10), (4, 9)), SliceOrientation.AXIAL)
    ((0, 16), (2, 10), (6, 7))
    """
    axis = PLANE_AXIS[orientation]
    lo, hi = box[axis]
    mid = lo + (hi - lo) // 2
    return tuple((mid, mid + 1) if a == axis else b for a, b in enumerate(box))


def planes_as_channels(array: np.ndarray, orientation: SliceOrientation) -> np.ndarray:
    """``(C, X, Y, Z[, T])`` with ``k`` planes along the axis -> ``(C * k, h, w[, T])``.

    Channel ``c * k + j`` is plane ``j`` of channel ``c``; one plane gives ``(C, h, w)``,
    like a 2D slice.

    >>> a = np.arange(2 * 4 * 3 * 2).reshape(2, 4, 3, 2)  # 2 channels, 2 axial planes
    >>> out = planes_as_channels(a, SliceOrientation.AXIAL)
    >>> out.shape, bool((out[1] == a[0, :, :, 1]).all()), bool((out[2] == a[1, :, :, 0]).all())
    ((4, 4, 3), True, True)
    """
    moved = np.moveaxis(array, 1 + PLANE_AXIS[orientation], 1)
    return moved.reshape(-1, *moved.shape[2:])
