"""The widgets driven through their Python API (no kernel, no browser)."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

from traitlets import TraitError

import radiobject
from radiobject import RadiObject, Volume, VolumeCollection
from radiobject.ml import (
    DatasetConfig,
    LoadingMode,
    SegmentationDataset,
    create_segmentation_dataloader,
    create_training_dataloader,
)
from radiobject.read._region import block_cache
from radiobject.widgets import CollectionBrowser, LoaderTuner, PatchPreview
from radiobject.widgets._autotune import settings_code
from radiobject.widgets._png import decode_png
from radiobject.widgets._render import label_color
from radiobject.widgets._viewer import BLANK


def test_public_api():
    import radiobject.widgets as widgets

    assert widgets.__all__ == ["CollectionBrowser", "LoaderTuner", "PatchPreview"]
    for name in widgets.__all__:
        assert getattr(widgets, name).__doc__


# -- CollectionBrowser ---------------------------------------------------------------------
@pytest.fixture
def browser(sample_radi):
    """A browser showing full-resolution planes (its coarse first image replaced)."""
    b = CollectionBrowser(sample_radi)
    assert b.wait_refined(60)
    return b


def _pixel(png, plane_shape, u, v, scale):
    """The pixel at the middle of plane voxel (u, v) of a displayed plane."""
    rows, cols = scale
    return decode_png(png)[(plane_shape[1] - 1 - v) * rows + rows // 2, u * cols + cols // 2]


def test_browser_starts_on_the_first_image_collection(browser, sample_radi):
    assert browser.collection == "FLAIR"  # collections are sorted; seg is a mask
    assert browser.subject == "sub-000"
    assert browser.obs_id == "sub-000_FLAIR"
    assert browser.mask == "seg"
    assert browser.error == ""
    assert browser.position == (16, 16, 12)  # the centre of 32 x 32 x 24
    shapes = {p: decode_png(png).shape for p, png in browser.images.items()}
    assert shapes == {"axial": (256, 256, 3), "coronal": (192, 256, 3), "sagittal": (192, 256, 3)}
    assert "sub-000" in browser.meta_box.value
    assert "tumour" in browser.meta_box.value
    assert "sub-000_FLAIR" in browser.obs_box.value
    assert len(browser.thumbnails.children) == 6


def test_moving_a_slider_changes_the_image_and_reads_one_plane(browser, monkeypatch):
    reads = []
    original = Volume.__getitem__

    def spy(self, index):
        reads.append(index)
        return original(self, index)

    monkeypatch.setattr(Volume, "__getitem__", spy)
    before = browser.images
    cross_before = browser.viewer.crosshair_at
    browser.viewer.sliders["axial"].value = 5
    after = browser.images
    assert browser.position == (16, 16, 5)
    assert after["axial"] != before["axial"]
    # the crosshair moved on the coronal plane (drawn by the page over the same PNG)
    assert after["coronal"] == before["coronal"]
    assert browser.viewer.crosshair_at["coronal"] != cross_before["coronal"]
    assert browser.viewer.crosshair_widgets["coronal"].value
    # one image plane and one mask plane, each a single z: no whole-volume reads
    assert len(reads) == 2
    assert all(index[2] == 5 and index[0] == slice(None) for index in reads)


def test_overlay_pixel_has_the_label_colour(browser, sample_radi):
    seg = sample_radi.seg.loc["sub-000_seg"].to_numpy()
    x, y, z = (int(v) for v in np.argwhere(seg == 2)[0])
    browser.viewer.opacity = 1.0
    browser.viewer.crosshair = False
    browser.set_position(x, y, z)
    scale = (8, 8)  # 32 x 32 axial plane grows to 256 pixels
    assert _pixel(browser.images["axial"], (32, 32), x, y, scale).tolist() == list(label_color(2))
    browser.mask = ""
    assert _pixel(browser.images["axial"], (32, 32), x, y, scale).tolist() != list(label_color(2))
    assert "label" not in browser.readout


def test_window_level_gives_exact_grey_and_readout(browser, sample_radi):
    vol = sample_radi.FLAIR.loc["sub-003_FLAIR"].to_numpy()
    browser.subject = "sub-003"
    browser.mask = ""
    assert browser.wait_refined(60)  # the exact grey is the full-resolution voxel's
    browser.viewer.crosshair = False
    browser.set_position(10, 20, 8)
    value = float(vol[10, 20, 8])
    browser.viewer.level, browser.viewer.width = value, 2 * value  # value -> 0.5 -> 128
    assert browser.viewer.preset == "custom"
    assert _pixel(browser.images["axial"], (32, 32), 10, 20, (8, 8)).tolist() == [128] * 3
    readout = browser.readout
    assert "(10, 20, 8)" in readout
    assert f"{value:.4g}" in readout
    affine = sample_radi.FLAIR.loc["sub-003_FLAIR"].affine
    wx, wy, wz = (affine @ [10, 20, 8, 1])[:3]
    assert f"({wx:.1f}, {wy:.1f}, {wz:.1f})" in readout
    browser.viewer.preset = "CT brain"
    assert (browser.viewer.level, browser.viewer.width) == (40.0, 80.0)
    browser.viewer.preset = "min-max"
    lo, hi = (
        browser.viewer.level - browser.viewer.width / 2,
        browser.viewer.level + browser.viewer.width / 2,
    )
    shown = np.concatenate([vol[:, :, 8].ravel(), vol[:, 20, :].ravel(), vol[10].ravel()])
    assert (lo, hi) == pytest.approx((shown.min(), shown.max()))


def test_switching_collection_subject_and_colormap(browser):
    browser.set_position(3, 4, 5)
    browser.collection = "T1w"
    assert browser.obs_id == "sub-000_T1w"
    assert browser.position == (3, 4, 5)
    before = browser.images["axial"]
    browser.viewer.cmap = "viridis"
    assert decode_png(browser.images["axial"]).std(axis=2).max() > 0  # not grey any more
    assert browser.images["axial"] != before
    browser.thumbnails.children[2].children[1].click()  # the third thumbnail's button
    assert browser.subject == "sub-002"
    assert browser.obs_id == "sub-002_T1w"
    browser.subject_filter.value = "005"
    assert browser.subject_picker.options == ("sub-002", "sub-005")  # shown one stays
    assert len(browser.thumbnails.children) == 1
    # a trait validator rejects the value with traitlets' TraitError, so a hold_sync() of
    # several traits rolls back; the browser keeps showing the subject it had
    with pytest.raises(TraitError, match=r"no subject 'sub-999' in collection 'T1w'"):
        browser.subject = "sub-999"
    assert browser.subject == "sub-002"
    assert browser.obs_id == "sub-002_T1w"


def test_browser_on_views_and_on_a_lone_collection(sample_radi):
    healthy = CollectionBrowser(sample_radi.filter("diagnosis == 'healthy'"))
    assert list(healthy.subject_picker.options) == ["sub-001"]
    lone = CollectionBrowser(sample_radi.T1w.head(2), mask=sample_radi.seg)
    assert lone.collection == "T1w"
    assert lone.mask == "seg"
    assert list(lone.subject_picker.options) == ["sub-000", "sub-001"]
    assert lone.error == ""
    assert lone.images["axial"] != BLANK
    assert "(none)" in lone.meta_box.value  # a lone collection has no obs_meta
    with pytest.raises(TypeError, match="RadiObject or a VolumeCollection"):
        CollectionBrowser(np.zeros(3))


def test_empty_collection_is_shown_in_place(sample_radi):
    empty = CollectionBrowser(sample_radi.filter("age > 1000"))
    assert "no volumes" in empty.error
    assert "no volumes" in empty.error_box.value
    assert empty.images["axial"] == BLANK
    empty.collection = "T1w"  # still usable: picking another collection just says so again
    assert "'T1w' has no volumes" in empty.error


@pytest.fixture(scope="module")
def misaligned(tmp_path_factory):
    root = tmp_path_factory.mktemp("misaligned")
    image = np.arange(16 * 16 * 12, dtype=np.float32).reshape(16, 16, 12)
    img = VolumeCollection.from_numpy(str(root / "img"), {"s1": image}, name="img")
    seg = VolumeCollection.from_numpy(
        str(root / "seg"), {"s1": np.ones((8, 8, 8), np.uint8)}, name="seg", is_mask=True
    )
    far = np.eye(4)
    far[:3, 3] = 100.0  # 100 mm away: misses the image
    apart = VolumeCollection.from_numpy(
        str(root / "apart"),
        {"s1": np.ones((8, 8, 8), np.uint8)},
        affines=[far],
        name="apart",
        is_mask=True,
    )
    return RadiObject.from_collections(
        str(root / "radi"),
        {"img": img, "seg": seg, "apart": apart},
        validate_alignment=False,
        progress=False,
    )


def test_mask_on_another_grid_is_overlaid_where_it_lies(misaligned):
    # an 8 x 8 x 8 mask with the image's 1 mm voxels and origin covers the image's first
    # 8 x 8 x 8 voxels (the overlay was switched off before masks on other grids were sampled)
    browser = CollectionBrowser(misaligned, mask="seg")
    assert browser.collection == "img"
    assert browser.mask == "seg"
    assert browser.error == ""
    assert browser.wait_refined(60)
    browser.viewer.opacity = 1.0
    browser.viewer.crosshair = False
    browser.set_position(2, 3, 4)
    axial = browser.images["axial"]
    assert _pixel(axial, (16, 16), 2, 3, (16, 16)).tolist() == list(label_color(1))
    assert _pixel(axial, (16, 16), 12, 3, (16, 16)).tolist() != list(label_color(1))
    assert "seg label 1" in browser.readout
    browser.set_position(2, 3, 10)  # past the mask's last plane
    assert "seg label 0" in browser.readout
    assert browser.error == ""


def test_mask_that_misses_the_image_is_reported_and_the_image_still_shows(misaligned):
    browser = CollectionBrowser(misaligned, mask="apart")
    assert "does not overlap image 's1_img'" in browser.error
    assert "overlay is off" in browser.error_box.value
    assert browser.images["axial"] != BLANK
    assert browser.wait_refined(60)
    before = browser.images["axial"]
    browser.set_position(2, 3, 4)  # still usable
    assert browser.images["axial"] != before
    assert "(2, 3, 4)" in browser.readout
    assert "label" not in browser.readout
    browser.mask = ""
    assert browser.error == ""


# -- PatchPreview --------------------------------------------------------------------------
def test_patch_preview_on_a_dataset_shows_where_patches_came_from(sample_radi):
    cfg = DatasetConfig(loading_mode=LoadingMode.PATCH, patch_size=(8, 8, 8), patches_per_volume=2)
    ds = SegmentationDataset(sample_radi.T1w, sample_radi.seg, cfg)
    preview = PatchPreview(ds, n=4)
    assert preview.error == ""
    assert len(preview.patches) == 4
    assert len(preview.cards.children) == 4
    for p in preview.patches:  # the voxels are those of the volume at the patch corner
        x, y, z = p.start
        vol = sample_radi.T1w.loc[p.obs_id]
        np.testing.assert_array_equal(p.image, vol[x : x + 8, y : y + 8, z : z + 8])
        assert p.mask is not None
        assert p.mask.shape == (8, 8, 8)
    caption = preview.cards.children[0].children[1].value
    assert preview.patches[0].obs_id in caption
    assert "fg " in caption
    first = [p.start for p in preview.patches]
    preview.resample_button.click()
    assert preview.draws == 2
    assert len(preview.history) == 8
    assert [p.start for p in preview.patches] != first
    assert decode_png(preview.location.value).shape == (256, 256, 3)


def test_foreground_sampling_shows_in_the_touch_fraction(sample_radi):
    tumours = sample_radi.filter("diagnosis == 'tumour'")
    fractions = {}
    for fg in (True, False):
        loader = create_segmentation_dataloader(
            tumours.T1w,
            tumours.seg,
            batch_size=4,
            patch_size=(6, 6, 6),
            patches_per_volume=2,
            foreground_sampling=fg,
            foreground_probability=1.0,
        )
        preview = PatchPreview(loader, n=8)
        stats = preview.draw_many(4)
        assert stats["all"]["patches"] == 40
        fractions[fg] = stats["all"]["touching_fraction"]
        assert f"foreground_sampling={'on' if fg else 'off'}" in preview.stats_box.value
    assert fractions[True] == 1.0
    assert fractions[False] < 0.8


def test_patch_location_views(sample_radi):
    loader = create_segmentation_dataloader(
        sample_radi.T1w, sample_radi.seg, batch_size=4, patch_size=(8, 8, 8)
    )
    preview = PatchPreview(loader, n=4)
    boxes = decode_png(preview.location.value)
    assert ((boxes == [0, 255, 0]).all(axis=2)).any()  # green outlines of this draw
    preview.draw_many(3)
    preview.view_mode.value = "coverage (all draws)"
    heat = decode_png(preview.location.value)
    assert not np.array_equal(heat, boxes)
    assert "patches from this volume" in preview.location_title.value


def test_a_loader_raising_mid_draw_is_shown_and_resample_works_again(sample_radi):
    fail = {"now": False}

    def transform(sample):
        if fail["now"]:
            raise RuntimeError("disk on fire")
        return sample

    loader = create_segmentation_dataloader(
        sample_radi.T1w, sample_radi.seg, batch_size=2, patch_size=(8, 8, 8), transform=transform
    )
    preview = PatchPreview(loader, n=2)
    shown = preview.patches
    fail["now"] = True
    preview.resample_button.click()
    assert "disk on fire" in preview.error
    assert "disk on fire" in preview.error_box.value
    assert preview.patches is shown  # the last good draw stays on screen
    fail["now"] = False
    preview.resample_button.click()
    assert preview.error == ""
    assert preview.error_box.value == ""
    assert preview.patches is not shown


# -- LoaderTuner ---------------------------------------------------------------------------
def test_tuner_run_appears_in_the_summary(sample_radi):
    tuner = LoaderTuner(sample_radi.T1w, sample_radi.seg, patch_size=(8, 8, 8), redraw_s=0.2)
    empty_plot = tuner.plot.value
    block_cache().clear()  # so the run reads from storage, and counts it
    run = tuner.run_sync(duration_s=1.0, num_workers=0, cache_mb=64)
    assert run is not None
    assert run.done
    assert run.error == ""
    result = run.result
    assert result.batches > 0
    assert result.samples == 4 * result.batches  # batch_size 4, 24 patches an epoch
    assert sum(r.batches for r in run.records) == result.batches
    assert sum(r.samples for r in run.records) == result.samples
    assert run.samples_per_s == result.samples_per_s > 0
    assert tuner.runs == [run]
    assert tuner.best is run
    assert not tuner.running
    assert "run 1" in tuner.best_box.value
    assert "samples/s" in tuner.best_box.value
    assert "★" in tuner.summary.value
    assert "8x8x8" in tuner.summary.value
    # one redraw sets up the run's axes, one shows the finished run, the rest were live
    assert tuner.redraws == 2 + tuner.live_redraws
    assert tuner.plot.value != empty_plot  # the run's traces are drawn
    assert "starved %" in tuner.summary.value
    assert "e+" not in tuner.summary.value
    assert decode_png(tuner.plot.value).ndim == 3
    assert run.storage_reads > 0  # cold cache: TileDB read ops counted (num_workers=0)
    assert radiobject.get_config().read.cache_mb == radiobject.ReadConfig().cache_mb  # restored
    assert not tuner.start_button.disabled
    assert tuner.stop_button.disabled
    assert tuner.controls["max_parallel_ops"].layout.display == "none"  # local data


def test_tuner_stop_and_button_start(sample_radi):
    tuner = LoaderTuner(sample_radi.T1w, patch_size=(8, 8, 8), duration_s=60)
    tuner.start_button.click()
    assert tuner.running
    assert tuner.start_button.disabled
    run = tuner.runs[-1]
    deadline = time.perf_counter() + 20
    while not run.records and time.perf_counter() < deadline:  # stop it mid-run
        time.sleep(0.01)
    assert run.records
    began = time.perf_counter()
    tuner.stop_button.click()
    assert tuner.wait(timeout=20) is run
    assert time.perf_counter() - began < 10
    assert run.done
    assert run.error == ""
    assert not tuner.running
    assert run.result.batches > 0
    assert run.result.seconds < 30  # of the 60 asked for


def test_tuner_shows_a_failing_loader_and_starts_again(sample_radi):
    from torch.utils.data import DataLoader, Dataset

    class Flaky(Dataset):
        def __len__(self):
            return 1000

        def __getitem__(self, i):
            if i >= 6 and broken["now"]:
                raise OSError("volume vanished")
            return {"image": np.zeros((1, 2, 2, 2), np.float32)}

    broken = {"now": True}

    def make_loader(batch_size, num_workers, patch_size, patches_per_volume):
        return DataLoader(Flaky(), batch_size=batch_size, num_workers=num_workers)

    tuner = LoaderTuner(make_loader, duration_s=1.0)
    run = tuner.run_sync(batch_size=2)
    assert "volume vanished" in run.error
    # where it happened: in the loader, at the line of the dataset that raised
    assert "in the loader, at test_widgets.py:" in run.error
    assert "in __getitem__" in run.error
    assert "volume vanished" in tuner.error
    assert "failed" in tuner.error_box.value
    assert not tuner.running
    assert tuner.best is None
    assert not tuner.start_button.disabled
    broken["now"] = False
    good = tuner.run_sync(duration_s=0.3)
    assert good.error == ""
    assert tuner.error == ""
    assert tuner.best is good
    assert len(tuner.runs) == 2
    assert tuner.summary.value.count("<tr") == 3


def test_tuner_bad_settings_are_shown(sample_radi):
    tuner = LoaderTuner(sample_radi.T1w, s3=True, duration_s=0.3)
    assert tuner.controls["max_parallel_ops"].layout.display is None  # shown for S3
    assert tuner.start(patch_size="abc") is None
    assert "patch size" in tuner.error
    assert tuner.runs == []
    run = tuner.run_sync(patch_size=(64, 64, 64))  # larger than the volumes
    assert "ShapeError" in run.error
    assert "larger than volume" in tuner.error
    with pytest.raises(KeyError, match="no setting"):
        tuner.set(prefetch=3)


def test_tuner_table_numbers_read_as_numbers():
    from radiobject.widgets._plots import summary_html

    rows = [
        {"run": 1, "samples/s": 3333.33, "hit rate": 0.853, "latency ms": 1.234, "batches": 12},
        {
            "run": 2,
            "samples/s": 12.345,
            "hit rate": float("nan"),
            "latency ms": 250.0,
            "batches": 3,
        },
    ]
    table = summary_html(rows, best=0)
    cells = re.findall(r"<td>(.*?)</td>", table)
    assert cells == ["★", "1", "3,333", "85.3%", "1.23", "12", "", "2", "12.3", "-", "250", "3"]
    assert "e+" not in table


# -- scrub latency: what an update costs and sends -----------------------------------------
def test_latency_readout_counts_each_update_and_the_bytes_sent(browser):
    stats = browser.viewer.latency
    updates = stats.updates
    before = browser.images
    browser.set_position(3, 4, 5)  # all three coordinates: three new planes
    after = browser.images
    assert stats.updates == updates + 1
    changed = [p for p in after if after[p] != before[p]]
    assert len(changed) == 3
    assert stats.encodes_last == 3
    assert stats.bytes_last == sum(len(after[p]) for p in changed)
    assert stats.last_ms > 0
    assert stats.p95_ms >= stats.p50_ms > 0
    assert f"{stats.bytes_last / 1000:.1f} kB" in browser.viewer.latency_box.value
    browser.render()  # nothing new: nothing sent, no update counted
    assert stats.updates == updates + 1
    browser.set_position(3, 4, 6)
    assert stats.updates == updates + 2
    assert (stats.encodes_last, stats.bytes_last) == (1, len(browser.images["axial"]))


def test_moving_one_coordinate_re_encodes_only_the_plane_that_changed(browser, monkeypatch):
    from radiobject.widgets import _plane_images

    encoded: list[bytes] = []

    def spying(original):
        def spy(*args, **kwargs):
            png = original(*args, **kwargs)
            encoded.append(png)
            return png

        return spy

    for name in ("encode_indexed", "encode_png"):
        monkeypatch.setattr(_plane_images, name, spying(getattr(_plane_images, name)))
    x, y, z = browser.position
    moves = [
        ((x, y, z + 1), "axial"),
        ((x + 1, y, z + 1), "sagittal"),
        ((x + 1, y + 1, z + 1), "coronal"),
    ]
    for pos, plane in moves:
        encoded.clear()
        before, cross = browser.images, browser.viewer.crosshair_at
        browser.set_position(*pos)
        browser.render()
        after = browser.images
        assert encoded == [after[plane]]  # one PNG made, for the plane cut at a new index
        assert [p for p in after if after[p] != before[p]] == [plane]
        moved = [p for p in after if browser.viewer.crosshair_at[p] != cross[p]]
        assert sorted(moved) == sorted(set(after) - {plane})  # the page moves the others'
    encoded.clear()
    browser.viewer.crosshair = False
    assert encoded == []
    assert browser.viewer.crosshair_at == {}
    assert all(not browser.viewer.crosshair_widgets[p].value for p in browser.images)
    browser.viewer.cmap = "bone"  # every plane's pixels change
    assert len(encoded) == 3


def test_planes_are_exact_on_an_arange_volume(tmp_path):
    from radiobject.widgets._render import Window, crosshair_pixel, display_scale, render_slice
    from radiobject.widgets._slices import SliceCache, plane_spacing, plane_uv
    from radiobject.widgets._viewer import SliceViewer

    def check(data, labels, position, window, png_colour_type):
        vol = Volume.from_numpy(str(tmp_path / f"img{data.size}"), data)
        seg = Volume.from_numpy(str(tmp_path / f"seg{data.size}"), labels)
        viewer = SliceViewer()
        viewer.level, viewer.width = window.level, window.width
        viewer.show(SliceCache(vol), SliceCache(seg), "seg")
        viewer.position = position
        x, y, z = position
        planes = {
            "axial": (data[:, :, z], labels[:, :, z]),
            "coronal": (data[:, y, :], labels[:, y, :]),
            "sagittal": (data[x], labels[x]),
        }
        for plane, (img, lab) in planes.items():
            scale = display_scale(img.shape, plane_spacing(plane, vol.spacing))
            expected = render_slice(img, window, "gray", mask=lab, opacity=0.4, scale=scale)
            png = viewer.images[plane]
            assert (decode_png(png) == expected).all(), plane
            assert png[25] == png_colour_type[plane]  # 3: indexed, 2: RGB
            assert viewer.crosshair_at[plane] == crosshair_pixel(
                plane_uv(plane, position), img.shape, scale
            )

    data = np.arange(6 * 7 * 5, dtype=np.float32).reshape(6, 7, 5)
    labels = (np.arange(data.size).reshape(data.shape) % 4).astype(np.uint8)
    check(
        data,
        labels,
        (2, 3, 1),
        Window(100.0, 180.0),
        dict.fromkeys(("axial", "coronal", "sagittal"), 3),
    )
    # a ramp along y under a mask split along x needs more than 256 colours: sent as RGB
    ramp = np.tile(np.arange(200, dtype=np.float32)[None, :, None], (20, 1, 2))
    halves = np.zeros(ramp.shape, np.uint8)
    halves[10:] = 1
    rgb_axial = {"axial": 2, "coronal": 3, "sagittal": 3}
    check(ramp, halves, (12, 50, 1), Window(100.0, 200.0), rgb_axial)


def test_thumbnails_of_large_planes_stay_small(tmp_path):
    from radiobject.widgets._png import png_size

    vol = np.random.default_rng(0).normal(size=(300, 200, 4)).astype(np.float32)
    browser = CollectionBrowser(VolumeCollection.from_numpy(str(tmp_path / "c"), {"a": vol}))
    thumb = browser.thumbnails.children[0].children[0]
    assert png_size(thumb.value) == (75, 50)  # every 4th voxel of 300 x 200, not 300 wide


def test_tuner_read_ahead_reaches_the_loader(sample_radi):
    seen: list[int] = []

    def make_loader(**settings):
        seen.append(radiobject.get_config().read.read_ahead)  # as the loader is built
        return create_training_dataloader(sample_radi.T1w, **settings)

    tuner = LoaderTuner(make_loader, patch_size=(8, 8, 8))
    assert tuner.settings().read_ahead == radiobject.ReadConfig().read_ahead
    run = tuner.run_sync(duration_s=0.5, read_ahead=6)
    assert run is not None
    assert run.error == ""
    assert seen
    assert set(seen) == {6}
    assert "ra6" in run.label
    assert "read_ahead=6" in settings_code(run.settings, "create_training_dataloader(radi.T1w")
