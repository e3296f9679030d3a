"""SASRec (Kang and McAuley, ICDM 2018): causal self-attention over a user's item sequence, tied item table.

The model returns hidden states [B, L, D]; it never builds logits. Scoring against the catalog is the loss's job
(training) or the evaluator's (chunked full ranking). Batches are right-padded (real items first, then the padding
id), so causal attention never attends to padding and `scaled_dot_product_attention(is_causal=True)` can use flash
attention. Position ids count back from the most recent item (the last real item always has position max_len - 1),
the convention of left-padded SASRec.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cutrec.errors import CutrecError


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through torch's fused scaled_dot_product_attention."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).view(batch, length, 3, self.num_heads, dim // self.num_heads)  # [B, L, 3, H, D/H]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, H, L, D/H]
        attended = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )  # [B, H, L, D/H]
        return self.out(attended.transpose(1, 2).reshape(batch, length, dim))  # [B, L, D]


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + feed-forward(norm(x))."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = CausalSelfAttention(dim, num_heads, dropout)
        self.feed_forward_norm = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x)))
        return x + self.dropout(self.feed_forward(self.feed_forward_norm(x)))


class SASRec(nn.Module):
    """Item ids [B, L] (right-padded with `padding_id` = num_items) -> hidden states [B, L, D]."""

    def __init__(
        self, num_items: int, *, max_len: int = 50, dim: int = 64, num_blocks: int = 2, num_heads: int = 1,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if num_items < 1:
            raise CutrecError(f"num_items={num_items}: the catalog must hold at least one item")
        if max_len < 1:
            raise CutrecError(f"max_len={max_len}: use a sequence length of 1 or more")
        if dim % num_heads != 0:
            raise CutrecError(f"dim={dim} is not divisible by num_heads={num_heads}; pick heads that divide dim")
        self.num_items = num_items
        self.max_len = max_len
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=num_items)
        self.position_embedding = nn.Embedding(max_len, dim)
        self.embedding_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, dropout) for _ in range(num_blocks))
        self.final_norm = nn.LayerNorm(dim)
        nn.init.normal_(self.item_embedding.weight, std=dim**-0.5)
        nn.init.normal_(self.position_embedding.weight, std=dim**-0.5)
        with torch.no_grad():
            self.item_embedding.weight[num_items].zero_()

    @property
    def padding_id(self) -> int:
        return self.num_items

    @property
    def item_table(self) -> torch.Tensor:
        """The output item table [N, D], tied to the input embeddings (padding row excluded)."""
        return self.item_embedding.weight[: self.num_items]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.ndim != 2 or inputs.shape[1] > self.max_len:
            raise CutrecError(f"inputs must be [B, L] with L <= max_len={self.max_len}, got {tuple(inputs.shape)}")
        is_item = inputs != self.padding_id  # [B, L]
        lengths = is_item.sum(1, keepdim=True)  # [B, 1]
        steps = torch.arange(inputs.shape[1], device=inputs.device).unsqueeze(0)  # [1, L]
        positions = (self.max_len - lengths + steps).clamp(0, self.max_len - 1)  # [B, L]; last item -> max_len - 1
        x = self.item_embedding(inputs) + self.position_embedding(positions)  # [B, L, D]
        keep = is_item.unsqueeze(-1).to(x.dtype)  # [B, L, 1]
        x = self.embedding_dropout(x) * keep
        for block in self.blocks:
            x = block(x) * keep
        return self.final_norm(x)  # [B, L, D]

    def last_hidden(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Hidden state at each sequence's last real item: [B, D] (the user vector for ranking)."""
        hidden = self(inputs)  # [B, L, D]
        rows = torch.arange(inputs.shape[0], device=inputs.device)
        return hidden[rows, lengths.to(inputs.device) - 1]  # [B, D]
