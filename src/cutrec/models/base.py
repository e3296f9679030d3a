"""The model interface: what the trainer, the evaluator and the checkpoint loader use of a sequence encoder.

An encoder is a torch `nn.Module` with the members below, and nothing else of it is used; a new encoder is one
module plus, at most, one batch function in `cutrec.data.batches`. It never sees a loss: training scores its hidden
states at the target positions against `item_table` through the seam `loss(hidden [M, D], items [N, D], targets
[M])`, and evaluation scores `user_vectors` against the whole `item_table`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from cutrec.data.splits import Sequences


class SequenceModel(Protocol):
    """A sequence encoder over a catalog of `num_items` items (ids 0..N-1; `padding_id` and special ids >= N)."""

    num_items: int
    max_len: int  # the longest input it reads
    min_train_length: int  # training sequences with fewer items are skipped

    @property
    def padding_id(self) -> int: ...

    @property
    def item_table(self) -> torch.Tensor:
        """[N, D] output item table (the catalog only: never a padding or special row)."""
        ...

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Right-padded item ids [B, L] (L <= max_len) -> hidden states [B, L, D]."""
        ...

    def user_vectors(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Histories [B, L] (right-padded, L <= max_len) with real lengths [B] -> user vectors [B, D] for ranking."""
        ...

    def training_batch(
        self, train: Sequences, rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences `rows` [B] of `train` -> (inputs [B, max_len], targets [B, max_len]) int64; targets are
        -100 (IGNORE_INDEX) where there is nothing to predict. Any randomness comes from `rng`."""
        ...
