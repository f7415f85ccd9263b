"""Pure plotting for the tuner: loader traces to a PNG, runs to an HTML table.

Matplotlib is used through its object API (``Figure`` + Agg canvas): no pyplot state, no
GUI backend, safe to call from a background thread.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._png import encode_png

__all__ = ["METRICS", "Trace", "TracePlot", "best_html", "nice_ceil", "plot_traces", "summary_html"]

# (field of ProbeRecord, axis title, scale)
METRICS: tuple[tuple[str, str, float], ...] = (
    ("samples_per_s", "samples / s", 1.0),
    ("batch_latency_ms", "batch latency (ms)", 1.0),
    ("hit_rate", "cache hit rate (%)", 100.0),
    ("storage_mb_per_s", "storage MB / s", 1.0),
    ("tier_pct", "from local tier (% of bytes)", 1.0),
)
_PERCENT = ("hit_rate", "tier_pct")  # panels on a 0-100 axis


@dataclass(frozen=True)
class Trace:
    """One run's records as columns: time and one array per metric name."""

    label: str
    t: np.ndarray
    values: dict[str, np.ndarray]
    live: bool = False

    @classmethod
    def from_records(cls, label: str, records: Sequence[object], live: bool = False) -> Trace:
        """A trace from ``ProbeRecord``-like objects (attributes ``t`` and the metrics).

        >>> from types import SimpleNamespace as R
        >>> rec = R(t=1.0, samples_per_s=2.0, batch_latency_ms=3.0, hit_rate=0.5,
        ...         storage_mb_per_s=4.0)
        >>> Trace.from_records("a", [rec]).values["hit_rate"].tolist()
        [0.5]
        """
        t = np.array([float(getattr(r, "t", 0.0)) for r in records])
        values = {
            name: np.array([float(getattr(r, name, np.nan)) for r in records])
            for name, _, _ in METRICS
        }
        return cls(label, t, values, live)


def nice_ceil(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= ``value`` (axis limits that rarely move).

    >>> nice_ceil(0.0), nice_ceil(3.2), nice_ceil(2300.0), nice_ceil(0.07)
    (1.0, 5.0, 2500.0, 0.1)
    """
    if not np.isfinite(value) or value <= 0:
        return 1.0
    exp = np.floor(np.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if step * 10**exp >= value * (1 - 1e-9):
            return float(step * 10**exp)
    return float(10 ** (exp + 1))  # pragma: no cover - the loop always returns


def _limits(traces: Sequence[Trace], min_seconds: float = 1.0) -> tuple[float, ...]:
    right = max((float(tr.t.max()) for tr in traces if len(tr.t)), default=min_seconds)
    right = max(right, min_seconds)
    tops = []
    for name, _, scale in METRICS:
        top = 0.0
        for tr in traces:
            values = tr.values[name] * scale
            steady = values[1:] if len(values) > 2 else values  # the first has start-up in it
            if np.isfinite(steady).any():
                top = max(top, float(np.nanmax(steady)))
        tops.append(105.0 if name in _PERCENT else nice_ceil(top * 1.1))
    return (nice_ceil(right), *tops)


class TracePlot:
    """Panels against time (samples/s, latency, hit rate, MB/s, local tier), redrawn cheaply.

    The figure is kept; axis limits snap to "nice" values, so most updates only redraw the
    lines over a saved background (blitting) instead of the whole figure with its text.
    Use from one thread at a time.

    >>> TracePlot().render([])[1:4]
    b'PNG'
    """

    def __init__(self, width_in: float = 11.0, height_in: float = 2.5, dpi: int = 80) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        self.fig = Figure(figsize=(width_in, height_in), dpi=dpi)
        self.canvas = FigureCanvasAgg(self.fig)
        self.axes = self.fig.subplots(1, len(METRICS))
        for ax, (_, title, _) in zip(self.axes, METRICS, strict=True):
            ax.set_title(title, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.yaxis.set_major_locator(MaxNLocator(4))
            ax.set_xlabel("seconds", fontsize=7, labelpad=1)
        for name in _PERCENT:
            self.axes[[n for n, _, _ in METRICS].index(name)].set_yticks([0, 25, 50, 75, 100])
        self.fig.subplots_adjust(left=0.04, right=0.83, bottom=0.2, top=0.86, wspace=0.4)
        self._key: tuple[object, ...] | None = None
        self._background: object = None
        self._lines: list[list[object]] = []
        self._legend: object = None
        self.full_redraws = 0

    def _rebuild(self, traces: Sequence[Trace], limits: tuple[float, ...]) -> None:
        for lines in self._lines:
            for line in lines:
                line.remove()  # type: ignore[attr-defined]  # matplotlib's artists are untyped here
        if self._legend is not None:
            # mypy is silenced on the next line: matplotlib's artists are untyped here
            self._legend.remove()  # type: ignore[attr-defined]
            self._legend = None
        self._lines = []
        for ax, top in zip(self.axes, limits[1:], strict=True):
            ax.set_xlim(0, limits[0])
            ax.set_ylim(-0.03 * top, top)  # a line at 0 (e.g. no cache hits) stays visible
            lines = []
            for i, tr in enumerate(traces):
                (line,) = ax.plot(
                    [],
                    [],
                    color=f"C{i % 10}",
                    lw=2.0 if tr.live else 1.0,
                    label=tr.label,
                    animated=True,
                )
                lines.append(line)
            self._lines.append(lines)
        if traces:
            self._legend = self.fig.legend(
                handles=self._lines[0], loc="center right", fontsize=7, frameon=False
            )
        self.canvas.draw()  # everything but the (animated) lines
        self._background = self.canvas.copy_from_bbox(self.fig.bbox)
        self.full_redraws += 1

    @staticmethod
    def _layout(traces: Sequence[Trace]) -> tuple[object, ...]:
        return tuple((tr.label, tr.live) for tr in traces)

    def needs_rebuild(self, traces: Sequence[Trace], min_seconds: float = 1.0) -> bool:
        """True when drawing ``traces`` means redrawing the whole figure (slow)."""
        key = (_limits(traces, min_seconds), self._layout(traces))
        return key != self._key

    def render(
        self, traces: Sequence[Trace], min_seconds: float = 1.0, relimit: bool = True
    ) -> bytes:
        """PNG of ``traces``, one line each (the live trace thicker).

        ``min_seconds`` is the least extent of the time axis (e.g. the planned run length),
        so the axes need not grow, and the figure be redrawn whole, while a run goes on.
        With ``relimit=False`` the axes stay as they are (lines beyond them are clipped)
        unless the set of traces changed: a cheap update.
        """
        limits = _limits(traces, min_seconds)
        key = (limits, self._layout(traces))
        same_layout = self._key is not None and self._key[1] == key[1]
        if key != self._key and (relimit or not same_layout):
            self._rebuild(traces, limits)
            self._key = key
        else:
            self.canvas.restore_region(self._background)
        for ax, (name, _, scale), lines in zip(self.axes, METRICS, self._lines, strict=True):
            for tr, line in zip(traces, lines, strict=True):
                # mypy is silenced on the next line: matplotlib's artists are untyped here
                line.set_data(tr.t, tr.values[name] * scale)  # type: ignore[attr-defined]
                ax.draw_artist(line)
        rgba = np.asarray(self.canvas.buffer_rgba())
        return encode_png(rgba[..., :3])


def plot_traces(
    traces: Sequence[Trace], width_in: float = 11.0, height_in: float = 2.5, dpi: int = 80
) -> bytes:
    """PNG of the panels against time: samples/s, latency, hit rate, MB/s, tier (one-off).

    >>> plot_traces([])[1:4]
    b'PNG'
    """
    return TracePlot(width_in, height_in, dpi).render(traces)


def summary_html(rows: Sequence[dict[str, object]], best: int | None = None) -> str:
    """An HTML table of runs (cells escaped), the ``best`` row (position) marked with ★.

    >>> "★" in summary_html([{"run": "<1>", "samples/s": 3.0}], best=0)
    True
    """
    if not rows:
        return "<i>no runs yet</i>"
    frame = pd.DataFrame(list(rows))
    for column in frame.columns:
        if frame[column].dtype.kind == "f":  # numbers as text: no exponents, no ragged digits
            percent = column == "hit rate"
            frame[column] = [format_number(100 * v if percent else v) for v in frame[column]]
            if percent:
                frame[column] = [v if v == "-" else f"{v}%" for v in frame[column]]
    frame.insert(0, "", ["★" if i == best else "" for i in range(len(frame))])
    table = frame.to_html(index=False, escape=True, border=0, na_rep="-")
    return f"<div style='font-size:11px;overflow-x:auto'>{table}</div>"


def best_html(label: str | None, samples_per_s: float | None, settings: str = "") -> str:
    """The 'best so far' line.

    >>> best_html("run 1", 12.5)
    '<b>best so far</b>: run 1 — 12.5 samples/s'
    """
    if label is None or samples_per_s is None:
        return "<b>best so far</b>: -"
    extra = f" ({html.escape(settings)})" if settings else ""
    rate = format_number(samples_per_s)
    return f"<b>best so far</b>: {html.escape(label)} — {rate} samples/s{extra}"


def format_number(value: float) -> str:
    """A measurement as people read it: thousands separated, decimals fixed by size.

    >>> format_number(3333.33), format_number(12.345), format_number(0.5), format_number(2e6)
    ('3,333', '12.3', '0.50', '2,000,000')
    >>> format_number(float("nan"))
    '-'
    """
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"
