"""What radiobject keeps per process, in one object that a forked child replaces.

TileDB contexts, open array handles, the block cache, thread pools, a loader worker's
shared state: each belongs to the process that made it. A TileDB context does not survive
``fork`` (its threads are gone in the child, and freeing a TileDB object made by another
process can block for ever), and a thread pool or a lock held by another thread at the
moment of the fork is useless in the child.

So every such resource is a :class:`Resource`, built on first use into the
:class:`ProcessState` of the calling process. ``os.register_at_fork`` gives a forked child a
new, empty state; the parent's is kept, whole and unfreed, in a list that is never emptied
(the child never uses it: it only must not free it). This is what lets radiobject's loaders
fork their workers where no other start method can work (``radiobject.ml._start_method``).
``spawn`` and ``forkserver`` workers start from a fresh interpreter, or from a fork server
that never read anything, and build their resources on first use like any process.

>>> calls = []
>>> numbers = Resource("example numbers", lambda: calls.append(1) or [1, 2, 3])
>>> numbers.get() is numbers.get(), len(calls)
(True, 1)
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["ProcessState", "Resource", "state"]

T = TypeVar("T")


class Resource(Generic[T]):
    """A per-process resource: ``factory()`` builds it on first use in each process."""

    def __init__(self, name: str, factory: Callable[[], T]) -> None:
        self.name = name
        self.factory = factory

    def get(self) -> T:
        """This process's instance, built now if it is the first use."""
        return _current.get(self)

    def peek(self) -> T | None:
        """This process's instance if it was built, else None (builds nothing)."""
        value: T | None = _current.values.get(self)
        return value

    def __repr__(self) -> str:
        return f"Resource({self.name!r})"


class ProcessState:
    """The resources of one process, each built once, on first use, under a lock.

    Attributes:
        forked: whether this process is a ``fork`` child of a process that had imported
            radiobject (objects it inherited, such as TileDB contexts, are not its own).
        built: how many times each resource (by name) was built in this process: once.
    """

    def __init__(self, *, forked: bool = False) -> None:
        self.forked = forked
        self.values: dict[Resource[Any], Any] = {}
        self.built: Counter[str] = Counter()
        self._lock = threading.RLock()  # re-entrant: a factory may use other resources

    def get(self, resource: Resource[T]) -> T:
        """The instance of ``resource`` in this state, built on first use."""
        try:
            value: T = self.values[resource]
            return value
        except KeyError:
            pass
        with self._lock:
            if resource not in self.values:
                self.values[resource] = resource.factory()
                self.built[resource.name] += 1
            value = self.values[resource]
            return value


_current = ProcessState()
# the states of the processes this one was forked from: kept alive, never freed
_inherited: list[ProcessState] = []


def state() -> ProcessState:
    """The state of the calling process."""
    return _current


def inherited() -> tuple[ProcessState, ...]:
    """States of the parent processes this one was forked from (oldest first), kept unfreed."""
    return tuple(_inherited)


def _after_fork_in_child() -> None:
    global _current
    _inherited.append(_current)
    _current = ProcessState(forked=True)


os.register_at_fork(after_in_child=_after_fork_in_child)
