"""State shared between a DataLoader and its worker processes.

Workers are separate processes with their own block caches and settings. A loader made by
radiobject gives its workers a small shared-memory block through which

* each worker publishes its cache counters (so the parent reports true hits and misses
  of the whole loader), and
* the parent publishes the read settings, so ``configure(read=...)`` reaches running
  (persistent) workers before their next read, and
* whole volumes fetched for many patches are shared through a folder on ``/dev/shm``
  (``radiobject.read._shared_store``): one worker reads a volume, the others map it, and the
  folder (bounded by ``ReadConfig.cache_mb``) is removed with the loader.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from radiobject.config import ReadConfig, add_listener, configure, get_config
from radiobject.ml._stages import STAGE_FIELDS, StageCounters, stage_counters
from radiobject.read._region import CacheCounters, block_cache
from radiobject.read._shared_store import SharedStore, set_shared_store

__all__ = ["SharedLoaderState", "current_state", "sync_worker"]

_FIELDS = tuple(f.name for f in dataclasses.fields(CacheCounters))
_CONFIG_BYTES = 2048


class SharedLoaderState:
    """Counters per worker and the published read settings, in shared memory."""

    def __init__(self, mp_context: Any, num_workers: int) -> None:
        self.num_workers = num_workers
        self.counters = mp_context.Array("q", num_workers * len(_FIELDS), lock=False)
        self.stages = mp_context.Array("q", num_workers * len(STAGE_FIELDS), lock=False)
        self.pids = mp_context.Array("q", num_workers, lock=False)  # 0: not started
        self.version = mp_context.Value("q", 0, lock=False)
        self.config = mp_context.Array("c", _CONFIG_BYTES, lock=False)
        self.publish(get_config().read)
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        _remove_orphans(shm)
        self.shm_dir = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=shm)
        weakref.finalize(self, shutil.rmtree, self.shm_dir, True)
        _live.add(self)

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
        return dict(self.__dict__)


_pool: dict[str, Any] = {"pid": None, "pool": None, "size": 0}


def read_pool() -> ThreadPoolExecutor:
    """This process's pool of reader threads.

    ``ReadConfig.max_workers`` threads in the main process; in a loader worker, its share of
    them (the workers of one loader split the threads as they split the cache).
    """
    size = max(1, get_config().read.max_workers // max(1, block_cache().worker_share))
    if _pool["pid"] != os.getpid() or _pool["size"] != size:
        if _pool["pid"] == os.getpid() and _pool["pool"] is not None:
            _pool["pool"].shutdown(wait=False)
        _pool.update(
            pid=os.getpid(),
            size=size,
            pool=ThreadPoolExecutor(max_workers=size, thread_name_prefix="radiobject"),
        )
    return _pool["pool"]


_PREFIX = "radiobject-loader-"


def _remove_orphans(root: str) -> None:
    """Remove shared folders left by loaders whose process died without cleaning up."""
    for name in os.listdir(root):
        if not name.startswith(_PREFIX):
            continue
        pid = name[len(_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        except PermissionError:  # alive, someone else's
            continue


_live: weakref.WeakSet[SharedLoaderState] = weakref.WeakSet()
_worker: dict[str, Any] = {"state": None, "id": 0, "version": -1}


def _on_configure() -> None:
    read = get_config().read
    for state in list(_live):
        state.publish(read)


add_listener(_on_configure)


def install_worker(state: SharedLoaderState | None, worker_id: int) -> None:
    """Called in a worker at start: remember the shared block of this worker."""
    _worker["state"] = state
    _worker["id"] = worker_id
    _worker["version"] = -1
    if state is not None:
        state.pids[worker_id] = os.getpid()
        sync_worker()
        budget = get_config().read.cache_mb * 1024 * 1024
        set_shared_store(SharedStore(state.shm_dir, budget) if budget > 0 else None)


def current_state() -> SharedLoaderState | None:
    """The shared block of this worker process (``None`` outside loader workers)."""
    return _worker["state"]


def sync_worker() -> None:
    """In a worker: apply newly published settings and publish this worker's counters."""
    state: SharedLoaderState | None = _worker["state"]
    if state is None:
        return
    version = state.version.value
    if version != _worker["version"]:
        _worker["version"] = version
        configure(read=state.read_config())
    counters = block_cache().counters
    base = _worker["id"] * len(_FIELDS)
    for i, name in enumerate(_FIELDS):
        state.counters[base + i] = getattr(counters, name)
    stages, base = stage_counters(), _worker["id"] * len(STAGE_FIELDS)
    for i, name in enumerate(STAGE_FIELDS):
        state.stages[base + i] = getattr(stages, name)
