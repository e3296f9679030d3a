"""Fixed-width [B, L] batches of item sequences: an epoch's order, next-item (SASRec) and masked-item (BERT4Rec)
training batches, and evaluation batches.

Batches are right-padded: real items first, padding after, so causal attention never attends to padding. Each
batch is gathered from the flat arrays with one vectorised index, not a loop over items.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from cutrec.data.splits import Sequences
from cutrec.errors import CutrecError

IGNORE_INDEX = -100  # target at padded positions (the value torch's cross-entropy ignores)


def usable_rows(train: Sequences, *, min_length: int) -> np.ndarray:
    """The rows [S'] of the sequences an epoch trains on: those of at least `min_length` items (and 1)."""
    return np.flatnonzero(np.diff(train.offsets) >= max(min_length, 1))


def epoch_order(train: Sequences, *, min_length: int, rng: np.random.Generator) -> np.ndarray:
    """One epoch's sequence rows [S'] (`usable_rows`) in an order drawn from `rng`.

    Batch b of the epoch is `epoch_order[b * B : (b + 1) * B]` (see `num_batches`); the last batch may be smaller.
    """
    rows = usable_rows(train, min_length=min_length)  # [S']
    return rows[rng.permutation(len(rows))]


def num_batches(order: np.ndarray, batch_size: int) -> int:
    """How many batches of `batch_size` rows (the last one possibly smaller) an epoch order makes."""
    if batch_size < 1:
        raise CutrecError(f"train.batch_size={batch_size} is out of range; use a batch of 1 or more")
    return -(-len(order) // batch_size)


def next_item_batch(
    train: Sequences, rows: np.ndarray, *, max_len: int, padding_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-item targets (SASRec): (inputs [B, L] int64, targets [B, L] int64) with L = max_len.

    For a sequence s of 2 or more items: inputs = s[:-1][-max_len:] padded with `padding_id`, targets =
    s[1:][-max_len:] padded with -100.
    """
    _check(max_len, len(rows))
    lengths = np.diff(train.offsets)[rows]  # [B]
    if lengths.min() < 2:
        raise CutrecError("next-item batches need sequences of 2 or more items; skip shorter ones (min_length=2)")
    positions = np.arange(max_len)  # [L]
    pairs = np.minimum(lengths - 1, max_len)  # [B] (input, target) pairs kept
    first = train.offsets[rows + 1] - pairs - 1  # [B] flat index of the first kept input
    real = positions < pairs[:, None]  # [B, L]
    index = np.where(real, first[:, None] + positions, 0)  # [B, L] flat index of each input
    inputs = np.where(real, train.items[index], padding_id).astype(np.int64)  # [B, L]
    targets = np.where(real, train.items[index + 1], IGNORE_INDEX).astype(np.int64)  # [B, L]
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def masked_item_batch(
    train: Sequences, rows: np.ndarray, *, max_len: int, padding_id: int, mask_id: int, mask_prob: float,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked-item targets (BERT4Rec): (inputs [B, L] int64, targets [B, L] int64) with L = max_len.

    The last max_len items of each sequence, right-padded. Each real position is replaced by `mask_id` with
    probability `mask_prob`, independently; a sequence that drew no mask gets one at a uniformly chosen position.
    targets hold the original item at masked positions and -100 elsewhere. One draw of [B, L] uniforms from `rng`.
    """
    _check(max_len, len(rows))
    lengths = np.minimum(np.diff(train.offsets)[rows], max_len)  # [B] items kept
    if lengths.min() < 1:
        raise CutrecError("masked-item batches need sequences of 1 or more items; skip empty ones (min_length=1)")
    positions = np.arange(max_len)  # [L]
    first = train.offsets[rows + 1] - lengths  # [B] flat index of the first kept item
    real = positions < lengths[:, None]  # [B, L]
    items = np.where(real, train.items[np.where(real, first[:, None] + positions, 0)], padding_id)  # [B, L]
    draws = np.where(real, rng.random((len(rows), max_len)), np.inf)  # [B, L]; padding never masked
    masked = draws < mask_prob  # [B, L]
    # a row without a mask masks its smallest draw: a uniformly chosen real position
    masked[np.arange(len(rows)), draws.argmin(1)] |= ~masked.any(1)
    inputs = np.where(masked, mask_id, items).astype(np.int64)  # [B, L]
    targets = np.where(masked, items, IGNORE_INDEX).astype(np.int64)  # [B, L]
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def eval_batches(
    sequences: Sequences, *, max_len: int, batch_size: int, padding_id: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Histories (an eval set's inputs, or any users' histories) in order as (inputs [B, L] int64, lengths [B]
    int64, rows [B] int64).

    inputs holds the last max_len items of each history, right-padded with `padding_id`; lengths counts the real
    items; rows indexes the sequences.
    """
    _check(max_len, batch_size)
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


def _check(max_len: int, batch_size: int) -> None:
    if max_len < 1:
        raise CutrecError(f"model.max_len={max_len} is out of range; use a sequence length of 1 or more")
    if batch_size < 1:
        raise CutrecError(f"batch_size={batch_size} is out of range; use a batch of 1 or more")
