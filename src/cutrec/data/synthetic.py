"""A synthetic interaction log with hidden, learnable structure: item clusters, Zipf popularity and fixed successors.

Every item has a fixed successor in its cluster. A user's next item is the current item's successor with
probability 1/2; otherwise, with `stay_probability`, an item of the current cluster drawn by popularity; otherwise
an item, drawn by popularity, of a cluster picked from a sparse random cluster-to-cluster transition table. All
users are simulated together, one numpy step per position, so millions of users and items stay fast.
"""

from __future__ import annotations

import numpy as np

from cutrec.config import SyntheticConfig
from cutrec.data.preprocess import SequenceData
from cutrec.data.readers import Interactions
from cutrec.errors import CutrecError

FOLLOW_PROBABILITY = 0.5  # chance that the next item is the current item's successor
MIN_LENGTH = 5  # shortest user sequence
NEXT_CLUSTERS = 3  # clusters a cluster can move on to
START_TIME = 1_600_000_000  # unix seconds (September 2020)
START_SPAN = 365 * 86_400  # users start uniformly within a year
MAX_GAP = 2 * 86_400  # seconds between a user's events: uniform in [1, MAX_GAP]


def synthetic_interactions(config: SyntheticConfig) -> Interactions:
    """Interactions from `config` (deterministic for config.seed); integer ids, users 0..U-1, items 0..N-1.

    Lengths are MIN_LENGTH - 1 + Geometric(1 / (mean_length - MIN_LENGTH + 1)), so at least MIN_LENGTH and
    mean_length on average. Each user's timestamps strictly increase from a start spread over a year, so users
    interleave in time.
    """
    _validate(config)
    rng = np.random.default_rng(config.seed)
    num_items, num_clusters = config.num_items, config.num_clusters
    # Hidden item index h: clusters are contiguous ranges, popularity falls with h inside a cluster.
    bounds = np.arange(num_clusters + 1, dtype=np.int64) * num_items // num_clusters  # [C + 1]
    sizes = np.diff(bounds)  # [C]
    cluster_of = np.repeat(np.arange(num_clusters), sizes)  # [N]
    # Zipf weight of rank r (0 = most popular) is (r + 1) ** -s; one cumulative table serves every cluster.
    cumulative = np.cumsum((np.arange(sizes.max()) + 1.0) ** -config.zipf_exponent)  # [max cluster size]
    totals = cumulative[sizes - 1]  # [C] weight of each cluster

    def popular(clusters: np.ndarray) -> np.ndarray:
        """One hidden item per entry, drawn by Zipf popularity within that cluster."""
        rank = np.searchsorted(cumulative, rng.random(len(clusters)) * totals[clusters], side="right")
        return bounds[clusters] + np.minimum(rank, sizes[clusters] - 1)

    # Successor: the next item in a random cyclic order of each cluster (a single cycle, so chains rarely repeat).
    order = np.lexsort((rng.random(num_items), cluster_of))  # [N] items grouped by cluster, shuffled within
    following = np.arange(1, num_items + 1)  # [N] position after each position in `order`
    following[bounds[1:] - 1] = bounds[:-1]  # a cluster's last position wraps to its first
    successor = np.empty(num_items, dtype=np.int64)
    successor[order] = order[following]
    next_cluster = (
        np.arange(num_clusters)[:, None] + rng.integers(1, max(num_clusters, 2), size=(num_clusters, NEXT_CLUSTERS))
    ) % num_clusters  # [C, NEXT_CLUSTERS] never the cluster itself (unless there is only one)

    lengths = MIN_LENGTH - 1 + rng.geometric(1.0 / (config.mean_length - MIN_LENGTH + 1), size=config.num_users)
    by_length = np.argsort(-lengths, kind="stable")  # [U] longest first, so the users still active are a prefix
    lengths = lengths[by_length]
    offsets = np.zeros(config.num_users + 1, dtype=np.int64)  # [U + 1]
    np.cumsum(lengths, out=offsets[1:])
    active = np.searchsorted(-lengths, -np.arange(lengths[0]), side="left")  # [max length] users longer than t

    hidden = np.empty(offsets[-1], dtype=np.int64)  # [E] hidden item of each event
    clusters = rng.integers(0, num_clusters, size=config.num_users)  # [U]
    current = popular(clusters)  # [U]
    hidden[offsets[:-1]] = current
    stay_or_follow = FOLLOW_PROBABILITY + (1.0 - FOLLOW_PROBABILITY) * config.stay_probability
    for step in range(1, len(active)):
        count = active[step]
        current, clusters = current[:count], clusters[:count]  # [A]
        draw = rng.random(count)  # [A]
        moved = np.where(
            draw >= stay_or_follow, next_cluster[clusters, rng.integers(0, NEXT_CLUSTERS, size=count)], clusters
        )  # [A]
        follow = draw < FOLLOW_PROBABILITY  # [A] a successor stays in its cluster
        current = np.where(follow, successor[current], popular(moved))  # [A]
        clusters = np.where(follow, clusters, moved)
        hidden[offsets[:count] + step] = current

    item_ids = rng.permutation(num_items)  # [N] raw id of each hidden item, so ids reveal no cluster or rank
    gaps = rng.integers(1, MAX_GAP + 1, size=offsets[-1])  # [E]
    gaps[offsets[:-1]] = START_TIME + rng.integers(0, START_SPAN, size=config.num_users)  # first event: start time
    elapsed = np.cumsum(gaps)  # [E]
    timestamps = elapsed - np.repeat(elapsed[offsets[:-1]] - gaps[offsets[:-1]], lengths)  # [E] per-user cumsum
    return Interactions(
        users=np.repeat(by_length.astype(np.int64), lengths),
        items=item_ids[hidden].astype(np.int64),
        timestamps=timestamps,
    )


def with_cold_items(data: SequenceData, num_items: int) -> SequenceData:
    """The preprocessed synthetic data over its whole catalog: raw ids 0..N-1 (so dense id = raw id), the items
    that no user touched included, as a real catalog holds items without interactions."""
    return SequenceData(
        offsets=data.offsets,
        items=data.item_ids[data.items].astype(np.int32),  # [E] raw ids, which are the dense ids now
        timestamps=data.timestamps,
        item_ids=np.arange(num_items, dtype=np.int64),
        user_ids=data.user_ids,
    )


def _validate(config: SyntheticConfig) -> None:
    checks = [
        (config.num_users >= 1, "num_users", config.num_users, "use 1 or more"),
        (config.num_items >= 1, "num_items", config.num_items, "use 1 or more"),
        (1 <= config.num_clusters <= config.num_items, "num_clusters", config.num_clusters,
         "use between 1 and data.synthetic.num_items"),
        (config.mean_length >= MIN_LENGTH, "mean_length", config.mean_length, f"use {MIN_LENGTH} or more"),
        (0.0 <= config.stay_probability <= 1.0, "stay_probability", config.stay_probability, "use a value in [0, 1]"),
        (config.zipf_exponent >= 0.0, "zipf_exponent", config.zipf_exponent, "use 0 or more"),
    ]
    for ok, key, value, fix in checks:
        if not ok:
            raise CutrecError(f"data.synthetic.{key}={value!r} is out of range: {fix}")
