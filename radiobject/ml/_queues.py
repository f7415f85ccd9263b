"""The queues between a loader and its workers: a small message is written by whoever puts it.

A ``multiprocessing.Queue`` hands every ``put`` to a feeder thread of its own, which pickles
the object and writes it to the pipe. A DataLoader has one queue per worker for the indices
(fed from the loading process) and one for the batches (fed from each worker): per batch, a
feeder wakes in the loading process and another in the worker, and each must take the GIL
from the thread that is decoding the next batch before the batch it holds goes out. Measured
on 2 shared cores (fits cohort, 64³ patches, batches of 4, 2 workers, 6 process pairs back
to back): the loader kept 1.83 cores busy with feeders and 1.93-1.96 without, steady
4,451-5,076 samples/s against 5,163-5,945 (1.03-1.19x per pair), the loading process's CPU
per batch 0.22 against 0.16 ms. A batch's message and its indices cost 52-55 µs of CPU
through feeders and 33-37 µs written directly (the two processes' CPU, 3,000 messages).

:class:`DirectQueue` pickles a message in the putting thread and, when it is small
(:data:`DIRECT_BYTES`; a batch of radiobject's loader travels as a slot reference of about
550 bytes, its indices in about 100), writes it there under the queue's write lock: no
feeder thread is started. A larger message, and every message after it (the order of one
queue's messages is kept), goes through the feeder thread as before, pickled once. A direct
write waits only when its pipe (64 KiB on Linux) is full of unread small messages: the
loading process always reads the batches, and an index pipe holds at most
``prefetch_factor`` of them, so the loading process and a worker could both wait to write to
each other only with a ``prefetch_factor`` of about 16 and index lists of ~4 KiB (batches of
~300 samples) at once.

radiobject's loaders use it through their multiprocessing context
(:func:`~radiobject.ml._start_method.mp_context`); a context passed by the user keeps its
own queues.
"""

from __future__ import annotations

import multiprocessing.context
import multiprocessing.queues
import pickle
import queue
import threading
from collections.abc import Callable
from multiprocessing.reduction import ForkingPickler
from typing import Any

__all__ = [
    "DIRECT_BYTES",
    "DirectQueue",
    "ForkServerContext",
    "SpawnContext",
    "direct_queue",
    "with_direct",
]

DIRECT_BYTES = 4096  # at most this many pickled bytes are written by the putting thread


class DirectQueue(multiprocessing.queues.Queue):  # type: ignore[type-arg]
    """A ``multiprocessing.Queue`` whose small messages are written by the thread that puts them.

    >>> import multiprocessing
    >>> q = DirectQueue(ctx=multiprocessing.get_context("spawn"))
    >>> q.put({"batch": [1, 2]})
    >>> q.get(timeout=10), q.direct_puts, q.feeder_started()
    ({'batch': [1, 2]}, 1, False)
    >>> q.put(bytes(2 * DIRECT_BYTES))  # large: through the feeder thread, as before
    >>> len(q.get(timeout=10)), q.feeder_started()
    (8192, True)
    >>> q.close(); q.join_thread()
    """

    direct_puts = 0  # messages this process wrote itself (the class's 0 until one is)
    # multiprocessing.queues.Queue's own state (typeshed leaves it out)
    _thread: threading.Thread | None
    _closed: bool
    _sem: Any
    _wlock: Any
    _send_bytes: Callable[[Any], None]

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Put ``obj``: pickled and written here when small and nothing waits in the feeder."""
        if self._thread is not None:  # a large message went to the feeder: keep the order
            super().put(obj, block, timeout)
            return
        if self._closed:
            raise ValueError(f"Queue {self!r} is closed")
        data = ForkingPickler.dumps(obj)  # an unpicklable message fails here, in the caller
        if len(data) > DIRECT_BYTES:
            super().put(_Pickled(bytes(data)), block, timeout)  # not pickled twice
            return
        if not self._sem.acquire(block, timeout):
            raise queue.Full
        try:
            if self._wlock is None:  # Windows: one writer per pipe end
                self._send_bytes(data)
            else:
                with self._wlock:
                    self._send_bytes(data)
        except BaseException:
            self._sem.release()
            raise
        self.direct_puts += 1

    def feeder_started(self) -> bool:
        """Whether this process started the queue's feeder thread (a large message did)."""
        return self._thread is not None


class _Pickled:
    """A message pickled already: the feeder writes its bytes, the reader gets the message."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (pickle.loads, (self.data,))


def direct_queue(self: multiprocessing.context.BaseContext, maxsize: int = 0) -> DirectQueue:
    """``Queue()`` of radiobject's contexts: a :class:`DirectQueue`."""
    return DirectQueue(maxsize, ctx=self.get_context())


class ForkServerContext(multiprocessing.context.ForkServerContext):
    """The ``forkserver`` context, its queues :class:`DirectQueue`."""

    Queue = direct_queue


class SpawnContext(multiprocessing.context.SpawnContext):
    """The ``spawn`` context, its queues :class:`DirectQueue`."""

    Queue = direct_queue


def with_direct(ctx: multiprocessing.context.BaseContext) -> multiprocessing.context.BaseContext:
    """``ctx``'s start method as a context of radiobject's, whose queues are DirectQueue.

    >>> import multiprocessing
    >>> type(with_direct(multiprocessing.get_context("spawn"))).__name__
    'SpawnContext'
    """
    name = ctx.get_start_method()
    if name == "forkserver":
        return ForkServerContext()
    if name == "spawn":
        return SpawnContext()
    return ctx
