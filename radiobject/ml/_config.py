"""``DatasetConfig``: what one sample is (whole volume, patch, slice or slab) and how it's drawn."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeVar

from radiobject._errors import ConfigurationError
from radiobject.config import SliceOrientation
from radiobject.ml._params import (
    as_int,
    parse_patch_size,
    parse_slab,
    parse_slab_axis,
    parse_slab_patch,
)
from radiobject.ml._slab import PLANE_AXIS

__all__ = ["DatasetConfig", "LoadingMode"]

E = TypeVar("E", bound=enum.Enum)


class LoadingMode(str, enum.Enum):
    """What a dataset item is.

    >>> from radiobject.ml import DatasetConfig, LoadingMode, VolumeCollectionDataset
    >>> [m.value for m in LoadingMode]
    ['full_volume', 'patch', 'slice_2d', 'slab']
    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> slices = VolumeCollectionDataset(
    ...     radi.T1w, config=DatasetConfig(loading_mode=LoadingMode.SLICE_2D)
    ... )
    >>> len(slices), tuple(slices[0]["image"].shape)  # 2 volumes x 12 axial slices
    (24, (1, 16, 16))
    >>> slabs = VolumeCollectionDataset(
    ...     radi.T1w, config=DatasetConfig(loading_mode="slab", slab=5, patches_per_volume=3)
    ... )
    >>> len(slabs), tuple(slabs[0]["image"].shape)  # 2 volumes x 3 slabs of 5 axial planes
    (6, (5, 16, 16))
    """

    FULL_VOLUME = "full_volume"
    PATCH = "patch"
    SLICE_2D = "slice_2d"
    SLAB = "slab"


@dataclass(frozen=True)
class DatasetConfig:
    """How samples are cut from volumes.

    Args:
        loading_mode: ``FULL_VOLUME`` (one item per volume), ``PATCH`` (random patches),
            ``SLICE_2D`` (one item per 2D slice) or ``SLAB`` (random stacks of ``slab``
            adjacent planes, the planes as channels: 2.5D).
        patch_size: patch shape ``(x, y, z)``; required for ``PATCH``.
        patches_per_volume: items per volume and epoch in ``PATCH`` and ``SLAB`` modes.
        slice_orientation: the plane of ``SLICE_2D`` and ``SLAB`` items (axial by default).
        slab: planes per ``SLAB`` item (any integer >= 1; required for ``SLAB``).
        slab_patch: a 2D patch ``(h, w)`` of a slab's planes (``None``: whole planes).
        seed: patch positions and shuffling derive from ``(seed, epoch, index)``.
        fixed_epoch: draw the same patches every epoch (validation) instead of new ones.

    >>> DatasetConfig(loading_mode=LoadingMode.PATCH, patch_size=(32, 32, 32)).patch_size
    (32, 32, 32)
    >>> DatasetConfig(loading_mode="patch")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: DatasetConfig: loading_mode=PATCH needs patch_size...

    A ``SLAB`` item of volume ``(X, Y, Z)`` is the box of ``slab`` adjacent planes along the
    axis (axial: ``(X, Y, slab)``), or ``slab_patch`` of them, placed uniformly at random
    inside the volume (a slab never crosses the volume's edge, so every plane is real data;
    a volume thinner than ``slab`` is a ``ShapeError``). Only those planes are read. Its
    image is ``(C * slab, h, w)``: channel ``c * slab + j`` is plane ``j`` of input channel
    ``c`` (the layout MONAI's 2.5D recipes feed a 2D network).

    >>> DatasetConfig(loading_mode="slab", slab=3, slice_orientation="coronal").slab
    3
    """

    loading_mode: LoadingMode = LoadingMode.FULL_VOLUME
    patch_size: tuple[int, ...] | None = None
    patches_per_volume: int = 1
    slice_orientation: SliceOrientation = SliceOrientation.AXIAL
    seed: int = 0
    fixed_epoch: bool = False
    slab: int | None = None
    slab_patch: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        mode = _parse_enum("loading_mode", self.loading_mode, LoadingMode)
        object.__setattr__(self, "loading_mode", mode)
        orient = _parse_enum(
            "slice_orientation", self.slice_orientation, SliceOrientation, exclude="ISOTROPIC"
        )
        object.__setattr__(self, "slice_orientation", orient)
        ppv = as_int(self.patches_per_volume)
        if ppv is None or ppv < 1:
            raise ConfigurationError(
                f"DatasetConfig.patches_per_volume must be an integer >= 1, "
                f"got {self.patches_per_volume!r}"
            )
        object.__setattr__(self, "patches_per_volume", ppv)
        seed = as_int(self.seed)
        if seed is None or seed < 0:
            raise ConfigurationError(
                f"DatasetConfig.seed must be an integer >= 0, got {self.seed!r}"
            )
        object.__setattr__(self, "seed", seed)
        size = parse_patch_size(self.patch_size, "DatasetConfig")
        object.__setattr__(self, "patch_size", size)
        if mode is LoadingMode.PATCH and self.patch_size is None:
            raise ConfigurationError(
                "DatasetConfig: loading_mode=PATCH needs patch_size, e.g. patch_size=(64, 64, 64)"
            )
        self._check_slab(mode)

    @property
    def slab_axis(self) -> int | None:
        """The volume axis (0: x, 1: y, 2: z) a ``SLAB`` item's planes are stacked along.

        ``None`` in other modes.

        >>> DatasetConfig(loading_mode="slab", slab=3).slab_axis  # axial planes: along z
        2
        >>> DatasetConfig().slab_axis is None
        True
        """
        if self.loading_mode is not LoadingMode.SLAB:
            return None
        return PLANE_AXIS[self.slice_orientation]

    def _check_slab(self, mode: LoadingMode) -> None:
        if mode is not LoadingMode.SLAB:
            if self.slab is not None or self.slab_patch is not None:
                raise ConfigurationError(
                    f"DatasetConfig: slab and slab_patch need loading_mode=SLAB, got "
                    f"loading_mode={mode.name} with slab={self.slab!r}, "
                    f"slab_patch={self.slab_patch!r}"
                )
            return
        if self.slab is None:
            raise ConfigurationError(
                "DatasetConfig: loading_mode=SLAB needs slab (planes per item), e.g. slab=5"
            )
        object.__setattr__(self, "slab", parse_slab(self.slab, "DatasetConfig"))
        object.__setattr__(self, "slab_patch", parse_slab_patch(self.slab_patch, "DatasetConfig"))
        if self.patch_size is not None:
            raise ConfigurationError(
                f"DatasetConfig: loading_mode=SLAB takes slab_patch=(h, w) for a 2D patch of "
                f"the planes, not patch_size; got patch_size={self.patch_size!r}"
            )


def slab_config(
    where: str,
    slab: object,
    axis: object,
    slab_patch: object,
    *,
    patch_size: tuple[int, int, int] | None,
    patches_per_volume: int,
    seed: int,
    config: DatasetConfig | None,
) -> DatasetConfig | None:
    """The ``SLAB`` config of a factory's ``slab``, ``axis`` and ``slab_patch`` (None: no slab).

    Bad values, or slab arguments mixed with ``patch_size`` or ``config``, raise
    ``ConfigurationError`` before anything is read.
    """
    orientation = parse_slab_axis(axis, where)
    patch = parse_slab_patch(slab_patch, where)
    if slab is None:
        if patch is not None or orientation.value != "axial":
            raise ConfigurationError(
                f"{where}: axis and slab_patch describe slabs; pass slab=k (planes per "
                f"sample) with them, got axis={axis!r}, slab_patch={slab_patch!r}"
            )
        return None
    k = parse_slab(slab, where)
    if config is not None:
        raise ConfigurationError(
            f"{where}: pass either slab=... or config=..., not both (a slab config is "
            f"DatasetConfig(loading_mode='slab', slab={k}, ...))"
        )
    if patch_size is not None:
        raise ConfigurationError(
            f"{where}: a slab's 2D patch is slab_patch=(h, w); patch_size is for 3D patches "
            f"(got patch_size={patch_size!r} with slab={k})"
        )
    return DatasetConfig(
        loading_mode=LoadingMode.SLAB,
        slab=k,
        slab_patch=patch,
        slice_orientation=orientation,
        patches_per_volume=patches_per_volume,
        seed=seed,
    )


def _parse_enum(name: str, value: object, kind: type[E], exclude: str = "") -> E:
    """A member of ``kind`` from a member, its value or its name (any case)."""
    members = [m for m in kind if m.name != exclude]
    for member in members:
        if value is member or (
            isinstance(value, str) and value.lower() in (member.value, member.name.lower())
        ):
            return member
    allowed = ", ".join(m.name for m in members)
    raise ConfigurationError(f"DatasetConfig.{name} must be one of {allowed}, got {value!r}")


def factory_config(
    config: DatasetConfig | None,
    patch_size: tuple[int, int, int] | None,
    patches_per_volume: int,
    seed: int,
    fixed_epoch: bool = False,
) -> DatasetConfig:
    """``config`` if given, else patches of ``patch_size`` (``None``: whole volumes)."""
    if config is not None:
        return config
    mode = LoadingMode.PATCH if patch_size is not None else LoadingMode.FULL_VOLUME
    return DatasetConfig(
        loading_mode=mode,
        patch_size=patch_size,
        patches_per_volume=patches_per_volume,
        seed=seed,
        fixed_epoch=fixed_epoch,
    )


def sample_config(
    where: str,
    patch_size: tuple[int, int, int] | None,
    config: DatasetConfig | None,
    patches_per_volume: int,
    seed: int,
    slab: object,
    axis: object,
    slab_patch: object,
) -> DatasetConfig:
    """What a training-style factory samples: slabs, patches or whole volumes.

    Slabs when ``slab`` asks for them (see :func:`slab_config`), else
    :func:`factory_config`.
    """
    sliced = slab_config(
        where,
        slab,
        axis,
        slab_patch,
        patch_size=patch_size,
        patches_per_volume=patches_per_volume,
        seed=seed,
        config=config,
    )
    return sliced or factory_config(config, patch_size, patches_per_volume, seed)
