"""Read-ahead: the regions of the next samples, read on threads before they are asked for.

A loader's sampler knows the order of an epoch (``EpochSampler.order``) and every
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

The threads are daemon threads (a script never waits for reads nobody will take), and at
interpreter exit (:mod:`atexit`) every pool drops its pending reads and waits for the ones
under way: a daemon thread still inside a TileDB call when the interpreter finalizes is
ended by the interpreter as it tries to take the GIL back, through TileDB-Py's C++ frames,
and the process aborts ("terminate called without an active exception", exit code 134;
7 of 8 scripts that ended right after an epoch with read-ahead on, before this). Exit waits
for at most one read per thread (each is one volume's reads, dropped between reads): on
object storage, up to TileDB's request timeout for a read that hangs.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any, Protocol
from weakref import WeakKeyDictionary, WeakSet

import numpy as np

from radiobject.config import Scope, current_scope, get_config, in_scope
from radiobject.read._cache import block_cache

__all__ = ["Planner", "Prefetch", "Prefetcher", "RegionLike"]

_LOG = logging.getLogger("radiobject.read_ahead")


class RegionLike(Protocol):
    """What the reader needs of a planned read (``radiobject.ml``'s ``RegionRead``)."""

    @property
    def name(self) -> str: ...
    @property
    def uri(self) -> str: ...
    @property
    def ctx(self) -> Any: ...
    @property
    def bounds(self) -> tuple[tuple[int, int], ...]: ...
    @property
    def whole_on_miss(self) -> bool: ...
    @property
    def auto_tier_mb(self) -> int: ...
    @property
    def key(self) -> Any: ...
    @property
    def voxels(self) -> int: ...


class Schedule(Protocol):
    """What the read-ahead needs of a loader's order (``radiobject.ml.ReadAheadSchedule``)."""

    batch_size: int

    def position(self, key: tuple[int, int]) -> int | None: ...
    def upcoming_at(
        self, key: tuple[int, int], depth: int
    ) -> list[tuple[tuple[int, int], tuple[int, int]]]: ...


class PlanLike(Protocol):
    """A sample's plan: its reads (``radiobject.ml.SamplePlan``)."""

    @property
    def reads(self) -> Sequence[RegionLike]: ...


class Planner(Protocol):
    """What the read-ahead needs of a dataset: its order, its plans, its voxel size."""

    @property
    def read_ahead_schedule(self) -> Schedule | None:
        """The order its loader reads it in (None: no read-ahead)."""
        ...

    def plan(self, key: tuple[int, int]) -> PlanLike:
        """What the sample of ``key`` reads (see ``VolumeCollectionDataset.plan``)."""
        ...

    def read_ahead_itemsize(self) -> int:
        """Bytes per voxel, to bound the read-ahead's memory."""
        ...


class _Task:
    """The reads of one volume, run one after another by one pool thread."""

    def __init__(
        self,
        owner: Prefetch,
        reads: list[tuple[RegionLike, Future[np.ndarray]]],
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

    def drop(self) -> None:
        """Cancel the reads of a task that will not run, and count it done for its owner."""
        self._cancel_reads()
        self.owner.task_done()

    def _cancel_reads(self) -> None:
        for _, future in self.reads:
            future.cancel()  # its sample, if it comes, reads it itself
        self.reads.clear()

    def _run(self) -> None:
        while self.reads:  # a read's future leaves the task: its sample alone keeps it
            if self.owner.pool.stopped:  # the interpreter is exiting: nobody takes them
                self._cancel_reads()
                return
            read, future = self.reads.pop(0)
            if not future.set_running_or_notify_cancel():
                continue  # its sample came first and read it itself
            try:
                future.set_result(self.owner.read(read))
            except BaseException as exc:  # raised at the sample that needs it
                future.set_exception(exc)


_POOLS: WeakSet[_Pool] = WeakSet()  # every pool of this process (see the module's notes)


class _Pool:
    """Threads of this process that run read-ahead tasks; they end when there is no work."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tasks: deque[_Task] = deque()
        self.threads: set[threading.Thread] = set()
        self.stopped = False  # set at interpreter exit: no new read starts
        self.pid = os.getpid()  # a forked child has none of these threads (nor their lock)
        _POOLS.add(self)

    def submit(self, task: _Task, size: int) -> None:
        with self.lock:
            self.tasks.append(task)
            if len(self.threads) < size and not self.stopped:
                thread = threading.Thread(
                    target=self._run, name="radiobject-read-ahead", daemon=True
                )
                self.threads.add(thread)
                thread.start()

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            with self.lock:
                if not self.tasks or self.stopped:
                    self.threads.discard(me)
                    return
                task = self.tasks.popleft()
            task.run()

    def stop(self) -> None:
        """Drop the pending reads and wait for those under way (at interpreter exit).

        A dropped read's future is cancelled: its sample, if one still comes, reads it
        itself (as for any read not yet started).
        """
        with self.lock:
            self.stopped = True
            dropped, self.tasks = list(self.tasks), deque()
            threads = list(self.threads)
        for task in dropped:
            task.drop()  # as a withdrawn task: its owner's cancel() waits for none
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join()

    def withdraw(self, owner: Prefetch) -> list[_Task]:
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


class Prefetch:
    """One planner's reads ahead in this process: pending or done, not yet taken."""

    def __init__(self, pool: _Pool, read: Callable[[RegionLike], np.ndarray]) -> None:
        self.pool = pool
        self.read = read  # the reader's read of one planned region
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

    def take(self, read: RegionLike) -> np.ndarray | None:
        """The voxels of ``read`` if it was read ahead (None: read it now)."""
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
        return None  # not read ahead, or not started yet: the caller reads it now

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
        by_volume: dict[str, list[tuple[RegionLike, Future[np.ndarray]]]] = {}
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
            task.drop()
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


@atexit.register
def _stop_pools() -> None:
    """Let no read-ahead thread be inside TileDB when the interpreter finalizes."""
    for pool in list(_POOLS):
        if pool.pid == os.getpid():  # a pool copied by fork: its threads are not here
            pool.stop()


class Prefetcher:
    """The read-ahead pool of one reader and the state of each planner using it."""

    def __init__(self, read: Callable[[RegionLike], np.ndarray]) -> None:
        self.pool = _Pool()
        self.read = read
        self.lock = threading.Lock()
        self.states: WeakKeyDictionary[Any, Prefetch] = WeakKeyDictionary()

    def state(self, planner: Any, create: bool = False) -> Prefetch | None:
        """The read-ahead state of ``planner`` (made when ``create``)."""
        if not create and not self.states:  # no read-ahead in this process (local default)
            return None
        with self.lock:
            found = self.states.get(planner)
            if found is None and create:
                found = self.states[planner] = Prefetch(self.pool, self.read)
            return found
