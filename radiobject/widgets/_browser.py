"""``CollectionBrowser``: pick a collection and subject, scrub three planes, overlay a mask."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ipywidgets as w
import traitlets as t

from radiobject import CoarseLevel, ConfigurationError, RadiObject, ShapeError, VolumeCollection

from ._overlay import OverlayPlanes, map_position, same_grid
from ._png import encode_png, show_png
from ._render import auto_window, display_scale, render_slice
from ._slices import PLANES, SliceCache, error_html, plane_axis, row_html
from ._viewer import BLANK, MaskPlanes, Quiet, SliceViewer

__all__ = ["CollectionBrowser"]

THUMBNAIL = 96  # pixels, the larger side of a thumbnail


class _Source:
    """What a browser browses: a RadiObject (or view), or a lone collection."""

    def __init__(self, obj: Any, mask: VolumeCollection | None) -> None:
        self._extra: dict[str, VolumeCollection] = {}
        self.radi: RadiObject | None = None
        if isinstance(obj, RadiObject):
            self.radi = obj
            self.names = obj.collection_names
            self.masks = [n for n in self.names if obj.collection(n).is_mask]
        elif isinstance(obj, VolumeCollection):
            self.names = [obj.name]
            self._extra[obj.name] = obj
            self.masks = []
            if mask is not None:
                self._extra[mask.name] = mask
                self.masks = [mask.name]
        else:
            raise TypeError(
                "CollectionBrowser takes a RadiObject or a VolumeCollection (or a view), "
                f"got {type(obj).__name__}"
            )

    def collection(self, name: str) -> VolumeCollection:
        """The collection ``name``: one object per name, which keeps what it has learnt.

        E.g. that its coarse levels cannot be stored: the browser warns about it once.
        """
        if name not in self._extra:
            assert self.radi is not None
            self._extra[name] = self.radi.collection(name)
        return self._extra[name]

    def subject_row(self, subject: str) -> Any:
        if self.radi is None:
            return None
        meta = self.radi.obs_meta
        return meta[meta["obs_subject_id"] == subject]


def volumes_by_subject(coll: VolumeCollection) -> dict[str, str]:
    """Subject id -> its first volume in ``coll`` (in collection order)."""
    out: dict[str, str] = {}
    for obs_id, sid in zip(coll.obs_ids, coll.obs_subject_ids, strict=True):
        out.setdefault(str(sid), str(obs_id))
    return out


class CollectionBrowser(Quiet, w.VBox):
    """Browse a RadiObject: collection and subject pickers, three planes, window, mask overlay.

    Only the planes shown are read (``Volume.axial``/``coronal``/``sagittal``), each once per
    new slice index, so scrubbing stays fast on large volumes. Problems (an empty
    collection, a mask that misses the image) are shown in place and the browser stays usable.

    A subject's collections may lie on different grids (a 1 mm T1w, a 2 x 2 x 3 mm FLAIR,
    ingested with ``reference=``): a mask or an overlaid image on another grid than the image
    shown is sampled onto the shown planes through both affines (nearest label, or linear
    interpolation; only the box of it each plane touches is read), and picking another
    collection of the same subject keeps the crosshair on the same point in world
    coordinates.

    Args:
        obj: a :class:`~radiobject.RadiObject`, a :class:`~radiobject.VolumeCollection`, or a
            view of either (``radi.filter(...)``, ``radi.T1w.head(3)``).
        collection: the collection to show first (default: the first non-mask one).
        mask: a mask collection name to overlay (a VolumeCollection when ``obj`` is one);
            default: the first mask collection of a RadiObject.
        overlay: an image collection to blend over the one shown (a FLAIR over a T1w), on
            its own grid or the same one; default: none.
        label_colors: label -> RGB colours for the overlay (defaults: BraTS-like palette).
        n_thumbnails: subjects in the thumbnail strip.
        coarse: show each volume's coarse level at once (read in one query, or built and
            stored on its first view) and the full-resolution planes when a background
            thread has read them; the readout says which is shown. ``False``: read the
            full-resolution planes before the first image.

    Python API: traits ``collection``, ``subject``, ``mask``, ``overlay`` and ``error``; the
    plane viewer is :attr:`viewer` (traits ``position``, ``preset``, ``level``, ``width``,
    ``cmap``, ``opacity``, ``overlay_opacity``, ``crosshair``); :meth:`set_position`,
    :meth:`render`, :attr:`images`, :attr:`readout`, :attr:`obs_id`, :meth:`wait_refined`;
    :meth:`mark_slab` and :meth:`mark_box` outline where a slab (2.5D sample) or patch sits.

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), progress=False)
    >>> from radiobject.widgets import CollectionBrowser
    >>> browser = CollectionBrowser(radi)  # display(browser) in a notebook
    >>> browser.collection, browser.mask, browser.obs_id
    ('FLAIR', 'seg', 'sub-000_FLAIR')
    >>> browser.subject = "sub-001"
    >>> browser.collection = "T1w"
    >>> browser.obs_id, sorted(browser.images)  # images: PNG bytes of the three planes
    ('sub-001_T1w', ['axial', 'coronal', 'sagittal'])
    """

    collection = t.Unicode("")
    subject = t.Unicode("")
    mask = t.Unicode("")
    overlay = t.Unicode("")
    error = t.Unicode("")

    def __init__(
        self,
        obj: RadiObject | VolumeCollection,
        *,
        collection: str | None = None,
        mask: str | VolumeCollection | None = None,
        overlay: str | None = None,
        label_colors: Mapping[int, tuple[int, int, int]] | None = None,
        n_thumbnails: int = 6,
        coarse: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.coarse = coarse
        self._source = _Source(obj, mask if isinstance(mask, VolumeCollection) else None)
        self.n_thumbnails = n_thumbnails
        self._problems: dict[str, str] = {}
        self._coll: VolumeCollection | None = None
        self._by_subject: dict[str, str] = {}
        self._shown: tuple[str, SliceCache] | None = None  # subject and volume last shown
        self.viewer = SliceViewer(label_colors, report=self._report)
        self._build()
        self.add_class("radiobject-browser")
        if not self._source.names:
            self._report("collection", "nothing to browse: the RadiObject has no collections")
            return
        plain = [n for n in self._source.names if n not in self._source.masks]
        default_mask = mask.name if isinstance(mask, VolumeCollection) else mask
        if default_mask is None and self._source.masks:
            default_mask = self._source.masks[0]
        self.mask = default_mask or ""
        with self._quietly():  # shown with the first image
            self.overlay = overlay or ""
        self.collection = collection or (plain or self._source.names)[0]

    def _build(self) -> None:
        self.collection_picker = w.Dropdown(
            options=self._source.names, value=None, description="collection"
        )
        self.subject_filter = w.Text(
            placeholder="filter subjects", continuous_update=False, layout=w.Layout(width="140px")
        )
        self.subject_picker = w.Dropdown(options=[], description="subject")
        self.mask_picker = w.Dropdown(
            options=[("(none)", ""), *((m, m) for m in self._source.masks)], description="mask"
        )
        images = [n for n in self._source.names if n not in self._source.masks]
        self.overlay_picker = w.Dropdown(
            options=[("(none)", ""), *((n, n) for n in images)], description="overlay"
        )
        self.error_box = w.HTML()
        self.meta_box = w.HTML(layout=w.Layout(width="50%"))
        self.obs_box = w.HTML(layout=w.Layout(width="50%"))
        self.thumbnails = w.HBox(layout=w.Layout(overflow="auto", width="100%"))
        self.children = [
            w.HBox([self.collection_picker, self.subject_filter, self.subject_picker]),
            w.HBox([self.mask_picker, self.overlay_picker]),
            self.error_box,
            self.viewer,
            w.HBox([self.meta_box, self.obs_box]),
            self.thumbnails,
        ]
        for name, control in (
            ("collection", self.collection_picker),
            ("subject", self.subject_picker),
            ("mask", self.mask_picker),
            ("overlay", self.overlay_picker),
        ):
            control.observe(self._from_control(name), "value")
        self.subject_filter.observe(lambda _: self._fill_subjects(), "value")

    def _from_control(self, name: str) -> Any:
        def handler(change: dict[str, Any]) -> None:
            if not self._quiet and change["new"] is not None:
                setattr(self, name, change["new"])

        return handler

    # -- problems, shown in place ---------------------------------------------------------
    def _report(self, key: str, message: str | None) -> None:
        if message:
            self._problems[key] = message
        else:
            self._problems.pop(key, None)
        self.error = "\n".join(self._problems.values())
        self.error_box.value = error_html(list(self._problems.values()))

    @contextlib.contextmanager
    def _guard(self, key: str) -> Iterator[None]:
        try:
            yield
            self._report(key, None)
        except Exception as e:  # shown in the widget, which stays usable
            self._report(key, f"{type(e).__name__}: {e}")

    # -- traits ---------------------------------------------------------------------------
    @t.validate("collection")
    def _check_collection(self, proposal: dict[str, Any]) -> str:
        if proposal["value"] not in self._source.names:
            raise t.TraitError(
                f"no collection {proposal['value']!r}; collections are {self._source.names}"
            )
        return str(proposal["value"])

    @t.validate("subject")
    def _check_subject(self, proposal: dict[str, Any]) -> str:
        if proposal["value"] not in self._by_subject:
            raise t.TraitError(
                f"no subject {proposal['value']!r} in collection {self.collection!r}"
            )
        return str(proposal["value"])

    @t.validate("mask")
    def _check_mask(self, proposal: dict[str, Any]) -> str:
        if proposal["value"] and proposal["value"] not in self._source.masks:
            raise t.TraitError(
                f"no mask collection {proposal['value']!r}; masks are {self._source.masks}"
            )
        return str(proposal["value"])

    @t.validate("overlay")
    def _check_overlay(self, proposal: dict[str, Any]) -> str:
        name = proposal["value"]
        if name and (name not in self._source.names or name in self._source.masks):
            images = [n for n in self._source.names if n not in self._source.masks]
            raise t.TraitError(f"no image collection {name!r} to overlay; images are {images}")
        return str(name)

    @t.observe("collection")
    def _collection_changed(self, change: dict[str, Any]) -> None:
        with self._quietly():
            self.collection_picker.value = change["new"]
        self._clear()
        self._coll, self._by_subject = None, {}
        with self._guard("collection"):
            self._coll = self._source.collection(change["new"])
            self._by_subject = volumes_by_subject(self._coll)
            if not self._by_subject:
                raise ValueError(f"collection {change['new']!r} has no volumes to show")
            if self._coll.is_mask and self.viewer.preset != "custom":
                self.viewer.preset = "min-max"
        matching = self._fill_subjects(thumbnails=False)
        if self._by_subject:
            if self.subject in self._by_subject:
                self._load()
            else:
                self.subject = next(iter(self._by_subject))
        self._build_thumbnails(matching)  # after the image: it shows first

    @t.observe("subject")
    def _subject_changed(self, change: dict[str, Any]) -> None:
        with self._quietly():
            if change["new"] not in self.subject_picker.options:
                self.subject_picker.options = [change["new"], *self.subject_picker.options]
            self.subject_picker.value = change["new"]
        self._load()

    @t.observe("mask")
    def _mask_changed(self, change: dict[str, Any]) -> None:
        with self._quietly():
            self.mask_picker.value = change["new"]
        if self.viewer.image is not None:
            mask, coarse_mask = self._mask_for(self.viewer.image)
            self.viewer.set_mask(mask, change["new"], coarse_mask)

    @t.observe("overlay")
    def _overlay_changed(self, change: dict[str, Any]) -> None:
        with self._quietly():
            self.overlay_picker.value = change["new"]
        if self.viewer.image is not None and not self._quiet:
            self.viewer.set_overlay(self._overlay_for(self.viewer.image), change["new"])

    # -- loading --------------------------------------------------------------------------
    def _fill_subjects(self, thumbnails: bool = True) -> list[str]:
        needle = (self.subject_filter.value or "").lower()
        subjects = [s for s in self._by_subject if needle in s.lower()]
        matching = list(subjects)
        if self.subject in self._by_subject and self.subject not in subjects:
            subjects.insert(0, self.subject)  # the one shown stays pickable
        with self._quietly():
            self.subject_picker.options = subjects
            self.subject_picker.value = self.subject if self.subject in subjects else None
        if thumbnails:
            self._build_thumbnails(matching)
        return matching

    def _clear(self) -> None:
        self.viewer.clear()
        self.meta_box.value = self.obs_box.value = ""

    def _load(self) -> None:
        image = coarse = None
        with self._guard("volume"):
            assert self._coll is not None
            obs_id = self._by_subject[self.subject]
            image = SliceCache(self._coll.volume(obs_id))
            coarse = self._coarse_of(self._coll, obs_id)
            self.meta_box.value = row_html(
                f"obs_meta: {self.subject}", self._source.subject_row(self.subject)
            )
            row = self._coll.row(obs_id).drop(labels=["affine"], errors="ignore")
            self.obs_box.value = row_html(f"obs: {obs_id}", row)  # world mm: in the readout
        if image is None:
            self._clear()
            return
        position = self._same_point(image)
        self._shown = (self.subject, image)
        mask, coarse_mask = self._mask_for(image, coarse is not None)
        overlay = self._overlay_for(image)
        self.viewer.show(
            image, mask, self.mask, coarse, coarse_mask, position, overlay, self.overlay
        )

    def _same_point(self, image: SliceCache) -> tuple[int, int, int] | None:
        """The crosshair's world point in ``image``'s voxels, when only the grid changes.

        ``None`` (the viewer keeps the voxel or centres) for another subject, for volumes on
        one grid, or when the point is outside ``image``.
        """
        if self._shown is None or self._shown[0] != self.subject:
            return None
        old = self._shown[1]
        old_affine, affine = old.volume.affine, image.volume.affine
        if same_grid(old.shape, old_affine, image.shape, affine):
            return None
        return map_position(self.viewer.position, old_affine, affine, image.shape)

    def _coarse_of(self, coll: VolumeCollection, obs_id: str) -> CoarseLevel | None:
        """The coarse level of ``obs_id`` when the browser shows them (else ``None``)."""
        return coll.coarse_level(obs_id) if self.coarse else None

    def _mask_for(
        self, image: SliceCache, coarse: bool | None = None
    ) -> tuple[MaskPlanes | None, CoarseLevel | OverlayPlanes | None]:
        """The mask of the subject shown, and its coarse level if ``coarse``.

        ``coarse`` defaults to whether the viewer is showing a coarse level. A mask on
        another grid comes sampled onto the image's (its coarse level too).
        """
        self._report("mask", None)
        if not self.mask:
            return None, None
        if coarse is None:
            coarse = self.viewer.coarse is not None and not self.viewer.refined
        with self._guard("mask"):
            coll = self._source.collection(self.mask)
            obs_id = volumes_by_subject(coll).get(self.subject)
            if obs_id is None:
                raise LookupError(f"mask {self.mask!r} has no volume for subject {self.subject!r}")
            volume = coll.volume(obs_id)
            level = self._coarse_of(coll, obs_id) if coarse else None
            affine = image.volume.affine
            if same_grid(image.shape, affine, volume.shape, volume.affine):
                return SliceCache(volume), level
            overlay = OverlayPlanes(volume, image.shape, affine)
            if not overlay.overlaps():
                raise ValueError(
                    f"mask {self.mask!r} volume {obs_id!r} does not overlap image "
                    f"{self.obs_id!r} in world coordinates (their affines place them apart); "
                    "overlay is off"
                )
            if level is None:
                return overlay, None
            return overlay, OverlayPlanes(level, image.shape, affine, source_affine=volume.affine)
        return None, None

    def _overlay_for(self, image: SliceCache) -> MaskPlanes | None:
        """The overlaid image of the subject shown, on ``image``'s planes (linear if resampled)."""
        self._report("overlay", None)
        if not self.overlay:
            return None
        with self._guard("overlay"):
            coll = self._source.collection(self.overlay)
            obs_id = volumes_by_subject(coll).get(self.subject)
            if obs_id is None:
                raise LookupError(
                    f"overlay {self.overlay!r} has no volume for subject {self.subject!r}"
                )
            volume = coll.volume(obs_id)
            affine = image.volume.affine
            if same_grid(image.shape, affine, volume.shape, volume.affine):
                return SliceCache(volume, t=image.t)
            planes = OverlayPlanes(volume, image.shape, affine, linear=True, t=image.t)
            if not planes.overlaps():
                raise ValueError(
                    f"overlay {self.overlay!r} volume {obs_id!r} does not overlap image "
                    f"{self.obs_id!r} in world coordinates; overlay is off"
                )
            return planes
        return None

    def _build_thumbnails(self, subjects: list[str]) -> None:
        cards = []
        for sid in subjects[: self.n_thumbnails]:
            button = w.Button(description=sid, layout=w.Layout(width=f"{THUMBNAIL}px"))
            button.on_click(lambda _, s=sid: setattr(self, "subject", s))
            image = w.Image(format="png")
            show_png(image, BLANK)
            with contextlib.suppress(Exception):  # a thumbnail never breaks the browser
                assert self._coll is not None
                data = self._thumbnail_plane(self._by_subject[sid])
                step = -(-max(data.shape) // THUMBNAIL)  # a large plane: every step-th voxel
                data = data[::step, ::step]
                scale = display_scale(data.shape, target=THUMBNAIL)
                show_png(image, encode_png(render_slice(data, auto_window(data), scale=scale)))
            cards.append(w.VBox([image, button]))
        self.thumbnails.children = cards

    def _thumbnail_plane(self, obs_id: str) -> Any:
        """The middle axial plane of ``obs_id``: the viewer's when it shows it, else read.

        From the coarse level when its plane still fills a thumbnail (``THUMBNAIL`` pixels):
        a large volume's plane costs tiles to decode, a small one's is read whole.
        """
        shown, level = self.viewer.image, self.viewer.coarse
        if shown is not None and obs_id == self.obs_id:
            z = shown.shape[2] // 2
            data = shown.cached("axial", z)
            if data is None and level is not None and max(level.voxels.shape[:2]) >= THUMBNAIL:
                data = level.voxels[:, :, level.index(z, 2)]
            if data is not None:
                return data
        assert self._coll is not None
        volume = self._coll.volume(obs_id)
        if self.coarse and max(self._coll.volume_shape(obs_id)[:2]) >= 4 * THUMBNAIL:
            small = self._coll.coarse_volume(obs_id)
            if small is not None and max(small.shape[:2]) >= THUMBNAIL:
                volume = small
        vol = SliceCache(volume, warm=False)
        return vol.plane("axial", vol.shape[2] // 2)

    # -- Python API -----------------------------------------------------------------------
    @property
    def obs_id(self) -> str | None:
        """The obs_id of the volume shown."""
        return self._by_subject.get(self.subject)

    @property
    def position(self) -> tuple[int, int, int]:
        """The crosshair voxel ``(x, y, z)``."""
        return self.viewer.position

    def set_position(self, x: int, y: int, z: int) -> None:
        """Move the crosshair to voxel ``(x, y, z)`` (clamped to the volume)."""
        self.viewer.position = (int(x), int(y), int(z))

    @property
    def images(self) -> dict[str, bytes]:
        """The PNG bytes shown for each plane (``axial``, ``coronal``, ``sagittal``)."""
        return self.viewer.images

    @property
    def readout(self) -> str:
        """The coordinate and intensity readout (HTML)."""
        return self.viewer.readout

    def mark_slab(self, start: int, k: int, axis: str = "axial") -> tuple[tuple[int, int], ...]:
        """Mark the ``k`` planes from ``start`` along ``axis`` (a slab) and go to its centre.

        The slab's planes are outlined on the view that shows them and as a band on the two
        others; the crosshair moves to the centre plane (plane ``k // 2`` of the slab, whose
        mask a 2.5D segmentation sample holds). Returns the marked voxel box. A slab past the
        volume's edge is a ``ShapeError``; a bad ``axis`` a ``ConfigurationError``.
        """
        if self.viewer.image is None:
            raise ShapeError("no volume is shown: pick a collection and a subject first")
        shape = tuple(self.viewer.image.shape[:3])
        if str(axis).lower() not in PLANES:
            raise ConfigurationError(
                f"mark_slab: axis must be 'axial', 'coronal' or 'sagittal'; got {axis!r}"
            )
        a = plane_axis(str(axis).lower())
        if not (k >= 1 and start >= 0 and start + k <= shape[a]):
            raise ShapeError(
                f"a slab of {k} {axis} planes from {start} does not fit in {self.obs_id!r} of "
                f"shape {shape} ({shape[a]} planes)"
            )
        box = tuple((start, start + k) if i == a else (0, n) for i, n in enumerate(shape))
        self.mark_box(box)
        return box

    def mark_box(self, box: Sequence[tuple[int, int]] | None) -> None:
        """Outline a voxel box (e.g. a sample's ``plan(key).box``) and go to its centre.

        ``None`` removes the outline.
        """
        if box is not None:
            self.set_position(*[(lo + (hi - lo) // 2) for lo, hi in box[:3]])
        self.viewer.mark(box)

    def render(self) -> dict[str, bytes]:
        """Redraw the planes; return their PNG bytes."""
        return self.viewer.render()

    def wait_refined(self, timeout: float | None = None) -> bool:
        """Wait until the full-resolution planes are shown (see ``coarse``); whether they are."""
        return self.viewer.wait_refined(timeout)
