"""End to end: tiny 3D networks learn on CPU through radiobject's loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from radiobject.data import make_sample_radiobject
from radiobject.ml import create_segmentation_dataloader, create_training_dataloader

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """8 subjects, tumour or healthy; FLAIR shows the oedema bright."""
    uri = tmp_path_factory.mktemp("train") / "radi"
    radi = make_sample_radiobject(
        str(uri), n_subjects=8, shape=(32, 32, 24), seed=1, progress=False
    )
    assert set(radi.obs_meta["diagnosis"]) == {"healthy", "tumour"}
    return radi


def standardise(sample):
    image = sample["image"]
    sample["image"] = (image - image.mean()) / (image.std() + 1e-6)
    return sample


def train(model, loader, loss_fn, steps, lr):
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    while len(losses) < steps:
        for batch in loader:
            loss = loss_fn(model, batch)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    return losses


@pytest.mark.timeout(120)
def test_tiny_cnn_learns_diagnosis(cohort):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv3d(1, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv3d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv3d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool3d(1),
        nn.Flatten(),
        nn.Linear(16, 2),
    )
    loader = create_training_dataloader(
        cohort.FLAIR, labels="diagnosis", transform=standardise, batch_size=4
    )
    assert loader.dataset.classes == ["healthy", "tumour"]

    def loss_fn(model, batch):
        return nn.functional.cross_entropy(model(batch["image"]), batch["label"])

    losses = train(model, loader, loss_fn, steps=40, lr=3e-3)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.6 * first, losses
    with torch.no_grad():
        right = [(model(b["image"]).argmax(1) == b["label"]).float().mean().item() for b in loader]
    assert np.mean(right) >= 0.75


@pytest.mark.timeout(120)
def test_tiny_unet_learns_the_tumour(cohort):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv3d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv3d(16, 16, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.Conv3d(16, 2, 1),
    )
    loader = create_segmentation_dataloader(
        cohort.FLAIR,
        cohort.seg,
        batch_size=4,
        patch_size=(16, 16, 16),
        patches_per_volume=2,
        foreground_sampling=True,
        foreground_probability=0.8,
        transform=standardise,
    )

    def dice_ce(net, batch):
        logits = net(batch["image"])
        target = (batch["mask"][:, 0] > 0).long()
        prob = logits.softmax(1)[:, 1]
        overlap = (prob * target).sum()
        dice = 1 - (2 * overlap + 1) / (prob.sum() + target.sum() + 1)
        return nn.functional.cross_entropy(logits, target) + dice

    losses = train(net, loader, dice_ce, steps=40, lr=1e-2)
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.75 * first, losses
    # and the net finds the tumour in a foreground patch better than by chance
    batch = next(iter(loader))
    with torch.no_grad():
        predicted = net(batch["image"]).argmax(1)
    target = batch["mask"][:, 0] > 0
    dice = 2 * (predicted.bool() & target).sum() / (predicted.sum() + target.sum())
    assert float(dice) > 0.3
