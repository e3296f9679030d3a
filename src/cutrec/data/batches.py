"""Fixed-width [B, L] batches of item sequences for training (next-item targets) and evaluation.

Batches are right-padded: real items first, padding after, so causal attention never attends to padding. Each
batch is gathered from the flat arrays with one vectorised index, not a loop over items.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from cutrec.data.splits import EvalSet, Sequences
from cutrec.errors import CutrecError

IGNORE_INDEX = -100  # target at padded positions (the value torch's cross-entropy ignores)


def train_batches(
    train: Sequences, *, max_len: int, batch_size: int, padding_id: int, rng: np.random.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (inputs [B, L] int64, targets [B, L] int64) with L = max_len, in an order drawn from `rng`.

    For a sequence s of 2 or more items: inputs = s[:-1][-max_len:] padded with `padding_id`, targets =
    s[1:][-max_len:] padded with -100. Sequences with fewer than 2 items are skipped; the last batch may be smaller.
    """
    _check(max_len, batch_size)
    lengths = np.diff(train.offsets)  # [S]
    rows = np.flatnonzero(lengths >= 2)  # [S'] sequences with at least one (input, target) pair
    rows = rows[rng.permutation(len(rows))]
    positions = np.arange(max_len)  # [L]
    for begin in range(0, len(rows), batch_size):
        batch = rows[begin : begin + batch_size]  # [B]
        pairs = np.minimum(lengths[batch] - 1, max_len)  # [B] (input, target) pairs kept
        first = train.offsets[batch + 1] - pairs - 1  # [B] flat index of the first kept input
        real = positions < pairs[:, None]  # [B, L]
        index = np.where(real, first[:, None] + positions, 0)  # [B, L] flat index of each input
        inputs = np.where(real, train.items[index], padding_id).astype(np.int64)  # [B, L]
        targets = np.where(real, train.items[index + 1], IGNORE_INDEX).astype(np.int64)  # [B, L]
        yield torch.from_numpy(inputs), torch.from_numpy(targets)


def eval_batches(
    evalset: EvalSet, *, max_len: int, batch_size: int, padding_id: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The eval set in order as (inputs [B, L] int64, lengths [B] int64, rows [B] int64).

    inputs holds the last max_len items of each user's input, right-padded with `padding_id`; lengths counts the
    real items; rows indexes evalset.targets.
    """
    _check(max_len, batch_size)
    sequences = evalset.inputs
    lengths = np.diff(sequences.offsets)  # [U]
    positions = np.arange(max_len)  # [L]
    for begin in range(0, len(lengths), batch_size):
        rows = np.arange(begin, min(begin + batch_size, len(lengths)), dtype=np.int64)  # [B]
        kept = np.minimum(lengths[rows], max_len)  # [B]
        first = sequences.offsets[rows + 1] - kept  # [B] flat index of the first kept item
        real = positions < kept[:, None]  # [B, L]
        index = np.where(real, first[:, None] + positions, 0)  # [B, L]
        inputs = np.where(real, sequences.items[index], padding_id).astype(np.int64)  # [B, L]
        yield torch.from_numpy(inputs), torch.from_numpy(kept.astype(np.int64)), torch.from_numpy(rows)


def num_train_batches(train: Sequences, *, batch_size: int) -> int:
    """How many batches train_batches yields per epoch (sequences with 2 or more items, batch_size at a time)."""
    if batch_size < 1:
        raise CutrecError(f"train.batch_size={batch_size} is out of range; use a batch of 1 or more")
    usable = int((np.diff(train.offsets) >= 2).sum())
    return -(-usable // batch_size)


def _check(max_len: int, batch_size: int) -> None:
    if max_len < 1:
        raise CutrecError(f"model.max_len={max_len} is out of range; use a sequence length of 1 or more")
    if batch_size < 1:
        raise CutrecError(f"batch_size={batch_size} is out of range; use a batch of 1 or more")
