"""Pure rendering and formatting helpers of radiobject.widgets, tested on arrays."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

from radiobject import ConfigurationError, Volume
from radiobject.widgets import _patches, _plots, _runs, _slices
from radiobject.widgets._png import decode_png, encode_png
from radiobject.widgets._render import (
    DEFAULT_LABEL_COLORS,
    Window,
    apply_colormap,
    apply_window,
    auto_window,
    display_scale,
    draw_crosshair,
    label_color,
    overlay_mask,
    render_slice,
    to_display,
    window_for,
)


# -- window / level ------------------------------------------------------------------------
def test_known_window_gives_exact_grey_levels():
    plane = np.array([[0.0, 25.0, 50.0, 75.0, 100.0, 150.0]]).T  # (u=6, v=1)
    rgb = render_slice(plane, Window(level=50, width=100))
    # one row (v), six columns (u); grey = round(clip((value - 0) / 100) * 255)
    assert rgb.shape == (1, 6, 3)
    assert rgb[0, :, 0].tolist() == [0, 64, 128, 191, 255, 255]
    assert (rgb[..., 0] == rgb[..., 1]).all()
    assert (rgb[..., 1] == rgb[..., 2]).all()


def test_window_bounds_and_negative_values():
    w = Window(level=-600, width=1500)  # CT lung
    assert w.bounds == (-1350.0, 150.0)
    out = apply_window(np.array([-2000.0, -1350.0, -600.0, 150.0, 3000.0]), w)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])
    assert out.dtype == np.float32


def test_auto_window_uses_percentiles_and_survives_flat_and_nan_data():
    data = np.arange(1001.0)
    w = auto_window(data, 1, 99)
    assert w.bounds == pytest.approx((10.0, 990.0))
    flat = auto_window(np.full((4, 4), 7.0))
    assert flat == Window(level=7.0, width=1.0)
    np.testing.assert_array_equal(apply_window(np.full(3, 7.0), flat), 0.5)  # mid-grey
    with_nan = auto_window(np.array([np.nan, 0.0, 10.0]), 0, 100)
    assert with_nan.bounds == pytest.approx((0.0, 10.0))
    assert auto_window(np.array([])) == Window(level=0.5, width=1.0)
    assert auto_window(np.array([np.nan, np.inf])) == Window(level=0.5, width=1.0)


def test_window_presets():
    assert window_for("CT bone") == Window(400.0, 1800.0)
    mr = window_for("min-max", np.array([3.0, 5.0, 9.0]))
    assert mr.bounds == pytest.approx((3.0, 9.0))
    with pytest.raises(ValueError, match="unknown window preset"):
        window_for("CT ghost")
    with pytest.raises(ValueError, match="pass the data"):
        window_for("MR auto (1-99%)")


# -- colour --------------------------------------------------------------------------------
def test_colormap_matches_matplotlib():
    import matplotlib

    out = apply_colormap(np.array([0.0, 0.5, 1.0]), "viridis")
    expected = np.round(matplotlib.colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255)
    assert out[0].tolist() == expected[0].tolist()
    assert out[2].tolist() == expected[255].tolist()
    assert out[1].tolist() == expected[128].tolist()
    with pytest.raises(ValueError, match="unknown colormap"):
        apply_colormap(np.zeros(2), "no-such-map")
    # grey is built without importing matplotlib: the same table
    grey = np.round(matplotlib.colormaps["gray"](np.linspace(0, 1, 256))[:, :3] * 255)
    assert apply_colormap(np.linspace(0, 1, 256), "gray").tolist() == grey.tolist()


def test_overlay_has_the_label_colour_at_mask_voxels():
    grey = np.full((2, 3, 3), 100, np.uint8)
    mask = np.array([[0, 1, 2], [3, 0, 9]])
    full = overlay_mask(grey, mask, opacity=1.0)
    assert full[0, 0].tolist() == [100, 100, 100]
    assert full[0, 1].tolist() == list(DEFAULT_LABEL_COLORS[1])
    assert full[0, 2].tolist() == list(DEFAULT_LABEL_COLORS[2])
    assert full[1, 0].tolist() == list(DEFAULT_LABEL_COLORS[3])
    assert full[1, 2].tolist() == list(label_color(9))  # the palette cycles
    half = overlay_mask(grey, mask, opacity=0.5)
    r, g, b = DEFAULT_LABEL_COLORS[1]
    assert half[0, 1].tolist() == [round(50 + r / 2), round(50 + g / 2), round(50 + b / 2)]
    custom = overlay_mask(grey, mask, opacity=1.0, colors={2: (1, 2, 3)})
    assert custom[0, 2].tolist() == [1, 2, 3]
    assert (overlay_mask(grey, mask, opacity=0.0) == grey).all()
    with pytest.raises(ValueError, match="does not match"):
        overlay_mask(grey, np.zeros((3, 2)), 0.5)


def test_display_orientation_and_overlay_on_a_plane():
    plane = np.zeros((4, 3))  # u = 4 columns, v = 3 rows
    mask = np.zeros((4, 3), np.uint8)
    mask[1, 0] = 2  # u=1, v=0: bottom row, second column
    rgb = render_slice(plane, Window(1, 2), mask=mask, opacity=1.0)
    assert rgb.shape == (3, 4, 3)
    assert rgb[2, 1].tolist() == list(DEFAULT_LABEL_COLORS[2])
    assert rgb[0, 1].tolist() == [0, 0, 0]
    assert to_display(np.arange(6).reshape(3, 2)).tolist() == [[1, 3, 5], [0, 2, 4]]


def test_crosshair_goes_through_the_middle_of_the_enlarged_voxel():
    rgb = render_slice(np.zeros((4, 4)), Window(1, 2), crosshair=(1, 2), scale=(3, 3))
    assert rgb.shape == (12, 12, 3)
    # voxel u=1 -> columns 3..5 (middle 4); v=2 -> display row 1 -> rows 3..5 (middle 4)
    cyan = [0, 255, 255]
    assert rgb[4, 0].tolist() == cyan
    assert rgb[4, 11].tolist() == cyan
    assert rgb[0, 4].tolist() == cyan
    assert rgb[11, 4].tolist() == cyan
    assert rgb[3, 3].tolist() == [0, 0, 0]
    gap = draw_crosshair(np.zeros((5, 5, 3), np.uint8), 2, 2, gap=1)
    assert gap[2, 2].tolist() == [0, 0, 0]
    assert gap[2, 0].tolist() == cyan


def test_display_scale_keeps_physical_aspect():
    assert display_scale((48, 48)) == (5, 5)
    assert display_scale((240, 240)) == (1, 1)
    rows, cols = display_scale((64, 20), spacing=(1.0, 3.0), target=256)
    assert rows == 3 * cols  # v voxels are 3 mm, u voxels 1 mm


# -- PNG -----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5, 7, 3), (5, 7), (2, 3, 4)])
def test_png_round_trip(shape):
    image = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    data = encode_png(image)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    back = decode_png(data)
    assert back.shape == shape
    assert (back == image).all()
    with pytest.raises(ValueError, match="uint8"):
        encode_png(image.astype(np.float32))


# -- slices and HTML -----------------------------------------------------------------------
def test_slice_cache_reads_each_plane_once_per_index(tmp_path):
    vol = Volume.from_numpy(str(tmp_path / "v"), np.arange(60.0).reshape(3, 4, 5))
    cache = _slices.SliceCache(vol)
    planes = cache.planes_at((1, 2, 3))
    assert planes["axial"].tolist() == vol.to_numpy()[:, :, 3].tolist()
    assert planes["coronal"].shape == (3, 5)
    assert planes["sagittal"].shape == (4, 5)
    assert cache.reads == 3
    cache.planes_at((1, 2, 4))  # only z moved: only the axial plane is read again
    assert cache.reads == 4


def test_slice_cache_reads_one_time_point_of_4d(tmp_path):
    data = np.arange(2 * 3 * 4 * 2, dtype=np.float32).reshape(2, 3, 4, 2)
    vol = Volume.from_numpy(str(tmp_path / "v4"), data)
    cache = _slices.SliceCache(vol, t=1)
    assert cache.plane("axial", 2).tolist() == data[:, :, 2, 1].tolist()


def test_html_is_escaped():
    import pandas as pd

    html = _slices.row_html("<obs>", pd.Series({"note": "<script>x</script>"}))
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "&lt;obs&gt;" in html
    assert "(none)" in _slices.row_html("meta", None)
    err = _slices.error_html(["shape <1> & <2>"])
    assert "&lt;1&gt; &amp; &lt;2&gt;" in err
    readout = _slices.readout_html((1, 2, 3), (-1.0, 0.5, 2.25), 7.0, 2, "<seg>")
    assert "(1, 2, 3)" in readout
    assert "(-1.0, 0.5, 2.2)" in readout
    assert "value 7" in readout
    assert "&lt;seg&gt; label 2" in readout


# -- patches -------------------------------------------------------------------------------
def test_batches_split_into_patches_with_foreground():
    image = torch.arange(2 * 1 * 4 * 4 * 2, dtype=torch.float32).reshape(2, 1, 4, 4, 2)
    mask = torch.zeros(2, 1, 4, 4, 2, dtype=torch.int64)
    mask[1, 0, 0, 0, :] = 3
    batch = {
        "image": image,
        "mask": mask,
        "obs_id": ["a", "b"],
        "patch_start": torch.tensor([[0, 1, 2], [3, 4, 5]]),
    }
    patches = _patches.patches_from(batch, batched=True)
    assert [p.obs_id for p in patches] == ["a", "b"]
    assert patches[1].start == (3, 4, 5)
    assert patches[1].size == (4, 4, 2)
    assert (patches[1].image == image[1, 0].numpy()).all()
    assert patches[0].touches_mask is False
    assert patches[1].touches_mask is True
    assert patches[1].foreground_fraction == pytest.approx(2 / 32)
    stats = _patches.summarize(patches)
    assert stats["touching"] == 1
    assert stats["touching_fraction"] == 0.5
    with pytest.raises(KeyError, match="'image'"):
        _patches.patches_from({"x": 1}, batched=False)


def test_patch_card_and_volume_view():
    patch = _patches.Patch(np.zeros((8, 8, 4)), np.ones((8, 8, 4), np.int64), "a", None, (2, 3, 0))
    card = _patches.patch_card(patch, opacity=1.0, target=16)
    assert card.shape[2] == 3
    assert card[0, 0].tolist() == list(DEFAULT_LABEL_COLORS[1])
    view = _patches.volume_view(np.zeros((16, 16)), None, [patch], target=16)
    # box x 2..9, y 3..10 -> display rows 16-11=5..12, columns 2..9
    assert view[5, 2].tolist() == [0, 255, 0]
    assert view[12, 9].tolist() == [0, 255, 0]
    assert view[8, 5].tolist() == [128, 128, 128]  # a flat plane shows mid-grey
    heat = _patches.coverage((16, 16), [patch, patch])
    assert heat[2, 3] == 2
    assert heat[10, 3] == 0
    hot = _patches.volume_view(np.zeros((16, 16)), None, [], heat=heat, target=16)
    assert hot[8, 5].tolist() != [128, 128, 128]
    assert hot[0, 0].tolist() == [128, 128, 128]


# -- tuner helpers -------------------------------------------------------------------------
def test_patch_size_parsing_and_settings():
    assert _runs.parse_patch_size(" 16 ") == (16, 16, 16)
    assert _runs.parse_patch_size("64x64x32") == (64, 64, 32)
    assert _runs.parse_patch_size("") is None
    for bad in ("abc", "1,2", "0"):
        with pytest.raises(ValueError, match="patch size"):
            _runs.parse_patch_size(bad)
    s = _runs.TunerSettings(cache_mb=64, patch_size=(8, 8, 4), num_workers=2)
    assert s.read_config().cache_mb == 64
    assert s.label() == "w2 b4 p8x8x4 x4 cache64"
    assert s.loader_kwargs()["patch_size"] == (8, 8, 4)
    with pytest.raises(ConfigurationError, match="concurrency"):
        s.replace(concurrency=0).read_config()


def test_plot_and_summary_render():
    rec = SimpleNamespace(
        t=0.5, samples_per_s=10.0, batch_latency_ms=2.0, hit_rate=0.5, storage_mb_per_s=1.0
    )
    empty = _plots.Trace("run 2", np.array([]), {k: np.array([]) for k, _, _ in _plots.METRICS})
    traces = [_plots.Trace.from_records("run 1", [rec, rec], live=True), empty]
    png = _plots.plot_traces(traces, width_in=8, height_in=2, dpi=50)
    assert decode_png(png).shape == (100, 400, 3)
    html = _plots.summary_html([{"run": "<1>", "samples/s": 12.345}, {"run": 2}], best=0)
    assert "&lt;1&gt;" in html
    assert "12.3" in html
    assert html.count("★") == 1
    assert "best so far" in _plots.best_html(None, None)


# -- indexed rendering, slab warming -------------------------------------------------------
def test_indexed_rendering_equals_rgb_rendering():
    from radiobject.widgets._png import encode_indexed
    from radiobject.widgets._render import render_indexed

    rng = np.random.default_rng(3)
    outcomes = set()
    for trial in range(60):
        shape = tuple(int(n) for n in rng.integers(2, 40, 2))
        plane = rng.normal(0, 100, shape)
        mask = rng.integers(0, 4, shape) * (rng.random(shape) < 0.3)
        if trial % 3 == 0:
            mask = mask.astype(np.float32)
        if trial % 7 == 0:
            mask = None
        window = Window(rng.normal(0, 50), abs(rng.normal(100, 50)) + 1)
        opacity = float(rng.choice([0.0, 0.4, 1.0, 0.77]))
        cmap = str(rng.choice(["gray", "viridis", "hot"]))
        scale = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        style = {"mask": mask, "opacity": opacity, "scale": scale}
        expected = render_slice(plane, window, cmap, **style)
        indexed = render_indexed(plane, window, cmap, **style)
        outcomes.add(indexed is None)
        if indexed is None:  # more than 256 colours: the caller renders RGB
            assert len(np.unique(expected.reshape(-1, 3), axis=0)) > 256
            continue
        index, palette = indexed
        assert index.dtype == np.uint8
        assert len(palette) <= 256
        assert (palette[index] == expected).all(), trial
        assert (decode_png(encode_indexed(index, palette)) == expected).all()
    assert outcomes == {True, False}  # both paths were taken
    with pytest.raises(ValueError, match="palette"):
        encode_indexed(np.zeros((2, 2), np.uint8), np.zeros((300, 3), np.uint8))


def test_slice_cache_warms_the_slab_and_the_next_one(tmp_path):
    from radiobject import TileConfig
    from radiobject.read._region import block_cache

    data = np.arange(8 * 8 * 12, dtype=np.float32).reshape(8, 8, 12)
    vol = Volume.from_numpy(str(tmp_path / "v"), data, tile=TileConfig(extents=(4, 4, 4)))
    cache = _slices.SliceCache(vol)
    counters = block_cache().counters

    def misses_reading(z: int) -> int:
        before = counters.misses
        assert cache.plane("axial", z).tolist() == data[:, :, z].tolist()
        return counters.misses - before

    cache.plane("axial", 5)
    cache.prefetch((0, 0, 5))  # what the viewer does after its first image
    cache.wait()
    assert misses_reading(6) == 0  # the slab z 4..7 is in memory; scrubbing up near
    assert misses_reading(7) == 0  # its edge ...
    cache.wait()
    assert misses_reading(8) == 0  # ... had the next slab read ahead
    assert misses_reading(0) > 0  # a jump elsewhere reads from storage
    off = _slices.SliceCache(vol, warm=False)
    off.plane("axial", 1)
    off.prefetch((0, 0, 1))
    off.wait()
    assert off.reads == 1
