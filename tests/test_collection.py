"""VolumeCollection: volumes of one kind with ``obs``; views that cost nothing."""

from __future__ import annotations

import inspect
import pickle

import numpy as np
import pandas as pd
import pytest

import radiobject.storage._volume
from radiobject import (
    FilterError,
    IngestError,
    NotFoundError,
    OutOfBoundsError,
    RadiObject,
    ShapeError,
    TileDBStats,
    Volume,
    VolumeCollection,
)
from tests.conftest import arange_volume

SHAPE = (16, 16, 12)
SUBJECTS = ["s0", "s1", "s2", "s3", "s4"]


def subject_array(i: int) -> np.ndarray:
    """Each subject's volume is an arange shifted by 10_000 * i: a read shows whose it is."""
    return arange_volume(SHAPE, "int32") + 10_000 * i


@pytest.fixture(scope="module")
def coll(tmp_path_factory) -> VolumeCollection:
    uri = tmp_path_factory.mktemp("coll") / "CT"
    obs = pd.DataFrame(
        {
            "obs_subject_id": SUBJECTS,
            "score": [0.5, 1.5, 2.5, 3.5, 4.5],
            "site": ["a", "b", "a", "b", "a"],
            "reads": np.array([3, 1, 4, 1, 5], dtype=np.int64),
            "qc_ok": [True, True, False, True, False],
        }
    )
    arrays = {s: subject_array(i) for i, s in enumerate(SUBJECTS)}
    return VolumeCollection.from_numpy(uri, arrays, obs=obs, spacing=(0.5, 0.5, 2.0))


@pytest.fixture
def voxel_reads(monkeypatch) -> list[tuple]:
    """Record every voxel read (calls of the read path used by Volume)."""
    calls: list[tuple] = []
    real = radiobject.storage._volume.read_region

    def counting(uri, ctx, bounds):
        calls.append((uri, bounds))
        return real(uri, ctx, bounds)

    monkeypatch.setattr(radiobject.storage._volume, "read_region", counting)
    return calls


def test_basics(coll):
    assert coll.name == "CT"
    assert not coll.is_mask
    assert not coll.is_view
    assert len(coll) == 5
    assert coll.obs_ids == [f"{s}_CT" for s in SUBJECTS]
    assert coll.obs_subject_ids == SUBJECTS
    assert "s2_CT" in coll
    assert "s2" not in coll
    assert repr(coll) == f"<VolumeCollection 'CT' (5 volumes) at {coll.uri!r}>"


def test_obs_columns(coll):
    obs = coll.obs
    assert obs.columns.tolist() == [
        "obs_id",
        "obs_subject_id",
        "volume",
        "shape",
        "spacing",
        "orientation",
        "dtype",
        "affine",
        "source",
        "score",
        "site",
        "reads",
        "qc_ok",
    ]
    row = obs.set_index("obs_id").loc["s3_CT"]
    assert row["obs_subject_id"] == "s3"
    assert row["shape"] == "16,16,12"
    assert row["spacing"] == "0.5,0.5,2"
    assert row["orientation"] == "RAS"
    assert row["dtype"] == "int32"
    assert row["source"] == "numpy"
    assert (row["score"], row["site"], row["reads"], row["qc_ok"]) == (3.5, "b", 1, True)
    np.testing.assert_array_equal(coll.volume_affine("s3_CT"), np.diag([0.5, 0.5, 2.0, 1.0]))
    assert coll.volume_shape("s3_CT") == SHAPE
    obs.loc[0, "site"] = "changed"  # obs is a copy
    assert coll.obs.loc[0, "site"] == "a"


def test_obs_columns_reads_only_what_it_is_asked(coll, monkeypatch):
    from radiobject import VolumeCollection
    from radiobject.storage._dataframe import Dataframe

    asked: list[list[str] | None] = []
    read = Dataframe.read

    def spy(self, columns=None, **kwargs):
        asked.append(None if columns is None else list(columns))
        return read(self, columns=columns, **kwargs)

    monkeypatch.setattr(Dataframe, "read", spy)
    fresh = VolumeCollection(coll.uri)
    part = fresh.obs_columns("obs_subject_id", "site")
    assert part.columns.tolist() == ["obs_id", "obs_subject_id", "site"]
    assert part.equals(coll.obs[["obs_id", "obs_subject_id", "site"]])
    assert fresh.obs_subject_ids == coll.obs_subject_ids  # served by the columns already read
    assert asked == [["obs_subject_id", "site"]]
    view = fresh.iloc[[3, 1]]
    assert view.obs_columns("site")["obs_id"].tolist() == ["s3_CT", "s1_CT"]
    assert view.obs_columns("site").equals(view.obs[["obs_id", "site"]])


def test_column_lookup(coll):
    assert coll.column("score").to_dict() == {
        f"{s}_CT": v for s, v in zip(SUBJECTS, [0.5, 1.5, 2.5, 3.5, 4.5], strict=True)
    }
    from radiobject import LabelError

    with pytest.raises(LabelError, match=r"no column 'age' .*available columns: \[.*'score'"):
        coll.column("age")


def test_iteration_yields_volumes_in_order(coll):
    vols = list(coll)
    assert all(isinstance(v, Volume) for v in vols)
    for i, vol in enumerate(vols):
        assert vol[0, 0, 0] == 10_000 * i


def test_iloc(coll):
    np.testing.assert_array_equal(coll.iloc[2].to_numpy(), subject_array(2))
    assert coll.iloc[-1][0, 0, 0] == 40_000
    assert coll.iloc[np.int64(1)][0, 0, 1] == 10_001
    view = coll.iloc[1:4]
    assert view.is_view
    assert view.obs_ids == ["s1_CT", "s2_CT", "s3_CT"]
    assert coll.iloc[::2].obs_ids == ["s0_CT", "s2_CT", "s4_CT"]
    assert coll.iloc[[4, 0, -2]].obs_ids == ["s4_CT", "s0_CT", "s3_CT"]
    assert view.iloc[0][0, 0, 0] == 10_000  # positions are the view's own


def test_loc(coll):
    vol = coll.loc["s4_CT"]
    np.testing.assert_array_equal(vol[3:5, 1, 2:4], subject_array(4)[3:5, 1, 2:4])
    view = coll.loc[["s3_CT", "s1_CT"]]
    assert view.obs_ids == ["s3_CT", "s1_CT"]
    assert view.obs_subject_ids == ["s3", "s1"]
    assert view.obs["score"].tolist() == [3.5, 1.5]


@pytest.mark.parametrize(
    ("get", "error", "match"),
    [
        (lambda c: c.loc["s9_CT"], NotFoundError, r"no volume 's9_CT' in collection 'CT'"),
        (lambda c: c.loc[["s1_CT", "zz"]], NotFoundError, r"no volume 'zz'"),
        (lambda c: c.loc["s1"], NotFoundError, r"no volume 's1' .*similar ids: \['s1_CT'\]"),
        (lambda c: c.iloc[5], OutOfBoundsError, r"position 5 is out of range .* of 5 volumes"),
        (lambda c: c.iloc[-6], OutOfBoundsError, r"position -6 is out of range"),
        (lambda c: c.iloc[[0, 7]], OutOfBoundsError, r"position 7 is out of range"),
        (lambda c: c.sample(6), OutOfBoundsError, r"cannot sample 6 of 5 volumes"),
    ],
)
def test_bad_lookups(coll, get, error, match):
    with pytest.raises(error, match=match):
        get(coll)


def test_missing_id_is_also_a_builtin_error(coll):
    with pytest.raises(FileNotFoundError, match="no volume 'nope'"):
        coll.loc["nope"]
    with pytest.raises(IndexError, match="position 99 is out of range"):
        coll.iloc[99]


def test_shape_and_uniformity(coll, tmp_path):
    assert coll.shape == SHAPE
    assert coll.is_uniform
    assert coll.shapes == [SHAPE] * 5
    mixed = VolumeCollection.from_numpy(
        tmp_path / "mixed",
        {"a": np.zeros((8, 8, 8), np.float32), "b": np.ones((8, 8, 9), np.float32)},
    )
    assert mixed.shape is None
    assert not mixed.is_uniform
    assert mixed.shapes == [(8, 8, 8), (8, 8, 9)]
    assert mixed.head(1).shape == (8, 8, 8)  # a view of one shape is uniform
    assert mixed.head(1).is_uniform


def test_head_tail_sample(coll):
    assert coll.head(2).obs_ids == ["s0_CT", "s1_CT"]
    assert coll.tail(2).obs_ids == ["s3_CT", "s4_CT"]
    assert coll.head().obs_ids == coll.obs_ids  # default 5
    assert coll.tail(0).obs_ids == []
    picked = coll.sample(3, seed=42)
    assert len(picked) == 3
    assert picked.obs_ids == coll.sample(3, seed=42).obs_ids  # deterministic
    assert picked.obs_ids == [i for i in coll.obs_ids if i in picked.obs_ids]  # in order
    draws = {tuple(coll.sample(3, seed=s).obs_ids) for s in range(10)}
    assert len(draws) > 1  # the seed matters


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("score > 2", ["s2", "s3", "s4"]),
        ("score > 2 and site == 'a'", ["s2", "s4"]),
        ("site == 'b' or reads >= 5", ["s1", "s3", "s4"]),
        ("qc_ok == 1", ["s0", "s1", "s3"]),
        ("obs_subject_id == 's3'", ["s3"]),
        ("shape == '16,16,12'", SUBJECTS),
        ("score > 100", []),
    ],
)
def test_filter_on_obs(coll, expr, expected):
    view = coll.filter(expr)
    assert view.is_view
    assert view.obs_subject_ids == expected
    assert view.obs_ids == [f"{s}_CT" for s in expected]


def test_filter_of_a_view_intersects(coll):
    view = coll.iloc[1:4].filter("site == 'a'")
    assert view.obs_ids == ["s2_CT"]
    assert coll.filter("site == 'a'").filter("score < 3").obs_ids == ["s0_CT", "s2_CT"]
    assert coll.tail(2).filter("score < 3").obs_ids == []


def test_bad_filter(coll):
    with pytest.raises(FilterError, match=r"invalid filter 'age > 3'"):
        coll.filter("age > 3")
    with pytest.raises(FilterError, match="__import__"):
        coll.filter("__import__('os').system('true')")


def test_views_read_no_voxels(coll, voxel_reads):
    with TileDBStats() as stats:
        views = [
            coll.head(3),
            coll.tail(2),
            coll.sample(2, seed=1),
            coll.iloc[1:3],
            coll.iloc[[0, 2]],
            coll.loc[["s1_CT"]],
            coll.filter("score > 1"),
            coll.filter("score > 1").head(1),
        ]
        summary = [(len(v), v.shape, v.obs_ids, repr(v)) for v in views]
        vol = coll.iloc[0]  # a Volume handle is lazy too
    cache = stats.cache_stats()
    assert voxel_reads == []
    assert cache.hits + cache.misses == 0
    assert [s[0] for s in summary] == [3, 2, 2, 2, 2, 1, 4, 1]
    vol.axial(0)  # the counter works: a real read is seen
    assert len(voxel_reads) == 1
    assert voxel_reads[0][0] == vol.uri


def test_write_a_view(coll, tmp_path):
    view = coll.filter("site == 'a'").iloc[[2, 0]]  # s4, s0
    out = view.write(tmp_path / "copy")
    assert not out.is_view
    assert out.name == "CT"
    assert out.uri == str(tmp_path / "copy")
    assert sorted(out.obs_ids) == ["s0_CT", "s4_CT"]
    for obs_id in ("s0_CT", "s4_CT"):
        np.testing.assert_array_equal(out.loc[obs_id].to_numpy(), coll.loc[obs_id].to_numpy())
        np.testing.assert_array_equal(out.volume_affine(obs_id), coll.volume_affine(obs_id))
    user = ["obs_id", "score", "site", "reads", "qc_ok"]
    expected = coll.obs[user].set_index("obs_id").loc[["s0_CT", "s4_CT"]]
    got = out.obs[user].set_index("obs_id").loc[["s0_CT", "s4_CT"]]
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert got["reads"].dtype == np.int64
    assert got["qc_ok"].dtype == bool
    # standalone: the copy reads its own arrays, not the source's
    assert out.loc["s0_CT"].uri.startswith(str(tmp_path / "copy"))
    reopened = VolumeCollection(tmp_path / "copy")
    assert len(reopened) == 2
    assert reopened.loc["s4_CT"][0, 0, 0] == 40_000


def test_write_whole_collection_and_existing_target(coll, tmp_path):
    out = coll.write(tmp_path / "copy")
    assert out.obs_ids == coll.obs_ids
    from radiobject import AlreadyExistsError

    with pytest.raises(AlreadyExistsError):
        coll.head(1).write(tmp_path / "copy")
    assert len(VolumeCollection(tmp_path / "copy")) == 5


def test_write_an_empty_view_leaves_nothing(coll, tmp_path):
    from radiobject import RadiObjectError

    with pytest.raises(RadiObjectError, match="empty view"):
        coll.filter("score > 100").write(tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_pickle_collection_and_view(coll):
    clone = pickle.loads(pickle.dumps(coll))
    assert clone.obs_ids == coll.obs_ids
    assert clone.iloc[3][0, 0, 0] == 30_000
    view = coll.filter("score > 1").iloc[1:3]
    vclone = pickle.loads(pickle.dumps(view))
    assert vclone.is_view
    assert vclone.obs_ids == ["s2_CT", "s3_CT"]
    np.testing.assert_array_equal(vclone.loc["s2_CT"][1:3, 2, :], subject_array(2)[1:3, 2, :])
    assert vclone.filter("site == 'b'").obs_ids == ["s3_CT"]


def test_open_by_uri(coll, tmp_path):
    again = VolumeCollection(coll.uri + "/")
    assert again.uri == coll.uri
    assert again.obs_ids == coll.obs_ids
    with pytest.raises(NotFoundError, match="nothing is stored there"):
        VolumeCollection(tmp_path / "nothing").obs_ids  # noqa: B018
    Volume.from_numpy(tmp_path / "vol", np.zeros((4, 4, 4)))
    with pytest.raises(NotFoundError, match="is a TileDB array, not a VolumeCollection"):
        VolumeCollection(tmp_path / "vol").name  # noqa: B018


# --- constructors -----------------------------------------------------------------------------


def test_from_numpy_list_and_affines(tmp_path):
    affines = [np.diag([2.0, 2.0, 2.0, 1.0]), np.diag([-1.0, -1.0, 1.0, 1.0])]
    arrays = [arange_volume((8, 8, 4), "float32"), arange_volume((8, 8, 4), "float32") * 2]
    c = VolumeCollection.from_numpy(tmp_path / "MR", arrays, affines=affines, name="T2w")
    assert c.name == "T2w"
    assert c.obs_ids == ["sub-000_T2w", "sub-001_T2w"]
    assert c.obs["orientation"].tolist() == ["RAS", "LPS"]
    assert c.iloc[1].orientation == "LPS"
    np.testing.assert_array_equal(c.iloc[1].affine, affines[1])
    np.testing.assert_array_equal(c.iloc[1].to_numpy(), arrays[1])


def test_from_volumes(tmp_path):
    a = Volume.from_numpy(tmp_path / "a", arange_volume((8, 8, 4), "int16"), spacing=(1, 1, 3))
    b = Volume.from_numpy(tmp_path / "b", arange_volume((8, 8, 4), "int16") + 5)
    c = VolumeCollection.from_volumes(tmp_path / "c", {"pa": a, "pb": b}, name="CT")
    assert c.obs_ids == ["pa_CT", "pb_CT"]
    assert c.obs["source"].tolist() == [a.uri, b.uri]
    assert c.loc["pa_CT"].spacing == (1.0, 1.0, 3.0)
    np.testing.assert_array_equal(c.loc["pb_CT"].to_numpy(), b.to_numpy())


CONSTRUCTORS = [
    VolumeCollection.from_numpy,
    VolumeCollection.from_volumes,
    VolumeCollection.from_niftis,
    VolumeCollection.from_dicoms,
    RadiObject.from_images,
    RadiObject.from_collections,
    RadiObject.add_collection,
]


@pytest.mark.parametrize("method", CONSTRUCTORS, ids=lambda m: m.__qualname__)
def test_constructor_signatures_are_written_out(method):
    """No ``**kwargs``: every parameter is typed and described in the docstring's Args."""
    params = [p for p in inspect.signature(method).parameters.values() if p.name != "self"]
    assert not [p for p in params if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    args = (method.__doc__ or "").split("Args:")[1]
    for p in params:
        assert p.annotation is not inspect.Parameter.empty, p.name
        assert f"\n            {p.name}: " in args, f"{p.name} is not described"
    assert ">>> " in method.__doc__


@pytest.mark.parametrize(
    ("make", "wrong"),
    [
        (lambda uri, a: VolumeCollection.from_numpy(uri, a, spacings=(1, 1, 1)), "spacings"),
        (lambda uri, a: VolumeCollection.from_numpy(uri, a, mask=True), "mask"),
        (lambda uri, a: VolumeCollection.from_volumes(uri, {}, spacing=(1, 1, 1)), "spacing"),
        (lambda uri, a: VolumeCollection.from_niftis(uri, ".", fmt="dicom"), "fmt"),
        (lambda uri, a: VolumeCollection.from_dicoms(uri, ".", affines=None), "affines"),
        (lambda uri, a: RadiObject.from_images(uri, {"CT": "."}, mask=["CT"]), "mask"),
    ],
)
def test_constructors_reject_unknown_keywords(tmp_path, make, wrong):
    with pytest.raises(TypeError, match=f"unexpected keyword argument '{wrong}'"):
        make(tmp_path / "c", {"a": np.zeros((4, 4, 3))})
    assert not (tmp_path / "c").exists()


def test_from_numpy_reserved_obs_column(tmp_path):
    obs = pd.DataFrame({"obs_subject_id": ["a"], "volume": [12.5]})
    with pytest.raises(IngestError, match=r"obs columns \['volume'\] are filled in by radiobject"):
        VolumeCollection.from_numpy(tmp_path / "c", {"a": np.zeros((4, 4, 4))}, obs=obs)
    assert not (tmp_path / "c").exists()


def test_from_numpy_obs_needs_subject_column(tmp_path):
    obs = pd.DataFrame({"subject": ["a"], "x": [1]})
    with pytest.raises(IngestError, match="obs_subject_id"):
        VolumeCollection.from_numpy(tmp_path / "c", {"a": np.zeros((4, 4, 4))}, obs=obs)
    assert not (tmp_path / "c").exists()


def test_from_numpy_bad_array_leaves_nothing(tmp_path):
    arrays = {"a": np.zeros((4, 4, 4)), "b": np.zeros((4, 4))}
    with pytest.raises(ShapeError, match=r"got shape \(4, 4\)"):
        VolumeCollection.from_numpy(tmp_path / "c", arrays)
    assert not (tmp_path / "c").exists()


# --- masks and the foreground index -----------------------------------------------------------


def sphere_mask(shape, center, radius, label=1) -> np.ndarray:
    grid = np.indices(shape)
    dist = sum((g - c) ** 2 for g, c in zip(grid, center, strict=True))
    return np.where(dist <= radius**2, label, 0).astype(np.uint8)


@pytest.fixture
def masks() -> dict[str, np.ndarray]:
    a = sphere_mask(SHAPE, (5, 6, 4), 3)
    a[12, 13, 9] = 2  # a second label
    b = sphere_mask(SHAPE, (10, 8, 6), 2, label=3)
    return {"a": a, "b": b, "empty": np.zeros(SHAPE, np.uint8)}


def points_of(fg, label=None) -> set[tuple[int, ...]]:
    pts = fg.all_points() if label is None else fg.points[label]
    return {tuple(p) for p in pts.tolist()}


def test_mask_foreground_is_indexed_at_ingest(tmp_path, masks, voxel_reads):
    seg = VolumeCollection.from_numpy(tmp_path / "seg", masks, is_mask=True)
    assert seg.is_mask
    assert (tmp_path / "seg" / "fg_index").exists()
    voxel_reads.clear()
    fg = VolumeCollection(tmp_path / "seg").foreground()
    assert voxel_reads == []  # the stored index is read, never the masks
    assert set(fg) == {"a_seg", "b_seg", "empty_seg"}
    for sid, mask in masks.items():
        entry = fg[f"{sid}_seg"]
        assert points_of(entry) == {tuple(p) for p in np.argwhere(mask).tolist()}
        labels = sorted(int(v) for v in np.unique(mask) if v)
        assert entry.labels == labels
        assert entry.counts == {k: int((mask == k).sum()) for k in labels}
    assert points_of(fg["a_seg"], 2) == {(12, 13, 9)}
    assert fg["empty_seg"].all_points().shape == (0, 3)


def test_mask_is_guessed_from_the_name(tmp_path, masks):
    seg = VolumeCollection.from_numpy(tmp_path / "seg", masks)
    assert seg.is_mask
    ct = VolumeCollection.from_numpy(tmp_path / "CT", {"a": arange_volume(SHAPE, "float32")})
    assert not ct.is_mask


def test_foreground_computed_on_first_use_and_stored(tmp_path, masks, voxel_reads):
    coll = VolumeCollection.from_numpy(tmp_path / "lbl", masks, is_mask=False)
    assert not (tmp_path / "lbl" / "fg_index").exists()
    fg = coll.foreground()
    assert len(voxel_reads) == 3  # each mask read once
    assert points_of(fg["b_lbl"]) == {tuple(p) for p in np.argwhere(masks["b"]).tolist()}
    again = coll.foreground()  # the stored index, read again (a mask edited since shows)
    assert len(voxel_reads) == 3
    assert points_of(again["b_lbl"]) == points_of(fg["b_lbl"])
    voxel_reads.clear()
    again = VolumeCollection(tmp_path / "lbl").foreground()  # a new object, e.g. in a worker
    assert voxel_reads == []
    assert points_of(again["a_lbl"]) == points_of(fg["a_lbl"])


def test_foreground_of_a_view(tmp_path, masks):
    seg = VolumeCollection.from_numpy(tmp_path / "seg", masks, is_mask=True)
    fg = seg.loc[["b_seg"]].foreground()
    assert list(fg) == ["b_seg"]
    assert fg["b_seg"].labels == [3]


def test_foreground_sample_is_bounded(tmp_path):
    from radiobject.storage._foreground import MAX_POINTS

    big = np.ones((20, 20, 20), np.uint8)
    seg = VolumeCollection.from_numpy(tmp_path / "seg", {"a": big}, is_mask=True)
    entry = seg.foreground()["a_seg"]
    assert entry.counts == {1: 8000}
    assert len(entry.points[1]) == MAX_POINTS
    assert len(points_of(entry)) == MAX_POINTS  # distinct voxels
    assert entry.points[1].min() >= 0
    assert entry.points[1].max() <= 19
