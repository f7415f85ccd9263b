"""Sample plans and the loader's epoch-aware read-ahead: same batches, faults, no leaks."""

from __future__ import annotations

import gc
import shutil
import threading
from typing import Any

import numpy as np
import pytest
import torch

import radiobject
from radiobject import NotFoundError, RadiObjectError, ReadConfig, configure
from radiobject.ml import (
    DatasetConfig,
    SegmentationDataset,
    VolumeCollectionDataset,
    create_segmentation_dataloader,
    create_training_dataloader,
)
from radiobject.ml._read_ahead import ahead_state
from radiobject.read import Reader, Region, split_version
from radiobject.read._region import block_cache, forget_array

PATCH = (8, 8, 8)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every region read made through a plan's reads: (uri, bounds, whole_on_miss)."""
    calls: list[tuple[Any, ...]] = []
    real = Reader.get

    def spy(self: Reader, region: Region, out: Any = None) -> np.ndarray:
        calls.append((region.uri, tuple(region.bounds), region.whole_on_miss))
        return real(self, region, out)

    monkeypatch.setattr(Reader, "get", spy)
    return calls


@pytest.mark.parametrize("cache_mb", [512, 0])
def test_plan_is_what_getitem_reads(sample_radi, recorded, cache_mb):
    radiobject.configure(read=ReadConfig(cache_mb=cache_mb))
    config = DatasetConfig(loading_mode="patch", patch_size=PATCH, patches_per_volume=3, seed=5)
    datasets = [
        VolumeCollectionDataset([sample_radi.T1w, sample_radi.FLAIR], config),
        SegmentationDataset(
            sample_radi.T1w,
            sample_radi.seg,
            config,
            foreground_sampling=True,
            foreground_probability=0.7,
        ),
    ]
    for ds in datasets:
        for key in [(0, 0), (1, 0), (2, 7), (4, len(ds) - 1)]:
            plan = ds.plan(key)
            assert ds.plan(key).box == plan.box  # a pure function of the key
            recorded.clear()
            sample = ds[key]
            assert recorded == [(r.uri, r.bounds, r.whole_on_miss) for r in plan.reads]
            assert tuple(sample["patch_start"].tolist()) == plan.start
            assert tuple(sample["image"].shape[1:]) == tuple(hi - lo for lo, hi in plan.box)
        assert [r.name for r in ds.plan((0, 0)).reads][-1] == (
            "mask" if isinstance(ds, SegmentationDataset) else "image"
        )
    # different epochs move the patches
    ds = datasets[0]
    assert len({ds.plan((e, 0)).box for e in range(6)}) > 1


def test_read_plan_executes_a_plan(sample_radi):
    config = DatasetConfig(loading_mode="patch", patch_size=PATCH, patches_per_volume=2)
    ds = SegmentationDataset(sample_radi.T1w, sample_radi.seg, config)
    plan = ds.plan((3, 5))
    direct, planned = ds[(3, 5)], ds.read_plan(plan)
    assert torch.equal(direct["image"], planned["image"])
    assert torch.equal(direct["mask"], planned["mask"])


def _batches(loader: Any, epochs: int) -> list[dict[str, bytes]]:
    out = []
    for _ in range(epochs):
        for batch in loader:
            out.append(
                {
                    k: v.numpy().tobytes() if isinstance(v, torch.Tensor) else repr(v).encode()
                    for k, v in batch.items()
                }
            )
    return out


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("cache_mb", [512, 0])
def test_read_ahead_changes_no_batch(sample_radi, num_workers, cache_mb):
    def loader() -> Any:
        return create_segmentation_dataloader(
            [sample_radi.T1w, sample_radi.FLAIR],
            sample_radi.seg,
            batch_size=2,
            patch_size=PATCH,
            patches_per_volume=3,
            foreground_probability=0.5,
            num_workers=num_workers,
            seed=3,
        )

    with configure(read=ReadConfig(cache_mb=cache_mb, read_ahead=0)):
        block_cache().clear()
        off = _batches(loader(), epochs=2)
    with configure(read=ReadConfig(cache_mb=cache_mb, read_ahead=5, read_ahead_mb=1)):
        block_cache().clear()
        on_loader = loader()
        on = _batches(on_loader, epochs=2)
        if num_workers == 0:  # the reads were taken from the read-ahead, not read again
            state = ahead_state(on_loader.dataset)
            assert state is not None
            assert state.served > 0
    assert len(off) == len(on) == 2 * (6 * 3 // 2)
    assert off == on


def test_read_ahead_stays_within_its_budget(sample_radi, monkeypatch):
    """Never more than read_ahead_mb of voxels read ahead and not taken."""
    from radiobject.read import Prefetch

    peaks: list[int] = []
    real = Prefetch.advance

    def watch(self: Any, *args: Any) -> None:
        real(self, *args)
        peaks.append(self.nbytes)

    monkeypatch.setattr(Prefetch, "advance", watch)
    # a 8x8x8 float32 patch is 2 KiB and each sample reads 2 (image + mask): a budget of
    # 1 MiB holds them all, so lower it to a few samples through the itemsize seen
    monkeypatch.setattr(VolumeCollectionDataset, "read_ahead_itemsize", lambda self: 100)
    with configure(read=ReadConfig(read_ahead=64, read_ahead_mb=1)):
        loader = create_segmentation_dataloader(
            sample_radi.T1w,
            sample_radi.seg,
            batch_size=2,
            patch_size=PATCH,
            patches_per_volume=4,
        )
        for _ in loader:
            pass
    per_sample = 2 * int(np.prod(PATCH)) * 100
    assert peaks
    assert max(peaks) <= 1024 * 1024
    assert max(peaks) >= per_sample  # it did read ahead
    assert max(peaks) < 64 * per_sample  # and was held back by the budget


def test_failed_read_ahead_raises_at_its_sample(sample_radi, monkeypatch):
    """A read that fails raises at the sample needing it: its own error, the region noted."""
    config = DatasetConfig(loading_mode="patch", patch_size=PATCH, patches_per_volume=2)
    real = Reader.get
    with configure(read=ReadConfig(read_ahead=6)):
        loader = create_training_dataloader(
            sample_radi.T1w, batch_size=1, config=config, shuffle_window=None
        )
        ds = loader.dataset
        target = ds.refs[3].uris[0]

        def flaky(self: Reader, region: Region, out: Any = None) -> np.ndarray:
            if region.uri == target:
                raise RuntimeError("disk on fire")
            return real(self, region, out)

        monkeypatch.setattr(Reader, "get", flaky)
        seen: list[str] = []

        def drain() -> None:
            seen.extend(batch["obs_id"][0] for batch in loader)

        with pytest.raises(RuntimeError) as err:
            drain()
    assert str(err.value) == "disk on fire"
    assert ds.refs[3].obs_id not in seen  # every sample before it came through
    (note,) = err.value.__notes__
    assert target in note
    assert "region [(" in note
    del err  # its traceback holds the loader's iterator; dropped, its reads ahead end
    gc.collect()
    state = ahead_state(ds)
    assert state is not None
    assert len(state) == 0
    assert state.nbytes == 0


@pytest.mark.parametrize("num_workers", [0, 2])
def test_deleted_volume_raises_not_found_and_never_hangs(tmp_path, num_workers):
    from radiobject.data import make_sample_radiobject

    radi = make_sample_radiobject(
        str(tmp_path / "r"),
        n_subjects=4,
        shape=(16, 16, 12),
        modalities=("T1w",),
        progress=False,
    )
    with configure(read=ReadConfig(read_ahead=4)):
        loader = create_training_dataloader(
            radi.T1w,
            batch_size=1,
            patch_size=PATCH,
            patches_per_volume=2,
            num_workers=num_workers,
        )
    victim = split_version(loader.dataset.refs[-1].uris[0])[0]  # its folder
    shutil.rmtree(victim)
    forget_array(victim)

    def two_epochs() -> None:
        for _ in range(2):
            for _ in loader:
                pass

    with pytest.raises(NotFoundError) as err:
        two_epochs()
    assert victim.split("/")[-1] in str(err.value)
    assert isinstance(err.value, RadiObjectError)


def test_stopping_mid_epoch_cancels_and_leaks_nothing(sample_radi):
    config = DatasetConfig(loading_mode="patch", patch_size=PATCH, patches_per_volume=4)
    with configure(read=ReadConfig(read_ahead=16, cache_mb=0)):
        loader = create_training_dataloader(
            [sample_radi.T1w, sample_radi.FLAIR], batch_size=2, config=config
        )
        for _ in loader:  # warm up: the reader threads of whole batches exist from here on
            break
        gc.collect()
        baseline = threading.active_count()
        ds = loader.dataset
        for _ in range(3):
            it = iter(loader)
            next(it)
            next(it)
            state = ahead_state(ds)
            assert state is not None
            assert state.nbytes > 0  # reads were under way or held
            del it
            gc.collect()
            assert threading.active_count() == baseline
            assert len(state) == 0
            assert state.nbytes == 0
            assert state.running == 0


def test_read_ahead_foresees_the_rest_of_a_resumed_epoch(sample_radi):
    def loader(batch_size: int) -> Any:
        return create_training_dataloader(
            sample_radi.T1w, batch_size=batch_size, patch_size=PATCH, patches_per_volume=3, seed=3
        )

    first = loader(3)
    next(iter(first))
    state = first.state_dict()
    assert state["samples_yielded"] == 3  # not a multiple of the resumed loader's batch size
    resumed = loader(2)
    resumed.load_state_dict(state)
    resumed.resumable_sampler.start_pass()
    keys = list(resumed.sampler)  # the keys the resumed pass asks for, in order
    assert len(keys) == 6 * 3 - 3
    schedule = resumed.dataset.read_ahead_schedule
    assert schedule is not None
    # after the pass's first batch, the next batches of the pass (not of the whole epoch)
    assert schedule.upcoming(keys[0], depth=4) == keys[2:6]


def test_read_ahead_runs_on_into_the_next_epoch(sample_radi):
    """The last batches of epoch 0 read the first of epoch 1; the batches stay the same."""

    def loader() -> Any:
        return create_training_dataloader(
            sample_radi.T1w, batch_size=2, patch_size=PATCH, patches_per_volume=3, seed=4
        )

    with configure(read=ReadConfig(read_ahead=0)):
        off = _batches(loader(), epochs=2)
    with configure(read=ReadConfig(read_ahead=4)):
        on_loader = loader()
        on = _batches(on_loader, epochs=1)
        state = ahead_state(on_loader.dataset)
        assert state is not None
        ahead = [e.position for q in state.entries.values() for e in q]
        # epoch 0 is over: what is held is epoch 1's first batches, in its order
        assert {epoch for epoch, _ in ahead} == {1}
        assert sorted(p for _, p in ahead) == list(range(4))
        served = state.served
        on += _batches(on_loader, epochs=1)
        assert state.served >= served + 4  # epoch 1's first batches came from the read-ahead
    assert off == on


@pytest.mark.parametrize("num_workers", [0, 2])
def test_read_ahead_of_distributed_ranks_changes_no_batch(sample_radi, num_workers):
    """Two simulated ranks: each reads ahead its own shard, in its order, across epochs."""
    from radiobject.ml import create_distributed_dataloader

    def loaders() -> list[Any]:
        return [
            create_distributed_dataloader(
                sample_radi.T1w,
                rank=rank,
                world_size=2,
                batch_size=2,
                patch_size=PATCH,
                patches_per_volume=2,
                num_workers=num_workers,
                seed=2,
            )
            for rank in (0, 1)
        ]

    with configure(read=ReadConfig(read_ahead=0)):
        off = [_batches(loader, epochs=2) for loader in loaders()]
    with configure(read=ReadConfig(read_ahead=6)):
        on_loaders = loaders()
        on = [_batches(loader, epochs=2) for loader in on_loaders]
    assert off == on
    assert off[0] != off[1]  # the ranks read different shards
    for loader in on_loaders:
        sampler, schedule = loader.sampler, loader.dataset.read_ahead_schedule
        assert schedule is not None
        sampler.set_epoch(5)
        first, second = list(sampler), list(sampler)  # this rank's keys of epochs 5 and 6
        step = max(1, num_workers)  # worker 0 reads batches 0, step, 2 * step ... of each
        expected = [k for b in range(step, 3, step) for k in first[2 * b : 2 * b + 2]]
        expected += [k for b in range(0, 3, step) for k in second[2 * b : 2 * b + 2]]
        assert schedule.upcoming(first[0], depth=len(expected)) == expected


def test_worker_batches_travel_through_shared_memory(sample_radi):
    """Images made in workers arrive through the loader's shared batch slots, and only
    tensors of a few bytes (labels, patch_start) are pickled: nothing large is."""
    from radiobject.ml._batch_slots import SMALL_BYTES

    loader = create_training_dataloader(
        [sample_radi.T1w, sample_radi.FLAIR],
        labels="diagnosis",
        batch_size=2,
        patch_size=PATCH,
        num_workers=2,
    )
    batches = 0
    for batch in loader:  # let go as it goes: its slot is free again for a later batch
        assert {"image", "label", "patch_start"} <= set(batch)
        small = [v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "image"]
        assert all(t.nbytes <= SMALL_BYTES for t in small)
        batches += 1
    assert batches
    # every image was mapped from a slot (a shared-memory file), none pickled
    assert loader.worker_init_fn.shared.slots.handouts == batches


def test_volumes_on_object_storage_are_read_ahead_by_default(sample_radi, monkeypatch):
    """read_ahead=0 leaves local volumes alone; remote ones get remote_read_ahead."""

    def loader() -> Any:
        return create_training_dataloader(sample_radi.T1w, batch_size=2, patch_size=PATCH)

    local = loader()
    assert not local.dataset.remote
    assert local.dataset.read_ahead_depth() == (0, ReadConfig().max_workers)
    off = _batches(local, epochs=2)
    assert ahead_state(local.dataset) is None
    monkeypatch.setattr(VolumeCollectionDataset, "remote", property(lambda self: True))
    remote = loader()
    with configure(read=ReadConfig(remote_read_ahead=5, remote_threads=9)):
        assert remote.dataset.read_ahead_depth() == (5, 9)
        on = _batches(remote, epochs=2)
    state = ahead_state(remote.dataset)
    assert state is not None
    assert state.served > 0
    assert off == on
    with configure(read=ReadConfig(read_ahead=3, remote_read_ahead=0)):
        assert remote.dataset.read_ahead_depth() == (3, ReadConfig().remote_threads)
    with configure(read=ReadConfig(remote_read_ahead=0)):
        assert remote.dataset.read_ahead_depth()[0] == 0


def test_stopping_mid_epoch_frees_what_was_read_ahead(sample_radi):
    """Memory traced by Python (numpy's arrays included) is back to its baseline."""
    import tracemalloc
    from concurrent.futures import wait

    config = DatasetConfig(loading_mode="patch", patch_size=(24, 24, 24), patches_per_volume=6)
    with configure(read=ReadConfig(read_ahead=24, cache_mb=0)):
        loader = create_training_dataloader(
            [sample_radi.T1w, sample_radi.FLAIR], batch_size=2, config=config
        )
        tracemalloc.start()
        try:
            for cycle in range(3):  # cycle 0 warms up (handles, threads, TileDB-Py buffers)
                if cycle == 1:
                    gc.collect()
                    baseline = tracemalloc.get_traced_memory()[0]
                it = iter(loader)
                next(it)
                state = ahead_state(loader.dataset)
                assert state is not None
                with state.lock:
                    futures = [e.future for q in state.entries.values() for e in q]
                wait(futures)
                del futures  # only the read-ahead holds them now
                if cycle:
                    held = tracemalloc.get_traced_memory()[0] - baseline
                    # the samples read ahead, in memory as stored (uint16 since integer storage)
                    itemsize = sample_radi.T1w.iloc[0].stored_dtype.itemsize
                    assert held > 20 * 2 * 24**3 * itemsize
                del it
                gc.collect()
            after = tracemalloc.get_traced_memory()[0] - baseline
        finally:
            tracemalloc.stop()
    assert after < held / 10


def _join_feeder_threads() -> None:
    """Wait for multiprocessing's queue feeder threads, which end on their own once the
    loader has closed the workers' index queues."""
    for thread in threading.enumerate():
        if thread.name == "QueueFeederThread":
            thread.join(timeout=30)


def test_stopping_mid_epoch_with_workers_leaks_nothing(sample_radi):
    """Workers reading ahead end with the epoch's iterator; no thread is left behind."""
    import multiprocessing

    config = DatasetConfig(loading_mode="patch", patch_size=PATCH, patches_per_volume=4)
    with configure(read=ReadConfig(read_ahead=16)):
        loader = create_training_dataloader(
            sample_radi.T1w, batch_size=2, config=config, num_workers=2, persistent_workers=False
        )
        for _ in loader:  # warm up (a fork server, where one is used, runs from here on)
            break
        gc.collect()
        _join_feeder_threads()  # the warm-up's, so the baseline holds only lasting threads
        threads, children = set(threading.enumerate()), len(multiprocessing.active_children())
        for _ in range(2):
            it = iter(loader)
            next(it)
            next(it)
            assert len(multiprocessing.active_children()) == children + 2
            del it
            gc.collect()
            _join_feeder_threads()
            assert set(threading.enumerate()) == threads
            assert len(multiprocessing.active_children()) == children


def test_read_ahead_follows_a_resume_after_an_epoch_it_looked_into(sample_radi):
    """Orders seen before a resume are not reused for the resumed pass."""

    def loader(batch_size: int) -> Any:
        return create_training_dataloader(
            sample_radi.T1w, batch_size=batch_size, patch_size=PATCH, patches_per_volume=2, seed=6
        )

    with configure(read=ReadConfig(read_ahead=4)):
        ran = loader(2)
        for _ in ran:  # epoch 0 to its end: it looked into epoch 1's full order
            pass
        checkpoint = loader(3)
        it = iter(checkpoint)
        next(it)
        state = checkpoint.state_dict()  # epoch 0, 3 samples in: not on a batch edge of 2
        del it
        ran.load_state_dict(state)
        ran.resumable_sampler.start_pass()
        keys = list(ran.sampler)
        schedule = ran.dataset.read_ahead_schedule
        assert schedule is not None
        assert schedule.upcoming(keys[0], depth=4) == keys[2:6]


_EXIT_SCRIPT = """
import sys, time
import numpy as np
import tiledb
import radiobject.read._prefetch as prefetch
from radiobject import RadiObject, ReadConfig, configure
from radiobject.ml import create_training_dataloader

big = sys.argv[2]  # a larger array: each read below spends milliseconds inside TileDB
tiledb.from_numpy(big, np.arange(96**3, dtype=np.float32).reshape(96, 96, 96))
real = prefetch.Prefetch.__init__

def slow_reads(self, pool, read):
    def read_slowly(region):  # TileDB calls for half a second, the GIL released in each
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            with tiledb.open(big, ctx=region.ctx) as array:
                array[:]
        return read(region)
    real(self, pool, read_slowly)

prefetch.Prefetch.__init__ = slow_reads
if sys.argv[3] == "epoch":
    configure(read=ReadConfig(read_ahead=8, local_tier_mb=0))
else:  # one read-ahead thread: most of the reads ahead wait in its queue
    configure(read=ReadConfig(read_ahead=32, max_workers=1, local_tier_mb=0))
loader = create_training_dataloader(
    RadiObject(sys.argv[1]).T1w, batch_size=2, patch_size=(8, 8, 8), patches_per_volume=4
)
if sys.argv[3] == "epoch":
    for batch in loader:  # a whole epoch: the next epoch's first reads are read ahead
        pass
else:  # the exit handler runs while reads are queued, then the epoch is stopped mid-way
    it = iter(loader)
    next(it)
    prefetch._stop_pools()
    loader.dataset.stop_read_ahead()  # cancels: it must not wait for the dropped reads
print("exiting", flush=True)
"""


def test_a_script_exits_cleanly_while_reads_ahead_are_under_way(sample_radi, tmp_path):
    """Read-ahead threads are inside TileDB when the script ends: it still exits with 0.

    An epoch run to its end keeps the next epoch's reads ahead, so they are under way when
    the script ends (each made slow: half a second of TileDB calls).

    Before the pools stopped at exit, the interpreter ended those daemon threads through
    TileDB-Py's C++ frames and the process aborted (exit code 134).
    """
    for attempt in range(3):
        result = _run_exit_script(sample_radi.uri, tmp_path / f"big{attempt}", "epoch")
        assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
        assert result.stdout.strip() == "exiting"


def test_an_epoch_cancelled_after_the_exit_handler_does_not_wait_for_dropped_reads(
    sample_radi, tmp_path
):
    """Reads dropped at exit count as done: a later cancel (a collected iterator) returns."""
    result = _run_exit_script(sample_radi.uri, tmp_path / "big", "cancel")
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.strip() == "exiting"


def _run_exit_script(radi: str, big: Any, mode: str) -> Any:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, radi, str(big), mode],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_forked_child_exits_without_waiting_for_its_parents_read_ahead():
    """The exit handler leaves pools copied by fork alone: their threads and lock are the parent's.

    The parent holds a pool's lock at the fork (as a read-ahead thread does for a moment);
    the child's exit handler must not wait for it.
    """
    import os
    import time
    import warnings

    from radiobject.read import _prefetch

    pool = _prefetch.Prefetcher(lambda region: np.zeros(1)).pool
    with pool.lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TileDB-Py's warning about fork: nothing reads here
        pid = os.fork()
        if pid == 0:  # the child: what its interpreter exit runs, then out
            _prefetch._stop_pools()
            os._exit(0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's exit handler waited for the parent's pool lock")
    assert os.waitstatus_to_exitcode(status) == 0
