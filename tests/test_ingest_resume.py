"""A killed ingest is never mistaken for a finished one, and ``resume=True`` finishes it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import tiledb

from radiobject import (
    AlreadyExistsError,
    IncompleteError,
    IngestError,
    RadiObject,
    VolumeCollection,
)
from radiobject.data import load_sample_radiobject, write_sample_niftis
from radiobject.ingest._sources import FileSource
from tests._ingest_helpers import same_radiobject

SHAPE = (16, 16, 12)
N = 16

# The ingest a user starts, with a reader slowed down by this test (not by the library).
SCRIPT = """
import json, sys, time
from radiobject import RadiObject
from radiobject.ingest._sources import FileSource

real = FileSource.__call__

def slow(self):
    time.sleep(float(sys.argv[3]))
    return real(self)

FileSource.__call__ = slow
images = json.loads(sys.argv[2])
RadiObject.from_images(sys.argv[1], images, progress=False)
print("finished", flush=True)
"""


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("nifti16")
    images, _ = write_sample_niftis(root, n_subjects=N, shape=SHAPE, modalities=["T1w"], seed=2)
    return images


@pytest.fixture(scope="module")
def uninterrupted(cohort, tmp_path_factory) -> RadiObject:
    return RadiObject.from_images(tmp_path_factory.mktemp("whole") / "radi", cohort, progress=False)


def whole_volumes(target: Path) -> set[str]:
    """obs_ids of the volume arrays under ``target`` whose metadata landed (after the voxels)."""
    found = set()
    for vols in target.glob("collections/*/volumes"):
        for child in vols.iterdir():
            if child.name.startswith("__"):
                continue
            try:
                with tiledb.open(str(child)) as arr:
                    if "obs_id" in arr.meta:
                        found.add(arr.meta["obs_id"])
            except tiledb.TileDBError:
                continue
    return found


def count_loads(monkeypatch) -> list[Path]:
    loads: list[Path] = []
    real = FileSource.__call__

    def spy(self):
        loads.append(self.path)
        return real(self)

    monkeypatch.setattr(FileSource, "__call__", spy)
    return loads


def test_killed_ingest_is_incomplete_and_resume_finishes_it(
    cohort, uninterrupted, tmp_path, monkeypatch
):
    target = tmp_path / "radi"
    script = tmp_path / "ingest.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(target), json.dumps(cohort), "0.4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(whole_volumes(target)) < 6:  # wait until some volumes are written whole
            assert proc.poll() is None, f"the ingest ended early: {proc.communicate()}"
            assert time.monotonic() < deadline, "no volume was written within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert "finished" not in out
    done = whole_volumes(target)
    assert 6 <= len(done) < 2 * N, "the kill must land mid-ingest"

    # opening it, or running the same call again, says what happened and what to do
    with pytest.raises(IncompleteError, match=r"did not finish.*resume=True"):
        RadiObject(target)
    with pytest.raises(IncompleteError, match=r"resume=True"):
        RadiObject.from_images(target, cohort, progress=False)

    # resume: only the volumes not written whole are read again
    loads = count_loads(monkeypatch)
    radi = RadiObject.from_images(target, cohort, progress=False, resume=True)
    reread = {f"{p.name.split('_')[0]}_{p.parent.name}" for p in loads}
    assert len(loads) == 2 * N - len(done)
    assert reread.isdisjoint(done)
    same_radiobject(radi, uninterrupted)
    same_radiobject(RadiObject(target), uninterrupted)

    # resuming a finished object opens it; other inputs are refused
    loads.clear()
    same_radiobject(RadiObject.from_images(target, cohort, resume=True, progress=False), radi)
    assert loads == []
    with pytest.raises(AlreadyExistsError, match="holds other volumes"):
        RadiObject.from_images(target, {"T1w": cohort["T1w"]}, progress=False, resume=True)
    with pytest.raises(AlreadyExistsError, match="holds other volumes"):
        RadiObject.from_images(target, {**cohort, "CT": cohort["T1w"]}, progress=False, resume=True)


def failed_ingest(cohort, tmp_path) -> tuple[Path, dict[str, str], Path, bytes]:
    """A resumable ingest that failed on a truncated mask file: its target, images, the file
    and the file's good bytes."""
    src = tmp_path / "seg"
    shutil.copytree(Path(cohort["seg"]).parent, src)
    victim = src / "sub-009_seg.nii.gz"
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])
    target = tmp_path / "radi"
    images = {"T1w": cohort["T1w"], "seg": str(src)}
    with pytest.raises(IngestError, match=r"sub-009_seg\.nii\.gz"):
        RadiObject.from_images(target, images, progress=False, resume=True)
    return target, images, victim, good


def test_a_failed_resumable_ingest_keeps_its_work(cohort, uninterrupted, tmp_path, monkeypatch):
    target, images, victim, good = failed_ingest(cohort, tmp_path)
    assert target.exists()  # kept for the next resume
    with pytest.raises(IncompleteError):
        RadiObject(target)
    victim.write_bytes(good)
    loads = count_loads(monkeypatch)
    radi = RadiObject.from_images(target, images, progress=False, resume=True)
    assert len(loads) < 2 * N
    for name in radi.collection_names:
        pd.testing.assert_frame_equal(
            radi[name].obs.drop(columns="source"), uninterrupted[name].obs.drop(columns="source")
        )


def test_an_unfinished_collection_alone(cohort, tmp_path, monkeypatch):
    src = tmp_path / "T1w"
    shutil.copytree(Path(cohort["T1w"]).parent, src)
    (src / "sub-015_T1w.nii.gz").write_bytes(b"broken")
    target = tmp_path / "T1w-coll"
    with pytest.raises(IngestError, match="sub-015_T1w"):
        VolumeCollection.from_niftis(target, src, progress=False, resume=True)
    with pytest.raises(IncompleteError, match=r"VolumeCollection whose writing did not finish"):
        VolumeCollection(target)
    with pytest.raises(IncompleteError, match=r"resume=True"):
        VolumeCollection.from_niftis(target, src, progress=False)
    shutil.copy(Path(cohort["T1w"]).parent / "sub-015_T1w.nii.gz", src)
    loads = count_loads(monkeypatch)
    coll = VolumeCollection.from_niftis(target, src, progress=False, resume=True)
    assert [p.name for p in loads] == ["sub-015_T1w.nii.gz"]
    assert len(VolumeCollection(target)) == len(coll) == N


def test_an_unfinished_add_collection(uninterrupted, cohort, tmp_path, monkeypatch):
    radi = uninterrupted.write(tmp_path / "radi")
    src = tmp_path / "FLAIR"
    shutil.copytree(Path(cohort["T1w"]).parent, src)
    for path in src.iterdir():
        path.rename(src / path.name.replace("T1w", "FLAIR"))
    (src / "sub-004_FLAIR.nii.gz").write_bytes(b"broken")
    with pytest.raises(IngestError, match="sub-004_FLAIR"):
        radi.add_collection("FLAIR", src, progress=False, resume=True)
    assert "FLAIR" not in RadiObject(radi.uri)  # the unfinished collection is not listed
    with pytest.raises(IncompleteError, match=r"add_collection of 'FLAIR' .*resume=True"):
        radi.add_collection("FLAIR", src, progress=False)
    shutil.copy(Path(cohort["T1w"]).parent / "sub-004_T1w.nii.gz", src / "sub-004_FLAIR.nii.gz")
    done = {o for o in whole_volumes(Path(radi.uri)) if o.endswith("_FLAIR")}
    assert done  # the tasks handed out before the failure finished
    loads = count_loads(monkeypatch)
    flair = radi.add_collection("FLAIR", src, progress=False, resume=True)
    assert {p.name.replace(".nii.gz", "") for p in loads} == set(flair.obs_ids) - done
    assert RadiObject(radi.uri).FLAIR.obs_ids == flair.obs_ids


def test_objects_without_the_marker_are_incomplete(uninterrupted, tmp_path):
    radi = uninterrupted.write(tmp_path / "radi")
    with tiledb.Group(radi.uri, mode="w") as g:
        del g.meta["complete"]  # as written by a version without the marker
    with pytest.raises(IncompleteError, match="lack the marker too"):
        RadiObject(radi.uri)


def test_an_unfinished_sample_cache_is_made_again(tmp_path):
    path = tmp_path / "sample"
    first = load_sample_radiobject("small", path, progress=False)
    with tiledb.Group(first.uri, mode="w") as g:
        del g.meta["complete"]
    with pytest.raises(IncompleteError):
        RadiObject(path)
    again = load_sample_radiobject("small", path, progress=False)
    assert again.collection_names == ["CT", "FLAIR", "T1w", "seg"]
    assert os.path.isdir(path)


def test_a_storage_error_while_resuming_removes_nothing(cohort, tmp_path, monkeypatch):
    """A transient S3 error checking a volume: the volume stays, the error says so, a rerun
    resumes. Only what is known incomplete is removed."""
    from radiobject import StorageError
    from radiobject.ingest import _tasks

    target, images, victim, good = failed_ingest(cohort, tmp_path)
    written = whole_volumes(target)
    assert len(written) >= N  # the T1w volumes at least

    real_open = tiledb.open

    def unreachable(uri, *args, **kwargs):
        if "/volumes/" in str(uri):
            raise tiledb.TileDBError("[TileDB::S3] Error: GetObject: connection reset by peer")
        return real_open(uri, *args, **kwargs)

    victim.write_bytes(good)
    with monkeypatch.context() as m:
        m.setattr(_tasks, "_remote", lambda uri: True)  # as on S3: the error may be transient
        m.setattr(_tasks.tiledb, "open", unreachable)
        with pytest.raises(StorageError, match=r"nothing was removed.*run the ingest again"):
            RadiObject.from_images(target, images, progress=False, resume=True)
    assert whole_volumes(target) >= written  # every finished volume is still there
    loads = count_loads(monkeypatch)
    radi = RadiObject.from_images(target, images, progress=False, resume=True)
    assert len(loads) == 2 * N - len(written)  # only the unfinished ones were read again
    assert sorted(radi.collection_names) == ["T1w", "seg"]
