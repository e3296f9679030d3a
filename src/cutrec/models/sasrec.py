"""SASRec (Kang and McAuley, ICDM 2018): causal self-attention over a user's item sequence, tied item table.

Trained on next-item targets at every position; the user vector is the hidden state at the last real item.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cutrec.data.batches import next_item_batch
from cutrec.data.splits import Sequences
from cutrec.models.transformer import TransformerEncoder


class SASRec(TransformerEncoder):
    """Item ids [B, L] (right-padded with `padding_id` = num_items) -> hidden states [B, L, D], causal."""

    min_train_length = 2  # one (input, next item) pair at least

    def __init__(self, num_items: int, *, num_heads: int = 1, **settings: Any) -> None:
        """`settings`: the keywords of TransformerEncoder (max_len, dim, num_blocks, dropout, ...)."""
        super().__init__(num_items, num_special=1, causal=True, num_heads=num_heads, **settings)

    def user_vectors(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Hidden state at each sequence's last real item: [B, D]."""
        hidden = self(inputs)  # [B, L, D]
        rows = torch.arange(inputs.shape[0], device=inputs.device)
        return hidden[rows, lengths.to(inputs.device) - 1]  # [B, D]

    def training_batch(
        self, train: Sequences, rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return next_item_batch(train, rows, max_len=self.max_len, padding_id=self.padding_id)
