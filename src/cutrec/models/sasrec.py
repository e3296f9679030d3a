"""SASRec (Kang and McAuley, ICDM 2018): causal self-attention over a user's item sequence, tied item table.

Trained on next-item targets at every position; the user vector is the hidden state at the last real item.
"""

from __future__ import annotations

import numpy as np
import torch

from cutrec.data.batches import next_item_batch
from cutrec.data.splits import Sequences
from cutrec.models.transformer import DROPOUT_PLACES, TransformerEncoder


class SASRec(TransformerEncoder):
    """Item ids [B, L] (right-padded with `padding_id` = num_items) -> hidden states [B, L, D], causal."""

    min_train_length = 2  # one (input, next item) pair at least

    def __init__(
        self, num_items: int, *, max_len: int = 50, dim: int = 64, num_blocks: int = 2, num_heads: int = 1,
        dropout: float = 0.2, dropout_places: tuple[str, ...] = DROPOUT_PLACES,
        ffn_activation: str = "gelu", ffn_mult: float = 1.0, norm_placement: str = "pre", residual_gate: bool = False,
        embedding_scale: bool = False, init_std: float | None = None, materialize_items: bool = True,
    ) -> None:
        super().__init__(
            num_items, num_special=1, causal=True, max_len=max_len, dim=dim, num_blocks=num_blocks,
            num_heads=num_heads, dropout=dropout, dropout_places=dropout_places, ffn_activation=ffn_activation,
            ffn_mult=ffn_mult, norm_placement=norm_placement, residual_gate=residual_gate,
            embedding_scale=embedding_scale, init_std=init_std, materialize_items=materialize_items,
        )

    def user_vectors(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Hidden state at each sequence's last real item: [B, D]."""
        hidden = self(inputs)  # [B, L, D]
        rows = torch.arange(inputs.shape[0], device=inputs.device)
        return hidden[rows, lengths.to(inputs.device) - 1]  # [B, D]

    def training_batch(
        self, train: Sequences, rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return next_item_batch(train, rows, max_len=self.max_len, padding_id=self.padding_id)
