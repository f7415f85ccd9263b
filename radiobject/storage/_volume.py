"""A single 3D or 4D volume stored as a dense TileDB array."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tiledb

from radiobject._context import get_tiledb_ctx, local_ctx, portable_ctx, unpickled_ctx
from radiobject._errors import (
    AlreadyExistsError,
    DtypeError,
    NotFoundError,
    OutOfBoundsError,
    RadiObjectError,
    ShapeError,
    StorageError,
    VersionError,
)
from radiobject._tiledb_errors import tiledb_errors
from radiobject.config import CompressionConfig, Compressor, TileConfig, get_config
from radiobject.read._region import ArrayInfo, forget_array, open_array, read_region
from radiobject.read._scaling import ScaledVoxels, Scaling, integer_plan, native
from radiobject.read._versioned import split_version, versioned
from radiobject.storage._foreground import compute_foreground, prepare_foreground, write_foreground
from radiobject.storage._group import group_meta, join
from radiobject.storage._history import now_ms
from radiobject.storage._layout import COLLECTION_KIND, FG_INDEX, VOLUMES

__all__ = [
    "ScaledVoxels",
    "Volume",
    "affine_orientation",
    "integer_plan",
    "spacing_from_affine",
    "storage_dtype",
]

_DIMS = ("x", "y", "z", "t")
ATTR = "v"


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the three axes of ``affine``.

    >>> spacing_from_affine(np.diag([1.0, 2.0, 3.0, 1.0]))
    (1.0, 2.0, 3.0)
    """
    x, y, z = (float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    return x, y, z


def affine_orientation(affine: np.ndarray) -> str:
    """Axis codes of ``affine`` in the RAS+ convention, e.g. ``"RAS"``.

    >>> affine_orientation(np.diag([-1.0, -1.0, 1.0, 1.0]))
    'LPS'
    """
    from nibabel.orientations import aff2axcodes

    return "".join(str(c) for c in aff2axcodes(np.asarray(affine)))


def storage_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a volume of ``dtype`` is stored as: bool as uint8, native byte order.

    ``WriteConfig.integers`` may store it narrower (:func:`integer_plan`); this is the dtype
    reads return.

    >>> storage_dtype(np.dtype(">i2")), storage_dtype(np.dtype(bool))
    (dtype('int16'), dtype('uint8'))
    """
    return native(dtype)


def _filters(compression: CompressionConfig, ctx: tiledb.Ctx) -> tiledb.FilterList:
    """Byte shuffle, then the codec: measured in :class:`radiobject.config.CompressionConfig`.

    Made in ``ctx``, as every TileDB object radiobject makes: without one, TileDB-Py builds
    its default context in the calling thread (its own thread pools; in the user's thread a
    later ``tiledb.default_ctx(config)`` would raise "Global context already initialized").
    """
    algo = compression.algorithm
    if algo is Compressor.NONE:
        return tiledb.FilterList([], ctx=ctx)
    codec = {
        Compressor.ZSTD: lambda: tiledb.ZstdFilter(level=compression.level, ctx=ctx),
        Compressor.LZ4: lambda: tiledb.LZ4Filter(ctx=ctx),
        Compressor.GZIP: lambda: tiledb.GzipFilter(level=compression.level, ctx=ctx),
    }[algo]()
    return tiledb.FilterList([tiledb.ByteShuffleFilter(ctx=ctx), codec], ctx=ctx)


def cell_order_for(extents: Sequence[int]) -> str:
    """TileDB cell order for tiles of ``extents``: column-major for one-voxel-thick axial tiles.

    TileDB copies a tile into the result in runs along the last axis of its cell order; an
    axial tile (X, Y, 1) in row-major order would be copied one voxel at a time (measured:
    1.1 ms of a 1.4 ms axial plane read), in column-major order in runs of X voxels.

    >>> cell_order_for((240, 240, 1)), cell_order_for((48, 48, 48))
    ('col-major', 'row-major')
    """
    thin_axial = len(extents) >= 3 and extents[2] == 1 and extents[0] > 1
    return "col-major" if thin_axial else "row-major"


def _put_meta(arr: tiledb.Array, metadata: dict[str, Any] | None) -> None:
    """Store ``metadata`` on an array open for writing (non-scalars as their ``str``)."""
    for key, value in (metadata or {}).items():
        arr.meta[key] = value if isinstance(value, (int, float, str)) else str(value)


class Volume:
    """One 3D ``(x, y, z)`` or 4D ``(x, y, z, t)`` volume in TileDB.

    Opening is lazy and cheap; ``shape``, ``affine`` and friends read metadata once per
    process; indexing reads only the tiles the region touches.

    >>> import numpy as np, tempfile, os
    >>> uri = os.path.join(tempfile.mkdtemp(), "vol")
    >>> vol = Volume.from_numpy(uri, np.arange(24, dtype=np.int16).reshape(2, 3, 4))
    >>> vol.shape, vol.orientation
    ((2, 3, 4), 'RAS')
    >>> vol[1, 2, 1:3]
    array([21, 22], dtype=int16)
    """

    def __init__(
        self, uri: str | Path, ctx: tiledb.Ctx | None = None, *, at: int | None = None
    ) -> None:
        base, stamp = split_version(str(uri))  # a versioned key names its version
        self.uri = base
        self._ctx = ctx
        self._at = at if at is not None else stamp  # TileDB timestamp (ms); None: newest
        self._fg_target: tuple[str, str] | None = None  # see _foreground_target
        self._fg_looked = False

    @property
    def at(self) -> int | None:
        """The version read (a TileDB timestamp in ms), or None for the newest."""
        return self._at

    @property
    def key(self) -> str:
        """The read path's name of this volume: its URI, versioned when opened at a version."""
        return versioned(self.uri, self._at)

    @property
    def ctx(self) -> tiledb.Ctx:
        """The TileDB context reads use (the process default unless one was given)."""
        return local_ctx(self._ctx)

    def __getstate__(self) -> dict[str, Any]:
        return {"uri": self.uri, "_ctx": portable_ctx(self._ctx), "_at": self._at}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"_at": None, **state}, _ctx=unpickled_ctx(state["_ctx"]))
        self._fg_target, self._fg_looked = None, False

    def __repr__(self) -> str:
        at = "" if self._at is None else f", at={self._at}"
        return f"Volume({self.uri!r}{at})"

    # -- metadata ------------------------------------------------------------------------
    @property
    def info(self) -> ArrayInfo:
        """Schema and metadata, read once per process."""
        return open_array(self.key, self.ctx)[1]

    @property
    def shape(self) -> tuple[int, ...]:
        """Voxel grid shape, ``(x, y, z)`` or ``(x, y, z, t)``."""
        return self.info.shape

    @property
    def ndim(self) -> int:
        """3 or 4."""
        return len(self.shape)

    @property
    def dtype(self) -> np.dtype:
        """Voxel data type: the dtype reads return (the array's given to ``from_numpy``)."""
        return self.info.values.logical

    @property
    def stored_dtype(self) -> np.dtype:
        """Data type on disk and in the caches (integers as narrow as their values allow).

        >>> import numpy as np, tempfile, os
        >>> vol = Volume.from_numpy(os.path.join(tempfile.mkdtemp(), "v"), np.ones((2, 2, 2)))
        >>> vol.dtype, vol.stored_dtype
        (dtype('float64'), dtype('uint8'))
        """
        return self.info.dtype

    @property
    def scaling(self) -> Scaling:
        """How stored voxels become values: logical dtype, scale and offset."""
        return self.info.values

    @property
    def tile_shape(self) -> tuple[int, ...]:
        """Tile extents on disk."""
        return self.info.tiles

    @property
    def affine(self) -> np.ndarray:
        """4x4 voxel-to-world (RAS+, mm) matrix."""
        return np.array(json.loads(self.info.meta["affine"]), dtype=np.float64)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along x, y, z."""
        return tuple(json.loads(self.info.meta["spacing"]))

    @property
    def orientation(self) -> str:
        """Axis codes such as ``"RAS"``."""
        return str(self.info.meta["orientation"])

    @property
    def metadata(self) -> dict[str, Any]:
        """All stored metadata (affine and spacing as JSON text)."""
        return dict(self.info.meta)

    # -- reads ---------------------------------------------------------------------------
    def _bounds(self, index: Any) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
        shape = self.shape
        if not isinstance(index, tuple):
            index = (index,)
        if any(i is Ellipsis for i in index):
            pos = index.index(Ellipsis)
            fill = (slice(None),) * (len(shape) - len(index) + 1)
            index = index[:pos] + fill + index[pos + 1 :]
        if len(index) > len(shape):
            raise OutOfBoundsError(
                f"too many indices ({len(index)}) for volume {self.uri!r} of shape {shape}"
            )
        index = index + (slice(None),) * (len(shape) - len(index))
        bounds, drop = [], []
        for axis, (i, n) in enumerate(zip(index, shape, strict=True)):
            if isinstance(i, slice):
                if i.step not in (None, 1):
                    raise ShapeError(f"volume slices take step 1 only, got step {i.step}")
                lo, hi, _ = i.indices(n)
                if (i.start is not None and not -n <= i.start <= n) or (
                    i.stop is not None and not -n <= i.stop <= n
                ):
                    raise OutOfBoundsError(
                        f"slice {i.start}:{i.stop} on axis {_DIMS[axis]} is out of bounds for "
                        f"volume {self.uri!r} of shape {shape}"
                    )
                if hi <= lo:
                    raise ShapeError(
                        f"empty slice {i.start}:{i.stop} on axis {_DIMS[axis]} of {self.uri!r}"
                    )
                bounds.append((lo, hi))
            elif isinstance(i, (int, np.integer)):
                j = int(i) + n if i < 0 else int(i)
                if not 0 <= j < n:
                    raise OutOfBoundsError(
                        f"index {int(i)} on axis {_DIMS[axis]} is out of bounds for volume "
                        f"{self.uri!r} of shape {shape} (valid: 0..{n - 1})"
                    )
                bounds.append((j, j + 1))
                drop.append(axis)
            else:
                raise ShapeError(f"volumes are indexed by ints and slices, got {i!r}")
        return tuple(bounds), tuple(drop)

    def __getitem__(self, index: Any) -> np.ndarray:
        bounds, drop = self._bounds(index)
        out = self.read(bounds)
        return out.squeeze(axis=drop) if drop else out

    def read(
        self, bounds: Sequence[tuple[int, int]], dtype: np.dtype | type | None = None
    ) -> np.ndarray:
        """Voxels in half-open ``bounds``, one ``(start, stop)`` per axis (no checks).

        As ``dtype`` (default :attr:`dtype`): the stored integers scaled and cast in one pass.
        """
        stored = read_region(self.key, self.ctx, tuple(bounds))
        return self.info.values.decode(stored, dtype)

    def to_numpy(self, dtype: np.dtype | type | None = None) -> np.ndarray:
        """The whole volume, as ``dtype`` (default :attr:`dtype`).

        >>> import numpy as np, tempfile, os
        >>> vol = Volume.from_numpy(os.path.join(tempfile.mkdtemp(), "v"), np.ones((2, 2, 2)))
        >>> vol.to_numpy().dtype, vol.to_numpy(np.float32).dtype
        (dtype('float64'), dtype('float32'))
        """
        return self.read(tuple((0, n) for n in self.shape), dtype)

    def axial(self, z: int) -> np.ndarray:
        """The axial plane at ``z``: shape ``(x, y)`` (``(x, y, t)`` for 4D)."""
        return self[:, :, z]

    def sagittal(self, x: int) -> np.ndarray:
        """The sagittal plane at ``x``: shape ``(y, z)``."""
        return self[x, :, :]

    def coronal(self, y: int) -> np.ndarray:
        """The coronal plane at ``y``: shape ``(x, z)``."""
        return self[:, y, :]

    def to_nifti(self, path: str | Path) -> Path:
        """Write the volume, with its affine, as a NIfTI file (``.nii`` or ``.nii.gz``)."""
        import nibabel as nib

        path = Path(path)
        img = nib.Nifti1Image(self.to_numpy(), self.affine)
        img.header.set_zooms(tuple(self.spacing) + tuple([1.0] * (self.ndim - 3)))
        nib.save(img, str(path))
        return path

    # -- writes --------------------------------------------------------------------------
    @classmethod
    def from_numpy(
        cls,
        uri: str | Path,
        array: np.ndarray | ScaledVoxels,
        *,
        affine: np.ndarray | None = None,
        spacing: Sequence[float] | None = None,
        metadata: dict[str, Any] | None = None,
        tile: TileConfig | None = None,
        compression: CompressionConfig | None = None,
        integers: bool | None = None,
        ctx: tiledb.Ctx | None = None,
    ) -> Volume:
        """Write ``array`` as a new volume at ``uri``.

        Reads return the values of ``array`` in its dtype; on disk, whole numbers are stored
        as integers as narrow as they allow (see :func:`integer_plan`).

        Args:
            uri: where to write; it must not exist.
            array: 3D or 4D voxels, or :class:`ScaledVoxels` (a file's integers and scale).
            affine: 4x4 voxel-to-world matrix (default: ``diag(spacing)``).
            spacing: voxel size in mm (default: from ``affine``, else 1 mm).
            metadata: extra key/value pairs stored with the array.
            tile: tile shape (default from ``configure(write=...)``).
            compression: codec (default from ``configure(write=...)``).
            integers: store whole numbers as integers (default ``WriteConfig.integers``).
            ctx: TileDB context.

        >>> import numpy as np, tempfile, os
        >>> ct = np.array([-1024.0, 0.0, 3071.0]).reshape(1, 1, 3)
        >>> vol = Volume.from_numpy(os.path.join(tempfile.mkdtemp(), "ct"), ct)
        >>> vol.stored_dtype, vol[0, 0, :]
        (dtype('int16'), array([-1024.,     0.,  3071.]))
        """
        voxels = array if isinstance(array, ScaledVoxels) else np.asarray(array)
        if voxels.ndim not in (3, 4) or 0 in voxels.shape:
            raise ShapeError(
                f"a volume must be a non-empty 3D or 4D array, got shape {voxels.shape} for {uri!r}"
            )
        if np.dtype(voxels.dtype).kind not in "biuf":
            raise ShapeError(f"volume voxels must be numeric, got dtype {voxels.dtype} for {uri!r}")
        if integers is None:
            integers = get_config().write.integers
        stored, scaling = integer_plan(voxels, integers)
        vol = cls._create(uri, stored.shape, scaling, affine, spacing, None, tile, compression, ctx)
        # the caller's metadata lands after the voxels: a volume holding it is whole (ingest
        # takes its obs_id as the mark of a finished volume)
        vol._write(tuple((0, n) for n in stored.shape), stored, metadata)
        return vol

    @classmethod
    def create(
        cls,
        uri: str | Path,
        shape: Sequence[int],
        dtype: np.dtype | type,
        *,
        affine: np.ndarray | None = None,
        spacing: Sequence[float] | None = None,
        metadata: dict[str, Any] | None = None,
        tile: TileConfig | None = None,
        compression: CompressionConfig | None = None,
        ctx: tiledb.Ctx | None = None,
    ) -> Volume:
        """Create an empty volume at ``uri`` to fill region by region (:meth:`write_region`).

        Arguments are those of :meth:`from_numpy`, with the ``shape`` and ``dtype`` of the
        voxels to come.

        >>> import numpy as np, tempfile, os
        >>> vol = Volume.create(os.path.join(tempfile.mkdtemp(), "v"), (2, 3, 4), np.uint8)
        >>> vol.write_region(((0, 2), (0, 3), (2, 4)), np.ones((2, 3, 2), np.uint8))
        >>> int(vol.to_numpy().sum()), vol.shape
        (12, (2, 3, 4))
        """
        dtype = np.dtype(dtype)
        if dtype.kind not in "biuf":
            raise ShapeError(f"volume voxels must be numeric, got dtype {dtype} for {uri!r}")
        scaling = Scaling(storage_dtype(dtype), storage_dtype(dtype))
        return cls._create(uri, shape, scaling, affine, spacing, metadata, tile, compression, ctx)

    @classmethod
    def _create(
        cls,
        uri: str | Path,
        shape: Sequence[int],
        scaling: Scaling,
        affine: np.ndarray | None,
        spacing: Sequence[float] | None,
        metadata: dict[str, Any] | None,
        tile: TileConfig | None,
        compression: CompressionConfig | None,
        ctx: tiledb.Ctx | None,
    ) -> Volume:
        uri = str(uri)
        given, ctx = ctx, ctx or get_tiledb_ctx()
        shape = tuple(int(n) for n in shape)
        if len(shape) not in (3, 4) or min(shape) < 1:
            raise ShapeError(f"a volume must be a non-empty 3D or 4D grid, got {shape} for {uri!r}")
        dtype = scaling.stored
        if affine is None:
            sp = tuple(float(s) for s in (spacing or (1.0, 1.0, 1.0)))
            affine = np.diag([*sp, 1.0])
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ShapeError(f"affine must be 4x4, got shape {affine.shape} for {uri!r}")
        spacing = tuple(float(s) for s in spacing) if spacing else spacing_from_affine(affine)
        write = get_config().write
        tile = tile or write.tile
        compression = compression or write.compression
        with tiledb_errors(uri, "write volume"):
            if tiledb.object_type(uri, ctx=ctx) is not None:
                raise AlreadyExistsError(f"{uri!r} already exists; remove it or write to a new URI")
            extents = tile.extents_for(shape)
            dims = [
                tiledb.Dim(
                    name=_DIMS[i], domain=(0, n - 1), tile=extents[i], dtype=np.int32, ctx=ctx
                )
                for i, n in enumerate(shape)
            ]
            schema = tiledb.ArraySchema(
                domain=tiledb.Domain(*dims, ctx=ctx),
                # voxels never written read as 0 (TileDB's default fill is the dtype's maximum)
                attrs=[
                    tiledb.Attr(
                        ATTR, dtype=dtype, filters=_filters(compression, ctx), fill=0, ctx=ctx
                    )
                ],
                sparse=False,
                cell_order=cell_order_for(extents),
                tile_order="row-major",
                ctx=ctx,
            )
            tiledb.Array.create(uri, schema, ctx=ctx)
            with tiledb.open(uri, mode="w", ctx=ctx) as arr:
                arr.meta["affine"] = json.dumps(affine.tolist())
                arr.meta["spacing"] = json.dumps(list(spacing))
                arr.meta["orientation"] = affine_orientation(affine)
                _put_meta(arr, scaling.meta())
                _put_meta(arr, metadata)
        return cls(uri, ctx=given)  # no context given: follow configure()

    def write_region(
        self,
        bounds: Sequence[tuple[int, int]],
        data: np.ndarray,
        *,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Write ``data`` into the half-open box ``bounds`` (one ``(start, stop)`` per axis).

        Each call is one TileDB write (one fragment); regions written later win where they
        overlap. ``metadata`` is stored with the write and committed after the voxels, so a
        reader that sees it also sees them. Reads in this process see the new voxels at once
        (its handles and cached blocks of the volume are dropped); other processes that opened
        the volume before see them after ``radiobject.read.forget_array(uri)``. The write is a
        new version: a read at an earlier one (``RadiObject(uri, at=...)``) still sees the
        voxels as they were.

        On a volume of a collection with a foreground index (a mask collection, e.g. a
        segmentation corrected by hand), the call also writes the volume's new entry of the
        collection's foreground index, computed from
        its voxels after the write (one whole-volume read), at the timestamp of the voxels:
        foreground sampling then centres patches on the new foreground, and a read at any
        version gets the index of the masks of that version.

        Raises:
            ShapeError: ``data`` does not have the shape of ``bounds``.
            DtypeError: the volume stores integers and ``data`` holds values they cannot
                hold exactly (fractions, NaN, out of range): nothing is clipped or rounded.
            StorageError: the voxels of a mask were written, its index entry was not.
        """
        bounds = tuple((int(lo), int(hi)) for lo, hi in bounds)
        want = tuple(hi - lo for lo, hi in bounds)
        data = np.asarray(data)
        if data.shape != want:
            raise ShapeError(
                f"region {bounds} of {self.uri!r} needs data of shape {want}, got {data.shape}"
            )
        self._check_writable()
        scaling = self._scaling_on_disk()
        stored = scaling.encode(data)
        if stored is None:
            raise DtypeError(
                f"volume {self.uri!r} stores its voxels as {scaling.stored} (values "
                f"{scaling.logical}, scale {scaling.scale:g}, offset {scaling.offset:g}); the "
                f"{data.dtype} data for region {bounds} hold values it cannot store exactly. "
                "Write a new volume with Volume.from_numpy (integers=False keeps floats)"
            )
        index = self._foreground_target()
        if index is None:
            self._write(bounds, stored, metadata)
            forget_array(self.uri)
            return
        # a volume of an indexed collection: its entry is written at the voxels' timestamp
        index_uri, oid = index
        carried = prepare_foreground(index_uri, self.ctx)  # exists before the timestamp
        stamp = now_ms()
        self._write(bounds, stored, metadata, at=stamp)
        forget_array(self.uri)
        try:
            entry = compute_foreground(self.to_numpy())
            write_foreground(index_uri, {**carried, oid: entry}, self.ctx, at=stamp)
        except RadiObjectError as e:
            raise StorageError(
                f"the voxels of {self.uri!r} were written but its foreground index entry in "
                f"{index_uri!r} was not ({e}); write the region again to index the new mask"
            ) from e

    def _foreground_target(self) -> tuple[str, str] | None:
        """``(index uri, obs_id)`` when this is a volume of an indexed collection, else None.

        A mask collection, or another whose foreground was indexed on first use (used as the
        mask of a segmentation loader). Known from the layout (``<collection>/volumes/<n>``),
        the collection's ``is_mask`` flag or index and the volume's ``obs_id``; looked up once
        per Volume object.
        """
        if not self._fg_looked:
            self._fg_looked = True
            parts = self.uri.rstrip("/").rsplit("/", 2)
            if len(parts) != 3 or parts[1] != VOLUMES:
                return None
            try:
                meta = group_meta(parts[0], COLLECTION_KIND, self.ctx)
            except NotFoundError:  # a volume outside a collection
                return None
            index = join(parts[0], FG_INDEX)
            with tiledb_errors(index, "look for the foreground index"):
                found = tiledb.object_type(index, ctx=self.ctx)
            indexed = bool(meta.get("is_mask")) or found is not None
            oid = self.info.meta.get("obs_id") if indexed else None
            if oid is not None:
                self._fg_target = (index, str(oid))
        return self._fg_target

    def _check_writable(self) -> None:
        if self._at is not None:
            raise VersionError(
                f"volume {self.uri!r} is open at version {self._at}, read-only; open the "
                "cohort at the newest version (no at=) to write"
            )

    def _scaling_on_disk(self) -> Scaling:
        """The volume's scaling, read now (a handle this process keeps may predate it)."""
        with tiledb_errors(self.uri, "open volume"), tiledb.open(self.uri, ctx=self.ctx) as arr:
            stored = np.dtype(arr.schema.attr(0).dtype)
            return Scaling.from_meta({k: arr.meta[k] for k in arr.meta}, stored)

    def _write(
        self,
        bounds: tuple[tuple[int, int], ...],
        stored: np.ndarray,
        metadata: dict[str, Any] | None,
        at: int | None = None,
    ) -> None:
        """Write voxels already in the stored dtype (one TileDB write, at ``at``: default now)."""
        self._check_writable()
        with (
            tiledb_errors(self.uri, "write volume region"),
            tiledb.open(self.uri, mode="w", ctx=self.ctx, timestamp=at) as arr,
        ):
            dtype = np.dtype(arr.schema.attr(0).dtype)
            box = tuple(slice(lo, hi) for lo, hi in bounds)
            arr[box] = np.ascontiguousarray(stored.astype(dtype, copy=False))
            _put_meta(arr, metadata)
