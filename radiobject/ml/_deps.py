"""Optional ML dependencies, imported on demand with a clear message when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from radiobject._errors import OptionalDependencyError

__all__ = ["require"]

_EXTRA = {"torch": "ml", "monai": "monai", "torchio": "torchio"}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise an error that names the extra to install.

    >>> require("numpy").__name__
    'numpy'
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = _EXTRA.get(module.split(".")[0], "ml")
        raise OptionalDependencyError(
            f"this needs {module.split('.')[0]!r}, which is not installed: "
            f"pip install 'radiobject[{extra}]'"
        ) from e
