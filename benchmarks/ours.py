"""radiobject's side of the benchmark: readers, loaders, cache control, ingest."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import numpy as np
from cohort import MODALITY, PATCH, Cohort
from torch.utils.data import DataLoader

from radiobject import RadiObject, Volume, VolumeCollection, clear_caches, configure, get_config

Pos = tuple[int, int, int, int, int]


def collection(cohort: Cohort, name: str = MODALITY) -> VolumeCollection:
    """A freshly opened collection (nothing cached on the Python object yet)."""
    return RadiObject(cohort.radi_uri).collection(name)


class RadiReader:
    """Volumes of the cohort as :class:`radiobject.Volume` (default or AXIAL-tiled copy)."""

    def __init__(self, cohort: Cohort, axial_tiles: bool = False) -> None:
        if axial_tiles:
            self.volumes = [Volume(cohort.axial(s)) for s in cohort.subjects]
        else:
            coll = collection(cohort)
            by_subject = dict(zip(coll.obs_subject_ids, coll.obs_ids, strict=True))
            self.volumes = [coll.volume(by_subject[s]) for s in cohort.subjects]
        self.tiles = self.volumes[0].tile_shape

    def full(self, p: Pos) -> np.ndarray:
        return self.volumes[p[0]].to_numpy()

    def axial(self, p: Pos) -> np.ndarray:
        return self.volumes[p[0]].axial(p[4])

    def roi(self, p: Pos) -> np.ndarray:
        _, x, y, z, _ = p
        return self.volumes[p[0]][x : x + PATCH, y : y + PATCH, z : z + PATCH]


def clear_cache() -> None:
    """Empty radiobject's block cache in this process (counters keep counting)."""
    clear_caches()


@contextlib.contextmanager
def cache_mb(mb: int) -> Iterator[None]:
    """Run the block with ``ReadConfig(cache_mb=mb)`` and an empty cache; restore after.

    The local tier stays off (``local_tier_mb=0``): a cache smaller than the cohort would
    turn it on by itself, and these rows measure reads from storage (the tier has its own
    benchmark, ``larger_than_ram.py``).
    """
    with configure(read={"cache_mb": mb, "local_tier_mb": 0}):
        clear_cache()
        yield
    clear_cache()


def default_cache_mb() -> int:
    return get_config().read.cache_mb


def training_loader(
    cohort: Cohort, k: int, batch_size: int, seed: int, num_workers: int = 0
) -> DataLoader:
    from radiobject.ml import create_training_dataloader

    return create_training_dataloader(
        collection(cohort),
        batch_size=batch_size,
        patch_size=(PATCH, PATCH, PATCH),
        patches_per_volume=k,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        seed=seed,
    )


def segmentation_loader(
    cohort: Cohort, k: int, batch_size: int, seed: int
) -> tuple[DataLoader, float]:
    """The foreground-sampling loader and its set-up time in seconds (fresh collections)."""
    from radiobject.ml import create_segmentation_dataloader

    image, mask = collection(cohort), collection(cohort, "seg")
    t = time.perf_counter()
    loader = create_segmentation_dataloader(
        image=image,
        mask=mask,
        batch_size=batch_size,
        patch_size=(PATCH, PATCH, PATCH),
        patches_per_volume=k,
        foreground_sampling=True,
        seed=seed,
    )
    return loader, time.perf_counter() - t


def loader_counters(loader: DataLoader) -> tuple[int, int]:
    """(hits, misses) of radiobject's cache so far, workers included."""
    from radiobject.ml import loader_cache_counters

    c = loader_cache_counters(loader)
    return c.hits, c.misses


def ingest_from_images(cohort: Cohort, target: str) -> None:
    """``RadiObject.from_images`` of the T1w ``.nii.gz`` files (read, then write TileDB)."""
    glob = str(cohort.nifti_dir / MODALITY / "*.nii.gz")
    RadiObject.from_images(target, {MODALITY: glob}, progress=False)


def write_from_numpy(arrays: dict[str, np.ndarray], target: str) -> None:
    """``VolumeCollection.from_numpy`` of in-memory volumes (TileDB write only)."""
    VolumeCollection.from_numpy(target, arrays, name=MODALITY)


def collection_bytes_uri(cohort: Cohort) -> str:
    """Where the T1w collection is stored (for its disk size)."""
    return collection(cohort).uri
