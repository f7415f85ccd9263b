"""First epoch from local TileDB: 0 and 2 workers, read-ahead off and on, against zarr-python.

Not part of the test suite. The cohort is the one ``larger_than_ram.py`` writes (its
``make_cohort``: BraTS-size 240x240x155 whole-number T1w volumes, 24 subjects, stored as
integers, with a zarr-python v3 copy in the same dtype), written once into ``--workdir``
and reused. Each run is a cold first epoch of a fresh loader: random 64³ patches, batch 4,
``--patches`` per volume, radiobject's caches emptied before it (the OS page cache stays
warm for every format alike). zarr-python's loader is a plain ``DataLoader`` over a dataset
slicing ``zarr.open_array`` (as ``peers.py``), with the same workers. Worker start-up is
part of the epoch for both (a warm-up run comes before any: imports, and the fork server
when a run uses ``forkserver``; radiobject's workers fork on Linux). Prints the median
samples/s of ``--repeats`` runs per configuration, ratios, and the issue's targets with
met/missed.

    python benchmarks/first_epoch.py                       # 24 subjects of 240x240x155
    python benchmarks/first_epoch.py --subjects 8 --shape 96x96x80 --repeats 1   # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import machine
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from larger_than_ram import make_cohort

PATCH = 64
BATCH = 4


def radiobject_epoch(
    uri: str, per: int, workers: int, read_ahead: int, seed: int, **read: Any
) -> float:
    """Samples per second of one cold first epoch of radiobject's training loader.

    ``read``: more ``ReadConfig`` fields (the cache budget, the local tier).
    """
    from radiobject import ReadConfig, clear_caches, configure, get_config
    from radiobject.ml import create_training_dataloader
    from radiobject.storage._radiobject import RadiObject

    settings = {**get_config().read.__dict__, **read, "read_ahead": read_ahead}
    configure(read=ReadConfig(**settings))
    clear_caches()
    loader = create_training_dataloader(
        RadiObject(uri).T1w,
        batch_size=BATCH,
        patch_size=(PATCH, PATCH, PATCH),
        patches_per_volume=per,
        num_workers=workers,
        persistent_workers=False,
        seed=seed,
    )
    return _epoch(loader)


def zarr_epoch(paths: list[str], per: int, workers: int, seed: int) -> float:
    """Samples per second of one first epoch of a zarr-python patch loader."""
    import torch
    from peers import PatchDataset, _open_zarr
    from torch.utils.data import DataLoader

    loader = DataLoader(
        PatchDataset(paths, per, _open_zarr, seed),
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
    )
    return _epoch(loader)


def _epoch(loader: Any) -> float:
    n = 0
    start = time.perf_counter()
    for batch in loader:
        n += (batch["image"] if isinstance(batch, dict) else batch).shape[0]
    return n / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=24)
    ap.add_argument("--shape", default="240x240x155")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "radiobject-bench"))
    ap.add_argument("--patches", default="1,20", help="patches per volume, comma-separated")
    ap.add_argument("--read-ahead", type=int, default=16, help="ReadConfig.read_ahead when on")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--cache",
        choices=("quarter", "default"),
        default="quarter",
        help="RAM cache: a quarter of the cohort as stored (the cohort larger than RAM of "
        "larger_than_ram.py; the local tier then turns on by itself) or ReadConfig's default",
    )
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split("x"))
    root = Path(args.workdir) / f"ltr-s{args.subjects}_{args.shape}"
    print(f"cohort: {args.subjects} x {args.shape} in {root}", flush=True)
    make_cohort(root, args.subjects, shape)  # type: ignore[arg-type]  # 3 ints, parsed above
    uri = str(root / "radiobject")
    paths = [str(root / "zarr" / f"{i}.zarr") for i in range(args.subjects)]
    read: dict[str, Any] = {}
    if args.cache == "quarter":
        from radiobject import RadiObject

        coll = RadiObject(uri).T1w
        stored = coll.volume(coll.obs_ids[0]).stored_dtype.itemsize
        read["cache_mb"] = max(1, int(args.subjects * np.prod(shape) * stored / 2**20 / 4))
    print(f"radiobject reads: {read or 'ReadConfig defaults'}", flush=True)
    radiobject_epoch(uri, 1, 2, 0, seed=99)  # warm-up (imports, workers): not part of any epoch

    print(
        f"machine {machine.describe()}\nfirst epoch, cold radiobject caches, random {PATCH}³ "
        f"patches, batch {BATCH}; median samples/s of {args.repeats} runs (2 cores are shared "
        "with other work: noisy, compare ratios within this run)"
    )
    header = f"{'patches/vol':>11} {'loader':<28} {'workers':>7} {'samples/s':>10}"
    print(f"  {header} {'vs zarr w0':>10}")
    results: dict[tuple[int, str, int], float] = {}
    for per in (int(p) for p in args.patches.split(",")):
        rows = [
            ("zarr-python", 0, None),
            ("zarr-python", 2, None),
            ("radiobject read-ahead off", 0, 0),
            ("radiobject read-ahead on", 0, args.read_ahead),
            ("radiobject read-ahead off", 2, 0),
            ("radiobject read-ahead on", 2, args.read_ahead),
            ("radiobject tier off, r-a off", 0, 0),
        ]
        for name, workers, depth in rows:
            rates = [
                zarr_epoch(paths, per, workers, seed=r)
                if depth is None
                else radiobject_epoch(uri, per, workers, depth, seed=r, **read, **tier(name, root))
                for r in range(args.repeats)
            ]
            rate = results[(per, name, workers)] = statistics.median(rates)
            zarr0 = results[(per, "zarr-python", 0)]
            print(
                f"  {per:>11} {name:<28} {workers:>7} {rate:>10.1f} {rate / zarr0:>9.2f}x",
                flush=True,
            )
    report_targets(results)
    import shutil

    shutil.rmtree(root / "tier-first-epoch", ignore_errors=True)
    return 0


def tier(name: str, root: Path) -> dict[str, Any]:
    """The local tier's setting of a row: off when the row says so, else the default (on by
    itself when the cohort exceeds the cache), in an empty folder under ``root`` (a first
    epoch starts with the tier empty; never ``~/.cache``)."""
    if "tier off" in name:
        return {"local_tier_mb": 0}
    (root / "tier-first-epoch").mkdir(exist_ok=True)
    return {"local_tier_dir": tempfile.mkdtemp(dir=root / "tier-first-epoch")}


def report_targets(results: dict[tuple[int, str, int], float]) -> None:
    """The issue's targets for the first epoch from local TileDB, met or missed."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    print("targets (issue 16):")
    for per in sorted({k[0] for k in results}):
        ours = {k: v for k, v in results.items() if k[0] == per and k[1].startswith("radiobject")}
        best_key = max(ours, key=lambda k: ours[k])
        best, off0 = ours[best_key], ours[(per, "radiobject read-ahead off", 0)]
        zarr0 = results[(per, "zarr-python", 0)]
        zarr_best = max(results[(per, "zarr-python", w)] for w in (0, 2))
        if per == 1:
            print(
                f"  1 patch/volume, radiobject >= 2x zarr-python's loader: best "
                f"({best_key[1]}, {best_key[2]} workers) {best / zarr0:.2f}x zarr w0, "
                f"{best / zarr_best:.2f}x zarr's best -> {verdict(best >= 2 * zarr0)}"
            )
        # workers and read-ahead against w0, read-ahead off: the rows of the same settings
        same = [v for k, v in ours.items() if "tier off" not in k[1]]
        best = max(same)
        print(
            f"  {per} patch(es)/volume, best of w0 and w2 >= 1.5x w0 with read-ahead off: "
            f"{best / off0:.2f}x -> {verdict(best >= 1.5 * off0)}; 2 workers off vs 0: "
            f"{ours[(per, 'radiobject read-ahead off', 2)] / off0:.2f}x, zarr 2 workers vs 0: "
            f"{results[(per, 'zarr-python', 2)] / zarr0:.2f}x"
        )


if __name__ == "__main__":
    raise SystemExit(main())
