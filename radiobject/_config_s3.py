"""``S3Config``: object storage settings, mapped onto TileDB's ``vfs.s3.*`` options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from radiobject._config_checks import Checked, check_int
from radiobject._errors import ConfigurationError

__all__ = ["S3Config"]


_SECRET_FIELDS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


@dataclass(frozen=True)
class S3Config(Checked):
    """Object storage settings, mapped onto TileDB's ``vfs.s3.*`` options.

    Credentials left as ``None`` come from the usual AWS environment variables or profile.
    They never appear in ``repr``. ``profile`` names a profile of the shared AWS files
    (``~/.aws/credentials``, ``~/.aws/config``) whose static keys radiobject reads and hands to
    TileDB (keys given here win); the environment is never written. For SSO or role profiles,
    export ``AWS_PROFILE`` before starting Python instead.

    >>> S3Config(aws_secret_access_key="hunter2")  # doctest: +ELLIPSIS
    S3Config(region='us-east-1', ..., aws_secret_access_key='***', ...)
    """

    region: str = "us-east-1"
    endpoint: str | None = None
    scheme: str = "https"
    use_virtual_addressing: bool = True
    max_parallel_ops: int = 8
    multipart_part_size_mb: int = 50
    connect_timeout_ms: int = 3000
    request_timeout_ms: int = 30000
    connect_max_tries: int = 5
    verify_ssl: bool = True
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    profile: str | None = None

    def __post_init__(self) -> None:
        if self.scheme not in ("http", "https"):
            raise ConfigurationError(
                f"S3Config.scheme must be 'http' or 'https', got {self.scheme!r}"
            )
        check_int("S3Config", "max_parallel_ops", self.max_parallel_ops, 1, 1024)
        check_int("S3Config", "multipart_part_size_mb", self.multipart_part_size_mb, 5, 5120)
        check_int("S3Config", "connect_timeout_ms", self.connect_timeout_ms, 1)
        check_int("S3Config", "request_timeout_ms", self.request_timeout_ms, 1)
        check_int("S3Config", "connect_max_tries", self.connect_max_tries, 1, 100)

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown = "'***'" if f.name in _SECRET_FIELDS and value is not None else repr(value)
            parts.append(f"{f.name}={shown}")
        return f"S3Config({', '.join(parts)})"
