"""Static keys of a named AWS profile, read from the shared AWS files.

TileDB's S3 client has no setting for a profile: its SDK would look for ``AWS_PROFILE`` in
the environment, which a library must not write. So ``S3Config(profile=...)`` takes the
profile's keys from the files and hands them to TileDB as settings.
"""

from __future__ import annotations

import os

from radiobject._errors import ConfigurationError

__all__ = ["profile_credentials"]

_PROFILE_KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


def profile_credentials(
    profile: str, credentials_file: str | None = None, config_file: str | None = None
) -> dict[str, str]:
    r"""The static keys of the AWS ``profile`` in the shared credentials and config files.

    The files are ``credentials_file`` (default ``AWS_SHARED_CREDENTIALS_FILE``, else
    ``~/.aws/credentials``) and ``config_file`` (default ``AWS_CONFIG_FILE``, else
    ``~/.aws/config``), read, never written; the process environment is left alone. A profile
    whose credentials come from elsewhere (SSO, a role, a ``credential_process``) is for the
    AWS SDK's own chain: export ``AWS_PROFILE`` before starting Python and leave
    ``S3Config.profile`` unset.

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "credentials"
    >>> _ = path.write_text("[lab]\naws_access_key_id = A1\naws_secret_access_key = s\n")
    >>> path = str(path)
    >>> sorted(profile_credentials("lab", credentials_file=path, config_file=path + ".none"))
    ['aws_access_key_id', 'aws_secret_access_key']

    Raises:
        ConfigurationError: the profile is in neither file, or holds no static keys.
    """
    import configparser

    home = os.path.expanduser("~")
    credentials_file = credentials_file or os.environ.get(
        "AWS_SHARED_CREDENTIALS_FILE", os.path.join(home, ".aws", "credentials")
    )
    config_file = config_file or os.environ.get(
        "AWS_CONFIG_FILE", os.path.join(home, ".aws", "config")
    )
    files = (
        (credentials_file, profile),
        (config_file, profile if profile == "default" else f"profile {profile}"),
    )
    found: dict[str, str] = {}
    seen = False
    for path, section in files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except configparser.Error as e:
            raise ConfigurationError(f"AWS file {path!r} cannot be parsed: {e}") from e
        if parser.has_section(section):
            seen = True
            for key in _PROFILE_KEYS:
                if parser.has_option(section, key) and key not in found:
                    found[key] = parser.get(section, key).strip()
    where = " or ".join(repr(path) for path, _ in files)
    if not seen:
        raise ConfigurationError(
            f"S3Config(profile={profile!r}): no such profile in {where}; check its name, or "
            "set AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE to the files that hold it"
        )
    if not {"aws_access_key_id", "aws_secret_access_key"} <= found.keys():
        raise ConfigurationError(
            f"S3Config(profile={profile!r}): the profile in {where} holds no access key pair "
            "(SSO, a role or a credential_process?); radiobject reads static keys only: export "
            f"AWS_PROFILE={profile} before starting Python and leave S3Config.profile unset, "
            "so the AWS SDK's own chain resolves it"
        )
    return found
