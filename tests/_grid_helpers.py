"""The cohort of the reference-grid tests: four collections, each on its own grid.

Two subjects; T1w is the reference (1 mm, an origin off the voxel lattice), FLAIR is at
2 x 2 x 3 mm, PD flipped and permuted, and the mask on a coarser 2 mm grid. The volumes are
smooth, so interpolation differences stay small but non-zero. Test modules take the fixture
by assignment (``radi = _grid_helpers.radi``), as they take other modules' fixtures.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from radiobject import RadiObject, VolumeCollection

SUBJECTS = ("sub-a", "sub-b")
REF_SHAPE = (36, 32, 28)


def make_affine(columns: Any, origin: list[float]) -> np.ndarray:
    """The 4 x 4 affine of voxel axes ``columns`` (3 x 3) and ``origin``."""
    a = np.eye(4)
    a[:3, :3] = np.asarray(columns, dtype=np.float64)
    a[:3, 3] = origin
    return a


# the reference: 1 mm, an origin off the voxel lattice
T1_AFFINE = make_affine([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [-17.6, -15.2, -13.35])
# 2 x 2 x 3 mm, another origin
FLAIR_AFFINE = make_affine([[2, 0, 0], [0, 2, 0], [0, 0, 3]], [-19.1, -16.7, -15.2])
FLAIR_SHAPE = (20, 18, 11)
# x flipped, y and z swapped, 1.5 x 1.25 x 1.2 mm (orientation LIP-like)
PD_AFFINE = make_affine([[-1.5, 0, 0], [0, 0, 1.25], [0, 1.2, 0]], [19.3, -16.1, -14.9])
PD_SHAPE = (26, 24, 27)
# the mask on a coarser grid: 2 mm
SEG_AFFINE = make_affine([[2, 0, 0], [0, 2, 0], [0, 0, 2]], [-18.3, -15.9, -14.1])
SEG_SHAPE = (19, 17, 15)


def smooth(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A smooth float32 volume (interpolation differences stay small but non-zero)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 3, n) for n in shape], indexing="ij")
    phase = rng.random(3) * 6
    vol = sum(np.sin(g + p) * (k + 1) for k, (g, p) in enumerate(zip(grids, phase, strict=True)))
    return (50 + 10 * vol + rng.random(shape)).astype(np.float32)


def sphere(seed: int) -> np.ndarray:
    """Labels 1 (a ball) and 2 (its core), in the mask's grid, away from the origin corner."""
    idx = np.indices(SEG_SHAPE).astype(np.float64)
    centre = np.array([13.0, 11.0, 10.0]) + np.random.default_rng(seed).random(3)
    r = np.sqrt(sum((idx[a] - centre[a]) ** 2 for a in range(3)))
    return ((r < 3.5).astype(np.uint8) + (r < 1.5)).astype(np.uint8)


@pytest.fixture(scope="module")
def radi(tmp_path_factory: pytest.TempPathFactory) -> RadiObject:
    """The cohort: T1w (the reference), FLAIR, PD and seg, each on its own grid."""
    d = tmp_path_factory.mktemp("grids")

    def coll(name: str, shape: Any, affine: np.ndarray, make: Any, **kw: Any) -> Any:
        arrays = {s: make(shape, i) for i, s in enumerate(SUBJECTS)}
        return VolumeCollection.from_numpy(
            d / name, arrays, affines={s: affine for s in SUBJECTS}, name=name, **kw
        )

    collections = {
        "T1w": coll("T1w", REF_SHAPE, T1_AFFINE, smooth),
        "FLAIR": coll("FLAIR", FLAIR_SHAPE, FLAIR_AFFINE, lambda s, i: smooth(s, 10 + i)),
        "PD": coll("PD", PD_SHAPE, PD_AFFINE, lambda s, i: smooth(s, 20 + i)),
        "seg": coll("seg", SEG_SHAPE, SEG_AFFINE, lambda s, i: sphere(i), is_mask=True),
    }
    return RadiObject.from_collections(d / "r", collections, reference="T1w", progress=False)
