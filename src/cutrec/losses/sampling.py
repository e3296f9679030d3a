"""Negative-sampling distributions over the catalog: uniform and popularity (count ** alpha), with log q for logQ.

Two ways to draw: `sample` uses a seeded `torch.Generator` (the plain-PyTorch CE-), and `counter_draws` is
counter-based: item ids are a pure function of (seed, stream, k) through a 32-bit integer hash, so a sampled loss can
regenerate its negatives in the backward pass instead of storing them, and a GPU kernel can compute the very same ids
(the hash uses only 32-bit multiply, xor and shift). Popularity draws go through an alias table (Vose's method):
one uniform index and one uniform coin per draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from cutrec.errors import CutrecError
from cutrec.transfer import to_device


@dataclass
class NegativeDistribution:
    """q over items 0..N-1. `probs` is None for uniform (q = 1/N); otherwise a [N] float32 tensor summing to 1."""

    num_items: int
    probs: torch.Tensor | None = None
    _probs_on: dict = field(default_factory=dict, repr=False, compare=False)  # device -> (probs, log q)
    _alias_on: dict = field(default_factory=dict, repr=False, compare=False)  # device -> (keep, alias)

    @classmethod
    def uniform(cls, num_items: int) -> NegativeDistribution:
        if num_items < 1:
            raise CutrecError(f"num_items={num_items} is too small: a catalog needs at least 1 item")
        return cls(num_items=num_items)

    @classmethod
    def popularity(cls, item_counts: torch.Tensor, alpha: float = 1.0, uniform_mix: float = 0.0
                   ) -> NegativeDistribution:
        """q_j proportional to item_counts[j] ** alpha (items with count 0 are never drawn), mixed with the uniform
        distribution: q = (1 - uniform_mix) q_pop + uniform_mix / N (every item drawable when uniform_mix > 0)."""
        counts = torch.as_tensor(item_counts, dtype=torch.float64).cpu()  # q lives on the CPU; tables go to devices
        if counts.ndim != 1 or counts.numel() == 0:
            raise CutrecError(f"item_counts must be a non-empty [N] vector, got shape {tuple(counts.shape)}")
        if not torch.isfinite(counts).all() or (counts < 0).any():
            raise CutrecError("item_counts must be finite and non-negative; pass per-item training counts")
        if alpha < 0:
            raise CutrecError(f"alpha={alpha} must be >= 0 (alpha=0 is uniform over items with a count)")
        if not 0.0 <= uniform_mix <= 1.0:
            raise CutrecError(f"uniform_mix={uniform_mix} must be in [0, 1] (the uniform share of q)")
        weights = torch.where(counts > 0, counts.pow(alpha), torch.zeros_like(counts))
        total = weights.sum()
        if total <= 0:
            raise CutrecError("item_counts are all zero: popularity sampling needs at least one item with a count")
        probs = (1.0 - uniform_mix) * weights / total + uniform_mix / counts.numel()  # [N] float64
        return cls(num_items=counts.numel(), probs=probs.float())

    def sample(self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """Draw item ids with replacement (generator None: the device's default one); int64 of `shape` on `device`."""
        count = 1
        for size in shape:
            count *= size
        if self.probs is None:
            return torch.randint(0, self.num_items, shape, generator=generator, device=device)
        probs, _ = self._probs_and_log_q(device)
        return torch.multinomial(probs, count, replacement=True, generator=generator).view(shape)

    def alias_table(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(keep [N] float32, alias [N] int64) of Vose's alias method on `device`, built once (O(N)) and cached."""
        if self.probs is None:
            raise CutrecError("a uniform distribution needs no alias table")
        return _cached_on(self._alias_on, device, lambda: build_alias_table(self.probs.double().numpy()))

    def device_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(keep [N], alias [N], log q [N] float32) on `device`, cached per device so a training step copies nothing."""
        return (*self.alias_table(device), self._probs_and_log_q(device)[1])

    def log_q(self, ids: torch.Tensor) -> torch.Tensor:
        """log q(ids) in float32, same shape as ids."""
        if self.probs is None:
            return torch.full(ids.shape, uniform_log_q(self.num_items), device=ids.device)
        return self._probs_and_log_q(ids.device)[1][ids]

    def _probs_and_log_q(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(q [N], log q [N]) on `device`; log q is computed once, on the CPU, so the samplers, the PyTorch CE- and
        the kernels share one log q."""
        return _cached_on(self._probs_on, device, lambda: (self.probs, self.probs.log()))


def _cached_on(cache: dict, device: torch.device, build) -> tuple[torch.Tensor, ...]:
    """cache[device]: the tables `build()` makes once on the CPU, copied once to each other device."""
    device, cpu = torch.device(device), torch.device("cpu")
    if cpu not in cache:
        cache[cpu] = tuple(build())
    if device not in cache:
        cache[device] = tuple(table.to(device) for table in cache[cpu])
    return cache[device]


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """A generator on `device` seeded with `seed` (the trainer derives one seed per step)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def uniform_log_q(num_items: int) -> float:
    """log(1 / N), rounded through float32 like the popularity table's log q."""
    return -float(torch.log(torch.tensor(float(num_items))))


def build_alias_table(probs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Vose's alias method: draw j uniformly, keep it with probability keep[j], else take alias[j].

    probs [N] sums to 1. Returns (keep [N] float32, alias [N] int64). A Python loop over the items: about a
    second per million items, once per dataset.
    """
    num_items = len(probs)
    scaled = probs * num_items  # [N]; mean 1
    keep = np.ones(num_items)
    alias = np.arange(num_items)
    small = [int(i) for i in np.flatnonzero(scaled < 1.0)]
    large = [int(i) for i in np.flatnonzero(scaled >= 1.0)]
    while small and large:
        lower, upper = small.pop(), large.pop()
        keep[lower], alias[lower] = scaled[lower], upper
        scaled[upper] += scaled[lower] - 1.0
        (small if scaled[upper] < 1.0 else large).append(upper)
    return torch.from_numpy(keep.astype(np.float32)), torch.from_numpy(alias.astype(np.int64))


_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor | int, constant: int) -> torch.Tensor | int:
    """(x * constant) mod 2**32 for Python ints or int64 tensors holding uint32 values, without int64 overflow."""
    low = x * (constant & 0xFFFF)  # < 2**48
    high = ((x * (constant >> 16)) & 0xFFFF) << 16  # < 2**32
    return (low + high) & _MASK32


def mix32(x: torch.Tensor | int) -> torch.Tensor | int:
    """A bijective 32-bit integer hash (Chris Wellons' lowbias32) of uint32 values (Python ints or int64 tensors)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def seed_hash(seed: int) -> int:
    """mix32 of the low 32 bits of `seed` in Python integers (the first step of every draw's hash)."""
    return mix32(int(seed) & _MASK32)


def draw_key(seed: int, num_items: int) -> tuple[int, int, int, int]:
    """The draw key of `seed` over N items: (seed_hash(seed), a, b, a^-1 mod N), with (a, b) share="offsets"'s
    relabelling (`shifted_relabelling`). Python ints, computed on the host: every draw is a pure function of it."""
    a, b = shifted_relabelling(num_items, seed)
    return seed_hash(seed), a, b, pow(a, -1, num_items)  # a = 1 when N = 1: its inverse mod 1 is 0


def key_tensor(seed: int, num_items: int, device: torch.device) -> torch.Tensor:
    """`draw_key` as a [4] int64 tensor on `device`, copied without making the host wait for the device."""
    return to_device(torch.tensor(draw_key(seed, num_items), dtype=torch.int64), device)


def check_key(key: torch.Tensor, device: torch.device) -> None:
    """Refuse a draw key that is not [4] int64 on `device` (shape, dtype and device only: no device sync)."""
    if key.shape != (4,) or key.dtype != torch.int64 or key.device != torch.device(device):
        raise CutrecError(
            f"seed is a tensor of shape {tuple(key.shape)}, {key.dtype} on {key.device}; pass an int, or the "
            f"[4] int64 key of sampling.key_tensor(seed, num_items, device) on {device}"
        )


def counter_draws(
    num_items: int,
    key: torch.Tensor,
    streams: torch.Tensor,
    num_negatives: int,
    alias_table: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Item ids [S, K] as a pure function of (key [4] of `key_tensor`, streams [S], k in 0..K-1): uniform over N
    items, or through `alias_table` = (keep [N], alias [N]) of `NegativeDistribution.alias_table` for popularity.

    counter = stream * K + k (int64); h = mix32(mix32(key[0] ^ low32(counter)) ^ high32(counter)), key[0] being
    mix32 of the seed. Uniform: id = (h * N) >> 32. Popularity: j = (h * N) >> 32,
    coin = (mix32(h ^ 0x5BD1E995) >> 8) / 2**24, id = j if coin < keep[j] else alias[j].
    """
    device = streams.device
    counters = streams.long()[:, None] * num_negatives + torch.arange(num_negatives, device=device)  # [S, K]
    hashed = mix32(mix32(key[0] ^ (counters & _MASK32)) ^ ((counters >> 32) & _MASK32))  # [S, K] uint32
    index = (hashed * num_items) >> 32  # [S, K] in [0, N)
    if alias_table is None:
        return index
    keep, alias = alias_table
    coin = (mix32(hashed ^ 0x5BD1E995) >> 8).float() * 2.0**-24  # [S, K] in [0, 1)
    return torch.where(coin < keep[index], index, alias[index])


def shifted_relabelling(num_items: int, seed: int) -> tuple[int, int]:
    """(a, b) of share="offsets": slot t holds item (a t + b) mod N, with a in [1, N) coprime to N (so the slots are
    a relabelling of the catalog) and b in [0, N); Python ints from the seed, no device sync."""
    hashed = seed_hash(seed)
    a = 1 + mix32(hashed ^ 0x68E31DA4) % max(num_items - 1, 1)
    while math.gcd(a, num_items) != 1:  # stops at N - 1 at the latest
        a += 1
    return a, mix32(hashed ^ 0xB5297A4D) % num_items


def shifted_draws(num_items: int, key: torch.Tensor, rows: torch.Tensor, num_negatives: int) -> torch.Tensor:
    """Item ids [C, K] of share="offsets" for positions `rows` [C]: id = (start_m + o_k) mod N, with the position's
    start_m = (a (m mod N) + b) mod N, (a, b) = key[1:3] (`shifted_relabelling` of the key's seed), and uniform
    offsets o_k = counter_draws(N, key, m div N, K) shared by each round of N positions. Equivalently, slot
    t = (m mod N + r_k) mod N holds item (a t + b) mod N, with r_k = a^-1 o_k mod N: within a round the positions'
    sets are translates of one another in slot space. Each position's K ids are independent uniform draws."""
    offsets = counter_draws(num_items, key, torch.div(rows, num_items, rounding_mode="floor"), num_negatives)
    starts = (key[1] * (rows % num_items) + key[2]) % num_items  # [C]
    return (starts[:, None] + offsets) % num_items  # [C, K]
