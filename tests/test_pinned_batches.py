"""Pinned batches: the read path's safety net while it is redesigned.

Each loader kind's whole epochs (two of them) are hashed with 0 and 2 workers and the local
tier off and on; every combination must give the hash pinned here, which was taken from the
code before the redesign. A change that moves read-path code keeps these equal; a change that
means to alter the batches (a new sampling rule) updates the pins in the same commit and says
why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pytest
import torch

import radiobject
from radiobject import ReadConfig
from radiobject.data import make_sample_radiobject
from radiobject.ml import (
    create_inference_dataloader,
    create_segmentation_dataloader,
    create_training_dataloader,
    create_validation_dataloader,
)

SHAPE = (24, 20, 16)


@pytest.fixture(scope="module")
def radi(tmp_path_factory: pytest.TempPathFactory) -> radiobject.RadiObject:
    root = tmp_path_factory.mktemp("pinned")
    return make_sample_radiobject(
        str(root / "r"),
        n_subjects=5,
        shape=SHAPE,
        modalities=("T1w", "FLAIR"),
        seed=3,
        progress=False,
    )


def _update(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        h.update(f"{value.dtype}{tuple(value.shape)}".encode())
        h.update(np.ascontiguousarray(value.numpy()).tobytes())
    elif isinstance(value, dict):
        for key in sorted(value):
            h.update(key.encode())
            _update(h, value[key])
    elif isinstance(value, (list, tuple)):
        for item in value:
            _update(h, item)
    else:
        h.update(repr(value).encode())


def epochs_hash(loader: Iterable[Any], epochs: int = 2) -> str:
    """SHA-256 of every batch of ``epochs`` passes, in order."""
    h = hashlib.sha256()
    n = 0
    for _ in range(epochs):
        for batch in loader:
            _update(h, batch)
            n += 1
    h.update(str(n).encode())
    return h.hexdigest()[:16]


def _kinds(radi: radiobject.RadiObject) -> dict[str, Callable[[int], Any]]:
    both = [radi.T1w, radi.FLAIR]
    return {
        "training_patch": lambda w: create_training_dataloader(
            both,
            labels="diagnosis",
            batch_size=3,
            patch_size=(8, 8, 8),
            patches_per_volume=3,
            num_workers=w,
            seed=11,
        ),
        "training_volume": lambda w: create_training_dataloader(
            radi.T1w, labels="diagnosis", batch_size=2, num_workers=w, seed=5
        ),
        "validation_patch": lambda w: create_validation_dataloader(
            radi.FLAIR,
            batch_size=2,
            patch_size=(8, 8, 8),
            patches_per_volume=2,
            num_workers=w,
        ),
        "segmentation": lambda w: create_segmentation_dataloader(
            radi.T1w,
            radi.seg,
            batch_size=3,
            patch_size=(8, 8, 8),
            patches_per_volume=3,
            num_workers=w,
            seed=2,
        ),
        "inference_grid": lambda w: create_inference_dataloader(
            radi.T1w, patch_size=(12, 12, 8), overlap=0.25, batch_size=4, num_workers=w
        ),
        "inference_volume": lambda w: create_inference_dataloader(radi.FLAIR, num_workers=w),
    }


PINNED = {
    "training_patch": "ea02ba82e235f88c",
    "training_volume": "d6d920113064af90",
    "validation_patch": "0ac8bb65812c41fd",
    "segmentation": "9db2c948ed8862df",
    "inference_grid": "a58ca1d97db06e7d",
    "inference_volume": "3e2991fa99ccc4c2",
}


@pytest.mark.parametrize("tier", ["off", "on"])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", sorted(PINNED))
def test_whole_epochs_hash_as_pinned(radi, tmp_path, kind, workers, tier):
    tier_mb = 0 if tier == "off" else 64
    read = ReadConfig(local_tier_mb=tier_mb, local_tier_dir=str(tmp_path / "tier"))
    with radiobject.configure(read=read):
        loader = _kinds(radi)[kind](workers)
        assert epochs_hash(loader) == PINNED[kind]


def test_the_tiered_runs_read_from_the_tier(radi, tmp_path):
    """The tier-on rows above are not the tier-off rows again: the tier serves their reads."""
    from radiobject import TileDBStats

    read = ReadConfig(local_tier_mb=64, local_tier_dir=str(tmp_path / "tier"), cache_mb=0)
    with radiobject.configure(read=read):
        loader = _kinds(radi)["training_patch"](0)
        epochs_hash(loader, epochs=1)  # fills
        with TileDBStats() as stats:
            epochs_hash(loader, epochs=1)
        assert stats.cache_stats().tier_hits > 0
