"""S3: every operation on ``s3://`` URIs, against a real S3 server started on 127.0.0.1.

The server (moto, with authentication enforced) and its fixtures are in ``_s3_server.py``
and ``conftest.py``; the faults are in ``test_s3_faults.py``.
"""

from __future__ import annotations

import pickle
import re
import threading

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import tiledb

from radiobject import (
    AlreadyExistsError,
    CompressionConfig,
    RadiObject,
    RadiObjectConfig,
    ReadConfig,
    ShapeError,
    TileConfig,
    TileDBStats,
    Volume,
    VolumeCollection,
    configure,
    get_tiledb_ctx,
)
from radiobject._context import build_tiledb_config
from radiobject.data import make_sample_radiobject, write_sample_niftis
from radiobject.parallel import map_on_threads

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

pytestmark = pytest.mark.s3

from tests._s3_server import (  # noqa: E402 (after the import checks)
    FAST,
    MIN_PARALLEL_SIZE,
    SHAPE,
    same_volumes,
)

# -- settings ------------------------------------------------------------------------------


def test_s3_settings_reach_tiledb(s3):
    settings = s3.settings(
        max_parallel_ops=32,
        multipart_part_size_mb=100,
        connect_timeout_ms=1234,
        request_timeout_ms=5678,
        connect_max_tries=3,
    )
    with configure(s3=settings):
        cfg = build_tiledb_config()
        assert cfg["vfs.s3.max_parallel_ops"] == "32"
        assert cfg["vfs.s3.multipart_part_size"] == str(100 * 1024 * 1024)
        assert cfg["vfs.s3.endpoint_override"] == s3.endpoint
        assert cfg["vfs.s3.scheme"] == "http"
        assert cfg["vfs.s3.use_virtual_addressing"] == "false"
        assert cfg["vfs.s3.region"] == "us-east-1"
        assert cfg["vfs.s3.connect_timeout_ms"] == "1234"
        assert cfg["vfs.s3.request_timeout_ms"] == "5678"
        assert cfg["vfs.s3.connect_max_tries"] == "3"
        assert get_tiledb_ctx().config()["vfs.s3.max_parallel_ops"] == "32"


# -- round trips ---------------------------------------------------------------------------


def test_sample_cohort_on_s3_equals_the_local_one(s3, cohort):
    radi, local = RadiObject(cohort.uri), cohort.local
    assert repr(radi) == repr(local).replace(local.uri, cohort.uri)
    assert cohort.uri in repr(radi)
    pd.testing.assert_frame_equal(radi.describe(), local.describe())
    pd.testing.assert_frame_equal(radi.obs_meta, local.obs_meta)
    assert radi.collection_names == ["FLAIR", "T1w", "seg"]
    pd.testing.assert_frame_equal(radi.T1w.obs, local.T1w.obs)
    assert radi.filter("age > 40").obs_subject_ids == local.filter("age > 40").obs_subject_ids

    for name in ("T1w", "seg"):
        for obs_id in radi[name].obs_ids:
            remote, here = radi[name].loc[obs_id], local[name].loc[obs_id]
            assert remote.shape == SHAPE
            np.testing.assert_array_equal(remote[3:20, 5:30, 2:9], here[3:20, 5:30, 2:9])
            np.testing.assert_array_equal(remote.axial(11), here.axial(11))
            np.testing.assert_array_equal(remote[-1, 0, :], here[-1, 0, :])
            np.testing.assert_allclose(remote.affine, here.affine)

    fg, fg_local = radi.seg.foreground(), local.seg.foreground()
    assert fg.keys() == fg_local.keys()
    for obs_id, index in fg.items():
        np.testing.assert_array_equal(index.all_points(), fg_local[obs_id].all_points())


def test_from_images_straight_to_s3(s3, tmp_path):
    images, obs_meta = write_sample_niftis(
        tmp_path / "nii", n_subjects=2, shape=SHAPE, modalities=("T1w",), seed=3
    )
    uri = s3.uri("from_images")
    RadiObject.from_images(uri, images, obs_meta=obs_meta, progress=False)

    radi = RadiObject(uri)
    assert radi.collection_names == ["T1w", "seg"]
    assert radi.seg.is_mask
    assert not radi.T1w.is_mask
    pd.testing.assert_frame_equal(radi.obs_meta, obs_meta.reset_index(drop=True))
    for name in radi.collection_names:
        for sid in radi.obs_subject_ids:
            img = nib.load(tmp_path / "nii" / name / f"{sid}_{name}.nii.gz")
            vol = radi[name].loc[f"{sid}_{name}"]
            np.testing.assert_array_equal(vol.to_numpy(), np.asanyarray(img.dataobj))
            np.testing.assert_allclose(vol.affine, img.affine)


def test_write_views_to_and_from_s3(s3, cohort, tmp_path):
    radi = RadiObject(cohort.uri)
    view = radi.select_collections(["T1w", "seg"]).filter("age > 0").iloc[1:2]
    on_s3 = view.write(s3.uri("view"))
    assert RadiObject(on_s3.uri).obs_subject_ids == view.obs_subject_ids
    pd.testing.assert_frame_equal(RadiObject(on_s3.uri).obs_meta, view.obs_meta)
    for name in view.collection_names:
        same_volumes(RadiObject(on_s3.uri)[name], view[name])

    local = RadiObject(cohort.uri).head(2).write(tmp_path / "from_s3")
    assert local.uri == str(tmp_path / "from_s3")
    for name in local.collection_names:
        same_volumes(local[name], cohort.local.head(2)[name])

    # a collection view from local disk to S3
    t1 = cohort.local.T1w.tail(1).write(s3.uri("T1w"))
    same_volumes(VolumeCollection(t1.uri), cohort.local.T1w.tail(1))


def test_existing_target_and_failed_write_leave_s3_clean(s3, cohort):
    with pytest.raises(AlreadyExistsError, match=re.escape(cohort.uri)):
        make_sample_radiobject(cohort.uri, n_subjects=1, shape=SHAPE, progress=False)

    uri = s3.uri("broken")
    arrays = {"a": np.zeros(SHAPE, np.float32), "b": np.zeros((2, 2), np.float32)}
    with pytest.raises(ShapeError, match="3D or 4D"):
        VolumeCollection.from_numpy(uri, arrays, progress=False)
    assert s3.keys(uri) == []  # the first volume was written, then removed


# -- loaders -------------------------------------------------------------------------------


def _batches(loader) -> list[dict]:
    return [dict(b) for b in loader]


def _assert_same_batches(got: list[dict], expected: list[dict]) -> None:
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected, strict=True):
        assert a["obs_id"] == b["obs_id"]
        for key in ("image", "patch_start", "label", "mask"):
            if key in b:
                np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_training_loader_over_s3(s3, cohort, num_workers):
    from radiobject.ml import create_training_dataloader

    kwargs = {"labels": "diagnosis", "batch_size": 2, "patch_size": (16, 16, 16), "seed": 5}
    radi = RadiObject(cohort.uri)
    loader = create_training_dataloader(
        [radi.T1w, radi.FLAIR], patches_per_volume=2, num_workers=num_workers, **kwargs
    )
    if num_workers:
        assert loader.worker_init_fn.config.s3.endpoint == s3.endpoint
        assert s3.secret not in repr(loader.worker_init_fn)
    expected = create_training_dataloader(
        [cohort.local.T1w, cohort.local.FLAIR], patches_per_volume=2, **kwargs
    )
    _assert_same_batches(_batches(loader), _batches(expected))


def test_s3_volumes_are_read_ahead_and_stopping_mid_epoch_leaks_nothing(s3, cohort):
    """S3 volumes get ReadConfig.remote_read_ahead by default; stopping cancels it cleanly."""
    import gc

    from radiobject.ml import create_training_dataloader
    from radiobject.ml._read_ahead import ahead_state

    radi = RadiObject(cohort.uri)
    loader = create_training_dataloader(
        radi.T1w, batch_size=1, patch_size=(16, 16, 16), patches_per_volume=4, seed=2
    )
    assert loader.dataset.remote

    def settled(state) -> None:
        """Wait until the reads started ahead are done (they run on the state's pool)."""
        with state.lock:
            while state.running:
                state.idle.wait()

    it = iter(loader)
    next(it)
    state = ahead_state(loader.dataset)
    assert state is not None
    for _ in it:  # a whole epoch, each batch taken after the reads ahead of it finished
        settled(state)
    assert state.served > 0  # so the later samples were taken from the read-ahead
    settled(state)  # the next epoch's first batches may still be on their way
    state.pool.join_idle()
    gc.collect()
    baseline = threading.active_count()
    for _ in range(2):
        it = iter(loader)
        next(it)
        del it
        gc.collect()
        assert len(state) == 0
        assert state.nbytes == 0
        assert state.running == 0
        assert threading.active_count() == baseline


@pytest.mark.parametrize("num_workers", [0, 2])
def test_segmentation_loader_with_foreground_sampling_over_s3(s3, cohort, num_workers):
    from radiobject.ml import create_segmentation_dataloader

    kwargs = {
        "batch_size": 3,
        "patch_size": (8, 8, 8),
        "foreground_sampling": True,
        "foreground_probability": 1.0,
        "seed": 3,
    }
    radi = RadiObject(cohort.uri)
    got = _batches(
        create_segmentation_dataloader(radi.T1w, radi.seg, num_workers=num_workers, **kwargs)
    )
    expected = _batches(
        create_segmentation_dataloader(cohort.local.T1w, cohort.local.seg, **kwargs)
    )
    _assert_same_batches(got, expected)
    tumour = set(radi.obs_meta.query("diagnosis == 'tumour'")["obs_subject_id"])
    for batch in got:
        for i, obs_id in enumerate(batch["obs_id"]):
            if obs_id.rsplit("_", 1)[0] in tumour:  # a patch centred on the tumour holds some
                assert batch["mask"][i].sum() > 0


@pytest.mark.parametrize("num_workers", [0, 1])
def test_the_context_a_user_passes_reaches_every_read(s3_server, cohort, num_workers):
    """Only the user's context knows the server: loaders and their workers read with it."""
    from radiobject.ml import create_segmentation_dataloader

    configure(s3=FAST)  # the settings in force know no such server (and fail fast)
    ctx = tiledb.Ctx(build_tiledb_config(RadiObjectConfig(s3=s3_server.settings())))
    radi = RadiObject(cohort.uri, ctx=ctx)
    kwargs = {"batch_size": 2, "patch_size": (8, 8, 8), "seed": 4}
    got = create_segmentation_dataloader(radi.T1w, radi.seg, num_workers=num_workers, **kwargs)
    expected = create_segmentation_dataloader(cohort.local.T1w, cohort.local.seg, **kwargs)
    _assert_same_batches(_batches(got), _batches(expected))
    # collections travel with it (its settings, never its secrets in a repr)
    again = pickle.loads(pickle.dumps(radi.T1w))
    assert again.ctx.config()["vfs.s3.endpoint_override"] == s3_server.endpoint
    np.testing.assert_array_equal(again.iloc[0].to_numpy(), cohort.local.T1w.iloc[0].to_numpy())


def test_torchio_subjects_read_with_the_users_context(s3_server, cohort):
    pytest.importorskip("torchio")
    from radiobject.ml import VolumeCollectionSubjectsDataset

    configure(s3=FAST)
    settings = s3_server.settings(
        aws_access_key_id=s3_server.key_id, aws_secret_access_key=s3_server.secret
    )
    ctx = tiledb.Ctx(build_tiledb_config(RadiObjectConfig(s3=settings)))
    dataset = VolumeCollectionSubjectsDataset(RadiObject(cohort.uri, ctx=ctx).T1w)
    local = cohort.local.T1w
    for subjects in (dataset, pickle.loads(pickle.dumps(dataset))):
        subject = subjects[0]
        np.testing.assert_array_equal(
            subject["T1w"].data[0].numpy(), local.loc[subject["obs_id"]].to_numpy()
        )
    reader = dataset._subjects[0]["T1w"].reader
    assert s3_server.secret not in repr(reader)


# -- statistics ----------------------------------------------------------------------------


def test_s3_stats_count_the_requests_the_server_saw(s3, cohort):
    # new S3 settings make a new context, so nothing is open or cached yet; no block cache
    configure(s3=s3.settings(connect_timeout_ms=2999), read=ReadConfig(cache_mb=0))
    volumes = list(RadiObject(cohort.uri).T1w)
    start = len(s3.request_lines())
    with TileDBStats() as stats:
        for vol in volumes:
            vol.to_numpy()
    io = stats.s3_stats()
    seen = s3.requests_since(start)
    gets = [ln for ln in seen if '"GET ' in ln and "list-type=" not in ln]
    heads = [ln for ln in seen if '"HEAD ' in ln]
    # size and existence checks are one HEAD each; a read is one ranged GET unless TileDB's
    # read-ahead cache holds it already (small metadata reads)
    assert io.requests - io.read_ops == len(heads) > 0
    assert 0 < len(gets) <= io.read_ops
    assert io.bytes_read > 0
    assert io.parallelized_reads == 0  # one volume at a time
    assert io.parallelization_rate == 0.0

    # noise volumes of 1 MiB: reads long enough to be in flight together
    rng = np.random.default_rng(3)
    noisy = [
        Volume.from_numpy(s3.uri(f"noise-{i}"), rng.random((64, 64, 64), dtype=np.float32))
        for i in range(3)
    ]
    with TileDBStats() as threaded:
        map_on_threads(lambda v: v.to_numpy(), noisy * 2, max_workers=3)
    io = threaded.s3_stats()
    assert io.read_ops > 0
    # queries that overlapped another (one or more TileDB reads each, with the cache off)
    assert 0 < io.parallelized_reads <= io.queries <= io.read_ops
    assert 0.0 < io.parallelization_rate <= 1.0


def test_max_parallel_ops_splits_a_large_read(s3):
    data = np.random.default_rng(0).random((256, 256, 84), dtype=np.float32)  # 21 MiB
    uri = s3.uri("large")
    Volume.from_numpy(
        uri, data, tile=TileConfig(extents=data.shape), compression=CompressionConfig("none")
    )
    read_ops = {}
    for ops in (1, 8):
        configure(s3={"max_parallel_ops": ops}, read=ReadConfig(cache_mb=0))
        with TileDBStats() as stats:
            np.testing.assert_array_equal(Volume(uri).to_numpy(), data)
        read_ops[ops] = stats.s3_stats().read_ops
    # the one data read of 21 MiB goes out as 2 ranged GETs of >= 10 MiB with 8 connections
    assert read_ops[8] - read_ops[1] == data.nbytes // MIN_PARALLEL_SIZE - 1
