"""Auto-tune driven from a ``LoaderTuner``: each trial a tuner run, the result shown in place."""

from __future__ import annotations

import contextvars
import html
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ._autotune import AutotuneResult, MemoryModel, Trial, coordinate_search
from ._plots import format_number
from ._runs import TunerRun, TunerSettings

__all__ = ["autotune_html", "run_autotune"]


class Tuner(Protocol):
    """What an auto-tune drives: a ``LoaderTuner`` (its runs, controls and state)."""

    running: Any  # traits of the widget
    status: Any
    error: Any
    code_box: Any
    runs: list[TunerRun]
    autotune_result: AutotuneResult | None
    _tuning: bool
    _stop_requested: bool
    _thread: threading.Thread | None

    def settings(self) -> TunerSettings:
        """The controls' settings."""
        ...

    def memory_model(self) -> MemoryModel | None:
        """The memory model of the runs so far."""
        ...

    def _work(self, run: TunerRun, last: bool = True) -> None: ...

    def _show_autotune(self, result: AutotuneResult) -> None: ...


def run_autotune(
    tuner: Tuner,
    time_budget_s: float,
    ram_budget_mb: float | None,
    *,
    trial_s: float | None,
    space: Mapping[str, Sequence[int]] | None,
    min_gain: float,
    background: bool,
) -> AutotuneResult | None:
    """:meth:`LoaderTuner.autotune` (see there): the search, run on ``tuner``."""
    if tuner.running:
        return None
    trial_s = trial_s if trial_s is not None else min(10.0, max(0.5, time_budget_s / 10))
    start = tuner.settings().replace(duration_s=trial_s)
    start.read_config()  # validates
    tuner._stop_requested = False
    tuner.running = tuner._tuning = True
    tuner.autotune_result = None
    tuner.code_box.value = ""
    tuner.status = f"auto-tune: up to {time_budget_s:g} s"

    def measure(settings: TunerSettings) -> Trial:
        if tuner._stop_requested:
            return Trial(settings, 0.0, error="stopped")
        run = TunerRun(number=len(tuner.runs) + 1, settings=settings)
        tuner.runs.append(run)
        tuner._work(run, last=False)
        return Trial(
            settings,
            run.samples_per_s if not run.error else 0.0,
            pss_mb=run.pss_mb,
            seconds=run.result.seconds if run.result is not None else 0.0,
            error=run.error,
        )

    def predict(settings: TunerSettings) -> float | None:
        model = tuner.memory_model()
        return model.predict_mb(settings) if model is not None else None

    def clock() -> float:
        return math.inf if tuner._stop_requested else time.monotonic()

    def search() -> None:
        began = time.monotonic()
        try:
            result = coordinate_search(
                start,
                measure,
                time_budget_s=time_budget_s,
                ram_budget_mb=ram_budget_mb or None,
                space=space,
                predict_mb=predict,
                min_gain=min_gain,
                clock=clock,
            )
            result.seconds = time.monotonic() - began
            if tuner._stop_requested:
                result.stopped = "stopped"
            tuner.autotune_result = result
            tuner._show_autotune(result)
        except Exception as e:  # shown in place; Start works again
            tuner.error = f"auto-tune failed: {type(e).__name__}: {e}"
        finally:
            tuner._tuning = False
            tuner.running = False

    if background:
        tuner._thread = threading.Thread(  # in the caller's settings (a settings() block)
            target=contextvars.copy_context().run,
            args=(search,),
            daemon=True,
            name="radiobject-tune",
        )
        tuner._thread.start()
        return None
    search()
    return tuner.autotune_result


def autotune_html(result: AutotuneResult, code: str) -> str:
    """The outcome of an auto-tune: trials, best settings and their gain, and ``code``."""
    best = result.best
    start = result.start_samples_per_s
    gain = f" ({result.best_samples_per_s / start:.2f}x the start)" if start > 0 else ""
    skipped = (
        f"; not run (memory): {', '.join(s.label() for s, _ in result.skipped)}"
        if result.skipped
        else ""
    )
    return (
        f"<b>auto-tune</b>: {len(result.trials)} trials in {result.seconds:.0f} s "
        f"({result.stopped}); best {html.escape(best.label())}: "
        f"{format_number(result.best_samples_per_s)} samples/s{gain}"
        f"{html.escape(skipped)}"
        f"<pre class='radiobject-autotune-code' style='line-height:1.35;margin:4px 0'>"
        f"{html.escape(code)}</pre>"
    )
