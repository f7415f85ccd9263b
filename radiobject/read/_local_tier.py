"""A local read tier: whole volumes kept on local disk as blosc2 arrays, read through mmap.

Between radiobject's RAM block cache and TileDB. A volume read whole from TileDB is written
here by background writer threads (a read that misses the tier and touches most of its
volume reads it whole and hands that array over; a smaller region of a large volume is read
alone and a writer reads the volume: see :class:`~radiobject.read._policy.ReadPolicy`), so
the reading step does not wait for the compression; later reads of any region of it, by
this process or any other on the machine, decode just the blosc2 blocks the region touches
from a memory-mapped file (the page cache is shared: no copies through IPC), and a new run
starts warm.

This module is the process's side: which tier a read uses (:func:`local_tier`), entry names
(:func:`fragment_key`), and the claims and background writers (:class:`_TierState`). The
entries themselves, their format and folder are :mod:`radiobject.read._tier_entries`
(:class:`LocalTier`).

Never wrong:

- an entry's name hashes the array's URI and its fragment URIs (TileDB names each fragment
  with a timestamp and a UUID), read once when the process opens the array: a rewritten
  array gets a new name, and the stale entry ages out of the budget;
- an entry is published atomically (a temporary file in the same folder, then
  ``os.replace``), data first, then a small sidecar with its size and CRC-32: two processes
  filling one entry write the same bytes, and a reader that sees a sidecar and data that do
  not match (a half-replaced pair, a truncated or corrupt file) treats the entry as missing
  and fills it again. The check runs when a process opens an entry, not per read;
- a folder that cannot be written (read-only, full disk) turns the tier off in that process
  with one warning: reads go on from TileDB. So does an entry that is present and intact
  (its CRC checks) but fails to open: that is blosc2 or the environment, not the entry, and
  filling it again would rewrite whole volumes for nothing (counted in ``tier_errors``);
- a writer's own read of a volume that fails is the fill's alone (the step read its region
  itself): logged once per process, counted, and that volume is not tried again.

The folder's size is bounded by ``ReadConfig.local_tier_mb``: before each write the least
recently used entries are removed. A fill while reading evicts only entries unused for an
hour (``FILL_IDLE_S``): with a cohort larger than the budget the tier keeps the volumes it
has instead of churning (each fill reads a whole volume), and a volume that found no room is
not tried again by that process. ``warm_local_tier`` evicts any least recently used entry.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import warnings
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import tiledb
from cachetools import LRUCache

from radiobject._process import Resource
from radiobject.config import config_version, get_config
from radiobject.read import _tier_entries
from radiobject.read._tier_entries import LocalTier, blosc2_available
from radiobject.read._versioned import commit_end_ms, same_array, split_version

__all__ = [
    "LocalTier",
    "auto_budget_mb",
    "blosc2_available",
    "default_tier_dir",
    "local_tier",
]

FILL_IDLE_S = 3600.0  # a background fill evicts only entries unused for this long
# background writer threads: at least two, so one reads a volume from TileDB while another
# compresses (a writer does both in turn for a fill it reads itself); on the 2-core machine,
# ltr 4 patches per volume, two writers had the tier full by epoch 3 instead of 4-5, with
# ~40% fewer TileDB queries over 20 epochs and a first epoch ~20% slower than with one
WRITERS = max(2, min(4, (os.cpu_count() or 2) // 2))


TIER_DIR_ENV = "RADIOBJECT_TIER_DIR"  # overrides the default folder (tests point it at a tmp dir)
AUTO_DISK_SHARE = 0.25  # the automatic budget: this share of the folder's free disk ...
AUTO_CAP_MB = 64 * 1024  # ... at most this many MiB
AUTO_MIN_MB = 256  # less free room than this: the automatic tier stays off


def default_tier_dir() -> Path:
    """``$RADIOBJECT_TIER_DIR``, else ``$XDG_CACHE_HOME/radiobject/tier`` or ``~/.cache/...``.

    >>> import os
    >>> saved = os.environ.pop("RADIOBJECT_TIER_DIR", None)  # the tests set it
    >>> default_tier_dir().parts[-2:]
    ('radiobject', 'tier')
    >>> os.environ["RADIOBJECT_TIER_DIR"] = "/data/tier"
    >>> str(default_tier_dir())
    '/data/tier'
    >>> if saved is None:
    ...     del os.environ["RADIOBJECT_TIER_DIR"]
    ... else:
    ...     os.environ["RADIOBJECT_TIER_DIR"] = saved
    """
    if folder := os.environ.get(TIER_DIR_ENV):
        return Path(folder)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "radiobject" / "tier"


def auto_budget_mb(cohort_bytes: int, cache_bytes: int, folder: Path) -> int:
    """The automatic tier budget (MiB) for a cohort of ``cohort_bytes``, or 0 (stay off).

    On when the cohort does not fit the RAM cache (``cache_bytes``) and blosc2 imports:
    :data:`AUTO_DISK_SHARE` of the free disk where ``folder`` is (or would be), at most
    :data:`AUTO_CAP_MB`; off when that is under :data:`AUTO_MIN_MB`, and with the RAM cache
    off (``cache_bytes`` 0: caching was turned off, e.g. to measure exact reads).

    >>> import tempfile
    >>> auto_budget_mb(10 << 20, 512 << 20, Path(tempfile.mkdtemp()))  # fits the RAM cache
    0
    >>> auto_budget_mb(10 << 20, 0, Path(tempfile.mkdtemp()))  # caching turned off
    0
    >>> 0 < auto_budget_mb(1 << 40, 512 << 20, Path(tempfile.mkdtemp())) <= AUTO_CAP_MB
    True
    """
    if cache_bytes <= 0 or cohort_bytes <= cache_bytes or not blosc2_available():
        return 0
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return 0
    budget = min(AUTO_CAP_MB, int(free * AUTO_DISK_SHARE) // (1 << 20))
    return budget if budget >= AUTO_MIN_MB else 0


def fragment_key(uri: str, ctx: tiledb.Ctx) -> str:
    """The entry name of ``uri`` as stored now: a hash of its URI and committed fragments.

    The fragments are the array's commit files (``__commits``: one per committed write or
    consolidation), listed in one call: 0.06 ms a volume locally (one LIST request on S3)
    against 2.1 ms for TileDB's fragment info, which reads every fragment's metadata. A
    fragment being written has no commit file yet, so it is in neither the key nor a read.
    Arrays without commit files (older formats) are keyed by TileDB's fragment info.

    A versioned key (:func:`radiobject.read._versioned.versioned`) counts the fragments
    committed at or before its timestamp only: the fragments a read of that version sees,
    so a version whose fragments are those of the newest shares its entry.
    """
    base, at = split_version(uri)
    base = base.rstrip("/")
    try:
        commits = tiledb.VFS(ctx=ctx).ls(f"{base}/__commits")
    except tiledb.TileDBError:
        commits = []
    names = sorted(str(c).rstrip("/").rsplit("/", 1)[-1] for c in commits)
    if not names:
        fragments = tiledb.array_fragments(base, ctx=ctx)
        names = sorted(str(f.uri).rsplit("/", 1)[-1] for f in fragments)
    if at is not None:
        names = [n for n in names if (commit_end_ms(n) or 0) <= at]
    fmt = _tier_entries.FORMAT  # looked up now: a test may change it
    digest = hashlib.sha256("\n".join([f"format {fmt}", base, *names]).encode()).hexdigest()
    return digest[:40]


class _TierState:
    """This process's tier: the folder, entry names by URI, and the background writers.

    A fill is a whole volume compressed and published by one of :data:`WRITERS` threads:
    one a read has in hand (read whole to serve a region), or one the writer reads itself
    (for a read that read just its region: see
    :meth:`radiobject.read._policy.ReadPolicy.chain`). At most :data:`WRITERS` + 1 volumes
    are claimed or queued at a time, each held in memory until written: when the writers
    are busy, a read reads just its region (and a later miss fills), so the tier fills as
    fast as the machine writes, without a queue of volumes growing in memory.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.version = -1
        self.keys: LRUCache[str, str] = LRUCache(maxsize=4096)  # uri -> entry name
        self.claimed: set[str] = set()  # a read decided to read these whole for the tier
        self.pending: set[str] = set()  # queued or being written
        self.jobs: set[Future[None]] = set()
        self.room = WRITERS + 1  # volumes claimed or pending at most
        self.rejected: LRUCache[str, bool] = LRUCache(maxsize=65536)  # did not fit: not again
        self.pool: ThreadPoolExecutor | None = None
        self.warned = False
        self.warning: str | None = None  # a warning waiting for a reading thread
        # the tier of each budget asked for under the settings of ``version``: the user's
        # (``local_tier_mb``), or a loader's automatic one (see :func:`local_tier`)
        self.resolved: dict[int, LocalTier | None] = {}
        self.tiers: dict[tuple[Path, int], LocalTier] = {}  # every tier made, by folder/budget

    def claim(self, key: str) -> bool:
        """Reserve the fill of entry ``key`` for a read about to read its volume whole.

        False when it is queued or claimed already, did not fit before, or the writers
        have no room. The claim ends when the volume is handed over (:meth:`submit`), or
        with :meth:`release`.
        """
        with self.lock:
            if key in self.claimed or key in self.pending or key in self.rejected:
                return False
            if len(self.claimed) + len(self.pending) >= self.room:
                return False
            self.claimed.add(key)
            return True

    def release(self, key: str) -> None:
        """End a claim of ``key`` that was not handed to :meth:`submit` (no-op otherwise)."""
        with self.lock:
            self.claimed.discard(key)

    def current(self, auto_mb: int = 0) -> LocalTier | None:
        """The tier of a read: ``ReadConfig.local_tier_mb`` if set, else ``auto_mb`` (0: off)."""
        version = config_version()
        with self.lock:
            if version != self.version:
                self.version = version
                self.resolved = {}
            if auto_mb in self.resolved:
                tier = self.resolved[auto_mb]
            else:
                read = get_config().read
                mb = auto_mb if read.local_tier_mb is None else read.local_tier_mb
                tier = None
                if mb > 0:
                    folder = Path(read.local_tier_dir or default_tier_dir())
                    tier = self.tiers.get((folder, mb))
                    if tier is None:
                        tier = self.tiers[(folder, mb)] = LocalTier(folder, mb * 1024 * 1024)
                self.resolved[auto_mb] = tier
        return tier if tier is not None and tier.broken is None else None

    def key(self, uri: str, ctx: tiledb.Ctx) -> str:
        with self.lock:
            key = self.keys.get(uri)
        if key is None:
            key = fragment_key(uri, ctx)
            with self.lock:
                self.keys[uri] = key
        return key

    def known_key(self, uri: str) -> str | None:
        """The entry name of ``uri`` if this process worked it out already, else None."""
        with self.lock:
            return self.keys.get(uri)

    def forget(self, uri: str) -> None:
        with self.lock:
            for name in [k for k in self.keys if same_array(k, uri)]:
                self.keys.pop(name, None)

    def submit(self, key: str, job: Any) -> Future[None] | None:
        """Run ``job`` (the write of entry ``key``) on a background writer.

        Not when ``key`` is queued already or did not fit before; nor, unless a read
        claimed it (:meth:`claim`), when the writers have no room.
        """
        with self.lock:
            if key in self.pending or key in self.rejected:
                self.claimed.discard(key)
                return None
            if key in self.claimed:
                self.claimed.discard(key)
            elif len(self.claimed) + len(self.pending) >= self.room:
                return None
            self.pending.add(key)
            if self.pool is None:
                self.pool = ThreadPoolExecutor(
                    max_workers=WRITERS, thread_name_prefix="radiobject-tier"
                )
            pool = self.pool

            def run() -> None:
                try:
                    job()
                finally:
                    with self.lock:
                        self.pending.discard(key)
                        self.jobs.discard(future)

            future = pool.submit(run)
            self.jobs.add(future)
        return future

    def flush(self) -> None:
        """Wait until every background write queued so far has finished."""
        with self.lock:
            jobs = list(self.jobs)
        wait(jobs)

    def disable(
        self, tier: LocalTier, exc: BaseException, failed: str = "cannot be written"
    ) -> None:
        """Turn the tier off in this process; the next read warns (once per process).

        Called from the background writer: the warning waits for a reading thread, where
        the caller's warning filters apply. ``failed`` says what went wrong.
        """
        if failed == "cannot be written":
            todo = "Free disk space, point ReadConfig.local_tier_dir at a writable folder"
        else:
            todo = "Check the installed blosc2 against radiobject's supported versions"
        with self.lock:
            tier.broken = f"{type(exc).__name__}: {exc}"
            if not self.warned:
                self.warned = True
                self.warning = (
                    f"radiobject's local read tier in {tier.folder} {failed} "
                    f"({tier.broken}); reads go on from storage. {todo}, or set "
                    "ReadConfig(local_tier_mb=0) to turn it off"
                )

    def warn_pending(self) -> None:
        """Issue the warning of a tier that broke in the background, if not issued yet."""
        with self.lock:
            message, self.warning = self.warning, None
        if message is not None:
            warnings.warn(message, RuntimeWarning, stacklevel=4)


_TIER: Resource[_TierState] = Resource("local read tier", _TierState)


def tier_state() -> _TierState:
    """The local tier state of this process (a forked child starts its own)."""
    return _TIER.get()


def local_tier(auto_mb: int = 0) -> LocalTier | None:
    """The local tier a read uses, or None when it is off (or broke in this process).

    ``ReadConfig.local_tier_mb`` decides when it is set; with ``None`` (the default) the
    tier is the reader's own decision: ``auto_mb``, the budget a training loader chose for
    its dataset (:func:`radiobject.ml._tier_auto.auto_local_tier`), carried by that
    dataset's reads into its workers. Other reads of the process pass 0: no tier.

    >>> import tempfile
    >>> from radiobject import ReadConfig, configure
    >>> local_tier() is None, local_tier(auto_mb=256) is not None  # the default settings
    (True, True)
    >>> with configure(read=ReadConfig(local_tier_mb=0)):  # turned off: for every read
    ...     local_tier(auto_mb=256) is None
    True
    """
    state = _TIER.get()
    if state.warning is not None:
        state.warn_pending()
    return state.current(auto_mb)
