"""What built a loader: its factory and arguments, kept on the loader to build variants.

Every factory (``create_*_dataloader``) records its call on the loader it returns
(:attr:`RadiObjectLoader.recipe`), so a tool given a loader (the ``LoaderTuner``, a
script) learns how it was made from the loader object itself, without iterating it, and
builds the same loader with other settings.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ParamSpec, TypeVar

from torch.utils.data import DataLoader

from radiobject._errors import ConfigurationError
from radiobject.ml._config import DatasetConfig, LoadingMode

__all__ = ["LoaderRecipe", "recorded"]

P = ParamSpec("P")
# the loaders the factories return (``RadiObjectLoader``, which holds a ``recipe``)
L = TypeVar("L", bound="DataLoader[Any]")

# what every factory passes on to its DataLoader through ``**loader_kwargs`` (build_loader's)
LOADER_OPTIONS = frozenset(
    {
        "collate_fn",
        "multiprocessing_context",
        "persistent_workers",
        "pin_memory",
        "prefetch_factor",
        "worker_init_fn",
    }
)


@dataclass(frozen=True)
class LoaderRecipe:
    """A loader factory and the arguments it was called with (as passed, by name).

    :meth:`build` calls the factory again, with some arguments changed: a variant of the
    loader with another batch size, workers or patch size. A ``config`` the loader was made
    with takes the new ``patch_size`` and ``patches_per_volume`` (it overrides the patch
    arguments in the factories).

    >>> import os, tempfile
    >>> from radiobject.data import make_sample_radiobject
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "r"), n_subjects=2,
    ...                               shape=(16, 16, 12), modalities=("T1w",), progress=False)
    >>> from radiobject.ml import create_training_dataloader
    >>> loader = create_training_dataloader(radi.T1w, labels="diagnosis", patch_size=8)
    >>> loader.recipe.name, sorted(loader.recipe.arguments)
    ('create_training_dataloader', ['collections', 'labels', 'patch_size'])
    >>> bigger = loader.recipe.build(batch_size=8, patch_size=(12, 12, 8))
    >>> bigger.batch_size, bigger.dataset.config.patch_size, bigger.recipe.arguments["labels"]
    (8, (12, 12, 8), 'diagnosis')
    """

    factory: Callable[..., DataLoader[Any]]
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arguments", MappingProxyType(dict(self.arguments)))

    @property
    def name(self) -> str:
        """The factory's name, e.g. ``"create_segmentation_dataloader"``."""
        return str(getattr(self.factory, "__name__", "make_loader"))

    @property
    def parameters(self) -> frozenset[str]:
        """The factory's named parameters (those :meth:`accepts`)."""
        return frozenset(
            name
            for name, p in inspect.signature(self.factory).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        )

    def accepts(self, name: str) -> bool:
        """Whether the factory has a parameter ``name`` (e.g. ``"patches_per_volume"``)."""
        return name in self.parameters

    def build(self, **changes: Any) -> DataLoader[Any]:
        """A new loader from the factory, with ``changes`` to the recorded arguments."""
        arguments = dict(self.arguments)
        config = arguments.get("config")
        if isinstance(config, DatasetConfig) and {"patch_size", "patches_per_volume"} & set(
            changes
        ):
            arguments["config"] = _with_patches(
                config,
                changes.pop("patch_size", _patch(config)),
                changes.pop("patches_per_volume", config.patches_per_volume),
            )
        unknown = sorted(set(changes) - self.parameters - LOADER_OPTIONS)
        if unknown:
            raise ConfigurationError(
                f"{self.name} has no parameter {', '.join(map(repr, unknown))}; its "
                f"parameters are {sorted(self.parameters)} and the DataLoader options "
                f"{sorted(LOADER_OPTIONS)}"
            )
        arguments.update(changes)
        return self.factory(**arguments)


def _patch(config: DatasetConfig) -> tuple[int, ...] | None:
    return config.patch_size if config.loading_mode is LoadingMode.PATCH else None


def _with_patches(config: DatasetConfig, patch_size: Any, per_volume: Any) -> DatasetConfig:
    """``config`` with another patch size (``None``: whole volumes) and patches per volume."""
    if patch_size == _patch(config) and per_volume == config.patches_per_volume:
        return config  # unchanged: a slice or whole-volume config stays what it was
    if config.loading_mode is LoadingMode.SLAB and patch_size is None:
        return replace(config, patches_per_volume=per_volume)  # still slabs, more or fewer
    mode = LoadingMode.FULL_VOLUME if patch_size is None else LoadingMode.PATCH
    return replace(
        config,
        loading_mode=mode,
        patch_size=patch_size,
        patches_per_volume=per_volume,
        slab=None,
        slab_patch=None,
    )


def recorded(factory: Callable[P, L]) -> Callable[P, L]:
    """Make ``factory`` record its call as the :class:`LoaderRecipe` of each loader it returns."""
    signature = inspect.signature(factory)

    @functools.wraps(factory)
    def call(*args: P.args, **kwargs: P.kwargs) -> L:
        loader = factory(*args, **kwargs)
        arguments: dict[str, Any] = {}
        for name, value in signature.bind(*args, **kwargs).arguments.items():
            if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(value)  # **loader_kwargs, by their own names
            else:
                arguments[name] = value
        loader.recipe = LoaderRecipe(call, arguments)
        return loader

    return call
