"""Sample volumes on other grids: the same anatomy seen with other voxel sizes.

Real cohorts hold a 1 mm T1w beside a 0.9 x 0.9 x 3 mm FLAIR. :func:`grid_for` gives the
grid of another voxel size over the same field of view (centred on the same world point),
and :func:`regrid` samples a volume onto it through both affines: each new voxel averages
the old voxels it overlaps (partial volume, as a scanner with larger voxels would record),
or takes the label of the nearest old voxel for a mask. Axis-aligned grids only (the
sample cohort's), in pure numpy.

>>> import numpy as np
>>> shape, affine = grid_for((4, 4, 4), np.eye(4), (2.0, 2.0, 2.0))
>>> shape, affine[:3, 3].tolist()
((2, 2, 2), [0.5, 0.5, 0.5])
>>> float(regrid(np.arange(64.0).reshape(4, 4, 4), np.eye(4), affine, shape)[0, 0, 0])
10.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from radiobject._errors import ConfigurationError

__all__ = ["grid_for", "regrid"]


def _axis_aligned(affine: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal spacing and origin of an axis-aligned affine (else a ConfigurationError)."""
    a = np.asarray(affine, dtype=np.float64)
    diag = np.diag(a)[:3]
    if a.shape != (4, 4) or np.abs(a[:3, :3] - np.diag(diag)).max() > 1e-9 or min(diag) <= 0:
        raise ConfigurationError(
            f"{what} must be an axis-aligned 4x4 affine with positive spacing, got {a.tolist()}"
        )
    return diag, a[:3, 3]


def grid_for(
    shape: Sequence[int], affine: np.ndarray, spacing: Sequence[float]
) -> tuple[tuple[int, int, int], np.ndarray]:
    """The grid of voxel size ``spacing`` (mm) covering the field of view of ``shape``/``affine``.

    The new grid has as many voxels as cover the old field of view (rounded up) and the
    same centre, so its origin moves with the voxel size.

    Raises:
        ConfigurationError: ``spacing`` is not three positive sizes, or ``affine`` is not
            axis-aligned.
    """
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ConfigurationError(f"a grid spacing must be 3 sizes > 0 (mm), got {spacing!r}")
    old, origin = _axis_aligned(affine, "the reference affine")
    new = np.asarray(spacing, dtype=np.float64)
    size = np.asarray(shape, dtype=np.float64)
    centre = origin + (size - 1) * old / 2
    n = np.maximum(np.ceil(size * old / new - 1e-9), 1)
    out = np.diag([*new, 1.0])
    out[:3, 3] = centre - (n - 1) * new / 2
    x, y, z = (int(v) for v in n)
    return (x, y, z), out


def _weights(
    n_old: int, s_old: float, o_old: float, n_new: int, s_new: float, o_new: float
) -> np.ndarray:
    """``(n_new, n_old)`` fractions of each new voxel covered by each old one (rows sum to 1).

    A new voxel partly outside the old field of view averages the part inside; one wholly
    outside has a row of zeros.
    """
    lo_old = o_old + (np.arange(n_old) - 0.5) * s_old
    lo_new = o_new + (np.arange(n_new) - 0.5) * s_new
    overlap = np.minimum(lo_new[:, None] + s_new, lo_old[None, :] + s_old) - np.maximum(
        lo_new[:, None], lo_old[None, :]
    )
    np.clip(overlap, 0.0, None, out=overlap)
    total = overlap.sum(axis=1, keepdims=True)
    out: np.ndarray = np.divide(overlap, total, out=np.zeros_like(overlap), where=total > 0)
    return out


def _nearest(
    n_old: int, s_old: float, o_old: float, n_new: int, s_new: float, o_new: float
) -> np.ndarray:
    """Old voxel index nearest each new voxel's centre, ``-1`` outside the old field of view."""
    pos = (o_new + np.arange(n_new) * s_new - o_old) / s_old
    index: np.ndarray = np.floor(pos + 0.5).astype(np.intp)
    index[(pos < -0.5) | (pos >= n_old - 0.5)] = -1
    return index


def regrid(
    volume: np.ndarray,
    affine: np.ndarray,
    new_affine: np.ndarray,
    new_shape: Sequence[int],
    *,
    mask: bool = False,
) -> np.ndarray:
    """``volume`` (on ``affine``) sampled onto the grid ``new_affine``/``new_shape``.

    Images: each new voxel is the overlap-weighted mean of the old voxels it covers
    (float32). Masks (``mask=True``): the label of the old voxel nearest each new voxel's
    centre (``volume``'s dtype). Outside the old field of view: 0.

    Raises:
        ConfigurationError: an affine is not axis-aligned.
    """
    old_s, old_o = _axis_aligned(affine, "the volume's affine")
    new_s, new_o = _axis_aligned(new_affine, "the new affine")
    axes = zip(volume.shape[:3], old_s, old_o, new_shape, new_s, new_o, strict=True)
    if mask:
        ix, iy, iz = (_nearest(*a) for a in axes)
        out = volume[np.ix_(np.maximum(ix, 0), np.maximum(iy, 0), np.maximum(iz, 0))]
        out[(ix < 0)[:, None, None] | (iy < 0)[None, :, None] | (iz < 0)[None, None, :]] = 0
        return out
    wx, wy, wz = (_weights(*a).astype(np.float32) for a in axes)
    out = np.tensordot(wx, volume.astype(np.float32, copy=False), axes=(1, 0))
    out = np.tensordot(wy, out, axes=(1, 1)).transpose(1, 0, 2)
    out = np.tensordot(out, wz, axes=(2, 1))
    return out
