"""Lossless integer storage: whole numbers on disk as narrow integers, values read unchanged."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tiledb
import torch

from radiobject import (
    DtypeError,
    RadiObject,
    Volume,
    VolumeCollection,
    WriteConfig,
    configure,
)
from radiobject.ingest._dicom import read_dicom_series, read_dicom_voxels
from radiobject.ingest._sources import FileSource
from radiobject.ml import DatasetConfig, SegmentationDataset, VolumeCollectionDataset
from radiobject.read import _scaling
from radiobject.read._cache import block_cache
from radiobject.read._region import forget_array
from radiobject.read._scaling import ScaledVoxels, Scaling, integer_plan
from tests._dicom_series import make_volume, write_series

SHAPE = (6, 5, 4)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype and equal bytes, voxel for voxel (whatever the memory order)."""
    as_bytes = [np.ascontiguousarray(x).view(np.uint8) for x in (a, b)]
    return a.dtype == b.dtype and np.array_equal(*as_bytes)


def _grid(values: list[float] | np.ndarray, dtype: str) -> np.ndarray:
    """``values`` repeated over a SHAPE grid (every value present), as ``dtype``."""
    flat = np.resize(np.asarray(values, dtype=dtype), int(np.prod(SHAPE)))
    return flat.reshape(SHAPE)


@pytest.mark.parametrize(
    ("array", "stored"),
    [
        pytest.param(_grid(np.arange(256), "int64"), "uint8", id="uint8-fits"),
        pytest.param(_grid([-1000, 0, 999], "int32"), "int16", id="int16-negative"),
        pytest.param(_grid([-40000, 0, 40000], "int64"), "int32", id="beyond-int16-int32"),
        pytest.param(_grid([0, 3_000_000_000], "uint32"), "uint32", id="uint32-kept"),
        pytest.param(_grid([-(2**40), 2**40], "int64"), "int64", id="beyond-int32-kept"),
        pytest.param(_grid([-1024.0, 0.0, 3071.0], "float32"), "int16", id="ct-floats"),
        pytest.param(_grid([0.0, 200.0], "float64"), "uint8", id="whole-float64"),
        pytest.param(_grid([0.5, 1.0, -3.25], "float32"), "float32", id="fractions-stay"),
        pytest.param(_grid([1.0, np.nan], "float32"), "float32", id="nan-stays"),
        pytest.param(_grid([1.0, np.inf], "float64"), "float64", id="inf-stays"),
        pytest.param(_grid([0.0, 1e10], "float64"), "float64", id="beyond-int32-float-stays"),
        pytest.param(_grid([0.0, 1.0, 2.0], ">f4"), "uint8", id="big-endian-float"),
    ],
)
def test_a_volume_reads_back_every_value_in_its_own_dtype(tmp_path, array, stored):
    vol = Volume.from_numpy(tmp_path / "v", array)
    assert vol.stored_dtype == np.dtype(stored)
    assert vol.dtype == array.dtype.newbyteorder("=")
    out = vol.to_numpy()
    assert out.dtype == vol.dtype
    np.testing.assert_array_equal(out, array)  # NaN equal to NaN, nothing clipped
    np.testing.assert_array_equal(vol[1:3, 2, :], array[1:3, 2, :])


def test_a_bool_mask_is_stored_and_read_as_uint8(tmp_path):
    mask = np.zeros(SHAPE, bool)
    mask[1:3, 1:4, 2] = True
    vol = Volume.from_numpy(tmp_path / "m", mask)
    assert (vol.stored_dtype, vol.dtype) == (np.dtype(np.uint8), np.dtype(np.uint8))
    np.testing.assert_array_equal(vol.to_numpy(), mask.astype(np.uint8))


def test_integers_false_stores_the_array_as_given(tmp_path):
    array = _grid([0.0, 1.0, 2.0], "float64")
    assert Volume.from_numpy(tmp_path / "a", array, integers=False).stored_dtype == np.float64
    with configure(write=WriteConfig(integers=False)):
        assert Volume.from_numpy(tmp_path / "b", array).stored_dtype == np.float64
    assert Volume.from_numpy(tmp_path / "c", array).stored_dtype == np.uint8


def test_reads_return_the_dtype_asked_for(tmp_path):
    array = _grid([-3.0, 7.0], "float64")
    vol = Volume.from_numpy(tmp_path / "v", array)
    assert vol.to_numpy(np.float32).dtype == np.float32
    np.testing.assert_array_equal(vol.to_numpy(np.float32), array.astype(np.float32))
    part = vol.read(((0, 2), (0, 5), (1, 3)), np.int16)
    np.testing.assert_array_equal(part, array[0:2, :, 1:3].astype(np.int16))


def test_the_block_cache_holds_the_stored_integers(tmp_path):
    array = _grid(np.arange(-500, 500), "float32")
    vol = Volume.from_numpy(tmp_path / "v", array)
    before = block_cache().counters.bytes_from_storage
    out = vol.to_numpy()
    assert out.dtype == np.float32
    assert block_cache().counters.bytes_from_storage - before == array.size * 2  # int16


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(np.full((1, 2, 2), 0.5), id="fraction"),
        pytest.param(np.full((1, 2, 2), np.nan), id="nan"),
        pytest.param(np.full((1, 2, 2), 300.0), id="out-of-range"),
        pytest.param(np.full((1, 2, 2), -1, np.int64), id="negative"),
    ],
)
def test_a_region_that_does_not_fit_the_stored_integers_is_refused_not_clipped(tmp_path, data):
    vol = Volume.from_numpy(tmp_path / "v", _grid([0.0, 255.0], "float64"))  # uint8 on disk
    with pytest.raises(DtypeError, match="cannot store exactly"):
        vol.write_region(((0, 1), (0, 2), (0, 2)), data)
    np.testing.assert_array_equal(vol.to_numpy(), _grid([0.0, 255.0], "float64"))


def test_a_region_of_whole_numbers_is_written_into_stored_integers(tmp_path):
    vol = Volume.from_numpy(tmp_path / "v", _grid([0.0, 255.0], "float64"))
    vol.write_region(((0, 1), (0, 2), (0, 2)), np.full((1, 2, 2), 17.0))
    forget_array(vol.uri)
    assert vol.to_numpy()[0, 0, 0] == 17.0
    assert vol.dtype == np.float64


def test_a_created_integer_volume_refuses_fractions(tmp_path):
    vol = Volume.create(tmp_path / "v", SHAPE, np.int16)
    with pytest.raises(DtypeError, match="int16"):
        vol.write_region(((0, 1), (0, 1), (0, 1)), np.full((1, 1, 1), 2.5))


def test_a_volume_written_before_integer_storage_reads_as_before(tmp_path):
    array = _grid([0.5, 2.0, -7.0], "float32")
    vol = Volume.from_numpy(tmp_path / "v", array)
    with tiledb.open(vol.uri, "w") as arr:  # what older versions wrote: no logical dtype
        del arr.meta[_scaling.META_DTYPE]
    forget_array(vol.uri)
    assert vol.scaling == Scaling(np.dtype(np.float32), np.dtype(np.float32))
    np.testing.assert_array_equal(vol.to_numpy(), array)


def test_scaled_integers_decode_to_float32_through_float64_one_slab_at_a_time(monkeypatch):
    raw = np.arange(-300, 300, dtype=np.int16).reshape(10, 6, 10)
    scaled = ScaledVoxels(raw, 0.3700000047683716, -12.5, np.dtype(np.float64))
    whole = scaled.scaling().decode(raw, np.float32)
    monkeypatch.setattr(_scaling, "_CHUNK", 7)  # many slabs
    np.testing.assert_array_equal(scaled.scaling().decode(raw, np.float32), whole)
    np.testing.assert_array_equal(whole, scaled.values().astype(np.float32))


# -- NIfTI -----------------------------------------------------------------------------------


def _nifti(path: Path, raw: np.ndarray, slope: float, inter: float) -> Path:
    img = nib.Nifti1Image(raw, np.diag([0.9, 1.1, 2.0, 1.0]))
    img.header.set_slope_inter(slope, inter)
    nib.save(img, str(path))
    return path


def _brain(dtype: str = "int16") -> np.ndarray:
    """A brain-like integer volume: a smooth field of intensities with a noisy rim."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (20, 24, 16)), indexing="ij")
    field = 900 * np.exp(-(x**2 + y**2 + z**2)) + 40 * np.sin(9 * x) * np.cos(7 * y)
    noise = np.random.default_rng(0).integers(-30, 30, field.shape)
    return (field + noise).astype(dtype)


@pytest.mark.parametrize(
    ("slope", "inter", "stored"),
    [
        pytest.param(0.37, -12.5, "int16", id="slope-and-intercept"),
        pytest.param(1.0, -1024.0, "int16", id="ct-intercept"),
        pytest.param(2.0, 0.0, "int16", id="slope-only"),
        pytest.param(1.0, 0.0, "int16", id="unscaled"),
    ],
)
def test_a_scaled_nifti_is_stored_as_its_integers_and_reads_nibabels_values(
    tmp_path, slope, inter, stored
):
    path = _nifti(tmp_path / "b.nii.gz", _brain(), slope, inter)
    expected = np.asanyarray(nib.load(str(path)).dataobj)  # nibabel's float path
    voxels, _ = FileSource(path)()
    vol = Volume.from_numpy(tmp_path / "v", voxels)
    assert vol.stored_dtype == np.dtype(stored)
    assert vol.dtype == expected.dtype
    out = vol.to_numpy()
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)  # voxel for voxel, bit for bit
    assert _same_bits(out, expected)
    np.testing.assert_array_equal(vol.to_numpy(np.float32), expected.astype(np.float32))


def test_integers_false_stores_a_scaled_nifti_as_nibabels_floats(tmp_path):
    path = _nifti(tmp_path / "b.nii.gz", _brain(), 0.37, -12.5)
    voxels, _ = FileSource(path)()
    vol = Volume.from_numpy(tmp_path / "v", voxels, integers=False)
    assert vol.stored_dtype == np.float64
    np.testing.assert_array_equal(vol.to_numpy(), np.asanyarray(nib.load(str(path)).dataobj))


def test_an_ingested_nifti_collection_keeps_integers_and_nibabels_dtype(tmp_path):
    raws = {"sub-01": _brain(), "sub-02": _brain() + 7}
    for sid, raw in raws.items():
        _nifti(tmp_path / f"{sid}_T1w.nii.gz", raw, 0.25, 100.0)
    coll = VolumeCollection.from_niftis(
        tmp_path / "T1w", str(tmp_path / "*.nii.gz"), progress=False
    )
    for sid in raws:
        expected = np.asanyarray(nib.load(str(tmp_path / f"{sid}_T1w.nii.gz")).dataobj)
        vol = coll.volume(coll.obs.set_index("obs_subject_id").loc[sid, "obs_id"])
        assert (vol.stored_dtype, vol.dtype) == (np.dtype(np.int16), expected.dtype)
        np.testing.assert_array_equal(vol.to_numpy(), expected)
    assert set(coll.obs["dtype"]) == {str(expected.dtype)}


def test_an_integer_nifti_mask_is_still_a_mask_with_its_foreground(tmp_path):
    labels = np.zeros((16, 16, 12), np.int16)
    labels[4:9, 5:10, 3:6] = 1
    labels[10:12, 2:4, 7:9] = 2
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(tmp_path / "sub-01_lesion.nii.gz"))
    image = _brain()[:16, :16, :12]
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "sub-01_T1w.nii.gz"))
    radi = RadiObject.from_images(
        tmp_path / "r",
        {"T1w": str(tmp_path / "*_T1w.nii.gz"), "regions": str(tmp_path / "*_lesion.nii.gz")},
        progress=False,
    )
    assert radi.regions.is_mask
    assert not radi.T1w.is_mask
    vol = radi.regions.volume(radi.regions.obs_ids[0])
    assert (vol.stored_dtype, vol.dtype) == (np.dtype(np.uint8), np.dtype(np.int16))
    config = DatasetConfig(loading_mode="patch", patch_size=(4, 4, 4), patches_per_volume=8)
    ds = SegmentationDataset(
        radi.T1w, radi.regions, config, foreground_sampling=True, foreground_probability=1.0
    )
    for i in range(len(ds)):
        sample = ds[i]
        assert sample["mask"].dtype == torch.int64
        assert sample["mask"].any()
        x, y, z = sample["patch_start"].tolist()
        np.testing.assert_array_equal(
            sample["mask"][0].numpy(), labels[x : x + 4, y : y + 4, z : z + 4]
        )


# -- DICOM -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slope", "intercept", "stored"),
    [
        pytest.param(1.0, -1024.0, "int16", id="ct-intercept"),
        pytest.param(0.5, 3.25, "int16", id="mr-slope"),
        pytest.param(1.0, 0.0, "int16", id="unscaled"),
    ],
)
def test_a_dicom_series_reads_the_readers_float32_voxel_for_voxel(
    tmp_path, slope, intercept, stored
):
    write_series(tmp_path / "s", slope=slope, intercept=intercept)
    expected = read_dicom_series(tmp_path / "s").array
    voxels, _ = read_dicom_voxels(tmp_path / "s")
    vol = Volume.from_numpy(tmp_path / "v", voxels)
    assert vol.stored_dtype == np.dtype(stored)
    assert vol.dtype == expected.dtype
    assert _same_bits(vol.to_numpy(), expected)
    if (slope, intercept) != (1.0, 0.0):
        assert expected.dtype == np.float32
        assert not np.array_equal(expected, make_volume())  # the rescale did change values


def test_per_slice_pet_slopes_stay_float32(tmp_path):
    write_series(tmp_path / "s", slope=0.5, shuffle=False)
    for k, path in enumerate(sorted((tmp_path / "s").iterdir())):
        ds = pydicom.dcmread(path)
        ds.RescaleSlope = 0.5 + 0.125 * k  # each slice its own scale
        ds.save_as(path)
    expected = read_dicom_series(tmp_path / "s").array
    voxels, _ = read_dicom_voxels(tmp_path / "s")
    assert isinstance(voxels, np.ndarray)
    assert voxels.dtype == np.float32
    vol = Volume.from_numpy(tmp_path / "v", voxels)
    assert vol.stored_dtype == np.float32
    np.testing.assert_array_equal(vol.to_numpy(), expected)


def test_an_ingested_ct_series_keeps_integers(tmp_path):
    write_series(tmp_path / "dicom" / "sub-01", slope=1.0, intercept=-1024.0)
    coll = VolumeCollection.from_dicoms(tmp_path / "CT", tmp_path / "dicom", progress=False)
    vol = coll.volume(coll.obs_ids[0])
    expected = read_dicom_series(tmp_path / "dicom" / "sub-01").array
    assert (vol.stored_dtype, vol.dtype) == (np.dtype(np.int16), np.dtype(np.float32))
    np.testing.assert_array_equal(vol.to_numpy(), expected)


# -- ML tensors ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["full_volume", "patch", "slice_2d"])
def test_dataset_tensors_equal_those_of_float_storage(tmp_path, mode):
    images = {f"sub-{i}": _brain() + i for i in range(2)}
    paths = {}
    for sid, raw in images.items():
        paths[sid] = _nifti(tmp_path / f"{sid}_T1w.nii.gz", raw, 0.37, -12.5)
        _nifti(tmp_path / f"{sid}_CT.nii.gz", raw, 1.0, -1024.0)

    def cohort(name: str, integers: bool) -> RadiObject:
        with configure(write=WriteConfig(integers=integers)):
            return RadiObject.from_images(
                tmp_path / name,
                {"T1w": str(tmp_path / "*_T1w.nii.gz"), "CT": str(tmp_path / "*_CT.nii.gz")},
                progress=False,
            )

    ints, floats = cohort("ints", True), cohort("floats", False)
    assert ints.T1w.volume(ints.T1w.obs_ids[0]).stored_dtype == np.int16
    assert floats.T1w.volume(floats.T1w.obs_ids[0]).stored_dtype == np.float64
    config = DatasetConfig(
        loading_mode=mode,
        patch_size=(8, 8, 8) if mode == "patch" else None,
        patches_per_volume=3 if mode == "patch" else 1,
    )
    for channels in (["T1w"], ["T1w", "CT"]):
        a = VolumeCollectionDataset([ints.collection(c) for c in channels], config)
        b = VolumeCollectionDataset([floats.collection(c) for c in channels], config)
        assert len(a) == len(b)
        for i in range(len(a)):
            x, y = a[i]["image"], b[i]["image"]
            assert x.dtype == y.dtype == torch.float32
            assert torch.equal(x, y)


def test_integer_plan_is_pure_and_says_what_it_stores():
    stored, scaling = integer_plan(_grid([-2.0, 5.0], "float32"))
    assert (stored.dtype, scaling) == (
        np.dtype(np.int8),
        Scaling(np.dtype(np.int8), np.dtype(np.float32)),
    )
    raw = np.array([[[0, 4095]]], np.uint16)
    stored, scaling = integer_plan(ScaledVoxels(raw, 0.5, 1.0, np.dtype(np.float32)))
    assert stored.dtype == np.uint16
    assert (scaling.scale, scaling.offset) == (0.5, 1.0)
    np.testing.assert_array_equal(scaling.decode(stored), np.array([[[1.0, 2048.5]]], np.float32))


def test_a_copied_scaled_volume_keeps_its_integers_and_values(tmp_path):
    path = _nifti(tmp_path / "b.nii.gz", _brain(), 0.37, -12.5)
    voxels, _ = FileSource(path)()
    source = Volume.from_numpy(tmp_path / "v", voxels)
    copy = VolumeCollection.from_volumes(tmp_path / "c", {"sub-01": source}, name="T1w")
    vol = copy.volume(copy.obs_ids[0])
    assert (vol.stored_dtype, vol.scaling) == (source.stored_dtype, source.scaling)
    assert _same_bits(vol.to_numpy(), np.asanyarray(nib.load(str(path)).dataobj))


def test_sample_cohort_tensors_equal_those_of_float_storage(tmp_path):
    from radiobject.data import make_sample_radiobject

    def cohort(name: str, integers: bool) -> RadiObject:
        with configure(write=WriteConfig(integers=integers)):
            return make_sample_radiobject(
                tmp_path / name, n_subjects=2, shape=(24, 24, 16), seed=3, progress=False
            )

    ints, floats = cohort("ints", True), cohort("floats", False)
    vol = ints.T1w.volume(ints.T1w.obs_ids[0])
    assert (vol.stored_dtype, vol.dtype) == (np.dtype(np.uint16), np.dtype(np.float32))
    config = DatasetConfig(loading_mode="patch", patch_size=(8, 8, 8), patches_per_volume=4)
    a = SegmentationDataset([ints.T1w, ints.FLAIR], ints.seg, config)
    b = SegmentationDataset([floats.T1w, floats.FLAIR], floats.seg, config)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"])
        assert torch.equal(x["mask"], y["mask"])


def test_write_config_integers_must_be_a_bool():
    from radiobject import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"WriteConfig\.integers must be a bool"):
        WriteConfig(integers="yes")


# -- the real MNI152 template (nilearn ships it) ----------------------------------------------


def _mni152(kind: str) -> Path:
    """nilearn's bundled ICBM152 2009a template (``t1`` or ``gm``), found without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("nilearn (a dev dependency) is not installed: it carries the MNI152 template")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return folder / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"


def test_the_mni152_template_keeps_every_voxel_as_stored_and_as_a_scanner_would_scale_it(
    tmp_path,
):
    t1, gm = _mni152("t1"), _mni152("gm")
    raw = np.asanyarray(nib.load(str(t1)).dataobj)
    assert raw.shape == (197, 233, 189)
    # the same anatomy as a scanner writes it: int16 with scl_slope/scl_inter
    scanner = _nifti(tmp_path / "scanner.nii.gz", raw.astype(np.int16) * 9 - 300, 0.37, -12.5)
    radi = RadiObject.from_images(
        tmp_path / "radi",
        {"T1w": str(t1), "GM": str(gm), "scanner": str(scanner)},
        progress=False,
    )
    for name, path, stored in (
        ("T1w", t1, "uint8"),
        ("GM", gm, "uint8"),
        ("scanner", scanner, "int16"),
    ):
        expected = np.asanyarray(nib.load(str(path)).dataobj)
        vol = radi.collection(name).volume(radi.collection(name).obs_ids[0])
        assert vol.stored_dtype == np.dtype(stored)
        assert _same_bits(vol.to_numpy(), expected)
        box = (slice(60, 124), slice(70, 134), slice(50, 114))
        assert _same_bits(vol[box], expected[box])
    # what the loaders give: float32 of the same values
    config = DatasetConfig(loading_mode="full_volume")
    tensor = VolumeCollectionDataset([radi.collection("scanner")], config)[0]["image"]
    expected = np.asanyarray(nib.load(str(scanner)).dataobj).astype(np.float32)
    assert torch.equal(tensor[0], torch.from_numpy(expected))
