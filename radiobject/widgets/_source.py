"""What a ``LoaderTuner`` is given: a loader, collections or a ``make_loader`` function.

A loader made by radiobject's factories carries its recipe (factory and arguments,
:class:`~radiobject.ml.LoaderRecipe`): the tuner learns the loader's settings from the loader
object and its dataset, never by iterating it, and builds a variant for each run.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import DataLoader

from radiobject import ConfigurationError, VolumeCollection
from radiobject.ml import DatasetConfig, LoaderRecipe, LoadingMode, RadiObjectLoader

from ._runs import MakeLoader, factory, factory_call, on_s3

__all__ = ["DEFAULTS", "LEARNT", "Learnt", "TunerSource", "cube", "recipe_call", "tuner_source"]

# the loader settings the tuner's controls set (TunerSettings.loader_kwargs, and the checkbox)
CONTROLLED = ("batch_size", "num_workers", "patch_size", "patches_per_volume")
# the tuner's first settings when it is not given a loader to learn them from
DEFAULTS: Mapping[str, Any] = {
    "patch_size": (32, 32, 32),
    "batch_size": 4,
    "patches_per_volume": 4,
    "num_workers": 0,
}


class Learnt(enum.Enum):
    """The default of a ``LoaderTuner`` setting: the given loader's, else :data:`DEFAULTS`."""

    FROM_SOURCE = "the loader's setting, else the tuner's default"


LEARNT = Learnt.FROM_SOURCE


def cube(patch_size: Any) -> tuple[int, int, int] | None:
    """A patch size as three ints (one int is a cube; ``None`` stays ``None``).

    >>> cube(16), cube([8, 8, 4]), cube(None)
    ((16, 16, 16), (8, 8, 4), None)
    """
    if patch_size is None:
        return None
    # mypy is silenced on the next line: DatasetConfig checks and normalises it to three ints
    return DatasetConfig(patch_size=patch_size).patch_size  # type: ignore[return-value]


@dataclass(frozen=True)
class TunerSource:
    """How a tuner makes its loaders, and what it learnt from what it was given.

    Attributes:
        make: ``make(batch_size=, num_workers=, patch_size=, patches_per_volume=[,
            persistent_workers=])`` returning a loader.
        call: the factory call as code, up to the settings' arguments (for the code shown).
        builtin: one of radiobject's factories (it takes ``persistent_workers`` too).
        remote: the collections are on ``s3://``.
        settings: loader settings learnt from a given loader (empty otherwise).
        takes: the controlled settings the factory takes (all of them but for a factory
            without ``patches_per_volume``, such as ``create_inference_dataloader``).
    """

    make: MakeLoader
    call: str
    builtin: bool
    remote: bool
    settings: Mapping[str, Any] = field(default_factory=dict)
    takes: tuple[str, ...] = CONTROLLED


def tuner_source(
    source: Any, mask: VolumeCollection | None, loader_kwargs: Mapping[str, Any]
) -> TunerSource:
    """The :class:`TunerSource` of what ``LoaderTuner`` was given, or a clear error.

    >>> tuner_source(42, None, {})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    radiobject._errors.ConfigurationError: LoaderTuner takes a loader made by radiobject's...
    """
    if isinstance(source, DataLoader):
        recipe = source.recipe if isinstance(source, RadiObjectLoader) else None
        if recipe is None or not isinstance(source, RadiObjectLoader):
            raise ConfigurationError(
                f"LoaderTuner cannot rebuild this {type(source).__name__}: it was not made by "
                "radiobject's factories (create_*_dataloader), which record how they built "
                "it. Pass make_loader(batch_size=, num_workers=, patch_size=, "
                "patches_per_volume=), a function that builds it, instead"
            )
        if mask is not None:
            raise ConfigurationError(
                f"LoaderTuner(loader, mask): the loader has its data already ({recipe.name}); "
                "pass the loader alone"
            )
        return _from_loader(source, recipe, loader_kwargs)
    collections = _collections(source)
    if collections is not None:
        return TunerSource(
            make=factory(source, mask, dict(loader_kwargs)),
            call=factory_call(source, mask, loader_kwargs),
            builtin=True,
            remote=on_s3(collections),
        )
    if callable(source):
        name = getattr(source, "__name__", "make_loader")
        return TunerSource(make=source, call=f"{name}(", builtin=False, remote=False)
    raise ConfigurationError(
        "LoaderTuner takes a loader made by radiobject's factories (e.g. "
        "create_training_dataloader(...)), a collection or a list of them (e.g. radi.T1w), or "
        f"a function make_loader(batch_size=, num_workers=, patch_size=, "
        f"patches_per_volume=); got {type(source).__name__} {source!r:.80}"
    )


def _collections(source: Any) -> list[VolumeCollection] | None:
    if isinstance(source, VolumeCollection):
        return [source]
    if (
        isinstance(source, (list, tuple))
        and source
        and all(isinstance(c, VolumeCollection) for c in source)
    ):
        return list(source)
    return None


def _from_loader(
    loader: RadiObjectLoader, recipe: LoaderRecipe, loader_kwargs: Mapping[str, Any]
) -> TunerSource:
    takes = tuple(name for name in CONTROLLED if recipe.accepts(name))
    extra = dict(loader_kwargs)

    def make(**settings: Any) -> DataLoader[Any]:
        # settings a factory lacks (patches per volume of whole-volume inference) do not apply
        given = {k: v for k, v in settings.items() if k in takes or k == "persistent_workers"}
        return recipe.build(**given, **extra)

    dataset = loader.dataset
    config = getattr(dataset, "config", None)
    patching = isinstance(config, DatasetConfig) and config.loading_mode is LoadingMode.PATCH
    persistent = recipe.arguments.get("persistent_workers")
    settings = {
        "batch_size": loader.batch_size,
        "num_workers": loader.num_workers,
        "patch_size": config.patch_size if patching and config is not None else None,
        "patches_per_volume": config.patches_per_volume if config is not None else 1,
        "persistent_workers": True if persistent is None else bool(persistent),
    }
    collections = list(getattr(dataset, "collections", []))
    masks = getattr(dataset, "mask", None)
    return TunerSource(
        make=make,
        call=recipe_call(LoaderRecipe(recipe.factory, {**recipe.arguments, **extra})),
        builtin=True,
        remote=on_s3(collections + ([masks] if masks is not None else [])),
        settings=settings,
        takes=takes,
    )


def recipe_call(recipe: LoaderRecipe, exclude: Sequence[str] = CONTROLLED) -> str:
    """``recipe``'s factory call as code, without ``exclude`` and without the closing paren.

    Leading collections are written positionally as ``radi.<name>``; the other arguments
    by name (functions by their name, enums by their value).

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), progress=False)
    >>> from radiobject.ml import create_segmentation_dataloader
    >>> loader = create_segmentation_dataloader(radi.T1w, radi.seg, patch_size=8,
    ...                                         foreground_probability=0.9, batch_size=2)
    >>> recipe_call(loader.recipe)
    'create_segmentation_dataloader(radi.T1w, radi.seg, foreground_probability=0.9'
    """
    positional: list[str] = []
    named: list[str] = []
    for name, value in recipe.arguments.items():
        if name in exclude:
            continue
        if _collections(value) is not None and not named:
            positional.append(_code(value))
        else:
            named.append(f"{name}={_code(value)}")
    return f"{recipe.name}(" + ", ".join(positional + named)


def _code(value: Any) -> str:
    """``value`` as code: collections as ``radi.<name>``, functions by name, enums by value."""
    if isinstance(value, VolumeCollection):
        name = str(value.name)
        return f"radi.{name}" if name.isidentifier() else f"radi[{name!r}]"
    if isinstance(value, (list, tuple)) and _collections(value) is not None:
        return "[" + ", ".join(_code(c) for c in value) + "]"
    if isinstance(value, enum.Enum):
        return repr(value.value)
    if callable(value) and hasattr(value, "__name__"):
        return str(value.__name__)
    return repr(value)
