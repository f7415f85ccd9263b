"""Exact mid-epoch resume: kill a training loop, resume it elsewhere, get the same samples.

An uninterrupted run is the reference. A run killed with SIGKILL right after its checkpoint
at step k, then resumed in a new process (with another ``num_workers``, or on two gloo ranks
instead of one), must give from step k+1 on exactly the reference's batches: the same
volumes, patch corners and augmented bytes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed
import torch.multiprocessing

from radiobject._errors import ConfigurationError
from radiobject.data import make_sample_radiobject
from radiobject.ml import (
    DatasetConfig,
    RadiObjectLoader,
    VolumeCollectionDataset,
    create_inference_dataloader,
    create_validation_dataloader,
)

pytest.importorskip("monai.transforms")

TESTS = Path(__file__).parent
if str(TESTS) not in sys.path:  # for _resume_helpers, here and in spawned ranks
    sys.path.insert(0, str(TESTS))
import _resume_helpers as helpers  # noqa: E402

EPOCHS = 2
STEPS_PER_EPOCH = 4  # 4 volumes x 2 patches, batches of 2


@pytest.fixture(scope="module")
def radi_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = str(tmp_path_factory.mktemp("resume") / "radi")
    make_sample_radiobject(uri, n_subjects=4, shape=(16, 16, 12), progress=False)
    return uri


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_in_process(radi_uri: str, tmp_path: Path, kind: str, **loader_args: Any) -> list[dict]:
    """An uninterrupted run in this process, without workers."""
    log = tmp_path / f"reference-{kind}.jsonl"
    helpers.train(helpers.make_loader(radi_uri, kind, **loader_args), epochs=EPOCHS, log=log)
    return read_log(log)


@pytest.fixture(scope="module")
def reference(radi_uri: str, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """The uninterrupted run of the training loader, with MONAI's random transforms."""
    return run_in_process(radi_uri, tmp_path_factory.mktemp("reference"), "training")


def run_subprocess(tmp_path: Path, name: str, **args: Any) -> int:
    """A training run in a new Python process (:func:`_resume_helpers.main`), without MONAI.

    Returns its exit code: ``-SIGKILL`` when it killed itself.
    """
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); "
        "import _resume_helpers; _resume_helpers.main(sys.argv[1:])"
    )
    # output to a file, not a pipe: workers orphaned by the kill would hold a pipe open
    with open(tmp_path / f"{name}.out", "w") as out:
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps(args)],
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=240,
            check=False,
        )
    return done.returncode


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("workers_before", "workers_after", "stop_after"),
    [(0, 2, 3), (2, 0, 6)],
    ids=["0-to-2-workers-mid-epoch-0", "2-to-0-workers-mid-epoch-1"],
)
def test_killed_run_resumes_with_other_workers_exactly(
    radi_uri, tmp_path, workers_before, workers_after, stop_after
):
    """Killed in its own process, resumed in this one with another number of workers."""
    checkpoint = tmp_path / "checkpoint.json"
    killed = run_subprocess(
        tmp_path,
        "killed",
        radi=radi_uri,
        kind="training",
        epochs=EPOCHS,
        num_workers=workers_before,
        log=str(tmp_path / "before.jsonl"),
        checkpoint=str(checkpoint),
        stop_after=stop_after,
        kill=True,
    )
    assert killed == -signal.SIGKILL, (tmp_path / "killed.out").read_text()
    state = json.loads(checkpoint.read_text())
    assert state["step"] == stop_after
    assert state["loader"]["epoch"] == (stop_after - 1) // STEPS_PER_EPOCH
    assert state["loader"]["samples_yielded"] == 2 * ((stop_after - 1) % STEPS_PER_EPOCH + 1)
    assert state["loader"]["num_workers"] == workers_before

    after = tmp_path / "after.jsonl"
    loader = helpers.make_loader(radi_uri, "training", num_workers=workers_after, use_monai=False)
    helpers.train(loader, epochs=EPOCHS, log=after, resume=state)
    reference = run_in_process(radi_uri, tmp_path, "training", use_monai=False)
    assert len(reference) == EPOCHS * STEPS_PER_EPOCH
    assert read_log(tmp_path / "before.jsonl") == reference[:stop_after]
    assert read_log(after) == reference[stop_after:]


def test_augmentation_is_a_function_of_the_key(radi_uri):
    """Same key, same augmented bytes; the caller's random generators are left alone."""
    from radiobject import RadiObject

    ds = VolumeCollectionDataset(RadiObject(radi_uri).T1w, transform=helpers.make_transform())
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    first, again = ds[(0, 1)]["image"], ds[(0, 1)]["image"]
    other_epoch = ds[(1, 1)]["image"]  # whole volumes: only the augmentation differs
    assert torch.equal(first, again)
    assert not torch.equal(first, other_epoch)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    fresh = VolumeCollectionDataset(RadiObject(radi_uri).T1w, transform=helpers.make_transform())
    assert torch.equal(fresh.__getitems__([(0, 1)])[0]["image"], first)


def factory_loader(radi_uri: str, kind: str) -> RadiObjectLoader:
    from radiobject import RadiObject

    radi = RadiObject(radi_uri)
    if kind == "validation":
        return create_validation_dataloader(
            radi.T1w, batch_size=3, patch_size=(8, 8, 8), patches_per_volume=2
        )
    if kind == "inference":
        return create_inference_dataloader(radi.T1w, batch_size=1)
    return helpers.make_loader(radi_uri, kind, world_size=2 if kind == "distributed" else 1)


@pytest.mark.parametrize(
    ("kind", "stop_after"),
    [("training", 5), ("segmentation", 2), ("validation", 3), ("inference", 6), ("distributed", 1)],
)
def test_every_loader_resumes_in_process(radi_uri, tmp_path, kind, stop_after):
    reference = tmp_path / "reference.jsonl"
    helpers.train(factory_loader(radi_uri, kind), epochs=EPOCHS, log=reference)
    reference_log = read_log(reference)
    checkpoint = tmp_path / "checkpoint.json"
    before, after = tmp_path / "before.jsonl", tmp_path / "after.jsonl"
    loader = factory_loader(radi_uri, kind)
    helpers.train(loader, epochs=EPOCHS, log=before, checkpoint=checkpoint, stop_after=stop_after)
    state = json.loads(checkpoint.read_text())
    helpers.train(factory_loader(radi_uri, kind), epochs=EPOCHS, log=after, resume=state)
    assert read_log(before) + read_log(after) == reference_log
    assert len(read_log(before)) == stop_after


def test_state_is_small_json_and_counts_samples(radi_uri):
    loader = helpers.make_loader(radi_uri, "training")
    assert loader.state_dict()["samples_yielded"] == 0
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    assert json.loads(json.dumps(state)) == state
    # the cohort version read (tests/test_versions.py resumes across versions)
    assert state.pop("data_version") == loader.dataset.data_version
    assert len(state.pop("volumes_digest")) == 16
    assert state.pop("foreground_digest") is None  # a training loader samples no foreground
    assert state == {
        "version": 1,
        "seed": helpers.SEED,
        "epoch": 0,
        "samples_yielded": 6,
        "epoch_length": 8,
        "order": "window-shuffled:4",
        "world_size": 1,
        "rank": 0,
        "batch_size": 2,
        "num_workers": 0,
    }


def test_epoch_boundaries(radi_uri, reference):
    """After the last batch the state names the epoch, once it is exhausted the next one."""
    loader = helpers.make_loader(radi_uri, "training")
    it = iter(loader)
    for _ in range(STEPS_PER_EPOCH):
        next(it)
    at_end = loader.state_dict()
    assert (at_end["epoch"], at_end["samples_yielded"]) == (0, 8)
    with pytest.raises(StopIteration):
        next(it)
    assert (loader.state_dict()["epoch"], loader.state_dict()["samples_yielded"]) == (1, 0)

    resumed = helpers.make_loader(radi_uri, "training")
    resumed.load_state_dict(at_end)
    assert len(resumed) == 0
    assert list(resumed) == []  # nothing left of epoch 0
    epoch_1 = [helpers.batch_record(b) for b in resumed]
    assert epoch_1 == [{k: r[k] for k in epoch_1[0]} for r in reference[STEPS_PER_EPOCH:]]


def test_set_epoch_keeps_a_resume_of_that_epoch_only(radi_uri, reference):
    state = {**helpers.make_loader(radi_uri, "training").state_dict(), "epoch": 1}
    state["samples_yielded"] = 4
    keys = [r["keys"] for r in reference]

    loader = helpers.make_loader(radi_uri, "training")
    loader.load_state_dict(state)
    loader.set_epoch(1)
    assert len(loader) == 2
    it = iter(loader)
    assert len(it) == 2
    assert [helpers.batch_record(b)["keys"] for b in it] == keys[6:8]

    loader.load_state_dict(state)
    loader.set_epoch(0)  # another epoch: the resume point no longer applies
    assert len(loader) == STEPS_PER_EPOCH
    assert [helpers.batch_record(b)["keys"] for b in loader] == keys[:4]


def test_another_batch_size_goes_on_with_the_next_sample(radi_uri, reference):
    loader = helpers.make_loader(radi_uri, "training", batch_size=2)
    next(iter(loader))
    bigger = helpers.make_loader(radi_uri, "training", batch_size=3)
    bigger.load_state_dict(loader.state_dict())
    samples = [k for b in bigger for k in helpers.batch_record(b)["keys"]]
    # 6 samples are left of epoch 0; drop_last keeps the 2 full batches of 3
    assert samples == [k for r in reference[1:STEPS_PER_EPOCH] for k in r["keys"]]


def test_two_ranks_resume_on_one(radi_uri):
    """Two ranks stopped after one step each; one rank takes over the rest of the epoch."""
    ranks = [helpers.make_loader(radi_uri, "distributed", rank=r, world_size=2) for r in (0, 1)]
    iterators = [iter(loader) for loader in ranks]
    seen = [k for it in iterators for k in helpers.batch_record(next(it))["keys"]]
    state = ranks[0].state_dict()
    assert (state["samples_yielded"], state["world_size"]) == (4, 2)
    assert ranks[1].state_dict()["samples_yielded"] == 4

    single = helpers.make_loader(radi_uri, "distributed", rank=0, world_size=1)
    order = single.resumable_sampler.order(0)
    single.load_state_dict(state)
    rest = [k for b in single for k in helpers.batch_record(b)["keys"]]
    full = helpers.make_loader(radi_uri, "distributed", rank=0, world_size=1)
    everything = [k for b in full for k in helpers.batch_record(b)["keys"]]
    assert sorted(map(str, seen + rest)) == sorted(map(str, everything))
    assert len(order) == len(seen) + len(rest) == 8


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")
def test_one_rank_killed_resumes_on_two_gloo_ranks(radi_uri, tmp_path):
    checkpoint = tmp_path / "checkpoint.json"
    killed = run_subprocess(
        tmp_path,
        "killed",
        radi=radi_uri,
        kind="distributed",
        world_size=1,
        epochs=EPOCHS,
        log=str(tmp_path / "before.jsonl"),
        checkpoint=str(checkpoint),
        stop_after=1,
        kill=True,
        set_epoch=True,
    )
    assert killed == -signal.SIGKILL, (tmp_path / "killed.out").read_text()
    assert json.loads(checkpoint.read_text())["loader"]["samples_yielded"] == 2

    torch.multiprocessing.spawn(
        helpers.distributed_resume,
        args=(2, f"file://{tmp_path / 'rendezvous'}", radi_uri, str(checkpoint), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    before = read_log(tmp_path / "before.jsonl")
    ranks = [read_log(tmp_path / f"rank{r}.jsonl") for r in (0, 1)]

    # one rank, uninterrupted: epoch 0's samples in order; two ranks: epoch 1's batches
    one = run_in_process(radi_uri, tmp_path, "distributed", use_monai=False)
    one_rank_epoch_0 = [
        (key, sha)
        for r in one
        if r["epoch"] == 0
        for key, sha in zip(r["keys"], r["sample_sha"], strict=True)
    ]
    assert before == one[:1]
    for rank, log in enumerate(ranks):
        epoch_0 = [
            (key, sha)
            for r in log
            if r["epoch"] == 0
            for key, sha in zip(r["keys"], r["sample_sha"], strict=True)
        ]
        # the 6 samples left of epoch 0, dealt out as 2 ranks deal them: none lost or repeated
        assert epoch_0 == one_rank_epoch_0[2 + rank :: 2]
        two_ranks = helpers.make_loader(
            radi_uri, "distributed", rank=rank, world_size=2, use_monai=False
        )
        two_ranks.set_epoch(1)
        expected = [helpers.batch_record(b) for b in two_ranks]
        assert [{k: r[k] for k in expected[0]} for r in log if r["epoch"] == 1] == expected


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": 12}, "seed=12"),
        ({"epoch_length": 9}, "epoch_length=9"),
        ({"order": "shuffled"}, "order='shuffled'"),
        ({"version": 2}, "version 2"),
        ({"samples_yielded": 9}, "samples_yielded <= epoch_length=8"),
        ({"epoch": -1}, "must be >= 0"),
        ({"epoch": "1"}, "'epoch' must be int"),
        ({"samples_yielded": None}, "'samples_yielded' must be int"),
    ],
)
def test_a_state_of_another_run_is_refused(radi_uri, change, message):
    loader = helpers.make_loader(radi_uri, "training")
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        loader.load_state_dict({**loader.state_dict(), **change})


def test_a_state_that_is_not_a_loader_state_is_refused(radi_uri):
    loader = helpers.make_loader(radi_uri, "training")
    with pytest.raises(ConfigurationError, match=r"loader\.state_dict"):
        loader.load_state_dict([("epoch", 0)])  # type: ignore[arg-type]
    partial = loader.state_dict()
    del partial["seed"]
    with pytest.raises(ConfigurationError, match=r"lacks \['seed'\]"):
        loader.load_state_dict(partial)


def test_a_loader_without_a_resumable_sampler_says_so(radi_uri):
    from radiobject import RadiObject

    ds = VolumeCollectionDataset(RadiObject(radi_uri).T1w, DatasetConfig())
    loader = RadiObjectLoader(ds, batch_size=1)
    with pytest.raises(ConfigurationError, match="ResumableSampler"):
        loader.state_dict()
