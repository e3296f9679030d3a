"""Sequence encoders (SASRec, BERT4Rec) on one interface (`SequenceModel`); none knows about losses."""

from cutrec.config import ModelConfig
from cutrec.errors import CutrecError
from cutrec.models.base import SequenceModel
from cutrec.models.bert4rec import BERT4Rec
from cutrec.models.sasrec import SASRec

__all__ = ["BERT4Rec", "MODEL_NAMES", "SASRec", "SequenceModel", "build_model"]

MODEL_NAMES = ("sasrec", "bert4rec")


def build_model(config: ModelConfig, num_items: int, *, materialize_items: bool = True) -> SequenceModel:
    """The encoder named by config.name; materialize_items=False leaves its item table on the meta device (a
    catalog-parallel rank then builds its own rows: `models.sharded`)."""
    common = {
        "materialize_items": materialize_items,
        "max_len": config.max_len,
        "dim": config.dim,
        "num_blocks": config.num_blocks,
        "num_heads": config.num_heads,
        "dropout": config.dropout,
        "dropout_places": tuple(config.dropout_places),
        "ffn_activation": config.ffn_activation,
        "ffn_mult": config.ffn_mult,
        "norm_placement": config.norm_placement,
        "residual_gate": config.residual_gate,
        "embedding_scale": config.embedding_scale,
        "init_std": config.init_std,
    }
    if config.name == "sasrec":
        return SASRec(num_items, **common)
    if config.name == "bert4rec":
        return BERT4Rec(num_items, mask_prob=config.mask_prob, **common)
    raise CutrecError(f"model.name={config.name!r} is unknown; choose one of {', '.join(MODEL_NAMES)}")
