"""DatasetConfig validation, factory argument checks and the optional-dependency error."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from radiobject import ConfigurationError, SliceOrientation
from radiobject.ml import (
    DatasetConfig,
    LoadingMode,
    SegmentationDataset,
    create_distributed_dataloader,
    create_training_dataloader,
)


def test_defaults_match_the_seed_table():
    cfg = DatasetConfig()
    assert cfg.loading_mode is LoadingMode.FULL_VOLUME
    assert cfg.patch_size is None
    assert cfg.patches_per_volume == 1
    assert cfg.slice_orientation is SliceOrientation.AXIAL


def test_patch_mode_needs_a_patch_size():
    with pytest.raises(ConfigurationError, match="loading_mode=PATCH needs patch_size"):
        DatasetConfig(loading_mode=LoadingMode.PATCH)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2", None])
def test_patches_per_volume_must_be_a_positive_integer(value):
    with pytest.raises(ConfigurationError, match=r"patches_per_volume must be an integer >= 1"):
        DatasetConfig(loading_mode="patch", patch_size=(8, 8, 8), patches_per_volume=value)


@pytest.mark.parametrize(
    "size",
    [(0, 8, 8), (8, 8), (8, 8, 8, 8), (8, -1, 8), (8.0, 8, 8), (8, True, 8), "abc", 4.5, 0],
)
def test_bad_patch_sizes_are_rejected(size):
    with pytest.raises(ConfigurationError, match="patch_size must be three positive integers"):
        DatasetConfig(loading_mode=LoadingMode.PATCH, patch_size=size)


def test_patch_size_is_normalised_to_a_tuple_of_ints():
    assert DatasetConfig(patch_size=16).patch_size == (16, 16, 16)
    cfg = DatasetConfig(loading_mode="patch", patch_size=np.array([8, 16, 4]))
    assert cfg.patch_size == (8, 16, 4)
    assert all(type(s) is int for s in cfg.patch_size)
    assert DatasetConfig(patches_per_volume=np.int64(3)).patches_per_volume == 3


@pytest.mark.parametrize("mode", ["volumetric", "", 3, None])
def test_unknown_loading_mode_lists_the_allowed_ones(mode):
    with pytest.raises(ConfigurationError, match="loading_mode must be one of FULL_VOLUME, PATCH"):
        DatasetConfig(loading_mode=mode)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("patch", LoadingMode.PATCH),
        ("PATCH", LoadingMode.PATCH),
        ("Slice_2D", LoadingMode.SLICE_2D),
        (LoadingMode.FULL_VOLUME, LoadingMode.FULL_VOLUME),
    ],
)
def test_loading_mode_accepts_values_and_names(given, expected):
    cfg = DatasetConfig(loading_mode=given, patch_size=(4, 4, 4))
    assert cfg.loading_mode is expected


def test_slice_orientation_excludes_isotropic():
    assert DatasetConfig(slice_orientation="coronal").slice_orientation is SliceOrientation.CORONAL
    with pytest.raises(ConfigurationError, match="slice_orientation must be one of AXIAL"):
        DatasetConfig(slice_orientation=SliceOrientation.ISOTROPIC)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_seed_must_be_a_non_negative_integer(seed):
    with pytest.raises(ConfigurationError, match="seed must be an integer >= 0"):
        DatasetConfig(seed=seed)


def test_config_is_frozen_and_errors_are_value_errors():
    cfg = DatasetConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.patch_size = (4, 4, 4)  # type: ignore[misc]
    assert issubclass(ConfigurationError, ValueError)


def test_factory_arguments_are_checked(sample_radi):
    with pytest.raises(ConfigurationError, match="batch_size must be >= 1"):
        create_training_dataloader(sample_radi.T1w, batch_size=0)
    with pytest.raises(ConfigurationError, match="patches_per_volume"):
        create_training_dataloader(sample_radi.T1w, patch_size=(8, 8, 8), patches_per_volume=0)
    with pytest.raises(ConfigurationError, match=r"rank must be in \[0, world_size\)"):
        create_distributed_dataloader(sample_radi.T1w, rank=2, world_size=2)
    with pytest.raises(ConfigurationError, match="foreground_probability must be between 0 and 1"):
        SegmentationDataset(sample_radi.T1w, sample_radi.seg, foreground_probability=1.5)
    with pytest.raises(ConfigurationError, match="class_ratios must be non-negative"):
        SegmentationDataset(sample_radi.T1w, sample_radi.seg, class_ratios=(1.0, -1.0))
    with pytest.raises(ConfigurationError, match="class_ratios must be non-negative"):
        SegmentationDataset(sample_radi.T1w, sample_radi.seg, class_ratios=(0.0, 0.0))


def _import_without(module: str, statement: str) -> str:
    """Run ``statement`` in a fresh interpreter where ``module`` cannot be imported."""
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules[{module!r}] = None  # makes `import {module}` raise ImportError
        import radiobject
        try:
            {statement}
        except radiobject.OptionalDependencyError as e:
            assert isinstance(e, ImportError)
            print("ERROR:", e)
        else:
            print("NO ERROR")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return result.stdout


def test_missing_torch_names_the_extra_to_install():
    out = _import_without("torch", "import radiobject.ml")
    assert out.startswith("ERROR:"), out
    assert "pip install 'radiobject[monai]'" in out


def test_missing_torchio_names_the_extra_to_install():
    out = _import_without("torchio", "from radiobject.ml import VolumeCollectionSubjectsDataset")
    assert out.startswith("ERROR:"), out
    assert "pip install 'radiobject[torchio]'" in out
