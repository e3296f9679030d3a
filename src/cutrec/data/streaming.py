"""Preprocess CSV/TSV/Parquet logs larger than memory with Polars' lazy scans and streaming engine (data.streaming).

The result equals `preprocess(read_interactions(...))` on the same file: dedupe, rating cut, iterative k-core, stable
(user, timestamp, file order) order and dense ids by sorted raw ids. The raw table is never held in memory: Polars
streams the file to find the sorted distinct users and items, then streams it again, replacing each raw id by its
code into them, into a compact table of int32 codes and int64 timestamps (16 bytes an event, 24 with ratings); numpy
then sorts it stably by (user, timestamp) and runs dedupe, the rating cut and the k-core on those arrays.

Reading differs from `read_interactions` only at its edges: text timestamps must be numbers (ISO-8601 text needs
data.streaming=false), gzipped files are refused (Polars cannot scan them lazily), and text ids are numbers only
when all parse as integers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cutrec.data.preprocess import SequenceData, first_occurrences, indexed, k_core_mask
from cutrec.data.readers import EXACT_INTEGERS, MISSING, infer_format
from cutrec.errors import CutrecError


def preprocess_lazy(
    path: str | Path,
    *,
    format: str | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = "timestamp",
    rating_col: str | None = None,
    dedupe: bool = False,
    min_rating: float | None = None,
    min_user_count: int = 0,
    min_item_count: int = 0,
) -> SequenceData:
    """`preprocess(read_interactions(path, ...), ...)` without reading the whole file into memory (needs polars)."""
    try:
        import polars as pl
    except ImportError:
        raise CutrecError("data.streaming=true needs polars: pip install 'cutrec[polars]'") from None
    path = Path(path).expanduser()
    if not path.is_file():
        raise CutrecError(f"data file {str(path)!r} does not exist; check data.path (or the dataset's download)")
    fmt = infer_format(path, format)
    if fmt == "sequences" or path.suffix.lower() == ".gz":
        raise CutrecError(
            f"data.streaming=true scans plain csv, tsv or parquet files, not {str(path)!r}; "
            "decompress it, or set data.streaming=false"
        )
    if min_user_count < 0 or min_item_count < 0:
        raise CutrecError(
            f"data.min_user_count={min_user_count} / data.min_item_count={min_item_count} must be 0 or more"
        )
    if user_col == item_col:
        raise CutrecError(f"data.user_col and data.item_col both name {user_col!r}; point them at different columns")
    if min_rating is not None and rating_col is None:
        raise CutrecError(
            f"data.min_rating={min_rating} needs ratings but none were read; "
            "set data.rating_col to the rating column, or data.min_rating=none"
        )
    try:
        return _preprocess(pl, path, fmt, user_col, item_col, time_col, rating_col, dedupe, min_rating,
                           min_user_count, min_item_count)
    except pl.exceptions.PolarsError as err:
        first_line = str(err).strip().splitlines()[0]
        raise CutrecError(f"data file {str(path)!r} could not be scanned ({first_line}); fix the file") from None


def _preprocess(pl: Any, path: Path, fmt: str, user_col: str, item_col: str, time_col: str | None,
                rating_col: str | None, dedupe: bool, min_rating: float | None, min_user_count: int,
                min_item_count: int) -> SequenceData:
    if fmt == "parquet":
        frame = pl.scan_parquet(path)
    else:  # every cell as text, as read_interactions reads it; the casts below decide what is a number
        frame = pl.scan_csv(path, separator="," if fmt == "csv" else "\t", infer_schema=False, null_values=MISSING,
                            encoding="utf8-lossy")
    wanted = {"data.user_col": user_col, "data.item_col": item_col, "data.time_col": time_col,
              "data.rating_col": rating_col}
    wanted = {key: name for key, name in wanted.items() if name is not None}
    header = frame.collect_schema().names()
    missing = [key for key, name in wanted.items() if name not in header]
    if missing:
        names = ", ".join(repr(wanted[key]) for key in missing)
        raise CutrecError(
            f"data file {str(path)!r} has no column {names} (columns: {', '.join(header)}); "
            f"set {', '.join(missing)} to columns it has"
        )
    frame = frame.select(list(dict.fromkeys(wanted.values())))
    schema = frame.collect_schema()
    # One streaming pass for the facts the casts need: nulls per column, and whether text columns are numbers.
    checks = [pl.col(name).null_count().alias(f"nulls {name}") for name in schema.names()]
    for name in schema.names():
        if schema[name] == pl.String:
            checks += [pl.col(name).cast(pl.Int64, strict=False).null_count().alias(f"not int {name}"),
                       pl.col(name).cast(pl.Float64, strict=False).null_count().alias(f"not float {name}")]
    facts = frame.select(checks).collect(engine="streaming").row(0, named=True)
    for key, name in wanted.items():
        if facts[f"nulls {name}"]:
            raise CutrecError(
                f"data file {str(path)!r} column {name!r} ({key}) has {facts[f'nulls {name}']} missing values; "
                "fill or drop such rows"
            )
    length = frame.select(pl.len()).collect(engine="streaming").item()
    if length == 0:
        raise CutrecError(f"data file {str(path)!r} has no rows; add events to it")

    def is_int_text(name: str) -> bool:
        return schema[name] == pl.String and facts[f"not int {name}"] == 0

    def is_float_text(name: str) -> bool:
        return schema[name] == pl.String and facts[f"not float {name}"] == 0

    columns = {
        "user": _ids(pl, frame, schema, user_col, "data.user_col", path, is_int_text(user_col)),
        "item": _ids(pl, frame, schema, item_col, "data.item_col", path, is_int_text(item_col)),
        "time": _times(pl, schema, time_col, path, is_int_text, is_float_text),
    }
    if rating_col is not None:
        if schema[rating_col] == pl.String and not is_float_text(rating_col):
            raise CutrecError(
                f"data file {str(path)!r} column {rating_col!r} (data.rating_col) holds ratings that are not "
                "numbers; fix the file"
            )
        columns["rating"] = pl.col(rating_col).cast(pl.Float64)
    events = frame.select(**columns)  # lazy [E] rows: raw user and item ids, int64 time, float64 rating
    if time_col is not None:
        _refuse_non_finite(pl, frame, schema, time_col, path)
    user_ids, item_ids = pl.collect_all(
        [events.select(pl.col("user").unique()), events.select(pl.col("item").unique())], engine="streaming"
    )
    user_ids, item_ids = user_ids["user"].sort(), item_ids["item"].sort()  # [U0], [N0] sorted raw ids
    coded = events.with_columns(
        user=pl.lit(user_ids).search_sorted(pl.col("user")).cast(pl.Int32),  # [E] code into user_ids
        item=pl.lit(item_ids).search_sorted(pl.col("item")).cast(pl.Int32),  # [E] code into item_ids
    )
    table = coded.collect(engine="streaming")  # [E] rows in file order: the compact table, not the raw one
    columns = {name: table[name].to_numpy() for name in table.columns}  # zero-copy views
    del table
    # numpy's lexsort of the codes is stable and, on 2 cores, several times faster than a two-key stable Polars sort.
    order = np.lexsort((columns["time"], columns["user"]))  # [E] (user, time, file) order
    for name in list(columns):  # one column at a time, so only one extra copy is alive
        columns[name] = columns[name][order]
    del order
    users, items, timestamps = columns.pop("user"), columns.pop("item"), columns.pop("time")  # [E] int32, int32, int64
    ratings = columns.pop("rating", None)  # [E] float64 or None
    keep = np.ones(len(users), dtype=bool)  # [E] events that survive dedupe and the rating cut
    if dedupe:
        keep[_tied_duplicates(users, items, timestamps)] = False
    if min_rating is not None:
        keep &= ratings > min_rating
        if not keep.any():
            raise CutrecError(
                f"no event has a rating above data.min_rating={min_rating} (ratings run from {ratings.min():g} "
                f"to {ratings.max():g}); lower data.min_rating"
            )
    del ratings
    if not keep.all():
        users, items, timestamps = users[keep], items[keep], timestamps[keep]
    del keep
    core = k_core_mask(users, items, min_user_count, min_item_count)  # [E] bool or None
    if core is not None:
        users, items, timestamps = users[core], items[core], timestamps[core]
    del core
    user_ids = user_ids.to_numpy().astype(object if user_ids.dtype == pl.String else np.int64)
    item_ids = item_ids.to_numpy().astype(object if item_ids.dtype == pl.String else np.int64)
    return indexed(users, items, timestamps, user_ids, item_ids)


def _ids(pl: Any, frame: Any, schema: Any, name: str, key: str, path: Path, int_text: bool) -> Any:
    """The expression of an id column as Int64 or String, as read_interactions types it."""
    dtype = schema[name]
    if dtype.is_integer() or int_text:
        return pl.col(name).cast(pl.Int64)
    if dtype == pl.String:
        return pl.col(name)
    if dtype.is_float():
        value = pl.col(name)
        bad = ~value.is_finite() | (value != value.floor()) | (value.abs() >= EXACT_INTEGERS)
        count = frame.select(bad.sum()).collect(engine="streaming").item()
        if count:
            raise CutrecError(
                f"data file {str(path)!r} column {name!r} ({key}) holds {count} values that are no integer ids; "
                "ids must be integers or strings"
            )
        return value.cast(pl.Int64)
    raise CutrecError(
        f"data file {str(path)!r} column {name!r} ({key}) has type {dtype}; ids must be integers or strings"
    )


def _times(pl: Any, schema: Any, name: str | None, path: Path, is_int_text: Any, is_float_text: Any) -> Any:
    """The expression of the timestamps as Int64 unix seconds; time_col=None numbers the rows 0, 1, 2, ..."""
    if name is None:
        return pl.int_range(pl.len(), dtype=pl.Int64)
    dtype = schema[name]
    value = pl.col(name)
    if dtype.is_integer() or is_int_text(name):
        return value.cast(pl.Int64)
    if dtype.is_float() or is_float_text(name):
        return value.cast(pl.Float64).floor().cast(pl.Int64)
    if dtype == pl.Date or dtype == pl.Datetime:
        return value.dt.epoch("s")
    raise CutrecError(
        f"data file {str(path)!r} column {name!r} (data.time_col) has {dtype} values that data.streaming=true "
        "cannot read as times; use unix seconds, or data.streaming=false for ISO-8601 text"
    )


def _refuse_non_finite(pl: Any, frame: Any, schema: Any, name: str, path: Path) -> None:
    """Refuse NaN or infinite float timestamps, which have no int64 second."""
    if not (schema[name].is_float() or schema[name] == pl.String):
        return
    value = pl.col(name).cast(pl.Float64, strict=False)
    if frame.select((~value.is_finite()).sum()).collect(engine="streaming").item():
        raise CutrecError(f"data file {str(path)!r} column {name!r} (data.time_col) holds NaN or infinite times; "
                          "use finite times")


def _tied_duplicates(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Positions of repeated (user, item, timestamp) events, all but the first in file order of each.

    The events are in (user, timestamp, file) order, so repeats lie in runs of equal (user, timestamp); only events
    in such runs are searched, by one stable sort of a uint64 (run, item code) key.
    """
    starts = np.ones(len(users), dtype=bool)  # [E] first event of its (user, timestamp) run
    starts[1:] = (users[1:] != users[:-1]) | (timestamps[1:] != timestamps[:-1])
    tied = ~starts  # [E] in a run of two or more
    tied[:-1] |= ~starts[1:]
    positions = np.flatnonzero(tied)  # [T]
    del tied
    if len(positions) == 0:
        return positions
    if len(users) >= 2**32:  # run numbers would not fit the key's high half
        first = first_occurrences(users[positions], items[positions], timestamps[positions])  # [T] bool
        return positions[~first]
    runs = np.cumsum(starts, dtype=np.uint64)[positions]  # [T] run number of each tied event
    del starts
    key = (runs << np.uint64(32)) | items[positions].astype(np.uint64)  # [T] (run, item)
    del runs
    order = np.argsort(key, kind="stable")  # [T] stable: within equal keys, the earliest event first
    key = key[order]
    repeated = np.flatnonzero(key[1:] == key[:-1]) + 1  # [R] sorted places that repeat the key before them
    return positions[order[repeated]]
