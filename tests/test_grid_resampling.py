"""Reference grids: the resampling maths of a block, in numpy and on a tensor's device.

A collection on another grid than the reference reads the bounding box of a sample's box
mapped into its grid and resamples just that. The answer must be MONAI's: ``ResampleToMatchd``
of the whole volume onto the reference grid, then the same crop; on a tensor, the numpy
values. The loaders on such grids are tested in ``tests/test_grids.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from radiobject.read import grid_map
from tests._grid_helpers import T1_AFFINE, make_affine, smooth


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
    affine = make_affine(columns.tolist(), [-9.7, -11.35, -8.3])
    vol = smooth(shape, 3) if mode == "bilinear" else (smooth(shape, 3) > 60).astype(np.int16)
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
    affine = make_affine(columns.tolist(), [-8.9, -12.15, -7.45])
    linear = mode == "bilinear"
    channels = [smooth(shape, seed) for seed in (5, 6)]
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
    "aligned": (
        T1_AFFINE,
        make_affine([[-1.5, 0, 0], [0, 0, 1.25], [0, 1.2, 0]], [19.3, -9.1, -8.4]),
    ),
    # every point at a whole or half voxel: nearest's ties (to the even voxel)
    "halves": (np.eye(4), make_affine([[2, 0, 0], [0, 2, 0], [0, 0, 2]], [0, 0, 0])),
    "tilted": (
        T1_AFFINE,
        make_affine(_rotation(17.0) @ np.diag([1.3, 1.7, 2.2]), [-8.9, -12.15, -7.45]),
    ),
    "two axes": (
        T1_AFFINE,
        make_affine(_rotation(23.0) @ np.diag([1.1, 1.4, 1.9]) @ _ABOUT_X, [-8.9, -12.15, -7.45]),
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
        channels = [smooth(shape, seed) for seed in range(n)]
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
