"""Read a folder of single-frame DICOM slices into a voxel array and a NIfTI-style affine.

This module is a pure reader: it knows nothing about TileDB. The result follows nibabel's
NIfTI conventions: ``array[i, j, k]`` with ``i`` along a DICOM row (the column index), ``j``
down a column (the row index) and ``k`` across slices sorted along the slice normal, and a
4x4 affine to RAS+ millimetres. Every voxel lands at the world position the DICOM tags give
it; converters such as dcm2niix may store an axis flipped, which changes the array and
affine but not those positions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radiobject._errors import IngestError, OptionalDependencyError
from radiobject.read._scaling import ScaledVoxels

__all__ = [
    "DicomSeries",
    "find_dicom_series",
    "is_dicom_dir",
    "read_dicom_geometry",
    "read_dicom_series",
    "read_dicom_voxels",
]

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_NEEDED_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "PixelData")


@dataclass(frozen=True, eq=False)
class DicomSeries:
    """One DICOM series as a voxel array plus its geometry.

    Attributes:
        array: ``(X, Y, Z)`` voxels, indexed ``array[i, j, k]`` like a NIfTI image in nibabel.
        affine: 4x4 float64 matrix mapping voxel ``(i, j, k)`` to RAS+ world millimetres.
        spacing: Voxel size in mm along ``i``, ``j`` and ``k``.
        series_uid: The SeriesInstanceUID shared by every slice.
        patient_id: PatientID, or ``""`` when absent.
        modality: Modality (``"CT"``, ``"MR"``, ...), or ``""`` when absent.
    """

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    series_uid: str
    patient_id: str
    modality: str


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as e:
        raise OptionalDependencyError(
            "reading DICOM needs pydicom: pip install radiobject[dicom]"
        ) from e
    return pydicom


def _looks_like_dicom(path: Path) -> bool:
    """True for a regular file with a ``.dcm`` name or the ``DICM`` magic at byte 128."""
    if not path.is_file():
        return False
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _dicom_files(folder: Path) -> list[Path]:
    # Hidden files include macOS "._x.dcm" resource forks, which are not DICOM.
    return sorted(
        p for p in folder.iterdir() if not p.name.startswith(".") and _looks_like_dicom(p)
    )


def is_dicom_dir(path: str | os.PathLike[str]) -> bool:
    """Tell whether a folder directly contains at least one DICOM file.

    A file counts when its name ends in ``.dcm`` or it carries the ``DICM`` preamble at
    byte offset 128. Sub-folders are not searched, and nothing is parsed.

    Args:
        path: The folder to look at.

    Returns:
        ``True`` if ``path`` is a folder holding a DICOM file, else ``False``.
    """
    folder = Path(path)
    return folder.is_dir() and bool(_dicom_files(folder))


def find_dicom_series(root: str | os.PathLike[str]) -> list[Path]:
    """List the folders under ``root`` (``root`` included) that directly hold DICOM images.

    A folder qualifies when one of its files is readable by pydicom and has an
    ImagePositionPatient, so DICOMDIR indexes and structured reports alone do not count.

    Args:
        root: The folder to search recursively.

    Returns:
        The qualifying folders, sorted.

    Raises:
        IngestError: ``root`` is not a folder.
        OptionalDependencyError: pydicom is not installed.
    """
    pydicom = _pydicom()
    top = Path(root)
    if not top.is_dir():
        raise IngestError(f"cannot search {str(top)!r} for DICOM series: it is not a folder")
    found = []
    for dirpath, _, _ in os.walk(top):
        for path in _dicom_files(Path(dirpath)):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            except Exception:
                continue
            if "ImagePositionPatient" in ds:
                found.append(Path(dirpath))
                break
    return sorted(found)


def _read_slices(folder: Path, pydicom: Any, pixels: bool = True) -> list[Any]:
    """Read every DICOM image in ``folder`` and check the tags the geometry needs.

    Each slice is ``(path, dataset, pixels or None, (rows, columns))``; with ``pixels=False``
    the files are read up to their pixel data only.
    """
    needed = _NEEDED_TAGS if pixels else (*_NEEDED_TAGS[:-1], "Rows", "Columns")
    slices = []
    for path in _dicom_files(folder):
        try:
            ds = pydicom.dcmread(
                path, force=path.suffix.lower() == ".dcm", stop_before_pixels=not pixels
            )
            if ds.get("SOPClassUID") == _DICOMDIR_SOP_CLASS or path.name == "DICOMDIR":
                continue
            missing = [t for t in needed if t not in ds]
            if missing:
                raise IngestError(
                    f"DICOM file {str(path)!r} lacks {', '.join(missing)}: it is truncated or "
                    "not an image slice with geometry. Re-export it or move it out of the folder"
                )
            if int(ds.get("NumberOfFrames", 1) or 1) > 1:
                raise IngestError(
                    f"DICOM file {str(path)!r} is multi-frame; only single-frame slices are "
                    "supported. Convert it (e.g. with dcm2niix) and ingest the NIfTI"
                )
            px = ds.pixel_array if pixels else None
            plane = px.shape if px is not None else (int(ds.Rows), int(ds.Columns))
        except IngestError:
            raise
        except Exception as e:
            raise IngestError(
                f"cannot read DICOM file {str(path)!r} ({type(e).__name__}: {e}); it may be "
                "truncated or corrupt. Re-export it or remove it from the folder"
            ) from e
        if len(plane) != 2:
            raise IngestError(
                f"DICOM file {str(path)!r} has pixel data of shape {plane}, not a single "
                "grey-level 2D slice; colour and multi-frame images are not supported"
            )
        slices.append((path, ds, px, plane))
    if not slices:
        raise IngestError(
            f"no DICOM image files found in {str(folder)!r}. Point at a folder that directly "
            "holds the .dcm slices of one series (find_dicom_series(root) lists them)"
        )
    return slices


def _check_same(folder: Path, slices: list[Any], what: str, key: Any, tol: float = 0.0) -> None:
    ref = np.asarray(key(slices[0]), dtype=float)
    for entry in slices[1:]:
        path = entry[0]
        val = np.asarray(key(entry), dtype=float)
        if val.shape != ref.shape or not np.allclose(val, ref, rtol=0.0, atol=tol):
            raise IngestError(
                f"slices in {str(folder)!r} differ in {what}: {slices[0][0].name} has "
                f"{ref.tolist()}, {path.name} has {val.tolist()}. A series folder must hold "
                "slices of one acquisition only; move the odd files out"
            )


def _geometry(where: Path, slices: list[Any]) -> tuple[list[Any], np.ndarray, float, list[str]]:
    """Check one series' slices agree; sort them along the normal; return the RAS+ affine.

    Returns ``(sorted slices, affine, slice spacing, series uids)``.
    """
    uids = sorted({str(ds.get("SeriesInstanceUID", "")) for _, ds, _, _ in slices})
    if len(uids) > 1:
        raise IngestError(
            f"folder {str(where)!r} holds {len(uids)} series (SeriesInstanceUIDs {uids}); "
            "put each series in its own folder"
        )
    _check_same(where, slices, "slice shape (Rows, Columns)", lambda s: s[3])
    _check_same(
        where, slices, "ImageOrientationPatient", lambda s: s[1].ImageOrientationPatient, 1e-4
    )
    _check_same(where, slices, "PixelSpacing", lambda s: s[1].PixelSpacing, 1e-4)

    first = slices[0][1]
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    positions = np.array(
        [np.asarray(ds.ImagePositionPatient, dtype=float) for _, ds, _, _ in slices]
    )
    order = np.argsort(positions @ normal, kind="stable")
    slices = [slices[i] for i in order]
    positions = positions[order]

    if len(slices) > 1:
        step = (positions[-1] - positions[0]) / (len(slices) - 1)
        dz = float(np.linalg.norm(step))
        if np.ptp(positions @ normal) < 1e-6:
            raise IngestError(
                f"all {len(slices)} slices in {str(where)!r} share one position; the folder "
                "may mix repeated acquisitions or time points. Keep one per folder"
            )
        deviation = np.linalg.norm(np.diff(positions, axis=0) - step, axis=1) / dz
        if deviation.max() > 0.01:
            gaps = np.round(np.linalg.norm(np.diff(positions, axis=0), axis=1), 4).tolist()
            raise IngestError(
                f"uneven slice spacing in {str(where)!r}: gaps between sorted slices are {gaps} "
                "mm (more than 1% apart). Slices may be missing or duplicated; re-export the "
                "complete series"
            )
    else:
        dz = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        step = normal * dz

    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_spacing
    lps[:3, 1] = col_cos * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return slices, _LPS_TO_RAS @ lps, dz, uids


def _series_folder(folder: str | os.PathLike[str]) -> Path:
    where = Path(folder)
    if not where.is_dir():
        raise IngestError(f"cannot read DICOM series {str(where)!r}: it is not a folder")
    return where


def read_dicom_geometry(folder: str | os.PathLike[str]) -> tuple[tuple[int, int, int], np.ndarray]:
    """The shape and RAS+ affine :func:`read_dicom_series` would return, without pixel data.

    Every slice is read up to its pixel data only (``stop_before_pixels``), and checked as
    :func:`read_dicom_series` checks it.

    Args:
        folder: A folder directly holding the slices of exactly one series.

    Returns:
        ``((X, Y, Z), affine)``.

    Raises:
        IngestError: as :func:`read_dicom_series`.
        OptionalDependencyError: pydicom is not installed.
    """
    pydicom = _pydicom()
    where = _series_folder(folder)
    slices, affine, _, _ = _geometry(where, _read_slices(where, pydicom, pixels=False))
    rows, columns = slices[0][3]
    return (int(columns), int(rows), len(slices)), affine


def read_dicom_series(folder: str | os.PathLike[str]) -> DicomSeries:
    """Read the single-frame DICOM slices in ``folder`` as one 3D volume.

    Slices are sorted by position along the slice normal (not by InstanceNumber or file
    name); the slice spacing comes from the positions, not SliceThickness. RescaleSlope and
    RescaleIntercept are applied; the result is float32 when they change the values and keeps
    the stored integer dtype otherwise.

    Args:
        folder: A folder directly holding the slices of exactly one series.

    Returns:
        The voxel array, RAS+ affine, spacing and identifying tags.

    Raises:
        IngestError: The folder is missing or empty, a file is unreadable, it holds several
            series, or the slices disagree in shape, orientation, spacing or step.
        OptionalDependencyError: pydicom is not installed.
    """
    raw, scales, affine, series = _read_series(folder)
    return DicomSeries(array=_rescaled(raw, scales), affine=affine, **series)


def read_dicom_voxels(
    folder: str | os.PathLike[str],
) -> tuple[np.ndarray | ScaledVoxels, np.ndarray]:
    """The voxels of :func:`read_dicom_series` as the slices store them, and the affine.

    When every slice shares one RescaleSlope and RescaleIntercept (not 1 and 0), the stored
    integers come back as :class:`ScaledVoxels` whose values equal ``read_dicom_series``'s
    float32 array voxel for voxel; slices rescaled each their own way (PET) come back as that
    float32 array, and slices not rescaled as their integers.

    Raises:
        IngestError: as :func:`read_dicom_series`.
        OptionalDependencyError: pydicom is not installed.
    """
    raw, scales, affine, _ = _read_series(folder)
    common = set(scales)
    if common == {(1.0, 0.0)}:
        return raw, affine
    if len(common) == 1 and raw.dtype.kind in "iu":
        ((slope, intercept),) = common
        return ScaledVoxels(raw, slope, intercept, np.dtype(np.float32)), affine
    return _rescaled(raw, scales), affine


def _rescaled(raw: np.ndarray, scales: list[tuple[float, float]]) -> np.ndarray:
    """``raw`` with each slice's rescale applied (float32) when any changes the values."""
    if all(s == (1.0, 0.0) for s in scales):
        return raw
    # per slice: PET often rescales each one
    slope, intercept = np.array(scales, dtype=np.float32).T
    rescaled: np.ndarray = raw.astype(np.float32) * slope + intercept
    return rescaled


def _read_series(
    folder: str | os.PathLike[str],
) -> tuple[np.ndarray, list[tuple[float, float]], np.ndarray, dict[str, Any]]:
    """The stacked pixel data, each slice's (slope, intercept), the affine and the tags."""
    pydicom = _pydicom()
    where = _series_folder(folder)
    slices, affine, dz, uids = _geometry(where, _read_slices(where, pydicom))
    first = slices[0][1]
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    scales = [
        (float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0))
        for _, ds, _, _ in slices
    ]
    raw = np.stack([px.T for _, _, px, _ in slices], axis=-1)
    series = {
        "spacing": (col_spacing, row_spacing, dz),
        "series_uid": uids[0],
        "patient_id": str(first.get("PatientID", "")),
        "modality": str(first.get("Modality", "")),
    }
    return raw, scales, affine, series
