"""Patches as drawn by a loader or dataset: split batches, measure foreground, render cards.

Pure functions on arrays and sample dicts (``"image"`` ``(C, X, Y, Z)``, optional ``"mask"``
``(1, X, Y, Z)``, ``"obs_id"``, ``"patch_start"``), so they are tested without a loader.
Slab samples (2.5D: ``"image"`` ``(C * k, h, w)``, ``"mask"`` of the centre plane
``(1, h, w)``) are turned back into their box in the volume, so cards show the ``k`` planes
side by side and location views outline where the slab sits.
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
    draw_box,
    draw_plane_box,
    render_slice,
    to_display,
    zoom,
)

__all__ = [
    "Patch",
    "coverage",
    "patch_card",
    "patches_from",
    "slab_card",
    "summarize",
    "volume_view",
]

_CENTRE = (255, 200, 0)  # the frame of a slab's centre plane (the one its mask is of)


@dataclass(frozen=True)
class Patch:
    """One drawn patch: its voxels, where it came from, and how much mask it holds.

    A slab (``slab_axis`` set) keeps its planes in volume order, ``image`` ``(X, Y, Z)``
    with ``k`` voxels along ``slab_axis``, and the mask of its centre plane, ``(h, w)``.
    """

    image: np.ndarray  # (X, Y, Z) or (X, Y): one channel
    mask: np.ndarray | None
    obs_id: str
    obs_subject_id: str | None
    start: tuple[int, ...] | None
    slab_axis: int | None = None

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


def patches_from(
    data: Mapping[str, Any],
    batched: bool,
    channel: int = 0,
    slab: tuple[int, int] | None = None,
) -> list[Patch]:
    """The patches of one sample dict (``batched=False``) or one collated batch.

    ``slab=(k, axis)`` reads slab samples of ``k`` planes across volume ``axis``: channel
    ``channel`` is planes ``channel * k .. channel * k + k - 1`` of the image.

    >>> sample = {"image": np.zeros((1, 4, 4, 4)), "mask": np.ones((1, 4, 4, 4)),
    ...           "obs_id": "a", "patch_start": np.array([1, 2, 3])}
    >>> p = patches_from(sample, batched=False)[0]
    >>> p.start, p.foreground_fraction, p.touches_mask
    ((1, 2, 3), 1.0, True)
    >>> slab = {"image": np.zeros((3, 6, 4)), "mask": np.ones((1, 6, 4)),
    ...         "patch_start": np.array([0, 5, 0])}
    >>> p = patches_from(slab, batched=False, slab=(3, 1))[0]  # 3 coronal planes
    >>> p.size, p.mask.shape, p.slab_axis
    ((6, 3, 4), (6, 4), 1)
    """
    if "image" not in data:
        raise KeyError(f"samples need an 'image' key to preview; got keys {sorted(data)}")
    images = _array(data["image"])
    if not batched:
        return patches_from(
            {k: [v] for k, v in data.items()}, batched=True, channel=channel, slab=slab
        )
    if slab is not None:
        return [_slab_patch(p, slab, channel) for p in patches_from(data, True, channel=-1)]
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
                image=image if channel < 0 else image[min(channel, image.shape[0] - 1)],
                mask=mask,
                obs_id=str(_pick(data["obs_id"], i)) if "obs_id" in data else f"#{i}",
                obs_subject_id=(
                    str(_pick(data["obs_subject_id"], i)) if "obs_subject_id" in data else None
                ),
                start=tuple(int(s) for s in start) if start is not None else None,
            )
        )
    return out


def _slab_patch(patch: Patch, slab: tuple[int, int], channel: int) -> Patch:
    """A slab sample's patch (all channels in ``image``) as its box in the volume."""
    k, axis = slab
    planes = patch.image  # (C * k, h, w)
    if planes.ndim != 3 or planes.shape[0] % k:
        raise ValueError(
            f"a slab sample of {k} planes must be (C * {k}, h, w), got shape {planes.shape}"
        )
    c = min(channel, planes.shape[0] // k - 1)
    box = np.moveaxis(planes[c * k : (c + 1) * k], 0, axis)
    mask = patch.mask
    if mask is not None and mask.ndim == 3:  # all k planes given: keep the centre one
        mask = np.take(mask, mask.shape[axis] // 2, axis=axis)
    return Patch(box, mask, patch.obs_id, patch.obs_subject_id, patch.start, slab_axis=axis)


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

    A slab's card is :func:`slab_card`.
    """
    if patch.slab_axis is not None:
        return slab_card(patch, opacity, colors, target=max(24, target * 2 // 3))
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


def slab_card(
    patch: Patch,
    opacity: float = 0.4,
    colors: Mapping[int, RGB] | None = None,
    target: int = 64,
) -> np.ndarray:
    """A slab's ``k`` planes side by side, its centre plane framed with the mask over it.

    >>> box = np.zeros((4, 4, 3)); box[..., 1] = 1
    >>> p = Patch(box, np.ones((4, 4)), "a", None, (0, 0, 0), slab_axis=2)
    >>> card = slab_card(p, target=4)
    >>> card.shape, card[0, 6].tolist(), card[0, 0].tolist()  # frame on plane 1 of 3
    ((4, 16, 3), [255, 200, 0], [0, 0, 0])
    """
    if patch.slab_axis is None:
        raise ValueError(f"patch of {patch.obs_id!r} is not a slab (no slab_axis)")
    axis = patch.slab_axis
    k = patch.image.shape[axis]
    window = auto_window(patch.image)
    tiles = []
    for j in range(k):
        plane = np.take(patch.image, j, axis=axis)
        centre = j == k // 2
        mask = patch.mask if centre else None
        scale = display_scale(plane.shape, target=target)
        tile = render_slice(plane, window, mask=mask, opacity=opacity, colors=colors, scale=scale)
        if centre:
            tile = draw_box(tile, 0, 0, tile.shape[0], tile.shape[1], _CENTRE)
        tiles.append(tile)
    gap = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
    parts = [part for tile in tiles for part in (gap, tile)][1:]
    return np.concatenate(parts, axis=1)


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
