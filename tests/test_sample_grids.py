"""The sample cohort with a collection on a grid of its own (issue 24: modality grids)."""

from __future__ import annotations

import inspect

import nibabel as nib
import numpy as np
import pytest

from radiobject import ConfigurationError, RadiObject
from radiobject.data import make_sample_radiobject, write_sample_niftis
from radiobject.data._grids import grid_for, regrid

SHAPE = (16, 16, 12)


def _load(images, name, sid="sub-000"):
    img = nib.load(images[name].replace("*", f"{sid}_{name}"))
    return np.asarray(img.dataobj), img.affine


def _centroid_mm(voxels, affine):
    """The intensity-weighted centre of a volume, in world mm."""
    w = voxels.astype(np.float64)
    idx = np.indices(voxels.shape).reshape(3, -1).astype(np.float64)
    centre = (idx * w.ravel()).sum(axis=1) / w.sum()
    return (affine @ [*centre, 1.0])[:3]


@pytest.fixture(scope="module")
def fine(tmp_path_factory):
    return write_sample_niftis(tmp_path_factory.mktemp("fine"), n_subjects=2, shape=SHAPE)[0]


def test_a_coarser_flair_is_the_block_mean_of_the_fine_one(tmp_path, fine):
    images, _ = write_sample_niftis(
        tmp_path, n_subjects=2, shape=SHAPE, grids={"FLAIR": (2.0, 2.0, 3.0)}
    )
    for sid in ("sub-000", "sub-001"):
        t1, t1_affine = _load(images, "T1w", sid)
        t1_fine, t1_fine_affine = _load(fine, "T1w", sid)
        np.testing.assert_array_equal(t1, t1_fine)  # the reference is untouched
        np.testing.assert_array_equal(t1_affine, t1_fine_affine)
        flair, affine = _load(images, "FLAIR", sid)
        flair_fine, fine_affine = _load(fine, "FLAIR", sid)
        assert flair.shape == (8, 8, 4)
        np.testing.assert_allclose(np.diag(affine)[:3], (2.0, 2.0, 3.0))
        # voxel (0, 0, 0) of the coarse grid covers fine voxels 0..1, 0..1, 0..2: its centre
        # sits in the middle of theirs
        np.testing.assert_allclose(affine @ [0, 0, 0, 1], fine_affine @ [0.5, 0.5, 1.0, 1])
        blocks = flair_fine.reshape(8, 2, 8, 2, 4, 3).mean(axis=(1, 3, 5))
        assert np.abs(flair - blocks).max() <= 0.5 + 1e-3  # the mean, rounded to whole numbers
        seg, seg_affine = _load(images, "seg", sid)
        np.testing.assert_array_equal(seg, _load(fine, "seg", sid)[0])  # seg not regridded
        np.testing.assert_array_equal(seg_affine, fine_affine)


@pytest.mark.parametrize("spacing", [(0.9, 0.9, 3.0), (1.7, 2.3, 2.5)])
def test_any_voxel_size_shows_the_same_head_in_world_coordinates(tmp_path, fine, spacing):
    images, _ = write_sample_niftis(tmp_path, n_subjects=2, shape=SHAPE, grids={"FLAIR": spacing})
    flair_fine, fine_affine = _load(fine, "FLAIR")
    flair, affine = _load(images, "FLAIR")
    assert flair.shape == tuple(
        int(np.ceil(n / s - 1e-9)) for n, s in zip(SHAPE, spacing, strict=True)
    )
    np.testing.assert_allclose(np.diag(affine)[:3], spacing)
    # same field-of-view centre, so an origin that moves with the voxel size
    centre = affine @ [*((np.array(flair.shape) - 1) / 2), 1]
    np.testing.assert_allclose(centre, fine_affine @ [*((np.array(SHAPE) - 1) / 2), 1], atol=1e-5)
    # the head is where it was: centroids agree to a fraction of the coarse voxel
    np.testing.assert_allclose(
        _centroid_mm(flair, affine), _centroid_mm(flair_fine, fine_affine), atol=0.25
    )
    assert abs(flair.sum() * np.prod(spacing) / flair_fine.sum() - 1) < 0.05  # same signal


def test_a_mask_on_its_own_grid_takes_the_nearest_label(tmp_path, fine):
    images, _ = write_sample_niftis(tmp_path, n_subjects=2, shape=SHAPE, grids={"seg": (2, 2, 2)})
    seg, affine = _load(images, "seg")
    seg_fine, fine_affine = _load(fine, "seg")
    assert seg.shape == (8, 8, 6)
    assert seg.dtype == seg_fine.dtype
    assert set(np.unique(seg)) <= set(np.unique(seg_fine))
    # each coarse voxel centre lies between fine voxels 2i and 2i+1; the nearest rounds up
    np.testing.assert_array_equal(seg, seg_fine[1::2, 1::2, 1::2])
    tumour = (seg > 0).astype(float)
    assert tumour.sum() > 4  # sub-000 has a tumour
    np.testing.assert_allclose(
        _centroid_mm(tumour, affine),
        _centroid_mm((seg_fine > 0).astype(float), fine_affine),
        atol=1.0,
    )


def test_regrid_against_a_direct_computation():
    rng = np.random.default_rng(0)
    vol = rng.random((6, 5, 4)).astype(np.float32)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    shape, new = grid_for(vol.shape, affine, (1.5, 2.5, 4.0))
    assert shape == (4, 2, 1)
    out = regrid(vol, affine, new, shape)
    # the coarse voxel (1, 0, 0) covers x 1.0..2.5 (fine voxel 1 half, voxel 2 whole ...)
    lo = new @ [1, 0, 0, 1] - np.array([0.75, 1.25, 2.0, 0])
    hi = lo + np.array([1.5, 2.5, 4.0, 0])
    weights = []
    for axis, n in enumerate(vol.shape):
        edges = np.arange(n) - 0.5
        weights.append(np.clip(np.minimum(edges + 1, hi[axis]) - np.maximum(edges, lo[axis]), 0, 1))
    w = np.einsum("i,j,k->ijk", *weights)
    assert out[1, 0, 0] == pytest.approx(float((w * vol).sum() / w.sum()), rel=1e-5)


def test_bad_grids_are_configuration_errors(tmp_path):
    with pytest.raises(ConfigurationError, match="'T1w', the reference collection"):
        write_sample_niftis(tmp_path, n_subjects=1, shape=SHAPE, grids={"T1w": (2, 2, 2)})
    with pytest.raises(ConfigurationError, match="'CT', which is not a collection"):
        write_sample_niftis(tmp_path, n_subjects=1, shape=SHAPE, grids={"CT": (2, 2, 2)})
    with pytest.raises(ConfigurationError, match="3 sizes > 0"):
        write_sample_niftis(tmp_path, n_subjects=1, shape=SHAPE, grids={"FLAIR": (2, 0, 2)})
    with pytest.raises(ConfigurationError, match="3 sizes > 0"):
        make_sample_radiobject(tmp_path / "r", n_subjects=1, grids={"FLAIR": (2, 2)})
    with pytest.raises(ConfigurationError, match="axis-aligned"):
        regrid(np.zeros((2, 2, 2)), np.eye(4)[[1, 0, 2, 3]], np.eye(4), (2, 2, 2))


def _needs_reference():
    if "reference" not in inspect.signature(RadiObject.from_images).parameters:
        pytest.skip("needs the grids branch (ingest with reference=)")


def test_make_sample_radiobject_with_a_coarse_flair(tmp_path):
    _needs_reference()
    radi = make_sample_radiobject(
        tmp_path / "r", n_subjects=2, shape=SHAPE, grids={"FLAIR": (2.0, 2.0, 3.0)}, progress=False
    )
    assert radi.reference == "T1w"
    images, _ = write_sample_niftis(
        tmp_path / "n", n_subjects=2, shape=SHAPE, grids={"FLAIR": (2.0, 2.0, 3.0)}
    )
    for name in ("T1w", "FLAIR", "seg"):
        voxels, affine = _load(images, name)
        vol = radi.collection(name).volume(f"sub-000_{name}")
        assert vol.shape == voxels.shape
        np.testing.assert_allclose(vol.affine, affine)
        np.testing.assert_array_equal(vol.to_numpy(), voxels)
    assert radi.FLAIR.obs["spacing"].tolist() == ["2,2,3"] * 2
