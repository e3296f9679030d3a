"""Score an evaluation set: the model's user vectors against the whole catalog, and the most-popular baseline.

Both exclude seen items the same way (cutrec.eval.ranking), so their metrics are comparable. Neither waits for
the device per batch: inputs and exclusions go up from pinned memory, and the results are checked and copied back
once per evaluation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from cutrec import console
from cutrec.config import EvalConfig
from cutrec.data.batches import eval_batches, num_batches
from cutrec.data.splits import EvalSet, Sequences
from cutrec.eval.metrics import ranking_metrics
from cutrec.eval.ranking import PopularityOrder, keys_to_items, refuse_non_finite, refuse_short_users, top_k_keys
from cutrec.models import SequenceModel
from cutrec.transfer import to_device


def batch_exclusion(histories: Sequences, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR (offsets [B + 1], items [E_b]) on the CPU of the items of `rows` (consecutive rows of the histories);
    the ranking checks it there and copies it to the device without waiting."""
    offsets = histories.offsets
    start, stop = offsets[rows[0]], offsets[rows[-1] + 1]
    batch_offsets = offsets[rows[0] : rows[-1] + 2] - start  # [B + 1]
    batch_items = histories.items[start:stop]  # [E_b]
    return torch.from_numpy(batch_offsets.astype(np.int64)), torch.from_numpy(batch_items.astype(np.int64))


def autocast_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when enabled; nothing on the CPU. Without autocast's cache of cast weights, which a
    captured CUDA graph must not hold across replays."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


@dataclass
class RankedBatch:
    """One batch of histories ranked against the catalog, nothing read from the device yet."""

    rows: np.ndarray  # [B] rows of the histories
    keys: torch.Tensor  # [B, k] rank keys of each history's k best items, on the device (see `exact`)
    finite: torch.Tensor  # [] bool: the batch's user vectors and the item table are finite
    exact: torch.Tensor  # [] bool: no tie made the candidates' keys inexact (ranking.top_k_keys)
    exact_keys: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # reranks with every score keyed


@torch.no_grad()
def ranked_batches(
    model: SequenceModel, histories: Sequences, k: int, config: EvalConfig, device: torch.device, *,
    amp: bool = True, progress: str | None = None,
) -> Iterator[RankedBatch]:
    """Every config.batch_size histories ranked against the whole catalog, queued without waiting for the device;
    `settled_keys` then checks and settles them. Items of the history are excluded when config.exclude_seen.
    `progress` names a progress bar (shown on a terminal only); None shows none."""
    model.eval()
    items = model.item_table.float()  # [N, D]
    items_finite = torch.isfinite(items).all()
    batches = eval_batches(histories, max_len=model.max_len, batch_size=config.batch_size, padding_id=model.padding_id)
    total = num_batches(histories.users, config.batch_size)
    for inputs, lengths, rows in console.progress(batches, shown=bool(progress), desc=progress, total=total,
                                                  unit="batch"):
        with autocast_context(device, amp):
            users = model.user_vectors(to_device(inputs, device), to_device(lengths, device)).float()  # [B, D]
        exclude = batch_exclusion(histories, rows.numpy()) if config.exclude_seen else None
        rank = partial(top_k_keys, users, items, k, exclude=exclude, item_chunk=config.item_chunk)
        keys, exact = rank()  # [B, k], []
        yield RankedBatch(rows.numpy(), keys, items_finite & torch.isfinite(users).all(), exact,
                          partial(rank, every_key=True))


def settled_keys(batches: list[RankedBatch]) -> list[torch.Tensor]:
    """The exact keys [B, k] of each batch: one read of every batch's flags, a CutrecError if any vectors are not
    finite, and a rerun with every score keyed for a batch whose candidates met a tie."""
    flags = torch.stack([torch.stack([batch.finite, batch.exact]) for batch in batches]).cpu()  # [batches, 2]
    refuse_non_finite(flags[:, 0].all())
    return [batch.keys if exact else batch.exact_keys()[0] for batch, exact in zip(batches, flags[:, 1].tolist(),
                                                                                       strict=True)]


def model_top_items(
    model: SequenceModel, evalset: EvalSet, config: EvalConfig, device: torch.device, *, amp: bool = True
) -> torch.Tensor:
    """[U, max(ks)] top items of every user of the eval set, best first (on the CPU).

    Every batch is queued without waiting for the device; the scores are checked and the top items copied once."""
    batches = list(ranked_batches(model, evalset.inputs, max(config.ks), config, device, amp=amp,
                                  progress="evaluating"))
    return keys_to_items(torch.cat(settled_keys(batches))).cpu()  # [U, k]


@torch.no_grad()
def popular_top_items(popularity: torch.Tensor, evalset: EvalSet, config: EvalConfig) -> torch.Tensor:
    """[U, max(ks)] most-popular items for every user (seen items excluded the same way as for the model), on the
    CPU. The catalog is sorted once; every batch is queued without waiting for the device."""
    k = max(config.ks)
    ranking = PopularityOrder.of(popularity)
    picks, shorts = [], []
    num_users = len(evalset.targets)
    for start in range(0, num_users, config.batch_size):
        rows = np.arange(start, min(start + config.batch_size, num_users))
        exclude = batch_exclusion(evalset.inputs, rows) if config.exclude_seen else None
        picked, short = ranking.top_k(len(rows), k, exclude=exclude)  # [B, k], [B]
        picks.append(picked)
        shorts.append(short)
    if num_users:
        refuse_short_users(torch.cat(shorts), k, "lower eval.ks or set eval.exclude_seen=false")
    return torch.cat(picks).cpu()  # [U, k]


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
