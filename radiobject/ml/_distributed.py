"""Distributed data-parallel loading: one disjoint shard of the dataset per rank."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from radiobject._errors import ConfigurationError
from radiobject.ml._dataset import Labels, VolumeCollectionDataset
from radiobject.ml._loaders import EpochTagged, _config, build_loader
from radiobject.storage._collection import VolumeCollection

__all__ = ["create_distributed_dataloader"]


def create_distributed_dataloader(
    collections: VolumeCollection | Sequence[VolumeCollection],
    rank: int,
    world_size: int,
    labels: Labels = None,
    transform: Callable[[dict[str, Any]], Any] | None = None,
    batch_size: int = 4,
    *,
    patch_size: Sequence[int] | None = None,
    patches_per_volume: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    **loader_kwargs: Any,
) -> DataLoader[Any]:
    """A DataLoader for rank ``rank`` of ``world_size``, sharded by ``DistributedSampler``.

    Call ``loader.sampler.set_epoch(epoch)`` at the start of every epoch (as with any
    ``DistributedSampler``) so shards are reshuffled and patches redrawn.

    Args:
        collections: collection(s) to load (channels).
        rank: this process's rank.
        world_size: number of processes.
        labels: as in :func:`create_training_dataloader`.
        transform: a callable on the sample dict.
        batch_size: samples per batch on this rank.
        patch_size: read random patches (default: whole volumes).
        patches_per_volume: patches per volume and epoch.
        num_workers: worker processes per rank.
        pin_memory: pin batches for faster GPU transfer.
        persistent_workers: keep workers between epochs (default: yes when
            ``num_workers > 0``).
        shuffle: shuffle each epoch (same permutation on every rank, as DistributedSampler).
        seed: sampling seed, identical on every rank.
        drop_last: drop the tail so every rank gets the same number of items.
        **loader_kwargs: further DataLoader options.

    Each rank reads its own half of the subjects; ``set_epoch`` deals new shards:

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=4,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> from radiobject.ml import create_distributed_dataloader
    >>> loaders = [create_distributed_dataloader(radi.T1w, rank=rank, world_size=2,
    ...                                          batch_size=2) for rank in (0, 1)]
    >>> for epoch in range(2):
    ...     for loader in loaders:
    ...         loader.sampler.set_epoch(epoch)
    ...     print(epoch, [[b["obs_id"] for b in loader] for loader in loaders])
    0 [[['sub-000_T1w', 'sub-003_T1w']], [['sub-001_T1w', 'sub-002_T1w']]]
    1 [[['sub-001_T1w', 'sub-002_T1w']], [['sub-003_T1w', 'sub-000_T1w']]]
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigurationError(
            f"rank must be in [0, world_size) and world_size >= 1; got rank={rank}, "
            f"world_size={world_size}"
        )
    cfg = _config(None, patch_size, patches_per_volume, seed)
    dataset = VolumeCollectionDataset(collections, cfg, labels=labels, transform=transform)
    inner: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    return build_loader(
        dataset,
        batch_size=batch_size,
        sampler=EpochTagged(inner),
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers,
        drop_last=False,
        **loader_kwargs,
    )
