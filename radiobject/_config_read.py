"""``ReadConfig``: how volumes are read (threads, TileDB concurrency, caches, read-ahead)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from radiobject._config_checks import Checked, check_int
from radiobject._errors import ConfigurationError

__all__ = ["ReadConfig"]


@dataclass(frozen=True)
class ReadConfig(Checked):
    """How volumes are read.

    >>> from radiobject import ReadConfig, configure, get_config
    >>> with configure(read=ReadConfig(max_workers=8, cache_mb=0)):  # no block cache
    ...     get_config().read.max_workers, get_config().read.cache_mb
    (8, 0)
    >>> ReadConfig(max_workers=0)
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: ReadConfig.max_workers must be between 1 and 256, got 0

    Args:
        max_workers: threads used by :func:`radiobject.parallel.map_on_threads` and ingest.
        concurrency: TileDB's compute and I/O concurrency per query; also the number of
            slabs a read of 4 MiB or more (a whole volume) is cut into, each filled by its
            own query on a thread at once (TileDB decodes and copies one query's tiles
            mostly on one thread). Whole 240x240x155 int16 volumes read in 0.71x the time
            in two slabs than in one query, at the same CPU time (paired runs, 2 cores).
            Reads at once share ``concurrency - 1`` slab threads: one finding none free
            is read in one query.
        memory_budget_mb: TileDB's memory budget per query, in MiB.
        cache_mb: size of radiobject's cache of decompressed tile blocks, in MiB, for the whole
            loader: DataLoader workers share it out, so adding workers never multiplies memory.
            ``0`` turns the cache off.
        retain_freed_mb: opt-in, off by default (``0``: radiobject leaves the allocator
            alone). ``n > 0`` asks glibc's malloc (elsewhere: no effect) to keep up to ``n``
            MiB of freed memory in each reading process instead of handing it back to the
            OS, so TileDB's fresh buffers for every query are not faulted in again. It
            retunes the allocator of the whole process, for the rest of its life (setting
            ``0`` again does not undo it). Measured on 240x240x155 float32 volumes, cache
            off: a whole volume read in 21 ms with ``256`` against 29 ms untouched (process
            CPU time 0.58x); random 64³ patches gain little (2.2 against 2.8 ms in a quiet
            run, CPU time 0.85-0.96x). See ``radiobject._allocator``.
        local_tier_mb: disk budget, in MiB, of the local read tier (``radiobject.read.
            _local_tier``): whole volumes kept on local disk as memory-mapped blosc2 arrays
            (LZ4HC, 32³ blocks), filled in the background with volumes read from TileDB
            (or ahead of time with ``VolumeCollection.warm_local_tier`` / ``python -m
            radiobject warm URI``), shared by every process on the machine and across runs,
            keyed by each array's fragments so a rewritten array is never served stale. For
            cohorts larger than RAM: a random 64³ patch then costs a blosc2 decode instead of
            a TileDB query. ``None`` (the default) is automatic: a training loader
            (``create_training_dataloader``, ``create_segmentation_dataloader``) whose
            cohort's decompressed bytes exceed ``cache_mb`` (> 0) turns it on for that
            loader's reads only (in its process and workers), with a quarter of the folder's free
            disk, at most 64 GiB (off when under 256 MiB free); other reads, and
            ``cache_mb=0`` (caching off), leave it off. A miss fills when the writers have
            room: a region touching most of its volume (or of a small one) reads the volume
            whole once, is cut from it and hands that array to a background writer; a
            smaller region of a large volume is read alone and the writer reads the volume
            (the step never waits for a whole volume's decode). With no room, a miss reads
            just its region and a later miss fills: the tier fills as fast as the machine
            compresses. ``0``
            turns it off; ``n > 0`` turns it on for every read with ``n`` MiB. The least
            recently used volumes are removed to stay within the budget.
        local_tier_dir: the tier's folder (default ``$RADIOBJECT_TIER_DIR``, else
            ``$XDG_CACHE_HOME/radiobject/tier`` or ``~/.cache/radiobject/tier``). Local
            disk: an unwritable or full folder turns the tier off with one warning, and
            reads go on from storage.
        read_ahead: samples whose regions a loader reads ahead, in each reading process
            (the main process, or each worker), on up to ``max_workers`` threads of that
            process's share (``remote_threads`` for object storage). ``0`` (the default):
            off for local volumes, ``remote_read_ahead`` for volumes on object storage
            (``s3://`` ...). Batches stay the same bytes either way, and the read-ahead runs
            on into the next epoch's first batches when the sampler knows its order.
        read_ahead_mb: bound of the voxels read ahead and not yet taken, in MiB, for the
            whole loader (workers share it out like ``cache_mb``).
        remote_read_ahead: the read-ahead depth for volumes on object storage while
            ``read_ahead`` is ``0``; ``0`` turns it off there too. A first epoch from S3 at
            one patch per volume is latency bound (a volume's first 64³ patch is 11 requests in
            ~8 round trips, most of them opening it), so the depth keeps volumes in flight.
            Measured on 2 shared cores (``benchmarks/s3_read_ahead.py``, moto behind a proxy
            adding 20 ms per request, 32 volumes of 128x128x96, batch 4): depth 32-64 on
            32 threads gave 1.3-2.3x the samples/s of no read-ahead over the runs made,
            58-85% of what the same machine does with no latency at all: there the reading
            process (~22 ms CPU per sample) and moto (~30 ms) share the 2 cores, and that,
            not the latency, is the ceiling (see ``benchmarks/README.md``).
        remote_threads: read-ahead threads for volumes on object storage, for the whole
            loader (workers share them out). They mostly wait on the network, so more of
            them than ``max_workers`` (which bounds CPU-bound local reads) keep more
            requests in flight.
    """

    max_workers: int = 4
    concurrency: int = 2
    memory_budget_mb: int = 1024
    cache_mb: int = 512
    retain_freed_mb: int = 0
    local_tier_mb: int | None = None
    local_tier_dir: str | None = None
    read_ahead: int = 0
    read_ahead_mb: int = 256
    remote_read_ahead: int = 32
    remote_threads: int = 32

    def __post_init__(self) -> None:
        check_int("ReadConfig", "read_ahead", self.read_ahead, 0, 65536)
        check_int("ReadConfig", "read_ahead_mb", self.read_ahead_mb, 1)
        check_int("ReadConfig", "remote_read_ahead", self.remote_read_ahead, 0, 65536)
        check_int("ReadConfig", "remote_threads", self.remote_threads, 1, 256)
        check_int("ReadConfig", "max_workers", self.max_workers, 1, 256)
        check_int("ReadConfig", "concurrency", self.concurrency, 1, 256)
        check_int("ReadConfig", "memory_budget_mb", self.memory_budget_mb, 16)
        check_int("ReadConfig", "cache_mb", self.cache_mb, 0)
        check_int("ReadConfig", "retain_freed_mb", self.retain_freed_mb, 0, 2047)
        if self.local_tier_mb is not None:
            check_int("ReadConfig", "local_tier_mb", self.local_tier_mb, 0)
        if self.local_tier_dir is not None:
            if not isinstance(self.local_tier_dir, (str, os.PathLike)):
                raise ConfigurationError(
                    "ReadConfig.local_tier_dir must be a folder path or None, got "
                    f"{self.local_tier_dir!r}"
                )
            object.__setattr__(self, "local_tier_dir", os.fspath(self.local_tier_dir))
