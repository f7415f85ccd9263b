"""Whole volumes shared by the worker processes of one loader, through shared memory.

When a loader's workers read many patches per volume, each would otherwise fetch and
decompress the same volumes. With a shared store, the first worker that needs a volume
reads it once and publishes it as a ``.npy`` file in a folder on ``/dev/shm``; the others
map that file (no copy, no decompression). The folder belongs to the loader, holds at most
its byte budget (oldest volumes are dropped first) and is removed with the loader.

Workers agree on who reads a volume through a file lock per volume (``filelock``: an
``flock`` on Unix, released by the kernel if its holder dies, across PID namespaces too).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from cachetools import LRUCache
from filelock import FileLock, Timeout

from radiobject._process import Resource

__all__ = ["SharedStore", "get_shared_store", "set_shared_store"]

_WAIT_S = 30.0  # how long a worker waits for another one's fetch before reading itself
_POLL_S = 0.005  # how often a waiting worker retries the lock (a volume read takes 10-100 ms)
_MAPS = 32  # mapped volumes kept open per process
_PATHS = 4096  # file paths of volumes remembered per process (a hash and a path each)


class SharedStore:
    """A folder of whole volumes shared by processes, bounded by ``budget_bytes``.

    >>> import tempfile
    >>> store = SharedStore(tempfile.mkdtemp(), budget_bytes=1 << 20)
    >>> first, hit = store.fetch("a", lambda: np.arange(4.0))
    >>> again, hit_again = store.fetch("a", lambda: 1 / 0)
    >>> hit, hit_again, again.tolist()
    (False, True, [0.0, 1.0, 2.0, 3.0])
    """

    def __init__(self, directory: str | os.PathLike[str], budget_bytes: int) -> None:
        self.directory = Path(directory)
        self.budget_bytes = int(budget_bytes)
        self._maps: LRUCache[str, np.ndarray] = LRUCache(maxsize=_MAPS)  # uri -> mapping
        self._paths: dict[str, Path] = {}
        self._lock = threading.Lock()

    def _path(self, uri: str) -> Path:
        path = self._paths.get(uri)
        if path is None:
            if len(self._paths) >= _PATHS:
                self._paths.clear()
            path = self._paths[uri] = self.directory / (
                hashlib.sha1(uri.encode()).hexdigest() + ".npy"
            )
        return path

    def _mapped(self, uri: str) -> np.ndarray | None:
        """``uri``'s volume mapped in this process, or None if the store has no file of it.

        A volume mapped once is found again by a dictionary lookup: the read of every patch
        asks (twice: whether it is held, then for it), and a hash and a path per ask cost
        more than the patch's copy of a small volume. The mapping stays valid when another
        process drops the file (a file is never written again in place).
        """
        with self._lock:
            arr = self._maps.get(uri)
        if arr is not None:
            return arr
        try:
            loaded = np.load(self._path(uri), mmap_mode="r")
        except (FileNotFoundError, ValueError, OSError):
            return None
        # a plain ndarray over the mapping (which it keeps alive): slicing an np.memmap
        # makes a memmap per patch and runs its __array_finalize__
        plain: np.ndarray = loaded.view(np.ndarray)
        with self._lock:
            self._maps[uri] = plain
        return plain

    def holds(self, uri: str) -> bool:
        """Whether the store has ``uri`` whole now (mapped in this process from then on)."""
        return self._mapped(uri) is not None

    def fetch(self, uri: str, load: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
        """The whole volume of ``uri`` and whether another process (or call) had stored it.

        One process at a time loads a volume; the others wait for its file (at most
        ``_WAIT_S``, then read it themselves). A loader that dies releases its lock.
        """
        arr = self._mapped(uri)
        if arr is not None:
            return arr, True
        path = self._path(uri)
        lock = FileLock(str(path.with_suffix(".lock")))
        try:
            lock.acquire(timeout=_WAIT_S, poll_interval=_POLL_S)
        except Timeout:
            return load(), False  # the other worker took too long: read it here
        try:
            arr = self._mapped(uri)  # stored while this one waited
            if arr is not None:
                return arr, True
            data = load()
            self._make_room(data.nbytes)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, data)
            os.replace(tmp, path)  # readers see the whole file or none
            return data, False
        finally:
            lock.release()

    def release(self, uri: str) -> bool:
        """Remove ``uri``'s volume (another tier serves it now); whether it was stored.

        Processes that mapped it keep their mapping until they drop it; the file's pages go
        with the last one.
        """
        path = self._path(uri)
        with self._lock:
            self._maps.pop(uri, None)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def clear(self) -> None:
        """Remove every stored volume (for all processes sharing the folder)."""
        with self._lock:
            self._maps.clear()
        for p in self.directory.glob("*.npy"):
            p.unlink(missing_ok=True)  # mappings held elsewhere stay valid

    def _make_room(self, nbytes: int) -> None:
        files = []
        for p in self.directory.glob("*.npy"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files):
            if total + nbytes <= self.budget_bytes:
                break
            p.unlink(missing_ok=True)  # mappings held elsewhere stay valid
            total -= size


class _Current:
    """The shared store this process reads through (set in a loader's workers)."""

    def __init__(self) -> None:
        self.store: SharedStore | None = None


_CURRENT: Resource[_Current] = Resource("shared store", _Current)


def set_shared_store(store: SharedStore | None) -> None:
    """Use ``store`` for whole-volume reads in this process (``None``: no sharing)."""
    _CURRENT.get().store = store


def get_shared_store() -> SharedStore | None:
    """The shared store of this process, if its loader set one up."""
    return _CURRENT.get().store
