"""Epoch-aware read-ahead: read the regions of the next samples before they are asked for.

A loader's sampler knows the order of an epoch (:meth:`EpochSampler.order`) and every
sample's regions are a pure function of its key, so when a batch arrives, the process that
reads it knows the batches it will read next: all of them in the main process
(``num_workers=0``), and batches ``b + n, b + 2n, ...`` in worker ``b mod n`` of ``n``
(DataLoader hands batches to its workers in turn), and near the end of an epoch the first
batches of the next one (DataLoader deals those out from worker 0 again). That includes a
rank's shard with ``DistributedEpochSampler``. ``ReadConfig.read_ahead`` samples of
those (``remote_read_ahead`` for volumes on object storage) are planned and read on a pool
of threads (``max_workers``, or ``remote_threads``), volume by volume (the reads of one
volume run in one task, so the tiles or whole volume the first fetches serve the others),
within ``ReadConfig.read_ahead_mb`` of results not yet taken.

A read that was read ahead returns the same voxels as a read now: the sample only takes the
array earlier. A read that failed ahead raises at the sample that needs it, the very error
the read raised (the same type and message as without read-ahead); a read not yet started
when its sample comes is cancelled and read directly. The reads run under the settings of
the thread that asked for them (its ``radiobject.settings`` block, if any). A sample whose
plan fails is not read ahead (counted in ``plan_errors``, logged once): its own read plans
it again and raises. Stopping an epoch mid-way (the sampler's iterator is
dropped) cancels what is pending and waits for the reads under way; an epoch run to its end
keeps the next epoch's reads. The pool's threads end when it has no work.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import Any, Protocol
from weakref import WeakKeyDictionary

import numpy as np

from radiobject._process import Resource
from radiobject.config import Scope, current_scope, get_config, in_scope
from radiobject.ml._plan import RegionRead, SamplePlan
from radiobject.read import block_cache

__all__ = ["ReadAheadSchedule"]

_LOG = logging.getLogger("radiobject.read_ahead")


class Planner(Protocol):
    """What the read-ahead needs of a dataset: its order, its plans, its voxel size."""

    read_ahead_schedule: ReadAheadSchedule | None

    def plan(self, key: tuple[int, int]) -> SamplePlan:
        """What the sample of ``key`` reads (see ``VolumeCollectionDataset.plan``)."""
        ...

    def read_ahead_itemsize(self) -> int:
        """Bytes per voxel, to bound the read-ahead's memory."""
        ...


@dataclass
class ReadAheadSchedule:
    """The order a loader asks for samples in, as its datasets' read-ahead sees it.

    Near the end of an epoch it looks on into the next one (``epoch + 1``, whose order the
    sampler already knows), so the first batches of the next epoch are read while the last
    ones of this epoch are used.

    Args:
        order: ``epoch -> item indices`` in sampler order (e.g. ``EpochSampler.pass_order``).
        batch_size: samples per batch.
        num_workers: the loader's worker processes (0: the main process reads).
        drop_last: the loader drops the last incomplete batch of an epoch.
        across_epochs: look on into the next epoch.

    >>> schedule = ReadAheadSchedule(lambda epoch: [3, 1, 0, 2, 5, 4], 2, num_workers=2)
    >>> schedule.upcoming((0, 1), depth=4)  # batch 0 in worker 0: batch 2, then epoch 1's 0
    [(0, 5), (0, 4), (1, 3), (1, 1)]
    >>> ReadAheadSchedule(lambda epoch: [3, 1, 0, 2], 2).upcoming((7, 3), depth=1)
    [(7, 0)]
    """

    order: Callable[[int], Sequence[int]]
    batch_size: int
    num_workers: int = 0
    drop_last: bool = False
    across_epochs: bool = True
    _orders: dict[int, tuple[list[int], dict[int, int]]] = field(default_factory=dict, repr=False)

    def _epoch(self, epoch: int) -> tuple[list[int], dict[int, int]]:
        """The items of ``epoch`` in order, and each item's (first) position."""
        found = self._orders.get(epoch)
        if found is None:
            items = [int(i) for i in self.order(epoch)]
            position: dict[int, int] = {}
            for p, i in enumerate(items):
                position.setdefault(i, p)
            found = (items, position)
            self._orders = {e: o for e, o in self._orders.items() if abs(e - epoch) <= 1}
            self._orders[epoch] = found
        return found

    def _batches(self, n: int) -> int:
        size = max(1, self.batch_size)
        return n // size if self.drop_last else -(-n // size)

    def position(self, key: tuple[int, int]) -> int | None:
        """Where ``key`` is in its epoch's order (None: not in it)."""
        return self._epoch(key[0])[1].get(key[1])

    def upcoming_at(
        self, key: tuple[int, int], depth: int
    ) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """Up to ``depth`` ``(key, (epoch, position))`` this process reads after ``key``'s batch."""
        epoch, index = key
        items, position = self._epoch(epoch)
        at = position.get(index)
        if at is None:  # not from this order (another sampler): nothing to foresee
            return []
        size, step = max(1, self.batch_size), max(1, self.num_workers)
        out: list[tuple[tuple[int, int], tuple[int, int]]] = []

        def take(e: int, order: list[int], batch: int) -> None:
            while len(out) < depth and batch < self._batches(len(order)):
                for p in range(batch * size, min((batch + 1) * size, len(order))):
                    if len(out) == depth:
                        return
                    out.append(((e, order[p]), (e, p)))
                batch += step

        take(epoch, items, at // size + step)
        if len(out) < depth and self.across_epochs:
            # DataLoader deals each epoch's batches out from worker 0 again
            take(epoch + 1, self._epoch(epoch + 1)[0], (at // size) % step)
        return out

    def forget(self) -> None:
        """Drop the orders kept: the sampler's next pass may differ (a resume, ``set_epoch``)."""
        self._orders = {}

    def upcoming(self, key: tuple[int, int], depth: int) -> list[tuple[int, int]]:
        """Up to ``depth`` keys this process reads after the batch starting at ``key``."""
        return [k for k, _ in self.upcoming_at(key, depth)]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_orders"] = {}  # rebuilt where it is used
        return state


class _Task:
    """The reads of one volume, run one after another by one pool thread."""

    def __init__(
        self,
        owner: _AheadState,
        reads: list[tuple[RegionRead, Future[np.ndarray]]],
        scope: Scope | None,
    ) -> None:
        self.owner = owner
        self.reads = reads
        self.scope = scope  # the settings of the thread that planned them

    def run(self) -> None:
        try:
            with in_scope(self.scope):
                self._run()
        finally:
            self.owner.task_done()

    def _run(self) -> None:
        while self.reads:  # a read's future leaves the task: its sample alone keeps it
            read, future = self.reads.pop(0)
            if not future.set_running_or_notify_cancel():
                continue  # its sample came first and read it itself
            try:
                future.set_result(read.read())
            except BaseException as exc:  # raised at the sample that needs it
                future.set_exception(exc)


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
    position: tuple[int, int]  # (epoch, position in its order)
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
        self.plan_errors = 0  # samples not read ahead: planning them failed

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
            future, entry = entry.future, None
            try:
                error = future.exception()
            except CancelledError:
                error = None
            if error is None:
                self.served += 1
                return future.result()
            # the read's own error, as a read now raises it; the future is dropped first so
            # the traceback (which holds this frame) does not keep it and its loader alive
            del future
            try:
                raise error
            finally:
                del error
        return read.read()  # not read ahead, or not started yet: read it now

    def advance(
        self,
        dataset: Planner,
        keys: Sequence[tuple[int, int]],
        depth: int,
        threads: int,
    ) -> None:
        """A batch starting with ``keys[0]`` is being read: plan and start what follows it."""
        schedule = dataset.read_ahead_schedule
        assert schedule is not None
        epoch = keys[0][0]
        at = schedule.position(keys[0]) or 0
        self._evict((epoch, at - at % max(1, schedule.batch_size)))
        self.epoch = epoch
        upcoming = schedule.upcoming_at(keys[0], depth)
        share = max(1, block_cache().worker_share)
        budget = get_config().read.read_ahead_mb * 1024 * 1024 // share
        try:
            itemsize = dataset.read_ahead_itemsize()
        except Exception as exc:  # the samples' own reads say what is wrong
            self._plan_failed(exc)
            return
        by_volume: dict[str, list[tuple[RegionRead, Future[np.ndarray]]]] = {}
        for key, where in upcoming:
            if key in self.planned:
                continue
            try:
                plan = dataset.plan(key)
            except Exception as exc:  # e.g. a volume gone: its own sample plans it and says so
                self.planned.add(key)
                self._plan_failed(exc)
                continue
            size = sum(r.voxels for r in plan.reads) * itemsize
            with self.lock:
                if self.nbytes + size > budget and self.nbytes > 0:
                    break  # over budget: planned again when taken reads free some
                self.nbytes += size
                self.planned.add(key)
                for read in plan.reads:
                    future: Future[np.ndarray] = Future()
                    entry = _Entry(future, where, read.voxels * itemsize)
                    self.entries.setdefault(read.key, deque()).append(entry)
                    by_volume.setdefault(read.uri, []).append((read, future))
        scope = current_scope()
        for reads in by_volume.values():
            with self.lock:
                self.running += 1
            self.pool.submit(_Task(self, reads, scope), max(1, threads // share))

    def _plan_failed(self, exc: Exception) -> None:
        """Count a sample not read ahead because planning it failed; log the first."""
        with self.lock:
            self.plan_errors += 1
            first = self.plan_errors == 1
        if first:
            _LOG.warning(
                "read-ahead skipped a sample whose plan failed (%s: %s); the sample raises "
                "it when it is read (further failures are only counted: plan_errors)",
                type(exc).__name__,
                exc,
            )

    def _evict(self, before: tuple[int, int]) -> None:
        """Drop entries before ``(epoch, position)``, or past the epoch after ``epoch``.

        Their samples went elsewhere, or the sampler did (``set_epoch``).
        """
        epoch = before[0]
        with self.lock:
            for read_key in list(self.entries):
                queue = self.entries[read_key]
                keep: deque[_Entry] = deque()
                for e in queue:
                    if before <= e.position and e.position[0] <= epoch + 1:
                        keep.append(e)
                    else:
                        e.future.cancel()
                        self.nbytes -= e.nbytes
                if keep:
                    self.entries[read_key] = keep
                else:
                    del self.entries[read_key]
            self.planned = {k for k in self.planned if epoch <= k[0] <= epoch + 1}

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
