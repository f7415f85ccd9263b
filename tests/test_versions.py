"""Versions: a cohort read as of a timestamp, a resumed loader reading the version it started on.

Every test runs on a local folder and on S3 (moto): the history is TileDB's fragments, which
both keep alike.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import pickle
import uuid

import numpy as np
import pandas as pd
import pytest

from radiobject import (
    ConfigurationError,
    RadiObject,
    ReadConfig,
    Version,
    VersionError,
    configure,
)
from radiobject.data import make_sample_radiobject
from radiobject.ml import create_segmentation_dataloader
from radiobject.read._local_tier import fragment_key, tier_state
from radiobject.read._versioned import versioned

SHAPE = (16, 16, 12)
EDIT = ((0, 8), (0, 8), (0, 6))  # the corrected corner of sub-000's mask


@pytest.fixture(params=["local", "s3"])
def base(request, tmp_path):
    """Where cohorts are written: a local folder, or a prefix on the moto S3 server."""
    if request.param == "local":
        return str(tmp_path)
    pytest.importorskip("boto3")
    pytest.importorskip("moto")
    s3 = request.getfixturevalue("s3")
    return s3.uri(f"versions-{uuid.uuid4().hex[:8]}")


def _cohort(base: str) -> RadiObject:
    return make_sample_radiobject(
        f"{base}/radi", n_subjects=4, shape=SHAPE, modalities=("T1w",), progress=False
    )


def _loader(radi: RadiObject, **changes):
    args = {
        "patch_size": (8, 8, 8),
        "patches_per_volume": 2,
        "batch_size": 2,
        "seed": 5,
        "foreground_probability": 0.9,
    }
    return create_segmentation_dataloader(radi.T1w, radi.seg, **{**args, **changes})


def _hash(batch) -> str:
    h = hashlib.sha256()
    for key in ("image", "mask"):
        h.update(
            batch[key].as_tensor().numpy().tobytes()
            if hasattr(batch[key], "as_tensor")
            else batch[key].numpy().tobytes()
        )
    h.update(repr(list(batch["obs_id"])).encode())
    return h.hexdigest()


def _edit_and_grow(radi: RadiObject) -> None:
    """Correct sub-000's mask in a corner and add a subject: two writes after a checkpoint."""
    seg = radi.seg.volume("sub-000_seg")
    seg.write_region(EDIT, np.ones(tuple(hi - lo for lo, hi in EDIT), dtype=np.uint8))
    row = radi.obs_meta.iloc[0].drop("obs_subject_id").to_dict()
    mask = np.zeros(SHAPE, np.uint8)
    mask[4:10, 4:10, 3:8] = 1
    radi.add_subject(
        "sub-new",
        {"T1w": np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE), "seg": mask},
        obs_meta=row,
    )


# -- the check: resume, edit, add, same batches; diff names exactly what changed ----


def test_a_resumed_run_reads_the_version_it_started_on(base, monkeypatch):
    radi = _cohort(base)
    uninterrupted = _loader(radi)
    reference = [_hash(b) for b in uninterrupted]
    assert len(reference) == 4  # 4 volumes x 2 patches, batches of 2
    next_epoch = [_hash(b) for b in uninterrupted]
    assert next_epoch != reference

    loader = _loader(radi)  # built on the newest data, no at=
    it = iter(loader)
    head = [_hash(next(it)) for _ in range(2)]
    state = loader.state_dict()
    assert head == reference[:2]
    assert isinstance(state["data_version"], int)
    assert isinstance(state["foreground_digest"], str)

    _edit_and_grow(radi)  # mid-run: a corrected mask and a new subject
    # the writes indexed the masks they wrote: from here on, no index is computed from masks
    monkeypatch.setattr(
        "radiobject.storage._collection_derived.compute_foreground",
        lambda *_: pytest.fail("a foreground index was computed from the masks, not read"),
    )

    # the run going on does not see them: the rest of its epoch, and the next, are unchanged
    assert [_hash(b) for b in it] == reference[2:]
    assert [_hash(b) for b in loader] == next_epoch
    assert loader.state_dict()["data_version"] == state["data_version"]

    newest = RadiObject(radi.uri)
    resumed = _loader(newest)
    assert len(resumed.dataset) == 10  # built on the newest cohort: 5 volumes
    with pytest.warns(UserWarning, match="resuming reads the cohort as the saved run did"):
        resumed.load_state_dict(state)
    assert len(resumed.dataset) == 8
    assert resumed.dataset.data_version == state["data_version"]
    assert [_hash(b) for b in resumed] == reference[2:]
    assert [_hash(b) for b in resumed] == next_epoch

    # the diff from the checkpoint's version names exactly the mask and the subject
    change = newest.diff(state["data_version"])
    assert change.volumes_changed == ("sub-000_seg",)
    assert change.subjects_added == ("sub-new",)
    assert change.volumes_added == ("sub-new_T1w", "sub-new_seg")
    assert change.subjects_changed == change.subjects_removed == ()
    assert change.obs_changed == change.volumes_removed == change.collections_added == ()

    # asked for, the newest (as of when the loader was built): the corrected mask and the
    # new subject
    latest = _loader(newest)
    latest.load_state_dict(state, data="newest")
    assert len(latest.dataset) == 10
    mask = latest.dataset.mask.volume("sub-000_seg")
    assert mask.at == latest.dataset.data_version > state["data_version"]
    assert (mask.read(EDIT) == 1).all()


def test_a_run_in_worker_processes_does_not_see_writes_made_while_it_runs(tmp_path):
    radi = _cohort(str(tmp_path))
    uninterrupted = _loader(radi, batch_size=1, patches_per_volume=4)
    reference = [_hash(b) for b in uninterrupted]
    next_epoch = [_hash(b) for b in uninterrupted]
    loader = _loader(radi, num_workers=2, batch_size=1, patches_per_volume=4)
    it = iter(loader)
    head = _hash(next(it))  # the workers have started and read ahead
    state = loader.state_dict()
    _edit_and_grow(radi)
    whole = tuple((0, n) for n in SHAPE)  # and every voxel of each image: any read would show
    for obs_id in radi.T1w.obs_ids:
        radi.T1w.volume(obs_id).write_region(whole, np.zeros(SHAPE, np.float32))
    assert [head, *(_hash(b) for b in it)] == reference
    assert [_hash(b) for b in loader] == next_epoch  # new workers, the same version
    resumed = _loader(RadiObject(radi.uri), num_workers=2, batch_size=1, patches_per_volume=4)
    with pytest.warns(UserWarning, match="resuming reads"):
        resumed.load_state_dict(state)
    assert [_hash(b) for b in resumed] == reference[1:]


def test_a_state_that_does_not_fit_leaves_the_loader_as_it_was(tmp_path):
    radi = _cohort(str(tmp_path))
    loader = _loader(radi)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    del it
    _edit_and_grow(radi)  # a resume of ``state`` must rebuild the loader over its version
    fresh = _loader(RadiObject(radi.uri))
    expected = [_hash(b) for b in _loader(RadiObject(radi.uri, at=fresh.dataset.data_version))]
    dataset, sampler = fresh.dataset, fresh.sampler
    bad = [
        ({**state, "seed": 6}, "seed=6"),  # found only once rebuilt: the rebuild is dropped
        ({**state, "samples_yielded": 99}, "samples_yielded <= epoch_length"),
        ({**state, "foreground_digest": "0" * 16}, "another foreground index"),
        ({**state, "foreground_digest": 7}, "'foreground_digest' must be str or None"),
        ({**state, "volumes_digest": ["x"]}, "'volumes_digest' must be str or None"),
        ({**state, "data_version": "then"}, "'data_version' must be int or None"),
        ({k: v for k, v in state.items() if k != "seed"}, r"lacks \['seed'\]"),
    ]
    for wrong, message in bad:
        with pytest.raises(ConfigurationError, match=message):
            fresh.load_state_dict(wrong)  # warnings are errors here: none is given either
        assert fresh.dataset is dataset
        assert fresh.sampler is sampler
    assert [_hash(b) for b in fresh] == expected  # it reads what it was built on, from 0


def test_a_state_of_a_run_without_foreground_sampling_is_refused(tmp_path):
    radi = _cohort(str(tmp_path))
    state = _loader(radi, foreground_probability=0.0).state_dict()
    assert state["foreground_digest"] is not None  # sampling on, probability 0
    plain = _loader(radi, foreground_sampling=False)
    with pytest.raises(ConfigurationError, match="foreground sampling is on in one and off"):
        plain.load_state_dict(state)
    plain.load_state_dict(state, data="newest")  # asked for: resumes on what it was built on


def test_a_state_without_a_recipe_says_how_to_read_its_version(base):
    radi = _cohort(base)
    state = _loader(radi).state_dict()
    _edit_and_grow(radi)
    bare = _loader(RadiObject(radi.uri))
    bare.recipe = None  # a loader made by hand: nothing to rebuild it with
    with pytest.raises(ConfigurationError, match=r"RadiObject\(uri, at=state\['data_version'\]\)"):
        bare.load_state_dict(state)
    with pytest.raises(ConfigurationError, match="data must be 'recorded' or 'newest'"):
        bare.load_state_dict(state, data="latest")
    bare.load_state_dict(state, data="newest")  # what it was built on


def test_nothing_written_since_resumes_without_a_warning(base):
    radi = _cohort(base)
    loader = _loader(radi)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    del it
    resumed = _loader(RadiObject(radi.uri))
    resumed.load_state_dict(state)  # warnings are errors here
    assert len(list(resumed)) == 3


# -- reading as of a version -----------------------------------------------------------------


def test_a_cohort_opened_at_a_version_reads_it_then(base):
    radi = _cohort(base)
    before = radi.versions()[-1]
    old_mask = radi.seg.volume("sub-000_seg").to_numpy()  # the newest, cached in this process
    _edit_and_grow(radi)

    then = RadiObject(radi.uri, at=before)
    assert then.at == before.timestamp
    assert then.obs_subject_ids == ["sub-000", "sub-001", "sub-002", "sub-003"]
    assert then.seg.obs_ids == ["sub-000_seg", "sub-001_seg", "sub-002_seg", "sub-003_seg"]
    np.testing.assert_array_equal(then.seg.volume("sub-000_seg").to_numpy(), old_mask)
    assert (RadiObject(radi.uri).seg.volume("sub-000_seg").read(EDIT) == 1).all()
    assert "as of" in repr(then)
    # the same version, given as a datetime, an ISO string or an int
    for at in (before.datetime, before.time, before.timestamp):
        assert RadiObject(radi.uri, at=at).n_subjects == 4
    # the foreground index of the version: the stored one (computed at ingest)
    assert set(then.seg.foreground()) == set(then.seg.obs_ids)

    written = [v.written for v in radi.versions() if v.timestamp > before.timestamp]
    flat = [w for names in written for w in names]
    assert "seg/sub-000_seg" in flat
    assert "obs_meta" in flat
    assert "seg/sub-new_seg" in flat


def test_a_dataset_at_a_version_reads_it_in_workers(base):
    radi = _cohort(base)
    before = radi.versions()[-1]
    _edit_and_grow(radi)
    then = RadiObject(radi.uri, at=before)
    ds = _loader(then).dataset
    copy = pickle.loads(pickle.dumps(ds))
    assert copy.data_version == before.timestamp
    reads = [r for r in copy.plan((0, 0)).reads if r.name == "mask"]
    assert reads
    assert all(r.uri.endswith(f"#at={before.timestamp}") for r in reads)
    mask = copy.mask.volume("sub-000_seg")
    assert mask.at == before.timestamp
    assert not (mask.read(EDIT) == 1).all()


def test_the_caches_never_serve_another_versions_bytes(base, tmp_path):
    radi = _cohort(base)
    before = radi.versions()[-1]
    vol = radi.seg.volume("sub-000_seg")
    old = vol.to_numpy()
    with configure(read=ReadConfig(local_tier_mb=16, local_tier_dir=str(tmp_path / "tier"))):
        radi.seg.warm_local_tier()
        at_before = versioned(vol.uri, before.timestamp)
        # the version with the newest's fragments shares its tier entry
        assert fragment_key(at_before, vol.ctx) == fragment_key(vol.uri, vol.ctx)
        vol.write_region(EDIT, np.ones(tuple(hi - lo for lo, hi in EDIT), np.uint8))
        newest = RadiObject(radi.uri).seg.volume("sub-000_seg")
        assert (newest.read(EDIT) == 1).all()  # RAM blocks and tier of the newest, refilled
        radi.seg.warm_local_tier()
        then = RadiObject(radi.uri, at=before).seg.volume("sub-000_seg")
        np.testing.assert_array_equal(then.to_numpy(), old)
        assert fragment_key(at_before, vol.ctx) != fragment_key(vol.uri, vol.ctx)
        assert tier_state().known_key(vol.uri) != tier_state().known_key(at_before)


# -- bad input ---------------------------------------------------------------------------------


def test_writes_at_a_version_are_refused(base):
    radi = _cohort(base)
    then = RadiObject(radi.uri, at=radi.versions()[-1])
    with pytest.raises(VersionError, match="read-only"):
        then.seg.volume("sub-000_seg").write_region(EDIT, np.ones((8, 8, 6), np.uint8))
    with pytest.raises(VersionError, match="read-only"):
        then.add_subject("sub-x", {"T1w": np.zeros(SHAPE)}, obs_meta={})
    with pytest.raises(VersionError, match="read-only"):
        then.add_collection("CT", radi.T1w, progress=False)
    with pytest.raises(VersionError, match="read-only"):
        then.obs_meta_table.write_rows(radi.obs_meta)


def test_a_resumed_loader_is_rebuilt_in_the_settings_it_was_built_in(tmp_path):
    import radiobject

    radi = _cohort(str(tmp_path))
    state = _loader(radi).state_dict()
    _edit_and_grow(radi)
    with radiobject.settings(read={"cache_mb": 7}):
        resumed = _loader(RadiObject(radi.uri))
    with pytest.warns(UserWarning, match="resuming reads"):
        resumed.load_state_dict(state)  # outside the block: the loader keeps its settings
    assert resumed.dataset.loader_scope is not None
    assert resumed.dataset.loader_scope[0].read.cache_mb == 7


def test_bad_versions_are_refused(base):
    radi = _cohort(base)
    with pytest.raises(VersionError, match="no version at or before"):
        RadiObject(radi.uri, at=dt.datetime(2001, 1, 1, tzinfo=dt.UTC))
    with pytest.raises(VersionError, match=">= 0"):
        RadiObject(radi.uri, at=-1)
    with pytest.raises(VersionError, match="ISO 8601"):
        RadiObject(radi.uri, at="yesterday")
    with pytest.raises(VersionError, match="got list"):
        RadiObject(radi.uri, at=[1])
    tomorrow = dt.datetime.now(tz=dt.UTC) + dt.timedelta(days=1)
    with pytest.raises(VersionError, match="in the future"):
        RadiObject(radi.uri, at=tomorrow)
    with pytest.raises(VersionError, match="in the future"):
        radi.T1w.as_of(tomorrow)
    with pytest.raises(VersionError, match="before <= after"):
        radi.diff(radi.versions()[-1], 0)


def test_add_subject_checks_its_input(base):
    radi = _cohort(base)
    row = radi.obs_meta.iloc[0].drop("obs_subject_id").to_dict()
    from radiobject import AlignmentError, AlreadyExistsError, IngestError

    history = radi.versions()

    with pytest.raises(AlreadyExistsError, match="subject 'sub-000' is already in"):
        radi.add_subject("sub-000", {"T1w": np.zeros(SHAPE)}, obs_meta=row)
    with pytest.raises(IngestError, match=r"no collection\(s\) \['CT'\]"):
        radi.add_subject("sub-x", {"CT": np.zeros(SHAPE)}, obs_meta=row)
    with pytest.raises(IngestError, match="missing"):
        radi.add_subject("sub-x", {"T1w": np.zeros(SHAPE)}, obs_meta={})
    with pytest.raises(AlignmentError, match="differ in shape"):
        radi.add_subject(
            "sub-x", {"T1w": np.zeros(SHAPE), "seg": np.zeros((4, 4, 4))}, obs_meta=row
        )
    assert radi.versions() == history  # nothing was written
    assert RadiObject(radi.uri).n_subjects == 4


def test_add_subject_run_again_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    from radiobject import AlreadyExistsError
    from radiobject.storage import Volume, exists

    radi = _cohort(str(tmp_path))
    row = radi.obs_meta.iloc[0].drop("obs_subject_id").to_dict()
    volumes = {"T1w": np.ones(SHAPE, np.float32), "seg": np.zeros(SHAPE, np.uint8)}
    radi.add_subject("sub-new", volumes, obs_meta=row)
    added = RadiObject(radi.uri).T1w.volume("sub-new_T1w")
    np.testing.assert_array_equal(added.to_numpy(), volumes["T1w"])  # written, and kept
    history = radi.versions()
    with pytest.raises(AlreadyExistsError, match="subject 'sub-new' is already in"):
        radi.add_subject("sub-new", volumes, obs_meta=row)
    assert radi.versions() == history
    assert RadiObject(radi.uri).seg.obs_ids.count("sub-new_seg") == 1

    # a volume that fails to write removes the ones written before it
    real = Volume.from_numpy.__func__
    made = []

    def second_fails(cls, uri, *args, **kwargs):
        if made:
            raise OSError("disk full")
        made.append(uri)
        return real(cls, uri, *args, **kwargs)

    monkeypatch.setattr(Volume, "from_numpy", classmethod(second_fails))
    with pytest.raises(OSError, match="disk full"):
        radi.add_subject("sub-two", volumes, obs_meta=row)
    monkeypatch.undo()
    assert len(made) == 1
    assert not exists(made[0], radi.ctx)
    assert radi.versions() == history

    # a subject whose volumes were written but not its obs_meta row (a run stopped
    # half-way): run again, it is refused, naming the volume, and nothing more is written
    table = type(radi.obs_meta_table)
    monkeypatch.setattr(table, "write_rows", _fails_on_obs_meta(table.write_rows))
    with pytest.raises(OSError, match="stopped"):
        radi.add_subject("sub-half", volumes, obs_meta=row)
    monkeypatch.undo()
    half = radi.versions()
    with pytest.raises(AlreadyExistsError, match="'sub-half_T1w' is already in collection"):
        radi.add_subject("sub-half", volumes, obs_meta=row)
    assert radi.versions() == half


def _fails_on_obs_meta(write_rows):
    def wrapped(self, frame):
        if self.uri.endswith("obs_meta"):
            raise OSError("stopped")
        return write_rows(self, frame)

    return wrapped


def test_version_table():
    frame = pd.DataFrame([Version(1767225600000, ("obs_meta",))])
    assert frame["timestamp"].tolist() == [1767225600000]


def test_consolidating_up_to_a_kept_version_keeps_it(tmp_path):
    """The README's recipe for dropping old versions keeps the ones a checkpoint records."""
    import tiledb

    radi = _cohort(str(tmp_path))
    vol = radi.seg.volume("sub-000_seg")
    vol.write_region(((0, 2), (0, 2), (0, 2)), np.full((2, 2, 2), 2, np.uint8))
    keep = radi.versions()[-1]
    kept = RadiObject(radi.uri, at=keep).seg.volume("sub-000_seg").to_numpy()
    vol.write_region(EDIT, np.ones((8, 8, 6), np.uint8))
    newest = vol.to_numpy()
    cfg = tiledb.Config(
        {"sm.consolidation.timestamp_start": 0, "sm.consolidation.timestamp_end": keep.timestamp}
    )
    before = len(tiledb.array_fragments(vol.uri))
    tiledb.consolidate(vol.uri, config=cfg)
    tiledb.vacuum(vol.uri)
    assert len(tiledb.array_fragments(vol.uri)) < before
    from radiobject.read import forget_array

    forget_array(vol.uri)
    at_keep = RadiObject(radi.uri, at=keep).seg.volume("sub-000_seg").to_numpy()
    np.testing.assert_array_equal(at_keep, kept)
    np.testing.assert_array_equal(RadiObject(radi.uri).seg.volume("sub-000_seg").to_numpy(), newest)


def test_dropping_versions_before_a_checkpoint_keeps_it_resumable(base):
    radi = _cohort(base)
    t1 = radi.T1w.volume("sub-000_T1w")
    t1.write_region(((0, 2), (0, 2), (0, 2)), np.full((2, 2, 2), 7.0, np.float32))
    early = radi.versions()[-1]  # a version no kept checkpoint records
    reference = [_hash(b) for b in _loader(radi)]
    loader = _loader(radi)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    del it
    _edit_and_grow(radi)
    newest = [_hash(b) for b in _loader(RadiObject(radi.uri))]
    before = len(tiledb_fragments(t1.uri, radi.ctx))

    assert radi.drop_versions_before(state["data_version"]) >= 1
    assert len(tiledb_fragments(t1.uri, radi.ctx)) < before  # merged, and the old deleted
    resumed = _loader(RadiObject(radi.uri))
    with pytest.warns(UserWarning, match="resuming reads"):
        resumed.load_state_dict(state)
    assert [_hash(b) for b in resumed] == reference[1:]  # the checkpoint's version, intact
    assert [_hash(b) for b in _loader(RadiObject(radi.uri))] == newest
    with pytest.raises(VersionError, match="were dropped"):
        RadiObject(radi.uri, at=early)
    with pytest.raises(VersionError, match="read-only"):
        RadiObject(radi.uri, at=state["data_version"]).drop_versions_before(early)


def tiledb_fragments(uri, ctx):
    import tiledb

    return tiledb.array_fragments(uri, ctx=ctx)


def test_obs_edits_are_versions_and_a_filter_that_now_selects_others_is_refused(base):
    radi = _cohort(base)
    meta = radi.obs_meta
    oldest = meta.sort_values("age")["obs_subject_id"].iloc[-1]
    cut = float(meta["age"].sort_values().iloc[-2])
    view = radi.filter(f"age <= {cut}")  # all but the oldest subject
    state = _loader(view).state_dict()

    edited = meta[meta["obs_subject_id"] == oldest].copy()
    edited["age"] = meta["age"].min()  # the oldest's age was a typo: now the filter has them
    radi.obs_meta_table.write_rows(edited)
    change = radi.diff(state["data_version"])
    assert change.subjects_changed == (oldest,)
    assert change.subjects_added == change.volumes_changed == change.obs_changed == ()

    resumed = _loader(RadiObject(radi.uri).filter(f"age <= {cut}"))
    assert len(resumed.dataset) == 8  # 4 volumes now
    dataset = resumed.dataset
    with pytest.raises(ConfigurationError, match="over other volumes than this loader reads"):
        resumed.load_state_dict(state)  # refused before anything changed: no rebuild, no warning
    assert resumed.dataset is dataset
    # the same filter on the cohort at the checkpoint's version selects what the run read
    same = _loader(RadiObject(radi.uri, at=state["data_version"]).filter(f"age <= {cut}"))
    same.load_state_dict(state)


def test_a_loader_at_a_version_gives_its_batches_in_worker_processes(tmp_path):
    radi = _cohort(str(tmp_path))
    reference = [_hash(b) for b in _loader(radi)]
    before = radi.versions()[-1]
    _edit_and_grow(radi)
    then = RadiObject(radi.uri, at=before)
    assert [_hash(b) for b in _loader(then, num_workers=2)] == reference


def test_the_browser_shows_a_version_and_writes_nothing(tmp_path):
    from radiobject.storage._history import commit_times
    from radiobject.widgets import CollectionBrowser

    radi = _cohort(str(tmp_path))
    before = radi.versions()[-1]
    radi.seg.volume("sub-000_seg").write_region(((0, 16), (0, 16), (0, 12)), np.ones(SHAPE))
    now = CollectionBrowser(RadiObject(radi.uri), collection="seg")
    assert now.wait_refined(60)  # stores a new coarse level of the edited mask
    level = radi.seg._coarse_uri("sub-000_seg")
    stored = commit_times(level, radi.seg.ctx)
    # at the version, the stored level (of the newest mask) is not the version's: it is
    # built in memory, never stored (a past version is read-only)
    then = CollectionBrowser(RadiObject(radi.uri, at=before), collection="seg")
    assert then.wait_refined(60)
    assert then.render() != now.render()  # sub-000's corrected mask shows in the newest only
    assert commit_times(level, radi.seg.ctx) == stored
