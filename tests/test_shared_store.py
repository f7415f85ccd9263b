"""The /dev/shm store of a loader's workers: one filler per volume, folders of dead owners.

The processes here are plain ``spawn`` children running this module's functions, so nothing
forks the test process.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from filelock import FileLock

from radiobject.ml import _shared
from radiobject.read import _shared_store
from radiobject.read._shared_store import SharedStore

ROOT = str(Path(__file__).resolve().parents[1])


@pytest.fixture
def spawn(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(ROOT)  # so children import this module as tests.test_...
    return multiprocessing.get_context("spawn")


def _fill(directory: str, loads: str, barrier: Any, go: Any, out: Any) -> None:
    """Fetch one entry; the load records itself and waits until the test says go."""

    def load() -> np.ndarray:
        Path(loads, str(os.getpid())).touch()
        go.wait(60)
        return np.arange(6.0) * 7

    store = SharedStore(directory, budget_bytes=1 << 20)
    barrier.wait(60)  # both processes are about to fetch
    data, hit = store.fetch("s3://bucket/volume", load)
    out.put((os.getpid(), hit, data.tolist()))


@pytest.mark.timeout(120)
def test_two_processes_filling_one_entry_load_it_once(tmp_path, spawn):
    loads = tmp_path / "loads"
    loads.mkdir()
    barrier, go, out = spawn.Barrier(3), spawn.Event(), spawn.Queue()
    procs = [
        spawn.Process(target=_fill, args=(str(tmp_path), str(loads), barrier, go, out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    barrier.wait(60)
    go.set()
    results = sorted(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(list(loads.iterdir())) == 1  # one process read the volume
    assert sorted(hit for _, hit, _ in results) == [False, True]  # the other mapped it
    assert [data for _, _, data in results] == [[0.0, 7.0, 14.0, 21.0, 28.0, 35.0]] * 2


def _take_lock_and_die(path: str) -> None:
    FileLock(path).acquire(timeout=0)
    os._exit(0)  # dies holding it: no release, no clean-up


def test_a_filler_that_died_does_not_hold_the_others_back(tmp_path, spawn, monkeypatch):
    store = SharedStore(tmp_path, budget_bytes=1 << 20)
    entry = store._path("vol")
    dead = spawn.Process(target=_take_lock_and_die, args=(str(entry.with_suffix(".lock")),))
    dead.start()
    dead.join(60)
    assert dead.exitcode == 0
    monkeypatch.setattr(_shared_store, "_WAIT_S", 2.0)  # a stale lock would time out here
    data, hit = store.fetch("vol", lambda: np.ones(3))
    assert not hit
    assert data.tolist() == [1.0, 1.0, 1.0]
    assert entry.exists()  # stored under the lock (a timed-out reader does not store)


OWNER = """
import sys
from radiobject.ml._shared import _make_folder
folder, lock = _make_folder(sys.argv[1])
print(folder, flush=True)
sys.stdin.read()  # alive, holding the lock, until the test closes stdin
"""


def _owner(root: Path, *, stay: bool) -> tuple[Path, subprocess.Popen[str]]:
    """A process that makes a shared folder in ``root``; it stays alive while ``stay``."""
    code = OWNER if stay else OWNER.replace("sys.stdin.read()", "import os; os._exit(0)")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    folder = Path(proc.stdout.readline().strip())
    assert folder.parent == root
    assert (folder / "owner.lock").exists()
    return folder, proc


@pytest.mark.timeout(120)
def test_only_folders_of_dead_owners_are_removed(tmp_path):
    crashed, proc = _owner(tmp_path, stay=False)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    (crashed / "x.npy").write_bytes(b"0")
    live, other = _owner(tmp_path, stay=True)
    mine, my_lock = _shared._make_folder(str(tmp_path))
    # another scheme's folder (or one of another PID namespace's old loaders): not ours to judge
    foreign = tmp_path / f"{_shared._PREFIX}{os.getpid() + 1}-abc"
    foreign.mkdir()
    try:
        _shared._remove_orphans(str(tmp_path))
        assert not crashed.exists()  # its owner died: the kernel released its lock
        assert live.exists()  # its owner holds the lock, whatever its process id means here
        assert Path(mine).exists()
        assert foreign.exists()
        other.communicate(timeout=60)  # closes its stdin: the live owner ends
        assert other.returncode == 0
        _shared._remove_orphans(str(tmp_path))
        assert not live.exists()
        assert Path(mine).exists()
    finally:
        my_lock.release()


def test_a_loader_folder_is_removed_by_its_owner_only(tmp_path, monkeypatch):
    monkeypatch.setattr(_shared.tempfile, "gettempdir", lambda: str(tmp_path))
    isdir = os.path.isdir
    monkeypatch.setattr(_shared.os.path, "isdir", lambda p: p != "/dev/shm" and isdir(p))
    shared = _shared.SharedLoaderState(multiprocessing.get_context("spawn"), num_workers=1)
    folder = Path(shared.shm_dir)
    assert folder.parent == tmp_path
    assert folder.name.startswith(_shared._PREFIX)
    _shared._remove_orphans(str(tmp_path))
    assert folder.exists()  # alive: its owner holds the lock
    holder = [shared]
    del shared
    dropper = threading.Thread(target=holder.clear)  # the last reference goes in a thread
    dropper.start()
    dropper.join()
    assert not folder.exists()  # removed with its loader state
    if os.path.isdir("/proc/self/fd"):  # and its lock released: no descriptor left open on it
        open_files = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                open_files.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                continue
        assert not [f for f in open_files if f.startswith(str(folder))]


def test_a_released_volume_is_gone_for_every_process(tmp_path):
    store = SharedStore(tmp_path, budget_bytes=1 << 20)
    store.fetch("a", lambda: np.arange(4.0))
    other = SharedStore(tmp_path, budget_bytes=1 << 20)  # another worker of the loader
    assert other.holds("a")
    assert store.release("a")
    assert not store.release("a")  # released already
    assert not store.holds("a")
    again, hit = other.fetch("b", lambda: np.ones(2))
    assert not hit
    assert again.tolist() == [1.0, 1.0]
    assert len(list(tmp_path.glob("*.npy"))) == 1  # b's only


def test_a_mapped_volume_is_found_again_by_its_uri_alone(tmp_path, monkeypatch):
    """Every patch asks the store twice (held? then the volume): no hash, no path, no memmap."""
    SharedStore(tmp_path, budget_bytes=1 << 20).fetch("a", lambda: np.arange(24.0).reshape(2, 3, 4))
    worker = SharedStore(tmp_path, budget_bytes=1 << 20)  # another worker: maps the file
    hashes = []
    real_sha1 = _shared_store.hashlib.sha1
    monkeypatch.setattr(
        _shared_store.hashlib, "sha1", lambda data: hashes.append(data) or real_sha1(data)
    )
    assert worker.holds("a")
    assert len(hashes) == 1  # the first ask finds the file
    for _ in range(10):
        assert worker.holds("a")
        volume, hit = worker.fetch("a", lambda: 1 / 0)
        assert hit
    assert len(hashes) == 1  # asked 20 times more: found by its uri
    assert type(volume) is np.ndarray  # a plain view: slicing it makes no memmap per patch
    assert type(volume[0, 1:3]) is np.ndarray
    assert volume[1, 2].tolist() == [20.0, 21.0, 22.0, 23.0]
    assert not worker.holds("b")  # a volume not stored is still looked for, and not found
