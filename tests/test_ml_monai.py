"""MONAI dict transforms in every factory, with real MONAI."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

monai_transforms = pytest.importorskip("monai.transforms")
Compose = monai_transforms.Compose
NormalizeIntensityd = monai_transforms.NormalizeIntensityd
RandFlipd = monai_transforms.RandFlipd

from radiobject.ml import (  # noqa: E402
    create_segmentation_dataloader,
    create_training_dataloader,
    create_validation_dataloader,
)

AXES = [c for n in range(4) for c in itertools.combinations(range(3), n)]


def seed_transform(keys="image"):
    """The seed page's transform (flip keys configurable for segmentation)."""
    transform = Compose(
        [
            NormalizeIntensityd(keys="image"),
            RandFlipd(keys=keys, prob=0.5, spatial_axis=[0, 1, 2]),
        ]
    )
    transform.set_random_state(seed=0)
    return transform


def plain(t):
    return t.as_tensor() if hasattr(t, "as_tensor") else t


def normalise(raw):
    raw = torch.as_tensor(raw, dtype=torch.float32)
    return (raw - raw.mean()) / raw.std(unbiased=False)


def flip_of(expected, actual):
    """The axes along which ``actual`` is ``expected`` flipped (None if it is not)."""
    for axes in AXES:
        candidate = expected.flip(axes) if axes else expected
        if candidate.shape == actual.shape and torch.allclose(candidate, actual, atol=1e-4):
            return axes
    return None


def test_seed_transform_in_the_training_loader(sample_radi):
    loader = create_training_dataloader(
        collections=sample_radi.T1w,
        labels="diagnosis",
        transform=seed_transform(),
        batch_size=2,
        num_workers=0,
    )
    flips = []
    for _ in range(3):
        for batch in loader:
            assert batch["image"].shape == (2, 1, 32, 32, 24)
            assert batch["label"].shape == (2,)
            for image, obs_id in zip(plain(batch["image"]), batch["obs_id"], strict=True):
                assert abs(float(image.mean())) < 1e-4
                assert float(image.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
                expected = normalise(sample_radi.T1w.loc[obs_id].to_numpy())
                axes = flip_of(expected, image[0])
                assert axes is not None, obs_id
                flips.append(axes)
    assert set(flips) == {(), (0, 1, 2)}  # RandFlipd flips all listed axes or none


def test_transform_in_the_validation_loader(sample_radi):
    loader = create_validation_dataloader(
        collections=sample_radi.T1w,
        labels="diagnosis",
        transform=Compose([NormalizeIntensityd(keys="image")]),
        batch_size=4,
        patch_size=(16, 16, 8),
    )
    first, second = list(loader), list(loader)
    assert len(first) == 2
    for a, b in zip(first, second, strict=True):
        assert torch.equal(plain(a["image"]), plain(b["image"]))
    image = plain(first[0]["image"])
    means = image.mean(dim=(1, 2, 3, 4))
    assert torch.allclose(means, torch.zeros_like(means), atol=1e-4)


def test_seed_transform_flips_image_and_mask_together(sample_radi):
    loader = create_segmentation_dataloader(
        image=sample_radi.T1w,
        mask=sample_radi.seg,
        batch_size=4,
        patch_size=(16, 16, 12),
        patches_per_volume=2,
        foreground_sampling=True,
        transform=seed_transform(keys=["image", "mask"]),
    )
    flips = set()
    for _ in range(2):
        for batch in loader:
            image, mask = plain(batch["image"]), plain(batch["mask"])
            for i, sid in enumerate(batch["obs_subject_id"]):
                x, y, z = batch["patch_start"][i].tolist()
                region = (slice(x, x + 16), slice(y, y + 16), slice(z, z + 12))
                raw = sample_radi.T1w.loc[f"{sid}_T1w"].to_numpy()[region]
                axes = flip_of(normalise(raw), image[i, 0])
                assert axes is not None
                raw_mask = torch.from_numpy(
                    sample_radi.seg.loc[f"{sid}_seg"].to_numpy()[region].astype(np.int64)
                )
                expected_mask = raw_mask.flip(axes) if axes else raw_mask
                assert torch.equal(mask[i, 0].long(), expected_mask)
                flips.add(axes)
    assert flips == {(), (0, 1, 2)}
