"""``LoaderProbe``: measure a DataLoader while it runs (samples/s, latency, cache, bytes).

UI-free: the widgets plot what it records, and scripts can print it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import pandas as pd
from torch.utils.data import DataLoader

from radiobject._errors import ConfigurationError
from radiobject.ml._stages import StageCounters
from radiobject.ml._workers import loader_cache_counters, loader_stage_counters
from radiobject.read import CacheCounters

__all__ = ["SOURCES", "STAGES", "LoaderProbe", "ProbeRecord", "ProbeResult", "source_pcts"]

# where the time goes: (field of ProbeRecord, what it is); ms per sample, summed over threads
STAGES: tuple[tuple[str, str], ...] = (
    ("storage_ms", "storage read + decode"),
    ("cache_ms", "cache hits + assembly"),
    ("transform_ms", "transform"),
    ("collate_ms", "collate"),
    ("wait_ms", "waiting for workers"),
)


@dataclass(frozen=True)
class ProbeRecord:
    """Loader activity during one interval.

    ``LoaderProbe.run`` returns one record per ``interval_s``; their counts add up to the
    run's totals.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> from radiobject.ml import LoaderProbe, create_training_dataloader
    >>> loader = create_training_dataloader(radi.T1w, batch_size=2, patch_size=(8, 8, 8),
    ...                                     patches_per_volume=4)
    >>> records = LoaderProbe(loader, interval_s=0.01).run(n_batches=4).records
    >>> sum(r.batches for r in records), sum(r.samples for r in records)
    (4, 8)
    >>> sum(r.cache_hits + r.cache_misses for r in records)  # 8 patches, 1 tile block each
    8
    """

    t: float  # seconds since the run started, at the end of the interval
    batches: int
    samples: int
    samples_per_s: float
    batch_latency_ms: float  # mean wait for a batch in the interval
    cache_hits: int
    cache_misses: int
    hit_rate: float
    bytes_from_storage: int
    storage_mb_per_s: float
    starved_pct: float = 0.0  # share of the interval the consumer waited for the next batch
    # where the time goes, ms per sample (see ``STAGES``): work summed over threads and workers
    storage_ms: float = 0.0  # TileDB queries: read and decode
    cache_ms: float = 0.0  # the rest of the read: block cache hits, assembling the sample
    transform_ms: float = 0.0
    collate_ms: float = 0.0
    wait_ms: float = 0.0  # the consumer's wait (with workers) or the loader's own overhead
    read_amplification: float = 0.0  # bytes from storage per byte of the samples made
    # where the bytes came from (see ``SOURCES``): RAM block cache, local read tier, storage
    bytes_from_cache: int = 0  # served from the RAM block cache (decompressed)
    bytes_from_tier: int = 0  # served from the local read tier (decompressed)
    tier_hits: int = 0  # regions served from the local tier
    tier_misses: int = 0  # regions the tier lacked (each queues a fill of its volume)
    ram_pct: float = 0.0  # shares (%) of the interval's bytes: RAM, local tier, storage
    tier_pct: float = 0.0
    storage_pct: float = 0.0


# where the bytes come from: (field of ProbeRecord with the bytes, name)
SOURCES: tuple[tuple[str, str], ...] = (
    ("bytes_from_cache", "RAM"),
    ("bytes_from_tier", "local tier"),
    ("bytes_from_storage", "storage"),
)


def source_pcts(cache: int, tier: int, storage: int) -> tuple[float, float, float]:
    """Shares (%) of bytes from RAM, the local tier and storage (zeros when nothing was read).

    Storage counts every byte read from it, the whole volumes read to fill the tier too.

    >>> source_pcts(1, 2, 1)
    (25.0, 50.0, 25.0)
    >>> source_pcts(0, 0, 0)
    (0.0, 0.0, 0.0)
    """
    total = cache + tier + storage
    if not total:
        return 0.0, 0.0, 0.0
    return 100 * cache / total, 100 * tier / total, 100 * storage / total


@dataclass
class ProbeResult:
    """All intervals of a run, and totals.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> from radiobject.ml import LoaderProbe, create_training_dataloader
    >>> loader = create_training_dataloader(radi.T1w, batch_size=2, patch_size=(8, 8, 8),
    ...                                     patches_per_volume=4)
    >>> result = LoaderProbe(loader, interval_s=0.01).run(n_batches=3)
    >>> result.batches, result.samples, result.first_batch_samples, result.error
    (3, 6, 2, None)
    >>> result.seconds > 0
    True
    """

    records: list[ProbeRecord] = field(default_factory=list)
    samples: int = 0
    batches: int = 0
    seconds: float = 0.0
    first_batch_s: float = 0.0
    first_batch_samples: int = 0
    wait_s: float = 0.0  # time the consumer waited for batches after the first one
    error: BaseException | None = None
    error_where: str = ""  # "loader", "on_batch" or "callback": where ``error`` was raised
    # the stages of :meth:`stage_ms`: (key, what it is)
    STAGES: ClassVar[tuple[tuple[str, str], ...]] = STAGES
    stages: StageCounters = field(default_factory=StageCounters)  # the run's, all workers'
    storage_ns: int = 0  # time in storage queries during the run
    bytes_from_storage: int = 0
    bytes_from_cache: int = 0  # served from the RAM block cache during the run
    bytes_from_tier: int = 0  # served from the local read tier during the run
    tier_hits: int = 0
    tier_misses: int = 0
    workers: int = 0  # the loader's num_workers

    def stage_ms(self) -> dict[str, float]:
        """Where the time went: milliseconds per sample by stage (names as in ``STAGES``).

        Storage, cache, transform and collate are work summed over reader threads and
        workers (with several, they overlap in time). "waiting for workers" is the
        consumer's wait per sample with workers, and with ``num_workers=0`` (where the
        consumer does the work itself) the part of its wait outside those stages.
        """
        made = max(1, self.stages.samples)
        storage = self.storage_ns / made / 1e6
        read = self.stages.read_ns / made / 1e6
        out = {
            "storage_ms": storage,
            "cache_ms": max(0.0, read - storage),
            "transform_ms": self.stages.transform_ns / made / 1e6,
            "collate_ms": self.stages.collate_ns / made / 1e6,
        }
        wait = 1000 * self.wait_s / max(1, self.samples - self.first_batch_samples)
        out["wait_ms"] = wait if self.workers else max(0.0, wait - sum(out.values()))
        return out

    def sources(self) -> dict[str, float]:
        """Where the run's bytes came from: shares (%) by source (names as in ``SOURCES``).

        RAM is radiobject's block cache, "local tier" the blosc2 tier on local disk
        (``ReadConfig.local_tier_mb``), storage TileDB (with the whole volumes read to
        fill the tier). All zeros when nothing was read.
        """
        pcts = source_pcts(self.bytes_from_cache, self.bytes_from_tier, self.bytes_from_storage)
        return {name: pct for (_, name), pct in zip(SOURCES, pcts, strict=True)}

    @property
    def read_amplification(self) -> float:
        """Bytes read from storage per byte of the samples made (0 when nothing was made)."""
        made = self.stages.sample_bytes
        return self.bytes_from_storage / made if made else 0.0

    @property
    def starved_pct(self) -> float:
        """Share (%) of the time after the first batch spent waiting for the next batch.

        Measured on the consuming thread: near 100 the loader is the bottleneck (the
        training step waits for data), near 0 the consumer is (batches are ready early).
        """
        steady = self.seconds - self.first_batch_s
        return min(100.0, 100 * self.wait_s / steady) if steady > 0 else 0.0

    @property
    def samples_per_s(self) -> float:
        """Mean throughput after the first batch (worker start-up excluded)."""
        steady = self.seconds - self.first_batch_s
        return (self.samples - self.first_batch_samples) / steady if steady > 0 else 0.0

    @property
    def hit_rate(self) -> float:
        """Cache hit rate over the run."""
        hits = sum(r.cache_hits for r in self.records)
        total = hits + sum(r.cache_misses for r in self.records)
        return hits / total if total else 0.0

    def to_frame(self) -> pd.DataFrame:
        """The intervals as a DataFrame."""
        return pd.DataFrame([asdict(r) for r in self.records])


def _count(batch: Any) -> int:
    if isinstance(batch, dict):
        for value in batch.values():
            if hasattr(value, "shape") and len(value.shape) > 0:
                return int(value.shape[0])
            if isinstance(value, list):
                return len(value)
    if isinstance(batch, (list, tuple)) and batch:
        return _count(batch[0]) if not hasattr(batch[0], "shape") else int(batch[0].shape[0])
    return int(getattr(batch, "shape", [1])[0])


class LoaderProbe:
    """Iterate a DataLoader and record throughput, latency and cache activity per interval.

    >>> from radiobject.data import make_sample_radiobject
    >>> from radiobject.ml import create_training_dataloader
    >>> import tempfile, os
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=4,
    ...                               shape=(16, 16, 12), progress=False)
    >>> loader = create_training_dataloader(radi.T1w, batch_size=2, patch_size=(8, 8, 8),
    ...                                     patches_per_volume=4)
    >>> result = LoaderProbe(loader, interval_s=0.01).run(n_batches=6)
    >>> result.batches, result.samples
    (6, 12)

    Args:
        loader: the DataLoader to measure: what any of radiobject's factories returns
            (their loaders report their workers' cache too), or another DataLoader.
        interval_s: length of one record.
    """

    def __init__(self, loader: DataLoader[Any], interval_s: float = 0.5) -> None:
        if not isinstance(loader, DataLoader):
            raise ConfigurationError(
                "LoaderProbe measures a DataLoader, such as any create_*_dataloader returns "
                f"(e.g. create_training_dataloader(radi.T1w, patch_size=64)); got "
                f"{type(loader).__name__} {loader!r:.80}"
            )
        if not interval_s >= 0:  # 0: a record per batch
            raise ConfigurationError(
                f"LoaderProbe: interval_s must be a number of seconds >= 0, got {interval_s!r}"
            )
        self.loader = loader
        self.interval_s = interval_s
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask a running :meth:`run` to finish after the current batch (thread-safe)."""
        self._stop.set()

    def batches(self, n_batches: int | None = None) -> Iterator[Any]:
        """Yield batches from the loader, cycling over epochs, until ``n_batches`` or stop."""
        done = 0
        while n_batches is None or done < n_batches:
            empty = True
            for batch in self.loader:
                empty = False
                yield batch
                done += 1
                if self._stop.is_set() or (n_batches is not None and done >= n_batches):
                    return
            if empty:
                return

    def run(
        self,
        n_batches: int | None = None,
        duration_s: float | None = None,
        callback: Callable[[ProbeRecord], None] | None = None,
        on_batch: Callable[[Any], None] | None = None,
        capture_errors: bool = False,
    ) -> ProbeResult:
        """Pull batches and record one :class:`ProbeRecord` per interval.

        The probe's own cost is a few clock reads per batch and one snapshot of the cache
        counters per interval (cheap, also with workers): nothing is dumped per batch.

        Args:
            n_batches: stop after this many batches.
            duration_s: stop this many seconds after the first batch (worker start-up is
                not counted, so short runs still measure steady throughput).
            callback: called with each new record (e.g. to update a plot).
            on_batch: called with each batch (e.g. a training step).
            capture_errors: keep an exception of the loader, ``on_batch`` or ``callback`` in
                :attr:`ProbeResult.error` (and where it came from in ``error_where``) and
                return what was measured until then, instead of raising it (the default:
                an error in your training step stays yours).
        """
        result = ProbeResult(workers=int(self.loader.num_workers))
        start = time.perf_counter()
        window = _Window(
            start, loader_cache_counters(self.loader), loader_stage_counters(self.loader)
        )
        wait_start = time.perf_counter()
        where = "loader"
        try:
            for batch in self.batches(n_batches):
                now = time.perf_counter()
                n = _count(batch)
                if result.batches == 0:
                    result.first_batch_s = now - start
                    result.first_batch_samples = n
                else:
                    result.wait_s += now - wait_start
                window.wait += now - wait_start
                result.batches += 1
                result.samples += n
                window.batches += 1
                window.samples += n
                if on_batch is not None:
                    where = "on_batch"
                    on_batch(batch)
                if now - window.t0 >= self.interval_s:
                    where = "callback"
                    window = self._close(window, now, start, result, callback)
                where = "loader"
                if duration_s is not None and now - start - result.first_batch_s >= duration_s:
                    break
                wait_start = time.perf_counter()
        except Exception as e:
            if not capture_errors:
                raise
            result.error, result.error_where = e, where  # for the caller (a widget shows it)
        finally:
            self._stop.clear()  # a stop() asked before this run started ended it at once
        now = time.perf_counter()
        # a failed callback's interval is recorded already (the record precedes the call)
        if window.batches and result.error_where != "callback":
            self._close(window, now, start, result, callback)
        result.seconds = now - start
        return result

    def _close(
        self,
        window: _Window,
        now: float,
        start: float,
        result: ProbeResult,
        callback: Callable[[ProbeRecord], None] | None,
    ) -> _Window:
        """Record the interval that ends ``now``, and start the next one."""
        after, before = loader_cache_counters(self.loader), window.counters
        stages = loader_stage_counters(self.loader)
        done = stages - window.stages
        span = now - window.t0
        hits = after.hits - before.hits
        misses = after.misses - before.misses
        read = after.bytes_from_storage - before.bytes_from_storage
        from_cache = after.bytes_from_cache - before.bytes_from_cache
        from_tier = after.bytes_from_tier - before.bytes_from_tier
        tier_hits = after.tier_hits - before.tier_hits
        tier_misses = after.tier_misses - before.tier_misses
        storage_ns = after.storage_ns - before.storage_ns
        result.stages = result.stages + done
        result.storage_ns += storage_ns
        result.bytes_from_storage += read
        result.bytes_from_cache += from_cache
        result.bytes_from_tier += from_tier
        result.tier_hits += tier_hits
        result.tier_misses += tier_misses
        ram_pct, tier_pct, storage_pct = source_pcts(from_cache, from_tier, read)
        made = max(1, done.samples)
        storage_ms = storage_ns / made / 1e6
        work_ms = (done.read_ns + done.transform_ns + done.collate_ns) / made / 1e6
        wait_ms = 1000 * window.wait / window.samples if window.samples else 0.0
        record = ProbeRecord(
            t=now - start,
            batches=window.batches,
            samples=window.samples,
            samples_per_s=window.samples / span if span > 0 else 0.0,
            batch_latency_ms=1000 * window.wait / window.batches if window.batches else 0.0,
            cache_hits=hits,
            cache_misses=misses,
            hit_rate=hits / (hits + misses) if hits + misses else 0.0,
            bytes_from_storage=read,
            storage_mb_per_s=read / span / 1e6 if span > 0 else 0.0,
            starved_pct=min(100.0, 100 * window.wait / span) if span > 0 else 0.0,
            storage_ms=storage_ms,
            cache_ms=max(0.0, done.read_ns / made / 1e6 - storage_ms),
            transform_ms=done.transform_ns / made / 1e6,
            collate_ms=done.collate_ns / made / 1e6,
            wait_ms=wait_ms if result.workers else max(0.0, wait_ms - work_ms),
            read_amplification=read / done.sample_bytes if done.sample_bytes else 0.0,
            bytes_from_cache=from_cache,
            bytes_from_tier=from_tier,
            tier_hits=tier_hits,
            tier_misses=tier_misses,
            ram_pct=ram_pct,
            tier_pct=tier_pct,
            storage_pct=storage_pct,
        )
        result.records.append(record)
        if callback is not None:
            callback(record)
        return _Window(now, after, stages)


@dataclass
class _Window:
    """Activity since the start of the current interval."""

    t0: float
    counters: CacheCounters
    stages: StageCounters
    batches: int = 0
    samples: int = 0
    wait: float = 0.0
