"""What stored voxels mean: a volume's logical dtype, and the scale and offset of its integers.

Scanner data are integers. A volume keeps them as integers on disk, in the narrowest type
that holds them (:func:`integer_plan`), with the scale and offset that turn them into the
values the source meant (NIfTI ``scl_slope``/``scl_inter``, DICOM RescaleSlope/Intercept).
The block cache and the local tier hold the stored integers (more volumes fit); a read
turns them into values at its last step (:meth:`Scaling.decode`), in the dtype asked for.

No voxel changes value: decoding repeats the arithmetic of the source's own float path,
``stored`` cast to the logical dtype, times ``scale`` unless it is 1, plus ``offset`` unless
it is 0, each step in the logical dtype (as nibabel's ``apply_read_scaling`` and
radiobject's DICOM reader compute). Floats that are not whole numbers, NaN and infinities
stay floats; values no integer type up to 32 bits holds are never clipped, they stay in
their own dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["META_DTYPE", "META_OFFSET", "META_SCALE", "ScaledVoxels", "Scaling", "integer_plan"]

# array metadata keys: the dtype reads return, and the scale and offset (absent: 1 and 0)
META_DTYPE, META_SCALE, META_OFFSET = "logical_dtype", "scale", "offset"

# the integer types a volume is stored in, narrowest first (int64 data that need more stay)
_INTEGERS: tuple[tuple[np.dtype, int, int], ...] = tuple(
    (np.dtype(t), int(np.iinfo(t).min), int(np.iinfo(t).max))
    for t in (np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32)
)
_CHUNK = 1 << 20  # voxels decoded at a time through a float64 scratch (to float32 outputs)


def native(dtype: np.dtype) -> np.dtype:
    """``dtype`` in native byte order, bool as uint8: how TileDB stores it.

    >>> native(np.dtype(">i2")), native(np.dtype(bool))
    (dtype('int16'), dtype('uint8'))
    """
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    return dtype.newbyteorder("=") if not dtype.isnative else dtype


@dataclass(frozen=True)
class Scaling:
    """How a volume's stored voxels become its values.

    Attributes:
        stored: the dtype on disk (and in the caches).
        logical: the dtype reads return by default (``Volume.dtype``).
        scale: multiplies the stored values (1: none), in the logical dtype.
        offset: added after the scale (0: none), in the logical dtype.

    >>> s = Scaling(np.dtype(np.int16), np.dtype(np.float64), scale=0.5, offset=-10.0)
    >>> s.decode(np.array([0, 3], np.int16))
    array([-10. ,  -8.5])
    >>> s.decode(np.array([0, 3], np.int16), np.float32).dtype
    dtype('float32')
    """

    stored: np.dtype
    logical: np.dtype
    scale: float = 1.0
    offset: float = 0.0

    @property
    def identity(self) -> bool:
        """Whether the values are the stored numbers themselves (only the dtype may differ)."""
        return self.scale == 1.0 and self.offset == 0.0

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], stored: np.dtype) -> Scaling:
        """The scaling recorded in an array's metadata (none recorded: the stored dtype)."""
        stored = np.dtype(stored)
        if META_DTYPE not in meta:  # a volume written before integer storage
            return cls(stored, stored)
        return cls(
            stored,
            np.dtype(str(meta[META_DTYPE])),
            float(meta.get(META_SCALE, 1.0)),
            float(meta.get(META_OFFSET, 0.0)),
        )

    def meta(self) -> dict[str, Any]:
        """The metadata :meth:`from_meta` reads back (scale and offset only when not 1, 0)."""
        out: dict[str, Any] = {META_DTYPE: self.logical.name}
        if not self.identity:
            out[META_SCALE], out[META_OFFSET] = self.scale, self.offset
        return out

    def decode(
        self,
        stored: np.ndarray,
        dtype: np.dtype | type | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """The values of ``stored`` voxels as ``dtype`` (default: the logical dtype).

        No copy beside the result: the cast and the scale are one pass into it, the offset is
        added in place (to another dtype than the logical one, through a small scratch slab
        by slab). With ``out`` (an array of ``stored``'s shape) the values are written there.
        Without it, an identity scaling to the stored dtype returns ``stored`` itself.
        """
        want = self.logical if dtype is None else np.dtype(dtype)
        if self.identity:
            if out is None:
                return stored.astype(want, copy=False)
            np.copyto(out, stored, casting="unsafe")
            return out
        if want == self.logical:
            target = out if out is not None else np.empty(stored.shape, want)
            self._scale_into(stored, target)
            return target
        # another dtype (float32 from a float64 source): through the logical dtype, a slab
        # at a time, so each voxel is rounded once, as casting the logical values would
        target = out if out is not None else np.empty(stored.shape, want)
        step = max(1, _CHUNK // max(1, int(np.prod(stored.shape[1:]))))
        for lo in range(0, max(1, stored.shape[0]), step):
            part = stored[lo : lo + step]
            scratch = np.empty(part.shape, self.logical)
            self._scale_into(part, scratch)
            np.copyto(target[lo : lo + step], scratch, casting="unsafe")
        return target

    def _scale_into(self, stored: np.ndarray, target: np.ndarray) -> None:
        kind = self.logical.type
        if self.scale != 1.0:
            np.multiply(stored, kind(self.scale), out=target, dtype=self.logical, casting="unsafe")
        else:
            np.copyto(target, stored, casting="unsafe")
        if self.offset != 0.0:
            np.add(target, kind(self.offset), out=target, dtype=self.logical, casting="unsafe")

    def encode(self, values: np.ndarray) -> np.ndarray | None:
        """``values`` as stored voxels, or None when they cannot be stored exactly.

        Floats must be whole and in the stored type's range (after the offset and scale are
        undone); nothing is clipped or rounded.

        >>> s = Scaling(np.dtype(np.uint8), np.dtype(np.float32))
        >>> s.encode(np.array([1.0, 255.0], np.float32)), s.encode(np.array([0.5]))
        (array([  1, 255], dtype=uint8), None)
        """
        values = np.asarray(values)
        if self.stored.kind not in "iu" or (
            self.identity and np.can_cast(values.dtype, self.stored, "safe")
        ):
            return values.astype(self.stored, copy=False)  # floats take any numbers, as ever
        numbers = values
        if not self.identity:
            numbers = np.round((values.astype(np.float64) - self.offset) / self.scale)
        if numbers.size and not _fits(numbers, self.stored):
            return None
        stored = numbers.astype(self.stored)
        return stored if np.array_equal(self.decode(stored), values) else None


def _fits(values: np.ndarray, dtype: np.dtype) -> bool:
    """Whether every value is a whole number within ``dtype``'s range (an integer type)."""
    info = np.iinfo(np.dtype(dtype).name)  # int64 and uint64 too (data wider than 32 bits)
    least, most = int(info.min), int(info.max)
    if values.dtype.kind in "iu":
        return bool(least <= values.min() and values.max() <= most)
    if not np.isfinite(values).all():
        return False
    in_range = least <= values.min() and values.max() <= most
    return bool(in_range and (values == np.trunc(values)).all())


def _narrowest(lo: int, hi: int) -> np.dtype | None:
    """The narrowest integer type of :data:`_INTEGERS` holding ``lo..hi``, or None."""
    for dtype, least, most in _INTEGERS:
        if least <= lo and hi <= most:
            return dtype
    return None


@dataclass(frozen=True, eq=False)
class ScaledVoxels:
    """Voxels as a file stores them: integers ``raw`` meaning ``raw * slope + inter``.

    The arithmetic happens in ``dtype`` (what the file's reader returns for them: nibabel
    gives float64 for scaled NIfTI, radiobject's DICOM reader float32), so :meth:`values`
    equals the reader's float path voxel for voxel. Loaders return one instead of an array
    to have the integers stored as they are (see :func:`integer_plan`).

    >>> v = ScaledVoxels(np.array([[[0, 2]]], np.int16), 0.5, -1.0, np.dtype(np.float32))
    >>> v.shape, v.values()
    ((1, 1, 2), array([[[-1.,  0.]]], dtype=float32))
    """

    raw: np.ndarray
    slope: float
    inter: float
    dtype: np.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the voxel grid."""
        return tuple(self.raw.shape)

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return int(self.raw.ndim)

    def scaling(self) -> Scaling:
        """The :class:`Scaling` of ``raw`` as stored (in its own dtype)."""
        dtype = np.dtype(self.dtype)
        kind = dtype.type
        return Scaling(
            native(self.raw.dtype), dtype, float(kind(self.slope)), float(kind(self.inter))
        )

    def values(self) -> np.ndarray:
        """The voxel values, as the file's reader computes them."""
        return self.scaling().decode(self.raw)


def integer_plan(
    voxels: np.ndarray | ScaledVoxels, integers: bool = True
) -> tuple[np.ndarray, Scaling]:
    """How to store ``voxels``: the stored array and its :class:`Scaling`.

    With ``integers`` (the default, ``WriteConfig.integers``): integer arrays are stored in the
    narrowest of uint8, int8, uint16, int16, uint32 and int32 that holds their values (wider
    data keep their dtype); float arrays whose values are all whole numbers that fit become
    integers too; other floats (fractions, NaN, infinities) keep their dtype. The logical
    dtype, which reads return, is the array's own (bool is stored and read as uint8).
    :class:`ScaledVoxels` keep their raw integers with the slope and intercept as scale and
    offset, or become plain integers when the slope is 1 and the intercept whole (a CT's
    -1024); their logical dtype is their reader's. Without ``integers``, arrays are stored
    as given and scaled voxels as their values.

    >>> stored, s = integer_plan(np.array([0.0, 200.0, 3.0], np.float32))
    >>> stored.dtype, s.logical
    (dtype('uint8'), dtype('float32'))
    >>> integer_plan(np.array([-1, 40000]))[0].dtype, integer_plan(np.array([0.5]))[0].dtype
    (dtype('int32'), dtype('float64'))
    >>> ct = ScaledVoxels(np.array([0, 3000], np.uint16), 1.0, -1024.0, np.dtype(np.float32))
    >>> integer_plan(ct)[0], integer_plan(ct)[1].identity
    (array([-1024,  1976], dtype=int16), True)
    """
    if isinstance(voxels, ScaledVoxels):
        return _plan_scaled(voxels, integers)
    array = np.asarray(voxels)
    dtype = native(array.dtype)
    plain = Scaling(dtype, dtype)
    if not integers or array.dtype == np.bool_ or array.size == 0 or dtype.kind not in "iuf":
        return array.astype(dtype, copy=False), plain
    if dtype.kind == "f" and not _fits(array, np.dtype(np.int32)):
        return array.astype(dtype, copy=False), plain
    narrow = _narrowest(int(array.min()), int(array.max()))
    if (
        narrow is None
        or narrow.itemsize > dtype.itemsize
        or (narrow.itemsize == dtype.itemsize and dtype.kind != "f")
    ):
        return array.astype(dtype, copy=False), plain
    return array.astype(narrow), Scaling(narrow, dtype)


def _plan_scaled(voxels: ScaledVoxels, integers: bool) -> tuple[np.ndarray, Scaling]:
    scaling = voxels.scaling()
    raw = voxels.raw
    if scaling.identity:  # no scaling: the raw values in the reader's dtype
        return integer_plan(raw.astype(scaling.logical, copy=False), integers)
    if not integers or raw.dtype.kind not in "iu" or scaling.logical.kind != "f" or not raw.size:
        return integer_plan(voxels.values(), integers)
    lo, hi = int(raw.min()), int(raw.max())
    exact = 2 ** (np.finfo(scaling.logical).nmant + 1)  # integers a float holds exactly
    offset = scaling.offset
    if (
        scaling.scale == 1.0
        and offset == int(offset)
        and max(abs(lo), abs(hi), abs(offset)) <= exact
        and (narrow := _narrowest(lo + int(offset), hi + int(offset))) is not None
    ):
        # one exact sum rounded once, like raw + offset in the reader's float dtype
        shifted = (raw.astype(np.int64) + int(offset)).astype(narrow)
        return shifted, Scaling(narrow, scaling.logical)
    narrow = _narrowest(lo, hi)
    stored = raw.astype(narrow) if narrow is not None and narrow.itemsize < raw.itemsize else raw
    stored = stored.astype(native(stored.dtype), copy=False)
    return stored, Scaling(stored.dtype, scaling.logical, scaling.scale, scaling.offset)
