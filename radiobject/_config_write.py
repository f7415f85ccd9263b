"""How new volumes are written: tile shapes, compression, integers, coarse levels."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from radiobject._config_checks import Checked, check_int, coerce_enum
from radiobject._errors import ConfigurationError

__all__ = ["CompressionConfig", "Compressor", "SliceOrientation", "TileConfig", "WriteConfig"]


class SliceOrientation(str, enum.Enum):
    """How a volume is cut into tiles on disk.

    ``AXIAL`` tiles are whole (x, y) planes, one z deep: an axial slice is one tile.
    ``ISOTROPIC`` tiles are cubes: best for 3D patches.

    >>> from radiobject import SliceOrientation, TileConfig
    >>> [o.value for o in SliceOrientation]
    ['axial', 'sagittal', 'coronal', 'isotropic']
    >>> TileConfig(orientation=SliceOrientation.AXIAL).extents_for((240, 240, 155))
    (240, 240, 1)
    >>> TileConfig(orientation="sagittal").orientation  # names are accepted too
    <SliceOrientation.SAGITTAL: 'sagittal'>
    """

    AXIAL = "axial"
    SAGITTAL = "sagittal"
    CORONAL = "coronal"
    ISOTROPIC = "isotropic"


class Compressor(str, enum.Enum):
    """Compression applied to voxel tiles (after a byte shuffle).

    >>> from radiobject import CompressionConfig, Compressor
    >>> [c.value for c in Compressor]
    ['zstd', 'lz4', 'gzip', 'none']
    >>> CompressionConfig(algorithm="lz4").algorithm
    <Compressor.LZ4: 'lz4'>
    """

    ZSTD = "zstd"
    LZ4 = "lz4"
    GZIP = "gzip"
    NONE = "none"


@dataclass(frozen=True)
class TileConfig(Checked):
    """Tile shape of new volumes.

    Args:
        orientation: cut planes along one axis, or cubes (``ISOTROPIC``).
        extents: explicit tile extents per axis (overrides ``orientation``); a value larger
            than the volume is clipped to it.
        isotropic_extent: the longest tile edge for ``ISOTROPIC`` tiles: each axis is cut
            into the fewest equal tiles no longer than it, so no tile is padded far past the
            volume (240x240x155 with 48: 48x48x39, 5 x 5 x 4 tiles; plain 48³ tiles would
            decode 24% padding along z). Chosen by ``benchmarks/layout.py`` on BraTS-size
            volumes of whole numbers stored as int16 (one run, 2 loaded cores; CPU ms per
            random 64³ patch, cache off / per whole volume / disk against the float32
            ``.nii.gz``): 48 even 2.25 / 17.3 / 0.59; 48³ padded 2.23 / 18.0 / 0.60; 32³
            2.47 / 27.5 / 0.58; 64³ 2.65 / 16.1 / 0.61; 64 even (60x60x52) 2.39 / 14.9 /
            0.59. Paired whole-process runs of 800 patches: 48 even took 0.97x the CPU of
            48³, 1.03x of 32³ and 0.84x of 64 even. TileDB pays per tile and per run of
            cells it copies, which outweighs the voxels a 48 tile decodes in vain: 32³ wins
            nothing on patches and reads whole volumes 1.6x slower. On float32 the same
            order holds for whole volumes; 32³ patches cost 0.91x of 48 even.

    >>> import os, tempfile
    >>> import numpy as np
    >>> from radiobject import TileConfig, Volume
    >>> uri = os.path.join(tempfile.mkdtemp(), "vol")
    >>> vol = Volume.from_numpy(uri, np.zeros((64, 64, 40)), tile=TileConfig(isotropic_extent=32))
    >>> vol.tile_shape  # 2 x 2 x 2 tiles
    (32, 32, 20)
    """

    orientation: SliceOrientation = SliceOrientation.ISOTROPIC
    extents: tuple[int, ...] | None = None
    isotropic_extent: int = 48

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "orientation",
            coerce_enum("TileConfig", "orientation", self.orientation, SliceOrientation),
        )
        check_int("TileConfig", "isotropic_extent", self.isotropic_extent, 1)
        if self.extents is not None:
            ext = tuple(self.extents)
            if len(ext) not in (3, 4):
                raise ConfigurationError(
                    f"TileConfig.extents must have 3 or 4 values (x, y, z[, t]), got {ext!r}"
                )
            for i, e in enumerate(ext):
                check_int("TileConfig", f"extents[{i}]", e, 1)
            object.__setattr__(self, "extents", ext)

    def extents_for(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Tile extents for a volume of ``shape``.

        >>> TileConfig(orientation=SliceOrientation.AXIAL).extents_for((240, 240, 155))
        (240, 240, 1)
        >>> TileConfig().extents_for((240, 240, 155))  # 5 x 5 x 4 tiles, none padded
        (48, 48, 39)
        >>> TileConfig().extents_for((32, 32, 20))
        (32, 32, 20)
        """
        spatial = shape[:3]
        if self.extents is not None:
            ext = list(self.extents[:3])
        elif self.orientation is SliceOrientation.AXIAL:
            ext = [spatial[0], spatial[1], 1]
        elif self.orientation is SliceOrientation.SAGITTAL:
            ext = [1, spatial[1], spatial[2]]
        elif self.orientation is SliceOrientation.CORONAL:
            ext = [spatial[0], 1, spatial[2]]
        else:  # the fewest equal tiles no longer than the edge: none padded past the volume
            edge = self.isotropic_extent
            ext = [-(-n // -(-n // edge)) for n in spatial]
        ext = [max(1, min(e, s)) for e, s in zip(ext, spatial, strict=True)]
        if len(shape) == 4:
            t_ext = self.extents[3] if self.extents is not None and len(self.extents) == 4 else 1
            ext.append(max(1, min(t_ext, shape[3])))
        return tuple(ext)


@dataclass(frozen=True)
class CompressionConfig(Checked):
    """Compression of voxel tiles.

    Args:
        algorithm: the codec; a byte shuffle runs before it unless ``NONE``.
        level: codec level (zstd -7..22, gzip 1..9; ignored by lz4).

    The default, byte shuffle + zstd level 3, was chosen by ``benchmarks/layout.py`` (one
    run, 2 loaded cores) on BraTS-size int16 volumes of whole numbers in 48x48x39 tiles:
    0.59x the bytes of the float32 ``.nii.gz`` (the disk target is <= 0.7x), 2.25 ms CPU per
    random 64³ patch. zstd level 1 decodes no faster (2.31 ms) and is 2% larger; lz4
    decodes a patch in 1.80 ms but takes 0.81x the ``.nii.gz``; bit shuffle (0.70x, 2.72 ms)
    and no shuffle (0.69x, 2.50 ms) lose on both. Axial tiles of CT-like 512x512 int16
    volumes: zstd 3 takes 0.59x the float32 ``.nii.gz`` (lz4 0.76x), an axial plane 0.7 ms
    with either.

    >>> import os, tempfile
    >>> import numpy as np
    >>> from radiobject import CompressionConfig, Volume
    >>> uri = os.path.join(tempfile.mkdtemp(), "vol")
    >>> ramp = np.arange(16 * 16 * 12, dtype=np.int16).reshape(16, 16, 12)
    >>> vol = Volume.from_numpy(uri, ramp, compression=CompressionConfig("gzip", level=9))
    >>> np.array_equal(vol.to_numpy(), ramp)  # lossless
    True
    >>> CompressionConfig("gzip", level=12)
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: CompressionConfig.level must be between 1 and 9, got 12
    """

    algorithm: Compressor = Compressor.ZSTD
    level: int = 3

    def __post_init__(self) -> None:
        algo = coerce_enum("CompressionConfig", "algorithm", self.algorithm, Compressor)
        object.__setattr__(self, "algorithm", algo)
        low, high = {"zstd": (-7, 22), "gzip": (1, 9)}.get(algo.value, (-100, 100))
        check_int("CompressionConfig", "level", self.level, low, high)


@dataclass(frozen=True)
class WriteConfig(Checked):
    """How new volumes are written (tiles, compression, integers).

    With ``integers`` (the default) whole-number voxels are stored as integers, as narrow as
    their values allow, with a NIfTI's or DICOM's scale and offset; reads return the same
    values. ``integers=False`` stores arrays in their own dtype, and scaled files as floats.

    ``coarse`` is the per-axis factor of the small copy of each volume written beside it (in a
    collection) that :class:`radiobject.widgets.CollectionBrowser` shows at once while it reads
    the real voxels: 1/64 of the volume at 4. ``0`` writes none at ingest (the browser then
    builds one on first view, and stores it when it can).

    Installed with :func:`configure`, it applies to every volume written meanwhile:

    >>> import os, tempfile
    >>> import numpy as np
    >>> from radiobject import TileConfig, Volume, WriteConfig, configure
    >>> axial = WriteConfig(tile=TileConfig(orientation="axial"))
    >>> with configure(write=axial):
    ...     vol = Volume.from_numpy(os.path.join(tempfile.mkdtemp(), "v"), np.zeros((16, 16, 12)))
    >>> vol.tile_shape  # one axial slice per tile
    (16, 16, 1)
    """

    tile: TileConfig = field(default_factory=TileConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    integers: bool = True
    coarse: int = 4

    def __post_init__(self) -> None:
        if not isinstance(self.integers, bool):
            raise ConfigurationError(f"WriteConfig.integers must be a bool, got {self.integers!r}")
        if (
            isinstance(self.coarse, bool)
            or not isinstance(self.coarse, int)
            or not (self.coarse == 0 or 2 <= self.coarse <= 16)
        ):
            raise ConfigurationError(
                f"WriteConfig.coarse must be 0 (no coarse level at ingest) or a factor from 2 "
                f"to 16, got {self.coarse!r}"
            )
        if not isinstance(self.tile, TileConfig):
            raise ConfigurationError(f"WriteConfig.tile must be a TileConfig, got {self.tile!r}")
        if not isinstance(self.compression, CompressionConfig):
            raise ConfigurationError(
                f"WriteConfig.compression must be a CompressionConfig, got {self.compression!r}"
            )
