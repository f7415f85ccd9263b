"""Tests for the pure DICOM series reader in ``radiobject.ingest._dicom``."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from radiobject._errors import IngestError, OptionalDependencyError  # noqa: E402
from radiobject.ingest._dicom import (  # noqa: E402
    DicomSeries,
    find_dicom_series,
    is_dicom_dir,
    read_dicom_series,
)
from tests._dicom_series import (  # noqa: E402
    AXIAL,
    ORIGIN,
    PIXEL_SPACING,
    SAGITTAL,
    SHAPE,
    SLICE_STEP,
    make_volume,
    write_series,
)


def expected_world(iop: Sequence[float], ijk: Sequence[int]) -> np.ndarray:
    """RAS position of voxel ``ijk`` by the DICOM standard's own formula (C.7.6.2.1.1)."""
    i, j, k = ijk
    row, col = np.asarray(iop[:3]), np.asarray(iop[3:])
    ipp_k = np.asarray(ORIGIN) + k * SLICE_STEP * np.cross(row, col)
    lps = ipp_k + i * PIXEL_SPACING[1] * row + j * PIXEL_SPACING[0] * col
    return lps * np.array([-1.0, -1.0, 1.0])


# --- voxels, order, metadata ------------------------------------------------------------------


def test_voxels_match_source_and_are_sorted_by_position(tmp_path: Path) -> None:
    volume = make_volume()
    paths = write_series(tmp_path / "s", volume, series_uid="1.2.3.4")
    # The shuffle really put file names and InstanceNumbers out of positional order.
    by_name = [float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in sorted(paths)]
    assert by_name != sorted(by_name)

    series = read_dicom_series(tmp_path / "s")

    assert isinstance(series, DicomSeries)
    assert series.array.shape == SHAPE
    assert series.array.dtype == np.int16
    np.testing.assert_array_equal(series.array, volume)
    assert series.series_uid == "1.2.3.4"
    assert series.patient_id == "P001"
    assert series.modality == "CT"
    assert series.spacing == pytest.approx((0.7, 0.8, SLICE_STEP))


def test_reversed_positions_still_sort_along_normal(tmp_path: Path) -> None:
    volume = make_volume()
    # Slice k written at a *decreasing* z: sorted order is then k = Z-1 ... 0.
    steps = [-k * SLICE_STEP for k in range(SHAPE[2])]
    write_series(tmp_path / "s", volume, steps=steps)
    series = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(series.array, volume[:, :, ::-1])
    assert series.affine[2, 3] == pytest.approx(ORIGIN[2] - (SHAPE[2] - 1) * SLICE_STEP)
    assert series.affine[2, 2] == pytest.approx(SLICE_STEP)


# --- geometry -----------------------------------------------------------------------------------


def test_axial_affine(tmp_path: Path) -> None:
    write_series(tmp_path / "s", iop=AXIAL)
    series = read_dicom_series(tmp_path / "s")
    expected = np.array(
        [
            [-0.7, 0.0, 0.0, 100.0],
            [0.0, -0.8, 0.0, 120.0],
            [0.0, 0.0, 2.5, 50.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    assert series.affine.dtype == np.float64
    assert series.affine.shape == (4, 4)
    np.testing.assert_allclose(series.affine, expected, atol=1e-6)
    assert nib.aff2axcodes(series.affine) == ("L", "P", "S")


def test_sagittal_affine(tmp_path: Path) -> None:
    # Rows run anterior->posterior (+y LPS), columns head->foot (-z); normal = -x LPS = right.
    write_series(tmp_path / "s", iop=SAGITTAL)
    series = read_dicom_series(tmp_path / "s")
    expected = np.array(
        [
            [0.0, 0.0, 2.5, 100.0],
            [-0.7, 0.0, 0.0, 120.0],
            [0.0, -0.8, 0.0, 50.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    np.testing.assert_allclose(series.affine, expected, atol=1e-6)
    assert nib.aff2axcodes(series.affine) == ("P", "I", "R")
    assert series.spacing == pytest.approx((0.7, 0.8, SLICE_STEP))


def test_oblique_affine_matches_dicom_voxel_positions(tmp_path: Path) -> None:
    a, b = np.deg2rad(20.0), np.deg2rad(35.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rot = rz @ rx
    iop = [*rot[:, 0], *rot[:, 1]]
    write_series(tmp_path / "s", iop=iop)
    series = read_dicom_series(tmp_path / "s")

    for ijk in [(0, 0, 0), (11, 0, 0), (0, 9, 0), (0, 0, 7), (11, 9, 7), (3, 5, 2)]:
        world = series.affine @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(world[:3], expected_world(iop, ijk), atol=1e-4)
    np.testing.assert_allclose(series.affine[3], [0, 0, 0, 1])
    zooms = np.linalg.norm(series.affine[:3, :3], axis=0)
    np.testing.assert_allclose(zooms, series.spacing, atol=1e-5)
    # Negating two rows (LPS -> RAS) keeps DICOM's right-handed frame: det = voxel volume.
    assert np.linalg.det(series.affine[:3, :3]) == pytest.approx(np.prod(series.spacing))


@pytest.mark.parametrize("iop", [AXIAL, SAGITTAL], ids=["axial", "sagittal"])
def test_nifti_round_trip_agrees(tmp_path: Path, iop: Sequence[float]) -> None:
    volume = make_volume()
    write_series(tmp_path / "s", volume, iop=iop)
    series = read_dicom_series(tmp_path / "s")

    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(series.array, series.affine), path)
    img = nib.load(path)

    np.testing.assert_array_equal(np.asarray(img.dataobj), volume)
    np.testing.assert_allclose(img.affine, series.affine, atol=1e-4)
    assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(series.affine)
    assert img.header.get_zooms() == pytest.approx(series.spacing, abs=1e-5)
    for ijk in [(0, 0, 0), (11, 9, 7), (4, 2, 6)]:
        world = img.affine @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(world[:3], expected_world(iop, ijk), atol=1e-3)


def test_rescale_slope_intercept(tmp_path: Path) -> None:
    volume = make_volume()
    write_series(tmp_path / "s", volume, slope=2.0, intercept=-1024.0)
    series = read_dicom_series(tmp_path / "s")
    assert series.array.dtype == np.float32
    np.testing.assert_array_equal(series.array, volume.astype(np.float32) * 2 - 1024)


def test_rescale_per_slice(tmp_path: Path) -> None:
    volume = make_volume()
    write_series(tmp_path / "s", volume, steps=[k * SLICE_STEP for k in range(SHAPE[2])])
    top = max(tmp_path.glob("s/*.dcm"), key=lambda p: pydicom.dcmread(p).ImagePositionPatient[2])
    ds = pydicom.dcmread(top)
    ds.RescaleSlope = 0.5
    ds.save_as(top, enforce_file_format=True)
    series = read_dicom_series(tmp_path / "s")
    assert series.array.dtype == np.float32
    np.testing.assert_array_equal(series.array[..., :-1], volume[..., :-1])
    np.testing.assert_array_equal(series.array[..., -1], volume[..., -1] * np.float32(0.5))


def test_hidden_resource_forks_are_ignored(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    write_series(folder)
    (folder / "._img000.dcm").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    np.testing.assert_array_equal(read_dicom_series(folder).array, make_volume())


def test_single_slice(tmp_path: Path) -> None:
    volume = make_volume((12, 10, 1))
    write_series(tmp_path / "s", volume)
    series = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(series.array, volume)
    assert series.array.shape == (12, 10, 1)


# --- bad inputs --------------------------------------------------------------------------------


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(IngestError, match=r"no DICOM image files found in .*empty"):
        read_dicom_series(tmp_path / "empty")


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="not a folder"):
        read_dicom_series(tmp_path / "nope")


def test_non_dicom_file_only(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "README.txt").write_text("not an image\n" * 20)
    with pytest.raises(IngestError, match=r"no DICOM image files found in .*notes"):
        read_dicom_series(folder)
    assert not is_dicom_dir(folder)


@pytest.mark.parametrize("cut", [100, 400], ids=["in-pixel-data", "in-header"])
def test_truncated_file(tmp_path: Path, cut: int) -> None:
    # pydicom 3 reads a truncated file without complaint: a cut inside PixelData only shows
    # when decoding pixels, a cut in the header silently drops the trailing elements.
    paths = write_series(tmp_path / "s")
    bad = sorted(paths)[3]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) - cut])
    with pytest.raises(IngestError, match=rf"{re.escape(bad.name)}.*(truncated|Re-export)"):
        read_dicom_series(tmp_path / "s")


def test_garbage_dcm_file(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    write_series(folder)
    (folder / "zz_broken.dcm").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(IngestError, match=r"zz_broken\.dcm"):
        read_dicom_series(folder)


def test_two_series_in_one_folder(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_series(folder, series_uid="1.2.3.1", prefix="a")
    write_series(folder, series_uid="1.2.3.2", prefix="b")
    with pytest.raises(IngestError, match=r"holds 2 series .*1\.2\.3\.1.*1\.2\.3\.2.*own folder"):
        read_dicom_series(folder)


def test_uneven_spacing(tmp_path: Path) -> None:
    steps = [0.0, 2.5, 5.0, 7.5, 12.5, 15.0, 17.5, 20.0]  # one slice missing at 10.0
    write_series(tmp_path / "gap", steps=steps)
    with pytest.raises(IngestError, match=r"uneven slice spacing in .*gap"):
        read_dicom_series(tmp_path / "gap")


def test_small_jitter_is_tolerated(tmp_path: Path) -> None:
    steps = [k * SLICE_STEP + (0.005 if k % 2 else 0.0) for k in range(SHAPE[2])]
    write_series(tmp_path / "s", steps=steps)
    series = read_dicom_series(tmp_path / "s")
    assert series.spacing[2] == pytest.approx(SLICE_STEP, abs=0.01)


def test_duplicate_positions(tmp_path: Path) -> None:
    write_series(tmp_path / "s", steps=[0.0] * SHAPE[2])
    with pytest.raises(IngestError, match="share one position"):
        read_dicom_series(tmp_path / "s")


def test_inconsistent_slice_shapes(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    uid = generate_uid()
    write_series(folder, series_uid=uid, prefix="a")
    write_series(folder, make_volume((6, 10, 1)), series_uid=uid, prefix="b", steps=[100.0])
    with pytest.raises(IngestError, match=r"differ in slice shape"):
        read_dicom_series(folder)


def test_inconsistent_orientation(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    uid = generate_uid()
    write_series(folder, series_uid=uid, prefix="a")
    write_series(folder, make_volume((12, 10, 1)), series_uid=uid, prefix="b", iop=SAGITTAL)
    with pytest.raises(IngestError, match=r"differ in ImageOrientationPatient"):
        read_dicom_series(folder)


def test_missing_pydicom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_series(tmp_path / "s")
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(OptionalDependencyError, match=r"pip install radiobject\[dicom\]"):
        read_dicom_series(tmp_path / "s")
    with pytest.raises(OptionalDependencyError):
        find_dicom_series(tmp_path)


# --- discovery ---------------------------------------------------------------------------------


def test_find_dicom_series(tmp_path: Path) -> None:
    first = tmp_path / "patient1" / "ct"
    second = tmp_path / "patient2" / "study" / "series7"
    write_series(first)
    write_series(second)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("hello")
    no_geometry = tmp_path / "report"
    no_geometry.mkdir()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # basic text SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr = Dataset()
    sr.file_meta = meta
    sr.SOPClassUID = meta.MediaStorageSOPClassUID
    sr.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    sr.Modality = "SR"
    sr.save_as(no_geometry / "sr.dcm", enforce_file_format=True)

    assert find_dicom_series(tmp_path) == sorted([first, second])
    assert find_dicom_series(first) == [first]
    assert find_dicom_series(str(tmp_path / "docs")) == []
    assert is_dicom_dir(first)
    assert is_dicom_dir(no_geometry)
    assert not is_dicom_dir(tmp_path / "patient1")
    assert not is_dicom_dir(tmp_path / "missing")
    with pytest.raises(IngestError, match="not a folder"):
        find_dicom_series(tmp_path / "missing")


def test_is_dicom_dir_uses_preamble_without_extension(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    for path in write_series(folder, make_volume((12, 10, 2))):
        path.rename(path.with_suffix(""))
    assert is_dicom_dir(folder)
    assert find_dicom_series(tmp_path) == [folder]
    assert read_dicom_series(folder).array.shape == (12, 10, 2)


def test_geometry_without_pixels_agrees_with_the_series(tmp_path: Path) -> None:
    from radiobject.ingest._dicom import read_dicom_geometry

    volume = np.arange(12 * 10 * 6, dtype=np.int16).reshape(12, 10, 6)
    write_series(tmp_path / "s", volume, origin=(-60.0, -50.0, 20.0), pixel_spacing=(0.8, 0.7))
    shape, affine = read_dicom_geometry(tmp_path / "s")
    series = read_dicom_series(tmp_path / "s")
    assert shape == series.array.shape == (12, 10, 6)
    np.testing.assert_array_equal(affine, series.affine)
