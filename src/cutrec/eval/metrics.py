"""Ranking metrics for next-item prediction with one relevant item per user, and a plain-text table of them."""

from __future__ import annotations

import math

import numpy as np
import torch

from cutrec.errors import CutrecError
from cutrec.eval.ranking import _csr_pairs

METRIC_NAMES = ("NDCG", "HR", "MRR", "Coverage", "Surprisal")


def ranking_metrics(
    top_items: torch.Tensor,
    targets: torch.Tensor,
    ks: list[int],
    *,
    num_items: int,
    item_popularity: torch.Tensor,
    num_train_users: int,
) -> dict[str, float]:
    """NDCG, HR, MRR, Coverage and Surprisal at each cut-off k.

    With rank the 0-based position of a user's target in their list (a miss when it is not in the first k):

    - NDCG@k: mean over users of 1 / log2(rank + 2), 0 for a miss (one relevant item, so the ideal DCG is 1).
    - HR@k: share of users whose target is in their top k.
    - MRR@k: mean over users of 1 / (rank + 1), 0 for a miss.
    - Coverage@k: number of distinct items in all users' top-k lists, divided by num_items.
    - Surprisal@k: mean over users and their k recommended items i of the normalised self-information
      log2(num_train_users / pop(i)) / log2(num_train_users), where pop(i) is the number of training users that
      interacted with i; an item with pop(i) = 0 gets the maximum, 1.0 (as if pop(i) = 1). This is the surprisal
      of Kaminskas & Bridge (2016) and RePlay: 0 for an item every training user saw, 1 for the rarest.

    Args:
        top_items: [U, Kmax] int64 item ids per user, best first, Kmax >= max(ks).
        targets: [U] int64, the one relevant item of each user.
        ks: cut-offs, each 1 <= k <= Kmax.
        num_items: N, the catalog size.
        item_popularity: [N] distinct training users per item (`item_user_counts`), each <= num_train_users.
        num_train_users: the number of training users, 2 or more.

    Returns:
        Plain floats keyed "NDCG@10", "HR@10", "MRR@10", "Coverage@10", "Surprisal@10", ... for each k in ks.
    """
    _check_metric_inputs(top_items, targets, ks, num_items, item_popularity, num_train_users)
    device = top_items.device
    kmax = top_items.shape[1]
    hits = top_items == targets.to(device)[:, None]  # [U, Kmax]
    ranks = torch.where(hits.any(dim=1), hits.int().argmax(dim=1), kmax).double()  # [U]; Kmax for a miss
    pop = item_popularity.to(device=device, dtype=torch.float64).clamp(min=1.0)  # [N]
    surprisal = torch.log2(num_train_users / pop) / math.log2(num_train_users)  # [N]
    metrics = {}
    for k in ks:
        found = ranks < k  # [U]
        top = top_items[:, :k]  # [U, k]
        metrics[f"NDCG@{k}"] = torch.where(found, 1.0 / torch.log2(ranks + 2.0), 0.0).mean().item()
        metrics[f"HR@{k}"] = found.double().mean().item()
        metrics[f"MRR@{k}"] = torch.where(found, 1.0 / (ranks + 1.0), 0.0).mean().item()
        distinct = torch.bincount(top.flatten(), minlength=num_items).count_nonzero().item()
        metrics[f"Coverage@{k}"] = distinct / num_items
        metrics[f"Surprisal@{k}"] = surprisal[top].mean().item()
    return metrics


def item_user_counts(
    offsets: np.ndarray | torch.Tensor, items: np.ndarray | torch.Tensor, num_items: int
) -> torch.Tensor:
    """The number of distinct users that interacted with each item: pop(i) for `ranking_metrics`' Surprisal.

    Args:
        offsets: [U + 1] int64 (or int32); user u's training items are `items[offsets[u]:offsets[u + 1]]`.
        items: [E] int64 (or int32) item ids; an item repeated in one user's list counts once.
        num_items: N, the catalog size.

    Returns:
        [N] int64 counts, on the device of `offsets`.
    """
    offsets, items = torch.as_tensor(offsets), torch.as_tensor(items)
    if num_items < 1:
        raise CutrecError(f"num_items={num_items} is out of range; pass the catalog size, 1 or more")
    users, items = _csr_pairs(offsets, items, num_items, "training")  # [E], [E]
    pairs = torch.unique(users * num_items + items.to(users.device))  # [P] distinct (user, item) pairs
    return torch.bincount(pairs % num_items, minlength=num_items)  # [N]


def format_table(rows: dict[str, dict[str, float]], ks: list[int]) -> str:
    """A plain-text table: one line per model or baseline name, columns NDCG@k, HR@k, MRR@k, Coverage@k and
    Surprisal@k for each k in ks (metrics grouped, cut-offs ascending within each), values to 4 decimals."""
    columns = [f"{name}@{k}" for name in METRIC_NAMES for k in ks]
    for row_name, values in rows.items():
        missing = [c for c in columns if c not in values]
        if missing:
            raise CutrecError(
                f"row {row_name!r} lacks {', '.join(missing)}; compute it with ranking_metrics for ks={list(ks)}"
            )
    name_width = max([len("model"), *(len(name) for name in rows)])
    widths = {c: max(len(c), 6) for c in columns}  # every metric lies in [0, 1]: "0.1234" is 6 characters
    lines = ["  ".join(["model".ljust(name_width), *(c.rjust(widths[c]) for c in columns)])]
    for row_name, values in rows.items():
        cells = (f"{values[c]:.4f}".rjust(widths[c]) for c in columns)
        lines.append("  ".join([row_name.ljust(name_width), *cells]))
    return "\n".join(lines)


def _check_metric_inputs(
    top_items: torch.Tensor,
    targets: torch.Tensor,
    ks: list[int],
    num_items: int,
    item_popularity: torch.Tensor,
    num_train_users: int,
) -> None:
    if top_items.dim() != 2 or top_items.dtype not in (torch.int32, torch.int64):
        raise CutrecError(
            f"top_items has shape {tuple(top_items.shape)} and dtype {top_items.dtype}; pass [U, Kmax] int64 item ids"
        )
    num_users, kmax = top_items.shape
    if targets.shape != (num_users,) or targets.dtype not in (torch.int32, torch.int64):
        raise CutrecError(
            f"targets have shape {tuple(targets.shape)} and dtype {targets.dtype} for {num_users} users in "
            f"top_items; pass one int64 target per user, shape [{num_users}]"
        )
    if num_users == 0:
        raise CutrecError("top_items has no users; evaluate at least one user")
    if not ks or any(not 1 <= k <= kmax for k in ks):
        raise CutrecError(f"ks={list(ks)} is out of range for top-{kmax} lists; give cut-offs with 1 <= k <= {kmax}")
    for name, ids in (("targets", targets), ("top_items", top_items)):
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= num_items:
            raise CutrecError(f"{name} hold ids from {low} to {high}; use item ids in [0, {num_items - 1}]")
    if item_popularity.shape != (num_items,):
        raise CutrecError(
            f"item_popularity has shape {tuple(item_popularity.shape)}; pass one count per item, shape [{num_items}]"
        )
    if num_train_users < 2:
        raise CutrecError(f"num_train_users={num_train_users} is too small for surprisal; it needs 2 or more")
    if int(item_popularity.min()) < 0 or int(item_popularity.max()) > num_train_users:
        raise CutrecError(
            f"item_popularity runs from {int(item_popularity.min())} to {int(item_popularity.max())} but "
            f"num_train_users={num_train_users}; pass distinct-user counts (item_user_counts), not event counts"
        )
