"""The local S3 server of the S3 tests: moto in server mode, on 127.0.0.1, in a subprocess.

TileDB holds the GIL during some calls, so a server thread inside the test process would
deadlock with it. Authentication is enforced (moto's ``reset-auth``), so requests must be
signed by the IAM key created for the session, and wrong credentials are really refused. Its
request log lets a test compare ``TileDBStats`` with the requests the server saw. The
fixtures (``s3_server``, ``s3``, ``cohort``) are in ``conftest.py``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import numpy as np
import pytest

from radiobject import RadiObject, S3Config, VolumeCollection, configure
from radiobject.data import make_sample_radiobject

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


def free_port() -> int:
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


def run_s3_server(folder: Path) -> Iterator[Server]:
    """moto on 127.0.0.1 with a bucket, an IAM key in AWS_* and authentication enforced."""
    log = folder / "requests.log"
    port = free_port()
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


@dataclass
class Cohort:
    uri: str
    local: RadiObject


def write_cohort(s3_server: Server, folder: Path) -> Cohort:
    """The same 3-subject sample cohort written straight to S3 and to a local folder."""
    uri = s3_server.uri("cohort", "radi")
    with configure(s3=s3_server.settings()):
        make_sample_radiobject(uri, n_subjects=3, shape=SHAPE, seed=7, progress=False)
    local_uri = folder / "radi"
    local = make_sample_radiobject(local_uri, n_subjects=3, shape=SHAPE, seed=7, progress=False)
    return Cohort(uri, local)


def same_volumes(a: VolumeCollection, b: VolumeCollection) -> None:
    assert a.obs_ids == b.obs_ids
    for obs_id in a.obs_ids:
        np.testing.assert_array_equal(a.volume(obs_id).to_numpy(), b.volume(obs_id).to_numpy())
        np.testing.assert_allclose(a.volume(obs_id).affine, b.volume(obs_id).affine)
