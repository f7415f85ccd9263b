"""The benchmark cohort: one set of T1w volumes stored by radiobject and by every peer format.

Everything lives in one work directory keyed by subject count and shape, and is reused when
a previous run finished writing it (``complete.json`` is written last).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MODALITY = "T1w"
PATCH = 64
SEED = 0


@dataclass(frozen=True)
class Cohort:
    """Where each copy of the cohort is, and what it holds."""

    root: Path
    n_subjects: int
    shape: tuple[int, int, int]
    zarr_codec: str

    @property
    def radi_uri(self) -> str:
        return str(self.root / "radiobject")

    @property
    def axial_dir(self) -> Path:
        return self.root / "radiobject-axial"

    @property
    def nifti_dir(self) -> Path:
        return self.root / "nifti"

    @property
    def npy_dir(self) -> Path:
        return self.root / "npy"

    @property
    def zarr_dir(self) -> Path:
        return self.root / f"zarr-{self.zarr_codec}"

    @property
    def subjects(self) -> list[str]:
        return [f"sub-{i:03d}" for i in range(self.n_subjects)]

    def nifti(self, sid: str, modality: str = MODALITY) -> Path:
        return self.nifti_dir / modality / f"{sid}_{modality}.nii.gz"

    def npy(self, sid: str) -> Path:
        return self.npy_dir / f"{sid}.npy"

    def zarr(self, sid: str) -> Path:
        return self.zarr_dir / f"{sid}.zarr"

    def axial(self, sid: str) -> str:
        return str(self.axial_dir / sid)

    def nifti_paths(self, modality: str = MODALITY) -> list[str]:
        return [str(self.nifti(s, modality)) for s in self.subjects]

    @property
    def volume_bytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    @property
    def cohort_mb(self) -> float:
        return self.n_subjects * self.volume_bytes / 2**20


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"240x240x155"`` -> ``(240, 240, 155)``."""
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3 or min(parts) < PATCH:
        raise SystemExit(f"--shape needs three sizes >= {PATCH} like 240x240x155, got {text!r}")
    return parts  # type: ignore[return-value]


def dir_bytes(path: str | Path) -> int:
    """Bytes of all files under ``path`` (or of the file itself)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def load_nifti(path: str | Path) -> np.ndarray:
    import nibabel as nib

    return np.asanyarray(nib.load(str(path)).dataobj)


def _step(root: Path, name: str, log: bool, fn) -> None:
    marker = root / f".{name}.done"
    if marker.exists():
        return
    t = time.perf_counter()
    fn()
    marker.write_text("ok")
    if log:
        print(f"  {name}: {time.perf_counter() - t:.1f} s", flush=True)


def _write_radiobject(c: Cohort) -> None:
    from radiobject.data import make_sample_radiobject

    shutil.rmtree(c.radi_uri, ignore_errors=True)
    make_sample_radiobject(
        c.radi_uri,
        n_subjects=c.n_subjects,
        shape=c.shape,
        modalities=(MODALITY,),
        seed=SEED,
        progress=False,
    )


def _write_niftis(c: Cohort) -> None:
    from radiobject.data import write_sample_niftis

    shutil.rmtree(c.nifti_dir, ignore_errors=True)
    write_sample_niftis(
        c.nifti_dir, n_subjects=c.n_subjects, shape=c.shape, modalities=(MODALITY,), seed=SEED
    )


def _write_npys(c: Cohort) -> None:
    c.npy_dir.mkdir(parents=True, exist_ok=True)
    for sid in c.subjects:
        np.save(c.npy(sid), load_nifti(c.nifti(sid)))


def write_zarr(path: str | Path, array: np.ndarray, codec: str) -> None:
    """``array`` as a zarr v3 array of 64^3 chunks (zstd, or blosc-zstd with byte shuffle)."""
    import zarr
    import zarr.codecs

    if codec == "zstd":
        compressors = zarr.codecs.ZstdCodec(level=3)
    else:
        compressors = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
    arr = zarr.create_array(
        store=str(path),
        shape=array.shape,
        chunks=(PATCH, PATCH, PATCH),
        dtype=array.dtype,
        compressors=compressors,
        overwrite=True,
    )
    arr[...] = array


def _write_zarrs(c: Cohort) -> None:
    c.zarr_dir.mkdir(parents=True, exist_ok=True)
    for sid in c.subjects:
        write_zarr(c.zarr(sid), np.load(c.npy(sid)), c.zarr_codec)


def _write_axial(c: Cohort) -> None:
    from radiobject import SliceOrientation, TileConfig, Volume

    shutil.rmtree(c.axial_dir, ignore_errors=True)
    c.axial_dir.mkdir(parents=True)
    tile = TileConfig(orientation=SliceOrientation.AXIAL)
    for sid in c.subjects:
        Volume.from_numpy(c.axial(sid), np.load(c.npy(sid)), tile=tile)


def _check_same_voxels(c: Cohort) -> None:
    """The peers must hold the very volumes radiobject holds (first and last subject)."""
    from radiobject import RadiObject

    coll = RadiObject(c.radi_uri).collection(MODALITY)
    by_subject = dict(zip(coll.obs_subject_ids, coll.obs_ids, strict=True))
    for sid in (c.subjects[0], c.subjects[-1]):
        ours = coll.volume(by_subject[sid]).to_numpy()
        if not np.array_equal(ours, np.load(c.npy(sid), mmap_mode="r")):
            raise RuntimeError(f"{sid}: the .nii.gz/.npy volume differs from radiobject's")


def prepare(
    workdir: str | Path,
    n_subjects: int,
    shape: Sequence[int],
    zarr_codec: str = "zstd",
    log: bool = True,
) -> Cohort:
    """Write (or reuse) the cohort in every format under ``workdir``."""
    shape = tuple(int(s) for s in shape)
    root = Path(workdir) / f"s{n_subjects}_{'x'.join(map(str, shape))}"
    cohort = Cohort(root, n_subjects, shape, zarr_codec)  # type: ignore[arg-type]
    if (root / f"complete-{zarr_codec}.json").exists():
        if log:
            print(f"reusing the cohort in {root}", flush=True)
        return cohort
    root.mkdir(parents=True, exist_ok=True)
    if log:
        print(f"writing the cohort ({n_subjects} x {shape}) in {root}", flush=True)
    _step(root, "radiobject", log, lambda: _write_radiobject(cohort))
    _step(root, "nifti", log, lambda: _write_niftis(cohort))
    _step(root, "npy", log, lambda: _write_npys(cohort))
    _step(root, f"zarr-{zarr_codec}", log, lambda: _write_zarrs(cohort))
    _step(root, "axial", log, lambda: _write_axial(cohort))
    _check_same_voxels(cohort)
    info = {"n_subjects": n_subjects, "shape": shape, "zarr_codec": zarr_codec, "seed": SEED}
    (root / f"complete-{zarr_codec}.json").write_text(json.dumps(info))
    return cohort
