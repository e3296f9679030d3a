"""The item embedding of a catalog-parallel run: the catalog's rows split across ranks, the special rows replicated.

Rank r holds the catalog rows [start_r, stop_r) (`weight`, its own: never all-reduced, updated by this rank alone)
and the special rows (padding, then any special tokens such as BERT4Rec's mask; `special`, replicated like every
other parameter). The encoder's input lookup of ids [B, L] is collective: every rank gathers all ranks' ids, looks
up the ones it holds (rank 0 also the special ids) and the partial embeddings are summed back to their ranks.
The backward gathers every rank's embedding gradient, and each rank adds the rows it holds into its own `weight`
gradient, rank 0 those of the special rows (the padding row's stays zero). With DistributedDataParallel summing the
replicated gradients (`train.catalog_parallel.sum_hook`), `special` then gets rank 0's gradient on every rank.

The encoder's output item table is `weight`: this rank's shard, which the catalog-parallel loss and ranking use
(`losses.catalog_parallel`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cutrec.distributed import Ranks, collective, gather_all
from cutrec.losses.catalog_parallel import shard_bounds


class ShardedItemEmbedding(nn.Module):
    """This rank's rows of the catalog embedding plus the replicated special rows (see the module docstring), built
    alone from the encoder's `item_seed`: the same values as those rows of one device's table."""

    def __init__(self, num_items: int, num_special: int, dim: int, seed: int, std: float, ranks: Ranks) -> None:
        from cutrec.models.transformer import fill_item_rows

        super().__init__()
        self.start, self.stop = shard_bounds(num_items, ranks)
        self.num_items, self.ranks = num_items, ranks
        weight, special = torch.empty(self.stop - self.start, dim), torch.empty(num_special, dim)  # [N_r, D], [S, D]
        fill_item_rows(weight, seed, self.start, std)
        fill_item_rows(special, seed, num_items, std)
        special[0] = 0.0  # the padding row
        self.weight, self.special = nn.Parameter(weight), nn.Parameter(special)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return _ShardedLookup.apply(ids, self.weight, self.special, self)  # [B, L, D]


class _ShardedLookup(torch.autograd.Function):
    """Fixed shapes, no boolean indexing: nothing waits for the device (ids outside this rank's rows are clamped to a
    row and masked out)."""

    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, weight: torch.Tensor, special: torch.Tensor,
                module: ShardedItemEmbedding) -> torch.Tensor:
        ranks = module.ranks
        every = gather_all(ids, ranks)  # [W, B, L] all ranks' ids
        local = every - module.start  # [W, B, L] row ids in this shard
        mine = (local >= 0) & (local < weight.shape[0])
        safe = local.clamp(0, weight.shape[0] - 1)
        found = torch.where(mine[..., None], weight[safe], 0.0)  # [W, B, L, D]
        if ranks.rank == 0:  # the special ids: rank 0 looks them up
            extra = every - module.num_items  # [W, B, L]
            found = torch.where((extra >= 0)[..., None], special[extra.clamp(0, special.shape[0] - 1)], found)
        with collective(ranks):
            dist.all_reduce(found)  # every rank's rows summed (reduce-scatter without gloo's support for it)
        ctx.save_for_backward(every, safe, mine)
        ctx.module = module
        return found[ranks.rank]  # [B, L, D]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        every, safe, mine = ctx.saved_tensors
        module = ctx.module
        grads = gather_all(grad, module.ranks).flatten(0, 2)  # [W B L, D]
        grad_weight = grads.new_zeros(module.weight.shape).index_add_(
            0, safe.flatten(), torch.where(mine.flatten()[:, None], grads, 0.0))  # rows of other ranks add zeros
        grad_special = grads.new_zeros(module.special.shape)
        if module.ranks.rank == 0:
            extra = every.flatten() - module.num_items  # [W B L]
            grad_special.index_add_(0, extra.clamp(0, module.special.shape[0] - 1),
                                    torch.where((extra >= 0)[:, None], grads, 0.0))
            grad_special[0] = 0.0  # the padding row stays zero
        return None, grad_weight, grad_special, None
