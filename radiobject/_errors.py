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
    "DtypeError",
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
    "VersionError",
]


class RadiObjectError(Exception):
    """Base class of every error radiobject raises on purpose.

    Catch it to handle any of radiobject's errors in one place:

    >>> from radiobject import RadiObject, RadiObjectError
    >>> try:
    ...     RadiObject("/no/such/cohort")
    ... except RadiObjectError as e:
    ...     print(f"{type(e).__name__}: {e}")
    NotFoundError: no RadiObject at '/no/such/cohort': nothing is stored there
    """


class ConfigurationError(RadiObjectError, ValueError):
    """A setting has an unknown name or a value outside its allowed range.

    >>> from radiobject import ReadConfig, configure
    >>> ReadConfig(cache_mb=-1)
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: ReadConfig.cache_mb must be >= 0, got -1
    >>> configure(read={"cache_gb": 1})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: unknown ReadConfig field(s) ['cache_gb']; known ...
    """


class StorageError(RadiObjectError, OSError):
    """Reading or writing TileDB storage failed.

    The base of :class:`NotFoundError`, :class:`AlreadyExistsError` and :class:`S3Error`,
    and an ``OSError`` too:

    >>> from radiobject import StorageError, Volume
    >>> try:
    ...     Volume("/no/such/volume").shape
    ... except StorageError as e:
    ...     print(type(e).__name__, isinstance(e, OSError))
    NotFoundError True
    """


class NotFoundError(StorageError, FileNotFoundError):
    """A URI, collection, subject or volume does not exist.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=1,
    ...                               shape=(8, 8, 8), modalities=("T1w",), progress=False)
    >>> radi.collection("CT")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.NotFoundError: no collection 'CT' in '...'; collections are ['T1w', 'seg']
    >>> try:
    ...     radi.T1w.loc["sub-999_T1w"]
    ... except FileNotFoundError as e:  # a NotFoundError is a FileNotFoundError too
    ...     print(e)
    no volume 'sub-999_T1w' in collection 'T1w'
    """


class AlreadyExistsError(StorageError, FileExistsError):
    """A write target already holds data.

    >>> import os, tempfile
    >>> import numpy as np
    >>> from radiobject import Volume
    >>> uri = os.path.join(tempfile.mkdtemp(), "vol")
    >>> Volume.from_numpy(uri, np.zeros((4, 4, 4))).shape
    (4, 4, 4)
    >>> Volume.from_numpy(uri, np.ones((4, 4, 4)))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.AlreadyExistsError: '.../vol' already exists; remove it or write to a new URI
    """


class IncompleteError(StorageError):
    """A stored object whose writing did not finish (the writer was stopped or failed).

    Finish it with ``resume=True`` on the call that wrote it, or remove it. Writers mark an
    object complete last; here the mark is taken off by hand, as a killed writer leaves it:

    >>> import os, tempfile
    >>> import numpy as np, tiledb
    >>> from radiobject import VolumeCollection
    >>> uri = os.path.join(tempfile.mkdtemp(), "CT")
    >>> len(VolumeCollection.from_numpy(uri, [np.zeros((4, 4, 2))]))
    1
    >>> with tiledb.Group(uri, mode="w") as g:
    ...     del g.meta["complete"]
    >>> VolumeCollection(uri)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.IncompleteError: '.../CT' holds a VolumeCollection whose writing ...
    """


class S3Error(StorageError):
    """Object storage could not be reached or refused the request.

    The message says which endpoint failed and what to check:

    >>> from radiobject import RadiObject, configure
    >>> with configure(s3={"endpoint": "http://127.0.0.1:9", "connect_max_tries": 1}):
    ...     RadiObject("s3://bucket/cohort")  # nothing listens on port 9
    ... # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    radiobject._errors.S3Error: could not open RadiObject 's3://bucket/cohort':
    cannot connect to the S3 endpoint 'http://127.0.0.1:9' (...). Check that the server is up
    and S3Config(endpoint=..., scheme=...) points at it
    """


class ShapeError(RadiObjectError, ValueError):
    """Shapes disagree, or an index or patch does not fit a volume.

    >>> import os, tempfile
    >>> import numpy as np
    >>> from radiobject import Volume
    >>> Volume.from_numpy(os.path.join(tempfile.mkdtemp(), "v"), np.zeros((64, 64)))
    ... # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    radiobject._errors.ShapeError: a volume must be a non-empty 3D or 4D array,
    got shape (64, 64) for '.../v'
    """


class DtypeError(RadiObjectError, ValueError):
    """Voxel values that a volume's data type cannot hold exactly (nothing is clipped).

    >>> import os, tempfile
    >>> import numpy as np
    >>> from radiobject import Volume
    >>> vol = Volume.from_numpy(os.path.join(tempfile.mkdtemp(), "v"), np.zeros((2, 2, 2)))
    >>> vol.write_region(((0, 1), (0, 1), (0, 1)), np.full((1, 1, 1), 0.5))
    ... # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    radiobject._errors.DtypeError: volume '.../v' stores its voxels as uint8 (values float64,
    scale 1, offset 0); the float64 data for region ((0, 1), (0, 1), (0, 1)) hold values it
    cannot store exactly. Write a new volume with Volume.from_numpy (integers=False keeps
    floats)
    """


class OutOfBoundsError(ShapeError, IndexError):
    """An index or slice falls outside a volume or a collection.

    >>> import os, tempfile
    >>> import numpy as np
    >>> from radiobject import Volume
    >>> vol = Volume.from_numpy(os.path.join(tempfile.mkdtemp(), "v"), np.zeros((16, 16, 12)))
    >>> try:
    ...     vol[20, 0, 0]
    ... except IndexError as e:  # an OutOfBoundsError is an IndexError too
    ...     print(e)  # doctest: +ELLIPSIS
    index 20 on axis x is out of bounds for volume '.../v' of shape (16, 16, 12) (valid: 0..15)
    """


class AlignmentError(RadiObjectError, ValueError):
    """Volumes that must share a grid (subject, shape, affine) do not.

    >>> import os, tempfile
    >>> from radiobject import RadiObject
    >>> from radiobject.data import make_sample_radiobject
    >>> small, large = (
    ...     make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=1,
    ...                            shape=shape, modalities=("T1w",), progress=False)
    ...     for shape in [(8, 8, 8), (8, 8, 10)]
    ... )
    >>> RadiObject.from_collections(os.path.join(tempfile.mkdtemp(), "both"),
    ...                             {"T1w": small.T1w, "T2w": large.T1w}, progress=False)
    ... # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    radiobject._errors.AlignmentError: subject 'sub-000': 'T2w' and 'T1w' are not on the
    same grid (shape (8, 8, 10) vs (8, 8, 8)); resample them first, pass
    validate_alignment=False, or name the collection whose grid samples are planned in
    with reference=<collection>
    """


class FilterError(RadiObjectError, ValueError):
    """A filter expression or a column name is not valid for the table it is applied to.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=1,
    ...                               shape=(8, 8, 8), modalities=("T1w",), progress=False)
    >>> radi.filter("weight > 70")  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    radiobject._errors.FilterError: invalid filter 'weight > 70' on '.../obs_meta': ...
    Filters compare columns ['obs_subject_id', 'diagnosis', 'age', 'sex', 'site', 'grade']
    with values, joined by 'and'/'or'
    """


class IngestError(RadiObjectError, ValueError):
    """A source image (NIfTI, DICOM) is missing, unreadable or inconsistent.

    >>> import os, tempfile
    >>> from radiobject import RadiObject
    >>> target = os.path.join(tempfile.mkdtemp(), "r")
    >>> RadiObject.from_images(target, {"T1w": "/no/scans/*_T1w.nii.gz"}, progress=False)
    ... # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    radiobject._errors.IngestError: the pattern '/no/scans/*_T1w.nii.gz' for collection 'T1w'
    matches no file
    """


class LabelError(RadiObjectError, KeyError):
    """A label column is missing or a volume has no label.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=1,
    ...                               shape=(8, 8, 8), modalities=("T1w",), progress=False)
    >>> radi.T1w.column("diagnosis").tolist()
    ['healthy']
    >>> radi.T1w.column("outcome")  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    radiobject._errors.LabelError: no column 'outcome' in the obs of collection 'T1w' or in
    obs_meta; available columns: ['affine', 'age', 'diagnosis', ...]
    """

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class OptionalDependencyError(RadiObjectError, ImportError):
    """An optional dependency (torch, monai, torchio, pydicom, ...) is not installed.

    The message names the extra that installs it. Here pydicom is hidden to show what a
    user without it sees when ingesting a DICOM folder:

    >>> import os, sys, tempfile
    >>> from unittest import mock
    >>> from radiobject import RadiObject
    >>> dicom_folder, target = tempfile.mkdtemp(), os.path.join(tempfile.mkdtemp(), "r")
    >>> with mock.patch.dict(sys.modules, {"pydicom": None}):
    ...     RadiObject.from_images(target, {"CT": dicom_folder}, progress=False)
    ... # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    radiobject._errors.OptionalDependencyError: reading DICOM needs pydicom:
    pip install radiobject[dicom]
    """


class VersionError(RadiObjectError, ValueError):
    """A version that does not exist, or a write to an object opened at a past version.

    >>> issubclass(VersionError, ValueError)
    True
    """
