"""Training and evaluation batches: right padding, next-item and masked-item targets, truncation, order, counts."""

import numpy as np
import pytest
import torch
from scipy import stats

from cutrec.data import EvalSet, Sequences, epoch_order, eval_batches, masked_item_batch, next_item_batch, num_batches
from cutrec.errors import CutrecError


def _sequences(lists: list[list[int]]) -> Sequences:
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in lists])]).astype(np.int64)
    items = np.array([i for s in lists for i in s], dtype=np.int32)
    return Sequences(offsets=offsets, items=items, users=np.arange(len(lists), dtype=np.int64))


def _random_lists(rng: np.random.Generator, count: int, num_items: int) -> list[list[int]]:
    return [rng.integers(0, num_items, int(rng.integers(0, 15))).tolist() for _ in range(count)]


def _expected_train_row(seq: list[int], max_len: int, padding_id: int) -> tuple[tuple, tuple]:
    inputs, targets = seq[:-1][-max_len:], seq[1:][-max_len:]
    pad = max_len - len(inputs)
    return tuple(inputs + [padding_id] * pad), tuple(targets + [-100] * pad)


def train_batches(train, *, max_len, batch_size, padding_id, rng):
    """One epoch of next-item batches, as the trainer makes them for SASRec."""
    order = epoch_order(train, min_length=2, rng=rng)
    for b in range(num_batches(order, batch_size)):
        rows = order[b * batch_size : (b + 1) * batch_size]
        yield next_item_batch(train, rows, max_len=max_len, padding_id=padding_id)


def test_train_batches_hand_checked():
    train = _sequences([[1, 2, 3, 4, 5], [9], [7, 8], []])
    batches = list(train_batches(train, max_len=3, batch_size=10, padding_id=10, rng=np.random.default_rng(0)))
    assert len(batches) == 1
    inputs, targets = batches[0]
    assert inputs.dtype == targets.dtype == torch.int64 and inputs.shape == targets.shape == (2, 3)
    rows = sorted(zip(inputs.tolist(), targets.tolist(), strict=True))
    assert rows == [([2, 3, 4], [3, 4, 5]), ([7, 10, 10], [8, -100, -100])]


def test_train_batches_random_epoch():
    rng = np.random.default_rng()
    lists = _random_lists(rng, int(rng.integers(20, 200)), 50)
    train = _sequences(lists)
    max_len, batch_size, padding_id = int(rng.integers(1, 12)), int(rng.integers(1, 40)), 50
    batches = list(train_batches(train, max_len=max_len, batch_size=batch_size, padding_id=padding_id,
                                 rng=np.random.default_rng(7)))
    assert len(batches) == -(-sum(len(s) >= 2 for s in lists) // batch_size)
    assert all(len(b[0]) == batch_size for b in batches[:-1]) and 1 <= len(batches[-1][0]) <= batch_size
    assert all(b[0].shape[1] == b[1].shape[1] == max_len for b in batches)
    got = sorted((tuple(i), tuple(t)) for b in batches for i, t in zip(b[0].tolist(), b[1].tolist(), strict=True))
    expected = sorted(_expected_train_row(s, max_len, padding_id) for s in lists if len(s) >= 2)
    assert got == expected
    again = list(train_batches(train, max_len=max_len, batch_size=batch_size, padding_id=padding_id,
                               rng=np.random.default_rng(7)))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(again, batches, strict=True))


def test_train_order_follows_rng():
    train = _sequences([[k, k + 1] for k in range(0, 400, 2)])

    def first(seed):
        batches = train_batches(train, max_len=1, batch_size=16, padding_id=999, rng=np.random.default_rng(seed))
        return torch.cat([inputs[:, 0] for inputs, _ in batches]).tolist()

    assert first(1) == first(1) and first(1) != first(2)
    assert sorted(first(1)) == list(range(0, 400, 2))


def test_eval_batches():
    rng = np.random.default_rng()
    lists = [s for s in _random_lists(rng, int(rng.integers(10, 100)), 30) if s]
    evalset = EvalSet(inputs=_sequences(lists), targets=rng.integers(0, 30, len(lists)).astype(np.int32))
    max_len, batch_size = int(rng.integers(1, 10)), int(rng.integers(1, 20))
    batches = list(eval_batches(evalset.inputs, max_len=max_len, batch_size=batch_size, padding_id=30))
    rows = torch.cat([r for _, _, r in batches])
    assert rows.dtype == torch.int64 and rows.tolist() == list(range(len(lists)))
    for inputs, lengths, batch_rows in batches:
        assert inputs.dtype == lengths.dtype == torch.int64 and inputs.shape == (len(batch_rows), max_len)
        for row, length, values in zip(batch_rows.tolist(), lengths.tolist(), inputs.tolist(), strict=True):
            kept = lists[row][-max_len:]
            assert length == len(kept) and values == kept + [30] * (max_len - len(kept))


def test_eval_hand_checked_and_errors():
    evalset = EvalSet(inputs=_sequences([[1, 2, 3], [4]]), targets=np.array([5, 6], dtype=np.int32))
    ((inputs, lengths, rows),) = eval_batches(evalset.inputs, max_len=2, batch_size=8, padding_id=9)
    assert inputs.tolist() == [[2, 3], [4, 9]] and lengths.tolist() == [2, 1] and rows.tolist() == [0, 1]
    with pytest.raises(CutrecError, match="model.max_len=0 is out of range"):
        next(eval_batches(evalset.inputs, max_len=0, batch_size=8, padding_id=9))
    with pytest.raises(CutrecError, match="train.batch_size=0 is out of range"):
        num_batches(epoch_order(evalset.inputs, min_length=2, rng=np.random.default_rng()), 0)
    with pytest.raises(CutrecError, match="need sequences of 2 or more items"):
        next_item_batch(evalset.inputs, np.array([0, 1]), max_len=2, padding_id=9)


def _masked(train, rows, seed, mask_prob=0.2, max_len=50):
    return masked_item_batch(train, rows, max_len=max_len, padding_id=1000, mask_id=1001, mask_prob=mask_prob,
                             rng=np.random.default_rng(seed))


def test_masked_batches_keep_the_items_and_mask_only_real_positions():
    rng = np.random.default_rng()
    lists = [s for s in _random_lists(rng, 300, 1000) if s]
    train, max_len = _sequences(lists), int(rng.integers(1, 12))
    rows = rng.permutation(len(lists))[:64]
    inputs, targets = _masked(train, rows, seed=int(rng.integers(1 << 30)), max_len=max_len)
    assert inputs.shape == targets.shape == (len(rows), max_len) and inputs.dtype == targets.dtype == torch.int64
    for row, values, target in zip(rows, inputs.tolist(), targets.tolist(), strict=True):
        kept = lists[row][-max_len:]
        masked = [v == 1001 for v in values]
        assert values[len(kept):] == [1000] * (max_len - len(kept)) and not any(masked[len(kept):])
        assert sum(masked) >= 1  # at least one target per sequence
        assert [t if m else v for v, t, m in zip(values, target, masked, strict=True)][: len(kept)] == kept
        assert all(t == -100 for t, m in zip(target, masked, strict=True) if not m)


def test_masking_rate_is_binomial_and_follows_the_seed():
    lists = [[(k + j) % 900 for j in range(40)] for k in range(500)]  # 500 sequences of 40 items
    train, rows = _sequences(lists), np.arange(500)
    inputs, targets = _masked(train, rows, seed=11, mask_prob=0.2)
    masked = int((inputs == 1001).sum())
    # a forced mask needs a row with none of 40 drawn: P = 0.8 ** 40 ~ 1e-4, too rare to bias this test
    assert stats.binomtest(masked, 500 * 40, 0.2).pvalue > 1e-4, masked
    assert torch.equal(targets != -100, inputs == 1001)
    again, _ = _masked(train, rows, seed=11, mask_prob=0.2)
    other, _ = _masked(train, rows, seed=12, mask_prob=0.2)
    assert torch.equal(inputs, again) and not torch.equal(inputs, other)


def test_every_sequence_gets_a_mask_even_at_a_low_rate():
    lists = [[5], [1, 2], [3, 4, 5]] * 50
    inputs, targets = _masked(_sequences(lists), np.arange(150), seed=0, mask_prob=0.01)
    assert ((inputs == 1001).sum(1) == 1).all()  # almost always the forced one, at a uniform position
    forced = (inputs[2::3] == 1001).float().mean(0)[:3]  # the three-item rows: each position about 1/3
    assert (forced > 0.15).all(), forced
    with pytest.raises(CutrecError, match="need sequences of 1 or more items"):
        _masked(_sequences([[1], []]), np.array([0, 1]), seed=0)
