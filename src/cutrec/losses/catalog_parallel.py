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

`sharded_top_k_keys` ranks users against each shard and merges the ranks' k best (one all-gather of W x U x k
keys): the keys carry global item ids, so the merge equals the single-device ranking, ties ordered by item id.
"""

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from cutrec.distributed import Ranks, collective, shard
from cutrec.errors import CutrecError
from cutrec.eval.ranking import top_k_keys
from cutrec.losses.cut_cross_entropy import _forward_impl, _item_backward_impl, resolve_impl
from cutrec.losses.reference import check_seam


def shard_bounds(num_items: int, ranks: Ranks) -> tuple[int, int]:
    """[start, stop) of the item rows that this rank holds: contiguous, sizes differing by at most one."""
    if num_items < ranks.world:
        raise CutrecError(f"a catalog of {num_items} items cannot be split over {ranks.world} ranks; use fewer ranks")
    return shard(num_items, ranks)


def _all_gather(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """[W, ...] every rank's `tensor` (all of one shape), in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(ranks.world)]
    with collective(ranks):
        dist.all_gather(parts, tensor.contiguous())
    return torch.stack(parts)


def _sum_all(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    total = tensor.clone()
    with collective(ranks):
        dist.all_reduce(total)
    return total


class _ShardedCutCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, start: int,
                ranks: Ranks, ignore_index: int, impl: str) -> torch.Tensor:
        valid = targets != ignore_index  # [M]
        own = valid & (targets >= start) & (targets < start + items.shape[0])  # [M] targets this rank holds
        elsewhere = -1 if ignore_index != -1 else -2  # the target of a row another rank owns: no id of this shard
        local = torch.where(own, targets - start, torch.where(valid, elsewhere, ignore_index))  # [M]
        loss, lse, factor = _forward_impl(hidden, items, None, local, ignore_index, True, False, impl)  # [M] [M] [M, D]
        positive = _sum_all(torch.where(own, lse - loss, 0.0), ranks)  # [M] z_iy from the owner
        total = torch.logsumexp(_all_gather(lse, ranks), dim=0)  # [M] the whole catalog's LSE
        chosen = items[torch.where(own, local, 0)].to(factor.dtype) * own[:, None]  # [M, D] w_y where owned
        weight = torch.exp(lse - total)[:, None].to(factor.dtype)  # [M, 1] this shard's share of the softmax
        factor = weight * (factor + chosen) - chosen  # [M, D] this rank's d loss_i / d h_i
        factor = torch.where(valid[:, None], factor, 0.0)
        ctx.save_for_backward(hidden, items, local, total, factor)
        ctx.ignore_index, ctx.impl = ignore_index, impl
        return torch.where(valid, total - positive, 0.0)

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
    merged = _all_gather(keys, ranks).permute(1, 0, 2).reshape(keys.shape[0], -1)  # [U, W * k]
    exact = _all_gather(exact.reshape(1), ranks).all()
    return torch.topk(merged, k, dim=1).values, exact
