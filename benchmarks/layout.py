"""Tile shape, byte filters and codec of stored volumes, chosen by measurement (issue 16).

One command writes a few synthetic volumes in every candidate layout and measures, in one
process and one run, what each layout costs:

* **patches/s**: random 64³ patches (seeded corners, the same for every candidate), one
  thread, ``ReadConfig(cache_mb=0)``: every patch is a TileDB query decoding the tiles it
  touches (the first epoch of a loader, or a cohort larger than the cache);
* **whole ms**: ``Volume.to_numpy()`` with the block cache emptied before each read (median;
  the volume is read from storage and kept in the cache, which costs one copy of it),
  and against it **zarr-python v3** reading the same volume (``arr[...]``), the two reads
  interleaved so that drift on a shared machine hits both alike: ``/zarr`` is the ratio of
  the medians (target <= 0.8); ``cpu/zarr`` the ratio of the process CPU time of the reads
  (steadier on a busy machine);
* **axial ms**: one random axial plane ``vol.axial(z)``, cache off (median);
* **disk**: bytes on disk of the volumes against their ``.nii.gz`` files in the same dtype
  (``/nii``) and against the float32 ``.nii.gz`` a scanner export would be (``/nii f32``;
  the target: <= 0.7).

Data: ``--volumes`` BraTS-size (240x240x155) T1w phantoms from ``radiobject.data``, rounded
to whole numbers and stored both as int16 and as float32 (same values), and for the axial
layout ``--ct-volumes`` CT-like 512x512x``--ct-slices`` volumes (the same phantom, mapped
to Hounsfield-like integers from -1000, int16). zarr uses zarr-python's defaults (its
``ZstdCodec(level=0)``, no shuffle) with 64³ chunks (the patch size, as the other benchmarks).

Candidates: isotropic tiles of 24³, 32³, 48³ and 64³ with zstd level 1 or 3 or lz4, each
after the byte shuffle radiobject always adds; on 32³ also bit shuffle and no shuffle;
axial planes (one tile per z, column-major cells) with the same codecs on the CT-like
volumes, with two isotropic layouts beside them.

    python benchmarks/layout.py            # about 5-8 minutes on 2 cores
    python benchmarks/layout.py --quick    # a smoke run: small volumes, 4 candidates

Nothing is asserted on time; the tables print absolute numbers and ratios, with the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe

PATCH = 64
BRATS = (240, 240, 155)


def even(edge: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Extents of at most ``edge`` that cut each axis of ``shape`` into equal tiles."""
    return tuple(-(-n // -(-n // edge)) for n in shape[:3])


@dataclass(frozen=True)
class Candidate:
    """One layout: tiles, byte filter and codec.

    ``tile``: ``"axial"`` (one tile per z), ``("cube", e)`` (e³, the edge tiles padded),
    ``("even", e)`` (at most e, cutting each axis into equal tiles) or ``("even-z2", e)``
    (the same with twice the edge along z, the axis TileDB copies along).
    """

    tile: str | tuple[str, int]
    codec: str  # "zstd1", "zstd3", "lz4"
    shuffle: str = "byte"  # "byte", "bit", "none"

    def extents(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        if self.tile == "axial":
            return None
        kind, e = self.tile
        if kind == "cube":
            return tuple(min(e, n) for n in shape[:3])
        x, y, _ = even(e, shape)
        z = even(2 * e if kind == "even-z2" else e, shape)[2]
        return (x, y, z)

    def name(self, shape: tuple[int, ...]) -> str:
        ext = self.extents(shape)
        tile = "axial" if ext is None else "x".join(str(e) for e in ext)
        if isinstance(self.tile, tuple) and self.tile[0] != "cube":
            tile = f"{self.tile[0]} {self.tile[1]} ({tile})"
        return f"{tile} {self.shuffle}shuf+{self.codec}"


def _filters(c: Candidate) -> Any:
    import tiledb

    codec = {
        "zstd1": lambda: tiledb.ZstdFilter(level=1),
        "zstd3": lambda: tiledb.ZstdFilter(level=3),
        "lz4": lambda: tiledb.LZ4Filter(),
    }[c.codec]()
    shuffle = {
        "byte": [tiledb.ByteShuffleFilter()],
        "bit": [tiledb.BitShuffleFilter()],
        "none": [],
    }[c.shuffle]
    return tiledb.FilterList([*shuffle, codec])


def write_candidate(uri: str, array: np.ndarray, c: Candidate) -> None:
    """``array`` as a radiobject volume in layout ``c`` (the filters set for this write only)."""
    import radiobject.storage._volume as volume_module
    from radiobject import TileConfig, Volume

    ext = c.extents(array.shape)
    tile = TileConfig(orientation="axial") if ext is None else TileConfig(extents=ext)
    saved = volume_module._filters
    volume_module._filters = lambda _compression: _filters(c)
    try:
        Volume.from_numpy(uri, array, tile=tile, integers=False)  # stored in array's dtype
    finally:
        volume_module._filters = saved


def dir_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def brats_volumes(n: int, shape: tuple[int, int, int]) -> list[np.ndarray]:
    """``n`` T1w phantoms rounded to whole numbers (float32 holding integers)."""
    from radiobject.data import make_subject

    out = []
    for i in range(n):
        s = make_subject(shape, np.random.default_rng([16, i]), modalities=["T1w"])
        out.append(np.rint(s.images["T1w"]))
    return out


def ct_volumes(n: int, shape: tuple[int, int, int]) -> list[np.ndarray]:
    """CT-like int16: the phantom mapped to -1000 (air) .. about 1000 (its brightest voxels)."""
    out = []
    for img in brats_volumes(n, shape):
        hu = img / max(float(img.max()), 1.0) * 2000.0 - 1000.0
        out.append(np.rint(hu).astype(np.int16))
    return out


def write_niftis(root: Path, arrays: list[np.ndarray], dtype: str) -> int:
    import nibabel as nib

    root.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        nib.save(nib.Nifti1Image(a.astype(dtype), np.eye(4)), str(root / f"{i}.nii.gz"))
    return dir_bytes(root)


def write_zarrs(root: Path, arrays: list[np.ndarray]) -> list[Any]:
    import zarr

    out = []
    for i, a in enumerate(arrays):
        z = zarr.create_array(
            store=str(root / f"{i}.zarr"), shape=a.shape, dtype=a.dtype, chunks=(PATCH,) * 3
        )
        z[...] = a
        out.append(zarr.open_array(str(root / f"{i}.zarr"), mode="r"))
    return out


def _med_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def corners(shape: tuple[int, ...], n: int, seed: int = 0) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, s - PATCH + 1)) for s in shape[:3]) for _ in range(n)]  # type: ignore[misc]


class Sampler:
    """One candidate's volumes and everything measured on them, round after round."""

    def __init__(self, c: Candidate, volumes: list[Any], zarrs: list[Any]) -> None:
        self.c, self.volumes, self.zarrs = c, volumes, zarrs
        self.patch_wall = self.patch_cpu = 0.0
        self.patches = 0
        self.whole: list[float] = []
        self.whole_cpu: list[float] = []
        self.zarr: list[float] = []
        self.zarr_cpu: list[float] = []
        self.axial: list[float] = []

    def round(self, spots: list[tuple[int, int, int]], planes: list[int], flip: bool) -> None:
        """Some patches and planes (cache off), and each volume whole beside zarr's read."""
        from radiobject import ReadConfig, clear_caches, configure

        volumes = self.volumes
        with configure(read=ReadConfig(cache_mb=0)):
            c, t = time.process_time(), time.perf_counter()
            for i, (x, y, z) in enumerate(spots):
                volumes[i % len(volumes)][x : x + PATCH, y : y + PATCH, z : z + PATCH]
            self.patch_wall += time.perf_counter() - t
            self.patch_cpu += time.process_time() - c
            self.patches += len(spots)
            for i, z in enumerate(planes):
                t = time.perf_counter()
                volumes[i % len(volumes)].axial(z)
                self.axial.append(time.perf_counter() - t)
        for v, z in zip(volumes, self.zarrs, strict=True):
            pair: list[tuple[list[float], list[float], Callable[[], Any]]] = [
                (self.whole, self.whole_cpu, v.to_numpy),
                (self.zarr, self.zarr_cpu, lambda z=z: z[...]),
            ]
            for wall, cpu, read in pair[::-1] if flip else pair:
                clear_caches()
                c, t = time.process_time(), time.perf_counter()
                read()
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)

    def row(self) -> dict[str, Any]:
        med = statistics.median
        return {
            "layout": self.c.name(self.volumes[0].shape),
            "patches/s": self.patches / self.patch_wall,
            "patch cpu ms": self.patch_cpu / self.patches * 1e3,
            "whole ms": med(self.whole) * 1e3,
            "whole cpu ms": med(self.whole_cpu) * 1e3,
            "zarr ms": med(self.zarr) * 1e3,
            "/zarr": med(self.whole) / med(self.zarr),
            "cpu/zarr": med(self.whole_cpu) / med(self.zarr_cpu),
            "axial ms": med(self.axial) * 1e3,
        }


def run_dataset(
    label: str,
    arrays: list[np.ndarray],
    candidates: list[Candidate],
    root: Path,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Write every candidate, then measure them in rounds, the order rotating each round."""
    from radiobject import Volume

    root.mkdir(parents=True, exist_ok=True)
    dtype = str(arrays[0].dtype)
    nii_same = write_niftis(root / "nii", arrays, dtype)
    nii_f32 = write_niftis(root / "nii-f32", arrays, "float32")
    zarrs = write_zarrs(root / "zarr", arrays)
    zarr_bytes = dir_bytes(root / "zarr")
    print(
        f"\n## {label}: {len(arrays)} x {arrays[0].shape} {dtype}; .nii.gz {nii_same / 1e6:.1f} MB"
        f" ({dtype}), {nii_f32 / 1e6:.1f} MB (float32); zarr 64³ default codec"
        f" {zarr_bytes / 1e6:.1f} MB ({zarr_bytes / nii_f32:.2f} of float32 .nii.gz)",
        flush=True,
    )
    samplers, extra = [], {}
    for c in candidates:
        folder = root / "".join(ch if ch.isalnum() else "_" for ch in c.name(arrays[0].shape))
        t = time.perf_counter()
        for i, a in enumerate(arrays):
            write_candidate(str(folder / str(i)), a, c)
        write_s = (time.perf_counter() - t) / len(arrays)
        volumes = [Volume(str(folder / str(i))) for i in range(len(arrays))]
        for v, a in zip(volumes, arrays, strict=True):
            if not np.array_equal(v.to_numpy(), a):
                raise AssertionError(f"{v.uri} does not hold the voxels written")
        disk = dir_bytes(folder)
        extra[c] = {"MB": disk / 1e6, "/nii": disk / nii_same, "/nii f32": disk / nii_f32}
        extra[c]["write s"] = write_s
        samplers.append(Sampler(c, volumes, zarrs))
    shape = arrays[0].shape
    spots = corners(shape, args.patches)
    planes = [int(z) for z in np.random.default_rng(1).integers(0, shape[2], args.axial_reads)]
    rounds = args.rounds
    for r in range(rounds):
        order = samplers[r % len(samplers) :] + samplers[: r % len(samplers)]
        for s in order[::-1] if r % 2 else order:
            s.round(spots[r::rounds], planes[r::rounds], flip=bool(r % 2))
    print(_header())
    rows = []
    for s in samplers:
        row = s.row() | extra[s.c]
        rows.append(row)
        print(_line(row), flush=True)
    return rows


COLUMNS = (  # name, width, format
    ("layout", 36, "<"),
    ("patches/s", 9, ">.0f"),
    ("patch cpu ms", 12, ">.2f"),
    ("whole ms", 8, ">.1f"),
    ("whole cpu ms", 12, ">.1f"),
    ("zarr ms", 7, ">.1f"),
    ("/zarr", 5, ">.2f"),
    ("cpu/zarr", 8, ">.2f"),
    ("axial ms", 8, ">.2f"),
    ("MB", 6, ">.1f"),
    ("/nii", 5, ">.2f"),
    ("/nii f32", 8, ">.2f"),
    ("write s", 7, ">.2f"),
)


def _header() -> str:
    return " | ".join(f"{name:{'<' if name == 'layout' else '>'}{w}}" for name, w, _ in COLUMNS)


def _line(row: dict[str, Any]) -> str:
    return " | ".join(f"{row[name]:{fmt[0]}{w}{fmt[1:]}}" for name, w, fmt in COLUMNS)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small volumes, 4 candidates")
    p.add_argument("--volumes", type=int, default=3, help="BraTS-size volumes (default 3)")
    p.add_argument("--ct-volumes", type=int, default=2)
    p.add_argument("--ct-slices", type=int, default=120)
    p.add_argument("--patches", type=int, default=300, help="random 64³ patches per candidate")
    p.add_argument("--rounds", type=int, default=5, help="rounds (each: every volume whole)")
    p.add_argument("--axial-reads", type=int, default=30)
    p.add_argument("--only", default="", help="comma list: int16, float32, axial")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)

    geometry = [(k, e) for k in ("cube", "even") for e in (32, 48, 64)] + [("even-z2", 48)]
    iso_i16 = [Candidate(g, "zstd3") for g in geometry] + [
        Candidate(("cube", 32), "zstd1"),
        Candidate(("even", 48), "zstd1"),
        Candidate(("even", 48), "lz4"),
        Candidate(("even", 48), "zstd3", "bit"),
        Candidate(("even", 48), "zstd3", "none"),
        Candidate(("cube", 24), "zstd3"),
    ]
    iso_f32 = [Candidate(g, "zstd3") for g in geometry if g[1] != 64 or g[0] == "cube"] + [
        Candidate(("even", 48), "zstd1"),
        Candidate(("even", 48), "lz4"),
    ]
    axial = [Candidate("axial", c) for c in ("zstd1", "zstd3", "lz4")] + [
        Candidate(("even", 48), "zstd3"),
        Candidate(("cube", 32), "zstd3"),
    ]
    shape, ct_shape = BRATS, (512, 512, args.ct_slices)
    if args.quick:
        args.volumes, args.ct_volumes, args.patches, args.rounds, args.axial_reads = 1, 1, 20, 3, 6
        shape, ct_shape = (96, 96, 80), (128, 128, 70)
        iso_i16 = iso_f32 = [Candidate(("cube", 48), "zstd3"), Candidate(("even", 48), "zstd3")]
        axial = [Candidate("axial", "zstd3"), Candidate(("even", 48), "zstd3")]
    only = set(filter(None, args.only.split(",")))

    print(f"# Layout study: {describe()}")
    import tiledb
    import zarr

    print(
        f"# tiledb {tiledb.__version__} (TileDB {tiledb.libtiledb.version()}),"
        f" zarr {zarr.__version__}"
    )
    print(
        f"# {args.patches} random 64³ patches per candidate (1 thread, cache off); whole reads:"
        f" {args.rounds} per volume, interleaved with zarr; candidates measured in"
        f" {args.rounds} rounds, the order rotating; ratios from this run only"
    )
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="radiobject-layout-"))
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        t0 = time.perf_counter()
        brats = brats_volumes(args.volumes, shape) if only - {"axial"} or not only else []
        datasets: list[tuple[str, list[np.ndarray], list[Candidate]]] = []
        if not only or "int16" in only:
            datasets.append(("int16, isotropic", [a.astype(np.int16) for a in brats], iso_i16))
        if not only or "float32" in only:
            datasets.append(("float32, isotropic", [a.astype(np.float32) for a in brats], iso_f32))
        if not only or "axial" in only:
            datasets.append(("CT-like int16, axial", ct_volumes(args.ct_volumes, ct_shape), axial))
        for label, arrays, candidates in datasets:
            results[label] = run_dataset(
                label, arrays, candidates, workdir / label.split(",")[0], args
            )
        print(f"\n# done in {time.perf_counter() - t0:.0f} s; {describe()}")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    for label, rows in results.items():
        best = max(rows, key=lambda r: r["patches/s"])
        fastest = min(rows, key=lambda r: r["whole ms"])
        smallest = min(rows, key=lambda r: r["MB"])
        print(
            f"# {label}: most patches/s {best['layout']} ({best['patches/s']:.0f});"
            f" fastest whole {fastest['layout']} ({fastest['/zarr']:.2f} of zarr);"
            f" smallest {smallest['layout']} ({smallest['/nii f32']:.2f} of float32 .nii.gz)"
        )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
