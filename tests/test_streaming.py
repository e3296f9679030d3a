"""data.streaming: preprocess_lazy (Polars lazy scans) gives exactly the SequenceData of the in-memory path."""

import numpy as np
import pytest

from cutrec.data import preprocess, read_interactions
from cutrec.errors import CutrecError

pl = pytest.importorskip("polars")
pytest.importorskip("pyarrow")

from cutrec.data.streaming import preprocess_lazy  # noqa: E402


def _log(seed: int, string_ids: bool) -> dict:
    """A small random log with duplicates, ties in time, ratings and a long tail that needs several k-core rounds."""
    rng = np.random.default_rng(seed)
    num = int(rng.integers(300, 1500))
    users = rng.zipf(1.6, num) % 60
    items = rng.zipf(1.4, num) % 90 * 7 - 50  # negative ids too
    times = rng.integers(0, 40, num)  # few distinct times: many ties
    repeat = rng.random(num) < 0.15  # copy the event before: exact duplicates
    for i in np.flatnonzero(repeat[1:]) + 1:
        users[i], items[i], times[i] = users[i - 1], items[i - 1], times[i - 1]
    log = {"user_id": users, "item_id": items, "timestamp": times, "rating": rng.integers(1, 6, num) / 1.0}
    if string_ids:
        log["user_id"] = np.array([f"u{u}" for u in users])
        log["item_id"] = np.array([f"item-{i}" for i in items])
    return log


def _write(log: dict, path, fmt: str) -> None:
    frame = pl.DataFrame({name: values for name, values in log.items()})
    if fmt == "parquet":
        frame.write_parquet(path)
    else:
        frame.write_csv(path, separator="," if fmt == "csv" else "\t")


def _assert_same(actual, expected) -> None:
    for name in ("offsets", "items", "timestamps", "item_ids", "user_ids"):
        a, e = getattr(actual, name), getattr(expected, name)
        assert a.dtype == e.dtype, name
        np.testing.assert_array_equal(a, e, err_msg=name)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "tsv"])
@pytest.mark.parametrize("string_ids", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_same_as_in_memory(tmp_path, fmt, string_ids, seed):
    path = tmp_path / f"log.{fmt}"
    _write(_log(seed, string_ids), path, fmt)
    settings = [
        {},
        {"dedupe": True},
        {"dedupe": True, "min_rating": 2.0, "min_user_count": 3, "min_item_count": 3},
        {"dedupe": seed % 2 == 0, "min_user_count": 5, "min_item_count": 4},
    ]
    for options in settings:
        rating_col = "rating" if "min_rating" in options else None
        expected = preprocess(read_interactions(path, rating_col=rating_col), **options)
        _assert_same(preprocess_lazy(path, rating_col=rating_col, **options), expected)


def test_k_core_needs_several_rounds(tmp_path):
    # a chain: dropping user 0 (one event) leaves item 1 with one event, which drops user 1, and so on
    users = [0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4]
    items = [1, 1, 2, 2, 3, 3, 5, 6, 3, 5, 6]
    path = tmp_path / "chain.parquet"
    pl.DataFrame({"user_id": users, "item_id": items, "timestamp": list(range(11))}).write_parquet(path)
    expected = preprocess(read_interactions(path), min_user_count=2, min_item_count=2)
    assert expected.num_users == 2  # users 3 and 4 survive several rounds
    _assert_same(preprocess_lazy(path, min_user_count=2, min_item_count=2), expected)


def test_no_time_column_and_float_times(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,t\n5,a,3.7\n5,b,3.2\n2,a,1.0\n5,a,3.9\n")
    for time_col in (None, "t"):
        expected = preprocess(read_interactions(path, time_col=time_col), dedupe=True)
        _assert_same(preprocess_lazy(path, time_col=time_col, dedupe=True), expected)


def test_errors_name_the_fix(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n1,2,3\n1,,4\n")
    with pytest.raises(CutrecError, match="'item_id' .*missing values"):
        preprocess_lazy(path)
    with pytest.raises(CutrecError, match="set data.time_col"):
        preprocess_lazy(path, time_col="time")
    with pytest.raises(CutrecError, match="data.min_rating=none"):
        preprocess_lazy(path, min_rating=3)
    dates = tmp_path / "dates.csv"
    dates.write_text("user_id,item_id,timestamp\n1,2,2020-01-01\n")
    with pytest.raises(CutrecError, match="data.streaming=false"):
        preprocess_lazy(dates)


def test_load_sequences_streams(tmp_path):
    from cutrec.config import DataConfig
    from cutrec.data import load_sequences

    path = tmp_path / "log.parquet"
    _write(_log(7, False), path, "parquet")
    memory = load_sequences(DataConfig(path=str(path), dedupe=True, min_user_count=2, cache_dir=str(tmp_path / "a")))
    streamed = load_sequences(
        DataConfig(path=str(path), dedupe=True, min_user_count=2, streaming=True, cache_dir=str(tmp_path / "b"))
    )
    _assert_same(streamed, memory)


def test_without_polars(tmp_path, monkeypatch):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n1,2,3\n")
    monkeypatch.setitem(__import__("sys").modules, "polars", None)
    with pytest.raises(CutrecError, match=r"data.streaming=true needs polars: pip install 'cutrec\[polars\]'"):
        preprocess_lazy(path)
