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
    same grid (shape (8, 8, 10) vs (8, 8, 8)); resample them first or pass
    validate_alignment=False
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


_SECRET = re.compile(
    r"(?i)(\w*(?:secret|session_token|access_key|password)\w*)([\"'=:\s]+)([^\s,\"']+)"
)


def redact(text: str) -> str:
    """Mask anything that looks like a credential in ``text``.

    >>> redact("vfs.s3.aws_secret_access_key=abc123 ok")
    'vfs.s3.aws_secret_access_key=*** ok'
    """
    text = _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    for secret in _known_secrets():
        text = text.replace(secret, "***")
    return text


def _known_secrets() -> list[str]:
    """The secret values in force (settings and AWS environment), to mask verbatim."""
    import os

    from radiobject.config import get_config

    s3 = get_config().s3
    values = [s3.aws_secret_access_key, s3.aws_session_token]
    values += [os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN")]
    return [v for v in values if v and len(v) >= 4]


# noise in AWS SDK messages that says nothing to a user: request ids and response headers
_AWS_NOISE = re.compile(r"\s*\[(?:Headers|Request ID|Remote IP):[^\]]*\]")
_AWS_CODE = re.compile(r"\[Exception: (\w+)\]|<Code>(\w+)</Code>")
_CURL_CODE = re.compile(r"curl\w*\W+(?:error\W+)?(\d+)")  # "curlCode: 7", "curl error 7"
_DENIED = (
    "signaturedoesnotmatch",
    "invalidaccesskeyid",
    "accessdenied",
    "expiredtoken",
    "invalidtoken",
    "credentials were not provided",
    "credentials are expired",
    "http response code: 403",
)


def _s3_error(msg: str, uri: str, action: str) -> RadiObjectError | None:
    """A specific error for a failed S3 request, or ``None`` when ``msg`` is no S3 failure."""
    from radiobject.config import get_config

    low = msg.lower()
    if not any(k in low for k in ("curl", "http response code", "s3: ", "aws credentials")):
        return None
    curl = _CURL_CODE.search(low)
    curl_code = int(curl.group(1)) if curl else None
    s3 = get_config().s3
    where = (
        f"S3 endpoint {s3.endpoint!r}"
        if s3.endpoint
        else f"AWS S3 endpoint of region {s3.region!r}"
    )
    detail = _AWS_NOISE.sub("", msg).strip()
    code = next((a or b for a, b in _AWS_CODE.findall(msg)), None)
    bucket = uri[len("s3://") :].split("/", 1)[0]
    if "nosuchbucket" in low or "bucket does not exist" in low:
        return NotFoundError(
            f"could not {action} {uri!r}: the S3 bucket {bucket!r} does not exist at the {where}; "
            "create it, or fix the URI or S3Config(endpoint=..., region=...)"
        )
    if any(k in low for k in _DENIED):
        return S3Error(
            f"could not {action} {uri!r}: the {where} refused the credentials "
            f"({code or 'HTTP 403'}). Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / "
            "AWS_PROFILE in the environment, or S3Config(aws_access_key_id=..., "
            "aws_secret_access_key=..., profile=...)"
        )
    if curl_code == 28 or "timeout was reached" in low or "timed out" in low:
        return S3Error(
            f"could not {action} {uri!r}: the {where} did not answer within "
            f"S3Config(request_timeout_ms={s3.request_timeout_ms}, connect_timeout_ms="
            f"{s3.connect_timeout_ms}) after connect_max_tries={s3.connect_max_tries}; check the "
            f"endpoint, or raise those settings for a slow link ({detail})"
        )
    # curl 6: host not resolved, 7: connection refused or unreachable
    if curl_code in (6, 7) or any(k in low for k in ("could not connect", "resolve host")):
        return S3Error(
            f"could not {action} {uri!r}: cannot connect to the {where} ({detail}). "
            "Check that the server is up and S3Config(endpoint=..., scheme=...) points at it"
        )
    return S3Error(
        f"could not {action} {uri!r} at the {where}: {detail}. Check S3Config(endpoint=..., "
        "region=...), the AWS credentials, and that the bucket exists"
    )


def translate_tiledb_error(err: Exception, uri: str, action: str) -> RadiObjectError:
    """Turn a ``tiledb.TileDBError`` into a radiobject error that names ``uri``.

    Failed S3 requests get a specific message: missing bucket, unreachable endpoint, time
    out, refused credentials, each naming the setting to change.
    """
    msg = redact(str(err))
    low = msg.lower()
    if uri.startswith("s3://"):
        s3 = _s3_error(msg, uri, action)
        if s3 is not None:
            return s3
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
