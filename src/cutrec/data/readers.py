"""Read interaction logs (CSV, TSV, Parquet) and one-sequence-per-line files into raw `Interactions` arrays.

Ids that all look like integers become int64, other ids stay strings; timestamps become int64 unix seconds.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, NoReturn

import numpy as np

from cutrec.console import progress
from cutrec.errors import CutrecError

FORMATS = ("csv", "tsv", "parquet", "sequences")
_SUFFIXES = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "sequences",
}
# Cells that mean "no value" in CSV/TSV files; the same list for the pyarrow and the stdlib reader.
MISSING = ["", "NA", "N/A", "NaN", "nan", "NULL", "null", "None"]
EXACT_INTEGERS = 2.0**53  # floats hold every integer below this exactly


@dataclass
class Interactions:
    """One row per event, in file order, with raw ids as read."""

    users: np.ndarray  # [E] raw user ids: int64, or object array of str
    items: np.ndarray  # [E] raw item ids: int64, or object array of str
    timestamps: np.ndarray  # [E] int64 (unix seconds, or the file position when the source has no time)
    ratings: np.ndarray | None = None  # [E] float64

    def __post_init__(self) -> None:
        self.users = _checked_ids(self.users, "users")
        self.items = _checked_ids(self.items, "items")
        timestamps = np.asarray(self.timestamps)
        if timestamps.dtype.kind not in "iu":
            raise CutrecError(f"Interactions.timestamps has dtype {timestamps.dtype}; convert it to int64 seconds")
        self.timestamps = timestamps.astype(np.int64, copy=False)
        if self.ratings is not None:
            ratings = np.asarray(self.ratings)
            if ratings.dtype.kind not in "iuf" or np.isnan(ratings.astype(np.float64, copy=False)).any():
                raise CutrecError("Interactions.ratings must be numbers without NaN; drop or fill the missing ratings")
            self.ratings = ratings.astype(np.float64, copy=False)
        lengths = {len(self.users), len(self.items), len(self.timestamps)}
        if self.ratings is not None:
            lengths.add(len(self.ratings))
        if len(lengths) != 1 or self.users.ndim != 1 or self.items.ndim != 1 or self.timestamps.ndim != 1:
            raise CutrecError(f"Interactions arrays must be 1-D and of one length, got lengths {sorted(lengths)}")

    @classmethod
    def from_pandas(
        cls, frame: Any, *, user: str, item: str, time: str | None = None, rating: str | None = None
    ) -> Interactions:
        """One event per row of a pandas DataFrame; `time=None` takes the row order as time (cutrec.data.frames)."""
        from cutrec.data.frames import from_pandas

        return from_pandas(frame, user=user, item=item, time=time, rating=rating)

    @classmethod
    def from_polars(
        cls, frame: Any, *, user: str, item: str, time: str | None = None, rating: str | None = None
    ) -> Interactions:
        """One event per row of a Polars DataFrame (cutrec.data.frames)."""
        from cutrec.data.frames import from_polars

        return from_polars(frame, user=user, item=item, time=time, rating=rating)

    @classmethod
    def from_arrow(
        cls, table: Any, *, user: str, item: str, time: str | None = None, rating: str | None = None
    ) -> Interactions:
        """One event per row of a pyarrow Table (cutrec.data.frames)."""
        from cutrec.data.frames import from_arrow

        return from_arrow(table, user=user, item=item, time=time, rating=rating)

    @classmethod
    def from_sequences(cls, sequences: Any) -> Interactions:
        """Item lists in time order: a list (users 0, 1, ...) or a dict {user: items} (cutrec.data.frames)."""
        from cutrec.data.frames import from_sequences

        return from_sequences(sequences)

    @classmethod
    def from_file(
        cls, path: str | Path, *, format: str | None = None, user: str = "user_id", item: str = "item_id",
        time: str | None = "timestamp", rating: str | None = None,
    ) -> Interactions:
        """A CSV/TSV/Parquet log or a sequences file, read as `cutrec train --data PATH` reads it."""
        if infer_format(path, format) == "sequences":
            return read_sequences(path)
        return read_interactions(path, format=format, user_col=user, item_col=item, time_col=time, rating_col=rating)


def _checked_ids(values: np.ndarray, name: str) -> np.ndarray:
    """Ids as int64 or an object array of str; anything else (floats, None, a mix) is refused."""
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return values.astype(np.int64, copy=False)
    if values.dtype.kind == "U":
        return values.astype(object)
    if values.dtype.kind == "O":
        types = set(map(type, values))
        if all(issubclass(t, str) for t in types):
            return values
        if all(issubclass(t, int) and not issubclass(t, bool) for t in types):
            return values.astype(np.int64)
        names = ", ".join(sorted(t.__name__ for t in types))
        raise CutrecError(f"Interactions.{name} mixes {names}; raw ids must be all integers or all strings")
    raise CutrecError(f"Interactions.{name} has dtype {values.dtype}; raw ids must be int64 or strings")


def infer_format(path: str | Path, format: str | None = None) -> str:
    """`format` if given (checked), else the one its suffix names.

    Suffixes: .csv, .tsv/.tab (either optionally .gz), .parquet/.pq, and .txt for a sequences file.
    """
    if format is not None:
        if format not in FORMATS:
            raise CutrecError(f"data.format={format!r} is unknown; choose one of {', '.join(FORMATS)}")
        return format
    suffixes = [s.lower() for s in Path(path).suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    suffix = suffixes[-2] if gz and len(suffixes) > 1 else (suffixes[-1] if suffixes and not gz else "")
    inferred = _SUFFIXES.get(suffix)
    if inferred is None or (gz and inferred == "parquet"):
        raise CutrecError(
            f"cannot tell the format of {str(path)!r} from its suffix; set data.format to one of {', '.join(FORMATS)}"
        )
    return inferred


def read_interactions(
    path: str | Path,
    *,
    format: str | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = "timestamp",
    rating_col: str | None = None,
) -> Interactions:
    """Read a CSV/TSV (header row, optionally gzipped) or Parquet log; rows keep file order.

    time_col=None numbers the rows 0, 1, 2, ... as timestamps. Timestamps may be integers, floats (rounded down)
    or ISO-8601 date/times (converted to unix seconds). CSV/TSV use pyarrow when it is installed (fast) and the
    stdlib csv module otherwise; both give the same result.
    """
    path = _existing(path)
    fmt = infer_format(path, format)
    if fmt == "sequences":
        raise CutrecError(f"{str(path)!r} is a sequences file; read it with read_sequences or set data.format")
    if user_col == item_col:
        raise CutrecError(f"data.user_col and data.item_col both name {user_col!r}; point them at different columns")
    wanted = {
        "data.user_col": user_col,
        "data.item_col": item_col,
        "data.time_col": time_col,
        "data.rating_col": rating_col,
    }
    columns = {key: _file_column(path, name, key) for key, name in wanted.items() if name is not None}
    if fmt == "parquet":
        values = _read_parquet(path, list(columns.values()))
    else:
        values = _read_delimited(path, list(columns.values()), "," if fmt == "csv" else "\t")
    _refuse_repeated_header(path, values, list(columns.values()))
    user, item = columns["data.user_col"], columns["data.item_col"]
    users = _parse_ids(values[user.name], user, _data_row)
    items = _parse_ids(values[item.name], item, _data_row)
    if time_col is None:
        timestamps = np.arange(len(users), dtype=np.int64)  # [E] file order stands in for time
    else:
        timestamps = _parse_times(values[time_col], columns["data.time_col"])
    ratings = None if rating_col is None else _parse_ratings(values[rating_col], columns["data.rating_col"])
    return Interactions(users, items, timestamps, ratings)


def read_sequences(path: str | Path) -> Interactions:
    """Read "user item item ..." lines (whitespace separated, items in time order); timestamps are positions 0, 1, ...

    Empty lines are skipped, and a line with only a user id gives no events. A user on two lines, or a comma inside
    an id (a CSV read as sequences), is refused with the line number.
    """
    path = _existing(path)
    with _open_text(path) as file:
        text = _read_all(file, path)
    lines = text.split("\n")
    counts = np.fromiter(map(len, map(str.split, lines)), dtype=np.int64, count=len(lines))  # [lines] tokens per line
    ends = np.cumsum(counts)  # [lines] one past each line's last token
    tokens = np.array(text.split(), dtype=str)  # [T]
    line_of = lambda token: int(np.searchsorted(ends, token, side="right")) + 1  # 1-based line of a token index
    if len(tokens):
        commas = np.flatnonzero(np.char.find(tokens, ",") >= 0)
        if len(commas):
            raise CutrecError(
                f"sequences file {str(path)!r} line {line_of(commas[0])} is malformed: {str(tokens[commas[0]])!r} "
                "holds a comma; separate ids with spaces, or set data.format=csv for a CSV file"
            )
    filled = np.flatnonzero(counts > 0)  # [U] lines that name a user
    user_at = ends[filled] - counts[filled]  # [U] token index of each line's user id
    lengths = counts[filled] - 1  # [U] items on each line
    if lengths.sum() == 0:
        raise CutrecError(f"sequences file {str(path)!r} has no events; write one 'user item item ...' line per user")
    source = f"sequences file {str(path)!r}"
    user_column, item_column = _Column("user", "", f"{source} user ids"), _Column("item", "", f"{source} item ids")
    users = _parse_ids(tokens[user_at], user_column, lambda i: f"line {filled[i] + 1}")
    _refuse_repeated_users(users, filled, source)
    is_item = np.ones(len(tokens), dtype=bool)
    is_item[user_at] = False
    item_at = np.flatnonzero(is_item)  # [E] token index of each item
    items = _parse_ids(tokens[item_at], item_column, lambda i: f"line {line_of(item_at[i])}")
    starts = np.cumsum(lengths) - lengths  # [U] first event of each user
    positions = np.arange(len(item_at), dtype=np.int64) - np.repeat(starts, lengths)  # [E] 0, 1, ... within a line
    return Interactions(np.repeat(users, lengths), items, positions)


def _refuse_repeated_header(path: Path, values: dict[str, np.ndarray], columns: list[_Column]) -> None:
    """Refuse data rows that repeat the header (files concatenated with their headers): else 'user_id' would
    silently become a user."""
    repeats = np.ones(len(next(iter(values.values()))), dtype=bool)  # [E]
    for column in columns:
        cells = values[column.name]
        repeats &= cells == column.name if cells.dtype.kind in "UO" else False
    rows = np.flatnonzero(repeats)
    if len(rows):
        raise CutrecError(
            f"data file {str(path)!r} repeats its header row as {_data_rows(rows)} (files joined with their "
            "headers?); drop those rows"
        )


def _refuse_repeated_users(users: np.ndarray, lines: np.ndarray, source: str) -> None:
    """Refuse a user id on two lines (its events would have two position sequences), naming both lines."""
    order = np.argsort(users, kind="stable")  # [U]
    repeated = np.flatnonzero(users[order[1:]] == users[order[:-1]])
    if len(repeated):
        first, second = sorted((lines[order[repeated[0]]] + 1, lines[order[repeated[0] + 1]] + 1))
        raise CutrecError(
            f"{source} line {second} is malformed: user {str(users[order[repeated[0]]])!r} already has "
            f"line {first}; put each user's items on one line"
        )


@dataclass(frozen=True)
class _Column:
    """A column to read: its name, the config key that names it, and how errors describe it."""

    name: str
    key: str
    label: str

    def __str__(self) -> str:
        return self.label


def _file_column(path: Path, name: str, key: str) -> _Column:
    return _Column(name, key, f"data file {str(path)!r} column {name!r} ({key})")


def _data_row(index: int) -> str:
    return f"data row {index + 1}"


def _data_rows(indices: np.ndarray, shown: int = 3) -> str:
    """'data row 4' or 'data rows 4, 9, 12 and 30 more' for 0-based row indices."""
    rows = ", ".join(str(int(i) + 1) for i in indices[:shown])
    more = f" and {len(indices) - shown} more" if len(indices) > shown else ""
    return f"data row {rows}" if len(indices) == 1 else f"data rows {rows}{more}"


def _existing(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CutrecError(f"data file {str(path)!r} does not exist; check data.path (or the dataset's download)")
    return path


def _open_text(path: Path) -> IO[str]:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _read_all(file: IO[str], path: Path) -> str:
    try:
        return file.read()
    except (UnicodeDecodeError, OSError, EOFError) as err:
        raise CutrecError(f"data file {str(path)!r} is not readable UTF-8 text ({err}); check the file") from None


def _read_header(path: Path, columns: list[_Column], delimiter: str) -> list[str]:
    with _open_text(path) as file:
        try:
            header = next(csv.reader(file, delimiter=delimiter), None)
        except (UnicodeDecodeError, OSError, EOFError, csv.Error) as err:
            raise CutrecError(f"data file {str(path)!r} is not readable text ({err}); check the file") from None
    if not header:
        raise CutrecError(f"data file {str(path)!r} is empty; it needs a header row naming its columns")
    _check_columns(path, header, columns)
    return header


def _check_columns(path: Path, header: list[str], columns: list[_Column]) -> None:
    """Every wanted column must be in the header exactly once; all missing ones are named in one message."""
    for column in columns:
        places = [i + 1 for i, name in enumerate(header) if name == column.name]
        if len(places) > 1:
            raise CutrecError(
                f"data file {str(path)!r} has {len(places)} columns named {column.name!r} (columns "
                f"{', '.join(map(str, places))}), so {column.key} is ambiguous; rename all but one"
            )
    missing = [column for column in columns if column.name not in header]
    if len(missing) == 1:
        raise CutrecError(
            f"data file {str(path)!r} has no column {missing[0].name!r} (columns: {', '.join(header)}); "
            f"set {missing[0].key} to one of them"
        )
    if missing:
        names = ", ".join(repr(c.name) for c in missing)
        raise CutrecError(
            f"data file {str(path)!r} has no columns {names} (columns: {', '.join(header)}); "
            f"set {', '.join(c.key for c in missing)} to columns it has"
        )


def _read_delimited(path: Path, columns: list[_Column], delimiter: str) -> dict[str, np.ndarray]:
    """Each wanted column as a numpy array (numbers where pyarrow could parse them, else str)."""
    header = _read_header(path, columns, delimiter)
    names = list(dict.fromkeys(c.name for c in columns))
    try:
        import pyarrow as pa
        import pyarrow.csv as pacsv
    except ImportError:
        return _read_delimited_stdlib(path, header, columns, names, delimiter)
    options = pacsv.ConvertOptions(
        include_columns=names,
        column_types={name: pa.string() for name in names},
        null_values=MISSING,
        strings_can_be_null=True,
    )
    try:
        with _counted_bytes(path) as stream:  # a progress bar of the bytes read, with rate and time left
            reader = pacsv.open_csv(stream, parse_options=pacsv.ParseOptions(delimiter=delimiter),
                                    convert_options=options)
            table = pa.Table.from_batches(list(reader), schema=reader.schema)
    except (pa.ArrowInvalid, OSError, EOFError) as err:  # EOFError: a truncated gzip file
        first_line = str(err).splitlines()[0]
        if "Empty CSV file" in first_line:  # a header without a line end and nothing after it
            raise CutrecError(f"data file {str(path)!r} has a header but no rows; add events to it") from None
        raise CutrecError(f"data file {str(path)!r} could not be parsed ({first_line}); fix the file") from None
    if table.num_rows == 0:
        raise CutrecError(f"data file {str(path)!r} has a header but no rows; add events to it")
    by_name = {c.name: c for c in columns}
    return {name: _from_arrow(table.column(name), by_name[name]) for name in names}


@contextlib.contextmanager
def _counted_bytes(path: Path) -> Iterator[IO[bytes]]:
    """The file's (decompressed) bytes as a stream, with a progress bar over the bytes read from disk."""
    with open(path, "rb") as raw, progress(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
                                           desc=f"reading {path.name}") as bar:
        read = raw.read

        def counted(size: int = -1) -> bytes:
            chunk = read(size)
            bar.update(len(chunk))
            return chunk

        raw.read = counted
        if path.suffix.lower() == ".gz":
            with gzip.GzipFile(fileobj=raw) as unpacked:
                yield unpacked
        else:
            yield raw


def _read_delimited_stdlib(
    path: Path, header: list[str], columns: list[_Column], names: list[str], delimiter: str
) -> dict[str, np.ndarray]:
    getter = itemgetter(*(header.index(name) for name in names))
    with _open_text(path) as file:
        reader = csv.reader(file, delimiter=delimiter)
        next(reader)
        try:
            # zip(*rows) turns rows into columns without a Python-level loop; filter(None) drops blank lines.
            cells = list(zip(*map(getter, filter(None, reader)), strict=True))
        except IndexError:
            raise CutrecError(
                f"data file {str(path)!r} line {reader.line_num} has fewer fields than its header "
                f"({len(header)}); fix that line"
            ) from None
        except (UnicodeDecodeError, csv.Error) as err:
            raise CutrecError(f"data file {str(path)!r} line {reader.line_num} is not readable ({err})") from None
    if not cells:
        raise CutrecError(f"data file {str(path)!r} has a header but no rows; add events to it")
    by_name = {c.name: c for c in columns}
    values = {}
    for name, column_cells in zip(names, cells, strict=True):
        strings = np.array(column_cells, dtype=str)  # [E] str
        missing = np.flatnonzero(np.isin(strings, MISSING))
        if len(missing):
            _raise_missing(by_name[name], missing)
        values[name] = strings
    return values


def _read_parquet(path: Path, columns: list[_Column]) -> dict[str, np.ndarray]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise CutrecError("reading parquet needs pyarrow: pip install 'cutrec[parquet]'") from None
    try:
        header = pq.read_schema(path).names
        _check_columns(path, header, columns)
        names = list(dict.fromkeys(c.name for c in columns))
        table = pq.read_table(path, columns=names)
    except (pa.ArrowInvalid, OSError) as err:
        first_line = str(err).splitlines()[0]
        raise CutrecError(f"data file {str(path)!r} is not a readable parquet file ({first_line})") from None
    if table.num_rows == 0:
        raise CutrecError(f"data file {str(path)!r} has no rows; add events to it")
    by_name = {c.name: c for c in columns}
    return {name: _from_arrow(table.column(name), by_name[name]) for name in names}


def _from_arrow(values, column: _Column) -> np.ndarray:
    """A pyarrow column as numpy. Text stays text (str), to be parsed by the rules of a csv's cells: pyarrow's own
    casts read "0x10" as 16, which would make the ids "0x10" and "16" one."""
    import pyarrow as pa

    if values.null_count:
        _raise_missing(column, np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False)))
    kind = values.type
    if pa.types.is_dictionary(kind):
        values = values.cast(kind.value_type)
        kind = values.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return values.to_numpy(zero_copy_only=False).astype(str)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return values.to_numpy()
    raise CutrecError(f"{column} has type {kind}; it must hold integers, numbers, text or dates")


def _raise_missing(column: _Column, indices: np.ndarray) -> NoReturn:
    values = "a missing value" if len(indices) == 1 else "missing values"
    raise CutrecError(f"{column} has {values} in {_data_rows(indices)}; fill or drop such rows")


def _parse_ids(values: np.ndarray, column: _Column, where: Callable[[int], str]) -> np.ndarray:
    """[E] int64 when every id is a whole number, else an object array of str; fractions, NaN and bools are refused.

    Text ids too large for int64 (or for an exact float) stay text, so two ids never collapse into one.
    """
    text = None
    if values.dtype.kind == "U":
        try:
            return values.astype(np.int64)
        except (ValueError, OverflowError):
            pass
        text = values
        try:
            values = values.astype(np.float64)
        except ValueError:
            empty = np.flatnonzero(text == "")
            if len(empty):
                raise CutrecError(f"{column} has an empty id in {where(int(empty[0]))}; fill or drop it") from None
            return text.astype(object)
    if values.dtype.kind == "u" and len(values) and values.max() > np.iinfo(np.int64).max:
        return values.astype(str).astype(object)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(values) | (values != np.floor(values)))
        if len(bad):
            also = f" ({len(bad) - 1} more such rows)" if len(bad) > 1 else ""
            raise CutrecError(
                f"{column} holds {float(values[bad[0]])!r} in {where(int(bad[0]))}, which is no id{also}; "
                "ids must be integers or strings"
            )
        large = np.flatnonzero(np.abs(values) >= EXACT_INTEGERS)
        if len(large):
            if text is not None:
                return text.astype(object)  # e.g. 1e30 or 20-digit ids: keep them as written
            raise CutrecError(
                f"{column} holds {float(values[large[0]])!r} in {where(int(large[0]))}, too large for an exact "
                "integer id in a float column; store ids as integers or strings"
            )
        return values.astype(np.int64)
    raise CutrecError(f"{column} has type {values.dtype}; ids must be integers or strings")


def _parse_times(values: np.ndarray, column: _Column) -> np.ndarray:
    """[E] int64 unix seconds from integers, floats (rounded down) or ISO-8601 date/time strings."""
    if values.dtype.kind == "U":
        values = _numbers_or_dates(values, column)
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise CutrecError(f"{column} holds {float(values[bad[0]])!r} in {_data_row(int(bad[0]))}; use finite times")
        return np.floor(values).astype(np.int64)
    if values.dtype.kind == "M":
        bad = np.flatnonzero(np.isnat(values))
        if len(bad):
            _raise_missing(column, bad)
        return values.astype("datetime64[s]").astype(np.int64)
    raise CutrecError(f"{column} has type {values.dtype}; use unix seconds or ISO-8601 date/times")


def _numbers_or_dates(values: np.ndarray, column: _Column) -> np.ndarray:
    """[E] numbers, or datetime64 when every value is an ISO-8601 date/time; anything else is refused by row."""
    for target in (np.int64, np.float64):
        try:
            return values.astype(target)
        except (ValueError, OverflowError):
            continue
    unique, inverse = np.unique(values, return_inverse=True)
    numeric = np.array([_is_number(text) for text in unique])  # [unique]
    dates = np.array([not number and _is_time(text) for text, number in zip(unique, numeric, strict=True)])
    unreadable = ~(numeric | dates)
    if unreadable.any():
        examples = ", ".join(repr(str(v)) for v in unique[unreadable][:3])
        raise CutrecError(
            f"{column} holds times that are neither numbers nor ISO-8601 date/times in "
            f"{_data_rows(np.flatnonzero(unreadable[inverse]))} ({examples}); use unix seconds or dates like "
            "2020-01-31T12:00:00"
        )
    if numeric.any():  # else numpy would read "1600000000" as the year 1600000000
        raise CutrecError(
            f"{column} mixes numbers ({_data_rows(np.flatnonzero(numeric[inverse]))}, e.g. "
            f"{str(unique[numeric][0])!r}) with date/times (e.g. {str(unique[dates][0])!r}); use one kind: unix "
            "seconds or ISO-8601 date/times"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns that it converts "+02:00" / "Z" offsets to UTC, as wanted
        return values.astype("datetime64[s]")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except (ValueError, OverflowError):
        return False
    return True


def _is_time(text: str) -> bool:
    """An ISO-8601 date/time numpy can read (numbers never reach here: a column of only numbers is read as such)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            np.array([text]).astype("datetime64[s]")
    except (ValueError, OverflowError):
        return False
    return True


def _parse_ratings(values: np.ndarray, column: _Column) -> np.ndarray:
    """[E] float64 ratings; text and NaN are refused."""
    if values.dtype.kind == "U":
        try:
            values = values.astype(np.float64)
        except ValueError as err:
            raise CutrecError(f"{column} holds ratings that are not numbers ({err}); fix the file") from None
    if values.dtype.kind not in "iuf":
        raise CutrecError(f"{column} has type {values.dtype}; ratings must be numbers")
    values = values.astype(np.float64)
    bad = np.flatnonzero(np.isnan(values))
    if len(bad):
        _raise_missing(column, bad)
    return values
