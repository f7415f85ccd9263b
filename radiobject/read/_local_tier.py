"""A local read tier: whole volumes kept on local disk as blosc2 arrays, read through mmap.

Between radiobject's RAM block cache and TileDB. A volume read whole from TileDB (to serve a
region: the read that misses the tier reads its volume once, see
:class:`~radiobject.read._policy.ReadPolicy`) is written here by background writer threads,
so the reading step does not wait for the compression; later reads of any region of
it, by this process or any other on the machine, decode just the blosc2 blocks the region
touches from a memory-mapped file (the page cache is shared: no copies through IPC), and a
new run starts warm.

Format (measured on this machine, random cold 64³ patches of 240x240x155 float32, one
thread): blosc2 NDArray in nnU-Net v2's layout (chunks about patch-sized, 32³ blocks, LZ4HC
and byte shuffle, mmap) read ~1,780 patches/s against ~270 for radiobject's TileDB arrays
(48³ zstd tiles, ~0.6 ms per TileDB query before any voxel is decoded) and ~3,400 for an
uncompressed ``.npy`` memmap, which takes ~13x more disk than TileDB on these volumes.

The codec and level (:data:`CODEC`, :data:`CLEVEL`) trade the time to fill an entry against
the time to read a patch from it. One BraTS-size uint16 volume (17.9 MB decompressed, 2.7 MB
as TileDB arrays), CPU time of one thread on the shared 2-core machine, 64³ patches: LZ4HC
level 8 written in 141 ms (2.64 MB), read 0.182 ms a patch; level 5 75 ms (2.70 MB), 0.197
ms; level 2 39 ms (2.92 MB), 0.223 ms; plain LZ4 34 ms (3.15 MB), 0.297 ms; BLOSCLZ and
bit-shuffled variants ~31 ms but ~0.41 ms a patch; ZSTD 1 ~0.73 ms a patch. About 20 ms of
any write is blosc2's chunking, whatever the codec, and each chunk takes the GIL again: beside
a training loop (a Python thread holding the GIL) a volume in 64³ chunks took ~280 ms to
write, in one chunk ~90 ms (see :func:`_layout`). Format 2 (LZ4HC level 2, one chunk): 24
BraTS volumes of a cohort four times the RAM cache were all in the tier by the end of the
second epoch at 4 patches per volume (format 1: 3 fills an epoch), for 0.25 ms to decode a
64³ patch (format 1: 0.20; LZ4HC 8 in 64³ chunks: 0.18, written in ~160 ms of CPU) and 1.1x
TileDB's bytes. An entry is compressed on one thread per writer
(``nthreads`` of the call: blosc2's global thread count is never changed).

Never wrong:

- an entry's name hashes the array's URI and its fragment URIs (TileDB names each fragment
  with a timestamp and a UUID), read once when the process opens the array: a rewritten
  array gets a new name, and the stale entry ages out of the budget;
- an entry is published atomically (a temporary file in the same folder, then
  ``os.replace``), data first, then a small sidecar with its size and CRC-32: two processes
  filling one entry write the same bytes, and a reader that sees a sidecar and data that do
  not match (a half-replaced pair, a truncated or corrupt file) treats the entry as missing
  and fills it again. The check runs when a process opens an entry, not per read;
- a folder that cannot be written (read-only, full disk) turns the tier off in that process
  with one warning: reads go on from TileDB. So does an entry that is present and intact
  (its CRC checks) but fails to open: that is blosc2 or the environment, not the entry, and
  filling it again would rewrite whole volumes for nothing (counted in ``tier_errors``).

The folder's size is bounded by ``ReadConfig.local_tier_mb``: before each write the least
recently used entries (by modification time, touched when a process opens one) are removed.
A fill while reading evicts only entries unused for an hour (``FILL_IDLE_S``): with a cohort
larger than the budget the tier keeps the volumes it has instead of churning (each fill reads
a whole volume), and a volume that found no room is not tried again by that process.
``warm_local_tier`` evicts any least recently used entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import warnings
import zlib
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import tiledb
from cachetools import LRUCache

from radiobject._process import Resource
from radiobject.config import config_version, get_config
from radiobject.read._versioned import commit_end_ms, same_array, split_version

__all__ = [
    "LocalTier",
    "auto_budget_mb",
    "blosc2_available",
    "default_tier_dir",
    "local_tier",
]

Bounds = tuple[tuple[int, int], ...]

_SUFFIX = ".b2nd"
_SIDECAR = ".json"
_TMP = ".tmp"
_STALE_TMP_S = 3600.0  # temporary files older than this were left by a dead writer
FILL_IDLE_S = 3600.0  # a background fill evicts only entries unused for this long

# The entry format: its number is in every entry's name and sidecar, so entries written in
# another format (codec, level, chunks) are never opened as this one: they are filled again
# under their new name and the old ones age out of the budget. Change FORMAT with the rest.
FORMAT = 3  # 1: LZ4HC level 5 in 64³ chunks; 2: LZ4HC 2, one chunk; 3: LZ4HC 2, 5 MB slabs
CODEC = "LZ4HC"  # a blosc2.Codec name
CLEVEL = 2
COMPRESS_THREADS = 1  # threads of one entry's compression (per call, not blosc2's global)
WRITERS = max(1, min(4, (os.cpu_count() or 2) // 2))  # background writer threads


TIER_DIR_ENV = "RADIOBJECT_TIER_DIR"  # overrides the default folder (tests point it at a tmp dir)
AUTO_DISK_SHARE = 0.25  # the automatic budget: this share of the folder's free disk ...
AUTO_CAP_MB = 64 * 1024  # ... at most this many MiB
AUTO_MIN_MB = 256  # less free room than this: the automatic tier stays off


def default_tier_dir() -> Path:
    """``$RADIOBJECT_TIER_DIR``, else ``$XDG_CACHE_HOME/radiobject/tier`` or ``~/.cache/...``.

    >>> import os
    >>> saved = os.environ.pop("RADIOBJECT_TIER_DIR", None)  # the tests set it
    >>> default_tier_dir().parts[-2:]
    ('radiobject', 'tier')
    >>> os.environ["RADIOBJECT_TIER_DIR"] = "/data/tier"
    >>> str(default_tier_dir())
    '/data/tier'
    >>> if saved is None:
    ...     del os.environ["RADIOBJECT_TIER_DIR"]
    ... else:
    ...     os.environ["RADIOBJECT_TIER_DIR"] = saved
    """
    if folder := os.environ.get(TIER_DIR_ENV):
        return Path(folder)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "radiobject" / "tier"


def blosc2_available() -> bool:
    """Whether blosc2 can be imported (the tier needs it).

    >>> blosc2_available()
    True
    """
    try:
        _blosc2()
    except ImportError:
        return False
    return True


def auto_budget_mb(cohort_bytes: int, cache_bytes: int, folder: Path) -> int:
    """The automatic tier budget (MiB) for a cohort of ``cohort_bytes``, or 0 (stay off).

    On when the cohort does not fit the RAM cache (``cache_bytes``) and blosc2 imports:
    :data:`AUTO_DISK_SHARE` of the free disk where ``folder`` is (or would be), at most
    :data:`AUTO_CAP_MB`; off when that is under :data:`AUTO_MIN_MB`, and with the RAM cache
    off (``cache_bytes`` 0: caching was turned off, e.g. to measure exact reads).

    >>> import tempfile
    >>> auto_budget_mb(10 << 20, 512 << 20, Path(tempfile.mkdtemp()))  # fits the RAM cache
    0
    >>> auto_budget_mb(10 << 20, 0, Path(tempfile.mkdtemp()))  # caching turned off
    0
    >>> 0 < auto_budget_mb(1 << 40, 512 << 20, Path(tempfile.mkdtemp())) <= AUTO_CAP_MB
    True
    """
    if cache_bytes <= 0 or cohort_bytes <= cache_bytes or not blosc2_available():
        return 0
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return 0
    budget = min(AUTO_CAP_MB, int(free * AUTO_DISK_SHARE) // (1 << 20))
    return budget if budget >= AUTO_MIN_MB else 0


def _blosc2() -> Any:
    import blosc2

    return blosc2


SLAB_BYTES = 5 << 20  # an entry's chunks: slabs along the first axis of about this much ...
CHUNK_BYTES = 64 << 20  # ... and at most this much (decompressed), for very large volumes
SLAB_STEP = 32  # slab thickness in voxels: a multiple of the 32³ blocks


def _layout(shape: tuple[int, ...], itemsize: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """blosc2 chunks and blocks for a volume of ``shape``: 32³ blocks in slabs of ~5 MB.

    A read decodes only the blocks it touches, whatever the chunks; writing compresses one
    chunk per call, holding the GIL for the whole call (every Python thread of the process,
    the training step's included, waits meanwhile). A BraTS volume (240x240x155 uint16,
    17.9 MB) in one chunk took ~34 ms of CPU and held the GIL ~36 ms at a stretch; in
    64x240x155 slabs (4 chunks of 4.8 MB) ~26 ms, at most ~16 ms at a stretch, and a 64³
    patch decoded in 0.242 against 0.265 ms (the one chunk). 64³ chunks (nnU-Net's rule)
    took ~59 ms and re-took the GIL 48 times (a write beside a busy Python thread: ~370 ms).
    So slabs along the first axis, :data:`SLAB_STEP` voxels thick or a multiple holding up
    to :data:`SLAB_BYTES`; a slab over :data:`CHUNK_BYTES` (a very large volume) is halved
    along its longest other axis until it fits.

    >>> _layout((240, 240, 155), 2)
    ((64, 240, 155), (32, 32, 32))
    >>> _layout((40, 36, 28), 4)  # small: one chunk
    ((40, 36, 28), (32, 32, 28))
    >>> _layout((1024, 1024, 400), 2)  # 800 MB: 32-voxel slabs halved to 64 MB at most
    ((32, 1024, 400), (32, 32, 32))
    >>> _layout((512, 2048, 2048), 2)  # a 256 MB slab, halved
    ((32, 1024, 1024), (32, 32, 32))
    """
    row = itemsize  # bytes of one slice along the first axis
    for n in shape[1:]:
        row *= n
    thick = max(SLAB_STEP, SLAB_BYTES // row // SLAB_STEP * SLAB_STEP)
    chunks = [min(shape[0], thick), *shape[1:]]
    nbytes = chunks[0] * row
    while nbytes > CHUNK_BYTES and len(chunks) >= 3 and max(chunks[1:3]) > 64:
        axis = 1 if chunks[1] >= chunks[2] else 2
        half = -(-chunks[axis] // 2)
        nbytes = nbytes // chunks[axis] * half
        chunks[axis] = half
    blocks = tuple(min(32, n) for n in shape[:3]) + tuple(1 for _ in shape[3:])
    return tuple(chunks), blocks


WIDE_BYTES = 4 << 20  # a region this large decodes on blosc2's threads (a patch: on one)
_EXT_NDARRAY: Any = False  # blosc2's extension array type with get_slice_numpy (None: absent)


def _decode_into(array: Any, bounds: Bounds, out: np.ndarray) -> None:
    """Decode ``bounds`` of the blosc2 ``array`` into ``out`` (C-ordered, of its shape).

    Straight through blosc2's extension type when it has the call (what ``array[...]``
    runs after parsing its key: ~20 µs less per patch), else by ``array[...]``.
    """
    global _EXT_NDARRAY
    if _EXT_NDARRAY is False:
        ext = getattr(getattr(_blosc2(), "blosc2_ext", None), "NDArray", None)
        _EXT_NDARRAY = ext if hasattr(ext, "get_slice_numpy") else None
        if _EXT_NDARRAY is None:  # once per process: correct, ~20 µs slower per patch
            logging.getLogger("radiobject.read").warning(
                "this blosc2 has no blosc2_ext.NDArray.get_slice_numpy: the local tier "
                "decodes through array[...] (slower); see tests/test_private_apis.py"
            )
    ext = _EXT_NDARRAY
    if ext is not None and isinstance(array, ext):
        ext.get_slice_numpy(array, out, ([lo for lo, _ in bounds], [hi for _, hi in bounds]))
    else:
        out[...] = array[tuple(slice(lo, hi) for lo, hi in bounds)]


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


class LocalTier:
    """Entries of one folder, bounded to ``budget_bytes`` on disk (see the module's notes).

    >>> import tempfile
    >>> tier = LocalTier(Path(tempfile.mkdtemp()), budget_bytes=1 << 20)
    >>> tier.write("k", np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    True
    >>> tier.read("k", ((0, 1), (1, 3), (0, 2))).tolist()
    [[[4.0, 5.0], [8.0, 9.0]]]
    """

    def __init__(self, folder: Path, budget_bytes: int) -> None:
        self.folder = folder
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        # entry name -> (memory-mapped NDArray decoding on one thread, its lock)
        self._open: LRUCache[str, tuple[Any, threading.Lock]] = LRUCache(maxsize=1024)
        # entry name -> the same file decoding on blosc2's threads (large regions)
        self._wide: LRUCache[str, Any] = LRUCache(maxsize=64)
        self.broken: str | None = None  # why writing failed in this process

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{key}{_SUFFIX}", self.folder / f"{key}{_SIDECAR}"

    def open(self, key: str) -> Any | None:
        """The entry ``key`` as a memory-mapped blosc2 array, or None if absent or invalid.

        Absent or invalid means: no sidecar or data, a sidecar that does not parse, or data
        whose size or CRC-32 differ from the sidecar's (fill it again). An intact entry that
        blosc2 fails to open is not absent: the error propagates (the read path turns the
        tier off, with one warning, and counts it).
        """
        with self._lock:
            opened = self._open.get(key)
        if opened is not None:
            return opened[0]
        data, sidecar = self._paths(key)
        try:
            meta = json.loads(sidecar.read_text())
            size, crc, shape, dtype = meta["size"], meta["crc32"], meta["shape"], meta["dtype"]
            if meta.get("format") != FORMAT:
                return None  # another layout's entry (its name differs too): fill it again
            if data.stat().st_size != size or _crc32(data) != crc:
                return None  # truncated, corrupt, or being replaced: fill it again
        except (OSError, ValueError, KeyError, TypeError):  # missing or unreadable: absent
            return None
        blosc2 = _blosc2()
        # one decoding thread: a patch's few blocks decode faster without blosc2's
        # thread hand-offs (0.24 against 0.30 ms per 64³ patch on the 2-core machine)
        one = blosc2.DParams(nthreads=1)
        array = blosc2.open(str(data), mode="r", mmap_mode="r", dparams=one)
        if tuple(array.shape) != tuple(shape) or str(array.dtype) != dtype:
            return None  # written by another version of the layout: fill it again
        with contextlib.suppress(OSError):
            os.utime(data)  # recently used: evicted last
        with self._lock:
            self._open[key] = (array, threading.Lock())
        return array

    def is_open(self, key: str) -> bool:
        """Whether entry ``key`` is open in this process (checked and mapped: reads are local)."""
        with self._lock:
            return key in self._open

    def read(self, key: str, bounds: Bounds, out: np.ndarray | None = None) -> np.ndarray | None:
        """Voxels of entry ``key`` in ``bounds`` (into ``out`` if given), or None if absent."""
        with self._lock:
            opened = self._open.get(key)
        if opened is None:
            if self.open(key) is None:
                return None
            with self._lock:
                opened = self._open.get(key)
            if opened is None:  # dropped meanwhile (rewritten by this process)
                return None
        array, lock = opened
        shape = tuple(hi - lo for lo, hi in bounds)
        into = out if out is not None and out.flags.c_contiguous else None
        if into is None:
            into = np.empty(shape, dtype=array.dtype)
        if into.nbytes >= WIDE_BYTES:
            array = self._wide_handle(key, array)
        # one decode at a time per entry (a blosc2 array's decompression context is its
        # own); threads reading different volumes decode in parallel
        with lock:
            _decode_into(array, bounds, into)
        if out is not None and into is not out:
            out[...] = into
            return out
        return into

    def _wide_handle(self, key: str, array: Any) -> Any:
        """Entry ``key`` opened again to decode on blosc2's threads (for large regions)."""
        with self._lock:
            wide = self._wide.get(key)
        if wide is None:
            wide = _blosc2().open(array.urlpath, mode="r", mmap_mode="r")
            with self._lock:
                self._wide[key] = wide
        return wide

    def write(self, key: str, volume: np.ndarray, *, idle_s: float = 0.0) -> bool:
        """Publish ``volume`` as entry ``key``; False if it does not fit the budget.

        Room is made by removing the least recently used entries, only those unused for
        ``idle_s`` seconds: a fill while training (``idle_s`` > 0) never evicts volumes the
        run is using, so a cohort larger than the budget does not churn the folder.

        Raises:
            OSError: the folder cannot be written (the caller turns the tier off).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        data, sidecar = self._paths(key)
        stem = f".{key}.{os.getpid()}.{threading.get_ident()}{_TMP}"
        tmp_data = self.folder / f"{stem}{_SUFFIX}"
        tmp_side = self.folder / f"{stem}{_SIDECAR}"
        blosc2 = _blosc2()
        chunks, blocks = _layout(volume.shape, volume.dtype.itemsize)
        cparams = blosc2.CParams(
            codec=getattr(blosc2.Codec, CODEC),
            clevel=CLEVEL,
            filters=[blosc2.Filter.SHUFFLE],
            nthreads=COMPRESS_THREADS,  # this call's threads: blosc2's global setting is untouched
        )
        try:
            blosc2.asarray(
                np.ascontiguousarray(volume),
                urlpath=str(tmp_data),
                mode="w",
                chunks=chunks,
                blocks=blocks,
                cparams=cparams,
            )
            size = tmp_data.stat().st_size
            if size > self.budget_bytes:
                return False
            meta = {
                "format": FORMAT,
                "size": size,
                "crc32": _crc32(tmp_data),
                "shape": list(volume.shape),
                "dtype": str(volume.dtype),
            }
            tmp_side.write_text(json.dumps(meta))
            if not self._make_room(size, keep=key, idle_s=idle_s):
                return False
            os.replace(tmp_data, data)
            os.replace(tmp_side, sidecar)
        except RuntimeError as exc:  # blosc2 reports a failed write as RuntimeError
            raise OSError(f"blosc2 could not write {tmp_data}: {exc}") from exc
        finally:
            for tmp in (tmp_data, tmp_side):
                with contextlib.suppress(OSError):
                    tmp.unlink()
        with self._lock:
            self._open.pop(key, None)
            self._wide.pop(key, None)
        return True

    def entry_bytes(self, key: str) -> int:
        """Bytes entry ``key`` takes on disk (0 if absent)."""
        try:
            return self._paths(key)[0].stat().st_size
        except OSError:
            return 0

    def entries(self) -> list[tuple[float, int, str]]:
        """``(mtime, bytes, name)`` of every entry, least recently used first."""
        found = []
        for path in self.folder.glob(f"*{_SUFFIX}"):
            if path.name.startswith("."):
                self._sweep_tmp(path)
                continue
            with contextlib.suppress(OSError):
                st = path.stat()
                found.append((st.st_mtime, st.st_size, path.name[: -len(_SUFFIX)]))
        return sorted(found)

    def _sweep_tmp(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > _STALE_TMP_S:
                path.unlink()

    def _make_room(self, incoming: int, keep: str, idle_s: float = 0.0) -> bool:
        """Remove least recently used entries (unused for ``idle_s``) until ``incoming`` fits."""
        entries = self.entries()
        total = sum(size for _, size, name in entries if name != keep) + incoming
        if total <= self.budget_bytes:
            return True
        now = time.time()
        victims = [e for e in entries if e[2] != keep and now - e[0] >= idle_s]
        if total - sum(size for _, size, _ in victims) > self.budget_bytes:
            return False  # not enough idle entries: evict nothing
        for _, size, name in victims:
            if total <= self.budget_bytes:
                break
            data, sidecar = self._paths(name)
            for path in (sidecar, data):
                with contextlib.suppress(OSError):
                    path.unlink()
            total -= size
        return True


def fragment_key(uri: str, ctx: tiledb.Ctx) -> str:
    """The entry name of ``uri`` as stored now: a hash of its URI and committed fragments.

    The fragments are the array's commit files (``__commits``: one per committed write or
    consolidation), listed in one call: 0.06 ms a volume locally (one LIST request on S3)
    against 2.1 ms for TileDB's fragment info, which reads every fragment's metadata. A
    fragment being written has no commit file yet, so it is in neither the key nor a read.
    Arrays without commit files (older formats) are keyed by TileDB's fragment info.

    A versioned key (:func:`radiobject.read._versioned.versioned`) counts the fragments
    committed at or before its timestamp only: the fragments a read of that version sees,
    so a version whose fragments are those of the newest shares its entry.
    """
    base, at = split_version(uri)
    base = base.rstrip("/")
    try:
        commits = tiledb.VFS(ctx=ctx).ls(f"{base}/__commits")
    except tiledb.TileDBError:
        commits = []
    names = sorted(str(c).rstrip("/").rsplit("/", 1)[-1] for c in commits)
    if not names:
        fragments = tiledb.array_fragments(base, ctx=ctx)
        names = sorted(str(f.uri).rsplit("/", 1)[-1] for f in fragments)
    if at is not None:
        names = [n for n in names if (commit_end_ms(n) or 0) <= at]
    digest = hashlib.sha256("\n".join([f"format {FORMAT}", base, *names]).encode()).hexdigest()
    return digest[:40]


class _TierState:
    """This process's tier: the folder, entry names by URI, and the background writers.

    A fill is a whole volume a read has in hand (read whole to serve a region: see
    :meth:`radiobject.read._policy.ReadPolicy.chain`), compressed and published by one of
    :data:`WRITERS` threads. At most :data:`WRITERS` + 1 volumes are claimed or queued at a
    time, each held in memory until written: when the writers are busy, a read reads just
    its region (and a later miss fills), so the tier fills as fast as the machine writes,
    without a queue of volumes growing in memory.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.version = -1
        self.keys: LRUCache[str, str] = LRUCache(maxsize=4096)  # uri -> entry name
        self.claimed: set[str] = set()  # a read decided to read these whole for the tier
        self.pending: set[str] = set()  # queued or being written
        self.jobs: set[Future[None]] = set()
        self.room = WRITERS + 1  # volumes claimed or pending at most
        self.rejected: LRUCache[str, bool] = LRUCache(maxsize=65536)  # did not fit: not again
        self.pool: ThreadPoolExecutor | None = None
        self.warned = False
        self.warning: str | None = None  # a warning waiting for a reading thread
        # the tier of each budget asked for under the settings of ``version``: the user's
        # (``local_tier_mb``), or a loader's automatic one (see :func:`local_tier`)
        self.resolved: dict[int, LocalTier | None] = {}
        self.tiers: dict[tuple[Path, int], LocalTier] = {}  # every tier made, by folder/budget

    def claim(self, key: str) -> bool:
        """Reserve the fill of entry ``key`` for a read about to read its volume whole.

        False when it is queued or claimed already, did not fit before, or the writers
        have no room. The claim ends when the volume is handed over (:meth:`submit`), or
        with :meth:`release`.
        """
        with self.lock:
            if key in self.claimed or key in self.pending or key in self.rejected:
                return False
            if len(self.claimed) + len(self.pending) >= self.room:
                return False
            self.claimed.add(key)
            return True

    def release(self, key: str) -> None:
        """End a claim of ``key`` that was not handed to :meth:`submit` (no-op otherwise)."""
        with self.lock:
            self.claimed.discard(key)

    def current(self, auto_mb: int = 0) -> LocalTier | None:
        """The tier of a read: ``ReadConfig.local_tier_mb`` if set, else ``auto_mb`` (0: off)."""
        version = config_version()
        with self.lock:
            if version != self.version:
                self.version = version
                self.resolved = {}
            if auto_mb in self.resolved:
                tier = self.resolved[auto_mb]
            else:
                read = get_config().read
                mb = auto_mb if read.local_tier_mb is None else read.local_tier_mb
                tier = None
                if mb > 0:
                    folder = Path(read.local_tier_dir or default_tier_dir())
                    tier = self.tiers.get((folder, mb))
                    if tier is None:
                        tier = self.tiers[(folder, mb)] = LocalTier(folder, mb * 1024 * 1024)
                self.resolved[auto_mb] = tier
        return tier if tier is not None and tier.broken is None else None

    def key(self, uri: str, ctx: tiledb.Ctx) -> str:
        with self.lock:
            key = self.keys.get(uri)
        if key is None:
            key = fragment_key(uri, ctx)
            with self.lock:
                self.keys[uri] = key
        return key

    def known_key(self, uri: str) -> str | None:
        """The entry name of ``uri`` if this process worked it out already, else None."""
        with self.lock:
            return self.keys.get(uri)

    def forget(self, uri: str) -> None:
        with self.lock:
            for name in [k for k in self.keys if same_array(k, uri)]:
                self.keys.pop(name, None)

    def submit(self, key: str, job: Any) -> Future[None] | None:
        """Run ``job`` (the write of entry ``key``) on a background writer.

        Not when ``key`` is queued already or did not fit before; nor, unless a read
        claimed it (:meth:`claim`), when the writers have no room.
        """
        with self.lock:
            if key in self.pending or key in self.rejected:
                self.claimed.discard(key)
                return None
            if key in self.claimed:
                self.claimed.discard(key)
            elif len(self.claimed) + len(self.pending) >= self.room:
                return None
            self.pending.add(key)
            if self.pool is None:
                self.pool = ThreadPoolExecutor(
                    max_workers=WRITERS, thread_name_prefix="radiobject-tier"
                )
            pool = self.pool

            def run() -> None:
                try:
                    job()
                finally:
                    with self.lock:
                        self.pending.discard(key)
                        self.jobs.discard(future)

            future = pool.submit(run)
            self.jobs.add(future)
        return future

    def flush(self) -> None:
        """Wait until every background write queued so far has finished."""
        with self.lock:
            jobs = list(self.jobs)
        wait(jobs)

    def disable(
        self, tier: LocalTier, exc: BaseException, failed: str = "cannot be written"
    ) -> None:
        """Turn the tier off in this process; the next read warns (once per process).

        Called from the background writer: the warning waits for a reading thread, where
        the caller's warning filters apply. ``failed`` says what went wrong.
        """
        if failed == "cannot be written":
            todo = "Free disk space, point ReadConfig.local_tier_dir at a writable folder"
        else:
            todo = "Check the installed blosc2 against radiobject's supported versions"
        with self.lock:
            tier.broken = f"{type(exc).__name__}: {exc}"
            if not self.warned:
                self.warned = True
                self.warning = (
                    f"radiobject's local read tier in {tier.folder} {failed} "
                    f"({tier.broken}); reads go on from storage. {todo}, or set "
                    "ReadConfig(local_tier_mb=0) to turn it off"
                )

    def warn_pending(self) -> None:
        """Issue the warning of a tier that broke in the background, if not issued yet."""
        with self.lock:
            message, self.warning = self.warning, None
        if message is not None:
            warnings.warn(message, RuntimeWarning, stacklevel=4)


_TIER: Resource[_TierState] = Resource("local read tier", _TierState)


def tier_state() -> _TierState:
    """The local tier state of this process (a forked child starts its own)."""
    return _TIER.get()


def local_tier(auto_mb: int = 0) -> LocalTier | None:
    """The local tier a read uses, or None when it is off (or broke in this process).

    ``ReadConfig.local_tier_mb`` decides when it is set; with ``None`` (the default) the
    tier is the reader's own decision: ``auto_mb``, the budget a training loader chose for
    its dataset (:func:`radiobject.ml._tier_auto.auto_local_tier`), carried by that
    dataset's reads into its workers. Other reads of the process pass 0: no tier.

    >>> import tempfile
    >>> from radiobject import ReadConfig, configure
    >>> local_tier() is None, local_tier(auto_mb=256) is not None  # the default settings
    (True, True)
    >>> with configure(read=ReadConfig(local_tier_mb=0)):  # turned off: for every read
    ...     local_tier(auto_mb=256) is None
    True
    """
    state = _TIER.get()
    if state.warning is not None:
        state.warn_pending()
    return state.current(auto_mb)
