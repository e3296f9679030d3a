"""Sampled cut cross-entropy (CCE-): the CE- objective with negatives regenerated, never stored.

The objective is exactly docs/losses.md's CE- (and `reference.sampled_cross_entropy` given the same negatives):
s_0 = z_iy, s_k = z_in_k - log(K q(n_k)) (logQ, optional), s_k = -inf where n_k == y (accidental hits), loss_i =
logsumexp_k s_ik - s_i0. Negatives are a pure function of (seed, stream, k) (`sampling.counter_draws`), where the
stream is the position (share="none": every position its own K negatives), the block of BLOCK_ROWS consecutive
positions (share="block") or 0 (share="batch": one set for the whole batch). share="offsets" (uniform only,
`sampling.shifted_draws`) gives every position its own K uniform negatives, (start_m + o_k) mod N, from offsets o_k
that the positions share, so that the kernels can write the item gradient row by row without atomics. The backward
pass draws them again, so the memory of a step holds one log-sum-exp per position and no [M, K] index tensor.

impl="torch" processes positions in chunks, so its largest temporary is chunk x K x D (about
TORCH_CHUNK_BUDGET_BYTES), never M x K x D. impl="triton" runs kernels/sampled_cut_cross_entropy.py, which draws the
same negatives; impl="auto" picks it on CUDA (except in deterministic mode for the modes with atomics: see
`_resolve_impl`).
Both run inside torch.library custom ops (fake implementations, registered autograd), so torch.compile traces them;
eager calls run the same forward and backward through an autograd.Function that skips the dispatcher's wrappers.
(No `from __future__ import annotations` here: custom_op reads the annotations to infer the op schemas.)
"""

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from cutrec.errors import CutrecError
from cutrec.losses.cut_cross_entropy import resolve_impl
from cutrec.losses.kernel_op import kernel_loss
from cutrec.losses.reference import Reduction, check_seam, check_target_range, reduce_loss
from cutrec.losses.sampling import (
    NegativeDistribution,
    check_key,
    counter_draws,
    key_tensor,
    shifted_draws,
    uniform_log_q,
)

Share = Literal["none", "block", "batch", "offsets"]
BLOCK_ROWS = 64  # share="block": consecutive positions that share one set of negatives
TORCH_CHUNK_BUDGET_BYTES = 256 * 2**20  # the chunk x K x D fp32 gather of the PyTorch implementation


@dataclass
class _Options:
    """What the forward and the backward need to regenerate and score the negatives."""

    num_negatives: int
    num_items: int
    alias_table: tuple[torch.Tensor, torch.Tensor] | None  # (keep [N], alias [N]) for popularity, None for uniform
    log_q: torch.Tensor | None  # [N] log q for popularity, None for uniform (log q = -log N)
    logq_correction: bool
    share: Share
    key: torch.Tensor  # [4] int64 draw key (sampling.draw_key) on the inputs' device
    ignore_index: int
    negatives: torch.Tensor | None  # explicit [M, K] or [K] ids, or None to draw them
    impl: Literal["torch", "triton"]
    grad_buffer_bytes: int | None  # cap of the kernels' fp32 item-gradient buffer (16-bit tables), None: [N, D]


def _chunk_rows(options: _Options) -> int:
    num_negatives = options.num_negatives if options.negatives is None else options.negatives.shape[-1]
    return max(1, TORCH_CHUNK_BUDGET_BYTES // (num_negatives * 256 * 4))  # rows whose [C, K, D<=256] fits


def _negatives(options: _Options, rows: torch.Tensor) -> torch.Tensor:
    """[C, K] negative ids of positions `rows` [C]."""
    if options.negatives is not None:
        explicit = options.negatives
        return explicit[rows] if explicit.ndim == 2 else explicit.expand(len(rows), -1)
    if options.share == "offsets":
        return shifted_draws(options.num_items, options.key, rows, options.num_negatives)
    if options.share == "none":
        streams = rows
    elif options.share == "block":
        streams = torch.div(rows, BLOCK_ROWS, rounding_mode="floor")
    else:
        streams = torch.zeros_like(rows)
    return counter_draws(options.num_items, options.key, streams, options.num_negatives, options.alias_table)


def _chunk_scores(
    hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, options: _Options
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h [C, D], present [C] (a target in the catalog), safe targets [C] (0 on ignored rows and on unchecked ids
    outside the catalog), w_target [C, D] (0 where not present), ids [C, K], w_neg [C, K, D], scores [C, K + 1]) of
    one chunk, in fp32 or fp64. A row whose unchecked target lies outside the catalog has s_0 = -inf and no hits:
    its lse and gradients hold its negatives alone (as in the kernels), and `_torch_forward` gives it a NaN loss."""
    compute = torch.promote_types(hidden.dtype, torch.float32)
    h = hidden[rows].to(compute)  # [C, D]
    chunk_targets = targets[rows]  # [C]
    valid = chunk_targets != options.ignore_index
    present = valid & (chunk_targets >= 0) & (chunk_targets < items.shape[0])  # [C]
    safe = torch.where(present, chunk_targets, torch.zeros_like(chunk_targets)).long()  # [C]
    w_target = items[safe].to(compute) * present[:, None]  # [C, D]
    ids = _negatives(options, rows)  # [C, K]
    w_neg = items[ids].to(compute)  # [C, K, D]
    negative = torch.bmm(w_neg, h.unsqueeze(-1)).squeeze(-1)  # [C, K]
    if options.logq_correction:
        log_q = uniform_log_q(options.num_items) if options.log_q is None else options.log_q[ids].to(compute)
        negative = negative - (math.log(ids.shape[1]) + log_q)
    hits = (ids == safe.unsqueeze(1)) & present.unsqueeze(1)  # [C, K] accidental hits, removed exactly
    negative = negative.masked_fill(hits, -math.inf)
    positive = (h * w_target).sum(-1, keepdim=True).masked_fill((valid & ~present).unsqueeze(1), -math.inf)  # [C, 1]
    return h, present, safe, w_target, ids, w_neg, torch.cat([positive, negative], dim=1)  # scores [C, K + 1]


def _torch_forward(hidden, items, targets, options: _Options) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss [M], lse [M]) in fp32 (fp64 for fp64 inputs), chunk by chunk."""
    num_rows = hidden.shape[0]
    compute = torch.promote_types(hidden.dtype, torch.float32)
    loss = hidden.new_zeros(num_rows, dtype=compute)
    lse = hidden.new_zeros(num_rows, dtype=compute)
    chunk = _chunk_rows(options)
    for start in range(0, num_rows, chunk):
        rows = torch.arange(start, min(start + chunk, num_rows), device=hidden.device)  # [C]
        _, present, *_, scores = _chunk_scores(hidden, items, targets, rows, options)
        chunk_lse = torch.logsumexp(scores, dim=1)  # [C]
        lse[rows] = chunk_lse
        loss[rows] = torch.where(present, chunk_lse - scores[:, 0], math.nan)
    return torch.where(targets != options.ignore_index, loss, torch.zeros_like(loss)), lse


def _torch_backward(hidden, items, targets, lse, grad_loss, options: _Options) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_hidden, grad_items) in the compute dtype; index_add_ is deterministic on the CPU, atomic on CUDA."""
    valid = targets != options.ignore_index
    compute = lse.dtype
    grad_loss = torch.where(valid, grad_loss.to(compute), torch.zeros_like(lse))  # [M]
    grad_hidden = torch.zeros(hidden.shape, dtype=compute, device=hidden.device)
    grad_items = torch.zeros(items.shape, dtype=compute, device=items.device)
    num_rows, dim = hidden.shape
    chunk = _chunk_rows(options)
    for start in range(0, num_rows, chunk):
        rows = torch.arange(start, min(start + chunk, num_rows), device=hidden.device)  # [C]
        h, present, safe, w_target, ids, w_neg, scores = _chunk_scores(hidden, items, targets, rows, options)
        probs = torch.exp(scores - lse[rows, None]) * grad_loss[rows, None]  # [C, K + 1]: d loss / d score
        probs[:, 0] -= grad_loss[rows] * present  # the positive: softmax - 1
        grad_hidden[rows] = probs[:, :1] * w_target + torch.bmm(probs[:, None, 1:], w_neg).squeeze(1)
        grad_items.index_add_(0, safe, probs[:, :1] * h)
        grad_items.index_add_(0, ids.reshape(-1), (probs[:, 1:, None] * h[:, None, :]).reshape(-1, dim))
    return grad_hidden, grad_items


def _triton(step: str, options: _Options, hidden, items, targets, *saved):
    """Run the forward or backward kernel with the options' sampling tables."""
    from cutrec.kernels import sampled_cut_cross_entropy as kernels

    keep, alias = options.alias_table if options.alias_table is not None else (None, None)
    common = {
        "ignore_index": options.ignore_index, "key": options.key, "num_negatives": options.num_negatives,
        "share": options.share, "negatives": options.negatives, "keep": keep, "alias": alias, "log_q": options.log_q,
        "logq_correction": options.logq_correction, "block_rows": BLOCK_ROWS,
        "shifted": options.share == "offsets" and options.negatives is None,
    }
    if step == "forward":
        return kernels.forward(hidden, items, targets, **common)
    return kernels.backward(hidden, items, targets, *saved, **common, grad_buffer_bytes=options.grad_buffer_bytes)


def _options(
    items, key, negatives, keep, alias, log_q, num_negatives, logq_correction, share, seed, ignore_index, impl,
    grad_buffer_bytes
) -> _Options:
    """The options rebuilt from a custom op's arguments (tensors and scalars only); the draw key is `key`, or that
    of the int `seed` (built here, inside the op, so torch.compile never traces the host arithmetic)."""
    if key is None:
        key = key_tensor(seed, items.shape[0], items.device)
    alias_table = (keep, alias) if keep is not None else None
    return _Options(num_negatives, items.shape[0], alias_table, log_q, logq_correction, share, key, ignore_index,
                    negatives, impl, grad_buffer_bytes)


def _forward_impl(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    key: torch.Tensor | None,
    negatives: torch.Tensor | None,
    keep: torch.Tensor | None,
    alias: torch.Tensor | None,
    log_q: torch.Tensor | None,
    num_negatives: int,
    logq_correction: bool,
    share: str,
    seed: int,
    ignore_index: int,
    impl: str,
    grad_buffer_bytes: int | None,
    check_targets: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss [M], lse [M]) in fp32 (fp64 for fp64 inputs)."""
    if check_targets:
        check_target_range(targets, items.shape[0], ignore_index)
    options = _options(items, key, negatives, keep, alias, log_q, num_negatives, logq_correction, share, seed,
                       ignore_index, impl, grad_buffer_bytes)
    if impl == "triton":
        compute = torch.promote_types(hidden.dtype, torch.float32)
        return tuple(t.to(compute) for t in _triton("forward", options, hidden, items, targets))
    return _torch_forward(hidden, items, targets, options)


def _forward_fake(hidden, items, targets, key, negatives, keep, alias, log_q, num_negatives, logq_correction, share,
                  seed, ignore_index, impl, grad_buffer_bytes, check_targets):
    compute = torch.promote_types(hidden.dtype, torch.float32)
    return hidden.new_empty(hidden.shape[0], dtype=compute), hidden.new_empty(hidden.shape[0], dtype=compute)


def _backward_impl(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    loss: torch.Tensor,
    lse: torch.Tensor,
    grad_loss: torch.Tensor,
    key: torch.Tensor | None,
    negatives: torch.Tensor | None,
    keep: torch.Tensor | None,
    alias: torch.Tensor | None,
    log_q: torch.Tensor | None,
    num_negatives: int,
    logq_correction: bool,
    share: str,
    seed: int,
    ignore_index: int,
    impl: str,
    grad_buffer_bytes: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_hidden, grad_items) in hidden's and items' dtypes; the negatives are drawn again."""
    options = _options(items, key, negatives, keep, alias, log_q, num_negatives, logq_correction, share, seed,
                       ignore_index, impl, grad_buffer_bytes)
    if impl == "triton":
        grad_hidden, grad_items = _triton("backward", options, hidden, items, targets, loss.float(), lse.float(),
                                          grad_loss)
    else:
        grad_hidden, grad_items = _torch_backward(hidden, items, targets, lse, grad_loss, options)
    return grad_hidden.to(hidden.dtype), grad_items.to(items.dtype)


def _backward_fake(hidden, items, targets, loss, lse, grad_loss, key, negatives, keep, alias, log_q, num_negatives,
                   logq_correction, share, seed, ignore_index, impl, grad_buffer_bytes):
    return torch.empty_like(hidden), torch.empty_like(items)


def _setup_context(ctx, inputs, output) -> None:
    hidden, items, targets, key, negatives, keep, alias, log_q, *scalars, _check_targets = inputs
    ctx.save_for_backward(hidden, items, targets, *output, key, negatives, keep, alias, log_q)  # output: loss, lse
    ctx.scalars = scalars  # the backward op's scalars: the forward's but check_targets
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_loss, grad_lse):
    hidden, items, targets, loss, lse, key, negatives, keep, alias, log_q = ctx.saved_tensors
    grad_hidden, grad_items = ctx.backward_op(
        hidden, items, targets, loss, lse, grad_loss, key, negatives, keep, alias, log_q, *ctx.scalars
    )
    needs = ctx.needs_input_grad
    return (grad_hidden if needs[0] else None, grad_items if needs[1] else None, *[None] * 14)


_sampled_cut_cross_entropy = kernel_loss(
    "sampled_cut_cross_entropy_forward",
    forward_impl=_forward_impl,
    forward_fake=_forward_fake,
    backward_name="sampled_cut_cross_entropy_backward",
    backward_impl=_backward_impl,
    backward_fake=_backward_fake,
    setup_context=_setup_context,
    backward=_backward,
)


def _resolve_impl(impl: str, device: torch.device, dim: int, dtype: torch.dtype, atomic: bool = True) -> str:
    """As for cut CE ("auto": triton on CUDA), with two exceptions for "auto": float64 inputs run the torch
    implementation, which computes in float64 (the kernels accumulate in fp32); and when the kernels add the item
    gradient with atomics (`atomic`: every mode but share="offsets" with drawn negatives), under
    torch.use_deterministic_algorithms(True) "auto" picks the chunked torch implementation, whose index_add_ is then
    deterministic on CUDA too (slower), and impl="triton" is refused."""
    resolved = resolve_impl(impl, device, dim)
    if impl == "auto" and dtype == torch.float64:
        return "torch"
    deterministic = torch.are_deterministic_algorithms_enabled()
    if atomic and resolved == "triton" and device.type == "cuda" and deterministic:
        if impl == "triton":
            raise CutrecError(
                'impl="triton" adds the item gradient with atomics, which torch.use_deterministic_algorithms(True) '
                'forbids; use impl="auto" or "torch" (deterministic, slower)'
            )
        return "torch"
    return resolved


def _check_offsets_uniform(share: str | None, popularity: bool, negatives: torch.Tensor | None) -> None:
    """share="offsets" draws its own negatives uniformly: refuse it with popularity sampling."""
    if share == "offsets" and popularity and negatives is None:
        raise CutrecError('share="offsets" draws uniformly; use distribution="uniform", or share="none" for '
                          "popularity sampling")


def _distribution(
    distribution: Literal["uniform", "popularity"] | NegativeDistribution,
    num_items: int,
    item_counts: torch.Tensor | None,
    alpha: float,
) -> NegativeDistribution:
    if isinstance(distribution, NegativeDistribution):
        if distribution.num_items != num_items:
            raise CutrecError(
                f"the negative distribution covers {distribution.num_items} items but items has {num_items} rows"
            )
        return distribution
    if distribution == "uniform":
        return NegativeDistribution.uniform(num_items)
    if distribution == "popularity":
        if item_counts is None:
            raise CutrecError('distribution="popularity" needs item_counts (training events per item)')
        if len(item_counts) != num_items:
            raise CutrecError(f"item_counts has {len(item_counts)} entries but items has {num_items} rows")
        return NegativeDistribution.popularity(item_counts, alpha)
    raise CutrecError(f"distribution={distribution!r} is unknown; use 'uniform' or 'popularity'")


def sampled_cut_cross_entropy(
    hidden: torch.Tensor,
    items: torch.Tensor,
    targets: torch.Tensor,
    *,
    num_negatives: int,
    distribution: Literal["uniform", "popularity"] | NegativeDistribution = "uniform",
    item_counts: torch.Tensor | None = None,
    alpha: float = 1.0,
    logq_correction: bool = True,
    share: Share = "none",
    negatives: torch.Tensor | None = None,
    seed: int | torch.Tensor = 0,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    impl: Literal["auto", "torch", "triton"] = "auto",
    grad_buffer_bytes: int | None = None,
    check_targets: bool = True,
) -> torch.Tensor:
    """CE- of hidden [M, D] against K negatives per position drawn from (seed, share), or explicit `negatives`.

    `distribution`: "uniform", "popularity" (q proportional to item_counts ** alpha, drawn through an alias table),
    or a prebuilt NegativeDistribution (it caches its alias table across calls). `negatives`: [M, K] or [K] item ids
    that replace the drawn ones (num_negatives is then ignored). Under autocast, hidden is cast to the autocast
    dtype; scores and gradients accumulate in fp32 and come back in each input's dtype.
    `grad_buffer_bytes` (impl="triton", 16-bit item tables, every share mode but "offsets"): the kernels accumulate
    the item gradient in an fp32 buffer, by default one for the whole catalog (N x D x 4 bytes beyond the gradient);
    a cap bounds it at the cost of one more backward pass over the positions per chunk of catalog rows it holds
    (docs/sampled_cut_cross_entropy.md measures the cost). An fp32 table accumulates in its own gradient, and
    share="offsets" writes each row once, so neither needs the buffer; impl="torch" ignores the cap.
    `seed`: an int, or its draw key, the [4] int64 tensor `sampling.key_tensor(seed, N, device)` on hidden's device
    (what the CUDA-graph training step writes into one buffer before each replay; it never waits for the device).
    `check_targets` as for `cut_cross_entropy`: False skips the range check's device-to-host copy, and a target
    outside [0, N) then gives a NaN loss instead of an error (its softmax and gradients then hold the negatives
    alone, with no target term: the catalog-parallel loss uses this for rows whose target another shard holds).
    """
    check_seam(hidden, items, targets)
    if num_negatives < 1:
        raise CutrecError(f"num_negatives={num_negatives} must be at least 1")
    if share not in ("none", "block", "batch", "offsets"):
        raise CutrecError(f"share={share!r} is unknown; use 'none', 'block', 'batch' or 'offsets'")
    atomic = share != "offsets" or negatives is not None
    resolved = _resolve_impl(impl, hidden.device, hidden.shape[1], hidden.dtype, atomic)
    if negatives is not None:
        shape_ok = negatives.ndim == 1 or (negatives.ndim == 2 and negatives.shape[0] == hidden.shape[0])
        if not shape_ok or negatives.numel() == 0:
            raise CutrecError(f"negatives must be [M, K] or [K] item ids, got shape {tuple(negatives.shape)}")
        if negatives.min() < 0 or negatives.max() >= items.shape[0]:
            raise CutrecError(f"negatives must be item ids in [0, {items.shape[0]})")
        negatives = negatives.long().contiguous()  # the kernels index it as rows * K + k
    if grad_buffer_bytes is not None:
        if isinstance(grad_buffer_bytes, bool) or not isinstance(grad_buffer_bytes, int):
            raise CutrecError(f"grad_buffer_bytes={grad_buffer_bytes!r} must be an int number of bytes, or None")
        if grad_buffer_bytes < 4 * hidden.shape[1]:
            raise CutrecError(f"grad_buffer_bytes={grad_buffer_bytes} holds no fp32 row of D={hidden.shape[1]} "
                              f"values; pass at least {4 * hidden.shape[1]}, or None for one buffer for the whole "
                              "catalog")
    if torch.is_autocast_enabled(hidden.device.type):
        hidden = hidden.to(torch.get_autocast_dtype(hidden.device.type))
    key = None
    if isinstance(seed, torch.Tensor):
        check_key(seed, hidden.device)
        key, seed = seed, 0
    distribution = _distribution(distribution, items.shape[0], item_counts, alpha)
    _check_offsets_uniform(share, distribution.probs is not None, negatives)
    keep = alias = log_q = None
    if distribution.probs is not None:
        keep, alias, log_q = distribution.device_tables(hidden.device)
    with torch.autocast(hidden.device.type, enabled=False):
        per_position, _ = _sampled_cut_cross_entropy(
            hidden, items, targets, key, negatives, keep, alias, log_q, num_negatives, logq_correction, share, seed,
            ignore_index, resolved, grad_buffer_bytes, check_targets,
        )
    return reduce_loss(per_position, targets != ignore_index, reduction, zeroed=True)


class SampledCutCrossEntropy(nn.Module):
    """`sampled_cut_cross_entropy` as a module; forward(hidden, items, targets, seed=0).

    Takes the keyword options of `sampled_cut_cross_entropy`. distribution="popularity" with `item_counts` (and
    `alpha`) is turned into a NegativeDistribution once here, so its alias table is built once, not every call."""

    def __init__(self, **options) -> None:
        super().__init__()
        if options.get("distribution") == "popularity":
            _check_offsets_uniform(options.get("share"), True, options.get("negatives"))
            if options.get("item_counts") is None:
                raise CutrecError('distribution="popularity" needs item_counts (training events per item)')
            options["distribution"] = NegativeDistribution.popularity(options.pop("item_counts"),
                                                                      options.pop("alpha", 1.0))
        self.options = options

    def forward(
        self, hidden: torch.Tensor, items: torch.Tensor, targets: torch.Tensor, seed: int | torch.Tensor = 0
    ) -> torch.Tensor:
        return sampled_cut_cross_entropy(hidden, items, targets, seed=seed, **self.options)
