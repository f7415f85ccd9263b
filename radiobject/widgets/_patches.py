"""Patches as drawn by a loader or dataset: split batches, measure foreground, render cards.

Pure functions on arrays and sample dicts (``"image"`` ``(C, X, Y, Z)``, optional ``"mask"``
``(1, X, Y, Z)``, ``"obs_id"``, ``"patch_start"``), so they are tested without a loader.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._render import (
    RGB,
    auto_window,
    blend_heatmap,
    display_scale,
    draw_plane_box,
    render_slice,
    to_display,
    zoom,
)

__all__ = ["Patch", "coverage", "patch_card", "patches_from", "summarize", "volume_view"]


@dataclass(frozen=True)
class Patch:
    """One drawn patch: its voxels, where it came from, and how much mask it holds."""

    image: np.ndarray  # (X, Y, Z) or (X, Y): one channel
    mask: np.ndarray | None
    obs_id: str
    obs_subject_id: str | None
    start: tuple[int, ...] | None

    @property
    def size(self) -> tuple[int, ...]:
        """Spatial shape of the patch."""
        return tuple(self.image.shape)

    @property
    def foreground_fraction(self) -> float | None:
        """Share of mask voxels > 0 (``None`` without a mask)."""
        return None if self.mask is None else float(np.count_nonzero(self.mask) / self.mask.size)

    @property
    def touches_mask(self) -> bool | None:
        """True when any voxel of the patch is foreground (``None`` without a mask)."""
        return None if self.mask is None else bool(np.any(self.mask))


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensors, MONAI MetaTensors
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _pick(value: Any, i: int) -> Any:
    if isinstance(value, (list, tuple)):
        return value[i]
    return _array(value)[i]


def patches_from(data: Mapping[str, Any], batched: bool, channel: int = 0) -> list[Patch]:
    """The patches of one sample dict (``batched=False``) or one collated batch.

    >>> sample = {"image": np.zeros((1, 4, 4, 4)), "mask": np.ones((1, 4, 4, 4)),
    ...           "obs_id": "a", "patch_start": np.array([1, 2, 3])}
    >>> p = patches_from(sample, batched=False)[0]
    >>> p.start, p.foreground_fraction, p.touches_mask
    ((1, 2, 3), 1.0, True)
    """
    if "image" not in data:
        raise KeyError(f"samples need an 'image' key to preview; got keys {sorted(data)}")
    images = _array(data["image"])
    if not batched:
        return patches_from({k: [v] for k, v in data.items()}, batched=True, channel=channel)
    out = []
    for i in range(len(data["image"])):
        image = _array(_pick(data["image"], i))
        if image.ndim not in (3, 4):
            raise ValueError(
                f"an image sample must be (C, X, Y[, Z]), got shape {image.shape} "
                f"(batch of shape {images.shape if images.dtype != object else '?'})"
            )
        mask = _array(_pick(data["mask"], i))[0] if "mask" in data else None
        start = _array(_pick(data["patch_start"], i)) if "patch_start" in data else None
        out.append(
            Patch(
                image=image[min(channel, image.shape[0] - 1)],
                mask=mask,
                obs_id=str(_pick(data["obs_id"], i)) if "obs_id" in data else f"#{i}",
                obs_subject_id=(
                    str(_pick(data["obs_subject_id"], i)) if "obs_subject_id" in data else None
                ),
                start=tuple(int(s) for s in start) if start is not None else None,
            )
        )
    return out


def summarize(patches: Sequence[Patch]) -> dict[str, float | int | None]:
    """Counts: patches, with a mask, touching it, and their shares.

    >>> m = np.zeros((2, 2, 2)); m[0, 0, 0] = 1
    >>> ps = [Patch(m, m, "a", None, None), Patch(m, 0 * m, "a", None, None)]
    >>> summarize(ps)["touching_fraction"], summarize(ps)["mean_foreground"]
    (0.5, 0.0625)
    """
    masked = [p for p in patches if p.mask is not None]
    touching = sum(bool(p.touches_mask) for p in masked)
    return {
        "patches": len(patches),
        "with_mask": len(masked),
        "touching": touching,
        "touching_fraction": touching / len(masked) if masked else None,
        "mean_foreground": (
            float(np.mean([p.foreground_fraction for p in masked])) if masked else None
        ),
    }


def patch_card(
    patch: Patch,
    opacity: float = 0.4,
    colors: Mapping[int, RGB] | None = None,
    target: int = 96,
) -> np.ndarray:
    """The mid-slices (axial | coronal | sagittal) of a patch with its mask, side by side.

    >>> card = patch_card(Patch(np.zeros((4, 4, 2)), None, "a", None, (0, 0, 0)), target=8)
    >>> card.shape
    (8, 28, 3)
    """
    image = patch.image
    window = auto_window(image)
    if image.ndim == 2:
        scale = display_scale(image.shape, target=target)
        return render_slice(
            image, window, mask=patch.mask, opacity=opacity, colors=colors, scale=scale
        )
    cx, cy, cz = (n // 2 for n in image.shape)
    cuts = [(slice(None), slice(None), cz), (slice(None), cy, slice(None)), (cx,)]
    tiles = []
    for cut in cuts:
        plane = image[cut]
        mask = patch.mask[cut] if patch.mask is not None else None
        scale = display_scale(plane.shape, target=target)
        tiles.append(
            render_slice(plane, window, mask=mask, opacity=opacity, colors=colors, scale=scale)
        )
    height = max(tile.shape[0] for tile in tiles)
    gap = np.full((height, 2, 3), 255, np.uint8)
    padded = [np.pad(tile, ((0, height - tile.shape[0]), (0, 0), (0, 0))) for tile in tiles]
    return np.concatenate([padded[0], gap, padded[1], gap, padded[2]], axis=1)


def coverage(
    shape: tuple[int, int], patches: Sequence[Patch], axes: tuple[int, int] = (0, 1)
) -> np.ndarray:
    """How many patches cover each ``(u, v)`` voxel of a plane (projected along the rest).

    >>> p = Patch(np.zeros((2, 2, 2)), None, "a", None, (1, 0, 5))
    >>> coverage((4, 3), [p, p]).tolist()
    [[0, 0, 0], [2, 2, 0], [2, 2, 0], [0, 0, 0]]
    """
    counts = np.zeros(shape, np.int64)
    for p in patches:
        if p.start is None:
            continue
        (u0, v0), (su, sv) = (p.start[a] for a in axes), (p.size[a] for a in axes)
        counts[u0 : u0 + su, v0 : v0 + sv] += 1
    return counts


def volume_view(
    plane: np.ndarray,
    mask: np.ndarray | None,
    boxes: Sequence[Patch],
    heat: np.ndarray | None = None,
    opacity: float = 0.4,
    colors: Mapping[int, RGB] | None = None,
    target: int = 256,
) -> np.ndarray:
    """An axial plane of the full volume with patch outlines (x-y boxes) or a coverage map.

    >>> p = Patch(np.zeros((2, 2, 2)), None, "a", None, (0, 0, 0))
    >>> volume_view(np.zeros((4, 4)), None, [p], target=4)[3, 0].tolist()
    [0, 255, 0]
    """
    scale = display_scale(plane.shape, target=target)
    rgb = render_slice(
        plane, auto_window(plane), mask=mask, opacity=opacity, colors=colors, scale=scale
    )
    if heat is not None:
        rgb = blend_heatmap(rgb, zoom(to_display(heat), *scale), opacity=0.55)
    for p in boxes:
        if p.start is None or len(p.start) < 2:
            continue
        u = (p.start[0], p.start[0] + p.size[0])
        v = (p.start[1], p.start[1] + p.size[1])
        rgb = draw_plane_box(rgb, u, v, plane.shape, scale, color=(0, 255, 0))
    return rgb
