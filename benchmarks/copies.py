"""The benchmark cohort and every engine's copy of it, written once and reused.

One cohort (``radiobject.data``'s whole-number T1w phantoms, which radiobject stores as
uint16) and, in the same dtype, each peer's copy as that peer is at its best:

- ``npy/``: raw ``.npy`` (memory-mapped by the loader);
- ``nii/``: uncompressed ``.nii`` (what MONAI and TorchIO read fastest: no gzip step), in
  int16 when the voxels fit (torch has no uint16 arithmetic: MONAI and TorchIO widen uint16
  to int32, twice the bytes in their caches; int16 holds the same voxels in radiobject's 2 bytes);
- ``b2-nnunet/``: blosc2 as nnU-Net v2's preprocessing writes a case: shape ``(1, x, y, z)``,
  ZSTD level 8 with blosc2's default byte shuffle, chunks and blocks from nnU-Net's cache rule
  (:func:`nnunet_blosc2_layout`);
- ``b2-nnunet-f32/``: the same in float32, as nnU-Net ships its preprocessed data;
- ``b2-lz4hc/``: blosc2 LZ4HC level 8 + shuffle, 64³ chunks of 32³ blocks (the fastest
  blosc2 we know for random 64³ patches; radiobject's tier writes faster to fill: LZ4HC 2,
  ~5 MB slabs per volume);
- ``zarr3/``: zarr v3 sharded (one shard per volume, 32³ inner chunks, blosc LZ4 + shuffle),
  written by zarr-python and read by both zarr-python and tensorstore;
- ``radiobject-axial/``, ``zarr3-axial/``: slice layouts of the first volumes (reads suite only);
- ``nii-gz/``: ``.nii.gz`` in the stored dtype, for the disk table only (what scanner exports
  and most datasets ship);
- ``seg-nii/``: the ``seg`` masks as uncompressed ``.nii`` (what a loader without a stored
  foreground index reads to find the foreground).

``manifest.json`` is written last: a folder without it is written again (and one written
without zarr-python installed, once it is: the zarr3 copies need it).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODALITY = "T1w"
SEED = 0
L1_BYTES = 32 * 1024  # nnU-Net's cache sizes per core (an old Xeon's; it targets 80% of each)
L3_BYTES = 1441792
LAYOUT_VERSION = 4  # in the folder name: a change of the copies writes them again
AXIAL_VOLUMES = 4  # volumes in slice layouts (the reads suite reads these only)

# each engine's copy: folder name, what the loader rows read
FOLDERS = {
    "radiobject": "radiobject",
    "npy": "npy",
    "nii": "nii",
    "b2-nnunet": "b2-nnunet",
    "b2-nnunet-f32": "b2-nnunet-f32",
    "b2-lz4hc": "b2-lz4hc",
    "zarr3": "zarr3",
    "radiobject-axial": "radiobject-axial",
    "zarr3-axial": "zarr3-axial",
    "seg-nii": "seg-nii",
    "nii-gz": "nii-gz",
}


@dataclass(frozen=True)
class Copies:
    """Where every copy of one cohort lives."""

    root: Path
    n: int
    shape: tuple[int, int, int]
    dtype: str  # what radiobject stores (and every peer but nnU-Net's float32 copy)
    obs_ids: tuple[str, ...]  # volume i of every copy is radiobject's obs_ids[i]
    nii_dtype: str  # the .nii copy's dtype (what MONAI and TorchIO hold)

    @property
    def radi_uri(self) -> str:
        return str(self.root / "radiobject")

    def folder(self, name: str) -> Path:
        return self.root / FOLDERS[name]

    def path(self, name: str, i: int) -> Path:
        ext = {
            "npy": ".npy",
            "nii": ".nii",
            "nii-gz": ".nii.gz",
            "seg-nii": ".nii",
            "zarr3": ".zarr",
            "zarr3-axial": ".zarr",
        }
        return self.folder(name) / f"{i:03d}{ext.get(name, '.b2nd')}"

    @property
    def stored_mb(self) -> float:
        """The cohort's decompressed bytes as stored (what a RAM budget is compared with)."""
        return self.n * math.prod(self.shape) * np.dtype(self.dtype).itemsize / 2**20


def dir_bytes(path: str | Path) -> int:
    """Bytes of every file under ``path`` (0 if it does not exist)."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0


def nnunet_blosc2_layout(
    image_shape: Sequence[int], patch: Sequence[int], itemsize: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(blocks, chunks) nnU-Net v2 picks for a case of ``image_shape`` ``(c, x, y, z)``.

    The rule of nnU-Net's ``comp_blosc2_params``, written from its description: a block
    starts at the patch rounded up to powers of two and is halved, along the axis where it is
    longest relative to the patch, until it fits 80% of a 32 KiB L1 cache; a chunk then grows
    block by block, along the axis where it is shortest relative to the block, until it
    passes 80% of a 1.375 MiB L3 cache slice, reaches the image, or exceeds 1.5x the patch
    on average (that last step is undone).
    """
    image = np.array(image_shape)
    patch_arr = np.array(patch)
    block = np.array([image[0], *[2 ** max(0, math.ceil(math.log2(p))) for p in patch_arr]])
    while np.prod(block) * itemsize > 0.8 * L1_BYTES:
        longest = [a for a in np.argsort(block[1:] / patch_arr)[::-1] if block[a + 1] > 1]
        a = longest[0] + 1
        block[a] = min(2 ** max(0, math.floor(math.log2(block[a] - 1))), image[a])
    block = np.minimum(block, image)
    chunk = block.copy()
    while np.prod(chunk) * itemsize < 0.8 * L3_BYTES and not np.array_equal(chunk, image):
        growable = [a for a in np.argsort(chunk[1:] / block[1:]) if chunk[a + 1] < image[a + 1]]
        a = growable[0] + 1
        chunk[a] = min(chunk[a] + block[a], image[a])
        if np.mean(chunk[1:] / patch_arr) > 1.5:
            chunk[a] -= block[a]
            break
    chunk = np.minimum(chunk, image)
    return tuple(int(b) for b in block), tuple(int(c) for c in chunk)


def _blosc2_nnunet(path: Path, volume: np.ndarray, patch: int) -> None:
    import blosc2

    case = np.ascontiguousarray(volume[None])  # nnU-Net stores (channels, x, y, z)
    blocks, chunks = nnunet_blosc2_layout(case.shape, (patch,) * 3, case.itemsize)
    # nnU-Net passes codec and level only: blosc2's default filter (byte shuffle) applies
    blosc2.asarray(
        case,
        urlpath=str(path),
        mode="w",
        chunks=chunks,
        blocks=blocks,
        cparams={"codec": blosc2.Codec.ZSTD, "clevel": 8},
    )


def _blosc2_lz4hc(path: Path, volume: np.ndarray) -> None:
    import blosc2

    blosc2.asarray(
        np.ascontiguousarray(volume),
        urlpath=str(path),
        mode="w",
        chunks=tuple(min(64, n) for n in volume.shape),
        blocks=tuple(min(32, n) for n in volume.shape),
        cparams={
            "codec": blosc2.Codec.LZ4HC,
            "clevel": 8,
            "filters": [blosc2.Filter.SHUFFLE],
            "nthreads": 1,
        },
    )


def _zarr3(path: Path, volume: np.ndarray, inner: tuple[int, int, int]) -> None:
    import zarr
    import zarr.codecs

    shard = tuple(-(-n // c) * c for n, c in zip(volume.shape, inner, strict=True))
    arr = zarr.create_array(
        store=str(path),
        shape=volume.shape,
        dtype=volume.dtype,
        chunks=inner,
        shards=shard,
        compressors=zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
        overwrite=True,
    )
    arr[...] = volume


def _nifti(path: Path, volume: np.ndarray) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))


def _nii_dtype(volumes: list[Any]) -> str:
    """int16 when every voxel fits it (torch computes in int16, not in uint16), else stored."""
    stored = volumes[0].stored_dtype
    top = np.iinfo(np.int16).max
    if stored == np.uint16 and all(np.max(v.to_numpy(dtype=stored)) <= top for v in volumes):
        return "int16"
    return str(stored.name)


def zarr_installed() -> bool:
    """zarr-python writes the zarr3 copies (read by zarr-python and tensorstore)."""
    import importlib.util

    return importlib.util.find_spec("zarr") is not None


def _write_copies(
    c: Copies, volumes: list[Any], masks: list[Any], patch: int, names: set[str]
) -> None:
    """Write the copies ``names`` (folder names of :data:`FOLDERS`) of the cohort."""
    from radiobject import SliceOrientation, TileConfig, Volume

    with_zarr = zarr_installed()
    names = {n for n in names if n != "radiobject" and (with_zarr or not n.startswith("zarr"))}
    for name in names:
        shutil.rmtree(c.folder(name), ignore_errors=True)
        c.folder(name).mkdir(parents=True)
    for i, vol in enumerate(volumes):
        data = vol.to_numpy(dtype=vol.stored_dtype)
        if not np.array_equal(data, vol.to_numpy()):
            raise RuntimeError(f"volume {i}: the cohort is not whole numbers in {data.dtype}")
        if "npy" in names:
            np.save(c.path("npy", i), data)
        if "nii" in names:
            _nifti(c.path("nii", i), data.astype(c.nii_dtype))
        if "nii-gz" in names:
            _nifti(c.path("nii-gz", i), data)
        if "b2-nnunet" in names:
            _blosc2_nnunet(c.path("b2-nnunet", i), data, patch)
        if "b2-nnunet-f32" in names:
            _blosc2_nnunet(c.path("b2-nnunet-f32", i), data.astype(np.float32), patch)
        if "b2-lz4hc" in names:
            _blosc2_lz4hc(c.path("b2-lz4hc", i), data)
        if "zarr3" in names:
            _zarr3(c.path("zarr3", i), data, (32, 32, 32))
        if i < AXIAL_VOLUMES and "radiobject-axial" in names:
            Volume.from_numpy(
                str(c.path("radiobject-axial", i)),
                data,
                tile=TileConfig(orientation=SliceOrientation.AXIAL),
            )
        if i < AXIAL_VOLUMES and "zarr3-axial" in names:
            _zarr3(c.path("zarr3-axial", i), data, (data.shape[0], data.shape[1], 1))
    if "seg-nii" in names:
        for i, mask in enumerate(masks):
            _nifti(c.path("seg-nii", i), mask.to_numpy(dtype=mask.stored_dtype))


def prepare(
    workdir: str | Path,
    n: int,
    shape: Sequence[int],
    patch: int = 64,
    log: bool = True,
    folders: Sequence[str] | None = None,
) -> Copies:
    """Write (or reuse) the cohort of ``n`` volumes of ``shape`` and its copies.

    ``folders``: the copies needed (names of :data:`FOLDERS`; default every one). Copies
    missing from a cohort written before are added; the manifest lists what is there.
    """
    from radiobject import RadiObject, Volume
    from radiobject.data import make_sample_radiobject

    shape3 = tuple(int(s) for s in shape)
    if len(shape3) != 3 or min(shape3) < patch:
        raise SystemExit(f"the shape needs three sizes >= the patch ({patch}), got {shape3}")
    root = Path(workdir) / f"cohort{LAYOUT_VERSION}-{n}x{'x'.join(map(str, shape3))}-p{patch}"
    manifest = root / "manifest.json"
    info = json.loads(manifest.read_text()) if manifest.exists() else {}
    wanted = set(FOLDERS if folders is None else folders) | {"radiobject"}
    have = set(info.get("folders", FOLDERS)) if info else set()  # older manifests: every copy
    if info and not info.get("zarr") and zarr_installed():  # written before zarr was installed
        have = {h for h in have if not h.startswith("zarr")}
    if info and wanted <= have:
        return Copies(root, n, shape3, info["dtype"], tuple(info["obs_ids"]), info["nii_dtype"])  # type: ignore[arg-type]
    if log:
        todo = ", ".join(sorted(wanted - have))
        print(f"writing the cohort ({n} x {shape3}) copies ({todo}) in {root}", flush=True)
    t = time.perf_counter()
    if not info:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        make_sample_radiobject(
            str(root / "radiobject"), n_subjects=n, shape=shape3, modalities=(MODALITY,),
            seed=SEED, progress=False,
        )  # fmt: skip
    coll = RadiObject(str(root / "radiobject")).collection(MODALITY)
    obs_ids = tuple(coll.obs_ids)
    volumes = [Volume(coll.volume_uri(o)) for o in obs_ids]
    stored = volumes[0].stored_dtype.name
    c = Copies(root, n, shape3, stored, obs_ids, _nii_dtype(volumes))  # type: ignore[arg-type]
    seg = RadiObject(str(root / "radiobject")).collection("seg")
    by_subject = dict(zip(seg.obs_subject_ids, seg.obs_ids, strict=True))
    subjects = dict(zip(coll.obs_ids, coll.obs_subject_ids, strict=True))
    masks = [Volume(seg.volume_uri(by_subject[subjects[o]])) for o in obs_ids]
    _write_copies(c, volumes, masks, patch, wanted - have)
    info = {"dtype": c.dtype, "nii_dtype": c.nii_dtype, "obs_ids": list(obs_ids),
            "zarr": zarr_installed(), "folders": sorted(have | wanted)}  # fmt: skip
    manifest.write_text(json.dumps(info))
    if log:
        print(f"  written in {time.perf_counter() - t:.0f} s", flush=True)
    return c
