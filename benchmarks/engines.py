"""Every loader of the comparison, each a ``torch.utils.data.DataLoader`` of float32 batches.

Each batch is a dict: ``image`` a float32 tensor ``(B, 1, P, P, P)``, and where each patch
came from (``volume``: the cohort index; ``corner``: its first voxel), so a test can check
every engine's voxels against radiobject's. Copies hold radiobject's stored dtype (uint16
here) except ``nnunet-f32``; every loader converts patches to float32 as radiobject does.

The format loaders (npy, blosc2, zarr, tensorstore) read the positions of one plan: a pure
function of ``(seed, epoch, index)``, the order shuffled per epoch by a sampler in the main
process, so workers never change what is read. MONAI, TorchIO and radiobject draw their own
positions (their APIs do) and report them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from copies import Copies
from torch.utils.data import DataLoader, Dataset, Sampler


@dataclass(frozen=True)
class Spec:
    """What one loader is asked for (everything comes from the row's arguments)."""

    per: int  # patches per volume and epoch
    workers: int
    budget_mb: int  # the RAM budget: radiobject's cache, tensorstore's pool, MONAI's cache share
    seed: int = 0
    patch: int = 64
    batch: int = 4
    scratch: str = ""  # a fresh folder for what the loader builds (tier, MONAI's .pt cache)


@dataclass(frozen=True)
class Engine:
    """One row's loader: what it reads, its label, how to build it."""

    name: str
    label: str
    copy: str  # the folder in Copies it reads
    build: Callable[[Copies, Spec], Any]
    modules: tuple[str, ...] = ()  # imported before the clock starts (importing is not training)


# -- the plan: positions as a pure function of (seed, epoch, index) --------------------------------
def corner(
    seed: int, epoch: int, index: int, shape: tuple[int, ...], patch: int
) -> tuple[int, ...]:
    rng = np.random.default_rng([seed, epoch, index])
    return tuple(int(rng.integers(0, s - patch + 1)) for s in shape)


class EpochKeys(Sampler):
    """Yields ``(epoch, index)`` keys, shuffled per epoch; counts epochs in the main process."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        order = np.random.default_rng([self.seed, epoch, 0xE]).permutation(self.n)
        return iter([(epoch, int(i)) for i in order])

    def __len__(self) -> int:
        return self.n


class PlannedPatches(Dataset):
    """``per`` patches of each volume per epoch, read by ``reader(path, corner, patch)``.

    ``keep_open``: open each file once per process (``opener``) and keep it; otherwise open it
    for every sample (what nnU-Net's dataset does: ``load_case`` opens the case each time).
    """

    def __init__(self, c: Copies, copy: str, spec: Spec, opener: Callable[[str], Any],
                 read: Callable[[Any, tuple[slice, ...]], np.ndarray], keep_open: bool = True,
                 ) -> None:  # fmt: skip
        self.paths = [str(c.path(copy, i)) for i in range(c.n)]
        self.shape, self.per, self.seed, self.patch = c.shape, spec.per, spec.seed, spec.patch
        self.opener, self.read, self.keep_open = opener, read, keep_open
        self._pid, self._open = -1, {}  # type: ignore[var-annotated]

    def __len__(self) -> int:
        return len(self.paths) * self.per

    def _handle(self, v: int) -> Any:
        if not self.keep_open:
            return self.opener(self.paths[v])
        if self._pid != os.getpid():  # a worker: open its own handles
            self._pid, self._open = os.getpid(), {}
        if v not in self._open:
            self._open[v] = self.opener(self.paths[v])
        return self._open[v]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = key
        v = index // self.per
        c = corner(self.seed, epoch, index, self.shape, self.patch)
        box = tuple(slice(a, a + self.patch) for a in c)
        patch = np.asarray(self.read(self._handle(v), box), dtype=np.float32)
        return {"image": torch.from_numpy(patch)[None], "volume": v, "corner": torch.tensor(c)}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pid": -1, "_open": {}}


def _planned_loader(ds: PlannedPatches, spec: Spec) -> DataLoader:
    return DataLoader(
        ds,
        batch_size=spec.batch,
        sampler=EpochKeys(len(ds), spec.seed),
        num_workers=spec.workers,
        persistent_workers=spec.workers > 0,
    )


def _npy_open(path: str) -> Any:
    return np.load(path, mmap_mode="r")


def _npy(c: Copies, spec: Spec) -> DataLoader:
    return _planned_loader(PlannedPatches(c, "npy", spec, _npy_open, _slice), spec)


def _slice(handle: Any, box: tuple[slice, ...]) -> np.ndarray:
    return handle[box]


def _b2_open(path: str) -> Any:
    import blosc2

    # as nnU-Net v2's dataset opens a case: memory-mapped, one decode thread
    return blosc2.open(path, mode="r", mmap_mode="r", dparams={"nthreads": 1})


def _case_slice(handle: Any, box: tuple[slice, ...]) -> np.ndarray:
    return handle[(0, *box)]  # nnU-Net's cases carry a channel axis


def _nnunet(copy: str) -> Callable[[Copies, Spec], DataLoader]:
    def build(c: Copies, spec: Spec) -> DataLoader:
        ds = PlannedPatches(c, copy, spec, _b2_open, _case_slice, keep_open=False)
        return _planned_loader(ds, spec)

    return build


def _b2_lz4hc(c: Copies, spec: Spec) -> DataLoader:
    return _planned_loader(PlannedPatches(c, "b2-lz4hc", spec, _b2_open, _slice), spec)


def _zarr_open(path: str) -> Any:
    import zarr

    return zarr.open_array(path, mode="r")


def _zarr(c: Copies, spec: Spec) -> DataLoader:
    return _planned_loader(PlannedPatches(c, "zarr3", spec, _zarr_open, _slice), spec)


class _TensorstoreOpener:
    """Opens zarr3 arrays in one tensorstore context per process, its cache pool ``bytes``."""

    def __init__(self, pool_bytes: int) -> None:
        self.pool_bytes = pool_bytes
        self._pid, self._ctx = -1, None

    def __call__(self, path: str) -> Any:
        import tensorstore as ts

        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._ctx = ts.Context({"cache_pool": {"total_bytes_limit": self.pool_bytes}})
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": path},
                "recheck_cached_data": "open"}  # fmt: skip
        return ts.open(spec, read=True, context=self._ctx).result()

    def __getstate__(self) -> dict[str, Any]:
        return {"pool_bytes": self.pool_bytes, "_pid": -1, "_ctx": None}


def _ts_read(handle: Any, box: tuple[slice, ...]) -> np.ndarray:
    return handle[box].read().result()


def _tensorstore(c: Copies, spec: Spec) -> DataLoader:
    pool = spec.budget_mb * 2**20 // max(1, spec.workers)  # the budget shared out, as radiobject
    ds = PlannedPatches(c, "zarr3", spec, _TensorstoreOpener(pool), _ts_read)
    return _planned_loader(ds, spec)


# -- MONAI: CacheDataset / PersistentDataset + random crops -------------------------------------
class Repeat(Dataset):
    """``ds`` seen ``times`` times per epoch (one cache entry per volume, drawn again)."""

    def __init__(self, ds: Any, times: int) -> None:
        self.ds, self.times = ds, times

    def __len__(self) -> int:
        return len(self.ds) * self.times

    def __getitem__(self, i: int) -> Any:
        return self.ds[i % len(self.ds)]


def _monai_batch(samples: list[Any]) -> dict[str, Any]:
    flat = [s for item in samples for s in (item if isinstance(item, list) else [item])]
    images = torch.stack([torch.as_tensor(s["image"]).as_subclass(torch.Tensor) for s in flat])
    return {
        "image": images,
        "volume": torch.tensor([s["volume"] for s in flat]),
        "corner": torch.stack([_monai_corner(s["image"]) for s in flat]),
    }


def _monai_corner(image: Any) -> torch.Tensor:
    """Where MONAI's crop started: its record of the crop (``cropped``: before/after per axis)."""
    for op in reversed(getattr(image, "applied_operations", [])):
        while isinstance(op, dict):  # RandSpatialCropSamples nests RandSpatialCrop's record
            info = op.get("extra_info", {})
            if "cropped" in info:
                return torch.tensor([int(x) for x in info["cropped"][0::2]])
            op = info
    return torch.full((3,), -1)


def _monai(persistent: bool) -> Callable[[Copies, Spec], DataLoader]:
    def build(c: Copies, spec: Spec) -> DataLoader:
        from monai.data import CacheDataset, PersistentDataset
        from monai.data import DataLoader as MonaiLoader  # seeds each worker's random crops
        from monai.transforms import CastToTyped, Compose, LoadImaged, RandSpatialCropSamplesd

        draws = min(spec.per, spec.batch)  # patches per volume load: a batch's worth at most
        if spec.per % draws or spec.batch % draws:
            raise SystemExit(f"MONAI rows need per ({spec.per}) and batch to share {draws}")
        transform = Compose([
            LoadImaged("image", dtype=np.dtype(c.nii_dtype), ensure_channel_first=True),  # cached
            RandSpatialCropSamplesd("image", roi_size=(spec.patch,) * 3, num_samples=draws,
                                    random_size=False),
            CastToTyped("image", dtype=np.float32),
        ])  # fmt: skip
        transform.set_random_state(spec.seed)
        data = [{"image": str(c.path("nii", i)), "volume": i} for i in range(c.n)]
        if persistent:
            cache = Path(spec.scratch) / "monai-persistent"
            ds: Any = PersistentDataset(data, transform=transform, cache_dir=str(cache))
        else:
            rate = min(1.0, spec.budget_mb / c.stored_mb)
            # copy_cache=False: the crops make new tensors, the cached volume is never changed
            ds = CacheDataset(data, transform=transform, cache_rate=rate, num_workers=None,
                              progress=False, copy_cache=False)  # fmt: skip
        return MonaiLoader(
            Repeat(ds, spec.per // draws),
            batch_size=spec.batch // draws,
            shuffle=True,
            num_workers=spec.workers,
            persistent_workers=spec.workers > 0,
            collate_fn=_monai_batch,
            generator=torch.Generator().manual_seed(spec.seed),
        )

    return build


# -- TorchIO: Queue over SubjectsDataset ---------------------------------------------------------
def _torchio_batch(samples: list[Any]) -> dict[str, Any]:
    import torchio as tio

    return {
        "image": torch.stack([s["image"][tio.DATA] for s in samples]).float(),
        "volume": torch.tensor([s["volume"] for s in samples]),
        "corner": torch.stack([torch.as_tensor(s[tio.LOCATION][:3]) for s in samples]),
    }


def _torchio(c: Copies, spec: Spec) -> DataLoader:
    import torchio as tio

    torch.manual_seed(spec.seed)  # TorchIO's sampler draws from torch's generator
    subjects = [tio.Subject(image=tio.ScalarImage(c.path("nii", i)), volume=i) for i in range(c.n)]
    queue = tio.Queue(
        tio.SubjectsDataset(subjects),
        max_length=max(spec.batch, 4 * spec.per),  # the patches of 4 volumes, like radiobject
        samples_per_volume=spec.per,
        sampler=tio.UniformSampler(spec.patch),
        num_workers=spec.workers,  # TorchIO's workers load subjects; the outer loader has none
        shuffle_subjects=True,
        shuffle_patches=True,
    )
    return DataLoader(queue, batch_size=spec.batch, num_workers=0, collate_fn=_torchio_batch)


# -- radiobject ------------------------------------------------------------------------------------
class RadiobjectBatches:
    """radiobject's training loader; its batches labelled like the others'."""

    def __init__(self, c: Copies, spec: Spec) -> None:
        from radiobject import RadiObject
        from radiobject.ml import create_training_dataloader

        self.index = {o: i for i, o in enumerate(c.obs_ids)}
        self.loader = create_training_dataloader(
            RadiObject(c.radi_uri).collection("T1w"),
            batch_size=spec.batch,
            patch_size=(spec.patch,) * 3,
            patches_per_volume=spec.per,
            num_workers=spec.workers,
            seed=spec.seed,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            yield {
                "image": batch["image"],
                "volume": torch.tensor([self.index[o] for o in batch["obs_id"]]),
                "corner": batch["patch_start"],
            }


class RadiobjectPatchLoop:
    """radiobject's own patch loop: what a sample costs at the reader level, no DataLoader.

    The dataset, keys and order of radiobject's loader (built by the same factory, so the
    same settings and tier decision), read by a plain loop: ``plan`` each key,
    ``reader().fetch`` its reads, ``reader().decode`` into a float32 batch of ``batch``,
    ``torch.from_numpy``. The loader's target is a share of this loop's rate (issue 23).
    Always in the loading process: a row's ``workers`` does not apply.
    """

    def __init__(self, c: Copies, spec: Spec) -> None:
        inner = RadiobjectBatches(c, spec)
        self.index, self.loader = inner.index, inner.loader
        self.batch, self.patch = spec.batch, spec.patch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from radiobject.read import reader

        ds, b, p = self.loader.dataset, self.batch, self.patch
        keys = list(self.loader.sampler)  # one pass: this epoch's keys, the loader's order
        end = len(keys) - len(keys) % b if self.loader.drop_last else len(keys)
        for s in range(0, end, b):
            plans = [ds.plan(k) for k in keys[s : s + b]]
            image = np.empty((len(plans), 1, p, p, p), np.float32)
            r = reader()
            for i, plan in enumerate(plans):
                r.decode(plan.reads, r.fetch(plan.reads), into=image[i])
            yield {
                "image": torch.from_numpy(image),
                "volume": torch.tensor([self.index[ds.refs[ds.volume_of(q.index)].obs_id]
                                        for q in plans]),
                "corner": torch.tensor([q.start for q in plans]),
            }  # fmt: skip


def radiobject_finish() -> None:
    """Wait for the local tier's background fills queued in this process (timed by the row)."""
    try:
        from radiobject.read._local_tier import tier_state
    except ImportError:  # the read path moved: nothing to wait for that we can see
        return
    tier_state().flush()


MONAI = ("monai.data", "monai.transforms")
ENGINES = {
    e.name: e
    for e in (
        Engine("radiobject", "radiobject `create_training_dataloader` (defaults)", "radiobject",
               RadiobjectBatches, ("radiobject.ml",)),
        Engine("radiobject-loop", "radiobject's own patch loop (plan, fetch, decode; no "
               "DataLoader)", "radiobject", RadiobjectPatchLoop, ("radiobject.ml",)),
        Engine("npy", "`.npy` memmap", "npy", _npy),
        Engine("nnunet", "blosc2 as nnU-Net v2 writes and opens it (ZSTD 8)", "b2-nnunet",
               _nnunet("b2-nnunet"), ("blosc2",)),
        Engine("b2-lz4hc", "blosc2 LZ4HC, 64³ chunks, held open", "b2-lz4hc", _b2_lz4hc,
               ("blosc2",)),
        Engine("tensorstore", "tensorstore zarr3 sharded, cache pool", "zarr3", _tensorstore,
               ("tensorstore",)),
        Engine("zarr", "zarr-python v3 sharded, 32³ inner chunks", "zarr3", _zarr, ("zarr",)),
        Engine("monai-persistent", "MONAI `PersistentDataset` + `RandSpatialCropSamplesd`", "nii",
               _monai(persistent=True), MONAI),
        Engine("monai-cache", "MONAI `CacheDataset` + `RandSpatialCropSamplesd`", "nii",
               _monai(persistent=False), MONAI),
        Engine("torchio", "TorchIO `Queue` + `UniformSampler`", "nii", _torchio, ("torchio",)),
        Engine("nnunet-f32", "nnU-Net v2 blosc2 as it ships (float32)", "b2-nnunet-f32",
               _nnunet("b2-nnunet-f32"), ("blosc2",)),
    )
}  # fmt: skip


def release(loader: Any) -> None:
    """Shut down a DataLoader's persistent workers now."""
    inner = getattr(loader, "loader", loader)
    it = getattr(inner, "_iterator", None)
    if it is not None and hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()


def fresh_scratch(path: str | Path) -> str:
    shutil.rmtree(path, ignore_errors=True)
    Path(path).mkdir(parents=True)
    return str(path)
