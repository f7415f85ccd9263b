"""LoaderProbe: throughput, latency and true cache counters per interval."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from radiobject import ReadConfig, configure
from radiobject.ml import LoaderProbe, create_training_dataloader, loader_cache_counters


def loader(radi, **kwargs):
    args = {"batch_size": 2, "patch_size": (16, 16, 16), "patches_per_volume": 4} | kwargs
    return create_training_dataloader(radi.T1w, **args)


def test_counts_batches_samples_and_real_cache_activity(sample_radi):
    # a cache budget of its own starts empty, whatever earlier tests read
    with configure(read=ReadConfig(cache_mb=123)):
        result = LoaderProbe(loader(sample_radi), interval_s=0.0).run(n_batches=10)
    assert (result.batches, result.samples) == (10, 20)
    assert len(result.records) == 10  # interval 0: one record per batch
    assert sum(r.samples for r in result.records) == 20
    hits = sum(r.cache_hits for r in result.records)
    misses = sum(r.cache_misses for r in result.records)
    assert misses > 0  # the first reads came from storage
    assert hits > 0  # patches of the same volume share tiles
    assert result.hit_rate == pytest.approx(hits / (hits + misses))
    assert all(r.samples_per_s > 0 for r in result.records)


def test_without_cache_every_tile_is_a_miss(sample_radi):
    with configure(read=ReadConfig(cache_mb=0)):
        result = LoaderProbe(loader(sample_radi), interval_s=0.0).run(n_batches=6)
    assert result.hit_rate == 0.0
    assert sum(r.bytes_from_storage for r in result.records) > 0


def test_callback_and_stop(sample_radi):
    probe = LoaderProbe(loader(sample_radi), interval_s=0.0)
    seen = []

    def callback(record):
        seen.append(record)
        if len(seen) == 3:
            probe.stop()

    result = probe.run(callback=callback)
    assert len(seen) >= 3
    assert result.batches <= 4  # stopped right after the third interval


def boom(batch):
    raise RuntimeError("training step failed")


def test_an_error_in_the_training_step_is_raised_by_default(sample_radi):
    probe = LoaderProbe(loader(sample_radi), interval_s=0.0)
    with pytest.raises(RuntimeError, match="training step failed"):
        probe.run(n_batches=5, on_batch=boom)
    assert probe.run(n_batches=2).batches == 2  # the probe works again afterwards


def test_errors_are_captured_on_request_with_where_they_happened(sample_radi):
    probe = LoaderProbe(loader(sample_radi), interval_s=0.0)
    failed = probe.run(n_batches=5, on_batch=boom, capture_errors=True)
    assert isinstance(failed.error, RuntimeError)
    assert failed.error_where == "on_batch"
    assert failed.batches == 1  # what was measured until then is kept
    assert len(failed.records) == 1

    def bad_callback(record):
        raise ValueError("plot failed")

    failed = probe.run(n_batches=5, callback=bad_callback, capture_errors=True)
    assert (type(failed.error), failed.error_where) == (ValueError, "callback")
    assert len(failed.records) == 1  # recorded once, not again at the end

    broken = LoaderProbe(DataLoader(_Items(fail_at=3), batch_size=1), interval_s=0.0)
    failed = broken.run(capture_errors=True)
    assert (type(failed.error), failed.error_where) == (KeyError, "loader")
    assert failed.batches == 3
    with pytest.raises(KeyError):
        broken.run()


class _Items(Dataset):
    """Eight numbered samples, each taking ``delay_s`` to make; item ``fail_at`` raises."""

    def __init__(self, delay_s: float = 0.0, fail_at: int | None = None) -> None:
        self.delay_s, self.fail_at = delay_s, fail_at

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == self.fail_at:
            raise KeyError(f"item {i} is broken")
        time.sleep(self.delay_s)  # makes the loader the slow side, nothing else
        return torch.tensor([i])


def test_starved_share_tells_a_slow_loader_from_a_slow_training_step():
    def slow_step(batch):
        time.sleep(0.02)  # makes the consumer the slow side, nothing else

    fast_loader = DataLoader(_Items(), batch_size=1)
    slow_loader = DataLoader(_Items(delay_s=0.02), batch_size=1)
    consumer_bound = LoaderProbe(fast_loader, interval_s=0.05).run(n_batches=16, on_batch=slow_step)
    loader_bound = LoaderProbe(slow_loader, interval_s=0.05).run(n_batches=16)
    assert 0.0 <= consumer_bound.starved_pct < loader_bound.starved_pct <= 100.0
    assert consumer_bound.records[-1].starved_pct < loader_bound.records[-1].starved_pct


@pytest.mark.timeout(120)
def test_worker_counters_reach_the_parent(sample_radi):
    two = loader(sample_radi, num_workers=2)
    before = loader_cache_counters(two)
    result = LoaderProbe(two, interval_s=0.0).run(n_batches=8)
    after = loader_cache_counters(two)
    assert result.samples == 16
    assert after.hits + after.misses > before.hits + before.misses
    assert sum(r.cache_hits + r.cache_misses for r in result.records) > 0


def test_stop_from_another_thread(sample_radi):
    probe = LoaderProbe(loader(sample_radi, patches_per_volume=50), interval_s=0.0)
    timer = threading.Timer(0.3, probe.stop)
    timer.start()
    result = probe.run()  # would cycle for ever without the stop
    timer.cancel()
    assert result.batches > 0
