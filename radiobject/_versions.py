"""``show_versions()``: what to paste into a bug report."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

__all__ = ["show_versions"]

_PACKAGES = (
    "radiobject",
    "tiledb",
    "numpy",
    "pandas",
    "nibabel",
    "torch",
    "monai",
    "torchio",
    "pydicom",
    "ipywidgets",
    "matplotlib",
)


def show_versions() -> dict[str, str]:
    """Print and return the versions of Python, TileDB and radiobject's dependencies.

    Paste the printout into a bug report.

    >>> import radiobject
    >>> versions = radiobject.show_versions()  # doctest: +ELLIPSIS
    python     : 3...
    libtiledb  : 2...
    radiobject : ...
    >>> versions["radiobject"] == radiobject.__version__, versions["numpy"] != "not installed"
    (True, True)
    """
    import tiledb

    found = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libtiledb": ".".join(str(v) for v in tiledb.libtiledb.version()),
    }
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    width = max(len(k) for k in found)
    for key, value in found.items():
        print(f"{key:<{width}} : {value}")
    return found
