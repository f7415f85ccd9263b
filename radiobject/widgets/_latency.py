"""``UpdateStats``: how long a viewer's updates take and how many PNG bytes each sends."""

from __future__ import annotations

from collections import deque

import numpy as np

__all__ = ["UpdateStats"]


class UpdateStats:
    """How long the viewer's updates took and how many PNG bytes each sent.

    An update is one :meth:`SliceViewer.render` that changed what is shown (a render with
    nothing new sends nothing and is not counted). Times run from the start of the render
    to the last widget value set, reads of new planes included.

    Args:
        keep: recent updates the percentiles are taken over.

    >>> stats = UpdateStats()
    >>> stats.record(12.0, 3000, 1); stats.record(30.0, 9000, 3)
    >>> stats.last_ms, round(stats.p95_ms, 1), stats.bytes_last, stats.updates
    (30.0, 29.1, 9000, 2)
    """

    def __init__(self, keep: int = 256) -> None:
        self._ms: deque[float] = deque(maxlen=keep)
        self.updates = 0
        self.encodes = 0
        self.bytes_total = 0
        self.last_ms = 0.0
        self.bytes_last = 0
        self.encodes_last = 0

    def record(self, ms: float, nbytes: int, encodes: int) -> None:
        """Count one update of ``ms`` milliseconds that sent ``nbytes`` in ``encodes`` PNGs."""
        self._ms.append(float(ms))
        self.updates += 1
        self.encodes += int(encodes)
        self.bytes_total += int(nbytes)
        self.last_ms, self.bytes_last, self.encodes_last = float(ms), int(nbytes), int(encodes)

    def percentile(self, q: float) -> float:
        """Percentile ``q`` (0..100) of the recent update times in ms (0 before any update)."""
        return float(np.percentile(self._ms, q)) if self._ms else 0.0

    @property
    def p50_ms(self) -> float:
        """Median time of the recent updates, ms."""
        return self.percentile(50)

    @property
    def p95_ms(self) -> float:
        """95th percentile time of the recent updates, ms."""
        return self.percentile(95)

    def html(self) -> str:
        """The small readout shown under the planes."""
        if not self.updates:
            return ""
        return (
            "<span style='font-size:11px;color:#666'>"
            f"update {self.last_ms:.0f} ms · p95 {self.p95_ms:.0f} ms over "
            f"{len(self._ms)} · sent {self.bytes_last / 1000:.1f} kB "
            f"({self.encodes_last} PNG)</span>"
        )
