"""The radiobject error hierarchy.

Every error raised for bad input derives from :class:`RadiObjectError` and, where it
fits, from the matching builtin too, so ``except FileNotFoundError`` or
``except ValueError`` keep working in user code.

>>> issubclass(NotFoundError, FileNotFoundError)
True
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "AlignmentError",
    "AlreadyExistsError",
    "ConfigurationError",
    "FilterError",
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


_SECRET = re.compile(r"(?i)(secret|session_token|access_key_id|password)([\"'=:\s]+)([^\s,\"']+)")


def redact(text: str) -> str:
    """Mask anything that looks like a credential in ``text``.

    >>> redact("vfs.s3.aws_secret_access_key=abc123 ok")
    'vfs.s3.aws_secret_access_key=*** ok'
    """
    return _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


def translate_tiledb_error(err: Exception, uri: str, action: str) -> RadiObjectError:
    """Turn a ``tiledb.TileDBError`` into a radiobject error that names ``uri``."""
    msg = redact(str(err))
    low = msg.lower()
    if uri.startswith("s3://") and any(
        k in low for k in ("curl", "s3", "aws", "connect", "bucket", "credential", "timeout")
    ):
        return S3Error(
            f"could not {action} {uri!r} on S3: {msg}. Check S3Config(endpoint=..., region=...) "
            "and the AWS credentials in the environment, and that the bucket exists"
        )
    if "does not exist" in low or "not exist" in low or "no such" in low:
        return NotFoundError(f"could not {action} {uri!r}: nothing is stored there ({msg})")
    return StorageError(f"could not {action} {uri!r}: {msg}")


@contextmanager
def tiledb_errors(uri: str, action: str) -> Iterator[None]:
    """Translate TileDB errors raised in the block into radiobject errors naming ``uri``."""
    import tiledb

    try:
        yield
    except tiledb.TileDBError as e:
        raise translate_tiledb_error(e, uri, action) from e
