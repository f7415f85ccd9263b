"""Exact mid-epoch resume: a loader's position, saved with the checkpoint and restored.

A sample is a pure function of its key ``(seed, epoch, index)`` (volume, patch position and
augmentation seed), and the order of an epoch is a pure function of ``(seed, epoch)``. So the
whole state of a loader is where the run is in that order: the epoch, and how many of its
samples the run has consumed, counted over all ranks. Resuming skips those and deals the
rest out again, to any number of workers (batches are put together in the main process and
returned in order, whichever worker read them) and to any number of ranks (the remainder of
the epoch is re-sharded).
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, Sampler

from radiobject._errors import ConfigurationError
from radiobject.config import in_scope
from radiobject.ml._recipe import LoaderRecipe
from radiobject.ml._stages import raise_failure
from radiobject.ml._start_method import check_workers_can_start
from radiobject.storage import RadiObject, Version, VolumeCollection, written_between

__all__ = ["STATE_VERSION", "EpochPass", "RadiObjectLoader", "ResumableSampler"]

STATE_VERSION = 1
"""Version of the dict :meth:`RadiObjectLoader.state_dict` returns."""


@dataclass
class EpochPass:
    """One pass over (the rest of) an epoch, as one rank sees it.

    Attributes:
        epoch: the epoch.
        start: samples of the epoch consumed by the whole run before this pass.
        remaining: samples of the epoch's order after ``start`` (over all ranks).
        indices: this rank's share of them, in order (padded or cut to equal shares).
        world_size: ranks sharing the epoch.
        yielded: samples of ``indices`` handed to the training loop so far.
        done: the pass ran to its end.
    """

    epoch: int
    start: int
    remaining: int
    indices: list[int]
    world_size: int
    yielded: int = 0
    done: bool = False

    def consumed(self) -> int:
        """Samples of the epoch the whole run has consumed (all ranks move in step).

        >>> p = EpochPass(epoch=0, start=4, remaining=5, indices=[7, 1, 3], world_size=2)
        >>> p.yielded = 1
        >>> p.consumed()  # 4 before, then one sample on each of the 2 ranks
        6
        >>> p.yielded = 3
        >>> p.consumed()  # the pass is over: padding does not count twice
        9
        """
        if self.done or self.yielded >= len(self.indices):
            return self.start + self.remaining
        return self.start + min(self.yielded * self.world_size, self.remaining)


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields this rank's ``(epoch, index)`` keys; can start an epoch part-way through.

    Subclasses give the global order of an epoch (:meth:`order`, the same on every rank).
    A pass takes what is left of it after the resume point, pads it (or, with
    ``drop_last``, cuts it) to a multiple of ``world_size`` and keeps every
    ``world_size``-th item from ``rank`` on, as ``DistributedSampler`` does. Each pass is a
    new epoch (0, 1, 2 ...) unless :meth:`set_epoch` says otherwise.

    Args:
        n: items in an epoch (over all ranks).
        seed: seed of the order (and of the samples).
        rank: this process's rank.
        world_size: number of ranks.
        drop_last: cut the epoch to equal shares instead of padding it.

    >>> class Reversed(ResumableSampler):
    ...     def order(self, epoch):
    ...         return list(range(self.n))[::-1]
    >>> sampler = Reversed(5, rank=1, world_size=2)
    >>> list(sampler)  # (epoch, index); padded with the first item of the epoch
    [(0, 3), (0, 1), (0, 4)]
    >>> sampler.resume_at(epoch=0, samples=2)
    >>> list(sampler)  # the last three items, re-sharded; then epoch 1 from its start
    [(0, 1), (0, 2)]
    >>> list(sampler)
    [(1, 3), (1, 1), (1, 4)]
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigurationError(
                f"rank must be in [0, world_size) and world_size >= 1; got rank={rank}, "
                f"world_size={world_size}"
            )
        self.n = int(n)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.active: EpochPass | None = None
        self._resume: tuple[int, int] | None = None
        self._started: EpochPass | None = None
        # called when a pass ends (True) or its iterator is dropped mid-epoch (False)
        self.on_stop: Callable[[bool], None] | None = None

    @property
    def order_name(self) -> str:
        """What the order is, saved in the state so a resume with another order is refused."""
        return type(self).__name__

    def order(self, epoch: int) -> list[int]:
        """The global item order of ``epoch`` (override; a function of seed and epoch)."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next pass (then count on from it).

        A resume point of that same epoch (:meth:`resume_at`) is kept, so the usual
        ``sampler.set_epoch(epoch)`` at the top of the epoch loop does not undo a resume.
        """
        self.epoch = int(epoch)
        self.active = self._started = None
        if self._resume is not None and self._resume[0] != self.epoch:
            self._resume = None

    def resume_at(self, epoch: int, samples: int) -> None:
        """Start the next pass at ``epoch``, after the first ``samples`` of its order."""
        self.epoch = int(epoch)
        self._resume = (int(epoch), int(samples))
        self.active = self._started = None

    def _resume_offset(self) -> int:
        if self._resume is not None and self._resume[0] == self.epoch:
            return self._resume[1]
        return 0

    def _share(self, remaining: int) -> int:
        w = self.world_size
        return remaining // w if self.drop_last else -(-remaining // w)

    def _rank_share(self, epoch: int, start: int) -> tuple[int, list[int]]:
        """``(remaining, this rank's indices)`` of ``epoch`` after its first ``start`` items."""
        rest = self.order(epoch)[start:]
        remaining, w = len(rest), self.world_size
        total = self._share(remaining) * w
        if total > remaining and rest:  # pad with the head of the rest, as DistributedSampler
            rest = (rest * -(-total // remaining))[:total]
        return remaining, rest[self.rank : total : w]

    def start_pass(self) -> EpochPass:
        """Fix the next pass now (the loader calls this before its workers ask for keys)."""
        epoch, start = self.epoch, self._resume_offset()
        remaining, indices = self._rank_share(epoch, start)
        self._resume = None
        self.epoch = epoch + 1
        self.active = self._started = EpochPass(epoch, start, remaining, indices, self.world_size)
        return self.active

    def pass_order(self, epoch: int) -> list[int]:
        """Item indices of ``epoch`` in the order this rank gets them.

        That is the pass fixed for it (the rest of a resumed epoch), else this rank's share
        of the epoch from its start (what the pass of a later epoch will be).

        >>> class Reversed(ResumableSampler):
        ...     def order(self, epoch):
        ...         return list(range(self.n))[::-1]
        >>> sampler = Reversed(6, rank=1, world_size=2)
        >>> sampler.resume_at(epoch=0, samples=2)
        >>> _ = sampler.start_pass()
        >>> sampler.pass_order(0), sampler.pass_order(1)  # the resumed pass, the next epoch
        ([2, 0], [4, 2, 0])
        """
        p = self.active
        if p is not None and p.epoch == epoch:
            return list(p.indices)
        return self._rank_share(epoch, self._resume_offset() if epoch == self.epoch else 0)[1]

    def position(self) -> tuple[int, int]:
        """``(epoch, samples consumed by the whole run)`` of the pass in progress or next."""
        if self.active is not None and not self.active.done:
            return self.active.epoch, self.active.consumed()
        return self.epoch, self._resume_offset()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        p = self._started if self._started is not None else self.start_pass()
        self._started = None
        finished = False
        try:
            for i in p.indices:
                yield p.epoch, i
            finished = True
        finally:  # the pass ended, or its iterator was dropped mid-epoch
            if self.on_stop is not None:
                self.on_stop(finished)

    def __len__(self) -> int:
        """Items of the next pass on this rank (fewer than usual when it resumes)."""
        if self._started is not None:
            return len(self._started.indices)
        return self._share(self.n - self._resume_offset())


_REQUIRED = {
    "version": int,
    "seed": int,
    "epoch": int,
    "samples_yielded": int,
    "epoch_length": int,
    "order": str,
}


_OPTIONAL = {"data_version": int, "volumes_digest": str, "foreground_digest": str}


class _Counting(Iterator[Any]):
    """A DataLoader iterator that counts the samples it hands to the training loop."""

    def __init__(
        self, inner: Iterator[Any], p: EpochPass, batch_size: int, drop_last: bool
    ) -> None:
        self._inner = inner
        self._pass = p
        self._batch = batch_size
        self._drop_last = drop_last

    def __iter__(self) -> _Counting:
        return self

    def __next__(self) -> Any:
        try:
            batch = raise_failure(next(self._inner))  # a worker's error, as in this process
        except StopIteration:
            self._pass.done = True
            raise
        self._pass.yielded = min(self._pass.yielded + self._batch, len(self._pass.indices))
        return batch

    def __len__(self) -> int:
        """Batches of this pass."""
        n = len(self._pass.indices)
        return n // self._batch if self._drop_last else -(-n // self._batch)


class RadiObjectLoader(DataLoader[Any]):
    """A ``DataLoader`` whose position can be checkpointed and resumed exactly.

    Every radiobject loader is one. :meth:`state_dict` is a small JSON-serialisable dict to
    save with the model; :meth:`load_state_dict` on a new loader (before iterating) makes it
    go on from the next batch, as torchdata's ``StatefulDataLoader`` does. Unlike that one,
    the resumed run gives exactly the samples (volumes, patches, augmentations) the
    uninterrupted run would have given, also with another ``num_workers``, and another
    world size re-shards the rest of the epoch: no sample is lost or seen twice.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> from radiobject.ml import create_training_dataloader
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=4,
    ...                               shape=(16, 16, 12), progress=False)
    >>> loader = create_training_dataloader(radi.T1w, batch_size=1, seed=3)
    >>> it = iter(loader)
    >>> first = next(it)["obs_id"]
    >>> state = loader.state_dict()
    >>> state["epoch"], state["samples_yielded"]
    (0, 1)
    >>> rest = [b["obs_id"] for b in it]
    >>> resumed = create_training_dataloader(radi.T1w, batch_size=1, seed=3)
    >>> resumed.load_state_dict(state)
    >>> [b["obs_id"] for b in resumed] == rest
    True
    """

    recipe: LoaderRecipe | None = None
    """What built this loader: its factory and arguments (``None`` unless a factory made it).

    ``loader.recipe.build(batch_size=8)`` makes the same loader with another batch size
    (see :class:`~radiobject.ml.LoaderRecipe`); the ``LoaderTuner`` reads it.
    """

    @property
    def resumable_sampler(self) -> ResumableSampler:
        """The sampler that keeps the position."""
        sampler = self.sampler
        if not isinstance(sampler, ResumableSampler):
            raise ConfigurationError(
                f"a RadiObjectLoader needs a ResumableSampler (e.g. EpochSampler), got "
                f"{type(sampler).__name__}; build the loader with radiobject's factories"
            )
        return sampler

    # mypy is silenced on the next line: DataLoader says _BaseDataLoaderIter; this wraps one
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        if self.num_workers > 0 and (self._iterator is None or not self.persistent_workers):
            # workers are about to start: say now if their start method cannot work here
            ctx = self.multiprocessing_context  # None: the process's default, as torch does
            method = ctx.get_start_method() if ctx is not None else mp.get_start_method()
            check_workers_can_start(
                method, lambda: (self.dataset, self.worker_init_fn, self.collate_fn)
            )
        p = self.resumable_sampler.start_pass()
        return _Counting(super().__iter__(), p, self.batch_size or 1, self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next pass (see :meth:`ResumableSampler.set_epoch`)."""
        self.resumable_sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """Where the run is: after the batches handed out so far (JSON-serialisable).

        ``samples_yielded`` counts the samples of ``epoch`` consumed by the whole run, all
        ranks together (ranks move in step: any rank's state will do, usually rank 0's).
        Called after the last batch of an epoch has been handed out it still names that
        epoch (a resume then has nothing left of it); once the epoch's iterator is
        exhausted it names the next epoch at 0.
        """
        sampler = self.resumable_sampler
        epoch, consumed = sampler.position()
        return {
            "version": STATE_VERSION,
            "seed": sampler.seed,
            "epoch": epoch,
            "samples_yielded": consumed,
            "epoch_length": sampler.n,
            "order": sampler.order_name,
            "world_size": sampler.world_size,
            "rank": sampler.rank,
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            # the version of the cohort read (TileDB ms): a resume reads the same data
            "data_version": getattr(self.dataset, "data_version", None),
            # which volumes it read (its view's filter at that version), to check a resume
            "volumes_digest": _volumes_digest(self.dataset),
            # the foreground index it sampled patches from (None: no foreground sampling)
            "foreground_digest": getattr(self.dataset, "foreground_digest", None),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any], *, data: str = "recorded") -> None:
        """Go on from ``state_dict`` (from :meth:`state_dict`) at the next iteration.

        The seed, the number of items and the kind of order must be those of the run that
        saved it; batch size, workers, rank and world size may differ.

        The state records the version of the cohort the run read (``data_version``), the
        volumes it read (``volumes_digest``: its view's selection, e.g. a filter's rows, at
        that version) and the foreground index it sampled patches from
        (``foreground_digest``). With ``data="recorded"`` (the default) the resumed run
        reads that version, whatever was written since (a corrected mask, a new subject): a
        loader built over another version is rebuilt by its factory (:attr:`recipe`) over
        the recorded one, with a warning that says so, and a loader that would read other
        volumes or another foreground index is refused. ``data="newest"`` reads the data
        this loader was built on instead (the epoch's order may then differ: it goes on from
        the same count).

        The whole state is checked before anything changes: a state this loader cannot
        resume from raises ``ConfigurationError`` and leaves the loader as it was.
        """
        if data not in ("recorded", "newest"):
            raise ConfigurationError(f"data must be 'recorded' or 'newest', got {data!r}")
        state = _checked(state_dict)
        target = self if data == "newest" else self._over_version(state["data_version"])
        _check_resumable(target, state, data)
        if target is not self:
            self.__dict__.update(target.__dict__)  # a DataLoader's settings are fixed once built
            version = state["data_version"]
            warnings.warn(
                f"resuming reads the cohort as the saved run did: version {version} "
                f"({Version(version).time}), not the data this loader was built on; pass "
                "data='newest' to load_state_dict to read the newest",
                stacklevel=2,
            )
        self.resumable_sampler.resume_at(state["epoch"], state["samples_yielded"])

    def _over_version(self, version: int | None) -> RadiObjectLoader:
        """This loader if it reads the data of ``version``, else a new one built over it.

        Nothing of this loader changes here: the caller adopts the new one once the whole
        state is known to fit it.
        """
        dataset = self.dataset
        mine = getattr(dataset, "data_version", None)
        if version is None or mine == version:
            return self
        read = [*getattr(dataset, "collections", []), getattr(dataset, "mask", None)]
        read = [c for c in read if isinstance(c, VolumeCollection)]
        if mine is not None:
            lo, hi = sorted((int(mine), version))
            if not any(written_between(c, lo, hi) for c in read):
                return self  # nothing it reads was written between the two: the same data
        if self.recipe is None:
            raise ConfigurationError(
                f"the loader state was saved by a run that read version {version} of the "
                "cohort; build this loader from RadiObject(uri, at=state['data_version']) "
                "(or pass data='newest')"
            )
        changes = {
            name: _as_of(value, version)
            for name, value in self.recipe.arguments.items()
            if _has_collection(value)
        }
        with in_scope(getattr(dataset, "loader_scope", None)):  # the settings it was built in
            rebuilt = self.recipe.build(**changes)
        if not isinstance(rebuilt, RadiObjectLoader):
            raise ConfigurationError(
                f"the loader's recipe ({self.recipe.name}) built a {type(rebuilt).__name__}, "
                "not a RadiObjectLoader: build the loader with radiobject's factories"
            )
        return rebuilt


def _check_resumable(loader: RadiObjectLoader, state: dict[str, Any], data: str) -> None:
    """Raise ``ConfigurationError`` unless ``loader`` can go on from ``state``.

    With ``data="newest"`` the volumes, the foreground index and the epoch's length may
    differ (the count of samples consumed is kept, cut to the new length).
    """
    recorded = state["data_version"]
    if data == "recorded":
        digest = state.get("volumes_digest")
        if digest is not None and digest != _volumes_digest(loader.dataset):
            raise ConfigurationError(
                "the loader state was saved by a run over other volumes than this loader "
                f"reads (version {recorded}): its collections select others, e.g. a filter "
                "that now matches other rows; build it over the same view (the same filter on "
                "RadiObject(uri, at=state['data_version'])), or pass data='newest'"
            )
        fg = getattr(loader.dataset, "foreground_digest", None)
        if "foreground_digest" in state and state["foreground_digest"] != fg:
            raise ConfigurationError(
                "the loader state was saved by a run that sampled patches from another "
                f"foreground index (recorded {state['foreground_digest']}, this loader "
                f"{fg}, version {recorded}): the masks differ, or foreground sampling is "
                "on in one and off in the other; build the loader with the mask collection "
                "and the foreground settings of the saved run, or pass data='newest'"
            )
    sampler = loader.resumable_sampler
    mine = {"seed": sampler.seed, "epoch_length": sampler.n, "order": sampler.order_name}
    if data == "newest":
        mine.pop("epoch_length")
        state["samples_yielded"] = min(state["samples_yielded"], sampler.n)
    for key, value in mine.items():
        if state[key] != value:
            raise ConfigurationError(
                f"loader state has {key}={state[key]!r} but this loader has {value!r}: it "
                f"was saved by a loader over other data or with another order; build the "
                f"loader as the run that saved it did (same collections, seed and shuffle)"
            )
    if not 0 <= state["samples_yielded"] <= sampler.n or state["epoch"] < 0:
        raise ConfigurationError(
            f"loader state has epoch={state['epoch']} and samples_yielded="
            f"{state['samples_yielded']}; they must be >= 0 and samples_yielded <= "
            f"epoch_length={sampler.n}"
        )


def _volumes_digest(dataset: Any) -> str | None:
    """SHA-256 (16 hex digits) of the obs_ids a dataset reads, in order; None without refs."""
    refs = getattr(dataset, "refs", None)
    if refs is None:
        return None
    ids = "\n".join(str(r.obs_id) for r in refs)
    return hashlib.sha256(ids.encode()).hexdigest()[:16]


def _has_collection(value: Any) -> bool:
    if isinstance(value, (VolumeCollection, RadiObject)):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_collection(v) for v in value)
    if isinstance(value, Mapping):
        return any(_has_collection(v) for v in value.values())
    return False


def _as_of(value: Any, version: int) -> Any:
    """``value`` (collections, RadiObjects, lists or dicts of them) as of ``version``."""
    if isinstance(value, (VolumeCollection, RadiObject)):
        return value.as_of(version)
    if isinstance(value, (list, tuple)):
        return type(value)(_as_of(v, version) for v in value)
    if isinstance(value, Mapping):
        return {k: _as_of(v, version) for k, v in value.items()}
    return value


def _checked(state: Any) -> dict[str, Any]:
    if not isinstance(state, Mapping):
        raise ConfigurationError(
            f"a loader state must be the dict of loader.state_dict(), got {type(state).__name__}"
        )
    missing = sorted(set(_REQUIRED) - set(state))
    if missing:
        raise ConfigurationError(
            f"loader state lacks {missing}; pass the dict loader.state_dict() returned"
        )
    for key, kind in _REQUIRED.items():
        value = state[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigurationError(f"loader state {key!r} must be {kind.__name__}, got {value!r}")
    for key, kind in _OPTIONAL.items():
        value = state.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise ConfigurationError(
                f"loader state {key!r} must be {kind.__name__} or None, got {value!r}"
            )
    if state["version"] != STATE_VERSION:
        raise ConfigurationError(
            f"loader state version {state['version']} is not supported (this radiobject "
            f"reads version {STATE_VERSION})"
        )
    out = dict(state)
    out.setdefault("data_version", None)
    return out
