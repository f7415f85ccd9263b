"""A batch of patches decoded in place: the same bytes as samples stacked one by one."""

from __future__ import annotations

import pytest
import torch

from radiobject.data import make_sample_radiobject
from radiobject.ml import DatasetConfig, VolumeCollectionDataset, create_training_dataloader
from radiobject.ml._stages import images_in_place, mark_in_place, stack_collate

SHAPE, PATCH, PER = (16, 16, 12), (8, 8, 8), 3


@pytest.fixture(scope="module")
def radi(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fastbatch")
    return make_sample_radiobject(
        str(root / "r"), n_subjects=3, shape=SHAPE, modalities=("T1w", "FLAIR"), progress=False
    )


def _identity(sample):
    return sample


@pytest.mark.parametrize("channels", [("T1w",), ("T1w", "FLAIR")])
def test_a_batch_decoded_in_place_equals_the_stacked_samples(radi, channels):
    colls = [getattr(radi, c) for c in channels]
    config = DatasetConfig(loading_mode="patch", patch_size=PATCH, patches_per_volume=PER)
    fast = VolumeCollectionDataset(colls, config)
    plain = VolumeCollectionDataset(colls, config, transform=_identity)  # no in-place batch
    keys = [(2, i) for i in (5, 0, 7, 3)]
    samples = fast.__getitems__(keys)
    batch = stack_collate(samples)
    # the images were the slots of one array, which the batch is: no copy
    assert batch["image"].data_ptr() == samples[0]["image"].data_ptr()
    assert images_in_place(plain.__getitems__(keys)) is None
    expected = torch.stack([plain[k]["image"] for k in keys])
    assert batch["image"].dtype == expected.dtype
    assert batch["image"].shape == expected.shape
    assert batch["image"].stride() == expected.stride()
    assert torch.equal(batch["image"], expected)
    assert list(batch) == list(samples[0])  # keys in the samples' order
    assert torch.equal(batch["patch_start"], torch.stack([s["patch_start"] for s in samples]))
    assert batch["obs_id"] == [s["obs_id"] for s in samples]


def test_loaders_with_and_without_the_in_place_batch_give_the_same_batches(radi):
    def batches(transform):
        loader = create_training_dataloader(
            radi.T1w,
            labels="diagnosis",
            transform=transform,
            batch_size=4,
            patch_size=PATCH,
            patches_per_volume=PER,
            drop_last=False,  # the last batch is smaller (9 items)
        )
        return [b for _ in range(2) for b in loader]

    fast, plain = batches(None), batches(_identity)
    assert len(fast) == len(plain) == 6
    for a, b in zip(fast, plain, strict=True):
        assert list(a) == list(b)
        for key in ("image", "patch_start", "label"):
            assert torch.equal(a[key], b[key])
        assert a["obs_id"] == b["obs_id"]


def test_images_that_are_not_one_array_in_order_are_stacked():
    base = torch.arange(24.0).reshape(4, 6)
    assert images_in_place([{"image": t} for t in base]) is None  # a user's tensor: no alias
    mark_in_place(base)
    assert images_in_place([{"image": t} for t in base[:3]]) is None  # part of a larger array
    assert images_in_place([{"image": base[1]}, {"image": base[0]}]) is None  # out of order
    assert images_in_place([{"image": base[0].clone()}, {"image": base[1]}]) is None
    assert images_in_place([]) is None
    assert torch.equal(images_in_place([{"image": t} for t in base]), base)
    assert images_in_place([{"image": t} for t in base]) is None  # the mark is used once


def test_every_batch_is_an_array_of_its_own_and_stays_as_it_was(radi):
    """No batch memory is reused: a batch kept (or a view of it) is never overwritten."""
    config = DatasetConfig(loading_mode="patch", patch_size=PATCH, patches_per_volume=PER)
    ds = VolumeCollectionDataset(radi.T1w, config)
    keys = [[(e, i) for i in range(4)] for e in range(4)]
    batches = [stack_collate(ds.__getitems__(k))["image"] for k in keys]
    views = [b[1] for b in batches]
    expected = [b.clone() for b in batches]
    del batches  # only the views are kept: their arrays must stay theirs
    for _ in range(3):
        for k in keys:
            stack_collate(ds.__getitems__(k))
    for view, whole in zip(views, expected, strict=True):
        assert torch.equal(view, whole[1])
    assert len({v.untyped_storage().data_ptr() for v in views}) == len(views)


def test_stack_collate_equals_default_collate_and_leaves_torch_threads_alone():
    from torch.utils.data import default_collate

    batch = [
        {"image": torch.rand(1, 4, 4, 4), "label": 3, "obs_id": "a", "x": torch.arange(3)},
        {"image": torch.rand(1, 4, 4, 4), "label": 1, "obs_id": "b", "x": torch.arange(3) + 1},
    ]
    threads = torch.get_num_threads()
    out, expected = stack_collate(batch), default_collate(batch)
    assert torch.get_num_threads() == threads
    assert list(out) == list(expected)
    for key in ("image", "label", "x"):
        assert out[key].dtype == expected[key].dtype
        assert out[key].stride() == expected[key].stride()
        assert torch.equal(out[key], expected[key])
    assert out["obs_id"] == expected["obs_id"]
    # tensors NumPy cannot hold, or of different shapes, go torch's way
    half = [torch.ones(2, dtype=torch.bfloat16), torch.zeros(2, dtype=torch.bfloat16)]
    assert torch.equal(stack_collate(half), torch.stack(half))
    with pytest.raises(RuntimeError, match="equal size"):
        stack_collate([torch.ones(2), torch.ones(3)])


def test_marked_slots_are_taken_whole_only_when_they_are_the_samples_images():
    base = torch.arange(24.0).reshape(4, 6)
    slots = list(base)
    mark_in_place(base, slots)
    assert images_in_place([{"image": t} for t in slots]) is base  # the very slots: no copy
    mark_in_place(base, slots)
    swapped = [slots[1], slots[0], slots[2], slots[3]]
    assert images_in_place([{"image": t} for t in swapped]) is None  # out of order
    mark_in_place(base, slots)
    assert images_in_place([{"image": t} for t in slots[:3]]) is None  # part of the batch
    mark_in_place(base, slots)
    # other tensor objects over the same memory: recognised by the memory checks
    assert torch.equal(images_in_place([{"image": t} for t in base]), base)


def test_a_batch_in_place_has_its_corners_as_one_tensor_and_counts_what_it_delivers(radi):
    from radiobject.ml._stages import stage_counters

    config = DatasetConfig(loading_mode="patch", patch_size=PATCH, patches_per_volume=PER)
    fast = VolumeCollectionDataset(radi.T1w, config, labels="diagnosis")
    plain = VolumeCollectionDataset(radi.T1w, config, labels="diagnosis", transform=_identity)
    keys = [(1, i) for i in (4, 8, 0)]
    counted = []
    for ds in (fast, plain):
        before = stage_counters().copy()
        samples = ds.__getitems__(keys)
        counted.append(stage_counters() - before)
        batch = stack_collate(samples)
        assert torch.equal(batch["patch_start"], torch.stack([s["patch_start"] for s in samples]))
        assert torch.equal(batch["label"], torch.stack([s["label"] for s in samples]))
    assert counted[0].samples == counted[1].samples == len(keys)
    assert counted[0].sample_bytes == counted[1].sample_bytes  # images, corners and labels
    samples = fast.__getitems__(keys)
    corners = [s["patch_start"] for s in samples]
    assert all(c.untyped_storage().data_ptr() == corners[0].untyped_storage().data_ptr()
               for c in corners)  # fmt: skip
    assert stack_collate(samples)["patch_start"].data_ptr() == corners[0].data_ptr()


def test_a_sample_changed_before_its_collate_is_collated_as_it_is_now(radi):
    """The collate takes a marked tensor whole only where the samples still hold its rows."""
    config = DatasetConfig(loading_mode="patch", patch_size=PATCH, patches_per_volume=PER)
    ds = VolumeCollectionDataset(radi.T1w, config)
    samples = ds.__getitems__([(0, i) for i in (1, 2, 3)])
    samples[1]["patch_start"] = torch.tensor([7, 7, 7])
    samples[2]["obs_id"] = "changed"
    batch = stack_collate(samples)
    assert batch["patch_start"].tolist()[1] == [7, 7, 7]
    assert batch["obs_id"][2] == "changed"
    assert batch["image"].data_ptr() == samples[0]["image"].data_ptr()  # still in place


@pytest.mark.parametrize("kind", [int, float])
def test_labels_of_a_batch_in_place_are_one_tensor_equal_to_their_stack(radi, kind):
    config = DatasetConfig(loading_mode="patch", patch_size=PATCH, patches_per_volume=PER)
    labels = {o: kind(i) / 2 if kind is float else i for i, o in enumerate(radi.T1w.obs_ids)}
    fast = VolumeCollectionDataset(radi.T1w, config, labels=labels)
    plain = VolumeCollectionDataset(radi.T1w, config, labels=labels, transform=_identity)
    keys = [(0, i) for i in (8, 1, 4, 6)]
    expected = stack_collate(plain.__getitems__(keys))["label"]
    samples = fast.__getitems__(keys)  # marked for the next collate in this thread
    got = stack_collate(samples)["label"]
    assert got.dtype == expected.dtype == (torch.int64 if kind is int else torch.float32)
    assert torch.equal(got, expected)
    assert got.data_ptr() == samples[0]["label"].data_ptr()  # the samples hold its rows


def test_a_subclass_with_its_own_read_hooks_is_stacked_and_gives_the_same_batch(radi):
    class Corner(VolumeCollectionDataset):  # changes what is planned only: still in place
        def patch_start(self, index, rng):
            return (0, 0, 0)

    class Doubled(Corner):  # its own apply_transform: samples built one by one
        def apply_transform(self, sample, key):
            return {**sample, "twice": sample["image"] * 2}

    config = DatasetConfig(loading_mode="patch", patch_size=PATCH, patches_per_volume=PER)
    keys = [(0, i) for i in (2, 5, 7)]
    assert Corner._stock_reads
    assert not Doubled._stock_reads
    doubled = Doubled(radi.T1w, config).__getitems__(keys)
    assert images_in_place(doubled) is None
    stacked = stack_collate(doubled)
    corner = stack_collate(Corner(radi.T1w, config).__getitems__(keys))
    assert torch.equal(stacked["image"], corner["image"])
    assert torch.equal(stacked["twice"], corner["image"] * 2)
    assert corner["patch_start"].tolist() == [[0, 0, 0]] * 3


def test_a_subclass_plan_is_what_a_batch_in_place_reads(radi):
    planned = []

    class Logged(VolumeCollectionDataset):
        def plan(self, key):
            planned.append(key)
            return super().plan(key)

    config = DatasetConfig(loading_mode="patch", patch_size=PATCH, patches_per_volume=PER)
    ds = Logged(radi.T1w, config)
    keys = [(1, i) for i in (3, 0, 6)]
    batch = stack_collate(ds.__getitems__(keys))
    assert planned == keys  # once per key, through the override
    assert batch["patch_start"].tolist() == [list(ds.plan(k).start) for k in keys]
