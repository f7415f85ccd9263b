"""S3 faults and S3 from a Dask cluster, against the local S3 server (``_s3_server.py``).

Every fault must fail fast with a radiobject error that names the URI and the setting to
check, never hang, and never show a secret.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from radiobject import (
    IngestError,
    NotFoundError,
    RadiObject,
    S3Error,
    Volume,
    configure,
)
from radiobject.data import make_sample_radiobject, write_sample_niftis

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

pytestmark = pytest.mark.s3

from tests._s3_server import (  # noqa: E402 (after the import checks)
    BUCKET,
    FAST,
    SHAPE,
    free_port,
    same_volumes,
)

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
    port = free_port()  # nothing listens there
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
        same_volumes(radi[name], local[name])
    assert radi.seg.foreground().keys() == local.seg.foreground().keys()

    # a file that breaks on a worker: a clear error naming it, and nothing left on S3
    victim = Path(images["T1w"]).parent / "sub-001_T1w.nii.gz"
    victim.write_bytes(victim.read_bytes()[:-200])  # the header reads, the voxels do not
    broken = s3.uri("dask", "broken")
    with pytest.raises(IngestError, match=r"cannot read NIfTI file .*sub-001_T1w\.nii\.gz"):
        RadiObject.from_images(broken, images, progress=False, executor=dask_executor)
    assert s3.keys(broken) == []
