"""Sliding-window inference: grid patches read by region, outputs blended and written by slab."""

from __future__ import annotations

import importlib
import socket
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed

import radiobject
from radiobject import RadiObject, VolumeCollection
from radiobject._errors import AlreadyExistsError, ConfigurationError, IngestError, ShapeError
from radiobject.ml import (
    GridPatchDataset,
    PredictionWriter,
    create_inference_dataloader,
    grid_positions,
    importance_map,
)
from radiobject.storage._foreground import MAX_POINTS, compute_foreground

monai_utils = pytest.importorskip("monai.inferers.utils")
from monai.data.utils import compute_importance_map, dense_patch_slices  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402

SHAPE = (40, 36, 30)


@pytest.fixture
def helpers(monkeypatch):
    """tests/_inference_helpers.py, importable by name in spawned ranks too."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    return importlib.import_module("_inference_helpers")


def _volumes(n: int, shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"s{i}": rng.normal(size=shape).astype(np.float32) for i in range(n)}


def _radi(root: Path, n: int = 2, shape: tuple[int, ...] = SHAPE) -> RadiObject:
    img = VolumeCollection.from_numpy(str(root / "img"), _volumes(n, shape), name="T1w")
    return RadiObject.from_collections(str(root / "radi"), {"T1w": img}, progress=False)


def _monai(volume: np.ndarray, model, patch, overlap, mode) -> np.ndarray:
    with torch.no_grad():
        out = sliding_window_inference(
            torch.from_numpy(volume)[None, None],
            roi_size=patch,
            sw_batch_size=4,
            predictor=model,
            overlap=overlap,
            mode=mode,
            sigma_scale=0.125,
        )
    return out[0].numpy()


# -- the grid and the weights are MONAI's -------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "patch", "overlap"),
    [
        (SHAPE, (16, 16, 16), 0.25),
        (SHAPE, (16, 16, 16), 0.5),
        ((97, 64, 33), (32, 16, 33), 0.3),
        ((64, 64, 64), (64, 48, 20), 0.0),
        ((12, 36, 30), (16, 16, 16), 0.5),  # padded along x
    ],
)
def test_grid_is_monais(shape, patch, overlap):
    padded = tuple(max(s, p) for s, p in zip(shape, patch, strict=True))
    pad = [(q - s) // 2 for q, s in zip(padded, shape, strict=True)]
    interval = monai_utils._get_scan_interval(padded, patch, 3, (overlap,) * 3)
    theirs = {
        tuple(s.start - o for s, o in zip(sl, pad, strict=True))
        for sl in dense_patch_slices(padded, patch, interval)
    }
    ours = grid_positions(shape, patch, overlap)
    assert len(ours) == len(theirs)
    assert set(ours) == theirs
    assert [p[2] for p in ours] == sorted(p[2] for p in ours)  # z-major


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("patch", [(16, 16, 16), (7, 12, 5)])
def test_importance_map_is_monais(mode, patch):
    theirs = compute_importance_map(patch, mode=mode, sigma_scale=0.125).numpy()
    np.testing.assert_array_equal(importance_map(patch, mode), theirs)


# -- the output equals MONAI's sliding_window_inference ---------------------------------------
@pytest.mark.parametrize("overlap", [0.25, 0.5])
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_probabilities_and_labels_equal_monai(tmp_path, helpers, overlap, mode):
    radi = _radi(tmp_path)
    model = helpers.tiny_model()
    loader = create_inference_dataloader(radi.T1w, patch_size=16, overlap=overlap, batch_size=5)
    probs = PredictionWriter(loader, radi, "probs", output="probabilities", mode=mode).run(model)
    labels = PredictionWriter(loader, radi, "seg", mode=mode).run(model)
    assert labels.is_mask
    assert not probs.is_mask
    assert probs.obs_subject_ids == labels.obs_subject_ids == radi.T1w.obs_subject_ids
    assert labels.obs_ids == ["s0_seg", "s1_seg"]
    for sid in radi.T1w.obs_subject_ids:
        image = radi.T1w.loc[f"{sid}_T1w"]
        expected = _monai(image.to_numpy(), model, (16, 16, 16), overlap, mode)  # (C, X, Y, Z)
        got = probs.loc[f"{sid}_probs"]
        assert got.shape == (*SHAPE, 4)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got.to_numpy(), np.moveaxis(expected, 0, -1), atol=1e-5)
        mask = labels.loc[f"{sid}_seg"]
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask.to_numpy(), expected.argmax(0))
        np.testing.assert_array_equal(mask.affine, image.affine)
        np.testing.assert_array_equal(got.affine, image.affine)
    # the foreground index, built slab by slab: exact counts, points on their labels
    mask = labels.loc["s0_seg"].to_numpy()
    fg = labels.foreground()["s0_seg"]
    assert fg.counts == compute_foreground(mask).counts
    for label, points in fg.points.items():
        assert 0 < len(points) <= MAX_POINTS
        assert (mask[tuple(points.T)] == label).all()


def test_volume_smaller_than_the_patch_is_padded_as_monai_pads(tmp_path, helpers):
    shape = (12, 36, 30)
    img = VolumeCollection.from_numpy(str(tmp_path / "img"), _volumes(1, shape), name="T1w")
    model = helpers.tiny_model()
    loader = create_inference_dataloader(img, patch_size=16, overlap=0.5, batch_size=4)
    out = PredictionWriter(loader, str(tmp_path / "p"), output="probabilities").run(model)
    expected = _monai(img.iloc[0].to_numpy(), model, (16, 16, 16), 0.5, "constant")
    np.testing.assert_allclose(out.iloc[0].to_numpy(), np.moveaxis(expected, 0, -1), atol=1e-5)


def test_two_channel_input(tmp_path, helpers):
    a = VolumeCollection.from_numpy(str(tmp_path / "a"), _volumes(1, SHAPE, 1), name="A")
    b = VolumeCollection.from_numpy(str(tmp_path / "b"), _volumes(1, SHAPE, 2), name="B")
    model = helpers.tiny_model(in_channels=2)
    loader = create_inference_dataloader([a, b], patch_size=(16, 12, 16), batch_size=4)
    out = PredictionWriter(loader, str(tmp_path / "p"), output="probabilities").run(model)
    both = np.stack([a.iloc[0].to_numpy(), b.iloc[0].to_numpy()])
    with torch.no_grad():
        expected = sliding_window_inference(torch.from_numpy(both)[None], (16, 12, 16), 4, model)
    np.testing.assert_allclose(
        out.iloc[0].to_numpy(), np.moveaxis(expected[0].numpy(), 0, -1), atol=1e-5
    )


# -- loading -----------------------------------------------------------------------------------
def test_each_patch_reads_its_own_box(tmp_path):
    arange = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    coll = VolumeCollection.from_numpy(str(tmp_path / "c"), {"a": arange})
    ds = GridPatchDataset(coll, patch_size=(16, 16, 16), overlap=0.25)
    assert len(ds) == len(grid_positions(SHAPE, 16, 0.25))
    for i in (0, 5, len(ds) - 1):
        item = ds[i]
        x, y, z = item["patch_start"].tolist()
        np.testing.assert_array_equal(
            item["image"][0].numpy(), arange[x : x + 16, y : y + 16, z : z + 16]
        )
        assert int(item["patch_index"]) == i
        assert int(item["volume_index"]) == 0


def test_whole_volumes_stay_the_default(sample_radi):
    batch = next(iter(create_inference_dataloader(sample_radi.T1w)))
    assert tuple(batch["image"].shape) == (1, 1, 32, 32, 24)
    assert "patch_index" not in batch


@pytest.mark.timeout(120)
def test_workers_give_the_same_output(tmp_path, helpers):
    radi = _radi(tmp_path, n=3)
    model = helpers.tiny_model()
    outs = []
    for workers, name in ((0, "p0"), (2, "p2")):
        loader = create_inference_dataloader(
            radi.T1w, patch_size=16, overlap=0.5, batch_size=7, num_workers=workers
        )
        outs.append(PredictionWriter(loader, radi, name, output="probabilities").run(model))
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(180)
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
def test_two_gloo_ranks_write_their_shards_into_one_collection(tmp_path, helpers):
    radi = _radi(tmp_path, n=3)
    init = f"tcp://127.0.0.1:{_free_port()}"
    torch.multiprocessing.spawn(
        helpers.inference_rank, args=(2, init, radi.uri, str(tmp_path)), nprocs=2, join=True
    )
    seen = [(tmp_path / f"rank{r}.txt").read_text().split("\n") for r in range(2)]
    assert [s[0] for s in seen] == ["3", "3"]  # every rank sees the whole collection
    assert seen[0][1:] == ["s0_T1w", "s2_T1w"]
    assert seen[1][1:] == ["s1_T1w"]
    radi = RadiObject(radi.uri)
    pred = radi.pred
    assert pred.obs_ids == ["s0_pred", "s1_pred", "s2_pred"]
    assert pred.obs["volume"].tolist() == ["volumes/00000", "volumes/00001", "volumes/00002"]
    model = helpers.tiny_model()
    for i, sid in enumerate(pred.obs_subject_ids):
        expected = _monai(radi.T1w.loc[f"{sid}_T1w"].to_numpy(), model, (16,) * 3, 0.5, "gaussian")
        np.testing.assert_allclose(pred.iloc[i].to_numpy(), np.moveaxis(expected, 0, -1), atol=1e-5)


def test_distributed_needs_a_process_group(sample_radi):
    with pytest.raises(ConfigurationError, match="init_process_group"):
        create_inference_dataloader(sample_radi.T1w, patch_size=8, distributed=True)
    with pytest.raises(ConfigurationError, match="patch_size"):
        create_inference_dataloader(sample_radi.T1w, distributed=True)
    ds = GridPatchDataset(sample_radi.T1w, 8, rank=1, world_size=2)
    with pytest.raises(ConfigurationError, match="init_process_group"):
        PredictionWriter(ds, str(Path(sample_radi.uri).parent / "never"))


# -- nothing half-written is visible ------------------------------------------------------------
class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_an_error_mid_inference_leaves_no_collection(tmp_path, helpers, error):
    radi = _radi(tmp_path)
    model = helpers.tiny_model()
    loader = create_inference_dataloader(radi.T1w, patch_size=16, batch_size=4)
    calls = []

    def failing(x):
        calls.append(1)
        if len(calls) == 7:  # well into the second volume: the first one is written
            raise error("stop")
        return model(x)

    writer = PredictionWriter(loader, radi, "pred")
    with pytest.raises(error):
        writer.run(failing)
    assert "pred" not in RadiObject(radi.uri)
    assert not (tmp_path / "radi" / "collections" / "pred").exists()
    # the same name can be written afterwards
    assert len(PredictionWriter(loader, radi, "pred").run(model)) == 2


def test_a_with_block_commits_or_aborts(tmp_path, helpers):
    radi = _radi(tmp_path, n=1)
    model = helpers.tiny_model()
    loader = create_inference_dataloader(radi.T1w, patch_size=16, batch_size=4)
    target = str(tmp_path / "alone")

    def write_some() -> None:
        with PredictionWriter(loader, target) as writer:
            for i, batch in enumerate(loader):
                writer.add(batch, model(batch["image"]).detach())
                if i == 2:
                    raise Boom

    with pytest.raises(Boom):
        write_some()
    assert not Path(target).exists()
    with PredictionWriter(loader, target) as writer:
        for batch in loader:
            writer.add(batch, model(batch["image"]).detach())
    assert VolumeCollection(target).obs_ids == ["s0_alone"]


def test_incomplete_output_is_not_committed(tmp_path, helpers):
    radi = _radi(tmp_path, n=1)
    model = helpers.tiny_model()
    loader = create_inference_dataloader(radi.T1w, patch_size=16, batch_size=4)
    writer = PredictionWriter(loader, radi, "pred")
    batch = next(iter(loader))
    writer.add(batch, model(batch["image"]).detach())
    # the half-written collection is in storage but no reader takes it for a collection
    assert "pred" not in RadiObject(radi.uri)
    with pytest.raises(radiobject.IncompleteError, match="did not finish"):
        VolumeCollection(writer.uri).meta  # noqa: B018 - opening it is the test
    with pytest.raises(IngestError, match=f"4 of {len(grid_positions(SHAPE, 16))} patches"):
        writer.commit()
    assert not Path(writer.uri).exists()


# -- bad input ---------------------------------------------------------------------------------
def test_clear_errors(tmp_path, helpers):
    radi = _radi(tmp_path, n=1)
    model = helpers.tiny_model()
    grid = create_inference_dataloader(radi.T1w, patch_size=16, batch_size=4)
    with pytest.raises(ConfigurationError, match="grid loader"):
        PredictionWriter(create_inference_dataloader(radi.T1w), radi, "p")
    with pytest.raises(AlreadyExistsError, match="already has a collection"):
        PredictionWriter(grid, radi, "T1w")
    with pytest.raises(ConfigurationError, match="output must be"):
        PredictionWriter(grid, radi, "p", output="logits")
    with pytest.raises(ConfigurationError, match="mode must be"):
        PredictionWriter(grid, radi, "p", mode="cosine")
    with pytest.raises(ConfigurationError, match="overlap"):
        create_inference_dataloader(radi.T1w, patch_size=16, overlap=1.0)
    batches = list(grid)
    writer = PredictionWriter(grid, radi, "p")
    with pytest.raises(ShapeError, match="prediction must be"):
        writer.add(batches[0], torch.zeros(4, 4, 8, 8, 8))
    with pytest.raises(ConfigurationError, match="grid order"):
        writer.add(batches[1], model(batches[1]["image"]).detach())
    writer.abort()
    one = PredictionWriter(grid, radi, "q")
    with pytest.raises(ConfigurationError, match="2 channels"):
        one.add(batches[0], torch.zeros(4, 1, 16, 16, 16))


# -- memory ----------------------------------------------------------------------------------
def test_memory_is_bounded_by_a_slab_not_the_volume(tmp_path):
    """Python-side peak while writing 4-class probabilities stays far below volume x classes."""
    shape, patch = (48, 48, 192), (16, 16, 16)
    img = VolumeCollection.from_numpy(str(tmp_path / "img"), _volumes(1, shape))
    loader = create_inference_dataloader(img, patch_size=patch, overlap=0.5, batch_size=8)
    batches = list(loader)
    writer = PredictionWriter(loader, str(tmp_path / "p"), output="probabilities")
    tracemalloc.start()
    try:
        for batch in batches:
            writer.add(batch, batch["image"].repeat(1, 4, 1, 1, 1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    writer.commit()
    whole = int(np.prod(shape)) * 4 * 4  # float32 x 4 classes
    # the buffer is one patch deep (16 of 192 planes), the rest is one written slab
    assert peak < whole / 4, (peak, whole)
    np.testing.assert_allclose(writer.collection.iloc[0][..., 2], img.iloc[0].to_numpy(), atol=1e-5)


# -- browsing ------------------------------------------------------------------------------------
def test_written_labels_show_as_a_browser_overlay(tmp_path, helpers):
    pytest.importorskip("ipywidgets")
    from radiobject.widgets import CollectionBrowser

    radi = _radi(tmp_path, n=1)
    loader = create_inference_dataloader(radi.T1w, patch_size=16, batch_size=4)
    PredictionWriter(loader, radi, "pred").run(helpers.tiny_model())
    browser = CollectionBrowser(RadiObject(radi.uri))
    assert ("pred", "pred") in list(browser.mask_picker.options)
    browser.mask = "pred"
    assert browser.collection == "T1w"
    assert not browser.error
