"""A sample's randomness, handed to its transform: never drawn from a global generator.

Each sample's augmentation seed is a function of its key ``(seed, epoch, index)``
(:func:`~radiobject.ml._sampling.transform_seed`), so the same key gives the same sample in
any process, with any number of workers, and after a resume. The seed reaches the transform
in one of three ways, none of which touches ``random``, ``np.random`` or torch's default
generator behind the user's back (another thread of the process may be drawing from them):

* MONAI's ``Randomizable`` protocol: a transform with ``set_random_state`` (a ``Compose``
  passes a seed on to each random member) is reseeded before the call. That mutates the
  transform object (as MONAI's own loaders do), so the reseed and the call hold a lock of
  that transform: two threads sharing one transform never interleave their draws;
* :func:`sample_generator` / :func:`sample_rng`: inside the call, a plain callable asks for
  a ``torch.Generator`` or a NumPy ``Generator`` built from the sample's seed, e.g.
  ``torch.rand(shape, generator=sample_generator())``;
* :class:`SeededGlobally`: for code that can only draw from the global generators (TorchIO's
  random transforms use torch's, with no generator argument), an explicit opt-in wrapper.

A callable that draws from the global generators without the wrapper is simply random: its
results differ between runs and between ``num_workers`` settings.
"""

from __future__ import annotations

import contextvars
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import numpy as np
import torch

from radiobject._errors import ConfigurationError
from radiobject._process import Resource

__all__ = ["SeededGlobally", "sample_generator", "sample_rng", "seeded_call"]


class _SampleRandomness:
    """The seed of the sample being transformed, and the generators built from it (lazily)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.torch: torch.Generator | None = None
        self.numpy: np.random.Generator | None = None


# per thread (each thread runs in its own context): the sample its transform call is for
_CURRENT: contextvars.ContextVar[_SampleRandomness | None] = contextvars.ContextVar(
    "radiobject_sample_randomness", default=None
)


def _current(what: str) -> _SampleRandomness:
    found = _CURRENT.get()
    if found is None:
        raise ConfigurationError(
            f"{what}() gives the randomness of the sample being transformed, and no "
            "radiobject dataset is transforming a sample in this thread; call it inside a "
            "transform passed to a radiobject dataset or loader"
        )
    return found


def sample_generator() -> torch.Generator:
    """A CPU ``torch.Generator`` of the sample being transformed, seeded from its key.

    The same generator for every call within one sample's transform (draws continue its
    stream); a different sample gets its own. Only inside a transform call.

    >>> import os, tempfile, torch
    >>> from radiobject.data import make_sample_radiobject
    >>> from radiobject.ml import VolumeCollectionDataset, sample_generator
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> def jitter(sample):
    ...     noise = torch.rand(sample["image"].shape, generator=sample_generator())
    ...     return {**sample, "image": sample["image"] + noise}
    >>> ds = VolumeCollectionDataset(radi.T1w, transform=jitter)
    >>> torch.equal(ds[0]["image"], ds[0]["image"]), torch.equal(ds[0]["image"], ds[1]["image"])
    (True, False)
    """
    found = _current("sample_generator")
    if found.torch is None:
        found.torch = torch.Generator().manual_seed(found.seed)
    return found.torch


def sample_rng() -> np.random.Generator:
    """A NumPy ``Generator`` of the sample being transformed (see :func:`sample_generator`).

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> from radiobject.ml import VolumeCollectionDataset, sample_rng
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=1,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> draw = lambda s: {**s, "k": sample_rng().random()}
    >>> ds = VolumeCollectionDataset(radi.T1w, transform=draw)
    >>> ds[0]["k"] == ds[0]["k"]
    True
    >>> sample_rng()  # outside a transform call
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: sample_rng() gives the randomness of ...
    """
    found = _current("sample_rng")
    if found.numpy is None:
        found.numpy = np.random.default_rng(found.seed)
    return found.numpy


class _TransformLocks:
    """This process's transform locks.

    A forked worker gets new ones: a lock a parent's thread held at the fork would stay held
    in the child.
    """

    def __init__(self) -> None:
        # re-entrant: a transform that reads another sample of its dataset does not deadlock
        self.fallback = threading.RLock()  # a transform that cannot be weakly referenced
        self.by_transform: WeakKeyDictionary[Any, threading.RLock] = WeakKeyDictionary()
        self.guard = threading.Lock()
        self.globals = threading.RLock()  # SeededGlobally calls never interleave


_LOCKS: Resource[_TransformLocks] = Resource("transform locks", _TransformLocks)


def _lock_of(transform: Any) -> threading.RLock:
    """The lock held while ``transform`` is reseeded and called (one per transform object)."""
    locks = _LOCKS.get()
    with locks.guard:
        try:
            lock = locks.by_transform.get(transform)
            if lock is None:
                lock = locks.by_transform[transform] = threading.RLock()
        except TypeError:  # not hashable or not weakly referenceable
            return locks.fallback
        return lock


def seeded_call(transform: Callable[[Any], Any], sample: Any, seed: int) -> Any:
    """``transform(sample)`` with the randomness of ``seed`` handed to it (see the module).

    >>> import numpy as np
    >>> class Flip:  # MONAI's Randomizable protocol: a generator of its own
    ...     def set_random_state(self, seed=None):
    ...         self.R = np.random.RandomState(seed)
    ...     def __call__(self, x):
    ...         return x[::-1] if self.R.rand() < 0.5 else x
    >>> flip = Flip()
    >>> [seeded_call(flip, [1, 2], s) == seeded_call(flip, [1, 2], s) for s in range(4)]
    [True, True, True, True]
    """
    token = _CURRENT.set(_SampleRandomness(seed))
    try:
        reseed = getattr(transform, "set_random_state", None)
        if not callable(reseed):
            return transform(sample)
        with _lock_of(transform):
            reseed(seed=seed)
            return transform(sample)
    finally:
        _CURRENT.reset(token)


@dataclass(frozen=True)
class SeededGlobally:
    """Opt in: run ``transform`` with the global generators seeded from the sample's key.

    For augmentations that can only draw from ``random``, ``np.random`` or torch's default
    CPU generator (TorchIO's random transforms draw from torch's and take no generator):
    each call seeds those three from the sample's seed, runs ``transform``, and puts the
    previous states back. That is what makes such a transform repeatable across runs and
    ``num_workers``; the cost, which this wrapper makes explicit, is that any other thread
    drawing from those generators during the call draws from the sample's stream, and its
    own stream is replayed after. Calls of ``SeededGlobally`` transforms are serialised with
    each other. In DataLoader worker processes nothing else draws; with ``num_workers=0``
    the training thread and radiobject's reader threads do not either. Prefer
    :func:`sample_generator` where the code is yours.

    >>> import os, tempfile, torch
    >>> from radiobject.data import make_sample_radiobject
    >>> from radiobject.ml import SeededGlobally, VolumeCollectionDataset
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=1,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> noisy = lambda s: {**s, "image": s["image"] + torch.rand(s["image"].shape)}
    >>> ds = VolumeCollectionDataset(radi.T1w, transform=SeededGlobally(noisy))
    >>> state = torch.get_rng_state()
    >>> torch.equal(ds[0]["image"], ds[0]["image"]), torch.equal(torch.get_rng_state(), state)
    (True, True)
    """

    transform: Callable[[Any], Any]

    def __call__(self, sample: Any) -> Any:
        seed = _current("SeededGlobally").seed
        with _LOCKS.get().globals:
            py_state, np_state = random.getstate(), np.random.get_state()
            torch_state = torch.get_rng_state()
            random.seed(seed)
            np.random.seed(seed)
            torch.default_generator.manual_seed(seed)  # the CPU one: what is restored
            try:
                return self.transform(sample)
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
                torch.set_rng_state(torch_state)
