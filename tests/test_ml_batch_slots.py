"""Batch slots: memory reused only once every tensor viewing it is freed.

A batch (or a view of one) the training loop keeps is never written again, in the loading
process (0 workers) and through the loader's shared slots (2 workers); a batch let go gives
its slot back, and a slot a worker took for a batch that was never sent is freed.
"""

from __future__ import annotations

import gc
import multiprocessing
import pickle

import pytest
import torch

from radiobject.data import make_sample_radiobject
from radiobject.ml import DatasetConfig, VolumeCollectionDataset, create_training_dataloader
from radiobject.ml._batch_slots import LocalSlots, SharedSlots, for_transport, note_slot
from radiobject.ml._stages import stack_collate

PATCH, PER = (8, 8, 8), 4


@pytest.fixture(scope="module")
def radi(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("slots")
    return make_sample_radiobject(
        str(root / "r"), n_subjects=4, shape=(16, 16, 12), modalities=("T1w",), progress=False
    )


def _loader(radi, num_workers: int):
    return create_training_dataloader(
        radi.T1w, batch_size=2, patch_size=PATCH, patches_per_volume=PER,
        num_workers=num_workers, seed=5,
    )  # fmt: skip


def test_a_batch_let_go_gives_its_memory_back_and_a_kept_one_is_never_written(radi):
    config = DatasetConfig(loading_mode="patch", patch_size=PATCH, patches_per_volume=PER)
    ds = VolumeCollectionDataset(radi.T1w, config)
    keys = [[(e, i) for i in range(4)] for e in range(6)]
    pointers = set()
    for k in keys:  # nothing kept: the same few slots again and again
        pointers.add(stack_collate(ds.__getitems__(k))["image"].data_ptr())
    assert len(pointers) <= LocalSlots().count
    kept = [stack_collate(ds.__getitems__(k))["image"] for k in keys]  # more than the slots
    views = [b[2] for b in kept]
    expected = [b.clone() for b in kept]
    del kept
    for k in keys * 2:
        stack_collate(ds.__getitems__(k))
    for view, whole in zip(views, expected, strict=True):
        assert torch.equal(view, whole[2])
    assert len({v.untyped_storage().data_ptr() for v in views}) == len(views)


@pytest.mark.filterwarnings("ignore:TileDB is a multithreading library")
def test_worker_batches_come_through_slots_and_kept_ones_stay_as_they_were(radi):
    plain = _loader(radi, 0)
    fresh = [[b for b in plain] for _ in range(5)]
    made = _loader(radi, 2)
    slots = made.worker_init_fn.shared.slots
    for got, want in zip(made, fresh[0], strict=True):  # let go: every batch through a slot
        assert torch.equal(got["image"], want["image"])
    del got
    gc.collect()
    assert slots.handouts == 8
    assert slots.held() == 0  # every slot back (workers idle, the loop keeps nothing)
    # kept: three epochs hold more batches than there are slots; none is overwritten
    held = [b for _ in range(3) for b in made]
    assert len(held) > slots.count
    assert slots.held() == slots.count  # the rest came in new memory, as PyTorch makes it
    for kept, again in zip(held, [b for e in fresh[1:4] for b in e], strict=True):
        assert torch.equal(kept["patch_start"], again["patch_start"])
        assert torch.equal(kept["image"], again["image"])
    # a view keeps its slot: views of three batches are kept, the other slots are reused
    views = [b["image"][1] for b in held[:3]]
    expected = [v.clone() for v in views]
    del held, kept, again
    gc.collect()
    handed = slots.handouts
    for got, want in zip(made, fresh[4], strict=True):
        assert torch.equal(got["image"], want["image"])
    assert slots.handouts > handed
    for view, want in zip(views, expected, strict=True):
        assert torch.equal(view, want)
    del views, view, got
    gc.collect()
    assert slots.held() == 0


def test_a_slot_taken_for_a_batch_that_is_not_sent_is_freed(tmp_path):
    slots = SharedSlots(multiprocessing.get_context("spawn"), str(tmp_path), 3)
    image, ref = slots.take((2, 3))
    note_slot(image, ref, slots)
    # the batch's image was not the slot (stacked elsewhere): the slot goes back
    sent = {"image": torch.rand(2, 3), "x": torch.arange(2), "id": ["a", "b"]}
    out = pickle.loads(pickle.dumps(for_transport(sent)))  # small tensors went by value
    assert slots.held() == 0
    assert list(out) == list(sent)
    assert all(
        type(out[k]) is torch.Tensor and torch.equal(out[k], sent[k]) for k in ("image", "x")
    )
    assert out["id"] == sent["id"]
    image, ref = slots.take((2, 3))
    note_slot(image, ref, slots)
    assert for_transport({"image": image})["image"] is ref  # sent: the loader frees it
    assert slots.held() == 1
    image2, ref2 = slots.take((4,))
    note_slot(image2, ref2, slots)
    third = slots.take((1,))
    assert third is not None
    note_slot(*third, slots)  # the batch before failed (never sent): its slot is freed
    assert slots.held() == 2
    assert slots.take((1,)) is not None
    assert slots.take((1,)) is None  # all held: the caller uses new memory


def test_local_slots_of_several_sizes_give_the_one_that_fits():
    """A free slot is taken by position: free slots of other sizes are never compared."""
    slots = LocalSlots(count=3)
    small, large = slots.take((2, 3)), slots.take((4, 3))
    small_ptr, large_ptr = small.data_ptr(), large.data_ptr()
    del small, large  # both free: the small one first in line
    again = slots.take((4, 3))  # only the large one fits
    assert again.data_ptr() == large_ptr
    assert slots.take((2, 3)).data_ptr() == small_ptr
