"""Slabs (2.5D): k adjacent planes as channels, read alone (issue 24).

Volumes are ``np.arange`` data, so a slab's channels show which planes they came from.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from radiobject import (
    CompressionConfig,
    ConfigurationError,
    ShapeError,
    TileConfig,
    TileDBStats,
    VolumeCollection,
    WriteConfig,
    configure,
)
from radiobject.ml import (
    DatasetConfig,
    LoadingMode,
    SegmentationDataset,
    VolumeCollectionDataset,
    create_segmentation_dataloader,
    create_training_dataloader,
)

SHAPE = (20, 16, 12)


def arange(shape, offset=0):
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) + offset


@pytest.fixture(scope="module")
def arrays():
    return {f"sub-{i:03d}": arange(SHAPE, offset=i * 100_000) for i in range(2)}


@pytest.fixture(scope="module")
def colls(tmp_path_factory, arrays):
    """Two channels of the same subjects: the second is the first plus 0.5."""
    root = tmp_path_factory.mktemp("slabs")
    a = VolumeCollection.from_numpy(str(root / "A"), arrays)
    b = VolumeCollection.from_numpy(str(root / "B"), {k: v + 0.5 for k, v in arrays.items()})
    return a, b


def slab_cfg(k, **kw):
    return DatasetConfig(loading_mode=LoadingMode.SLAB, slab=k, **kw)


@pytest.mark.parametrize(("orientation", "axis"), [("axial", 2), ("coronal", 1), ("sagittal", 0)])
def test_slab_channels_are_its_planes_in_order(colls, arrays, orientation, axis):
    k = 3
    ds = VolumeCollectionDataset(list(colls), slab_cfg(k, slice_orientation=orientation))
    in_plane = [n for a, n in enumerate(SHAPE) if a != axis]
    for index in range(len(ds)):
        sample = ds[(4, index)]
        image = sample["image"].numpy()
        assert image.shape == (2 * k, *in_plane)
        lo = int(sample["patch_start"][axis])
        assert 0 <= lo <= SHAPE[axis] - k
        volume = arrays[sample["obs_subject_id"]]
        for c, offset in enumerate((0.0, 0.5)):  # channel c * k + j: plane j of collection c
            for j in range(k):
                expected = np.take(volume, lo + j, axis=axis) + offset
                np.testing.assert_array_equal(image[c * k + j], expected)


def test_slab_patch_is_a_2d_patch_of_the_planes(colls, arrays):
    ds = VolumeCollectionDataset(colls[0], slab_cfg(4, slab_patch=(8, 6), patches_per_volume=5))
    assert len(ds) == 10
    for index in range(len(ds)):
        sample = ds[index]
        x, y, z = sample["patch_start"].tolist()
        assert sample["image"].shape == (4, 8, 6)
        box = arrays[sample["obs_subject_id"]][x : x + 8, y : y + 6, z : z + 4]
        expected = np.moveaxis(box, 2, 0)
        np.testing.assert_array_equal(sample["image"].numpy(), expected)


def test_slab_positions_are_uniform_where_the_slab_fits(colls):
    k = 5
    ds = VolumeCollectionDataset(colls[0], slab_cfg(k))
    starts = [int(ds[(epoch, 0)]["patch_start"][2]) for epoch in range(400)]
    counts = np.bincount(starts, minlength=SHAPE[2] - k + 1)
    assert len(counts) == SHAPE[2] - k + 1  # never past the last position that fits
    # 8 positions, 400 draws: each expected 50 times; a bias to the middle or an edge fails
    assert counts.min() >= 25, counts
    assert counts.max() <= 80, counts
    assert [int(ds[(e, 0)]["patch_start"][2]) for e in range(5)] == starts[:5]  # a pure function


def test_any_k_fits_up_to_the_volume_depth(colls, arrays):
    whole = VolumeCollectionDataset(colls[0], slab_cfg(SHAPE[2]))[0]["image"].numpy()
    np.testing.assert_array_equal(whole, np.moveaxis(arrays["sub-000"], 2, 0))
    one = VolumeCollectionDataset(colls[0], slab_cfg(1))[0]
    assert one["image"].shape == (1, SHAPE[0], SHAPE[1])  # one plane: a 2D slice
    even = VolumeCollectionDataset(colls[0], slab_cfg(2, slice_orientation="coronal"))[0]
    assert even["image"].shape == (2, SHAPE[0], SHAPE[2])


def test_too_thick_a_slab_or_too_wide_a_patch_names_the_volume(colls):
    with pytest.raises(ShapeError, match=r"slab of 13 axial planes does not fit in volume 'sub-0"):
        VolumeCollectionDataset(colls[0], slab_cfg(13))
    with pytest.raises(ShapeError, match=r"slab_patch \(24, 8\) is larger than the axial planes"):
        VolumeCollectionDataset(colls[0], slab_cfg(3, slab_patch=(24, 8)))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"loading_mode": "slab"}, "needs slab"),
        ({"loading_mode": "slab", "slab": 0}, "slab must be an integer >= 1"),
        ({"loading_mode": "slab", "slab": 2.5}, "slab must be an integer >= 1"),
        ({"loading_mode": "slab", "slab": 3, "slab_patch": (4, 4, 4)}, "slab_patch must be two"),
        ({"loading_mode": "slab", "slab": 3, "patch_size": 8}, "takes slab_patch"),
        ({"loading_mode": "patch", "patch_size": 8, "slab": 3}, "need loading_mode=SLAB"),
        ({"loading_mode": "slab", "slab": 3, "slice_orientation": "isotropic"}, "must be one of"),
    ],
)
def test_bad_slab_configs_are_configuration_errors(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        DatasetConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"slab": -1}, r"^create_training_dataloader: slab must be an integer >= 1"),
        ({"slab": "5"}, r"^create_training_dataloader: slab must be an integer >= 1"),
        ({"slab": 3, "axis": "z"}, r"^create_training_dataloader: axis must be one of 'axial'"),
        ({"slab": 3, "slab_patch": (0, 4)}, r"slab_patch must be two positive integers"),
        ({"slab": 3, "patch_size": 8}, r"a slab's 2D patch is slab_patch"),
        ({"slab": 3, "config": DatasetConfig()}, r"either slab=\.\.\. or config"),
        ({"axis": "coronal"}, r"pass slab=k"),
        ({"slab_patch": 8}, r"pass slab=k"),
    ],
)
def test_factory_slab_parameters_are_checked(sample_radi, kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        create_training_dataloader(sample_radi.T1w, **kwargs)


def test_factories_give_slab_batches_and_record_them(sample_radi):
    loader = create_training_dataloader(
        [sample_radi.T1w, sample_radi.FLAIR], slab=3, axis="Sagittal", batch_size=2
    )
    assert loader.dataset.config.slice_orientation.value == "sagittal"
    assert next(iter(loader))["image"].shape == (2, 6, 32, 24)
    assert loader.recipe.arguments["slab"] == 3
    variant = loader.recipe.build(batch_size=4, patches_per_volume=2)  # what the tuner does
    assert variant.dataset.config.slab == 3
    assert variant.dataset.config.patches_per_volume == 2
    assert next(iter(variant))["image"].shape == (4, 6, 32, 24)
    seg = create_segmentation_dataloader(sample_radi.T1w, sample_radi.seg, batch_size=2, slab=5)
    batch = next(iter(seg))
    assert batch["image"].shape == (2, 5, 32, 32)
    assert batch["mask"].shape == (2, 1, 32, 32)


def test_a_slab_config_survives_recipe_changes(sample_radi):
    config = slab_cfg(3, slab_patch=8, seed=4)
    loader = create_training_dataloader(sample_radi.T1w, config=config)
    more = loader.recipe.build(patches_per_volume=3)
    assert more.dataset.config.loading_mode is LoadingMode.SLAB
    assert more.dataset.config.patches_per_volume == 3
    assert more.dataset.config.slab == 3
    patches = loader.recipe.build(patch_size=(8, 8, 8))  # 3D patches now: no slab left
    assert patches.dataset.config.loading_mode is LoadingMode.PATCH
    assert patches.dataset.config.slab is None


def test_segmentation_slab_mask_is_its_centre_plane(sample_radi):
    k = 5
    ds = SegmentationDataset(
        sample_radi.T1w,
        sample_radi.seg,
        slab_cfg(k, patches_per_volume=3),
        foreground_sampling=True,
        foreground_probability=1.0,
    )
    with_foreground = 0
    for index in range(len(ds)):
        sample = ds[index]
        z = int(sample["patch_start"][2]) + k // 2
        seg = sample_radi.seg.loc[f"{sample['obs_subject_id']}_seg"].to_numpy()
        assert sample["mask"].shape == (1, 32, 32)
        assert sample["mask"].dtype == torch.int64
        np.testing.assert_array_equal(sample["mask"][0].numpy(), seg[:, :, z])
        has_fg = seg.any()
        # foreground-centred: the centre plane holds foreground wherever the volume has some
        assert bool(sample["mask"].any()) == has_fg
        with_foreground += has_fg
    assert with_foreground > 0
    reads = ds.plan(0).reads
    assert [r.name for r in reads] == ["image", "mask"]
    assert reads[1].bounds[2][1] - reads[1].bounds[2][0] == 1  # one mask plane read


def test_slab_datasets_pickle(colls):
    ds = VolumeCollectionDataset(list(colls), slab_cfg(3, slab_patch=4, patches_per_volume=2))
    again = pickle.loads(pickle.dumps(ds))
    assert torch.equal(again[(2, 3)]["image"], ds[(2, 3)]["image"])


# -- bytes read: only the slab's planes ----------------------------------------------------
AXIAL_SHAPE = (96, 96, 24)


@pytest.fixture
def axial_uncompressed(tmp_path):
    """Noise volumes stored one axial plane per tile, uncompressed: bytes read are bytes."""
    rng = np.random.default_rng(3)
    data = {f"sub-{i}": rng.integers(0, 30000, AXIAL_SHAPE, dtype=np.int16) for i in range(2)}
    write = WriteConfig(
        tile=TileConfig(orientation="axial"), compression=CompressionConfig(algorithm="none")
    )
    with configure(write=write):
        coll = VolumeCollection.from_numpy(str(tmp_path / "ax"), data)
    assert coll.loc["sub-0_ax"].tile_shape == (96, 96, 1)
    return coll


def _bytes_read(ds, key):
    with TileDBStats() as stats:
        ds[key]
    return stats.s3_stats().bytes_read, stats.cache_stats().bytes_from_storage


@pytest.mark.parametrize("cache_mb", [0, 64])
def test_a_slab_reads_at_most_1_5x_its_bytes_on_axial_tiles(axial_uncompressed, cache_mb):
    k = 5
    slab_bytes = k * AXIAL_SHAPE[0] * AXIAL_SHAPE[1] * 2  # int16 planes
    with configure(read={"cache_mb": cache_mb}):
        ds = VolumeCollectionDataset(axial_uncompressed, slab_cfg(k))
        tiledb_bytes, decoded = _bytes_read(ds, (0, 0))
        assert 0 < tiledb_bytes <= 1.5 * slab_bytes, (tiledb_bytes, slab_bytes)
        assert decoded <= 1.5 * slab_bytes
        # the same measure fails the whole-volume recipe (load everything, then crop)
        whole = VolumeCollectionDataset(axial_uncompressed, DatasetConfig())
        whole_bytes, _ = _bytes_read(whole, (0, 1))  # the other volume: nothing cached
        assert whole_bytes > 1.5 * slab_bytes


def test_slab_batches_are_the_same_with_workers(sample_radi):
    def batches(workers):
        loader = create_segmentation_dataloader(
            sample_radi.T1w,
            sample_radi.seg,
            batch_size=3,
            slab=5,
            slab_patch=(16, 16),
            patches_per_volume=2,
            num_workers=workers,
        )
        return [(b["image"], b["mask"], b["patch_start"]) for b in loader]

    alone, with_workers = batches(0), batches(2)
    assert len(alone) == len(with_workers) == 4
    for one, other in zip(alone, with_workers, strict=True):
        for a, b in zip(one, other, strict=True):
            assert torch.equal(a, b)
