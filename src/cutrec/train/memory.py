"""Predict the peak GPU memory of training before the first step, and the largest batch that fits.

The estimate adds what a training step holds at its peak (the backward pass, or the optimizer step when that is
larger), in bytes:

- parameters P (counted on the meta device), their fp32 gradients, and Adam's two fp32 moments: 4P + 4P + 8P;
- activations kept for the backward: per token (B * L of them, the batch is padded to max_len) and per unit of
  width D, `EMBEDDING_BYTES` for the embedding stage and `BLOCK_BYTES` per transformer block;
- the item table's transient gradients (the loss's and the embedding's [N, D] gradients before they are summed,
  and the bf16 copy autocast keeps for the backward): `ITEM_TABLE_BYTES` * N * D;
- the loss's own buffers at M target positions:
  CE holds the [M, N] logits (`CE_BYTES_PER_LOGIT`: the bf16 product, the fp32 log-softmax it keeps, and its
  gradient); CE- gathers [M, K, D] negative rows (`SAMPLED_BYTES_PER_ROW_VALUE`: the bf16 copy kept for the backward,
  its gradient in bf16 and fp32) and [M, K] scores; CCE and CCE- keep O(M) state and the [M, D] hidden gradient;
- the optimizer step instead peaks at parameters, gradients, moments and one parameter-sized temporary (20P).

M, the target positions of a batch, depends on the data: each training sequence of n items gives min(n - 1, L)
next-item targets (SASRec) or about max(1, p * min(n, L)) masked ones (BERT4Rec). A batch's M is a sum of B such
counts drawn without replacement, so the estimate takes its mean plus four standard deviations (a bound that the
batches of a few hundred epochs rarely pass), capped by the B largest counts. The constants were read off the
operations each layer saves for its backward and checked against torch.cuda.max_memory_allocated on an H200 in
benchmarks/memory_estimate.py, whose table gives estimate and measurement side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cutrec.config import RunConfig
from cutrec.errors import CutrecError
from cutrec.losses import resolve_loss_name

# bytes per token per unit of width, kept for the backward (bf16 autocast; fp32 runs keep about twice as much)
EMBEDDING_BYTES = {True: 20, False: 28}
BLOCK_BYTES = {True: 46, False: 80}
ITEM_TABLE_BYTES = {True: 10, False: 12}  # bytes per item-table value of transient gradients
CE_BYTES_PER_LOGIT = {True: 12, False: 12}
SAMPLED_BYTES_PER_ROW_VALUE = {True: 8, False: 12}  # CE-: per value of the gathered [M, K, D] rows
SCORE_BYTES = 16  # CE-: per [M, K] score (scores, their gradient, ids, the hit mask)


@dataclass
class MemoryEstimate:
    """The parts of the predicted peak, in bytes, and what they were computed for."""

    batch_size: int
    positions: int  # M, target positions of a large batch
    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        """One line: the total and its parts in MB."""
        parts = ", ".join(f"{name} {value / 2**20:,.0f}" for name, value in self.parts.items())
        return (
            f"estimated peak training memory {self.total / 2**20:,.0f} MB at batch {self.batch_size} "
            f"(M={self.positions:,} target positions; MB: {parts})"
        )


def target_counts(lengths: np.ndarray, config: RunConfig) -> np.ndarray:
    """Target positions each training sequence gives one batch row: [S'] floats (BERT4Rec: the expectation)."""
    max_len = config.model.max_len
    if config.model.name == "sasrec":
        usable = lengths[lengths >= 2]
        return np.minimum(usable - 1, max_len).astype(np.float64)
    usable = lengths[lengths >= 1]
    return np.maximum(1.0, config.model.mask_prob * np.minimum(usable, max_len))


def batch_positions(counts: np.ndarray, batch_size: int) -> int:
    """M of a large batch: the mean plus four standard deviations of a sum of `batch_size` counts drawn without
    replacement, at most the `batch_size` largest counts."""
    total = len(counts)
    if batch_size >= total:
        return int(math.ceil(counts.sum()))
    finite_population = (total - batch_size) / max(total - 1, 1)
    spread = counts.std() * math.sqrt(batch_size * finite_population)
    bound = batch_size * counts.mean() + 4.0 * spread
    largest = np.partition(counts, total - batch_size)[total - batch_size :].sum()
    return int(math.ceil(min(bound, largest)))


def parameter_count(config: RunConfig, num_items: int) -> int:
    """Parameters of the model the config builds, counted without allocating them."""
    from cutrec.models import build_model

    with torch.device("meta"):
        model = build_model(config.model, num_items)
    return sum(p.numel() for p in model.parameters())


def estimate(config: RunConfig, num_items: int, lengths: np.ndarray, batch_size: int) -> MemoryEstimate:
    """Predicted peak GPU memory of a training step of `config` at `batch_size` on sequences of `lengths`."""
    amp = config.train.amp
    dim, max_len = config.model.dim, config.model.max_len
    params = parameter_count(config, num_items)
    tokens = batch_size * max_len
    positions = batch_positions(target_counts(lengths, config), batch_size)
    loss = resolve_loss_name(config.loss.name, num_items)
    negatives = 1 if loss == "BCE" else config.loss.num_negatives
    if loss == "CE":
        loss_bytes = CE_BYTES_PER_LOGIT[amp] * positions * num_items
    elif loss in ("CE-", "BCE", "BCE+", "gBCE"):
        loss_bytes = positions * negatives * (SAMPLED_BYTES_PER_ROW_VALUE[amp] * dim + SCORE_BYTES)
    elif loss == "SCE":
        buckets = config.loss.sce_buckets
        loss_bytes = buckets * config.loss.sce_bucket_size_x * config.loss.sce_bucket_size_y * CE_BYTES_PER_LOGIT[amp]
    else:  # CCE, CCE-: O(M) statistics and the hidden gradient
        loss_bytes = positions * (8 * dim + 16)
    backward = {
        "activations": (EMBEDDING_BYTES[amp] + BLOCK_BYTES[amp] * config.model.num_blocks) * tokens * dim
        + 8 * positions * dim,  # the gathered [M, D] hidden states and their gradient
        "item table gradients": ITEM_TABLE_BYTES[amp] * num_items * dim,
        "loss": loss_bytes,
    }
    persistent = {"parameters": 4 * params, "gradients": 4 * params, "optimizer": 8 * params}
    optimizer_step = 4 * params  # the one temporary of the optimizer step
    parts = dict(persistent)
    if sum(backward.values()) >= optimizer_step:
        parts.update(backward)
    else:
        parts["optimizer step"] = optimizer_step
    return MemoryEstimate(batch_size=batch_size, positions=positions, parts={k: int(v) for k, v in parts.items()})


def largest_batch(config: RunConfig, num_items: int, lengths: np.ndarray, budget: int) -> int:
    """The largest batch size whose estimate fits `budget` bytes (at most one batch of every sequence); 0 if none."""
    high = max(len(target_counts(lengths, config)), 1)
    if estimate(config, num_items, lengths, 1).total > budget:
        return 0
    low = 1
    while low < high:  # estimates grow with the batch: bisect
        middle = (low + high + 1) // 2
        if estimate(config, num_items, lengths, middle).total <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def free_memory(device: torch.device) -> int:
    """Bytes the CUDA device has free now."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


HEADROOM = 0.9  # batch_size=auto fills at most this share of the free memory (fragmentation, the CUDA context)


def checked_batch_size(config: RunConfig, num_items: int, lengths: np.ndarray, device: torch.device) -> int:
    """The batch size to train with: `auto` resolved, or the given one after checking that its estimate fits.

    On the CPU there is no device memory to check; `auto` then is an error.
    """
    batch = config.train.batch_size
    if device.type != "cuda":
        if batch == "auto":
            raise CutrecError("train.batch_size=auto sizes the batch to a GPU's free memory; on the CPU give a number")
        return int(batch)
    free = free_memory(device)
    fits = largest_batch(config, num_items, lengths, int(HEADROOM * free))
    if batch == "auto":
        if fits == 0:
            raise CutrecError(
                f"even batch 1 does not fit the {free / 2**20:,.0f} MB free on {device}: "
                f"{estimate(config, num_items, lengths, 1).describe()}; shrink the model or pick a sampled loss"
            )
        return fits
    predicted = estimate(config, num_items, lengths, int(batch))
    if predicted.total > free:
        advice = f"use --batch-size {fits} or auto" if fits else "shrink the model or pick a sampled loss (CCE-)"
        raise CutrecError(f"{predicted.describe()} exceeds the {free / 2**20:,.0f} MB free on {device}; {advice}")
    return int(batch)
