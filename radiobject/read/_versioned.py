"""Keys naming an array as of a version: ``"<uri>#at=<ms>"``.

A read of a past version (``RadiObject(uri, at=...)``) names its array by a versioned key:
the array opened with TileDB's ``timestamp=(0, ms)``. Every cache of the read path is keyed
by that string (handles, RAM blocks, the shared store, fetch locks, local tier names), so a
version never meets another version's bytes, and the version travels with a read plan to
loader workers (a plan holds the key) without a new argument through the read path.
"""

from __future__ import annotations

__all__ = ["commit_end_ms", "same_array", "split_version", "versioned"]

_AT = "#at="


def versioned(uri: str, at: int | None) -> str:
    """The key naming array ``uri`` as of TileDB timestamp ``at`` (ms); ``uri`` for the newest.

    >>> versioned("s3://b/r/vol", 1700000000123)
    's3://b/r/vol#at=1700000000123'
    >>> versioned("s3://b/r/vol#at=9", None), split_version("s3://b/r/vol#at=5")
    ('s3://b/r/vol', ('s3://b/r/vol', 5))
    """
    base, _ = split_version(uri)
    return base if at is None else f"{base}{_AT}{int(at)}"


def split_version(key: str) -> tuple[str, int | None]:
    """``(uri, at)`` of a key made by :func:`versioned` (``at`` is None for the newest)."""
    base, sep, at = key.rpartition(_AT)
    if not sep or not at.isdigit():
        return key, None
    return base, int(at)


def same_array(key: str, uri: str) -> bool:
    """Whether ``key`` names ``uri``: that key, or, ``uri`` being plain, any version of it.

    >>> same_array("v#at=3", "v"), same_array("v#at=3", "v#at=4"), same_array("v2", "v")
    (True, False, False)
    """
    return key == uri or (split_version(uri)[1] is None and split_version(key)[0] == uri)


def commit_end_ms(name: str) -> int | None:
    """End timestamp (ms) of a fragment or commit file ``__<t0>_<t1>_<uuid>_<format>[.ext]``.

    None for a name of another form.

    >>> commit_end_ms("__1700000000000_1700000000123_0f1e2d_22.wrt"), commit_end_ms("x")
    (1700000000123, None)
    """
    parts = name.split("_")
    if len(parts) > 3 and parts[3].isdigit():
        return int(parts[3])
    return None
