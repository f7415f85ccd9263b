"""The local read tier, visible and on by default: the probe, the tuner and the automatic tier
report and decide from real counters."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from radiobject import ReadConfig, TileDBStats, configure
from radiobject.data import make_sample_radiobject
from radiobject.ml import LoaderProbe, create_training_dataloader
from radiobject.ml._tier_auto import auto_local_tier, cohort_bytes
from radiobject.read._local_tier import local_tier, tier_state

pytest.importorskip("blosc2")

SHAPE = (16, 16, 12)
PATCH = (8, 8, 8)


def _itemsize(radi) -> int:
    """Bytes per voxel as stored (whole-number phantoms are stored as integers)."""
    return radi.T1w.volume(radi.T1w.obs_ids[0]).stored_dtype.itemsize


def patch_bytes(radi) -> int:
    return 8 * 8 * 8 * _itemsize(radi)


def volume_bytes(radi) -> int:
    return 16 * 16 * 12 * _itemsize(radi)


N, PER = 2, 4  # volumes, patches per volume: 8 samples an epoch


@pytest.fixture(scope="module")
def radi(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tiercohort")
    return make_sample_radiobject(
        str(root / "r"), n_subjects=N, shape=SHAPE, modalities=("T1w",), progress=False
    )


def tier_on(folder: Path, cache_mb: int = 0) -> ReadConfig:
    return ReadConfig(cache_mb=cache_mb, local_tier_mb=64, local_tier_dir=str(folder))


def epoch(radi, num_workers: int = 0):
    loader = create_training_dataloader(
        radi.T1w,
        batch_size=2,
        patch_size=PATCH,
        patches_per_volume=PER,
        num_workers=num_workers,
    )
    return LoaderProbe(loader, interval_s=0.0).run(n_batches=N * PER // 2)


def test_a_warm_tier_serves_the_whole_epoch_and_the_probe_says_so(radi, tmp_path):
    with configure(read=tier_on(tmp_path / "tier")):
        assert radi.T1w.warm_local_tier() == N
        result = epoch(radi)
    assert result.samples == N * PER
    assert (result.tier_hits, result.tier_misses) == (N * PER, 0)
    assert result.bytes_from_tier == N * PER * patch_bytes(radi)
    assert (result.bytes_from_cache, result.bytes_from_storage) == (0, 0)
    assert result.sources() == {"RAM": 0.0, "local tier": 100.0, "storage": 0.0}
    records = result.records
    assert sum(r.tier_hits for r in records) == N * PER
    assert sum(r.bytes_from_tier for r in records) == N * PER * patch_bytes(radi)
    assert all(r.tier_pct == 100.0 and r.storage_pct == 0.0 for r in records if r.samples)


def test_an_empty_tier_misses_reads_storage_and_fills_every_volume(radi, tmp_path):
    with configure(read=tier_on(tmp_path / "tier")), TileDBStats(storage=False) as stats:
        result = epoch(radi)
        tier_state().flush()  # the background fills end here
    assert result.tier_hits + result.tier_misses == N * PER
    assert result.tier_misses >= N  # each volume missed at least once
    assert result.bytes_from_tier == result.tier_hits * patch_bytes(radi)
    cache = stats.cache_stats()
    assert cache.tier_fills == N
    # one storage query per miss: a volume's first miss read it whole (its patch cut from it,
    # the same array written to the tier), the other misses their patch; no second read
    assert cache.storage_queries == cache.tier_misses
    fills = N * volume_bytes(radi)
    assert cache.bytes_from_storage == (cache.tier_misses - N) * patch_bytes(radi) + fills
    # the next epoch comes from the tier alone
    with configure(read=tier_on(tmp_path / "tier")):
        second = epoch(radi)
    assert (second.tier_hits, second.tier_misses, second.bytes_from_storage) == (N * PER, 0, 0)


def test_without_the_tier_a_cached_epoch_comes_from_ram(radi):
    # two loaders over one version: the RAM block cache is keyed by it (a loader built on the
    # newest data reads as of when it was built, so two built apart do not share blocks)
    radi = radi.as_of(radi.versions()[-1])
    with configure(read=ReadConfig(cache_mb=64, local_tier_mb=0)):
        epoch(radi)
        second = epoch(radi)  # the same patches (seed 0, epoch 0): now cached
    assert (second.tier_hits, second.tier_misses, second.bytes_from_tier) == (0, 0, 0)
    assert second.bytes_from_cache == N * PER * patch_bytes(radi)
    shares = second.sources()
    assert shares["RAM"] == 100.0
    assert shares["local tier"] == 0.0


def test_workers_report_their_tier_hits(radi, tmp_path):
    with configure(read=tier_on(tmp_path / "tier")):
        radi.T1w.warm_local_tier()
        result = epoch(radi, num_workers=2)
    assert (result.tier_hits, result.tier_misses) == (N * PER, 0)
    assert result.bytes_from_tier == N * PER * patch_bytes(radi)


def test_the_tuner_shows_where_the_bytes_came_from(radi, tmp_path):
    from radiobject.widgets._plots import Trace
    from radiobject.widgets._runs import TunerRun, TunerSettings, sources_html

    with configure(read=tier_on(tmp_path / "tier")):
        radi.T1w.warm_local_tier()
        result = epoch(radi)
    run = TunerRun(1, TunerSettings(), records=list(result.records), result=result)
    row = run.row()
    assert (row["RAM %"], row["local tier %"], row["storage %"]) == (0.0, 100.0, 0.0)
    text = sources_html(run)
    assert "local tier 100%" in text
    assert f"{N * PER} hits, 0 misses" in text
    assert Trace.from_records("r", result.records).values["tier_pct"].max() == 100.0


@pytest.fixture(scope="module")
def larger(tmp_path_factory: pytest.TempPathFactory):
    """Two volumes of 768 kB as stored (uint16): 1.5 MB, more than a 1 MB RAM cache."""
    root = tmp_path_factory.mktemp("tierlarger")
    return make_sample_radiobject(
        str(root / "r"), n_subjects=2, shape=(64, 64, 96), modalities=("T1w",), progress=False
    )


def test_the_tier_turns_on_for_a_training_loader_over_a_cohort_larger_than_the_cache(
    larger, tmp_path, monkeypatch
):
    monkeypatch.setenv("RADIOBJECT_TIER_DIR", str(tmp_path / "auto"))
    assert cohort_bytes(larger.T1w) == 2 * 64 * 64 * 96 * _itemsize(larger) == 1536 << 10
    assert local_tier() is None  # the default: off until a training loader decides
    with configure(read=ReadConfig(cache_mb=1)):  # the cohort exceeds a 1 MB cache
        loader = create_training_dataloader(larger.T1w, batch_size=2, patch_size=PATCH)
        mb = loader.dataset.auto_tier_mb
        assert mb > 0
        assert local_tier() is None  # the loader's decision, not the process's
        tier = local_tier(mb)
        assert tier is not None
        assert tier.folder == tmp_path / "auto"
        assert tier.budget_bytes == mb << 20
        assert all(r.auto_tier_mb == mb for r in loader.dataset.plan((0, 0)).reads)
        # workers get the same budget: it travels with the dataset
        assert pickle.loads(pickle.dumps(loader.dataset)).auto_tier_mb == mb
        with TileDBStats(storage=False) as first:
            for _ in loader:  # each volume's first miss reads it whole: the patch and the fill
                pass
            tier_state().flush()
        assert len(list((tmp_path / "auto").glob("*.b2nd"))) == 2
        c = first.cache_stats()
        assert (c.tier_misses, c.tier_fills, c.storage_queries) == (2, 2, 2)  # one query each
        assert c.bytes_from_storage == cohort_bytes(larger.T1w)
        # a volume read outside the loader does not use the loader's tier
        with TileDBStats(storage=False) as direct:
            larger.T1w.volume(larger.T1w.obs_ids[0])[0:8, 0:8, 0:8]
        assert (direct.cache_stats().tier_hits, direct.cache_stats().tier_misses) == (0, 0)
        with TileDBStats(storage=False) as through_loader:
            next(iter(loader))
        assert through_loader.cache_stats().tier_hits > 0


def test_a_fill_waits_for_room_and_the_next_epoch_comes_from_the_tier(
    larger, tmp_path, monkeypatch
):
    """Writers with room for one volume: the other is read as patches until there is room."""
    monkeypatch.setenv("RADIOBJECT_TIER_DIR", str(tmp_path / "auto"))
    monkeypatch.setattr(tier_state(), "room", 1)
    with configure(read=ReadConfig(cache_mb=1)):
        loader = create_training_dataloader(
            larger.T1w, batch_size=2, patch_size=PATCH, patches_per_volume=3
        )
        with TileDBStats(storage=False) as first:
            for _ in loader:
                pass
            tier_state().flush()
        c = first.cache_stats()
        assert c.tier_hits + c.tier_misses == 6
        # every query was a miss's own read, whole or its patch: nothing read twice for a fill
        assert c.storage_queries == c.tier_misses
        whole = c.tier_fills * cohort_bytes(larger.T1w) // 2
        patch_bytes = 8 * 8 * 8 * _itemsize(larger)
        assert c.bytes_from_storage == whole + (c.tier_misses - c.tier_fills) * patch_bytes
        assert c.tier_fills >= 1
        for _ in range(2 - c.tier_fills):  # the volume that found no room fills later
            for _ in loader:
                pass
            tier_state().flush()
        assert len(list((tmp_path / "auto").glob("*.b2nd"))) == 2
        with TileDBStats(storage=False) as later:
            for _ in loader:
                pass
        c = later.cache_stats()
        assert (c.tier_hits, c.tier_misses, c.storage_queries) == (6, 0, 0)


def test_the_tier_stays_off_when_the_cohort_fits_caching_is_off_or_it_is_turned_off(
    larger, tmp_path, monkeypatch
):
    monkeypatch.setenv("RADIOBJECT_TIER_DIR", str(tmp_path / "auto"))
    for read in (
        ReadConfig(cache_mb=64),  # 1.5 MB fit
        ReadConfig(cache_mb=0),  # caching off
        ReadConfig(cache_mb=1, local_tier_mb=0),  # turned off
    ):
        with configure(read=read):
            assert auto_local_tier(larger.T1w) == 0
            loader = create_training_dataloader(larger.T1w, batch_size=2, patch_size=PATCH)
            assert loader.dataset.auto_tier_mb == 0
            assert local_tier(loader.dataset.auto_tier_mb) is None
    assert not os.path.exists(tmp_path / "auto")


def test_a_batch_from_the_tier_is_read_in_the_calling_thread_and_is_the_same(
    radi, tmp_path, monkeypatch
):
    """Volumes open in the tier: a batch is read without the reader threads, same voxels."""
    import torch

    import radiobject.ml._batch as batch_module
    from radiobject.ml import DatasetConfig, VolumeCollectionDataset
    from radiobject.read._region import served_locally

    config = DatasetConfig(loading_mode="patch", patch_size=PATCH, patches_per_volume=PER)
    ds = VolumeCollectionDataset(radi.T1w, config)
    keys = [(3, i) for i in range(len(ds))]
    from_storage = ds.__getitems__(keys)  # tier off: reader threads, TileDB queries
    uris = [u for ref in ds.refs for u in ref.uris]
    assert not any(served_locally(u) for u in uris)
    with configure(read=tier_on(tmp_path / "tier")):
        radi.T1w.warm_local_tier()
        ds[keys[0]], ds[keys[-1]]  # opens both volumes' entries in this process
        assert all(served_locally(u) for u in uris)
        assert batch_module.read_in_this_thread(ds, keys)

        def no_threads():
            raise AssertionError("a batch served by the tier must not use the reader threads")

        monkeypatch.setattr(batch_module, "read_pool", no_threads)
        with TileDBStats(storage=False) as stats:
            from_tier = ds.__getitems__(keys)
    assert stats.cache_stats().tier_hits == len(keys)
    assert stats.cache_stats().storage_queries == 0
    for a, b in zip(from_storage, from_tier, strict=True):
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["patch_start"], b["patch_start"])
