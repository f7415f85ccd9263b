"""Batch memory a loader reuses: handed out with a batch, given back when the batch is freed.

The ownership rule, the only way batch memory is reused: a *slot* is taken when a batch of
patches is decoded into it, and is free again once the loading process has freed every
tensor that views it. The NumPy array under the batch tensor's storage carries a
``weakref.finalize`` that frees the slot (``torch.from_numpy`` keeps that array alive for as
long as any tensor or view of the storage lives); nothing reads reference counts. A batch
that finds no free slot (the training loop still holds them all) gets new memory.

* :class:`LocalSlots`: the loading process's own batches (no workers), plain arrays. A
  reused slot is memory already mapped and warm: a fresh 4 MiB batch costs its page faults
  on every batch.
* :class:`SharedSlots`: a loader's workers decode into files of the loader's ``/dev/shm``
  folder, and send a small :class:`SlotImage` that the loading process maps (each slot's
  pages are written and mapped once). Without it, every batch is a new shared-memory
  segment whose file descriptor the loading process fetches from the worker over a socket.
"""

from __future__ import annotations

import math
import mmap
import os
import threading
import weakref
from typing import Any

import numpy as np
import torch

__all__ = ["ByValue", "LocalSlots", "SharedSlots", "SlotImage", "for_transport", "note_slot"]

LOCAL_SLOTS = 4  # the batch in the training step, the next one, and room for a lag
SMALL_BYTES = 1 << 16  # tensors up to this size go from a worker by value, not by fd


class LocalSlots:
    """Up to ``count`` float32 batch buffers of one dataset in the loading process.

    >>> slots = LocalSlots(count=1)
    >>> a = slots.take((2, 3))
    >>> b = slots.take((2, 3))  # the only slot is a's: new memory
    >>> a.data_ptr() != b.data_ptr()
    True
    >>> ptr = a.data_ptr()
    >>> del a  # every tensor viewing the slot is freed: it is free again
    >>> slots.take((2, 3)).data_ptr() == ptr
    True
    """

    def __init__(self, count: int = LOCAL_SLOTS) -> None:
        self.count = count
        self._free: list[np.ndarray] = []
        self._made = 0
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A float32 tensor of ``shape`` on a free slot (new memory if none is free)."""
        n = math.prod(shape)
        buf: np.ndarray | None = None
        with self._lock:
            # taken by position: list.remove would compare arrays with == (elementwise)
            fits = next((i for i, b in enumerate(self._free) if b.size >= n), None)
            if fits is not None:
                buf = self._free.pop(fits)
            elif self._free:  # free slots too small for this shape: replace one
                self._free.pop()
                buf = np.empty(n, np.float32)
            elif self._made < self.count:
                self._made += 1
                buf = np.empty(n, np.float32)
        if buf is None:
            return torch.empty(shape, dtype=torch.float32)
        view = buf[:n].reshape(shape)
        weakref.finalize(view, self._give_back, buf)  # when the storage's last view dies
        return torch.from_numpy(view)

    def _give_back(self, buf: np.ndarray) -> None:
        with self._lock:
            self._free.append(buf)


_TAKEN, _FREE = 1, 0
_REGISTRY: weakref.WeakValueDictionary[str, SharedSlots] = weakref.WeakValueDictionary()


class SharedSlots:
    """``count`` batch files in a loader's shared-memory folder, and who holds each.

    Made by the loading process (:class:`~radiobject.ml._shared.SharedLoaderState`); its
    workers :meth:`take` a free slot, decode a batch into it and send a :class:`SlotImage`;
    the loading process maps it (:meth:`handout`) and frees the slot when the batch's
    tensors are freed. A file grows to the largest batch it held, never shrinks.

    >>> import multiprocessing, tempfile
    >>> slots = SharedSlots(multiprocessing.get_context("spawn"), tempfile.mkdtemp(), 2)
    >>> image, ref = slots.take((2, 4))  # in a worker
    >>> _ = image.fill_(7.0)
    >>> batch = slots.handout(ref.slot, ref.shape)  # in the loading process
    >>> batch.tolist()[0], slots.held()
    ([7.0, 7.0, 7.0, 7.0], 1)
    >>> del image, batch
    >>> slots.held()
    0
    """

    def __init__(self, mp_context: Any, directory: str, count: int) -> None:
        self.directory = directory
        self.count = count
        self.flags = mp_context.Array("b", count)  # _FREE / _TAKEN, under its lock
        self.sizes = mp_context.Array("q", count, lock=False)  # bytes of each slot's file
        self._maps: dict[int, mmap.mmap] = {}  # this process's mappings
        self._map_lock = threading.Lock()
        self.handouts = 0  # batches handed out through a slot in this process
        _REGISTRY[directory] = self

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_maps", "_map_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._maps, self._map_lock = {}, threading.Lock()

    def held(self) -> int:
        """Slots taken now (by a worker, in flight, or held by the training loop)."""
        with self.flags.get_lock():
            return sum(1 for f in self.flags.get_obj() if f == _TAKEN)

    def take(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, SlotImage] | None:
        """In a worker: a float32 tensor of ``shape`` on a free slot and its reference.

        None when every slot is taken, or the folder has no room for the batch (the
        caller then makes the batch in new memory, as PyTorch does).
        """
        with self.flags.get_lock():
            flags = self.flags.get_obj()
            slot = next((i for i in range(self.count) if flags[i] == _FREE), None)
            if slot is None:
                return None
            flags[slot] = _TAKEN
        try:
            view = self._view(slot, shape, grow=True)
        except OSError:  # no room in /dev/shm: never write a mapping that could SIGBUS
            self.free(slot)
            return None
        return torch.from_numpy(view), SlotImage(self.directory, slot, shape)

    def handout(self, slot: int, shape: tuple[int, ...]) -> torch.Tensor:
        """In the loading process: slot ``slot`` as a tensor; freed with its last view."""
        view = self._view(slot, shape, grow=False)
        weakref.finalize(view, self.free, slot)
        self.handouts += 1
        return torch.from_numpy(view)

    def free(self, slot: int) -> None:
        """Mark ``slot`` free (its batch's tensors are gone)."""
        with self.flags.get_lock():
            self.flags.get_obj()[slot] = _FREE

    def _path(self, slot: int) -> str:
        return os.path.join(self.directory, f"batch-slot-{slot}.bin")

    def _view(self, slot: int, shape: tuple[int, ...], grow: bool) -> np.ndarray:
        nbytes = math.prod(shape) * 4
        with self._map_lock:
            mapped = self._maps.get(slot)
            if mapped is None or len(mapped) < nbytes:
                fd = os.open(self._path(slot), os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    if grow and self.sizes[slot] < nbytes:
                        os.posix_fallocate(fd, 0, nbytes)  # ENOSPC here, not SIGBUS later
                        self.sizes[slot] = nbytes
                    mapped = mmap.mmap(fd, max(nbytes, os.fstat(fd).st_size))
                finally:
                    os.close(fd)
                self._maps[slot] = mapped  # an older mapping lives on in arrays still using it
        return np.frombuffer(mapped, np.float32, math.prod(shape)).reshape(shape)


class SlotImage:
    """A worker's batch image in slot ``slot`` of ``directory``: unpickled as the tensor."""

    def __init__(self, directory: str, slot: int, shape: tuple[int, ...]) -> None:
        self.directory, self.slot, self.shape = directory, slot, shape

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_slot, (self.directory, self.slot, self.shape))


def _rebuild_slot(directory: str, slot: int, shape: tuple[int, ...]) -> torch.Tensor:
    slots = _REGISTRY.get(directory)
    if slots is None:  # only the loading process unpickles a worker's batch, while it lives
        raise RuntimeError(
            f"a worker's batch (slot {slot} of {directory!r}) arrived in a process whose "
            "loader is gone; iterate a loader only in the process that built it"
        )
    return slots.handout(slot, shape)


class ByValue:
    """A small tensor a worker sends in the pickle's bytes (no shared memory, no fd)."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.array = tensor.numpy()

    def __reduce__(self) -> tuple[Any, ...]:
        return (torch.from_numpy, (self.array,))


_NOTED = threading.local()  # the slot this thread decoded a batch into, not yet sent


def note_slot(image: torch.Tensor, ref: SlotImage, slots: SharedSlots) -> None:
    """In a worker: the batch being made is decoded into ``image``, slot ``ref.slot``.

    A slot noted before and never sent (its batch failed, or was stacked elsewhere) is
    freed now: nothing of this worker's views it any more.
    """
    _drop_noted()
    _NOTED.value = (image.data_ptr(), image.shape, ref, slots)


def _drop_noted() -> None:
    noted = getattr(_NOTED, "value", None)
    _NOTED.value = None
    if noted is not None:
        noted[3].free(noted[2].slot)


def for_transport(batch: Any) -> Any:
    """A worker's collated ``batch`` as it travels to the loading process.

    Its image, when it is the slot the batch was decoded into (:func:`note_slot`), goes as a
    :class:`SlotImage`; tensors of a few bytes (``patch_start``, labels) go by value.
    PyTorch would send each tensor through a new shared-memory segment whose file
    descriptor the loading process fetches from the worker over a socket: about a
    millisecond per tensor on a busy 2-core machine.
    """
    noted = getattr(_NOTED, "value", None)
    if not isinstance(batch, dict):
        _drop_noted()
        return batch
    out = {k: _small(v) for k, v in batch.items()}
    image = batch.get("image")
    if (
        noted is not None
        and type(image) is torch.Tensor
        and image.data_ptr() == noted[0]
        and image.shape == noted[1]
        and image.is_contiguous()
    ):
        _NOTED.value = None  # the loading process frees it now
        out["image"] = noted[2]
    else:
        _drop_noted()
    return out


def _small(value: Any) -> Any:
    if (
        type(value) is torch.Tensor
        and value.device.type == "cpu"
        and value.layout == torch.strided
        and not value.requires_grad
        and value.is_contiguous()
        and value.nbytes <= SMALL_BYTES
    ):
        try:
            return ByValue(value)
        except (TypeError, RuntimeError):  # no NumPy twin (bfloat16 ...): torch's way
            return value
    return value
