"""Train / validation / test splits of per-user sequences: leave-one-out and the global temporal split.

Every split keeps the data as offsets into flat item arrays, and every eval set has one target per user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cutrec.data.preprocess import SequenceData
from cutrec.errors import CutrecError


@dataclass
class Sequences:
    """Item sequences as offsets into one flat array, each tagged with its user's row in SequenceData."""

    offsets: np.ndarray  # [U + 1] int64
    items: np.ndarray  # [E] int32
    users: np.ndarray  # [U] int64: row of each sequence in SequenceData (so results map back to raw user ids)

    def rows(self, start: int, stop: int) -> Sequences:
        """Sequences start..stop-1, as their own flat arrays (views of these)."""
        first, last = self.offsets[start], self.offsets[stop]
        return Sequences(offsets=self.offsets[start : stop + 1] - first, items=self.items[first:last],
                         users=self.users[start:stop])


@dataclass
class EvalSet:
    """Per user: the history the model sees and the one item it must predict."""

    inputs: Sequences  # each user's history the model sees (never empty)
    targets: np.ndarray  # [U] int32: the one item to predict for each user

    def rows(self, start: int, stop: int) -> EvalSet:
        """Users start..stop-1 of the eval set."""
        return EvalSet(inputs=self.inputs.rows(start, stop), targets=self.targets[start:stop])


@dataclass
class Split:
    """A train set of sequences, validation and test eval sets, and the catalog size."""

    train: Sequences
    valid: EvalSet
    test: EvalSet
    num_items: int


def leave_one_out(data: SequenceData) -> Split:
    """Each user's last event is its test target and the second-last its validation target.

    Test: users with >= 2 events; input = every event before the last. Validation: users with >= 3 events;
    input = every event before the second-last. Train: every user's events except the last two (sequences shorter
    than 2 are kept; batching skips them).
    """
    starts, ends = data.offsets[:-1], data.offsets[1:]  # [U], [U]
    lengths = ends - starts  # [U]
    users = np.arange(data.num_users, dtype=np.int64)  # [U]
    test_users = users[lengths >= 2]
    if len(test_users) == 0:
        raise CutrecError("leave_one_out needs users with 2 or more events, but every user has 1; use longer histories")
    valid_users = users[lengths >= 3]
    train = slices(data, users, starts, np.maximum(ends - 2, starts))
    valid = _eval_set(data, valid_users, ends[valid_users] - 2)
    test = _eval_set(data, test_users, ends[test_users] - 1)
    return Split(train=train, valid=valid, test=test, num_items=data.num_items)


def global_temporal(
    data: SequenceData, *, test_fraction: float = 0.1, valid_fraction: float = 0.1, seed: int = 0
) -> Split:
    """The global temporal split of the seed paper (arXiv 2509.09682, after Gusak et al., "Time to Split").

    Let E be the number of events and k = E - round(test_fraction * E), halves rounding up. The threshold t is
    the k-th smallest timestamp, so that (up to ties at t) the last `test_fraction` of all events lie after t
    (timestamp > t); when k = 0, t lies before every event.
    - Test users: users with at least one event after t. Target: their last event; input: all their events before
      it (in the stable time order, so events tied with the target in time but earlier in the file count as before).
    - Validation users: round(valid_fraction * M) of the M non-test users, halves rounding up, drawn by
      np.random.default_rng(seed). Target: their last event; input: all their events before it. They are left out
      of train entirely.
    - Train: the events at or before t of every user who is not a validation user (test users contribute their
      pre-t events).
    Users whose input would be empty are dropped from that eval set; inputs never contain their own target.
    Relies on each user's events being in time order, as `preprocess` leaves them.
    """
    if not 0.0 < test_fraction < 1.0:
        raise CutrecError(f"data.test_fraction={test_fraction} is out of range; use a fraction in (0, 1)")
    if not 0.0 <= valid_fraction < 1.0:
        raise CutrecError(f"data.valid_fraction={valid_fraction} is out of range; use a fraction in [0, 1)")
    num_events = len(data.items)
    k = num_events - int(test_fraction * num_events + 0.5)
    threshold = np.partition(data.timestamps, k - 1)[k - 1] if k >= 1 else data.timestamps.min() - 1
    starts, ends = data.offsets[:-1], data.offsets[1:]  # [U], [U]
    lengths = ends - starts  # [U]
    event_users = np.repeat(np.arange(data.num_users), lengths)  # [E] user row of each event
    before = np.bincount(event_users[data.timestamps <= threshold], minlength=data.num_users)  # [U] pre-t events
    is_test = before < lengths  # [U] some event after t
    if not is_test.any():
        raise CutrecError(
            f"data.test_fraction={test_fraction} of {num_events} events leaves none after the time threshold; raise it"
        )
    non_test = np.flatnonzero(~is_test)  # [M]
    rng = np.random.default_rng(seed)
    valid_users = np.sort(rng.permutation(non_test)[: int(valid_fraction * len(non_test) + 0.5)])  # [V]
    is_valid = np.zeros(data.num_users, dtype=bool)
    is_valid[valid_users] = True
    train_users = np.flatnonzero(~is_valid)
    train = slices(data, train_users, starts[train_users], starts[train_users] + before[train_users])
    test_users = np.flatnonzero(is_test & (lengths >= 2))
    valid_users = valid_users[lengths[valid_users] >= 2]
    valid = _eval_set(data, valid_users, ends[valid_users] - 1)
    test = _eval_set(data, test_users, ends[test_users] - 1)
    return Split(train=train, valid=valid, test=test, num_items=data.num_items)


def _eval_set(data: SequenceData, users: np.ndarray, target_at: np.ndarray) -> EvalSet:
    """Targets items[target_at] with inputs = each user's events from its first up to (not including) the target."""
    inputs = slices(data, users, data.offsets[users], target_at)
    return EvalSet(inputs=inputs, targets=data.items[target_at].astype(np.int32))


def slices(data: SequenceData, users: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> Sequences:
    """The events [starts[i], ends[i]) of each chosen user, gathered into new flat arrays without a Python loop."""
    lengths = ends - starts  # [K]
    offsets = np.zeros(len(users) + 1, dtype=np.int64)  # [K + 1]
    np.cumsum(lengths, out=offsets[1:])
    index = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)  # [E'] source events
    return Sequences(offsets=offsets, items=data.items[index], users=users.astype(np.int64))
