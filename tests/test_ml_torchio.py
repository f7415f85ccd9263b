"""VolumeCollectionSubjectsDataset with real TorchIO: subjects, queues, samplers, transforms."""

from __future__ import annotations

import multiprocessing
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

tio = pytest.importorskip("torchio")

from radiobject.ml import VolumeCollectionSubjectsDataset  # noqa: E402


def stored(coll, obs_id):
    return coll.loc[obs_id].to_numpy()


def test_subjects_hold_lazy_scalar_images(sample_radi):
    dataset = VolumeCollectionSubjectsDataset(collections=sample_radi.T1w)
    assert len(dataset) == 6
    subject = dataset[3]
    assert isinstance(subject, tio.Subject)
    assert isinstance(subject["T1w"], tio.ScalarImage)
    assert subject["obs_subject_id"] == "sub-003"
    assert subject["T1w"].data.shape == (1, 32, 32, 24)
    np.testing.assert_array_equal(
        subject["T1w"].data[0].numpy(), stored(sample_radi.T1w, "sub-003_T1w")
    )
    np.testing.assert_allclose(subject["T1w"].affine, sample_radi.T1w.volume_affine("sub-003_T1w"))


def test_mask_collections_become_label_maps(sample_radi):
    dataset = VolumeCollectionSubjectsDataset(
        [sample_radi.T1w, sample_radi.seg], labels="diagnosis"
    )
    subject = dataset[0]
    assert isinstance(subject["T1w"], tio.ScalarImage)
    assert not isinstance(subject["T1w"], tio.LabelMap)
    assert isinstance(subject["seg"], tio.LabelMap)
    np.testing.assert_array_equal(
        subject["seg"].data[0].numpy(), stored(sample_radi.seg, "sub-000_seg")
    )
    assert dataset.classes == ["healthy", "tumour"]
    assert dataset.classes[subject["label"]] == "tumour"


def test_uniform_sampler_queue_gives_patches_from_where_they_say(sample_radi):
    dataset = VolumeCollectionSubjectsDataset(collections=sample_radi.T1w)
    queue = tio.Queue(
        dataset, max_length=12, samples_per_volume=4, sampler=tio.UniformSampler((8, 8, 6))
    )
    seen = 0
    for batch in DataLoader(queue, batch_size=4, num_workers=0):
        data = batch["T1w"][tio.DATA]
        assert data.shape == (4, 1, 8, 8, 6)
        for patch, sid, loc in zip(data, batch["obs_subject_id"], batch[tio.LOCATION], strict=True):
            i0, j0, k0, i1, j1, k1 = loc.tolist()
            volume = stored(sample_radi.T1w, f"{sid}_T1w")
            np.testing.assert_array_equal(patch[0].numpy(), volume[i0:i1, j0:j1, k0:k1])
            seen += 1
    assert seen == 6 * 4


def test_label_sampler_centres_patches_on_the_mask(sample_radi):
    tumour = "diagnosis == 'tumour'"
    dataset = VolumeCollectionSubjectsDataset(
        [sample_radi.T1w.filter(tumour), sample_radi.seg.filter(tumour)]
    )
    n_tumour = int((sample_radi.obs_meta["diagnosis"] == "tumour").sum())
    assert 0 < n_tumour < 6  # the filter keeps some subjects, not all
    assert len(dataset) == n_tumour
    assert sorted(dataset[i]["obs_subject_id"] for i in range(n_tumour)) == sorted(
        sample_radi.filter(tumour).obs_subject_ids
    )
    queue = tio.Queue(
        dataset,
        max_length=20,
        samples_per_volume=5,
        sampler=tio.LabelSampler((4, 4, 4), label_name="seg"),
    )
    masks = [
        patch
        for batch in DataLoader(queue, batch_size=5, num_workers=0)
        for patch in batch["seg"][tio.DATA]
    ]
    assert len(masks) == 5 * len(dataset)
    assert all((m > 0).any() for m in masks)


def test_torchio_transforms_run_on_load(sample_radi):
    transform = tio.Compose([tio.ZNormalization(), tio.RandomFlip()])
    dataset = VolumeCollectionSubjectsDataset(collections=sample_radi.T1w, transform=transform)
    flips = set()
    for index in range(len(dataset)):
        data = dataset[index]["T1w"].data[0]
        assert abs(float(data.mean())) < 1e-4
        assert float(data.std()) == pytest.approx(1.0, abs=1e-3)
        raw = torch.from_numpy(stored(sample_radi.T1w, sample_radi.T1w.obs_ids[index]))
        normed = (raw - raw.mean()) / raw.std()
        # RandomFlip flips along some subset of axes: find it
        matches = [
            axes
            for axes in [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
            if torch.allclose(normed.flip(axes) if axes else normed, data, atol=1e-4)
        ]
        assert matches, f"subject {index} is not a flip of its normalised volume"
        flips.add(matches[0])
    assert flips != {()}  # something was flipped


def test_subjects_dataset_pickles(sample_radi):
    dataset = VolumeCollectionSubjectsDataset([sample_radi.T1w, sample_radi.seg])
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[2]["seg"].data, dataset[2]["seg"].data)


@pytest.fixture(params=["default", "forkserver"])
def start_method(request):
    """The platform's default start method (fork on Linux), or forkserver made the default."""
    if request.param == "default":
        yield multiprocessing.get_start_method()
        return
    previous = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("forkserver", force=True)
    # if this test starts the fork server, let it import what later workers need
    multiprocessing.get_context("forkserver").set_forkserver_preload(
        ["torch", "numpy", "radiobject.ml", "torchio"]
    )
    yield "forkserver"
    multiprocessing.set_start_method(previous, force=True)


@pytest.mark.slow
@pytest.mark.timeout(120)
# TorchIO's queue forks with multiprocessing itself: TileDB-Py warns once that fork may deadlock
@pytest.mark.filterwarnings("ignore:TileDB is a multithreading library:UserWarning")
def test_queue_with_workers_as_it_is(sample_radi, start_method):
    dataset = VolumeCollectionSubjectsDataset([sample_radi.T1w, sample_radi.seg])
    dataset[0]  # this process read first: its TileDB context and threads exist at the fork
    queue = tio.Queue(
        dataset,
        max_length=8,
        samples_per_volume=2,
        sampler=tio.UniformSampler((8, 8, 8)),
        num_workers=2,
    )
    assert start_method in ("fork", "forkserver")
    for _ in range(2):  # two epochs: the queue starts its workers again
        seen = 0
        for batch in DataLoader(queue, batch_size=4, num_workers=0):
            for patch, sid, loc in zip(
                batch["seg"][tio.DATA], batch["obs_subject_id"], batch[tio.LOCATION], strict=True
            ):
                i0, j0, k0, i1, j1, k1 = loc.tolist()
                mask = stored(sample_radi.seg, f"{sid}_seg")[i0:i1, j0:j1, k0:k1]
                np.testing.assert_array_equal(patch[0].numpy(), mask)
                seen += 1
        assert seen == 6 * 2


def test_queue_without_a_sampler_is_a_torchio_type_error(sample_radi):
    """The seed page writes ``tio.Queue(dataset, max_length=100, samples_per_volume=10)``.

    Every released TorchIO requires the ``sampler`` argument, so that line raises a TypeError
    in TorchIO itself; pass a sampler such as ``tio.UniformSampler(patch_size)``.
    """
    dataset = VolumeCollectionSubjectsDataset(collections=sample_radi.T1w)
    with pytest.raises(TypeError, match="sampler"):
        tio.Queue(dataset, max_length=100, samples_per_volume=10)
