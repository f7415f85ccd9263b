"""``SliceViewer``: three planes of one volume with sliders, crosshair, window and overlay."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ipywidgets as w
import numpy as np
import traitlets as t

from ._png import encode_png, show_png
from ._render import WINDOW_PRESETS, Window, display_scale, render_slice, window_for
from ._slices import PLANES, SliceCache, plane_index, plane_spacing, plane_uv, readout_html

__all__ = ["BLANK", "CUSTOM", "SliceViewer"]

CUSTOM = "custom"
DEFAULT_PRESET = "MR auto (1-99%)"
CMAPS = ("gray", "bone", "viridis", "magma", "inferno", "hot", "jet")
BLANK = encode_png(np.zeros((8, 8, 3), np.uint8))
_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}

Report = Callable[[str, "str | None"], None]


class SliceViewer(w.VBox):
    """Axial, coronal and sagittal planes through ``position``, with a mask overlay.

    Give it a volume with :meth:`show`; each plane is read (partially) only when its slice
    index changes. Moving a slider, the window or the colormap redraws the PNGs.

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
        self._quiet = False
        self.image: SliceCache | None = None
        self.mask: SliceCache | None = None
        self.mask_name = ""
        self._affine = np.eye(4)
        self._spacing: tuple[float, ...] = (1.0, 1.0, 1.0)
        self._shape: tuple[int, ...] | None = None
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
        self.crosshair_box = w.Checkbox(value=True, description="crosshair", indent=False)
        self.image_widgets = {p: w.Image(format="png") for p in PLANES}
        for image in self.image_widgets.values():
            show_png(image, BLANK)
        self.titles = {p: w.HTML() for p in PLANES}
        self.sliders = {p: w.IntSlider(min=0, max=0, description=p[:3]) for p in PLANES}
        self.readout_box = w.HTML()
        for plane in PLANES:  # stable hooks for styling and browser tests
            self.image_widgets[plane].add_class(f"radiobject-image-{plane}")
            self.sliders[plane].add_class(f"radiobject-slider-{plane}")
        panels = [w.VBox([self.titles[p], self.image_widgets[p], self.sliders[p]]) for p in PLANES]
        self.children = [
            w.HBox([self.preset_picker, self.level_box, self.width_box, self.auto_button]),
            w.HBox([self.cmap_picker, self.opacity_slider, self.crosshair_box]),
            w.HBox(panels),
            self.readout_box,
        ]
        for name, control in (
            ("preset", self.preset_picker),
            ("level", self.level_box),
            ("width", self.width_box),
            ("cmap", self.cmap_picker),
            ("opacity", self.opacity_slider),
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

    @contextlib.contextmanager
    def _quietly(self) -> Iterator[None]:
        quiet, self._quiet = self._quiet, True
        try:
            yield
        finally:
            self._quiet = quiet

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

    @t.observe("cmap", "opacity", "crosshair")
    def _style_changed(self, change: dict[str, Any]) -> None:
        self.render()

    # -- content --------------------------------------------------------------------------
    def show(self, image: SliceCache, mask: SliceCache | None = None, mask_name: str = "") -> None:
        """Show ``image`` (and ``mask`` on the same grid); keep the position if shapes match."""
        old, self._shape = self._shape, image.shape  # kept through clear()
        self.image, self.mask, self.mask_name = image, mask, mask_name
        self._affine = image.volume.affine
        self._spacing = tuple(image.volume.spacing)
        with self._quietly():
            for plane, slider in self.sliders.items():
                slider.max = image.shape[_AXIS[plane]] - 1
            centre = tuple(n // 2 for n in image.shape)
            self.position = self.position if old == image.shape else centre
        if self.preset != CUSTOM:
            self.auto_window()
        else:
            self.render()

    def clear(self) -> None:
        """Show nothing."""
        self.image = self.mask = None
        for plane in PLANES:
            show_png(self.image_widgets[plane], BLANK)
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
            planes = self.image.planes_at(self.position)
            window = window_for(preset, np.concatenate([p.ravel() for p in planes.values()]))
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
        """The coordinate and intensity readout (HTML)."""
        return str(self.readout_box.value)

    def render(self) -> dict[str, bytes]:
        """Redraw the three planes (reading only planes not read yet) and the readout."""
        if self.image is None or self._quiet:
            return self.images
        try:
            pos = self.position
            window = Window(self.level, self.width)
            masks = self.mask.planes_at(pos) if self.mask is not None else {}
            for plane, data in self.image.planes_at(pos).items():
                rgb = render_slice(
                    data,
                    window,
                    self.cmap,
                    mask=masks.get(plane),
                    opacity=self.opacity,
                    colors=self.label_colors,
                    crosshair=plane_uv(plane, pos) if self.crosshair else None,
                    scale=display_scale(data.shape, plane_spacing(plane, self._spacing)),
                )
                show_png(self.image_widgets[plane], encode_png(rgb))
                last = self.sliders[plane].max
                self.titles[plane].value = f"<b>{plane}</b> {plane_index(plane, pos)}/{last}"
            self._update_readout(masks)
            self._report("render", None)
        except Exception as e:  # shown in place; the viewer stays usable
            self._report("render", f"{type(e).__name__}: {e}")
        return self.images

    def _update_readout(self, masks: Mapping[str, np.ndarray]) -> None:
        assert self.image is not None
        x, y, z = self.position
        value = float(self.image.plane("axial", z)[x, y])
        world = (self._affine @ np.array([x, y, z, 1.0]))[:3]
        label = int(masks["axial"][x, y]) if "axial" in masks else None
        self.readout_box.value = readout_html(self.position, world, value, label, self.mask_name)
