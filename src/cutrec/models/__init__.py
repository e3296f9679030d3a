"""Sequence encoders. Each returns hidden states and exposes its output item table; none knows about losses."""

from cutrec.config import ModelConfig
from cutrec.models.sasrec import SASRec

__all__ = ["SASRec", "build_model"]


def build_model(config: ModelConfig, num_items: int) -> SASRec:
    """The encoder named by config.name."""
    return SASRec(
        num_items,
        max_len=config.max_len,
        dim=config.dim,
        num_blocks=config.num_blocks,
        num_heads=config.num_heads,
        dropout=config.dropout,
    )
