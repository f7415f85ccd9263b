"""The bundled synthetic sample cohort: brain-like MR volumes, tumour masks, subject table."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import pandas as pd
import tiledb

from radiobject._errors import ConfigurationError, IncompleteError
from radiobject.data._grids import grid_for, regrid
from radiobject.data._phantom import MODALITIES, SubjectPhantom, make_subject

if TYPE_CHECKING:
    from radiobject.storage._radiobject import RadiObject

__all__ = ["BRATS_SHAPE", "make_sample_radiobject", "sample_obs_meta", "write_sample_niftis"]

BRATS_SHAPE = (240, 240, 155)
_SPACING = (1.0, 1.0, 1.0)
_SITES = ("site-A", "site-B", "site-C")


def _check(
    n_subjects: int, shape: Sequence[int], modalities: Sequence[str]
) -> tuple[int, int, int]:
    """The checked arguments' shape as three ints."""
    if n_subjects < 1:
        raise ConfigurationError(f"n_subjects must be >= 1, got {n_subjects}")
    if len(shape) != 3 or min(shape) < 8:
        raise ConfigurationError(f"shape must be 3 sizes >= 8, got {tuple(shape)}")
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ConfigurationError(f"unknown modalities {unknown}; choose from {list(MODALITIES)}")
    x, y, z = (int(s) for s in shape)
    return x, y, z


def sample_obs_meta(n_subjects: int, seed: int = 0) -> pd.DataFrame:
    """The subject table of the sample cohort: diagnosis, age, sex, site, tumour grade.

    About two thirds of subjects have a tumour (``diagnosis == "tumour"``), the rest are
    ``"healthy"``; the same seed gives the same table.

    >>> sample_obs_meta(3, seed=1).columns.tolist()
    ['obs_subject_id', 'diagnosis', 'age', 'sex', 'site', 'grade']
    """
    rng = np.random.default_rng([seed, 1])
    has_tumour = rng.random(n_subjects) < 0.66
    if n_subjects >= 2:  # both classes always present, for classification examples
        has_tumour[0], has_tumour[1] = True, False
    return pd.DataFrame(
        {
            "obs_subject_id": [f"sub-{i:03d}" for i in range(n_subjects)],
            "diagnosis": np.where(has_tumour, "tumour", "healthy").astype(object),
            "age": rng.integers(22, 85, n_subjects).astype(np.int64),
            "sex": rng.choice(np.array(["F", "M"], dtype=object), n_subjects),
            "site": rng.choice(np.array(_SITES, dtype=object), n_subjects),
            "grade": np.where(has_tumour, rng.integers(1, 5, n_subjects), 0).astype(np.int64),
        }
    )


def _affine(shape: Sequence[int]) -> np.ndarray:
    affine = np.diag([*_SPACING, 1.0])
    affine[:3, 3] = [-(n - 1) * s / 2 for n, s in zip(shape, _SPACING, strict=True)]
    return affine


class _Grids:
    """Where each collection of the sample cohort lives: the phantom's grid, or its own.

    ``grids`` maps a modality (not the first: it is the reference) or ``"seg"`` to a voxel
    size in mm; that collection is resampled (:func:`regrid`) onto the grid of that voxel
    size over the same field of view. The others keep the phantom's grid and its affine.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        modalities: Sequence[str],
        grids: Mapping[str, Sequence[float]] | None,
    ) -> None:
        self.affine = _affine(shape)
        self.reference = modalities[0] if modalities else None
        self.own: dict[str, tuple[tuple[int, int, int], np.ndarray]] = {}
        for name, spacing in (grids or {}).items():
            if name not in (*modalities, "seg"):
                raise ConfigurationError(
                    f"grids names {name!r}, which is not a collection of this cohort; "
                    f"name one of {[*modalities[1:], 'seg']}"
                )
            if name == self.reference:
                raise ConfigurationError(
                    f"grids names {name!r}, the reference collection (the first modality): "
                    "it keeps the phantom's grid; put another modality first or regrid another"
                )
            self.own[name] = grid_for(shape, self.affine, tuple(float(s) for s in spacing))

    def ingest_options(self) -> dict[str, Any]:
        """``reference=`` for the ingest when a collection has a grid of its own."""
        return {"reference": self.reference} if self.own else {}

    def __call__(self, name: str, voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The voxels of collection ``name`` on its grid, and that grid's affine."""
        if name not in self.own:
            return voxels, self.affine
        shape, affine = self.own[name]
        if name == "seg":
            return regrid(voxels, self.affine, affine, shape, mask=True), affine
        out = regrid(voxels, self.affine, affine, shape)
        return np.rint(out, out=out), affine  # whole numbers, as scanners store


def make_sample_radiobject(
    uri: str | Path,
    *,
    n_subjects: int = 8,
    shape: Sequence[int] = (64, 64, 48),
    modalities: Sequence[str] = ("T1w", "FLAIR"),
    seed: int = 0,
    grids: Mapping[str, Sequence[float]] | None = None,
    progress: bool = True,
    ctx: tiledb.Ctx | None = None,
) -> RadiObject:
    """Write the synthetic sample cohort as a RadiObject at ``uri``.

    Every subject has one volume per modality (all sharing one anatomy) and a tumour
    segmentation in the ``seg`` collection (BraTS labels 1, 2, 3; empty for healthy
    subjects); ``obs_meta`` holds diagnosis, age, sex, site and grade.

    Args:
        uri: target (must not exist).
        n_subjects: number of subjects.
        shape: volume grid; ``BRATS_SHAPE`` (240, 240, 155) for benchmarks.
        modalities: names from ``radiobject.data.MODALITIES``.
        seed: the cohort is a function of the seed.
        grids: collections on a grid of their own: name (a modality other than the first,
            or ``"seg"``) -> voxel size in mm, e.g. ``{"FLAIR": (2.0, 2.0, 3.0)}``. That
            collection shows the same anatomy, resampled (partial-volume means; nearest
            labels for ``seg``) onto that voxel size over the same field of view; the
            cohort is ingested with ``reference=modalities[0]``.
        progress: show progress bars.
        ctx: TileDB context.

    >>> import tempfile, os
    >>> radi = make_sample_radiobject(os.path.join(tempfile.mkdtemp(), "s"), n_subjects=2,
    ...                               shape=(16, 16, 12), progress=False)
    >>> radi.collection_names, radi.obs_subject_ids
    (['FLAIR', 'T1w', 'seg'], ['sub-000', 'sub-001'])
    >>> radi.obs_meta.columns.tolist()
    ['obs_subject_id', 'diagnosis', 'age', 'sex', 'site', 'grade']
    """
    from radiobject.ingest._sources import Item
    from radiobject.ingest._writer import write_radiobject
    from radiobject.storage._radiobject import RadiObject

    shape = _check(n_subjects, shape, modalities)
    obs_meta = sample_obs_meta(n_subjects, seed)
    on_grid = _Grids(shape, modalities, grids)
    cache: dict[int, SubjectPhantom] = {}
    uses: dict[int, int] = {}
    lock = threading.Lock()

    def take(i: int, key: str | None) -> np.ndarray:
        # each subject is made once and dropped when all its collections have been written
        with lock:
            if i not in cache:
                rng = np.random.default_rng([seed, i])
                tumour = obs_meta["diagnosis"].iloc[i] == "tumour"
                cache[i] = make_subject(shape, rng, modalities=modalities, tumour=tumour)
            phantom = cache[i]
            uses[i] = uses.get(i, 0) + 1
            if uses[i] == len(modalities) + 1:
                del cache[i]
        return phantom.mask if key is None else phantom.images[key]

    def item(i: int, key: str | None) -> Item:
        def load() -> tuple[np.ndarray, np.ndarray]:
            return on_grid(key or "seg", take(i, key))

        return Item(obs_meta["obs_subject_id"].iloc[i], load, source=f"synthetic:seed={seed}")

    sources = {m: [item(i, m) for i in range(n_subjects)] for m in modalities}
    sources["seg"] = [item(i, None) for i in range(n_subjects)]
    if not on_grid.own:
        return RadiObject._from_items(
            str(uri), sources, obs_meta=obs_meta, progress=progress, ctx=ctx, masks=["seg"]
        )
    target = write_radiobject(
        str(uri),
        sources,
        obs_meta=obs_meta,
        masks={name: name == "seg" for name in sources},
        ctx=ctx,
        progress=progress,
        **on_grid.ingest_options(),
    )
    return RadiObject._opened(target, ctx)


def write_sample_niftis(
    directory: str | Path,
    *,
    n_subjects: int = 4,
    shape: Sequence[int] = (64, 64, 48),
    modalities: Sequence[str] = ("T1w", "FLAIR"),
    seed: int = 0,
    grids: Mapping[str, Sequence[float]] | None = None,
) -> tuple[dict[str, str], pd.DataFrame]:
    """Write the sample cohort as NIfTI files: ``<dir>/<modality>/sub-000_<modality>.nii.gz``.

    Returns the ``images`` mapping and the ``obs_meta`` table to pass to
    :meth:`RadiObject.from_images`. ``grids`` puts collections on grids of their own, as in
    :func:`make_sample_radiobject` (then ingest with ``reference=modalities[0]``).

    A 2 x 2 x 3 mm FLAIR beside the 1 mm T1w, both covering the same head:

    >>> import tempfile, nibabel as nib
    >>> images, _ = write_sample_niftis(tempfile.mkdtemp(), n_subjects=1, shape=(16, 16, 12),
    ...                                 grids={"FLAIR": (2.0, 2.0, 3.0)})
    >>> t1 = nib.load(images["T1w"].replace("*", "sub-000_T1w"))
    >>> flair = nib.load(images["FLAIR"].replace("*", "sub-000_FLAIR"))
    >>> t1.shape, flair.shape, flair.header.get_zooms()
    ((16, 16, 12), (8, 8, 4), (2.0, 2.0, 3.0))
    """
    import nibabel as nib

    shape = _check(n_subjects, shape, modalities)
    directory = Path(directory)
    obs_meta = sample_obs_meta(n_subjects, seed)
    on_grid = _Grids(shape, modalities, grids)
    images = {}
    for name in (*modalities, "seg"):
        (directory / name).mkdir(parents=True, exist_ok=True)
        images[name] = str(directory / name / "*.nii.gz")
    for i, sid in enumerate(obs_meta["obs_subject_id"]):
        rng = np.random.default_rng([seed, i])
        tumour = obs_meta["diagnosis"].iloc[i] == "tumour"
        phantom = make_subject(shape, rng, modalities=modalities, tumour=tumour)
        for name in (*modalities, "seg"):
            voxels = phantom.mask if name == "seg" else phantom.images[name]
            img = nib.Nifti1Image(*on_grid(name, voxels))
            nib.save(img, str(directory / name / f"{sid}_{name}.nii.gz"))
    return images, obs_meta


class _Scale(TypedDict):
    n_subjects: int
    shape: tuple[int, int, int]


SCALES: dict[str, _Scale] = {
    "small": {"n_subjects": 8, "shape": (64, 64, 48)},
    "medium": {"n_subjects": 12, "shape": (128, 128, 96)},
    "full": {"n_subjects": 12, "shape": BRATS_SHAPE},
}


def load_sample_radiobject(
    scale: str | None = None, path: str | Path | None = None, *, progress: bool = True
) -> RadiObject:
    """The tutorials' sample cohort: opened if already made, else made once and kept.

    Args:
        scale: ``"small"`` (8 subjects, 64x64x48; the default), ``"medium"`` (12, 128x128x96)
            or ``"full"`` (12, 240x240x155 like BraTS); default from the environment
            variable ``RADIOBJECT_SCALE``.
        path: where it lives (default ``$RADIOBJECT_SAMPLE_DIR`` or
            ``~/.cache/radiobject/sample-<scale>``).
        progress: show progress bars while making it.

    The cohort has T1w, FLAIR and CT collections, a ``seg`` mask collection and ``obs_meta``.
    A cached cohort whose making did not finish (stopped half-way, or made before radiobject
    marked finished writes) is made again.
    """
    import os

    from radiobject.storage._radiobject import RadiObject

    scale = scale or os.environ.get("RADIOBJECT_SCALE", "small")
    if scale not in SCALES:
        raise ConfigurationError(f"scale must be one of {sorted(SCALES)}, got {scale!r}")
    if path is None:
        root = os.environ.get("RADIOBJECT_SAMPLE_DIR") or str(Path.home() / ".cache" / "radiobject")
        path = Path(root) / f"sample-{scale}"
    path = Path(path)
    if path.exists():
        try:
            return RadiObject(str(path))
        except IncompleteError:
            shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_sample_radiobject(
        str(path), modalities=("T1w", "FLAIR", "CT"), progress=progress, **SCALES[scale]
    )
