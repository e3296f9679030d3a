"""Interactions from in-memory tables (pandas and Polars DataFrames, Arrow tables) and from Python lists of item
sequences: the sources of `Interactions.from_pandas`, `from_polars`, `from_arrow` and `from_sequences`.

Column types are kept as given: a string column stays strings even when every value looks like a number (a file
has no types, so the file readers guess; a DataFrame has them). Integer ids (or whole floats) become int64, string
ids stay strings; floats with fractions, booleans, mixed types and missing values are refused with the row. Times
may be integers, floats (rounded down), datetimes (naive ones are taken as UTC) or ISO-8601 strings; without a time
column the rows' order is the time. pandas, Polars and pyarrow are imported only by the function that needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from cutrec.data.readers import Interactions, _Column, _data_rows, _parse_ratings, _parse_times, _raise_missing
from cutrec.errors import CutrecError


def from_pandas(
    frame: Any, *, user: str, item: str, time: str | None = None, rating: str | None = None
) -> Interactions:
    """The events of a pandas DataFrame, one per row, in row order."""
    import pandas as pd

    def column(name: str) -> np.ndarray:
        series = frame[name]
        missing = series.isna().to_numpy()
        if missing.any():
            _raise_missing(_label(name), np.flatnonzero(missing))
        if isinstance(series.dtype, pd.DatetimeTZDtype):
            series = series.dt.tz_convert("UTC").dt.tz_localize(None)
        if isinstance(series.dtype, pd.CategoricalDtype):
            series = series.astype(series.cat.categories.dtype)
        return series.to_numpy()

    return _from_columns(list(frame.columns), len(frame), column, "pandas DataFrame", user, item, time, rating)


def from_polars(
    frame: Any, *, user: str, item: str, time: str | None = None, rating: str | None = None
) -> Interactions:
    """The events of a Polars DataFrame, one per row, in row order."""
    import polars as pl

    def column(name: str) -> np.ndarray:
        series = frame.get_column(name)
        if series.null_count():
            _raise_missing(_label(name), series.is_null().arg_true().to_numpy())
        if isinstance(series.dtype, (pl.Categorical, pl.Enum)):
            series = series.cast(pl.String)
        if isinstance(series.dtype, pl.Datetime) and series.dtype.time_zone is not None:
            series = series.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        return series.to_numpy()

    return _from_columns(frame.columns, frame.height, column, "Polars DataFrame", user, item, time, rating)


def from_arrow(table: Any, *, user: str, item: str, time: str | None = None, rating: str | None = None) -> Interactions:
    """The events of a pyarrow Table, one per row, in row order."""
    import pyarrow as pa

    def column(name: str) -> np.ndarray:
        values = table.column(name)
        if values.null_count:
            _raise_missing(_label(name), np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False)))
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        return values.to_numpy()

    return _from_columns(table.column_names, table.num_rows, column, "Arrow table", user, item, time, rating)


def from_sequences(sequences: Sequence[Iterable] | Mapping[Any, Iterable]) -> Interactions:
    """Item sequences in time order: a list (users numbered 0, 1, ...) or a dict {user: items}; positions are the
    times."""
    if isinstance(sequences, Mapping):
        users, lists = list(sequences.keys()), [list(items) for items in sequences.values()]
    elif isinstance(sequences, (str, bytes)) or not isinstance(sequences, Sequence):
        raise CutrecError(
            f"from_sequences got a {type(sequences).__name__}; pass a list of item lists or a dict {{user: items}}"
        )
    else:
        users, lists = list(range(len(sequences))), [list(items) for items in sequences]
    lengths = np.array([len(items) for items in lists], dtype=np.int64)  # [U]
    if lengths.sum() == 0:
        raise CutrecError("from_sequences got no items; pass at least one non-empty sequence")
    flat = [value for items in lists for value in items]  # [E]
    user_ids = _ids(_object_array(users), "sequences' user")
    item_ids = _ids(_object_array(flat), "sequences' item")
    starts = np.cumsum(lengths) - lengths  # [U]
    positions = np.arange(len(flat), dtype=np.int64) - np.repeat(starts, lengths)  # [E] 0, 1, ... per user
    return Interactions(np.repeat(user_ids, lengths), item_ids, positions)


def _from_columns(
    names: list[str], rows: int, column: Callable[[str], np.ndarray], kind: str, user: str, item: str,
    time: str | None, rating: str | None,
) -> Interactions:
    """Check the named columns exist and the table has rows, then convert each column (`column(name)`)."""
    wanted = {"user": user, "item": item, "time": time, "rating": rating}
    for key, name in wanted.items():
        if name is not None and not isinstance(name, str):
            raise CutrecError(f"{key}={name!r} is not a column name; pass the column's name as a string")
    missing = [f"{key}={name!r}" for key, name in wanted.items() if name is not None and name not in names]
    if missing:
        raise CutrecError(
            f"the {kind} has no column for {', '.join(missing)} (columns: {', '.join(map(str, names))}); "
            "name columns it has"
        )
    if user == item:
        raise CutrecError(f"user and item both name column {user!r}; point them at different columns")
    if rows == 0:
        raise CutrecError(f"the {kind} has no rows; pass at least one interaction")
    users = _ids(column(user), f"column {user!r}")
    items = _ids(column(item), f"column {item!r}")
    if time is None:
        timestamps = np.arange(rows, dtype=np.int64)  # [E] row order stands in for time
    else:
        values = column(time)
        if values.dtype.kind == "O":
            values = _strings(values, f"column {time!r}", "times")
        timestamps = _parse_times(values, _label(time))
    ratings = None if rating is None else _parse_ratings(column(rating), _label(rating))
    return Interactions(users, items, timestamps, ratings)


def _label(name: str) -> _Column:
    return _Column(name, name, f"column {name!r}")


def _object_array(values: list) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _ids(values: np.ndarray, what: str) -> np.ndarray:
    """[E] int64 for integer (or whole float) ids, an object array of str for string ids; anything else refused."""
    kind = values.dtype.kind
    if kind in "iu":
        if kind == "u" and len(values) and values.max() > np.iinfo(np.int64).max:
            raise CutrecError(f"{what} holds ids above 2**63 - 1; store them as strings")
        return values.astype(np.int64)
    if kind == "f":
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.floor(values)) | (np.abs(values) >= 2.0**53))
        if len(bad):
            raise CutrecError(
                f"{what} holds {float(values[bad[0]])!r} in {_data_rows(bad)}, which is no id; ids must be integers "
                "or strings"
            )
        return values.astype(np.int64)
    if kind == "U":
        return values.astype(object)
    if kind == "O":
        types = set(map(type, values))
        if all(issubclass(t, str) for t in types):
            return values
        if all(issubclass(t, (int, np.integer)) and not issubclass(t, (bool, np.bool_)) for t in types):
            return values.astype(np.int64)
        first_is_text = isinstance(values[0], str)
        wrong = next(
            i for i, v in enumerate(values)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (str, int, np.integer))
            or isinstance(v, str) != first_is_text
        )
        raise CutrecError(
            f"{what} holds {values[wrong]!r} ({type(values[wrong]).__name__}) in {_data_rows(np.array([wrong]))} "
            f"but {values[0]!r} ({type(values[0]).__name__}) in data row 1; ids must be all integers or all strings"
        )
    raise CutrecError(f"{what} has type {values.dtype}; ids must be integers or strings")


def _strings(values: np.ndarray, what: str, meaning: str) -> np.ndarray:
    """An object array that must hold only str, as a fixed-width str array."""
    bad = np.flatnonzero([not isinstance(v, str) for v in values])
    if len(bad):
        raise CutrecError(
            f"{what} holds {values[bad[0]]!r} in {_data_rows(bad)}; {meaning} must be numbers, datetimes or "
            "ISO-8601 strings"
        )
    return values.astype(str)
