"""Reference grids: collections on their own grids, samples planned in the reference's.

The other collections are stored as they are (each volume with its affine); a sample reads
the bounding box of its box mapped into each other grid and resamples just that. The
answer must be MONAI's: ``ResampleToMatchd`` of the whole volume onto the reference grid,
then the same crop.
"""

from __future__ import annotations

import pickle
from collections import Counter
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from radiobject import (
    AlignmentError,
    IngestError,
    RadiObject,
    ReadConfig,
    VolumeCollection,
    configure,
)
from radiobject.ml import (
    DatasetConfig,
    PredictionWriter,
    SegmentationDataset,
    VolumeCollectionDataset,
    create_inference_dataloader,
    create_segmentation_dataloader,
    create_training_dataloader,
)
from radiobject.read import block_cache, grid_map
from tests import test_ml_plans
from tests.test_ml_plans import loader_keys, planned

recorded = test_ml_plans.recorded  # the fixture: every region read from now on

SUBJECTS = ("sub-a", "sub-b")
REF_SHAPE = (36, 32, 28)


def _affine(columns: list[list[float]], origin: list[float]) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = np.asarray(columns, dtype=np.float64)
    a[:3, 3] = origin
    return a


# the reference: 1 mm, an origin off the voxel lattice
T1_AFFINE = _affine([[1, 0, 0], [0, 1, 0], [0, 0, 1]], [-17.6, -15.2, -13.35])
# 2 x 2 x 3 mm, another origin
FLAIR_AFFINE = _affine([[2, 0, 0], [0, 2, 0], [0, 0, 3]], [-19.1, -16.7, -15.2])
FLAIR_SHAPE = (20, 18, 11)
# x flipped, y and z swapped, 1.5 x 1.25 x 1.2 mm (orientation LIP-like)
PD_AFFINE = _affine([[-1.5, 0, 0], [0, 0, 1.25], [0, 1.2, 0]], [19.3, -16.1, -14.9])
PD_SHAPE = (26, 24, 27)
# the mask on a coarser grid: 2 mm
SEG_AFFINE = _affine([[2, 0, 0], [0, 2, 0], [0, 0, 2]], [-18.3, -15.9, -14.1])
SEG_SHAPE = (19, 17, 15)


def _smooth(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A smooth float32 volume (interpolation differences stay small but non-zero)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(0, 3, n) for n in shape], indexing="ij")
    phase = rng.random(3) * 6
    vol = sum(np.sin(g + p) * (k + 1) for k, (g, p) in enumerate(zip(grids, phase, strict=True)))
    return (50 + 10 * vol + rng.random(shape)).astype(np.float32)


def _sphere(seed: int) -> np.ndarray:
    """Labels 1 (a ball) and 2 (its core), in the mask's grid, away from the origin corner."""
    idx = np.indices(SEG_SHAPE).astype(np.float64)
    centre = np.array([13.0, 11.0, 10.0]) + np.random.default_rng(seed).random(3)
    r = np.sqrt(sum((idx[a] - centre[a]) ** 2 for a in range(3)))
    return ((r < 3.5).astype(np.uint8) + (r < 1.5)).astype(np.uint8)


@pytest.fixture(scope="module")
def radi(tmp_path_factory: pytest.TempPathFactory) -> RadiObject:
    d = tmp_path_factory.mktemp("grids")

    def coll(name: str, shape: Any, affine: np.ndarray, make: Any, **kw: Any) -> Any:
        arrays = {s: make(shape, i) for i, s in enumerate(SUBJECTS)}
        return VolumeCollection.from_numpy(
            d / name, arrays, affines={s: affine for s in SUBJECTS}, name=name, **kw
        )

    collections = {
        "T1w": coll("T1w", REF_SHAPE, T1_AFFINE, _smooth),
        "FLAIR": coll("FLAIR", FLAIR_SHAPE, FLAIR_AFFINE, lambda s, i: _smooth(s, 10 + i)),
        "PD": coll("PD", PD_SHAPE, PD_AFFINE, lambda s, i: _smooth(s, 20 + i)),
        "seg": coll("seg", SEG_SHAPE, SEG_AFFINE, lambda s, i: _sphere(i), is_mask=True),
    }
    return RadiObject.from_collections(d / "r", collections, reference="T1w", progress=False)


def _monai_on_reference(radi: RadiObject, name: str, subject: str, mode: str) -> np.ndarray:
    """MONAI's answer: the whole volume of ``name`` resampled onto the subject's T1w grid."""
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatchd

    ref = radi.T1w.loc[f"{subject}_T1w"]
    vol = radi[name].loc[f"{subject}_{name}"]
    data = {
        "img": MetaTensor(
            torch.from_numpy(vol.to_numpy(np.float32))[None], affine=torch.tensor(vol.affine)
        ),
        "ref": MetaTensor(torch.zeros((1, *ref.shape)), affine=torch.tensor(ref.affine)),
    }
    out = ResampleToMatchd(keys="img", key_dst="ref", mode=mode)(data)["img"]
    return np.asarray(out[0])


def _crop(volume: np.ndarray, start: Any, size: Any) -> np.ndarray:
    return volume[tuple(slice(int(a), int(a) + p) for a, p in zip(start, size, strict=True))]


def _rotation(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


@pytest.mark.parametrize(
    "columns",
    [
        np.diag([2.0, 2.0, 3.0]),  # axis-aligned: three 1D interpolations
        np.array([[-1.5, 0, 0], [0, 0, 1.25], [0, 1.2, 0]]),  # flipped and permuted
        _rotation(17.0) @ np.diag([1.3, 1.7, 2.2]),  # oblique, about z: a 1D and a 2D interpolation
    ],
)
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_resampling_a_block_equals_monai_on_the_whole_volume(columns, mode):
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatchd

    shape = (17, 15, 13)
    # origins off every half-voxel: no point lies halfway between two voxels (where nearest
    # may go either way, by float rounding)
    affine = _affine(columns.tolist(), [-9.7, -11.35, -8.3])
    vol = _smooth(shape, 3) if mode == "bilinear" else (_smooth(shape, 3) > 60).astype(np.int16)
    data = {
        "img": MetaTensor(torch.from_numpy(vol.astype(np.float32))[None], affine=affine),
        "ref": MetaTensor(torch.zeros((1, 24, 22, 20)), affine=T1_AFFINE),
    }
    want = np.asarray(ResampleToMatchd(keys="img", key_dst="ref", mode=mode)(data)["img"][0])
    grid = grid_map(T1_AFFINE, affine, shape)
    assert (grid.axes is None) == (columns[0, 1] != 0)
    assert (grid.tilt == (2, 2)) == (columns[0, 1] != 0)  # rotated about z: 1D + 2D
    linear = mode == "bilinear"
    for box in (((0, 24), (0, 22), (0, 20)), ((3, 14), (5, 9), (2, 19))):
        block_box = grid.source_box(box, linear=linear)
        block = vol[tuple(slice(lo, hi) for lo, hi in block_box)]
        got = grid.resample(block, box, block_box, linear=linear)
        expected = want[tuple(slice(lo, hi) for lo, hi in box)]
        if linear:
            assert np.abs(got - expected).max() < 1e-4
        else:
            assert got.dtype == np.int16
            np.testing.assert_array_equal(got, expected.astype(np.int16))


_SWAP_X_Z = np.eye(3)[[2, 1, 0]]
_ABOUT_X = _rotation(-31.0)[[2, 0, 1]][:, [2, 0, 1]]


@pytest.mark.parametrize(
    ("columns", "tilt"),
    [
        # rotated about two axes: gathers of eight neighbours per point
        (_rotation(23.0) @ np.diag([1.1, 1.4, 1.9]) @ _ABOUT_X, None),
        # rotated about x, its axes permuted: the volume's z runs along the reference's x
        (_ABOUT_X @ np.diag([1.1, 1.4, 1.9]) @ _SWAP_X_Z, (2, 0)),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("slab", [None, 100])
def test_oblique_resampling_of_channels_and_dtypes_equals_monai(
    columns, tilt, dtype, mode, slab, monkeypatch
):
    """Two channels, three dtypes, boxes inside, across and beyond the volume.

    ``slab``: voxels per slab of the resampling (None: the default; 100: many slabs).
    """
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatchd

    from radiobject.read import _grids

    if slab is not None:
        monkeypatch.setattr(_grids, "_SLAB_VOXELS", slab)

    shape = (19, 16, 14)
    affine = _affine(columns.tolist(), [-8.9, -12.15, -7.45])
    linear = mode == "bilinear"
    channels = [_smooth(shape, seed) for seed in (5, 6)]
    if not linear:
        channels = [(c > 55).astype(np.float32) + 2 * (c > 70) for c in channels]
    vol = np.stack(channels, axis=-1).astype(dtype)
    data = {
        "img": MetaTensor(
            torch.from_numpy(np.moveaxis(vol, -1, 0).astype(np.float32)), affine=affine
        ),
        "ref": MetaTensor(torch.zeros((1, 24, 22, 20)), affine=T1_AFFINE),
    }
    want = np.moveaxis(
        np.asarray(ResampleToMatchd(keys="img", key_dst="ref", mode=mode)(data)["img"]), 0, -1
    )
    grid = grid_map(T1_AFFINE, affine, shape)
    assert grid.axes is None
    assert grid.tilt == tilt
    for box in (
        ((0, 24), (0, 22), (0, 20)),
        ((6, 15), (4, 17), (5, 12)),
        ((20, 24), (0, 3), (18, 20)),
    ):
        block_box = grid.source_box(box, linear=linear)
        block = vol[tuple(slice(lo, hi) for lo, hi in block_box)]
        got = grid.resample(block, box, block_box, linear=linear)
        expected = want[tuple(slice(lo, hi) for lo, hi in box)]
        assert got.shape == expected.shape
        if linear:
            assert got.dtype == (np.float32 if dtype == np.int16 else dtype)
            assert np.abs(got - expected).max() < 1e-4 * max(1.0, float(np.abs(expected).max()))
        else:
            assert got.dtype == dtype
            np.testing.assert_array_equal(got, expected.astype(dtype))


# -- resampling a tensor on its device --------------------------------------------------------

_TENSOR_GRIDS = {
    # (reference affine, volume affine), and the numpy route the pair takes
    "aligned": (T1_AFFINE, _affine([[-1.5, 0, 0], [0, 0, 1.25], [0, 1.2, 0]], [19.3, -9.1, -8.4])),
    # every point at a whole or half voxel: nearest's ties (to the even voxel)
    "halves": (np.eye(4), _affine([[2, 0, 0], [0, 2, 0], [0, 0, 2]], [0, 0, 0])),
    "tilted": (
        T1_AFFINE,
        _affine(_rotation(17.0) @ np.diag([1.3, 1.7, 2.2]), [-8.9, -12.15, -7.45]),
    ),
    "two axes": (
        T1_AFFINE,
        _affine(_rotation(23.0) @ np.diag([1.1, 1.4, 1.9]) @ _ABOUT_X, [-8.9, -12.15, -7.45]),
    ),
}
_DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
    pytest.param(
        "mps", marks=pytest.mark.skipif(not torch.backends.mps.is_available(), reason="no MPS")
    ),
]
_TORCH_DTYPES = {
    np.float32: torch.float32,
    np.float64: torch.float64,
    np.int16: torch.int16,
    np.uint8: torch.uint8,
}


def _tensor_case(kind: str, dtype: Any, tail: tuple[int, ...]) -> tuple[Any, np.ndarray]:
    """The grid map of ``kind`` and a (19, 16, 14, *tail) volume of ``dtype`` in its grid."""
    reference, affine = _TENSOR_GRIDS[kind]
    shape = (19, 16, 14)
    grid = grid_map(reference, affine, shape)
    route = {"aligned": "axes", "halves": "axes", "tilted": "tilt", "two axes": "any"}[kind]
    assert (grid.axes is not None) == (route == "axes")
    assert (grid.tilt is not None) == (route == "tilt")
    rng = np.random.default_rng(7)
    n = tail[0] if tail else 1
    if np.dtype(dtype).kind == "f":
        channels = [_smooth(shape, seed) for seed in range(n)]
    else:  # random labels: any voxel picked wrongly shows
        channels = [rng.integers(0, 200, shape) for _ in range(n)]
    vol = np.stack(channels, axis=-1) if tail else channels[0]
    return grid, vol.astype(dtype)


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("kind", list(_TENSOR_GRIDS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8])
@pytest.mark.parametrize("linear", [True, False])
@pytest.mark.parametrize("tail", [(), (2,)])
def test_a_tensor_is_resampled_on_its_device_to_the_numpy_values(device, kind, dtype, linear, tail):
    if device == "mps" and dtype == np.float64:
        pytest.skip("mps holds no float64")
    grid, vol = _tensor_case(kind, dtype, tail)
    for box in (
        ((6, 15), (4, 17), (5, 12)),  # inside
        ((0, 24), (0, 22), (0, 20)),  # across
        ((20, 24), (0, 3), (18, 20)),  # beyond the volume, high
        ((-4, 3), (18, 26), (-2, 4)),  # beyond, low and high
    ):
        block_box = grid.source_box(box, linear=linear)
        block = vol[tuple(slice(lo, hi) for lo, hi in block_box)]
        want = grid.resample(block, box, block_box, linear=linear)
        got = grid.resample(torch.from_numpy(block).to(device), box, block_box, linear=linear)
        assert isinstance(got, torch.Tensor)
        assert got.device.type == device
        if linear:
            assert got.dtype == (torch.float64 if dtype == np.float64 else torch.float32)
        else:
            assert got.dtype == _TORCH_DTYPES[dtype]
        assert tuple(got.shape) == want.shape == (*(hi - lo for lo, hi in box), *tail)
        values = got.cpu().numpy()
        if linear:
            scale = max(1.0, float(np.abs(want).max()))
            assert np.abs(values - want).max() <= 1e-5 * scale, (kind, box)
        else:
            np.testing.assert_array_equal(values, want, err_msg=f"{kind} {box}")


def test_a_tensor_is_resampled_into_out_and_through_resample_apply():
    from radiobject.read import Resample

    grid, vol = _tensor_case("tilted", np.int16, ())
    box = ((3, 11), (2, 9), (4, 10))
    resample = Resample(grid, box, linear=True)
    block_box = resample.source_bounds()
    block = vol[tuple(slice(lo, hi) for lo, hi in block_box)]
    want = resample.apply(block, block_box)
    got = resample.apply(torch.from_numpy(block), block_box)
    assert got.dtype == torch.float32
    assert np.abs(got.numpy() - want).max() <= 1e-5 * np.abs(want).max()
    # into a float64 tensor, and into an array: cast to their dtypes
    out = torch.full(resample.shape, -1.0, dtype=torch.float64)
    assert resample.apply(torch.from_numpy(block), block_box, out=out) is out
    np.testing.assert_array_equal(out.numpy(), got.numpy().astype(np.float64))
    array = np.zeros(resample.shape, dtype=np.float32)
    assert resample.apply(torch.from_numpy(block), block_box, out=array) is array
    np.testing.assert_array_equal(array, got.numpy())
    # a numpy block into a tensor
    out = torch.zeros(resample.shape)
    resample.apply(block, block_box, out=out)
    np.testing.assert_array_equal(out.numpy(), want)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_bad_blocks_boxes_and_outs_raise_shape_errors(as_tensor):
    from radiobject import ShapeError

    grid, vol = _tensor_case("two axes", np.float32, ())
    box = ((6, 15), (4, 17), (5, 12))
    block_box = grid.source_box(box, linear=True)
    block = vol[tuple(slice(lo, hi) for lo, hi in block_box)]

    def wrap(a: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a)) if as_tensor else a

    with pytest.raises(ShapeError, match=r"three spatial axes .*got shape \(\d+, \d+\)"):
        grid.resample(wrap(block[:, :, 0]), box, block_box, linear=True)
    with pytest.raises(ShapeError, match="is not the volume's block_box"):
        grid.resample(wrap(block[1:]), box, block_box, linear=True)
    # a block that misses part of what the box maps to (its top x plane)
    short = ((block_box[0][0], block_box[0][1] - 1), *block_box[1:])
    with pytest.raises(ShapeError, match=r"does not hold .*read GridMap.source_box"):
        grid.resample(wrap(block[:-1]), box, short, linear=True)
    with pytest.raises(ShapeError, match="non-empty"):
        grid.resample(wrap(block), ((6, 6), (4, 17), (5, 12)), block_box, linear=True)
    out = torch.zeros(3, 3, 3) if as_tensor else np.zeros((3, 3, 3), np.float32)
    with pytest.raises(ShapeError, match=r"out has shape \(3, 3, 3\), the resampled box"):
        grid.resample(wrap(block), box, block_box, linear=True, out=out)


def test_reference_is_stored_and_survives_reopen_views_and_versions(radi):
    assert radi.reference == "T1w"
    again = RadiObject(radi.uri)
    assert again.reference == "T1w"
    assert again.iloc[:1].reference == "T1w"
    assert again.select_collections(["FLAIR"]).reference == "T1w"
    assert RadiObject(radi.uri, at=radi.versions()[-1]).reference == "T1w"
    assert again.FLAIR.head(1).reference == "T1w"
    # geometry is stored, not resampled
    assert radi.FLAIR.iloc[0].shape == FLAIR_SHAPE
    np.testing.assert_allclose(radi.PD.iloc[0].affine, PD_AFFINE)


@pytest.mark.parametrize("name", ["FLAIR", "PD"])
def test_patches_equal_monai_resample_to_match_then_crop(radi, name):
    patch = (12, 10, 9)
    # the training loader decodes (and resamples) each patch straight into its batch slot
    loader = create_training_dataloader(
        [radi.T1w, radi[name]],
        batch_size=3,
        patch_size=patch,
        patches_per_volume=4,
        drop_last=False,
    )
    expected = {s: _monai_on_reference(radi, name, s, "bilinear") for s in SUBJECTS}
    t1 = {s: radi.T1w.loc[f"{s}_T1w"].to_numpy(np.float32) for s in SUBJECTS}
    seen = 0
    for batch in loader:
        for k, subject in enumerate(batch["obs_subject_id"]):
            start, image = batch["patch_start"][k].tolist(), batch["image"][k].numpy()
            assert image.shape == (2, *patch)
            np.testing.assert_array_equal(image[0], _crop(t1[subject], start, patch))
            got, want = image[1], _crop(expected[subject], start, patch)
            assert np.abs(got - want).max() < 1e-4, (name, start, np.abs(got - want).max())
            assert got.std() > 0  # a real patch, not padding
            seen += 1
    assert seen == len(loader.dataset) == 8


def test_torchio_subjects_and_queue_patches_equal_monai_resample_to_match_then_crop(radi):
    import torchio as tio

    from radiobject.ml import VolumeCollectionSubjectsDataset

    modes = {"FLAIR": "bilinear", "PD": "bilinear", "seg": "nearest"}
    want = {s: {n: _monai_on_reference(radi, n, s, m) for n, m in modes.items()} for s in SUBJECTS}
    for s in SUBJECTS:
        want[s]["T1w"] = radi.T1w.loc[f"{s}_T1w"].to_numpy(np.float32)
    ds = VolumeCollectionSubjectsDataset([radi.T1w, radi.FLAIR, radi.PD, radi.seg])
    plan = ds.plan(0)
    assert plan.box == tuple((0, n) for n in REF_SHAPE)
    assert [r.resample is None for r in plan.reads] == [True, False, False, False]
    assert not plan.reads[3].resample.linear  # the mask: nearest labels
    for index in range(len(ds)):
        subject = ds[index]
        for name in ("FLAIR", "PD", "seg"):
            image = subject[name]
            assert image.shape == (1, *REF_SHAPE)
            np.testing.assert_allclose(image.affine, T1_AFFINE, atol=1e-9)
            got = image.data[0].numpy()
            if name == "seg":
                np.testing.assert_array_equal(got, want[subject["obs_subject_id"]][name])
            else:
                assert np.abs(got - want[subject["obs_subject_id"]][name]).max() < 1e-4
    patch = (12, 10, 9)
    queue = tio.Queue(
        ds, max_length=8, samples_per_volume=4, sampler=tio.UniformSampler(patch), num_workers=0
    )
    seen = 0
    for batch in torch.utils.data.DataLoader(queue, batch_size=4):
        for k, subject in enumerate(batch["obs_subject_id"]):
            start = batch[tio.LOCATION][k][:3].tolist()
            for name in ("T1w", *modes):
                got = batch[name][tio.DATA][k, 0].numpy()
                expected = _crop(want[subject][name], start, patch)
                assert got.shape == patch
                if name == "seg":
                    np.testing.assert_array_equal(got, expected)
                else:
                    assert np.abs(got - expected).max() < 1e-4, (name, start)
            seen += 1
    assert seen == 4 * len(SUBJECTS)


def test_a_dataset_on_several_grids_survives_pickling(radi):
    ds = SegmentationDataset(
        [radi.FLAIR, radi.PD],
        radi.seg,
        DatasetConfig(loading_mode="patch", patch_size=(8, 8, 8), patches_per_volume=2),
        foreground_sampling=True,
    )
    again = pickle.loads(pickle.dumps(ds))  # what a loader's worker gets
    for index in range(len(ds)):
        a, b = ds[index], again[index]
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["mask"], b["mask"])


def test_full_volumes_are_resampled_to_the_reference_grid(radi):
    loader = create_training_dataloader([radi.T1w, radi.PD], batch_size=1, drop_last=False)
    for batch in loader:
        subject = batch["obs_subject_id"][0]
        image = batch["image"][0].numpy()
        assert image.shape == (2, *REF_SHAPE)
        want = _monai_on_reference(radi, "PD", subject, "bilinear")
        assert np.abs(image[1] - want).max() < 1e-4


def test_slices_are_planes_of_the_reference_grid(radi):
    ds = VolumeCollectionDataset(
        [radi.T1w, radi.FLAIR], DatasetConfig(loading_mode="slice_2d", slice_orientation="axial")
    )
    assert len(ds) == len(SUBJECTS) * REF_SHAPE[2]
    want = {s: _monai_on_reference(radi, "FLAIR", s, "bilinear") for s in SUBJECTS}
    for index in (0, 5, 13, len(ds) - 9):
        sample, z = ds[index], int(ds._slices[index][1])
        assert tuple(sample["image"].shape) == (2, *REF_SHAPE[:2])
        got = sample["image"][1].numpy()
        assert np.abs(got - want[sample["obs_subject_id"]][:, :, z]).max() < 1e-4


def test_segmentation_masks_are_nearest_labels_equal_to_monai(radi):
    patch = (10, 12, 8)
    loader = create_segmentation_dataloader(
        [radi.T1w, radi.FLAIR],
        radi.seg,
        batch_size=2,
        patch_size=patch,
        patches_per_volume=3,
        foreground_probability=0.5,
        drop_last=False,
    )
    masks = {s: _monai_on_reference(radi, "seg", s, "nearest") for s in SUBJECTS}
    flair = {s: _monai_on_reference(radi, "FLAIR", s, "bilinear") for s in SUBJECTS}
    seen = 0
    for batch in loader:
        assert batch["mask"].dtype == torch.int64
        for k, subject in enumerate(batch["obs_subject_id"]):
            start = batch["patch_start"][k].tolist()
            want = _crop(masks[subject], start, patch).astype(np.int64)
            np.testing.assert_array_equal(batch["mask"][k, 0].numpy(), want)
            got = batch["image"][k, 1].numpy()
            assert np.abs(got - _crop(flair[subject], start, patch)).max() < 1e-4
            seen += 1
    assert seen == len(loader.dataset)


def test_foreground_patches_on_a_coarser_mask_are_centred_on_foreground(radi):
    patch = (8, 8, 8)
    ds = SegmentationDataset(
        radi.T1w,
        radi.seg,
        DatasetConfig(loading_mode="patch", patch_size=patch, patches_per_volume=12),
        foreground_sampling=True,
        foreground_probability=1.0,
    )
    for index in range(len(ds)):
        mask = ds[index]["mask"][0]
        centre = tuple(p // 2 for p in patch)  # the sphere is far from the edges: no clamping
        assert mask[centre] > 0, index


def _patch_bytes_in(grid_affine: np.ndarray, patch: tuple[int, ...], itemsize: int) -> float:
    """Bytes of the patch's extent in a grid of ``grid_affine`` (voxel volume ratio)."""
    scale = abs(np.linalg.det(grid_map(T1_AFFINE, grid_affine, (1, 1, 1)).array[:, :3]))
    return float(np.prod(patch)) * scale * itemsize


@pytest.mark.parametrize(
    ("name", "affine"), [("FLAIR", FLAIR_AFFINE), ("PD", PD_AFFINE), ("seg", SEG_AFFINE)]
)
def test_bytes_read_per_modality_stay_within_twice_the_patch(radi, name, affine):
    # the block read is the mapped box plus one voxel for interpolation: (n + 2) / n per axis
    # of a patch n voxels wide in that grid, within 2x from about 8 voxels per axis
    patch = (24, 24, 24)
    config = DatasetConfig(loading_mode="patch", patch_size=patch, patches_per_volume=1)
    with configure(read=ReadConfig(cache_mb=0, read_ahead=0)):
        if name == "seg":
            ds = SegmentationDataset(radi.T1w, radi.seg, config)
        else:
            ds = VolumeCollectionDataset(radi[name], config)
        counters = block_cache().counters
        itemsize = radi[name].iloc[0].to_numpy().dtype.itemsize
        for seed in range(4):
            ds.config = DatasetConfig(
                loading_mode="patch", patch_size=patch, patches_per_volume=1, seed=seed
            )
            for index in range(len(ds)):
                before = counters.bytes_from_storage
                plan = ds.plan(index)
                t1_bytes = sum(r.voxels * 4 for r in plan.reads if r.uri.startswith(radi.T1w.uri))
                ds[index]
                read = counters.bytes_from_storage - before - t1_bytes
                budget = _patch_bytes_in(affine, patch, itemsize)
                assert 0 < read <= 2 * budget, (name, seed, index, read, budget)


@pytest.mark.parametrize("read_ahead", [0, 3])
@pytest.mark.parametrize("kind", ["patch", "segmentation", "slab"])
def test_an_epoch_on_several_grids_reads_exactly_its_plans(radi, recorded, kind, read_ahead):
    make = {
        "patch": lambda: create_training_dataloader(
            [radi.T1w, radi.FLAIR, radi.PD],
            batch_size=2,
            patch_size=(8, 6, 4),
            patches_per_volume=3,
        ),
        "segmentation": lambda: create_segmentation_dataloader(
            radi.PD, radi.seg, batch_size=2, patch_size=(8, 6, 4), patches_per_volume=2
        ),
        "slab": lambda: create_segmentation_dataloader(
            [radi.T1w, radi.FLAIR], radi.seg, batch_size=2, slab=3, patches_per_volume=2
        ),
    }[kind]
    with configure(read=ReadConfig(read_ahead=read_ahead, cache_mb=0)):
        loader = make()
        ds = loader.dataset
        assert ds.read_ahead_schedule is not None
        ds.read_ahead_schedule.across_epochs = False
        keys = loader_keys(loader)
        expected = planned(ds, keys)
        assert any(r.resample is not None for k in keys for r in ds.plan(k).reads)
        assert not recorded
        batches = list(loader)
    assert Counter(recorded) == expected
    assert sum(len(b["obs_id"]) for b in batches) == len(keys)


# -- ingest -----------------------------------------------------------------------------------


@pytest.fixture
def niftis(tmp_path: Any) -> dict[str, list[tuple[str, str]]]:
    """T1w at 1 mm and FLAIR at 2 x 2 x 3 mm, one NIfTI file per subject."""
    out: dict[str, list[tuple[str, str]]] = {"T1w": [], "FLAIR": []}
    for i, sid in enumerate(SUBJECTS):
        for name, shape, affine in (
            ("T1w", (12, 12, 9), T1_AFFINE),
            ("FLAIR", (6, 6, 3), FLAIR_AFFINE),
        ):
            path = str(tmp_path / f"{sid}_{name}.nii.gz")
            nib.save(nib.Nifti1Image(_smooth(shape, i), affine), path)
            out[name].append((path, sid))
    return out


def test_ingest_on_other_grids_needs_a_reference(niftis, tmp_path):
    with pytest.raises(
        AlignmentError, match=r"not on the same grid .*or name .*reference=<collection>"
    ):
        RadiObject.from_images(tmp_path / "plain", niftis, progress=False)
    radi = RadiObject.from_images(tmp_path / "ref", niftis, reference="T1w", progress=False)
    assert radi.reference == "T1w"
    assert radi.FLAIR.iloc[0].shape == (6, 6, 3)
    assert radi.T1w.iloc[0].shape == (12, 12, 9)
    batch = next(iter(create_training_dataloader([radi.FLAIR, radi.T1w], batch_size=2)))
    assert tuple(batch["image"].shape) == (2, 2, 12, 12, 9)  # planned in the T1w grid


def test_a_misaligned_cohort_without_reference_keeps_failing_in_the_loader(niftis, tmp_path):
    radi = RadiObject.from_images(tmp_path / "r", niftis, validate_alignment=False, progress=False)
    assert radi.reference is None
    with pytest.raises(AlignmentError, match="channels must share a grid"):
        create_training_dataloader([radi.T1w, radi.FLAIR], batch_size=2)


def test_an_unknown_reference_names_the_collections(niftis, tmp_path):
    with pytest.raises(IngestError, match=r"reference 'T2w' is not one of .*\['FLAIR', 'T1w'\]"):
        RadiObject.from_images(tmp_path / "r", niftis, reference="T2w", progress=False)
    assert not (tmp_path / "r").exists()


def test_every_subject_needs_a_reference_volume(niftis, tmp_path):
    images = {"T1w": niftis["T1w"][:1], "FLAIR": niftis["FLAIR"]}
    with pytest.raises(AlignmentError, match=r"\['sub-b'\] have a 'FLAIR' volume but none"):
        RadiObject.from_images(tmp_path / "r", images, reference="T1w", progress=False)


def test_write_and_add_collection_keep_the_reference(radi, tmp_path):
    copy = radi.select_collections(["T1w", "FLAIR"]).write(tmp_path / "copy")
    assert copy.reference == "T1w"
    assert radi.select_collections(["FLAIR"]).write(tmp_path / "flair").reference is None
    copy.add_collection("PD", radi.PD, progress=False)  # another grid: welcome
    ds = VolumeCollectionDataset([copy.T1w, copy.PD])
    assert ds.refs[0].grid(1) is not None
    assert ds.refs[0].grid(0) is None


def test_predictions_are_written_on_the_reference_grid(radi, tmp_path):
    copy = radi.select_collections(["T1w", "FLAIR"]).write(tmp_path / "c")
    loader = create_inference_dataloader(copy.FLAIR, patch_size=16, overlap=0.25, batch_size=4)
    pred = PredictionWriter(loader, copy, "pred").run(lambda x: torch.cat([x, 100 - x], dim=1))
    assert pred.iloc[0].shape == REF_SHAPE
    np.testing.assert_allclose(pred.iloc[0].affine, T1_AFFINE, atol=1e-9)


def test_add_subject_takes_volumes_on_their_own_grids(radi, tmp_path):
    copy = radi.select_collections(["T1w", "FLAIR"]).write(tmp_path / "c")
    volumes = {"T1w": _smooth(REF_SHAPE, 7), "FLAIR": _smooth(FLAIR_SHAPE, 8)}
    with pytest.raises(AlignmentError, match="needs a volume in the reference collection 'T1w'"):
        copy.add_subject("sub-c", {"FLAIR": volumes["FLAIR"]}, affine=FLAIR_AFFINE)
    copy.add_subject(
        "sub-c", volumes, affine={"T1w": T1_AFFINE, "FLAIR": FLAIR_AFFINE}, obs_meta={}
    )
    ds = VolumeCollectionDataset([copy.T1w, copy.FLAIR])
    (ref,) = [r for r in ds.refs if r.obs_subject_id == "sub-c"]
    assert ref.shape == REF_SHAPE
    assert ref.grid(1) == grid_map(T1_AFFINE, FLAIR_AFFINE, FLAIR_SHAPE)


def test_worker_processes_give_the_same_batches(radi):
    def batches(num_workers: int) -> list[Any]:
        loader = create_segmentation_dataloader(
            [radi.T1w, radi.PD],
            radi.seg,
            batch_size=2,
            patch_size=(8, 8, 8),
            patches_per_volume=2,
            num_workers=num_workers,
            persistent_workers=False,
        )
        return [(b["image"].clone(), b["mask"].clone()) for b in loader]

    inline, workers = batches(0), batches(2)
    assert len(inline) == len(workers) == 2
    for (image, mask), (image2, mask2) in zip(inline, workers, strict=True):
        assert torch.equal(image, image2)
        assert torch.equal(mask, mask2)
