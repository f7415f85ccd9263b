"""The synthetic brain phantom: seeded, well-formed, and brain-like where tests rely on it."""

from __future__ import annotations

import numpy as np
import pytest

from radiobject._errors import ConfigurationError, ShapeError
from radiobject.data._phantom import MODALITIES, SubjectPhantom, make_subject

SHAPES = [(24, 24, 24), (32, 32, 32), (48, 40, 32), (33, 29, 25), (40, 64, 24)]


def _subject(shape=(48, 40, 32), seed=0, **kw) -> SubjectPhantom:
    return make_subject(shape, np.random.default_rng(seed), **kw)


def test_same_seed_same_subject_other_seed_differs():
    a = _subject(seed=3, modalities=MODALITIES)
    b = _subject(seed=3, modalities=MODALITIES)
    c = _subject(seed=4, modalities=MODALITIES)
    assert a.images.keys() == b.images.keys() == set(MODALITIES)
    for name in MODALITIES:
        np.testing.assert_array_equal(a.images[name], b.images[name])
        assert not np.array_equal(a.images[name], c.images[name])
    np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.array_equal(a.mask, c.mask)


@pytest.mark.parametrize("shape", [*SHAPES, (8, 8, 8), (16, 16, 12), (9, 11, 13)])
def test_dtypes_and_shapes(shape):
    s = _subject(shape, modalities=MODALITIES)
    assert isinstance(s, SubjectPhantom)
    assert s.has_tumour is True
    assert list(s.images) == list(MODALITIES)
    for img in s.images.values():
        assert img.shape == shape
        assert img.dtype == np.float32
        assert np.isfinite(img).all()
        assert img.min() >= 0.0
        assert img.max() <= 1000.0
    assert s.mask.shape == shape
    assert s.mask.dtype == np.uint8


def test_default_modalities():
    assert list(_subject().images) == ["T1w", "FLAIR"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", range(6))
def test_mask_labels_and_non_empty(shape, seed):
    s = _subject(shape, seed)
    labels = set(np.unique(s.mask).tolist())
    assert labels <= {0, 1, 2, 3}
    assert labels & {1, 2, 3}, "a tumour subject must have tumour voxels"
    assert (s.mask > 0).mean() < 0.25  # a tumour, not the whole head


@pytest.mark.parametrize("shape", [(8, 8, 8), (16, 16, 12)])
def test_tiny_grids_still_have_a_tumour(shape):
    assert _subject(shape).mask.any()


def test_healthy_subject_has_empty_mask():
    s = _subject(tumour=False, modalities=MODALITIES)
    assert s.has_tumour is False
    assert not s.mask.any()
    assert s.mask.dtype == np.uint8


@pytest.mark.parametrize("seed", range(5))
def test_tumour_lies_inside_the_head(seed):
    s = _subject((40, 48, 32), seed, modalities=MODALITIES)
    tumour = s.mask > 0
    for img in s.images.values():
        assert (img[tumour] > 0).all()


@pytest.mark.parametrize("seed", range(5))
def test_oedema_is_bright_on_flair_and_t2(seed):
    s = _subject((64, 64, 48), seed, modalities=MODALITIES)
    oedema = s.mask == 2
    assert oedema.any()
    normal = (s.mask == 0) & (s.images["FLAIR"] > 0)
    for name in ("FLAIR", "T2w"):
        img = s.images[name]
        assert img[oedema].mean() > img[normal].mean()


def test_enhancing_rim_is_bright_after_contrast():
    s = _subject((64, 64, 48), 1, modalities=MODALITIES)
    rim = s.mask == 3
    assert rim.any()
    assert s.images["T1gd"][rim].mean() > 1.5 * s.images["T1w"][rim].mean()


@pytest.mark.parametrize("shape", SHAPES)
def test_background_corners_are_zero(shape):
    s = _subject(shape, modalities=MODALITIES)
    for img in s.images.values():
        corners = img[np.ix_([0, -1], [0, -1], [0, -1])]
        assert np.abs(corners).max() < 1.0
        assert (img == 0).mean() > 0.2  # background, for foreground detection


def test_modality_does_not_depend_on_the_others():
    both = _subject(seed=7, modalities=("T1w", "FLAIR"))
    alone = _subject(seed=7, modalities=("FLAIR",))
    np.testing.assert_array_equal(both.images["FLAIR"], alone.images["FLAIR"])
    np.testing.assert_array_equal(both.mask, alone.mask)


def test_healthy_twin_differs_only_around_the_tumour():
    sick = _subject(seed=5)
    healthy = _subject(seed=5, tumour=False)
    idx = np.nonzero(sick.mask)
    around = np.zeros(sick.mask.shape, dtype=bool)
    around[tuple(slice(max(i.min() - 3, 0), i.max() + 4) for i in idx)] = True
    for name, img in sick.images.items():
        np.testing.assert_array_equal(img[~around], healthy.images[name][~around])
        assert not np.array_equal(img, healthy.images[name])


def test_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigurationError, match="unknown modalities"):
        make_subject((32, 32, 32), rng, modalities=("T1w", "PD"))
    with pytest.raises(ConfigurationError, match="repeat"):
        make_subject((32, 32, 32), rng, modalities=("T1w", "T1w"))
    with pytest.raises(ConfigurationError):
        make_subject((32, 32, 32), rng, modalities="T1w")
    with pytest.raises(ShapeError):
        make_subject((32, 32), rng)
    with pytest.raises(ShapeError):
        make_subject((32, 32, 4), rng)
    with pytest.raises(TypeError, match="Generator"):
        make_subject((32, 32, 32), 0)
