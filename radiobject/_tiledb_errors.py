"""Translating TileDB and S3 failures into radiobject errors that say what to do.

:func:`tiledb_errors` wraps every TileDB call of the storage and read layers; failed S3
requests get a specific message (missing bucket, unreachable endpoint, time out, refused
credentials) naming the setting to change, and credentials never appear in a message.
The error classes themselves live in :mod:`radiobject._errors`, which imports nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

import tiledb

from radiobject._aws_profile import profile_credentials
from radiobject._errors import (
    ConfigurationError,
    NotFoundError,
    RadiObjectError,
    S3Error,
    StorageError,
)
from radiobject.config import get_config

__all__ = ["redact", "tiledb_errors", "translate_tiledb_error"]

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
    s3 = get_config().s3
    values = [s3.aws_secret_access_key, s3.aws_session_token]
    values += [os.environ.get("AWS_SECRET_ACCESS_KEY"), os.environ.get("AWS_SESSION_TOKEN")]
    if s3.profile:
        with contextlib.suppress(ConfigurationError):  # no such profile: nothing to mask
            keys = profile_credentials(s3.profile)
            values += [keys.get("aws_secret_access_key"), keys.get("aws_session_token")]
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
    """Translate TileDB errors raised in the block into radiobject errors naming ``uri``.

    >>> import tempfile
    >>> with tiledb_errors(tempfile.mkdtemp() + "/none", "open volume"):
    ...     tiledb.open(tempfile.mkdtemp() + "/none")
    Traceback (most recent call last):
    ...
    radiobject._errors.NotFoundError: could not open volume ...
    """
    try:
        yield
    except tiledb.TileDBError as e:
        raise translate_tiledb_error(e, uri, action) from e
