"""TileDB contexts built from the settings in force, one per process.

A TileDB context does not survive ``fork``; every context here is remembered together with
the process id that built it, so a child process never reuses its parent's.
"""

from __future__ import annotations

import os
import threading

import tiledb

from radiobject._allocator import retain_freed_memory
from radiobject.config import RadiObjectConfig, get_config

__all__ = ["build_tiledb_config", "get_tiledb_ctx"]

_MIB = 1024 * 1024
_lock = threading.Lock()
_cache: dict[tuple[int, object], tiledb.Ctx] = {}
_inherited: list[tiledb.Ctx] = []


def build_tiledb_config(config: RadiObjectConfig | None = None) -> tiledb.Config:
    """The ``tiledb.Config`` for radiobject settings (the ones in force by default).

    >>> from radiobject import ReadConfig, configure
    >>> with configure(read=ReadConfig(concurrency=3)):
    ...     build_tiledb_config()["sm.compute_concurrency_level"]
    '3'
    """
    config = config or get_config()
    read, s3 = config.read, config.s3
    values = {
        "sm.compute_concurrency_level": read.concurrency,
        "sm.io_concurrency_level": read.concurrency,
        "sm.memory_budget": read.memory_budget_mb * _MIB,
        "sm.memory_budget_var": read.memory_budget_mb * _MIB,
        # with memory kept for reuse, TileDB's malloc_trim after every query only hands it
        # back to be faulted in again (see radiobject._allocator)
        "sm.mem.malloc_trim": str(read.retain_freed_mb == 0).lower(),
        # first buffer per column of a TileDB-Py sparse read (obs tables): TileDB-Py's 10 MiB
        # default made a 12-row obs read cost ~10 ms; bigger tables grow the buffers as needed
        "py.init_buffer_bytes": 256 * 1024,
        "vfs.s3.region": s3.region,
        "vfs.s3.scheme": s3.scheme,
        "vfs.s3.use_virtual_addressing": str(s3.use_virtual_addressing).lower(),
        "vfs.s3.max_parallel_ops": s3.max_parallel_ops,
        "vfs.s3.multipart_part_size": s3.multipart_part_size_mb * _MIB,
        "vfs.s3.connect_timeout_ms": s3.connect_timeout_ms,
        "vfs.s3.request_timeout_ms": s3.request_timeout_ms,
        "vfs.s3.connect_max_tries": s3.connect_max_tries,
        "vfs.s3.verify_ssl": str(s3.verify_ssl).lower(),
    }
    if s3.endpoint:
        values["vfs.s3.endpoint_override"] = s3.endpoint
    if s3.aws_access_key_id:
        values["vfs.s3.aws_access_key_id"] = s3.aws_access_key_id
    if s3.aws_secret_access_key:
        values["vfs.s3.aws_secret_access_key"] = s3.aws_secret_access_key
    if s3.aws_session_token:
        values["vfs.s3.aws_session_token"] = s3.aws_session_token
    if s3.profile:
        values["vfs.s3.aws_load_freq"] = ""  # let the SDK's chain look at the profile
        os.environ.setdefault("AWS_PROFILE", s3.profile)
    return tiledb.Config({k: str(v) for k, v in values.items()})


def _key(config: RadiObjectConfig) -> tuple[object, ...]:
    read = config.read
    return (read.concurrency, read.memory_budget_mb, read.retain_freed_mb == 0, config.s3)


def get_tiledb_ctx() -> tiledb.Ctx:
    """The shared TileDB context of this process, built from the settings in force.

    It is rebuilt when the read or S3 settings change, and never shared across ``fork``.

    >>> from radiobject import configure, get_tiledb_ctx
    >>> ctx = get_tiledb_ctx()
    >>> ctx is get_tiledb_ctx()  # built once, then shared
    True
    >>> with configure(read={"concurrency": 1}):  # new settings, new context
    ...     get_tiledb_ctx() is ctx, get_tiledb_ctx().config()["sm.compute_concurrency_level"]
    (False, '1')
    """
    config = get_config()
    retain_freed_memory(config.read.retain_freed_mb)
    key = (os.getpid(), _key(config))
    ctx = _cache.get(key)
    if ctx is None:
        with _lock:
            ctx = _cache.get(key)
            if ctx is None:
                if any(k[0] != key[0] for k in _cache):
                    # inherited through fork: keep the parent's contexts alive, unused (freeing
                    # a context made by another process can block for ever)
                    _inherited.extend(_cache.values())
                    _cache.clear()
                if len(_cache) >= 8:
                    _cache.pop(next(iter(_cache)))
                ctx = tiledb.Ctx(build_tiledb_config(config))
                _cache[key] = ctx
    return ctx
