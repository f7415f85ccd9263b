"""A DICOM series writer for tests: single-frame CT slices of a known volume (pydicom)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

SHAPE = (12, 10, 8)  # X (columns), Y (rows), Z (slices): all different so mix-ups show
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
PIXEL_SPACING = (0.8, 0.7)  # DICOM order: (between rows, between columns)
SLICE_STEP = 2.5
ORIGIN = (-100.0, -120.0, 50.0)  # LPS position of the first slice


def make_volume(shape: Sequence[int] = SHAPE) -> np.ndarray:
    """A NIfTI-ordered ``(X, Y, Z)`` volume whose voxels all differ (mod 3000)."""
    return (np.arange(int(np.prod(shape))).reshape(shape) % 3000).astype(np.int16)


def write_series(
    folder: Path,
    volume: np.ndarray | None = None,
    *,
    iop: Sequence[float] = AXIAL,
    pixel_spacing: Sequence[float] = PIXEL_SPACING,
    origin: Sequence[float] = ORIGIN,
    steps: Sequence[float] | None = None,
    series_uid: str | None = None,
    slope: float = 1.0,
    intercept: float = 0.0,
    shuffle: bool = True,
    prefix: str = "",
) -> list[Path]:
    """Write ``volume`` (indexed ``[i, j, k]`` as in NIfTI) as single-frame CT slices.

    Slice ``k`` holds ``volume[:, :, k].T`` (rows x columns) at ``origin + offset_k * normal``
    where the offsets are ``steps`` (default ``k * SLICE_STEP``). With ``shuffle`` the files
    get random names and InstanceNumbers so only the positions give the right order.
    """
    volume = make_volume() if volume is None else volume
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    n = volume.shape[2]
    offsets = [k * SLICE_STEP for k in range(n)] if steps is None else list(steps)
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    rng = np.random.default_rng(0)
    names = rng.permutation(n) if shuffle else np.arange(n)
    paths = []
    for k in rng.permutation(n) if shuffle else range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.PatientID = "P001"
        ds.Modality = "CT"
        ds.InstanceNumber = int(names[k]) + 1
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + offsets[k] * normal]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
        ds.SliceThickness = 99.0  # deliberately wrong: spacing must come from positions
        plane = np.ascontiguousarray(volume[:, :, k].T)
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.PixelData = plane.astype("<i2").tobytes()
        path = folder / f"{prefix}img{int(names[k]):03d}_{rng.integers(1e6):06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
