"""Overlays of collections on different grids (issue 24): sampled through the affines."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")
pytest.importorskip("scipy")  # the reference computation (a dev dependency, via nilearn)

from scipy import ndimage
from traitlets import TraitError

from radiobject import RadiObject, Volume, VolumeCollection
from radiobject.widgets import CollectionBrowser
from radiobject.widgets._overlay import (
    OverlayPlanes,
    footprint,
    map_position,
    plane_coordinates,
    sample,
)
from radiobject.widgets._png import decode_png
from radiobject.widgets._render import Fusion, Window, label_color, render_slice, to_display
from radiobject.widgets._slices import PLANES, SliceCache
from radiobject.widgets._viewer import BLANK

SHAPE = (32, 32, 24)  # the image: 1 mm voxels, origin 0: voxel i sits at world i


def _coarse_affine():
    """2 mm voxels, origin 0.5 mm: mask voxel j covers image voxels 2j and 2j + 1."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = 0.5
    return affine


def _oblique_affine():
    """Rotated about z and x, anisotropic, shifted: no pixel centre meets a voxel edge."""
    a, b = np.deg2rad(17.0), np.deg2rad(-9.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([1.3, 0.9, 2.1])
    affine[:3, 3] = (3.17, -2.41, 1.93)
    return affine


def _expected(volume, coords, order):
    """``volume`` at ``coords`` by scipy: edge values out to the volume's edge, 0 past it."""
    flat = coords.reshape(-1, 3).T
    out = ndimage.map_coordinates(volume.astype(np.float64), flat, order=order, mode="nearest")
    upper = np.array(volume.shape)[:, None] - 0.5
    out[~np.all((flat >= -0.5) & (flat < upper), axis=0)] = 0
    return out.reshape(coords.shape[:2])


@pytest.fixture(scope="module")
def oblique(tmp_path_factory):
    root = tmp_path_factory.mktemp("oblique")
    rng = np.random.default_rng(3)
    values = rng.normal(100.0, 20.0, (20, 26, 12)).astype(np.float32)
    labels = rng.integers(0, 4, (20, 26, 12)).astype(np.uint8)
    affine = _oblique_affine()
    return (
        Volume.from_numpy(str(root / "img"), values, affine=affine),
        Volume.from_numpy(str(root / "lab"), labels, affine=affine),
        values,
        labels,
    )


@pytest.mark.parametrize("plane", PLANES)
def test_linear_overlay_equals_scipy_map_coordinates(oblique, plane):
    volume, _, values, _ = oblique
    overlay = OverlayPlanes(volume, SHAPE, np.eye(4), linear=True)
    index = SHAPE[{"axial": 2, "coronal": 1, "sagittal": 0}[plane]] // 2
    got = overlay.plane(plane, index)
    coords = plane_coordinates(plane, index, SHAPE, np.eye(4), volume.affine)
    expected = _expected(values, coords, order=1)
    assert got.dtype == np.float32
    assert (got != 0).sum() > 50  # the plane cuts the volume
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)
    assert overlay.reads == 1
    assert overlay.plane(plane, index) is got  # held: no second read
    assert overlay.reads == 1


@pytest.mark.parametrize("plane", PLANES)
def test_nearest_overlay_equals_scipy_order_0(oblique, plane):
    _, volume, _, labels = oblique
    overlay = OverlayPlanes(volume, SHAPE, np.eye(4))
    index = SHAPE[{"axial": 2, "coronal": 1, "sagittal": 0}[plane]] // 2
    got = overlay.plane(plane, index)
    coords = plane_coordinates(plane, index, SHAPE, np.eye(4), volume.affine)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, _expected(labels, coords, order=0))
    assert set(np.unique(got)) <= {0, 1, 2, 3}


def test_a_plane_reads_only_its_footprint(tmp_path):
    # a 2 mm mask under a 1 mm image: an axial plane of the image cuts one mask plane
    mask = np.zeros((16, 16, 12), np.uint8)
    vol = Volume.from_numpy(str(tmp_path / "m"), mask, affine=_coarse_affine())
    reads = []
    original = Volume.read

    def spy(self, bounds, dtype=None):
        reads.append(tuple(bounds))
        return original(self, bounds, dtype)

    overlay = OverlayPlanes(vol, SHAPE, np.eye(4))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Volume, "read", spy)
        overlay.plane("axial", 9)  # world z 9: mask z (9 - 0.5) / 2 = 4.25 -> plane 4
        overlay.plane("sagittal", 0)  # world x 0: mask x -0.25 -> plane 0
    assert reads == [((0, 16), (0, 16), (4, 5)), ((0, 1), (0, 16), (0, 12))]
    assert overlay.read_voxels == 16 * 16 + 16 * 12
    linear = OverlayPlanes(vol, SHAPE, np.eye(4), linear=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Volume, "read", spy)
        linear.plane("axial", 9)  # between mask planes 4 and 5: both
    assert reads[-1] == ((0, 16), (0, 16), (4, 6))


def test_footprint_is_none_off_the_volume():
    coords = np.array([[[-3.0, 0.0, 0.0], [10.0, 2.0, 1.0]]])
    assert footprint(coords, (4, 4, 4), linear=False) is None
    assert sample(np.ones((4, 4, 4)), coords, linear=True).tolist() == [[0.0, 0.0]]


def _cube_mask():
    """A cube of label 2 in mask voxels 4..11 (image voxels 8..23) on every axis."""
    mask = np.zeros((16, 16, 12), np.uint8)
    mask[4:12, 4:12, 4:12] = 2
    return mask


@pytest.fixture(scope="module")
def two_grids(tmp_path_factory):
    root = tmp_path_factory.mktemp("grids")
    image = np.random.default_rng(0).normal(500, 50, SHAPE).astype(np.float32)
    flair = image.reshape(16, 2, 16, 2, 12, 2).mean(axis=(1, 3, 5))  # the same head, 2 mm
    cols = {
        "T1w": VolumeCollection.from_numpy(str(root / "T1w"), {"s1": image}, name="T1w"),
        "FLAIR": VolumeCollection.from_numpy(
            str(root / "FLAIR"), {"s1": flair}, affines=[_coarse_affine()], name="FLAIR"
        ),
        "seg": VolumeCollection.from_numpy(
            str(root / "seg"),
            {"s1": _cube_mask()},
            affines=[_coarse_affine()],
            name="seg",
            is_mask=True,
        ),
    }
    # ingest checks alignment unless told otherwise (or, with the grids branch, given a
    # reference); the browser needs neither
    return RadiObject.from_collections(
        str(root / "radi"), cols, validate_alignment=False, progress=False
    )


def test_a_coarse_mask_lands_on_the_right_pixels(two_grids):
    browser = CollectionBrowser(two_grids, collection="T1w", mask="seg")
    assert browser.error == ""
    assert browser.wait_refined(60)
    assert isinstance(browser.viewer.mask, OverlayPlanes)
    cube = np.zeros(SHAPE, np.uint8)
    cube[8:24, 8:24, 8:24] = 2
    for z in (7, 8, 15, 23):
        np.testing.assert_array_equal(browser.viewer.mask.plane("axial", z), cube[:, :, z])
    np.testing.assert_array_equal(browser.viewer.mask.plane("coronal", 8), cube[:, 8, :])
    # on screen: full opacity, the label colour exactly on the cube's pixels
    browser.viewer.opacity = 1.0
    browser.viewer.crosshair = False
    browser.set_position(16, 16, 12)
    png = decode_png(browser.images["axial"])  # 32 x 32 shown at 8 x 8 pixels per voxel
    centres = png[4::8, 4::8][::-1].transpose(1, 0, 2)  # back to (x, y)
    coloured = np.all(centres == label_color(2), axis=-1)
    np.testing.assert_array_equal(coloured, cube[:, :, 12] == 2)
    assert "seg label 2" in browser.readout


def test_the_coarse_level_of_a_mask_on_another_grid(two_grids):
    seg = two_grids.collection("seg")
    level = seg.coarse_level("s1_seg")  # factor 4: one voxel of each 4 x 4 x 4 block
    volume = seg.volume("s1_seg")
    coarse = OverlayPlanes(level, SHAPE, np.eye(4), source_affine=volume.affine)
    full = OverlayPlanes(volume, SHAPE, np.eye(4))
    for z in (3, 8, 12, 23):  # the cube is aligned to the level's blocks: the same planes
        np.testing.assert_array_equal(coarse.plane("axial", z), full.plane("axial", z))
    assert coarse.reads == 0  # from memory


def test_switching_collection_keeps_the_world_point(two_grids):
    browser = CollectionBrowser(two_grids, collection="T1w", mask="seg")
    browser.set_position(10, 12, 8)
    browser.collection = "FLAIR"
    # world (10, 12, 8) -> FLAIR voxel ((10 - 0.5) / 2, ...) = (4.75, 5.75, 3.75)
    assert browser.position == (5, 6, 4)
    assert browser.error == ""
    assert isinstance(browser.viewer.mask, SliceCache)  # seg shares FLAIR's grid
    browser.collection = "T1w"
    assert browser.position == (11, 13, 9)  # FLAIR voxel (5, 6, 4): world (10.5, 12.5, 8.5)
    assert isinstance(browser.viewer.mask, OverlayPlanes)


def test_aligned_masks_are_read_as_before(sample_radi):
    browser = CollectionBrowser(sample_radi)
    assert type(browser.viewer.mask) is SliceCache


def test_map_position_outside_is_none():
    assert map_position((0, 0, 0), np.eye(4), _coarse_affine(), (16, 16, 12)) == (0, 0, 0)
    assert map_position((40, 0, 0), np.eye(4), _coarse_affine(), (16, 16, 12)) is None


def test_browser_on_the_sample_cohort_with_a_coarse_flair(tmp_path):
    if "reference" not in inspect.signature(RadiObject.from_images).parameters:
        pytest.skip("needs the grids branch (ingest with reference=)")
    from radiobject.data import make_sample_radiobject

    radi = make_sample_radiobject(
        tmp_path / "r",
        n_subjects=2,
        shape=(32, 32, 24),
        grids={"FLAIR": (2.0, 2.0, 3.0)},
        progress=False,
    )
    browser = CollectionBrowser(radi, collection="FLAIR", mask="seg")
    assert browser.error == ""
    assert browser.wait_refined(60)
    assert isinstance(browser.viewer.mask, OverlayPlanes)  # seg is on T1w's grid
    flair = radi.FLAIR.volume("sub-000_FLAIR")
    seg = radi.seg.volume("sub-000_seg").to_numpy()
    z = browser.position[2]
    coords = plane_coordinates(
        "axial", z, flair.shape, flair.affine, radi.seg.volume("sub-000_seg").affine
    )
    np.testing.assert_array_equal(
        browser.viewer.mask.plane("axial", z), _expected(seg, coords, order=0).astype(np.uint8)
    )


# -- an image overlaid on another grid (a FLAIR over the T1w) -------------------------------
def test_render_blends_a_fusion_plane_by_its_windowed_value():
    base = np.full((2, 2), 100.0)
    top = np.array([[0.0, 5.0], [10.0, 10.0]])
    fusion = Fusion(top, Window(5.0, 10.0), "gray", opacity=0.5)
    rgb = render_slice(base, Window(127.5, 255.0), fusion=fusion)  # base grey 100
    shown = to_display(top)  # the fusion plane turned like the image
    alpha = np.clip(shown / 10.0, 0, 1) * 0.5
    expected = np.round((1 - alpha) * 100 + alpha * np.round(np.clip(shown / 10, 0, 1) * 255))
    np.testing.assert_array_equal(rgb[..., 0], expected)


def test_an_image_overlay_on_another_grid_is_linearly_resampled(two_grids):
    browser = CollectionBrowser(two_grids, collection="T1w", mask="", overlay="FLAIR")
    assert browser.error == ""
    assert browser.wait_refined(60)
    overlay = browser.viewer.overlay
    assert isinstance(overlay, OverlayPlanes)
    assert overlay.linear
    flair = two_grids.FLAIR.volume("s1_FLAIR")
    browser.viewer.crosshair = False
    browser.set_position(9, 14, 7)
    coords = plane_coordinates("axial", 7, SHAPE, np.eye(4), flair.affine)
    expected = _expected(flair.to_numpy(), coords, order=1)
    np.testing.assert_allclose(overlay.plane("axial", 7), expected, rtol=1e-5, atol=1e-3)
    assert f"FLAIR {expected[9, 14]:.4g}" in browser.readout
    fused = decode_png(browser.images["axial"])
    browser.viewer.overlay_opacity = 0.0  # fully transparent: the image alone
    clear = decode_png(browser.images["axial"])
    browser.overlay = ""
    assert browser.viewer.overlay is None
    np.testing.assert_array_equal(decode_png(browser.images["axial"]), clear)
    assert not np.array_equal(fused, clear)
    assert "FLAIR" not in browser.readout


def test_an_overlay_on_the_same_grid_is_read_plane_by_plane(two_grids):
    browser = CollectionBrowser(two_grids, collection="FLAIR", overlay="FLAIR")
    assert type(browser.viewer.overlay) is SliceCache
    assert browser.error == ""


def test_bad_overlays_are_refused_or_reported(two_grids, tmp_path):
    browser = CollectionBrowser(two_grids, collection="T1w")
    with pytest.raises(TraitError, match=r"no image collection 'seg' to overlay"):
        browser.overlay = "seg"
    with pytest.raises(TraitError, match=r"no image collection 'PET'"):
        browser.overlay = "PET"
    far = np.eye(4)
    far[:3, 3] = 500.0
    other = VolumeCollection.from_numpy(
        str(tmp_path / "far"), {"s1": np.ones((4, 4, 4), np.float32)}, affines=[far], name="far"
    )
    radi = RadiObject.from_collections(
        str(tmp_path / "r"),
        {"T1w": two_grids.T1w, "far": other},
        validate_alignment=False,
        progress=False,
    )
    browser = CollectionBrowser(radi, collection="T1w", overlay="far")
    assert "overlay 'far' volume 's1_far' does not overlap" in browser.error
    assert browser.viewer.overlay is None
    assert browser.images["axial"] != BLANK
    browser.overlay = ""
    assert browser.error == ""
