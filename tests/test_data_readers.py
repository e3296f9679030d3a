"""Readers and loading: CSV/TSV/Parquet/sequences files into Interactions, user mistakes refused with clear messages."""

import csv
import gzip
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cutrec.config import DataConfig, SyntheticConfig
from cutrec.data import load, preprocess, read_interactions, read_sequences, readers
from cutrec.data.readers import Interactions, infer_format
from cutrec.errors import CutrecError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(params=["pyarrow", "stdlib"])
def backend(request, monkeypatch):
    """Run a CSV/TSV test with pyarrow and again with pyarrow hidden (the stdlib csv reader)."""
    if request.param == "pyarrow":
        pytest.importorskip("pyarrow")
    else:
        for name in ("pyarrow", "pyarrow.csv", "pyarrow.parquet"):
            monkeypatch.setitem(sys.modules, name, None)
    return request.param


def _write(path, text):
    path.write_text(text)
    return path


def test_csv_hand_checked(tmp_path, backend):
    path = _write(tmp_path / "log.csv", "user_id,item_id,timestamp,rating\n10,100,5,4.5\n11,101,3,3\n\n10,102,5,1\n")
    got = read_interactions(path, rating_col="rating")
    assert got.users.dtype == np.int64 and got.items.dtype == np.int64 and got.timestamps.dtype == np.int64
    np.testing.assert_array_equal(got.users, [10, 11, 10])
    np.testing.assert_array_equal(got.items, [100, 101, 102])
    np.testing.assert_array_equal(got.timestamps, [5, 3, 5])
    np.testing.assert_array_equal(got.ratings, [4.5, 3.0, 1.0])
    assert read_interactions(path).ratings is None


def test_string_ids_tsv_gz_and_row_order_time(tmp_path, backend):
    path = tmp_path / "log.tsv.gz"
    with gzip.open(path, "wt") as file:
        file.write("u\ti\tt\nalice\tB01\t7\nbob\t0042\t1\nalice\tx y\t2\n")
    got = read_interactions(path, user_col="u", item_col="i", time_col=None)
    assert got.users.dtype == object and got.items.dtype == object
    assert list(got.users) == ["alice", "bob", "alice"] and list(got.items) == ["B01", "0042", "x y"]
    np.testing.assert_array_equal(got.timestamps, [0, 1, 2])


def test_float_and_iso_timestamps(tmp_path, backend):
    floats = _write(tmp_path / "f.tab", "user_id\titem_id\ttimestamp\n1\t2\t10.9\n1\t3\t-0.5\n2\t2\t1e3\n")
    np.testing.assert_array_equal(read_interactions(floats).timestamps, [10, -1, 1000])
    iso = _write(
        tmp_path / "d.csv",
        "user_id,item_id,timestamp\n1,2,2020-01-01T00:00:00\n1,3,2020-01-01 00:00:01.9\n"
        "2,2,2020-01-01T02:00:00+02:00\n2,4,1970-01-02\n",
    )
    np.testing.assert_array_equal(read_interactions(iso).timestamps, [1577836800, 1577836801, 1577836800, 86400])


def test_random_round_trip_matches_both_backends(tmp_path, monkeypatch):
    rng = np.random.default_rng()
    n = int(rng.integers(50, 300))
    users = rng.integers(-5, 40, n)
    names = np.array([f"item-{k}" for k in range(25)], dtype=object)
    items = names[rng.integers(0, 25, n)]
    times = rng.integers(0, 2**40, n)
    ratings = rng.integers(1, 11, n) / 2
    path = tmp_path / "log.csv"
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["rating", "timestamp", "item_id", "user_id"])
        writer.writerows(zip(ratings, times, items, users, strict=True))
    for hide in (False, True):
        if hide:
            monkeypatch.setitem(sys.modules, "pyarrow", None)
            monkeypatch.setitem(sys.modules, "pyarrow.csv", None)
        got = read_interactions(path, rating_col="rating")
        np.testing.assert_array_equal(got.users, users)
        assert list(got.items) == list(items)
        np.testing.assert_array_equal(got.timestamps, times)
        np.testing.assert_array_equal(got.ratings, ratings)


def test_parquet_types(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "user_id": pa.array([3.0, 1.0, 3.0]),
            "item_id": pa.array(["a", "b", "a"]).dictionary_encode(),
            "timestamp": pa.array([1_000_000_000, 2_000_000_000, 3], type=pa.timestamp("ms")),
            "score": pa.array([1, 2, 3], type=pa.int8()),
        }
    )
    pq.write_table(table, tmp_path / "log.parquet")
    got = read_interactions(tmp_path / "log.parquet", rating_col="score")
    np.testing.assert_array_equal(got.users, [3, 1, 3])
    assert list(got.items) == ["a", "b", "a"]
    np.testing.assert_array_equal(got.timestamps, [1_000_000, 2_000_000, 0])
    np.testing.assert_array_equal(got.ratings, [1.0, 2.0, 3.0])


def test_parquet_text_ids_parse_as_a_csvs_cells(tmp_path):
    """Text ids in parquet follow the csv rules: "0x10" is text, never the number 16 (pyarrow's casts read hex), so
    it stays apart from "16"; a column of whole numbers written as text becomes int64, as in a csv."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"user_id": ["0x10", "16", "0x10"], "item_id": ["7", "8", "07"], "timestamp": ["1", "2", "3"]})
    pq.write_table(table, tmp_path / "log.parquet")
    got = read_interactions(tmp_path / "log.parquet")
    assert list(got.users) == ["0x10", "16", "0x10"]
    assert got.items.dtype == np.int64 and list(got.items) == [7, 8, 7]
    (tmp_path / "log.csv").write_text("user_id,item_id,timestamp\n0x10,7,1\n16,8,2\n0x10,07,3\n")
    from_csv = read_interactions(tmp_path / "log.csv")
    assert list(from_csv.users) == list(got.users) and list(from_csv.items) == list(got.items)


@pytest.mark.parametrize(
    "column,message",
    [
        (["1.5", "2.0"], "holds 1.5 in data row 1, which is no id; ids must be integers or strings"),
        ([None, "b"], "has a missing value in data row 1"),
        ([True, False], "has type bool; it must hold integers, numbers, text or dates"),
    ],
)
def test_parquet_bad_ids(tmp_path, column, message):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    values = pa.array([None if v is None else float(v) for v in column]) if column[0] == "1.5" else pa.array(column)
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": values, "timestamp": [1, 2]}), tmp_path / "x.pq")
    with pytest.raises(CutrecError, match=message):
        read_interactions(tmp_path / "x.pq")


def test_parquet_without_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = _write(tmp_path / "x.parquet", "not parquet")
    with pytest.raises(CutrecError, match=r"reading parquet needs pyarrow: pip install 'cutrec\[parquet\]'"):
        read_interactions(path)


def test_missing_file_and_column(tmp_path, backend):
    with pytest.raises(CutrecError, match="does not exist"):
        read_interactions(tmp_path / "nope.csv")
    path = _write(tmp_path / "x.csv", "user,item,ts\n1,2,3\n")
    expected = (
        f"data file '{path}' has no column 'userId' (columns: user, item, ts); set data.user_col to one of them"
    )
    with pytest.raises(CutrecError) as caught:
        read_interactions(path, user_col="userId", item_col="item", time_col="ts")
    assert str(caught.value) == expected
    with pytest.raises(CutrecError, match="no column 'rating'.*set data.rating_col"):
        read_interactions(path, user_col="user", item_col="item", time_col="ts", rating_col="rating")


@pytest.mark.parametrize(
    "body,message",
    [
        ("1,2,3,4\n5,,6,7\n", r"column 'item_id' \(data.item_col\) has a missing value in data row 2"),
        ("1,2,3,4\nNaN,2,6,7\n", r"column 'user_id' \(data.user_col\) has a missing value in data row 2"),
        ("1,2,3,4\n1,2,nan,7\n", r"column 'timestamp' \(data.time_col\) has a missing value in data row 2"),
        ("1,2,3,4\n1,2,6,NA\n", r"column 'rating' \(data.rating_col\) has a missing value in data row 2"),
        ("1,2.5,3,4\n1,2,6,1\n", r"column 'item_id' \(data.item_col\) holds 2.5 in data row 1, which is no id"),
        ("1,2,3,4\n1,2,soon,1\n", "neither numbers nor ISO-8601 date/times"),
        ("1,2,3,4\n1,2,6,good\n", "holds ratings that are not numbers"),
        ("1,2,3,4\n1,2\n", "line 3 has fewer fields than its header"),
        ("", "has a header but no rows"),
    ],
)
def test_bad_cells(tmp_path, backend, body, message):
    path = _write(tmp_path / "x.csv", "user_id,item_id,timestamp,rating\n" + body)
    if backend == "pyarrow" and "fewer fields" in message:
        message = "could not be parsed"
    with pytest.raises(CutrecError, match=message):
        read_interactions(path, rating_col="rating")


def test_problems_are_collected_into_one_message(tmp_path, backend):
    header = "user_id,item_id,timestamp\n"
    rows = ["1,2,3", "user_id,item_id,timestamp", "2,3,4", "user_id,item_id,timestamp"]
    path = _write(tmp_path / "joined.csv", header + "\n".join(rows) + "\n")
    with pytest.raises(CutrecError) as caught:  # else the user 'user_id' would appear in the data
        read_interactions(path)
    assert str(caught.value) == (
        f"data file '{path}' repeats its header row as data rows 2, 4 (files joined with their headers?); "
        "drop those rows"
    )
    times = ["1,2,3", "1,3,soon", "2,3,2020-01-01", "2,4,later", "3,4,soon", "3,5,never", "4,5,x"]
    path = _write(tmp_path / "times.csv", header + "\n".join(times) + "\n")
    with pytest.raises(CutrecError) as caught:
        read_interactions(path)
    assert "neither numbers nor ISO-8601 date/times in data rows 2, 4, 5 and 2 more ('later', 'never', 'soon')" in (
        str(caught.value))
    path = _write(tmp_path / "mixed.csv", header + "1,2,1600000000\n2,3,2020-01-01\n3,4,1.5\n")
    mixed = r"mixes numbers \(data rows 1, 3, e.g. '1.5'\) with date/times \(e.g. '2020-01-01'\)"
    with pytest.raises(CutrecError, match=mixed):
        read_interactions(path)
    path = _write(tmp_path / "large.csv", header + "9223372036854775808,2,1\n5,3,2\n")
    assert read_interactions(path).users.tolist() == ["9223372036854775808", "5"]  # text, with either reader
    path = _write(tmp_path / "twice.csv", "user_id,item_id,user_id,timestamp\n1,2,3,4\n")
    with pytest.raises(CutrecError, match=r"has 2 columns named 'user_id' \(columns 1, 3\), so data.user_col is ambig"):
        read_interactions(path)
    path = _write(tmp_path / "missing.csv", header + "1,,3\n2,3,4\n3,,5\n")
    with pytest.raises(CutrecError, match=r"column 'item_id' \(data.item_col\) has missing values in data rows 1, 3;"):
        read_interactions(path)


def test_format_inference(tmp_path):
    assert infer_format("a/b.CSV") == "csv" and infer_format("x.tsv.gz") == "tsv" and infer_format("x.pq") == "parquet"
    assert infer_format("seq.txt") == "sequences" and infer_format("x.dat", "tsv") == "tsv"
    for bad in ("x.dat", "x.parquet.gz", "noext"):
        with pytest.raises(CutrecError, match="set data.format"):
            infer_format(bad)
    with pytest.raises(CutrecError, match="data.format='xml' is unknown"):
        infer_format("x.csv", "xml")


def test_read_sequences_hand_checked(tmp_path):
    path = _write(tmp_path / "s.txt", "7 3 1 3\n\n  2   9\t8 \n5\n")
    got = read_sequences(path)
    np.testing.assert_array_equal(got.users, [7, 7, 7, 2, 2])
    np.testing.assert_array_equal(got.items, [3, 1, 3, 9, 8])
    np.testing.assert_array_equal(got.timestamps, [0, 1, 2, 0, 1])
    strings = read_sequences(_write(tmp_path / "t.txt", "u1 a b\nu2 c\n"))
    assert list(strings.users) == ["u1", "u1", "u2"] and list(strings.items) == ["a", "b", "c"]


@pytest.mark.parametrize(
    "text,message",
    [
        ("1 2 3\n2 4\n\n1 5\n", "line 4 is malformed: user '1' already has line 1"),
        ("1 2 3\n2 4,5\n", "line 2 is malformed: '4,5' holds a comma"),
        ("1 2 3\n2 4 5.5\n", r"item ids holds 5.5 in line 2, which is no id"),
        ("1\n2\n", "has no events"),
    ],
)
def test_read_sequences_malformed(tmp_path, text, message):
    with pytest.raises(CutrecError, match=message):
        read_sequences(_write(tmp_path / "s.txt", text))


def test_interactions_refuse_bad_ids():
    with pytest.raises(CutrecError, match="Interactions.items mixes NoneType, str"):
        Interactions(np.array([1, 2]), np.array(["a", None], dtype=object), np.array([1, 2]))
    with pytest.raises(CutrecError, match="Interactions.users has dtype float64"):
        Interactions(np.array([1.5, 2.0]), np.array([1, 2]), np.array([1, 2]))
    with pytest.raises(CutrecError, match="ratings must be numbers without NaN"):
        Interactions(np.array([1, 2]), np.array([1, 2]), np.array([1, 2]), np.array([1.0, np.nan]))


def test_ml_100k():
    path = SHARED_DATA / "ml-100k" / "ratings.tsv"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    data = preprocess(read_interactions(path, rating_col="rating"))
    assert (data.num_users, data.num_items, len(data.items)) == (943, 1682, 100000)
    # Independent reference: rows sorted by (user, timestamp) with Python's stable sort keep file order on ties.
    with open(path, newline="") as file:
        reader = csv.DictReader(file, delimiter="\t")
        rows = [(int(r["user_id"]), int(r["timestamp"]), int(r["item_id"])) for r in reader]
    expected = [item for _, _, item in sorted(rows, key=lambda r: (r[0], r[1]))]
    np.testing.assert_array_equal(data.item_ids[data.items], expected)
    by_item_on_ties = [item for _, _, item in sorted(rows)]
    assert by_item_on_ties != expected, "ml-100k has same-second events out of item order, which this test relies on"


def test_amazon_beauty():
    path = SHARED_DATA / "amazon-beauty" / "sequences.txt"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    data = preprocess(read_sequences(path))
    assert (data.num_users, data.num_items, len(data.items)) == (22363, 12101, 198502)
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    for line in (lines[k] for k in np.random.default_rng().integers(0, len(lines), 20)):
        row = int(np.searchsorted(data.user_ids, int(line[0])))
        items = data.item_ids[data.items[data.offsets[row] : data.offsets[row + 1]]]
        np.testing.assert_array_equal(items, [int(token) for token in line[1:]])


def test_load_synthetic_and_cached_file(tmp_path, monkeypatch):
    synthetic = load.load_sequences(DataConfig(synthetic=SyntheticConfig(num_users=50, num_items=40, num_clusters=4)))
    assert synthetic.num_users == 50 and synthetic.num_items <= 40
    path = _write(tmp_path / "log.csv", "u,i,t,r\n1,a,3,5\n1,b,1,2\n2,a,2,4\n2,c,5,5\n")
    config = DataConfig(path=str(path), user_col="u", item_col="i", time_col="t", rating_col="r", min_rating=3.0,
                        cache_dir=str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(load, "read_interactions", lambda *a, **k: calls.append(1) or read_interactions(*a, **k))
    first = load.load_sequences(config)
    second = load.load_sequences(config)
    assert len(calls) == 1
    assert list(first.item_ids) == list(second.item_ids) == ["a", "c"]
    np.testing.assert_array_equal(second.items, [0, 0, 1])
    np.testing.assert_array_equal(second.offsets, [0, 1, 3])
    config.min_rating = 1.0
    assert len(load.load_sequences(config).items) == 4 and len(calls) == 2
    with pytest.raises(CutrecError, match="data.path='nope.csv' does not exist"):
        load.load_sequences(DataConfig(path="nope.csv"))


def test_load_registry_dataset(tmp_path, monkeypatch):
    from cutrec.data import registry

    seqs = _write(tmp_path / "prepared.seq", "1 5 6 7\n2 6 7\n")
    monkeypatch.setattr(registry, "fetch", lambda name, cache_dir: seqs)
    monkeypatch.setitem(registry.DATASETS, "toy", SimpleNamespace(format="sequences"))
    data = load.load_sequences(DataConfig(dataset="toy", cache_dir=str(tmp_path / "cache")))
    np.testing.assert_array_equal(data.item_ids[data.items], [5, 6, 7, 6, 7])


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_reading_counts_every_byte_of_the_file_in_its_progress_bar(tmp_path, monkeypatch, suffix):
    from tqdm import tqdm

    text = "user_id,item_id,timestamp\n" + "".join(f"{i % 7},{i % 11},{i}\n" for i in range(5000))
    path = tmp_path / f"log{suffix}"
    path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    bars = []

    def shown(**options):
        bars.append(tqdm(disable=False, file=open(os.devnull, "w"), **options))
        return bars[-1]

    monkeypatch.setattr(readers, "progress", shown)
    data = readers.read_interactions(path)
    assert len(data.users) == 5000 and data.timestamps[-1] == 4999
    assert bars[0].n == bars[0].total == path.stat().st_size
