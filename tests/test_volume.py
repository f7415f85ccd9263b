"""Volume: one 3D/4D dense TileDB array, read by region."""

from __future__ import annotations

import pickle

import nibabel as nib
import numpy as np
import pytest

from radiobject import (
    AlreadyExistsError,
    NotFoundError,
    OutOfBoundsError,
    ShapeError,
    SliceOrientation,
    TileConfig,
    Volume,
    WriteConfig,
    configure,
)
from tests.conftest import arange_volume

SHAPE = (20, 16, 12)


@pytest.fixture
def data() -> np.ndarray:
    return arange_volume(SHAPE, "float32")


@pytest.fixture
def vol(tmp_path, data) -> Volume:
    # small tiles, so reads cross tile borders
    return Volume.from_numpy(tmp_path / "v", data, tile=TileConfig(extents=(8, 8, 8)))


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int16", "uint8", "float32", "float64", "int32"])
def test_round_trip_3d(tmp_path, dtype):
    data = (arange_volume(SHAPE, "int64") % 251).astype(dtype)
    vol = Volume.from_numpy(tmp_path / "v", data)
    out = vol.to_numpy()
    assert out.dtype == np.dtype(dtype)
    assert vol.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, data)


def test_round_trip_bool_mask(tmp_path):
    mask = arange_volume(SHAPE, "int64") % 7 == 0
    vol = Volume.from_numpy(tmp_path / "v", mask)
    out = vol.to_numpy()
    assert out.dtype.kind in "bu"
    np.testing.assert_array_equal(out.astype(bool), mask)
    assert int(out.sum()) == int(mask.sum())


def test_round_trip_4d(tmp_path):
    data = arange_volume((8, 6, 4, 3), "int16")
    vol = Volume.from_numpy(tmp_path / "v", data)
    assert vol.shape == (8, 6, 4, 3)
    assert vol.ndim == 4
    np.testing.assert_array_equal(vol.to_numpy(), data)
    np.testing.assert_array_equal(vol[1:3, :, 2, 1:], data[1:3, :, 2, 1:])
    np.testing.assert_array_equal(vol.axial(2), data[:, :, 2])
    assert vol.axial(2).shape == (8, 6, 3)


def test_big_endian_input(tmp_path):
    data = arange_volume(SHAPE, "int16").astype(">i2")
    vol = Volume.from_numpy(tmp_path / "v", data)
    assert vol.dtype == np.dtype("int16")
    np.testing.assert_array_equal(vol.to_numpy(), data)


def test_non_contiguous_input(tmp_path):
    big = arange_volume((20, 16, 24), "float32")
    data = big[:, :, ::2]
    vol = Volume.from_numpy(tmp_path / "v", data)
    np.testing.assert_array_equal(vol.to_numpy(), data)


# --- indexing equals numpy --------------------------------------------------------------------


@pytest.mark.parametrize(
    "index",
    [
        (0,),
        (-1,),
        (3, 4, 5),
        (-1, -1, -1),
        (slice(2, 9), slice(5, 16), slice(0, 12)),
        (slice(7, 17), slice(None), 4),
        (slice(-5, None), slice(None, -3), slice(-12, 12)),
        (Ellipsis, 3),
        (2, Ellipsis),
        (1, Ellipsis, slice(2, 5)),
        (slice(None), 7),
        (slice(None), -16, slice(None)),
        (Ellipsis,),
        (np.int64(4), np.int32(-2)),
        slice(3, 4),
        5,
    ],
    ids=repr,
)
def test_indexing_equals_numpy(vol, data, index):
    out = vol[index]
    expected = data[index]
    assert out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)


def test_every_voxel_of_a_tile_crossing_patch(vol, data):
    patch = vol[6:10, 7:9, 7:12]
    # arange values prove where each voxel came from
    x, y, z = np.unravel_index(patch.astype(np.int64), SHAPE)
    assert (x.min(), x.max()) == (6, 9)
    assert (y.min(), y.max()) == (7, 8)
    assert (z.min(), z.max()) == (7, 11)
    np.testing.assert_array_equal(patch, data[6:10, 7:9, 7:12])


def test_planes(vol, data):
    np.testing.assert_array_equal(vol.axial(5), data[:, :, 5])
    np.testing.assert_array_equal(vol.sagittal(3), data[3, :, :])
    np.testing.assert_array_equal(vol.coronal(-1), data[:, -1, :])
    assert vol.axial(0).shape == (20, 16)
    assert vol.sagittal(0).shape == (16, 12)
    assert vol.coronal(0).shape == (20, 12)


def test_read_with_bounds(vol, data):
    np.testing.assert_array_equal(vol.read([(1, 4), (0, 16), (11, 12)]), data[1:4, :, 11:12])


# --- bad indices ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "match"),
    [
        ((20,), r"index 20 on axis x is out of bounds .* shape \(20, 16, 12\) \(valid: 0..19\)"),
        ((0, -17), r"index -17 on axis y is out of bounds"),
        ((0, 0, 12), r"index 12 on axis z is out of bounds"),
        ((slice(0, 21),), r"slice 0:21 on axis x is out of bounds"),
        ((slice(None), slice(-17, None)), r"slice -17:None on axis y is out of bounds"),
        ((0, 0, 0, 0), r"too many indices \(4\)"),
    ],
)
def test_out_of_bounds(vol, index, match):
    with pytest.raises(OutOfBoundsError, match=match):
        vol[index]
    with pytest.raises(IndexError):  # also the builtin, for code that expects numpy's
        vol[index]


def test_out_of_bounds_names_the_volume(vol):
    with pytest.raises(OutOfBoundsError, match=vol.uri):
        vol.axial(12)


@pytest.mark.parametrize(
    ("index", "match"),
    [
        ((slice(None, None, 2),), "step 1 only, got step 2"),
        ((slice(None), slice(None, None, -1)), "step 1 only, got step -1"),
        ((slice(5, 5),), "empty slice 5:5 on axis x"),
        (([1, 2],), "indexed by ints and slices"),
        ((1.5,), "indexed by ints and slices"),
    ],
)
def test_bad_index_is_a_shape_error(vol, index, match):
    with pytest.raises(ShapeError, match=match):
        vol[index]


# --- metadata ---------------------------------------------------------------------------------


def test_default_geometry(vol):
    assert vol.shape == SHAPE
    assert vol.dtype == np.float32
    np.testing.assert_array_equal(vol.affine, np.eye(4))
    assert vol.spacing == (1.0, 1.0, 1.0)
    assert vol.orientation == "RAS"


def test_spacing_without_affine(tmp_path, data):
    vol = Volume.from_numpy(tmp_path / "v", data, spacing=(0.5, 0.75, 2.0))
    assert vol.spacing == (0.5, 0.75, 2.0)
    np.testing.assert_array_equal(vol.affine, np.diag([0.5, 0.75, 2.0, 1.0]))


def test_lps_affine(tmp_path, data):
    affine = np.diag([-0.9, -0.9, 3.0, 1.0])
    affine[:3, 3] = [90.0, 120.0, -60.0]
    vol = Volume.from_numpy(tmp_path / "v", data, affine=affine)
    assert vol.orientation == "LPS"
    assert vol.spacing == pytest.approx((0.9, 0.9, 3.0))
    np.testing.assert_array_equal(vol.affine, affine)
    assert vol.affine.dtype == np.float64


def test_oblique_affine_spacing(tmp_path, data):
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([2.0, 3.0, 4.0])
    vol = Volume.from_numpy(tmp_path / "v", data, affine=affine)
    assert vol.spacing == pytest.approx((2.0, 3.0, 4.0))
    assert vol.orientation == "RAS"


def test_user_metadata(tmp_path, data):
    vol = Volume.from_numpy(tmp_path / "v", data, metadata={"modality": "CT", "n": 3, "x": [1]})
    assert vol.metadata["modality"] == "CT"
    assert vol.metadata["n"] == 3
    assert vol.metadata["x"] == "[1]"


def test_repr_and_pickle(vol, data):
    assert repr(vol) == f"Volume({vol.uri!r})"
    clone = pickle.loads(pickle.dumps(vol))
    assert clone.uri == vol.uri
    np.testing.assert_array_equal(clone[1, 2], data[1, 2])


# --- tiles ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "tiles"),
    [
        (SliceOrientation.AXIAL, (20, 16, 1)),
        (SliceOrientation.SAGITTAL, (1, 16, 12)),
        (SliceOrientation.CORONAL, (20, 1, 12)),
        (SliceOrientation.ISOTROPIC, (20, 16, 12)),
    ],
)
def test_tile_shape_from_config(tmp_path, data, orientation, tiles):
    vol = Volume.from_numpy(tmp_path / "a", data, tile=TileConfig(orientation=orientation))
    assert vol.tile_shape == tiles
    with configure(write=WriteConfig(tile=TileConfig(orientation=orientation))):
        from_config = Volume.from_numpy(tmp_path / "b", data)
    assert from_config.tile_shape == tiles
    np.testing.assert_array_equal(from_config.axial(3), data[:, :, 3])


@pytest.mark.parametrize("row_major_fallback", [False, True])
def test_axial_tiles_are_column_major_and_read_right(tmp_path, monkeypatch, row_major_fallback):
    import tiledb

    import radiobject.read._storage

    if row_major_fallback:  # a TileDB-Py without the core query object: read_subarray
        monkeypatch.setattr(radiobject.read._storage, "_read_into", lambda *a: None)
    data = arange_volume((20, 16, 12, 2), "float32")
    vol = Volume.from_numpy(tmp_path / "a", data, tile=TileConfig(orientation="axial"))
    assert tiledb.ArraySchema.load(vol.uri).cell_order == "col-major"
    rng = np.random.default_rng(0)
    for _ in range(20):  # cold, off the tile grid, then touched again and cached
        lo = [int(rng.integers(0, n)) for n in data.shape]
        hi = [int(rng.integers(a + 1, n + 1)) for a, n in zip(lo, data.shape, strict=True)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        np.testing.assert_array_equal(vol[box], data[box])
        np.testing.assert_array_equal(vol[box], data[box])
    np.testing.assert_array_equal(vol.axial(5), data[:, :, 5])
    np.testing.assert_array_equal(vol.to_numpy(), data)
    with configure(read={"cache_mb": 0}):
        np.testing.assert_array_equal(vol.to_numpy(), data)


# --- NIfTI ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii"])
def test_to_nifti_round_trip(tmp_path, name):
    data = arange_volume(SHAPE, "int16")
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    affine[:3, 3] = [10.0, 20.0, -30.0]
    vol = Volume.from_numpy(tmp_path / "v", data, affine=affine)
    path = vol.to_nifti(tmp_path / name)
    img = nib.load(path)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), data)
    assert np.asanyarray(img.dataobj).dtype == np.int16
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    assert img.header.get_zooms() == pytest.approx((0.8, 0.8, 2.5))
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")


def test_to_nifti_4d(tmp_path):
    data = arange_volume((6, 5, 4, 3), "float32")
    vol = Volume.from_numpy(tmp_path / "v", data, spacing=(2.0, 2.0, 2.0))
    img = nib.load(vol.to_nifti(tmp_path / "v.nii.gz"))
    np.testing.assert_array_equal(img.get_fdata(), data)
    assert img.header.get_zooms()[:3] == pytest.approx((2.0, 2.0, 2.0))


# --- bad input --------------------------------------------------------------------------------


def test_existing_uri(tmp_path, data):
    Volume.from_numpy(tmp_path / "v", data)
    with pytest.raises(AlreadyExistsError, match="already exists"):
        Volume.from_numpy(tmp_path / "v", data + 1)
    with pytest.raises(FileExistsError):
        Volume.from_numpy(tmp_path / "v", data + 1)
    np.testing.assert_array_equal(Volume(tmp_path / "v").to_numpy(), data)  # untouched


def test_nothing_at_uri(tmp_path):
    vol = Volume(tmp_path / "nothing")  # lazy: opening costs nothing
    with pytest.raises(NotFoundError, match="nothing is stored there") as info:
        vol.shape  # noqa: B018
    assert str(tmp_path / "nothing") in str(info.value)
    with pytest.raises(FileNotFoundError):
        vol.to_numpy()


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((4, 4)), r"3D or 4D array, got shape \(4, 4\)"),
        (np.zeros((2, 2, 2, 2, 2)), r"3D or 4D array, got shape \(2, 2, 2, 2, 2\)"),
        (np.zeros((4, 0, 4)), r"non-empty"),
        (np.array([[["a"]]]), r"numeric, got dtype <U1"),
        (np.zeros((2, 2, 2), dtype=complex), r"numeric, got dtype complex128"),
    ],
)
def test_bad_arrays(tmp_path, array, match):
    with pytest.raises(ShapeError, match=match):
        Volume.from_numpy(tmp_path / "v", array)
    assert not (tmp_path / "v").exists()


def test_bad_affine(tmp_path, data):
    with pytest.raises(ShapeError, match=r"affine must be 4x4, got shape \(3, 3\)"):
        Volume.from_numpy(tmp_path / "v", data, affine=np.eye(3))
    assert not (tmp_path / "v").exists()
