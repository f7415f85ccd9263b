"""Sliding-window grid planning and reading: the patches of a volume, their weights, a dataset.

MONAI's ``sliding_window_inference``, TorchIO's ``GridAggregator`` and nnU-Net hold the
whole input in memory. Here each grid patch reads only its own box
(:class:`GridPatchDataset`); :class:`radiobject.ml.PredictionWriter` blends the outputs.

The grid is MONAI's (``_get_scan_interval`` and ``dense_patch_slices``): a step of
``int(patch * (1 - overlap))``, the last patch flush with the end of the volume, and
volumes smaller than the patch zero-padded symmetrically. The weights are MONAI's
``compute_importance_map`` (``"constant"`` or ``"gaussian"``), so the blended output equals
``sliding_window_inference`` on the same model up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tiledb
import torch

from radiobject._errors import ConfigurationError, ShapeError
from radiobject.ml._config import DatasetConfig, LoadingMode
from radiobject.ml._dataset import VolumeCollectionDataset
from radiobject.ml._params import parse_patch_size
from radiobject.ml._plan import SamplePlan
from radiobject.storage import VolumeCollection

__all__ = ["GridPatchDataset", "grid_positions", "importance_map"]

_MODES = ("constant", "gaussian")


# -- the grid ------------------------------------------------------------------------------
def _overlaps(overlap: float | Sequence[float]) -> tuple[float, float, float]:
    values = (overlap,) * 3 if isinstance(overlap, (int, float)) else tuple(overlap)
    if len(values) != 3 or not all(
        isinstance(o, (int, float)) and not isinstance(o, bool) and 0 <= o < 1 for o in values
    ):
        raise ConfigurationError(
            f"overlap must be a number in [0, 1) or three of them (x, y, z), got {overlap!r}"
        )
    # mypy is silenced on the next line: three values, checked above
    return tuple(float(o) for o in values)  # type: ignore[return-value]


def _axis_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Patch starts along one axis (``size >= patch``), as MONAI's ``dense_patch_slices``."""
    interval = patch if patch == size else max(int(patch * (1 - overlap)), 1)
    count = math.ceil(size / interval)
    last = next((d for d in range(count) if d * interval + patch >= size), None)
    n = last + 1 if last is not None else 1
    return [i * interval - max(i * interval + patch - size, 0) for i in range(n)]


@dataclass(frozen=True)
class GridPlan:
    """The patches of one volume: padded grid, padding before each axis, starts per axis."""

    shape: tuple[int, int, int]
    patch: tuple[int, int, int]
    padded: tuple[int, int, int]
    pad: tuple[int, int, int]
    starts: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]

    @classmethod
    def build(
        cls, shape: Sequence[int], patch: Sequence[int], overlap: Sequence[float]
    ) -> GridPlan:
        shape3 = tuple(int(n) for n in shape[:3])
        patch3 = tuple(int(p) for p in patch)
        padded = tuple(max(n, p) for n, p in zip(shape3, patch3, strict=True))
        pad = tuple((q - n) // 2 for q, n in zip(padded, shape3, strict=True))
        starts = tuple(
            tuple(_axis_starts(q, p, o)) for q, p, o in zip(padded, patch3, overlap, strict=True)
        )
        # mypy is silenced on the next line: tuples of three, built from 3-tuples
        return cls(shape3, patch3, padded, pad, starts)  # type: ignore[arg-type]

    @property
    def per_z(self) -> int:
        """Patches sharing one z start."""
        return len(self.starts[0]) * len(self.starts[1])

    @property
    def n_patches(self) -> int:
        """Patches of the volume."""
        return self.per_z * len(self.starts[2])

    def position(self, k: int) -> tuple[int, int, int]:
        """Padded-grid start of patch ``k`` (z-major order: z, then x, then y)."""
        zi, rest = divmod(k, self.per_z)
        xi, yi = divmod(rest, len(self.starts[1]))
        return self.starts[0][xi], self.starts[1][yi], self.starts[2][zi]


def grid_positions(
    shape: Sequence[int], patch_size: Sequence[int] | int, overlap: float | Sequence[float] = 0.25
) -> list[tuple[int, int, int]]:
    """Corners of the sliding-window patches of a volume, in the order they are read.

    The grid is MONAI's ``sliding_window_inference`` grid: a step of
    ``int(patch * (1 - overlap))`` per axis, the last patch flush with the volume's end. The
    order is z-major (all patches at the first z start, then the next). An axis shorter than
    the patch is zero-padded on both sides, so its corner is negative.

    >>> grid_positions((40, 36, 30), 16, overlap=0.5)[:3]
    [(0, 0, 0), (0, 8, 0), (0, 16, 0)]
    >>> len(grid_positions((40, 36, 30), 16, overlap=0.5)), grid_positions((8, 16, 16), 16)
    (48, [(-4, 0, 0)])
    """
    patch = _patch(patch_size, "grid_positions")
    plan = GridPlan.build(shape, patch, _overlaps(overlap))
    out = []
    for k in range(plan.n_patches):
        pos = plan.position(k)
        out.append(tuple(s - p for s, p in zip(pos, plan.pad, strict=True)))
    return out  # type: ignore[return-value]  # 3D positions (grid of a 3D plan)


def _patch(patch_size: Sequence[int] | int, where: str) -> tuple[int, int, int]:
    patch = parse_patch_size(patch_size, where)
    if patch is None:
        raise ConfigurationError(f"{where}: patch_size is required (an int or three ints)")
    return patch


def importance_map(
    patch_size: Sequence[int] | int,
    mode: str = "constant",
    sigma_scale: float | Sequence[float] = 0.125,
) -> np.ndarray:
    """Blending weights of one patch, as MONAI's ``compute_importance_map`` (float32).

    ``"constant"`` weighs every voxel 1; ``"gaussian"`` weighs by a Gaussian of sigma
    ``sigma_scale * patch`` centred on the patch (clamped below at its smallest value, at
    least 1e-3).

    >>> w = importance_map(5, "gaussian")
    >>> w.shape, float(w[2, 2, 2]), bool(w[0, 0, 0] < 0.01)
    ((5, 5, 5), 1.0, True)
    """
    patch = _patch(patch_size, "importance_map")
    if mode not in _MODES:
        raise ConfigurationError(f"mode must be one of {_MODES}, got {mode!r}")
    if mode == "constant":
        return np.ones(patch, dtype=np.float32)
    scales = (sigma_scale,) * 3 if isinstance(sigma_scale, (int, float)) else tuple(sigma_scale)
    if len(scales) != 3 or any(s <= 0 for s in scales):
        raise ConfigurationError(
            f"sigma_scale must be a positive number or three of them, got {sigma_scale!r}"
        )
    # the same float32 operations as MONAI, so the weights are bit-identical
    weights = torch.ones(())
    for i, (p, s) in enumerate(zip(patch, scales, strict=True)):
        x = torch.arange(start=-(p - 1) / 2.0, end=(p - 1) / 2.0 + 1, dtype=torch.float)
        x = torch.exp(x**2 / (-2 * (p * s) ** 2))
        weights = weights.unsqueeze(-1) * x[(None,) * i] if i > 0 else x
    floor = max(torch.min(weights).item(), 1e-3)
    return torch.clamp_(weights.to(torch.float), min=floor).numpy()


# -- reading -------------------------------------------------------------------------------
class GridPatchDataset(VolumeCollectionDataset):
    """Every sliding-window patch of every volume, each read from its own box only.

    Items are ``{"image": Tensor(C, *patch), "obs_id", "obs_subject_id", "patch_start",
    "volume_index", "patch_index"}``, volume after volume, patches in z-major grid order
    (see :func:`grid_positions`). ``patch_start`` is the patch corner in the volume (negative
    on a padded axis). With ``world_size > 1`` this rank keeps volumes ``rank``,
    ``rank + world_size``, ...; :attr:`positions` gives their places in the collection.

    Args:
        collections: a collection or a list of them (channels), 3D volumes.
        patch_size: patch shape ``(x, y, z)`` (or one int for a cube).
        overlap: share of a patch overlapping its neighbour, per axis or one for all.
        transform: a callable on the sample dict; it must keep the patch's spatial shape.
        rank: this process's rank (volumes are sharded by rank).
        world_size: number of ranks.
        ctx: a ``tiledb.Ctx`` to read the collections with (default: each one's own).

    >>> from radiobject.data import make_sample_radiobject
    >>> import tempfile, os
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), progress=False)
    >>> ds = GridPatchDataset(radi.T1w, patch_size=8, overlap=0.5)
    >>> len(ds), tuple(ds[0]["image"].shape), ds[1]["patch_start"].tolist()
    (36, (1, 8, 8, 8), [0, 4, 0])
    """

    def __init__(
        self,
        collections: VolumeCollection | Sequence[VolumeCollection],
        patch_size: Sequence[int] | int,
        overlap: float | Sequence[float] = 0.25,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        *,
        rank: int = 0,
        world_size: int = 1,
        ctx: tiledb.Ctx | None = None,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigurationError(
                f"rank must be in [0, world_size) and world_size >= 1; got rank={rank}, "
                f"world_size={world_size}"
            )
        patch = _patch(patch_size, "GridPatchDataset")
        config = DatasetConfig(loading_mode=LoadingMode.PATCH, patch_size=patch, fixed_epoch=True)
        self.overlap = _overlaps(overlap)
        super().__init__(collections, config, transform=transform, ctx=ctx)
        for ref in self.refs:
            if len(ref.shape) != 3:
                raise ShapeError(
                    f"sliding-window inference reads 3D volumes; {ref.obs_id!r} has shape "
                    f"{ref.shape}"
                )
        self.rank, self.world_size = rank, world_size
        self.n_volumes = len(self.refs)
        self.positions = list(range(rank, len(self.refs), world_size))
        self.refs = [self.refs[i] for i in self.positions]
        assert self.config.patch_size is not None
        self.plans = [
            GridPlan.build(r.shape, self.config.patch_size, self.overlap) for r in self.refs
        ]
        self._first = np.cumsum([0] + [p.n_patches for p in self.plans])

    def _check_patch_fits(self) -> None:
        """Volumes smaller than the patch are padded, as MONAI pads them."""

    def __len__(self) -> int:
        return int(self._first[-1])

    def volume_of(self, index: int) -> int:
        """Which volume (position in :attr:`refs`) item ``index`` comes from."""
        return int(np.searchsorted(self._first, index, side="right") - 1)

    def prefer_whole_volume(self, uri: str, ctx: tiledb.Ctx | None = None) -> bool:
        """Never: each patch reads its own tiles (the block cache serves shared ones)."""
        return False

    def _corner(self, index: int) -> tuple[int, int, list[int]]:
        """Volume, patch number in it, and corner in the volume of patch ``index``."""
        v = self.volume_of(index)
        k = index - int(self._first[v])
        plan = self.plans[v]
        return v, k, [s - p for s, p in zip(plan.position(k), plan.pad, strict=True)]

    def region(self, index: int, rng: np.random.Generator) -> tuple[tuple[int, int], ...]:
        """The part of patch ``index`` inside its volume (the grid's, not a random box).

        This is what ``plan(index)`` reads; the sample's ``patch_start`` is the grid corner,
        negative on an axis padded because the volume is smaller than the patch.
        """
        v, _, corner = self._corner(index)
        plan = self.plans[v]
        return tuple(
            (max(0, c), min(n, c + p))
            for c, p, n in zip(corner, plan.patch, plan.shape, strict=True)
        )

    def build_sample(self, plan: SamplePlan, arrays: Sequence[np.ndarray]) -> dict[str, Any]:
        """The sample dict of patch ``plan.index`` (zero-padded where the grid is)."""
        v, k, corner = self._corner(plan.index)
        grid, ref = self.plans[v], self.refs[v]
        image = self.decode_image(plan, arrays)
        if image.shape[1:] != grid.patch:  # a padded axis: zeros around, as MONAI pads
            full = np.zeros((image.shape[0], *grid.patch), dtype=np.float32)
            at = tuple(slice(lo - c, hi - c) for (lo, hi), c in zip(plan.box, corner, strict=True))
            full[(slice(None), *at)] = image
            image = full
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "obs_id": ref.obs_id,
            "obs_subject_id": ref.obs_subject_id,
            "patch_start": torch.tensor(corner, dtype=torch.int64),
            "volume_index": torch.tensor(v, dtype=torch.int64),
            "patch_index": torch.tensor(k, dtype=torch.int64),
        }
