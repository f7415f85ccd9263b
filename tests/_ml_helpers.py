"""Code that runs inside DataLoader workers and spawned processes of the ML tests.

Spawned and forkserver children unpickle classes and functions by importing their module,
so they live here (tests put this folder on ``sys.path``) and not in test modules.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import radiobject
from radiobject.ml import (
    VolumeCollectionDataset,
    create_distributed_dataloader,
    create_inference_dataloader,
    create_segmentation_dataloader,
    create_training_dataloader,
    create_validation_dataloader,
)
from radiobject.read._region import _HANDLES, block_cache

# each loader factory: the function, what it reads from a cohort, its fixed arguments
_FACTORIES: dict[str, tuple[Callable[..., Any], Callable[[Any], tuple[Any, ...]], dict]] = {
    "create_training_dataloader": (create_training_dataloader, lambda r: (r.T1w,), {}),
    "create_validation_dataloader": (create_validation_dataloader, lambda r: (r.T1w,), {}),
    "create_inference_dataloader": (create_inference_dataloader, lambda r: (r.T1w,), {}),
    "create_segmentation_dataloader": (
        create_segmentation_dataloader,
        lambda r: (r.T1w, r.seg),
        {},
    ),
    "create_distributed_dataloader": (
        create_distributed_dataloader,
        lambda r: (r.T1w,),
        {"rank": 0, "world_size": 1},
    ),
}


def loader_factories(
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Callable[..., Any]]:
    """Every loader factory by name, as ``make(radi, **kwargs)`` over the cohort's T1w (and seg).

    ``extra`` gives a factory (by name) more fixed arguments, e.g.
    ``{"create_distributed_dataloader": {"rank": 1, "world_size": 2}}``.
    """
    extra = extra or {}
    return {
        name: functools.partial(_make, factory, inputs, {**fixed, **extra.get(name, {})})
        for name, (factory, inputs, fixed) in _FACTORIES.items()
    }


def _make(factory: Any, inputs: Any, fixed: dict[str, Any], radi: Any, **kwargs: Any) -> Any:
    return factory(*inputs(radi), **fixed, **kwargs)


class ConfigProbeDataset(VolumeCollectionDataset):
    """A documented subclass: adds what the process reading the sample sees."""

    def build_sample(self, plan: Any, arrays: Any) -> dict[str, Any]:
        sample = super().build_sample(plan, arrays)
        sample["pid"] = os.getpid()
        sample["max_workers"] = radiobject.get_config().read.max_workers
        sample["cache_mb"] = radiobject.get_config().read.cache_mb
        sample["cache_bytes"] = block_cache().maxsize
        return sample


class ContextProbeDataset(VolumeCollectionDataset):
    """Adds the settings of the contexts whose handles read this sample's volumes here."""

    def build_sample(self, plan: Any, arrays: Any) -> dict[str, Any]:
        sample = super().build_sample(plan, arrays)
        ref = self.refs[self.volume_of(plan.index)]
        handles = [h for (uri, _), (h, _) in _HANDLES.get().cache.items() if uri in ref.uris]
        levels = {h.ctx.config()["sm.compute_concurrency_level"] for h in handles}
        sample["pid"] = os.getpid()
        sample["read_concurrency"] = ",".join(sorted(levels))
        sample["channels_read"] = len({(h.uri, id(h.ctx)) for h in handles})
        return sample


class FailOnSubject:
    """A transform that fails on one subject (it runs in workers too)."""

    def __init__(self, subject: str) -> None:
        self.subject = subject

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        if sample["obs_subject_id"] == self.subject:
            raise LookupError(f"no label for {self.subject}")
        return sample


def distributed_worker(
    rank: int, world_size: int, init_method: str, radi_uri: str, out_dir: str
) -> None:
    """One rank: load its shard for two epochs and write what it saw to ``out_dir``."""
    import torch.distributed as dist

    from radiobject.ml import create_distributed_dataloader

    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        radi = radiobject.RadiObject(radi_uri)
        loader = create_distributed_dataloader(
            radi.T1w, rank, world_size, batch_size=2, patch_size=(8, 8, 8), seed=5
        )
        seen: dict[str, list[Any]] = {}
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            items = []
            for batch in loader:
                for obs_id, start in zip(batch["obs_id"], batch["patch_start"], strict=True):
                    items.append([obs_id, start.tolist()])
            seen[str(epoch)] = items
        # all ranks finish loading before any leaves the group
        dist.barrier()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(seen))
    finally:
        dist.destroy_process_group()
