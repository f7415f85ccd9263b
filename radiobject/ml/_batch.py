"""The batch path: what ``VolumeCollectionDataset.__getitems__`` does with a batch of keys.

A batch of patches of one shape, without ``transform`` and with the dataset's stock read
hooks, is decoded straight into one float32 array, a batch slot
(:mod:`radiobject.ml._batch_slots`): each sample's ``image``, ``patch_start`` (and
``label``, when the batch's labels are all integers or all floats) are rows of one tensor
per key, which the loader's collate (:func:`~radiobject.ml._stages.stack_collate`) hands on
whole, with no copy and no stack per key. Any other batch is read sample by sample
(``dataset._load``) and transformed in order, each sample seeded from its key.

Who reads: a batch whose volumes are all in the local tier or held whole in memory is read
in this thread; any other batch of several samples is read on the read pool's threads
(TileDB releases the GIL while it reads and decompresses), see :func:`read_in_this_thread`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import get_worker_info

from radiobject.config import Scope, current_scope, in_scope
from radiobject.ml._batch_slots import LocalSlots, note_slot
from radiobject.ml._config import DatasetConfig, LoadingMode
from radiobject.ml._plan import SamplePlan
from radiobject.ml._read_ahead import ahead_state
from radiobject.ml._shared import current_state, read_pool, sync_worker
from radiobject.ml._stages import mark_in_place, sample_nbytes, stage_counters
from radiobject.ml._subjects import to_tensor_rows
from radiobject.read import reader, served_locally

__all__ = ["batch_buffer", "read_batch", "read_in_this_thread"]

Key = tuple[int, int]


class BatchedDataset(Protocol):
    """What the batch path uses of its dataset (``VolumeCollectionDataset``).

    A protocol, not the class: ``ml._dataset`` imports this module, so this module never
    imports it (no import circle, TYPE_CHECKING included).
    """

    _stock_reads: bool
    _stock_plan: bool
    _slots: LocalSlots | None
    auto_tier_mb: int
    loader_scope: Scope | None

    @property
    def collections(self) -> Sequence[Any]: ...
    @property
    def refs(self) -> Sequence[Any]: ...
    @property
    def config(self) -> DatasetConfig: ...
    @property
    def transform(self) -> Any: ...
    @property
    def labels(self) -> Any: ...

    def volume_of(self, index: int) -> int: ...
    def plan(self, key: int | Key) -> SamplePlan: ...
    def apply_transform(self, sample: dict[str, Any], key: Key) -> Any: ...
    def _key(self, key: int | Key) -> Key: ...
    def _plan(self, key: Key) -> SamplePlan: ...
    def _load(self, key: Key, scope: Scope | None = None) -> dict[str, Any]: ...
    def _plan_and_read(self, key: Key) -> dict[str, Any]: ...
    def _read_ahead(self, keys: Sequence[int | Key]) -> None: ...
    def _sample_dict(
        self, index: int, image: torch.Tensor, patch_start: torch.Tensor, label: Any = None
    ) -> dict[str, Any]: ...


def read_batch(ds: BatchedDataset, keys: Sequence[int | Key]) -> list[Any]:
    """The samples of ``keys``, read together (see the module), transformed in order."""
    sync_worker()  # settings published by the parent apply before these reads
    with in_scope(ds.loader_scope):
        parsed = [ds._key(k) for k in keys]
        ds._read_ahead(keys)
        mark_in_place(None)  # a mark a failed batch left behind is stale
        batch = batch_buffer(ds, parsed) if len(parsed) > 1 else None
        samples = _read_samples(ds, parsed) if batch is None else _read_in_place(ds, parsed, batch)
    sync_worker()  # and the parent sees these reads in the counters
    if batch is not None:
        return samples  # no transform: the stock apply_transform would return them as they are
    return [ds.apply_transform(s, k) for s, k in zip(samples, parsed, strict=True)]


def batch_buffer(ds: BatchedDataset, keys: Sequence[Key]) -> torch.Tensor | None:
    """One float32 tensor for the images of a batch of patches, or None.

    Each sample's image is decoded into its place in the batch, so collating the batch
    needs no copy (:func:`~radiobject.ml._stages.stack_collate` finds the images in order
    and returns the array). Without ``transform``, with the stock read hooks, for patches
    of one shape. The memory is a batch slot (:mod:`radiobject.ml._batch_slots`): this
    process's own, or in a worker of radiobject's loaders one of the loader's shared
    slots, which the collate sends as a reference.
    """
    if (
        ds.transform is not None
        or ds.config.loading_mode is not LoadingMode.PATCH
        or ds.config.patch_size is None
        or not type(ds)._stock_reads
    ):
        return None
    shapes = {ds.refs[ds.volume_of(i)].shape[3:] for _, i in keys}
    if len(shapes) != 1:
        return None
    channels = len(ds.collections)
    shape = (len(keys), channels, *ds.config.patch_size, *shapes.pop())
    # memory reused only by the rule of radiobject.ml._batch_slots: a slot is given back
    # when every tensor viewing it is freed, so a batch kept is never written again
    if get_worker_info() is None:
        slots = getattr(ds, "_slots", None)
        if slots is None:
            slots = ds._slots = LocalSlots()
        return slots.take(shape)
    shared = current_state()
    if shared is None or shared.slots is None:
        return None  # another DataLoader's worker: samples stacked into shared memory
    taken = shared.slots.take(shape)
    if taken is None:  # every slot is held: this batch is stacked as usual
        return None
    note_slot(taken[0], taken[1], shared.slots)  # the collate sends the slot, not bytes
    return taken[0]


def read_in_this_thread(ds: BatchedDataset, keys: Sequence[Key]) -> bool:
    """Whether the batch of ``keys`` is read in this thread rather than on the read pool.

    True when every volume is read from the local tier or held whole in memory (this
    process's cache, or a loader's shared store): blosc2 decodes holding the GIL, and a
    copy from memory is too short for the pool's hand-offs to pay. Measured on a loaded
    2-core machine (64³ patches of volumes in the RAM cache, no workers, 4 process
    pairs): 125-227 µs of CPU per sample in this thread against 156-352 on the pool, and
    faster in 3 of the 4 pairs; local tier: 0.50 against 0.54 ms per patch.
    """
    volumes = {ds.volume_of(index) for _, index in keys}
    mb, r = ds.auto_tier_mb, reader()
    uris = [uri for v in volumes for uri in ds.refs[v].uris]
    return all(r.in_memory(uri) or served_locally(uri, mb) for uri in uris)


def _read_samples(ds: BatchedDataset, keys: list[Key]) -> list[dict[str, Any]]:
    """Each sample of ``keys`` planned, read and built on its own (before ``transform``)."""
    if len(keys) > 1 and not read_in_this_thread(ds, keys):
        scope = current_scope()  # the pool's threads read under this thread's settings
        return list(read_pool().map(ds._load, keys, [scope] * len(keys)))
    start, samples, nbytes = time.perf_counter_ns(), [], 0  # one clock and count for all
    for key in keys:
        sample = ds._plan_and_read(key)
        nbytes += sample_nbytes(sample)
        samples.append(sample)
    stage_counters().add_read(time.perf_counter_ns() - start, nbytes, len(samples))
    return samples


def _read_in_place(
    ds: BatchedDataset, keys: list[Key], batch: torch.Tensor
) -> list[dict[str, Any]]:
    """The samples of ``keys``, their images decoded into the rows of ``batch``.

    Each sample's ``patch_start`` is a row of one tensor of the batch's corners, and its
    ``label`` a row of one tensor of its labels where they are all integers or all floats;
    those tensors and the batch are marked for this thread's collate
    (:func:`~radiobject.ml._stages.mark_in_place`), which returns them whole.
    """
    ahead = ahead_state(ds)  # the stock fetch: what was read ahead, else read now
    take = None if ahead is None else ahead.take
    planner = ds._plan if type(ds)._stock_plan else ds.plan  # the keys are resolved
    rows = batch.numpy()
    start = time.perf_counter_ns()
    if len(keys) > 1 and not read_in_this_thread(ds, keys):
        read = partial(_timed_decode, planner, take, current_scope())
        done = list(read_pool().map(read, keys, rows))
        plans, ns = [p for p, _ in done], sum(t for _, t in done)  # summed over threads
    else:
        plans = [_decode(planner, take, key, out) for key, out in zip(keys, rows, strict=True)]
        ns = time.perf_counter_ns() - start
    starts = torch.from_numpy(np.array([p.start for p in plans], dtype=np.int64))
    images, corners = list(batch.unbind()), list(starts.unbind())
    stacked: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {"patch_start": (starts, corners)}
    labels = _labels(ds, plans)
    if labels is not None:
        stacked["label"] = labels
    label_rows: list[Any] = [None] * len(plans) if labels is None else labels[1]
    samples = [
        ds._sample_dict(p.index, image, corner, label)
        for p, image, corner, label in zip(plans, images, corners, label_rows, strict=True)
    ]
    mark_in_place(batch, images, stacked)
    nbytes = batch.nbytes + starts.nbytes  # the samples' images and corners: their rows
    if ds.labels:
        nbytes += sum(sample_nbytes(s["label"]) for s in samples)
    stage_counters().add_read(ns, nbytes, len(samples))
    return samples


def _labels(
    ds: BatchedDataset, plans: list[SamplePlan]
) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
    """The batch's labels as one tensor and its rows (see ``to_tensor_rows``), or None."""
    if not ds.labels:
        return None
    return to_tensor_rows([ds.labels[ds.refs[ds.volume_of(p.index)].obs_id] for p in plans])


def _decode(
    planner: Callable[[Key], SamplePlan], take: Any, key: Key, out: np.ndarray
) -> SamplePlan:
    """Plan ``key``, fetch its reads (``take``: the read-ahead's) and decode them into ``out``."""
    plan = planner(key)
    r = reader()
    r.decode(plan.reads, r.fetch(plan.reads, take), into=out)
    return plan


def _timed_decode(
    planner: Callable[[Key], SamplePlan],
    take: Any,
    scope: Scope | None,
    key: Key,
    out: np.ndarray,
) -> tuple[SamplePlan, int]:
    """:func:`_decode` on a pool thread, under ``scope``; with its time (ns)."""
    with in_scope(scope):
        start = time.perf_counter_ns()
        return _decode(planner, take, key, out), time.perf_counter_ns() - start
