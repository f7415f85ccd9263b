"""One parameter style: every factory and dataset takes and checks the shared parameters alike.

``patch_size`` (int or three ints), ``batch_size``, ``num_workers``, ``transform`` and ``ctx``
mean the same everywhere; every spelling of a good value gives the same loader, and every bad
value is a ``ConfigurationError`` naming the function and the parameter. Also the recipe each
factory records on its loader (what the ``LoaderTuner`` rebuilds from).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import tiledb
import torch

from radiobject import ConfigurationError
from radiobject.ml import (
    DatasetConfig,
    GridPatchDataset,
    LoaderProbe,
    LoaderRecipe,
    LoadingMode,
    SegmentationDataset,
    VolumeCollectionDataset,
    create_inference_dataloader,
    create_segmentation_dataloader,
    create_training_dataloader,
    create_validation_dataloader,
)
from radiobject.ml._loaders import build_loader
from radiobject.ml._recipe import LOADER_OPTIONS
from tests._ml_helpers import loader_factories

# every factory, called on the sample cohort with the shared parameters given by name
FACTORIES = loader_factories()


def _identity(sample):
    return sample


GOOD = {  # parameter: values that must all give what the first one gives
    "patch_size": [(8, 8, 8), 8, [8, 8, 8], np.array([8, 8, 8]), torch.Size([8, 8, 8])],
    "batch_size": [2, np.int64(2)],
    "num_workers": [0, np.int32(0)],
    "transform": [None, _identity],
}
BAD = {
    "patch_size": [
        0,
        -8,
        (8, 8),
        (8, 8, 8, 8),
        (8, 0, 8),
        (8.0, 8, 8),
        8.5,
        "8",
        True,
        (8, True, 8),
    ],
    "batch_size": [0, -1, 2.5, "2", True, None],
    "num_workers": [-1, 1.5, "1", True, None],
    "transform": ["flip", 3, {"image": 1}],
    "ctx": ["ctx", {"sm.memory_budget": "1"}, tiledb.Config()],
}
TABLE_BAD = [(f, p, v) for f in FACTORIES for p, values in BAD.items() for v in values]
TABLE_GOOD = [(f, p) for f in FACTORIES for p in GOOD]


# the other arguments of a call (patches: small batches, and inference reads patches too)
BASE = {"patch_size": (8, 8, 8), "batch_size": 2}


def _first_batch(loader):
    return next(iter(loader))


@pytest.mark.parametrize(("factory", "parameter", "value"), TABLE_BAD, ids=str)
def test_bad_values_raise_a_configuration_error_naming_the_parameter(
    sample_radi, factory, parameter, value
):
    kwargs = BASE | {parameter: value}
    with pytest.raises(ConfigurationError, match=rf"^{factory}: {parameter} must be") as info:
        FACTORIES[factory](sample_radi, **kwargs)
    assert repr(value)[:20] in str(info.value) or type(value).__name__ in str(info.value)


@pytest.mark.parametrize(("factory", "parameter"), TABLE_GOOD, ids=str)
def test_every_spelling_of_a_good_value_gives_the_same_loader(sample_radi, factory, parameter):
    make = FACTORIES[factory]
    first, *others = GOOD[parameter]
    reference = make(sample_radi, **(BASE | {parameter: first}))
    expected = _first_batch(reference)
    for value in others:
        loader = make(sample_radi, **(BASE | {parameter: value}))
        assert loader.batch_size == reference.batch_size == 2
        assert loader.num_workers == reference.num_workers == 0
        assert loader.dataset.config.patch_size == (8, 8, 8)
        assert all(type(s) is int for s in loader.dataset.config.patch_size)
        if parameter == "transform":
            assert loader.dataset.transform is value
        batch = _first_batch(loader)
        assert batch["obs_id"] == expected["obs_id"], (factory, parameter, value)
        assert torch.equal(batch["image"], expected["image"]), (factory, parameter, value)


@pytest.mark.parametrize("factory", FACTORIES)
def test_ctx_reads_every_collection_with_that_context(sample_radi, factory):
    ctx = tiledb.Ctx({"sm.memory_budget": str(64 << 20)})
    plain = FACTORIES[factory](sample_radi, patch_size=8, batch_size=2)
    loader = FACTORIES[factory](sample_radi, patch_size=8, batch_size=2, ctx=ctx)
    assert all(c.ctx is ctx for c in loader.dataset.collections)
    if factory == "create_segmentation_dataloader":
        assert loader.dataset.mask.ctx is ctx
        assert all(r.ctx is ctx for r in loader.dataset.plan((0, 0)).reads)  # image and mask
    assert torch.equal(_first_batch(loader)["image"], _first_batch(plain)["image"])


def test_ctx_leaves_the_callers_collections_alone(sample_radi):
    ctx = tiledb.Ctx()
    t1, seg = sample_radi.T1w, sample_radi.seg
    before = (t1.ctx, seg.ctx)
    loader = create_segmentation_dataloader(t1, seg, patch_size=8, ctx=ctx)
    assert (t1.ctx, seg.ctx) == before  # copies read with ctx; the caller's keep their own
    assert ctx not in before
    assert loader.dataset.collections[0] is not t1
    assert loader.dataset.collections[0].obs_ids == t1.obs_ids  # the same volumes


@pytest.mark.parametrize("factory", FACTORIES)
def test_num_workers_is_the_loaders(sample_radi, factory):
    loader = FACTORIES[factory](sample_radi, patch_size=8, num_workers=np.int64(1))
    assert loader.num_workers == 1
    assert type(loader.num_workers) is int


def test_patch_size_16_is_a_cube_in_training_as_in_inference(sample_radi):
    """The issue's case: an int patch size was a TypeError in create_training_dataloader."""
    training = create_training_dataloader(sample_radi.T1w, patch_size=16, batch_size=2)
    inference = create_inference_dataloader(sample_radi.T1w, patch_size=16, batch_size=2)
    assert training.dataset.config.patch_size == inference.dataset.config.patch_size
    assert tuple(_first_batch(training)["image"].shape) == (2, 1, 16, 16, 16)


# -- datasets --------------------------------------------------------------------------------
DATASETS = {
    "VolumeCollectionDataset": lambda radi, **kw: VolumeCollectionDataset(
        radi.T1w, DatasetConfig(loading_mode="patch", patch_size=8), **kw
    ),
    "SegmentationDataset": lambda radi, **kw: SegmentationDataset(
        radi.T1w, radi.seg, DatasetConfig(loading_mode="patch", patch_size=8), **kw
    ),
    "GridPatchDataset": lambda radi, **kw: GridPatchDataset(radi.T1w, 8, **kw),
}


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize(
    ("parameter", "value"), [(p, v) for p in ("transform", "ctx") for v in BAD[p]], ids=str
)
def test_datasets_check_transform_and_ctx_alike(sample_radi, dataset, parameter, value):
    with pytest.raises(ConfigurationError, match=rf"^{dataset}: {parameter} must be"):
        DATASETS[dataset](sample_radi, **{parameter: value})


@pytest.mark.parametrize("dataset", DATASETS)
def test_datasets_read_with_the_ctx_given(sample_radi, dataset):
    ctx = tiledb.Ctx()
    ds = DATASETS[dataset](sample_radi, ctx=ctx, transform=_identity)
    assert all(read.ctx is ctx for read in ds.plan((0, 3)).reads)
    plain = DATASETS[dataset](sample_radi)
    assert torch.equal(ds[(0, 3)]["image"], plain[(0, 3)]["image"])


def test_torchio_subjects_dataset_checks_transform_and_ctx(sample_radi):
    pytest.importorskip("torchio")
    from radiobject.ml import VolumeCollectionSubjectsDataset

    where = "VolumeCollectionSubjectsDataset"
    with pytest.raises(ConfigurationError, match=rf"^{where}: transform must be"):
        VolumeCollectionSubjectsDataset(sample_radi.T1w, transform="flip")
    with pytest.raises(ConfigurationError, match=rf"^{where}: ctx must be"):
        VolumeCollectionSubjectsDataset(sample_radi.T1w, ctx="ctx")
    ctx = tiledb.Ctx()
    ds = VolumeCollectionSubjectsDataset(sample_radi.T1w, ctx=ctx)
    assert ds.collections[0].ctx is ctx


@pytest.mark.parametrize("value", BAD["patch_size"])
def test_patch_size_is_checked_alike_by_config_grid_and_factories(sample_radi, value):
    with pytest.raises(ConfigurationError, match=r"^DatasetConfig: patch_size must be three"):
        DatasetConfig(loading_mode=LoadingMode.PATCH, patch_size=value)
    with pytest.raises(ConfigurationError, match=r"^GridPatchDataset: patch_size must be three"):
        GridPatchDataset(sample_radi.T1w, value)


def test_build_loader_checks_batch_size_and_workers_too(sample_radi):
    loader = create_training_dataloader(sample_radi.T1w, patch_size=8)
    for name, value in (("batch_size", 0), ("num_workers", -2)):
        kwargs = {"batch_size": 2, "sampler": loader.sampler} | {name: value}
        with pytest.raises(ConfigurationError, match=rf"^build_loader: {name} must be"):
            build_loader(loader.dataset, **kwargs)


# -- the recipe each loader carries ----------------------------------------------------------
@pytest.mark.parametrize("factory", FACTORIES)
def test_every_factory_records_its_call_on_the_loader(sample_radi, factory):
    loader = FACTORIES[factory](sample_radi, patch_size=8, batch_size=2)
    recipe = loader.recipe
    assert isinstance(recipe, LoaderRecipe)
    assert recipe.name == factory
    assert recipe.arguments["patch_size"] == 8  # as passed
    assert recipe.arguments["collections" if "image" not in recipe.arguments else "image"]
    again = recipe.build()
    assert again.recipe == recipe
    assert torch.equal(_first_batch(again)["image"], _first_batch(loader)["image"])
    variant = recipe.build(batch_size=3, patch_size=(8, 8, 4))
    assert variant.batch_size == 3
    assert variant.dataset.config.patch_size == (8, 8, 4)
    assert variant.recipe.arguments["batch_size"] == 3
    assert loader.batch_size == 2  # the original is left alone
    with pytest.raises(ConfigurationError, match=f"{factory} has no parameter 'batch'"):
        recipe.build(batch=3)


def test_recipe_keeps_loader_kwargs_by_name(sample_radi):
    loader = create_training_dataloader(sample_radi.T1w, patch_size=8, prefetch_factor=None)
    assert loader.recipe.arguments["prefetch_factor"] is None
    assert "loader_kwargs" not in loader.recipe.arguments
    with pytest.raises(TypeError):
        loader.recipe.arguments["batch_size"] = 3  # frozen: a read-only mapping


def test_recipe_folds_patch_settings_into_a_given_config(sample_radi):
    config = DatasetConfig(loading_mode="patch", patch_size=8, patches_per_volume=2, seed=5)
    loader = create_validation_dataloader(sample_radi.T1w, config=config)
    variant = loader.recipe.build(patch_size=(4, 4, 4), patches_per_volume=3)
    assert variant.dataset.config.patch_size == (4, 4, 4)
    assert variant.dataset.config.patches_per_volume == 3
    assert variant.dataset.config.seed == 5
    assert variant.dataset.config.fixed_epoch  # validation's, kept
    whole = loader.recipe.build(patch_size=None)
    assert whole.dataset.config.loading_mode is LoadingMode.FULL_VOLUME
    slices = create_training_dataloader(
        sample_radi.T1w, config=DatasetConfig(loading_mode="slice_2d")
    )
    same = slices.recipe.build(patch_size=None, patches_per_volume=1, batch_size=8)
    assert same.dataset.config.loading_mode is LoadingMode.SLICE_2D  # nothing to change


def test_loader_options_are_build_loaders():
    params = set(inspect.signature(build_loader).parameters)
    assert params - {"dataset", "batch_size", "sampler", "num_workers", "drop_last"} == set(
        LOADER_OPTIONS
    )


@pytest.mark.parametrize("factory", FACTORIES)
def test_probe_measures_what_every_factory_returns(sample_radi, factory):
    loader = FACTORIES[factory](sample_radi, patch_size=8, batch_size=2)
    result = LoaderProbe(loader, interval_s=0.0).run(n_batches=2)
    assert (result.batches, result.samples, result.error) == (2, 4, None)


def test_probe_says_what_it_takes(sample_radi):
    dataset = VolumeCollectionDataset(sample_radi.T1w)
    for source in ("loader", None, sample_radi.T1w, [sample_radi.T1w], dataset):
        with pytest.raises(ConfigurationError, match="LoaderProbe measures a DataLoader"):
            LoaderProbe(source)
    loader = create_training_dataloader(sample_radi.T1w, patch_size=8)
    with pytest.raises(ConfigurationError, match="interval_s must be"):
        LoaderProbe(loader, interval_s=-1)
