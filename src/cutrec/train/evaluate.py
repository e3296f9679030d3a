"""Score an evaluation set: the model's user vectors against the whole catalog, and the most-popular baseline.

Both go through the same chunked top-k (cutrec.eval.ranking) with the same exclusion of seen items, so their
metrics are comparable.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from cutrec.config import EvalConfig
from cutrec.data.batches import eval_batches
from cutrec.data.splits import EvalSet
from cutrec.eval.metrics import ranking_metrics
from cutrec.eval.ranking import most_popular_top_k, top_k_items
from cutrec.models import SequenceModel


def _batch_exclusion(evalset: EvalSet, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR (offsets [B + 1], items [E_b]) of the input items of `rows` (consecutive rows of the eval set)."""
    offsets = evalset.inputs.offsets
    start, stop = offsets[rows[0]], offsets[rows[-1] + 1]
    batch_offsets = offsets[rows[0] : rows[-1] + 2] - start  # [B + 1]
    batch_items = evalset.inputs.items[start:stop]  # [E_b]
    return (
        torch.from_numpy(batch_offsets.astype(np.int64)).to(device),
        torch.from_numpy(batch_items.astype(np.int64)).to(device),
    )


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled; nothing on the CPU. Without autocast's cache of cast weights, which a
    captured CUDA graph must not hold across replays."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


@torch.no_grad()
def model_top_items(
    model: SequenceModel, evalset: EvalSet, config: EvalConfig, device: torch.device, *, amp: bool = True
) -> torch.Tensor:
    """[U, max(ks)] top items of every user of the eval set, best first."""
    model.eval()
    k = max(config.ks)
    items = model.item_table.float()  # [N, D]
    tops = []
    for inputs, lengths, rows in eval_batches(
        evalset, max_len=model.max_len, batch_size=config.batch_size, padding_id=model.padding_id
    ):
        with autocast_context(device, amp):
            users = model.user_vectors(inputs.to(device), lengths.to(device))  # [B, D]
        exclude = _batch_exclusion(evalset, rows.numpy(), device) if config.exclude_seen else None
        tops.append(top_k_items(users.float(), items, k, exclude=exclude, item_chunk=config.item_chunk).cpu())
    return torch.cat(tops)  # [U, k]


@torch.no_grad()
def popular_top_items(popularity: torch.Tensor, evalset: EvalSet, config: EvalConfig) -> torch.Tensor:
    """[U, max(ks)] most-popular items for every user (seen items excluded the same way as for the model)."""
    k = max(config.ks)
    tops = []
    num_users = len(evalset.targets)
    for start in range(0, num_users, config.batch_size):
        rows = np.arange(start, min(start + config.batch_size, num_users))
        exclude = _batch_exclusion(evalset, rows, popularity.device) if config.exclude_seen else None
        tops.append(most_popular_top_k(popularity, len(rows), k, exclude=exclude).cpu())
    return torch.cat(tops)  # [U, k]


def score(
    top_items: torch.Tensor, evalset: EvalSet, config: EvalConfig, *, popularity: torch.Tensor, num_train_users: int
) -> dict[str, float]:
    """Ranking metrics of top items against the eval set's targets."""
    return ranking_metrics(
        top_items,
        torch.from_numpy(evalset.targets.astype(np.int64)),
        config.ks,
        num_items=len(popularity),
        item_popularity=popularity.cpu(),
        num_train_users=num_train_users,
    )
