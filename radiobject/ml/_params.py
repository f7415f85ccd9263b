"""The parameters every loader factory and dataset shares, each validated one way.

``patch_size``, ``batch_size``, ``num_workers``, ``transform`` and ``ctx`` mean the same
wherever they appear, and a bad value is the same :class:`~radiobject.ConfigurationError`
everywhere: it names the function, the parameter, the value and what is allowed.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import tiledb

from radiobject._errors import ConfigurationError
from radiobject.config import SliceOrientation
from radiobject.storage import VolumeCollection

__all__ = [
    "LoaderParams",
    "as_int",
    "int_at_least",
    "parse_batch_size",
    "parse_ctx",
    "parse_loader_params",
    "parse_num_workers",
    "parse_patch_size",
    "parse_slab",
    "parse_slab_axis",
    "parse_slab_patch",
    "parse_transform",
    "with_ctx",
]

T = TypeVar("T")

SLAB_AXES = (SliceOrientation.AXIAL, SliceOrientation.CORONAL, SliceOrientation.SAGITTAL)


def as_int(value: object) -> int | None:
    """``value`` as an int when it is an integer (numpy integers too, not bools), else ``None``.

    >>> as_int(3), as_int(np.int64(3)), as_int(True), as_int(3.0)
    (3, 3, None, None)
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def int_at_least(value: object, least: int, error: str) -> int:
    """``value`` as an int ``>= least`` (see :func:`as_int`), else ``ConfigurationError(error)``.

    >>> int_at_least(np.int64(2), 1, "batch_size must be >= 1")
    2
    """
    n = as_int(value)
    if n is None or n < least:
        raise ConfigurationError(error)
    return n


def parse_patch_size(value: object, where: str) -> tuple[int, int, int] | None:
    """``patch_size`` as three ints: one int is a cube; ``None`` stays ``None`` (no patches).

    Args:
        value: an int, three ints (a tuple, such as ``torch.Size``, a list or an array) or
            ``None``.
        where: the function or class taking it, named in the error.

    >>> parse_patch_size(16, "f"), parse_patch_size([64, 64, 32], "f"), parse_patch_size(None, "f")
    ((16, 16, 16), (64, 64, 32), None)
    >>> parse_patch_size((8, 8), "create_training_dataloader")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: create_training_dataloader: patch_size must be three...
    """
    sizes = _positive_sizes(
        value,
        3,
        f"{where}: patch_size must be three positive integers (x, y, z) or one for a cube, "
        f"e.g. 64 or (64, 64, 32); got {value!r}",
    )
    return None if sizes is None else (sizes[0], sizes[1], sizes[2])


def parse_slab(value: object, where: str) -> int:
    """``slab``: the number of adjacent planes a 2.5D sample stacks as channels (>= 1).

    >>> parse_slab(5, "f")
    5
    >>> parse_slab(0, "create_training_dataloader")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: create_training_dataloader: slab must be an integer...
    """
    return int_at_least(
        value,
        1,
        f"{where}: slab must be an integer >= 1 (adjacent planes per sample, e.g. 5); "
        f"got {value!r}",
    )


def parse_slab_axis(value: object, where: str) -> SliceOrientation:
    """``axis``: the planes a slab stacks, ``"axial"``, ``"coronal"`` or ``"sagittal"``.

    A :class:`~radiobject.SliceOrientation` member is taken as well (not ``ISOTROPIC``).

    >>> parse_slab_axis("Coronal", "f")
    <SliceOrientation.CORONAL: 'coronal'>
    >>> parse_slab_axis("z", "create_training_dataloader")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: create_training_dataloader: axis must be one of...
    """
    for member in SLAB_AXES:
        if value is member or (
            isinstance(value, str) and value.lower() in (member.value, member.name.lower())
        ):
            return member
    allowed = ", ".join(repr(m.value) for m in SLAB_AXES)
    raise ConfigurationError(f"{where}: axis must be one of {allowed}; got {value!r}")


def parse_slab_patch(value: object, where: str) -> tuple[int, int] | None:
    """``slab_patch``: a 2D patch ``(h, w)`` of the slab's planes (one int: a square), or None.

    ``h`` and ``w`` run along the plane's two axes in volume order (axial: x, y; coronal:
    x, z; sagittal: y, z). ``None`` keeps whole planes.

    >>> parse_slab_patch(32, "f"), parse_slab_patch((64, 48), "f"), parse_slab_patch(None, "f")
    ((32, 32), (64, 48), None)
    >>> parse_slab_patch((8, 8, 8), "f")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: f: slab_patch must be two positive integers...
    """
    sizes = _positive_sizes(
        value,
        2,
        f"{where}: slab_patch must be two positive integers (h, w) along the plane or one "
        f"for a square, e.g. 64 or (96, 64); got {value!r}",
    )
    return None if sizes is None else (sizes[0], sizes[1])


def _positive_sizes(value: object, n: int, error: str) -> list[int] | None:
    """``value`` as ``n`` ints >= 1 (one int: repeated ``n`` times); None stays None.

    Raises:
        ConfigurationError: with ``error`` for anything else.
    """
    if value is None:
        return None
    raw = (value,) * n if as_int(value) is not None else value
    sizes = [as_int(s) for s in raw] if isinstance(raw, (tuple, list, np.ndarray)) else []
    checked = [s for s in sizes if s is not None and s >= 1]
    if len(sizes) != n or len(checked) != n:
        raise ConfigurationError(error)
    return checked


def parse_batch_size(value: object, where: str) -> int:
    """``batch_size``: an integer >= 1 (samples per batch).

    >>> parse_batch_size(np.int32(8), "f")
    8
    >>> parse_batch_size(0, "create_training_dataloader")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: create_training_dataloader: batch_size must be >= 1...
    """
    return int_at_least(
        value,
        1,
        f"{where}: batch_size must be >= 1 and an integer (samples per batch); got {value!r}",
    )


def parse_num_workers(value: object, where: str) -> int:
    """``num_workers``: an integer >= 0 (worker processes; 0 loads in this process).

    >>> parse_num_workers(2, "f")
    2
    >>> parse_num_workers(-1, "create_training_dataloader")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: create_training_dataloader: num_workers must be >= 0...
    """
    return int_at_least(
        value,
        0,
        f"{where}: num_workers must be >= 0 and an integer (worker processes; 0 loads in "
        f"this process); got {value!r}",
    )


def parse_transform(value: T, where: str) -> T:
    """``transform``: a callable on each sample (e.g. a MONAI ``Compose``) or ``None``.

    >>> parse_transform(None, "f") is None, parse_transform(abs, "f") is abs
    (True, True)
    >>> parse_transform("flip", "VolumeCollectionDataset")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: VolumeCollectionDataset: transform must be a callable...
    """
    if value is not None and not callable(value):
        raise ConfigurationError(
            f"{where}: transform must be a callable on the sample (e.g. a MONAI Compose) or "
            f"None; got {value!r}"
        )
    return value


def parse_ctx(value: object, where: str) -> tiledb.Ctx | None:
    """``ctx``: a ``tiledb.Ctx`` to read the collections with, or ``None`` (each their own).

    >>> parse_ctx(None, "f") is None
    True
    >>> parse_ctx({"sm.memory_budget": 1}, "f")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: f: ctx must be a tiledb.Ctx or None...
    """
    if value is not None and not isinstance(value, tiledb.Ctx):
        raise ConfigurationError(
            f"{where}: ctx must be a tiledb.Ctx or None (None: read each collection with the "
            f"context it was opened with); got {type(value).__name__} {value!r}"
        )
    return value


def with_ctx(
    collections: VolumeCollection | Sequence[VolumeCollection] | Any, ctx: tiledb.Ctx | None
) -> Any:
    """The collection(s) read with ``ctx`` (copies of the same collections or views).

    ``None`` returns them unchanged; anything that is not a collection is returned as it
    is (the dataset then says what it expected).
    """
    if ctx is None:
        return collections
    if isinstance(collections, VolumeCollection):
        bound = copy.copy(collections)  # same URI, selection and metadata; another context
        bound._ctx = ctx
        return bound
    if isinstance(collections, (list, tuple)):
        return [with_ctx(c, ctx) for c in collections]
    return collections


@dataclass(frozen=True)
class LoaderParams:
    """The shared parameters of one factory call, validated (see :func:`parse_loader_params`)."""

    patch_size: tuple[int, int, int] | None
    batch_size: int
    num_workers: int
    transform: Callable[[dict[str, Any]], Any] | None
    ctx: tiledb.Ctx | None


def parse_loader_params(
    where: str,
    *,
    patch_size: object,
    batch_size: object,
    num_workers: object,
    transform: Any,
    ctx: object,
) -> LoaderParams:
    """Validate a factory's shared parameters at once, before anything is read.

    >>> p = parse_loader_params("f", patch_size=16, batch_size=2, num_workers=0,
    ...                         transform=None, ctx=None)
    >>> p.patch_size, p.batch_size, p.num_workers
    ((16, 16, 16), 2, 0)
    """
    return LoaderParams(
        patch_size=parse_patch_size(patch_size, where),
        batch_size=parse_batch_size(batch_size, where),
        num_workers=parse_num_workers(num_workers, where),
        transform=parse_transform(transform, where),
        ctx=parse_ctx(ctx, where),
    )
