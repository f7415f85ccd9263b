"""Reference grids: loaders on collections on their own grids, planned in the reference's.

The other collections are stored as they are (each volume with its affine); a sample reads
the bounding box of its box mapped into each other grid and resamples just that. The
answer must be MONAI's: ``ResampleToMatchd`` of the whole volume onto the reference grid,
then the same crop. The resampling maths alone: ``tests/test_grid_resampling.py``; ingest
and writes on several grids: ``tests/test_grid_ingest.py``.
"""

from __future__ import annotations

import pickle
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch

from radiobject import RadiObject, ReadConfig, configure
from radiobject.ml import (
    DatasetConfig,
    SegmentationDataset,
    VolumeCollectionDataset,
    create_segmentation_dataloader,
    create_training_dataloader,
)
from radiobject.read import block_cache, grid_map
from tests import _grid_helpers, test_ml_plans
from tests._grid_helpers import (
    FLAIR_AFFINE,
    FLAIR_SHAPE,
    PD_AFFINE,
    REF_SHAPE,
    SEG_AFFINE,
    SUBJECTS,
    T1_AFFINE,
)
from tests.test_ml_plans import loader_keys, planned

radi = _grid_helpers.radi  # the fixture: the cohort on four grids
recorded = test_ml_plans.recorded  # the fixture: every region read from now on


def _monai_on_reference(radi: RadiObject, name: str, subject: str, mode: str) -> np.ndarray:
    """MONAI's answer: the whole volume of ``name`` resampled onto the subject's T1w grid."""
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatchd

    ref = radi.T1w.loc[f"{subject}_T1w"]
    vol = radi[name].loc[f"{subject}_{name}"]
    data = {
        "img": MetaTensor(
            torch.from_numpy(vol.to_numpy(np.float32))[None], affine=torch.tensor(vol.affine)
        ),
        "ref": MetaTensor(torch.zeros((1, *ref.shape)), affine=torch.tensor(ref.affine)),
    }
    out = ResampleToMatchd(keys="img", key_dst="ref", mode=mode)(data)["img"]
    return np.asarray(out[0])


def _crop(volume: np.ndarray, start: Any, size: Any) -> np.ndarray:
    return volume[tuple(slice(int(a), int(a) + p) for a, p in zip(start, size, strict=True))]


def _rotation(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


def test_reference_is_stored_and_survives_reopen_views_and_versions(radi):
    assert radi.reference == "T1w"
    again = RadiObject(radi.uri)
    assert again.reference == "T1w"
    assert again.iloc[:1].reference == "T1w"
    assert again.select_collections(["FLAIR"]).reference == "T1w"
    assert RadiObject(radi.uri, at=radi.versions()[-1]).reference == "T1w"
    assert again.FLAIR.head(1).reference == "T1w"
    # geometry is stored, not resampled
    assert radi.FLAIR.iloc[0].shape == FLAIR_SHAPE
    np.testing.assert_allclose(radi.PD.iloc[0].affine, PD_AFFINE)


@pytest.mark.parametrize("name", ["FLAIR", "PD"])
def test_patches_equal_monai_resample_to_match_then_crop(radi, name):
    patch = (12, 10, 9)
    # the training loader decodes (and resamples) each patch straight into its batch slot
    loader = create_training_dataloader(
        [radi.T1w, radi[name]],
        batch_size=3,
        patch_size=patch,
        patches_per_volume=4,
        drop_last=False,
    )
    expected = {s: _monai_on_reference(radi, name, s, "bilinear") for s in SUBJECTS}
    t1 = {s: radi.T1w.loc[f"{s}_T1w"].to_numpy(np.float32) for s in SUBJECTS}
    seen = 0
    for batch in loader:
        for k, subject in enumerate(batch["obs_subject_id"]):
            start, image = batch["patch_start"][k].tolist(), batch["image"][k].numpy()
            assert image.shape == (2, *patch)
            np.testing.assert_array_equal(image[0], _crop(t1[subject], start, patch))
            got, want = image[1], _crop(expected[subject], start, patch)
            assert np.abs(got - want).max() < 1e-4, (name, start, np.abs(got - want).max())
            assert got.std() > 0  # a real patch, not padding
            seen += 1
    assert seen == len(loader.dataset) == 8


def test_torchio_subjects_and_queue_patches_equal_monai_resample_to_match_then_crop(radi):
    import torchio as tio

    from radiobject.ml import VolumeCollectionSubjectsDataset

    modes = {"FLAIR": "bilinear", "PD": "bilinear", "seg": "nearest"}
    want = {s: {n: _monai_on_reference(radi, n, s, m) for n, m in modes.items()} for s in SUBJECTS}
    for s in SUBJECTS:
        want[s]["T1w"] = radi.T1w.loc[f"{s}_T1w"].to_numpy(np.float32)
    ds = VolumeCollectionSubjectsDataset([radi.T1w, radi.FLAIR, radi.PD, radi.seg])
    plan = ds.plan(0)
    assert plan.box == tuple((0, n) for n in REF_SHAPE)
    assert [r.resample is None for r in plan.reads] == [True, False, False, False]
    assert not plan.reads[3].resample.linear  # the mask: nearest labels
    for index in range(len(ds)):
        subject = ds[index]
        for name in ("FLAIR", "PD", "seg"):
            image = subject[name]
            assert image.shape == (1, *REF_SHAPE)
            np.testing.assert_allclose(image.affine, T1_AFFINE, atol=1e-9)
            got = image.data[0].numpy()
            if name == "seg":
                np.testing.assert_array_equal(got, want[subject["obs_subject_id"]][name])
            else:
                assert np.abs(got - want[subject["obs_subject_id"]][name]).max() < 1e-4
    patch = (12, 10, 9)
    queue = tio.Queue(
        ds, max_length=8, samples_per_volume=4, sampler=tio.UniformSampler(patch), num_workers=0
    )
    seen = 0
    for batch in torch.utils.data.DataLoader(queue, batch_size=4):
        for k, subject in enumerate(batch["obs_subject_id"]):
            start = batch[tio.LOCATION][k][:3].tolist()
            for name in ("T1w", *modes):
                got = batch[name][tio.DATA][k, 0].numpy()
                expected = _crop(want[subject][name], start, patch)
                assert got.shape == patch
                if name == "seg":
                    np.testing.assert_array_equal(got, expected)
                else:
                    assert np.abs(got - expected).max() < 1e-4, (name, start)
            seen += 1
    assert seen == 4 * len(SUBJECTS)


def test_a_dataset_on_several_grids_survives_pickling(radi):
    ds = SegmentationDataset(
        [radi.FLAIR, radi.PD],
        radi.seg,
        DatasetConfig(loading_mode="patch", patch_size=(8, 8, 8), patches_per_volume=2),
        foreground_sampling=True,
    )
    again = pickle.loads(pickle.dumps(ds))  # what a loader's worker gets
    for index in range(len(ds)):
        a, b = ds[index], again[index]
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["mask"], b["mask"])


def test_full_volumes_are_resampled_to_the_reference_grid(radi):
    loader = create_training_dataloader([radi.T1w, radi.PD], batch_size=1, drop_last=False)
    for batch in loader:
        subject = batch["obs_subject_id"][0]
        image = batch["image"][0].numpy()
        assert image.shape == (2, *REF_SHAPE)
        want = _monai_on_reference(radi, "PD", subject, "bilinear")
        assert np.abs(image[1] - want).max() < 1e-4


def test_slices_are_planes_of_the_reference_grid(radi):
    ds = VolumeCollectionDataset(
        [radi.T1w, radi.FLAIR], DatasetConfig(loading_mode="slice_2d", slice_orientation="axial")
    )
    assert len(ds) == len(SUBJECTS) * REF_SHAPE[2]
    want = {s: _monai_on_reference(radi, "FLAIR", s, "bilinear") for s in SUBJECTS}
    for index in (0, 5, 13, len(ds) - 9):
        sample, z = ds[index], int(ds._slices[index][1])
        assert tuple(sample["image"].shape) == (2, *REF_SHAPE[:2])
        got = sample["image"][1].numpy()
        assert np.abs(got - want[sample["obs_subject_id"]][:, :, z]).max() < 1e-4


def test_segmentation_masks_are_nearest_labels_equal_to_monai(radi):
    patch = (10, 12, 8)
    loader = create_segmentation_dataloader(
        [radi.T1w, radi.FLAIR],
        radi.seg,
        batch_size=2,
        patch_size=patch,
        patches_per_volume=3,
        foreground_probability=0.5,
        drop_last=False,
    )
    masks = {s: _monai_on_reference(radi, "seg", s, "nearest") for s in SUBJECTS}
    flair = {s: _monai_on_reference(radi, "FLAIR", s, "bilinear") for s in SUBJECTS}
    seen = 0
    for batch in loader:
        assert batch["mask"].dtype == torch.int64
        for k, subject in enumerate(batch["obs_subject_id"]):
            start = batch["patch_start"][k].tolist()
            want = _crop(masks[subject], start, patch).astype(np.int64)
            np.testing.assert_array_equal(batch["mask"][k, 0].numpy(), want)
            got = batch["image"][k, 1].numpy()
            assert np.abs(got - _crop(flair[subject], start, patch)).max() < 1e-4
            seen += 1
    assert seen == len(loader.dataset)


def test_foreground_patches_on_a_coarser_mask_are_centred_on_foreground(radi):
    patch = (8, 8, 8)
    ds = SegmentationDataset(
        radi.T1w,
        radi.seg,
        DatasetConfig(loading_mode="patch", patch_size=patch, patches_per_volume=12),
        foreground_sampling=True,
        foreground_probability=1.0,
    )
    for index in range(len(ds)):
        mask = ds[index]["mask"][0]
        centre = tuple(p // 2 for p in patch)  # the sphere is far from the edges: no clamping
        assert mask[centre] > 0, index


def _patch_bytes_in(grid_affine: np.ndarray, patch: tuple[int, ...], itemsize: int) -> float:
    """Bytes of the patch's extent in a grid of ``grid_affine`` (voxel volume ratio)."""
    scale = abs(np.linalg.det(grid_map(T1_AFFINE, grid_affine, (1, 1, 1)).array[:, :3]))
    return float(np.prod(patch)) * scale * itemsize


@pytest.mark.parametrize(
    ("name", "affine"), [("FLAIR", FLAIR_AFFINE), ("PD", PD_AFFINE), ("seg", SEG_AFFINE)]
)
def test_bytes_read_per_modality_stay_within_twice_the_patch(radi, name, affine):
    # the block read is the mapped box plus one voxel for interpolation: (n + 2) / n per axis
    # of a patch n voxels wide in that grid, within 2x from about 8 voxels per axis
    patch = (24, 24, 24)
    config = DatasetConfig(loading_mode="patch", patch_size=patch, patches_per_volume=1)
    with configure(read=ReadConfig(cache_mb=0, read_ahead=0)):
        if name == "seg":
            ds = SegmentationDataset(radi.T1w, radi.seg, config)
        else:
            ds = VolumeCollectionDataset(radi[name], config)
        counters = block_cache().counters
        itemsize = radi[name].iloc[0].to_numpy().dtype.itemsize
        for seed in range(4):
            ds.config = DatasetConfig(
                loading_mode="patch", patch_size=patch, patches_per_volume=1, seed=seed
            )
            for index in range(len(ds)):
                before = counters.bytes_from_storage
                plan = ds.plan(index)
                t1_bytes = sum(r.voxels * 4 for r in plan.reads if r.uri.startswith(radi.T1w.uri))
                ds[index]
                read = counters.bytes_from_storage - before - t1_bytes
                budget = _patch_bytes_in(affine, patch, itemsize)
                assert 0 < read <= 2 * budget, (name, seed, index, read, budget)


@pytest.mark.parametrize("read_ahead", [0, 3])
@pytest.mark.parametrize("kind", ["patch", "segmentation", "slab"])
def test_an_epoch_on_several_grids_reads_exactly_its_plans(radi, recorded, kind, read_ahead):
    make = {
        "patch": lambda: create_training_dataloader(
            [radi.T1w, radi.FLAIR, radi.PD],
            batch_size=2,
            patch_size=(8, 6, 4),
            patches_per_volume=3,
        ),
        "segmentation": lambda: create_segmentation_dataloader(
            radi.PD, radi.seg, batch_size=2, patch_size=(8, 6, 4), patches_per_volume=2
        ),
        "slab": lambda: create_segmentation_dataloader(
            [radi.T1w, radi.FLAIR], radi.seg, batch_size=2, slab=3, patches_per_volume=2
        ),
    }[kind]
    with configure(read=ReadConfig(read_ahead=read_ahead, cache_mb=0)):
        loader = make()
        ds = loader.dataset
        assert ds.read_ahead_schedule is not None
        ds.read_ahead_schedule.across_epochs = False
        keys = loader_keys(loader)
        expected = planned(ds, keys)
        assert any(r.resample is not None for k in keys for r in ds.plan(k).reads)
        assert not recorded
        batches = list(loader)
    assert Counter(recorded) == expected
    assert sum(len(b["obs_id"]) for b in batches) == len(keys)


def test_worker_processes_give_the_same_batches(radi):
    def batches(num_workers: int) -> list[Any]:
        loader = create_segmentation_dataloader(
            [radi.T1w, radi.PD],
            radi.seg,
            batch_size=2,
            patch_size=(8, 8, 8),
            patches_per_volume=2,
            num_workers=num_workers,
            persistent_workers=False,
        )
        return [(b["image"].clone(), b["mask"].clone()) for b in loader]

    inline, workers = batches(0), batches(2)
    assert len(inline) == len(workers) == 2
    for (image, mask), (image2, mask2) in zip(inline, workers, strict=True):
        assert torch.equal(image, image2)
        assert torch.equal(mask, mask2)
