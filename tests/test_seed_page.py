# ruff: noqa: I001 - the seed's import lines are kept as the page writes them
"""Every snippet of the seed's "ML Training" page, run as written on the sample cohort.

Code between ``# --- seed`` and ``# ---`` markers is copied from the page unchanged, except
where a comment says otherwise (``num_workers=0`` in place of 4 to keep the suite fast; one
test per 4-worker snippet runs the exact call). The page's examples assume ``radi`` (a
RadiObject) and ``Volume`` are in scope; ``volume_uris`` is defined here.
"""

from __future__ import annotations

import importlib
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

import radiobject
from radiobject import Volume, get_config, get_tiledb_ctx
from radiobject.data import make_sample_radiobject

pytestmark = pytest.mark.slow

SHAPE = (96, 96, 96)
# torch warns when num_workers exceeds the CPUs it sees (2 in CI); the seed asks for 4
many_workers = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


@pytest.fixture(scope="module")
def radi(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("seed") / "radi")
    # the seed's examples use radi.T1w, radi.FLAIR, radi.CT and radi.seg
    return make_sample_radiobject(
        uri, n_subjects=4, shape=SHAPE, modalities=("T1w", "FLAIR", "CT"), progress=False
    )


def stored(coll, obs_id):
    return coll.loc[obs_id].to_numpy()


def test_installation_extras_exist():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]

    def names(extra):
        return {r.split(">")[0].split("=")[0].split(";")[0].strip() for r in extras[extra]}

    assert {"torch", "monai"} <= names("monai")
    assert {"torch", "torchio"} <= names("torchio")
    assert names("ml") == {"radiobject[monai,torchio]"}


# -- MONAI Integration --------------------------------------------------------------------
def check_monai_batch(radi, batch):
    assert batch["image"].shape == (4, 1, *SHAPE)  # 4 subjects < batch_size=8: one batch
    assert batch["label"].dtype == torch.int64
    diagnosis = radi.obs_meta.set_index("obs_subject_id")["diagnosis"]
    classes = ["healthy", "tumour"]
    for label, sid in zip(batch["label"].tolist(), batch["obs_subject_id"], strict=True):
        assert classes[label] == diagnosis[sid]
    per_sample = batch["image"].as_tensor().flatten(1)
    assert torch.allclose(per_sample.mean(1), torch.zeros(4), atol=1e-4)
    assert torch.allclose(per_sample.std(1, unbiased=False), torch.ones(4), atol=1e-3)


def test_monai_integration(radi):
    # --- seed
    # fmt: off
    from monai.transforms import Compose, NormalizeIntensityd, RandFlipd
    from radiobject.ml import create_training_dataloader

    transform = Compose([
        NormalizeIntensityd(keys="image"),
        RandFlipd(keys="image", prob=0.5, spatial_axis=[0, 1, 2]),
    ])

    loader = create_training_dataloader(
        collections=radi.T1w,
        labels="diagnosis",
        transform=transform,
        batch_size=8,
        num_workers=0,  # the page says 4: see test_monai_integration_with_four_workers
    )
    # fmt: on
    # ---
    batches = [list(loader) for _ in range(2)]
    assert [len(b) for b in batches] == [1, 1]
    check_monai_batch(radi, batches[0][0])


@pytest.mark.timeout(180)
@many_workers
def test_monai_integration_with_four_workers(radi):
    # --- seed
    # fmt: off
    from monai.transforms import Compose, NormalizeIntensityd, RandFlipd
    from radiobject.ml import create_training_dataloader

    transform = Compose([
        NormalizeIntensityd(keys="image"),
        RandFlipd(keys="image", prob=0.5, spatial_axis=[0, 1, 2]),
    ])

    loader = create_training_dataloader(
        collections=radi.T1w,
        labels="diagnosis",
        transform=transform,
        batch_size=8,
        num_workers=4,
    )
    # fmt: on
    # ---
    check_monai_batch(radi, next(iter(loader)))


# -- Validation and Inference -------------------------------------------------------------
def test_validation_and_inference(radi):
    # --- seed
    # fmt: off
    from radiobject.ml import create_validation_dataloader, create_inference_dataloader

    val_loader = create_validation_dataloader(
        collections=radi.T1w, labels="diagnosis", batch_size=8,
    )

    inf_loader = create_inference_dataloader(
        collections=radi.T1w, batch_size=1,
    )
    # fmt: on
    # ---
    (val,) = list(val_loader)
    assert val["obs_id"] == radi.T1w.obs_ids
    assert val["image"].shape == (4, 1, *SHAPE)
    (again,) = list(val_loader)
    assert torch.equal(val["image"], again["image"])
    assert val["label"].tolist() == again["label"].tolist()

    batches = list(inf_loader)
    assert [b["obs_id"] for b in batches] == [[o] for o in radi.T1w.obs_ids]
    np.testing.assert_array_equal(
        batches[2]["image"][0, 0].numpy(), stored(radi.T1w, radi.T1w.obs_ids[2])
    )


# -- Segmentation -------------------------------------------------------------------------
def test_segmentation(radi):
    # --- seed
    # fmt: off
    from radiobject.ml import create_segmentation_dataloader

    loader = create_segmentation_dataloader(
        image=radi.CT,
        mask=radi.seg,
        batch_size=4,
        patch_size=(96, 96, 96),
        foreground_sampling=True,   # Bias toward non-zero mask regions
    )
    # fmt: on
    # ---
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 1, *SHAPE)
    assert batch["mask"].shape == (4, 1, *SHAPE)
    for i, sid in enumerate(batch["obs_subject_id"]):
        np.testing.assert_array_equal(batch["image"][i, 0].numpy(), stored(radi.CT, f"{sid}_CT"))
        np.testing.assert_array_equal(batch["mask"][i, 0].numpy(), stored(radi.seg, f"{sid}_seg"))


# -- TorchIO Integration ------------------------------------------------------------------
def test_torchio_integration(radi):
    # --- seed
    # fmt: off
    from radiobject.ml import VolumeCollectionSubjectsDataset
    import torchio as tio

    dataset = VolumeCollectionSubjectsDataset(collections=radi.T1w)
    transform = tio.Compose([tio.ZNormalization(), tio.RandomFlip()])
    # fmt: on
    # ---
    # The page's next line omits `sampler`, which every released TorchIO Queue requires:
    with pytest.raises(TypeError, match="sampler"):
        tio.Queue(dataset, max_length=100, samples_per_volume=10)
    # ...so it runs with a sampler (and with the transform, which the page defines):
    dataset = VolumeCollectionSubjectsDataset(collections=radi.T1w, transform=transform)
    queue = tio.Queue(
        dataset, max_length=100, samples_per_volume=10, sampler=tio.UniformSampler(64)
    )
    patches = [
        p
        for batch in torch.utils.data.DataLoader(queue, batch_size=10)
        for p in batch["T1w"]["data"]
    ]
    assert len(patches) == 4 * 10
    assert all(p.shape == (1, 64, 64, 64) for p in patches)


# -- DatasetConfig ------------------------------------------------------------------------
def test_dataset_config_table(radi):
    from radiobject.ml import DatasetConfig, LoadingMode, VolumeCollectionDataset

    cfg = DatasetConfig()
    assert (cfg.loading_mode, cfg.patch_size, cfg.patches_per_volume) == (
        LoadingMode.FULL_VOLUME,
        None,
        1,
    )
    with pytest.raises(radiobject.ConfigurationError, match="needs patch_size"):
        DatasetConfig(loading_mode=LoadingMode.PATCH)
    patches = DatasetConfig(loading_mode="patch", patch_size=(32, 32, 32), patches_per_volume=3)
    dataset = VolumeCollectionDataset(radi.T1w, patches)
    assert len(dataset) == 4 * 3
    assert dataset[0]["image"].shape == (1, 32, 32, 32)
    slices = VolumeCollectionDataset(radi.T1w, DatasetConfig(loading_mode="slice_2d"))
    assert len(slices) == 4 * 96
    assert slices[0]["image"].shape == (1, 96, 96)


# -- Performance Tuning: Worker Configuration ---------------------------------------------
@pytest.mark.timeout(180)
@many_workers
def test_large_dataset_example(radi):
    from radiobject.ml import create_training_dataloader

    # --- seed
    # fmt: off
    # Large dataset example
    loader = create_training_dataloader(
        collections=[radi.T1w, radi.FLAIR],
        batch_size=16,
        num_workers=4,
        pin_memory=True,
        persistent_workers=True,
    )
    # fmt: on
    # ---
    for _ in range(2):
        (batch,) = list(loader)
        assert batch["image"].shape == (4, 2, *SHAPE)
        sid = batch["obs_subject_id"][0]
        np.testing.assert_array_equal(
            batch["image"][0, 1].numpy(), stored(radi.FLAIR, f"{sid}_FLAIR")
        )


# -- Context Handling: Threads vs Processes -----------------------------------------------
@pytest.fixture
def snippets(monkeypatch):
    """tests/_seed_snippets.py, importable by name in spawned processes."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    return importlib.import_module("_seed_snippets")


def test_context_handling_threads(radi, snippets):
    from radiobject.parallel import ctx_for_threads

    uris = [radi.T1w.volume_uri(o) for o in radi.T1w.obs_ids]
    with ThreadPoolExecutor(max_workers=4) as pool:
        volumes = list(pool.map(snippets.thread_worker, uris))
    for uri, volume in zip(uris, volumes, strict=True):
        np.testing.assert_array_equal(volume, Volume(uri).to_numpy())
    assert ctx_for_threads(snippets.shared_ctx) is snippets.shared_ctx


@pytest.mark.timeout(120)
def test_context_handling_processes(radi, snippets):
    uris = [radi.FLAIR.volume_uri(o) for o in radi.FLAIR.obs_ids]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        volumes = pool.map(snippets.process_worker, uris)
    for uri, volume in zip(uris, volumes, strict=True):
        np.testing.assert_array_equal(volume, Volume(uri).to_numpy())


# -- ReadConfig Tuning --------------------------------------------------------------------
def test_read_config_tuning(radi):
    # --- seed
    # fmt: off
    from radiobject import configure, ReadConfig, S3Config

    # Local SSD
    configure(read=ReadConfig(max_workers=4, concurrency=4, memory_budget_mb=1024))
    # fmt: on
    # ---
    assert get_config().read == ReadConfig(max_workers=4, concurrency=4, memory_budget_mb=1024)
    tdb = get_tiledb_ctx().config()
    assert tdb["sm.compute_concurrency_level"] == "4"
    assert tdb["sm.memory_budget"] == str(1024 * 1024 * 1024)
    obs_id = radi.T1w.obs_ids[0]
    np.testing.assert_array_equal(
        Volume(radi.T1w.volume_uri(obs_id)).to_numpy(), stored(radi.T1w, obs_id)
    )

    # --- seed
    # fmt: off
    # S3, high bandwidth
    configure(
        read=ReadConfig(max_workers=8, concurrency=2),
        s3=S3Config(max_parallel_ops=32, multipart_part_size_mb=100),
    )
    # fmt: on
    # ---
    assert get_config().read.max_workers == 8
    tdb = get_tiledb_ctx().config()
    assert tdb["sm.io_concurrency_level"] == "2"
    assert tdb["vfs.s3.max_parallel_ops"] == "32"
    assert tdb["vfs.s3.multipart_part_size"] == str(100 * 1024 * 1024)

    # "Common Tuning Scenarios" name these settings
    configure(s3=S3Config(max_parallel_ops=32))
    configure(read=ReadConfig(max_workers=2, memory_budget_mb=512))
    assert get_config().read.memory_budget_mb == 512
    assert get_tiledb_ctx().config()["vfs.s3.max_parallel_ops"] == "32"


# -- Measuring Cache Performance ----------------------------------------------------------
def cache_snippet(volume_uris):
    # --- seed
    # fmt: off
    from radiobject import TileDBStats

    with TileDBStats() as stats:
        for uri in volume_uris:
            vol = Volume(uri)
            _ = vol.to_numpy()

    cache = stats.cache_stats()
    print(f"Hit rate: {cache.hit_rate:.1%}")

    s3 = stats.s3_stats()
    print(f"Parallelization rate: {s3.parallelization_rate:.1%}")
    # fmt: on
    # ---
    return cache, s3


def test_measuring_cache_performance(radi, capsys):
    volume_uris = [radi.T1w.volume_uri(o) for o in radi.T1w.obs_ids]
    radiobject.clear_caches()
    cold, cold_io = cache_snippet(volume_uris)
    warm, warm_io = cache_snippet(volume_uris)
    out = capsys.readouterr().out.splitlines()

    tile = Volume(volume_uris[0]).tile_shape
    blocks = 4 * int(np.prod([-(-n // t) for n, t in zip(SHAPE, tile, strict=True)]))
    assert blocks == 4 * 8  # 96^3 volumes in 48^3 tiles
    assert cold.hit_rate == 0.0
    assert (cold.hits, cold.misses) == (0, blocks)
    stored = Volume(volume_uris[0]).stored_dtype  # whole-number intensities: integers
    assert stored == np.uint16
    assert cold.bytes_from_storage == 4 * int(np.prod(SHAPE)) * stored.itemsize  # 4 volumes
    assert cold_io.read_ops >= 4  # at least one read per volume
    assert cold_io.bytes_read > 0
    assert cold_io.parallelization_rate == 0.0  # one volume after the other, one thread
    assert warm.hit_rate == 1.0  # the same volumes again: all from memory
    assert (warm.hits, warm.misses) == (blocks, 0)
    assert warm.bytes_from_storage == 0
    assert warm_io.bytes_read == 0
    assert warm_io.read_ops == 0
    assert out == [
        "Hit rate: 0.0%",
        "Parallelization rate: 0.0%",
        "Hit rate: 100.0%",
        "Parallelization rate: 0.0%",
    ]
