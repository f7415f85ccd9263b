"""The tuner's memory readings: PSS of the loader's processes, and the warning before a run."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from radiobject.ml import loader_pids

from ._autotune import MemoryModel
from ._runs import TunerRun, TunerSettings

__all__ = ["available_mb", "memory_warning", "pss_mb", "track_pss"]


def track_pss(
    run: TunerRun,
    loader: Callable[[], Any],
    interval_s: Callable[[], float],
    done: threading.Event,
) -> None:
    """Read the PSS of the loader's processes every ``interval_s()`` seconds; keep the peaks.

    One read of ``/proc/<pid>/smaps_rollup`` per process and reading (psutil), on this
    thread: the loader's threads and workers are not touched. ``loader()`` is the loader
    now (``None`` before it is built); the peaks go to ``run`` until ``done`` is set.
    """
    peaks: dict[int, float] = {}
    while True:
        current = loader()
        if current is not None:
            for pid in loader_pids(current):
                mb = pss_mb(pid)
                if not math.isnan(mb):
                    peaks[pid] = max(peaks.get(pid, 0.0), mb)
            pids = list(peaks)
            run.main_pss_mb = peaks.get(pids[0], math.nan) if pids else math.nan
            run.worker_pss_mb = [peaks[p] for p in pids[1:]]
        if done.wait(timeout=interval_s()):
            return


def memory_warning(
    model: MemoryModel | None, settings: TunerSettings, ram_budget_mb: float | None = None
) -> str:
    """A warning when ``settings`` are likely to exceed the RAM budget or free memory.

    >>> memory_warning(None, TunerSettings())
    ''
    """
    if model is None:
        return ""
    predicted = model.predict_mb(settings)
    limits = []
    if ram_budget_mb:
        limits.append((ram_budget_mb, "the RAM budget"))
    available = available_mb()
    if not math.isnan(available):
        limits.append((available, "the memory available now"))
    for limit, what in limits:
        if predicted > limit:
            return (
                f"{settings.num_workers} workers with a {settings.cache_mb} MB cache may "
                f"need ~{predicted:,.0f} MB (main {model.main_mb:,.0f} + "
                f"{settings.num_workers} x {model.per_worker_mb:,.0f} per worker + cache), "
                f"more than {what} ({limit:,.0f} MB): fewer workers or a smaller cache_mb"
            )
    return ""


def pss_mb(pid: int) -> float:
    """Resident memory of ``pid`` as PSS (shared pages split among their users), MB."""
    try:
        import psutil

        info = psutil.Process(pid).memory_full_info()
        return float(getattr(info, "pss", getattr(info, "uss", info.rss))) / 2**20
    except Exception:  # gone, or not allowed: no reading
        return math.nan


def available_mb() -> float:
    """Memory available to new processes now, MB (NaN when unknown)."""
    try:
        import psutil

        return float(psutil.virtual_memory().available) / 2**20
    except Exception:
        return math.nan
