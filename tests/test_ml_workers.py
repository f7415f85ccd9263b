"""DataLoader worker processes: safe start method, determinism, settings, persistence.

Each test here starts worker processes (a few seconds each), so they are few.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from radiobject import ReadConfig, configure, get_config
from radiobject.ml import (
    EpochSampler,
    VolumeCollectionDataset,
    create_training_dataloader,
    default_start_method,
    worker_init,
)
from radiobject.ml._workers import _preload_modules

pytestmark = pytest.mark.slow


@pytest.fixture
def helpers(monkeypatch):
    """tests/_ml_helpers.py, importable by name in spawned and forkserver workers too."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    return importlib.import_module("_ml_helpers")


def keys_of(loader, epochs):
    return [
        [
            (obs_id, tuple(start.tolist()))
            for batch in loader
            for obs_id, start in zip(batch["obs_id"], batch["patch_start"], strict=True)
        ]
        for _ in range(epochs)
    ]


@pytest.mark.timeout(120)
def test_two_persistent_workers_run_epochs_like_the_main_process(sample_radi):
    def make(num_workers):
        return create_training_dataloader(
            sample_radi.T1w,
            labels="diagnosis",
            batch_size=4,
            patch_size=(8, 8, 8),
            patches_per_volume=2,
            seed=9,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
        )

    loader = make(2)
    assert loader.num_workers == 2
    assert loader.persistent_workers
    # forkserver: a clean server process (fork only where forkserver workers cannot start)
    assert loader.multiprocessing_context.get_start_method() == default_start_method()

    with_workers = keys_of(loader, epochs=3)
    in_process = keys_of(make(0), epochs=3)
    assert [len(e) for e in with_workers] == [12, 12, 12]  # 6 volumes x 2 patches
    assert with_workers == in_process  # same seed, same samples, whatever num_workers is
    assert with_workers[0] != with_workers[1] != with_workers[2]
    for epoch in with_workers:
        assert sorted({obs for obs, _ in epoch}) == sample_radi.T1w.obs_ids


@pytest.mark.timeout(120)
def test_parent_settings_and_a_cache_share_reach_the_workers(sample_radi, helpers):
    configure(read=ReadConfig(max_workers=3, cache_mb=64))
    dataset = helpers.ConfigProbeDataset(
        sample_radi.T1w, transform=lambda s: {**s, "image": s["image"] + 1}
    )
    # the documented path for a subclass: DataLoader + EpochSampler + worker_init
    loader = DataLoader(
        dataset,
        batch_size=2,
        sampler=EpochSampler(dataset, shuffle=False),
        num_workers=2,
        multiprocessing_context=default_start_method(),
        worker_init_fn=worker_init(get_config(), num_workers=2),
        persistent_workers=True,
    )
    pids = []
    for _ in range(2):
        epoch_pids = set()
        for batch in loader:
            assert batch["max_workers"].tolist() == [3, 3]
            assert batch["cache_mb"].tolist() == [64, 64]
            # the 64 MiB budget is for the loader: each of 2 workers gets half
            assert batch["cache_bytes"].tolist() == [32 * 1024 * 1024] * 2
            for image, obs_id in zip(batch["image"], batch["obs_id"], strict=True):
                stored = sample_radi.T1w.loc[obs_id].to_numpy()
                np.testing.assert_array_equal(image[0].numpy(), stored + 1)  # lambda ran
            epoch_pids |= set(batch["pid"].tolist())
        pids.append(epoch_pids)
    assert os.getpid() not in pids[0]
    assert len(pids[0]) == 2
    assert pids[0] == pids[1]  # persistent: the same two workers served both epochs
    # in this process the budget is whole
    sample = dataset[0]
    assert sample["cache_bytes"] == 64 * 1024 * 1024
    assert sample["pid"] == os.getpid()
    stored = sample_radi.T1w.loc[sample["obs_id"]].to_numpy()
    np.testing.assert_array_equal(sample["image"][0].numpy(), stored + 1)


def test_workers_preload_what_unpickling_the_dataset_imports(sample_radi, helpers):
    """The fork server imports the transform's library once, not every worker on its own."""
    monai = pytest.importorskip("monai.transforms")
    dataset = helpers.ConfigProbeDataset(
        sample_radi.T1w, transform=monai.Compose([monai.NormalizeIntensityd(keys="image")])
    )
    names = _preload_modules(dataset)
    assert names[:3] == ["torch", "numpy", "radiobject.ml"]
    assert "_ml_helpers" in names
    assert "monai.transforms.compose" in names
    assert _preload_modules(VolumeCollectionDataset(sample_radi.T1w)) == names[:3]
    lambda_transform = VolumeCollectionDataset(sample_radi.T1w, transform=lambda s: s)
    assert "builtins" not in _preload_modules(lambda_transform)


# A child forked after TileDB was used must never free its parent's TileDB objects: it keeps
# (leaks) the parent's contexts and handles and builds its own. Reader threads pass the
# handle's context to every Subarray, so no thread holds TileDB's default context across fork.
# radiobject's loaders fork their workers where forkserver cannot start them
# (tests/test_ml_start_method.py forks while every thread is busy); this is a bare os.fork.
FORK_AFTER_THREADED_READS = """
import os, sys, time, warnings
from concurrent.futures import ThreadPoolExecutor
warnings.simplefilter("ignore")
from radiobject import RadiObject, Volume
radi = RadiObject(sys.argv[1])
uris = [radi.T1w.volume_uri(o) for o in radi.T1w.obs_ids]
pool = ThreadPoolExecutor(2)  # reader threads that stay alive, like radiobject's own
list(pool.map(lambda uri: Volume(uri).to_numpy(), uris))
pid = os.fork()
if pid == 0:
    Volume(uris[0]).to_numpy()
    os._exit(0)
deadline = time.monotonic() + 8
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("child exit code", os.waitstatus_to_exitcode(status))
        sys.exit(0)
    time.sleep(0.05)
os.kill(pid, 9)
os.waitpid(pid, 0)
print("child hung")
"""


@pytest.mark.timeout(60)
def test_a_plain_fork_child_can_read_after_threaded_reads(sample_radi):
    result = subprocess.run(
        [sys.executable, "-c", FORK_AFTER_THREADED_READS, sample_radi.uri],
        capture_output=True,
        text=True,
        timeout=50,
        check=True,
    )
    assert result.stdout.strip() == "child exit code 0"


@pytest.mark.timeout(120)
def test_a_loader_with_workers_starts_no_queue_feeder_thread(sample_radi):
    """Indices go to the workers written by the loading thread: no feeder thread per queue."""
    import threading

    def feeders():
        return sum(t.name == "QueueFeederThread" for t in threading.enumerate())

    before = feeders()
    loader = create_training_dataloader(
        sample_radi.T1w, batch_size=2, patch_size=(8, 8, 8), patches_per_volume=2, num_workers=2
    )
    for _ in range(2):
        assert len([b["image"] for b in loader]) == 6  # 6 volumes x 2 patches, by 2
    assert feeders() == before  # a multiprocessing.Queue would have one per worker
    assert sum(q.direct_puts for q in loader._iterator._index_queues) >= 12


@pytest.mark.timeout(120)
def test_workers_share_whole_volumes_instead_of_each_reading_them(sample_radi):
    """Many patches per volume: each volume is read from storage about once for all workers."""
    from radiobject.ml import loader_cache_counters

    kwargs = {"batch_size": 4, "patch_size": (16, 16, 16), "patches_per_volume": 16, "seed": 3}
    single = create_training_dataloader(sample_radi.T1w, **kwargs)
    expected = [b["image"] for b in single]
    loader = create_training_dataloader(sample_radi.T1w, num_workers=2, **kwargs)
    got = [b["image"] for b in loader]
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)  # same voxels, whichever process read the volume
    counters = loader_cache_counters(loader)
    stored = sample_radi.T1w.volume(sample_radi.T1w.obs_ids[0]).stored_dtype
    volume_bytes = int(np.prod(sample_radi.T1w.shape)) * stored.itemsize  # as stored
    n_volumes = len(sample_radi.T1w)
    # without sharing, both workers would read every volume (2 x n_volumes)
    assert counters.bytes_from_storage <= 1.5 * n_volumes * volume_bytes
    assert counters.bytes_from_storage >= n_volumes * volume_bytes
    shm = loader.worker_init_fn.shared.shm_dir
    assert os.path.isdir(shm)
    assert any(name.endswith(".npy") for name in os.listdir(shm))


@pytest.mark.timeout(120)
def test_the_context_a_user_passes_reads_in_the_main_process_and_in_workers(sample_radi, helpers):
    """RadiObject(uri, ctx=custom): every read of its datasets uses custom's settings."""
    import tiledb

    from radiobject import RadiObject, get_tiledb_ctx

    custom = tiledb.Ctx({"sm.compute_concurrency_level": "3", "sm.io_concurrency_level": "3"})
    assert get_tiledb_ctx().config()["sm.compute_concurrency_level"] != "3"
    radi = RadiObject(sample_radi.uri, ctx=custom)
    dataset = helpers.ContextProbeDataset([radi.T1w, radi.FLAIR])
    sample = dataset[1]  # main process: custom itself opens the volumes
    assert all(c.ctx is custom for c in dataset.collections)
    assert "3" in sample["read_concurrency"].split(",")
    loader = DataLoader(
        dataset,
        batch_size=2,
        sampler=EpochSampler(dataset, shuffle=False),
        num_workers=1,
        multiprocessing_context=default_start_method(),
        worker_init_fn=worker_init(get_config(), num_workers=1),
    )
    for batch in loader:
        assert os.getpid() not in batch["pid"].tolist()
        # in the worker, only a context with custom's settings opened the volumes
        assert batch["read_concurrency"] == ["3", "3"]
        assert batch["channels_read"].tolist() == [2, 2]
        for image, subject in zip(batch["image"], batch["obs_subject_id"], strict=True):
            flair = radi.FLAIR.filter(f"obs_subject_id == '{subject}'").iloc[0]
            np.testing.assert_array_equal(image[1].numpy(), flair.to_numpy())


KILLED_MID_EPOCH = """
import os, signal, sys
from radiobject import RadiObject
from radiobject.ml import create_training_dataloader, loader_pids

if __name__ == "__main__":
    loader = create_training_dataloader(
        RadiObject(sys.argv[1]).T1w, batch_size=1, patch_size=(8, 8, 8), num_workers=2,
        persistent_workers=True,
    )
    it = iter(loader)
    next(it), next(it)  # both workers have started
    print(" ".join(map(str, loader_pids(loader)[1:])), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a kernel restart would
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (an unreaped zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(120)
def test_workers_end_when_the_training_process_is_killed(sample_radi, tmp_path):
    """A forkserver worker's parent is the server, not the loader's process: they still end."""
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("w") as o, err.open("w") as e:  # files, not pipes: workers inherit them
        code = subprocess.run(
            [sys.executable, "-c", KILLED_MID_EPOCH, sample_radi.uri],
            stdout=o,
            stderr=e,
            timeout=90,
        ).returncode
    assert code == -9, err.read_text()
    workers = [int(p) for p in out.read_text().split()]
    assert len(workers) == 2
    deadline = time.monotonic() + 30  # a poll with a deadline: they end within ms normally
    while any(_running(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [p for p in workers if _running(p)]
    for p in left:  # don't leave them to the rest of the suite
        os.kill(p, 9)
    assert not left, f"workers {left} outlived the killed training process"
