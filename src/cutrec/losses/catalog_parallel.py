"""Cut cross-entropy and top-k over a catalog split by rows across ranks (catalog parallel, for item tables that do
not fit one card).

Rank r of W holds the rows [start_r, stop_r) of the item table (`shard_bounds`). Every rank sees the same hidden
states [M, D] (the step's rows of all ranks, gathered once per step) and the global targets [M]. For row i:

    lse_ri  = log sum_{j in shard r} exp(h_i . w_j)        (the cut CE forward on the shard alone)
    LSE_i   = log sum_r exp(lse_ri)                        (one all-gather of the W x M shard LSEs)
    z_iy    = h_i . w_{y_i}, from the rank that owns y_i   (one all-reduce of M numbers)
    loss_i  = LSE_i - z_iy                                 (the same on every rank)

The gradients use the global LSE. Rank r's share of d loss_i / d h_i is exp(lse_ri - LSE_i) times its shard's
softmax-weighted item sum, minus w_{y_i} on the owner; the sum over ranks is the whole gradient (the backward of the
hidden states' all-gather adds the ranks' shares). d w_j comes from w_j's own rank alone, so each rank updates only
its rows. A row whose target another rank owns gets the target -1 on this shard (an id outside it: the cut CE ops
then compute its softmax and no target term). The shard computations are the cut CE ops (`losses.cut_cross_entropy`:
Triton on CUDA, the chunked PyTorch fallback elsewhere), so no [M, N] logits exist on any rank.

The sampled cut CE (CCE-) over shards, `sharded_sampled_cut_cross_entropy`, draws each shard's negatives on its
own rank (stratified sampling): rank r draws K_r of the K negatives from its rows, with q_r the distribution q
restricted to the shard (uniform over its rows, or popularity renormalised on them) and K_r = K q(shard r) rounded
by largest remainder (`negatives_per_shard`; the K_r sum to K, and a shard may get none when K is small). Each
negative's logQ correction is log(K_r q_r(n)): its expected count among the K draws, which equals the single
device's K q(n) up to the rounding of K_r. Each rank runs the sampled cut CE ops on its shard (negatives drawn in
the kernels, never stored) and the same combination as above gives

    loss_i  = log(exp(z_iy) + sum_r sum_{n in draws_r(i)} exp(s_in)) - z_iy

with accidental hits removed on the owner's shard. On one rank this is the single-device CCE- with the same draws;
on several it is the CE- of the float64 reference given the same negatives and corrections (the tests check both).

`sharded_top_k_keys` ranks users against each shard and merges the ranks' k best (one all-gather of W x U x k
keys): the keys carry global item ids, so the merge equals the single-device ranking, ties ordered by item id.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cutrec.distributed import Ranks, gather_all, shard, shards, sum_all
from cutrec.errors import CutrecError
from cutrec.eval.ranking import top_k_keys
from cutrec.losses.cut_cross_entropy import _forward_impl, _item_backward_impl, resolve_impl
from cutrec.losses.reference import check_seam
from cutrec.losses.sampled_cut_cross_entropy import _backward_impl as _sampled_backward_impl
from cutrec.losses.sampled_cut_cross_entropy import _check_offsets_uniform, _resolve_impl
from cutrec.losses.sampled_cut_cross_entropy import _forward_impl as _sampled_forward_impl
from cutrec.losses.sampling import NegativeDistribution, check_key, key_tensor


def shard_bounds(num_items: int, ranks: Ranks) -> tuple[int, int]:
    """[start, stop) of the item rows that this rank holds: contiguous, sizes differing by at most one."""
    if num_items < ranks.world:
        raise CutrecError(f"a catalog of {num_items} items cannot be split over {ranks.world} ranks; use fewer ranks")
    return shard(num_items, ranks)


def _local_targets(targets: torch.Tensor, start: int, rows: int, ignore_index: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(valid [M], own [M]: targets this rank holds, local targets [M]: their shard ids, an id outside the shard
    where another rank holds the target, ignore_index where ignored)."""
    valid = targets != ignore_index
    own = valid & (targets >= start) & (targets < start + rows)
    elsewhere = -1 if ignore_index != -1 else -2  # the target of a row another rank owns: no id of this shard
    return valid, own, torch.where(own, targets - start, torch.where(valid, elsewhere, ignore_index))


def _combine(lse: torch.Tensor, loss: torch.Tensor, own: torch.Tensor, valid: torch.Tensor, ranks: Ranks
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the whole catalog's LSE [M], the loss [M], 0 on ignored rows) from every rank's shard LSE and its loss on
    the rows it holds the target of (z_iy = lse - loss there)."""
    positive = sum_all(torch.where(own, lse - loss, 0.0), ranks)  # [M] z_iy from the owner
    total = torch.logsumexp(gather_all(lse, ranks), dim=0)  # [M]
    return total, torch.where(valid, total - positive, 0.0)


class _ShardedCutCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, start: int,
                ranks: Ranks, ignore_index: int, impl: str) -> torch.Tensor:
        valid, own, local = _local_targets(targets, start, items.shape[0], ignore_index)  # [M] each
        loss, lse, factor = _forward_impl(hidden, items, None, local, ignore_index, True, False, impl)  # [M] [M] [M, D]
        total, whole = _combine(lse, loss, own, valid, ranks)  # [M], [M]
        chosen = items[torch.where(own, local, 0)].to(factor.dtype) * own[:, None]  # [M, D] w_y where owned
        weight = torch.exp(lse - total)[:, None].to(factor.dtype)  # [M, 1] this shard's share of the softmax
        factor = weight * (factor + chosen) - chosen  # [M, D] this rank's d loss_i / d h_i
        factor = torch.where(valid[:, None], factor, 0.0)
        ctx.save_for_backward(hidden, items, local, total, factor)
        ctx.ignore_index, ctx.impl = ignore_index, impl
        return whole

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, items, local, total, factor = ctx.saved_tensors
        grad_hidden = factor * grad_loss[:, None].to(factor.dtype)  # [M, D] this rank's share
        grad_items, _ = _item_backward_impl(hidden, items, None, local, total, grad_loss, ctx.ignore_index,
                                            ctx.impl)  # [N_r, D], with the global LSE
        return grad_hidden, grad_items, None, None, None, None, None


def sharded_cut_cross_entropy(
    hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, *, start: int, ranks: Ranks,
    ignore_index: int = -100, impl: str = "auto",
) -> torch.Tensor:
    """Per-row full-softmax CE [M] (fp32, 0 on ignored rows) of `hidden` [M, D] (the same on every rank) against
    the whole catalog, of which this rank holds `items` [N_r, D], the rows start..start+N_r-1; `targets` [M] are
    global item ids. Gradients: this rank's share for hidden (sum them over ranks), its own rows for items."""
    check_seam(hidden, items, targets, None)
    resolved = resolve_impl(impl, hidden.device, hidden.shape[1])
    if torch.is_autocast_enabled(hidden.device.type):
        hidden = hidden.to(torch.get_autocast_dtype(hidden.device.type))
    with torch.autocast(hidden.device.type, enabled=False):
        return _ShardedCutCrossEntropy.apply(hidden, items.to(hidden.dtype), targets, start, ranks, ignore_index,
                                             resolved)


def negatives_per_shard(num_negatives: int, masses: Sequence[float]) -> list[int]:
    """K_r of each shard: K times the shard's share of q (`masses`, one per rank), rounded down, then the remaining
    draws to the largest remainders (ties to the lower rank); they sum to K."""
    exact = np.asarray(masses, dtype=np.float64) * num_negatives / np.sum(masses)  # [W]
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: num_negatives - int(counts.sum())]] += 1
    return [int(count) for count in counts]


def shard_distribution(distribution: NegativeDistribution, num_negatives: int, ranks: Ranks
                       ) -> tuple[NegativeDistribution | None, int]:
    """(q restricted to this rank's shard, renormalised, or None when q gives the shard no mass; K_r) of a
    distribution over the whole catalog (`distribution.num_items` items; every rank has the whole of it)."""
    num_items = distribution.num_items
    bounds = shards(num_items, ranks.world)
    if distribution.probs is None:
        masses = [stop - start for start, stop in bounds]
    else:
        masses = [float(distribution.probs[start:stop].double().sum()) for start, stop in bounds]
    start, stop = bounds[ranks.rank]
    count = negatives_per_shard(num_negatives, masses)[ranks.rank]
    if distribution.probs is None:
        return NegativeDistribution.uniform(stop - start), count
    if masses[ranks.rank] == 0:
        return None, 0
    return NegativeDistribution.popularity(distribution.probs[start:stop].double()), count


class _ShardedSampledCutCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, start: int,
                ranks: Ranks, key: torch.Tensor, tables: tuple, num_negatives: int, logq_correction: bool,
                share: str, ignore_index: int, impl: str) -> torch.Tensor:
        valid, own, local = _local_targets(targets, start, items.shape[0], ignore_index)  # [M] each
        scalars = (num_negatives, logq_correction, share, 0, ignore_index, impl, None)  # the sampled ops' scalars
        if num_negatives > 0:
            loss, lse = _sampled_forward_impl(hidden, items, local, key, None, *tables, *scalars, False)  # on the shard
        else:  # a shard that q gives no draws: its part of the softmax is the positive, where it holds the target
            compute = torch.promote_types(hidden.dtype, torch.float32)  # the sampled ops' dtype, on every rank
            positive = (hidden.to(compute) * items[torch.where(own, local, 0)].to(compute)).sum(1)  # [M]
            loss, lse = torch.zeros_like(positive), torch.where(own, positive, -torch.inf)
        total, whole = _combine(lse, loss, own, valid, ranks)  # [M], [M]
        ctx.save_for_backward(hidden, items, local, own, whole, total, key)
        ctx.tables, ctx.scalars = tables, scalars
        return whole

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden, items, local, own, whole, total, key = ctx.saved_tensors
        if ctx.scalars[0] > 0:  # the negatives drawn again, scored against the whole catalog's LSE
            grad_hidden, grad_items = _sampled_backward_impl(hidden, items, local, whole, total, grad_loss, key, None,
                                                             *ctx.tables, *ctx.scalars)
        else:
            compute = total.dtype
            safe = torch.where(own, local, 0)
            w_target = items[safe].to(compute)  # [M, D]
            positive = (hidden.to(compute) * w_target).sum(1)
            factor = torch.where(own, (torch.exp(positive - total) - 1.0) * grad_loss.to(compute), 0.0)[:, None]
            grad_hidden = (factor * w_target).to(hidden.dtype)  # [M, D]
            grad_items = torch.zeros(items.shape, dtype=compute, device=items.device).index_add_(
                0, safe, factor * hidden.to(compute)).to(items.dtype)
        return grad_hidden, grad_items, *[None] * 10


def sharded_sampled_cut_cross_entropy(
    hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, *, start: int, ranks: Ranks,
    num_negatives: int, distribution: NegativeDistribution | None = None, logq_correction: bool = True,
    share: str = "none", seed: int | torch.Tensor = 0, ignore_index: int = -100, impl: str = "auto",
) -> torch.Tensor:
    """Per-row CE- [M] (fp32, 0 on ignored rows) of `hidden` [M, D] (the same on every rank) against the positive
    and the negatives that every rank draws from its shard (see the module docstring), of which this rank holds
    `items` [N_r, D], the rows start..start+N_r-1; `targets` [M] are global item ids. `num_negatives` is this
    shard's K_r and `distribution` its q_r (`shard_distribution`; None: uniform over the shard). `seed` is an int
    or this rank's draw key ([4] int64 of `sampling.key_tensor(seed, N_r, device)`). Gradients: this rank's share
    for hidden (sum them over ranks), its own rows for items."""
    check_seam(hidden, items, targets, None)
    if share not in ("none", "block", "batch", "offsets"):
        raise CutrecError(f"share={share!r} is unknown; use 'none', 'block', 'batch' or 'offsets'")
    distribution = distribution or NegativeDistribution.uniform(items.shape[0])
    if distribution.num_items != items.shape[0]:
        raise CutrecError(f"the shard's negative distribution covers {distribution.num_items} items but the shard has "
                          f"{items.shape[0]} rows")
    popularity = distribution.probs is not None
    _check_offsets_uniform(share, popularity, None)
    resolved = _resolve_impl(impl, hidden.device, hidden.shape[1], hidden.dtype, share != "offsets")
    if isinstance(seed, torch.Tensor):
        check_key(seed, hidden.device)
        key = seed
    else:
        key = key_tensor(seed, items.shape[0], hidden.device)
    tables = distribution.device_tables(hidden.device) if popularity else (None, None, None)
    if torch.is_autocast_enabled(hidden.device.type):
        hidden = hidden.to(torch.get_autocast_dtype(hidden.device.type))
    with torch.autocast(hidden.device.type, enabled=False):
        return _ShardedSampledCutCrossEntropy.apply(hidden, items, targets, start, ranks, key, tables, num_negatives,
                                                    logq_correction, share, ignore_index, resolved)


def sharded_top_k_keys(
    users: torch.Tensor, items: torch.Tensor, k: int, *, start: int, ranks: Ranks,
    exclude: tuple[torch.Tensor, torch.Tensor] | None = None, item_chunk: int = 65536, every_key: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`ranking.top_k_keys` over the whole catalog, of which this rank holds `items` [N_r, D] (rows start..): each
    rank's k best of its shard, merged; ([U, k] keys of global ids, exact [] bool on every rank; when not exact,
    call again with every_key=True). `exclude` is the CSR (offsets [U + 1], items) of global ids, on the CPU."""
    stop = start + items.shape[0]
    if exclude is not None:  # this shard's excluded items, as local ids
        offsets, excluded = (np.asarray(part) for part in exclude)
        mine = (excluded >= start) & (excluded < stop)  # [E]
        kept = np.concatenate([[0], np.cumsum(mine)])[offsets]  # [U + 1]
        exclude = (torch.from_numpy(kept.astype(np.int64)),
                   torch.from_numpy((excluded[mine] - start).astype(np.int64)))
    width = min(k, items.shape[0])
    keys, exact = top_k_keys(users, items, width, exclude=exclude, item_chunk=item_chunk,
                             every_key=every_key)  # [U, width], []
    keys = keys - start  # the low 32 bits hold (flip - item id): now of the global id
    if width < k:  # a shard smaller than k: pad with keys below every real one
        keys = torch.cat([keys, keys.new_full((keys.shape[0], k - width), torch.iinfo(torch.int64).min)], dim=1)
    merged = gather_all(keys, ranks).permute(1, 0, 2).reshape(keys.shape[0], -1)  # [U, W * k]
    exact = gather_all(exact.reshape(1), ranks).all()
    return torch.topk(merged, k, dim=1).values, exact
