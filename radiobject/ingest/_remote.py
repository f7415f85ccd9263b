"""TileDB settings that travel to other processes, and the contexts built from them there.

A task sent to a process pool or a Dask worker cannot carry a ``tiledb.Ctx``; it carries the
settings of the driver's context as a plain dict (only those that differ from TileDB's
defaults: S3 endpoint, credentials, concurrency ...), and the worker builds one context per
process from them and reuses it for every later task with the same settings.

>>> import tiledb
>>> settings = tiledb_settings(tiledb.Ctx(tiledb.Config({"sm.io_concurrency_level": "3"})))
>>> settings["sm.io_concurrency_level"]
'3'
>>> ctx_from_settings(settings) is ctx_from_settings(dict(settings))
True
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

import tiledb

from radiobject._process import Resource

__all__ = ["ctx_from_settings", "tiledb_settings"]

# per process: another thread may hold it at the moment of a fork
_LOCK: Resource[threading.Lock] = Resource("remote contexts lock", threading.Lock)
_defaults: dict[str, str] = {}
_contexts: dict[tuple[int, tuple[tuple[str, str], ...]], tiledb.Ctx] = {}
_inherited: list[tiledb.Ctx] = []


def tiledb_settings(ctx: tiledb.Ctx) -> dict[str, str]:
    """The settings of ``ctx`` that differ from TileDB's defaults, as a plain dict.

    The dict may hold S3 credentials: keep it out of logs and reprs.
    """
    with _LOCK.get():
        if not _defaults:
            default = tiledb.Config()
            _defaults.update({k: default[k] for k in default})
    cfg = ctx.config()
    return {k: cfg[k] for k in cfg if _defaults.get(k) != cfg[k]}


def ctx_from_settings(settings: Mapping[str, str]) -> tiledb.Ctx:
    """A context of this process with ``settings``, built once and reused.

    A context made by a parent process before ``fork`` is never returned (nor freed).
    """
    key = (os.getpid(), tuple(sorted(settings.items())))
    with _LOCK.get():
        ctx = _contexts.get(key)
        if ctx is None:
            for k in [k for k in _contexts if k[0] != key[0]]:
                _inherited.append(_contexts.pop(k))
            ctx = tiledb.Ctx(tiledb.Config(dict(settings)))
            _contexts[key] = ctx
    return ctx
