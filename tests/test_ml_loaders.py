"""DataLoader factories in the main process: order, determinism, foreground sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radiobject.ml import (
    DatasetConfig,
    EpochSampler,
    VolumeCollectionDataset,
    create_inference_dataloader,
    create_segmentation_dataloader,
    create_training_dataloader,
    create_validation_dataloader,
)


def keys_of(loader, epochs=2):
    """(obs_id, patch_start) of every sample, per epoch."""
    out = []
    for _ in range(epochs):
        out.append(
            [
                (obs_id, tuple(start.tolist()))
                for batch in loader
                for obs_id, start in zip(batch["obs_id"], batch["patch_start"], strict=True)
            ]
        )
    return out


@pytest.fixture(scope="module")
def tumour(sample_radi):
    """Subjects with a tumour mask (the healthy ones have an empty mask)."""
    meta = sample_radi.obs_meta
    ids = set(meta.loc[meta["diagnosis"] == "tumour", "obs_subject_id"])
    fg = sample_radi.seg.foreground()
    assert ids == {oid.rsplit("_", 1)[0] for oid, index in fg.items() if index.labels}
    assert 3 <= len(ids) < len(meta)
    return ids


def test_training_loader_shuffles_and_drops_the_last_batch(sample_radi):
    loader = create_training_dataloader(sample_radi.T1w, labels="diagnosis", batch_size=4)
    epochs = [[obs for batch in loader for obs in batch["obs_id"]] for _ in range(4)]
    assert all(len(e) == 4 for e in epochs)  # 6 volumes, batch 4, incomplete batch dropped
    assert len({tuple(e) for e in epochs}) > 1  # the order changes between epochs
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 1, 32, 32, 24)
    assert batch["label"].shape == (4,)


def test_patch_loader_yields_every_patch_once_per_epoch(sample_radi):
    loader = create_training_dataloader(
        sample_radi.T1w, batch_size=4, patch_size=(16, 16, 8), patches_per_volume=4
    )
    assert len(loader) == 6
    (epoch,) = keys_of(loader, epochs=1)
    assert len(epoch) == 24
    counts = {obs: sum(o == obs for o, _ in epoch) for obs in sample_radi.T1w.obs_ids}
    assert set(counts.values()) == {4}


def test_same_seed_same_samples_other_seed_other_samples(sample_radi):
    def make(seed):
        return create_training_dataloader(
            sample_radi.T1w, batch_size=3, patch_size=(8, 8, 8), patches_per_volume=2, seed=seed
        )

    first, second = keys_of(make(1)), keys_of(make(1))
    assert first == second
    assert first[0] != first[1]  # a new epoch draws new positions and a new order
    assert sorted(first[0]) != sorted(first[1])
    assert keys_of(make(2)) != first


def test_validation_loader_repeats_itself(sample_radi):
    loader = create_validation_dataloader(
        sample_radi.T1w, labels="diagnosis", batch_size=4, patch_size=(8, 8, 8)
    )
    epochs = [list(loader) for _ in range(3)]
    assert [len(e) for e in epochs] == [2, 2, 2]  # nothing dropped
    assert [o for b in epochs[0] for o in b["obs_id"]] == sample_radi.T1w.obs_ids
    for later in epochs[1:]:
        for a, b in zip(epochs[0], later, strict=True):
            assert torch.equal(a["image"], b["image"])
            assert torch.equal(a["patch_start"], b["patch_start"])
            assert torch.equal(a["label"], b["label"])


def test_validation_loader_fixes_the_patches_of_a_given_config(sample_radi):
    from radiobject.ml import DatasetConfig

    moving = DatasetConfig(loading_mode="patch", patch_size=(8, 8, 8), fixed_epoch=False)
    loader = create_validation_dataloader(sample_radi.T1w, batch_size=6, config=moving)
    starts = [next(iter(loader))["patch_start"] for _ in range(3)]
    assert all(torch.equal(starts[0], later) for later in starts[1:])
    assert loader.dataset.config.fixed_epoch


def test_inference_loader_keeps_ids_in_order(sample_radi):
    loader = create_inference_dataloader(sample_radi.T1w)
    batches = list(loader)
    assert len(batches) == 6
    assert [b["obs_id"][0] for b in batches] == sample_radi.T1w.obs_ids
    assert all(b["image"].shape == (1, 1, 32, 32, 24) for b in batches)
    np.testing.assert_array_equal(
        batches[5]["image"][0, 0].numpy(), sample_radi.T1w.loc["sub-005_T1w"].to_numpy()
    )


def test_pin_memory_without_a_gpu_is_quiet(sample_radi):
    # warnings are errors here: torch warns when pinning without an accelerator
    loader = create_training_dataloader(sample_radi.T1w, batch_size=2, pin_memory=True)
    assert next(iter(loader))["image"].shape[0] == 2


def test_shuffle_window_keeps_patches_of_a_volume_together(sample_radi):
    cfg = DatasetConfig(loading_mode="patch", patch_size=(8, 8, 8), patches_per_volume=3)
    ds = VolumeCollectionDataset(sample_radi.T1w, cfg)
    sampler = EpochSampler(ds, seed=0, shuffle_window=1)
    for _ in range(3):
        volumes = [ds.volume_of(i) for _, i in sampler]
        runs = [volumes[k : k + 3] for k in range(0, len(volumes), 3)]
        assert all(len(set(run)) == 1 for run in runs)
        assert sorted(v for run in runs for v in run[:1]) == list(range(6))
    everything = EpochSampler(ds, seed=0)
    assert sorted(i for _, i in everything) == list(range(18))


# -- segmentation -------------------------------------------------------------------------
def fg_fraction(loader, epochs, subjects, label=None):
    """Share of the patches of ``subjects`` whose mask touches the foreground (or ``label``)."""
    touched = total = 0
    for _ in range(epochs):
        for batch in loader:
            for sid, mask in zip(batch["obs_subject_id"], batch["mask"], strict=True):
                if sid not in subjects:
                    continue
                total += 1
                touched += bool((mask > 0).any() if label is None else (mask == label).any())
    return touched / total, total


def seg_loader(radi, **kw):
    kw = {"batch_size": 8, "patch_size": (4, 4, 4), "patches_per_volume": 5, **kw}
    return create_segmentation_dataloader(image=radi.T1w, mask=radi.seg, **kw)


def test_loader_yields_aligned_image_and_mask(sample_radi):
    batch = next(iter(seg_loader(sample_radi, patch_size=(16, 16, 8))))
    assert batch["image"].shape == (8, 1, 16, 16, 8)
    assert batch["mask"].shape == (8, 1, 16, 16, 8)
    for i, sid in enumerate(batch["obs_subject_id"]):
        x, y, z = batch["patch_start"][i].tolist()
        mask = sample_radi.seg.loc[f"{sid}_seg"].to_numpy()[x : x + 16, y : y + 16, z : z + 8]
        np.testing.assert_array_equal(batch["mask"][i, 0].numpy(), mask)


def test_foreground_sampling_beats_uniform_patches(sample_radi, tumour):
    def share(**kw):
        return fg_fraction(seg_loader(sample_radi, **kw), epochs=5, subjects=tumour)

    sampled, n = share(foreground_probability=1.0)
    uniform, m = share(foreground_sampling=False)
    half, _ = share(foreground_probability=0.5)
    assert n == m >= 90
    assert sampled == 1.0  # every patch is centred on a mask voxel
    assert uniform < 0.4  # 4^3 patches rarely hit a small tumour by chance
    assert sampled - uniform >= 0.6
    assert uniform + 0.15 < half < sampled  # the probability is honoured in between


def test_without_foreground_sampling_no_index_is_used(sample_radi):
    loader = seg_loader(sample_radi, foreground_sampling=False)
    assert loader.dataset.foreground is None


def test_class_ratios_pick_the_requested_label(sample_radi):
    fg = sample_radi.seg.foreground()
    with_all = {oid.rsplit("_", 1)[0] for oid, i in fg.items() if set(i.labels) == {1, 2, 3}}
    assert len(with_all) >= 2

    def share(ratios, label):
        loader = seg_loader(sample_radi, foreground_probability=1.0, class_ratios=ratios)
        return fg_fraction(loader, epochs=5, subjects=with_all, label=label)[0]

    # BraTS-like masks: label 1 (core) is small and inside the others
    assert share((1.0, 0.0, 0.0), label=1) == 1.0
    assert share((0.0, 1.0, 0.0), label=2) == 1.0
    assert share((0.0, 1.0, 0.0), label=1) < 0.75


def test_whole_volume_segmentation(sample_radi):
    loader = create_segmentation_dataloader(
        sample_radi.T1w, sample_radi.seg, batch_size=2, patch_size=None, shuffle=False
    )
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 1, 32, 32, 24)
    np.testing.assert_array_equal(
        batch["mask"][1, 0].numpy(), sample_radi.seg.loc["sub-001_seg"].to_numpy()
    )


def test_foreground_patches_are_deterministic(sample_radi):
    a = keys_of(seg_loader(sample_radi, foreground_probability=0.7, seed=3))
    assert a == keys_of(seg_loader(sample_radi, foreground_probability=0.7, seed=3))
    assert a != keys_of(seg_loader(sample_radi, foreground_probability=0.7, seed=4))
