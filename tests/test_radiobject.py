"""RadiObject: subjects (``obs_meta``) and their collections, views, summaries."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

import radiobject.storage._volume
from radiobject import (
    AlignmentError,
    IngestError,
    NotFoundError,
    OutOfBoundsError,
    RadiObject,
    TileDBStats,
    Volume,
    VolumeCollection,
)
from tests.conftest import SMALL

NAMES = ["FLAIR", "T1w", "seg"]


@pytest.fixture
def voxel_reads(monkeypatch) -> list[str]:
    """Record every voxel read (calls of the read path used by Volume)."""
    calls: list[str] = []
    real = radiobject.storage._volume.read_region

    def counting(uri, ctx, bounds):
        calls.append(uri)
        return real(uri, ctx, bounds)

    monkeypatch.setattr(radiobject.storage._volume, "read_region", counting)
    return calls


@pytest.fixture
def radi(sample_radi) -> RadiObject:
    """A fresh handle on the shared sample cohort (6 subjects), so caches start empty."""
    return RadiObject(sample_radi.uri)


def expected_ids(radi: RadiObject, mask: pd.Series) -> list[str]:
    meta = radi.obs_meta
    return meta.loc[mask(meta), "obs_subject_id"].tolist()


# --- subjects and collections ------------------------------------------------------------------


def test_collections(radi):
    assert radi.collection_names == NAMES
    assert radi.n_subjects == 6
    assert radi.obs_subject_ids == [f"sub-{i:03d}" for i in range(6)]
    for name in NAMES:
        by_attr, by_item, by_call = getattr(radi, name), radi[name], radi.collection(name)
        assert isinstance(by_attr, VolumeCollection)
        assert by_attr.uri == by_item.uri == by_call.uri
        assert by_attr.name == name
        assert by_attr.obs_subject_ids == radi.obs_subject_ids
        assert by_attr.shape == SMALL
    assert radi.seg.is_mask
    assert not radi.T1w.is_mask
    assert radi.T1w.obs_ids[0] == "sub-000_T1w"


def test_obs_meta(radi):
    meta = radi.obs_meta
    assert meta.columns.tolist() == ["obs_subject_id", "diagnosis", "age", "sex", "site", "grade"]
    assert set(meta["diagnosis"]) == {"tumour", "healthy"}
    assert set(meta["sex"]) <= {"F", "M"}
    assert meta["age"].dtype == np.int64
    assert meta["age"].between(22, 85).all()
    assert radi.obs_meta_table.columns == meta.columns.tolist()


def test_modalities_share_one_anatomy(radi):
    t1 = radi.T1w.loc["sub-000_T1w"].to_numpy()
    flair = radi.FLAIR.loc["sub-000_FLAIR"].to_numpy()
    seg = radi.seg.loc["sub-000_seg"].to_numpy()
    assert t1.shape == flair.shape == seg.shape == SMALL
    assert not np.array_equal(t1, flair)
    assert seg.dtype == np.uint8
    np.testing.assert_array_equal(radi.T1w.iloc[0].affine, radi.seg.iloc[0].affine)


@pytest.mark.parametrize("get", [lambda r: r.collection("T2w"), lambda r: r["T2w"]])
def test_unknown_collection(radi, get):
    with pytest.raises(NotFoundError, match=r"no collection 'T2w' .*\['FLAIR', 'T1w', 'seg'\]"):
        get(radi)


def test_unknown_collection_by_attribute(radi):
    with pytest.raises(AttributeError, match=r"'T2w'; collections are \['FLAIR', 'T1w', 'seg'\]"):
        radi.T2w  # noqa: B018
    assert not hasattr(radi, "T2w")
    assert not hasattr(radi, "_private_thing")


def test_tab_completion(radi):
    listing = dir(radi)
    assert set(NAMES) <= set(listing)
    assert "filter" in listing
    assert "obs_meta" in listing
    assert radi._ipython_key_completions_() == NAMES
    assert "T1w" not in dir(radi.select_collections(["seg"]))


# --- subject selection --------------------------------------------------------------------------


def test_iloc_and_loc(radi):
    one = radi.iloc[2]
    assert isinstance(one, RadiObject)
    assert one.obs_subject_ids == ["sub-002"]
    assert one.T1w.obs_ids == ["sub-002_T1w"]
    assert radi.iloc[-1].obs_subject_ids == ["sub-005"]
    assert radi.iloc[1:3].obs_subject_ids == ["sub-001", "sub-002"]
    assert radi.iloc[[4, 0]].obs_subject_ids == ["sub-004", "sub-000"]
    assert radi.loc["sub-003"].obs_subject_ids == ["sub-003"]
    view = radi.loc[["sub-004", "sub-001"]]
    assert view.obs_subject_ids == ["sub-004", "sub-001"]
    assert view.obs_meta["obs_subject_id"].tolist() == ["sub-004", "sub-001"]
    assert sorted(view.seg.obs_subject_ids) == ["sub-001", "sub-004"]
    assert view.n_subjects == 2


def test_a_radiobject_is_a_mapping_of_collections(radi):
    """len, in, iter, keys, values, items, [] and repr all speak of the same collections."""
    assert len(radi) == 3
    assert list(radi) == radi.keys() == NAMES
    assert [name for name, _ in radi.items()] == NAMES
    assert [c.name for c in radi.values()] == NAMES
    assert all(isinstance(c, VolumeCollection) for c in radi.values())
    for name in NAMES:
        assert name in radi
        assert radi[name].uri == radi.get(name).uri == dict(radi.items())[name].uri
        assert name in repr(radi)
    assert "3 collections" in repr(radi)
    assert list(dict(radi)) == NAMES  # dict() takes it as a mapping (keys() and [])
    # a missing name: `in` answers, [] raises NotFoundError naming what exists, get defaults
    for missing in ("T2w", "t1w", "", 0, None, ("T1w",)):
        assert missing not in radi
    with pytest.raises(NotFoundError, match=r"no collection 'T2w'.*\['FLAIR', 'T1w', 'seg'\]"):
        radi["T2w"]
    assert radi.get("T2w") is None
    assert radi.get("T2w", "none") == "none"
    # views agree too: collections of a collection view, subjects unchanged
    view = radi.select_collections(["seg"])
    assert (len(view), list(view), "T1w" in view, "seg" in view) == (1, ["seg"], False, True)
    assert view.n_subjects == radi.n_subjects == len(radi.obs_subject_ids) == 6
    few = radi.head(2)
    assert (len(few), list(few), few.n_subjects) == (3, NAMES, 2)
    empty = radi.select_collections([])
    assert (len(empty), list(empty), bool(empty)) == (0, [], False)


@pytest.mark.parametrize(
    ("get", "error", "match"),
    [
        (lambda r: r.loc["sub-999"], NotFoundError, r"no subject\(s\) \['sub-999'\]"),
        (lambda r: r.loc[["sub-001", "x"]], NotFoundError, r"\['x'\]"),
        (lambda r: r.iloc[6], OutOfBoundsError, r"position 6 out of range for 6 subjects"),
        (lambda r: r.iloc[-7], OutOfBoundsError, r"position -7"),
        (lambda r: r.sample(7), OutOfBoundsError, r"cannot sample 7 of 6 subjects"),
    ],
)
def test_bad_subject_lookup(radi, get, error, match):
    with pytest.raises(error, match=match):
        get(radi)


@pytest.mark.parametrize(
    ("expr", "mask"),
    [
        ("age > 40 and sex == 'F'", lambda m: (m.age > 40) & (m.sex == "F")),
        ("age > 40", lambda m: m.age > 40),
        (
            "diagnosis == 'healthy' or grade >= 3",
            lambda m: (m.diagnosis == "healthy") | (m.grade >= 3),
        ),
        ("age > 200", lambda m: m.age > 200),
    ],
)
def test_filter_equals_pandas(radi, expr, mask):
    expected = expected_ids(radi, mask)
    view = radi.filter(expr)
    assert view.obs_subject_ids == expected
    assert view.obs_meta["obs_subject_id"].tolist() == expected
    for name in NAMES:  # every collection of the view has only those subjects
        coll = view.collection(name)
        assert coll.obs_subject_ids == expected
        assert coll.obs_ids == [f"{s}_{name}" for s in expected]


def test_bad_filter(radi):
    from radiobject import FilterError

    with pytest.raises(FilterError, match=r"invalid filter 'weight > 3' .*'diagnosis'"):
        radi.filter("weight > 3")
    with pytest.raises(FilterError, match="__import__"):
        radi.filter("__import__('os').getcwd()")


def test_filter_finds_both_classes(radi):
    # the seeded cohort has subjects on both sides of the filters used above
    assert 0 < radi.filter("age > 40 and sex == 'F'").n_subjects < radi.n_subjects
    assert 0 < radi.filter("diagnosis == 'healthy'").n_subjects < radi.n_subjects


def test_filter_of_a_view_intersects(radi):
    view = radi.iloc[:3].filter("age > 40")
    expected = [
        s for s in expected_ids(radi, lambda m: m.age > 40) if s in radi.obs_subject_ids[:3]
    ]
    assert view.obs_subject_ids == expected


def test_collection_filter_on_obs_meta(radi):
    expected = expected_ids(radi, lambda m: m.age > 40)
    view = radi.T1w.filter("age > 40")
    assert view.obs_subject_ids == expected
    both = radi.T1w.filter("age > 40 and sex == 'F'")
    assert both.obs_subject_ids == expected_ids(radi, lambda m: (m.age > 40) & (m.sex == "F"))
    # obs columns still work, and a subject view's collection filters within the view
    assert radi.T1w.filter("obs_subject_id == 'sub-002'").obs_ids == ["sub-002_T1w"]
    head = radi.head(2).T1w.filter("age > 0")
    assert head.obs_subject_ids == ["sub-000", "sub-001"]


def test_collection_labels_from_obs_meta(radi):
    diag = radi.seg.column("diagnosis")
    meta = radi.obs_meta.set_index("obs_subject_id")["diagnosis"]
    assert diag.to_dict() == {f"{s}_seg": meta[s] for s in radi.obs_subject_ids}


def test_head_tail_sample(radi):
    assert radi.head(2).obs_subject_ids == ["sub-000", "sub-001"]
    assert radi.tail(2).obs_subject_ids == ["sub-004", "sub-005"]
    assert radi.tail(0).obs_subject_ids == []
    picked = radi.sample(3, seed=5)
    assert picked.obs_subject_ids == radi.sample(3, seed=5).obs_subject_ids
    assert picked.obs_subject_ids == sorted(picked.obs_subject_ids)
    assert picked.n_subjects == 3
    assert len({tuple(radi.sample(3, seed=s).obs_subject_ids) for s in range(10)}) > 1


def test_select_collections(radi):
    view = radi.select_collections(["seg", "T1w"])
    assert view.collection_names == ["T1w", "seg"]
    assert (len(view), view.n_subjects) == (2, 6)
    with pytest.raises(NotFoundError, match=r"FLAIR"):
        view.collection("FLAIR")
    assert radi.select_collections([]).collection_names == []
    with pytest.raises(NotFoundError, match=r"no collection\(s\) \['T2w'\]"):
        radi.select_collections(["T1w", "T2w"])
    assert radi.head(2).select_collections(["seg"]).seg.obs_subject_ids == ["sub-000", "sub-001"]


# --- summaries read no voxels --------------------------------------------------------------------


def test_describe(radi):
    table = radi.describe()
    assert table.index.tolist() == NAMES
    assert table["volumes"].tolist() == [6, 6, 6]
    assert table.loc["T1w", "shape"] == SMALL
    assert table.loc["seg", "dtype"] == "uint8"
    assert table.loc["T1w", "dtype"] == "float32"
    assert table["mask"].tolist() == [False, False, True]
    assert table.loc["FLAIR", "orientation"] == "RAS"
    assert radi.head(2).describe()["volumes"].tolist() == [2, 2, 2]


def test_repr(radi):
    text = repr(radi)
    assert text == f"<RadiObject (3 collections: FLAIR, T1w, seg; 6 subjects) at {radi.uri!r}>"
    assert "(view of 1 collection: T1w; 2 subjects)" in repr(
        radi.head(2).select_collections(["T1w"])
    )
    assert "(view of 1 collection: T1w; 6 subjects)" in repr(radi.select_collections(["T1w"]))
    assert "(view of 3 collections: FLAIR, T1w, seg; 1 subject)" in repr(radi.iloc[0])


def test_repr_html(radi):
    page = radi._repr_html_()
    assert "<table" in page
    assert "3 collections, 6 subjects" in page
    for name in NAMES:
        assert name in page
    assert "diagnosis" in page


def test_summaries_read_no_voxels(radi, voxel_reads):
    with TileDBStats() as stats:
        repr(radi)
        radi._repr_html_()
        radi.describe()
        repr(radi.filter("age > 40"))
        radi.filter("age > 40")._repr_html_()
        dir(radi)
    cache = stats.cache_stats()
    assert voxel_reads == []
    assert cache.hits + cache.misses == 0
    radi.T1w.iloc[0].axial(3)  # the counter does see reads
    assert len(voxel_reads) == 1


def test_html_escapes_the_uri(tmp_path):
    uri = tmp_path / "a<b>&c"
    arrays = {"s1": np.zeros((4, 4, 4), np.float32)}
    radi = RadiObject.from_collections(
        uri, {"CT": VolumeCollection.from_numpy(tmp_path / "CT", arrays)}, progress=False
    )
    page = radi._repr_html_()
    assert "a&lt;b&gt;&amp;c" in page
    assert "a<b>" not in page


# --- pickling ------------------------------------------------------------------------------------


def test_pickle(radi):
    view = radi.filter("age > 40").select_collections(["T1w"])
    clone = pickle.loads(pickle.dumps(view))
    assert clone.obs_subject_ids == view.obs_subject_ids
    assert clone.collection_names == ["T1w"]
    sid = view.obs_subject_ids[0]
    np.testing.assert_array_equal(
        clone.T1w.loc[f"{sid}_T1w"][4:8, 5, :], radi.T1w.loc[f"{sid}_T1w"][4:8, 5, :]
    )


# --- writing ------------------------------------------------------------------------------------


def test_write_a_view(radi, tmp_path):
    view = radi.filter("age > 40").select_collections(["T1w", "seg"])
    out = view.write(tmp_path / "copy")
    assert isinstance(out, RadiObject)
    assert out.collection_names == ["T1w", "seg"]
    assert out.obs_subject_ids == view.obs_subject_ids
    pd.testing.assert_frame_equal(out.obs_meta, view.obs_meta, check_dtype=False)
    assert out.seg.is_mask
    assert (tmp_path / "copy" / "collections" / "seg" / "fg_index").exists()
    for obs_id in out.T1w.obs_ids:
        np.testing.assert_array_equal(
            out.T1w.loc[obs_id].to_numpy(), radi.T1w.loc[obs_id].to_numpy()
        )
        np.testing.assert_array_equal(out.T1w.loc[obs_id].affine, radi.T1w.loc[obs_id].affine)
    reopened = RadiObject(tmp_path / "copy")
    assert reopened.filter("age > 40").obs_subject_ids == view.obs_subject_ids


def test_write_to_an_existing_target(radi, tmp_path):
    from radiobject import AlreadyExistsError

    (tmp_path / "taken").mkdir()
    with pytest.raises(AlreadyExistsError, match="already exists"):
        radi.head(1).write(tmp_path / "taken")
    assert list((tmp_path / "taken").iterdir()) == []  # left as it was


def test_from_collections(radi, tmp_path):
    out = RadiObject.from_collections(
        tmp_path / "new",
        {"MR": radi.T1w.head(3), "mask": radi.seg.head(3)},
        obs_meta=radi.obs_meta.iloc[:4],
        progress=False,
    )
    assert out.collection_names == ["MR", "mask"]
    assert out.obs_subject_ids == ["sub-000", "sub-001", "sub-002", "sub-003"]
    assert out.MR.obs_ids == ["sub-000_MR", "sub-001_MR", "sub-002_MR"]
    assert out.mask.is_mask
    np.testing.assert_array_equal(
        out.MR.loc["sub-001_MR"].to_numpy(), radi.T1w.loc["sub-001_T1w"].to_numpy()
    )
    assert out.obs_meta["age"].tolist() == radi.obs_meta["age"].tolist()[:4]


def test_from_collections_default_obs_meta(radi, tmp_path):
    out = RadiObject.from_collections(tmp_path / "new", {"T1w": radi.T1w.tail(2)}, progress=False)
    assert out.obs_meta.columns.tolist() == ["obs_subject_id"]
    assert out.obs_subject_ids == ["sub-004", "sub-005"]


def test_from_collections_misaligned(tmp_path):
    a = VolumeCollection.from_numpy(tmp_path / "a", {"s": np.zeros((8, 8, 8), np.float32)})
    b = VolumeCollection.from_numpy(tmp_path / "b", {"s": np.zeros((8, 8, 6), np.float32)})
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    c = VolumeCollection.from_numpy(
        tmp_path / "c", {"s": np.zeros((8, 8, 8), np.float32)}, affines={"s": shifted}
    )
    with pytest.raises(AlignmentError, match=r"subject 's'.*shape \(8, 8, 6\) vs \(8, 8, 8\)"):
        RadiObject.from_collections(tmp_path / "r", {"A": a, "B": b}, progress=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(AlignmentError, match=r"not on the same grid \(affine\)"):
        RadiObject.from_collections(tmp_path / "r", {"A": a, "C": c}, progress=False)
    assert not (tmp_path / "r").exists()
    out = RadiObject.from_collections(
        tmp_path / "r", {"A": a, "B": b}, validate_alignment=False, progress=False
    )
    assert out.B.shape == (8, 8, 6)


@pytest.fixture
def small_radi(tmp_path) -> RadiObject:
    arrays = {s: np.full((8, 8, 4), i, np.int16) for i, s in enumerate(["p1", "p2", "p3"])}
    meta = pd.DataFrame({"obs_subject_id": ["p1", "p2", "p3"], "age": [30, 50, 70]})
    ct = VolumeCollection.from_numpy(tmp_path / "src", arrays)
    return RadiObject.from_collections(tmp_path / "r", {"CT": ct}, obs_meta=meta, progress=False)


def test_add_collection(small_radi, tmp_path):
    pet = VolumeCollection.from_numpy(
        tmp_path / "pet", {"p1": np.ones((8, 8, 4), np.float32), "p3": np.ones((8, 8, 4)) * 3}
    )
    added = small_radi.add_collection("PET", pet, progress=False)
    assert added.obs_ids == ["p1_PET", "p3_PET"]
    assert small_radi.collection_names == ["CT", "PET"]
    assert small_radi.PET.loc["p3_PET"][0, 0, 0] == 3.0
    reopened = RadiObject(small_radi.uri)
    assert reopened.collection_names == ["CT", "PET"]
    assert reopened.filter("age > 60").PET.obs_ids == ["p3_PET"]


def test_add_collection_to_a_view(small_radi, tmp_path):
    view = small_radi.select_collections(["CT"]).loc[["p2", "p3"]]
    pet = VolumeCollection.from_numpy(
        tmp_path / "pet", {s: np.ones((8, 8, 4), np.float32) for s in ("p1", "p2")}
    )
    added = view.add_collection("PET", pet, progress=False)
    assert added.obs_ids == ["p2_PET"]  # restricted to the view's subjects
    assert view.collection_names == ["CT", "PET"]
    assert RadiObject(small_radi.uri).PET.obs_ids == ["p1_PET", "p2_PET"]


def test_add_collection_with_unknown_subject(small_radi, tmp_path):
    other = VolumeCollection.from_numpy(
        tmp_path / "o", {"p1": np.ones((8, 8, 4)), "stranger": np.ones((8, 8, 4))}
    )
    with pytest.raises(IngestError, match=r"subjects \['stranger'\] .* not in obs_meta"):
        small_radi.add_collection("PET", other, progress=False)
    assert small_radi.collection_names == ["CT"]
    assert not (tmp_path / "r" / "collections" / "PET").exists()
    assert RadiObject(small_radi.uri).collection_names == ["CT"]


def test_add_collection_with_a_taken_name(small_radi):
    with pytest.raises(IngestError, match=r"already has a collection 'CT'"):
        small_radi.add_collection("CT", small_radi.CT, progress=False)


# --- opening something that is not a RadiObject -------------------------------------------------


def test_open_what_is_not_a_radiobject(radi, tmp_path):
    with pytest.raises(NotFoundError, match="nothing is stored there"):
        RadiObject(tmp_path / "nothing")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("hello")
    with pytest.raises(NotFoundError, match="no RadiObject at"):
        RadiObject(tmp_path / "folder")
    Volume.from_numpy(tmp_path / "vol", np.zeros((4, 4, 4)))
    with pytest.raises(NotFoundError, match="is a TileDB array, not a RadiObject"):
        RadiObject(tmp_path / "vol")
    with pytest.raises(NotFoundError, match="holds a VolumeCollection, not a RadiObject"):
        RadiObject(radi.T1w.uri)
    with pytest.raises(FileNotFoundError):
        RadiObject(tmp_path / "nothing")
