"""Scalable cross-entropy (SCE; Mezentsev, Gusak, Oseledets, Frolov, RecSys 2024, arXiv 2409.18721), plain PyTorch.

SCE approximates the full softmax by the hard negatives that an approximate maximum-inner-product search finds, on
the seam (hidden [M, D], items [N, D], targets [M]). Each step:

1. draws `num_buckets` bucket directions c_b [D]: random Gaussian combinations of the step's hidden states
   (`mix=True`, the paper's Mix, which keeps directions where the data is) or plain Gaussian vectors (`mix=False`);
2. bucket b takes the `bucket_size_x` positions with the largest h_i . c_b and the `bucket_size_y` items with the
   largest w_j . c_b (the catalog is scanned in chunks, so the item search holds [buckets, chunk] scores at most);
3. every position i in bucket b gets the loss logsumexp(z_iy, z_ij for the bucket's items j != y_i) - z_iy, the
   positive against the bucket's items with the positive itself removed;
4. a position's loss is the largest over the buckets that took it (the hardest bucket), and the mean runs over the
   positions that some bucket took; a position no bucket took adds nothing that step.

Memory is bounded by the buckets: the logits are [buckets, bucket_size_x, bucket_size_y], never [M, N]. The search
(steps 1-2) carries no gradient; gradients flow through the selected logits and the positive. docs/losses.md says
where this follows the paper and the authors' published code, and where it differs.
"""

from __future__ import annotations

import torch

from cutrec.errors import CutrecError
from cutrec.losses.reference import (
    Reduction,
    at_least_float32,
    check_seam,
    check_target_range,
    reduce_loss,
    safe_targets,
)
from cutrec.losses.sampling import seeded_generator


def bucket_centers(
    hidden: torch.Tensor, valid: torch.Tensor, num_buckets: int, *, mix: bool, seed: int | None
) -> torch.Tensor:
    """[num_buckets, D] float32 bucket directions drawn from `seed` (no gradient).

    mix=True: c_b = sum_i g_bi h_i over the positions with a target, g ~ N(0, 1); mix=False: c_b ~ N(0, I).
    """
    generator = None if seed is None else seeded_generator(seed, hidden.device)  # None: the default generator
    if not mix:
        return torch.randn(num_buckets, hidden.shape[1], generator=generator, device=hidden.device)
    weights = torch.randn(num_buckets, hidden.shape[0], generator=generator, device=hidden.device)  # [n_b, M]
    return (weights * valid) @ hidden.detach().float()  # [n_b, D]


@torch.no_grad()
def _top_items(centers: torch.Tensor, items: torch.Tensor, k: int, item_chunk: int) -> torch.Tensor:
    """[n_b, k] ids of the items with the largest w_j . c_b, found chunk by chunk over the catalog."""
    best_scores = centers.new_empty(centers.shape[0], 0)  # [n_b, <= k]
    best_ids = torch.empty(centers.shape[0], 0, dtype=torch.int64, device=centers.device)
    for start in range(0, items.shape[0], item_chunk):
        scores = centers @ items[start : start + item_chunk].float().T  # [n_b, C]
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1)  # [n_b, <= k]
        merged_scores = torch.cat([best_scores, top.values], dim=1)  # [n_b, <= 2k]
        merged_ids = torch.cat([best_ids, top.indices + start], dim=1)
        keep = torch.topk(merged_scores, min(k, merged_scores.shape[1]), dim=1).indices
        best_scores, best_ids = merged_scores.gather(1, keep), merged_ids.gather(1, keep)
    return best_ids


def scalable_cross_entropy(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    *,
    num_buckets: int = 256,
    bucket_size_x: int = 256,
    bucket_size_y: int = 256,
    mix: bool = True,
    seed: int | None = 0,
    centers: torch.Tensor | None = None,
    item_chunk: int = 65536,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    check_targets: bool = True,
) -> torch.Tensor:
    """SCE of the module docstring. `centers` [n_b, D] replaces the drawn bucket directions (for tests).

    Bucket sizes above M or N are cut to M and N. reduction="none" gives [M] with 0 at ignored positions and at
    positions no bucket took; "mean" divides by the positions with a target that some bucket took.
    """
    check_seam(hidden, items, targets)
    for name, value in (("num_buckets", num_buckets), ("bucket_size_x", bucket_size_x),
                        ("bucket_size_y", bucket_size_y), ("item_chunk", item_chunk)):
        if value < 1:
            raise CutrecError(f"{name}={value} is out of range; use 1 or more")
    if check_targets:
        check_target_range(targets, items.shape[0], ignore_index)
    safe, valid = safe_targets(targets, ignore_index)  # [M] ids (0 where ignored), [M] bool
    if centers is None:
        centers = bucket_centers(hidden, valid, num_buckets, mix=mix, seed=seed)
    elif centers.ndim != 2 or centers.shape[1] != hidden.shape[1]:
        raise CutrecError(f"centers must be [buckets, D={hidden.shape[1]}], got shape {tuple(centers.shape)}")
    centers = centers.detach().float()
    with torch.no_grad():
        position_scores = (centers @ hidden.detach().float().T).masked_fill(~valid, float("-inf"))  # [n_b, M]
        x_ids = torch.topk(position_scores, min(bucket_size_x, hidden.shape[0]), dim=1).indices  # [n_b, b_x]
        y_ids = _top_items(centers, items, min(bucket_size_y, items.shape[0]), item_chunk)  # [n_b, b_y]
    positive = at_least_float32((hidden * items[safe]).sum(-1))  # [M]
    negative = at_least_float32(hidden[x_ids] @ items[y_ids].transpose(1, 2))  # [n_b, b_x, D] x [n_b, D, b_y]
    # the positive leaves the negatives; the lowest finite value, not -inf, so a row of only the positive (b_y = 1)
    # has a finite log-sum-exp and a zero gradient instead of NaN
    hits = safe[x_ids].unsqueeze(2) == y_ids.unsqueeze(1)  # [n_b, b_x, b_y]
    negative = negative.masked_fill(hits, torch.finfo(negative.dtype).min)
    bucket_positive = positive[x_ids]  # [n_b, b_x]
    entry_loss = torch.logaddexp(torch.logsumexp(negative, dim=2), bucket_positive) - bucket_positive  # [n_b, b_x]
    per_position = positive.new_zeros(hidden.shape[0]).scatter_reduce(
        0, x_ids.flatten(), entry_loss.flatten(), reduce="amax", include_self=False
    )  # [M]; every entry loss is >= 0, so positions no bucket took stay 0
    taken = torch.zeros_like(valid).index_fill(0, x_ids.flatten(), True) & valid  # [M]
    return reduce_loss(per_position, taken, reduction)
