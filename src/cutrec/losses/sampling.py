"""Negative-sampling distributions over the catalog: uniform and popularity (count ** alpha), with log q for logQ.

A distribution draws item ids with a `torch.Generator` that the caller seeds (the trainer passes a new seed every
step), and reports log q(j) so that sampled losses can apply the logQ correction of ../docs/kernels.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cutrec.errors import CutrecError


@dataclass
class NegativeDistribution:
    """q over items 0..N-1. `probs` is None for uniform (q = 1/N); otherwise a [N] float32 tensor summing to 1."""

    num_items: int
    probs: torch.Tensor | None = None

    @classmethod
    def uniform(cls, num_items: int) -> NegativeDistribution:
        if num_items < 1:
            raise CutrecError(f"num_items={num_items} is too small: a catalog needs at least 1 item")
        return cls(num_items=num_items)

    @classmethod
    def popularity(cls, item_counts: torch.Tensor, alpha: float = 1.0) -> NegativeDistribution:
        """q_j proportional to item_counts[j] ** alpha (items with count 0 are never drawn)."""
        counts = torch.as_tensor(item_counts, dtype=torch.float64)
        if counts.ndim != 1 or counts.numel() == 0:
            raise CutrecError(f"item_counts must be a non-empty [N] vector, got shape {tuple(counts.shape)}")
        if not torch.isfinite(counts).all() or (counts < 0).any():
            raise CutrecError("item_counts must be finite and non-negative; pass per-item training counts")
        if alpha < 0:
            raise CutrecError(f"alpha={alpha} must be >= 0 (alpha=0 is uniform over items with a count)")
        weights = torch.where(counts > 0, counts.pow(alpha), torch.zeros_like(counts))
        total = weights.sum()
        if total <= 0:
            raise CutrecError("item_counts are all zero: popularity sampling needs at least one item with a count")
        return cls(num_items=counts.numel(), probs=(weights / total).float())

    def sample(self, shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """Draw item ids with replacement; returns int64 of `shape` on `device`."""
        count = 1
        for size in shape:
            count *= size
        if self.probs is None:
            return torch.randint(0, self.num_items, shape, generator=generator, device=device)
        probs = self.probs.to(device)
        return torch.multinomial(probs, count, replacement=True, generator=generator).view(shape)

    def log_q(self, ids: torch.Tensor) -> torch.Tensor:
        """log q(ids) in float32, same shape as ids."""
        if self.probs is None:
            return torch.full(ids.shape, -float(torch.log(torch.tensor(float(self.num_items)))), device=ids.device)
        return self.probs.to(ids.device).log()[ids]


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on `device` seeded with `seed` (the trainer derives one seed per step)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator
