"""2.5D slabs: radiobject's slab loader against MONAI's whole-volume recipe (issue 24).

Not part of the test suite; nothing is asserted on time. One run, one process, the same
volumes for both: the benchmark cohort (``cohort.py``: T1w phantoms, seed 0) as ``.nii.gz``
for MONAI and as a radiobject collection stored one axial plane per tile (default
compression, whole-number intensities stored as integers). Every sample is a slab of
``--slab`` adjacent axial planes as channels, ``(k, X, Y)``:

* **radiobject**: ``create_training_dataloader(coll, slab=k, patches_per_volume=P)``: each
  slab reads its ``k`` planes only (``k`` tiles); with the default block cache, and with
  ``cache_mb=0`` (every slab a storage query: a first epoch, or a cohort larger than RAM).
  The table also gives the bytes TileDB read per slab (``TileDBStats``, compressed).
* **MONAI, 1 slab per load**: ``LoadImaged`` + ``RandSpatialCropd(roi_size=[-1, -1, k])``,
  the recipe of MONAI's 2.5D tutorials: the whole ``.nii.gz`` is decoded for one slab.
* **MONAI, P slabs per load**: ``RandSpatialCropSamplesd(num_samples=P)`` on each loaded
  volume, the way to amortise the load (P slabs of one volume come together).

Both then put the planes first (``(k, X, Y)``), batch ``--batch``, ``--workers`` workers,
shuffled; the first batch is not timed (handles, worker start), then up to ``--batches``
batches or ``--max-seconds``. Prints slabs/s and ratios to MONAI's 1-slab recipe.

    python benchmarks/slabs.py                     # 12 subjects of 240x240x155, k=5, P=8
    python benchmarks/slabs.py --quick             # smoke run: 4 small subjects, few batches

Timings on a shared machine are noisy: one run, read them as ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import warnings
from typing import Any

import machine
import numpy as np
import torch
from cohort import MODALITY, Cohort, parse_shape, prepare
from timing import LoaderRun, release, run_loader

SEED = 0


def axial_collection(cohort: Cohort) -> Any:
    """The cohort's T1w volumes as one collection, one axial plane per tile (written once)."""
    from radiobject import TileConfig, VolumeCollection, WriteConfig, configure

    uri = cohort.root / "radiobject-axial-collection"
    done = cohort.root / "complete-axial-collection"
    if not done.exists():
        shutil.rmtree(uri, ignore_errors=True)
        arrays = {sid: np.load(cohort.npy(sid), mmap_mode="r") for sid in cohort.subjects}
        with configure(write=WriteConfig(tile=TileConfig(orientation="axial"))):
            VolumeCollection.from_numpy(str(uri), arrays, name=MODALITY)
        done.write_text("ok")
    return VolumeCollection(str(uri))


def planes_first(sample: dict[str, Any]) -> dict[str, Any]:
    """MONAI's ``(1, X, Y, k)`` crop as ``(k, X, Y)``: the slab's planes as channels."""
    image = sample["image"]
    return {**sample, "image": torch.as_tensor(image)[0].permute(2, 0, 1).contiguous()}


def monai_slab_loader(
    cohort: Cohort, k: int, per_load: int, per_volume: int, batch: int, workers: int
) -> torch.utils.data.DataLoader:
    """``LoadImaged`` + a random ``[-1, -1, k]`` crop (``per_load`` of them per load).

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
    data = [{"image": p} for p in cohort.nifti_paths()] * (per_volume // per_load)
    return MonaiLoader(  # its collate flattens the per_load slabs of each item
        MonaiDataset(data=data, transform=transform),
        batch_size=max(1, batch // per_load),
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(SEED),
    )


def timed(loader: Any, args: argparse.Namespace) -> tuple[LoaderRun, tuple[int, ...], int]:
    """One run: (timing, the image shape of one sample, TileDB bytes read in all)."""
    from radiobject import TileDBStats

    with TileDBStats() as stats:
        run = run_loader(loader, args.batches, args.max_seconds)
    shape = tuple(next(iter(loader))["image"].shape[1:])  # one more batch, after the timing
    release(loader)
    return run, shape, stats.s3_stats().bytes_read


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subjects", type=int, default=None, help="subjects (12; 4 with --quick)")
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
        help="where the cohort is written (reused when present)",
    )
    args = p.parse_args(argv)
    args.subjects = args.subjects or (4 if args.quick else 12)
    args.shape = args.shape or ("96x96x64" if args.quick else "240x240x155")
    args.batches = args.batches or (6 if args.quick else 40)
    torch.set_num_threads(1)  # as in DataLoader workers (see README: collate on 2 busy cores)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"monai\..*")

    from radiobject import ReadConfig, configure
    from radiobject.ml import create_training_dataloader

    cohort = prepare(args.workdir, args.subjects, parse_shape(args.shape))
    coll = axial_collection(cohort)
    k, per, batch = args.slab, args.per_volume, args.batch
    slab_bytes = k * cohort.shape[0] * cohort.shape[1] * 2  # uint16 planes, uncompressed
    print(f"machine: {machine.describe()}")
    print(
        f"{args.subjects} x {cohort.shape}, slab k={k} axial planes, {per} slabs per volume, "
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
            timed(monai_slab_loader(cohort, k, 1, per, batch, args.workers), args),
        ),
        (
            f"MONAI LoadImaged + RandSpatialCropSamplesd x{per}",
            timed(monai_slab_loader(cohort, k, per, per, batch, args.workers), args),
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
        "\nread/slab: bytes TileDB read (compressed) per slab over the slab's uint16 bytes; "
        "MONAI decodes each whole .nii.gz it loads."
    )


if __name__ == "__main__":
    main()
