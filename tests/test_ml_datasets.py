"""VolumeCollectionDataset and SegmentationDataset on real TileDB data."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tiledb
import torch
from torch.utils.data import DataLoader

import radiobject
import radiobject.ml._dataset
import radiobject.ml._segmentation
import radiobject.read._region
import radiobject.storage._volume
from radiobject import AlignmentError, LabelError, RadiObject, ShapeError, VolumeCollection
from radiobject.ml import (
    DatasetConfig,
    EpochSampler,
    LoadingMode,
    SegmentationDataset,
    VolumeCollectionDataset,
    create_training_dataloader,
)

SHAPE = (32, 40, 24)
HETERO = {"sub-000": (32, 32, 24), "sub-001": (40, 36, 28), "sub-002": (24, 30, 20)}


def arange(shape, offset=0):
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) + offset


def patch_cfg(size, per_volume=1, **kw):
    return DatasetConfig(
        loading_mode=LoadingMode.PATCH, patch_size=size, patches_per_volume=per_volume, **kw
    )


@pytest.fixture(scope="module")
def arange_arrays():
    # a distinct offset per subject, so a read also shows which volume it came from
    return {f"sub-{i:03d}": arange(SHAPE, offset=i * 1_000_000) for i in range(3)}


@pytest.fixture(scope="module")
def arange_coll(tmp_path_factory, arange_arrays):
    uri = tmp_path_factory.mktemp("arange") / "CT"
    return VolumeCollection.from_numpy(str(uri), arange_arrays)


@pytest.fixture(scope="module")
def hetero_coll(tmp_path_factory):
    uri = tmp_path_factory.mktemp("hetero") / "het"
    return VolumeCollection.from_numpy(
        str(uri),
        {sid: arange(shape, offset=k * 1e6) for k, (sid, shape) in enumerate(HETERO.items())},
    )


def stored(coll, obs_id):
    return coll.loc[obs_id].to_numpy()


# -- loading modes ------------------------------------------------------------------------
def test_full_volume_items_are_whole_stored_volumes(sample_radi):
    ds = VolumeCollectionDataset(sample_radi.T1w)
    assert len(ds) == 6
    sample = ds[2]
    assert sample["image"].shape == (1, 32, 32, 24)
    assert sample["image"].dtype == torch.float32
    assert sample["obs_id"] == "sub-002_T1w"
    assert sample["obs_subject_id"] == "sub-002"
    np.testing.assert_array_equal(
        sample["image"][0].numpy(), stored(sample_radi.T1w, "sub-002_T1w")
    )
    assert sample["patch_start"].tolist() == [0, 0, 0]
    assert "label" not in sample


def test_patch_items_have_the_patch_shape(sample_radi):
    ds = VolumeCollectionDataset(sample_radi.T1w, patch_cfg((8, 16, 4), per_volume=3))
    assert len(ds) == 18
    assert ds.items_per_volume == 3
    shapes = {tuple(ds[i]["image"].shape) for i in range(len(ds))}
    assert shapes == {(1, 8, 16, 4)}
    # the three patches of volume 0 come from volume 0 and are not all at one place
    starts = {tuple(ds[i]["patch_start"].tolist()) for i in range(3)}
    assert {ds[i]["obs_id"] for i in range(3)} == {"sub-000_T1w"}
    assert len(starts) > 1


@pytest.mark.parametrize(
    ("orientation", "axis", "shape"),
    [("axial", 2, (1, 32, 40)), ("coronal", 1, (1, 32, 24)), ("sagittal", 0, (1, 40, 24))],
)
def test_slice_items_are_the_stored_slices(arange_coll, arange_arrays, orientation, axis, shape):
    cfg = DatasetConfig(loading_mode=LoadingMode.SLICE_2D, slice_orientation=orientation)
    ds = VolumeCollectionDataset(arange_coll, cfg)
    assert len(ds) == 3 * SHAPE[axis]
    index = SHAPE[axis] + 5  # volume 1, slice 5
    sample = ds[index]
    assert tuple(sample["image"].shape) == shape
    expected = np.take(arange_arrays["sub-001"], 5, axis=axis)
    np.testing.assert_array_equal(sample["image"][0].numpy(), expected)


def test_channels_are_the_individual_volumes(sample_radi):
    ds = VolumeCollectionDataset([sample_radi.T1w, sample_radi.FLAIR])
    sample = ds[4]
    assert sample["image"].shape == (2, 32, 32, 24)
    np.testing.assert_array_equal(
        sample["image"][0].numpy(), stored(sample_radi.T1w, "sub-004_T1w")
    )
    np.testing.assert_array_equal(
        sample["image"][1].numpy(), stored(sample_radi.FLAIR, "sub-004_FLAIR")
    )
    assert not torch.equal(sample["image"][0], sample["image"][1])

    patches = VolumeCollectionDataset(
        [sample_radi.T1w, sample_radi.FLAIR], patch_cfg((8, 8, 8), per_volume=2)
    )
    sample = patches[9]  # volume 4
    x, y, z = sample["patch_start"].tolist()
    region = (slice(x, x + 8), slice(y, y + 8), slice(z, z + 8))
    np.testing.assert_array_equal(
        sample["image"][0].numpy(), stored(sample_radi.T1w, "sub-004_T1w")[region]
    )
    np.testing.assert_array_equal(
        sample["image"][1].numpy(), stored(sample_radi.FLAIR, "sub-004_FLAIR")[region]
    )


def test_patch_read_comes_from_patch_start(arange_coll, arange_arrays):
    p = (8, 16, 5)
    ds = VolumeCollectionDataset(arange_coll, patch_cfg(p, per_volume=4, seed=11))
    starts = set()
    for i in range(len(ds)):
        for epoch in (0, 1):
            sample = ds[(epoch, i)]
            x, y, z = sample["patch_start"].tolist()
            assert 0 <= x <= SHAPE[0] - p[0]
            assert 0 <= y <= SHAPE[1] - p[1]
            assert 0 <= z <= SHAPE[2] - p[2]
            expected = arange_arrays[sample["obs_subject_id"]][x : x + 8, y : y + 16, z : z + 5]
            np.testing.assert_array_equal(sample["image"][0].numpy(), expected)
            starts.add((x, y, z))
    assert len(starts) > len(ds)  # positions vary with item and epoch


def test_heterogeneous_shapes_in_patch_mode(hetero_coll):
    ds = VolumeCollectionDataset(hetero_coll, patch_cfg((16, 16, 16), per_volume=3))
    by_subject = {}
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["image"].shape == (1, 16, 16, 16)
        sid = sample["obs_subject_id"]
        x, y, z = sample["patch_start"].tolist()
        k = list(HETERO).index(sid)
        expected = arange(HETERO[sid], offset=k * 1e6)[x : x + 16, y : y + 16, z : z + 16]
        np.testing.assert_array_equal(sample["image"][0].numpy(), expected)
        by_subject.setdefault(sid, 0)
        by_subject[sid] += 1
    assert by_subject == dict.fromkeys(HETERO, 3)
    # and they batch, although the volumes do not share a shape
    loader = create_training_dataloader(hetero_coll, batch_size=4, patch_size=(16, 16, 16))
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 1, 16, 16, 16)


def test_patch_larger_than_a_volume_names_it(hetero_coll):
    with pytest.raises(
        ShapeError, match=r"larger than volume 'sub-002_het' of shape \(24, 30, 20\)"
    ):
        VolumeCollectionDataset(hetero_coll, patch_cfg((22, 22, 22)))


# -- labels -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def obs_meta(sample_radi):
    return sample_radi.obs_meta.set_index("obs_subject_id")


def test_diagnosis_labels_come_from_obs_meta(sample_radi, obs_meta):
    ds = VolumeCollectionDataset(sample_radi.T1w, labels="diagnosis")
    assert ds.classes == ["healthy", "tumour"]
    for i in range(len(ds)):
        sample = ds[i]
        expected = obs_meta.loc[sample["obs_subject_id"], "diagnosis"]
        assert sample["label"].dtype == torch.int64
        assert ds.classes[int(sample["label"])] == expected
    assert {int(ds[i]["label"]) for i in range(len(ds))} == {0, 1}


def test_numeric_column_gives_numeric_tensors(sample_radi, obs_meta):
    ds = VolumeCollectionDataset(sample_radi.T1w, labels="age")
    assert ds.classes is None
    labels = [ds[i]["label"] for i in range(len(ds))]
    assert [lab.item() for lab in labels] == obs_meta["age"].tolist()
    assert {(lab.dtype, lab.shape) for lab in labels} == {(torch.int64, torch.Size([]))}


def test_labels_by_obs_id_and_by_subject_id(sample_radi):
    t1 = sample_radi.T1w
    by_obs = {obs_id: float(k) / 2 for k, obs_id in enumerate(t1.obs_ids)}
    ds = VolumeCollectionDataset(t1, labels=by_obs)
    assert ds[3]["label"].dtype == torch.float32
    assert float(ds[3]["label"]) == 1.5
    by_subject = {sid: k * 10 for k, sid in enumerate(t1.obs_subject_ids)}
    ds = VolumeCollectionDataset(t1, labels=by_subject)
    assert int(ds[5]["label"]) == 50


def test_labels_from_dataframe_series_and_callable(sample_radi, obs_meta):
    t1 = sample_radi.T1w
    frame = obs_meta.reset_index()[["obs_subject_id", "grade"]]
    ds = VolumeCollectionDataset(t1, labels=frame)
    assert [int(ds[i]["label"]) for i in range(6)] == obs_meta["grade"].tolist()

    by_obs = pd.DataFrame({"obs_id": t1.obs_ids, "y": [1, 0, 1, 0, 1, 0]})
    ds = VolumeCollectionDataset(t1, labels=by_obs)
    assert [int(ds[i]["label"]) for i in range(6)] == [1, 0, 1, 0, 1, 0]

    series = pd.Series(dict(zip(t1.obs_ids, "abcabc", strict=True)))
    ds = VolumeCollectionDataset(t1, labels=series)
    assert ds.classes == ["a", "b", "c"]
    assert int(ds[4]["label"]) == 1

    ds = VolumeCollectionDataset(t1, labels=lambda obs_id: int(obs_id[4:7]) % 2)
    assert [int(ds[i]["label"]) for i in range(6)] == [0, 1, 0, 1, 0, 1]

    with pytest.raises(LabelError, match="one label column"):
        VolumeCollectionDataset(t1, labels=obs_meta.reset_index()[["obs_subject_id", "age", "sex"]])


def test_labels_reach_the_batch(sample_radi):
    loader = create_training_dataloader(sample_radi.T1w, labels="diagnosis", batch_size=3)
    batch = next(iter(loader))
    assert batch["label"].shape == (3,)
    assert batch["label"].dtype == torch.int64


def test_missing_label_names_the_volume(sample_radi):
    partial = {sid: 1 for sid in sample_radi.T1w.obs_subject_ids if sid != "sub-003"}
    with pytest.raises(LabelError, match=r"no label for volume\(s\) \['sub-003_T1w'\]"):
        VolumeCollectionDataset(sample_radi.T1w, labels=partial)
    with pytest.raises(LabelError, match="sub-004_T1w"):
        VolumeCollectionDataset(sample_radi.T1w, labels=lambda o: None if o == "sub-004_T1w" else 1)


def test_unknown_column_lists_the_columns(sample_radi):
    with pytest.raises(LabelError, match=r"no column 'diagnosys'.*available columns:.*'diagnosis'"):
        VolumeCollectionDataset(sample_radi.T1w, labels="diagnosys")


# -- subclassing and pickling -------------------------------------------------------------
class CornerDataset(VolumeCollectionDataset):
    """Patches always at one corner, and a key of our own."""

    corner = (1, 2, 3)

    def patch_start(self, index, rng):
        return self.corner

    def build_sample(self, plan, arrays):
        sample = super().build_sample(plan, arrays)
        sample["volume_index"] = self.volume_of(plan.index)
        return sample


def test_subclass_hooks(arange_coll, arange_arrays):
    ds = CornerDataset(arange_coll, patch_cfg((4, 5, 6), per_volume=2))
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["patch_start"].tolist() == [1, 2, 3]
        assert sample["volume_index"] == i // 2
        expected = arange_arrays[sample["obs_subject_id"]][1:5, 2:7, 3:9]
        np.testing.assert_array_equal(sample["image"][0].numpy(), expected)
    loader = DataLoader(ds, sampler=EpochSampler(ds, shuffle=False), batch_size=3)
    batch = next(iter(loader))
    assert batch["volume_index"].tolist() == [0, 0, 1]
    assert batch["image"].shape == (3, 1, 4, 5, 6)


def test_transform_is_applied(sample_radi):
    ds = VolumeCollectionDataset(
        sample_radi.T1w, transform=lambda s: {**s, "image": s["image"] * 0 + 7}
    )
    assert torch.all(ds[0]["image"] == 7)


def test_datasets_pickle_with_a_lambda_transform(sample_radi, arange_coll, arange_arrays):
    pytest.importorskip("cloudpickle")
    ds = VolumeCollectionDataset(
        arange_coll,
        patch_cfg((8, 8, 8), per_volume=2, seed=4),
        labels=lambda obs_id: obs_id[-6:-3],
        transform=lambda s: {**s, "image": -s["image"]},
    )
    before = ds[(1, 3)]  # reading opens handles: the dataset must still pickle
    blob = pickle.dumps(ds)
    assert len(blob) < 100_000  # URIs and settings, not voxels
    clone = pickle.loads(blob)
    after = clone[(1, 3)]
    assert torch.equal(before["image"], after["image"])
    assert torch.equal(before["patch_start"], after["patch_start"])
    assert int(after["label"]) == int(before["label"])
    x, y, z = after["patch_start"].tolist()
    sid = after["obs_subject_id"]
    np.testing.assert_array_equal(
        after["image"][0].numpy(), -arange_arrays[sid][x : x + 8, y : y + 8, z : z + 8]
    )

    seg = SegmentationDataset(
        sample_radi.T1w,
        sample_radi.seg,
        patch_cfg((8, 8, 8)),
        transform=lambda s: s,
        foreground_sampling=True,
    )
    clone = pickle.loads(pickle.dumps(seg))
    assert torch.equal(clone[0]["mask"], seg[0]["mask"])
    assert torch.equal(clone[0]["patch_start"], seg[0]["patch_start"])


def test_cloudpickle_is_declared_in_the_ml_extras():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    extras = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]
    for extra in ("monai", "torchio"):
        names = {req.split(">")[0].split("=")[0].split("[")[0].strip() for req in extras[extra]}
        assert {"torch", "cloudpickle"} <= names, extra
    assert "radiobject[monai,torchio]" in extras["ml"]


# -- segmentation -------------------------------------------------------------------------
def test_image_and_mask_are_the_same_region(sample_radi):
    ds = SegmentationDataset(sample_radi.T1w, sample_radi.seg, patch_cfg((12, 12, 12), 4))
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["mask"].shape == (1, 12, 12, 12)
        assert sample["mask"].dtype == torch.int64
        x, y, z = sample["patch_start"].tolist()
        region = (slice(x, x + 12), slice(y, y + 12), slice(z, z + 12))
        sid = sample["obs_subject_id"]
        np.testing.assert_array_equal(
            sample["image"][0].numpy(), stored(sample_radi.T1w, f"{sid}_T1w")[region]
        )
        np.testing.assert_array_equal(
            sample["mask"][0].numpy(), stored(sample_radi.seg, f"{sid}_seg")[region]
        )
    whole = SegmentationDataset(sample_radi.T1w, sample_radi.seg)[0]
    np.testing.assert_array_equal(whole["mask"][0].numpy(), stored(sample_radi.seg, "sub-000_seg"))
    sliced = SegmentationDataset(
        sample_radi.T1w, sample_radi.seg, DatasetConfig(loading_mode="slice_2d")
    )[12]
    assert sliced["mask"].shape == (1, 32, 32)
    np.testing.assert_array_equal(
        sliced["mask"][0].numpy(), stored(sample_radi.seg, "sub-000_seg")[:, :, 12]
    )


def test_mask_with_another_shape_is_an_alignment_error(tmp_path):
    image = VolumeCollection.from_numpy(
        str(tmp_path / "img"), {"a": np.zeros((16, 16, 12)), "b": np.zeros((16, 16, 12))}
    )
    mask = VolumeCollection.from_numpy(
        str(tmp_path / "msk"),
        {"a": np.zeros((16, 16, 12), np.uint8), "b": np.zeros((16, 16, 10), np.uint8)},
        is_mask=True,
    )
    with pytest.raises(AlignmentError, match=r"subject 'b': image shape \(16, 16, 12\) differs"):
        SegmentationDataset(image, mask)


def test_subjects_without_a_mask_are_an_alignment_error(sample_radi):
    with pytest.raises(AlignmentError, match="subject 'sub-004' has an image but no mask"):
        SegmentationDataset(sample_radi.T1w, sample_radi.seg.head(4))


def test_setup_reads_only_the_foreground_index(sample_radi, monkeypatch):
    radi = RadiObject(sample_radi.uri)  # fresh handles: nothing cached from other tests
    opened: list[str] = []
    regions: list[str] = []
    real_open, real_get = tiledb.open, radiobject.read.Reader.get

    def spy_open(uri, *args, **kwargs):
        opened.append(str(uri))
        return real_open(uri, *args, **kwargs)

    def spy_get(self, region, out=None):
        regions.append(region.uri)
        return real_get(self, region, out)

    monkeypatch.setattr(tiledb, "open", spy_open)
    # every voxel read goes through the process's reader
    monkeypatch.setattr(radiobject.read.Reader, "get", spy_get)

    ds = SegmentationDataset(radi.T1w, radi.seg, patch_cfg((8, 8, 8)), foreground_sampling=True)
    assert regions == []
    fg_opens = [u for u in opened if u.endswith("/fg_index")]
    # the index, twice: at the newest data (its missing entries are stored there), then at
    # the version the dataset pins
    assert fg_opens == [f"{radi.uri}/collections/seg/fg_index"] * 2
    assert all(u.endswith(("/obs", "/fg_index")) for u in opened), opened
    assert ds.foreground is not None
    assert len(ds.foreground) == 6
    # the spies do see reads: a sample reads the image and the mask
    ds[0]
    assert len(regions) == 2


def test_foreground_sampling_on_standalone_collections(tmp_path):
    mask = np.zeros((16, 16, 12), np.uint8)
    mask[3:6, 4:8, 2:5] = 1
    image = VolumeCollection.from_numpy(str(tmp_path / "img"), {"a": arange((16, 16, 12))})
    masks = VolumeCollection.from_numpy(str(tmp_path / "msk"), {"a": mask}, is_mask=True)
    ds = SegmentationDataset(
        image,
        masks,
        patch_cfg((4, 4, 4), 20),
        foreground_sampling=True,
        foreground_probability=1.0,
    )
    assert all(ds[i]["mask"].any() for i in range(len(ds)))
    assert (Path(tmp_path) / "msk" / "fg_index").exists()


@pytest.mark.parametrize(("cache_mb", "fits"), [(64, True), (4, False)])
def test_a_dataset_that_fits_the_cache_reads_whole_volumes_once(tmp_path, cache_mb, fits):
    from radiobject import TileConfig, clear_caches, configure
    from radiobject.read._region import block_cache

    arrays = {f"s{i}": arange((64, 64, 64), offset=i) for i in range(4)}  # 1 MiB each
    with configure(write={"tile": TileConfig(extents=(16, 16, 16))}):
        coll = VolumeCollection.from_numpy(tmp_path / "c", arrays, name="T1w")
    configure(read={"cache_mb": cache_mb})
    clear_caches()
    ds = VolumeCollectionDataset(coll, config=patch_cfg((8, 8, 8)))  # 8 of 64 tiles a patch
    assert (ds.stored_bytes() <= 0.85 * cache_mb * 2**20) is fits
    counters = block_cache().counters
    before = counters.copy()
    for epoch in range(2):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            ds[i]
    storage = counters.bytes_from_storage - before.bytes_from_storage
    if fits:  # each volume once, whole; the second epoch is served from memory
        assert storage == 4 * 64**3 * 4
        assert counters.storage_queries - before.storage_queries == 4
    else:  # only the tiles the patches touch
        assert 0 < storage <= 2 * 4 * 8 * 16**3 * 4
