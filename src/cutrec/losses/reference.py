"""Plain-PyTorch losses: the ground truth for the kernels and the baselines they are measured against.

Every loss takes the seam of docs/architecture.md: `hidden [M, D]`, `items [N, D]`, `targets [M]` (int64; positions
equal to `ignore_index` are padding and contribute nothing). Logit for position i and item j: z_ij = h_i . w_j (+ b_j).
`reduction="mean"` divides by the number of positions that have a target (0 when there are none).
The objectives are exactly those of docs/losses.md: CE, CE- (sampled softmax with logQ correction and accidental
hits removed), BCE / BCE+ (sigmoid with 1 or K negatives) and gBCE (gSASRec, Petrov and Macdonald, RecSys 2023).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

from cutrec.errors import CutrecError
from cutrec.losses.sampling import NegativeDistribution, seeded_generator

Reduction = Literal["mean", "sum", "none"]


def check_seam(
    hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, bias: torch.Tensor | None = None
) -> None:
    """Validate the three seam tensors (shapes, dtypes, devices); raise CutrecError naming the bad one."""
    if hidden.ndim != 2:
        raise CutrecError(f"hidden must be [M, D], got shape {tuple(hidden.shape)}; flatten positions first")
    if items.ndim != 2 or items.shape[1] != hidden.shape[1]:
        raise CutrecError(
            f"items must be [N, D] with D={hidden.shape[1]} like hidden, got shape {tuple(items.shape)}"
        )
    if targets.ndim != 1 or targets.shape[0] != hidden.shape[0]:
        raise CutrecError(f"targets must be [M]={hidden.shape[0]} like hidden's rows, got shape {tuple(targets.shape)}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise CutrecError(f"targets must be int64 item ids, got {targets.dtype}")
    if not hidden.is_floating_point() or not items.is_floating_point():
        raise CutrecError(f"hidden and items must be floating point, got {hidden.dtype} and {items.dtype}")
    if hidden.device != items.device or targets.device != hidden.device:
        raise CutrecError(
            f"hidden, items and targets must share a device, got {hidden.device}, {items.device}, {targets.device}"
        )
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != items.shape[0]):
        raise CutrecError(f"bias must be [N]={items.shape[0]}, got shape {tuple(bias.shape)}")


def check_target_range(targets: torch.Tensor, num_items: int, ignore_index: int) -> None:
    """One min/max reduction over the non-ignored targets and one device-to-host copy of its two numbers; raise
    naming an id outside [0, num_items). Every loss runs it unless called with check_targets=False (the trainer,
    whose data pipeline guarantees the range, skips the copy: it stalls the CPU's queueing of kernels)."""
    if targets.numel() == 0:
        return
    kept = torch.where(targets == ignore_index, torch.zeros_like(targets), targets)
    low, high = torch.stack(torch.aminmax(kept)).tolist()  # one device-to-host copy
    if low < 0 or high >= num_items:
        bad = low if low < 0 else high
        raise CutrecError(
            f"target {bad} is not an item id in [0, {num_items}) nor ignore_index={ignore_index}; "
            "fix the targets or pass the ignore_index that marks padding"
        )


def reduce_loss(
    per_position: torch.Tensor, valid: torch.Tensor, reduction: Reduction, *, zeroed: bool = False
) -> torch.Tensor:
    """Zero the ignored positions (skipped when `zeroed`: the cut losses' implementations already write 0 there),
    then mean over valid ones, sum, or keep [M]."""
    if not zeroed:
        per_position = torch.where(valid, per_position, torch.zeros_like(per_position))
    if reduction == "none":
        return per_position
    if reduction == "sum":
        return per_position.sum()
    if reduction == "mean":
        return per_position.sum() / valid.sum().clamp(min=1)
    raise CutrecError(f"reduction={reduction!r} is unknown; use 'mean', 'sum' or 'none'")


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 scores are upcast to float32; float32 and float64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def safe_targets(targets: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(int64 targets [M] with 0 at ignored positions, so they index items safely; valid [M] bool)."""
    valid = targets != ignore_index  # [M] bool
    return torch.where(valid, targets, torch.zeros_like(targets)).long(), valid


def cross_entropy(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    check_targets: bool = True,
) -> torch.Tensor:
    """Full softmax CE over the catalog; materialises the [M, N] logits (the baseline the kernels replace)."""
    check_seam(hidden, items, targets, bias)
    if check_targets:
        check_target_range(targets, items.shape[0], ignore_index)
    logits = hidden @ items.T  # [M, N]
    if bias is not None:
        logits = logits + bias
    safe, valid = safe_targets(targets, ignore_index)
    per_position = F.cross_entropy(logits, safe, reduction="none")  # [M]
    return reduce_loss(per_position, valid, reduction)


def _negatives_and_scores(
    hidden: torch.Tensor,
    items: torch.Tensor,
    safe: torch.Tensor,
    negatives: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive scores [M] and negative scores [M, K] for per-position [M, K] or shared [K] negatives."""
    # a batched product like the negatives', so both get the same precision under autocast
    positive = torch.bmm(items[safe].unsqueeze(1), hidden.unsqueeze(-1)).view(-1)  # [M, 1, D] x [M, D, 1]
    if negatives.ndim == 1:
        negative = hidden @ items[negatives].T  # [M, K]
    else:
        negative = torch.bmm(items[negatives], hidden.unsqueeze(-1)).squeeze(-1)  # [M, K, D] x [M, D, 1] -> [M, K]
    return positive, negative


def draw_negatives(
    num_positions: int,
    num_negatives: int,
    distribution: NegativeDistribution,
    seed: int | None,
    device: torch.device,
) -> torch.Tensor:
    """[M, K] int64 negatives drawn from `distribution` by a generator seeded with `seed`, or with seed=None from
    torch's default generator of the device (graph-safe: each replay of a captured CUDA graph draws anew)."""
    if num_negatives < 1:
        raise CutrecError(f"num_negatives={num_negatives} must be at least 1")
    generator = None if seed is None else seeded_generator(seed, device)
    return distribution.sample((num_positions, num_negatives), generator, device)


def _resolve_negatives(
    hidden: torch.Tensor,
    items: torch.Tensor,
    num_negatives: int | None,
    negatives: torch.Tensor | None,
    distribution: NegativeDistribution,
    seed: int | None,
) -> torch.Tensor:
    if distribution.num_items != items.shape[0]:
        raise CutrecError(
            f"the negative distribution covers {distribution.num_items} items but items has {items.shape[0]} rows"
        )
    if negatives is None:
        if num_negatives is None:
            raise CutrecError("pass num_negatives (how many to draw) or explicit negatives")
        return draw_negatives(hidden.shape[0], num_negatives, distribution, seed, hidden.device)
    if negatives.ndim not in (1, 2) or (negatives.ndim == 2 and negatives.shape[0] != hidden.shape[0]):
        shape = tuple(negatives.shape)
        raise CutrecError(f"negatives must be [M, K] or [K], got shape {shape} with M={hidden.shape[0]}")
    if negatives.numel() == 0:
        raise CutrecError("negatives is empty: give at least one negative per position")
    if negatives.min() < 0 or negatives.max() >= items.shape[0]:
        raise CutrecError(f"negatives must be item ids in [0, {items.shape[0]}), got values outside")
    return negatives.long()


def sampled_cross_entropy(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    *,
    num_negatives: int | None = None,
    negatives: torch.Tensor | None = None,
    distribution: NegativeDistribution | None = None,
    logq_correction: bool = True,
    seed: int | None = 0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    check_targets: bool = True,
) -> torch.Tensor:
    """CE- of docs/losses.md: s_0 = z_iy, s_k = z_in_k - log(K q(n_k)), s_k = -inf on accidental hits.

    Negatives are drawn from `distribution` (uniform by default) with a generator seeded by `seed` (None: torch's
    default generator, see `draw_negatives`), or passed
    explicitly as `negatives` ([M, K] per position or [K] shared by all positions).
    Gathers the [M, K, D] negative embeddings: this is the plain PyTorch baseline.
    """
    check_seam(hidden, items, targets)
    if check_targets:
        check_target_range(targets, items.shape[0], ignore_index)
    distribution = distribution or NegativeDistribution.uniform(items.shape[0])
    negatives = _resolve_negatives(hidden, items, num_negatives, negatives, distribution, seed)
    safe, valid = safe_targets(targets, ignore_index)
    positive, negative = _negatives_and_scores(hidden, items, safe, negatives)
    negative = at_least_float32(negative)
    if logq_correction:
        num_k = negatives.shape[-1]
        log_kq = math.log(num_k) + distribution.log_q(negatives).to(negative.dtype)  # [M, K] or [K]
        negative = negative - log_kq
    hits = negatives.unsqueeze(0) if negatives.ndim == 1 else negatives  # [1 or M, K]
    negative = negative.masked_fill(hits == safe.unsqueeze(1), -math.inf)  # [M, K]
    scores = torch.cat([at_least_float32(positive).unsqueeze(1), negative], dim=1)  # [M, K + 1]
    per_position = torch.logsumexp(scores, dim=1) - scores[:, 0]  # [M]
    return reduce_loss(per_position, valid, reduction)


def binary_cross_entropy(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    *,
    num_negatives: int = 1,
    negatives: torch.Tensor | None = None,
    distribution: NegativeDistribution | None = None,
    positive_power: float = 1.0,
    seed: int | None = 0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    check_targets: bool = True,
) -> torch.Tensor:
    """BCE (K=1, original SASRec), BCE+ (K negatives) and, with positive_power=beta, gBCE.

    loss_i = -beta * log sigmoid(s_i0) - sum_k log sigmoid(-s_ik), accidental hits (n_ik == y_i) left out.
    """
    check_seam(hidden, items, targets)
    if check_targets:
        check_target_range(targets, items.shape[0], ignore_index)
    distribution = distribution or NegativeDistribution.uniform(items.shape[0])
    negatives = _resolve_negatives(hidden, items, num_negatives, negatives, distribution, seed)
    safe, valid = safe_targets(targets, ignore_index)
    positive, negative = _negatives_and_scores(hidden, items, safe, negatives)
    hits = negatives.unsqueeze(0) if negatives.ndim == 1 else negatives
    negative_terms = F.logsigmoid(-at_least_float32(negative)).masked_fill(hits == safe.unsqueeze(1), 0.0)  # [M, K]
    per_position = -positive_power * F.logsigmoid(at_least_float32(positive)) - negative_terms.sum(1)  # [M]
    return reduce_loss(per_position, valid, reduction)


def gbce_beta(num_negatives: int, num_items: int, t: float) -> float:
    """gSASRec's beta = a * (t * (1 - 1/a) + 1/a), a = K / (N - 1) the sampling rate."""
    if not 0.0 <= t <= 1.0:
        raise CutrecError(f"gBCE calibration t={t} must be in [0, 1]")
    rate = num_negatives / max(num_items - 1, 1)
    return rate * (t * (1.0 - 1.0 / rate) + 1.0 / rate)
