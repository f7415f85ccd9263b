"""Pure sampling functions: where a patch goes is a function of ``(seed, epoch, index)``.

Nothing here reads data or keeps state, so the same seed gives the same samples in the main
process and in any DataLoader worker.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from radiobject.storage import ForegroundIndex

__all__ = [
    "foreground_patch_start",
    "item_rng",
    "random_patch_start",
    "shuffled",
    "transform_seed",
]


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator of one item.

    >>> int(item_rng(0, 1, 2).integers(100)) == int(item_rng(0, 1, 2).integers(100))
    True
    """
    return np.random.default_rng([seed, epoch, index, 0x5EED])


def random_patch_start(
    shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator
) -> tuple[int, ...]:
    """A uniformly random corner for a ``patch`` inside ``shape``.

    >>> random_patch_start((10, 10, 10), (10, 4, 1), np.random.default_rng(0))[0]
    0
    """
    return tuple(int(rng.integers(0, s - p + 1)) for s, p in zip(shape, patch, strict=True))


def centred_start(
    centre: Sequence[int], shape: Sequence[int], patch: Sequence[int]
) -> tuple[int, ...]:
    """The corner of a ``patch`` centred on ``centre``, moved inside ``shape``.

    >>> centred_start((0, 5, 9), (10, 10, 10), (4, 4, 4))
    (0, 3, 6)
    """
    return tuple(
        int(min(max(c - p // 2, 0), s - p)) for c, s, p in zip(centre, shape, patch, strict=True)
    )


def foreground_patch_start(
    shape: Sequence[int],
    patch: Sequence[int],
    fg: ForegroundIndex,
    rng: np.random.Generator,
    probability: float,
    class_ratios: Sequence[float] | None = None,
) -> tuple[tuple[int, ...], bool]:
    """A patch corner: centred on a foreground voxel with ``probability``, else uniform.

    With ``class_ratios`` (one weight per label, like MONAI's ``RandCropByLabelClassesd``),
    the label is drawn by those weights among the labels present. Returns the corner and
    whether it was centred on foreground. A volume without foreground falls back to uniform.
    """
    labels = fg.labels
    if labels and rng.random() < probability:
        if class_ratios is not None:
            weights = np.array(
                [class_ratios[k - 1] if k - 1 < len(class_ratios) else 0.0 for k in labels]
            )
            if weights.sum() <= 0:
                weights = np.ones(len(labels))
            label = labels[int(rng.choice(len(labels), p=weights / weights.sum()))]
            points = fg.points[label]
        else:
            points = fg.all_points()
        centre = points[int(rng.integers(len(points)))]
        return centred_start(centre, shape, patch), True
    return random_patch_start(shape, patch, rng), False


def shuffled(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of ``range(n)`` for one epoch.

    >>> sorted(shuffled(5, 0, 0).tolist())
    [0, 1, 2, 3, 4]
    """
    return np.random.default_rng([seed, epoch, 0xE90C]).permutation(n)


def window_shuffled(
    groups: Sequence[Sequence[int]], window: int, seed: int, epoch: int
) -> list[int]:
    """Shuffle items so that consecutive items come from a window of ``window`` groups.

    Groups (e.g. the patches of one volume) are put in random order; items of each run of
    ``window`` groups are then shuffled together. Every item appears exactly once, and the
    reads of one window share their volumes' cached tiles.

    >>> out = window_shuffled([[0, 1], [2, 3], [4, 5]], window=2, seed=0, epoch=0)
    >>> sorted(out)
    [0, 1, 2, 3, 4, 5]
    """
    rng = np.random.default_rng([seed, epoch, 0x3171])
    order = rng.permutation(len(groups))
    out: list[int] = []
    for start in range(0, len(order), max(1, window)):
        chunk = [i for g in order[start : start + window] for i in groups[g]]
        out.extend(int(i) for i in rng.permutation(np.asarray(chunk, dtype=np.int64)))
    return out


def transform_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of item ``(epoch, index)``'s augmentation: a 32-bit function of the key.

    >>> transform_seed(0, 1, 2) == transform_seed(0, 1, 2), transform_seed(0, 1, 2) < 2**32
    (True, True)
    >>> transform_seed(0, 1, 2) == transform_seed(0, 2, 1)
    False
    """
    return int(np.random.SeedSequence([seed, epoch, index, 0xA06]).generate_state(1)[0])
