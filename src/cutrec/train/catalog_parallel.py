"""Catalog-parallel training: the item table split by rows across the ranks of a torchrun run
(train.catalog_parallel), for catalogs whose table and optimizer state do not fit one card.

`shard_catalog` gives the encoder a `models.sharded.ShardedItemEmbedding` (this rank's catalog rows, the special rows
replicated). `wrap` puts the encoder in DistributedDataParallel with the shard left out (each rank updates its own
rows) and the replicated gradients summed, not averaged: every rank's loss is the whole step's mean over all ranks'
targets, so each rank's gradient of a replicated parameter is its rows' part of the whole one. `CatalogParallelLoss`
gathers the step's hidden states of every rank once (a differentiable all-gather, whose backward sums each row's
gradient back to its rank) and scores them against the shards (`losses.catalog_parallel`).
(No `from __future__ import annotations` here: DistributedDataParallel checks the hook's annotations.)
"""

from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as distributed_autograd
from torch import nn

from cutrec.data.batches import IGNORE_INDEX
from cutrec.distributed import Ranks, collective
from cutrec.losses.catalog_parallel import sharded_cut_cross_entropy
from cutrec.models.sharded import ShardedItemEmbedding

SHARD_PARAMETER = "item_embedding.weight"  # the encoder's parameter that each rank holds its own rows of


def shard_catalog(model: nn.Module, ranks: Ranks) -> None:
    """Replace the encoder's item embedding by this rank's shard of it (the same initial values as one device)."""
    model.item_embedding = ShardedItemEmbedding(model.item_embedding, model.num_items, ranks)


def sum_hook(state: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """A DistributedDataParallel communication hook: the ranks' gradients summed (the default averages them)."""
    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda done: done.value()[0])


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The encoder in DistributedDataParallel, its shard left out and the replicated gradients summed."""
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, [SHARD_PARAMETER])
    wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.index is not None
                                                  else None)
    wrapped.register_comm_hook(None, sum_hook)
    return wrapped


class CatalogParallelLoss:
    """The step's mean full-softmax CE over every rank's targets, against the catalog split across the ranks: called
    like the losses of the seam, with this rank's hidden [R, D], its shard [N_r, D] and its targets [R] (R the same
    on every rank)."""

    def __init__(self, model: nn.Module, ranks: Ranks, impl: str = "auto") -> None:
        self.model, self.ranks, self.impl = model, ranks, impl

    def __call__(self, hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, seed: Any = None
                 ) -> torch.Tensor:
        every = torch.cat(distributed_autograd.all_gather(hidden))  # [W R, D]
        parts = [torch.empty_like(targets) for _ in range(self.ranks.world)]
        with collective(self.ranks):
            dist.all_gather(parts, targets)
        every_target = torch.cat(parts)  # [W R]
        start = self.model.item_embedding.start
        per_row = sharded_cut_cross_entropy(every, items, every_target, start=start, ranks=self.ranks,
                                            impl=self.impl)  # [W R]
        return per_row.sum() / (every_target != IGNORE_INDEX).sum().clamp(min=1)
