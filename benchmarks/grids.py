"""Reference grids: patches of a cohort whose FLAIR has its own grid, radiobject vs MONAI.

Not part of the test suite; nothing is asserted on time. One run, one process. The cohort is
``make_sample_radiobject(..., modalities=("T1w", "FLAIR"), grids={"FLAIR": --flair-mm})``:
T1w on its 1 mm grid of ``--shape`` (the reference), FLAIR stored on its own coarser grid
(default 0.9 x 0.9 x 3 mm over the same field of view). The same volumes are written once as
uncompressed ``.nii`` files (``Volume.to_nifti``, each with its affine) for MONAI. Every
sample is a ``(2, P, P, P)`` float32 patch (T1w and FLAIR on the T1w grid), batches of
``--batch``, ``--per-volume`` patches per subject and epoch, ``--workers`` workers:

* **radiobject**: ``create_training_dataloader([radi.T1w, radi.FLAIR], patch_size=P)``:
  each patch reads its T1w box and the FLAIR block that box maps to, and resamples that
  block (trilinear). The table gives the bytes the reader's sources served per sample over
  the patch's bytes as stored: what its plan reads, and what the block cache read from
  storage (its counters; with ``--workers 0`` only, as worker processes count their own).
* **MONAI**: ``LoadImaged`` of both ``.nii`` + ``ResampleToMatchd`` (FLAIR onto the T1w, the
  whole volume, bilinear) + ``ConcatItemsd`` + ``RandSpatialCropSamplesd(num_samples=per
  volume)``: as a plain ``Dataset`` (every epoch loads and resamples each subject once) and
  as a ``CacheDataset`` (the loaded, resampled volumes kept in RAM; built in the first epoch).

Each row runs ``--epochs`` epochs: the first epoch's samples/s (from making the loader, so a
CacheDataset's caching and worker start count) and the steady samples/s (the later epochs).

    python benchmarks/grids.py                     # 24 subjects of 240x240x155, 64^3 patches
    python benchmarks/grids.py --quick             # smoke run: 4 small subjects, 2 epochs

It first times ``GridMap.resample`` alone on one 96^3 patch (32^3 with ``--quick``) for an
axis-aligned grid, a grid rotated about one axis and one rotated about two.

Timings on a shared machine are noisy: one run, read them as ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import machine
import numpy as np
import torch
from engines import release

SEED = 0


def parse_sizes(text: str, kind: type = int) -> tuple[Any, Any, Any]:
    """``"240x240x155"`` -> ``(240, 240, 155)``; with ``kind=float``, ``"0.9x0.9x3"``."""
    parts = tuple(kind(p) for p in text.lower().split("x"))
    if len(parts) != 3:
        raise SystemExit(f"need three sizes like 240x240x155, got {text!r}")
    return parts  # type: ignore[return-value]


@dataclass(frozen=True)
class Run:
    """One row: samples and seconds of the first epoch and of the later ones."""

    first_samples: int
    first_seconds: float
    steady_samples: int
    steady_seconds: float
    first_storage: int  # bytes read from storage (and local tier) in the first epoch
    steady_storage: int  # in the later ones (radiobject with workers 0, else 0)
    planned: float  # bytes the plans of one epoch read per sample (radiobject), else 0

    @property
    def first(self) -> float:
        return self.first_samples / self.first_seconds

    @property
    def steady(self) -> float:
        if not self.steady_seconds:
            return float("nan")
        return self.steady_samples / self.steady_seconds


def cohort(workdir: Path, n: int, shape: tuple[int, int, int], flair_mm: Any) -> Path:
    """The RadiObject (written once per size) and its ``.nii`` copies; returns its folder."""
    from radiobject import RadiObject
    from radiobject.data import make_sample_radiobject

    mm = "x".join(f"{v:g}" for v in flair_mm)
    root = workdir / f"grids-{n}x{'x'.join(map(str, shape))}-flair{mm}"
    done = root / "complete"
    if done.exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    start = time.perf_counter()
    radi = make_sample_radiobject(
        str(root / "radi"),
        n_subjects=n,
        shape=shape,
        modalities=("T1w", "FLAIR"),
        grids={"FLAIR": tuple(float(v) for v in flair_mm)},
        seed=SEED,
        progress=False,
    )
    radi = RadiObject(str(root / "radi"))
    (root / "nii").mkdir()
    for name in ("T1w", "FLAIR"):
        coll = radi[name]
        for sid in radi.obs_subject_ids:
            coll.loc[f"{sid}_{name}"].to_nifti(root / "nii" / f"{sid}_{name}.nii")
    done.write_text("ok")
    print(f"(cohort written in {time.perf_counter() - start:.0f} s: {root})")
    return root


def run_epochs(make: Callable[[], Any], epochs: int, counted: bool) -> Run:
    """Iterate ``epochs`` epochs of the loader ``make()`` builds; time the first and the rest.

    ``counted``: also the bytes this process's block cache read from storage and the local
    tier in each epoch (radiobject with workers 0), and the bytes the plans of an epoch
    read per sample.
    """
    from radiobject.read import block_cache

    counters = block_cache().counters

    def storage() -> int:
        return counters.bytes_from_storage + counters.bytes_from_tier if counted else 0

    start, read = time.perf_counter(), storage()
    loader = make()
    counts, seconds, bytes_read = [], [], []
    for _ in range(epochs):
        samples = 0
        for batch in loader:
            samples += int(batch["image"].shape[0])
        now, read_now = time.perf_counter(), storage()
        counts.append(samples)
        seconds.append(now - start)
        bytes_read.append(read_now - read)
        start, read = now, read_now
    planned = 0.0
    if counted:
        ds = loader.dataset
        plans = [ds.plan(i) for i in range(len(ds))]
        itemsize = {r.uri: r.scaling.stored.itemsize for p in plans for r in p.reads}
        total = sum(r.voxels * itemsize[r.uri] for p in plans for r in p.reads)
        planned = total / len(plans)
    release(loader)
    return Run(
        counts[0],
        seconds[0],
        sum(counts[1:]),
        sum(seconds[1:]),
        bytes_read[0],
        sum(bytes_read[1:]),
        planned,
    )


def ours(root: Path, args: argparse.Namespace) -> Run:
    from radiobject import RadiObject
    from radiobject.ml import create_training_dataloader
    from radiobject.read import block_cache

    block_cache().clear()  # a first epoch from storage (the OS's page cache may hold it)
    radi = RadiObject(str(root / "radi"))

    def make() -> Any:
        return create_training_dataloader(
            [radi.T1w, radi.FLAIR],
            batch_size=args.batch,
            patch_size=args.patch,
            patches_per_volume=args.per_volume,
            num_workers=args.workers,
            seed=SEED,
        )

    return run_epochs(make, args.epochs, counted=args.workers == 0)


def monai(root: Path, args: argparse.Namespace, cached: bool) -> Run:
    """MONAI's recipe on the ``.nii`` copies: whole volumes loaded, FLAIR resampled, cropped."""
    from monai.data import CacheDataset, DataLoader, Dataset
    from monai.transforms import (
        Compose,
        ConcatItemsd,
        DeleteItemsd,
        EnsureTyped,
        LoadImaged,
        RandSpatialCropSamplesd,
        ResampleToMatchd,
    )

    keys = ["t1", "flair"]
    transform = Compose(
        [
            LoadImaged(keys, ensure_channel_first=True, image_only=True),
            EnsureTyped(keys, dtype=torch.float32),
            ResampleToMatchd("flair", key_dst="t1", mode="bilinear"),
            ConcatItemsd(keys, "image"),
            DeleteItemsd(keys),
            RandSpatialCropSamplesd(
                "image", roi_size=[args.patch] * 3, num_samples=args.per_volume, random_size=False
            ),
        ]
    )
    transform.set_random_state(SEED)
    nii = root / "nii"
    sids = sorted({p.name.rsplit("_", 1)[0] for p in nii.glob("*_T1w.nii")})
    data = [{"t1": str(nii / f"{s}_T1w.nii"), "flair": str(nii / f"{s}_FLAIR.nii")} for s in sids]

    def make() -> Any:
        ds = (
            CacheDataset(data, transform, cache_rate=1.0, num_workers=None, progress=False)
            if cached
            else Dataset(data, transform)
        )
        return DataLoader(  # its collate flattens the per-volume patches of each item
            ds,
            batch_size=max(1, args.batch // args.per_volume),
            shuffle=True,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
            generator=torch.Generator().manual_seed(SEED),
        )

    return run_epochs(make, args.epochs, counted=False)


def _rotation(degrees: float, axis: int) -> np.ndarray:
    t = np.deg2rad(degrees)
    i, j = (a for a in range(3) if a != axis)
    out = np.eye(3)
    out[i, i], out[i, j], out[j, i], out[j, j] = np.cos(t), -np.sin(t), np.sin(t), np.cos(t)
    return out


def resample_timings(edge: int, repeats: int = 9) -> None:
    """``GridMap.resample`` of one ``edge``^3 patch from a block of a noise volume, per grid.

    Medians (and best) of ``repeats`` runs: an axis-aligned 0.9x0.9x3 mm grid, one rotated
    17 degrees about z (a 1D and a 2D interpolation) and one also tilted about x (gathers).
    """
    from radiobject.read import grid_map

    rng = np.random.default_rng(SEED)
    shape = (2 * edge + 40, 2 * edge + 40, edge + 40)
    images = rng.random(shape, dtype=np.float32)
    labels = (images > 0.5).astype(np.int16)
    box = tuple((20, 20 + edge) for _ in range(3))
    grids = {
        "axis-aligned 0.9x0.9x3 mm": np.diag([0.9, 0.9, 3.0]),
        "rotated 17 deg about z": _rotation(17, 2) @ np.diag([1.3, 1.7, 2.2]),
        "rotated about z and x": _rotation(17, 2) @ np.diag([1.3, 1.7, 2.2]) @ _rotation(-31, 0),
    }
    print(f"GridMap.resample of one {edge}^3 patch (median and best of {repeats}, ms):")
    for name, columns in grids.items():
        affine = np.eye(4)
        affine[:3, :3] = columns
        affine[:3, 3] = (-9.7, -11.35, -8.3)
        grid = grid_map(np.eye(4), affine, shape)
        cells = []
        for linear, volume in ((True, images), (False, labels)):
            block_box = grid.source_box(box, linear=linear)
            block = np.ascontiguousarray(volume[tuple(slice(lo, hi) for lo, hi in block_box)])
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                grid.resample(block, box, block_box, linear=linear)
                times.append(time.perf_counter() - start)
            kind = "trilinear" if linear else "nearest"
            cells.append(f"{kind} {1e3 * np.median(times):6.1f} ({1e3 * min(times):5.1f})")
        print(f"  {name:<28} {cells[0]}   {cells[1]}")
    print()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--subjects", type=int, default=None, help="subjects (24; 4 with --quick)")
    p.add_argument("--shape", default=None, help="T1w grid (240x240x155; 80x80x48 quick)")
    p.add_argument("--flair-mm", default="0.9x0.9x3", help="FLAIR voxel size in mm")
    p.add_argument("--patch", type=int, default=None, help="patch edge (64; 32 quick)")
    p.add_argument("--per-volume", type=int, default=4, help="patches per subject and epoch")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="epochs per row (3; 2 quick)")
    p.add_argument("--no-cache-dataset", action="store_true", help="skip MONAI CacheDataset")
    p.add_argument("--quick", action="store_true", help="a smoke run")
    p.add_argument(
        "--workdir",
        default=os.path.join(tempfile.gettempdir(), "radiobject-bench"),
        help="where the cohort and its .nii copies are written (reused when present)",
    )
    args = p.parse_args(argv)
    args.subjects = args.subjects or (4 if args.quick else 24)
    shape = parse_sizes(args.shape or ("80x80x48" if args.quick else "240x240x155"))
    args.patch = args.patch or (32 if args.quick else 64)
    args.epochs = args.epochs or (2 if args.quick else 3)
    flair_mm = parse_sizes(args.flair_mm, float)
    if args.batch % args.per_volume:
        raise SystemExit("--batch must be a multiple of --per-volume (MONAI's batches)")
    torch.set_num_threads(1)  # as in DataLoader workers (see README: collate on 2 busy cores)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"monai\..*")
    # MONAI's DataLoader forks after radiobject's rows made a TileDB context; its workers
    # read .nii files only
    warnings.filterwarnings("ignore", message="TileDB is a multithreading library")

    print(f"machine: {machine.describe()}\n")
    resample_timings(args.patch if args.quick else 96)
    root = cohort(Path(args.workdir), args.subjects, shape, flair_mm)
    from radiobject import RadiObject
    from radiobject.read import open_array

    radi = RadiObject(str(root / "radi"))
    t1 = radi.T1w.iloc[0]
    flair = radi.FLAIR.iloc[0]
    stored = open_array(t1.uri, t1.ctx)[1].values.stored
    patch_bytes = 2 * args.patch**3 * stored.itemsize  # two channels, as stored
    samples = args.subjects * args.per_volume
    print(
        f"{args.subjects} subjects: T1w {t1.shape} (reference; stored {stored}, .nii float32), "
        f"FLAIR {flair.shape} at {args.flair_mm} mm; patches {args.patch}^3 x 2 channels, "
        f"{args.per_volume} per subject, {samples} samples an epoch, batch {args.batch}, "
        f"{args.workers} workers, {args.epochs} epochs; one run each (noisy on a shared "
        "machine)\n"
    )
    rows = [("radiobject create_training_dataloader", ours(root, args))]
    rows.append(("MONAI Dataset: Load+ResampleToMatchd+Crop", monai(root, args, cached=False)))
    if not args.no_cache_dataset:
        rows.append(("MONAI CacheDataset: the same, cached", monai(root, args, cached=True)))
    nii_bytes = sum(f.stat().st_size for f in (root / "nii").glob("*.nii")) / args.subjects
    print(
        f"{'loader':<44} {'first s/s':>10} {'steady s/s':>11} {'planned':>8} "
        f"{'storage 1st':>12} {'storage later':>14}"
    )
    for name, run in rows:
        if run.planned:
            planned = f"{run.planned / patch_bytes:.2f}x"
            first = f"{run.first_storage / run.first_samples / patch_bytes:.2f}x"
            later = run.steady_storage / max(1, run.steady_samples) / patch_bytes
            steady = f"{later:.2f}x"
        elif name.startswith("MONAI Dataset"):
            planned = "-"
            first = steady = f"{nii_bytes / args.per_volume / patch_bytes:.1f}x"
        else:  # the CacheDataset keeps its volumes in RAM; radiobject's workers count apart
            planned = first = "-"
            steady = "0 (RAM)" if "CacheDataset" in name else "-"
        print(
            f"{name:<44} {run.first:>10.1f} {run.steady:>11.1f} {planned:>8} "
            f"{first:>12} {steady:>14}"
        )
    base = rows[1][1]
    print(
        f"\nradiobject / MONAI Dataset: first epoch {rows[0][1].first / base.first:.2f}x, "
        f"steady {rows[0][1].steady / base.steady:.2f}x\n"
        f"Bytes per sample over the patch's stored bytes ({patch_bytes} B: two channels of "
        f"{stored}): "
        "planned: what the sample's plan reads (its T1w box and the FLAIR block that box "
        "maps to); storage: what radiobject's block cache read from TileDB and the local "
        "tier per sample (whole volumes on a cache miss where they fit; workers 0 only); "
        "MONAI Dataset: both whole .nii (float32) per load, over the patches of that load."
    )


if __name__ == "__main__":
    main()
