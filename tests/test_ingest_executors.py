"""Ingest on other executors: a process pool and a local Dask cluster, writing on the workers."""

from __future__ import annotations

import glob
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from radiobject import (
    AlignmentError,
    ConfigurationError,
    IngestError,
    RadiObject,
    TileConfig,
    VolumeCollection,
    WriteConfig,
    configure,
)
from radiobject.data import write_sample_niftis
from radiobject.ingest._sources import FileSource
from tests._ingest_helpers import arrays_under, same_radiobject

SHAPE = (16, 16, 12)


@pytest.fixture(scope="module")
def niftis(tmp_path_factory) -> tuple[dict[str, str], pd.DataFrame]:
    root = tmp_path_factory.mktemp("nifti")
    return write_sample_niftis(root, n_subjects=4, shape=SHAPE, seed=5)


@pytest.fixture(scope="module")
def on_threads(niftis, tmp_path_factory) -> RadiObject:
    images, obs_meta = niftis
    uri = tmp_path_factory.mktemp("threads") / "radi"
    return RadiObject.from_images(uri, images, obs_meta=obs_meta, progress=False)


# --- a local Dask cluster ---------------------------------------------------------------------


def test_dask_ingest_equals_the_threaded_one(niftis, on_threads, dask_executor, tmp_path):
    images, obs_meta = niftis
    radi = RadiObject.from_images(
        tmp_path / "radi", images, obs_meta=obs_meta, progress=False, executor=dask_executor
    )
    same_radiobject(radi, on_threads)
    assert radi.seg.is_mask
    assert not radi.T1w.is_mask


def test_workers_write_with_the_drivers_settings(niftis, dask_executor, tmp_path):
    # the workers are other processes: the WriteConfig in force here travels with each task
    images, _ = niftis
    axial = WriteConfig(tile=TileConfig(orientation="axial"))
    with configure(write=axial):
        t1 = VolumeCollection.from_niftis(
            tmp_path / "T1w", images["T1w"], progress=False, executor=dask_executor
        )
    assert {t1.volume(i).tile_shape for i in t1.obs_ids} == {(16, 16, 1)}


def test_a_failure_on_a_worker_names_the_file_and_leaves_nothing(niftis, dask_executor, tmp_path):
    images, obs_meta = niftis
    src = tmp_path / "FLAIR"
    shutil.copytree(Path(images["FLAIR"]).parent, src)
    good = (src / "sub-002_FLAIR.nii.gz").read_bytes()
    (src / "sub-002_FLAIR.nii.gz").write_bytes(good[: len(good) // 2])  # header fine, data cut
    target = tmp_path / "radi"
    with pytest.raises(IngestError, match=r"cannot read NIfTI file .*sub-002_FLAIR\.nii\.gz"):
        RadiObject.from_images(
            target,
            {"T1w": images["T1w"], "FLAIR": src},
            obs_meta=obs_meta,
            progress=False,
            executor=dask_executor,
        )
    assert not target.exists()
    # the same call works once the file is fixed (the cluster does not hand back the old error)
    (src / "sub-002_FLAIR.nii.gz").write_bytes(good)
    radi = RadiObject.from_images(
        target,
        {"T1w": images["T1w"], "FLAIR": src},
        obs_meta=obs_meta,
        progress=False,
        executor=dask_executor,
    )
    assert len(radi.FLAIR) == 4


def test_add_collection_and_copies_on_dask(on_threads, niftis, dask_executor, tmp_path):
    images, _ = niftis
    copy = on_threads.write(tmp_path / "copy", executor=dask_executor)
    same_radiobject(copy, on_threads)
    flair = copy.add_collection("FLAIR2", images["FLAIR"], progress=False, executor=dask_executor)
    assert flair.obs_subject_ids == copy.obs_subject_ids
    for a, b in zip(flair, on_threads.FLAIR, strict=True):
        np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())


# --- a process pool -----------------------------------------------------------------------------


def test_process_pool_ingest_equals_the_threaded_one(niftis, on_threads, tmp_path):
    images, obs_meta = niftis
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver")) as pool:
        radi = RadiObject.from_images(
            tmp_path / "radi", images, obs_meta=obs_meta, progress=False, executor=pool
        )
    same_radiobject(radi, on_threads)


def test_a_given_thread_pool(niftis, on_threads, tmp_path):
    images, obs_meta = niftis
    with ThreadPoolExecutor(3) as pool:
        radi = RadiObject.from_images(
            tmp_path / "radi", images, obs_meta=obs_meta, progress=False, executor=pool
        )
    same_radiobject(radi, on_threads)


def test_not_an_executor(niftis, tmp_path):
    images, _ = niftis
    with pytest.raises(ConfigurationError, match=r"concurrent\.futures\.Executor .*got int"):
        RadiObject.from_images(tmp_path / "r", images, progress=False, executor=4)
    assert not (tmp_path / "r").exists()


# --- alignment is checked from the headers, before any voxel is written -------------------------


def test_misaligned_subject_fails_before_any_volume_is_written(
    niftis, tmp_path, monkeypatch, dask_executor
):
    images, obs_meta = niftis
    (tmp_path / "CT").mkdir()
    affine = nib.load(glob.glob(images["T1w"])[0]).affine
    for sid in obs_meta["obs_subject_id"]:
        shape = (16, 16, 10) if sid == "sub-003" else SHAPE
        img = nib.Nifti1Image(np.zeros(shape, np.float32), affine)
        nib.save(img, tmp_path / "CT" / f"{sid}_CT.nii.gz")
    loads: list[str] = []
    real = FileSource.__call__
    monkeypatch.setattr(FileSource, "__call__", lambda self: loads.append(self.path) or real(self))
    target = tmp_path / "radi"
    for executor in (None, dask_executor):
        # resume=True keeps whatever a failure leaves: here nothing was ever written
        with pytest.raises(AlignmentError, match=r"subject 'sub-003': 'CT' and 'T1w'"):
            RadiObject.from_images(
                target,
                {"T1w": images["T1w"], "CT": tmp_path / "CT"},
                obs_meta=obs_meta,
                progress=False,
                executor=executor,
                resume=True,
            )
        assert arrays_under(target) == []
        assert not target.exists()
    assert loads == []  # no voxel was even read (in this process; workers have their own)


def test_a_header_that_lies_about_the_shape(tmp_path):
    # a NIfTI whose data does not match its header is caught when the voxels are read
    path = tmp_path / "src" / "s1_CT.nii"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.float32), np.eye(4)), path)
    src = FileSource(path)
    assert src.header().shape == (4, 4, 3)
    from radiobject.ingest._tasks import VolumeTask, write_volume

    def wrong_load():
        return np.zeros((4, 4, 2), np.float32), np.eye(4)

    task = VolumeTask(
        uri=str(tmp_path / "v"),
        load=wrong_load,
        source=str(path),
        obs_id="s1_CT",
        obs_subject_id="s1",
        collection="CT",
        is_mask=False,
        shape=(4, 4, 3),
        write=WriteConfig(),
        run="r",
    )
    with pytest.raises(IngestError, match=r"shape \(4, 4, 2\) but its header says \(4, 4, 3\)"):
        write_volume(task)
