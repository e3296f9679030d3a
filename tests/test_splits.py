"""Leave-one-out and global temporal splits: exact definitions, no target leaks, fractions, determinism."""

import numpy as np
import pytest

from cutrec.data import Interactions, SequenceData, Sequences, global_temporal, leave_one_out, preprocess
from cutrec.errors import CutrecError


def _unique_events(rng: np.random.Generator, num_users: int) -> tuple[SequenceData, np.ndarray]:
    """Random data where every event has its own item and its own timestamp, so an item identifies an event.

    Returns the data and time_of[item] (the timestamp of the one event of each dense item).
    """
    lengths = rng.integers(1, 12, num_users)
    num_events = int(lengths.sum())
    users = np.repeat(rng.permutation(num_users) * 3 + 1, lengths)
    times = rng.permutation(num_events * 5)[:num_events]
    order = rng.permutation(num_events)  # file order unrelated to time
    data = preprocess(Interactions(users[order], np.arange(num_events)[order], times[order]))
    time_of = np.empty(data.num_items, dtype=np.int64)
    time_of[data.items] = data.timestamps
    return data, time_of


def _rows(sequences: Sequences) -> dict[int, list[int]]:
    return {
        int(u): sequences.items[sequences.offsets[i] : sequences.offsets[i + 1]].tolist()
        for i, u in enumerate(sequences.users)
    }


def _user_events(data: SequenceData) -> dict[int, list[int]]:
    return {u: data.items[data.offsets[u] : data.offsets[u + 1]].tolist() for u in range(data.num_users)}


def test_leave_one_out_hand_checked():
    data = SequenceData(
        offsets=np.array([0, 1, 3, 7]),
        items=np.array([4, 0, 1, 2, 3, 4, 0], dtype=np.int32),
        timestamps=np.arange(7),
        item_ids=np.arange(5),
        user_ids=np.array([10, 11, 12]),
    )
    split = leave_one_out(data)
    assert split.num_items == 5
    assert _rows(split.train) == {0: [], 1: [], 2: [2, 3]}
    assert _rows(split.valid.inputs) == {2: [2, 3]} and split.valid.targets.tolist() == [4]
    assert _rows(split.test.inputs) == {1: [0], 2: [2, 3, 4]} and split.test.targets.tolist() == [1, 0]
    assert split.test.targets.dtype == np.int32 and split.train.offsets.dtype == np.int64
    assert split.train.users.dtype == np.int64


def test_leave_one_out_random_no_leaks():
    rng = np.random.default_rng(12345)
    data, time_of = _unique_events(rng, int(rng.integers(50, 300)))
    split = leave_one_out(data)
    events = _user_events(data)
    train = _rows(split.train)
    assert train == {u: seq[:-2] for u, seq in events.items()}
    for evalset, back in ((split.test, 1), (split.valid, 2)):
        inputs = _rows(evalset.inputs)
        assert set(inputs) == {u for u, seq in events.items() if len(seq) >= back + 1}
        for (user, seen), target in zip(inputs.items(), evalset.targets.tolist(), strict=True):
            assert target == events[user][-back] and seen == events[user][:-back]
            assert target not in seen and all(time_of[seen] < time_of[target])
    held_out = set(split.test.targets.tolist()) | set(split.valid.targets.tolist())
    assert held_out.isdisjoint(split.train.items.tolist())


def test_leave_one_out_needs_two_events():
    data = preprocess(Interactions(np.array([1, 2]), np.array([1, 2]), np.array([1, 2])))
    with pytest.raises(CutrecError, match="leave_one_out needs users with 2 or more events"):
        leave_one_out(data)


def test_global_temporal_hand_checked():
    # Times 1..10; test_fraction 0.2 -> t = 8. User 0: 1 2 9 | user 1: 3 4 5 | user 2: 6 10 | user 3: 7 8.
    data = SequenceData(
        offsets=np.array([0, 3, 6, 8, 10]),
        items=np.arange(10, dtype=np.int32),
        timestamps=np.array([1, 2, 9, 3, 4, 5, 6, 10, 7, 8]),
        item_ids=np.arange(10),
        user_ids=np.arange(4),
    )
    split = global_temporal(data, test_fraction=0.2, valid_fraction=0.5, seed=3)
    assert _rows(split.test.inputs) == {0: [0, 1], 2: [6]} and split.test.targets.tolist() == [2, 7]
    (valid_user,) = split.valid.inputs.users.tolist()
    assert valid_user in (1, 3)
    expected_train = {0: [0, 1], 1: [3, 4, 5], 2: [6], 3: [8, 9]}
    del expected_train[valid_user]
    assert _rows(split.train) == expected_train
    assert split.valid.targets.tolist() == [data.items[data.offsets[valid_user + 1] - 1]]


@pytest.mark.parametrize("test_fraction,valid_fraction", [(0.1, 0.1), (0.3, 0.25), (0.05, 0.0)])
def test_global_temporal_random_no_leaks(test_fraction, valid_fraction):
    rng = np.random.default_rng(54321)
    data, time_of = _unique_events(rng, int(rng.integers(200, 600)))
    seed = int(rng.integers(0, 1000))
    split = global_temporal(data, test_fraction=test_fraction, valid_fraction=valid_fraction, seed=seed)
    num_events = len(data.items)
    threshold = np.sort(data.timestamps)[num_events - int(test_fraction * num_events + 0.5) - 1]
    assert (data.timestamps > threshold).sum() == int(test_fraction * num_events + 0.5)  # unique times: exact
    events = _user_events(data)
    is_test = {u: time_of[seq[-1]] > threshold for u, seq in events.items()}

    test = _rows(split.test.inputs)
    assert set(test) == {u for u, seq in events.items() if is_test[u] and len(seq) >= 2}
    for (user, seen), target in zip(test.items(), split.test.targets.tolist(), strict=True):
        assert target == events[user][-1] and seen == events[user][:-1] and target not in seen

    valid = _rows(split.valid.inputs)
    train = _rows(split.train)
    chosen = set(events) - set(train)  # validation users are exactly the users missing from train
    non_test = [u for u in events if not is_test[u]]
    assert chosen <= set(non_test) and len(chosen) == int(valid_fraction * len(non_test) + 0.5)
    assert set(valid) == {u for u in chosen if len(events[u]) >= 2}
    for (user, seen), target in zip(valid.items(), split.valid.targets.tolist(), strict=True):
        assert target == events[user][-1] and seen == events[user][:-1] and target not in seen

    for user, seq in train.items():
        assert seq == [item for item in events[user] if time_of[item] <= threshold]
    assert (time_of[split.train.items] <= threshold).all()
    held_out = set(split.test.targets.tolist()) | set(split.valid.targets.tolist())
    assert held_out.isdisjoint(split.train.items.tolist())

    again = global_temporal(data, test_fraction=test_fraction, valid_fraction=valid_fraction, seed=seed)
    np.testing.assert_array_equal(again.valid.inputs.users, split.valid.inputs.users)
    np.testing.assert_array_equal(again.train.items, split.train.items)
    if valid_fraction > 0:
        other = global_temporal(data, test_fraction=test_fraction, valid_fraction=valid_fraction, seed=seed + 1)
        assert set(_rows(other.train)) != set(train)


def test_global_temporal_errors():
    items = np.array([0, 1], dtype=np.int32)
    data = SequenceData(np.array([0, 2]), items, np.array([5, 5]), item_ids=np.arange(2), user_ids=np.arange(1))
    with pytest.raises(CutrecError, match="data.test_fraction=0.2 of 2 events leaves none after the time threshold"):
        global_temporal(data, test_fraction=0.2)
    with pytest.raises(CutrecError, match=r"data.test_fraction=1.0 is out of range; use a fraction in \(0, 1\)"):
        global_temporal(data, test_fraction=1.0)
    with pytest.raises(CutrecError, match="data.valid_fraction=-0.1 is out of range"):
        global_temporal(data, valid_fraction=-0.1)
