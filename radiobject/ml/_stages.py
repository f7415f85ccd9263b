"""Where a loader's time goes: per-process counters of read, transform and collate time.

Each sample adds two ``perf_counter_ns`` deltas (its read, its transform) and its size to
counters of the process; each batch adds its collate time. Nothing is recorded per query
or per sample beyond those sums. Loader workers publish their counters through the
loader's shared state (like their cache counters); :func:`stage_breakdown` turns two
snapshots into milliseconds per sample by stage.
"""

from __future__ import annotations

import dataclasses
import pickle
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import get_worker_info
from torch.utils.data._utils.collate import collate, collate_tensor_fn, default_collate_fn_map

from radiobject._process import Resource
from radiobject.ml._batch_slots import SMALL_BYTES

__all__ = [
    "StageCounters",
    "images_in_place",
    "mark_in_place",
    "sample_nbytes",
    "stack_collate",
    "stage_counters",
]


@dataclass
class StageCounters:
    """Time (ns, summed over threads) and bytes of the samples this process made (monotonic).

    ``read_ns`` is the whole read of a sample (storage queries, cache hits, assembly);
    the storage part of it is ``CacheCounters.storage_ns``.
    """

    samples: int = 0
    sample_bytes: int = 0
    read_ns: int = 0
    transform_ns: int = 0
    batches: int = 0
    collate_ns: int = 0

    def copy(self) -> StageCounters:
        """A snapshot."""
        return StageCounters(**self.__dict__)

    def __sub__(self, other: StageCounters) -> StageCounters:
        return StageCounters(
            **{f.name: getattr(self, f.name) - getattr(other, f.name) for f in _FIELDS}
        )

    def __add__(self, other: StageCounters) -> StageCounters:
        return StageCounters(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in _FIELDS}
        )

    def add_read(self, ns: int, nbytes: int, samples: int = 1) -> None:
        """Count ``samples`` read in ``ns`` nanoseconds, ``nbytes`` large (thread-safe)."""
        with _LOCK.get():
            self.samples += samples
            self.sample_bytes += nbytes
            self.read_ns += ns

    def add_transform(self, ns: int) -> None:
        """Count one sample's transform (thread-safe)."""
        with _LOCK.get():
            self.transform_ns += ns

    def add_collate(self, ns: int) -> None:
        """Count one batch's collate (thread-safe)."""
        with _LOCK.get():
            self.batches += 1
            self.collate_ns += ns


_FIELDS = dataclasses.fields(StageCounters)
STAGE_FIELDS = tuple(f.name for f in _FIELDS)
_STAGES: Resource[StageCounters] = Resource("loader stage counters", StageCounters)
_LOCK: Resource[threading.Lock] = Resource("loader stage counters' lock", threading.Lock)


def stage_counters() -> StageCounters:
    """The stage counters of this process (a forked child starts from zero)."""
    return _STAGES.get()


def sample_nbytes(sample: Any) -> int:
    """Bytes of the arrays in a sample dict (its image, mask, ...): what it delivers."""
    if type(sample) is dict:
        total = 0
        for v in sample.values():
            if type(v) is torch.Tensor or type(v) is np.ndarray:
                total += v.nbytes
            elif not isinstance(v, (str, int, float)):
                total += int(getattr(v, "nbytes", 0) or 0)
        return total
    return int(getattr(sample, "nbytes", 0) or 0)


def _stack_tensors(
    batch: list[Any],
    *,
    collate_fn_map: dict[type | tuple[type, ...], Callable[..., Any]] | None = None,
) -> Any:
    """Tensors of one shape stacked by one NumPy copy in the loading process; else torch's way.

    ``torch.stack`` copies on torch's intra-op threads: on 2 shared cores with reader threads
    busy, stacking four 64³ float32 patches took 0.16-0.39 ms on 2 threads against 0.19 ms
    on one; a NumPy stack (one thread, no setting touched) took 0.14-0.21 ms (noisy runs,
    see the commit). A loader worker keeps torch's way: it stacks into shared memory the
    parent maps, on the one thread PyTorch gives workers.
    """
    first = batch[0]
    if (
        # a worker's large batches go to shared memory as torch stacks them; small ones
        # travel by value (radiobject.ml._batch_slots.for_transport)
        (torch.utils.data.get_worker_info() is None or first.nbytes * len(batch) <= SMALL_BYTES)
        and all(type(t) is torch.Tensor for t in batch)
        and all(
            t.shape == first.shape
            and t.dtype == first.dtype
            and t.device.type == "cpu"
            and t.layout == torch.strided
            and not t.requires_grad
            for t in batch
        )
    ):
        try:
            arrays = [t.numpy() for t in batch]
        except (TypeError, RuntimeError):  # no NumPy twin (bfloat16, conjugate views ...)
            pass
        else:
            return torch.from_numpy(np.stack(arrays))
    return collate_tensor_fn(batch, collate_fn_map=collate_fn_map)


_COLLATE_MAP = {**default_collate_fn_map, torch.Tensor: _stack_tensors}


def stack_collate(batch: list[Any]) -> Any:
    """``default_collate``, with tensors stacked on one thread and in-place batches kept whole.

    The result equals ``default_collate(batch)``; nothing process-wide (torch's thread count)
    is changed for it. A batch whose images the dataset decoded into one array
    (:func:`images_in_place`) is that array, without a copy.

    >>> import torch
    >>> batch = [{"x": torch.zeros(2), "id": "a"}, {"x": torch.ones(2), "id": "b"}]
    >>> out = stack_collate(batch)
    >>> out["x"].tolist(), out["id"]
    ([[0.0, 0.0], [1.0, 1.0]], ['a', 'b'])
    """
    taken = _take_mark(batch)
    if taken is None:
        return collate(batch, collate_fn_map=_COLLATE_MAP)
    image, stacked = taken  # the dataset decoded the images into one array: no copy
    out = {}
    for key in batch[0]:
        if key == "image":
            out[key] = image
            continue
        values = [s[key] for s in batch]
        whole, rows = stacked.get(key, (None, ()))
        if len(rows) == len(values) and all(a is b for a, b in zip(values, rows, strict=True)):
            out[key] = whole  # the samples hold its very rows, in order: it is their stack
        elif all(type(v) is str for v in values):
            out[key] = values  # what default_collate makes of strings
        else:
            out[key] = collate(values, collate_fn_map=_COLLATE_MAP)
    return out


_IN_PLACE = threading.local()  # the batch array this thread decoded last (see images_in_place)


def mark_in_place(
    batch: Any,
    images: list[Any] | None = None,
    stacked: dict[str, tuple[Any, list[Any]]] | None = None,
) -> None:
    """Note ``batch`` as an array this thread decoded a batch's images into, for its collate.

    ``images``: the tensors of its slots as the samples hold them (``list(batch)``); the
    collate then recognises them by identity, without comparing their memory. ``stacked``:
    other keys whose values the dataset made as rows of one tensor, ``key -> (tensor,
    list(tensor))`` (``patch_start``); where the samples still hold those very rows, the
    collate returns the tensor (it equals their stack).
    """
    _IN_PLACE.batch = batch
    _IN_PLACE.images = images
    _IN_PLACE.stacked = stacked


def images_in_place(batch: list[Any]) -> Any:
    """The ``"image"`` tensors of ``batch`` as one tensor without a copy, or None.

    They qualify when they are, in order, the slots of the array this thread last marked
    with :func:`mark_in_place` (``VolumeCollectionDataset`` decodes a batch of patches that
    way): the result is that array, equal to ``torch.stack`` of them, and the mark is
    dropped. Anything else (other samples, transformed images, views of a user's own
    tensor, which a batch must not alias) returns None and is stacked as usual.

    >>> import torch
    >>> base = torch.arange(12.0).reshape(3, 4)
    >>> images_in_place([{"image": t} for t in base]) is None  # not marked: stacked
    True
    >>> mark_in_place(base)
    >>> images_in_place([{"image": base[0]}, {"image": base[2]}]) is None  # not consecutive
    True
    >>> torch.equal(images_in_place([{"image": t} for t in base]), base)
    True
    """
    taken = _take_mark(batch)
    return None if taken is None else taken[0]


def _take_mark(batch: list[Any]) -> tuple[Any, dict[str, tuple[Any, list[Any]]]] | None:
    """The marked array and stacked keys when ``batch``'s images are its slots, else None.

    The mark is dropped when it is taken (see :func:`images_in_place`).
    """
    import torch

    marked = getattr(_IN_PLACE, "batch", None)
    if marked is None or not batch:
        return None
    if not all(type(s) is dict and "image" in s for s in batch):
        return None
    images = [s["image"] for s in batch]
    slots = getattr(_IN_PLACE, "images", None)
    if (
        slots is not None
        and len(slots) == len(images) == marked.shape[0]
        and all(a is b for a, b in zip(images, slots, strict=True))
    ):  # the very slots of the marked array, in order: it is the stacked batch
        return _drop_mark(marked)
    first = images[0]
    if not all(isinstance(t, torch.Tensor) for t in images) or not first.is_contiguous():
        return None
    storage = first.untyped_storage()
    n = first.numel()
    for i, t in enumerate(images):
        if (
            t.shape != first.shape
            or t.dtype != first.dtype
            or t.device != first.device
            or t.requires_grad
            or not t.is_contiguous()
            or t.untyped_storage().data_ptr() != storage.data_ptr()
            or t.storage_offset() != i * n
        ):
            return None
    if storage.nbytes() != len(images) * n * first.element_size():
        return None  # slots of a larger array: stack them
    if marked.untyped_storage().data_ptr() != storage.data_ptr():
        return None  # not the array this thread decoded into
    shape = (len(images), *first.shape)
    strides, step = [], 1
    for size in reversed(shape):  # C order, as torch.stack lays out its result
        strides.append(step)
        step *= size
    out = torch.empty(0, dtype=first.dtype, device=first.device)
    return _drop_mark(out.set_(storage, 0, shape, tuple(reversed(strides))))


def _drop_mark(image: Any) -> tuple[Any, dict[str, tuple[Any, list[Any]]]]:
    stacked = getattr(_IN_PLACE, "stacked", None) or {}
    _IN_PLACE.batch = _IN_PLACE.images = _IN_PLACE.stacked = None
    return image, stacked


class WorkerFailure:
    """A worker's failed batch, carried to the loading process whole (see ``raise_failure``).

    DataLoader turns an exception raised in a worker into a new one of the same type whose
    message is the worker's traceback ("Caught X in DataLoader worker process 0 ..."); a
    radiobject dataset returns this instead, so the loop gets the very error (type, message
    and notes) it gets with ``num_workers=0``. An error that does not survive pickling is
    raised in the worker (DataLoader's way).

    >>> import pickle
    >>> failure = pickle.loads(pickle.dumps(WorkerFailure(KeyError("obs-1"))))
    >>> raise_failure(failure)
    Traceback (most recent call last):
    ...
    KeyError: 'obs-1'
    """

    def __init__(self, error: BaseException) -> None:
        self.error = error


def worker_failure(error: Exception) -> WorkerFailure | None:
    """``error`` to send in place of a batch, in a loader worker (else ``None``: raise it)."""
    if get_worker_info() is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # it would not arrive: DataLoader's own report is better than none
        return None
    return WorkerFailure(error)


def raise_failure(batch: Any) -> Any:
    """``batch``, or the error a worker sent in its place (see :class:`WorkerFailure`)."""
    if isinstance(batch, WorkerFailure):
        error = batch.error
        batch.error = None  # type: ignore[assignment]  # its traceback holds this frame
        raise error
    return batch
