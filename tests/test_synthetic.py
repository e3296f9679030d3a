"""The synthetic generator: deterministic, well-formed, with the promised successor and cluster structure, fast."""

import time
from dataclasses import replace

import numpy as np
import pytest

from cutrec.config import SyntheticConfig
from cutrec.data import synthetic_interactions
from cutrec.errors import CutrecError


def _per_user(interactions):
    """Events grouped by user, each user's events in time order: (offsets [U + 1], items [E], timestamps [E])."""
    order = np.lexsort((interactions.timestamps, interactions.users))
    counts = np.bincount(interactions.users)
    return np.concatenate([[0], np.cumsum(counts)]), interactions.items[order], interactions.timestamps[order]


def _modal_next_share(items: np.ndarray, following: np.ndarray, num_items: int) -> float:
    """Share of transitions a -> b where b is a's most frequent next item."""
    pairs, counts = np.unique(items * num_items + following, return_counts=True)
    best = np.zeros(num_items)
    np.maximum.at(best, pairs // num_items, counts)
    return best.sum() / len(items)


def test_deterministic_and_well_formed():
    config = SyntheticConfig(num_users=800, num_items=300, num_clusters=10, mean_length=20, seed=5)
    a, b = synthetic_interactions(config), synthetic_interactions(config)
    for name in ("users", "items", "timestamps"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.items, synthetic_interactions(replace(config, seed=6)).items)
    assert a.users.dtype == a.items.dtype == a.timestamps.dtype == np.int64 and a.ratings is None
    assert a.items.min() >= 0 and a.items.max() < config.num_items
    offsets, _, times = _per_user(a)
    lengths = np.diff(offsets)
    assert len(lengths) == config.num_users and lengths.min() >= 5
    assert abs(lengths.mean() - config.mean_length) < 2.0
    same_user = np.ones(len(times) - 1, dtype=bool)
    same_user[offsets[1:-1] - 1] = False
    assert (np.diff(times)[same_user] > 0).all()  # strictly increasing per user
    spans = np.stack([times[offsets[:-1]], times[offsets[1:] - 1]], axis=1)
    late_start = np.median(spans[:, 0])
    overlapping = (spans[:, 0] < late_start) & (spans[:, 1] > late_start)
    assert overlapping.sum() > 10  # users interleave in time


def test_successor_structure_far_above_chance():
    config = SyntheticConfig(seed=int(np.random.default_rng().integers(0, 10_000)))
    offsets, items, _ = _per_user(synthetic_interactions(config))
    same_user = np.ones(len(items) - 1, dtype=bool)
    same_user[offsets[1:-1] - 1] = False
    current, following = items[:-1][same_user], items[1:][same_user]
    share = _modal_next_share(current, following, config.num_items)
    shuffled = _modal_next_share(current, np.random.default_rng(0).permutation(following), config.num_items)
    assert share > 0.45 and share > 5 * shuffled


def test_stay_probability_keeps_users_in_their_cluster():
    config = SyntheticConfig(num_users=300, num_items=200, num_clusters=20, mean_length=40, stay_probability=1.0)
    offsets, items, _ = _per_user(synthetic_interactions(config))
    distinct = [len(np.unique(items[offsets[u] : offsets[u + 1]])) for u in range(0, 300, 10)]
    assert max(distinct) <= 10  # a cluster holds 200 / 20 items
    offsets, items, _ = _per_user(synthetic_interactions(replace(config, stay_probability=0.0)))
    distinct = [len(np.unique(items[offsets[u] : offsets[u + 1]])) for u in range(0, 300, 10)]
    assert np.mean(distinct) > 15


def test_popularity_skew_follows_zipf_exponent():
    base = SyntheticConfig(num_users=1000, num_items=500, num_clusters=5)
    shares = []
    for exponent in (0.0, 1.5):
        items = synthetic_interactions(replace(base, zipf_exponent=exponent)).items
        counts = np.sort(np.bincount(items, minlength=base.num_items))[::-1]
        shares.append(counts[:25].sum() / counts.sum())
    assert shares[1] > 2 * shares[0]


def test_scales_to_millions_of_items():
    config = SyntheticConfig(num_users=2000, num_items=2_000_000, num_clusters=25, seed=1)
    start = time.perf_counter()
    interactions = synthetic_interactions(config)
    assert time.perf_counter() - start < 10.0
    assert interactions.items.min() >= 0 and interactions.items.max() < config.num_items
    assert len(np.unique(interactions.users)) == config.num_users


@pytest.mark.parametrize(
    "change,message",
    [
        ({"num_clusters": 0}, "data.synthetic.num_clusters=0 is out of range"),
        ({"num_items": 5, "num_clusters": 6}, "data.synthetic.num_clusters=6 is out of range"),
        ({"mean_length": 4}, "data.synthetic.mean_length=4 is out of range: use 5 or more"),
        ({"stay_probability": 1.5}, "data.synthetic.stay_probability=1.5 is out of range"),
        ({"num_users": 0}, "data.synthetic.num_users=0 is out of range"),
        ({"zipf_exponent": -1.0}, "data.synthetic.zipf_exponent=-1.0 is out of range"),
    ],
)
def test_config_checked(change, message):
    with pytest.raises(CutrecError, match=message):
        synthetic_interactions(replace(SyntheticConfig(), **change))


def test_the_synthetic_catalog_keeps_cold_items():
    from cutrec.config import DataConfig
    from cutrec.data.load import load_sequences

    rng = np.random.default_rng()
    num_items = int(rng.integers(2000, 6000))
    synthetic = SyntheticConfig(num_users=30, num_items=num_items, num_clusters=10, mean_length=8)
    data = load_sequences(DataConfig(synthetic=synthetic))
    assert data.num_items == num_items and np.array_equal(data.item_ids, np.arange(num_items))
    raw = synthetic_interactions(synthetic)
    assert sorted(data.items.tolist()) == sorted(raw.items.tolist())  # dense ids are the raw ids
    touched = load_sequences(DataConfig(synthetic=replace(synthetic, cold_items=False)))
    assert touched.num_items == len(np.unique(raw.items)) < num_items
