"""Readers of source images (NIfTI through nibabel, DICOM series through pydicom)."""

from radiobject._ingest import resolve_sources, subject_id_from_path
from radiobject.ingest._dicom import DicomSeries, find_dicom_series, read_dicom_series

__all__ = [
    "DicomSeries",
    "find_dicom_series",
    "read_dicom_series",
    "resolve_sources",
    "subject_id_from_path",
]
