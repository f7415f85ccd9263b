"""The local tier's entries: whole volumes as blosc2 files on local disk, read through mmap.

:class:`LocalTier` is one folder of entries, bounded on disk; this module is their format
(codec, level, chunks, blocks), how one is published and checked, and how a region is
decoded from one. Which reads use a tier, the entry names and the background writers are
:mod:`radiobject.read._local_tier`'s (the process's state); its notes say what makes the
tier never wrong.

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
bit-shuffled variants ~31 ms but ~0.41 ms a patch; ZSTD 1 ~0.73 ms a patch (format 2, one
chunk; measured again for format 3: LZ4 level 1 writes in ~19 ms against ~28 for LZ4HC 2,
but reads a patch in ~0.32 against ~0.26 ms). blosc2 holds the GIL while it compresses a
chunk: the chunks are slabs of ~2 MB (see :func:`_layout`), so a write stops the process's
other Python threads (a training step) for ~8 ms at a time at most, not for the whole
volume. Format 4 (LZ4HC level 2, 32x240x155 slabs of a BraTS volume): ~23 ms of CPU to write,
0.25 ms to decode a 64³ patch, 1.1x TileDB's bytes (format 3's 64x240x155 slabs: ~30 ms,
the same patch time and bytes, paired in one process on the loaded 2-core machine). An
entry is compressed on one thread per writer (``nthreads`` of the call: blosc2's global
thread count is never changed).

An entry is published atomically (a temporary file in the same folder, then ``os.replace``),
data first, then a small sidecar with its format, size and CRC-32: two processes filling one
entry write the same bytes, and a reader that sees a sidecar and data that do not match (a
half-replaced pair, a truncated or corrupt file) treats the entry as missing. The check runs
when a process opens an entry, not per read. The folder's size is bounded by its budget:
before each write the least recently used entries (by modification time, touched when a
process opens one) are removed, only those unused for ``idle_s`` seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from cachetools import LRUCache

__all__ = ["CLEVEL", "CODEC", "FORMAT", "LocalTier", "blosc2_available"]

Bounds = tuple[tuple[int, int], ...]

_SUFFIX = ".b2nd"
_SIDECAR = ".json"
_TMP = ".tmp"
_STALE_TMP_S = 3600.0  # temporary files older than this were left by a dead writer

# The entry format: its number is in every entry's name and sidecar, so entries written in
# another format (codec, level, chunks) are never opened as this one: they are filled again
# under their new name and the old ones age out of the budget. Change FORMAT with the rest.
# 1: LZ4HC level 5 in 64³ chunks; 2: LZ4HC 2, one chunk; 3: LZ4HC 2, 5 MB slabs; 4: 2 MB slabs
FORMAT = 4
CODEC = "LZ4HC"  # a blosc2.Codec name
CLEVEL = 2
COMPRESS_THREADS = 1  # threads of one entry's compression (per call, not blosc2's global)


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


def _blosc2() -> Any:
    import blosc2

    return blosc2


SLAB_BYTES = 2 << 20  # an entry's chunks: slabs along the first axis of about this much ...
CHUNK_BYTES = 64 << 20  # ... and at most this much (decompressed), for very large volumes
SLAB_STEP = 32  # slab thickness in voxels: a multiple of the 32³ blocks


def _layout(shape: tuple[int, ...], itemsize: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """blosc2 chunks and blocks for a volume of ``shape``: 32³ blocks in slabs of ~2 MB.

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

    The slab size is also memory: blosc2 compresses a chunk from a buffer of its own size
    (padded to whole blocks) into another as large, both from malloc in the writer thread,
    and glibc's arena of that thread keeps about that much once they are freed (a freed
    5 MiB block also raises glibc's trim threshold to 10 MiB for every thread's arena). With
    32x240x155 slabs (2.6 MiB padded) instead of 64x240x155, each of the two writers of a
    training loader kept ~4 instead of ~7.5 MiB, and the largest block freed was 2.6 MiB
    (glibc's trim threshold 5 MiB); writes took ~23 instead of ~30 ms of CPU, and a patch
    decoded in the same ~0.25 ms (paired in one process, loaded 2-core machine).

    >>> _layout((240, 240, 155), 2)  # a BraTS volume, uint16
    ((32, 240, 155), (32, 32, 32))
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
    """CRC-32 of the file at ``path``, computed over a read-only mapping of it.

    No buffer is allocated: reading it in 4 MiB pieces took a 4 MiB bytes object from
    malloc in every thread that opens an entry (the loader's reader threads), and each
    thread's malloc arena kept that much after it was freed (glibc keeps freed memory
    below its trim threshold, ~10 MiB once a 5 MiB block was freed). An entry file is
    never truncated in place (published by ``os.replace``), so the mapping stays valid.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "f"
    >>> _ = path.write_bytes(b"radiobject")
    >>> empty = path.with_name("empty")
    >>> empty.touch()
    >>> _crc32(path) == zlib.crc32(b"radiobject"), _crc32(empty)
    (True, 0)
    """
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return 0  # an empty file cannot be mapped
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return zlib.crc32(view)


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
