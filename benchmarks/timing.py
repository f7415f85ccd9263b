"""Timing helpers: reads in ms, loaders in samples/s, medians over repeats. No asserts."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Measure:
    """Repeats of one measurement; ``value`` is their median."""

    unit: str
    runs: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "unit": self.unit, "runs": self.runs, **self.extra}


def repeat(n: int, unit: str, fn: Callable[[int], float]) -> Measure:
    """Call ``fn(repeat_index)`` ``n`` times; each call returns one figure."""
    m = Measure(unit)
    for r in range(n):
        m.runs.append(float(fn(r)))
    return m


def time_reads(
    read: Callable[[Any], np.ndarray],
    positions: list[Any],
    before: Callable[[Any], None] | None = None,
) -> float:
    """Mean ms per ``read(pos)``; one untimed read first; ``before(pos)`` runs untimed."""
    read(positions[0])
    total = 0.0
    for pos in positions:
        if before is not None:
            before(pos)
        t = time.perf_counter()
        read(pos)
        total += time.perf_counter() - t
    return 1000.0 * total / len(positions)


def count_samples(batch: Any) -> int:
    """Samples in a collated batch (tensor, MONAI/radiobject dict, TorchIO subject dict)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, dict):
        return count_samples(batch["image"] if "image" in batch else batch["data"])
    if isinstance(batch, (list, tuple)):
        return count_samples(batch[0])
    raise TypeError(f"cannot count the samples of a {type(batch).__name__}")


def _batches(loader: Any, epochs: int | None, on_epoch: Callable[[], None] | None) -> Iterator[Any]:
    epoch = 0
    while epochs is None or epoch < epochs:
        if epoch and on_epoch is not None:
            on_epoch()
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            return
        epoch += 1


@dataclass
class LoaderRun:
    """One timed pass over a loader."""

    samples_per_s: float
    first_batch_s: float
    batches: int
    samples: int
    seconds: float


def run_loader(
    loader: Any,
    n_batches: int,
    max_seconds: float,
    epochs: int | None = None,
    after_first: Callable[[], None] | None = None,
    on_epoch: Callable[[], None] | None = None,
    cycle: int = 1,
) -> LoaderRun:
    """Time up to ``n_batches`` batches after the first (which warms up and is excluded).

    Stops early after ``max_seconds`` of timed batches or when ``epochs`` epochs are done.
    ``after_first`` runs untimed right after the first batch (e.g. a counter snapshot);
    ``on_epoch`` runs at the start of every epoch after the first (e.g. to empty a cache).
    ``cycle``: stop only after a whole number of this many batches, so a loader that reads in
    bulk (TorchIO's queue refills every ``max_length / batch_size`` batches) is timed over
    whole refill cycles: the timed window then holds exactly one refill per cycle.
    """
    it = _batches(loader, epochs, on_epoch)
    t0 = time.perf_counter()
    next(it)
    first = time.perf_counter() - t0
    if after_first is not None:
        after_first()
    samples = batches = 0
    start = time.perf_counter()
    elapsed = 0.0
    for batch in it:
        samples += count_samples(batch)
        batches += 1
        elapsed = time.perf_counter() - start
        if batches % cycle == 0 and (batches >= n_batches or elapsed >= max_seconds):
            break
    it.close()
    rate = samples / elapsed if elapsed > 0 else float("nan")
    return LoaderRun(rate, first, batches, samples, elapsed)


def release(loader: Any) -> None:
    """Shut down a loader's persistent workers now rather than at exit."""
    iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()
    gc.collect()
