"""BERT4Rec (Sun et al., CIKM 2019): bidirectional self-attention trained to recover masked items (a cloze task).

A mask token has its own embedding row (id num_items + 1) that is not part of the output item table, so it is never
scored, recommended or drawn as a negative. In training each real position is replaced by the mask token with
probability `mask_prob` (at least one per sequence) and the masked positions are the targets
(`cutrec.data.batches.masked_item_batch`). For ranking, the mask token is appended after the user's history and its
hidden state is the user vector.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cutrec.data.batches import masked_item_batch
from cutrec.data.splits import Sequences
from cutrec.errors import CutrecError
from cutrec.models.transformer import TransformerEncoder


class BERT4Rec(TransformerEncoder):
    """Item ids [B, L] (right-padded with `padding_id` = num_items, `mask_id` = num_items + 1) -> [B, L, D]."""

    min_train_length = 1  # a single item can be masked and predicted

    def __init__(self, num_items: int, *, num_heads: int = 2, mask_prob: float = 0.2, **settings: Any) -> None:
        """`settings`: the keywords of TransformerEncoder (max_len, dim, num_blocks, dropout, ...)."""
        if not 0.0 < mask_prob <= 1.0:
            raise CutrecError(f"mask_prob={mask_prob} is out of range; use a probability in (0, 1]")
        super().__init__(num_items, num_special=2, causal=False, num_heads=num_heads, **settings)
        self.mask_prob = mask_prob

    @property
    def mask_id(self) -> int:
        return self.num_items + 1

    def user_vectors(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Keep the last max_len - 1 items of each history, append the mask token, return its hidden state [B, D]."""
        lengths = lengths.to(inputs.device)
        width = min(inputs.shape[1] + 1, self.max_len)  # room for the kept items and the mask token
        kept = lengths.clamp(max=width - 1)  # [B]
        steps = torch.arange(width, device=inputs.device)  # [W]
        source = ((lengths - kept)[:, None] + steps).clamp(max=inputs.shape[1] - 1)  # [B, W] index into inputs
        history = torch.where(steps < kept[:, None], inputs.gather(1, source), self.padding_id)  # [B, W]
        queries = history.masked_fill(steps == kept[:, None], self.mask_id)  # [B, W]
        hidden = self(queries)  # [B, W, D]
        return hidden[torch.arange(inputs.shape[0], device=inputs.device), kept]  # [B, D]

    def training_batch(
        self, train: Sequences, rows: np.ndarray, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return masked_item_batch(
            train, rows, max_len=self.max_len, padding_id=self.padding_id, mask_id=self.mask_id,
            mask_prob=self.mask_prob, rng=rng,
        )
