"""The radiobject error hierarchy.

Every error raised for bad input derives from :class:`RadiObjectError` and, where it
fits, from the matching builtin too, so ``except FileNotFoundError`` or
``except ValueError`` keep working in user code.

>>> issubclass(NotFoundError, FileNotFoundError)
True

This module imports nothing (it is a leaf every layer may use); translating TileDB and S3
failures into these errors is the job of :mod:`radiobject._tiledb_errors`.
"""

from __future__ import annotations

__all__ = [
    "AlignmentError",
    "AlreadyExistsError",
    "ConfigurationError",
    "FilterError",
    "IncompleteError",
    "IngestError",
    "LabelError",
    "NotFoundError",
    "OptionalDependencyError",
    "OutOfBoundsError",
    "RadiObjectError",
    "S3Error",
    "ShapeError",
    "StorageError",
]


class RadiObjectError(Exception):
    """Base class of every error radiobject raises on purpose."""


class ConfigurationError(RadiObjectError, ValueError):
    """A setting has an unknown name or a value outside its allowed range."""


class StorageError(RadiObjectError, OSError):
    """Reading or writing TileDB storage failed."""


class NotFoundError(StorageError, FileNotFoundError):
    """A URI, collection, subject or volume does not exist."""


class AlreadyExistsError(StorageError, FileExistsError):
    """A write target already holds data."""


class IncompleteError(StorageError):
    """A stored object whose writing did not finish (the writer was stopped or failed).

    Finish it with ``resume=True`` on the call that wrote it, or remove it.
    """


class S3Error(StorageError):
    """Object storage could not be reached or refused the request."""


class ShapeError(RadiObjectError, ValueError):
    """Shapes disagree, or an index or patch does not fit a volume."""


class OutOfBoundsError(ShapeError, IndexError):
    """An index or slice falls outside a volume or a collection."""


class AlignmentError(RadiObjectError, ValueError):
    """Volumes that must share a grid (subject, shape, affine) do not."""


class FilterError(RadiObjectError, ValueError):
    """A filter expression or a column name is not valid for the table it is applied to."""


class IngestError(RadiObjectError, ValueError):
    """A source image (NIfTI, DICOM) is missing, unreadable or inconsistent."""


class LabelError(RadiObjectError, KeyError):
    """A label column is missing or a volume has no label."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class OptionalDependencyError(RadiObjectError, ImportError):
    """An optional dependency (torch, monai, torchio, pydicom, ...) is not installed."""
