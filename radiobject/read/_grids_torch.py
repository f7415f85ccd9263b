"""Resampling on a tensor's device: :meth:`~radiobject.read.GridMap.resample` of a tensor.

A block given as a ``torch.Tensor`` (on a GPU, ``mps`` or the CPU) is resampled with torch
operations on its device, to the values of the numpy routes of
:mod:`radiobject.read._grids`: each volume axis' coordinates are computed in float64 from the
same terms, with the same operations in the same order (so nearest neighbour picks the same
voxels, ties going to the even one), clamped to the volume's border and then to the block;
trilinear gathers a point's eight neighbours and blends them in float32 (float64 for a
float64 block), to within float32 rounding of the numpy routes.

This module never imports torch: a tensor exists only once its caller imported torch, and
the torch that made it is taken from ``sys.modules`` (the core stays free of torch).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from radiobject._errors import ShapeError

Bounds = tuple[tuple[int, int], ...]
Tensor = Any  # a torch.Tensor; typed loosely, since the core never imports torch up front


def is_tensor(value: object) -> bool:
    """Whether ``value`` is a ``torch.Tensor`` (no tensor exists before torch is imported).

    >>> import numpy as np
    >>> is_tensor(np.zeros(3))
    False
    """
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _torch() -> Any:
    """The torch module, imported already by whoever made the tensor at hand."""
    return sys.modules["torch"]


def coordinate_terms(
    axes: tuple[int, int, int] | None, tilt: tuple[int, int] | None
) -> list[tuple[int, ...]]:
    """Per volume axis, the reference axes its coordinate sums, as the numpy routes sum them.

    Axis-aligned grids (``axes``): one reference axis per volume axis. Grids rotated about
    one shared axis (``tilt``): the shared axis, and the two others of the plane for the
    volume's other two axes. Any other grids: all three.

    >>> coordinate_terms(None, (2, 2))
    [(0, 1), (0, 1), (2,)]
    """
    if axes is not None:
        return [(axes.index(a),) for a in range(3)]
    if tilt is not None:
        axis, ref = tilt
        plane = tuple(r for r in range(3) if r != ref)
        return [(ref,) if a == axis else plane for a in range(3)]
    return [(0, 1, 2)] * 3


def resample_tensor(
    matrix: np.ndarray,
    shape: Sequence[int],
    terms: Sequence[tuple[int, ...]],
    block: Tensor,
    box: Bounds,
    block_box: Bounds,
    linear: bool,
) -> Tensor:
    """``block`` (a tensor: the volume's ``block_box``) resampled to ``box``, on its device.

    ``matrix`` (3x4) maps reference voxel indices to the volume's (of ``shape``), each
    volume axis summing the reference axes of ``terms`` (:func:`coordinate_terms`). Axes of
    ``block`` after the first three (e.g. time) are carried along as channels. The result
    has ``block``'s dtype for nearest neighbour; for ``linear``, float64 for a float64
    block, else float32.
    """
    torch = _torch()
    device = block.device
    # float64 coordinates where the device has float64 (mps has none: the CPU computes them)
    where = torch.device("cpu") if device.type == "mps" else device
    size = tuple(int(n) for n in block.shape[:3])
    tail = tuple(int(n) for n in block.shape[3:])
    span = tuple(hi - lo for lo, hi in box[:3])
    # the reference indices along each axis, shaped to broadcast over the box
    index = [
        torch.arange(lo, hi, dtype=torch.float64, device=where).reshape(
            [-1 if r == a else 1 for r in range(3)]
        )
        for a, (lo, hi) in enumerate(box[:3])
    ]
    work = torch.float64 if block.dtype == torch.float64 else torch.float32
    flat = block.reshape(math.prod(size), math.prod(tail))
    strides = (size[1] * size[2], size[2], 1)
    low: list[Tensor] = []
    frac: list[Tensor] = []
    for axis in range(3):
        coords = _coords(matrix, axis, terms[axis], index)
        # border padding as the numpy routes' ``_local``: clamped to the volume, then the block
        coords = coords.clamp(0, int(shape[axis]) - 1) - block_box[axis][0]
        coords = coords.clamp(0, size[axis] - 1)
        if not linear:
            low.append(torch.round(coords).long().to(device))  # half to even, as np.rint
            continue
        start = torch.floor(coords).clamp(max=max(size[axis] - 2, 0))
        frac.append((coords - start).to(device=device, dtype=work)[..., None])
        low.append(start.long().to(device))
    flat_index = (low[0] * strides[0] + low[1] * strides[1] + low[2]).expand(*span)
    if not linear:
        picked: Tensor = flat[flat_index].reshape(*span, *tail)
        return picked
    data = flat.to(work)
    up = [strides[a] if size[a] > 1 else 0 for a in range(3)]

    def blend(a: Tensor, b: Tensor, f: Tensor) -> Tensor:
        return a + (b - a) * f

    # the four pairs (z, z+1) at (x, y), (x, y+1), (x+1, y), (x+1, y+1), then y, then x
    along = [
        blend(data[flat_index + o], data[flat_index + o + up[2]], frac[2])
        for o in (0, up[1], up[0], up[0] + up[1])
    ]
    near = blend(along[0], along[1], frac[1])
    far = blend(along[2], along[3], frac[1])
    out: Tensor = blend(near, far, frac[0]).reshape(*span, *tail)
    return out


def _coords(
    matrix: np.ndarray, axis: int, terms: tuple[int, ...], index: Sequence[Tensor]
) -> Tensor:
    """The volume's ``axis`` coordinates over the box, as :meth:`GridMap.coords` sums them.

    Left to right over the reference axes of ``terms``, then the offset: the float64
    operations of the numpy routes, in their order, so the same values.
    """
    total: Tensor = None
    for ref in terms:
        term = float(matrix[axis, ref]) * index[ref]
        total = term if total is None else total + term
    return total + float(matrix[axis, 3])


def write_into(out: Any, result: Any) -> Any:
    """``result`` (an array or a tensor) written into ``out`` (either, any device); ``out``.

    ``out`` must have the result's shape; its dtype is kept (values are cast to it).
    """
    if tuple(out.shape) != tuple(result.shape):
        raise ShapeError(
            f"out has shape {tuple(out.shape)}, the resampled box {tuple(result.shape)}; "
            "pass an out of the box's shape (its first three axes, then the block's others)"
        )
    if is_tensor(out):
        torch = _torch()
        if not is_tensor(result):
            result = torch.from_numpy(np.ascontiguousarray(result))
        out.copy_(result)
    elif is_tensor(result):
        out[...] = result.detach().cpu().numpy()
    else:
        out[...] = result
    return out
