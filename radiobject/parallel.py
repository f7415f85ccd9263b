"""Contexts and helpers for parallel code: threads share, processes isolate.

========================  ============================  ============================
Scenario                  Function                      Behaviour
========================  ============================  ============================
ThreadPoolExecutor        ``ctx_for_threads(ctx)``      same context (shared caching)
multiprocessing.Pool      ``ctx_for_process()``         isolated context
DataLoader workers        ``ctx_for_process()``         isolated context
========================  ============================  ============================
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import tiledb

from radiobject._context import ctx_settings, ctx_with_settings, get_tiledb_ctx
from radiobject.config import get_config

__all__ = ["ctx_for_process", "ctx_for_threads", "map_on_threads"]

T = TypeVar("T")
R = TypeVar("R")


def ctx_for_threads(ctx: tiledb.Ctx | None = None) -> tiledb.Ctx:
    """The context threads should share: ``ctx`` itself, or the process default.

    Threads of one process share a context so they share its thread pools (radiobject's
    block cache is per process, shared by every context: see ``radiobject.clear_caches``).

    >>> from radiobject import get_tiledb_ctx
    >>> ctx_for_threads(get_tiledb_ctx()) is get_tiledb_ctx()
    True
    """
    return ctx if ctx is not None else get_tiledb_ctx()


def ctx_for_process(base_ctx: tiledb.Ctx | None = None) -> tiledb.Ctx:
    """A context private to the calling process, safe after ``fork`` or ``spawn``.

    Each process gets its own context, built on first use (with ``base_ctx``'s settings when
    given, else the settings in force) and reused by later calls in that process. A
    context inherited from a parent process is never returned.

    >>> import os
    >>> ctx_for_process() is ctx_for_process()
    True
    """
    if base_ctx is None:
        return get_tiledb_ctx()
    # contexts live in the process state (radiobject._process): a forked child builds its own
    return ctx_with_settings(ctx_settings(base_ctx))


def map_on_threads(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    max_workers: int | None = None,
    progress: bool = False,
    desc: str | None = None,
) -> list[R]:
    """Apply ``fn`` to every item on a thread pool; results keep the order of ``items``.

    Args:
        fn: the function; it should use :func:`ctx_for_threads` for its TileDB context.
        items: the inputs.
        max_workers: threads (default ``ReadConfig.max_workers``).
        progress: show a tqdm progress bar.
        desc: the progress bar's label.

    >>> map_on_threads(lambda x: x * x, range(5))
    [0, 1, 4, 9, 16]
    """
    items = list(items)
    workers = max_workers or get_config().read.max_workers
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=desc)
    try:
        if workers <= 1 or len(items) <= 1:
            out = []
            for item in items:
                out.append(fn(item))
                if bar is not None:
                    bar.update(1)
            return out
        with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
            futures = [pool.submit(fn, item) for item in items]
            results = []
            try:
                for fut in futures:
                    results.append(fut.result())
                    if bar is not None:
                        bar.update(1)
            except BaseException:
                for fut in futures:  # fail fast: items not started yet never run
                    fut.cancel()
                raise
            return results
    finally:
        if bar is not None:
            bar.close()
