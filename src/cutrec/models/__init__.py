"""Sequence encoders (SASRec, BERT4Rec) on one interface (`SequenceModel`); none knows about losses."""

from dataclasses import fields

from cutrec.config import ModelConfig
from cutrec.errors import CutrecError
from cutrec.models.base import SequenceModel
from cutrec.models.bert4rec import BERT4Rec
from cutrec.models.sasrec import SASRec

__all__ = ["BERT4Rec", "MODEL_NAMES", "SASRec", "SequenceModel", "build_model"]

MODEL_NAMES = ("sasrec", "bert4rec")
ENCODER_KEYS = tuple(field.name for field in fields(ModelConfig) if field.name not in ("name", "mask_prob"))


def build_model(config: ModelConfig, num_items: int, *, materialize_items: bool = True) -> SequenceModel:
    """The encoder named by config.name; materialize_items=False leaves its item table on the meta device (a
    catalog-parallel rank then builds its own rows: `models.sharded`)."""
    settings = {key: getattr(config, key) for key in ENCODER_KEYS}  # every key but the name and mask_prob
    settings["dropout_places"] = tuple(config.dropout_places)
    settings["materialize_items"] = materialize_items
    if config.name == "sasrec":
        return SASRec(num_items, **settings)
    if config.name == "bert4rec":
        return BERT4Rec(num_items, mask_prob=config.mask_prob, **settings)
    raise CutrecError(f"model.name={config.name!r} is unknown; choose one of {', '.join(MODEL_NAMES)}")
