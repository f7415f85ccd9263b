"""Running ingest tasks on any ``concurrent.futures.Executor``, failing fast and cleanly.

Threads are the default (``ReadConfig.max_workers`` of them); a ``ProcessPoolExecutor``
(with a ``forkserver`` or ``spawn`` context: TileDB contexts do not survive ``fork``) or a
Dask client's ``client.get_executor()`` work the same way.

Tasks are handed out a window at a time (twice the executor's workers), so a failure stops
the run after at most that many more tasks, and before the error is raised every task
already handed out has finished: no worker writes into a target after the caller has
removed it. (A Dask future reports "cancelled" while its task keeps running on a worker, so
tasks are never cancelled, only waited for.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

from radiobject._errors import ConfigurationError
from radiobject.config import get_config

__all__ = ["check_executor", "is_local_threads", "run_tasks"]

R = TypeVar("R")


def check_executor(executor: Any) -> None:
    """Raise :class:`ConfigurationError` unless ``executor`` is ``None`` or an ``Executor``."""
    if executor is not None and not isinstance(executor, Executor):
        raise ConfigurationError(
            f"executor must be a concurrent.futures.Executor (a ThreadPoolExecutor, a "
            f"ProcessPoolExecutor, or a Dask client's client.get_executor()), got "
            f"{type(executor).__name__}"
        )


def is_local_threads(executor: Executor | None) -> bool:
    """True when tasks run on threads of this process (they may share its TileDB context)."""
    return executor is None or isinstance(executor, ThreadPoolExecutor)


def _workers(executor: Executor) -> int:
    client = getattr(executor, "_client", None)  # distributed.cfexecutor.ClientExecutor
    if client is not None and hasattr(client, "nthreads"):
        return max(1, int(sum(client.nthreads().values())))
    n = getattr(executor, "_max_workers", None)  # thread and process pools
    return int(n) if n else os.cpu_count() or 2


def run_tasks(
    calls: Sequence[Callable[[], R]],
    *,
    executor: Executor | None = None,
    progress: bool = False,
    desc: str | None = None,
) -> list[R]:
    """Run every call on ``executor`` (default: a thread pool); results in call order.

    The first failure is raised once every call already handed out has finished; calls not
    handed out yet never run.

    >>> from functools import partial
    >>> run_tasks([partial(pow, 2, k) for k in range(5)])
    [1, 2, 4, 8, 16]
    """
    own = executor is None
    pool = ThreadPoolExecutor(get_config().read.max_workers) if own else executor
    assert pool is not None
    window = 2 * _workers(pool)
    results: list[Any] = [None] * len(calls)
    pending: dict[Future[R], int] = {}
    error: BaseException | None = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(calls), desc=desc)
    todo = iter(enumerate(calls))
    try:
        while True:
            while error is None and len(pending) < window:
                nxt = next(todo, None)
                if nxt is None:
                    break
                pending[pool.submit(nxt[1])] = nxt[0]
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                i = pending.pop(fut)
                try:
                    results[i] = fut.result()
                except BaseException as e:
                    error = error or e
                if bar is not None:
                    bar.update(1)
        if error is not None:
            raise error
        return results
    except BaseException:
        wait(pending)  # e.g. Ctrl-C: let what runs finish before the target is removed
        raise
    finally:
        if bar is not None:
            bar.close()
        if own:
            pool.shutdown(wait=True)
