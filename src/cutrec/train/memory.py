"""Predict the peak GPU memory of training before the first step, and the largest batch that fits.

The peak of a training step is what stays between steps plus the largest transient of the step, in bytes:

- staying: parameters P (counted on the meta device), their fp32 gradients and Adam's two fp32 moments (4P + 4P +
  8P), and the workspaces that cuBLAS and cuBLASLt allocate through PyTorch on the first matmuls
  (`LIBRARY_WORKSPACES`);
- transient, in the backward pass: the activations kept for it, per token (B * L of them, the batch is padded to
  max_len) and per unit of width D (`EMBEDDING_BYTES` for the embedding stage and the final norm, `BLOCK_BYTES`
  per transformer block), the gathered [M, D] hidden states and their gradient, and the larger of two buffers that
  are not alive at once: the item table's [N, D] fp32 gradient before it is summed into the parameter's, or the
  loss's own buffers at M target positions:
  CE: the [M, N] logits (`CE_BYTES_PER_LOGIT`: under bf16 autocast the bf16 product, its fp32 copy and the fp32
  log-softmax, or the log-softmax and its gradient); CE- and the BCE family: the gathered [M, K, D] negative rows
  (`SAMPLED_BYTES_PER_ROW_VALUE`: the bf16 copy kept for the backward and its gradient in bf16 and fp32) and
  the [M, K] scores; CCE and CCE-: O(M) statistics and the [M, D] hidden gradient;
- the optimizer step's own transient, one parameter-sized temporary (4P), when it is larger.

M, the target positions of a batch, depends on the data: each training sequence of n items gives min(n - 1, L)
next-item targets (SASRec), or on average n'p + (1 - p)^n' masked ones with n' = min(n, L) (BERT4Rec: each
position masked with probability p, at least one). A batch's M is a sum of B such counts drawn without
replacement, so the estimate takes its mean plus four standard deviations (a bound that the batches of a few
hundred epochs rarely pass), capped by the B largest counts.

The constants were read off the tensors each operation keeps and then measured on an NVIDIA H200 (torch 2.11,
bf16 autocast) with torch.cuda.max_memory_allocated: benchmarks/memory_estimate.py varies the catalog (12,101 and
1,000,000 items), the batch, the blocks, the model and the loss, and its table gives estimate and measurement side
by side. The fp32 constants (train.amp=false) rest on fewer measurements. `BLOCK_BYTES` is that of the default
block (feed-forward width D, GELU, pre-norm, no residual gates): a wider feed-forward (model.ffn_mult > 1), SwiGLU
and residual gates keep more activations, which the estimate does not count yet. The CUDA context (about 500 MB, outside
PyTorch's allocator) is not part of the estimate; the free memory it is compared with already excludes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cutrec.config import RunConfig
from cutrec.errors import CutrecError
from cutrec.losses import resolve_loss_name

LIBRARY_WORKSPACES = 65 * 2**20  # cuBLAS + cuBLASLt workspaces, allocated through PyTorch (H200, torch 2.11)
# bytes per token per unit of width kept for the backward, keyed by train.amp (bf16 autocast or fp32)
EMBEDDING_BYTES = {True: 18, False: 20}
BLOCK_BYTES = {True: 26, False: 28}
ITEM_GRADIENT_BYTES = 4  # per item-table value: the fp32 [N, D] gradient before it is summed
CE_BYTES_PER_LOGIT = {True: 10, False: 12}
SAMPLED_BYTES_PER_ROW_VALUE = {True: 6, False: 8}  # CE-, BCE, BCE+, gBCE: per value of the [M, K, D] rows
SCORE_BYTES = 16  # CE-, BCE, BCE+, gBCE: per [M, K] score (scores, their gradient, ids, the hit mask)
HEADROOM = 0.9  # batch_size=auto fills at most this share of the free memory (fragmentation, the CUDA context)


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


def target_counts(lengths: np.ndarray, config: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance [S'] of the target positions that each usable training sequence gives a batch row."""
    max_len = config.model.max_len
    if config.model.name == "sasrec":
        counts = np.minimum(lengths[lengths >= 2] - 1, max_len).astype(np.float64)
        return counts, np.zeros_like(counts)
    kept = np.minimum(lengths[lengths >= 1], max_len).astype(np.float64)
    p = config.model.mask_prob
    return kept * p + (1 - p) ** kept, kept * p * (1 - p)  # E[max(1, X)] for X ~ Binomial(n', p); Var(X)


def batch_positions(config: RunConfig, lengths: np.ndarray, batch_size: int) -> int:
    """M of a large batch: the mean plus four standard deviations of the target positions of `batch_size`
    sequences drawn without replacement, at most those of the `batch_size` longest."""
    mean, variance = target_counts(lengths, config)
    total = len(mean)
    if batch_size >= total:
        return int(math.ceil(mean.sum() + 4.0 * math.sqrt(variance.sum())))
    finite_population = (total - batch_size) / max(total - 1, 1)
    spread = math.sqrt(batch_size * (mean.var() * finite_population + variance.mean()))
    bound = batch_size * mean.mean() + 4.0 * spread
    largest = np.partition(mean, total - batch_size)[total - batch_size :].sum() + 4.0 * math.sqrt(
        batch_size * variance.mean()
    )
    return int(math.ceil(min(bound, largest)))


def parameter_count(config: RunConfig, num_items: int) -> int:
    """Parameters of the model the config builds, counted without allocating them."""
    from cutrec.models import build_model

    with torch.device("meta"):
        model = build_model(config.model, num_items)
    return sum(p.numel() for p in model.parameters())


def estimate(
    config: RunConfig, num_items: int, lengths: np.ndarray, batch_size: int, *, params: int | None = None
) -> MemoryEstimate:
    """Predicted peak GPU memory of a training step of `config` at `batch_size` on sequences of `lengths`
    (`params`: the model's parameter count when the caller has it, else counted here)."""
    amp = config.train.amp
    dim, max_len = config.model.dim, config.model.max_len
    params = parameter_count(config, num_items) if params is None else params
    tokens = batch_size * max_len
    positions = batch_positions(config, lengths, batch_size)
    loss = resolve_loss_name(config.loss.name, num_items)
    negatives = 1 if loss == "BCE" else config.loss.num_negatives
    if loss == "CE":
        loss_bytes = CE_BYTES_PER_LOGIT[amp] * positions * num_items
    elif loss in ("CE-", "BCE", "BCE+", "gBCE"):
        loss_bytes = positions * negatives * (SAMPLED_BYTES_PER_ROW_VALUE[amp] * dim + SCORE_BYTES)
    elif loss == "SCE":  # the logits of every bucket: positions x items per bucket
        buckets = config.loss.sce_buckets * config.loss.sce_bucket_size_x * config.loss.sce_bucket_size_y
        loss_bytes = CE_BYTES_PER_LOGIT[amp] * buckets
    else:  # CCE, CCE-: O(M) statistics and the hidden gradient
        loss_bytes = positions * (8 * dim + 16)
    parts = {
        "parameters": 4 * params,
        "gradients": 4 * params,
        "optimizer": 8 * params,
        "library workspaces": LIBRARY_WORKSPACES,
    }
    activations = (EMBEDDING_BYTES[amp] + BLOCK_BYTES[amp] * config.model.num_blocks) * tokens * dim
    activations += 8 * positions * dim  # the gathered [M, D] hidden states and their gradient
    item_gradient = ITEM_GRADIENT_BYTES * num_items * dim
    if activations + max(item_gradient, loss_bytes) >= 4 * params:
        parts["activations"] = activations
        parts["loss buffers" if loss_bytes >= item_gradient else "item-table gradient"] = max(item_gradient, loss_bytes)
    else:
        parts["optimizer step"] = 4 * params
    return MemoryEstimate(batch_size=batch_size, positions=positions, parts={k: int(v) for k, v in parts.items()})


def largest_batch(config: RunConfig, num_items: int, lengths: np.ndarray, budget: int) -> int:
    """The largest batch size whose estimate fits `budget` bytes (at most one batch of every sequence); 0 if none."""
    params = parameter_count(config, num_items)  # once, not once per bisection step
    fits = lambda batch: estimate(config, num_items, lengths, batch, params=params).total <= budget
    high = max(len(target_counts(lengths, config)[0]), 1)
    if not fits(1):
        return 0
    low = 1
    while low < high:  # estimates grow with the batch: bisect
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def auto_batch_size(config: RunConfig, num_items: int, lengths: np.ndarray, memory_bytes: int, where: str) -> int:
    """batch_size=auto: the largest batch within HEADROOM of `memory_bytes`; an error naming `where` if none fits."""
    fits = largest_batch(config, num_items, lengths, int(HEADROOM * memory_bytes))
    if fits == 0:
        raise CutrecError(
            f"even batch 1 does not fit {where}: {estimate(config, num_items, lengths, 1).describe()}; shrink the "
            "model or pick a sampled loss (CCE-)"
        )
    return fits


def available_memory(config: RunConfig, device: torch.device) -> tuple[int, str]:
    """Bytes this run may use on the CUDA device, and where they are, for messages: the device's free memory, or
    less under train.memory_limit_gb, which also caps PyTorch's allocator so that the run cannot exceed it."""
    free, total = torch.cuda.mem_get_info(device)
    limit = config.train.memory_limit_gb
    if limit is None or limit * 2**30 >= free:
        return int(free), f"the {free / 2**20:,.0f} MB free on {device}"
    index = torch.cuda.current_device() if device.index is None else device.index  # "cuda" has no index
    torch.cuda.set_per_process_memory_fraction(limit * 2**30 / total, index)
    return int(limit * 2**30), f"train.memory_limit_gb={limit:g} on {device}"


def checked_batch_size(config: RunConfig, num_items: int, lengths: np.ndarray, device: torch.device) -> int:
    """The batch size to train with: `auto` resolved, or the given one after checking that its estimate fits.

    On the CPU there is no device memory to check; `auto` then is an error.
    """
    batch = config.train.batch_size
    if device.type != "cuda":
        if batch == "auto":
            raise CutrecError("train.batch_size=auto sizes the batch to a GPU's free memory; on the CPU give a number")
        return int(batch)
    free, where = available_memory(config, device)
    if batch == "auto":
        return auto_batch_size(config, num_items, lengths, free, where)
    predicted = estimate(config, num_items, lengths, int(batch))
    if predicted.total > free and config.train.check_memory:
        fits = largest_batch(config, num_items, lengths, int(HEADROOM * free))
        advice = f"use --batch-size {fits} or auto" if fits else "shrink the model or pick a sampled loss (CCE-)"
        raise CutrecError(
            f"{predicted.describe()} exceeds {where}; {advice} (or set train.check_memory=false to try anyway: the "
            "estimate runs up to about 10% high)"
        )
    return int(batch)
