"""Epoch-aware read-ahead: read the regions of the next samples before they are asked for.

A loader's sampler knows the order of an epoch (:meth:`EpochSampler.order`) and every
sample's regions are a pure function of its key, so when a batch arrives, the process that
reads it knows the batches it will read next: all of them in the main process
(``num_workers=0``), and batches ``b + n, b + 2n, ...`` in worker ``b mod n`` of ``n``
(DataLoader hands batches to its workers in turn). ``ReadConfig.read_ahead`` samples of
those are planned and read on a small pool of threads, volume by volume (the reads of one
volume run in one task, so the tiles or whole volume the first fetches serve the others),
within ``ReadConfig.read_ahead_mb`` of results not yet taken.

A read that was read ahead returns the same voxels as a read now: the sample only takes the
array earlier. A read that failed, ahead or not, raises at the sample that needs it, as a
radiobject error naming the URI and the region; a read not yet started when its sample comes
is cancelled and read directly. Stopping an epoch (the sampler's iterator ends or is
dropped) cancels what is pending and waits for the reads under way; the pool's threads end
when it has no work.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import numpy as np

from radiobject._errors import RadiObjectError, StorageError
from radiobject._process import Resource
from radiobject.config import get_config
from radiobject.ml._plan import RegionRead
from radiobject.read._region import block_cache

if TYPE_CHECKING:
    from radiobject.ml._dataset import VolumeCollectionDataset

__all__ = ["ReadAheadSchedule"]


@dataclass
class ReadAheadSchedule:
    """The order a loader asks for samples in, as its datasets' read-ahead sees it.

    Args:
        order: ``epoch -> item indices`` in sampler order (e.g. ``EpochSampler.order``).
        batch_size: samples per batch.
        num_workers: the loader's worker processes (0: the main process reads).

    >>> schedule = ReadAheadSchedule(lambda epoch: [3, 1, 0, 2, 5, 4], 2, num_workers=2)
    >>> schedule.upcoming((0, 1), depth=4)  # batch 0 in worker 0: batch 2 comes next
    [(0, 5), (0, 4)]
    >>> ReadAheadSchedule(lambda epoch: [3, 1, 0, 2], 2).upcoming((7, 3), depth=1)
    [(7, 0)]
    """

    order: Callable[[int], Sequence[int]]
    batch_size: int
    num_workers: int = 0
    _epoch: int = field(default=-1, repr=False)
    _items: list[int] = field(default_factory=list, repr=False)
    _position: dict[int, int] = field(default_factory=dict, repr=False)

    def _load(self, epoch: int) -> None:
        if epoch != self._epoch:
            self._items = [int(i) for i in self.order(epoch)]
            self._position = {i: p for p, i in enumerate(self._items)}
            self._epoch = epoch

    def upcoming(self, key: tuple[int, int], depth: int) -> list[tuple[int, int]]:
        """Up to ``depth`` keys this process reads after the batch starting at ``key``."""
        epoch, index = key
        self._load(epoch)
        position = self._position.get(index)
        if position is None:  # not from this order (another sampler): nothing to foresee
            return []
        size, step = max(1, self.batch_size), max(1, self.num_workers)
        batch = position // size
        out: list[tuple[int, int]] = []
        nxt = batch + step
        while len(out) < depth and nxt * size < len(self._items):
            for p in range(nxt * size, min((nxt + 1) * size, len(self._items))):
                if len(out) == depth:
                    break
                out.append((epoch, self._items[p]))
            nxt += step
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_epoch=-1, _items=[], _position={})  # rebuilt where it is used
        return state


class _Task:
    """The reads of one volume, run one after another by one pool thread."""

    def __init__(
        self, owner: _AheadState, reads: list[tuple[RegionRead, Future[np.ndarray]]]
    ) -> None:
        self.owner = owner
        self.reads = reads

    def run(self) -> None:
        try:
            for read, future in self.reads:
                if not future.set_running_or_notify_cancel():
                    continue  # its sample came first and read it itself
                try:
                    future.set_result(read.read())
                except BaseException as exc:  # raised at the sample that needs it
                    future.set_exception(exc)
        finally:
            self.owner.task_done()


class _Pool:
    """Threads of this process that run read-ahead tasks; they end when there is no work."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tasks: deque[_Task] = deque()
        self.threads: set[threading.Thread] = set()

    def submit(self, task: _Task, size: int) -> None:
        with self.lock:
            self.tasks.append(task)
            if len(self.threads) < size:
                thread = threading.Thread(
                    target=self._run, name="radiobject-read-ahead", daemon=True
                )
                self.threads.add(thread)
                thread.start()

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self.lock:
                if not self.tasks:
                    self.threads.discard(me)
                    return
                task = self.tasks.popleft()
            task.run()

    def withdraw(self, owner: _AheadState) -> list[_Task]:
        """Remove the queued tasks of ``owner``; returns them (none has started)."""
        with self.lock:
            mine = [t for t in self.tasks if t.owner is owner]
            self.tasks = deque(t for t in self.tasks if t.owner is not owner)
            return mine

    def owns_current_thread(self) -> bool:
        """Whether the calling thread is one of this pool's."""
        with self.lock:
            return threading.current_thread() in self.threads

    def join_idle(self) -> None:
        """Wait for the threads to end if there is no work left for them."""
        with self.lock:
            if self.tasks:
                return
            threads = list(self.threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()


@dataclass
class _Entry:
    future: Future[np.ndarray]
    position: int
    nbytes: int


class _AheadState:
    """One dataset's reads ahead in this process: pending or done, not yet taken."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.epoch: int | None = None
        self.entries: dict[tuple[Any, ...], deque[_Entry]] = {}
        self.planned: set[tuple[int, int]] = set()
        self.nbytes = 0
        self.running = 0
        self.served = 0  # reads taken from the read-ahead (not read by their sample)

    def task_done(self) -> None:
        with self.lock:
            self.running -= 1
            self.idle.notify_all()

    def __len__(self) -> int:
        with self.lock:
            return sum(len(q) for q in self.entries.values())

    def take(self, read: RegionRead) -> np.ndarray:
        """The voxels of ``read``: read ahead if they were, else read now."""
        with self.lock:
            queue = self.entries.get(read.key)
            entry = queue.popleft() if queue else None
            if queue is not None and not queue:
                del self.entries[read.key]
            if entry is not None:
                self.nbytes -= entry.nbytes
        if entry is not None and not entry.future.cancel():  # started or done: wait for it
            try:
                # the error itself, not re-raised here: re-raising would tie this thread's
                # frames (and the loader's iterator) to the exception the future keeps
                error = entry.future.exception()
            except CancelledError:
                error = None
            else:
                if error is None:
                    self.served += 1
                    return entry.future.result()
            if error is not None:
                raise _failed(read, error) from error
        try:
            return read.read()  # not read ahead, or not started yet: read it now
        except Exception as exc:
            raise _failed(read, exc) from exc

    def advance(
        self, dataset: VolumeCollectionDataset, keys: Sequence[tuple[int, int]], depth: int
    ) -> None:
        """A batch starting with ``keys[0]`` is being read: plan and start what follows it."""
        schedule = dataset.read_ahead_schedule
        assert schedule is not None
        epoch = keys[0][0]
        if epoch != self.epoch:
            self.cancel()
            self.epoch = epoch
        upcoming = schedule.upcoming(keys[0], depth)
        position = schedule._position.get(keys[0][1], 0)
        self._evict(position - position % max(1, schedule.batch_size))
        share = max(1, block_cache().worker_share)
        budget = get_config().read.read_ahead_mb * 1024 * 1024 // share
        try:
            itemsize = dataset.read_ahead_itemsize()
        except Exception:  # the samples' own reads say what is wrong
            return
        by_volume: dict[str, list[tuple[RegionRead, Future[np.ndarray]]]] = {}
        for key in upcoming:
            if key in self.planned:
                continue
            try:
                plan = dataset.plan(key)
            except Exception:  # e.g. a volume gone: its own sample reads it and says so
                self.planned.add(key)
                continue
            size = sum(r.voxels for r in plan.reads) * itemsize
            with self.lock:
                if self.nbytes + size > budget and self.nbytes > 0:
                    break  # over budget: planned again when taken reads free some
                self.nbytes += size
                self.planned.add(key)
                pos = schedule._position[key[1]]
                for read in plan.reads:
                    future: Future[np.ndarray] = Future()
                    entry = _Entry(future, pos, read.voxels * itemsize)
                    self.entries.setdefault(read.key, deque()).append(entry)
                    by_volume.setdefault(read.uri, []).append((read, future))
        threads = max(1, get_config().read.max_workers // share)
        for reads in by_volume.values():
            with self.lock:
                self.running += 1
            self.pool.submit(_Task(self, reads), threads)

    def _evict(self, before: int) -> None:
        """Drop entries of positions before ``before``: their samples went elsewhere."""
        with self.lock:
            for read_key in list(self.entries):
                queue = self.entries[read_key]
                keep = deque(e for e in queue if e.position >= before)
                for e in queue:
                    if e.position < before:
                        e.future.cancel()
                        self.nbytes -= e.nbytes
                if keep:
                    self.entries[read_key] = keep
                else:
                    del self.entries[read_key]

    def cancel(self) -> None:
        """Cancel what is pending, wait for the reads under way, forget every result."""
        for task in self.pool.withdraw(self):
            for _, future in task.reads:
                future.cancel()
            self.task_done()
        with self.lock:
            for queue in self.entries.values():
                for e in queue:
                    e.future.cancel()
            self.entries.clear()
            self.planned.clear()
            self.nbytes = 0
            self.epoch = None
            if self.pool.owns_current_thread():
                return  # a collector run in a pool thread: its own task cannot be waited for
            while self.running > 0:
                self.idle.wait()
        self.pool.join_idle()


class _Registry:
    """The read-ahead pool of this process and the state of each dataset using it."""

    def __init__(self) -> None:
        self.pool = _Pool()
        self.lock = threading.Lock()
        self.states: WeakKeyDictionary[Any, _AheadState] = WeakKeyDictionary()

    def state(self, dataset: Any, create: bool) -> _AheadState | None:
        with self.lock:
            found = self.states.get(dataset)
            if found is None and create:
                found = self.states[dataset] = _AheadState(self.pool)
            return found


# per process (radiobject._process): a forked child starts with no threads and no results
_REGISTRY: Resource[_Registry] = Resource("read-ahead", _Registry)


def ahead_state(dataset: Any, *, create: bool = False) -> _AheadState | None:
    """The read-ahead state of ``dataset`` in this process (made when ``create``)."""
    return _REGISTRY.get().state(dataset, create)


def _failed(read: RegionRead, exc: BaseException) -> RadiObjectError:
    """``exc`` of a read ahead, as a radiobject error naming the URI and the region."""
    where = f"reading {read.name} region {list(read.bounds)} of {read.uri!r}"
    message = f"{where}: {exc}"
    if isinstance(exc, RadiObjectError):
        try:
            return type(exc)(message)
        except TypeError:
            pass
    return StorageError(f"{message}; check that the volume still exists and is readable")
