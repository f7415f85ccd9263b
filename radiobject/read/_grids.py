"""Reference grids: a box of one volume's voxels, read from a volume on another grid.

A cohort whose collections differ in shape, spacing or orientation names one of them the
reference (``RadiObject.from_images(..., reference="T1w")``). Samples are planned in the
reference grid; for a volume on another grid, :func:`grid_map` gives the voxel-to-voxel map
from the two affines, :meth:`GridMap.source_box` the block of that volume a box of the
reference grid needs (the bounding box of the box's mapped corners plus the interpolation's
margin, clamped to the volume), and :meth:`GridMap.resample` turns that block into the box's
voxels.

Conventions, those of NIfTI and MONAI: voxel ``(i, j, k)`` has its centre at
``affine @ [i, j, k, 1]``. Points outside the other volume take the value of its nearest
border voxel (MONAI ``ResampleToMatchd``'s default ``padding_mode="border"``). ``linear`` is
trilinear interpolation (MONAI ``mode="bilinear"``, for images); otherwise nearest neighbour
(for masks: labels stay labels; a point exactly halfway between two voxels goes to the even
one, where MONAI's float arithmetic may pick either).
A numpy block is resampled on the CPU by the cheapest of three exact routes: axis-aligned
grids as three 1D interpolations; grids rotated about one shared axis
(:attr:`GridMap.tilt`, a usual oblique acquisition) as a 1D interpolation along it and a
bilinear one in the plane, gathering whole rows; any other pair of grids a slab at a time,
gathering each point's neighbours. A ``torch.Tensor`` block (a GPU's, or any device's) is
resampled on its device with torch operations, to the same values
(:mod:`radiobject.read._grids_torch`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from radiobject._errors import ShapeError
from radiobject.read._grids_torch import (
    Tensor,
    coordinate_terms,
    is_tensor,
    resample_tensor,
    write_into,
)

__all__ = ["GridMap", "Resample", "grid_map", "same_grid"]

Bounds = tuple[tuple[int, int], ...]
_SAME_ATOL = 1e-3  # affines this close are one grid (the ingest's alignment tolerance)


@dataclass(frozen=True)
class GridMap:
    """How voxels of a reference grid map into a volume on another grid.

    Attributes:
        matrix: the 3x4 map from reference voxel indices to the volume's voxel indices
            (``inv(volume_affine) @ reference_affine``, last row dropped), as tuples.
        shape: the volume's shape (first three axes).

    >>> import numpy as np
    >>> m = grid_map(np.eye(4), np.diag([2.0, 2.0, 2.0, 1.0]), (8, 8, 8))
    >>> m.source_box(((4, 8), (0, 4), (2, 3)), linear=True)
    ((2, 5), (0, 3), (1, 3))
    >>> block = np.arange(8.0)[:, None, None] * np.ones((1, 8, 8))  # value = x index
    >>> m.resample(block, ((4, 8), (0, 4), (2, 3)), ((0, 8), (0, 8), (0, 8)), linear=True)[
    ...     :, 0, 0].tolist()
    [2.0, 2.5, 3.0, 3.5]
    """

    matrix: tuple[tuple[float, ...], ...]
    shape: tuple[int, int, int]

    @property
    def array(self) -> np.ndarray:
        """:attr:`matrix` as a ``(3, 4)`` float64 array."""
        return np.asarray(self.matrix, dtype=np.float64)

    def coords(self, box: Bounds) -> np.ndarray:
        """The volume's voxel coordinates of the voxel centres of ``box``: ``(3, x, y, z)``."""
        m = self.array
        axes = [np.arange(lo, hi, dtype=np.float64) for lo, hi in box[:3]]
        out = np.empty((3, *(len(a) for a in axes)), dtype=np.float64)
        for row in range(3):
            out[row] = (
                m[row, 0] * axes[0][:, None, None]
                + m[row, 1] * axes[1][None, :, None]
                + m[row, 2] * axes[2][None, None, :]
                + m[row, 3]
            )
        return out

    def reference_affine(self, affine: np.ndarray) -> np.ndarray:
        """The reference grid's affine, from this volume's ``affine`` (4x4).

        >>> import numpy as np
        >>> m = grid_map(np.eye(4), np.diag([2.0, 2.0, 2.0, 1.0]), (4, 4, 4))
        >>> np.diag(m.reference_affine(np.diag([2.0, 2.0, 2.0, 1.0]))).tolist()
        [1.0, 1.0, 1.0, 1.0]
        """
        full = np.vstack([self.array, [0.0, 0.0, 0.0, 1.0]])
        out: np.ndarray = np.asarray(affine, dtype=np.float64) @ full
        return out

    def to_reference(self, points: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """Voxel ``points`` ``(n, 3)`` of the volume as the nearest reference voxels (int32).

        The reference grid has ``shape``; points beyond it are clamped inside it.

        >>> import numpy as np
        >>> m = grid_map(np.eye(4), np.diag([2.0, 2.0, 2.0, 1.0]), (4, 4, 4))
        >>> m.to_reference(np.array([[1, 2, 3]]), (8, 8, 6)).tolist()
        [[2, 4, 5]]
        """
        full = np.vstack([self.array, [0.0, 0.0, 0.0, 1.0]])
        back = np.linalg.inv(full)
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        mapped = np.rint(pts @ back[:3, :3].T + back[:3, 3])
        top = np.asarray(shape[:3], dtype=np.float64) - 1
        return np.clip(mapped, 0, top).astype(np.int32)

    def source_box(self, box: Bounds, *, linear: bool) -> Bounds:
        """The block of the volume that resampling ``box`` (a reference-grid box) reads.

        The bounding box of ``box``'s eight corner voxel centres mapped into the volume
        (points beyond its border clamped to it), plus the interpolation's margin: the next
        voxel up for ``linear``, none for nearest. Never empty.
        """
        m = self.array
        corners = np.array(
            list(itertools.product(*[(lo, hi - 1) for lo, hi in box[:3]])), dtype=np.float64
        )
        points = corners @ m[:, :3].T + m[:, 3]
        out = []
        # Python floats from here (min, max, floor and round, half to even as np.rint): the
        # same values, without numpy's per-call cost on scalars (this runs once per patch)
        for axis, (low, high) in enumerate(
            zip(points.min(axis=0), points.max(axis=0), strict=True)
        ):
            n = self.shape[axis]
            lo = min(max(float(low), 0.0), n - 1)
            hi = min(max(float(high), 0.0), n - 1)
            if linear:
                start, stop = math.floor(lo), min(math.floor(hi) + 2, n)
            else:
                start, stop = round(lo), round(hi) + 1
            out.append((start, max(stop, start + 1)))
        return tuple(out)

    @property
    def axes(self) -> tuple[int, int, int] | None:
        """For axis-aligned grids, the volume's axis along each reference axis; else None.

        Two grids are axis-aligned when each axis of one runs along an axis of the other
        (any spacing, flips and permutations: the common case of scanner grids); their
        trilinear interpolation is then three 1D interpolations, one per axis.
        """
        m = self.array[:, :3]
        along = np.abs(m) > 1e-9 * np.abs(m).max()
        if not (along.sum(axis=0) == 1).all() or not (along.sum(axis=1) == 1).all():
            return None
        rows = np.argmax(along, axis=0)
        return (int(rows[0]), int(rows[1]), int(rows[2]))

    def resample(
        self,
        block: np.ndarray | Tensor,
        box: Bounds,
        block_box: Bounds,
        *,
        linear: bool,
        out: np.ndarray | Tensor | None = None,
    ) -> np.ndarray | Tensor:
        """The voxels of ``box`` (reference grid) from ``block``, the volume's ``block_box``.

        ``block`` holds the volume's voxels in ``block_box`` (first three axes; more axes,
        e.g. time, are carried along); ``block_box`` must hold :meth:`source_box` of ``box``.
        ``linear``: trilinear, the result in ``block``'s float dtype (float32 for integer
        blocks); else nearest neighbour, in ``block``'s dtype. ``out`` (an array or a
        tensor of the result's shape) receives the result, cast to its dtype.

        A ``torch.Tensor`` block (on a GPU, ``mps`` or the CPU) is resampled with torch
        operations on its device, to a tensor there: the numpy route's values (the same
        voxels for nearest neighbour; for trilinear within float32 rounding), in float32
        for trilinear (float64 for a float64 block), in the block's dtype for nearest.

        >>> import numpy as np, torch
        >>> m = grid_map(np.eye(4), np.diag([2.0, 2.0, 2.0, 1.0]), (8, 8, 8))
        >>> block = torch.arange(8, dtype=torch.uint8)[:, None, None].repeat(1, 8, 8)
        >>> box, whole = ((4, 8), (0, 4), (2, 3)), ((0, 8), (0, 8), (0, 8))
        >>> m.resample(block, box, whole, linear=True)[:, 0, 0]  # x = 2, 2.5, 3, 3.5
        tensor([2.0000, 2.5000, 3.0000, 3.5000])
        >>> m.resample(block, box, whole, linear=False)[:, 0, 0]  # ties go to the even voxel
        tensor([2, 2, 3, 4], dtype=torch.uint8)
        """
        self._check(block, box, block_box, linear)
        if is_tensor(block):
            terms = coordinate_terms(self.axes, self.tilt)
            moved = resample_tensor(self.array, self.shape, terms, block, box, block_box, linear)
            return moved if out is None else write_into(out, moved)
        axes = self.axes
        if axes is not None:
            result = self._resample_along(block, box, block_box, linear, axes)
        elif self.tilt is not None:
            result = self._resample_tilted(block, box, block_box, linear)
        else:
            result = self._resample_any(block, box, block_box, linear)
        if out is None:
            if linear and block.dtype.kind == "f":
                return result.astype(block.dtype, copy=False)
            return np.ascontiguousarray(result, np.float32 if linear else block.dtype)
        return write_into(out, result)

    def _check(
        self, block: np.ndarray | Tensor, box: Bounds, block_box: Bounds, linear: bool
    ) -> None:
        """Raise :class:`ShapeError` unless ``block`` is ``block_box``'s and holds ``box``'s."""
        shape = tuple(int(n) for n in block.shape)
        if len(shape) < 3:
            raise ShapeError(
                f"a block to resample has three spatial axes (x, y, z, then any others), "
                f"got shape {shape}; pass the volume's voxels in block_box"
            )
        if len(box) < 3 or any(hi <= lo for lo, hi in box[:3]):
            raise ShapeError(f"box {box} must give a non-empty (start, stop) on each of x, y and z")
        extent = tuple(hi - lo for lo, hi in block_box[:3])
        if len(block_box) < 3 or extent != shape[:3]:
            raise ShapeError(
                f"a block of shape {shape} is not the volume's block_box {block_box}: its "
                f"first three axes must be block_box's extents {extent}"
            )
        need = self.source_box(box, linear=linear)
        if any(
            lo > n_lo or hi < n_hi
            for (lo, hi), (n_lo, n_hi) in zip(block_box[:3], need, strict=True)
        ):
            raise ShapeError(
                f"block_box {block_box[:3]} does not hold {need}, the block of the volume "
                f"that resampling box {box[:3]} reads; read GridMap.source_box(box) of it"
            )

    def _local(self, coords: np.ndarray, axis: int, origin: int, size: int) -> np.ndarray:
        """Coordinates along the volume's ``axis``, bordered, relative to a block's origin.

        Border padding: points beyond the volume take its edge voxel's value.
        """
        np.clip(coords, 0, self.shape[axis] - 1, out=coords)
        coords -= origin
        return np.clip(coords, 0, size - 1, out=coords)

    def _along(
        self,
        data: np.ndarray,
        span: tuple[int, int],
        block_box: Bounds,
        axis: int,
        ref: int,
        linear: bool,
        size: int,
        work: np.dtype | None = None,
    ) -> np.ndarray:
        """``data`` interpolated along the volume's ``axis`` at reference axis ``ref``'s ``span``.

        For a volume axis that only reference axis ``ref`` moves along (and that moves along
        no other): the coordinates are those of :meth:`coords`. ``size``: the block's length
        along ``axis``. Linear blends have float64 weights, or run in ``work`` (a float
        dtype) when given.
        """
        m = self.array
        coords = m[axis, ref] * np.arange(*span, dtype=np.float64) + m[axis, 3]
        coords = self._local(coords, axis, block_box[axis][0], size)
        if not linear:
            picked: np.ndarray = np.take(data, np.rint(coords).astype(np.intp), axis=axis)
            return picked
        low = np.minimum(np.floor(coords).astype(np.intp), max(size - 2, 0))
        high = np.minimum(low + 1, size - 1)
        frac = (coords - low).reshape([-1 if a == axis else 1 for a in range(data.ndim)])
        if work is not None:
            data, frac = data.astype(work, copy=False), frac.astype(work)
        out: np.ndarray = (
            np.take(data, low, axis=axis) * (1.0 - frac) + np.take(data, high, axis=axis) * frac
        )
        return out

    def _resample_along(
        self,
        block: np.ndarray,
        box: Bounds,
        block_box: Bounds,
        linear: bool,
        axes: tuple[int, int, int],
    ) -> np.ndarray:
        """:meth:`resample` of axis-aligned grids: one 1D interpolation per axis."""
        data = block
        for ref_axis, axis in enumerate(axes):
            data = self._along(
                data, box[ref_axis], block_box, axis, ref_axis, linear, block.shape[axis]
            )
        return data.transpose(*axes, *range(3, data.ndim))

    @property
    def tilt(self) -> tuple[int, int] | None:
        """For grids rotated about one shared axis: ``(volume axis, reference axis)``.

        Those two axes run along each other and mix with no other (e.g. an oblique
        acquisition tilted about one axis); the other two of each grid mix in a plane.
        None for any other pair of grids, and for axis-aligned ones (see :attr:`axes`).

        >>> import numpy as np
        >>> t = np.deg2rad(17.0)
        >>> rotated = np.eye(4)
        >>> rotated[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        >>> grid_map(np.eye(4), rotated, (8, 8, 8)).tilt
        (2, 2)
        """
        if self.axes is not None:
            return None
        m = self.array[:, :3]
        along = np.abs(m) > 1e-9 * np.abs(m).max()
        for axis, ref in itertools.product(range(3), repeat=2):
            if along[axis, ref] and along[axis].sum() == 1 and along[:, ref].sum() == 1:
                return axis, ref
        return None

    def _resample_tilted(
        self, block: np.ndarray, box: Bounds, block_box: Bounds, linear: bool
    ) -> np.ndarray:
        """:meth:`resample` of grids rotated about one shared axis (see :attr:`tilt`).

        Trilinear weights are a product of one weight per volume axis, so the shared axis
        is a 1D interpolation of the block; the other two a bilinear one whose coordinates
        are a plane's (those of :meth:`coords`), gathering whole rows along the shared axis.
        """
        tilt = self.tilt
        assert tilt is not None  # the caller checked
        axis, ref = tilt
        p, q = (a for a in range(3) if a != axis)
        r1, r2 = (r for r in range(3) if r != ref)
        work = _work_dtype(block.dtype)
        data = self._along(block, box[ref], block_box, axis, ref, linear, block.shape[axis], work)
        data = np.moveaxis(data, (p, q, axis), (0, 1, 2))
        sp, sq = data.shape[:2]
        rows = np.ascontiguousarray(data).reshape(sp * sq, -1)
        m = self.array
        i1 = np.arange(*box[r1], dtype=np.float64)[:, None]
        i2 = np.arange(*box[r2], dtype=np.float64)[None, :]
        coords = []
        for a in (p, q):
            # the operations and their order of :meth:`coords` (the shared axis' term is 0)
            c = (m[a, r1] * i1 + m[a, r2] * i2) + m[a, 3]
            coords.append(self._local(c, a, block_box[a][0], block.shape[a]).reshape(-1))
        if not linear:
            index = np.rint(coords[0]).astype(np.intp) * sq + np.rint(coords[1]).astype(np.intp)
            result = rows.take(index, axis=0)
        else:
            low = [
                np.minimum(np.floor(c).astype(np.intp), max(n - 2, 0))
                for c, n in zip(coords, (sp, sq), strict=True)
            ]
            frac = [(c - lo).astype(work)[:, None] for c, lo in zip(coords, low, strict=True)]
            up = [int(sp > 1) * sq, int(sq > 1)]
            base = low[0] * sq + low[1]
            result = np.empty((len(base), rows.shape[1]), dtype=rows.dtype)
            # a slab of plane points at a time: the temporaries stay small (in the CPU's
            # cache, and below the allocator's threshold for fresh, page-faulting memory)
            step = max(1, _SLAB_VOXELS // max(rows.shape[1], 1))
            for s in range(0, len(base), step):
                part = slice(s, s + step)
                v = [rows.take(base[part] + o, axis=0) for o in (0, up[1], up[0], up[0] + up[1])]
                fq, fp = frac[1][part], frac[0][part]
                near, far = v[1], v[3]
                near -= v[0]
                near *= fq
                near += v[0]
                far -= v[2]
                far *= fq
                far += v[2]
                far -= near
                far *= fp
                far += near
                result[part] = far
        result = result.reshape(len(i1), i2.shape[1], *data.shape[2:])
        order = [int(o) for o in np.argsort([r1, r2, ref])]
        out: np.ndarray = result.transpose(*order, *range(3, result.ndim))
        return out

    def _resample_any(
        self, block: np.ndarray, box: Bounds, block_box: Bounds, linear: bool
    ) -> np.ndarray:
        """:meth:`resample` of any two grids (rotated ones too), a slab of ``box`` at a time.

        Each slab (a few reference planes, so that its arrays stay in the CPU's cache) maps
        its voxel centres into ``block`` as :meth:`coords` does, then gathers: one voxel
        each for nearest, and for trilinear the four pairs of neighbours along the volume's
        last axis, read as one 2-voxel item each, then three rounds of linear blends.
        """
        nx, ny, nz = (hi - lo for lo, hi in box[:3])
        size = block.shape[:3]
        tail = block.shape[3:]
        dtype = block.dtype if not linear else _work_dtype(block.dtype)
        out = np.empty((nx, ny, nz, *tail), dtype=dtype)
        flats = [np.ascontiguousarray(block[(..., *c)]) for c in np.ndindex(*tail)]
        pairs = [_pairs(f, linear) for f in flats]
        clip = self._needs_clip(box, block_box, size)
        m = self.array
        i_all = np.arange(box[0][0], box[0][1], dtype=np.float64)
        j = np.arange(box[1][0], box[1][1], dtype=np.float64)
        k = np.arange(box[2][0], box[2][1], dtype=np.float64)
        step = max(1, _SLAB_VOXELS // max(ny * nz, 1))
        strides = (size[1] * size[2], size[2], 1)
        for s in range(0, nx, step):
            i = i_all[s : s + step]
            coords = []
            for axis in range(3):
                if linear and not clip[axis]:
                    # trilinear is continuous in the point: the offsets folded into one add
                    c = (m[axis, 0] * i[:, None, None] + m[axis, 1] * j[None, :, None]) + (
                        m[axis, 3] - block_box[axis][0]
                    )
                    c = c + m[axis, 2] * k[None, None, :]
                    coords.append(c)
                    continue
                # the operations and their order of :meth:`coords`: the same float64 values
                c = (m[axis, 0] * i[:, None, None] + m[axis, 1] * j[None, :, None]) + m[
                    axis, 2
                ] * k[None, None, :]
                c += m[axis, 3]
                if clip[axis]:
                    self._local(c, axis, block_box[axis][0], size[axis])
                else:
                    c -= block_box[axis][0]
                coords.append(c)
            rows = slice(s, s + len(i))
            if not linear:
                index = np.rint(coords[0]).astype(np.intp) * strides[0]
                index += np.rint(coords[1]).astype(np.intp) * strides[1]
                index += np.rint(coords[2]).astype(np.intp)
                for channel, flat in zip(np.ndindex(*tail), flats, strict=True):
                    out[(rows, ..., *channel)] = flat.reshape(-1).take(index)
                continue
            low = [c.astype(np.intp) for c in coords]  # c >= 0: astype is floor
            frac = []
            for c, lo, n in zip(coords, low, size, strict=True):
                np.minimum(lo, max(n - 2, 0), out=lo)
                c -= lo
                frac.append(c.astype(dtype))
            index = low[0] * strides[0]
            index += low[1] * strides[1]
            index += low[2]
            up = [strides[a] if size[a] > 1 else 0 for a in range(2)]
            for channel, pair in zip(np.ndindex(*tail), pairs, strict=True):
                # the four pairs (z, z+1) at (x, y), (x, y+1), (x+1, y), (x+1, y+1)
                along = []
                for offset in (0, up[1], up[0], up[0] + up[1]):
                    v = pair.take(index + offset if offset else index, axis=0)
                    a, b = v[..., 0], v[..., 1]
                    along.append(a + (b - a) * frac[2])
                y0 = along[0] + (along[1] - along[0]) * frac[1]
                y1 = along[2] + (along[3] - along[2]) * frac[1]
                out[(rows, ..., *channel)] = y0 + (y1 - y0) * frac[0]
        return out

    def _needs_clip(self, box: Bounds, block_box: Bounds, size: Sequence[int]) -> list[bool]:
        """Per volume axis, whether a point of ``box`` maps outside the volume or the block.

        The map is affine, so its extremes over ``box`` are at the box's corners (floating
        point addition and scaling are monotone): when those are inside, clipping is a no-op.
        """
        m = self.array
        corners = np.array(
            list(itertools.product(*[(lo, hi - 1) for lo, hi in box[:3]])), dtype=np.float64
        )
        out = []
        for axis in range(3):
            c = (m[axis, 0] * corners[:, 0] + m[axis, 1] * corners[:, 1]) + m[axis, 2] * corners[
                :, 2
            ]
            c += m[axis, 3]
            lo = max(0, block_box[axis][0])
            hi = min(self.shape[axis] - 1, block_box[axis][0] + size[axis] - 1)
            out.append(bool(c.min() < lo or c.max() > hi))
        return out


_SLAB_VOXELS = 1 << 15  # voxels per slab of _resample_any: its arrays stay in the cache


def _work_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype trilinear blends run in: float64 for float64 volumes, else float32."""
    return np.dtype(np.float64 if dtype == np.float64 else np.float32)


def _pairs(flat: np.ndarray, linear: bool) -> np.ndarray:
    """For trilinear: each voxel of a 3D block beside the next one along its last axis.

    ``(n, 2)``: row ``r`` of the block's flat voxels holds voxel ``r`` and voxel ``r + 1``
    (the same voxel again at the end of a row: the border, whose weight is then 0 or the
    row has one voxel), in the blends' dtype, so one gather reads both.
    """
    if not linear:
        return flat
    data = flat.astype(_work_dtype(flat.dtype), copy=False)
    nz = data.shape[2]
    out = np.empty((*data.shape, 2), dtype=data.dtype)
    out[..., 0] = data
    out[..., : nz - 1, 1] = data[..., 1:]
    out[..., nz - 1, 1] = data[..., nz - 1]
    return out.reshape(-1, 2)


@dataclass(frozen=True)
class Resample:
    """What a read of a volume on another grid needs to become its sample's voxels.

    A planned read holds the block :meth:`GridMap.source_box` gives; ``apply`` resamples
    that block to the voxel centres of ``box``, the sample's box in the reference grid.

    Attributes:
        grid: the map from the reference grid into the volume read.
        box: the sample's box in the reference grid (first three axes).
        linear: trilinear (images) or nearest neighbour (masks).

    >>> import numpy as np
    >>> r = Resample(grid_map(np.eye(4), np.diag([2.0, 2.0, 2.0, 1.0]), (4, 4, 4)),
    ...              ((1, 3), (0, 1), (0, 1)), linear=False)
    >>> r.source_bounds()
    ((0, 2), (0, 1), (0, 1))
    >>> r.apply(np.arange(2)[:, None, None], r.source_bounds()).ravel().tolist()
    [0, 1]
    """

    grid: GridMap
    box: Bounds
    linear: bool

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the result (first three axes): ``box``'s."""
        return tuple(hi - lo for lo, hi in self.box[:3])

    def source_bounds(self) -> Bounds:
        """The block of the volume read (first three axes)."""
        return self.grid.source_box(self.box, linear=self.linear)

    def apply(
        self,
        block: np.ndarray | Tensor,
        block_box: Bounds,
        out: np.ndarray | Tensor | None = None,
    ) -> np.ndarray | Tensor:
        """``block`` (the volume's ``block_box``) resampled to the voxels of :attr:`box`.

        A ``torch.Tensor`` block is resampled on its device (see :meth:`GridMap.resample`):

        >>> import numpy as np, torch
        >>> r = Resample(grid_map(np.eye(4), np.diag([2.0, 2.0, 2.0, 1.0]), (4, 4, 4)),
        ...              ((1, 3), (0, 1), (0, 1)), linear=True)
        >>> r.source_bounds()
        ((0, 3), (0, 2), (0, 2))
        >>> r.apply(torch.arange(3.0)[:, None, None].expand(3, 2, 2), r.source_bounds()).ravel()
        tensor([0.5000, 1.0000])
        """
        return self.grid.resample(block, self.box, block_box, linear=self.linear, out=out)


def grid_map(reference_affine: np.ndarray, affine: np.ndarray, shape: Sequence[int]) -> GridMap:
    """The :class:`GridMap` from a reference grid into a volume of ``affine`` and ``shape``.

    >>> import numpy as np
    >>> grid_map(np.eye(4), np.diag([1.0, 1.0, 2.0, 1.0]), (4, 4, 2)).matrix[2]
    (0.0, 0.0, 0.5, 0.0)
    """
    m = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(
        reference_affine, dtype=np.float64
    )
    return GridMap(
        tuple(tuple(float(v) for v in row) for row in m[:3]),
        (int(shape[0]), int(shape[1]), int(shape[2])),
    )


def same_grid(
    shape: Sequence[int], affine: np.ndarray, other_shape: Sequence[int], other: np.ndarray
) -> bool:
    """Whether two volumes share one grid: the same shape and affine (to 1e-3 mm).

    >>> import numpy as np
    >>> same_grid((4, 4, 2), np.eye(4), (4, 4, 2), np.eye(4) + 1e-6)
    True
    """
    return tuple(shape[:3]) == tuple(other_shape[:3]) and bool(
        np.allclose(np.asarray(affine), np.asarray(other), atol=_SAME_ATOL)
    )
