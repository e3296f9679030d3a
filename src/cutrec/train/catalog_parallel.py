"""Catalog-parallel training: the item table split by rows across the ranks of a torchrun run
(train.catalog_parallel), for catalogs whose table and optimizer state do not fit one card.

`shard_catalog` gives the encoder a `models.sharded.ShardedItemEmbedding` (this rank's catalog rows, the special rows
replicated). `wrap` puts the encoder in DistributedDataParallel with the shard left out (each rank updates its own
rows) and the replicated gradients summed, not averaged: every rank's loss is the whole step's mean over all ranks'
targets, so each rank's gradient of a replicated parameter is its rows' part of the whole one. `CatalogParallelLoss`
gathers the step's hidden states of every rank once (a differentiable all-gather, whose backward sums each row's
gradient back to its rank) and scores them against the shards (`losses.catalog_parallel`): the cut CE, or the
sampled cut CE with each shard drawing its share of the negatives from its own rows.
(No `from __future__ import annotations` here: DistributedDataParallel checks the hook's annotations.)
"""

from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as distributed_autograd
from torch import nn

from cutrec.data.batches import IGNORE_INDEX, eval_batches
from cutrec.distributed import Ranks, collective, gather_all, gather_rows
from cutrec.errors import CutrecError
from cutrec.eval.ranking import keys_to_items, refuse_non_finite
from cutrec.losses import check_share, negative_distribution
from cutrec.losses.catalog_parallel import (
    shard_distribution,
    sharded_cut_cross_entropy,
    sharded_sampled_cut_cross_entropy,
    sharded_top_k_keys,
)
from cutrec.models.sharded import ShardedItemEmbedding
from cutrec.train.evaluate import autocast_context, batch_exclusion
from cutrec.transfer import to_device

SHARD_PARAMETER = "item_embedding.weight"  # the encoder's parameter that each rank holds its own rows of


def shard_catalog(model: nn.Module, ranks: Ranks) -> None:
    """Give the encoder (built with materialize_items=False) this rank's shard of the item embedding, the same
    initial values as those rows of one device's table; no rank builds the whole table."""
    dim = model.item_embedding.embedding_dim
    model.item_embedding = ShardedItemEmbedding(model.num_items, model.num_special, dim, model.item_seed,
                                                model.init_std, ranks)


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
    """The step's mean loss (CCE, or CCE- with each shard drawing its own negatives) over every rank's targets,
    against the catalog split across the ranks: called like the losses of the seam, with this rank's hidden [R, D],
    its shard [N_r, D], its targets [R] (R the same on every rank) and the step's draw key over the shard's rows."""

    def __init__(self, model: nn.Module, ranks: Ranks, config: Any, item_counts: torch.Tensor,
                 impl: str = "auto") -> None:
        self.model, self.ranks, self.config, self.impl = model, ranks, config, impl
        if config.name == "CCE-":
            whole = negative_distribution(config, model.num_items, item_counts)
            self.distribution, self.num_negatives = shard_distribution(whole, config.num_negatives, ranks)

    def __call__(self, hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, seed: Any = 0
                 ) -> torch.Tensor:
        every = torch.cat(distributed_autograd.all_gather(hidden))  # [W R, D]
        every_target = gather_all(targets, self.ranks).reshape(-1)  # [W R]
        start = self.model.item_embedding.start
        if self.config.name == "CCE-":
            per_row = sharded_sampled_cut_cross_entropy(
                every, items, every_target, start=start, ranks=self.ranks, num_negatives=self.num_negatives,
                distribution=self.distribution, logq_correction=self.config.logq_correction,
                share=self.config.share, seed=seed, impl=self.impl)  # [W R]
        else:
            per_row = sharded_cut_cross_entropy(every, items, every_target, start=start, ranks=self.ranks,
                                                impl=self.impl)  # [W R]
        return per_row.sum() / (every_target != IGNORE_INDEX).sum().clamp(min=1)


def active(config: Any, ranks: Ranks) -> bool:
    """Whether this process trains with the catalog split: train.catalog_parallel in a torchrun run (`check`
    refuses it anywhere else)."""
    return config.train.catalog_parallel and ranks.grouped


def check(config: Any, ranks: Ranks) -> None:
    """What catalog parallel needs of a run, refused in one line otherwise."""
    if not ranks.grouped:
        raise CutrecError("train.catalog_parallel=true splits the item table across the processes of a torchrun run; "
                          "start them with cutrec train --devices G (or torchrun), or set it false")
    check_config(config)


def check_config(config: Any) -> None:
    """What catalog parallel needs of the config (checked again by `cutrec train --devices` before it launches)."""
    if config.loss.name not in ("CCE", "CCE-"):
        raise CutrecError(f"train.catalog_parallel=true trains with the loss CCE or CCE-, not {config.loss.name}; "
                          "use --loss CCE or --loss CCE-")
    if config.loss.temperature != 1.0 or config.loss.label_smoothing:
        raise CutrecError("train.catalog_parallel=true does not take loss.temperature or loss.label_smoothing yet; "
                          "leave them at 1 and 0")
    check_share(config.loss)
    if config.train.batch_size == "auto":
        raise CutrecError("train.catalog_parallel=true needs a batch size; give --batch-size N (a multiple of the "
                          "ranks)")


def _shard_index(optimizer: torch.optim.Optimizer, model: nn.Module) -> int:
    """The position of the shard among the optimizer's parameters (its key in the optimizer's state dict)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return next(i for i, p in enumerate(params) if p is model.item_embedding.weight)


def full_state(state: Any, ranks: Ranks) -> dict[str, Any]:
    """The training state's dict with the shard and its optimizer moments gathered from every rank ([N, D] each) on
    rank 0, so that a resume with any number of ranks can take its rows (a collective; only rank 0's dict is whole,
    the others hold None for those rows)."""
    saved = state.state_dict()
    model = state.model
    num_items = model.num_items
    saved["model"] = {**saved["model"], SHARD_PARAMETER: gather_rows(model.item_embedding.weight.detach().cpu(),
                                                                     num_items, ranks, main_only=True)}
    index = _shard_index(state.optimizer, model)
    moments = dict(saved["optimizer"]["state"].get(index, {}))
    for key, value in moments.items():
        if torch.is_tensor(value) and value.ndim == 2:  # Adam's exp_avg and exp_avg_sq, one row per item
            moments[key] = gather_rows(value.cpu(), num_items, ranks, main_only=True)
    saved["optimizer"] = {**saved["optimizer"], "state": {**saved["optimizer"]["state"], index: moments}}
    return saved


def take_shard(saved: dict[str, Any], state: Any, ranks: Ranks) -> dict[str, Any]:
    """A state dict of `full_state` cut to this rank's rows, ready for TrainState.load_state_dict."""
    module = state.model.item_embedding
    rows = slice(module.start, module.stop)
    model = {**saved["model"], SHARD_PARAMETER: saved["model"][SHARD_PARAMETER][rows]}
    index = _shard_index(state.optimizer, state.model)
    moments = {key: value[rows] if torch.is_tensor(value) and value.ndim == 2 else value
               for key, value in saved["optimizer"]["state"].get(index, {}).items()}
    optimizer = {**saved["optimizer"], "state": {**saved["optimizer"]["state"], index: moments}}
    return {**saved, "model": model, "optimizer": optimizer}


def full_model_state(model: nn.Module, ranks: Ranks) -> dict[str, torch.Tensor]:
    """The encoder's state dict as one device's (item_embedding.weight [N + S, D]: the gathered catalog rows, then the
    special rows), for best.pt, which evaluate, recommend and export read (a collective; on rank 0, empty on the
    others)."""
    module = model.item_embedding
    catalog = gather_rows(module.weight.detach().cpu(), module.num_items, ranks, main_only=True)  # [N, D] on rank 0
    if catalog is None:
        return {}
    state = {name: value for name, value in model.state_dict().items() if not name.startswith("item_embedding.")}
    return {"item_embedding.weight": torch.cat([catalog, module.special.detach().cpu()]), **state}


@torch.no_grad()
def sharded_model_top_items(model: nn.Module, evalset: Any, config: Any, device: torch.device,
                            ranks: Ranks) -> torch.Tensor:
    """[U, max(ks)] top items of every user of the eval set (on the CPU, the same on every rank): every rank encodes
    all the users (the lookup is collective) and ranks them against its shard; the shards' best are merged."""
    model.eval()
    k = max(config.eval.ks)
    shard, start = model.item_table.float(), model.item_embedding.start
    picks, finite = [], torch.isfinite(shard).all()
    for inputs, lengths, rows in eval_batches(evalset.inputs, max_len=model.max_len, batch_size=config.eval.batch_size,
                                              padding_id=model.padding_id):
        with autocast_context(device, config.train.amp):
            users = model.user_vectors(to_device(inputs, device), to_device(lengths, device)).float()  # [B, D]
        finite &= torch.isfinite(users).all()
        exclude = batch_exclusion(evalset.inputs, rows.numpy()) if config.eval.exclude_seen else None
        keys, exact = sharded_top_k_keys(users, shard, k, start=start, ranks=ranks, exclude=exclude,
                                         item_chunk=config.eval.item_chunk)  # [B, k]
        if not bool(exact):  # the same on every rank
            keys, _ = sharded_top_k_keys(users, shard, k, start=start, ranks=ranks, exclude=exclude,
                                         item_chunk=config.eval.item_chunk, every_key=True)
        picks.append(keys)
    finite = finite.reshape(1).to(torch.int64)
    with collective(ranks):
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)  # every rank's shard and vectors
    refuse_non_finite(finite[0].bool())
    keys = torch.cat(picks) if picks else torch.empty((0, k), dtype=torch.int64, device=device)
    return keys_to_items(keys).cpu()  # refuses users left with fewer than k items, as one device does
