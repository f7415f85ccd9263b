"""The coarse level of a volume: a small downsampled copy a viewer shows before the real voxels.

Like OME-Zarr's multiscale levels, a volume may have a copy ``factor`` times smaller along
x, y and z (a 4D volume keeps its time axis): block means for images, the voxel at each
block's centre for masks (labels are never blended into labels that do not exist). It is a
dense array stored beside the volumes of its collection (``coarse/00003`` for
``volumes/00003``, see :mod:`radiobject.storage._layout`), one tile, read in one query.

A coarse array is whole once its metadata ``source_key`` is set, after its voxels; the key
names the source volume's committed fragments (:func:`radiobject.read._local_tier.fragment_key`),
so a level cut short, or one of a volume written again since, is never shown: it is built
again from the volume.

>>> import numpy as np
>>> downsample(np.arange(8, dtype=np.int16).reshape(2, 2, 2), 2, MEAN)[..., 0]
array([[3.5]])
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

import numpy as np
import tiledb

from radiobject._errors import ConfigurationError, RadiObjectError, ShapeError
from radiobject._tiledb_errors import tiledb_errors
from radiobject.config import TileConfig
from radiobject.read._local_tier import fragment_key
from radiobject.read._scaling import Scaling
from radiobject.storage._group import remove
from radiobject.storage._volume import ATTR, Volume

__all__ = [
    "DEFAULT_FACTOR",
    "MEAN",
    "STRIDE",
    "CoarseLevel",
    "coarse_method",
    "build_coarse",
    "downsample",
    "level_voxels",
    "read_coarse",
    "stored_coarse",
    "write_coarse",
]

MEAN = "mean"  # images: the mean of each block
STRIDE = "stride"  # masks: the voxel at the centre of each block
DEFAULT_FACTOR = 4
SOURCE_KEY = "source_key"  # metadata written last: the level is whole


def coarse_method(is_mask: bool) -> str:
    """How a volume is downsampled: ``"stride"`` for masks, ``"mean"`` for images.

    >>> coarse_method(True), coarse_method(False)
    ('stride', 'mean')
    """
    return STRIDE if is_mask else MEAN


def _check_factor(factor: int) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 2:
        raise ConfigurationError(f"a coarse level's factor must be an integer >= 2, got {factor!r}")
    return int(factor)


def downsample(values: np.ndarray, factor: int, method: str) -> np.ndarray:
    """``values`` ``factor`` times smaller along x, y and z (ceil); a 4D time axis is kept.

    ``"mean"`` averages each block (the last block of an axis holds what is left) into
    float64; ``"stride"`` keeps the voxel at each block's centre, in ``values``' dtype. Works
    a few z planes at a time, so a large volume never has a float copy in memory.

    >>> m = np.zeros((5, 4, 4), np.uint8); m[2, 2, 2] = 7
    >>> downsample(m, 4, STRIDE)[:, :, 0].tolist()
    [[7], [0]]
    """
    f = _check_factor(factor)
    if values.ndim not in (3, 4):
        raise ShapeError(f"a coarse level is made of a 3D or 4D volume, got shape {values.shape}")
    shape = values.shape
    out_shape = tuple(-(-n // f) for n in shape[:3]) + tuple(shape[3:])
    if method == STRIDE:
        x, y, z = (
            np.minimum(np.arange(m) * f + f // 2, n - 1)
            for m, n in zip(out_shape[:3], shape[:3], strict=True)
        )
        return np.ascontiguousarray(values[x][:, y][:, :, z])
    if method != MEAN:
        raise ConfigurationError(
            f"a coarse level's method is {MEAN!r} or {STRIDE!r}, got {method!r}"
        )
    out = np.empty(out_shape, dtype=np.float64)
    # x blocks one at a time (contiguous); in each, whole planes are added (fast, vectorised)
    # before the short runs along z, which then touch 1/f² of the voxels
    y_starts, z_starts = np.arange(0, shape[1], f), np.arange(0, shape[2], f)
    y_counts = np.diff(np.r_[y_starts, shape[1]]).astype(np.float64)
    z_counts = np.diff(np.r_[z_starts, shape[2]]).astype(np.float64)
    area = np.multiply.outer(y_counts, z_counts)
    if values.ndim == 4:
        area = area[..., None]
    for i in range(out_shape[0]):
        block = values[i * f : (i + 1) * f]
        sums = block.sum(axis=0, dtype=np.float64)  # (y, z[, t])
        sums = np.add.reduceat(np.add.reduceat(sums, y_starts, axis=0), z_starts, axis=1)
        out[i] = sums / (area * block.shape[0])
    return out


def level_voxels(
    values: np.ndarray,
    factor: int,
    method: str,
    scaling: Scaling,
    slope: float = 1.0,
    inter: float = 0.0,
) -> np.ndarray:
    """The coarse level of ``values`` as a volume of ``scaling`` stores it.

    ``values * slope + inter`` are the volume's values (a scaled file's integers, or the
    stored integers themselves with the volume's scale and offset); block means are rounded
    to the nearest value the stored dtype holds.

    >>> s = Scaling(np.dtype(np.int16), np.dtype(np.float64))
    >>> level_voxels(np.arange(8.0).reshape(2, 2, 2), 2, MEAN, s)[..., 0]
    array([[4]], dtype=int16)
    """
    small = downsample(values, factor, method)
    if slope != 1.0 or inter != 0.0:
        small = small * slope + inter
    stored = scaling.stored
    if stored.kind not in "biu":
        return small.astype(stored)
    encoded = np.rint((np.asarray(small, np.float64) - scaling.offset) / scaling.scale)
    info = np.iinfo(stored)
    return np.clip(encoded, info.min, info.max).astype(stored)


@dataclass(frozen=True)
class CoarseLevel:
    """A volume's coarse level in memory: its values (as the volume's reads return them).

    Args:
        voxels: the downsampled values, ``factor`` times smaller along x, y and z.
        factor: downsampling factor per axis.
        method: ``"mean"`` (images) or ``"stride"`` (masks).
        saved: whether it is stored (``False``: built now and kept in memory only).

    >>> level = CoarseLevel(np.zeros((2, 2, 1)), 4, MEAN, saved=True)
    >>> level.name, level.index(9, axis=0)
    ('level 1 (4x)', 1)
    """

    voxels: np.ndarray
    factor: int
    method: str
    saved: bool

    @classmethod
    def decode(
        cls, stored: np.ndarray, scaling: Scaling, factor: int, method: str, saved: bool
    ) -> CoarseLevel:
        """A level from its stored voxels (float values as float32: what a viewer draws)."""
        voxels = scaling.decode(stored, np.float32 if scaling.logical.kind == "f" else None)
        return cls(voxels, int(factor), str(method), saved)

    @property
    def name(self) -> str:
        """How a readout names it, e.g. ``"level 1 (4x)"``."""
        return f"level 1 ({self.factor}x)"

    def index(self, full_index: int, axis: int) -> int:
        """The coarse index holding full-resolution index ``full_index`` along ``axis``."""
        return min(int(full_index) // self.factor, int(self.voxels.shape[axis]) - 1)


def _affine(volume: Volume, factor: int, method: str) -> np.ndarray:
    """Voxel-to-world of the level: coarse voxel i sits at the centre of its block."""
    centre = (factor - 1) / 2 if method == MEAN else factor // 2
    scale = np.diag([float(factor)] * 3 + [1.0])
    scale[:3, 3] = centre
    return volume.affine @ scale


def write_coarse(
    uri: str, volume: Volume, stored: np.ndarray, factor: int, method: str, ctx: tiledb.Ctx
) -> Volume:
    """Store ``stored`` (made by :func:`level_voxels` for ``volume``) as its level at ``uri``.

    Anything at ``uri`` is replaced; the metadata that makes the level whole is written last,
    and a failed write removes what it left.

    Raises:
        StorageError: the write failed (a read-only store, S3 refusing it).
    """
    key = fragment_key(volume.uri, ctx)
    remove(uri, ctx)
    try:
        level = Volume._create(
            uri,
            stored.shape,
            volume.scaling,
            _affine(volume, factor, method),
            None,
            None,
            TileConfig(extents=tuple(stored.shape)),  # one tile: read in one go
            None,
            ctx,
        )
        meta = {
            "coarse_factor": int(factor),
            "coarse_method": method,
            "source_shape": json.dumps(list(volume.shape)),
            SOURCE_KEY: key,
        }
        level._write(tuple((0, n) for n in stored.shape), stored, meta)
    except BaseException:
        with contextlib.suppress(RadiObjectError):  # keep the write's error, not the cleanup's
            remove(uri, ctx)
        raise
    return level


def stored_coarse(uri: str, volume: Volume, method: str, ctx: tiledb.Ctx) -> Volume | None:
    """The level stored at ``uri`` when it is whole, of ``method`` and of ``volume`` as it is now.

    ``None`` when there is none, it was cut short, or the volume was written since. For a
    volume read at a version, the level must be of the volume as it was at that version.
    """
    with tiledb_errors(uri, "open coarse level"):
        if tiledb.object_type(uri, ctx=ctx) != "array":
            return None
    try:
        with tiledb.open(uri, ctx=ctx) as arr:
            meta = {k: arr.meta[k] for k in arr.meta}
    except tiledb.TileDBError:  # created by a writer stopped before its schema landed
        return None
    if meta.get("coarse_method") != method or SOURCE_KEY not in meta:
        return None
    if meta[SOURCE_KEY] != fragment_key(volume.key, ctx):
        return None
    return Volume(uri, ctx=volume._ctx)


def build_coarse(volume: Volume, factor: int, method: str) -> np.ndarray:
    """The level of a stored volume, made from its stored voxels (one whole-volume query)."""
    # a handle of its own: one this process keeps may predate the write being caught up on
    when = None if volume.at is None else (0, volume.at)
    with (
        tiledb_errors(volume.uri, "read volume"),
        tiledb.open(volume.uri, ctx=volume.ctx, timestamp=when) as arr,
    ):
        stored = arr[:][ATTR]
        scaling = Scaling.from_meta(
            {k: arr.meta[k] for k in arr.meta}, np.dtype(arr.schema.attr(0).dtype)
        )
    return level_voxels(stored, factor, method, Scaling(scaling.stored, scaling.stored))


def read_coarse(level: Volume) -> CoarseLevel:
    """A stored level's values, in one query (not through the block cache: it is read once)."""
    with (
        tiledb_errors(level.uri, "read coarse level"),
        tiledb.open(level.uri, ctx=level.ctx) as arr,
    ):
        stored = arr[:][ATTR]
        meta = {k: arr.meta[k] for k in arr.meta}
        scaling = Scaling.from_meta(meta, np.dtype(arr.schema.attr(0).dtype))
    return CoarseLevel.decode(stored, scaling, meta["coarse_factor"], meta["coarse_method"], True)
