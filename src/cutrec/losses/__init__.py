"""The public losses, all on the seam (hidden [M, D], items [N, D], targets [M]) of docs/architecture.md.

`build_loss` turns a LossConfig into one callable `loss(hidden, items, targets, seed=...)`. The seed is an int, or
the draw key tensor of `sampling.key_tensor` that the trainer writes every step (derived from the run seed and the
step counter, so the kernel losses draw fresh negatives reproducibly, also inside a replayed CUDA graph). Given a
key, the PyTorch sampled losses (CE-, BCE, BCE+, gBCE, and SCE's bucket directions) draw from torch's default
generator instead: graph-safe, and reproducible through the generator state that last.pt saves.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from cutrec.config import LossConfig
from cutrec.errors import CutrecError
from cutrec.losses.cut_cross_entropy import CutCrossEntropy, cut_cross_entropy
from cutrec.losses.reference import (
    binary_cross_entropy,
    cross_entropy,
    gbce_beta,
    sampled_cross_entropy,
)
from cutrec.losses.sampled_cut_cross_entropy import SampledCutCrossEntropy, sampled_cut_cross_entropy
from cutrec.losses.sampling import NegativeDistribution
from cutrec.losses.scalable_cross_entropy import scalable_cross_entropy

__all__ = [
    "LARGE_CATALOG_ITEMS",
    "CutCrossEntropy",
    "NegativeDistribution",
    "SampledCutCrossEntropy",
    "binary_cross_entropy",
    "build_loss",
    "resolve_loss_name",
    "cross_entropy",
    "cut_cross_entropy",
    "sampled_cross_entropy",
    "sampled_cut_cross_entropy",
    "scalable_cross_entropy",
]

LossFn = Callable[..., torch.Tensor]
LARGE_CATALOG_ITEMS = 100_000  # loss "auto": above this many items a step's [M, N] logits pass ~2.5 GB; use CCE-


def _without_seed(loss: LossFn) -> LossFn:
    def call(hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        return loss(hidden, items, targets)

    return call


def _default_generator_when_keyed(loss: LossFn) -> LossFn:
    def call(hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, *, seed: int | torch.Tensor = 0):
        return loss(hidden, items, targets, seed=None if isinstance(seed, torch.Tensor) else seed)

    return call


def resolve_loss_name(name: str, num_items: int) -> str:
    """'auto' -> 'CE' up to LARGE_CATALOG_ITEMS items, else 'CCE-' (the sampled cut CE); other names unchanged."""
    if name != "auto":
        return name
    return "CE" if num_items <= LARGE_CATALOG_ITEMS else "CCE-"


# the loss-section keys each loss uses (besides name)
_SAMPLING = ("num_negatives", "distribution", "alpha")
LOSS_KEYS = {
    "auto": (),
    "CE": (),
    "CCE": (),
    "CE-": (*_SAMPLING, "logq_correction"),
    "CCE-": (*_SAMPLING, "logq_correction", "share"),
    "BCE": ("distribution", "alpha"),
    "BCE+": _SAMPLING,
    "gBCE": (*_SAMPLING, "gbce_t"),
    "SCE": ("sce_buckets", "sce_bucket_size_x", "sce_bucket_size_y", "sce_mix"),
}


def build_loss(config: LossConfig, num_items: int, item_counts: torch.Tensor | None = None) -> LossFn:
    """The loss named by config.name (resolved by `resolve_loss_name`) as `loss(hidden, items, targets, *, seed)`."""
    name = resolve_loss_name(config.name, num_items)
    if config.distribution == "popularity":
        if item_counts is None:
            raise CutrecError("loss.distribution='popularity' needs training item counts; none were given")
        distribution = NegativeDistribution.popularity(item_counts, config.alpha)
    else:
        distribution = NegativeDistribution.uniform(num_items)
    # The data pipeline guarantees targets in [0, N): every loss skips the per-step range check (a host sync).
    if name == "CE":
        return _without_seed(partial(cross_entropy, check_targets=False))
    if name == "CCE":
        return _without_seed(partial(cut_cross_entropy, check_targets=False))
    if name == "CE-":
        return _default_generator_when_keyed(partial(
            sampled_cross_entropy,
            check_targets=False,
            num_negatives=config.num_negatives,
            distribution=distribution,
            logq_correction=config.logq_correction,
        ))
    if name == "CCE-":
        if config.share == "offsets" and config.distribution == "popularity":
            raise CutrecError("loss.share='offsets' draws uniformly; use loss.distribution='uniform', or "
                              "loss.share='none' for popularity sampling")
        return partial(
            sampled_cut_cross_entropy,
            check_targets=False,
            num_negatives=config.num_negatives,
            distribution=distribution,
            logq_correction=config.logq_correction,
            share=config.share,
        )
    if name in ("BCE", "BCE+", "gBCE"):
        negatives = 1 if name == "BCE" else config.num_negatives
        beta = gbce_beta(config.num_negatives, num_items, config.gbce_t) if name == "gBCE" else 1.0
        return _default_generator_when_keyed(partial(
            binary_cross_entropy, num_negatives=negatives, distribution=distribution, positive_power=beta,
            check_targets=False,
        ))
    if name == "SCE":
        return _default_generator_when_keyed(partial(
            scalable_cross_entropy,
            check_targets=False,
            num_buckets=config.sce_buckets,
            bucket_size_x=config.sce_bucket_size_x,
            bucket_size_y=config.sce_bucket_size_y,
            mix=config.sce_mix,
        ))
    raise CutrecError(
        f"loss.name={config.name!r} is unknown; choose auto, CE, CCE, CE-, CCE-, BCE, BCE+, gBCE or SCE"
    )
