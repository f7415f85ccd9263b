"""A loader is a good guest: nothing process-wide changes, and a batch kept is never reused.

Global generators, torch's thread count, the environment, the local tier and TileDB's
statistics are compared before and after a loader epoch (0 and 2 workers), and watched by
another thread during one; every batch of an epoch is held and compared with a fresh run's.
"""

from __future__ import annotations

import os
import pickle
import random
import threading

import numpy as np
import pytest
import torch

from radiobject import ReadConfig, configure
from radiobject.data import make_sample_radiobject
from radiobject.ml import (
    SeededGlobally,
    VolumeCollectionDataset,
    create_training_dataloader,
    sample_generator,
)
from radiobject.read._local_tier import local_tier
from radiobject.read._stats import _stats_enabled

monai_transforms = pytest.importorskip("monai.transforms")
# imported before any snapshot: blosc2's import (the local tier's) writes two environment
# variables of its own (ME_DSL_JIT_LIBTCC_PATH; KMP_DUPLICATE_LIB_OK through numexpr), once
# per process. A dependency's import, not something radiobject does.
pytest.importorskip("blosc2")

PATCH = (8, 8, 8)


@pytest.fixture(scope="module")
def larger(tmp_path_factory: pytest.TempPathFactory):
    """Two volumes of 768 kB as stored: more than a 1 MB RAM cache (the automatic tier's case)."""
    root = tmp_path_factory.mktemp("guest")
    return make_sample_radiobject(
        str(root / "r"), n_subjects=2, shape=(64, 64, 96), modalities=("T1w",), progress=False
    )


def random_transform():
    """MONAI random transforms (their own generators) and a plain callable using the sample's."""

    def jitter(sample):
        image = torch.as_tensor(sample["image"])
        return {**sample, "image": image + torch.rand(image.shape, generator=sample_generator())}

    return monai_transforms.Compose(
        [
            monai_transforms.RandFlipd(keys="image", prob=0.5, spatial_axis=[0, 1, 2]),
            monai_transforms.RandGaussianNoised(keys="image", prob=1.0, std=0.1),
            jitter,
        ]
    )


def process_state() -> dict[str, object]:
    """What a library call must leave as it found it."""
    return {
        "random": random.getstate(),
        "np.random": pickle.dumps(np.random.get_state()),
        "torch rng": torch.get_rng_state().numpy().tobytes(),
        "torch threads": torch.get_num_threads(),
        "torch interop threads": torch.get_num_interop_threads(),
        "environ": dict(os.environ),
        "local tier": local_tier(),
        "tiledb stats on": _stats_enabled(),
    }


def loader(radi, transform, num_workers: int, seed: int = 3):
    return create_training_dataloader(
        radi.T1w,
        transform=transform,
        batch_size=2,
        patch_size=PATCH,
        patches_per_volume=4,
        num_workers=num_workers,
        seed=seed,
    )


# the transform runs in the workers (their own processes): the parent is checked without it
@pytest.mark.parametrize(
    ("transform", "num_workers"),
    [(None, 0), (None, 2), (random_transform, 0)],
    ids=["plain-0", "plain-2", "random-0"],
)
def test_a_loader_epoch_changes_nothing_process_wide(larger, num_workers, transform):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    with configure(read=ReadConfig(cache_mb=1)):  # the cohort exceeds it: the loader's tier
        before = process_state()
        made = loader(larger, transform and transform(), num_workers)
        assert made.dataset.auto_tier_mb > 0
        for _ in range(2):
            for _batch in made:
                pass
        after = process_state()
    assert after == before


def test_no_other_thread_sees_a_global_change_during_an_epoch(larger, monkeypatch):
    """A watcher samples the generators and the thread count while the loader runs.

    Each transform call waits, mid-call, until the watcher has taken a sample (a handshake,
    not a sleep): the watcher is sure to look while a sample is being transformed. Calls
    that set a global generator or the thread count are recorded as well.
    """
    calls: list[str] = []
    for owner, name in [
        (torch, "set_num_threads"),
        (torch, "set_num_interop_threads"),
        (torch, "manual_seed"),
        (torch, "set_rng_state"),
        (torch.random, "fork_rng"),
        (np.random, "seed"),
        (np.random, "set_state"),
        (random, "seed"),
        (random, "setstate"),
    ]:
        original = getattr(owner, name)

        def record(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, record)
    torch.default_generator.manual_seed(5)
    expected = process_state()
    calls.clear()
    keys = ("random", "np.random", "torch rng", "torch threads")
    seen: list[str] = []
    inside, sampled, done = threading.Event(), threading.Event(), threading.Event()
    looks = [0, 0]  # samples taken, of them inside a transform call

    def watch() -> None:
        while not done.is_set():
            was_inside = inside.is_set()  # before the sample: then it is taken mid-call
            now = process_state()
            seen.extend(k for k in keys if now[k] != expected[k])
            looks[0] += 1
            if was_inside:
                looks[1] += 1
                inside.clear()
                sampled.set()

    def checkpoint(sample):
        sampled.clear()
        inside.set()
        assert sampled.wait(timeout=60), "the watcher thread stopped"
        return sample

    transform = random_transform()
    transform.transforms = (*transform.transforms, checkpoint)
    made = loader(larger, transform, 0)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(2):
            for _batch in made:
                pass
    finally:
        done.set()
        sampled.set()
        watcher.join()
    assert looks[1] == 2 * 8  # the watcher looked inside every transform call
    assert seen == []
    assert calls == []


# a worker's batch comes through shared memory whatever the transform: checked without one
@pytest.mark.parametrize(
    ("transform", "num_workers"),
    [(None, 0), (None, 2), (random_transform, 0)],
    ids=["plain-0", "plain-2", "random-0"],
)
def test_batches_held_for_a_whole_epoch_are_never_overwritten(larger, num_workers, transform):
    def epochs(made):
        return [batch for _ in range(2) for batch in made]  # held, not copied

    held = epochs(loader(larger, transform and transform(), num_workers))
    fresh = epochs(loader(larger, transform and transform(), 0))
    assert len(held) == len(fresh) == 8
    for kept, again in zip(held, fresh, strict=True):
        assert torch.equal(kept["patch_start"], again["patch_start"])
        assert torch.equal(kept["image"], again["image"])
    pointers = [b["image"].untyped_storage().data_ptr() for b in held]
    assert len(set(pointers)) == len(pointers)  # each batch its own memory


def test_random_transforms_are_the_same_with_any_number_of_workers(larger):
    serial = [b["image"] for b in loader(larger, random_transform(), 0)]
    parallel = [b["image"] for b in loader(larger, random_transform(), 2)]
    other_seed = [b["image"] for b in loader(larger, random_transform(), 0, seed=4)]
    assert len(serial) == len(parallel) == 4
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))
    assert not all(
        a.shape == b.shape and torch.equal(a, b) for a, b in zip(serial, other_seed, strict=True)
    )


def test_a_transform_shared_by_threads_draws_each_samples_own_numbers(larger):
    """Two threads reseed and call one MONAI transform: each sample gets its key's numbers."""
    transform = random_transform()
    config = {"loading_mode": "patch", "patch_size": PATCH, "patches_per_volume": 4}
    from radiobject.ml import DatasetConfig

    ds = VolumeCollectionDataset(larger.T1w, DatasetConfig(**config), transform=transform)
    keys = [(e, i) for e in range(3) for i in range(len(ds))]
    expected = {k: ds[k]["image"] for k in keys}
    results: dict[tuple[int, int], torch.Tensor] = {}

    def run(part) -> None:
        for k in part:
            results[k] = ds[k]["image"]

    threads = [threading.Thread(target=run, args=(keys[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(results[k], expected[k]) for k in keys)


def test_seeded_globally_is_an_opt_in_that_restores_the_generators(larger):
    def global_noise(sample):  # what a TorchIO transform does: torch's global generator
        image = torch.as_tensor(sample["image"])
        return {**sample, "image": image + torch.rand(image.shape) + np.random.rand()}

    config = {"loading_mode": "patch", "patch_size": PATCH, "patches_per_volume": 2}
    from radiobject.ml import DatasetConfig

    ds = VolumeCollectionDataset(
        larger.T1w, DatasetConfig(**config), transform=SeededGlobally(global_noise)
    )
    torch.manual_seed(9)
    np.random.seed(9)
    before = process_state()
    first, again = ds[(0, 1)]["image"], ds[(0, 1)]["image"]
    assert torch.equal(first, again)
    assert not torch.equal(first, ds[(1, 1)]["image"])
    assert process_state() == before
    # without the wrapper the global generators are not seeded: the draws differ
    unseeded = VolumeCollectionDataset(larger.T1w, DatasetConfig(**config), transform=global_noise)
    assert not torch.equal(unseeded[(0, 1)]["image"], unseeded[(0, 1)]["image"])


def test_the_sample_generators_are_only_inside_a_transform():
    from radiobject import ConfigurationError
    from radiobject.ml import sample_rng

    with pytest.raises(ConfigurationError, match="no radiobject dataset is transforming"):
        sample_generator()
    with pytest.raises(ConfigurationError, match="inside a transform"):
        sample_rng()
    with pytest.raises(ConfigurationError, match="SeededGlobally"):
        SeededGlobally(lambda s: s)({"image": torch.zeros(1)})


_DEFAULT_CONTEXT_SCRIPT = """
import sys, tiledb
from radiobject import RadiObject
from radiobject.data import make_sample_radiobject
from radiobject.ml import create_segmentation_dataloader, create_training_dataloader

make_sample_radiobject(sys.argv[1], n_subjects=3)
radi = RadiObject(sys.argv[1])
radi.obs_meta
image, mask = radi.collection("T1w"), radi.collection("seg")
image.obs
for loader in (
    create_training_dataloader(image, batch_size=2, patch_size=(8, 8, 8)),
    create_segmentation_dataloader(image, mask, batch_size=2, patch_size=(8, 8, 8)),
):
    for _ in loader:
        pass
tiledb.default_ctx(tiledb.Config({"sm.tile_cache_size": "1000"}))  # raises if made already
print("left to the user")
"""


def test_tiledbs_default_context_is_left_to_the_user(tmp_path):
    """Ingest, obs reads and loader epochs never make TileDB-Py's default context.

    Every TileDB object radiobject makes is made in its own context: without one, TileDB-Py
    builds its default context in the calling thread (its own thread pools), and a user's
    later ``tiledb.default_ctx(config)`` raises "Global context already initialized".
    """
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", _DEFAULT_CONTEXT_SCRIPT, str(tmp_path / "radi")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "left to the user" in run.stdout
