"""State shared between a DataLoader and its worker processes.

Workers are separate processes with their own block caches and settings. A loader made by
radiobject gives its workers a small shared-memory block through which

* each worker publishes its cache counters (so the parent reports true hits and misses
  of the whole loader), and
* the parent publishes the read settings, so ``configure(read=...)`` reaches running
  (persistent) workers before their next read, and
* workers decode batches into slots of the loader's ``/dev/shm`` folder that the parent
  maps and frees when its batch is freed (``radiobject.ml._batch_slots``), and
* whole volumes fetched for many patches are shared through a folder on ``/dev/shm``
  (``radiobject.read._shared_store``): one worker reads a volume, the others map it, and the
  folder (bounded by ``ReadConfig.cache_mb``) is removed with the loader.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from radiobject._process import ProcessState, Resource, state
from radiobject.config import (
    ReadConfig,
    add_listener,
    configure,
    current_scope,
    get_config,
    process_config,
)
from radiobject.ml._batch_slots import SharedSlots, for_transport
from radiobject.ml._stages import (
    STAGE_FIELDS,
    StageCounters,
    WorkerFailure,
    stack_collate,
    stage_counters,
)
from radiobject.read import CacheCounters, SharedStore, block_cache, set_shared_store

__all__ = ["SharedLoaderState", "TimedCollate", "current_state", "sync_worker"]

_FIELDS = tuple(f.name for f in dataclasses.fields(CacheCounters))
_CONFIG_BYTES = 2048


class SharedLoaderState:
    """Counters per worker and the published read settings, in shared memory."""

    def __init__(self, mp_context: Any, num_workers: int, batch_slots: int = 0) -> None:
        self.num_workers = num_workers
        self.counters = mp_context.Array("q", num_workers * len(_FIELDS), lock=False)
        self.stages = mp_context.Array("q", num_workers * len(STAGE_FIELDS), lock=False)
        self.pids = mp_context.Array("q", num_workers, lock=False)  # 0: not started
        self.version = mp_context.Value("q", 0, lock=False)
        self.config = mp_context.Array("c", _CONFIG_BYTES, lock=False)
        self.publish(get_config().read)
        # a loader built inside settings() keeps them; one built outside follows configure()
        self._follows_process = current_scope() is None
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        _remove_orphans(shm)
        self.shm_dir, owner = _make_folder(shm)
        # removed with this object (or at exit) by this process only, never by a forked child
        weakref.finalize(self, _remove_folder, self.shm_dir, owner, state())
        # batches the workers decode into, in that folder (see radiobject.ml._batch_slots)
        self.slots = SharedSlots(mp_context, self.shm_dir, batch_slots) if batch_slots else None
        # settings changed in this process reach the workers while this object lives
        self._unlisten = add_listener(self._on_configure)

    def _on_configure(self) -> None:
        if self._follows_process:
            self.publish(process_config().read)

    def publish(self, read: ReadConfig) -> None:
        """Make ``read`` the settings of the workers (applied before their next read)."""
        data = json.dumps(dataclasses.asdict(read)).encode()
        self.config.raw = data.ljust(_CONFIG_BYTES, b"\0")
        self.version.value += 1

    def read_config(self) -> ReadConfig:
        """The published settings."""
        raw = bytes(self.config.raw).rstrip(b"\0")
        return ReadConfig(**json.loads(raw))

    def cache_counters(self) -> CacheCounters:
        """The sum of every worker's cache counters."""
        total = CacheCounters()
        n = len(_FIELDS)
        for w in range(self.num_workers):
            for i, name in enumerate(_FIELDS):
                setattr(total, name, getattr(total, name) + self.counters[w * n + i])
        return total

    def stage_counters(self) -> StageCounters:
        """The sum of every worker's stage counters (read, transform, collate time)."""
        n = len(STAGE_FIELDS)
        values = [sum(self.stages[w * n + i] for w in range(self.num_workers)) for i in range(n)]
        return StageCounters(*values)

    def worker_pids(self) -> list[int]:
        """Process ids of the workers that started (for their memory use)."""
        return [int(p) for p in self.pids[:] if p]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_unlisten"}


class _ReadPool:
    """This process's reader threads, rebuilt when their number changes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.size = 0
        self.pool: ThreadPoolExecutor | None = None

    def get(self, size: int) -> ThreadPoolExecutor:
        with self.lock:
            if self.pool is None or self.size != size:
                if self.pool is not None:
                    self.pool.shutdown(wait=False)
                self.pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="radiobject")
                self.size = size
            return self.pool


_READ_POOL: Resource[_ReadPool] = Resource("reader threads", _ReadPool)


def read_pool() -> ThreadPoolExecutor:
    """This process's pool of reader threads.

    ``ReadConfig.max_workers`` threads in the main process; in a loader worker, its share of
    them (the workers of one loader split the threads as they split the cache).
    """
    size = max(1, get_config().read.max_workers // max(1, block_cache().worker_share))
    return _READ_POOL.get().get(size)


_PREFIX = "radiobject-loader-"
_OWNER = "owner.lock"


def _make_folder(root: str) -> tuple[str, FileLock]:
    """A new shared folder in ``root`` and the lock that marks it alive while held.

    The folder is made under a name the orphan scan ignores, locked, and only then renamed
    into view: a folder the scan sees always has its lock file, held until its owner dies.
    """
    tmp = tempfile.mkdtemp(prefix=".radiobject-new-", dir=root)
    # released by a finalizer, in whichever thread runs it: not a thread-local lock
    owner = FileLock(os.path.join(tmp, _OWNER), thread_local=False)
    owner.acquire(timeout=0)  # nobody else knows this folder yet
    final = os.path.join(root, _PREFIX + secrets.token_hex(8))
    os.rename(tmp, final)  # the held lock follows its file
    return final, owner


def _remove_folder(path: str, owner: FileLock, creator: ProcessState) -> None:
    if state() is not creator:  # a forked child exiting: the folder is its parent's
        return
    shutil.rmtree(path, ignore_errors=True)
    owner.release()


def _remove_orphans(root: str) -> None:
    """Remove shared folders whose owner died without cleaning up.

    A folder is alive while its owner holds the lock on its ``owner.lock`` (an ``flock``
    that the kernel releases when the owner dies). A folder whose lock can be taken is
    dead; this works across PID namespaces (containers sharing ``/dev/shm``), where
    process ids of other namespaces mean nothing.
    """
    for name in os.listdir(root):
        if not name.startswith(_PREFIX):
            continue
        folder = Path(root, name)
        lock_file = folder / _OWNER
        if not lock_file.exists():  # not a folder of this scheme: leave it
            continue
        lock = FileLock(str(lock_file))
        try:
            lock.acquire(timeout=0)
        except (Timeout, OSError):  # alive, or gone meanwhile
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            lock.release()


class _Worker:
    """What a loader worker process knows of its loader (nothing outside workers)."""

    def __init__(self) -> None:
        self.state: SharedLoaderState | None = None
        self.id = 0
        self.version = -1


_WORKER: Resource[_Worker] = Resource("loader worker", _Worker)


def install_worker(state: SharedLoaderState | None, worker_id: int) -> None:
    """Called in a worker at start: remember the shared block of this worker."""
    worker = _WORKER.get()
    worker.state = state
    worker.id = worker_id
    worker.version = -1
    if state is not None:
        state.pids[worker_id] = os.getpid()
        sync_worker()
        budget = get_config().read.cache_mb * 1024 * 1024
        set_shared_store(SharedStore(state.shm_dir, budget) if budget > 0 else None)


def current_state() -> SharedLoaderState | None:
    """The shared block of this worker process (``None`` outside loader workers)."""
    return _WORKER.get().state


def sync_worker() -> None:
    """In a worker: apply newly published settings and publish this worker's counters."""
    worker = _WORKER.get()
    shared = worker.state
    if shared is None:
        return
    version = shared.version.value
    if version != worker.version:
        worker.version = version
        configure(read=shared.read_config())
    counters = block_cache().counters
    base = worker.id * len(_FIELDS)
    for i, name in enumerate(_FIELDS):
        shared.counters[base + i] = getattr(counters, name)
    stages, base = stage_counters(), worker.id * len(STAGE_FIELDS)
    for i, name in enumerate(STAGE_FIELDS):
        shared.stages[base + i] = getattr(stages, name)


@dataclasses.dataclass(frozen=True)
class TimedCollate:
    """A loader's ``collate_fn`` that adds its time to this process's counters.

    Runs where the DataLoader collates (in the worker that made the batch), and publishes
    the worker's counters right after (:func:`sync_worker`), so the parent sees this
    batch's collate. A worker's failed batch (:class:`~radiobject.ml._stages.WorkerFailure`)
    goes on as it is.

    >>> import torch
    >>> collate = TimedCollate(None)
    >>> before = stage_counters().copy()
    >>> tuple(collate([{"x": torch.zeros(2)}, {"x": torch.ones(2)}])["x"].shape)
    (2, 2)
    >>> (stage_counters() - before).batches
    1
    """

    fn: Callable[[list[Any]], Any] | None = None

    def __call__(self, batch: list[Any]) -> Any:
        if isinstance(batch, WorkerFailure):
            return batch
        start = time.perf_counter_ns()
        out = (self.fn or stack_collate)(batch)
        if self.fn is None and _WORKER.get().state is not None:  # one of our loader's workers
            out = for_transport(out)  # its image as a batch slot, small tensors by value
        stage_counters().add_collate(time.perf_counter_ns() - start)
        sync_worker()
        return out
