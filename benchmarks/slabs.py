"""2.5D slabs: radiobject's slab loader against MONAI's whole-volume recipe (issue 24).

Not part of the test suite; nothing is asserted on time. One run, one process, the same
volumes for both: the benchmark cohort (``copies.py``: T1w phantoms, seed 0) as its
uncompressed ``.nii`` copy for MONAI (int16 when the voxels fit, as the loader table reads it)
and, written once from its ``.npy`` copy, as a radiobject collection stored one axial plane
per tile (default compression, the stored integer dtype). Every sample is a slab of
``--slab`` adjacent axial planes as channels, ``(k, X, Y)``:

* **radiobject**: ``create_training_dataloader(coll, slab=k, patches_per_volume=P)``: each
  slab reads its ``k`` planes only (``k`` tiles); with the default block cache, and with
  ``cache_mb=0`` (every slab a storage query: a first epoch, or a cohort larger than RAM).
  The table also gives the bytes TileDB read per slab (``TileDBStats``, compressed).
* **MONAI, 1 slab per load**: ``LoadImaged`` + ``RandSpatialCropd(roi_size=[-1, -1, k])``,
  the recipe of MONAI's 2.5D tutorials: the whole ``.nii`` is read for one slab.
* **MONAI, P slabs per load**: ``RandSpatialCropSamplesd(num_samples=P)`` on each loaded
  volume, the way to amortise the load (P slabs of one volume come together).

Both then put the planes first (``(k, X, Y)``), batch ``--batch``, ``--workers`` workers,
shuffled; the first batch is not timed (handles, worker start), then up to ``--batches``
batches or ``--max-seconds``. Prints slabs/s and ratios to MONAI's 1-slab recipe.

    python benchmarks/slabs.py                     # 12 volumes of 240x240x155, k=5, P=8
    python benchmarks/slabs.py --quick             # smoke run: 4 small volumes, few batches

Timings on a shared machine are noisy: one run, read them as ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import machine
import numpy as np
import torch
from copies import MODALITY, Copies, prepare
from engines import release
from grids import parse_sizes

SEED = 0


@dataclass(frozen=True)
class Timing:
    """One timed pass over a loader: the batches after the warm-up one."""

    batches: int
    samples: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def _epochs(loader: Any) -> Iterator[Any]:
    """The loader's batches, epoch after epoch (stops if an epoch is empty)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            return


def time_batches(loader: Any, n_batches: int, max_seconds: float) -> Timing:
    """Samples/s over up to ``n_batches`` batches after one untimed warm-up batch.

    Stops early after ``max_seconds`` of timed batches; runs over as many epochs as needed.
    """
    it = _epochs(loader)
    next(it)  # warm-up: handles, caches, worker start
    batches = samples = 0
    elapsed = 0.0
    start = time.perf_counter()
    for batch in it:
        samples += int(batch["image"].shape[0])
        batches += 1
        elapsed = time.perf_counter() - start
        if batches >= n_batches or elapsed >= max_seconds:
            break
    it.close()
    return Timing(batches, samples, elapsed)


def axial_collection(copies: Copies) -> Any:
    """The cohort's T1w volumes as one collection, one axial plane per tile (written once).

    Written from the ``.npy`` copies, volume ``i`` as subject ``sub-{i:03d}``.
    """
    from radiobject import TileConfig, VolumeCollection, WriteConfig, configure

    uri = copies.root / "radiobject-axial-collection"
    done = copies.root / "complete-axial-collection"
    if not done.exists():
        shutil.rmtree(uri, ignore_errors=True)
        arrays = [np.load(copies.path("npy", i), mmap_mode="r") for i in range(copies.n)]
        with configure(write=WriteConfig(tile=TileConfig(orientation="axial"))):
            VolumeCollection.from_numpy(str(uri), arrays, name=MODALITY)
        done.write_text("ok")
    return VolumeCollection(str(uri))


def planes_first(sample: dict[str, Any]) -> dict[str, Any]:
    """MONAI's ``(1, X, Y, k)`` crop as ``(k, X, Y)``: the slab's planes as channels."""
    image = sample["image"]
    return {**sample, "image": torch.as_tensor(image)[0].permute(2, 0, 1).contiguous()}


def monai_slab_loader(
    copies: Copies, k: int, per_load: int, per_volume: int, batch: int, workers: int
) -> torch.utils.data.DataLoader:
    """``LoadImaged`` of the ``.nii`` copies + a random ``[-1, -1, k]`` crop (``per_load`` a load).

    A batch holds ``batch`` slabs (``batch // per_load`` loads when ``per_load > 1``).

    An epoch has ``per_volume`` slabs of each volume, as radiobject's: with one per load,
    each volume is in the list ``per_volume`` times.
    """
    from monai.data import DataLoader as MonaiLoader
    from monai.data import Dataset as MonaiDataset
    from monai.transforms import (
        Compose,
        Lambda,
        LoadImaged,
        RandSpatialCropd,
        RandSpatialCropSamplesd,
    )

    roi = [-1, -1, k]
    crop = (
        RandSpatialCropd("image", roi_size=roi, random_size=False)
        if per_load == 1
        else RandSpatialCropSamplesd("image", roi_size=roi, num_samples=per_load, random_size=False)
    )
    transform = Compose(
        [LoadImaged("image", ensure_channel_first=True), crop, Lambda(planes_first)]
    )
    transform.set_random_state(SEED)
    paths = [str(copies.path("nii", i)) for i in range(copies.n)]
    data = [{"image": p} for p in paths] * (per_volume // per_load)
    return MonaiLoader(  # its collate flattens the per_load slabs of each item
        MonaiDataset(data=data, transform=transform),
        batch_size=max(1, batch // per_load),
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(SEED),
    )


def timed(loader: Any, args: argparse.Namespace) -> tuple[Timing, tuple[int, ...], int]:
    """One run: (timing, the image shape of one sample, TileDB bytes read in all)."""
    from radiobject import TileDBStats

    with TileDBStats() as stats:
        run = time_batches(loader, args.batches, args.max_seconds)
    shape = tuple(next(iter(loader))["image"].shape[1:])  # one more batch, after the timing
    release(loader)
    return run, shape, stats.s3_stats().bytes_read


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subjects", type=int, default=None, help="volumes (12; 4 with --quick)")
    p.add_argument("--shape", default=None, help="volume grid (240x240x155; 96x96x64 quick)")
    p.add_argument("--slab", type=int, default=5, help="planes per slab (k)")
    p.add_argument("--per-volume", type=int, default=8, help="slabs per volume and epoch (P)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--batches", type=int, default=None, help="timed batches (40; 6 quick)")
    p.add_argument("--max-seconds", type=float, default=20.0)
    p.add_argument("--quick", action="store_true", help="a smoke run")
    p.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "radiobject-bench"),
        help="where the cohort and its copies are written (reused when present)",
    )
    args = p.parse_args(argv)
    args.subjects = args.subjects or (4 if args.quick else 12)
    args.shape = args.shape or ("96x96x64" if args.quick else "240x240x155")
    args.batches = args.batches or (6 if args.quick else 40)
    torch.set_num_threads(1)  # as in DataLoader workers (see README: collate on 2 busy cores)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"monai\..*")

    from radiobject import ReadConfig, configure
    from radiobject.ml import create_training_dataloader

    copies = prepare(args.workdir, args.subjects, parse_sizes(args.shape))
    coll = axial_collection(copies)
    k, per, batch = args.slab, args.per_volume, args.batch
    itemsize = np.dtype(copies.dtype).itemsize
    slab_bytes = k * copies.shape[0] * copies.shape[1] * itemsize  # stored planes, uncompressed
    print(f"machine: {machine.describe()}")
    print(
        f"{copies.n} x {copies.shape} {copies.dtype} (MONAI: .nii {copies.nii_dtype}), "
        f"slab k={k} axial planes, {per} slabs per volume, "
        f"batch {batch}, {args.workers} workers; one run each (noisy on a shared machine)\n"
    )

    def ours(cache_mb: int | None) -> Any:
        read = ReadConfig() if cache_mb is None else ReadConfig(cache_mb=cache_mb)
        with configure(read=read):
            loader = create_training_dataloader(
                coll, slab=k, patches_per_volume=per, batch_size=batch, num_workers=args.workers
            )
            return timed(loader, args)

    rows = [
        ("radiobject slabs, axial tiles (default cache)", ours(None)),
        ("radiobject slabs, axial tiles, cache_mb=0", ours(0)),
        (
            "MONAI LoadImaged + RandSpatialCropd [-1,-1,k]",
            timed(monai_slab_loader(copies, k, 1, per, batch, args.workers), args),
        ),
        (
            f"MONAI LoadImaged + RandSpatialCropSamplesd x{per}",
            timed(monai_slab_loader(copies, k, per, per, batch, args.workers), args),
        ),
    ]
    base = rows[2][1][0].samples_per_s
    print(f"{'loader':<52} {'slabs/s':>9} {'x MONAI':>8} {'sample':>16} {'read/slab':>10}")
    for name, (run, shape, nbytes) in rows:
        per_slab = nbytes / max(1, run.samples + batch) / slab_bytes  # incl. the warm-up batch
        read = f"{per_slab:.2f}x" if nbytes else "-"
        print(
            f"{name:<52} {run.samples_per_s:>9.1f} {run.samples_per_s / base:>7.2f}x "
            f"{'x'.join(map(str, shape)):>16} {read:>10}"
        )
    print(
        f"\nread/slab: bytes TileDB read (compressed) per slab over the slab's {copies.dtype} "
        "bytes; MONAI reads each whole .nii it loads."
    )


if __name__ == "__main__":
    main()
