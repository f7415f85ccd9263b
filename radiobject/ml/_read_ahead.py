"""The order a loader reads a dataset in, as the reader's read-ahead sees it.

:class:`ReadAheadSchedule` knows which samples this process reads next (the sampler's pass
order, batches dealt out to workers in turn, on into the next epoch);
``reader().prefetch(dataset, keys, depth, threads)`` (:mod:`radiobject.read._prefetch`)
plans them with the dataset and reads them on threads before they are asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from radiobject.read import Prefetch, reader

__all__ = ["ReadAheadSchedule", "ahead_state"]


@dataclass
class ReadAheadSchedule:
    """The order a loader asks for samples in, as its datasets' read-ahead sees it.

    Near the end of an epoch it looks on into the next one (``epoch + 1``, whose order the
    sampler already knows), so the first batches of the next epoch are read while the last
    ones of this epoch are used.

    Args:
        order: ``epoch -> item indices`` in sampler order (e.g. ``EpochSampler.pass_order``).
        batch_size: samples per batch.
        num_workers: the loader's worker processes (0: the main process reads).
        drop_last: the loader drops the last incomplete batch of an epoch.
        across_epochs: look on into the next epoch.

    >>> schedule = ReadAheadSchedule(lambda epoch: [3, 1, 0, 2, 5, 4], 2, num_workers=2)
    >>> schedule.upcoming((0, 1), depth=4)  # batch 0 in worker 0: batch 2, then epoch 1's 0
    [(0, 5), (0, 4), (1, 3), (1, 1)]
    >>> ReadAheadSchedule(lambda epoch: [3, 1, 0, 2], 2).upcoming((7, 3), depth=1)
    [(7, 0)]
    """

    order: Callable[[int], Sequence[int]]
    batch_size: int
    num_workers: int = 0
    drop_last: bool = False
    across_epochs: bool = True
    _orders: dict[int, tuple[list[int], dict[int, int]]] = field(default_factory=dict, repr=False)

    def _epoch(self, epoch: int) -> tuple[list[int], dict[int, int]]:
        """The items of ``epoch`` in order, and each item's (first) position."""
        found = self._orders.get(epoch)
        if found is None:
            items = [int(i) for i in self.order(epoch)]
            position: dict[int, int] = {}
            for p, i in enumerate(items):
                position.setdefault(i, p)
            found = (items, position)
            self._orders = {e: o for e, o in self._orders.items() if abs(e - epoch) <= 1}
            self._orders[epoch] = found
        return found

    def _batches(self, n: int) -> int:
        size = max(1, self.batch_size)
        return n // size if self.drop_last else -(-n // size)

    def position(self, key: tuple[int, int]) -> int | None:
        """Where ``key`` is in its epoch's order (None: not in it)."""
        return self._epoch(key[0])[1].get(key[1])

    def upcoming_at(
        self, key: tuple[int, int], depth: int
    ) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """Up to ``depth`` ``(key, (epoch, position))`` this process reads after ``key``'s batch."""
        epoch, index = key
        items, position = self._epoch(epoch)
        at = position.get(index)
        if at is None:  # not from this order (another sampler): nothing to foresee
            return []
        size, step = max(1, self.batch_size), max(1, self.num_workers)
        out: list[tuple[tuple[int, int], tuple[int, int]]] = []

        def take(e: int, order: list[int], batch: int) -> None:
            while len(out) < depth and batch < self._batches(len(order)):
                for p in range(batch * size, min((batch + 1) * size, len(order))):
                    if len(out) == depth:
                        return
                    out.append(((e, order[p]), (e, p)))
                batch += step

        take(epoch, items, at // size + step)
        if len(out) < depth and self.across_epochs:
            # DataLoader deals each epoch's batches out from worker 0 again
            take(epoch + 1, self._epoch(epoch + 1)[0], (at // size) % step)
        return out

    def forget(self) -> None:
        """Drop the orders kept: the sampler's next pass may differ (a resume, ``set_epoch``)."""
        self._orders = {}

    def upcoming(self, key: tuple[int, int], depth: int) -> list[tuple[int, int]]:
        """Up to ``depth`` keys this process reads after the batch starting at ``key``."""
        return [k for k, _ in self.upcoming_at(key, depth)]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_orders"] = {}  # rebuilt where it is used
        return state


def ahead_state(dataset: Any, *, create: bool = False) -> Prefetch | None:
    """The read-ahead state of ``dataset`` in this process's reader (made when ``create``)."""
    return reader().prefetched(dataset, create=create)
