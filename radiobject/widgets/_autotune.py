"""Auto-tuning the loader: a coordinate search over settings, and a model of its memory use.

No widgets and no threads here: :func:`coordinate_search` takes a ``measure`` function (the
tuner's runs, or a fake in tests) and a clock, so the search logic is tested on its own.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._runs import TunerSettings

__all__ = [
    "AutotuneResult",
    "MemoryModel",
    "Trial",
    "coordinate_search",
    "default_space",
    "settings_code",
]


@dataclass(frozen=True)
class Trial:
    """One measured setting: throughput, peak memory (PSS, all processes) and any error."""

    settings: TunerSettings
    samples_per_s: float
    pss_mb: float = math.nan
    seconds: float = 0.0
    error: str = ""


def default_space(cpus: int | None = None) -> dict[str, tuple[int, ...]]:
    """Values tried per setting: workers up to twice the CPUs, threads, cache MB, read-ahead.

    >>> default_space(cpus=2)  # doctest: +NORMALIZE_WHITESPACE
    {'num_workers': (0, 1, 2, 4), 'max_workers': (1, 2, 4, 8), 'cache_mb': (0, 128, 512, 2048),
     'read_ahead': (0, 8, 32)}
    """
    cpus = cpus or os.cpu_count() or 1
    return {
        "num_workers": tuple(n for n in (0, 1, 2, 4, 6, 8, 12, 16) if n <= 2 * cpus),
        "max_workers": (1, 2, 4, 8),
        "cache_mb": (0, 128, 512, 2048),
        "read_ahead": (0, 8, 32),
    }


@dataclass
class AutotuneResult:
    """What the search tried and the best setting found (the best measured trial)."""

    start: TunerSettings
    best: TunerSettings
    best_samples_per_s: float
    trials: list[Trial] = field(default_factory=list)
    skipped: list[tuple[TunerSettings, str]] = field(default_factory=list)
    stopped: str = ""  # "converged" or "time budget"
    seconds: float = 0.0

    @property
    def start_samples_per_s(self) -> float:
        """Throughput measured at the starting point."""
        return next((t.samples_per_s for t in self.trials if t.settings == self.start), math.nan)


@dataclass(frozen=True)
class MemoryModel:
    """Predicted resident memory (PSS, MB) of a loader: main + workers x per worker + cache.

    ``per_worker_mb`` is a worker's PSS beyond its share of the cache (``cache_mb`` is split
    among the workers, and the whole volumes they share in ``/dev/shm`` count once).

    >>> MemoryModel(main_mb=400, per_worker_mb=150).predict_mb(
    ...     TunerSettings(num_workers=4, cache_mb=512))
    1512.0
    """

    main_mb: float
    per_worker_mb: float

    def predict_mb(self, settings: TunerSettings) -> float:
        """Predicted PSS of a loader with ``settings``, all processes."""
        return float(self.main_mb + settings.num_workers * self.per_worker_mb + settings.cache_mb)

    @classmethod
    def from_runs(cls, runs: Sequence[Any]) -> MemoryModel | None:
        """Estimated from finished runs with memory readings (``None`` without any).

        The main process from the latest run; a worker from the latest run with workers
        (its mean peak PSS less its cache share), else assumed as large as the main process.
        """
        measured = [r for r in runs if getattr(r, "main_pss_mb", math.nan) == r.main_pss_mb]
        measured = [r for r in measured if not math.isnan(r.main_pss_mb)]
        if not measured:
            return None
        main = measured[-1].main_pss_mb
        with_workers = [r for r in measured if r.worker_pss_mb]
        if with_workers:
            r = with_workers[-1]
            mean = sum(r.worker_pss_mb) / len(r.worker_pss_mb)
            share = r.settings.cache_mb / max(1, r.settings.num_workers)
            per_worker = max(0.5 * mean, mean - share)
        else:
            per_worker = main
        return cls(main_mb=main, per_worker_mb=per_worker)


def _neighbour(
    settings: TunerSettings, name: str, values: Sequence[int], step: int
) -> TunerSettings | None:
    current = getattr(settings, name)
    ordered = sorted(set(values) | {current})
    i = ordered.index(current) + step
    return settings.replace(**{name: ordered[i]}) if 0 <= i < len(ordered) else None


def coordinate_search(
    start: TunerSettings,
    measure: Callable[[TunerSettings], Trial],
    *,
    time_budget_s: float,
    ram_budget_mb: float | None = None,
    space: Mapping[str, Sequence[int]] | None = None,
    predict_mb: Callable[[TunerSettings], float | None] | None = None,
    min_gain: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
) -> AutotuneResult:
    """Coordinate descent from ``start``: one setting at a time, step while it pays.

    For each setting of ``space`` in turn, step to the next value up, and keep stepping
    while throughput improves by more than ``min_gain``; if the first step up did not pay,
    try down. Passes over all settings repeat until one changes nothing ("converged") or
    the next trial would not finish within ``time_budget_s`` ("time budget"; a trial is
    expected to last as long as the longest so far). A setting whose ``predict_mb``
    exceeds ``ram_budget_mb`` is skipped without running, and a trial that measured more
    PSS than the budget cannot be the best. The start is always measured; the best is the
    fastest eligible trial, so it is never slower than the start as measured.

    >>> def fake(s):  # throughput peaks at 2 workers, 4 threads; cache does not matter
    ...     return Trial(s, 100 - 10 * abs(s.num_workers - 2) - 5 * abs(s.max_workers - 4))
    >>> ticks = iter(range(1000))
    >>> result = coordinate_search(TunerSettings(num_workers=0, max_workers=1), fake,
    ...                            time_budget_s=100, clock=lambda: next(ticks))
    >>> result.best.num_workers, result.best.max_workers, result.best_samples_per_s
    (2, 4, 100)
    >>> result.stopped, result.start_samples_per_s
    ('converged', 65)
    """
    space = dict(space or default_space())
    begin = clock()
    deadline = begin + time_budget_s
    trials: dict[TunerSettings, Trial] = {}
    order: list[Trial] = []
    skipped: list[tuple[TunerSettings, str]] = []
    longest = 0.0

    def eligible(t: Trial) -> bool:
        over = ram_budget_mb is not None and not math.isnan(t.pss_mb) and t.pss_mb > ram_budget_mb
        return not t.error and not over

    def attempt(s: TunerSettings) -> Trial | None:
        nonlocal longest
        if s in trials:
            return trials[s]
        if any(s == done for done, _ in skipped):
            return None
        if ram_budget_mb is not None and predict_mb is not None:
            predicted = predict_mb(s)
            if predicted is not None and predicted > ram_budget_mb:
                skipped.append((s, f"predicted {predicted:,.0f} MB > budget {ram_budget_mb:,.0f}"))
                return None
        t0 = clock()
        trial = measure(s)
        longest = max(longest, clock() - t0)
        trials[s] = trial
        order.append(trial)
        return trial

    def time_left() -> bool:
        return clock() + longest <= deadline

    t0 = clock()
    best = trials[start] = measure(start)  # the start runs even if predicted over budget
    longest = clock() - t0
    order.append(best)
    stopped = "converged"
    changed = True
    while changed:
        changed = False
        for name, values in space.items():
            for step in (1, -1):
                moved = False
                while True:
                    if not time_left():
                        stopped = "time budget"
                        break
                    nxt = _neighbour(best.settings, name, values, step)
                    if nxt is None:
                        break
                    trial = attempt(nxt)
                    better = (
                        trial is not None
                        and eligible(trial)
                        and (
                            not eligible(best)
                            or trial.samples_per_s > best.samples_per_s * (1 + min_gain)
                        )
                    )
                    if not better:
                        break
                    assert trial is not None
                    best, moved, changed = trial, True, True
                if moved or stopped == "time budget":
                    break
            if stopped == "time budget":
                break
        if stopped == "time budget":
            break
    good = [t for t in order if eligible(t)] or order
    top = max(good, key=lambda t: t.samples_per_s)
    return AutotuneResult(
        start=start,
        best=top.settings,
        best_samples_per_s=top.samples_per_s,
        trials=order,
        skipped=skipped,
        stopped=stopped,
        seconds=clock() - begin,
    )


def settings_code(
    settings: TunerSettings, loader_call: str, takes: Collection[str] | None = None
) -> str:
    """The code that applies ``settings``: ``configure(read=...)`` and the loader call.

    ``loader_call`` is the factory and its fixed arguments, e.g.
    ``"create_training_dataloader(radi.T1w"`` (the settings' arguments are appended: those
    in ``takes``, default all).

    >>> print(settings_code(TunerSettings(num_workers=2, patch_size=(32, 32, 32)),
    ...                     "create_training_dataloader(radi.T1w"))
    from radiobject import ReadConfig, configure
    from radiobject.ml import create_training_dataloader
    <BLANKLINE>
    configure(read=ReadConfig(max_workers=4, concurrency=2, memory_budget_mb=1024, cache_mb=512))
    loader = create_training_dataloader(
        radi.T1w, batch_size=4, num_workers=2, patch_size=(32, 32, 32), patches_per_volume=4
    )
    """
    read = settings.read_config()
    imports = "from radiobject import ReadConfig, configure"
    s3 = ""
    if settings.max_parallel_ops:
        imports = "from radiobject import ReadConfig, S3Config, configure"
        s3 = f", s3=S3Config(max_parallel_ops={settings.max_parallel_ops})"
    ahead = f", read_ahead={read.read_ahead}" if read.read_ahead else ""
    configure = (
        f"configure(read=ReadConfig(max_workers={read.max_workers}, "
        f"concurrency={read.concurrency}, memory_budget_mb={read.memory_budget_mb}, "
        f"cache_mb={read.cache_mb}{ahead}){s3})"
    )
    head, _, fixed = loader_call.partition("(")
    if head.startswith("create_"):
        imports += f"\nfrom radiobject.ml import {head}"
    given = settings.loader_kwargs().items()
    args = ", ".join(f"{k}={v!r}" for k, v in given if takes is None or k in takes)
    inner = f"{fixed}, {args}" if fixed else args
    one_line = f"loader = {head}({inner})"
    call = one_line if len(one_line) <= 99 else f"loader = {head}(\n    {inner}\n)"
    return f"{imports}\n\n{configure}\n{call}"
