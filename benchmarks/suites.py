"""The measurements: reads, patch loaders, segmentation loader, disk size, ingest."""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ours
import peers
from cohort import PATCH, Cohort, dir_bytes, write_zarr
from timing import Measure, release, repeat, run_loader, time_reads

Results = dict[str, dict[str, Measure]]

RO = "radiobject"  # the reference row of every section
RO_COLD = "radiobject, cold cache"
RO_WARM = "radiobject, warm cache"
RO_OFF = "radiobject, cache off"
RO_AX_COLD = "radiobject AXIAL tiles, cold"
RO_AX_WARM = "radiobject AXIAL tiles, warm"
RO_W2 = "radiobject, 2 workers"
ORIGINAL = "original RadiObject"


@dataclass(frozen=True)
class Settings:
    """How much to measure."""

    repeats: int = 3
    n_batches: int = 50
    max_seconds: float = 20.0
    n_full: int = 6
    n_small: int = 50
    batch_size: int = 4
    cold_mb: int = 64
    patches_per_volume: tuple[int, ...] = (20, 1)


def log(msg: str) -> None:
    print(msg, flush=True)


def positions(cohort: Cohort, n: int, seed: int) -> list[tuple[int, int, int, int, int]]:
    """Random (volume, patch corner x, y, z, axial slice z), the same for every reader."""
    rng = np.random.default_rng([seed, 0xB0])
    sx, sy, sz = cohort.shape
    return [
        (
            int(rng.integers(cohort.n_subjects)),
            int(rng.integers(0, sx - PATCH + 1)),
            int(rng.integers(0, sy - PATCH + 1)),
            int(rng.integers(0, sz - PATCH + 1)),
            int(rng.integers(0, sz)),
        )
        for _ in range(n)
    ]


# -- reads ----------------------------------------------------------------------------------------
READS = (("full_volume_ms", "full"), ("axial_slice_ms", "axial"), ("roi_ms", "roi"))


def _read_rows(cohort: Cohort) -> dict[str, tuple[Any, str]]:
    """Row label -> (reader, cache mode)."""
    ro, ax = ours.RadiReader(cohort), ours.RadiReader(cohort, axial_tiles=True)
    return {
        RO_COLD: (ro, "cold"),
        RO_WARM: (ro, "warm"),
        RO_OFF: (ro, "off"),
        RO_AX_COLD: (ax, "cold"),
        RO_AX_WARM: (ax, "warm"),
        "zarr v3": (peers.ZarrReader(cohort), ""),
        "npy memmap": (peers.NpyReader(cohort), ""),
        "nibabel .nii.gz": (peers.NiftiReader(cohort), ""),
    }


def _time_read(read: Callable[[Any], np.ndarray], mode: str, pos: list[Any]) -> float:
    if mode == "off":
        with ours.cache_mb(0):
            return time_reads(read, pos)
    if mode == "cold":
        return time_reads(read, pos, before=lambda _p: ours.clear_cache())
    if mode == "warm":
        return time_reads(read, pos, before=read)
    return time_reads(read, pos)


def run_reads(cohort: Cohort, s: Settings) -> Results:
    rows = _read_rows(cohort)
    out: Results = {}
    for section, kind in READS:
        n = s.n_full if kind == "full" else s.n_small
        out[section] = {}
        for label, (reader, mode) in rows.items():
            read = getattr(reader, kind)
            out[section][label] = repeat(
                s.repeats,
                "ms",
                lambda r, read=read, mode=mode, n=n: _time_read(
                    read, mode, positions(cohort, n, r)
                ),
            )
            log(f"  {section:15s} {label:32s} {out[section][label].value:9.2f} ms")
        ours.clear_cache()
    return out


# -- patch loaders --------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoaderRow:
    """How to build one row's loader for a seed, and how to time it."""

    make: Callable[[int], Any]
    radi: bool = False  # radiobject: empty the cache first, record the hit rate
    cold_mb: int | None = None  # radiobject cold: this cache budget, emptied every epoch
    cycle: int = 1  # time whole refill cycles of this many batches (TorchIO's queue)


def _time_row(row: LoaderRow, s: Settings, m: Measure, r: int) -> float:
    """One timed run; radiobject rows also record their cache hit rate in ``m``."""
    if row.radi:
        ours.clear_cache()
    loader = row.make(r)
    snap: list[tuple[int, int]] = []
    res = run_loader(
        loader,
        s.n_batches,
        s.max_seconds,
        after_first=(lambda: snap.append(ours.loader_counters(loader))) if row.radi else None,
        on_epoch=ours.clear_cache if row.cold_mb is not None else None,
        cycle=row.cycle,
    )
    if row.radi:
        hits, misses = ours.loader_counters(loader)
        h0, m0 = snap[0]
        total = (hits - h0) + (misses - m0)
        m.extra.setdefault("hit_rate_runs", []).append((hits - h0) / total if total else 0.0)
    m.extra.setdefault("first_batch_s_runs", []).append(res.first_batch_s)
    m.extra.setdefault("timed_batches_runs", []).append(res.batches)
    release(loader)
    return res.samples_per_s


def measure_loader(row: LoaderRow, s: Settings) -> Measure:
    m = Measure("samples/s")
    if row.cold_mb is not None:
        with ours.cache_mb(row.cold_mb):
            m.runs = [_time_row(row, s, m, r) for r in range(s.repeats)]
    else:
        m.runs = [_time_row(row, s, m, r) for r in range(s.repeats)]
    for key in ("hit_rate", "first_batch_s", "timed_batches"):
        runs = m.extra.get(f"{key}_runs")
        if runs:
            m.extra[key] = statistics.median(runs)
    return m


def _loader_rows(cohort: Cohort, k: int, s: Settings) -> dict[str, LoaderRow]:
    b = s.batch_size
    rows = {
        RO: LoaderRow(lambda r: ours.training_loader(cohort, k, b, r), radi=True),
        f"radiobject, cold ({s.cold_mb} MB cache, emptied each epoch)": LoaderRow(
            lambda r: ours.training_loader(cohort, k, b, r), radi=True, cold_mb=s.cold_mb
        ),
        RO_W2: LoaderRow(lambda r: ours.training_loader(cohort, k, b, r, num_workers=2), radi=True),
        "npy memmap": LoaderRow(lambda r: peers.npy_loader(cohort, k, b, r)),
        "zarr v3": LoaderRow(lambda r: peers.zarr_loader(cohort, k, b, r)),
        "TorchIO Queue": LoaderRow(
            lambda r: peers.torchio_loader(cohort, k, b, r), cycle=peers.torchio_cycle(k, b)
        ),
    }
    if k == 1:
        rows["MONAI LoadImaged+RandSpatialCropd"] = LoaderRow(
            lambda r: peers.monai_loader(cohort, k, b, r)
        )
    return rows


def run_loaders(cohort: Cohort, s: Settings, original_note: str | None) -> Results:
    out: Results = {}
    for k in s.patches_per_volume:
        section = f"patches_{k}_per_volume"
        out[section] = {}
        for label, row in _loader_rows(cohort, k, s).items():
            m = measure_loader(row, s)
            out[section][label] = m
            hit = f"  hit rate {m.extra['hit_rate']:.2f}" if "hit_rate" in m.extra else ""
            log(f"  {section:22s} {label:52s} {m.value:8.1f} samples/s{hit}")
        skipped = Measure("samples/s", extra={"note": original_note or "not measured"})
        out[section][ORIGINAL] = skipped
    return out


# -- segmentation ---------------------------------------------------------------------------------
def _seg_setup_ms(cohort: Cohort, s: Settings, r: int) -> float:
    loader, seconds = ours.segmentation_loader(cohort, 1, s.batch_size, r)
    release(loader)
    return 1000.0 * seconds


def _scan_ms(cohort: Cohort) -> float:
    t = time.perf_counter()
    peers.scan_masks(cohort)
    return 1000.0 * (time.perf_counter() - t)


def run_segmentation(cohort: Cohort, s: Settings) -> Results:
    out: Results = {"segmentation_setup_ms": {}, "segmentation_samples_per_s": {}}
    setup = out["segmentation_setup_ms"]
    setup[RO] = repeat(s.repeats, "ms", lambda r: _seg_setup_ms(cohort, s, r))
    setup["naive: read every mask .nii.gz, find foreground"] = repeat(
        s.repeats, "ms", lambda _r: _scan_ms(cohort)
    )
    for label, m in setup.items():
        log(f"  segmentation set-up {label:50s} {m.value:9.1f} ms")
    rates = out["segmentation_samples_per_s"]
    for k in s.patches_per_volume:

        def make(r: int, k: int = k) -> Any:
            return ours.segmentation_loader(cohort, k, s.batch_size, r)[0]

        label = f"{RO}, {k} per volume"
        rates[label] = measure_loader(LoaderRow(make, radi=True), s)
        log(f"  segmentation {label:40s} {rates[label].value:8.1f} samples/s")
    return out


# -- disk and ingest ------------------------------------------------------------------------------
def run_storage(cohort: Cohort) -> Results:
    sizes = {
        RO: dir_bytes(ours.collection_bytes_uri(cohort)),
        ".nii.gz (nibabel)": sum(dir_bytes(p) for p in cohort.nifti_paths()),
        f"zarr v3 ({cohort.zarr_codec})": dir_bytes(cohort.zarr_dir),
        "npy (uncompressed)": dir_bytes(cohort.npy_dir),
    }
    out = {label: Measure("MB", runs=[b / 2**20]) for label, b in sizes.items()}
    for label, m in out.items():
        log(f"  disk {label:30s} {m.value:9.1f} MB")
    return {"disk_mb": out}


def _timed_write(target: Path, fn: Callable[[str], None]) -> float:
    shutil.rmtree(target, ignore_errors=True)
    t = time.perf_counter()
    fn(str(target))
    seconds = time.perf_counter() - t
    shutil.rmtree(target, ignore_errors=True)
    return seconds


def _write_each(arrays: dict[str, np.ndarray], write: Callable[[str, np.ndarray], None]):
    def fn(target: str) -> None:
        Path(target).mkdir(parents=True)
        for sid, arr in arrays.items():
            write(str(Path(target) / sid), arr)

    return fn


def _save_nifti(path: str, arr: np.ndarray) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(arr, np.eye(4)), path + ".nii.gz")


def run_ingest(cohort: Cohort, s: Settings) -> Results:
    arrays = {sid: np.load(cohort.npy(sid)) for sid in cohort.subjects}
    scratch = cohort.root / "scratch"
    writers: dict[str, Callable[[str], None]] = {
        "radiobject from_images (.nii.gz -> TileDB)": lambda t: ours.ingest_from_images(cohort, t),
        "radiobject from_numpy (memory -> TileDB)": lambda t: ours.write_from_numpy(arrays, t),
        "nibabel write .nii.gz (memory -> files)": _write_each(arrays, _save_nifti),
        f"zarr v3 write ({cohort.zarr_codec})": _write_each(
            arrays, lambda p, a: write_zarr(p + ".zarr", a, cohort.zarr_codec)
        ),
        "npy write": _write_each(arrays, lambda p, a: np.save(p + ".npy", a)),
    }
    out: dict[str, Measure] = {}
    for label, fn in writers.items():
        out[label] = repeat(s.repeats, "s", lambda _r, fn=fn: _timed_write(scratch, fn))
        log(f"  ingest {label:45s} {out[label].value:8.2f} s")
    shutil.rmtree(scratch, ignore_errors=True)
    return {"ingest_s": out}
