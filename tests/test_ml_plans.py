"""One reader: a sample reads exactly its plan, and its errors do not depend on speed settings.

What a read touches is recorded at the source (``radiobject.read.Reader.get``, the one
method every voxel read goes through: the process's reader asks its policy's chain of
sources there), so a dataset cannot read around its plan, ahead or not.
"""

from __future__ import annotations

import importlib
import shutil
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from radiobject import NotFoundError, ReadConfig, configure
from radiobject.data import make_sample_radiobject
from radiobject.ml import (
    DatasetConfig,
    GridPatchDataset,
    SegmentationDataset,
    VolumeCollectionDataset,
    create_inference_dataloader,
    create_segmentation_dataloader,
    create_training_dataloader,
)
from radiobject.read import Reader, Region, split_version
from radiobject.read._handles import forget_array

Read = tuple[str, tuple[tuple[int, int], ...]]


@pytest.fixture(scope="module")
def radi(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # uneven shapes: grid patches are clipped at the volume's edge (and padded: 8 < 10)
    return make_sample_radiobject(
        str(tmp_path_factory.mktemp("plans") / "r"),
        n_subjects=3,
        shape=(20, 18, 8),
        modalities=("T1w", "FLAIR"),
        progress=False,
    )


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[Read]:
    """Every region read from now on, from any thread: ``(uri, bounds)``."""
    real = Reader.get
    calls: list[Read] = []
    lock = threading.Lock()

    def spy(self: Reader, region: Region, out: Any = None) -> np.ndarray:
        with lock:
            calls.append((region.uri, tuple((int(a), int(b)) for a, b in region.bounds)))
        return real(self, region, out)

    monkeypatch.setattr(Reader, "get", spy)
    return calls


def planned(ds: Any, keys: list[Any]) -> Counter[Read]:
    return Counter((r.uri, r.bounds) for k in keys for r in ds.plan(k).reads)


def loader_keys(loader: Any) -> list[tuple[int, int]]:
    """The keys one pass of ``loader`` reads, in order (epoch 0; the last batch if kept)."""
    order = [(0, int(i)) for i in loader.resumable_sampler.order(0)]
    return order[: len(order) - len(order) % loader.batch_size] if loader.drop_last else order


LOADERS: dict[str, Callable[[Any], Any]] = {
    "patch": lambda radi: create_training_dataloader(
        [radi.T1w, radi.FLAIR], batch_size=2, patch_size=(8, 6, 4), patches_per_volume=3
    ),
    "full_volume": lambda radi: create_training_dataloader(
        radi.T1w, batch_size=2, config=DatasetConfig(loading_mode="full_volume")
    ),
    "segmentation": lambda radi: create_segmentation_dataloader(
        radi.T1w, radi.seg, batch_size=2, patch_size=(8, 6, 4), patches_per_volume=2
    ),
    "grid": lambda radi: create_inference_dataloader(
        radi.T1w, patch_size=(8, 8, 10), overlap=0.5, batch_size=3
    ),
    "slab": lambda radi: create_training_dataloader(
        [radi.T1w, radi.FLAIR], batch_size=2, slab=3, slab_patch=(8, 6), patches_per_volume=2
    ),
    "slab_segmentation": lambda radi: create_segmentation_dataloader(
        radi.T1w, radi.seg, batch_size=2, slab=5, axis="coronal", patches_per_volume=2
    ),
}


@pytest.mark.parametrize("read_ahead", [0, 5])
@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_an_epoch_reads_exactly_its_plans(radi, recorded, kind, read_ahead):
    with configure(read=ReadConfig(read_ahead=read_ahead, cache_mb=0)):
        loader = LOADERS[kind](radi)
        ds = loader.dataset
        assert ds.read_ahead_schedule is not None
        ds.read_ahead_schedule.across_epochs = False  # one pass: nothing read for the next
        keys = loader_keys(loader)
        expected = planned(ds, keys)
        assert not recorded  # planning reads nothing
        batches = list(loader)
    assert Counter(recorded) == expected
    assert sum(len(b["obs_id"]) for b in batches) == len(keys)


def test_grid_plans_the_patch_it_reads(radi, recorded):
    """The complaint: GridPatchDataset planned random boxes while it read its grid's."""
    ds = GridPatchDataset(radi.T1w, patch_size=(8, 8, 10), overlap=0.5)
    for index in (0, 1, 5, len(ds) - 1):
        plan = ds.plan(index)
        recorded.clear()
        sample = ds[index]
        assert recorded == [(r.uri, r.bounds) for r in plan.reads]
        corner = sample["patch_start"].tolist()
        clipped = [max(0, c) for c in corner]
        assert list(plan.start) == clipped
        assert all(hi - lo <= p for (lo, hi), p in zip(plan.box, (8, 8, 10), strict=True))


@pytest.mark.parametrize(
    "make",
    [
        lambda radi: VolumeCollectionDataset(
            radi.T1w,
            DatasetConfig(loading_mode="patch", patch_size=(4, 4, 4), patches_per_volume=2),
        ),
        lambda radi: VolumeCollectionDataset(radi.T1w, DatasetConfig(loading_mode="slice_2d")),
        lambda radi: SegmentationDataset(
            radi.T1w,
            radi.seg,
            DatasetConfig(loading_mode="patch", patch_size=(4, 4, 4), patches_per_volume=2),
            foreground_sampling=True,
        ),
        lambda radi: VolumeCollectionDataset(
            [radi.T1w, radi.FLAIR],
            DatasetConfig(loading_mode="slab", slab=4, slab_patch=6, patches_per_volume=2),
        ),
        lambda radi: SegmentationDataset(
            radi.T1w,
            radi.seg,
            DatasetConfig(loading_mode="slab", slab=3, slice_orientation="sagittal"),
            foreground_sampling=True,
        ),
    ],
    ids=["patch", "slice", "segmentation", "slab", "slab_segmentation"],
)
def test_each_item_reads_its_plan_in_order(radi, recorded, make):
    ds = make(radi)
    for key in [(0, 0), (3, 1), (7, len(ds) - 1)]:
        plan = ds.plan(key)
        recorded.clear()
        ds[key]
        assert recorded == [(r.uri, r.bounds) for r in plan.reads]


def test_torchio_subjects_read_their_plans(radi, recorded):
    tio = pytest.importorskip("torchio")
    from radiobject.ml import VolumeCollectionSubjectsDataset

    ds = VolumeCollectionSubjectsDataset([radi.T1w, radi.seg])
    for read_ahead in (0, 5):
        with configure(read=ReadConfig(read_ahead=read_ahead)):
            for index in range(len(ds)):
                plan = ds.plan(index)
                recorded.clear()
                subject = ds[index]
                subject.load()
                assert Counter(recorded) == Counter((r.uri, r.bounds) for r in plan.reads)
                assert isinstance(subject["seg"], tio.LabelMap)


def test_a_subclass_that_reads_itself_is_refused(radi):
    with pytest.raises(TypeError, match=r"read_sample.*build_sample"):

        class Old(VolumeCollectionDataset):
            def read_sample(self, index, box):
                return {}


# -- errors do not depend on speed settings -------------------------------------------------
def _error(run: Callable[[], Any]) -> tuple[type[BaseException], str, list[str]]:
    with pytest.raises(Exception) as err:
        run()
    return type(err.value), str(err.value), list(getattr(err.value, "__notes__", []))


def _drain(loader: Any) -> None:
    for _ in loader:
        pass


SPEEDS = [
    pytest.param(ra, tier, w, id=f"read_ahead={ra}-tier={tier}-workers={w}")
    for ra, tier, w in [(0, 0, 0), (4, 0, 0), (0, 64, 0), (4, 64, 0), (0, 0, 2), (4, 64, 2)]
]


@pytest.fixture
def fresh(tmp_path: Any) -> Any:
    radi = make_sample_radiobject(
        str(tmp_path / "r"), n_subjects=3, shape=(16, 16, 12), modalities=("T1w",), progress=False
    )
    # every loader of a test reads one version (a loader over the newest data reads as of
    # when it was built, and its errors name the arrays by that version's keys)
    return radi.as_of(radi.versions()[-1])


def _speed(read_ahead: int, tier_mb: int, tmp_path: Any) -> ReadConfig:
    return ReadConfig(
        read_ahead=read_ahead, local_tier_mb=tier_mb, local_tier_dir=str(tmp_path / "tier")
    )


def test_a_removed_volume_raises_the_same_error_at_every_speed(fresh, tmp_path):
    """Not found, same type and message: read-ahead, tier and workers change nothing."""
    seen = set()
    victim = None
    for ra, tier, workers in [p.values for p in SPEEDS]:
        with configure(read=_speed(ra, tier, tmp_path)):
            loader = create_training_dataloader(
                fresh.T1w,
                batch_size=2,
                patch_size=(8, 8, 8),
                patches_per_volume=2,
                num_workers=workers,
            )
            if victim is None:
                victim = split_version(loader.dataset.refs[-1].uris[0])[0]  # its folder
                shutil.rmtree(victim)
                forget_array(victim)
            kind, message, _ = _error(lambda loader=loader: _drain(loader))
        seen.add((kind, message))
    assert len(seen) == 1, seen
    ((kind, message),) = seen
    assert issubclass(kind, NotFoundError)
    assert victim.split("/")[-1] in message


def test_a_failing_read_raises_its_own_error_at_every_speed(fresh, tmp_path, monkeypatch):
    """A TypeError in the read stays a TypeError, with the same message and note."""
    real = Reader.get

    def broken(self: Reader, region: Region, out: Any = None) -> np.ndarray:
        if split_version(region.uri)[0].endswith("00001"):
            raise TypeError("decode() got an unexpected keyword argument 'nthreads'")
        return real(self, region, out)

    monkeypatch.setattr(Reader, "get", broken)
    seen = set()
    for ra, tier, _ in [p.values for p in SPEEDS if p.values[2] == 0]:
        with configure(read=_speed(ra, tier, tmp_path)):
            loader = create_training_dataloader(
                fresh.T1w, batch_size=2, patch_size=(8, 8, 8), patches_per_volume=2
            )
            kind, message, notes = _error(lambda loader=loader: _drain(loader))
        seen.add((kind, message, tuple(notes)))
    assert len(seen) == 1, seen
    ((kind, message, notes),) = seen
    assert kind is TypeError
    assert message == "decode() got an unexpected keyword argument 'nthreads'"
    assert len(notes) == 1
    assert "00001" in notes[0]


@pytest.mark.parametrize("transform", [False, True], ids=["read", "transform"])
def test_a_worker_error_arrives_whole(fresh, transform, monkeypatch):
    """With workers, the loop gets the worker's error itself, not DataLoader's retelling."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # workers import the transform
    helpers = importlib.import_module("_ml_helpers")
    cfg = DatasetConfig(loading_mode="patch", patch_size=(8, 8, 8), patches_per_volume=2)
    if not transform:  # a volume removed: its read fails in the worker
        victim = fresh.T1w.obs_columns("volume")["volume"].iloc[1]
        shutil.rmtree(f"{fresh.T1w.uri}/{victim}")
    errors = []
    for workers in (0, 2):
        loader = create_training_dataloader(
            fresh.T1w,
            batch_size=2,
            config=cfg,
            transform=helpers.FailOnSubject("sub-001") if transform else None,
            num_workers=workers,
        )
        errors.append(_error(lambda loader=loader: _drain(loader)))
    assert errors[0] == errors[1]
    assert "DataLoader worker" not in errors[1][1]
    if transform:
        assert errors[1][:2] == (LookupError, "no label for sub-001")


def test_a_plain_dataloader_with_workers_gets_the_error_raised(fresh):
    """Outside radiobject's loaders a worker raises as usual: nothing else could collate it."""
    import torch.utils.data

    victim = fresh.T1w.obs_columns("volume")["volume"].iloc[1]
    shutil.rmtree(f"{fresh.T1w.uri}/{victim}")
    cfg = DatasetConfig(loading_mode="patch", patch_size=(8, 8, 8), patches_per_volume=1)
    dataset = VolumeCollectionDataset(fresh.T1w, cfg)
    assert not dataset.failures_whole
    loader = torch.utils.data.DataLoader(  # forkserver: a fork after TileDB started warns
        dataset, batch_size=1, num_workers=2, multiprocessing_context="forkserver"
    )
    kind, message, _ = _error(lambda: _drain(loader))
    assert issubclass(kind, NotFoundError)  # DataLoader's retelling, of the read's own type
    assert "nothing is stored there" in message
    assert victim in message


class _UnplannableDataset(VolumeCollectionDataset):
    """Planning item 5 fails (say, its volume's metadata is gone)."""

    def patch_start(self, index, rng):
        if index == 5:
            raise NotFoundError("volume of item 5 is gone")
        return super().patch_start(index, rng)


@pytest.mark.parametrize("read_ahead", [0, 6])
def test_a_plan_that_fails_raises_at_its_sample_and_is_counted_ahead(radi, read_ahead, caplog):
    from radiobject.ml import EpochSampler
    from radiobject.ml._loaders import build_loader
    from radiobject.ml._read_ahead import ahead_state

    cfg = DatasetConfig(loading_mode="patch", patch_size=(4, 4, 4), patches_per_volume=3)
    with configure(read=ReadConfig(read_ahead=read_ahead)):
        ds = _UnplannableDataset(radi.T1w, cfg)
        loader = build_loader(ds, batch_size=2, sampler=EpochSampler(ds, shuffle=False))
        seen: list[str] = []

        def drain() -> None:
            for batch in loader:
                seen.extend(batch["obs_id"])

        with pytest.raises(NotFoundError) as err:
            drain()
    assert str(err.value) == "volume of item 5 is gone"
    assert len(seen) == 4  # batches 0 and 1 came through; batch 2 holds item 5
    state = ahead_state(ds)
    if read_ahead:
        assert state is not None
        assert state.plan_errors >= 1
        warned = [r for r in caplog.records if "plan failed" in r.getMessage()]
        assert len(warned) == 1  # logged once, however often it is met
    else:
        assert state is None
