"""Turn raw interactions into compact per-user sequences: dedupe, rating cut, iterative k-core, time order, ids.

Dense item ids 0..N-1 follow the sorted raw ids (numeric order for integer ids, lexicographic for strings), and users
are ordered by sorted raw id too; the padding id is N, never a real item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cutrec.data.readers import Interactions
from cutrec.errors import CutrecError


@dataclass
class SequenceData:
    """Every user's events in stable time order, as offsets into one flat item array."""

    offsets: np.ndarray  # [U + 1] int64; user u's events are items[offsets[u]:offsets[u+1]]
    items: np.ndarray  # [E] int32 dense item ids 0..N-1
    timestamps: np.ndarray  # [E] int64
    item_ids: np.ndarray  # [N] the raw id of each dense item (int64, or object array of str)
    user_ids: np.ndarray  # [U] the raw id of each user (int64, or object array of str)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def padding_id(self) -> int:
        return self.num_items


def preprocess(
    interactions: Interactions,
    *,
    dedupe: bool = False,
    min_rating: float | None = None,
    min_user_count: int = 0,
    min_item_count: int = 0,
) -> SequenceData:
    """Clean and index `interactions`, in this order.

    1. dedupe: drop repeated (user, item, timestamp) events, keeping the first in file order.
    2. min_rating: keep events whose rating is strictly above it (needs ratings).
    3. iterative k-core: drop users with fewer than `min_user_count` events and items with fewer than
       `min_item_count`, again and again until every remaining user and item passes (a fixed point).
    4. stable sort by (user, timestamp): events with equal timestamps keep their file order.
    5. dense ids: items 0..N-1 by sorted raw id, users by sorted raw id.
    A step that leaves no events raises CutrecError naming it.
    """
    if min_user_count < 0 or min_item_count < 0:
        raise CutrecError(
            f"data.min_user_count={min_user_count} / data.min_item_count={min_item_count} must be 0 or more"
        )
    if len(interactions.users) == 0:
        raise CutrecError("the data has no events; check data.path or the dataset")
    user_ids, users = _factorize(interactions.users)  # [U0] sorted raw ids, [E] int64 codes
    item_ids, items = _factorize(interactions.items)  # [N0], [E]
    timestamps = interactions.timestamps  # [E] int64
    ratings = interactions.ratings  # [E] float64 or None
    if dedupe:
        keep = first_occurrences(users, items, timestamps)  # [E] bool
        users, items, timestamps = users[keep], items[keep], timestamps[keep]
        ratings = ratings[keep] if ratings is not None else None
    if min_rating is not None:
        if ratings is None:
            raise CutrecError(
                f"data.min_rating={min_rating} needs ratings but none were read; "
                "set data.rating_col to the rating column, or data.min_rating=none"
            )
        keep = ratings > min_rating
        if not keep.any():
            raise CutrecError(
                f"no event has a rating above data.min_rating={min_rating} (ratings run from {ratings.min():g} "
                f"to {ratings.max():g}); lower data.min_rating"
            )
        users, items, timestamps = users[keep], items[keep], timestamps[keep]
    users, items, timestamps = _k_core(users, items, timestamps, min_user_count, min_item_count)
    order = np.lexsort((timestamps, users))  # [E] stable: ties in (user, timestamp) keep file order
    return indexed(users[order], items[order], timestamps[order], user_ids, item_ids)


def indexed(
    users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, user_ids: np.ndarray, item_ids: np.ndarray
) -> SequenceData:
    """SequenceData of events already in (user, timestamp, file) order, given as codes into sorted raw ids.

    users [E] and items [E] are int codes into user_ids [U0] and item_ids [N0]; unused codes are dropped.
    """
    user_counts = np.bincount(users, minlength=len(user_ids))  # [U0]
    present_users = user_counts > 0
    offsets = np.zeros(int(present_users.sum()) + 1, dtype=np.int64)  # [U + 1]
    np.cumsum(user_counts[present_users], out=offsets[1:])
    present_items = np.bincount(items, minlength=len(item_ids)) > 0  # [N0]
    if present_items.sum() >= np.iinfo(np.int32).max:
        raise CutrecError(f"{int(present_items.sum())} items do not fit int32 ids; raise data.min_item_count")
    dense = (np.cumsum(present_items) - 1).astype(np.int32)  # [N0] dense id of each code that is still present
    return SequenceData(
        offsets=offsets,
        items=dense[items],
        timestamps=timestamps,
        item_ids=item_ids[present_items],
        user_ids=user_ids[present_users],
    )


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique raw ids [K] and each value's index into them [E] int64."""
    if values.dtype == object:
        uniques, codes = np.unique(values.astype(str), return_inverse=True)  # fixed-width str sorts in C
        return uniques.astype(object), codes.astype(np.int64)
    uniques, codes = np.unique(values, return_inverse=True)
    return uniques, codes.astype(np.int64)


def first_occurrences(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """[E] bool: True for the first event (in file order) of each distinct (user, item, timestamp)."""
    order = np.lexsort((timestamps, items, users))  # stable: the first of a group is its earliest in the file
    same = (
        (users[order[1:]] == users[order[:-1]])
        & (items[order[1:]] == items[order[:-1]])
        & (timestamps[order[1:]] == timestamps[order[:-1]])
    )  # [E - 1] sorted event equals the one before it
    keep = np.ones(len(users), dtype=bool)
    keep[order[1:][same]] = False
    return keep


def _k_core(
    users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, min_user_count: int, min_item_count: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drop events of rare users and items until every remaining user and item is frequent enough."""
    keep = k_core_mask(users, items, min_user_count, min_item_count)  # [E] bool
    if keep is None:
        return users, items, timestamps
    return users[keep], items[keep], timestamps[keep]


def k_core_mask(users: np.ndarray, items: np.ndarray, min_user_count: int, min_item_count: int) -> np.ndarray | None:
    """[E] bool: the events the iterative k-core keeps (None: all of them), for int codes users [E] and items [E].

    Each round counts the kept events per user and item and drops those of users or items below their minimum,
    until a round drops nothing; the codes are filtered once per round, the timestamps never.
    """
    if min_user_count <= 1 and min_item_count <= 1:
        return None
    keep = None
    num_users, num_items = int(users.max()) + 1, int(items.max()) + 1
    while True:
        kept_users, kept_items = (users, items) if keep is None else (users[keep], items[keep])
        user_ok = np.bincount(kept_users, minlength=num_users) >= min_user_count  # [U0]
        item_ok = np.bincount(kept_items, minlength=num_items) >= min_item_count  # [N0]
        if user_ok[kept_users].all() and item_ok[kept_items].all():
            return keep
        del kept_users, kept_items
        round_keep = user_ok[users] & item_ok[items]  # [E]
        keep = round_keep if keep is None else keep & round_keep
        if not keep.any():
            raise CutrecError(
                f"no events are left after the iterative k-core filter (data.min_user_count={min_user_count}, "
                f"data.min_item_count={min_item_count}); lower them"
            )
