"""PyTorch loading for radiobject: MONAI-style dict datasets, TorchIO subjects, loaders.

Needs torch (``pip install 'radiobject[monai]'``, ``'radiobject[torchio]'`` or
``'radiobject[ml]'``). ``VolumeCollectionSubjectsDataset`` also needs TorchIO.
"""

from __future__ import annotations

from typing import Any

try:
    import torch  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    from radiobject._errors import OptionalDependencyError

    raise OptionalDependencyError(
        "radiobject.ml needs PyTorch: pip install 'radiobject[monai]' (MONAI), "
        "'radiobject[torchio]' (TorchIO) or 'radiobject[ml]' (both)"
    ) from e

from radiobject.ml._config import DatasetConfig, LoadingMode
from radiobject.ml._dataset import VolumeCollectionDataset
from radiobject.ml._distributed import DistributedEpochSampler, create_distributed_dataloader
from radiobject.ml._grid import GridPatchDataset, grid_positions, importance_map
from radiobject.ml._inference import PredictionWriter
from radiobject.ml._loaders import (
    EpochSampler,
    create_inference_dataloader,
    create_segmentation_dataloader,
    create_training_dataloader,
    create_validation_dataloader,
)
from radiobject.ml._plan import RegionRead, SamplePlan
from radiobject.ml._probe import LoaderProbe, ProbeRecord, ProbeResult
from radiobject.ml._randomness import SeededGlobally, sample_generator, sample_rng
from radiobject.ml._read_ahead import ReadAheadSchedule
from radiobject.ml._recipe import LoaderRecipe
from radiobject.ml._segmentation import SegmentationDataset
from radiobject.ml._start_method import default_start_method
from radiobject.ml._state import RadiObjectLoader, ResumableSampler
from radiobject.ml._workers import (
    loader_cache_counters,
    loader_pids,
    loader_stage_counters,
    worker_init,
)

__all__ = [
    "DatasetConfig",
    "DistributedEpochSampler",
    "EpochSampler",
    "GridPatchDataset",
    "LoaderProbe",
    "LoaderRecipe",
    "LoadingMode",
    "PredictionWriter",
    "ProbeRecord",
    "ProbeResult",
    "RadiObjectLoader",
    "ResumableSampler",
    "ReadAheadSchedule",
    "RegionRead",
    "SamplePlan",
    "SeededGlobally",
    "SegmentationDataset",
    "VolumeCollectionDataset",
    "VolumeCollectionSubjectsDataset",
    "create_distributed_dataloader",
    "create_inference_dataloader",
    "create_segmentation_dataloader",
    "create_training_dataloader",
    "create_validation_dataloader",
    "default_start_method",
    "grid_positions",
    "importance_map",
    "loader_cache_counters",
    "loader_pids",
    "loader_stage_counters",
    "sample_generator",
    "sample_rng",
    "worker_init",
]

_TORCHIO = {"VolumeCollectionSubjectsDataset", "TileDBScalarImage", "TileDBLabelMap"}


def __getattr__(name: str) -> Any:
    if name in _TORCHIO:  # imported on first use: TorchIO is optional
        from radiobject.ml import _torchio

        return getattr(_torchio, name)
    raise AttributeError(f"module 'radiobject.ml' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _TORCHIO)
