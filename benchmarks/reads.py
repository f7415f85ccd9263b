"""The reads suite: one engine per process; random 64³ patches, whole volumes, axial planes.

Every engine reads the same positions of the first volumes (``copies.AXIAL_VOLUMES``) with
its files in the page cache (read once before the row); radiobject's RAM cache is emptied
before each read (``clear_caches``), so each read decodes from its files as the peers do.
Slice layouts are rows of their own (``radiobject-axial`` against ``zarr-axial``, both one
plane per chunk): they answer axial planes only.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from copies import AXIAL_VOLUMES, Copies

KINDS = ("roi", "volume", "axial")


def _box(c: tuple[int, ...], patch: int) -> tuple[slice, ...]:
    return tuple(slice(a, a + patch) for a in c)


class _Reader:
    """Reads of one engine: ``roi(v, corner)``, ``volume(v)``, ``axial(v, z)``."""

    kinds: tuple[str, ...] = KINDS

    def __init__(self, handles: list[Any], patch: int, get: Callable[[Any, Any], Any]) -> None:
        self.h, self.patch, self.get = handles, patch, get

    def roi(self, v: int, c: tuple[int, ...]) -> Any:
        return self.get(self.h[v], _box(c, self.patch))

    def volume(self, v: int) -> Any:
        return self.get(self.h[v], (slice(None),) * 3)

    def axial(self, v: int, z: int) -> Any:
        return self.get(self.h[v], (slice(None), slice(None), z))


def reader(engine: str, c: Copies, patch: int) -> tuple[_Reader, Callable[[], None]]:
    """The engine's reader and what to run before each read (radiobject: empty the cache)."""
    n = min(AXIAL_VOLUMES, c.n)
    before: Callable[[], None] = lambda: None  # noqa: E731

    def arr(h: Any, key: Any) -> np.ndarray:
        return np.asarray(h[key])

    if engine in ("radiobject", "radiobject-axial"):
        from radiobject import RadiObject, Volume, clear_caches

        if engine == "radiobject":
            coll = RadiObject(c.radi_uri).collection("T1w")
            vols = [coll.volume(o) for o in c.obs_ids[:n]]
        else:
            vols = [Volume(str(c.path("radiobject-axial", i))) for i in range(n)]
        r = _Reader(vols, patch, arr)
        r.volume = lambda v: vols[v].to_numpy()  # type: ignore[method-assign]
        r.axial = lambda v, z: vols[v].axial(z)  # type: ignore[method-assign]
        before = clear_caches
    elif engine == "npy":
        r = _Reader([np.load(c.path("npy", i), mmap_mode="r") for i in range(n)], patch,
                    lambda h, k: np.array(h[k]))  # fmt: skip
    elif engine in ("b2-lz4hc", "nnunet"):
        from engines import _b2_open

        copy = "b2-lz4hc" if engine == "b2-lz4hc" else "b2-nnunet"
        handles = [_b2_open(str(c.path(copy, i))) for i in range(n)]
        get = arr if engine == "b2-lz4hc" else (lambda h, k: np.asarray(h[(0, *k)]))
        r = _Reader(handles, patch, get)
    elif engine in ("zarr", "zarr-axial"):
        import zarr

        copy = "zarr3" if engine == "zarr" else "zarr3-axial"
        r = _Reader([zarr.open_array(str(c.path(copy, i)), mode="r") for i in range(n)], patch, arr)
    elif engine == "tensorstore":
        from engines import _TensorstoreOpener, _ts_read

        opener = _TensorstoreOpener(0)  # no cache pool: each read decodes (as the others)
        r = _Reader([opener(str(c.path("zarr3", i))) for i in range(n)], patch, _ts_read)
    else:
        raise SystemExit(f"no reads for engine {engine!r}")
    if engine.endswith("-axial"):
        r.kinds = ("axial",)
    return r, before


ENGINES = ("radiobject", "npy", "b2-lz4hc", "nnunet", "tensorstore", "zarr",
           "radiobject-axial", "zarr-axial", "seg-radiobject", "seg-scan", "disk")  # fmt: skip
NEEDS = {"tensorstore": ("tensorstore", "zarr"), "zarr": ("zarr",), "zarr-axial": ("zarr",),
         "seg-scan": ("nibabel",)}  # fmt: skip


def available() -> list[str]:
    """The read engines whose libraries are installed here."""
    import importlib.util

    return [e for e in ENGINES if all(importlib.util.find_spec(m) for m in NEEDS.get(e, ()))]


LABELS = {
    "radiobject": "radiobject, default tiles (`Volume[...]`, `to_numpy`, `axial`)",
    "npy": "`.npy` memmap",
    "b2-lz4hc": "blosc2 LZ4HC, 64³ chunks, held open",
    "nnunet": "blosc2 as nnU-Net v2 writes it (ZSTD 8)",
    "tensorstore": "tensorstore zarr3 sharded (no cache pool)",
    "zarr": "zarr-python v3 sharded, 32³ inner chunks",
    "radiobject-axial": "radiobject, axial tiles (a slice-layout copy)",
    "zarr-axial": "zarr-python v3 sharded, one plane per inner chunk (a slice-layout copy)",
    "seg-radiobject": "radiobject `create_segmentation_dataloader` (stored foreground index)",
    "seg-scan": "no stored index: read every mask `.nii`, find its foreground",
}
COPY_OF = {"radiobject": "radiobject", "npy": "npy", "b2-lz4hc": "b2-lz4hc",
           "nnunet": "b2-nnunet", "tensorstore": "zarr3", "zarr": "zarr3",
           "radiobject-axial": "radiobject-axial", "zarr-axial": "zarr3-axial",
           "seg-radiobject": "radiobject", "seg-scan": "seg-nii", "disk": "radiobject"}  # fmt: skip


def segmentation_setup_ms(engine: str, c: Copies, patch: int) -> float:
    """One set-up of a foreground-sampling loader, in a process that has opened nothing.

    ``seg-radiobject``: ``create_segmentation_dataloader(foreground_sampling=True)`` on freshly
    opened collections (it reads the stored foreground index, no mask voxels);
    ``seg-scan``: what a loader without a stored index does first: read every mask and find
    its foreground voxels (nibabel on uncompressed ``.nii``, ``np.argwhere``).
    """
    t = time.perf_counter()
    if engine == "seg-radiobject":
        from radiobject import RadiObject
        from radiobject.ml import create_segmentation_dataloader

        radi = RadiObject(c.radi_uri)
        image, mask = radi.collection("T1w"), radi.collection("seg")
        create_segmentation_dataloader(
            image=image, mask=mask, patch_size=(patch,) * 3, foreground_sampling=True
        )
    else:
        import nibabel as nib

        for i in range(c.n):
            np.argwhere(np.asanyarray(nib.load(c.path("seg-nii", i)).dataobj) > 0)
    return 1000 * (time.perf_counter() - t)


DISK_COPIES = {
    "radiobject": "radiobject (TileDB, uint16; its tier is in the loader tables)",
    "nii-gz": "`.nii.gz`, same dtype",
    "nii": "`.nii` uncompressed (MONAI, TorchIO)",
    "npy": "`.npy`",
    "b2-nnunet": "blosc2 nnU-Net v2 (ZSTD 8)",
    "b2-nnunet-f32": "blosc2 nnU-Net v2, float32 as it ships",
    "b2-lz4hc": "blosc2 LZ4HC",
    "zarr3": "zarr v3 sharded (zarr-python, tensorstore)",
}


def run_reads_row(row: Any, c: Copies) -> Any:
    from dataclasses import asdict

    from rows import Record, _machine, _prepare_page_cache, _settings

    rec = Record(asdict(row), row.key, machine=_machine())
    rec.metrics.update(_prepare_page_cache(row, c, COPY_OF[row.engine]))
    rec.settings = _settings(row, 0)
    if row.engine == "disk":
        from copies import dir_bytes

        from radiobject import RadiObject

        sizes = {k: dir_bytes(c.folder(k)) / 2**20 for k in DISK_COPIES}
        # radiobject: the T1w collection alone (its volumes, obs and metadata; no seg)
        sizes["radiobject"] = dir_bytes(RadiObject(c.radi_uri).collection("T1w").uri) / 2**20
        rec.metrics["disk_mb"] = sizes
        return rec
    if row.engine.startswith("seg-"):
        if row.engine == "seg-radiobject":  # the import is not the set-up
            import radiobject.ml  # noqa: F401
        else:
            import nibabel  # noqa: F401
        rec.metrics["seg_setup_ms"] = segmentation_setup_ms(row.engine, c, row.patch)
        return rec
    r, before = reader(row.engine, c, row.patch)
    rng = np.random.default_rng([row.seed, 0x5EAD])
    n = min(AXIAL_VOLUMES, c.n)
    for kind in r.kinds:
        count = max(4, row.reads // 5) if kind == "volume" else row.reads
        times = []
        for _ in range(count + 1):  # the first read opens things: not counted
            v = int(rng.integers(n))
            if kind == "roi":
                args: tuple[Any, ...] = (v, tuple(int(rng.integers(0, s - row.patch + 1))
                                                  for s in c.shape))  # fmt: skip
            elif kind == "axial":
                args = (v, int(rng.integers(c.shape[2])))
            else:
                args = (v,)
            before()
            t = time.perf_counter()
            getattr(r, kind)(*args)
            times.append(time.perf_counter() - t)
        rec.metrics[f"{kind}_ms"] = 1000 * statistics.median(times[1:])
    return rec
