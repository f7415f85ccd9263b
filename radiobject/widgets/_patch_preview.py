"""``PatchPreview``: the patches a loader or dataset draws, with masks, and where they land."""

from __future__ import annotations

import contextlib
import html
from collections.abc import Iterator, Mapping
from typing import Any

import ipywidgets as w
import numpy as np
import traitlets as t
from torch.utils.data import DataLoader

from radiobject import ConfigurationError, VolumeCollection
from radiobject.ml import VolumeCollectionDataset

from ._patches import (
    Patch,
    coverage,
    patch_card,
    patches_from,
    summarize,
    volume_view,
)
from ._png import encode_png, show_png
from ._slices import SliceCache, error_html

__all__ = ["PatchPreview"]

_BOXES, _HEAT = "boxes (this draw)", "coverage (all draws)"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _check_source(source: Any) -> None:
    """A loader or a map-style dataset, else a ``ConfigurationError`` that says what to pass."""
    if isinstance(source, (DataLoader, VolumeCollectionDataset)):
        return
    items = [source] if isinstance(source, VolumeCollection) else source
    if isinstance(items, (list, tuple)) and items and isinstance(items[0], VolumeCollection):
        raise ConfigurationError(
            "PatchPreview shows the patches a loader or dataset draws; make one from the "
            "collections first, e.g. PatchPreview(create_segmentation_dataloader(radi.T1w, "
            "radi.seg, patch_size=64))"
        )
    if not (hasattr(source, "__getitem__") and hasattr(source, "__len__")):
        raise ConfigurationError(
            "PatchPreview takes a DataLoader (e.g. from create_segmentation_dataloader) or a "
            f"map-style dataset of dict samples; got {type(source).__name__} {source!r:.80}"
        )


class PatchPreview(w.VBox):
    """Draw patches from a DataLoader or dataset and show them with their masks.

    Each patch shows its mid-slices (axial | coronal | sagittal) with the mask overlay, its
    obs_id, corner and foreground fraction. A slab (2.5D, ``slab=k``) shows its ``k`` planes
    side by side, the centre plane framed with its mask; the location view outlines the
    slab on the axial planes it covers. Below, an axial slice of the full volume shows
    where patches land: outlines of this draw's patches, or a coverage map over all draws,
    and the share of patches touching the mask (compare ``foreground_sampling`` on and off).

    Args:
        source: a DataLoader (what any ``create_*_dataloader`` returns) or a dataset
            (e.g. ``SegmentationDataset``) yielding dict samples; anything else, such as a
            collection, is a ``ConfigurationError`` saying to make a loader first.
        n: patches per draw (batches are drawn until there are ``n``).
        channel: the image channel shown.
        label_colors: label -> RGB colours of the mask overlay.
        seed: draw order for datasets.

    Python API: :meth:`resample`, :meth:`draw_many`, :attr:`patches` (this draw),
    :attr:`history` (all draws), :attr:`stats`, :meth:`location_png`, trait ``error``.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), progress=False)
    >>> from radiobject.ml import create_segmentation_dataloader
    >>> from radiobject.widgets import PatchPreview
    >>> loader = create_segmentation_dataloader(radi.T1w, radi.seg, batch_size=2,
    ...                                         patch_size=(8, 8, 8), patches_per_volume=2)
    >>> preview = PatchPreview(loader, n=4)  # display(preview) in a notebook
    >>> len(preview.patches), preview.stats["draw"]["patches"]
    (4, 4)
    >>> patches = preview.resample()  # a new draw, also shown
    >>> len(patches), preview.draws, len(preview.history), preview.stats["all"]["patches"]
    (4, 2, 8, 8)
    """

    draws = t.Int(0)
    error = t.Unicode("")
    opacity = t.Float(0.4)

    def __init__(
        self,
        source: DataLoader[Any] | Any,
        n: int = 8,
        *,
        channel: int = 0,
        label_colors: Mapping[int, tuple[int, int, int]] | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_source(source)
        self.source = source
        self.n = int(n)
        self.channel = channel
        self.label_colors = dict(label_colors or {})
        self.dataset = source.dataset if isinstance(source, DataLoader) else source
        self.patches: list[Patch] = []
        self.history: list[Patch] = []
        self._rng = np.random.default_rng(seed)
        self._iter: Iterator[Any] | None = None
        self._slices: dict[str, SliceCache] = {}
        self._build()
        self.add_class("radiobject-patch-preview")
        self.resample()

    def _build(self) -> None:
        self.resample_button = w.Button(description="resample", icon="refresh")
        self.more_button = w.Button(description="draw 10 more", tooltip="for the statistics")
        self.opacity_slider = w.FloatSlider(
            value=self.opacity, min=0, max=1, step=0.05, description="opacity"
        )
        self.error_box = w.HTML()
        self.stats_box = w.HTML()
        self.cards = w.Box(layout=w.Layout(display="flex", flex_flow="row wrap"))
        self.volume_picker = w.Dropdown(description="volume", options=[])
        self.view_mode = w.ToggleButtons(options=[_BOXES, _HEAT], value=_BOXES)
        self.z_slider = w.IntSlider(description="z", min=0, max=0)
        self.location = w.Image(format="png")
        self.location_title = w.HTML()
        self.children = [
            w.HBox([self.resample_button, self.more_button, self.opacity_slider]),
            self.error_box,
            self.stats_box,
            self.cards,
            w.HBox([self.volume_picker, self.view_mode]),
            self.z_slider,
            self.location_title,
            self.location,
        ]
        t.link((self, "opacity"), (self.opacity_slider, "value"))
        self.resample_button.on_click(lambda _: self.resample())
        self.more_button.on_click(lambda _: self.draw_many(10))
        self.volume_picker.observe(self._volume_picked, "value")
        for control in (self.view_mode, self.z_slider):
            control.observe(lambda _: self._show_location(), "value")

    @t.observe("opacity")
    def _opacity_changed(self, change: dict[str, Any]) -> None:
        self._show_cards()
        self._show_location()

    # -- drawing --------------------------------------------------------------------------
    def _draw(self) -> list[Patch]:
        if isinstance(self.source, DataLoader):
            out: list[Patch] = []
            fresh = False
            while len(out) < self.n:
                if self._iter is None:
                    self._iter, fresh = iter(self.source), True
                try:
                    batch = next(self._iter)
                except StopIteration:
                    self._iter = None
                    if fresh:  # a new epoch that yields nothing
                        raise ValueError("the loader yields no batches") from None
                    continue
                fresh = False
                out.extend(patches_from(batch, batched=True, channel=self.channel, slab=self.slab))
            return out[: self.n]
        size = len(self.dataset)  # type: ignore[arg-type]  # map-style datasets have a length
        if size == 0:
            raise ValueError("the dataset is empty")
        picks = self._rng.choice(size, size=min(self.n, size), replace=size < self.n)
        out = []
        for i in picks:
            key = (self.draws, int(i)) if isinstance(self.dataset, VolumeCollectionDataset) else i
            out.extend(
                patches_from(self.dataset[key], batched=False, channel=self.channel, slab=self.slab)
            )
        return out

    @property
    def slab(self) -> tuple[int, int] | None:
        """``(k, axis)`` when the source draws slabs of ``k`` planes across ``axis``, else None."""
        config = getattr(self.dataset, "config", None)
        axis = getattr(config, "slab_axis", None)
        if axis is None:
            return None
        return int(config.slab), int(axis)  # type: ignore[union-attr]  # a slab config

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
            self.error = ""
        except Exception as e:  # shown in the widget, which stays usable
            self.error = f"{type(e).__name__}: {e}"
            self._iter = None  # a loader that raised starts a fresh epoch next time
        self.error_box.value = error_html([self.error] if self.error else [])

    def resample(self) -> list[Patch]:
        """Draw the next patches and show them."""
        with self._guard():
            self.patches = self._draw()
            self.history.extend(self.patches)
            self.draws += 1
        self._refresh()
        return self.patches

    def draw_many(self, k: int) -> dict[str, Any]:
        """Draw ``k`` more times (for the statistics and coverage map); show the last draw."""
        with self._guard():
            for _ in range(k):
                self.patches = self._draw()
                self.history.extend(self.patches)
                self.draws += 1
        self._refresh()
        return self.stats

    @property
    def stats(self) -> dict[str, Any]:
        """Counts of this draw (``"draw"``) and all draws (``"all"``): patches touching masks."""
        return {"draw": summarize(self.patches), "all": summarize(self.history)}

    # -- display --------------------------------------------------------------------------
    def _refresh(self) -> None:
        self._show_cards()
        self._show_stats()
        seen = list(dict.fromkeys(p.obs_id for p in self.history))
        current = self.patches[0].obs_id if self.patches else None
        self.volume_picker.options = seen
        if current is not None:
            self.volume_picker.value = current
        self._volume_picked()

    def _show_cards(self) -> None:
        cards = []
        for p in self.patches:
            png = encode_png(patch_card(p, self.opacity, self.label_colors))
            where = "?" if p.start is None else ", ".join(str(s) for s in p.start)
            fg = "" if p.mask is None else f"<br>fg {_pct(p.foreground_fraction)}"
            mark = " ●" if p.touches_mask else ""
            what = "size"
            if p.slab_axis is not None:
                k = p.size[p.slab_axis]
                what = f"slab of {k} planes along {'xyz'[p.slab_axis]}, box"
                fg = "" if p.mask is None else f"<br>centre-plane fg {_pct(p.foreground_fraction)}"
            caption = (
                f"<div style='font-size:11px;line-height:1.2'><b>{html.escape(p.obs_id)}</b>"
                f"{mark}<br>at ({where}) {what} {'x'.join(map(str, p.size))}{fg}</div>"
            )
            image = w.Image(format="png")
            show_png(image, png)
            cards.append(w.VBox([image, w.HTML(caption)], layout=w.Layout(margin="0 8px 8px 0")))
        self.cards.children = cards

    def _show_stats(self) -> None:
        s = self.stats
        fg = getattr(self.dataset, "foreground_sampling", None)
        mode = "" if fg is None else f" · foreground_sampling={'on' if fg else 'off'}"
        if fg:
            mode += f" (p={getattr(self.dataset, 'foreground_probability', '?')})"
        lines = [
            f"<b>draw {self.draws}</b>: {s['draw']['touching']}/{s['draw']['with_mask']} patches "
            f"touch the mask ({_pct(s['draw']['touching_fraction'])}), mean foreground "
            f"{_pct(s['draw']['mean_foreground'])}",
            f"<b>all {s['all']['patches']} patches</b>: {_pct(s['all']['touching_fraction'])} "
            f"touch the mask, mean foreground {_pct(s['all']['mean_foreground'])}{mode}",
        ]
        self.stats_box.value = "<br>".join(lines)

    def _volume_picked(self, change: Any = None) -> None:
        obs_id = self.volume_picker.value
        mine = [p for p in self.patches if p.obs_id == obs_id and p.start is not None]
        with contextlib.suppress(Exception):
            cache = self._image_slices(obs_id)
            self.z_slider.max = cache.shape[2] - 1
            start = mine[0].start if mine else None
            if start is not None and len(start) >= 3:
                self.z_slider.value = start[2] + mine[0].size[2] // 2
        self._show_location()

    def _volume(self, obs_id: str, mask: bool) -> SliceCache | None:
        key = ("mask:" if mask else "image:") + obs_id
        if key not in self._slices:
            collections = getattr(self.dataset, "collections", None)
            if not collections:
                return None
            image: VolumeCollection = collections[0]
            if not mask:
                self._slices[key] = SliceCache(image.volume(obs_id))
            else:
                masks: VolumeCollection | None = getattr(self.dataset, "mask", None)
                if masks is None:
                    return None
                subject = str(image.row(obs_id)["obs_subject_id"])
                match = [
                    o
                    for o, s in zip(masks.obs_ids, masks.obs_subject_ids, strict=True)
                    if s == subject
                ]
                # mypy is silenced on the next line: None caches 'no mask for this volume'
                self._slices[key] = SliceCache(masks.volume(match[0])) if match else None  # type: ignore[assignment]
        return self._slices[key]

    def _image_slices(self, obs_id: str) -> SliceCache:
        cache = self._volume(obs_id, mask=False)
        if cache is None:
            raise LookupError("the dataset has no 'collections' to locate patches in")
        return cache

    def location_png(self) -> bytes | None:
        """The location view as PNG (``None`` when it cannot be drawn)."""
        obs_id = self.volume_picker.value
        if obs_id is None:
            return None
        cache = self._image_slices(obs_id)
        z = min(self.z_slider.value, cache.shape[2] - 1)
        plane = cache.plane("axial", z)
        mask_cache = self._volume(obs_id, mask=True)
        mask = mask_cache.plane("axial", z) if mask_cache is not None else None
        if self.view_mode.value == _HEAT:
            mine = [p for p in self.history if p.obs_id == obs_id]
            heat = coverage(plane.shape[:2], mine)
            rgb = volume_view(plane, mask, [], heat, self.opacity, self.label_colors)
        else:
            mine = [
                p
                for p in self.patches
                if p.obs_id == obs_id
                and p.start is not None
                and len(p.start) >= 3
                and p.start[2] <= z < p.start[2] + (p.size[2] if len(p.size) > 2 else 1)
            ]
            rgb = volume_view(plane, mask, mine, None, self.opacity, self.label_colors)
        return encode_png(rgb)

    def _show_location(self) -> None:
        obs_id = self.volume_picker.value
        try:
            png = self.location_png()
        except Exception as e:  # the patches are still shown; say why there is no map
            self.location_title.value = f"<i>no location view: {html.escape(str(e))}</i>"
            return
        if png is None:
            return
        show_png(self.location, png)
        n = sum(p.obs_id == obs_id for p in self.history)
        self.location_title.value = (
            f"<b>{html.escape(str(obs_id))}</b> axial z={self.z_slider.value}: "
            f"{self.view_mode.value}; {n} patches from this volume so far"
        )
