"""Keep freed memory in the process between reads (glibc's malloc).

TileDB allocates fresh tile buffers for every query and, by default, calls ``malloc_trim``
when the query ends. The pages go back to the kernel and the next query faults them in
again, zeroed: on the 2-core benchmark machine that cost more than decompressing the tiles
(a 240x240x155 float32 volume read in 60-80 ms, of which 30-110 ms system time; 23 ms with
the memory kept). :func:`retain_freed_memory` asks glibc to keep up to ``mb`` MiB of freed
memory for reuse; radiobject's TileDB contexts then skip TileDB's trim (see
``build_tiledb_config``). ``ReadConfig(retain_freed_mb=0)`` restores glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

__all__ = ["retain_freed_memory"]

# glibc's mallopt parameters and their defaults on 64-bit Linux (malloc/malloc.c)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_TOP_PAD: 128 * 1024, _M_MMAP_THRESHOLD: 128 * 1024}
# largest mmap threshold glibc accepts on 64-bit (HEAP_MAX_SIZE / 2): blocks below it come
# from the reusable heap, bigger ones (whole volumes) are mapped and unmapped as usual
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_MIB = 1024 * 1024

_lock = threading.Lock()
_state: tuple[int, int] | None = None  # (pid, mb) last applied in this process


def _mallopt() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no mallopt tunables)
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def retain_freed_memory(mb: int) -> bool:
    """Let this process keep up to ``mb`` MiB of freed memory for reuse (0: glibc defaults).

    Applied once per process and value; returns whether the allocator took the settings
    (False on platforms without glibc, where nothing changes).

    >>> retain_freed_memory(256) in (True, False)
    True
    """
    global _state
    key = (os.getpid(), mb)
    if _state == key:
        return True
    with _lock:
        if _state == key:
            return True
        mallopt = _mallopt()
        if mallopt is None:
            return False
        if mb > 0:
            values = {
                _M_TRIM_THRESHOLD: mb * _MIB,
                _M_TOP_PAD: min(mb, 64) * _MIB,
                _M_MMAP_THRESHOLD: _MMAP_THRESHOLD_MAX,
            }
        else:
            values = _DEFAULTS
        ok = all(mallopt(param, value) == 1 for param, value in values.items())
        _state = key if ok else None
        return ok


def applied() -> tuple[int, int] | None:
    """``(pid, mb)`` last applied in this process, or None."""
    return _state
