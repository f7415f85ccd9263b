"""Keys naming an array as of a version: ``"<uri>#at=<ms>"``.

A read of a past version (``RadiObject(uri, at=...)``) names its array by a versioned key:
the array opened with TileDB's ``timestamp=(0, ms)``. Every cache of the read path is keyed
by that string (handles, RAM blocks, the shared store, fetch locks, local tier names), so a
version never meets another version's bytes, and the version travels with a read plan to
loader workers (a plan holds the key) without a new argument through the read path.
"""

from __future__ import annotations

__all__ = ["same_array", "split_version", "versioned"]

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
