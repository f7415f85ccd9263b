"""S3: every operation on ``s3://`` URIs, against a real S3 server started on 127.0.0.1.

The server is moto in server mode, in a subprocess: TileDB holds the GIL during some calls,
so a server thread inside the test process would deadlock with it. Authentication is
enforced (moto's ``reset-auth``), so requests must be signed by the IAM key created for the
session, and wrong credentials are really refused. Its request log lets a test compare
``TileDBStats`` with the requests the server saw.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import tiledb

from radiobject import (
    AlreadyExistsError,
    CompressionConfig,
    IngestError,
    NotFoundError,
    RadiObject,
    RadiObjectConfig,
    ReadConfig,
    S3Config,
    S3Error,
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

SHAPE = (32, 32, 24)
BUCKET = "radiobject-test"
# short timeouts for the fault tests: a fault must fail fast, never hang
FAST = {"connect_timeout_ms": 300, "request_timeout_ms": 1000, "connect_max_tries": 1}
# TileDB splits one read into parts of at least vfs.min_parallel_size (10 MiB by default)
MIN_PARALLEL_SIZE = 10 * 1024 * 1024


@dataclass
class Server:
    """The local S3 server of the test session."""

    endpoint: str
    log: Path
    key_id: str
    secret: str
    process: subprocess.Popen

    def uri(self, *parts: str) -> str:
        """A fresh ``s3://`` prefix in the test bucket."""
        return "/".join([f"s3://{BUCKET}", uuid.uuid4().hex[:8], *parts])

    def settings(self, **changes: object) -> S3Config:
        base = {
            "endpoint": self.endpoint,
            "scheme": "http",
            "use_virtual_addressing": False,
            "region": "us-east-1",
        }
        return S3Config(**{**base, **changes})

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
        )

    def keys(self, uri: str) -> list[str]:
        prefix = uri[len(f"s3://{BUCKET}/") :]
        found = self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return [o["Key"] for o in found.get("Contents", [])]

    def request_lines(self) -> list[str]:
        """The requests the server logged so far (one line each)."""
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log.read_text(errors="replace"))  # colours
        return [ln for ln in text.splitlines() if re.search(r'"(GET|HEAD|PUT|POST|DELETE) ', ln)]

    def requests_since(self, start: int) -> list[str]:
        """Requests logged after the first ``start``: every request answered so far.

        No waiting for the log to go quiet: the server (werkzeug) logs a request in
        ``send_response``, before the status line goes out, and unbuffered (PYTHONUNBUFFERED),
        so a request whose answer the client has received is in the log already.
        """
        return self.request_lines()[start:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(url: str, data: bytes | None = None) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "text/plain"})
    with opener.open(request, timeout=5) as response:
        return response.read()


def _wait_ready(endpoint: str, process: subprocess.Popen) -> None:
    for _ in range(150):
        if process.poll() is not None:
            raise RuntimeError(f"the moto server exited with code {process.returncode}")
        try:
            _http(f"{endpoint}/moto-api/data.json")
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the moto server at {endpoint} did not start within 15 s")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """moto on 127.0.0.1 with a bucket, an IAM key in AWS_* and authentication enforced."""
    log = tmp_path_factory.mktemp("moto") / "requests.log"
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**os.environ, "AWS_EC2_METADATA_DISABLED": "true", "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        _wait_ready(endpoint, process)
        # before authentication is on, any key may set up the account
        admin = {"aws_access_key_id": "admin", "aws_secret_access_key": "admin-setup"}
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **admin)
        iam.create_user(UserName="radiobject")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName="radiobject", PolicyName="s3", PolicyDocument=json.dumps(policy)
        )
        key = iam.create_access_key(UserName="radiobject")["AccessKey"]
        server = Server(endpoint, log, key["AccessKeyId"], key["SecretAccessKey"], process)
        server.client().create_bucket(Bucket=BUCKET)
        _http(f"{endpoint}/moto-api/reset-auth", b"0")  # from now on every request is checked
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ACCESS_KEY_ID", server.key_id)
            mp.setenv("AWS_SECRET_ACCESS_KEY", server.secret)
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
            mp.delenv("AWS_SESSION_TOKEN", raising=False)
            mp.delenv("AWS_PROFILE", raising=False)
            yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def s3(s3_server: Server) -> Server:
    """The S3 server, configured as the process default for this test."""
    configure(s3=s3_server.settings())
    return s3_server


@dataclass
class Cohort:
    uri: str
    local: RadiObject


@pytest.fixture(scope="session")
def cohort(s3_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    """The same 3-subject sample cohort written straight to S3 and to a local folder."""
    uri = s3_server.uri("cohort", "radi")
    with configure(s3=s3_server.settings()):
        make_sample_radiobject(uri, n_subjects=3, shape=SHAPE, seed=7, progress=False)
    local_uri = tmp_path_factory.mktemp("cohort-local") / "radi"
    local = make_sample_radiobject(local_uri, n_subjects=3, shape=SHAPE, seed=7, progress=False)
    return Cohort(uri, local)


def _same_volumes(a: VolumeCollection, b: VolumeCollection) -> None:
    assert a.obs_ids == b.obs_ids
    for obs_id in a.obs_ids:
        np.testing.assert_array_equal(a.volume(obs_id).to_numpy(), b.volume(obs_id).to_numpy())
        np.testing.assert_allclose(a.volume(obs_id).affine, b.volume(obs_id).affine)


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
        _same_volumes(RadiObject(on_s3.uri)[name], view[name])

    local = RadiObject(cohort.uri).head(2).write(tmp_path / "from_s3")
    assert local.uri == str(tmp_path / "from_s3")
    for name in local.collection_names:
        _same_volumes(local[name], cohort.local.head(2)[name])

    # a collection view from local disk to S3
    t1 = cohort.local.T1w.tail(1).write(s3.uri("T1w"))
    _same_volumes(VolumeCollection(t1.uri), cohort.local.T1w.tail(1))


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
    for _ in loader:  # a whole epoch: what was read ahead was used
        pass
    state = ahead_state(loader.dataset)
    assert state is not None
    assert state.served > 0
    with state.lock:  # the next epoch's first batches may still be on their way
        while state.running:
            state.idle.wait()
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


# -- faults --------------------------------------------------------------------------------


# the messages TileDB 2.30 gives for each fault (shortened), as seen against moto
TILEDB_FAULTS = [
    ("curlCode: 7, Could not connect to server", S3Error, "cannot connect"),
    ("curlCode: 28, Timeout was reached", S3Error, "did not answer"),
    (
        "[HTTP Response Code: 404] [Exception: NoSuchBucket] : bucket does not exist",
        NotFoundError,
        "bucket 'b' does not exist",
    ),
    (
        "[HTTP Response Code: 403] [Exception: SignatureDoesNotMatch] : no",
        S3Error,
        "refused the credentials",
    ),
    (
        "[HTTP Response Code: 403] [Exception: InvalidAccessKeyId] : no",
        S3Error,
        "InvalidAccessKeyId",
    ),
]


@pytest.mark.parametrize(("detail", "kind", "match"), TILEDB_FAULTS)
def test_s3_failures_name_the_uri_and_the_setting(detail, kind, match, monkeypatch):
    from radiobject._tiledb_errors import translate_tiledb_error

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "verbatim-secret-42")
    message = (
        "S3: Error while listing with prefix 's3://b/k/__schema/' [Error Type: 99] "
        "[Remote IP: 127.0.0.1] [Headers: 'server' = 'x'] " + detail + " verbatim-secret-42"
    )
    err = translate_tiledb_error(Exception(message), "s3://b/k", "open volume")
    assert type(err) is kind
    assert re.search(match, str(err))
    assert "'s3://b/k'" in str(err)
    assert "S3Config(" in str(err) or "AWS_ACCESS_KEY_ID" in str(err)
    assert "verbatim-secret-42" not in str(err)
    assert "Headers" not in str(err)


def _fails_fast(error: type[Exception], match: str, fn, limit: float = 15.0) -> str:
    start = time.monotonic()
    with pytest.raises(error, match=match) as info:
        fn()
    assert time.monotonic() - start < limit
    return str(info.value)


def test_endpoint_down(s3_server):
    port = _free_port()  # nothing listens there
    configure(s3=s3_server.settings(endpoint=f"http://127.0.0.1:{port}", **FAST))
    uri = f"s3://{BUCKET}/down/radi"
    msg = _fails_fast(S3Error, "cannot connect", lambda: RadiObject(uri))
    assert uri in msg
    assert f"127.0.0.1:{port}" in msg
    assert "S3Config(endpoint=" in msg
    msg = _fails_fast(S3Error, "cannot connect", lambda: Volume(uri).to_numpy())
    assert uri in msg


def test_bucket_missing(s3):
    configure(s3=s3.settings(**FAST))
    uri = "s3://no-such-bucket/radi"
    missing = "bucket 'no-such-bucket' does not exist"
    msg = _fails_fast(NotFoundError, missing, lambda: RadiObject(uri))
    assert uri in msg
    assert "S3Config(endpoint=" in msg

    def write() -> None:
        make_sample_radiobject(uri, n_subjects=1, shape=SHAPE, progress=False)

    _fails_fast(NotFoundError, missing, write)


def test_wrong_credentials_are_refused_without_showing_them(s3, cohort, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "WRONG-secret-0123456789abcdef"
    settings = s3.settings(aws_access_key_id=s3.key_id, aws_secret_access_key=wrong, **FAST)
    configure(s3=settings)
    msg = _fails_fast(S3Error, "refused the credentials", lambda: RadiObject(cohort.uri))
    assert cohort.uri in msg
    assert "AWS_SECRET_ACCESS_KEY" in msg
    assert "SignatureDoesNotMatch" in msg

    unknown = s3.settings(aws_access_key_id="AKIAUNKNOWN000000000", aws_secret_access_key=wrong)
    configure(s3=unknown)
    msg2 = _fails_fast(S3Error, "InvalidAccessKeyId", lambda: Volume(cohort.uri).shape)

    for text in (msg, msg2, repr(settings), repr(unknown), caplog.text):
        assert wrong not in text
        assert s3.secret not in text
    assert "aws_secret_access_key='***'" in repr(settings)


def test_credentials_from_the_environment_never_shown(s3, cohort, monkeypatch):
    radi = RadiObject(cohort.uri)
    for text in (repr(radi), radi._repr_html_(), repr(s3.settings()), repr(radi.T1w)):
        assert s3.secret not in text
        assert s3.key_id not in text
    bad = "env-WRONG-secret-9876543210"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad)
    configure(s3=s3.settings(**FAST))  # new settings, new context: it reads the environment
    msg = _fails_fast(S3Error, "refused the credentials", lambda: RadiObject(cohort.uri))
    assert bad not in msg
    assert s3.secret not in msg


class _SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""

    def __enter__(self) -> int:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.accepted: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()
        return self.listener.getsockname()[1]

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                self.accepted.append(self.listener.accept()[0])
            except TimeoutError:
                continue

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.listener.close()
        for conn in self.accepted:
            conn.close()


def test_request_that_never_answers_times_out(s3_server):
    with _SilentServer() as port:
        configure(s3=s3_server.settings(endpoint=f"http://127.0.0.1:{port}", **FAST))
        uri = f"s3://{BUCKET}/slow/radi"
        msg = _fails_fast(S3Error, "did not answer", lambda: RadiObject(uri), limit=20)
    assert uri in msg
    assert "request_timeout_ms=1000" in msg
    assert "connect_max_tries=1" in msg


# -- ingest on a Dask cluster --------------------------------------------------------------


def test_ingest_on_a_dask_cluster_into_s3(s3, dask_executor, tmp_path):
    images, obs_meta = write_sample_niftis(tmp_path / "nifti", n_subjects=3, shape=SHAPE, seed=7)
    # the workers have no credentials of their own: these travel with every task
    configure(s3=s3.settings(aws_access_key_id=s3.key_id, aws_secret_access_key=s3.secret))
    uri = s3.uri("dask", "radi")
    radi = RadiObject.from_images(
        uri, images, obs_meta=obs_meta, progress=False, executor=dask_executor
    )
    local = RadiObject.from_images(tmp_path / "local", images, obs_meta=obs_meta, progress=False)
    assert repr(RadiObject(uri)) == repr(local).replace(local.uri, uri)
    pd.testing.assert_frame_equal(radi.obs_meta, local.obs_meta)
    for name in local.collection_names:
        pd.testing.assert_frame_equal(radi[name].obs, local[name].obs)
        _same_volumes(radi[name], local[name])
    assert radi.seg.foreground().keys() == local.seg.foreground().keys()

    # a file that breaks on a worker: a clear error naming it, and nothing left on S3
    victim = Path(images["T1w"]).parent / "sub-001_T1w.nii.gz"
    victim.write_bytes(victim.read_bytes()[:-200])  # the header reads, the voxels do not
    broken = s3.uri("dask", "broken")
    with pytest.raises(IngestError, match=r"cannot read NIfTI file .*sub-001_T1w\.nii\.gz"):
        RadiObject.from_images(broken, images, progress=False, executor=dask_executor)
    assert s3.keys(broken) == []
