"""Where the time goes (stage counters), the loader's memory, and the auto-tuner."""

from __future__ import annotations

import ast
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest

from radiobject import ReadConfig, configure
from radiobject.ml import (
    LoaderProbe,
    create_training_dataloader,
    loader_cache_counters,
    loader_pids,
    loader_stage_counters,
)
from radiobject.widgets import LoaderTuner
from radiobject.widgets._autotune import (
    MemoryModel,
    Trial,
    coordinate_search,
    default_space,
    settings_code,
)
from radiobject.widgets._runs import TunerSettings


def scale(sample):  # a transform with some work in it
    sample["image"] = sample["image"] * 2.0 + 1.0
    return sample


# -- stage counters ----------------------------------------------------------------------------


def test_stages_without_workers_add_up_and_exact_reads_amplify_once(sample_radi):
    with configure(read=ReadConfig(cache_mb=0)):  # every patch is one exact storage query
        loader = create_training_dataloader(
            sample_radi.T1w, batch_size=2, patch_size=(16, 16, 16), patches_per_volume=2,
            transform=scale,
        )  # fmt: skip
        before_cache, before = loader_cache_counters(loader), loader_stage_counters(loader)
        result = LoaderProbe(loader, interval_s=0.0).run(n_batches=4)
        done = loader_stage_counters(loader) - before
        cache = loader_cache_counters(loader)
    assert done.samples == 8
    assert done.batches == 4
    image_bytes = 8 * 16**3 * 4
    assert done.sample_bytes == image_bytes + 8 * 3 * 8  # images + patch_start (3 int64)
    assert done.read_ns > 0
    assert done.transform_ns > 0
    assert done.collate_ns > 0
    storage = cache.bytes_from_storage - before_cache.bytes_from_storage
    stored = sample_radi.T1w.volume(sample_radi.T1w.obs_ids[0]).stored_dtype
    assert storage == 8 * 16**3 * stored.itemsize  # exactly the voxels of the patches, as stored
    assert result.read_amplification == pytest.approx(storage / done.sample_bytes)
    ms = result.stage_ms()
    assert set(ms) == {"storage_ms", "cache_ms", "transform_ms", "collate_ms", "wait_ms"}
    assert ms["storage_ms"] > 0
    assert ms["transform_ms"] > 0
    assert ms["collate_ms"] > 0
    assert ms["storage_ms"] == pytest.approx((cache.storage_ns - before_cache.storage_ns) / 8 / 1e6)
    # the records' stages are those of their intervals
    assert sum(r.samples for r in result.records) == 8
    assert all(r.storage_ms > 0 for r in result.records)


def test_workers_publish_stages_and_pids(sample_radi):
    loader = create_training_dataloader(
        sample_radi.T1w, batch_size=1, patch_size=(16, 16, 16), num_workers=2, transform=scale
    )
    batches = sum(1 for _ in loader)
    done = loader_stage_counters(loader)  # workers' counters (this process read nothing)
    assert done.samples == batches == len(sample_radi.T1w)
    assert done.batches == batches  # collate published right after each batch
    assert done.transform_ns > 0
    assert done.collate_ns > 0
    pids = loader_pids(loader)
    assert pids[0] == os.getpid()
    assert len(set(pids)) == 3


# -- the search, with a fake measurement -------------------------------------------------------


def rate(s: TunerSettings) -> float:
    """Deterministic throughput: best at 2 workers, 4 threads, no cache."""
    return 2000 - 200 * abs(s.num_workers - 2) - 150 * abs(s.max_workers - 4) - s.cache_mb // 4


def fake_measure(log):
    def measure(s):
        log.append(s)
        return Trial(s, rate(s), pss_mb=300 + 200 * s.num_workers + s.cache_mb)

    return measure


def ticking():
    now = [0.0]

    def clock():
        now[0] += 1.0
        return now[0]

    return clock


def test_search_finds_the_optimum_and_returns_what_it_ran():
    log: list[TunerSettings] = []
    start = TunerSettings(num_workers=0, max_workers=1, cache_mb=2048)
    result = coordinate_search(
        start, fake_measure(log), time_budget_s=1000, clock=ticking(),
        space={"num_workers": (0, 1, 2, 4), "max_workers": (1, 2, 4, 8),
               "cache_mb": (0, 512, 2048)},
    )  # fmt: skip
    assert result.stopped == "converged"
    assert (result.best.num_workers, result.best.max_workers, result.best.cache_mb) == (2, 4, 0)
    assert result.best in log
    assert log[0] == start
    assert len(log) == len(set(log))  # no setting measured twice
    assert [t.settings for t in result.trials] == log
    assert result.best_samples_per_s == max(t.samples_per_s for t in result.trials)
    assert result.best_samples_per_s >= result.start_samples_per_s == rate(start)


def test_search_stops_at_the_time_budget():
    log: list[TunerSettings] = []
    result = coordinate_search(
        TunerSettings(num_workers=0), fake_measure(log), time_budget_s=7, clock=ticking()
    )
    # each trial takes 2 ticks of the fake clock: the start and two more fit in 7
    assert result.stopped == "time budget"
    assert len(log) == 3
    assert result.best == max(result.trials, key=lambda t: t.samples_per_s).settings


def test_search_skips_predicted_and_rejects_measured_over_ram_budget():
    log: list[TunerSettings] = []
    model = MemoryModel(main_mb=300, per_worker_mb=200)
    result = coordinate_search(
        TunerSettings(num_workers=0, max_workers=4, cache_mb=0), fake_measure(log),
        time_budget_s=1000, clock=ticking(), ram_budget_mb=600,
        predict_mb=model.predict_mb, space={"num_workers": (0, 1, 2, 4)},
    )  # fmt: skip
    assert all(300 + 200 * s.num_workers <= 600 for s in log)  # 2 workers: 700 MB, not run
    assert [s.num_workers for s, _ in result.skipped] == [2]
    assert result.best.num_workers == 1

    # without a prediction, 2 workers run but measure over the budget: not the best
    log2: list[TunerSettings] = []
    result = coordinate_search(
        TunerSettings(num_workers=0, max_workers=4, cache_mb=0), fake_measure(log2),
        time_budget_s=1000, clock=ticking(), ram_budget_mb=600, space={"num_workers": (0, 1, 2, 4)},
    )  # fmt: skip
    assert any(s.num_workers == 2 for s in log2)
    assert result.best.num_workers == 1


def test_failed_trials_are_never_best():
    def measure(s):
        if s.num_workers == 1:
            return Trial(s, 0.0, error="RuntimeError: boom")
        return Trial(s, 10.0 + s.num_workers)

    result = coordinate_search(
        TunerSettings(num_workers=0), measure, time_budget_s=100, clock=ticking(),
        space={"num_workers": (0, 1, 2)},
    )  # fmt: skip
    assert result.best.num_workers == 0  # the step up failed, so the search never got to 2
    assert [t.error for t in result.trials] == ["", "RuntimeError: boom"]


def test_default_space_and_code():
    space = default_space(cpus=4)
    assert space["num_workers"] == (0, 1, 2, 4, 6, 8)
    code = settings_code(
        TunerSettings(num_workers=3, cache_mb=64, max_parallel_ops=32),
        "create_segmentation_dataloader(radi.T1w, radi.seg",
    )
    ast.parse(code)
    assert "S3Config(max_parallel_ops=32)" in code
    assert "num_workers=3" in code


def test_memory_model_from_runs():
    runs = [
        SimpleNamespace(main_pss_mb=400.0, worker_pss_mb=[], settings=TunerSettings(num_workers=0)),
        SimpleNamespace(
            main_pss_mb=420.0,
            worker_pss_mb=[300.0, 340.0],
            settings=TunerSettings(num_workers=2, cache_mb=200),
        ),
    ]
    model = MemoryModel.from_runs(runs)
    assert model == MemoryModel(main_mb=420.0, per_worker_mb=220.0)  # 320 less 100 of cache
    assert MemoryModel.from_runs([SimpleNamespace(main_pss_mb=math.nan)]) is None


# -- the tuner ---------------------------------------------------------------------------------


def test_tuner_autotune_smoke(sample_radi):
    tuner = LoaderTuner(sample_radi.T1w, patch_size=(16, 16, 16), batch_size=2)
    tuner.live_box.value = False
    space = {"max_workers": (1, 2), "cache_mb": (0, 64)}
    result = tuner.autotune(time_budget_s=6, trial_s=0.3, space=space)
    assert result is not None
    assert not tuner.running
    ran = [r.settings for r in tuner.runs]
    assert [t.settings for t in result.trials] == ran  # each trial is a run of the tuner
    assert result.best in ran
    assert ran[0] == result.start
    assert all(r.done and not r.error for r in tuner.runs)
    assert result.best_samples_per_s == max(r.samples_per_s for r in tuner.runs)
    assert tuner.settings().max_workers == result.best.max_workers  # the controls show it
    code = tuner.autotune_code
    ast.parse(code)
    assert f"max_workers={result.best.max_workers}" in code
    assert "create_training_dataloader(\n    radi.T1w, batch_size=2, num_workers=0" in code
    assert "radiobject-autotune-code" in tuner.code_box.value
    run = tuner.runs[-1]
    assert run.main_pss_mb > 10
    assert run.worker_pss_mb == []
    assert "where the time goes" in tuner.stages_box.value
    row = run.row()
    assert row["PSS MB"] == run.pss_mb
    assert "storage read + decode ms" in row


def test_tuner_measures_worker_memory_and_warns(sample_radi):
    tuner = LoaderTuner(sample_radi.T1w, patch_size=(16, 16, 16), batch_size=2, num_workers=1)
    tuner.live_box.value = False
    tuner.memory_s = 0.05
    run = tuner.run_sync(duration_s=0.5)
    assert run is not None
    assert not run.error
    assert len(run.worker_pss_mb) == 1
    assert run.worker_pss_mb[0] > 1
    model = tuner.memory_model()
    assert model is not None
    assert model.main_mb == run.main_pss_mb
    huge = tuner.settings().replace(num_workers=64)
    warning = tuner.memory_warning(huge, ram_budget_mb=model.main_mb + 1)
    assert "64 workers" in warning
    assert "RAM budget" in warning
    assert tuner.memory_warning(tuner.settings().replace(num_workers=0), 1 << 30) == ""
    np.testing.assert_allclose(run.pss_mb, run.main_pss_mb + run.worker_pss_mb[0])
