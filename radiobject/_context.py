"""TileDB contexts: the one built from the settings in force, and the ones users pass.

Contexts belong to the process that built them: they live in the process state
(:mod:`radiobject._process`), so a forked child builds its own and never frees or uses its
parent's. A context a user passes (``RadiObject(uri, ctx=...)``) travels to other processes
as a :class:`ContextRef`: its settings, from which each process builds one context of its
own (once per distinct settings).
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import tiledb
from cachetools import LRUCache

from radiobject._allocator import retain_freed_memory
from radiobject._aws_profile import profile_credentials
from radiobject._process import Resource, state
from radiobject.config import RadiObjectConfig, get_config

__all__ = ["ContextRef", "build_tiledb_config", "ctx_settings", "get_tiledb_ctx", "local_ctx"]

_MIB = 1024 * 1024
# TileDB's dense reader decodes a query's tiles in batches of at most this many bytes
# (``sm.mem.tile_upper_memory_limit``; TileDB's default, 1 GiB, decodes a whole volume's
# tiles at once). Its tile buffers come from the malloc arena of the thread that runs the
# query, which keeps what was freed: a whole 240x240x155 uint16 volume read at once left ~20
# MB per reading thread in the process; 4 MiB batches (~18 tiles of 48³ uint16) ~5.4 MiB per
# thread, 2 MiB ~2.9 and 1 MiB ~1.5 (a loader reads on 4 reader and up to 4 slab threads).
# Whole-volume reads, paired in one process on the loaded 2-core machine: 2 MiB took the
# CPU time of 4 (25.5 and 27.5 against 27.4 and 28.6 ms), 1 MiB ~20% more (34.2 and 31.6)
TILE_MEMORY_MB = 2
Settings = tuple[tuple[str, str], ...]


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
        "sm.mem.tile_upper_memory_limit": TILE_MEMORY_MB * _MIB,
        # TileDB's malloc_trim after every query hands freed memory back to the kernel only
        # for the next query to fault it in again; it is TileDB's setting, of this context
        # (the process's allocator is left alone unless ReadConfig.retain_freed_mb asks)
        "sm.mem.malloc_trim": "false",
        # first buffer per column of a TileDB-Py sparse read (obs tables): TileDB-Py's 10 MiB
        # default made a 12-row obs read cost ~10 ms; bigger tables grow the buffers as needed
        "py.init_buffer_bytes": 256 * 1024,
        "vfs.s3.region": s3.region,
        # the AWS SDK would install a process-wide SIGPIPE handler; Python already ignores
        # SIGPIPE (a broken connection is an EPIPE error), and a library installs no handlers
        "vfs.s3.install_sigpipe_handler": "false",
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
        for key, value in profile_credentials(s3.profile).items():
            values.setdefault(f"vfs.s3.{key}", value)  # keys given in S3Config win
    return tiledb.Config({k: str(v) for k, v in values.items()})


def _key(config: RadiObjectConfig) -> tuple[object, ...]:
    read = config.read
    return (read.concurrency, read.memory_budget_mb, config.s3)


class _Contexts:
    """The TileDB contexts of one process."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        # built from radiobject settings (get_tiledb_ctx), the last few settings in use
        self.for_config: LRUCache[tuple[object, ...], tiledb.Ctx] = LRUCache(maxsize=8)
        self.last: tuple[RadiObjectConfig, tiledb.Ctx] | None = None
        # built from the settings of a user's context (ContextRef, ctx_for_process)
        self.for_settings: LRUCache[Settings, tiledb.Ctx] = LRUCache(maxsize=32)
        # contexts this process built (a forked child may use these, not inherited ones)
        self.own: weakref.WeakSet[tiledb.Ctx] = weakref.WeakSet()
        # in a forked child: id of an inherited context -> (it, kept unfreed; ours)
        self.foreign: dict[int, tuple[tiledb.Ctx, tiledb.Ctx]] = {}

    def build(self, config: tiledb.Config) -> tiledb.Ctx:
        ctx = tiledb.Ctx(config)
        self.own.add(ctx)
        return ctx


_CONTEXTS: Resource[_Contexts] = Resource("TileDB contexts", _Contexts)


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
    if config.read.retain_freed_mb:  # opt-in only: see radiobject._allocator
        retain_freed_memory(config.read.retain_freed_mb)
    contexts = _CONTEXTS.get()
    last = contexts.last
    if last is not None and last[0] is config:
        return last[1]
    key = _key(config)
    with contexts.lock:
        ctx = contexts.for_config.get(key)
        if ctx is None:
            ctx = contexts.build(build_tiledb_config(config))
            contexts.for_config[key] = ctx
        contexts.last = (config, ctx)
    return ctx


_DEFAULTS: dict[str, str] = {}
# settings of contexts seen so far (a context's settings never change, so this memo holds
# in a forked child too; weak: it keeps no context alive)
_SETTINGS: weakref.WeakKeyDictionary[tiledb.Ctx, Settings] = weakref.WeakKeyDictionary()


def _settings_of(ctx: tiledb.Ctx) -> Settings:
    found = _SETTINGS.get(ctx)
    if found is None:
        if not _DEFAULTS:
            _DEFAULTS.update(tiledb.Config().items())
        items = ctx.config().items()
        found = tuple(sorted((k, v) for k, v in items if _DEFAULTS.get(k) != v))
        _SETTINGS[ctx] = found
    return found


def ctx_settings(ctx: tiledb.Ctx) -> dict[str, str]:
    """The settings of ``ctx`` that differ from TileDB's defaults (enough to rebuild it).

    >>> ctx_settings(tiledb.Ctx({"sm.compute_concurrency_level": "3"}))
    {'sm.compute_concurrency_level': '3'}
    """
    return dict(_settings_of(ctx))


def ctx_with_settings(settings: Mapping[str, str]) -> tiledb.Ctx:
    """This process's context with ``settings`` (non-default items), built once per process."""
    key = tuple(sorted((str(k), str(v)) for k, v in settings.items()))
    contexts = _CONTEXTS.get()
    with contexts.lock:
        ctx = contexts.for_settings.get(key)
        if ctx is None:
            ctx = contexts.build(tiledb.Config(dict(key)))
            contexts.for_settings[key] = ctx
    return ctx


def local_ctx(ctx: tiledb.Ctx | None) -> tiledb.Ctx:
    """The context to read with in this process, given the one an object was made with.

    ``None`` means the shared context of the settings in force. A context is used as it is,
    except in a forked child that did not build it: there a context with the same settings
    stands in (built once; the inherited one is kept alive, unused and unfreed).

    >>> ctx = tiledb.Ctx()
    >>> local_ctx(ctx) is ctx, local_ctx(None) is get_tiledb_ctx()
    (True, True)
    """
    if ctx is None:
        return get_tiledb_ctx()
    if not state().forked:
        return ctx
    contexts = _CONTEXTS.get()
    if ctx in contexts.own:
        return ctx
    with contexts.lock:
        hit = contexts.foreign.get(id(ctx))
        if hit is None:
            hit = contexts.foreign[id(ctx)] = (ctx, ctx_with_settings(dict(_settings_of(ctx))))
    return hit[1]


_SECRET = re.compile(r"secret|password|token|key_id|credential|sas_token", re.IGNORECASE)


class ContextRef:
    """A picklable stand-in for a TileDB context: its settings, and the context itself here.

    In the process that holds the context, :meth:`get` returns it (see :func:`local_ctx`);
    unpickled in another process, it returns a context of that process with the same
    settings (one per process per distinct settings). Secrets never appear in its ``repr``.

    >>> import pickle
    >>> ctx = tiledb.Ctx({"vfs.s3.aws_secret_access_key": "hunter2"})
    >>> ref = ContextRef(ctx)
    >>> ref.get() is ctx, ref
    (True, ContextRef({'vfs.s3.aws_secret_access_key': '***'}))
    >>> other = pickle.loads(pickle.dumps(ref)).get()
    >>> other is not ctx, other.config()["vfs.s3.aws_secret_access_key"]
    (True, 'hunter2')
    """

    __slots__ = ("_ctx", "settings")

    def __init__(self, ctx: tiledb.Ctx) -> None:
        self._ctx: tiledb.Ctx | None = ctx
        self.settings: dict[str, str] = ctx_settings(ctx)

    def get(self) -> tiledb.Ctx:
        """The context to use in this process."""
        if self._ctx is not None:
            return local_ctx(self._ctx)
        return ctx_with_settings(self.settings)

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._ctx = None
        self.settings = dict(state["settings"])

    def __repr__(self) -> str:
        shown = {k: "***" if _SECRET.search(k) else v for k, v in self.settings.items()}
        return f"ContextRef({shown})"


def portable_ctx(ctx: tiledb.Ctx | None) -> ContextRef | None:
    """What to pickle for an object's context (``None``: the settings in force)."""
    return None if ctx is None else ContextRef(ctx)


def unpickled_ctx(ref: ContextRef | tiledb.Ctx | None) -> tiledb.Ctx | None:
    """The context of an object unpickled with :func:`portable_ctx`'s reference."""
    return ref.get() if isinstance(ref, ContextRef) else ref
