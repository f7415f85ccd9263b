"""The coarse level of a volume: what it holds, where it lives, when it is (re)built."""

from __future__ import annotations

import numpy as np
import pytest
import tiledb

from radiobject import (
    CoarseLevel,
    ConfigurationError,
    RadiObject,
    StorageError,
    VolumeCollection,
    WriteConfig,
    configure,
)
from radiobject.read._scaling import Scaling
from radiobject.storage import _collection_derived
from radiobject.storage._coarse import MEAN, STRIDE, downsample, level_voxels

SHAPE = (64, 64, 40)


def block_means(values: np.ndarray, f: int) -> np.ndarray:
    """Block means the slow, obvious way (edge blocks hold what is left)."""
    out_shape = tuple(-(-n // f) for n in values.shape)
    out = np.empty(out_shape)
    for i in np.ndindex(out_shape):
        out[i] = values[tuple(slice(k * f, (k + 1) * f) for k in i)].mean()
    return out


def ct_volume(shape=SHAPE) -> np.ndarray:
    """Integer CT-like values that say where they came from."""
    return (np.arange(np.prod(shape)).reshape(shape) % 3000 - 1000).astype(np.int16)


@pytest.fixture
def ct(tmp_path) -> VolumeCollection:
    return VolumeCollection.from_numpy(
        str(tmp_path / "CT"), {"a": ct_volume(), "b": ct_volume()[::-1].copy()}, name="CT"
    )


def test_downsample_mean_and_stride_against_the_obvious_loops():
    values = np.random.default_rng(0).integers(0, 1000, (9, 7, 6)).astype(np.float64)
    np.testing.assert_allclose(downsample(values, 4, MEAN), block_means(values, 4))
    picked = downsample(values, 4, STRIDE)
    assert picked.shape == (3, 2, 2)
    assert picked[1, 1, 1] == values[6, 6, 5]  # block centre 4+2, 4+2, clamped to 5
    four_d = np.stack([values, 2 * values], axis=3)
    np.testing.assert_allclose(downsample(four_d, 4, MEAN)[..., 1], 2 * block_means(values, 4))
    with pytest.raises(ConfigurationError, match="method"):
        downsample(values, 4, "median")
    with pytest.raises(ConfigurationError, match="factor"):
        downsample(values, 1, MEAN)


def test_a_scaled_file_s_level_equals_the_level_of_its_values():
    raw = np.random.default_rng(1).integers(-50, 50, (8, 8, 8)).astype(np.int16)
    scaling = Scaling(np.dtype(np.int16), np.dtype(np.float64), scale=0.5, offset=-3.0)
    from_raw = level_voxels(raw, 4, MEAN, scaling, slope=0.5, inter=-3.0)
    from_values = level_voxels(raw * 0.5 - 3.0, 4, MEAN, scaling)
    np.testing.assert_array_equal(from_raw, from_values)
    np.testing.assert_allclose(
        scaling.decode(from_raw), block_means(raw * 0.5 - 3.0, 4), atol=0.25 + 1e-9
    )


def test_ingest_writes_a_level_of_block_means_beside_the_volume(ct):
    level = ct.coarse_volume("a_CT")
    assert level is not None
    assert level.shape == (16, 16, 10)
    assert level.uri.endswith("/CT/coarse/00000")
    assert level.stored_dtype == ct.volume("a_CT").stored_dtype
    np.testing.assert_array_equal(level.to_numpy(), np.rint(block_means(ct_volume(), 4)))
    # coarse voxel (1, 2, 3) sits at the centre of its block, in the volume's world
    centre = np.array([4 * 1 + 1.5, 4 * 2 + 1.5, 4 * 3 + 1.5, 1.0])
    np.testing.assert_allclose(level.affine @ [1, 2, 3, 1], ct.volume("a_CT").affine @ centre)
    in_memory = ct.coarse_level("a_CT")
    assert (in_memory.factor, in_memory.method, in_memory.saved) == (4, MEAN, True)
    assert in_memory.name == "level 1 (4x)"
    np.testing.assert_array_equal(in_memory.voxels, level.to_numpy())


def test_the_level_is_never_a_volume(ct, tmp_path):
    assert ct.obs_ids == ["a_CT", "b_CT"]
    assert len(ct) == 2
    copy = ct.filter("obs_subject_id == 'b'").write(str(tmp_path / "copy"))
    assert copy.obs_ids == ["b_CT"]
    assert copy.coarse_volume("b_CT") is not None  # written with the copy
    np.testing.assert_array_equal(copy.volume("b_CT").to_numpy(), ct.volume("b_CT").to_numpy())
    radi = RadiObject.from_collections(str(tmp_path / "radi"), {"CT": ct}, progress=False)
    assert radi.collection_names == ["CT"]
    assert "(1 collection: CT;" in repr(radi)
    assert "2 volumes" in repr(radi.CT)
    assert len(radi.CT) == 2
    assert radi.CT.coarse_volume("a_CT") is not None


def test_masks_keep_their_labels(tmp_path):
    mask = np.zeros(SHAPE, np.uint8)
    mask[10:30, 10:30, 5:20] = 3
    mask[40:44, 40:44, 30:34] = 1
    seg = VolumeCollection.from_numpy(str(tmp_path / "seg"), {"a": mask}, is_mask=True)
    level = seg.coarse_level(seg.obs_ids[0])
    assert level.method == STRIDE
    assert set(np.unique(level.voxels)) == {0, 1, 3}  # no blended labels
    np.testing.assert_array_equal(level.voxels, mask[2::4, 2::4, 2::4])


def test_a_level_is_rebuilt_when_the_volume_changes_or_it_was_cut_short(ct):
    vol = ct.volume("a_CT")
    vol.write_region(((0, 8), (0, 8), (0, 8)), np.full((8, 8, 8), 7, np.int16))
    assert ct.coarse_volume("a_CT") is None  # stale: never shown
    level = ct.coarse_level("a_CT")
    assert level.saved
    assert (level.voxels[:2, :2, :2] == 7).all()
    assert ct.coarse_volume("a_CT") is not None  # stored again

    uri = ct.coarse_volume("b_CT").uri
    with tiledb.open(uri, mode="w") as arr:  # as if the writer died before its last step
        del arr.meta["source_key"]
    assert ct.coarse_volume("b_CT") is None
    np.testing.assert_array_equal(
        ct.coarse_level("b_CT").voxels, np.rint(block_means(ct_volume()[::-1], 4))
    )
    assert ct.coarse_volume("b_CT") is not None


def test_coarse_zero_writes_none_and_the_first_view_builds_and_stores_it(tmp_path):
    with configure(write=WriteConfig(coarse=0)):
        ct = VolumeCollection.from_numpy(str(tmp_path / "CT"), {"a": ct_volume()})
    assert ct.coarse_volume("a_CT") is None
    assert not (tmp_path / "CT" / "coarse").exists()
    level = ct.coarse_level("a_CT")
    assert (level.voxels.shape, level.saved) == ((16, 16, 10), True)
    assert VolumeCollection(ct.uri).coarse_volume("a_CT") is not None
    assert ct.obs_ids == ["a_CT"]
    with configure(write=WriteConfig(coarse=8)):
        ct8 = VolumeCollection.from_numpy(str(tmp_path / "CT8"), {"a": ct_volume()}, name="CT")
    assert ct8.coarse_volume("a_CT").shape == (8, 8, 5)


@pytest.mark.parametrize("bad", [1, 17, -4, True, 2.0])
def test_bad_coarse_factor_is_refused(bad):
    with pytest.raises(ConfigurationError, match=r"WriteConfig.coarse must be 0 .* 2 to 16"):
        WriteConfig(coarse=bad)


def test_a_store_that_refuses_the_level_gets_it_in_memory_and_one_warning(tmp_path, monkeypatch):
    with configure(write=WriteConfig(coarse=0)):
        ct = VolumeCollection.from_numpy(str(tmp_path / "CT"), {"a": ct_volume(), "b": ct_volume()})
    attempts = []

    def refuse(uri, *args, **kwargs):
        attempts.append(uri)
        raise StorageError(f"could not write {uri!r}: read-only")

    monkeypatch.setattr(_collection_derived, "write_coarse", refuse)
    with pytest.warns(UserWarning, match=r"cannot store the coarse level of 'a_CT'.*read-only"):
        level = ct.coarse_level("a_CT")
    assert isinstance(level, CoarseLevel)
    assert not level.saved
    np.testing.assert_array_equal(level.voxels, np.rint(block_means(ct_volume(), 4)))
    second = ct.coarse_level("b_CT")  # no second warning, no second try (warnings are errors)
    assert not second.saved
    assert len(attempts) == 1
    assert ct.coarse_volume("a_CT") is None


def test_a_scaled_nifti_s_level_holds_block_means_of_nibabel_s_values(tmp_path):
    nib = pytest.importorskip("nibabel")
    raw = np.random.default_rng(3).integers(-500, 1500, (20, 24, 16)).astype(np.int16)
    img = nib.Nifti1Image(raw, np.diag([0.9, 1.1, 2.0, 1.0]))
    img.header.set_slope_inter(0.37, -12.5)
    nib.save(img, str(tmp_path / "sub-01_T1w.nii.gz"))
    coll = VolumeCollection.from_niftis(
        tmp_path / "T1w", str(tmp_path / "*.nii.gz"), progress=False
    )
    values = np.asanyarray(nib.load(str(tmp_path / "sub-01_T1w.nii.gz")).dataobj)
    level = coll.coarse_level("sub-01_T1w")
    assert coll.volume("sub-01_T1w").stored_dtype == np.int16  # stored as the file's integers
    assert level.voxels.dtype == np.float32
    np.testing.assert_allclose(level.voxels, block_means(values, 4), atol=0.37 / 2 + 1e-3)


def test_a_level_made_with_another_mask_guess_is_made_again_at_ingest(tmp_path):
    labels = np.zeros((16, 16, 8), np.uint8)
    labels[2:9, 3:11, 1:6] = 2  # the first volume decides: a label map
    image = (np.arange(16 * 16 * 8).reshape(16, 16, 8) % 200).astype(np.uint8)
    coll = VolumeCollection.from_numpy(str(tmp_path / "odd"), {"a": labels, "b": image})
    assert coll.is_mask
    for obs_id, voxels in (("a_odd", labels), ("b_odd", image)):
        level = coll.coarse_volume(obs_id)
        assert level is not None, obs_id  # stored with the collection's method
        np.testing.assert_array_equal(level.to_numpy(), voxels[2::4, 2::4, 2::4])


def test_a_resumed_ingest_makes_the_levels_a_kill_cut_short_without_reading_files(
    tmp_path, monkeypatch
):
    from radiobject.data import write_sample_niftis
    from radiobject.ingest._sources import FileSource
    from radiobject.storage._group import remove

    images, _ = write_sample_niftis(
        tmp_path / "src", n_subjects=3, shape=(16, 16, 12), modalities=["T1w"], seed=4
    )
    uri = str(tmp_path / "T1w")
    coll = VolumeCollection.from_niftis(uri, images["T1w"], progress=False)
    expected = {i: coll.coarse_level(i).voxels for i in coll.obs_ids}
    # as a kill leaves it: no marker, one level without its last write, one never started
    with tiledb.Group(uri, mode="w") as g:
        del g.meta["complete"]
    first, second = (coll.coarse_volume(i).uri for i in coll.obs_ids[:2])
    with tiledb.open(first, mode="w") as arr:
        del arr.meta["source_key"]
    remove(second, tiledb.default_ctx())
    loads = []
    real = FileSource.__call__
    monkeypatch.setattr(FileSource, "__call__", lambda self: loads.append(self) or real(self))

    resumed = VolumeCollection.from_niftis(uri, images["T1w"], progress=False, resume=True)
    assert loads == []  # the volumes were whole: the levels come from them
    for obs_id, voxels in expected.items():
        assert resumed.coarse_volume(obs_id) is not None, obs_id
        np.testing.assert_array_equal(resumed.coarse_level(obs_id).voxels, voxels)
