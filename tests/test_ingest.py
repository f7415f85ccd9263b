"""Ingest: NIfTI and DICOM files into RadiObjects and collections, and what bad input does."""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from radiobject import (
    AlignmentError,
    AlreadyExistsError,
    IngestError,
    RadiObject,
    VolumeCollection,
    subject_id_from_path,
)
from radiobject.data import write_sample_niftis

SHAPE = (16, 16, 12)
SUBJECTS = ["sub-000", "sub-001", "sub-002"]


@pytest.fixture(scope="module")
def niftis(tmp_path_factory) -> tuple[dict[str, str], pd.DataFrame, Path]:
    root = tmp_path_factory.mktemp("nifti")
    images, obs_meta = write_sample_niftis(root, n_subjects=3, shape=SHAPE, seed=3)
    return images, obs_meta, root


@pytest.fixture(scope="module")
def ingested(niftis, tmp_path_factory) -> RadiObject:
    images, obs_meta, _ = niftis
    target = tmp_path_factory.mktemp("ingested") / "radi"
    return RadiObject.from_images(target, images, obs_meta=obs_meta, progress=False)


def nifti_path(root: Path, name: str, sid: str) -> Path:
    return root / name / f"{sid}_{name}.nii.gz"


# --- subject ids from file names ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "collection", "expected"),
    [
        ("data/BraTS_00012_flair.nii.gz", None, "BraTS_00012"),
        ("sub-01_T1w.nii.gz", None, "sub-01"),
        ("sub-01_T1W.NII.GZ", None, "sub-01"),
        ("patient_003.nii", None, "patient_003"),
        ("BraTS-GLI-00001-000-t1c.nii.gz", None, "BraTS-GLI-00001-000"),
        ("case7-seg.nii.gz", None, "case7"),
        ("case7_mask.nii", None, "case7"),
        ("p1_CTA.nii.gz", "CTA", "p1"),
        ("p1_cta.nii.gz", "CTA", "p1_cta"),  # the collection name matches case-sensitively
        ("ct_scans/p9_CT.nii.gz", None, "p9"),
        ("slices/img_0001.dcm", None, "img_0001"),
        ("series/patient_042", None, "patient_042"),
        ("t1w.nii.gz", None, "t1w"),  # nothing is left to be a subject
        ("/a/b.c/sub-02_flair.nii.gz", None, "sub-02"),
    ],
)
def test_subject_id_from_path(path, collection, expected):
    assert subject_id_from_path(path, collection) == expected


# --- NIfTI --------------------------------------------------------------------------------------


def test_from_images_with_globs(ingested, niftis):
    _, obs_meta, root = niftis
    assert ingested.collection_names == ["FLAIR", "T1w", "seg"]
    assert ingested.obs_subject_ids == SUBJECTS
    pd.testing.assert_frame_equal(ingested.obs_meta, obs_meta, check_dtype=False)
    for name in ("T1w", "FLAIR", "seg"):
        coll = ingested.collection(name)
        assert coll.obs_ids == [f"{s}_{name}" for s in SUBJECTS]
        for sid in SUBJECTS:
            img = nib.load(nifti_path(root, name, sid))
            vol = coll.loc[f"{sid}_{name}"]
            expected = np.asanyarray(img.dataobj)
            assert vol.dtype == expected.dtype
            np.testing.assert_array_equal(vol.to_numpy(), expected)
            np.testing.assert_array_equal(vol.affine, img.affine)
    assert ingested.seg.is_mask  # guessed from the name
    assert not ingested.T1w.is_mask


def test_geometry_is_kept_in_obs(ingested, niftis):
    _, _, root = niftis
    obs = ingested.T1w.obs.set_index("obs_id")
    row = obs.loc["sub-001_T1w"]
    assert row["shape"] == "16,16,12"
    assert row["spacing"] == "1,1,1"
    assert row["orientation"] == "RAS"
    assert row["dtype"] == "float32"
    assert row["source"] == str(nifti_path(root, "T1w", "sub-001"))
    img = nib.load(nifti_path(root, "T1w", "sub-001"))
    np.testing.assert_array_equal(ingested.T1w.volume_affine("sub-001_T1w"), img.affine)


def test_mask_foreground_indexed_at_ingest(ingested, niftis):
    _, _, root = niftis
    fg = ingested.seg.foreground()
    for sid in SUBJECTS:
        mask = np.asanyarray(nib.load(nifti_path(root, "seg", sid)).dataobj)
        entry = fg[f"{sid}_seg"]
        assert entry.counts == {int(k): int((mask == k).sum()) for k in np.unique(mask) if k}


def test_from_images_with_folders_and_pairs(niftis, tmp_path):
    images, _, root = niftis
    seg_files = sorted(glob.glob(images["seg"]))
    pairs = [(p, f"P{i}") for i, p in enumerate(seg_files)]
    radi = RadiObject.from_images(
        tmp_path / "r",
        {"T1w": root / "T1w", "labels": pairs},
        validate_alignment=False,
        progress=False,
    )
    assert radi.T1w.obs_subject_ids == SUBJECTS
    assert radi.labels.obs_subject_ids == ["P0", "P1", "P2"]
    assert radi.labels.obs_ids == ["P0_labels", "P1_labels", "P2_labels"]
    assert radi.labels.is_mask
    assert radi.obs_subject_ids == ["P0", "P1", "P2", *SUBJECTS]  # obs_meta made from the ids
    np.testing.assert_array_equal(
        radi.labels.loc["P2_labels"].to_numpy(), np.asanyarray(nib.load(seg_files[2]).dataobj)
    )


def test_from_images_with_a_list_of_paths_and_masks_flag(niftis, tmp_path):
    images, obs_meta, _ = niftis
    files = sorted(glob.glob(images["FLAIR"]))[:2]
    radi = RadiObject.from_images(
        tmp_path / "r", {"FLAIR": files}, obs_meta=obs_meta, masks=["FLAIR"], progress=False
    )
    assert radi.FLAIR.obs_subject_ids == SUBJECTS[:2]
    assert radi.FLAIR.is_mask  # forced
    assert radi.obs_subject_ids == SUBJECTS  # subjects without images keep their row


def test_collection_from_niftis(niftis, tmp_path):
    images, _, root = niftis
    coll = VolumeCollection.from_niftis(tmp_path / "T1w", images["T1w"], progress=False)
    assert coll.name == "T1w"
    assert coll.obs_subject_ids == SUBJECTS
    img = nib.load(nifti_path(root, "T1w", "sub-002"))
    np.testing.assert_array_equal(
        coll.iloc[2][3:9, 2, 4:6], np.asanyarray(img.dataobj)[3:9, 2, 4:6]
    )


def test_lps_and_4d_nifti(tmp_path):
    affine = np.diag([-0.5, -0.5, 2.0, 1.0])
    affine[:3, 3] = [30.0, 40.0, -10.0]
    data = np.arange(8 * 6 * 4 * 2, dtype=np.int16).reshape(8, 6, 4, 2)
    (tmp_path / "src").mkdir()
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "src" / "p1_bold.nii.gz")
    coll = VolumeCollection.from_niftis(tmp_path / "bold", tmp_path / "src", progress=False)
    vol = coll.loc["p1_bold"]
    assert vol.shape == (8, 6, 4, 2)
    assert vol.orientation == "LPS"
    assert vol.spacing == (0.5, 0.5, 2.0)
    assert coll.obs["orientation"].tolist() == ["LPS"]
    assert coll.obs["spacing"].tolist() == ["0.5,0.5,2"]
    np.testing.assert_array_equal(vol.to_numpy(), data)
    np.testing.assert_array_equal(vol.affine, affine)


def test_big_endian_nifti(tmp_path):
    data = np.arange(8 * 8 * 4, dtype=np.int16).reshape(8, 8, 4)
    img = nib.Nifti1Image(data, np.eye(4), header=nib.Nifti1Header(endianness=">"))
    img.set_data_dtype(np.int16)
    (tmp_path / "src").mkdir()
    nib.save(img, tmp_path / "src" / "p1_CT.nii")
    on_disk = np.asanyarray(nib.load(tmp_path / "src" / "p1_CT.nii").dataobj)
    assert on_disk.dtype.byteorder == ">"  # the file really is big-endian
    coll = VolumeCollection.from_niftis(tmp_path / "CT", tmp_path / "src", progress=False)
    np.testing.assert_array_equal(coll.iloc[0].to_numpy(), data)
    assert coll.obs["dtype"].tolist() == ["int16"]
    assert coll.iloc[0].dtype == np.int16


def test_progress_bar(niftis, tmp_path, capfd):
    images, _, _ = niftis
    VolumeCollection.from_niftis(tmp_path / "T1w", images["T1w"], progress=True)
    err = capfd.readouterr().err
    assert "ingest T1w" in err
    assert "3/3" in err


# --- bad input: a clear error and nothing left at the target ------------------------------------


def fails(target: Path, error: type[Exception], match: str, call) -> None:
    with pytest.raises(error, match=match):
        call()
    assert not os.path.exists(target)


def test_glob_matching_nothing(tmp_path):
    fails(
        tmp_path / "r",
        IngestError,
        r"pattern .*nowhere.* for collection 'T1w' matches no file",
        lambda: RadiObject.from_images(
            tmp_path / "r", {"T1w": str(tmp_path / "nowhere" / "*.nii.gz")}, progress=False
        ),
    )


def test_missing_path_and_empty_folder(tmp_path):
    target = tmp_path / "r"
    fails(
        target,
        IngestError,
        r"'T1w' does not exist",
        lambda: RadiObject.from_images(
            target, {"T1w": str(tmp_path / "no_such_dir")}, progress=False
        ),
    )
    (tmp_path / "empty").mkdir()
    fails(
        target,
        IngestError,
        r"holds no NIfTI file or DICOM series",
        lambda: RadiObject.from_images(target, {"T1w": tmp_path / "empty"}, progress=False),
    )
    fails(
        target,
        IngestError,
        r"no source files given",
        lambda: RadiObject.from_images(target, {"T1w": []}, progress=False),
    )
    fails(
        target,
        IngestError,
        r"does not exist",
        lambda: RadiObject.from_images(
            target, {"T1w": [(tmp_path / "gone.nii.gz", "s1")]}, progress=False
        ),
    )
    fails(
        target,
        IngestError,
        r"at least one collection",
        lambda: RadiObject.from_images(target, {}, progress=False),
    )


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_nifti(niftis, tmp_path, keep):
    images, _, _ = niftis
    src = tmp_path / "src"
    shutil.copytree(Path(images["T1w"]).parent, src)
    victim = src / "sub-001_T1w.nii.gz"
    raw = victim.read_bytes()
    victim.write_bytes(raw[: int(len(raw) * keep)])
    fails(
        tmp_path / "r",
        IngestError,
        r"cannot read NIfTI file .*sub-001_T1w\.nii\.gz.*complete \.nii or \.nii\.gz",
        lambda: RadiObject.from_images(tmp_path / "r", {"T1w": src}, progress=False),
    )


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("s1_CT.nii.gz", b"this is not a NIfTI file" * 20),
        ("s1_CT.nii", b""),
        ("s1_CT.nii", b"x" * 400),
    ],
)
def test_unreadable_nifti(tmp_path, name, content):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / name).write_bytes(content)
    fails(
        tmp_path / "r",
        IngestError,
        rf"cannot read NIfTI file .*{name.replace('.', '[.]')}",
        lambda: RadiObject.from_images(tmp_path / "r", {"CT": tmp_path / "src"}, progress=False),
    )


def test_duplicate_subject_ids(niftis, tmp_path):
    images, _, _ = niftis
    files = sorted(glob.glob(images["T1w"]))
    fails(
        tmp_path / "r",
        IngestError,
        r"duplicate subject ids \['same'\] in collection 'T1w'",
        lambda: RadiObject.from_images(
            tmp_path / "r", {"T1w": [(files[0], "same"), (files[1], "same")]}, progress=False
        ),
    )


def test_duplicate_subjects_in_obs_meta(niftis, tmp_path):
    images, obs_meta, _ = niftis
    doubled = pd.concat([obs_meta, obs_meta.iloc[:1]])
    fails(
        tmp_path / "r",
        IngestError,
        r"duplicate subject ids \['sub-000'\] in obs_meta",
        lambda: RadiObject.from_images(
            tmp_path / "r", {"T1w": images["T1w"]}, obs_meta=doubled, progress=False
        ),
    )


def test_subject_missing_from_obs_meta(niftis, tmp_path):
    images, obs_meta, _ = niftis
    fails(
        tmp_path / "r",
        IngestError,
        r"subjects \['sub-002'\] have images but no row in obs_meta",
        lambda: RadiObject.from_images(
            tmp_path / "r", {"T1w": images["T1w"]}, obs_meta=obs_meta.iloc[:2], progress=False
        ),
    )


def test_obs_meta_without_subject_column(niftis, tmp_path):
    images, obs_meta, _ = niftis
    fails(
        tmp_path / "r",
        IngestError,
        r"obs_meta needs an 'obs_subject_id' column",
        lambda: RadiObject.from_images(
            tmp_path / "r",
            {"T1w": images["T1w"]},
            obs_meta=obs_meta.rename(columns={"obs_subject_id": "id"}),
            progress=False,
        ),
    )


def test_obs_meta_indexed_by_subject_is_accepted(niftis, tmp_path):
    images, obs_meta, _ = niftis
    radi = RadiObject.from_images(
        tmp_path / "r",
        {"T1w": images["T1w"]},
        obs_meta=obs_meta.set_index("obs_subject_id"),
        progress=False,
    )
    assert radi.filter("age > 0").obs_subject_ids == SUBJECTS


def test_target_that_exists(ingested, niftis, tmp_path):
    images, _, _ = niftis
    before = sorted(os.listdir(ingested.uri))
    with pytest.raises(AlreadyExistsError, match="already exists"):
        RadiObject.from_images(ingested.uri, {"T1w": images["T1w"]}, progress=False)
    assert sorted(os.listdir(ingested.uri)) == before
    assert RadiObject(ingested.uri).collection_names == ["FLAIR", "T1w", "seg"]
    (tmp_path / "folder").mkdir()
    with pytest.raises(FileExistsError):
        RadiObject.from_images(tmp_path / "folder", {"T1w": images["T1w"]}, progress=False)
    assert os.listdir(tmp_path / "folder") == []


def test_misaligned_subject(niftis, tmp_path):
    images, obs_meta, _ = niftis
    (tmp_path / "CT").mkdir()
    for sid in SUBJECTS:
        shape = (16, 16, 10) if sid == "sub-001" else SHAPE
        affine = nib.load(glob.glob(images["T1w"])[0]).affine
        nib.save(
            nib.Nifti1Image(np.zeros(shape, np.float32), affine), tmp_path / "CT" / f"{sid}_CT.nii"
        )
    fails(
        tmp_path / "r",
        AlignmentError,
        r"subject 'sub-001': .* not on the same grid "
        r"\(shape \(16, 16, 1[02]\) vs \(16, 16, 1[02]\)\)",
        lambda: RadiObject.from_images(
            tmp_path / "r",
            {"T1w": images["T1w"], "CT": tmp_path / "CT"},
            obs_meta=obs_meta,
            progress=False,
        ),
    )
    radi = RadiObject.from_images(
        tmp_path / "r",
        {"T1w": images["T1w"], "CT": tmp_path / "CT"},
        validate_alignment=False,
        progress=False,
    )
    assert radi.CT.shape is None


def test_failure_after_some_volumes_were_written(niftis, tmp_path):
    # the bad file comes last in a collection that is not the first: much is written first
    images, obs_meta, _ = niftis
    src = tmp_path / "FLAIR"
    shutil.copytree(Path(images["FLAIR"]).parent, src)
    (src / "sub-002_FLAIR.nii.gz").write_bytes(b"broken")
    fails(
        tmp_path / "r",
        IngestError,
        r"sub-002_FLAIR",
        lambda: RadiObject.from_images(
            tmp_path / "r", {"T1w": images["T1w"], "FLAIR": src}, obs_meta=obs_meta, progress=False
        ),
    )
    # and the same target works once the input is fixed
    shutil.copy(Path(images["FLAIR"]).parent / "sub-002_FLAIR.nii.gz", src)
    radi = RadiObject.from_images(
        tmp_path / "r", {"T1w": images["T1w"], "FLAIR": src}, obs_meta=obs_meta, progress=False
    )
    assert radi.FLAIR.obs_subject_ids == SUBJECTS


def test_collection_target_that_exists(niftis, tmp_path):
    images, _, _ = niftis
    VolumeCollection.from_niftis(tmp_path / "T1w", images["T1w"], progress=False)
    with pytest.raises(AlreadyExistsError):
        VolumeCollection.from_niftis(tmp_path / "T1w", images["FLAIR"], progress=False)
    assert VolumeCollection(tmp_path / "T1w").obs_ids == [f"{s}_T1w" for s in SUBJECTS]


# --- DICOM --------------------------------------------------------------------------------------


@pytest.fixture
def dicom_root(tmp_path) -> Path:
    pytest.importorskip("pydicom")
    from tests._dicom_series import write_series

    root = tmp_path / "dicom"
    for i, sid in enumerate(["pat-a", "pat-b"]):
        volume = (np.arange(12 * 10 * 6).reshape(12, 10, 6) + 1000 * i).astype(np.int16)
        write_series(root / sid, volume, origin=(-60.0, -50.0, 20.0 + i), pixel_spacing=(0.8, 0.7))
    return root


def test_dicom_series_through_from_images(dicom_root, tmp_path):
    from radiobject.ingest import read_dicom_series

    radi = RadiObject.from_images(tmp_path / "r", {"CT": dicom_root}, progress=False)
    assert radi.CT.obs_ids == ["pat-a_CT", "pat-b_CT"]
    assert not radi.CT.is_mask
    for i, sid in enumerate(["pat-a", "pat-b"]):
        series = read_dicom_series(dicom_root / sid)
        vol = radi.CT.loc[f"{sid}_CT"]
        np.testing.assert_array_equal(vol.to_numpy(), series.array)
        np.testing.assert_array_equal(vol.affine, series.affine)
        expected = (np.arange(12 * 10 * 6).reshape(12, 10, 6) + 1000 * i).astype(np.int16)
        np.testing.assert_array_equal(vol.to_numpy(), expected)
        assert vol.orientation == "LPS"
        assert vol.spacing == pytest.approx((0.7, 0.8, 2.5))
    obs = radi.CT.obs.set_index("obs_id")
    assert obs.loc["pat-b_CT", "source"] == str(dicom_root / "pat-b")
    assert obs.loc["pat-b_CT", "spacing"] == "0.7,0.8,2.5"


def test_dicom_agrees_with_the_same_volume_as_nifti(dicom_root, tmp_path):
    from radiobject.ingest import read_dicom_series

    series = read_dicom_series(dicom_root / "pat-a")
    (tmp_path / "nii").mkdir()
    nib.save(nib.Nifti1Image(series.array, series.affine), tmp_path / "nii" / "pat-a_CT.nii.gz")
    from_dicom = VolumeCollection.from_dicoms(tmp_path / "d", dicom_root, name="CT", progress=False)
    from_nifti = VolumeCollection.from_niftis(
        tmp_path / "n", tmp_path / "nii", name="CT", progress=False
    )
    a, b = from_dicom.loc["pat-a_CT"], from_nifti.loc["pat-a_CT"]
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    assert a.orientation == b.orientation


def test_broken_dicom_leaves_nothing(dicom_root, tmp_path):
    victim = sorted((dicom_root / "pat-b").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:200])
    fails(
        tmp_path / "r",
        IngestError,
        r"DICOM file .*pat-b",
        lambda: RadiObject.from_images(tmp_path / "r", {"CT": dicom_root}, progress=False),
    )
