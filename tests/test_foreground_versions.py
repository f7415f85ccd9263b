"""The foreground index of a mask collection is true after a mask edit, and has versions.

A write to a mask (``Volume.write_region``, ``add_subject``) writes that volume's new index
entry at the timestamp of its voxels: the newest index is the newest masks', and a read at
an earlier version (a collection ``as_of`` it, a loader pinned to it, a resumed run) gets the
index of the masks then, read from storage, never computed from the masks again.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tiledb

from radiobject import RadiObject, StorageError
from radiobject.data import make_sample_radiobject
from radiobject.ml import DatasetConfig, SegmentationDataset, create_segmentation_dataloader
from radiobject.storage import FG_INDEX, compute_foreground, foreground_digest, join
from radiobject.storage._foreground import prepare_foreground, read_foreground

SHAPE = (16, 16, 12)
PATCH = (4, 4, 4)
CORNER = (1, 1, 1)  # a background voxel of every sample mask, far from the tumour


@pytest.fixture
def radi(tmp_path):
    return make_sample_radiobject(
        str(tmp_path / "radi"), n_subjects=2, shape=SHAPE, modalities=("T1w",), progress=False
    )


def _centred(point):
    return tuple(
        int(min(max(c - p // 2, 0), s - p)) for c, s, p in zip(point, SHAPE, PATCH, strict=True)
    )


def _same(a, b) -> bool:
    return foreground_digest([a]) == foreground_digest([b])


def _edit(radi: RadiObject) -> tuple[np.ndarray, np.ndarray]:
    """Erase sub-000's tumour; mark one corner voxel of (healthy) sub-001 as label 2."""
    tumour = radi.seg.volume("sub-000_seg")
    tumour.write_region(tuple((0, n) for n in SHAPE), np.zeros(SHAPE, np.uint8))
    healthy = radi.seg.volume("sub-001_seg")
    healthy.write_region(tuple((c, c + 1) for c in CORNER), np.full((1, 1, 1), 2, np.uint8))
    return tumour.to_numpy(), healthy.to_numpy()


def _index_uri(radi: RadiObject) -> str:
    return join(radi.seg.uri, FG_INDEX)


def test_write_region_on_a_mask_updates_its_foreground_entry(radi):
    old = radi.seg.foreground()
    assert old["sub-000_seg"].labels == [1, 2, 3]
    assert old["sub-001_seg"].labels == []
    assert not any((old["sub-000_seg"].all_points() < 3).all(axis=1))  # the corner is free
    tumour, healthy = _edit(radi)

    stored = read_foreground(_index_uri(radi), radi.ctx)  # as stored: nothing recomputed
    assert stored["sub-001_seg"].points[2].tolist() == [list(CORNER)]
    assert stored["sub-001_seg"].counts == {2: 1}
    assert stored["sub-000_seg"].labels == []
    assert stored["sub-000_seg"].counts == {}
    assert _same(stored["sub-000_seg"], compute_foreground(tumour))
    assert _same(stored["sub-001_seg"], compute_foreground(healthy))
    # a collection opened now reads it
    now = RadiObject(radi.uri).seg.foreground()
    assert now["sub-001_seg"].labels == [2]
    assert now["sub-000_seg"].labels == []


def test_a_partial_edit_keeps_the_rest_of_the_foreground(radi):
    vol = radi.seg.volume("sub-000_seg")
    before = vol.to_numpy()
    label1 = np.argwhere(before == 1)
    lo = label1.min(axis=0)
    box = ((int(lo[0]), int(lo[0]) + 2), (0, SHAPE[1]), (0, SHAPE[2]))  # erase two x planes
    vol.write_region(box, np.zeros((2, *SHAPE[1:]), np.uint8))
    after = vol.to_numpy()
    entry = read_foreground(_index_uri(radi), radi.ctx)["sub-000_seg"]
    assert entry.counts[1] == int((after == 1).sum()) < int((before == 1).sum())
    assert not ((entry.all_points()[:, 0] >= lo[0]) & (entry.all_points()[:, 0] < lo[0] + 2)).any()
    assert _same(entry, compute_foreground(after))


def test_an_earlier_version_reads_the_earlier_index(radi):
    old = radi.seg.foreground()
    before = radi.versions()[-1]
    _edit(radi)
    # stored as of then: the entries written at ingest
    then_stored = read_foreground(_index_uri(radi), radi.ctx, at=before.timestamp)
    assert set(then_stored) == {"sub-000_seg", "sub-001_seg"}
    then = radi.seg.as_of(before).foreground()
    for oid in ("sub-000_seg", "sub-001_seg"):
        assert _same(then_stored[oid], old[oid])
        assert _same(then[oid], old[oid])
    # each write is a version of the index: between the two edits, the first only
    edits = [v for v in radi.versions() if v.timestamp > before.timestamp]
    assert [v.written for v in edits] == [
        ("seg/foreground", "seg/sub-000_seg"),
        ("seg/foreground", "seg/sub-001_seg"),
    ]
    middle = radi.seg.as_of(edits[0]).foreground()
    assert middle["sub-000_seg"].labels == []
    assert middle["sub-001_seg"].labels == []


def test_a_dataset_at_an_earlier_version_samples_the_earlier_foreground(radi, monkeypatch):
    old = radi.seg.foreground()
    before = radi.versions()[-1]
    _edit(radi)
    # nothing is computed from the masks: the index of each version is stored
    monkeypatch.setattr(
        "radiobject.storage._collection_derived.compute_foreground",
        lambda *_: pytest.fail("the index was computed from the masks, not read"),
    )
    config = DatasetConfig(loading_mode="patch", patch_size=PATCH, patches_per_volume=6)

    def dataset(cohort: RadiObject) -> SegmentationDataset:
        return SegmentationDataset(
            cohort.T1w, cohort.seg, config, foreground_sampling=True, foreground_probability=1.0
        )

    def starts(ds: SegmentationDataset, subject: str) -> set[tuple[int, ...]]:
        items = [ds[i] for i in range(len(ds))]
        return {tuple(s["patch_start"].tolist()) for s in items if s["obs_subject_id"] == subject}

    then = dataset(RadiObject(radi.uri, at=before))
    assert then.foreground_digest == foreground_digest([old["sub-000_seg"], old["sub-001_seg"]])
    tumour_centres = {_centred(p) for p in old["sub-000_seg"].all_points()}
    assert starts(then, "sub-000") <= tumour_centres  # centred on the tumour as it was

    now = dataset(RadiObject(radi.uri))
    assert starts(now, "sub-001") == {_centred(CORNER)}  # centred on the new label only
    assert now.foreground_digest != then.foreground_digest


def test_a_run_resumed_after_a_mask_edit_gives_the_uninterrupted_batches(radi, monkeypatch):
    def loader(cohort: RadiObject):
        return create_segmentation_dataloader(
            cohort.T1w,
            cohort.seg,
            patch_size=PATCH,
            patches_per_volume=4,
            batch_size=2,
            seed=3,
            foreground_probability=1.0,
        )

    def batches(it) -> list[list[list[int]]]:
        return [b["patch_start"].tolist() for b in it]

    uninterrupted = batches(loader(radi))
    run = loader(radi)
    it = iter(run)
    head = [next(it)["patch_start"].tolist()]
    state = run.state_dict()
    del it
    _edit(radi)
    monkeypatch.setattr(
        "radiobject.storage._collection_derived.compute_foreground",
        lambda *_: pytest.fail("the index was computed from the masks, not read"),
    )
    resumed = loader(RadiObject(radi.uri))
    assert resumed.dataset.foreground_digest != state["foreground_digest"]  # the edit shows
    with pytest.warns(UserWarning, match="resuming reads the cohort as the saved run did"):
        resumed.load_state_dict(state)  # same index digest at the recorded version
    assert resumed.dataset.foreground_digest == state["foreground_digest"]
    assert head + batches(resumed) == uninterrupted


def test_add_subject_indexes_the_new_mask(radi):
    mask = np.zeros(SHAPE, np.uint8)
    mask[4:10, 4:10, 3:8] = 1
    mask[5, 5, 5] = 3
    row = radi.obs_meta.iloc[0].drop("obs_subject_id").to_dict()
    radi.add_subject("sub-new", {"T1w": np.zeros(SHAPE), "seg": mask}, obs_meta=row)
    stored = read_foreground(_index_uri(radi), radi.ctx)
    assert _same(stored["sub-new_seg"], compute_foreground(mask))
    assert stored["sub-new_seg"].counts == {1: int((mask == 1).sum()), 3: 1}


def test_writes_outside_a_mask_collection_write_no_index(radi, tmp_path):
    from radiobject import Volume

    before = foreground_digest(list(read_foreground(_index_uri(radi), radi.ctx).values()))
    radi.T1w.volume("sub-000_T1w").write_region(((0, 1),) * 3, np.ones((1, 1, 1), np.float32))
    assert tiledb.object_type(join(radi.T1w.uri, FG_INDEX)) is None
    loose = Volume.from_numpy(str(tmp_path / "loose"), np.zeros((4, 4, 4), np.uint8))
    loose.write_region(((0, 1),) * 3, np.ones((1, 1, 1), np.uint8))  # no collection around it
    assert int(loose[0, 0, 0]) == 1
    assert foreground_digest(list(read_foreground(_index_uri(radi), radi.ctx).values())) == before


def test_a_collection_indexed_on_first_use_keeps_its_index_true(tmp_path):
    from radiobject import VolumeCollection

    mask = np.zeros((8, 8, 4), np.uint8)
    mask[2:4, 2:4, 1:3] = 1
    labels = VolumeCollection.from_numpy(str(tmp_path / "lbl"), {"a": mask}, is_mask=False)
    assert labels.foreground()["a_lbl"].counts == {1: 8}  # computed now, and stored
    labels.volume("a_lbl").write_region(((0, 1), (0, 1), (0, 1)), np.full((1, 1, 1), 4))
    stored = read_foreground(join(labels.uri, FG_INDEX), labels.ctx)["a_lbl"]
    assert stored.counts == {1: 8, 4: 1}
    assert stored.points[4].tolist() == [[0, 0, 0]]


def _count_index_reads(monkeypatch) -> list[int | None]:
    """From now on, the version (``at``) of every read of a foreground index's entries."""
    from radiobject.storage import _collection_derived

    reads: list[int | None] = []
    real = _collection_derived.read_foreground

    def counted(uri, ctx, *, at=None):
        reads.append(at)
        return real(uri, ctx, at=at)

    monkeypatch.setattr(_collection_derived, "read_foreground", counted)
    return reads


def test_a_segmentation_dataset_reads_a_stored_index_once(radi, monkeypatch):
    """The masks were indexed at ingest: set-up reads the entries at the pinned version only."""
    assert radi.seg.foreground_stored()
    reads = _count_index_reads(monkeypatch)
    monkeypatch.setattr(
        "radiobject.storage._collection_derived.compute_foreground",
        lambda *_: pytest.fail("the index was computed from the masks, not read"),
    )
    config = DatasetConfig(loading_mode="patch", patch_size=PATCH, patches_per_volume=2)
    ds = SegmentationDataset(radi.T1w, radi.seg, config, foreground_sampling=True)
    assert reads == [ds.data_version]  # one read, of the version the dataset reads
    assert ds.foreground_digest == foreground_digest(list(radi.seg.foreground().values()))


def test_masks_without_an_index_are_indexed_before_the_version_is_pinned(tmp_path, monkeypatch):
    """No stored entry: computed once from the newest masks and stored, then read as pinned."""
    from radiobject import VolumeCollection
    from radiobject.storage import _collection_derived

    masks = {s: np.zeros((8, 8, 4), np.uint8) for s in ("a", "b")}
    masks["a"][2:4, 2:4, 1:3] = 1
    images = VolumeCollection.from_numpy(
        str(tmp_path / "img"), {s: m * 1.0 for s, m in masks.items()}
    )
    labels = VolumeCollection.from_numpy(str(tmp_path / "lbl"), masks, is_mask=False)
    assert not labels.foreground_stored()
    reads = _count_index_reads(monkeypatch)
    computed: list[tuple[int, ...]] = []
    real = _collection_derived.compute_foreground

    def compute(mask):
        computed.append(mask.shape)
        return real(mask)

    monkeypatch.setattr(_collection_derived, "compute_foreground", compute)
    config = DatasetConfig(loading_mode="patch", patch_size=(4, 4, 2), patches_per_volume=2)
    ds = SegmentationDataset(images, labels, config, foreground_sampling=True)
    assert reads == [None, ds.data_version]  # the newest (to store), then the pinned version
    assert len(computed) == 2  # each mask once: the pinned read finds the entries stored
    assert labels.foreground_stored()
    assert ds.foreground[0].counts == {1: 8}


def test_foreground_stored_is_of_the_version_and_the_view(tmp_path):
    from radiobject import VolumeCollection

    masks = [np.ones((4, 4, 2), np.uint8), np.zeros((4, 4, 2), np.uint8)]
    labels = VolumeCollection.from_numpy(str(tmp_path / "lbl"), masks, is_mask=False)
    before = labels.versions()[-1]
    first = labels.head(1)
    first.foreground()  # indexes (and stores) the first volume only
    assert first.foreground_stored()
    assert not labels.foreground_stored()
    assert not labels.as_of(before).head(1).foreground_stored()  # not stored then
    labels.foreground()
    assert labels.foreground_stored()


# -- the older layout: one dense array, rewritten whole -------------------------------------


def _write_dense(uri: str, entries: dict) -> None:
    """The index as radiobject wrote it before it had versions."""
    obs_ids = sorted(entries)
    rows = [
        np.column_stack(
            [
                np.full(len(entries[o].points[k]), v, np.int32),
                np.full(len(entries[o].points[k]), k, np.int32),
                entries[o].points[k].astype(np.int32),
            ]
        )
        for v, o in enumerate(obs_ids)
        for k in entries[o].labels
    ]
    table = np.concatenate(rows)
    counts = {o: {str(k): c for k, c in entries[o].counts.items()} for o in obs_ids}
    tiledb.remove(uri)
    n = len(table)
    dom = tiledb.Domain(tiledb.Dim(name="row", domain=(0, n - 1), tile=n, dtype=np.int64))
    attrs = [tiledb.Attr(c, dtype=np.int32) for c in ("volume", "label", "x", "y", "z")]
    tiledb.Array.create(uri, tiledb.ArraySchema(domain=dom, attrs=attrs, sparse=False))
    with tiledb.open(uri, mode="w") as arr:
        arr[0:n] = {c: table[:, i].copy() for i, c in enumerate(("volume", "label", "x", "y", "z"))}
        arr.meta["obs_ids"] = json.dumps(obs_ids)
        arr.meta["counts"] = json.dumps(counts)
        arr.meta["rows"] = n


def test_an_index_of_the_older_layout_is_read_and_moved_on_the_next_write(radi, monkeypatch):
    uri = _index_uri(radi)
    true = radi.seg.foreground()
    # a stored entry that is not the mask's (the first 5 points): proof it is read, not made
    part = true["sub-000_seg"]
    marked = type(part)(points={1: part.points[1][:5]}, counts={1: 5})
    _write_dense(uri, {"sub-000_seg": marked, "sub-001_seg": true["sub-001_seg"]})
    monkeypatch.setattr(
        "radiobject.storage._collection_derived.compute_foreground",
        lambda *_: pytest.fail("the index was computed from the masks, not read"),
    )
    read = RadiObject(radi.uri).seg.foreground()
    assert _same(read["sub-000_seg"], marked)
    assert _same(read["sub-001_seg"], true["sub-001_seg"])
    monkeypatch.undo()

    before = radi.versions()[-1]
    healthy = radi.seg.volume("sub-001_seg")
    healthy.write_region(tuple((c, c + 1) for c in CORNER), np.full((1, 1, 1), 2, np.uint8))
    with tiledb.open(uri) as arr:
        assert arr.schema.sparse  # moved to the versioned layout
    moved = read_foreground(uri, radi.ctx)
    assert _same(moved["sub-000_seg"], marked)  # carried over as it was
    assert moved["sub-001_seg"].points[2].tolist() == [list(CORNER)]
    # as of before the move, the dense index is gone: computed from that version's masks
    then = radi.seg.as_of(before).foreground()
    assert _same(then["sub-000_seg"], true["sub-000_seg"])
    assert then["sub-001_seg"].labels == []


def test_an_index_of_the_older_layout_is_read_once_by_a_dataset(radi, monkeypatch):
    """A dense index naming every mask: set-up reads it at the pinned version only."""
    before = radi.versions()[-1]
    _write_dense(_index_uri(radi), radi.seg.foreground())
    again = RadiObject(radi.uri)
    assert again.seg.foreground_stored()
    assert not again.seg.as_of(before).foreground_stored()  # the dense index came later
    reads = _count_index_reads(monkeypatch)
    config = DatasetConfig(loading_mode="patch", patch_size=PATCH, patches_per_volume=2)
    ds = SegmentationDataset(again.T1w, again.seg, config, foreground_sampling=True)
    assert reads == [ds.data_version]
    with tiledb.open(_index_uri(radi)) as arr:
        assert not arr.schema.sparse  # a read never moves it


def test_something_else_at_the_index_uri_is_refused(tmp_path):
    from radiobject.storage import create_group

    uri = str(tmp_path / "fg")
    create_group(uri, "coarse", tiledb.Ctx())
    with pytest.raises(StorageError, match="not a foreground index"):
        prepare_foreground(uri, tiledb.Ctx())
