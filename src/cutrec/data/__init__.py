"""The data layer: read interaction logs, preprocess them into per-user sequences, split, cache and batch them.

`load_sequences(config.data)` is the usual entry point; pyarrow (for Parquet) is imported only when needed.
"""

from cutrec.data.batches import epoch_order, eval_batches, masked_item_batch, next_item_batch, num_batches
from cutrec.data.cache import cached_sequences
from cutrec.data.load import load_sequences
from cutrec.data.preprocess import SequenceData, preprocess
from cutrec.data.readers import Interactions, read_interactions, read_sequences
from cutrec.data.splits import EvalSet, Sequences, Split, global_temporal, leave_one_out
from cutrec.data.synthetic import synthetic_interactions

__all__ = [
    "EvalSet",
    "Interactions",
    "SequenceData",
    "Sequences",
    "Split",
    "cached_sequences",
    "epoch_order",
    "eval_batches",
    "global_temporal",
    "leave_one_out",
    "load_sequences",
    "masked_item_batch",
    "next_item_batch",
    "num_batches",
    "preprocess",
    "read_interactions",
    "read_sequences",
    "synthetic_interactions",
]
