"""What users would pick instead of radiobject: raw .npy memory maps, zarr, nibabel, TorchIO, MONAI.

Each peer is set up the way its documentation suggests, reading the same T1w volumes.
Readers return numpy arrays (the voxels are really read); loaders are plain DataLoaders.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cohort import PATCH, Cohort, load_nifti
from torch.utils.data import DataLoader, Dataset

Pos = tuple[int, int, int, int, int]  # volume, x, y, z (patch corner), z (axial slice)


# -- readers: full volume, axial slice, 64^3 region -----------------------------------------------
class NpyReader:
    """Raw ``.npy`` files, memory-mapped once; a read copies the voxels out of the map."""

    name = "npy memmap"

    def __init__(self, cohort: Cohort) -> None:
        self.maps = [np.load(cohort.npy(s), mmap_mode="r") for s in cohort.subjects]

    def full(self, p: Pos) -> np.ndarray:
        return np.array(self.maps[p[0]])

    def axial(self, p: Pos) -> np.ndarray:
        return np.array(self.maps[p[0]][:, :, p[4]])

    def roi(self, p: Pos) -> np.ndarray:
        _, x, y, z, _ = p
        return np.array(self.maps[p[0]][x : x + PATCH, y : y + PATCH, z : z + PATCH])


class ZarrReader:
    """zarr v3 arrays (64^3 chunks), opened once and sliced."""

    name = "zarr v3"

    def __init__(self, cohort: Cohort) -> None:
        import zarr

        self.arrays = [zarr.open_array(str(cohort.zarr(s)), mode="r") for s in cohort.subjects]

    def full(self, p: Pos) -> np.ndarray:
        return self.arrays[p[0]][...]

    def axial(self, p: Pos) -> np.ndarray:
        return self.arrays[p[0]][:, :, p[4]]

    def roi(self, p: Pos) -> np.ndarray:
        _, x, y, z, _ = p
        return self.arrays[p[0]][x : x + PATCH, y : y + PATCH, z : z + PATCH]


class NiftiReader:
    """``.nii.gz`` through nibabel's array proxy (file opened per read, as users do)."""

    name = "nibabel .nii.gz"

    def __init__(self, cohort: Cohort) -> None:
        self.paths = cohort.nifti_paths()

    def _proxy(self, i: int) -> Any:
        import nibabel as nib

        return nib.load(self.paths[i]).dataobj

    def full(self, p: Pos) -> np.ndarray:
        return np.asanyarray(self._proxy(p[0]))

    def axial(self, p: Pos) -> np.ndarray:
        return self._proxy(p[0])[:, :, p[4]]

    def roi(self, p: Pos) -> np.ndarray:
        _, x, y, z, _ = p
        return self._proxy(p[0])[x : x + PATCH, y : y + PATCH, z : z + PATCH]


# -- trivial patch datasets (the limit of each storage format) ------------------------------------
class PatchDataset(Dataset):
    """``k`` uniformly random 64^3 patches per volume, read with ``opener(path)[x:x+64, ...]``."""

    def __init__(
        self, paths: list[str], k: int, opener: Callable[[str], Any], seed: int = 0
    ) -> None:
        self.paths = paths
        self.k = k
        self.opener = opener
        self.rng = np.random.default_rng(seed)
        self._open: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.paths) * self.k

    def _array(self, v: int) -> Any:
        if v not in self._open:
            self._open[v] = self.opener(self.paths[v])
        return self._open[v]

    def __getitem__(self, index: int) -> torch.Tensor:
        arr = self._array(index // self.k)
        x, y, z = (int(self.rng.integers(0, n - PATCH + 1)) for n in arr.shape)
        patch = arr[x : x + PATCH, y : y + PATCH, z : z + PATCH]
        patch = np.ascontiguousarray(patch, dtype=np.float32)  # a memmap slice is copied here
        return torch.from_numpy(patch)[None]


def _open_npy(path: str) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def _open_zarr(path: str) -> Any:
    import zarr

    return zarr.open_array(path, mode="r")


def npy_loader(cohort: Cohort, k: int, batch_size: int, seed: int) -> DataLoader:
    paths = [str(cohort.npy(s)) for s in cohort.subjects]
    return _plain_loader(PatchDataset(paths, k, _open_npy, seed), batch_size, seed)


def zarr_loader(cohort: Cohort, k: int, batch_size: int, seed: int) -> DataLoader:
    paths = [str(cohort.zarr(s)) for s in cohort.subjects]
    return _plain_loader(PatchDataset(paths, k, _open_zarr, seed), batch_size, seed)


def _plain_loader(dataset: Dataset, batch_size: int, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0, generator=gen
    )


# -- TorchIO and MONAI, as their tutorials set them up --------------------------------------------
def torchio_max_length(k: int, batch_size: int) -> int:
    """Queue length: the patches of 4 volumes (radiobject's shuffle window), a whole batch count."""
    return batch_size * max(1, -(-4 * k // batch_size))


def torchio_cycle(k: int, batch_size: int) -> int:
    """Batches between two refills of the queue (each refill loads 4 volumes)."""
    return torchio_max_length(k, batch_size) // batch_size


def torchio_loader(cohort: Cohort, k: int, batch_size: int, seed: int) -> DataLoader:
    """``tio.Queue`` over ``.nii.gz`` subjects, holding the patches of about 4 volumes."""
    import torchio as tio

    torch.manual_seed(seed)
    subjects = [tio.Subject(image=tio.ScalarImage(p)) for p in cohort.nifti_paths()]
    queue = tio.Queue(
        tio.SubjectsDataset(subjects),
        max_length=torchio_max_length(k, batch_size),
        samples_per_volume=k,
        sampler=tio.UniformSampler(PATCH),
        num_workers=0,
    )
    return DataLoader(queue, batch_size=batch_size, num_workers=0)


def monai_loader(cohort: Cohort, k: int, batch_size: int, seed: int) -> DataLoader:
    """MONAI ``LoadImaged`` + ``RandSpatialCropd`` on ``.nii.gz``: one patch per volume load."""
    if k != 1:
        raise ValueError("the MONAI peer draws one patch per volume load")
    from monai.data import DataLoader as MonaiLoader
    from monai.data import Dataset as MonaiDataset
    from monai.transforms import Compose, LoadImaged, RandSpatialCropd

    transform = Compose(
        [
            LoadImaged("image", ensure_channel_first=True),
            RandSpatialCropd("image", roi_size=(PATCH, PATCH, PATCH), random_size=False),
        ]
    )
    transform.set_random_state(seed)
    data = [{"image": p} for p in cohort.nifti_paths()]
    gen = torch.Generator().manual_seed(seed)
    return MonaiLoader(
        MonaiDataset(data=data, transform=transform),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=0,
        generator=gen,
    )


# -- the original RadiObject ----------------------------------------------------------------------
def original_radiobject_note() -> str | None:
    """``None`` if the original RadiObject can be imported here, else why it is skipped.

    The original is published under the import name ``radiobject``, which this package owns,
    so it can only be measured from an environment where it is installed instead of ours.
    """
    spec = importlib.util.find_spec("radiobject")
    ours = Path(__file__).resolve().parents[1] / "radiobject"
    if spec is None or spec.origin is None:
        return "radiobject is not importable"
    if Path(spec.origin).resolve().parent == ours:
        return (
            "skipped: the original RadiObject is not installed (its import name `radiobject` is "
            "taken by this package; it was not installed from PyPI on purpose)"
        )
    return None


# -- naive foreground set-up (what a loader without a stored index must do) -----------------------
def scan_masks(cohort: Cohort) -> int:
    """Read every mask ``.nii.gz`` and find its foreground voxels; returns their count."""
    total = 0
    for sid in cohort.subjects:
        mask = load_nifti(cohort.nifti(sid, "seg"))
        total += int(np.count_nonzero(mask))
        np.argwhere(mask > 0)
    return total
