"""Shared fixtures: small arange volumes that prove where a read came from, sample cohorts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import radiobject
from radiobject.data import make_sample_radiobject

SMALL = (32, 32, 24)


@pytest.fixture(autouse=True)
def _reset_config():
    """Every test starts and ends with default settings."""
    radiobject.reset_config()
    yield
    radiobject.reset_config()


def arange_volume(shape: tuple[int, ...] = SMALL, dtype: str = "float32") -> np.ndarray:
    """Voxel value = its flat index, so a read shows exactly where it came from."""
    return np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)


@pytest.fixture
def arange() -> np.ndarray:
    return arange_volume()


@pytest.fixture(scope="session")
def sample_radi(tmp_path_factory: pytest.TempPathFactory) -> radiobject.RadiObject:
    """A 6-subject sample cohort (T1w, FLAIR, seg) of 32x32x24 volumes, shared read-only."""
    uri = tmp_path_factory.mktemp("cohort") / "radi"
    return make_sample_radiobject(str(uri), n_subjects=6, shape=SMALL, seed=7, progress=False)


@pytest.fixture
def new_uri(tmp_path: Path) -> str:
    return str(tmp_path / "target")


@pytest.fixture(scope="module")
def dask_executor():
    """An executor on a local Dask cluster: 2 worker processes of 1 thread, on 127.0.0.1.

    The workers start without the AWS credentials of this process's environment: whatever
    they need must travel with the tasks, as on a real cluster.
    """
    distributed = pytest.importorskip("distributed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")  # workers never probe for credentials
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        cluster = distributed.LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            dashboard_address=None,
            host="127.0.0.1",
        )
    with cluster, distributed.Client(cluster) as client:
        yield client.get_executor()


# -- the local S3 server (tests/_s3_server.py), started once, for the tests marked s3 -------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """moto on 127.0.0.1 with a bucket, an IAM key in AWS_* and authentication enforced."""
    pytest.importorskip("boto3")
    pytest.importorskip("moto")
    from tests._s3_server import run_s3_server

    yield from run_s3_server(tmp_path_factory.mktemp("moto"))


@pytest.fixture
def s3(s3_server):
    """The S3 server, configured as the process default for this test."""
    radiobject.configure(s3=s3_server.settings())
    return s3_server


@pytest.fixture(scope="session")
def cohort(s3_server, tmp_path_factory: pytest.TempPathFactory):
    """The same 3-subject sample cohort written straight to S3 and to a local folder."""
    from tests._s3_server import write_cohort

    return write_cohort(s3_server, tmp_path_factory.mktemp("cohort-local"))
