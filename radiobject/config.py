"""Settings: how volumes are read, written and fetched from S3.

Settings are frozen dataclasses validated on construction; :func:`configure` installs them
as the process defaults and also works as a ``with`` block that restores what was there.
:func:`settings` applies them to one block of code only (a context variable: other threads
and tasks keep theirs), the way ``tiledb.scope_ctx`` scopes a context.

This module is the settings' public home and holds what makes them apply: the settings in
force (:class:`RadiObjectConfig`), :func:`configure`, :func:`settings` and what the read path
uses to carry a scope into its threads. The classes of each kind of setting live apart:
:class:`ReadConfig` in ``_config_read``, :class:`WriteConfig` and its tile and compression
parts in ``_config_write``, :class:`S3Config` in ``_config_s3``, the checks they share in
``_config_checks``; all are imported from here (or from :mod:`radiobject`).

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
import inspect
import itertools
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from radiobject._config_read import ReadConfig
from radiobject._config_s3 import S3Config
from radiobject._config_write import (
    CompressionConfig,
    Compressor,
    SliceOrientation,
    TileConfig,
    WriteConfig,
)
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


def in_scope(scope: Scope | None) -> contextlib.AbstractContextManager[None]:
    """Run a block under ``scope`` (from :func:`current_scope`; ``None``: change nothing).

    Entered for every batch a loader reads: without a scope it is a shared no-op context.
    """
    return _NO_SCOPE if scope is None else _scoped(scope)


_NO_SCOPE: contextlib.nullcontext[None] = contextlib.nullcontext()


@contextlib.contextmanager
def _scoped(scope: Scope) -> Iterator[None]:
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
