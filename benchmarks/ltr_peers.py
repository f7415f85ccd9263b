"""The loader peers of ``larger_than_ram.py``: their copies of the cohort and their epochs.

- tensorstore, zarr v3 sharded (one shard per volume, 32³ inner chunks, blosc LZ4 + shuffle),
  read patch by patch like the other formats (same positions);
- MONAI: ``PersistentDataset`` (``LoadImaged`` cached as ``.pt`` files, written in the first
  epoch) plus ``RandSpatialCropd`` (``RandSpatialCropSamplesd`` for several patches per
  volume load): a MONAI user's fast path. Positions are MONAI's own (its API draws them);
- TorchIO: ``tio.Queue`` over ``tio.SubjectsDataset`` with a ``UniformSampler``, 2 workers
  loading subjects (they help it: loading a volume is its cost);
- radiobject through ``create_training_dataloader`` (its positions are its own too).

Every loader yields batches of 4 patches of 64³ in one process (TorchIO's queue workers
aside); each epoch is ``n_volumes x per_volume`` patches.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

PATCH = 64
BATCH = 4


def write_tensorstore(path: Path, array: np.ndarray) -> None:
    """``array``, in its dtype, as zarr v3: one shard (the volume) of 32³ blosc-LZ4 chunks."""
    import tensorstore as ts

    shard = [-(-n // 32) * 32 for n in array.shape]  # the volume, in whole inner chunks
    spec = {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": str(path)},
        "metadata": {
            "shape": list(array.shape),
            "data_type": array.dtype.name,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": shard}},
            "codecs": [
                {
                    "name": "sharding_indexed",
                    "configuration": {
                        "chunk_shape": [32, 32, 32],
                        "codecs": [
                            {"name": "bytes", "configuration": {"endian": "little"}},
                            {
                                "name": "blosc",
                                "configuration": {
                                    "cname": "lz4",
                                    "clevel": 5,
                                    "shuffle": "shuffle",
                                    "typesize": array.dtype.itemsize,
                                },
                            },
                        ],
                        "index_codecs": [
                            {"name": "bytes", "configuration": {"endian": "little"}},
                            {"name": "crc32c"},
                        ],
                    },
                }
            ],
        },
        "create": True,
        "delete_existing": True,
    }
    store = ts.open(spec).result()
    store.write(np.ascontiguousarray(array)).result()


def open_tensorstore(path: Path) -> Any:
    import tensorstore as ts

    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)}}
    return ts.open(spec, open=True, read=True).result()


def write_nifti(path: Path, array: np.ndarray) -> None:
    """Uncompressed ``.nii`` (MONAI and TorchIO read it without a decompression step)."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4)), str(path))


def make_peer_copies(root: Path, volumes: Iterable[Callable[[], np.ndarray]]) -> None:
    """The tensorstore and NIfTI copies, written once (``peers.json`` marks them complete)."""
    done = root / "peers.json"
    if done.exists():
        return
    for d in ("tensorstore", "nii"):
        shutil.rmtree(root / d, ignore_errors=True)
        (root / d).mkdir()
    for i, load in enumerate(volumes):
        data = load()
        write_tensorstore(root / "tensorstore" / f"{i}.zarr", data)
        write_nifti(root / "nii" / f"{i}.nii", data)
    done.write_text(json.dumps({"written": time.time()}))


def timed_epochs(
    loader: Any, epochs: int, per_epoch: int, between: Callable[[], None] | None = None
) -> list[float]:
    """Patches per second of each epoch of ``loader`` (it must yield ``per_epoch`` patches).

    ``between`` runs between epochs and after the last, untimed (e.g. waiting for the
    tier's fills: the automatic tier fills in epoch 2, what a user tier fills in epoch 1).
    """
    rates = []
    for epoch in range(epochs):
        if epoch >= 1 and between is not None:
            between()
        start = time.perf_counter()
        n = 0
        for batch in loader:
            image = batch["image"] if isinstance(batch, dict) else batch
            n += int(image.shape[0])
            assert tuple(image.shape[-3:]) == (PATCH, PATCH, PATCH)
        rates.append(n / (time.perf_counter() - start))
        assert n == per_epoch, (n, per_epoch)
    return rates


def monai_epochs(root: Path, n: int, per: int, epochs: int) -> list[float]:
    """MONAI ``PersistentDataset`` + random crops; epoch 1 writes its cache."""
    from monai.data import DataLoader, PersistentDataset
    from monai.transforms import Compose, LoadImaged, RandSpatialCropd, RandSpatialCropSamplesd

    cache = root / "monai-cache"
    shutil.rmtree(cache, ignore_errors=True)
    roi = (PATCH, PATCH, PATCH)
    crop = (
        RandSpatialCropd("image", roi_size=roi, random_size=False)
        if per == 1
        else RandSpatialCropSamplesd("image", roi_size=roi, num_samples=per, random_size=False)
    )
    transform = Compose([LoadImaged("image", ensure_channel_first=True, image_only=True), crop])
    data = [{"image": str(root / "nii" / f"{i}.nii")} for i in range(n)]
    ds = PersistentDataset(data, transform=transform, cache_dir=str(cache))
    loader = DataLoader(ds, batch_size=max(1, BATCH // per), shuffle=True, num_workers=0)
    return timed_epochs(loader, epochs, n * per)


def torchio_epochs(root: Path, n: int, per: int, epochs: int, workers: int = 2) -> list[float]:
    """TorchIO ``Queue`` with a uniform sampler, ``workers`` processes loading subjects."""
    import torchio as tio
    from torch.utils.data import DataLoader

    subjects = [
        tio.Subject(image=tio.ScalarImage(str(root / "nii" / f"{i}.nii"))) for i in range(n)
    ]
    queue = tio.Queue(
        tio.SubjectsDataset(subjects),
        max_length=max(BATCH, 4 * per),
        samples_per_volume=per,
        sampler=tio.UniformSampler(PATCH),
        num_workers=workers,
        shuffle_subjects=True,
        shuffle_patches=True,
    )
    loader = DataLoader(queue, batch_size=BATCH, num_workers=0)

    def images() -> Iterable[Any]:
        for batch in loader:
            yield batch["image"][tio.DATA]

    class Epoch:
        def __iter__(self) -> Any:
            return iter(images())

    return timed_epochs(Epoch(), epochs, n * per)


def radiobject_epochs(
    collection: Any, per: int, epochs: int, between: Callable[[], None] | None = None
) -> list[float]:
    """radiobject's training loader (the settings in force: tier on or off, cache budget)."""
    from radiobject.ml import create_training_dataloader

    loader = create_training_dataloader(
        collection,
        batch_size=BATCH,
        patch_size=(PATCH, PATCH, PATCH),
        patches_per_volume=per,
        drop_last=False,
    )
    rates = timed_epochs(loader, epochs, len(collection) * per, between)
    if between is not None:
        between()
    return rates


def _pss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _loader_pss(radi_uri: str, num_workers: int, cfg: dict, per: int, queue: Any) -> None:
    from radiobject import RadiObject, ReadConfig, configure
    from radiobject.ml import create_training_dataloader, loader_pids

    with configure(read=ReadConfig(**cfg)):
        coll = RadiObject(radi_uri).T1w
        loader = create_training_dataloader(
            coll,
            batch_size=BATCH,
            patch_size=(PATCH, PATCH, PATCH),
            patches_per_volume=per,
            num_workers=num_workers,
        )
        for _ in range(2):  # two epochs: the budgets fill
            for _batch in loader:
                pass
        queue.put(sum(_pss_mb(p) for p in loader_pids(loader)))


def loader_pss(radi_uri: str, num_workers: int, cfg: dict, per: int = 20) -> float:
    """Total PSS (MB) of a training loader's processes (main + workers), in a fresh process."""
    from multiprocessing import get_context

    ctx = get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_loader_pss, args=(radi_uri, num_workers, cfg, per, queue))
    proc.start()
    total = float(queue.get(timeout=600))
    proc.join()
    return total
