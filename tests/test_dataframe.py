"""Dataframe: the sparse TileDB table behind ``obs`` and ``obs_meta``."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from radiobject import AlreadyExistsError, Dataframe, FilterError, NotFoundError, RadiObjectError


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "obs_subject_id": ["s3", "s1", "s4", "s2", "s5"],
            "age": np.array([61, 34, 45, 72, 29], dtype=np.int64),
            "weight": [80.5, np.nan, 61.0, 90.25, 55.0],
            "smoker": [True, False, False, True, False],
            "sex": ["F", "M", "F", "M", "F"],
            "site": ["a b", "c's", "", "ü", "a b"],
        }
    )


@pytest.fixture
def table(tmp_path, frame) -> Dataframe:
    return Dataframe.from_pandas(tmp_path / "t", frame, index="obs_subject_id")


def ids(df: pd.DataFrame) -> list[str]:
    return df["obs_subject_id"].tolist()


def test_round_trip(table, frame):
    out = table.read()
    expected = frame.sort_values("obs_subject_id").reset_index(drop=True)
    assert out.columns.tolist() == frame.columns.tolist()
    assert ids(out) == ["s1", "s2", "s3", "s4", "s5"]  # sorted by key
    assert out["age"].dtype == np.int64
    assert out["weight"].dtype == np.float64
    assert out["smoker"].dtype == bool
    pd.testing.assert_frame_equal(out, expected, check_dtype=False)
    assert out["sex"].tolist() == expected["sex"].tolist()
    assert out["site"].tolist() == ["c's", "ü", "a b", "", "a b"]
    assert np.isnan(out.loc[0, "weight"])


def test_layout(table):
    assert table.index_column == "obs_subject_id"
    assert table.columns == ["obs_subject_id", "age", "weight", "smoker", "sex", "site"]
    assert len(table) == 5
    assert table.ids() == ["s1", "s2", "s3", "s4", "s5"]
    assert repr(table) == f"Dataframe({table.uri!r})"


def test_pickle(table):
    clone = pickle.loads(pickle.dumps(table))
    assert ids(clone.read(value_filter="age > 60")) == ["s2", "s3"]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("age > 40", ["s2", "s3", "s4"]),
        ("age > 40 and sex == 'F'", ["s3", "s4"]),
        ("age < 30 or age > 70", ["s2", "s5"]),
        ("(age > 40 and sex == 'M') or weight < 60", ["s2", "s5"]),
        ("weight >= 80.5", ["s2", "s3"]),
        ("smoker == 1", ["s2", "s3"]),
        ("sex != 'F'", ["s1", "s2"]),
        ("sex == 'X'", []),
        ("age in [29, 34]", ["s1", "s5"]),
        ("site == 'a b'", ["s3", "s5"]),
    ],
)
def test_value_filter(table, frame, expr, expected):
    assert ids(table.read(value_filter=expr)) == expected
    assert table.ids(expr) == expected


def test_value_filter_agrees_with_pandas(table, frame):
    out = table.read(value_filter="age > 40 and sex == 'F'")
    sel = frame[(frame.age > 40) & (frame.sex == "F")]
    assert ids(out) == sorted(sel["obs_subject_id"])
    assert out["age"].tolist() == sel.sort_values("obs_subject_id")["age"].tolist()


def test_columns(table):
    out = table.read(columns=["sex", "age"])
    assert out.columns.tolist() == ["obs_subject_id", "sex", "age"]
    assert out["age"].tolist() == [34, 72, 61, 45, 29]
    assert table.read(columns=["obs_subject_id", "age"]).columns.tolist() == [
        "obs_subject_id",
        "age",
    ]
    assert table.read(columns=[]).columns.tolist() == ["obs_subject_id"]


def test_ids(table):
    out = table.read(ids=["s4", "s1", "nobody"])
    assert ids(out) == ["s1", "s4"]
    assert out["age"].tolist() == [34, 45]
    assert ids(table.read(ids=["s4", "s1"], value_filter="sex == 'F'")) == ["s4"]
    empty = table.read(ids=[], columns=["age"])
    assert empty.columns.tolist() == ["obs_subject_id", "age"]
    assert len(empty) == 0


@pytest.mark.parametrize(
    "expr",
    [
        "age >",
        "nope > 3",
        "age > 40 and nope == 'x'",
        "__import__('os')",
        "__import__('os').system('touch hacked')",
        "import os",
        "age.__class__",
        "open('/etc/passwd')",
        "sex == 'F'; import os",
        "lambda: 1",
    ],
)
def test_invalid_filter(table, expr, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FilterError) as info:
        table.read(value_filter=expr)
    message = str(info.value)
    assert repr(expr) in message  # names the filter
    assert table.uri in message  # and the table
    assert "'age'" in message  # and lists the columns
    assert isinstance(info.value, ValueError)
    assert not (tmp_path / "hacked").exists()


def test_invalid_filter_on_unknown_column_names_it(table):
    with pytest.raises(FilterError, match=r"'nope'"):
        table.read(value_filter="nope > 3")


def test_filter_never_reaches_eval(table, monkeypatch):
    import builtins

    def no_eval(*args, **kwargs):
        raise AssertionError("eval was called")

    monkeypatch.setattr(builtins, "eval", no_eval)
    monkeypatch.setattr(pd.DataFrame, "query", no_eval)
    assert ids(table.read(value_filter="age > 60")) == ["s2", "s3"]
    with pytest.raises(FilterError):
        table.read(value_filter="__import__('os')")


def test_unknown_column(table):
    with pytest.raises(FilterError, match=r"column\(s\) \['height'\] not in table .*'age'"):
        table.read(columns=["age", "height"])


def test_duplicate_keys(tmp_path, frame):
    frame.loc[3, "obs_subject_id"] = "s1"
    with pytest.raises(RadiObjectError, match=r"duplicate obs_subject_id values \['s1'\]"):
        Dataframe.from_pandas(tmp_path / "t", frame, index="obs_subject_id")
    assert not (tmp_path / "t").exists()


def test_missing_key_column(tmp_path, frame):
    with pytest.raises(RadiObjectError, match="needs a column 'obs_id'"):
        Dataframe.from_pandas(tmp_path / "t", frame, index="obs_id")
    assert not (tmp_path / "t").exists()


def test_existing_uri(table, frame):
    with pytest.raises(AlreadyExistsError, match="already exists"):
        Dataframe.from_pandas(table.uri, frame, index="obs_subject_id")
    assert len(table) == 5


def test_missing_table(tmp_path):
    with pytest.raises(NotFoundError, match="nothing is stored there"):
        Dataframe(tmp_path / "nothing").read()


def test_empty_table(tmp_path):
    df = pd.DataFrame({"obs_id": pd.Series([], dtype=object), "x": pd.Series([], dtype=float)})
    table = Dataframe.from_pandas(tmp_path / "t", df, index="obs_id")
    assert table.columns == ["obs_id", "x"]
    assert len(table.read()) == 0
    assert table.ids("x > 1") == []


def test_integer_keys_become_strings(tmp_path):
    df = pd.DataFrame({"k": [10, 2], "v": [1.0, 2.0]})
    table = Dataframe.from_pandas(tmp_path / "t", df, index="k")
    assert table.read()["k"].tolist() == ["10", "2"]
    assert table.read(ids=["2"])["v"].tolist() == [2.0]


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (pd.array([1, None], dtype="Int64"), "integer column 'n' has missing values"),
        (pd.array([True, None], dtype="boolean"), "boolean column 'n' has missing values"),
    ],
)
def test_missing_values_in_int_or_bool_columns_leave_nothing(tmp_path, values, match):
    df = pd.DataFrame({"k": ["a", "b"], "n": values})
    with pytest.raises(RadiObjectError, match=match):
        Dataframe.from_pandas(tmp_path / "t", df, index="k")
    assert not (tmp_path / "t").exists()


def test_nullable_columns_without_missing_values(tmp_path):
    df = pd.DataFrame(
        {
            "k": ["a", "b"],
            "n": pd.array([1, 2], dtype="Int64"),
            "b": pd.array([True, False], dtype="boolean"),
            "c": pd.Categorical(["x", "y"]),
        }
    )
    out = Dataframe.from_pandas(tmp_path / "t", df, index="k").read()
    assert out["n"].tolist() == [1, 2]
    assert out["b"].tolist() == [True, False]
    assert out["c"].tolist() == ["x", "y"]
