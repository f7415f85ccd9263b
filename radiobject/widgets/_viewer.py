"""``SliceViewer``: three planes of one volume with sliders, crosshair, window and overlay.

The widget: its controls and traits, what it shows and which planes it redraws when, and the
background thread that replaces a coarse view by full-resolution planes. The planes' images
are drawn by :mod:`radiobject.widgets._plane_images` (pure functions, no widgets).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError, Future
from typing import Any

import ipywidgets as w
import numpy as np
import traitlets as t

from radiobject import CoarseLevel

from ._latency import UpdateStats
from ._overlay import OverlayPlanes
from ._plane_images import (
    FULL,
    MARK_COLOR,
    MaskPlanes,
    Planes,
    Style,
    coarse_planes,
    encode_plane,
    read_planes,
)
from ._png import encode_png, show_png
from ._render import (
    WINDOW_PRESETS,
    Fusion,
    Window,
    auto_window,
    crosshair_pixel,
    display_scale,
    window_for,
)
from ._slices import (
    PLANES,
    SliceCache,
    box_on_plane,
    coarse_plane,
    crosshair_html,
    in_background,
    plane_index,
    plane_spacing,
    plane_uv,
    readout_html,
)

__all__ = ["BLANK", "CUSTOM", "FULL", "MARK_COLOR", "MaskPlanes", "SliceViewer"]

CUSTOM = "custom"
DEFAULT_PRESET = "MR auto (1-99%)"
CMAPS = ("gray", "bone", "viridis", "magma", "inferno", "hot", "jet")
BLANK = encode_png(np.zeros((8, 8, 3), np.uint8))
_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}

Report = Callable[[str, "str | None"], None]


class Quiet:
    """Mixin: ``with self._quietly():`` sets traits without their observers acting on it."""

    _quiet = False

    @contextlib.contextmanager
    def _quietly(self) -> Iterator[None]:
        quiet, self._quiet = self._quiet, True
        try:
            yield
        finally:
            self._quiet = quiet


class SliceViewer(Quiet, w.VBox):
    """Axial, coronal and sagittal planes through ``position``, with a mask overlay.

    Give it a volume with :meth:`show`; each plane is read (partially) only when its slice
    index changes. Moving a slider, the window or the colormap redraws the PNGs.

    A mask on another grid than the image comes as :class:`OverlayPlanes` (sampled onto the
    shown planes through the affines); its coarse level likewise. A second image (``overlay``,
    e.g. a FLAIR over a T1w, on either grid) is blended over the image in a ``hot`` colormap at
    ``overlay_opacity``, windowed to its brighter half (from its planes where it was set).

    Given the volume's coarse level too, it draws the planes from that level at once (no
    read) and has one background thread read the full-resolution planes, which replace
    them when ready: the thread reads and encodes outside the viewer's lock and puts its
    PNGs in place under it, only if no newer request (a move, a new window) came meanwhile.
    :attr:`shown_level` and the readout say which is shown; :meth:`wait_refined` waits.
    :meth:`mark` outlines a voxel box (a patch, a slab's planes) on every plane that cuts it.

    Args:
        label_colors: label -> RGB colours of the mask overlay.
        report: ``report(key, message_or_None)`` receives render problems.
    """

    position = t.Tuple(t.Int(), t.Int(), t.Int(), default_value=(0, 0, 0))
    preset = t.Unicode(DEFAULT_PRESET)
    level = t.Float(0.5)
    width = t.Float(1.0)
    cmap = t.Unicode("gray")
    opacity = t.Float(0.4)
    overlay_opacity = t.Float(0.5)
    crosshair = t.Bool(True)

    def __init__(
        self,
        label_colors: Mapping[int, tuple[int, int, int]] | None = None,
        report: Report | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.label_colors = dict(label_colors or {})
        self._report = report or (lambda key, message: None)
        self.image: SliceCache | None = None
        self.mask: MaskPlanes | None = None
        self.mask_name = ""
        self.overlay: MaskPlanes | None = None  # a second image, on the image's planes
        self.overlay_name = ""
        self._overlay_window = Window(0.5, 1.0)
        self._affine = np.eye(4)
        self._spacing: tuple[float, ...] = (1.0, 1.0, 1.0)
        self._shape: tuple[int, ...] | None = None
        self._drawn: dict[str, tuple[Any, ...]] = {}  # what each plane's PNG shows
        self.marked: tuple[tuple[int, int], ...] | None = None  # the box outlined (mark)
        self._crosshair_at: dict[str, tuple[int, int]] = {}
        self.latency = UpdateStats()
        self.coarse: CoarseLevel | None = None
        self.coarse_mask: CoarseLevel | OverlayPlanes | None = None
        self._refined = True  # the planes shown are (or will be read at) full resolution
        self._shown_level = ""
        self._generation = 0  # bumped by every request; a refine shows only the latest's
        self._lock = threading.RLock()  # drawing state and widget values, for the refiner
        self.refining: Future[bool] | None = None
        self._build()

    def _build(self) -> None:
        box = w.Layout(width="160px")
        self.preset_picker = w.Dropdown(
            options=[*WINDOW_PRESETS, CUSTOM], value=self.preset, description="window"
        )
        self.level_box = w.FloatText(description="level", layout=box)
        self.width_box = w.FloatText(description="width", layout=box)
        self.auto_button = w.Button(description="auto", tooltip="window from the shown slices")
        self.cmap_picker = w.Dropdown(options=CMAPS, value=self.cmap, description="colormap")
        self.opacity_slider = w.FloatSlider(
            value=self.opacity, min=0.0, max=1.0, step=0.05, description="opacity"
        )
        self.overlay_slider = w.FloatSlider(
            value=self.overlay_opacity, min=0.0, max=1.0, step=0.05, description="overlay"
        )
        self.crosshair_box = w.Checkbox(value=True, description="crosshair", indent=False)
        self.image_widgets = {p: w.Image(format="png") for p in PLANES}
        for image in self.image_widgets.values():
            show_png(image, BLANK)
            image.layout.grid_area = "plane"
        # the crosshair is drawn by the page on top of each image (same grid cell)
        self.crosshair_widgets = {p: w.HTML(layout=w.Layout(grid_area="plane")) for p in PLANES}
        self.titles = {p: w.HTML() for p in PLANES}
        self.sliders = {p: w.IntSlider(min=0, max=0, description=p[:3]) for p in PLANES}
        self.readout_box = w.HTML()
        self.latency_box = w.HTML()
        self.latency_box.add_class("radiobject-latency")
        for plane in PLANES:  # stable hooks for styling and browser tests
            self.image_widgets[plane].add_class(f"radiobject-image-{plane}")
            self.crosshair_widgets[plane].add_class(f"radiobject-crosshair-{plane}")
            self.sliders[plane].add_class(f"radiobject-slider-{plane}")
        stacks = {
            p: w.GridBox(
                [self.image_widgets[p], self.crosshair_widgets[p]],
                # one cell as wide as the image (and shrinking with it): the crosshair's
                # percentages are of the image
                layout=w.Layout(
                    grid_template_areas='"plane"',
                    grid_template_columns="minmax(0, max-content)",
                    overflow="visible",
                ),
            )
            for p in PLANES
        }
        panels = [w.VBox([self.titles[p], stacks[p], self.sliders[p]]) for p in PLANES]
        self.children = [
            w.HBox([self.preset_picker, self.level_box, self.width_box, self.auto_button]),
            w.HBox(
                [self.cmap_picker, self.opacity_slider, self.overlay_slider, self.crosshair_box]
            ),
            w.HBox(panels),
            self.readout_box,
            self.latency_box,
        ]
        for name, control in (
            ("preset", self.preset_picker),
            ("level", self.level_box),
            ("width", self.width_box),
            ("cmap", self.cmap_picker),
            ("opacity", self.opacity_slider),
            ("overlay_opacity", self.overlay_slider),
            ("crosshair", self.crosshair_box),
        ):
            t.link((self, name), (control, "value"))
        for plane, slider in self.sliders.items():
            slider.observe(self._slider_moved(_AXIS[plane]), "value")
        self.auto_button.on_click(lambda _: self.auto_window())

    def _slider_moved(self, axis: int) -> Callable[[dict[str, Any]], None]:
        def handler(change: dict[str, Any]) -> None:
            if not self._quiet:
                pos = list(self.position)
                pos[axis] = int(change["new"])
                self.position = tuple(pos)

        return handler

    # -- traits ---------------------------------------------------------------------------
    @t.validate("position")
    def _clamp(self, proposal: dict[str, Any]) -> tuple[int, int, int]:
        shape = self.image.shape if self.image is not None else (1, 1, 1)
        x, y, z = (
            min(max(int(p), 0), n - 1) for p, n in zip(proposal["value"], shape, strict=True)
        )
        return (x, y, z)

    @t.observe("position")
    def _moved(self, change: dict[str, Any]) -> None:
        with self._quietly():
            for plane, slider in self.sliders.items():
                slider.value = plane_index(plane, self.position)
        self.render()

    @t.observe("preset")
    def _preset_changed(self, change: dict[str, Any]) -> None:
        if change["new"] != CUSTOM:
            self.auto_window()

    @t.observe("level", "width")
    def _window_edited(self, change: dict[str, Any]) -> None:
        if not self._quiet:
            with self._quietly():
                self.preset = CUSTOM
            self.render()

    @t.observe("cmap", "opacity", "overlay_opacity", "crosshair")
    def _style_changed(self, change: dict[str, Any]) -> None:
        self.render()

    # -- content --------------------------------------------------------------------------
    def show(
        self,
        image: SliceCache,
        mask: MaskPlanes | None = None,
        mask_name: str = "",
        coarse: CoarseLevel | None = None,
        coarse_mask: CoarseLevel | OverlayPlanes | None = None,
        position: Sequence[int] | None = None,
        overlay: MaskPlanes | None = None,
        overlay_name: str = "",
    ) -> None:
        """Show ``image`` (and ``mask``, ``overlay``); keep the position if shapes match.

        ``position`` (a voxel of ``image``) overrides where the crosshair goes.

        With ``coarse`` (the image's coarse level; ``coarse_mask``, the mask's) the planes are
        drawn from it at once and the full-resolution planes are read by a background thread,
        which puts them in place when they are ready (:meth:`wait_refined`). Until then every
        update is drawn from the coarse level and asks for the planes of its own position
        (an older request still waiting is dropped; one already reading is not shown).
        """
        with self._lock:
            self._generation += 1
            old, self._shape = self._shape, image.shape  # kept through clear()
            self.image, self.mask, self.mask_name = image, mask, mask_name
            self.coarse, self.coarse_mask = coarse, coarse_mask
            self.overlay, self.overlay_name = overlay, overlay_name
            self._refined, self.refining = coarse is None, None
        self._affine = image.volume.affine
        self._spacing = tuple(image.volume.spacing)
        with self._quietly():
            for plane, slider in self.sliders.items():
                slider.max = image.shape[_AXIS[plane]] - 1
            centre = tuple(n // 2 for n in image.shape)
            kept = self.position if old == image.shape else centre
            self.position = tuple(int(p) for p in position) if position is not None else kept
        self._window_overlay()
        if self.preset != CUSTOM:
            self.auto_window()
        else:
            self.render()
        if coarse is None:
            with self._lock:
                self._prefetch(self.position)

    def set_mask(
        self,
        mask: MaskPlanes | None,
        mask_name: str = "",
        coarse_mask: CoarseLevel | OverlayPlanes | None = None,
    ) -> None:
        """Overlay ``mask`` (``None``: no overlay), with its coarse level while one is shown."""
        with self._lock:
            self.mask, self.mask_name, self.coarse_mask = mask, mask_name, coarse_mask
        self.render()

    def set_overlay(self, overlay: MaskPlanes | None, overlay_name: str = "") -> None:
        """Blend the image ``overlay`` over the planes (``None``: no overlay)."""
        with self._lock:
            self.overlay, self.overlay_name = overlay, overlay_name
        self._window_overlay()
        self.render()

    def _window_overlay(self) -> None:
        """The overlay's window: its brighter half, so that what stands out shows.

        50..99.5 % of its voxels above background on the three planes through the position.
        """
        if self.overlay is not None:
            planes = [self.overlay.plane(p, plane_index(p, self.position)) for p in PLANES]
            values = np.concatenate([p.ravel() for p in planes])
            inside = values[values > values.min()] if values.size else values
            self._overlay_window = auto_window(inside if inside.size else values, 50.0, 99.5)

    def mark(self, box: Sequence[tuple[int, int]] | None) -> None:
        """Outline the voxel ``box`` ``((x0, x1), (y0, y1), (z0, z1))`` (None: no outline).

        Each plane that cuts the box shows its outline (a slab of axial planes: the planes'
        extent on the axial view, a band on the coronal and sagittal views).
        """
        with self._lock:
            self.marked = None if box is None else tuple((int(a), int(b)) for a, b in box[:3])
        self.render()

    def clear(self) -> None:
        """Show nothing."""
        with self._lock:
            self._generation += 1  # a refine under way is not shown
            self.image = self.mask = self.overlay = None
            self.coarse = self.coarse_mask = None
            self._refined, self.refining, self._shown_level = True, None, ""
            self._drawn.clear()
            self._crosshair_at.clear()
            for plane in PLANES:
                show_png(self.image_widgets[plane], BLANK)
                self.crosshair_widgets[plane].value = ""
                self.titles[plane].value = ""
            self.readout_box.value = ""

    def auto_window(self) -> Window:
        """Set level and width from the preset (percentiles of the three planes shown)."""
        preset = self.preset if self.preset in WINDOW_PRESETS else DEFAULT_PRESET
        if WINDOW_PRESETS[preset][0] == "fixed":
            window = window_for(preset)
        elif self.image is None:
            return Window(self.level, self.width)
        else:
            window = window_for(preset, self._window_values())
        with self._quietly():
            self.level, self.width = window.level, window.width
        self.render()
        return window

    @property
    def images(self) -> dict[str, bytes]:
        """The PNG bytes shown for each plane."""
        return {p: bytes(self.image_widgets[p].value) for p in PLANES}

    @property
    def readout(self) -> str:
        """The coordinate and intensity readout (HTML), naming the level shown."""
        return str(self.readout_box.value)

    @property
    def shown_level(self) -> str:
        """What the planes show: ``"full resolution"`` or a coarse level (``"level 1 (4x)"``)."""
        return self._shown_level

    @property
    def refined(self) -> bool:
        """True once the full-resolution planes are shown (at once without a coarse level)."""
        return self._refined

    @property
    def crosshair_at(self) -> dict[str, tuple[int, int]]:
        """Image pixel ``(row, col)`` the crosshair crosses on each plane (empty when off)."""
        return dict(self._crosshair_at)

    def wait_refined(self, timeout: float | None = None) -> bool:
        """Wait until the full-resolution planes of the current view are shown; whether they are.

        Returns at once without a coarse level; ``False`` when the read failed (the problem
        is reported in place) or ``timeout`` (seconds, per refine) ran out.
        """
        while True:
            with self._lock:
                job = self.refining
                if job is None or self._refined:
                    return self._refined
            with contextlib.suppress(CancelledError, TimeoutError):
                job.result(timeout)
            with self._lock:
                if job is self.refining:  # no newer request meanwhile
                    return self._refined

    def render(self) -> dict[str, bytes]:
        """Redraw what changed: a plane's PNG only when its pixels change, the crosshair.

        Planes are read only at new slice indices; moving along one axis re-encodes one
        plane (the crosshair on the other two is drawn by the page). Each update's time and
        bytes go to :attr:`latency`. While a coarse level is shown the planes come from it
        (no read) and a refine of this position is asked for.
        """
        if self.image is None or self._quiet:
            return self.images
        start = time.perf_counter()
        sent = encodes = 0
        changed = False
        with self._lock:
            self._generation += 1  # a refine of an older request is not shown
            pos, style = self.position, self._style()
            try:
                planes, level = self._planes_now(pos)
                encoded = self._encode_planes(planes, level, pos, style)
                sent, encodes, changed = self._apply(encoded, planes, level, pos)
                self._report("render", None)
            except Exception as e:  # shown in place; the viewer stays usable
                self._report("render", f"{type(e).__name__}: {e}")
            if not self._refined:
                self._ask_refine(pos, style)
        if encodes or changed:
            self.latency.record((time.perf_counter() - start) * 1000, sent, encodes)
            self.latency_box.value = self.latency.html()
        return self.images

    # -- drawing (the caller holds self._lock, except for _encode_planes in the refiner) -----
    def _style(self) -> Style:
        colors = tuple(sorted(self.label_colors.items()))
        fused = None if self.overlay is None else (self._overlay_window, self.overlay_opacity)
        return Window(self.level, self.width), self.cmap, self.opacity, colors, fused

    def _window_values(self) -> np.ndarray:
        """The voxels of the three planes shown (a coarse level's own, not enlarged)."""
        assert self.image is not None
        with self._lock:
            pos, level = self.position, self.coarse
            if self._refined or level is None:
                planes = [data for data, _ in self._planes_now(pos)[0].values()]
            else:
                shape, t = self.image.shape, self.image.t
                planes = [
                    coarse_plane(level, p, plane_index(p, pos), shape, t, full_size=False)
                    for p in PLANES
                ]
        return np.concatenate([data.ravel() for data in planes])

    def _planes_now(self, pos: tuple[int, int, int]) -> tuple[Planes, str]:
        """The planes through ``pos`` at the level shown now, and that level's name."""
        assert self.image is not None
        if self._refined or self.coarse is None:
            return read_planes(self.image, self.mask, pos), FULL
        return coarse_planes(self.coarse, self.coarse_mask, self.image, pos), self.coarse.name

    def _encode_planes(
        self, planes: Planes, level: str, pos: tuple[int, int, int], style: Style
    ) -> dict[str, tuple[tuple[Any, ...], bytes | None, tuple[int, int]]]:
        """Per plane: its drawing key, its PNG (``None``: what is shown already) and scale."""
        out = {}
        for plane in PLANES:
            data, mask = planes[plane]
            scale = display_scale(data.shape, plane_spacing(plane, self._spacing))
            index = plane_index(plane, pos)
            marked = None if self.marked is None else box_on_plane(self.marked, plane, index)
            key = (self.image, self.mask, self.overlay, level, index, style, scale, marked)
            fresh = self._drawn.get(plane) != key
            fusion = None
            if fresh and self.overlay is not None and style[4] is not None:
                window, opacity = style[4]
                fusion = Fusion(self.overlay.plane(plane, index), window, "hot", opacity)
            png = encode_plane(data, mask, scale, style, marked, fusion) if fresh else None
            out[plane] = (key, png, scale)
        return out

    def _apply(
        self,
        encoded: Mapping[str, tuple[tuple[Any, ...], bytes | None, tuple[int, int]]],
        planes: Planes,
        level: str,
        pos: tuple[int, int, int],
    ) -> tuple[int, int, bool]:
        """Put encoded planes, crosshairs, titles and readout in place: (bytes, PNGs, moved)."""
        sent = encodes = 0
        changed = False
        for plane, (key, png, scale) in encoded.items():
            if png is not None:
                if png != self.image_widgets[plane].value:  # the same bytes are not sent
                    sent += len(png)
                show_png(self.image_widgets[plane], png)
                self._drawn[plane] = key
                encodes += 1
            changed |= self._draw_crosshair(plane, pos, planes[plane][0].shape, scale)
            last = self.sliders[plane].max
            self.titles[plane].value = f"<b>{plane}</b> {plane_index(plane, pos)}/{last}"
        self._update_readout(pos, planes, level)
        self._shown_level = level
        return sent, encodes, changed

    # -- refining: full-resolution planes read by a background thread -----------------------
    def _ask_refine(self, pos: tuple[int, int, int], style: Style) -> None:
        """Queue a read of the planes through ``pos`` (dropping an older one still queued)."""
        if self.refining is not None:
            self.refining.cancel()
        assert self.image is not None
        # one thread for every viewer, a job at a time
        self.refining = in_background(
            "refine", self._refine, self._generation, self.image, self.mask, pos, style
        )

    def _refine(
        self,
        generation: int,
        image: SliceCache,
        mask: MaskPlanes | None,
        pos: tuple[int, int, int],
        style: Style,
    ) -> bool:
        """Read and encode the full planes, then show them unless a newer request came."""
        try:
            planes = read_planes(image, mask, pos)
            encoded = self._encode_planes(planes, FULL, pos, style)
        except Exception as e:
            with self._lock:
                if generation == self._generation:
                    self._report("render", f"{type(e).__name__}: {e}")
            return False
        with self._lock:
            if generation != self._generation:
                return False
            self._apply(encoded, planes, FULL, pos)
            self._refined = True
            self._prefetch(pos)  # scrubbing from here on reads from memory
        return True

    def _prefetch(self, pos: Sequence[int]) -> None:
        for plane in PLANES:  # axial first
            for cache in (self.image, self.mask):
                if cache is not None:
                    cache.prefetch(pos, (plane,))

    def _draw_crosshair(
        self, plane: str, pos: tuple[int, int, int], shape: tuple[int, ...], scale: tuple[int, int]
    ) -> bool:
        """Move the page-drawn crosshair of ``plane``; whether it changed."""
        html, at = "", None
        if self.crosshair:
            at = crosshair_pixel(plane_uv(plane, pos), (shape[0], shape[1]), scale)
            html = crosshair_html(*at, shape[1] * scale[0], shape[0] * scale[1])
        if at is None:
            self._crosshair_at.pop(plane, None)
        else:
            self._crosshair_at[plane] = at
        widget = self.crosshair_widgets[plane]
        if widget.value == html:
            return False
        widget.value = html
        return True

    def _update_readout(self, pos: tuple[int, int, int], planes: Planes, level: str) -> None:
        x, y, z = pos
        axial, mask = planes["axial"]
        value = float(axial[x, y])
        world = (self._affine @ np.array([x, y, z, 1.0]))[:3]
        label = int(mask[x, y]) if mask is not None else None
        over = None
        if self.overlay is not None:
            over = (self.overlay_name, float(self.overlay.plane("axial", z)[x, y]))
        self.readout_box.value = readout_html(
            pos, world, value, label, self.mask_name, level, overlay=over
        )
