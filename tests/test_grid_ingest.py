"""Reference grids at ingest and in writes: volumes stored on their own grids.

A cohort whose collections are on different grids needs a reference (``reference="T1w"``)
and every subject a volume in it; copies, added collections, predictions and added subjects
keep the reference. The loaders on such grids are tested in ``tests/test_grids.py``.
"""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from radiobject import AlignmentError, IngestError, RadiObject
from radiobject.ml import (
    PredictionWriter,
    VolumeCollectionDataset,
    create_inference_dataloader,
    create_training_dataloader,
)
from radiobject.read import grid_map
from tests import _grid_helpers
from tests._grid_helpers import (
    FLAIR_AFFINE,
    FLAIR_SHAPE,
    REF_SHAPE,
    SUBJECTS,
    T1_AFFINE,
    smooth,
)

radi = _grid_helpers.radi  # the fixture: the cohort on four grids


@pytest.fixture
def niftis(tmp_path: Any) -> dict[str, list[tuple[str, str]]]:
    """T1w at 1 mm and FLAIR at 2 x 2 x 3 mm, one NIfTI file per subject."""
    out: dict[str, list[tuple[str, str]]] = {"T1w": [], "FLAIR": []}
    for i, sid in enumerate(SUBJECTS):
        for name, shape, affine in (
            ("T1w", (12, 12, 9), T1_AFFINE),
            ("FLAIR", (6, 6, 3), FLAIR_AFFINE),
        ):
            path = str(tmp_path / f"{sid}_{name}.nii.gz")
            nib.save(nib.Nifti1Image(smooth(shape, i), affine), path)
            out[name].append((path, sid))
    return out


def test_ingest_on_other_grids_needs_a_reference(niftis, tmp_path):
    with pytest.raises(
        AlignmentError, match=r"not on the same grid .*or name .*reference=<collection>"
    ):
        RadiObject.from_images(tmp_path / "plain", niftis, progress=False)
    radi = RadiObject.from_images(tmp_path / "ref", niftis, reference="T1w", progress=False)
    assert radi.reference == "T1w"
    assert radi.FLAIR.iloc[0].shape == (6, 6, 3)
    assert radi.T1w.iloc[0].shape == (12, 12, 9)
    batch = next(iter(create_training_dataloader([radi.FLAIR, radi.T1w], batch_size=2)))
    assert tuple(batch["image"].shape) == (2, 2, 12, 12, 9)  # planned in the T1w grid


def test_a_misaligned_cohort_without_reference_keeps_failing_in_the_loader(niftis, tmp_path):
    radi = RadiObject.from_images(tmp_path / "r", niftis, validate_alignment=False, progress=False)
    assert radi.reference is None
    with pytest.raises(AlignmentError, match="channels must share a grid"):
        create_training_dataloader([radi.T1w, radi.FLAIR], batch_size=2)


def test_an_unknown_reference_names_the_collections(niftis, tmp_path):
    with pytest.raises(IngestError, match=r"reference 'T2w' is not one of .*\['FLAIR', 'T1w'\]"):
        RadiObject.from_images(tmp_path / "r", niftis, reference="T2w", progress=False)
    assert not (tmp_path / "r").exists()


def test_every_subject_needs_a_reference_volume(niftis, tmp_path):
    images = {"T1w": niftis["T1w"][:1], "FLAIR": niftis["FLAIR"]}
    with pytest.raises(AlignmentError, match=r"\['sub-b'\] have a 'FLAIR' volume but none"):
        RadiObject.from_images(tmp_path / "r", images, reference="T1w", progress=False)


def test_write_and_add_collection_keep_the_reference(radi, tmp_path):
    copy = radi.select_collections(["T1w", "FLAIR"]).write(tmp_path / "copy")
    assert copy.reference == "T1w"
    assert radi.select_collections(["FLAIR"]).write(tmp_path / "flair").reference is None
    copy.add_collection("PD", radi.PD, progress=False)  # another grid: welcome
    ds = VolumeCollectionDataset([copy.T1w, copy.PD])
    assert ds.refs[0].grid(1) is not None
    assert ds.refs[0].grid(0) is None


def test_predictions_are_written_on_the_reference_grid(radi, tmp_path):
    copy = radi.select_collections(["T1w", "FLAIR"]).write(tmp_path / "c")
    loader = create_inference_dataloader(copy.FLAIR, patch_size=16, overlap=0.25, batch_size=4)
    pred = PredictionWriter(loader, copy, "pred").run(lambda x: torch.cat([x, 100 - x], dim=1))
    assert pred.iloc[0].shape == REF_SHAPE
    np.testing.assert_allclose(pred.iloc[0].affine, T1_AFFINE, atol=1e-9)


def test_add_subject_takes_volumes_on_their_own_grids(radi, tmp_path):
    copy = radi.select_collections(["T1w", "FLAIR"]).write(tmp_path / "c")
    volumes = {"T1w": smooth(REF_SHAPE, 7), "FLAIR": smooth(FLAIR_SHAPE, 8)}
    with pytest.raises(AlignmentError, match="needs a volume in the reference collection 'T1w'"):
        copy.add_subject("sub-c", {"FLAIR": volumes["FLAIR"]}, affine=FLAIR_AFFINE)
    copy.add_subject(
        "sub-c", volumes, affine={"T1w": T1_AFFINE, "FLAIR": FLAIR_AFFINE}, obs_meta={}
    )
    ds = VolumeCollectionDataset([copy.T1w, copy.FLAIR])
    (ref,) = [r for r in ds.refs if r.obs_subject_id == "sub-c"]
    assert ref.shape == REF_SHAPE
    assert ref.grid(1) == grid_map(T1_AFFINE, FLAIR_AFFINE, FLAIR_SHAPE)
