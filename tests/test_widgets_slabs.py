"""Slabs in the widgets: PatchPreview shows a slab's planes, CollectionBrowser marks them.

The render functions are tested on arrays; the widgets through their Python API.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ipywidgets")

from radiobject import ConfigurationError, ShapeError
from radiobject.ml import (
    DatasetConfig,
    VolumeCollectionDataset,
    create_segmentation_dataloader,
)
from radiobject.widgets import CollectionBrowser, PatchPreview
from radiobject.widgets._patches import Patch, patch_card, patches_from, slab_card
from radiobject.widgets._png import decode_png
from radiobject.widgets._slices import box_on_plane
from radiobject.widgets._viewer import MARK_COLOR

CENTRE = [255, 200, 0]


def test_a_slab_sample_becomes_its_box_in_the_volume():
    volume = np.arange(2 * 6 * 5 * 4, dtype=np.float32).reshape(2, 6, 5, 4)  # (C, X, Y, Z)
    # 3 coronal planes y = 1..3 of both channels, as a slab sample lays them out
    planes = np.concatenate([np.moveaxis(volume[c, :, 1:4, :], 1, 0) for c in range(2)])
    sample = {"image": planes, "mask": np.ones((1, 6, 4)), "patch_start": np.array([0, 1, 0])}
    first, second = (patches_from(sample, batched=False, channel=c, slab=(3, 1))[0] for c in (0, 1))
    np.testing.assert_array_equal(first.image, volume[0, :, 1:4, :])
    np.testing.assert_array_equal(second.image, volume[1, :, 1:4, :])
    assert first.size == (6, 3, 4)
    assert first.slab_axis == 1
    assert first.mask.shape == (6, 4)
    with pytest.raises(ValueError, match=r"slab sample of 4 planes must be \(C \* 4, h, w\)"):
        patches_from(sample, batched=False, slab=(4, 1))


def test_slab_card_shows_k_planes_and_frames_the_centre():
    box = np.zeros((4, 4, 5))
    box[..., 2] = 1.0  # only the centre plane is bright
    card = slab_card(Patch(box, np.zeros((4, 4)), "a", None, (0, 0, 0), slab_axis=2), target=4)
    tile = 4 + 2  # a plane and the gap after it
    assert card.shape == (4, 5 * 4 + 4 * 2, 3)
    assert card[0, 2 * tile].tolist() == CENTRE
    assert card[0, 0].tolist() != CENTRE
    assert card[2, 2 * tile + 2].tolist() != [0, 0, 0]  # inside the centre: bright
    assert card[2, 2].tolist() == [0, 0, 0]  # plane 0: dark
    same = patch_card(Patch(box, None, "a", None, (0, 0, 0), slab_axis=2), target=6)
    assert same.shape[1] > same.shape[0]  # planes side by side, not three mid-slices
    with pytest.raises(ValueError, match="not a slab"):
        slab_card(Patch(box, None, "a", None, None))


def test_box_on_plane_is_the_slab_footprint():
    slab = ((0, 32), (5, 8), (0, 24))  # coronal planes 5..7
    assert box_on_plane(slab, "axial", 3) == ((0, 32), (5, 8))
    assert box_on_plane(slab, "coronal", 6) == ((0, 32), (0, 24))
    assert box_on_plane(slab, "coronal", 8) is None
    assert box_on_plane(slab, "sagittal", 31) == ((5, 8), (0, 24))


def test_patch_preview_shows_slab_samples(sample_radi):
    loader = create_segmentation_dataloader(
        sample_radi.T1w, sample_radi.seg, batch_size=2, slab=5, patches_per_volume=2
    )
    preview = PatchPreview(loader, n=4)
    assert preview.error == ""
    assert preview.slab == (5, 2)
    assert all(p.size == (32, 32, 5) and p.slab_axis == 2 for p in preview.patches)
    caption = preview.cards.children[0].children[1].value
    assert "slab of 5 planes along z" in caption
    # the location view (axial, at the slab's centre plane) outlines the slab
    first = preview.patches[0]
    assert preview.volume_picker.value == first.obs_id
    assert preview.z_slider.value == first.start[2] + 2
    rgb = decode_png(preview.location_png())
    assert (rgb == [0, 255, 0]).all(axis=-1).any()


def test_patch_preview_on_a_coronal_slab_dataset(sample_radi):
    config = DatasetConfig(
        loading_mode="slab", slab=3, slice_orientation="coronal", slab_patch=(16, 12)
    )
    preview = PatchPreview(VolumeCollectionDataset(sample_radi.T1w, config), n=3)
    assert preview.error == ""
    assert all(p.size == (16, 3, 12) and p.slab_axis == 1 for p in preview.patches)


def test_browser_marks_a_slab_and_clears_it(sample_radi):
    browser = CollectionBrowser(sample_radi, coarse=False)
    before = browser.images
    box = browser.mark_slab(4, 5, axis="axial")
    assert box == ((0, 32), (0, 32), (4, 9))
    assert browser.position[2] == 6  # the centre plane
    coronal = decode_png(browser.images["coronal"])
    marked = (coronal == MARK_COLOR).all(axis=-1)
    rows = np.flatnonzero(marked.any(axis=1))
    assert len(rows) >= 2  # the band's two edges (and its sides)
    # the band spans planes 4..8 of 24: between 15/24 and 21/24 of the height from the top
    height = coronal.shape[0]
    assert rows.min() >= height * 14 // 24
    assert rows.max() <= height * 21 // 24
    browser.mark_box(None)
    assert browser.images["coronal"] == before["coronal"]
    with pytest.raises(ShapeError, match="does not fit"):
        browser.mark_slab(22, 5)
    with pytest.raises(ConfigurationError, match="axis must be"):
        browser.mark_slab(0, 3, axis="z")


def test_the_tuner_rebuilds_a_slab_loader_as_slabs(sample_radi):
    from radiobject.widgets._source import tuner_source

    loader = create_segmentation_dataloader(
        sample_radi.T1w, sample_radi.seg, batch_size=2, slab=5, patches_per_volume=2
    )
    source = tuner_source(loader, None, {})
    assert source.settings["patch_size"] is None  # "full": slabs have no 3D patch size
    again = source.make(batch_size=4, num_workers=0, patch_size=None, patches_per_volume=3)
    assert again.dataset.config.slab == 5
    assert again.dataset.config.patches_per_volume == 3
    assert next(iter(again))["image"].shape == (4, 5, 32, 32)
