"""LoaderProbe: throughput, latency and true cache counters per interval."""

from __future__ import annotations

import threading

import pytest

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


def test_callback_stop_and_errors(sample_radi):
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

    failed = probe.run(n_batches=5, on_batch=boom)
    assert isinstance(failed.error, RuntimeError)


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
