"""DataLoader worker processes: how they are set up, and what they count.

How workers start (``forkserver`` wherever its workers can start, ``fork`` on Linux only
where they cannot; a method that cannot work is refused before any worker starts) is
:mod:`radiobject.ml._start_method`. :class:`worker_init` sets each worker up (the parent's
settings, its share of the cache budget, the shared counters); ``loader_*`` read those
counters back from the parent.
"""

from __future__ import annotations

import inspect
import multiprocessing
import multiprocessing.connection
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import DataLoader

from radiobject.config import RadiObjectConfig, configure
from radiobject.ml._dataset import VolumeCollectionDataset
from radiobject.ml._shared import SharedLoaderState, install_worker
from radiobject.ml._stages import StageCounters, stage_counters
from radiobject.ml._start_method import PRELOAD
from radiobject.read import CacheCounters, block_cache

__all__ = [
    "loader_cache_counters",
    "loader_pids",
    "loader_stage_counters",
    "worker_init",
]


def _aws_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


@dataclass(frozen=True)
class worker_init:
    """Set up a DataLoader worker: the parent's settings and a share of the cache budget.

    The cache budget of ``ReadConfig.cache_mb`` is for the whole loader: each of the
    ``num_workers`` workers gets ``1/num_workers`` of it. The parent's ``AWS_*`` environment
    (S3 credentials, profile, region) goes along too, never shown in ``repr``: a
    ``forkserver`` worker comes from a server that may have started before those variables
    were set, and gets the parent's values of the ones that differ. ``fork`` and ``spawn``
    workers have the parent's environment already: nothing is written there.

    radiobject's loaders install it when ``num_workers > 0``; a ``worker_init_fn`` of your
    own runs after it, in each worker:

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> from radiobject import get_config
    >>> from radiobject.ml import create_training_dataloader, worker_init
    >>> def seed_numpy(worker_id):
    ...     import numpy as np
    ...     np.random.seed(worker_id)
    >>> loader = create_training_dataloader(radi.T1w, batch_size=2, num_workers=2,
    ...                                     worker_init_fn=seed_numpy)
    >>> init = loader.worker_init_fn
    >>> isinstance(init, worker_init), init.num_workers, init.user_fn is seed_numpy
    (True, 2, True)
    >>> init.config == get_config()  # the settings the workers will use
    True
    """

    config: RadiObjectConfig
    num_workers: int
    user_fn: Callable[[int], None] | None = None
    shared: SharedLoaderState | None = None
    aws_env: dict[str, str] = field(default_factory=_aws_environment, repr=False)

    def __call__(self, worker_id: int) -> None:
        stale = {k: v for k, v in self.aws_env.items() if os.environ.get(k) != v}
        if stale:  # a fork server's environment, older than the parent's
            os.environ.update(stale)
        block_cache().worker_share = max(1, self.num_workers)
        configure(read=self.config.read, write=self.config.write, s3=self.config.s3)
        install_worker(self.shared, worker_id)
        end_with_loader()
        if self.user_fn is not None:
            self.user_fn(worker_id)


def end_with_loader() -> bool:
    """In a worker started by a fork server: end it when the loader's process ends.

    PyTorch's workers watch their parent process and leave when it is gone. A
    ``forkserver`` worker's parent is the fork server, which outlives the loader's process
    while a worker is alive (each worker holds the server's liveness pipe): a training
    process killed (``SIGKILL``, out of memory, a notebook kernel restarted) would leave its
    workers and the server running for ever. The worker's ``multiprocessing`` parent is the
    loader's process; a daemon thread waits on its sentinel (a pipe that process holds
    open) and ends the worker when it closes. Returns whether the thread was started (not
    for ``fork`` and ``spawn`` workers, whose parent is the loader's process itself).

    >>> end_with_loader()  # in the main process: nothing to watch
    False
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid == os.getppid() or parent.sentinel is None:
        return False
    sentinel = parent.sentinel

    def wait_then_end() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(1)  # the loader's process is gone: nobody reads what this worker makes

    threading.Thread(target=wait_then_end, name="radiobject-loader-watch", daemon=True).start()
    return True


def loader_cache_counters(loader: DataLoader[Any]) -> CacheCounters:
    """Cache counters of everything ``loader`` read so far: its workers', or this process's.

    Counters are monotonic; subtract two snapshots to get the activity in between.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> from radiobject.ml import create_training_dataloader, loader_cache_counters
    >>> loader = create_training_dataloader(radi.T1w, batch_size=2, patch_size=(8, 8, 8),
    ...                                     patches_per_volume=2)
    >>> before = loader_cache_counters(loader)
    >>> for epoch in range(2):
    ...     for batch in loader:
    ...         pass
    >>> after = loader_cache_counters(loader)
    >>> (after.hits + after.misses) - (before.hits + before.misses)  # 8 patches, 1 tile each
    8
    >>> after.misses - before.misses > 0, after.hits - before.hits > 0
    (True, True)
    """
    init = getattr(loader, "worker_init_fn", None)
    if isinstance(init, worker_init) and init.shared is not None and loader.num_workers > 0:
        return init.shared.cache_counters()
    return block_cache().counters.copy()


def loader_stage_counters(loader: DataLoader[Any]) -> StageCounters:
    """Stage counters (read, transform, collate time) of ``loader``'s workers, or this process's.

    Monotonic, like :func:`loader_cache_counters`; ``LoaderProbe`` turns them into
    milliseconds per sample by stage.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> from radiobject.ml import create_training_dataloader
    >>> loader = create_training_dataloader(radi.T1w, batch_size=2, patch_size=(8, 8, 8),
    ...                                     patches_per_volume=2)
    >>> before = loader_stage_counters(loader)
    >>> for batch in loader:
    ...     pass
    >>> done = loader_stage_counters(loader) - before
    >>> done.samples, done.batches, done.sample_bytes  # 4 patches of 8^3 float32 (+ start)
    (4, 2, 8288)
    """
    init = getattr(loader, "worker_init_fn", None)
    if isinstance(init, worker_init) and init.shared is not None and loader.num_workers > 0:
        return init.shared.stage_counters()
    return stage_counters().copy()


def loader_pids(loader: DataLoader[Any]) -> list[int]:
    """Process ids of ``loader``: this process, then its workers that have started.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> from radiobject.ml import create_training_dataloader, loader_pids
    >>> loader = create_training_dataloader(radi.T1w, batch_size=1, num_workers=2)
    >>> for batch in loader:  # two batches: each worker made one, so both started
    ...     pass
    >>> pids = loader_pids(loader)
    >>> pids[0] == os.getpid(), len(pids)
    (True, 3)
    """
    init = getattr(loader, "worker_init_fn", None)
    pids = [os.getpid()]
    if isinstance(init, worker_init) and init.shared is not None and loader.num_workers > 0:
        pids += init.shared.worker_pids()
    return pids


def _preload_modules(dataset: VolumeCollectionDataset) -> list[str]:
    """Modules a worker imports to unpickle ``dataset``: its class's and its transform's.

    A MONAI ``Compose`` takes seconds to import; imported once by the fork server, it is
    not imported again by every worker.
    """
    names = list(PRELOAD)
    for obj in (dataset, getattr(dataset, "transform", None)):
        if obj is None:
            continue
        module = obj.__module__ if inspect.isfunction(obj) else type(obj).__module__
        if not module or module in ("__main__", "builtins"):
            continue
        if not any(module == n or module.startswith(n + ".") for n in names):
            names.append(module)
    return names
