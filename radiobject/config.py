"""Settings: how volumes are read, written and fetched from S3.

Settings are frozen dataclasses validated on construction; :func:`configure` installs them
as the process defaults and also works as a ``with`` block that restores what was there.
:func:`settings` applies them to one block of code only (a context variable: other threads
and tasks keep theirs), the way ``tiledb.scope_ctx`` scopes a context.

>>> from radiobject import ReadConfig, configure, get_config
>>> with configure(read=ReadConfig(max_workers=2, cache_mb=64)):
...     get_config().read.cache_mb
64
>>> get_config().read.cache_mb == ReadConfig().cache_mb
True
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import enum
import inspect
import itertools
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from radiobject._errors import ConfigurationError
from radiobject._process import Resource

__all__ = [
    "CompressionConfig",
    "Compressor",
    "RadiObjectConfig",
    "ReadConfig",
    "S3Config",
    "SliceOrientation",
    "TileConfig",
    "WriteConfig",
    "configure",
    "get_config",
    "settings",
    "reset_config",
]


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


def _check_int(owner: str, name: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            f"{owner}.{name} must be an integer, got {value!r} of type {type(value).__name__}"
        )
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"between {low} and {high}"
        raise ConfigurationError(f"{owner}.{name} must be {allowed}, got {value}")


def _coerce_enum(owner: str, name: str, value: object, kind: type[enum.Enum]) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise ConfigurationError(
            f"{owner}.{name} must be one of {allowed}; got {value!r}"
        ) from None


class _Checked:
    """Reject unknown keyword arguments with a ConfigurationError naming them."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # mypy is silenced on the next line: the mixin's subclasses are the dataclasses
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown {cls.__name__} field(s) {unknown}; known fields: {sorted(known)}"
            )
        return super().__new__(cls)


@dataclass(frozen=True)
class ReadConfig(_Checked):
    """How volumes are read.

    >>> from radiobject import ReadConfig, configure, get_config
    >>> with configure(read=ReadConfig(max_workers=8, cache_mb=0)):  # no block cache
    ...     get_config().read.max_workers, get_config().read.cache_mb
    (8, 0)
    >>> ReadConfig(max_workers=0)
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: ReadConfig.max_workers must be between 1 and 256, got 0

    Args:
        max_workers: threads used by :func:`radiobject.parallel.map_on_threads` and ingest.
        concurrency: TileDB's compute and I/O concurrency per query; also the number of
            slabs a read of 4 MiB or more (a whole volume) is cut into, each filled by its
            own query on a thread at once (TileDB decodes and copies one query's tiles
            mostly on one thread). Whole 240x240x155 int16 volumes read in 0.71x the time
            in two slabs than in one query, at the same CPU time (paired runs, 2 cores).
        memory_budget_mb: TileDB's memory budget per query, in MiB.
        cache_mb: size of radiobject's cache of decompressed tile blocks, in MiB, for the whole
            loader: DataLoader workers share it out, so adding workers never multiplies memory.
            ``0`` turns the cache off.
        retain_freed_mb: opt-in, off by default (``0``: radiobject leaves the allocator
            alone). ``n > 0`` asks glibc's malloc (elsewhere: no effect) to keep up to ``n``
            MiB of freed memory in each reading process instead of handing it back to the
            OS, so TileDB's fresh buffers for every query are not faulted in again. It
            retunes the allocator of the whole process, for the rest of its life (setting
            ``0`` again does not undo it). Measured on 240x240x155 float32 volumes, cache
            off: a whole volume read in 21 ms with ``256`` against 29 ms untouched (process
            CPU time 0.58x); random 64³ patches gain little (2.2 against 2.8 ms in a quiet
            run, CPU time 0.85-0.96x). See ``radiobject._allocator``.
        local_tier_mb: disk budget, in MiB, of the local read tier (``radiobject.read.
            _local_tier``): whole volumes kept on local disk as memory-mapped blosc2 arrays
            (LZ4HC, 32³ blocks), filled in the background with volumes read from TileDB
            (or ahead of time with ``VolumeCollection.warm_local_tier`` / ``python -m
            radiobject warm URI``), shared by every process on the machine and across runs,
            keyed by each array's fragments so a rewritten array is never served stale. For
            cohorts larger than RAM: a random 64³ patch then costs a blosc2 decode instead of
            a TileDB query. ``None`` (the default) is automatic: a training loader
            (``create_training_dataloader``, ``create_segmentation_dataloader``) whose
            cohort's decompressed bytes exceed ``cache_mb`` (> 0) turns it on for that
            loader's reads only (in its process and workers), with a quarter of the folder's free
            disk, at most 64 GiB (off when under 256 MiB free); other reads, and
            ``cache_mb=0`` (caching off), leave it off. A miss fills: it reads its volume
            whole once (the region is cut from it) and hands that array to a background
            writer, when the writers have room; otherwise it reads just its region and a
            later miss fills, so the tier fills as fast as the machine compresses. ``0``
            turns it off; ``n > 0`` turns it on for every read with ``n`` MiB. The least
            recently used volumes are removed to stay within the budget.
        local_tier_dir: the tier's folder (default ``$RADIOBJECT_TIER_DIR``, else
            ``$XDG_CACHE_HOME/radiobject/tier`` or ``~/.cache/radiobject/tier``). Local
            disk: an unwritable or full folder turns the tier off with one warning, and
            reads go on from storage.
        read_ahead: samples whose regions a loader reads ahead, in each reading process
            (the main process, or each worker), on up to ``max_workers`` threads of that
            process's share (``remote_threads`` for object storage). ``0`` (the default):
            off for local volumes, ``remote_read_ahead`` for volumes on object storage
            (``s3://`` ...). Batches stay the same bytes either way, and the read-ahead runs
            on into the next epoch's first batches when the sampler knows its order.
        read_ahead_mb: bound of the voxels read ahead and not yet taken, in MiB, for the
            whole loader (workers share it out like ``cache_mb``).
        remote_read_ahead: the read-ahead depth for volumes on object storage while
            ``read_ahead`` is ``0``; ``0`` turns it off there too. A first epoch from S3 at
            one patch per volume is latency bound (a volume's first 64³ patch is 11 requests in
            ~8 round trips, most of them opening it), so the depth keeps volumes in flight.
            Measured on 2 shared cores (``benchmarks/s3_read_ahead.py``, moto behind a proxy
            adding 20 ms per request, 32 volumes of 128x128x96, batch 4): depth 32-64 on
            32 threads gave 1.3-2.3x the samples/s of no read-ahead over the runs made,
            58-85% of what the same machine does with no latency at all: there the reading
            process (~22 ms CPU per sample) and moto (~30 ms) share the 2 cores, and that,
            not the latency, is the ceiling (see ``benchmarks/README.md``).
        remote_threads: read-ahead threads for volumes on object storage, for the whole
            loader (workers share them out). They mostly wait on the network, so more of
            them than ``max_workers`` (which bounds CPU-bound local reads) keep more
            requests in flight.
    """

    max_workers: int = 4
    concurrency: int = 2
    memory_budget_mb: int = 1024
    cache_mb: int = 512
    retain_freed_mb: int = 0
    local_tier_mb: int | None = None
    local_tier_dir: str | None = None
    read_ahead: int = 0
    read_ahead_mb: int = 256
    remote_read_ahead: int = 32
    remote_threads: int = 32

    def __post_init__(self) -> None:
        _check_int("ReadConfig", "read_ahead", self.read_ahead, 0, 65536)
        _check_int("ReadConfig", "read_ahead_mb", self.read_ahead_mb, 1)
        _check_int("ReadConfig", "remote_read_ahead", self.remote_read_ahead, 0, 65536)
        _check_int("ReadConfig", "remote_threads", self.remote_threads, 1, 256)
        _check_int("ReadConfig", "max_workers", self.max_workers, 1, 256)
        _check_int("ReadConfig", "concurrency", self.concurrency, 1, 256)
        _check_int("ReadConfig", "memory_budget_mb", self.memory_budget_mb, 16)
        _check_int("ReadConfig", "cache_mb", self.cache_mb, 0)
        _check_int("ReadConfig", "retain_freed_mb", self.retain_freed_mb, 0, 2047)
        if self.local_tier_mb is not None:
            _check_int("ReadConfig", "local_tier_mb", self.local_tier_mb, 0)
        if self.local_tier_dir is not None:
            if not isinstance(self.local_tier_dir, (str, os.PathLike)):
                raise ConfigurationError(
                    "ReadConfig.local_tier_dir must be a folder path or None, got "
                    f"{self.local_tier_dir!r}"
                )
            object.__setattr__(self, "local_tier_dir", os.fspath(self.local_tier_dir))


@dataclass(frozen=True)
class TileConfig(_Checked):
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
            _coerce_enum("TileConfig", "orientation", self.orientation, SliceOrientation),
        )
        _check_int("TileConfig", "isotropic_extent", self.isotropic_extent, 1)
        if self.extents is not None:
            ext = tuple(self.extents)
            if len(ext) not in (3, 4):
                raise ConfigurationError(
                    f"TileConfig.extents must have 3 or 4 values (x, y, z[, t]), got {ext!r}"
                )
            for i, e in enumerate(ext):
                _check_int("TileConfig", f"extents[{i}]", e, 1)
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
class CompressionConfig(_Checked):
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
        algo = _coerce_enum("CompressionConfig", "algorithm", self.algorithm, Compressor)
        object.__setattr__(self, "algorithm", algo)
        low, high = {"zstd": (-7, 22), "gzip": (1, 9)}.get(algo.value, (-100, 100))
        _check_int("CompressionConfig", "level", self.level, low, high)


@dataclass(frozen=True)
class WriteConfig(_Checked):
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


_SECRET_FIELDS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


@dataclass(frozen=True)
class S3Config(_Checked):
    """Object storage settings, mapped onto TileDB's ``vfs.s3.*`` options.

    Credentials left as ``None`` come from the usual AWS environment variables or profile.
    They never appear in ``repr``. ``profile`` names a profile of the shared AWS files
    (``~/.aws/credentials``, ``~/.aws/config``) whose static keys radiobject reads and hands to
    TileDB (keys given here win); the environment is never written. For SSO or role profiles,
    export ``AWS_PROFILE`` before starting Python instead.

    >>> S3Config(aws_secret_access_key="hunter2")  # doctest: +ELLIPSIS
    S3Config(region='us-east-1', ..., aws_secret_access_key='***', ...)
    """

    region: str = "us-east-1"
    endpoint: str | None = None
    scheme: str = "https"
    use_virtual_addressing: bool = True
    max_parallel_ops: int = 8
    multipart_part_size_mb: int = 50
    connect_timeout_ms: int = 3000
    request_timeout_ms: int = 30000
    connect_max_tries: int = 5
    verify_ssl: bool = True
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    profile: str | None = None

    def __post_init__(self) -> None:
        if self.scheme not in ("http", "https"):
            raise ConfigurationError(
                f"S3Config.scheme must be 'http' or 'https', got {self.scheme!r}"
            )
        _check_int("S3Config", "max_parallel_ops", self.max_parallel_ops, 1, 1024)
        _check_int("S3Config", "multipart_part_size_mb", self.multipart_part_size_mb, 5, 5120)
        _check_int("S3Config", "connect_timeout_ms", self.connect_timeout_ms, 1)
        _check_int("S3Config", "request_timeout_ms", self.request_timeout_ms, 1)
        _check_int("S3Config", "connect_max_tries", self.connect_max_tries, 1, 100)

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown = "'***'" if f.name in _SECRET_FIELDS and value is not None else repr(value)
            parts.append(f"{f.name}={shown}")
        return f"S3Config({', '.join(parts)})"


@dataclass(frozen=True)
class RadiObjectConfig:
    """The settings in force: read, write and S3.

    :func:`get_config` returns the one in force; :func:`configure` installs a new one.

    >>> from radiobject import RadiObjectConfig, configure
    >>> defaults = RadiObjectConfig()
    >>> defaults.write.tile.orientation.value, defaults.write.compression.algorithm.value
    ('isotropic', 'zstd')
    >>> with configure(s3={"region": "eu-west-1"}) as config:
    ...     config.s3.region, config.read == defaults.read
    ('eu-west-1', True)
    """

    read: ReadConfig = field(default_factory=ReadConfig)
    write: WriteConfig = field(default_factory=WriteConfig)
    s3: S3Config = field(default_factory=S3Config)


# the settings are process memory (a forked child inherits them); the lock is per process
_LOCK: Resource[threading.Lock] = Resource("settings lock", threading.Lock)
_current = RadiObjectConfig()
_serials = itertools.count(1)  # versions of process settings and scopes, never reused
_version = next(_serials)
Scope = tuple[RadiObjectConfig, int]
"""A :func:`settings` block as :func:`current_scope` gives it: its settings and version."""

# settings of the block in progress (see ``settings``)
_SCOPE: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "radiobject_settings", default=None
)


def get_config() -> RadiObjectConfig:
    """The settings in force here: the enclosing :func:`settings` block's, else the process's.

    >>> from radiobject import ReadConfig, configure, get_config
    >>> with configure(read={"max_workers": 2}):
    ...     get_config().read.max_workers
    2
    >>> get_config().read.max_workers == ReadConfig().max_workers  # restored
    True
    """
    scope = _SCOPE.get()
    return _current if scope is None else scope[0]


def config_version() -> int:
    """A number that changes each time the settings in force here change (staleness check)."""
    scope = _SCOPE.get()
    return _version if scope is None else scope[1]


class settings:
    """Settings for one block of code only: this thread (or asyncio task), until the block ends.

    Unlike :class:`configure`, nothing process-wide changes: other threads keep the settings
    they had, and a :func:`configure` made meanwhile (by any thread) is kept when the block
    ends. The changes apply on top of ``config`` (default: the settings in force here). A
    loader built inside the block keeps these settings, in its worker processes and
    read-ahead threads too, wherever it is iterated.

    Args:
        config: the settings to start from (e.g. ones saved with :func:`get_config`).
        read: a :class:`ReadConfig`, or a mapping of its fields to change.
        write: a :class:`WriteConfig`, or a mapping of its fields to change.
        s3: a :class:`S3Config`, or a mapping of its fields to change.

    >>> import threading
    >>> from radiobject import ReadConfig, get_config, settings
    >>> seen = []
    >>> with settings(read={"cache_mb": 64}) as scoped:
    ...     other = threading.Thread(target=lambda: seen.append(get_config().read.cache_mb))
    ...     other.start(); other.join()
    ...     get_config().read.cache_mb, scoped.read.cache_mb
    (64, 64)
    >>> seen == [ReadConfig().cache_mb], get_config().read.cache_mb == ReadConfig().cache_mb
    (True, True)
    """

    def __init__(
        self,
        config: RadiObjectConfig | None = None,
        *,
        read: ReadConfig | Mapping[str, Any] | None = None,
        write: WriteConfig | Mapping[str, Any] | None = None,
        s3: S3Config | Mapping[str, Any] | None = None,
    ) -> None:
        base = get_config() if config is None else config
        if not isinstance(base, RadiObjectConfig):
            raise ConfigurationError(
                f"settings(config) takes a RadiObjectConfig (e.g. get_config()), "
                f"got {type(base).__name__}"
            )
        self.config = _merged(base, read, write, s3)
        self._tokens: list[contextvars.Token[Scope | None]] = []

    def __enter__(self) -> RadiObjectConfig:
        self._tokens.append(_SCOPE.set((self.config, next(_serials))))
        return self.config

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _SCOPE.reset(self._tokens.pop())


def process_config() -> RadiObjectConfig:
    """The process settings (what :func:`get_config` gives outside any :func:`settings`)."""
    return _current


def current_scope() -> Scope | None:
    """The :func:`settings` block in force here (``None``: the process settings apply).

    Threads do not inherit context variables: pass this to :func:`in_scope` in a thread
    that works for this one (a read pool, a read-ahead thread).
    """
    return _SCOPE.get()


@contextlib.contextmanager
def in_scope(scope: Scope | None) -> Iterator[None]:
    """Run a block under ``scope`` (from :func:`current_scope`; ``None``: change nothing)."""
    if scope is None:
        yield
        return
    token = _SCOPE.set(scope)
    try:
        yield
    finally:
        _SCOPE.reset(token)


# per process: a forked child (a loader worker) does not call its parent's listeners
_listeners: Resource[list[weakref.ref[Callable[[], None]]]] = Resource("settings listeners", list)


def add_listener(fn: Callable[[], None]) -> Callable[[], None]:
    """Call ``fn()`` after every settings change while ``fn`` lives; returns its remover.

    ``fn`` is held weakly (a bound method listens as long as its object lives), so a
    listener never keeps anything alive and dead ones drop out by themselves.

    >>> class Seen:
    ...     def __init__(self): self.calls = 0
    ...     def __call__(self): self.calls += 1
    >>> seen = Seen()
    >>> remove = add_listener(seen)
    >>> _ = configure(read={"max_workers": 3}); remove(); reset_config()
    >>> seen.calls
    1
    """
    ref: weakref.ref[Callable[[], None]] = (
        weakref.WeakMethod(fn) if inspect.ismethod(fn) else weakref.ref(fn)
    )
    with _LOCK.get():
        _listeners.get().append(ref)

    def remove() -> None:
        with _LOCK.get():
            listeners = _listeners.get()
            listeners[:] = [r for r in listeners if r is not ref]

    return remove


def _install(config: RadiObjectConfig) -> None:
    global _current, _version
    with _LOCK.get():
        _current = config
        _version = next(_serials)
        listeners = _listeners.get()
        listeners[:] = [r for r in listeners if r() is not None]
        live = [r() for r in listeners]
    for fn in live:
        if fn is not None:
            fn()


class configure:
    """Install process-wide settings; use as a call or as a ``with`` block.

    Every thread sees them (except inside a :func:`settings` block, which keeps its own);
    for settings that apply to one block of code only, use :func:`settings`.

    Args:
        read: a :class:`ReadConfig`, or a mapping of its fields to change.
        write: a :class:`WriteConfig`, or a mapping of its fields to change.
        s3: a :class:`S3Config`, or a mapping of its fields to change.

    >>> configure(read={"max_workers": 3}).config.read.max_workers
    3
    >>> reset_config()
    """

    def __init__(
        self,
        read: ReadConfig | Mapping[str, Any] | None = None,
        write: WriteConfig | Mapping[str, Any] | None = None,
        s3: S3Config | Mapping[str, Any] | None = None,
    ) -> None:
        self.previous = _current  # the process settings (a settings() block keeps its own)
        self.config = _merged(self.previous, read, write, s3)
        _install(self.config)

    def __enter__(self) -> RadiObjectConfig:
        return self.config

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _install(self.previous)


def _merged(base: RadiObjectConfig, read: Any, write: Any, s3: Any) -> RadiObjectConfig:
    """``base`` with the changes ``read``, ``write`` and ``s3`` (objects or field mappings)."""
    return RadiObjectConfig(
        read=_merge(base.read, read, ReadConfig, "read"),
        write=_merge(base.write, write, WriteConfig, "write"),
        s3=_merge(base.s3, s3, S3Config, "s3"),
    )


def _merge(current: Any, new: Any, kind: type, name: str) -> Any:
    if new is None:
        return current
    if isinstance(new, kind):
        return new
    if isinstance(new, Mapping):
        return dataclasses.replace(current, **new)
    raise ConfigurationError(
        f"configure({name}=...) takes a {kind.__name__} or a dict of its fields, "
        f"got {type(new).__name__}"
    )


def reset_config() -> None:
    """Restore the default settings.

    >>> from radiobject import ReadConfig, configure, get_config, reset_config
    >>> configure(read={"cache_mb": 64}).config.read.cache_mb
    64
    >>> reset_config()
    >>> get_config().read.cache_mb == ReadConfig().cache_mb
    True
    """
    _install(RadiObjectConfig())
