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
from cutrec.data.batches import IGNORE_INDEX
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
_SAMPLING = ("num_negatives", "distribution", "alpha", "uniform_mix")
LOSS_KEYS = {
    "auto": ("temperature",),
    "CE": ("temperature", "label_smoothing"),
    "CCE": ("temperature", "label_smoothing"),
    "CE-": (*_SAMPLING, "logq_correction", "temperature"),
    "CCE-": (*_SAMPLING, "logq_correction", "share", "temperature"),
    "BCE": ("distribution", "alpha", "uniform_mix", "temperature"),
    "BCE+": (*_SAMPLING, "temperature"),
    "gBCE": (*_SAMPLING, "gbce_t", "temperature"),
    "SCE": ("sce_buckets", "sce_bucket_size_x", "sce_bucket_size_y", "sce_mix", "temperature"),
}


def _with_recipe(loss: LossFn, config: LossConfig) -> LossFn:
    """`loss` with loss.temperature T (the hidden states over T: every logit h . w over T) and loss.label_smoothing
    eps (CE, CCE): (1 - eps) CE + eps times the catalog's mean of -log p_j, per position, which for dot-product
    logits is CE + eps (z_y - h . w_bar), w_bar the mean item row: no [M, N] logits needed (Szegedy et al. 2016)."""
    temperature, eps = config.temperature, config.label_smoothing
    if temperature == 1.0 and eps == 0.0:
        return loss

    def call(hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, *, seed: int | torch.Tensor = 0):
        scaled = hidden / temperature if temperature != 1.0 else hidden  # [M, D]
        value = loss(scaled, items, targets, seed=seed)
        if eps:
            valid = targets != IGNORE_INDEX  # [M]
            offset = items[targets.clamp(min=0)].float() - items.float().mean(0)  # [M, D] w_y - w_bar
            gap = (scaled.float() * offset).sum(1)  # [M] z_y - h . w_bar
            value = value + eps * torch.where(valid, gap, 0.0).sum() / valid.sum().clamp(min=1)
        return value

    return call


def check_share(config: LossConfig) -> None:
    """loss.share='offsets' draws uniformly: refused with popularity sampling."""
    if config.share == "offsets" and config.distribution == "popularity":
        raise CutrecError("loss.share='offsets' draws uniformly; use loss.distribution='uniform', or "
                          "loss.share='none' for popularity sampling")


def build_loss(config: LossConfig, num_items: int, item_counts: torch.Tensor | None = None) -> LossFn:
    """The loss named by config.name (resolved by `resolve_loss_name`) as `loss(hidden, items, targets, *, seed)`."""
    name = resolve_loss_name(config.name, num_items)
    if config.label_smoothing and name not in ("CE", "CCE"):
        raise CutrecError(f"loss.label_smoothing={config.label_smoothing} applies to the full-softmax losses CE and "
                          f"CCE, not {name}; use --loss CE or CCE, or loss.label_smoothing=0")
    return _with_recipe(_base_loss(name, config, num_items, item_counts), config)


def negative_distribution(config: LossConfig, num_items: int, item_counts: torch.Tensor | None
                          ) -> NegativeDistribution:
    """q of the sampled losses: uniform, or popularity (training counts ** loss.alpha) mixed with loss.uniform_mix
    of the uniform distribution."""
    if config.distribution == "uniform":  # (config.validate refuses a uniform_mix here)
        return NegativeDistribution.uniform(num_items)
    if item_counts is None:
        raise CutrecError("loss.distribution='popularity' needs training item counts; none were given")
    return NegativeDistribution.popularity(item_counts, config.alpha, config.uniform_mix)


def _base_loss(name: str, config: LossConfig, num_items: int, item_counts: torch.Tensor | None) -> LossFn:
    """The loss `name` (resolved) as `loss(hidden, items, targets, *, seed)`, before the recipe's temperature and
    label smoothing."""
    distribution = negative_distribution(config, num_items, item_counts)
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
        check_share(config)
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
