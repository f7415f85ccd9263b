"""A table stored as a sparse TileDB array keyed by one string column.

``obs`` (one row per volume, key ``obs_id``) and ``obs_meta`` (one row per subject, key
``obs_subject_id``) are both :class:`Dataframe`. Filters are TileDB QueryConditions, parsed
by TileDB: ``"age > 40 and sex == 'F'"``. Nothing reaches ``eval`` or ``pandas.query``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tiledb

from radiobject._context import get_tiledb_ctx, local_ctx, portable_ctx, unpickled_ctx
from radiobject._errors import (
    AlreadyExistsError,
    FilterError,
    NotFoundError,
    RadiObjectError,
    S3Error,
    VersionError,
)
from radiobject._tiledb_errors import tiledb_errors, translate_tiledb_error

__all__ = ["Dataframe"]


def _column_kind(series: pd.Series) -> tuple[str, Any]:
    """(kind, tiledb dtype) of a pandas column: int, float, bool or str."""
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "bool", np.uint8
    if pd.api.types.is_integer_dtype(dtype):
        return "int", np.int64
    if pd.api.types.is_float_dtype(dtype):
        return "float", np.float64
    return "str", str


def _encode(series: pd.Series, kind: str) -> np.ndarray:
    if kind in ("bool", "int") and series.isna().any():
        what = "boolean" if kind == "bool" else "integer"
        raise RadiObjectError(
            f"{what} column {series.name!r} has missing values; fill them or use floats"
        )
    if kind == "bool":
        return series.to_numpy(dtype=np.uint8)
    if kind == "int":
        return series.to_numpy(dtype=np.int64)
    if kind == "float":
        return series.to_numpy(dtype=np.float64)
    return np.array(["" if pd.isna(v) else str(v) for v in series], dtype=object)


def _decode(values: np.ndarray, kind: str) -> np.ndarray:
    if kind == "bool":
        return values.astype(bool)
    if kind == "str":
        return np.array(
            [v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object
        )
    return values


class Dataframe:
    """A table on disk, indexed by a string key column.

    >>> import pandas as pd, tempfile, os
    >>> uri = os.path.join(tempfile.mkdtemp(), "t")
    >>> df = pd.DataFrame({"obs_subject_id": ["a", "b"], "age": [30, 61]})
    >>> table = Dataframe.from_pandas(uri, df, index="obs_subject_id")
    >>> table.read(value_filter="age > 40")["obs_subject_id"].tolist()
    ['b']
    """

    def __init__(
        self, uri: str | Path, ctx: tiledb.Ctx | None = None, *, at: int | None = None
    ) -> None:
        self.uri = str(uri)
        self._ctx = ctx
        self._at = at  # a TileDB timestamp (ms): read as of then; None: the newest
        self._schema: tuple[str, dict[str, str]] | None = None

    @property
    def ctx(self) -> tiledb.Ctx:
        """The TileDB context in use."""
        return local_ctx(self._ctx)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "_ctx": portable_ctx(self._ctx),
            "_at": self._at,
            "_schema": self._schema,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _ctx=unpickled_ctx(state["_ctx"]))

    def __repr__(self) -> str:
        at = "" if self._at is None else f", at={self._at}"
        return f"Dataframe({self.uri!r}{at})"

    @property
    def at(self) -> int | None:
        """The version read (a TileDB timestamp in ms), or None for the newest."""
        return self._at

    def _open(self) -> tiledb.Array:
        when = None if self._at is None else (0, self._at)
        return tiledb.open(self.uri, ctx=self.ctx, timestamp=when)

    def _layout(self, opened: tiledb.Array | None = None) -> tuple[str, dict[str, str]]:
        if self._schema is None:
            if opened is not None:
                self._schema = _layout_of(opened)
            else:
                uri = self.uri
                with tiledb_errors(uri, "open table"), self._open() as a:
                    self._schema = _layout_of(a)
        return self._schema

    @property
    def index_column(self) -> str:
        """The key column (``obs_id`` or ``obs_subject_id``)."""
        return self._layout()[0]

    @property
    def columns(self) -> list[str]:
        """Column names, key first."""
        index, kinds = self._layout()
        return [index, *kinds]

    def read(
        self,
        columns: Sequence[str] | None = None,
        value_filter: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Rows as a pandas DataFrame (key column first, rows sorted by key).

        Args:
            columns: columns to read (default all); the key column is always included.
            value_filter: a TileDB QueryCondition such as ``"age > 40 and sex == 'F'"``.
            ids: only these keys.
        """
        try:
            with self._open() as arr:
                index, kinds = self._layout(arr)  # one open for the layout and the rows
                wanted = [c for c in (list(kinds) if columns is None else columns) if c != index]
                unknown = [c for c in wanted if c not in kinds]
                if unknown:
                    raise FilterError(
                        f"column(s) {unknown} not in table {self.uri!r}; columns are {self.columns}"
                    )
                if ids is not None and len(ids) == 0:
                    return pd.DataFrame({c: pd.Series([], dtype=object) for c in [index, *wanted]})
                # in the array's own context: TileDB-Py's query would otherwise build its
                # process-wide default context (4 idle threads, and a user's later
                # tiledb.default_ctx(config) would raise "Global context already initialized")
                with tiledb.scope_ctx(arr.ctx):
                    query = arr.query(attrs=wanted, dims=[index], cond=value_filter or None)
                    raw = query.multi_index[list(ids)] if ids is not None else query[:]
        except tiledb.TileDBError as e:
            storage = translate_tiledb_error(e, self.uri, "read table")
            if value_filter and not isinstance(storage, (S3Error, NotFoundError)):
                first = str(e).splitlines()[0].replace("TileDBError: ", "")
                raise FilterError(
                    f"invalid filter {value_filter!r} on {self.uri!r}: {first}. Filters compare "
                    f"columns {self.columns} with values, joined by 'and'/'or'"
                ) from e
            raise storage from e
        data = {index: _decode(raw[index], "str")}
        for c in wanted:
            data[c] = _decode(raw[c], kinds[c])
        return pd.DataFrame(data).sort_values(index, kind="stable").reset_index(drop=True)

    def ids(self, value_filter: str | None = None) -> list[str]:
        """Keys of the rows matching ``value_filter`` (all by default), sorted."""
        return self.read(columns=[], value_filter=value_filter)[self.index_column].tolist()

    def __len__(self) -> int:
        return len(self.ids())

    def write_rows(self, df: pd.DataFrame) -> None:
        """Add rows, or replace the rows of keys already there (one write: one version).

        ``df`` has the key column and every column of the table (:attr:`columns`); a row
        whose key is stored replaces it (TileDB keeps the newest write of a key), and a read
        at an earlier version still sees the row it replaced.

        >>> import pandas as pd, tempfile, os
        >>> df = pd.DataFrame({"obs_subject_id": ["a"], "age": [30]})
        >>> table = Dataframe.from_pandas(os.path.join(tempfile.mkdtemp(), "t"), df,
        ...                               index="obs_subject_id")
        >>> table.write_rows(pd.DataFrame({"obs_subject_id": ["a", "b"], "age": [31, 40]}))
        >>> table.read()["age"].tolist()
        [31, 40]

        Raises:
            VersionError: the table was opened at a past version.
            RadiObjectError: a column is missing or unknown, or a key repeats.
        """
        if self._at is not None:
            raise VersionError(
                f"table {self.uri!r} is open at version {self._at}, read-only; open it at the "
                "newest version (no at=) to write"
            )
        index, kinds = self._layout()
        given = set(df.columns)
        missing, unknown = sorted({index, *kinds} - given), sorted(given - {index, *kinds})
        if missing or unknown:
            raise RadiObjectError(
                f"rows for table {self.uri!r} need exactly its columns {self.columns}; "
                f"missing {missing}, unknown {unknown}"
            )
        keys = df[index].astype(str)
        if keys.duplicated().any():
            raise RadiObjectError(
                f"duplicate {index} values {sorted(set(keys[keys.duplicated()]))[:5]} in rows "
                f"for {self.uri!r}"
            )
        values = {name: _encode(df[name], kind) for name, kind in kinds.items()}
        if not len(df):
            return
        with (
            tiledb_errors(self.uri, "write table rows"),
            tiledb.open(self.uri, mode="w", ctx=self.ctx) as arr,
        ):
            arr[keys.to_numpy(dtype=object).astype(str)] = values

    @classmethod
    def from_pandas(
        cls, uri: str | Path, df: pd.DataFrame, *, index: str, ctx: tiledb.Ctx | None = None
    ) -> Dataframe:
        """Write ``df`` as a new table at ``uri`` keyed by column ``index`` (unique)."""
        uri = str(uri)
        given, ctx = ctx, ctx or get_tiledb_ctx()
        if index not in df.columns:
            raise RadiObjectError(f"table for {uri!r} needs a column {index!r}")
        keys = df[index].astype(str)
        if keys.duplicated().any():
            dupes = sorted(set(keys[keys.duplicated()]))[:5]
            raise RadiObjectError(f"duplicate {index} values {dupes} in table for {uri!r}")
        kinds = {str(c): _column_kind(df[c]) for c in df.columns if c != index}
        # encode before anything is written, so a bad column leaves nothing behind
        values = {name: _encode(df[name], kind) for name, (kind, _) in kinds.items()}
        attrs = [
            tiledb.Attr(
                name,
                dtype=dt,
                var=dt is str,
                filters=tiledb.FilterList([tiledb.ZstdFilter(ctx=ctx)], ctx=ctx),
                ctx=ctx,
            )
            for name, (_, dt) in kinds.items()
        ]
        dom = tiledb.Domain(
            tiledb.Dim(name=index, domain=(None, None), tile=None, dtype="ascii", ctx=ctx), ctx=ctx
        )
        with tiledb_errors(uri, "write table"):
            taken = tiledb.object_type(uri, ctx=ctx) is not None
        if taken:
            raise AlreadyExistsError(f"{uri!r} already exists; write the table to a new URI")
        with tiledb_errors(uri, "write table"):
            schema = tiledb.ArraySchema(
                domain=dom, attrs=attrs, sparse=True, allows_duplicates=False, ctx=ctx
            )
            tiledb.Array.create(uri, schema, ctx=ctx)
            with tiledb.open(uri, mode="w", ctx=ctx) as arr:
                if len(df):
                    arr[keys.to_numpy(dtype=object).astype(str)] = values
                arr.meta["column_kinds"] = json.dumps({k: v[0] for k, v in kinds.items()})
        return cls(uri, ctx=given)  # no context given: follow configure()


def _layout_of(arr: tiledb.Array) -> tuple[str, dict[str, str]]:
    """Key column and column kinds of an open table."""
    return arr.schema.domain.dim(0).name, json.loads(arr.meta["column_kinds"])
