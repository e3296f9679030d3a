"""Property tests of the readers: random, often malformed CSV, TSV, Parquet and sequences files end in a CutrecError
or in a correct result, never in another exception.

A result is checked against an independent parse of the same file (Python's csv module, str.split, pyarrow's own
table): one event per data row, the ids and times of those rows. 100 examples per format, no example database.
"""

import csv
import io
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cutrec.data import read_interactions, read_sequences
from cutrec.errors import CutrecError

SETTINGS = settings(max_examples=100, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NAMES = ["user_id", "item_id", "timestamp", "extra"]
CELL = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "NA", "null", "2020-01-31", "2020-01-31T12:00:00Z", "2021-13-45", "user_id", "item_id",
                     "timestamp", " 7", "x y", "é", "\ufeff1", "1e3", "0x10", "true"]),
    st.text(alphabet=string.ascii_letters + string.digits + "-:._ ", max_size=8),
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder whose one data file each example overwrites."""
    folder = tmp_path_factory.mktemp("properties")
    return lambda suffix: folder / f"data{suffix}"


GOOD_CELL = st.one_of(st.integers(0, 1000).map(str), st.integers(0, 1000).map("{:.1f}".format))
# the three columns a reader needs (in any order, sometimes with one more), or any header at all
HEADER = st.one_of(
    st.permutations(NAMES[:3]),
    st.permutations(NAMES),
    st.lists(st.sampled_from(NAMES), max_size=5),
)


def _delimited_text(draw, delimiter: str) -> str:
    header = draw(HEADER)
    width = len(header)
    cell = draw(st.sampled_from([GOOD_CELL, GOOD_CELL, st.one_of(GOOD_CELL, CELL)]))  # a clean or a dirty file
    exact = st.lists(cell, min_size=width, max_size=width)
    rows = draw(st.one_of(st.lists(exact, max_size=12),  # sometimes one row of another width
                          st.lists(st.lists(cell, min_size=max(width - 1, 0), max_size=width + 1), max_size=12)))
    noise = draw(st.sampled_from(["", "", "\n", "\n\n", '"', "\r\n", "\x00"]))
    lines = [delimiter.join(header), *(delimiter.join(cells) for cells in rows)]
    return "\n".join(lines) + noise


@st.composite
def delimited_files(draw):
    delimiter = draw(st.sampled_from([",", "\t"]))
    return delimiter, _delimited_text(draw, delimiter)


def _expected_rows(text: str, delimiter: str) -> list[dict[str, str]] | None:
    """The data rows as Python's csv module reads them, or None when the text is beyond a plain comparison."""
    if '"' in text or "\x00" in text or "\r" in text:
        return None
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    return [row for row in reader if any(v for v in row.values() if isinstance(v, str))]


def _as_int(cell) -> int:
    try:
        return int(cell)
    except ValueError:  # "1e3", "7.0"
        return int(float(cell))


def _check_ids(values: np.ndarray, cells: list) -> None:
    assert len(values) == len(cells)
    if values.dtype == np.int64:
        assert values.tolist() == [_as_int(c) for c in cells]
    else:
        assert [str(v) for v in values] == [str(c) for c in cells]


def _read_or_refuse(read, path: Path):
    """The reader's result, or None when it refused the file with a one-line CutrecError."""
    try:
        result = read(path)
    except CutrecError as error:
        assert "\n" not in str(error)
        event("refused")
        return None
    event("read")
    return result


@SETTINGS
@given(delimited_files())
def test_csv_and_tsv_end_in_an_error_or_a_correct_result(scratch, file):
    delimiter, text = file
    path = scratch(".csv" if delimiter == "," else ".tsv")
    path.write_text(text, encoding="utf-8")
    result = _read_or_refuse(read_interactions, path)
    if result is None:
        return
    rows = _expected_rows(text, delimiter)
    assert len(result.users) == len(result.items) == len(result.timestamps) > 0
    if rows is not None:
        _check_ids(result.users, [row["user_id"] for row in rows])
        _check_ids(result.items, [row["item_id"] for row in rows])


@st.composite
def sequence_files(draw):
    token = st.one_of(st.integers(-5, 10**20).map(str), st.text(alphabet=string.ascii_letters + ",.-", min_size=1,
                                                                  max_size=5))
    lines = draw(st.lists(st.lists(token, max_size=6), max_size=10))
    separators = draw(st.sampled_from([" ", "\t", "  "]))
    return "\n".join(separators.join(line) for line in lines) + draw(st.sampled_from(["", "\n", "\n\n \n"]))


@SETTINGS
@given(sequence_files())
def test_sequences_end_in_an_error_or_a_correct_result(scratch, text):
    path = scratch(".txt")
    path.write_text(text, encoding="utf-8")
    result = _read_or_refuse(read_sequences, path)
    if result is None:
        return
    lines = [line.split() for line in text.split("\n") if line.split()]
    _check_ids(result.users, [line[0] for line in lines for _ in line[1:]])
    _check_ids(result.items, [item for line in lines for item in line[1:]])
    assert result.timestamps.tolist() == [position for line in lines for position in range(len(line) - 1)]


@st.composite
def parquet_tables(draw):
    pa = pytest.importorskip("pyarrow")
    rows = draw(st.integers(0, 8))
    kinds = {
        "int": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
        "float": (pa.float64(), st.floats(allow_nan=True, allow_infinity=True)),
        "text": (pa.string(), draw(st.sampled_from([GOOD_CELL, CELL]))),
        "bool": (pa.bool_(), st.booleans()),
        "list": (pa.list_(pa.int64()), st.lists(st.integers(0, 5), max_size=2)),
    }
    columns = {}
    for name in draw(HEADER):
        kind, values = kinds[draw(st.sampled_from(["int", "int", "text", *sorted(kinds)]))]
        cell = draw(st.sampled_from([values, values, st.one_of(values, st.none())]))
        cells = draw(st.lists(cell, min_size=rows, max_size=rows))
        columns[name] = pa.array(cells, type=kind)
    return pa.table(columns) if columns else pa.table({"other": pa.array([1] * rows)})


@SETTINGS
@given(parquet_tables())
def test_parquet_ends_in_an_error_or_a_correct_result(scratch, table):
    import pyarrow.parquet as pq

    path = scratch(".parquet")
    pq.write_table(table, path)
    result = _read_or_refuse(read_interactions, path)
    if result is None:
        return
    assert len(result.users) == table.num_rows > 0
    _check_ids(result.users, table.column("user_id").to_pylist())
    _check_ids(result.items, table.column("item_id").to_pylist())


@SETTINGS
@given(st.binary(max_size=200), st.sampled_from([".csv", ".tsv", ".txt", ".parquet"]))
def test_random_bytes_end_in_an_error_or_a_result(scratch, content, suffix):
    path = scratch(suffix)
    path.write_bytes(content)
    result = _read_or_refuse(read_sequences if suffix == ".txt" else read_interactions, path)
    if result is None:
        return
    assert len(result.users) == len(result.items) > 0
