"""What the operating system holds: page cache residency and eviction, and processes' PSS.

- :func:`evict` drops files from the page cache (``posix_fadvise(..., POSIX_FADV_DONTNEED)``
  per file, after an ``fsync`` so dirty pages can go too): a cold start reads from the disk.
- :func:`resident_fraction` asks the kernel which pages of a file are in the page cache
  (``mincore`` through ctypes): how the tests check that :func:`evict` evicts.
- :func:`warm` reads files once so that a warm row starts with its files in the page cache
  whatever ran before it.
- :func:`pss_tree` sums the proportional set size of a process and its descendants (DataLoader
  workers, TorchIO's subject loaders), split into anonymous, file-backed and shared memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from collections.abc import Iterable
from pathlib import Path


def files_under(paths: Iterable[str | Path]) -> list[Path]:
    """Every regular file under ``paths`` (each a file or a folder), walked."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out.extend(f for f in sorted(p.rglob("*")) if f.is_file())
    return out


def _fs_type(path: Path) -> str:
    """The file system type of the mount holding ``path`` (from /proc/mounts)."""
    best, kind = "", ""
    target = str(path.resolve())
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mount = parts[1]
                if target.startswith(mount) and len(mount) > len(best):
                    best, kind = mount, parts[2]
    except OSError:
        return ""
    return kind


def evict(paths: Iterable[str | Path]) -> int:
    """Drop every file under ``paths`` from the page cache; returns the bytes asked to drop.

    Raises ``RuntimeError`` on tmpfs/ramfs, where a file's pages are its only copy and
    cannot be evicted (a "cold" row there would be a warm one).
    """
    total = 0
    files = files_under(paths)
    if files and _fs_type(files[0]) in ("tmpfs", "ramfs"):
        raise RuntimeError(
            f"{files[0].parent} is on {_fs_type(files[0])}: its pages cannot be evicted; "
            "put --workdir on a disk for cold rows"
        )
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            total += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return total


def warm(paths: Iterable[str | Path]) -> int:
    """Read every file under ``paths`` once (into the page cache); returns the bytes read."""
    total = 0
    for path in files_under(paths):
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(8 << 20):
                total += len(chunk)
    return total


def resident_fraction(path: str | Path) -> float:
    """Share of ``path``'s pages in the page cache, from ``mincore`` (Linux, macOS)."""
    size = os.path.getsize(path)
    if size == 0:
        return 1.0
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]  # fmt: skip
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    page = mmap.PAGESIZE
    pages = -(-size // page)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            return sum(b & 1 for b in vec) / pages
        finally:
            libc.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.append(p)
            todo.extend(_children(p))
    return seen


def pss(pid: int) -> dict[str, float]:
    """PSS of one process in MiB: total, anon, file, shmem (zeros if it is gone)."""
    fields = {"Pss:": "pss", "Pss_Anon:": "anon", "Pss_File:": "file", "Pss_Shmem:": "shmem"}
    out = dict.fromkeys(fields.values(), 0.0)
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key = line.split(maxsplit=1)[0]
                if key in fields:
                    out[fields[key]] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def pss_tree(pid: int | None = None) -> dict[str, float]:
    """Summed PSS (MiB) of ``pid`` (this process) and its descendants, and their count."""
    pids = descendants(pid or os.getpid())
    total = dict.fromkeys(("pss", "anon", "file", "shmem"), 0.0)
    for p in pids:
        for k, v in pss(p).items():
            total[k] += v
    total["processes"] = float(len(pids))
    return total
