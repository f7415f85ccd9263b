"""Distributed data-parallel loading: one disjoint shard of the dataset per rank.

Shards are those of ``DistributedSampler`` (same order, padding and striding), drawn by a
resumable sampler: a run saved at any step can go on with another number of ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tiledb
import torch

from radiobject._errors import ConfigurationError
from radiobject.ml._config import factory_config
from radiobject.ml._dataset import VolumeCollectionDataset
from radiobject.ml._loaders import build_loader
from radiobject.ml._params import parse_loader_params
from radiobject.ml._recipe import recorded
from radiobject.ml._state import RadiObjectLoader, ResumableSampler
from radiobject.ml._subjects import Labels
from radiobject.storage import VolumeCollection

__all__ = ["DistributedEpochSampler", "create_distributed_dataloader"]


class DistributedEpochSampler(ResumableSampler):
    """``DistributedSampler``'s shards as ``(epoch, index)`` keys, resumable mid-epoch.

    The epoch's order is ``DistributedSampler``'s (``torch.randperm`` seeded with
    ``seed + epoch``, the same on every rank), padded or cut to equal shares and strided
    over the ranks. After :meth:`~ResumableSampler.resume_at` a pass shards only the rest
    of the epoch, over this sampler's ``world_size``, which may differ from the saving
    run's. Unlike ``DistributedSampler``, each pass moves on to the next epoch by itself;
    ``set_epoch`` still sets it.

    Args:
        dataset: the dataset (anything with ``len``).
        rank: this process's rank.
        world_size: number of ranks.
        shuffle: shuffle each epoch.
        seed: order seed, identical on every rank.
        drop_last: cut the epoch to equal shares instead of padding it.

    >>> one = DistributedEpochSampler(range(5), rank=0, world_size=1)
    >>> one.order(0)
    [4, 0, 1, 3, 2]
    >>> shards = [DistributedEpochSampler(range(5), rank=r, world_size=2) for r in (0, 1)]
    >>> [[i for _, i in s] for s in shards]  # 5 items padded to 6, as DistributedSampler
    [[4, 1, 2], [0, 3, 4]]
    >>> for s in shards:  # a one-rank run had consumed 4 and 0: two ranks share the rest
    ...     s.resume_at(epoch=0, samples=2)
    >>> [[i for _, i in s] for s in shards]
    [[1, 2], [3, 1]]
    """

    def __init__(
        self,
        dataset: Any,
        rank: int,
        world_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            len(dataset), seed=seed, rank=rank, world_size=world_size, drop_last=drop_last
        )
        self.shuffle = bool(shuffle)

    @property
    def order_name(self) -> str:
        """``"randperm"`` (shuffled as ``DistributedSampler``) or ``"sequential"``."""
        return "randperm" if self.shuffle else "sequential"

    def order(self, epoch: int) -> list[int]:
        """The global order of ``epoch``: ``DistributedSampler``'s permutation."""
        if not self.shuffle:
            return list(range(self.n))
        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)
        return [int(i) for i in torch.randperm(self.n, generator=generator)]


@recorded
def create_distributed_dataloader(
    collections: VolumeCollection | Sequence[VolumeCollection],
    rank: int,
    world_size: int,
    labels: Labels = None,
    transform: Callable[[dict[str, Any]], Any] | None = None,
    batch_size: int = 4,
    *,
    patch_size: Sequence[int] | int | None = None,
    patches_per_volume: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool | None = None,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = False,
    ctx: tiledb.Ctx | None = None,
    **loader_kwargs: Any,
) -> RadiObjectLoader:
    """A DataLoader for rank ``rank`` of ``world_size``, sharded as by ``DistributedSampler``.

    Each pass is the next epoch; calling ``loader.sampler.set_epoch(epoch)`` at the start of
    every epoch (as with any ``DistributedSampler``) keeps the ranks in step explicitly.
    ``loader.state_dict()`` of any rank resumes the run on any number of ranks (see
    :class:`DistributedEpochSampler`).

    Args:
        collections: collection(s) to load (channels).
        rank: this process's rank.
        world_size: number of processes.
        labels: as in :func:`create_training_dataloader`.
        transform: a callable on the sample dict.
        batch_size: samples per batch on this rank.
        patch_size: read random patches, three integers or one for a cube (default: whole
            volumes).
        patches_per_volume: patches per volume and epoch.
        num_workers: worker processes per rank.
        pin_memory: pin batches for faster GPU transfer.
        persistent_workers: keep workers between epochs (default: yes when
            ``num_workers > 0``).
        shuffle: shuffle each epoch (same permutation on every rank, as DistributedSampler).
        seed: sampling seed, identical on every rank.
        drop_last: drop the tail so every rank gets the same number of items.
        ctx: a ``tiledb.Ctx`` to read the collections with (default: each one's own).
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
    p = parse_loader_params(
        "create_distributed_dataloader",
        patch_size=patch_size,
        batch_size=batch_size,
        num_workers=num_workers,
        transform=transform,
        ctx=ctx,
    )
    cfg = factory_config(None, p.patch_size, patches_per_volume, seed)
    dataset = VolumeCollectionDataset(
        collections, cfg, labels=labels, transform=p.transform, ctx=p.ctx
    )
    sampler = DistributedEpochSampler(
        dataset, rank, world_size, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    return build_loader(
        dataset,
        batch_size=p.batch_size,
        sampler=sampler,
        num_workers=p.num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers,
        drop_last=False,
        **loader_kwargs,
    )
