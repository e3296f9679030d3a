"""Preprocessing (dedupe, rating cut, iterative k-core, stable time order, dense ids) and the on-disk cache."""

from collections import Counter

import numpy as np
import pytest

from cutrec.data import Interactions, SequenceData, cached_sequences, preprocess
from cutrec.errors import CutrecError


def _interactions(users, items, times, ratings=None):
    return Interactions(
        np.asarray(users), np.asarray(items), np.asarray(times, dtype=np.int64),
        None if ratings is None else np.asarray(ratings, dtype=np.float64),
    )


def _sequences(data: SequenceData) -> dict:
    """{raw user id: [(raw item id, timestamp), ...]} from SequenceData."""
    return {
        data.user_ids[u]: list(
            zip(
                data.item_ids[data.items[data.offsets[u] : data.offsets[u + 1]]].tolist(),
                data.timestamps[data.offsets[u] : data.offsets[u + 1]].tolist(),
                strict=True,
            )
        )
        for u in range(data.num_users)
    }


def _reference(users, items, times, ratings, dedupe, min_rating, min_user, min_item) -> dict:
    """A plain-Python preprocess to check against: the same steps, one event at a time."""
    rows = list(zip(users.tolist(), items.tolist(), times.tolist(), ratings.tolist(), strict=True))
    if dedupe:
        seen, kept = set(), []
        for row in rows:
            if row[:3] not in seen:
                seen.add(row[:3])
                kept.append(row)
        rows = kept
    if min_rating is not None:
        rows = [row for row in rows if row[3] > min_rating]
    while True:
        user_counts, item_counts = Counter(r[0] for r in rows), Counter(r[1] for r in rows)
        kept = [r for r in rows if user_counts[r[0]] >= min_user and item_counts[r[1]] >= min_item]
        if len(kept) == len(rows):
            break
        rows = kept
    result = {}
    for user, item, time, _ in sorted(rows, key=lambda r: (r[0], r[2])):
        result.setdefault(user, []).append((item, time))
    return result


def test_hand_checked():
    data = preprocess(_interactions([7, 3, 7, 7, 3], [30, 10, 20, 10, 30], [5, 9, 5, 1, 2]))
    np.testing.assert_array_equal(data.user_ids, [3, 7])
    np.testing.assert_array_equal(data.item_ids, [10, 20, 30])
    np.testing.assert_array_equal(data.offsets, [0, 2, 5])
    np.testing.assert_array_equal(data.items, [2, 0, 0, 2, 1])  # user 3: 30@2, 10@9; user 7: 10@1, 30@5, 20@5
    np.testing.assert_array_equal(data.timestamps, [2, 9, 1, 5, 5])
    assert data.items.dtype == np.int32 and data.offsets.dtype == np.int64
    assert (data.num_items, data.num_users, data.padding_id) == (3, 2, 3)


def test_dedupe_keeps_first_then_rating_cut():
    events = _interactions([1, 1, 1, 2], [5, 5, 6, 5], [3, 3, 3, 1], [1.0, 2.0, 3.0, 4.0])
    # The first (1, 5, 3) has rating 1 and is cut by min_rating; keeping the second (rating 2) would keep item 5.
    data = preprocess(events, dedupe=True, min_rating=1.5)
    assert _sequences(data) == {1: [(6, 3)], 2: [(5, 1)]}
    assert len(preprocess(events).items) == 4
    assert _sequences(preprocess(events, min_rating=2.0)) == {1: [(6, 3)], 2: [(5, 1)]}  # strictly above


def test_k_core_reaches_fixed_point():
    # Dropping item c leaves user 3 with one event; dropping user 3 leaves item a with 2 (users 1, 2): stop.
    events = _interactions([1, 1, 2, 2, 3, 3], ["a", "b", "a", "b", "a", "c"], [1, 2, 1, 2, 1, 2])
    data = preprocess(events, min_user_count=2, min_item_count=2)
    assert list(data.user_ids) == [1, 2] and list(data.item_ids) == ["a", "b"] and data.item_ids.dtype == object
    with pytest.raises(CutrecError, match=r"k-core filter \(data.min_user_count=3, data.min_item_count=2\); lower"):
        preprocess(events, min_user_count=3, min_item_count=2)


def test_ties_keep_file_order_and_strings_sort():
    events = _interactions(["b", "a", "b", "b", "b"], ["z", "y", "x", "w", "v"], [5, 1, 5, 0, 5])
    data = preprocess(events)
    assert list(data.user_ids) == ["a", "b"] and list(data.item_ids) == ["v", "w", "x", "y", "z"]
    assert _sequences(data) == {"a": [("y", 1)], "b": [("w", 0), ("z", 5), ("x", 5), ("v", 5)]}


@pytest.mark.parametrize("trial", range(4))
def test_matches_plain_python_reference(trial):
    rng = np.random.default_rng()
    n = int(rng.integers(200, 2000))
    users = rng.integers(0, int(rng.integers(5, 60)), n)
    items = rng.integers(0, int(rng.integers(5, 80)), n) * 7 - 100
    times = rng.integers(0, 30, n)  # many ties
    ratings = rng.integers(1, 6, n).astype(np.float64)
    options = {
        "dedupe": bool(rng.integers(0, 2)),
        "min_rating": [None, 1.0, 2.5][int(rng.integers(0, 3))],
        "min_user_count": int(rng.integers(0, 8)),
        "min_item_count": int(rng.integers(0, 8)),
    }
    expected = _reference(users, items, times, ratings, *options.values())
    if not expected:
        with pytest.raises(CutrecError):
            preprocess(_interactions(users, items, times, ratings), **options)
        return
    data = preprocess(_interactions(users, items, times, ratings), **options)
    assert _sequences(data) == expected
    np.testing.assert_array_equal(data.item_ids, sorted({item for seq in expected.values() for item, _ in seq}))
    assert data.items.min() == 0 and data.items.max() == data.num_items - 1


def test_errors_name_the_step():
    events = _interactions([1, 2], [1, 2], [1, 2])
    with pytest.raises(CutrecError, match="data.min_rating=3.0 needs ratings.*set data.rating_col"):
        preprocess(events, min_rating=3.0)
    with pytest.raises(CutrecError, match=r"no event has a rating above data.min_rating=5.0 .*lower data.min_rating"):
        preprocess(_interactions([1, 2], [1, 2], [1, 2], [4.0, 5.0]), min_rating=5.0)
    with pytest.raises(CutrecError, match="the data has no events"):
        preprocess(_interactions(np.array([], dtype=np.int64), np.array([], dtype=np.int64), []))
    with pytest.raises(CutrecError, match="must be 0 or more"):
        preprocess(events, min_user_count=-1)


def _data(string_ids: bool) -> SequenceData:
    users = ["u1", "u2"] if string_ids else [4, 9]
    items = ["i1", "i2", "i3"] if string_ids else [10, 20, 30]
    return SequenceData(
        offsets=np.array([0, 2, 3]),
        items=np.array([0, 2, 1], dtype=np.int32),
        timestamps=np.array([1, 2, 3]),
        item_ids=np.array(items, dtype=object if string_ids else np.int64),
        user_ids=np.array(users, dtype=object if string_ids else np.int64),
    )


def _assert_same(a: SequenceData, b: SequenceData) -> None:
    for name in ("offsets", "items", "timestamps", "item_ids", "user_ids"):
        assert getattr(a, name).dtype == getattr(b, name).dtype, name
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("string_ids", [False, True])
def test_cache_builds_once_and_round_trips(tmp_path, string_ids):
    built = []

    def build():
        built.append(1)
        return _data(string_ids)

    key = {"path": "/x.csv", "size": 10, "min_user_count": 5, "version": 1}
    first = cached_sequences(key, build, tmp_path)
    second = cached_sequences(dict(reversed(key.items())), build, tmp_path)  # same key, other order
    assert len(built) == 1
    _assert_same(first, _data(string_ids))
    _assert_same(second, _data(string_ids))
    cached_sequences({**key, "min_user_count": 6}, build, tmp_path)
    assert len(built) == 2
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and all(name.endswith(".npz") and len(name) == 64 + 4 for name in files)


@pytest.mark.parametrize("damage", [b"", b"not a zip file", None])
def test_corrupt_cache_is_rebuilt(tmp_path, damage):
    key = {"path": "/x.csv"}
    cached_sequences(key, lambda: _data(False), tmp_path)
    (path,) = tmp_path.iterdir()
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2] if damage is None else damage)
    built = []
    result = cached_sequences(key, lambda: built.append(1) or _data(False), tmp_path)
    assert built == [1]
    _assert_same(result, _data(False))
    _assert_same(cached_sequences(key, lambda: pytest.fail("rebuilt twice"), tmp_path), _data(False))


def test_cache_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CutrecError, match="cannot write the data cache.*set data.cache_dir"):
        cached_sequences({"a": 1}, lambda: _data(False), blocker / "sub")
    with pytest.raises(CutrecError, match="is not JSON-able"):
        cached_sequences({"a": object()}, lambda: _data(False), tmp_path)
