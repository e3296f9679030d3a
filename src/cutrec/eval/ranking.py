"""Full-catalog top-k recommendation, scored chunk by chunk so no users x catalog score matrix is ever held whole.

The model's ranking and the most-popular baseline go through the same function, so exclusion of seen items and tie
handling are identical for both.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from cutrec.errors import CutrecError
from cutrec.transfer import to_device

# Bits of the float32 -inf (0xFF800000) mapped by `_rank_keys`: scores at or below it are excluded items (or NaN).
_NEG_INF_ORDER = -0x7F800000
# The low 32 bits of a rank key hold `_ID_FLIP - item`, so among equal scores the lower item id has the larger key.
_ID_FLIP = 0xFFFFFFFF


def top_k_items(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    k: int,
    *,
    item_bias: torch.Tensor | None = None,
    exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
    item_chunk: int = 65536,
) -> torch.Tensor:
    """The k best items for each user by score `u . w (+ bias)`, best first.

    Args:
        user_vectors: [U, D] float, on the same device and of the same dtype as `item_vectors`.
        item_vectors: [N, D] float. Scores are computed in float32 whatever the input dtype.
        k: how many items to return per user, 1 <= k <= N.
        item_bias: [N] float added to every user's scores, or None.
        exclude: (offsets [U + 1], items [E]) int64 (or int32) in CSR form: `items[offsets[u]:offsets[u + 1]]` are
            never recommended to user u. Offsets may start anywhere, so a batch of users can pass a slice of the
            full offsets with the full items array. Repeated items are fine.
        item_chunk: catalog items scored at a time.

    Returns:
        [U, k] int64 item ids, best first. Equal scores are ordered by item id, lower first, so the result is
        deterministic and does not depend on `item_chunk` (0.0 and -0.0 count as equal).

    Raises CutrecError when a user has fewer than k items with a score above -inf (too many excluded for this k).

    Memory: each chunk holds scores [U, C] float32 (4 bytes an entry), about 4 * U * C bytes at peak (0.27 GB for
    U = 1024, C = 65536; three times that where a tie needs the exact pass); the running top-k is [U, k] int64.
    """
    rank = partial(top_k_keys, user_vectors, item_vectors, k, item_bias=item_bias, exclude=exclude,
                   item_chunk=item_chunk)
    keys, exact = rank()
    refuse_non_finite(torch.isfinite(user_vectors).all() & torch.isfinite(item_vectors).all())
    if not bool(exact):
        keys = rank(every_key=True)[0]
    return keys_to_items(keys)


def top_k_keys(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    k: int,
    *,
    item_bias: torch.Tensor | None = None,
    exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
    item_chunk: int = 65536,
    every_key: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`top_k_items` before its checks of the scores: ([U, k] int64 rank keys, best first (`keys_to_items` decodes
    them), exact [] bool). With `exclude` on the CPU (checked there) nothing here waits for the device, so an
    evaluation can queue every batch and check and copy once.

    Each chunk's 2k best scores (float32 top-k, ties in any order) are the candidates, and only they get rank keys
    (score and item id in one int64). That is exact unless a chunk's k-th best score ties its 2k-th (then the tied
    items beyond the candidates could have lower ids): `exact` says whether any such tie occurred, and the caller
    reruns with `every_key=True`, which keys every score of every chunk (about three times slower).
    """
    _check_vectors(user_vectors, item_vectors, k, item_bias, item_chunk)
    num_users, num_items = user_vectors.shape[0], item_vectors.shape[0]
    device = user_vectors.device
    users = user_vectors.float()  # [U, D]
    starts = list(range(0, num_items, item_chunk))
    excluded = None if exclude is None else _exclusions_by_chunk(exclude, num_users, num_items, starts, device)
    best = torch.empty(num_users, 0, dtype=torch.int64, device=device)  # running top keys [U, <= k]
    exact = torch.ones((), dtype=torch.bool, device=device)
    for chunk_index, start in enumerate(starts):
        stop = min(start + item_chunk, num_items)
        scores = users @ item_vectors[start:stop].float().T  # [U, C]
        if item_bias is not None:
            scores += item_bias[start:stop].float()
        if excluded is not None:
            rows, items, bounds = excluded
            lo, hi = bounds[chunk_index], bounds[chunk_index + 1]
            scores[rows[lo:hi], items[lo:hi] - start] = float("-inf")
        width = stop - start if every_key else min(2 * k, stop - start)
        if width < stop - start:
            values, places = torch.topk(scores, width, dim=1)  # [U, 2k] candidates, ties in any order
            kth = values[:, k - 1]  # [U]; -inf: fewer than k unexcluded items, the caller drops those picks
            exact &= ((kth > values[:, -1]) | (kth == float("-inf"))).all()
            keys = _rank_keys(values, places + start)  # [U, 2k]
        else:
            keys = _rank_keys(scores, torch.arange(start, stop, device=device))  # [U, C]
        chunk_best = torch.topk(keys, min(k, width), dim=1).values  # [U, min(k, C)]
        merged = torch.cat([best, chunk_best], dim=1)  # [U, <= 2k]
        best = torch.topk(merged, min(k, merged.shape[1]), dim=1).values  # [U, <= k]
    return best, exact


def keys_to_items(keys: torch.Tensor) -> torch.Tensor:
    """Item ids [U, k] of the rank keys [U, k] of `top_k_keys`; raises CutrecError when a user's k picks include an
    excluded item or a score of -inf (one read of the device)."""
    short = (keys >> 32) <= _NEG_INF_ORDER  # [U, k] True where the pick scored -inf (excluded)
    refuse_short_users(short.any(dim=1), keys.shape[1], "lower k or exclude fewer items")
    return items_of_keys(keys)


def items_of_keys(keys: torch.Tensor) -> torch.Tensor:
    """Item ids [U, k] of rank keys [U, k], unchecked: a pick that scored -inf (excluded) decodes too."""
    return _ID_FLIP - (keys & _ID_FLIP)


def keys_to_scores(keys: torch.Tensor) -> torch.Tensor:
    """The float32 scores [U, k] of the rank keys [U, k] of `top_k_keys` (-0.0 comes back as 0.0)."""
    ordered = keys >> 32  # [U, k] the score's bits made to sort as signed integers (see `_rank_keys`)
    bits = torch.where(ordered < 0, -ordered - 2**31, ordered)  # [U, k] the float32 bits as a signed int32 value
    return bits.to(torch.int32).view(torch.float32)


def refuse_non_finite(finite: torch.Tensor) -> None:
    """Raise CutrecError unless `finite` [] bool holds (one read of the device)."""
    if not bool(finite):
        raise CutrecError("user or item vectors hold NaN or inf: the model diverged; lower train.lr and retrain")


def refuse_short_users(short: torch.Tensor, k: int, fix: str) -> None:
    """Raise CutrecError naming the first user of `short` [U] bool (users with fewer than k items left to
    recommend after exclusion, or with scores of -inf) and `fix`; one read of the device."""
    if short.any():
        user = int(short.nonzero()[0])
        raise CutrecError(
            f"user {user} has fewer than k={k} items left to recommend after exclusion (or scores of -inf); {fix}"
        )


def most_popular_top_k(
    popularity: torch.Tensor,
    num_users: int,
    k: int,
    *,
    exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The most-popular baseline: each user's k most popular items that it has not seen, ties by lower item id.

    The catalog is sorted once; each user then walks the global order, skipping its excluded items, so the work is
    [U, k + most excluded items of a user], never [U, N]. The result equals `top_k_items` with every user's
    vector [1] and each item's vector [popularity].

    Args:
        popularity: [N] float item scores, e.g. `popularity_scores` of the training items; -inf is never
            recommended.
        num_users: U, the number of users to rank for (the rows of `exclude`).
        k, exclude: as in `top_k_items`.

    Returns:
        [U, k] int64 item ids, most popular first.
    """
    if num_users < 0:
        raise CutrecError(f"num_users={num_users} is negative; pass the number of users to rank for")
    ranking = PopularityOrder.of(popularity)
    picked, short = ranking.top_k(num_users, k, exclude=exclude)
    refuse_short_users(short, k, "lower k or exclude fewer items")
    return picked


@dataclass(frozen=True)
class PopularityOrder:
    """The catalog sorted once by popularity, most popular first, ties by lower item id: order [N] (item ids),
    rank [N] (each item's place in the order) and never [N] (True at places whose score is -inf)."""

    order: torch.Tensor
    rank: torch.Tensor
    never: torch.Tensor

    @classmethod
    def of(cls, popularity: torch.Tensor) -> PopularityOrder:
        """Sort [N] float scores (checked once: NaN and +inf are refused) on their device."""
        if popularity.dim() != 1:
            raise CutrecError(f"popularity has shape {tuple(popularity.shape)}; pass one score per item, shape [N]")
        if torch.isnan(popularity).any() or (popularity == float("inf")).any():
            raise CutrecError("popularity holds NaN or +inf; pass finite scores (-inf marks items never recommended)")
        ordered, order = torch.sort(popularity.float(), descending=True, stable=True)  # [N]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order), device=order.device)  # [N]
        return cls(order=order, rank=rank, never=ordered == float("-inf"))

    def top_k(
        self, num_users: int, k: int, *, exclude: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(item ids [U, k], short [U] bool: users with fewer than k items left) of each user's k most popular
        unexcluded items. Each user walks the global order skipping its excluded items, so the work is [U, k + most
        excluded items of a user], never [U, N]. With `exclude` on the CPU nothing waits for the device."""
        num_items = len(self.order)
        if not 1 <= k <= num_items:
            raise CutrecError(f"k={k} is out of range; use 1 <= k <= {num_items} (the catalog size)")
        device = self.order.device
        width = k
        if exclude is not None:
            offsets = exclude[0]
            users, items = _exclusion_pairs(exclude, num_users, num_items)  # [E], [E] on exclude's device
            counts = offsets.long().diff()  # [U] excluded entries per user (repeats included)
            width = k + (int(counts.max()) if num_users else 0)  # no user needs to look further
        width = min(num_items, width)
        hits = torch.zeros(num_users, width + 1, dtype=torch.int32, device=device)  # [U, W + 1]; column W: beyond
        if exclude is not None and num_users:
            users, items = to_device(users, device), to_device(items, device)
            places = self.rank[items].clamp(max=width)  # [E]
            hits.index_put_((users, places), torch.ones_like(places, dtype=torch.int32), accumulate=True)
        blocked = (hits[:, :width] > 0) | self.never[:width]  # [U, W]
        positions = torch.arange(width, device=device)
        keys = torch.where(blocked, width + positions, positions)  # [U, W]: free places first, in order
        picked = torch.topk(keys, k, dim=1, largest=False, sorted=True).values  # [U, k]
        short = (picked >= width).any(dim=1)  # [U]
        return self.order[picked.clamp(max=width - 1)], short  # [U, k], [U]


def popularity_scores(train_items: np.ndarray | torch.Tensor, num_items: int) -> torch.Tensor:
    """How often each item occurs in the training interactions.

    Args:
        train_items: [T] integer item ids of all training interactions.
        num_items: N, the catalog size.

    Returns:
        [N] float32 counts, on the device of `train_items`.
    """
    items = torch.as_tensor(train_items)
    if items.dim() != 1 or items.dtype not in (torch.int32, torch.int64):
        raise CutrecError(
            f"train_items has shape {tuple(items.shape)} and dtype {items.dtype}; pass a 1-D int64 (or int32) array"
        )
    if num_items < 1:
        raise CutrecError(f"num_items={num_items} is out of range; pass the catalog size, 1 or more")
    _check_item_range(items, num_items, "train_items")
    return torch.bincount(items.long(), minlength=num_items).float()  # [N]


def _rank_keys(scores: torch.Tensor, item_ids: torch.Tensor) -> torch.Tensor:
    """One int64 key per score [U, C] of the items `item_ids` ([C], or [U, C]) that orders like the score, then by
    item id (lower first): no two keys tie.

    The high 32 bits hold the float32 bits made to sort as signed integers (a negative float is sign and magnitude,
    so its magnitude is negated; -0.0 becomes 0), the low 32 bits `_ID_FLIP - item id`.
    """
    bits = scores.contiguous().view(torch.int32)  # [U, C]
    ordered = torch.where(bits < 0, (bits & 0x7FFFFFFF).neg_(), bits)  # [U, C]
    return ordered.to(torch.int64).mul_(1 << 32).add_(_ID_FLIP - item_ids)  # [U, C]


def _check_vectors(
    user_vectors: torch.Tensor,
    item_vectors: torch.Tensor,
    k: int,
    item_bias: torch.Tensor | None,
    item_chunk: int,
) -> None:
    """Shapes, dtypes and devices (never the values: that would wait for the device)."""
    if user_vectors.dim() != 2 or item_vectors.dim() != 2:
        raise CutrecError(
            f"user_vectors {tuple(user_vectors.shape)} and item_vectors {tuple(item_vectors.shape)} must be 2-D; "
            "pass [U, D] and [N, D]"
        )
    if user_vectors.shape[1] != item_vectors.shape[1]:
        raise CutrecError(
            f"user_vectors have width {user_vectors.shape[1]} but item_vectors {item_vectors.shape[1]}; "
            "pass vectors of the same width D"
        )
    if user_vectors.device != item_vectors.device or user_vectors.dtype != item_vectors.dtype:
        raise CutrecError(
            f"user_vectors ({user_vectors.dtype}, {user_vectors.device}) and item_vectors "
            f"({item_vectors.dtype}, {item_vectors.device}) differ; move them to one device and dtype"
        )
    if not user_vectors.dtype.is_floating_point:
        raise CutrecError(f"vectors have dtype {user_vectors.dtype}; pass floating-point vectors")
    num_items = item_vectors.shape[0]
    if not 1 <= k <= num_items:
        raise CutrecError(f"k={k} is out of range for a catalog of {num_items} items; use 1 <= k <= {num_items}")
    if num_items > _ID_FLIP:
        raise CutrecError(f"the catalog has {num_items} items; ranking supports at most {_ID_FLIP}")
    if item_chunk < 1:
        raise CutrecError(f"item_chunk={item_chunk} is out of range; use 1 or more")
    if item_bias is not None and (item_bias.shape != (num_items,) or item_bias.device != item_vectors.device):
        raise CutrecError(
            f"item_bias has shape {tuple(item_bias.shape)} on {item_bias.device}; "
            f"pass shape [{num_items}] on {item_vectors.device}"
        )


def _exclusions_by_chunk(
    exclude: tuple[torch.Tensor, torch.Tensor],
    num_users: int,
    num_items: int,
    starts: list[int],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(rows [E], items [E], bounds): the excluded pairs sorted by item; chunk c owns entries bounds[c]:bounds[c+1].
    Checked and sorted on exclude's device (pass CPU tensors to keep the scoring device's queue free of waits)."""
    rows, items = _exclusion_pairs(exclude, num_users, num_items)  # [E], [E] on exclude's device
    items, order = torch.sort(items)  # [E]
    rows = rows[order]  # [E]
    chunk_edges = torch.tensor([*starts, num_items], device=items.device)  # [chunks + 1]
    bounds = torch.searchsorted(items, chunk_edges).tolist()  # on the CPU for CPU exclusions: no device wait
    return to_device(rows, device), to_device(items, device), bounds


def _exclusion_pairs(
    exclude: tuple[torch.Tensor, torch.Tensor], num_users: int, num_items: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (user, item) pairs [E] of an exclusion CSR of `num_users` users, checked on its own device."""
    offsets, items = exclude
    if offsets.shape != (num_users + 1,):
        raise CutrecError(
            f"exclude offsets have shape {tuple(offsets.shape)}; pass num_users + 1 = {num_users + 1} offsets"
        )
    return _csr_pairs(offsets, items, num_items, "exclude")


def _csr_pairs(
    offsets: torch.Tensor, items: torch.Tensor, num_items: int, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a CSR list (row u holds `items[offsets[u]:offsets[u + 1]]`); return its (row, item) pairs [E], int64."""
    if offsets.dim() != 1 or items.dim() != 1 or not {offsets.dtype, items.dtype} <= {torch.int32, torch.int64}:
        raise CutrecError(
            f"{name} offsets {tuple(offsets.shape)} {offsets.dtype} and items {tuple(items.shape)} {items.dtype} "
            "must be 1-D int64 (or int32)"
        )
    if len(offsets) == 0:
        raise CutrecError(f"{name} offsets are empty; pass num_users + 1 offsets")
    offsets = offsets.long()
    first, last = int(offsets[0]), int(offsets[-1])
    lengths = offsets.diff()  # [U]
    if first < 0 or last > len(items) or (len(lengths) and int(lengths.min()) < 0):
        raise CutrecError(
            f"{name} offsets run from {first} to {last} over {len(items)} items; "
            f"make them non-decreasing within [0, {len(items)}]"
        )
    items = items[first:last].long()  # [E]
    _check_item_range(items, num_items, f"{name} items")
    rows = torch.repeat_interleave(torch.arange(len(lengths), device=offsets.device), lengths)  # [E]
    return rows, items


def _check_item_range(items: torch.Tensor, num_items: int, name: str) -> None:
    if len(items) and (int(items.min()) < 0 or int(items.max()) >= num_items):
        raise CutrecError(
            f"{name} hold ids from {int(items.min())} to {int(items.max())}; use item ids in [0, {num_items - 1}]"
        )
