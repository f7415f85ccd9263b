"""Readers of source images (NIfTI through nibabel, DICOM series through pydicom)."""

from radiobject.ingest._dicom import DicomSeries, find_dicom_series, read_dicom_series
from radiobject.ingest._sources import resolve_sources, subject_id_from_path

__all__ = [
    "DicomSeries",
    "find_dicom_series",
    "read_dicom_series",
    "resolve_sources",
    "subject_id_from_path",
]
