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

import functools
import threading
from collections.abc import Mapping

import tiledb

from radiobject._process import Resource

__all__ = ["ctx_from_settings", "tiledb_settings"]


class _Contexts:
    """This process's contexts, by settings.

    One entry of :class:`~radiobject._process.ProcessState`: a forked child starts with
    none, and never uses nor frees its parent's.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_settings: dict[tuple[tuple[str, str], ...], tiledb.Ctx] = {}


_CONTEXTS: Resource[_Contexts] = Resource("remote contexts", _Contexts)


@functools.cache
def _tiledb_defaults() -> dict[str, str]:
    """TileDB's default settings (plain strings: the same in every process)."""
    default = tiledb.Config()
    return {k: default[k] for k in default}


def tiledb_settings(ctx: tiledb.Ctx) -> dict[str, str]:
    """The settings of ``ctx`` that differ from TileDB's defaults, as a plain dict.

    The dict may hold S3 credentials: keep it out of logs and reprs.
    """
    defaults = _tiledb_defaults()
    cfg = ctx.config()
    return {k: cfg[k] for k in cfg if defaults.get(k) != cfg[k]}


def ctx_from_settings(settings: Mapping[str, str]) -> tiledb.Ctx:
    """A context of this process with ``settings``, built once and reused.

    A context made by a parent process before ``fork`` is never returned (nor freed): the
    child's process state starts empty.
    """
    key = tuple(sorted(settings.items()))
    contexts = _CONTEXTS.get()
    with contexts.lock:
        ctx = contexts.by_settings.get(key)
        if ctx is None:
            ctx = contexts.by_settings[key] = tiledb.Ctx(tiledb.Config(dict(settings)))
    return ctx
