"""``LoaderTuner``: try read and loader settings live, keep every run for comparison."""

from __future__ import annotations

import contextvars
import html
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as w
import traitlets as t

from radiobject import TileDBStats, VolumeCollection, get_config
from radiobject import settings as scoped_settings
from radiobject.ml import LoaderProbe, RadiObjectLoader

from ._autotune import AutotuneResult, MemoryModel, settings_code
from ._memory import memory_warning as warning_text
from ._memory import track_pss
from ._plots import Trace, TracePlot, best_html, format_number, summary_html
from ._png import show_png
from ._runs import (
    INT_CONTROLS,
    MakeLoader,
    TunerRun,
    TunerSettings,
    describe_error,
    parse_patch_size,
    sources_html,
    stages_html,
)
from ._slices import error_html
from ._source import DEFAULTS, LEARNT, Learnt, cube, tuner_source
from ._tuning import autotune_html, run_autotune

__all__ = ["LoaderTuner"]


class LoaderTuner(w.VBox):
    """Run a loader with chosen settings in the background and watch it live.

    Each run applies the read settings to its own thread only (``radiobject.settings(read=...,
    s3=...)``: the process settings, and a ``configure()`` made meanwhile, stay as they
    are), builds a loader under them (which keeps them), and measures it with
    :class:`~radiobject.ml.LoaderProbe` in a background thread; the notebook stays
    responsive. Plots of samples/s, batch latency, cache hit rate and storage MB/s are
    redrawn at most every ``redraw_s`` seconds and never more often than keeps drawing
    under ``redraw_budget`` of the time, so watching barely slows the loader. The summary
    table adds "starved %": the share of the run the consumer waited for the next batch (near
    100: the loader is the bottleneck). An error of the loader ends its run and is shown in
    place, with where it arose; Start works again (``LoaderProbe`` alone raises it).

    Args:
        source: a loader made by any of radiobject's factories (``create_*_dataloader``:
            the tuner reads its factory, arguments and settings from the loader, without
            iterating it, and builds a variant of it for each run); or the collection(s) to
            load (the tuner then uses ``create_segmentation_dataloader`` with ``mask``, else
            ``create_training_dataloader``); or ``make_loader(batch_size=, num_workers=,
            patch_size=, patches_per_volume=)`` returning a DataLoader (keep its workers
            persistent: a loader that restarts its workers every epoch spends most of a
            short run starting them). Anything else is a ``ConfigurationError``.
        mask: a mask collection for segmentation loaders (with collections only).
        patch_size: initial patch size, three ints or one for a cube (``None``: whole
            volumes; default: the loader's, else 32).
        batch_size: initial batch size (default: the loader's, else 4).
        patches_per_volume: initial patches per volume (default: the loader's, else 4).
        num_workers: initial DataLoader workers (default: the loader's, else 0).
        duration_s: initial run length.
        s3: show the S3 settings (default: when the collections are on ``s3://``).
        interval_s: length of one probe record.
        redraw_s: shortest time between plot redraws.
        redraw_budget: the largest share of wall time spent redrawing.
        loader_kwargs: more arguments for the loader factory (e.g. ``labels=``).

    Python API: :meth:`start`, :meth:`stop`, :meth:`wait`, :meth:`run_sync`, :attr:`runs`
    (each a :class:`TunerRun` with its settings, records, result, error, the seconds
    spent redrawing while it ran, and the peak memory (PSS) of the main process and each
    worker), :attr:`best`, :meth:`settings`, :meth:`set`; :meth:`autotune` (the
    **Auto-tune** button: ``budget_s``, ``ram_budget_mb``, ``autotune_space``) with
    :attr:`autotune_result` and :attr:`autotune_code`; :meth:`memory_warning` (also shown
    before a run likely to exceed the memory available); ``live_box`` turns live plots
    off; traits ``running``, ``status``, ``error``, ``warning``. Each finished run shows
    where its time went (``stages_box``: ms per sample by stage, read amplification, PSS).

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), progress=False)
    >>> from radiobject.widgets import LoaderTuner
    >>> tuner = LoaderTuner(radi.T1w, radi.seg, patch_size=(8, 8, 8))  # display(tuner)
    >>> tuner.settings().patch_size, tuner.settings().num_workers
    ((8, 8, 8), 0)
    >>> run = tuner.run_sync(duration_s=0.3, batch_size=2)  # start() runs in the background
    >>> run.done, run.error, run.settings.batch_size, run.result.batches > 0
    (True, '', 2, True)
    >>> tuner.best is run, len(tuner.runs)
    (True, 1)

    Or pass the loader you have; its settings are the tuner's first ones:

    >>> from radiobject.ml import create_segmentation_dataloader
    >>> loader = create_segmentation_dataloader(radi.T1w, radi.seg, batch_size=2, patch_size=8)
    >>> tuner = LoaderTuner(loader)
    >>> tuner.settings().batch_size, tuner.settings().patch_size
    (2, (8, 8, 8))
    """

    running = t.Bool(False)
    status = t.Unicode("")
    error = t.Unicode("")
    warning = t.Unicode("")

    def __init__(
        self,
        source: RadiObjectLoader | MakeLoader | VolumeCollection | Sequence[VolumeCollection],
        mask: VolumeCollection | None = None,
        *,
        patch_size: Sequence[int] | int | Learnt | None = LEARNT,
        batch_size: int | Learnt = LEARNT,
        patches_per_volume: int | Learnt = LEARNT,
        num_workers: int | Learnt = LEARNT,
        duration_s: float = 10.0,
        s3: bool | None = None,
        interval_s: float = 0.25,
        redraw_s: float = 0.5,
        redraw_budget: float = 0.03,
        loader_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        src = tuner_source(source, mask, loader_kwargs or {})  # a clear error for anything else
        self._make: MakeLoader = src.make
        self._builtin, self._loader_call, self._takes = src.builtin, src.call, src.takes
        remote = src.remote if s3 is None else s3
        given = {
            "patch_size": patch_size,
            "batch_size": batch_size,
            "patches_per_volume": patches_per_volume,
            "num_workers": num_workers,
        }
        # what was passed, else the given loader's own setting, else the tuner's default
        start: dict[str, Any] = {
            k: src.settings.get(k, DEFAULTS[k]) if v is LEARNT else v for k, v in given.items()
        }
        self.memory_s = 0.5  # seconds between readings of the loader's memory (PSS)
        self.autotune_result: AutotuneResult | None = None
        self.autotune_space: Mapping[str, Sequence[int]] | None = None  # for the button
        self._tuning = False
        self.interval_s, self.redraw_s, self.redraw_budget = interval_s, redraw_s, redraw_budget
        self.runs: list[TunerRun] = []
        self.redraws = 0  # every plot update
        self.live_redraws = 0  # updates while a loader ran
        self._thread: threading.Thread | None = None
        self._probe: LoaderProbe | None = None
        self._stop_requested = False
        self._changed = 0
        cfg = get_config()
        initial = TunerSettings(
            max_workers=cfg.read.max_workers,
            concurrency=cfg.read.concurrency,
            memory_budget_mb=cfg.read.memory_budget_mb,
            cache_mb=cfg.read.cache_mb,
            read_ahead=cfg.read.read_ahead,
            max_parallel_ops=cfg.s3.max_parallel_ops if remote else None,
            num_workers=start["num_workers"],
            batch_size=start["batch_size"],
            patch_size=cube(start["patch_size"]),
            patches_per_volume=start["patches_per_volume"],
            persistent_workers=src.settings.get("persistent_workers", True),
            duration_s=duration_s,
        )
        self._build(initial, remote)
        if "patches_per_volume" not in self._takes:  # inference: its grid sets the patches
            self.controls["patches_per_volume"].layout.display = "none"
        self.add_class("radiobject-loader-tuner")

    # -- layout ---------------------------------------------------------------------------
    def _build(self, s: TunerSettings, on_s3: bool) -> None:
        self.controls: dict[str, w.ValueWidget] = {}
        for name, (label, lo, hi) in INT_CONTROLS.items():
            value = getattr(s, name)
            self.controls[name] = w.BoundedIntText(
                value=value if value is not None else 8,
                min=lo,
                max=hi,
                description=label,
                layout=w.Layout(width="200px"),  # one Layout each: hiding one hides only it
            )
        patch = "full" if s.patch_size is None else ",".join(map(str, s.patch_size))
        self.controls["patch_size"] = w.Text(
            value=patch, description="patch", layout=w.Layout(width="200px")
        )
        self.controls["persistent_workers"] = w.Checkbox(
            value=s.persistent_workers,
            description="persistent workers",
            indent=False,
            layout=w.Layout(display=None if self._builtin else "none"),
        )
        self.controls["duration_s"] = w.BoundedFloatText(
            value=s.duration_s,
            min=0.1,
            max=3600,
            description="seconds",
            layout=w.Layout(width="200px"),
        )
        self.on_s3 = on_s3
        self.controls["max_parallel_ops"].layout.display = None if on_s3 else "none"
        c = self.controls
        self.live_box = w.Checkbox(value=True, description="live plots", indent=False)
        self.start_button = w.Button(description="Start", button_style="success", icon="play")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True)
        self.status_box = w.HTML()
        self.error_box = w.HTML()
        self.plot = w.Image(format="png")
        self._plot = TracePlot()
        self._cost = {False: 0.02, True: 0.2}  # seconds per redraw (lines, whole), measured
        show_png(self.plot, self._plot.render([]))
        self.summary = w.HTML(summary_html([]))
        self.best_box = w.HTML(best_html(None, None))
        self.warning_box = w.HTML()
        self.stages_box = w.HTML()
        self.autotune_button = w.Button(description="Auto-tune", icon="magic")
        self.budget_s = w.BoundedFloatText(
            value=60, min=1, max=24 * 3600, description="budget s", layout=w.Layout(width="200px")
        )
        self.ram_budget_mb = w.BoundedIntText(
            value=0, min=0, max=1 << 24, description="RAM MB", layout=w.Layout(width="200px")
        )
        self.code_box = w.HTML()
        read = w.VBox(
            [
                w.HTML("<b>read</b>"),
                c["max_workers"],
                c["concurrency"],
                c["memory_budget_mb"],
                c["cache_mb"],
                c["read_ahead"],
                c["max_parallel_ops"],
            ]
        )
        loader = w.VBox(
            [
                w.HTML("<b>loader</b>"),
                c["num_workers"],
                c["batch_size"],
                c["patch_size"],
                c["patches_per_volume"],
                c["persistent_workers"],
                c["duration_s"],
            ]
        )
        buttons = w.VBox([self.start_button, self.stop_button, self.live_box, self.status_box])
        tune = w.VBox(
            [w.HTML("<b>auto-tune</b>"), self.budget_s, self.ram_budget_mb, self.autotune_button]
        )
        self.children = [
            w.HBox([read, loader, buttons, tune]),
            self.error_box,
            self.warning_box,
            self.plot,
            self.best_box,
            self.stages_box,
            self.summary,
            self.code_box,
        ]
        self.start_button.on_click(lambda _: self.start())
        self.autotune_button.on_click(lambda _: self._autotune_clicked())
        self.stop_button.on_click(lambda _: self.stop())

    @t.observe("running")
    def _running_changed(self, change: dict[str, Any]) -> None:
        self.start_button.disabled = change["new"]
        self.autotune_button.disabled = change["new"]
        self.stop_button.disabled = not change["new"]

    @t.observe("status")
    def _status_changed(self, change: dict[str, Any]) -> None:
        self.status_box.value = f"<small>{change['new']}</small>"

    @t.observe("error")
    def _error_changed(self, change: dict[str, Any]) -> None:
        self.error_box.value = error_html([change["new"]] if change["new"] else [])

    @t.observe("warning")
    def _warning_changed(self, change: dict[str, Any]) -> None:
        text = html.escape(change["new"])
        self.warning_box.value = f"<span style='color:#b45309'>⚠ {text}</span>" if text else ""

    # -- settings -------------------------------------------------------------------------
    def settings(self) -> TunerSettings:
        """The settings the controls show now."""
        c = self.controls
        ints = {k: int(c[k].value) for k in INT_CONTROLS}
        if not self.on_s3:
            # mypy is silenced on the next line: None: the S3 setting does not apply off S3
            ints["max_parallel_ops"] = None  # type: ignore[assignment]
        return TunerSettings(
            **ints,
            patch_size=parse_patch_size(c["patch_size"].value),
            persistent_workers=bool(c["persistent_workers"].value),
            duration_s=float(c["duration_s"].value),
        )

    def set(self, **values: Any) -> None:
        """Set controls by name, e.g. ``set(num_workers=2, patch_size=(64, 64, 32))``."""
        for name, value in values.items():
            if name not in self.controls:
                raise KeyError(f"no setting {name!r}; settings are {sorted(self.controls)}")
            if name == "patch_size":
                value = (
                    "full"
                    if value is None
                    else ",".join(map(str, ((value,) * 3 if isinstance(value, int) else value)))
                )
            self.controls[name].value = value

    # -- running --------------------------------------------------------------------------
    def start(self, **values: Any) -> TunerRun | None:
        """Start a run in the background with the controls' settings (after ``set(**values)``).

        Returns the new run, or ``None`` when the settings are invalid (the error is shown).
        """
        if self.running:
            return self.runs[-1]
        try:
            self.set(**values)
            settings = self.settings()
            settings.read_config()  # validates
        except Exception as e:  # bad settings: say so in place
            self.error = f"{type(e).__name__}: {e}"
            return None
        self.error = ""
        self.warning = self.memory_warning(settings)
        run = TunerRun(number=len(self.runs) + 1, settings=settings)
        self.runs.append(run)
        self._stop_requested = False
        self.running = True
        self.status = f"{run.label}: starting"
        self._thread = threading.Thread(  # in the caller's settings (a settings() block)
            target=contextvars.copy_context().run,
            args=(self._work, run),
            daemon=True,
            name=f"radiobject-tuner-{run.number}",
        )
        self._thread.start()
        return run

    def stop(self) -> None:
        """Ask the running loader to stop after its current batch."""
        self._stop_requested = True
        if self._probe is not None:
            self._probe.stop()

    def wait(self, timeout: float | None = None) -> TunerRun | None:
        """Block until the current run ends; return it."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.runs[-1] if self.runs else None

    def run_sync(self, **values: Any) -> TunerRun | None:
        """:meth:`start` with ``values`` (e.g. ``duration_s=2``) and :meth:`wait`."""
        run = self.start(**values)
        return self.wait() if run is not None else None

    @property
    def best(self) -> TunerRun | None:
        """The finished run with the highest samples/s (runs with errors excluded)."""
        good = [r for r in self.runs if r.done and not r.error and r.result is not None]
        return max(good, key=lambda r: r.samples_per_s) if good else None

    def _work(self, run: TunerRun, last: bool = True) -> None:
        s = run.settings
        done = threading.Event()
        live = threading.Thread(target=self._draw_loop, args=(run, done), daemon=True)
        if self.live_box.value:
            live.start()
        memory = threading.Thread(target=self._memory_loop, args=(run, done), daemon=True)
        self._loader: Any = None
        loader = None
        try:
            s3 = {"max_parallel_ops": s.max_parallel_ops} if s.max_parallel_ops else None
            # this thread's settings only: a loader built here keeps them (see settings())
            with scoped_settings(read=s.read_config(), s3=s3):
                kwargs = s.loader_kwargs()
                if self._builtin:  # a user's make_loader gets the four core settings only
                    kwargs["persistent_workers"] = s.persistent_workers
                loader = self._loader = self._make(**kwargs)
                memory.start()
                probe = self._probe = LoaderProbe(loader, interval_s=self.interval_s)

                def record(rec: Any) -> None:
                    run.records.append(rec)
                    self._changed += 1

                first: list[float] = []

                def check(_: Any) -> None:
                    # the run lasts duration_s after the first batch: worker start-up
                    # (seconds with num_workers > 0) is not part of the measurement
                    now = time.perf_counter()
                    first.append(now) if not first else None
                    if self._stop_requested or now - first[0] >= s.duration_s:
                        probe.stop()

                self._redraw(run)  # the axes for this run, drawn before the clock starts
                # TileDB's counters only where this process reads (they cost at the edges)
                with TileDBStats(storage=s.num_workers == 0) as stats:
                    # the loader's errors are the run's result: kept, shown in place
                    result = probe.run(callback=record, on_batch=check, capture_errors=True)
                run.result = result
                if s.num_workers == 0:
                    run.storage_reads = stats.s3_stats().read_ops
            if result.error is not None:
                where = "in the loader" if result.error_where == "loader" else "in the tuner"
                run.error = describe_error(result.error, where)
        except Exception as e:  # shown in the widget; Start works again
            run.error = describe_error(e, "starting the loader" if loader is None else "")
        finally:
            done.set()
            if memory.is_alive():
                memory.join()
            del loader  # ends its worker processes
            self._loader = None
            self._probe = None
            run.done = True
            if live.is_alive():
                live.join()
            self._finish(run, last)

    def _memory_loop(self, run: TunerRun, done: threading.Event) -> None:
        """Read the PSS of the loader's processes every ``memory_s`` seconds; keep the peaks."""
        track_pss(run, lambda: self._loader, lambda: self.memory_s, done)

    # -- memory ---------------------------------------------------------------------------
    def memory_model(self) -> MemoryModel | None:
        """The memory model estimated from the runs so far (``None`` before any)."""
        return MemoryModel.from_runs([r for r in self.runs if r.done and not r.error])

    def memory_warning(self, settings: TunerSettings, ram_budget_mb: float | None = None) -> str:
        """A warning when ``settings`` are likely to exceed the RAM budget or free memory."""
        return warning_text(self.memory_model(), settings, ram_budget_mb)

    # -- auto-tune ------------------------------------------------------------------------
    def autotune(
        self,
        time_budget_s: float = 60.0,
        ram_budget_mb: float | None = None,
        *,
        trial_s: float | None = None,
        space: Mapping[str, Sequence[int]] | None = None,
        min_gain: float = 0.05,
        background: bool = False,
    ) -> AutotuneResult | None:
        """Search workers, reader threads, cache size and read-ahead for the most samples/s.

        Coordinate descent (see :func:`coordinate_search`) from the controls' settings:
        each trial is a run of ``trial_s`` seconds (default: a tenth of the budget, 0.5 to
        10 s) shown live like any run; it ends when a pass changes nothing or the
        ``time_budget_s`` is spent. Settings whose predicted memory (main + workers x
        PSS per worker + cache, from the runs so far) exceeds ``ram_budget_mb`` are not
        run, nor chosen if they measured more. The best settings go to the controls, and
        :attr:`autotune_code` holds the code to use them. The values tried per setting are
        :func:`~radiobject.widgets._autotune.default_space` unless ``space`` is given.

        Returns the :class:`AutotuneResult` (``None`` with ``background=True``: it is
        in :attr:`autotune_result` once :meth:`wait` returns).
        """
        return run_autotune(
            self,
            time_budget_s,
            ram_budget_mb,
            trial_s=trial_s,
            space=space,
            min_gain=min_gain,
            background=background,
        )

    @property
    def autotune_code(self) -> str:
        """The code that applies the best settings of the last auto-tune ("" before one)."""
        result = self.autotune_result
        if result is None:
            return ""
        return settings_code(result.best, self._loader_call, self._takes)

    def _autotune_clicked(self) -> None:
        ram = int(self.ram_budget_mb.value)
        self.autotune(
            float(self.budget_s.value), ram or None, space=self.autotune_space, background=True
        )

    def _show_autotune(self, result: AutotuneResult) -> None:
        best = result.best
        self.set(
            num_workers=best.num_workers,
            max_workers=best.max_workers,
            cache_mb=best.cache_mb,
            read_ahead=best.read_ahead,
        )
        self.code_box.value = autotune_html(result, self.autotune_code)
        self.status = f"auto-tune done: {format_number(result.best_samples_per_s)} samples/s"

    def _draw_loop(self, run: TunerRun, done: threading.Event) -> None:
        """Redraw while the run goes on, throttled.

        At most every ``redraw_s`` seconds, and only while the time spent drawing stays
        within ``redraw_budget`` of the time elapsed: a slow machine redraws less often,
        and a whole-figure redraw (new axis limits) waits until the budget affords it,
        the lines being updated on the old axes meanwhile.
        """
        start, spent, last, drawn = time.perf_counter(), 0.0, 0.0, -1
        while not done.wait(timeout=0.1):
            now = time.perf_counter()
            if self._changed == drawn or now - last < self.redraw_s:
                continue
            traces, seconds = self._traces(run)
            allowed = self.redraw_budget * (now - start) - spent
            full = self._plot.needs_rebuild(traces, seconds) and self._cost[True] <= allowed
            if self._cost[full] > allowed:
                continue
            drawn, last = self._changed, now
            cost = self._redraw(run, relimit=full)
            self._cost[full] = 0.5 * self._cost[full] + 0.5 * cost
            self.live_redraws += 1
            spent += cost
            run.draw_seconds = spent

    def _traces(self, live: TunerRun | None) -> tuple[list[Trace], float]:
        shown = self.runs[-6:]
        traces = [Trace.from_records(r.label, list(r.records), live=r is live) for r in shown]
        return traces, 1.2 * live.settings.duration_s if live is not None else 1.0

    def _redraw(self, live: TunerRun | None, relimit: bool = True) -> float:
        start = time.perf_counter()
        traces, seconds = self._traces(live)
        try:
            show_png(self.plot, self._plot.render(traces, seconds, relimit=relimit))
        except Exception as e:  # a plot never stops the run
            self.error = f"plot failed: {type(e).__name__}: {e}"
        self.redraws += 1
        if live is not None and live.records:
            rec = live.records[-1]
            self.status = (
                f"{live.label}: {rec.t:.1f} s, {format_number(live.samples_per_s)} samples/s, "
                f"hit rate {100 * rec.hit_rate:.0f}%, data-starved {rec.starved_pct:.0f}%; "
                f"bytes from RAM {rec.ram_pct:.0f}%, local tier {rec.tier_pct:.0f}%, "
                f"storage {rec.storage_pct:.0f}%"
            )
        return time.perf_counter() - start

    def _finish(self, run: TunerRun, last: bool = True) -> None:
        self._redraw(None)
        self.stages_box.value = stages_html(run) + sources_html(run)
        best = self.best
        rows = [r.row() for r in self.runs if r.done]
        best_pos = next((i for i, r in enumerate(self.runs) if r is best), None)
        self.summary.value = summary_html(rows, best_pos)
        self.best_box.value = best_html(
            best.label if best else None, best.samples_per_s if best else None
        )
        self.error = f"{run.label} failed: {run.error}" if run.error else ""
        self.status = (
            f"{run.label}: failed"
            if run.error
            else f"{run.label}: {format_number(run.samples_per_s)} samples/s"
        )
        if last:
            self.running = False
