"""``DatasetConfig``: what one sample is (whole volume, patch or 2D slice) and how it is drawn."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from radiobject._errors import ConfigurationError
from radiobject.config import SliceOrientation

__all__ = ["DatasetConfig", "LoadingMode"]


class LoadingMode(str, enum.Enum):
    """What a dataset item is."""

    FULL_VOLUME = "full_volume"
    PATCH = "patch"
    SLICE_2D = "slice_2d"


@dataclass(frozen=True)
class DatasetConfig:
    """How samples are cut from volumes.

    Args:
        loading_mode: ``FULL_VOLUME`` (one item per volume), ``PATCH`` (random patches) or
            ``SLICE_2D`` (one item per 2D slice).
        patch_size: patch shape ``(x, y, z)``; required for ``PATCH``.
        patches_per_volume: items per volume and epoch in ``PATCH`` mode.
        slice_orientation: the plane of ``SLICE_2D`` items (axial by default).
        seed: patch positions and shuffling derive from ``(seed, epoch, index)``.
        fixed_epoch: draw the same patches every epoch (validation) instead of new ones.

    >>> DatasetConfig(loading_mode=LoadingMode.PATCH, patch_size=(32, 32, 32)).patch_size
    (32, 32, 32)
    >>> DatasetConfig(loading_mode="patch")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: DatasetConfig: loading_mode=PATCH needs patch_size...
    """

    loading_mode: LoadingMode = LoadingMode.FULL_VOLUME
    patch_size: tuple[int, ...] | None = None
    patches_per_volume: int = 1
    slice_orientation: SliceOrientation = SliceOrientation.AXIAL
    seed: int = 0
    fixed_epoch: bool = False

    def __post_init__(self) -> None:
        try:
            mode = LoadingMode(self.loading_mode)
        except ValueError:
            allowed = ", ".join(m.name for m in LoadingMode)
            raise ConfigurationError(
                f"DatasetConfig.loading_mode must be one of {allowed}, got {self.loading_mode!r}"
            ) from None
        object.__setattr__(self, "loading_mode", mode)
        try:
            orient = SliceOrientation(self.slice_orientation)
        except ValueError:
            raise ConfigurationError(
                f"DatasetConfig.slice_orientation must be axial, coronal or sagittal, "
                f"got {self.slice_orientation!r}"
            ) from None
        if orient is SliceOrientation.ISOTROPIC:
            raise ConfigurationError("DatasetConfig.slice_orientation cannot be ISOTROPIC")
        object.__setattr__(self, "slice_orientation", orient)
        if (
            isinstance(self.patches_per_volume, bool)
            or not isinstance(self.patches_per_volume, int)
            or self.patches_per_volume < 1
        ):
            raise ConfigurationError(
                f"DatasetConfig.patches_per_volume must be an integer >= 1, "
                f"got {self.patches_per_volume!r}"
            )
        if self.patch_size is not None:
            size = (self.patch_size,) * 3 if isinstance(self.patch_size, int) else self.patch_size
            size = tuple(size)
            if len(size) != 3 or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size
            ):
                raise ConfigurationError(
                    f"DatasetConfig.patch_size must be three positive integers, got {size!r}"
                )
            object.__setattr__(self, "patch_size", size)
        if mode is LoadingMode.PATCH and self.patch_size is None:
            raise ConfigurationError(
                "DatasetConfig: loading_mode=PATCH needs patch_size, e.g. patch_size=(64, 64, 64)"
            )
