"""The planes a viewer shows, read one partial read at a time, and the HTML around them.

No widgets here: :class:`SliceCache` wraps a :class:`radiobject.Volume` and reads a plane
only when its index changes; the HTML helpers format tables and readouts with escaping.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from radiobject import Volume

__all__ = [
    "PLANES",
    "SliceCache",
    "error_html",
    "plane_index",
    "plane_spacing",
    "plane_uv",
    "readout_html",
    "row_html",
]

PLANES = ("axial", "coronal", "sagittal")
# the axis each plane cuts, and the two axes it shows (u along columns, v upwards)
_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}
_UV = {"axial": (0, 1), "coronal": (0, 2), "sagittal": (1, 2)}


def plane_index(plane: str, position: Sequence[int]) -> int:
    """The slice index of ``plane`` at voxel ``position`` ``(x, y, z)``.

    >>> plane_index("coronal", (1, 2, 3))
    2
    """
    return int(position[_AXIS[plane]])


def plane_uv(plane: str, position: Sequence[int]) -> tuple[int, int]:
    """The in-plane coordinates ``(u, v)`` of voxel ``position`` on ``plane``.

    >>> plane_uv("sagittal", (1, 2, 3))
    (2, 3)
    """
    u, v = _UV[plane]
    return int(position[u]), int(position[v])


def plane_spacing(plane: str, spacing: Sequence[float]) -> tuple[float, float]:
    """Voxel size ``(u, v)`` of ``plane`` from the volume spacing ``(x, y, z)``.

    >>> plane_spacing("axial", (1.0, 2.0, 3.0))
    (1.0, 2.0)
    """
    u, v = _UV[plane]
    return float(spacing[u]), float(spacing[v])


class SliceCache:
    """The planes shown of one volume: each read (partially) only when its index changes.

    Args:
        volume: the volume to show.
        t: the time point of a 4D volume.
    """

    def __init__(self, volume: Volume, t: int = 0) -> None:
        self.volume = volume
        self.t = t
        self.shape: tuple[int, int, int] = tuple(volume.shape[:3])  # type: ignore[assignment]
        self.reads = 0
        self._planes: dict[str, tuple[int, np.ndarray]] = {}

    def plane(self, plane: str, index: int) -> np.ndarray:
        """The ``(u, v)`` plane at ``index`` (one partial read the first time)."""
        hit = self._planes.get(plane)
        if hit is not None and hit[0] == index:
            return hit[1]
        if self.volume.ndim == 4:
            key: list[Any] = [slice(None)] * 3 + [self.t]
            key[_AXIS[plane]] = index
            data = self.volume[tuple(key)]
        else:
            data = getattr(self.volume, plane)(index)
        self._planes[plane] = (index, data)
        self.reads += 1
        return data

    def planes_at(self, position: Sequence[int]) -> dict[str, np.ndarray]:
        """The three planes through voxel ``position``."""
        return {p: self.plane(p, plane_index(p, position)) for p in PLANES}


def row_html(title: str, row: pd.DataFrame | pd.Series | None) -> str:
    """A one-row table with a title (cells escaped), or a note when there is no row.

    >>> "&lt;b&gt;" in row_html("obs", pd.Series({"note": "<b>"}))
    True
    """
    head = f"<b>{html.escape(title)}</b>"
    if row is None or len(row) == 0:
        return f"{head} <i>(none)</i>"
    frame = row.to_frame().T if isinstance(row, pd.Series) else row
    table = frame.to_html(index=False, escape=True, border=0, max_cols=24)
    return f"{head}<div style='overflow-x:auto;font-size:11px;max-width:100%'>{table}</div>"


def readout_html(
    position: Sequence[int],
    world: Sequence[float],
    value: float | None,
    label: int | None = None,
    mask_name: str = "",
) -> str:
    """The voxel and world coordinates and the intensity under the crosshair.

    >>> "value 1.5" in readout_html((1, 2, 3), (0.0, 0.0, 0.0), 1.5)
    True
    """
    x, y, z = (int(p) for p in position)
    wx, wy, wz = (float(w) for w in world)
    text = (
        f"voxel (x, y, z) = ({x}, {y}, {z}) · world (mm) = ({wx:.1f}, {wy:.1f}, {wz:.1f})"
        f" · value {_fmt(value)}"
    )
    if label is not None:
        text += f" · {html.escape(mask_name)} label {int(label)}"
    return f"<code>{text}</code>"


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    v = float(value)
    return f"{v:g}" if v == int(v) or abs(v) >= 1000 else f"{v:.4g}"


def error_html(messages: Sequence[str]) -> str:
    """Problems shown in place, escaped, one per line (empty when there are none).

    >>> error_html(["bad <mask>"])[:4], error_html([])
    ('<div', '')
    """
    if not messages:
        return ""
    lines = "<br>".join(html.escape(m) for m in messages)
    return (
        "<div style='color:#a00;background:#fee;border:1px solid #e99;padding:4px 8px;"
        f"border-radius:4px'>⚠ {lines}</div>"
    )
