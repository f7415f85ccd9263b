"""The browser's first image from the coarse level, refined to full resolution by a thread.

The refining thread is held at a gate (an Event the test opens), so what is shown before
and after it runs is checked without timing: tests wait on ``wait_refined``.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

from radiobject import RadiObject, StorageError, WriteConfig, configure
from radiobject.data import make_sample_radiobject
from radiobject.storage import _collection_derived
from radiobject.widgets import CollectionBrowser
from radiobject.widgets._png import decode_png
from radiobject.widgets._render import Window, display_scale, render_slice
from radiobject.widgets._slices import SliceCache, coarse_plane, plane_spacing

LEVEL = "level 1 (4x)"


@pytest.fixture
def gate(monkeypatch):
    """Full-resolution plane reads off the main thread wait for ``gate.set()``.

    Yields the event and the list of ``(thread, volume uri)`` of every plane the viewer
    reads (thumbnails of these small volumes read their planes too: not listed).
    """
    event, reads = threading.Event(), []
    real = SliceCache.plane

    def gated(self, plane, index):
        if self.warm:  # the viewer's, not a thumbnail's
            reads.append((threading.current_thread(), self.volume.uri))
        if threading.current_thread() is not threading.main_thread():
            assert event.wait(60), "the test never opened the gate"
        return real(self, plane, index)

    monkeypatch.setattr(SliceCache, "plane", gated)
    yield event, reads
    event.set()  # never leave the shared refining thread stuck


def full_reads_on_main_thread(reads):
    main = threading.main_thread()
    return [uri for thread, uri in reads if thread is main and "/coarse/" not in uri]


def same_window(*browsers, level=300.0, width=500.0):
    for b in browsers:
        b.viewer.level, b.viewer.width = level, width


def test_first_image_is_the_coarse_level_then_full_resolution(sample_radi, gate):
    event, reads = gate
    browser = CollectionBrowser(sample_radi)
    viewer = browser.viewer
    assert not viewer.refined
    assert viewer.shown_level == LEVEL
    assert LEVEL in browser.readout
    assert full_reads_on_main_thread(reads) == []  # the first image read no full plane

    # what is shown is the stored coarse level, drawn at the size of the real planes
    level = sample_radi.FLAIR.coarse_level("sub-000_FLAIR")
    mask_level = sample_radi.seg.coarse_level("sub-000_seg")
    np.testing.assert_array_equal(viewer.coarse.voxels, level.voxels)
    shape = viewer.image.shape
    z = browser.position[2]
    plane = coarse_plane(level, "axial", z, shape)
    assert plane.shape == shape[:2]
    scale = display_scale(plane.shape, plane_spacing("axial", viewer.image.volume.spacing))
    expected = render_slice(
        plane,
        Window(viewer.level, viewer.width),
        "gray",
        mask=coarse_plane(mask_level, "axial", z, shape),
        opacity=viewer.opacity,
        colors=viewer.label_colors,
        scale=scale,
    )
    assert (decode_png(browser.images["axial"]) == expected).all()

    event.set()
    assert browser.wait_refined(60)
    assert viewer.shown_level == "full resolution"
    assert "full resolution" in browser.readout
    reference = CollectionBrowser(sample_radi, coarse=False)
    assert reference.viewer.shown_level == "full resolution"
    same_window(browser, reference)
    assert browser.images == reference.images


def test_a_newer_request_drops_an_older_refine(sample_radi, gate):
    event, _ = gate
    browser = CollectionBrowser(sample_radi)
    first = browser.viewer.refining
    browser.set_position(1, 2, 3)  # drawn from the coarse level at once
    second = browser.viewer.refining
    browser.set_position(20, 5, 9)
    third = browser.viewer.refining
    assert len({id(first), id(second), id(third)}) == 3
    assert second.cancelled()  # still queued behind the first: dropped
    assert browser.viewer.shown_level == LEVEL
    assert "(20, 5, 9)" in browser.readout

    event.set()
    assert browser.wait_refined(60)
    assert first.cancelled() or first.result(60) is False  # read, but not shown
    assert third.result(60) is True
    assert "(20, 5, 9)" in browser.readout
    assert "full resolution" in browser.readout
    reference = CollectionBrowser(sample_radi, coarse=False)
    reference.set_position(20, 5, 9)
    same_window(browser, reference)
    assert browser.images == reference.images


def test_scrubbing_after_the_refine_reads_full_resolution_planes(sample_radi):
    browser = CollectionBrowser(sample_radi)
    assert browser.wait_refined(60)
    reference = CollectionBrowser(sample_radi, coarse=False)
    for pos in [(3, 4, 5), (3, 4, 6), (30, 1, 22)]:
        browser.set_position(*pos)
        reference.set_position(*pos)
        same_window(browser, reference)
        assert browser.images == reference.images
        assert browser.viewer.shown_level == "full resolution"


def test_switching_subject_shows_its_coarse_level_first(sample_radi, gate):
    event, reads = gate
    browser = CollectionBrowser(sample_radi)
    event.set()
    assert browser.wait_refined(60)
    event.clear()
    reads.clear()
    browser.subject = "sub-002"
    assert browser.viewer.shown_level == LEVEL
    assert full_reads_on_main_thread(reads) == []
    np.testing.assert_array_equal(
        browser.viewer.coarse.voxels, sample_radi.FLAIR.coarse_level("sub-002_FLAIR").voxels
    )
    event.set()
    assert browser.wait_refined(60)
    assert browser.obs_id == "sub-002_FLAIR"
    assert "full resolution" in browser.readout


def test_levels_a_store_refuses_are_shown_unsaved_with_one_warning_each(
    tmp_path, monkeypatch, gate
):
    event, _ = gate
    with configure(write=WriteConfig(coarse=0)):  # as written before radiobject wrote levels
        radi = make_sample_radiobject(
            str(tmp_path / "r"), n_subjects=2, shape=(32, 32, 24), seed=1, progress=False
        )

    def refuse(uri, *args):
        raise StorageError(f"cannot write {uri!r}: the store is read-only")

    monkeypatch.setattr(_collection_derived, "write_coarse", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every warning counted, repeats included
        browser = CollectionBrowser(RadiObject(radi.uri))
        assert browser.viewer.shown_level == LEVEL
        assert not browser.viewer.coarse.saved
        event.set()
        assert browser.wait_refined(60)
        browser.subject = "sub-001"
        assert browser.wait_refined(60)
    messages = [str(w.message) for w in caught]
    assert all("cannot store the coarse level" in m for m in messages)
    where = sorted(m.split(" in '")[1].split("'")[0] for m in messages)
    assert where == [f"{radi.uri}/collections/FLAIR", f"{radi.uri}/collections/seg"]
    assert radi.FLAIR.coarse_volume("sub-000_FLAIR") is None  # nothing half-written


def test_the_coarse_level_of_an_older_volume_is_built_and_stored_on_first_view(tmp_path, gate):
    event, _ = gate
    with configure(write=WriteConfig(coarse=0)):
        radi = make_sample_radiobject(
            str(tmp_path / "r"), n_subjects=1, shape=(32, 32, 24), seed=2, progress=False
        )
    assert radi.FLAIR.coarse_volume("sub-000_FLAIR") is None
    browser = CollectionBrowser(RadiObject(radi.uri))
    assert browser.viewer.shown_level == LEVEL
    assert browser.viewer.coarse.saved
    event.set()
    assert browser.wait_refined(60)
    assert RadiObject(radi.uri).FLAIR.coarse_volume("sub-000_FLAIR") is not None
    assert RadiObject(radi.uri).seg.coarse_volume("sub-000_seg") is not None


def test_the_background_reads_run_in_the_callers_settings(sample_radi, monkeypatch):
    """The refine and slab-warming threads read under the settings() block that queued them."""
    from radiobject import get_config, settings
    from radiobject.widgets import _viewer

    seen: list[tuple[str, str, int]] = []
    real_planes, real_slab = _viewer.read_planes, SliceCache._read_slab

    def planes(*args):
        seen.append(("refine", threading.current_thread().name, get_config().read.cache_mb))
        return real_planes(*args)

    def slab(self, bounds):
        seen.append(("slabs", threading.current_thread().name, get_config().read.cache_mb))
        return real_slab(self, bounds)

    monkeypatch.setattr(_viewer, "read_planes", planes)
    monkeypatch.setattr(SliceCache, "_read_slab", slab)
    default = get_config().read.cache_mb
    with settings(read={"cache_mb": default + 7}):
        browser = CollectionBrowser(sample_radi)
        assert browser.wait_refined(60)
        for future in list(browser.viewer.image._slabs.values()):
            future.result(60)
    kinds = {kind for kind, _, _ in seen}
    assert kinds == {"refine", "slabs"}
    assert all(name.startswith("radiobject-") for _, name, _ in seen)  # background threads
    assert {mb for _, _, mb in seen} == {default + 7}
