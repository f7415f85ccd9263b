"""Every widget takes what the factories return: ``LoaderTuner(loader)``, ``PatchPreview(loader)``.

The tuner learns a loader's factory, arguments and settings from the loader object (its
recipe and dataset), never by iterating it, and builds a variant of it for each run.
"""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")
pytest.importorskip("matplotlib")

from torch.utils.data import DataLoader

from radiobject import ConfigurationError
from radiobject.ml import (
    LoaderRecipe,
    VolumeCollectionDataset,
    create_segmentation_dataloader,
    create_training_dataloader,
)
from radiobject.widgets import LoaderTuner, PatchPreview
from radiobject.widgets._autotune import settings_code
from tests._ml_helpers import loader_factories

FACTORIES = loader_factories(
    {
        "create_training_dataloader": {"labels": "diagnosis"},
        "create_inference_dataloader": {"overlap": 0.5},
        "create_segmentation_dataloader": {"foreground_probability": 0.9},
        "create_distributed_dataloader": {"rank": 1, "world_size": 2},
    }
)


@pytest.fixture
def built(monkeypatch):
    """Every loader a recipe builds (the tuner's runs), in order."""
    loaders = []
    build = LoaderRecipe.build

    def spy(self, **changes):
        loader = build(self, **changes)
        loaders.append(loader)
        return loader

    monkeypatch.setattr(LoaderRecipe, "build", spy)
    return loaders


@pytest.mark.parametrize("factory", FACTORIES)
def test_tuner_takes_the_loader_of_every_factory(sample_radi, built, factory):
    loader = FACTORIES[factory](sample_radi, patch_size=(8, 8, 4), batch_size=3)
    tuner = LoaderTuner(loader, duration_s=0.3)
    s = tuner.settings()
    assert (s.batch_size, s.num_workers, s.patch_size) == (3, 0, (8, 8, 4))  # the loader's
    per_volume = tuner.controls["patches_per_volume"].layout.display != "none"
    assert per_volume == (factory != "create_inference_dataloader")  # a grid has no such thing
    run = tuner.run_sync(batch_size=2, patch_size=(8, 8, 8))
    assert run.error == ""
    assert run.result.batches > 0
    assert run.result.first_batch_samples == 2
    (variant,) = built  # one run, one loader: the same factory and data, the new settings
    assert variant.recipe.name == factory
    assert type(variant.dataset) is type(loader.dataset)
    assert variant.dataset.collections[0].uri == sample_radi.T1w.uri
    assert (variant.batch_size, variant.dataset.config.patch_size) == (2, (8, 8, 8))
    assert variant.sampler.world_size == loader.sampler.world_size
    assert variant.sampler.rank == loader.sampler.rank
    kept = {
        k: v for k, v in loader.recipe.arguments.items() if k not in ("batch_size", "patch_size")
    }
    assert {k: variant.recipe.arguments[k] for k in kept} == kept  # labels, mask, overlap ...
    # the given loader was read, never iterated: no pass started, its settings untouched
    assert loader.sampler.active is None
    assert loader.sampler.epoch == 0
    assert (loader.batch_size, loader.dataset.config.patch_size) == (3, (8, 8, 4))


@pytest.mark.parametrize("factory", FACTORIES)
def test_tuner_code_for_a_loader_rebuilds_it(sample_radi, factory):
    loader = FACTORIES[factory](sample_radi, patch_size=8, batch_size=3)
    tuner = LoaderTuner(loader)
    code = settings_code(tuner.settings(), tuner._loader_call, tuner._takes)
    assert f"loader = {factory}(" in code
    assert ("patches_per_volume" in code) == (factory != "create_inference_dataloader")
    namespace = {"radi": sample_radi}
    exec(code, namespace)  # the code the auto-tune shows runs as written
    again = namespace["loader"]
    assert again.recipe.name == factory
    assert again.batch_size == 3
    assert again.dataset.config.patch_size == (8, 8, 8)
    for name, value in loader.recipe.arguments.items():
        if name not in ("patch_size", "batch_size"):
            assert _plain(again.recipe.arguments[name]) == _plain(value), name


def _plain(value):
    """Collections compared by URI (``radi.T1w`` is a new object each time)."""
    return getattr(value, "uri", value)


def test_tuner_arguments_override_the_loaders(sample_radi):
    loader = create_segmentation_dataloader(sample_radi.T1w, sample_radi.seg, patch_size=8)
    tuner = LoaderTuner(loader, batch_size=5, patch_size=16, num_workers=1)
    s = tuner.settings()
    assert (s.batch_size, s.patch_size, s.num_workers) == (5, (16, 16, 16), 1)
    assert s.patches_per_volume == 1  # the loader's
    whole = create_training_dataloader(sample_radi.T1w)  # whole volumes
    assert LoaderTuner(whole).settings().patch_size is None
    assert LoaderTuner(sample_radi.T1w).settings().patch_size == (32, 32, 32)  # the default


def test_tuner_runs_a_loader_with_workers(sample_radi, built):
    loader = create_training_dataloader(
        sample_radi.T1w, patch_size=8, batch_size=2, num_workers=1, persistent_workers=False
    )
    tuner = LoaderTuner(loader, duration_s=0.3)
    assert tuner.settings().num_workers == 1
    assert tuner.settings().persistent_workers is False  # the loader's own choice
    run = tuner.run_sync()
    assert run.error == ""
    assert run.result.batches > 0
    assert run.result.workers == 1
    assert built[0].num_workers == 1


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (42, "LoaderTuner takes a loader made by radiobject's factories"),
        ("radi.T1w", "LoaderTuner takes a loader"),
        ([], "LoaderTuner takes a loader"),
        (DataLoader(list(range(4))), "not made by radiobject's factories"),
    ],
    ids=["int", "str", "empty list", "DataLoader"],
)
def test_tuner_says_what_it_takes(source, message):
    with pytest.raises(ConfigurationError, match=message):
        LoaderTuner(source)


def test_tuner_refuses_a_dataset_and_a_loader_with_a_mask(sample_radi):
    with pytest.raises(ConfigurationError, match="LoaderTuner takes a loader"):
        LoaderTuner(VolumeCollectionDataset(sample_radi.T1w))
    loader = create_segmentation_dataloader(sample_radi.T1w, sample_radi.seg, patch_size=8)
    with pytest.raises(ConfigurationError, match="pass the loader alone"):
        LoaderTuner(loader, sample_radi.seg)


# -- PatchPreview ----------------------------------------------------------------------------
@pytest.mark.parametrize("factory", FACTORIES)
def test_patch_preview_takes_the_loader_of_every_factory(sample_radi, factory):
    loader = FACTORIES[factory](sample_radi, patch_size=8, batch_size=2)
    preview = PatchPreview(loader, n=3)
    assert preview.error == ""
    assert len(preview.patches) == 3
    assert all(p.size == (8, 8, 8) for p in preview.patches)
    assert preview.location_png() is not None  # where they came from, in the volume
    has_mask = factory == "create_segmentation_dataloader"
    assert all((p.mask is not None) == has_mask for p in preview.patches)


@pytest.mark.parametrize("source", ["collection", "collections", 3])
def test_patch_preview_says_what_it_takes(sample_radi, source):
    given = {"collection": sample_radi.T1w, "collections": [sample_radi.T1w], 3: 3}[source]
    message = "make one from the collections first" if source != 3 else "takes a DataLoader"
    with pytest.raises(ConfigurationError, match=message):
        PatchPreview(given)
