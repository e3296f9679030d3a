"""Triton kernels of the sampled cut cross-entropy (CCE-): negatives drawn inside the kernels, never stored.

Per position i with target y_i: s_0 = z_iy, s_k = z_in_k - log(K q(n_k)) (logQ, optional), s_k = -inf when
n_k == y_i, loss_i = logsumexp_k s_ik - s_i0 (docs/kernels.md). The ids n_k are the same pure function of
(seed, stream, k) as `cutrec.losses.sampling.counter_draws` (lowbias32 hash; alias table for popularity), so the
kernels and the PyTorch implementation draw identical negatives, and the backward regenerates them.

1. `_forward_kernel`, one program per BLOCK_M positions, looping over BLOCK_K negatives at a time: a gather of the
   negative rows [BM, BK, D], row-wise dot products in fp32, an online log-sum-exp seeded with s_0. Writes lse and
   loss [M] fp32.
2. `_backward_kernel`, the same loop: g_k = softmax_k * dloss gives d hidden (accumulated in registers, stored
   once) and d items (fp32 atomic adds into the rows of the drawn items, so d items is not bit-deterministic
   on a GPU).

Memory beyond inputs and gradients: lse and loss (8 M bytes) and an fp32 copy of d items while it accumulates.
Status: written and tested through the Triton interpreter only; not yet run on a GPU (the next step of issue 4),
so `impl="auto"` does not select it. The per-row gather serves every share mode; the tensor-core tiles that
share="block" and "batch" allow are not written yet.
"""

import os

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _mix32(x):
    """lowbias32 on uint32 values (matches sampling.mix32)."""
    x = x ^ (x >> 16)
    x = x * 0x7FEB352D
    x = x ^ (x >> 15)
    x = x * 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _negative_ids(
    rows, ks, target_rows_mask, negatives_ptr, keep_ptr, alias_ptr, seed_hash, num_items, num_negatives,
    SHARE: tl.constexpr, EXPLICIT: tl.constexpr, POPULARITY: tl.constexpr, BLOCK_ROWS: tl.constexpr,
):
    """[BM, BK] int64 ids of the negatives (rows [BM], ks [BK])."""
    mask = target_rows_mask[:, None] & (ks < num_negatives)[None, :]
    if EXPLICIT == 1:  # explicit [M, K]
        ids = tl.load(negatives_ptr + rows.to(tl.int64)[:, None] * num_negatives + ks[None, :], mask=mask, other=0)
    elif EXPLICIT == 2:  # explicit [K], shared by every position
        ids = tl.load(negatives_ptr + ks[None, :] + 0 * rows[:, None], mask=mask, other=0)
    else:
        if SHARE == 0:
            streams = rows.to(tl.int64)
        elif SHARE == 1:
            streams = (rows // BLOCK_ROWS).to(tl.int64)
        else:
            streams = rows.to(tl.int64) * 0
        counters = streams[:, None] * num_negatives + ks[None, :].to(tl.int64)  # [BM, BK]
        low = (counters & 0xFFFFFFFF).to(tl.uint32)
        high = (counters >> 32).to(tl.uint32)
        hashed = _mix32(_mix32(seed_hash.to(tl.uint32) ^ low) ^ high)  # [BM, BK] uint32
        index = ((hashed.to(tl.uint64) * num_items.to(tl.uint64)) >> 32).to(tl.int64)
        if POPULARITY:
            coin = (_mix32(hashed ^ 0x5BD1E995) >> 8).to(tl.float32) * 5.960464477539063e-08  # 2**-24
            keep = tl.load(keep_ptr + index, mask=mask, other=1.0)
            alias = tl.load(alias_ptr + index, mask=mask, other=0)
            ids = tl.where(coin < keep, index, alias)
        else:
            ids = index
    return ids.to(tl.int64)


@triton.jit
def _scores(h, items_ptr, ids, mask, log_q_ptr, log_k, target, dims, DIM: tl.constexpr, LOGQ: tl.constexpr,
            POPULARITY: tl.constexpr, uniform_log_q):
    """[BM, BK] corrected negative scores (-inf on accidental hits and masked k) and the gathered rows [BM, BK, BD]."""
    dim_mask = dims < DIM
    w = tl.load(
        items_ptr + ids[:, :, None] * DIM + dims[None, None, :],
        mask=mask[:, :, None] & dim_mask[None, None, :],
        other=0.0,
    ).to(tl.float32)  # [BM, BK, BD]
    s = tl.sum(h[:, None, :] * w, axis=2)  # [BM, BK]
    if LOGQ:
        if POPULARITY:
            s -= log_k + tl.load(log_q_ptr + ids, mask=mask, other=0.0)
        else:
            s -= log_k + uniform_log_q
    s = tl.where(mask & (ids != target[:, None]), s, float("-inf"))
    return s, w


@triton.jit
def _load_rows(hidden_ptr, items_ptr, targets_ptr, num_rows, ignore_index, BLOCK_M: tl.constexpr,
               DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's rows: (rows, row_mask, dims, h [BM, BD] fp32, valid, safe targets, w_target [BM, BD] fp32)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    row_mask = rows < num_rows
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < DIM
    h = tl.load(hidden_ptr + rows.to(tl.int64)[:, None] * DIM + dims[None, :],
                mask=row_mask[:, None] & dim_mask[None, :], other=0.0).to(tl.float32)
    target = tl.load(targets_ptr + rows, mask=row_mask, other=ignore_index)
    valid = row_mask & (target != ignore_index)
    safe = tl.where(valid, target, 0).to(tl.int64)
    w_target = tl.load(items_ptr + safe[:, None] * DIM + dims[None, :], mask=valid[:, None] & dim_mask[None, :],
                       other=0.0).to(tl.float32)
    return rows, row_mask, dims, h, valid, safe, w_target


@triton.jit
def _forward_kernel(
    hidden_ptr, items_ptr, targets_ptr, negatives_ptr, keep_ptr, alias_ptr, log_q_ptr, lse_ptr, loss_ptr,
    num_rows, num_items, num_negatives, ignore_index, seed_hash, log_k, uniform_log_q,
    SHARE: tl.constexpr, EXPLICIT: tl.constexpr, POPULARITY: tl.constexpr, LOGQ: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows, row_mask, dims, h, valid, safe, w_target = _load_rows(
        hidden_ptr, items_ptr, targets_ptr, num_rows, ignore_index, BLOCK_M, DIM, BLOCK_D
    )
    positive = tl.sum(h * w_target, axis=1)  # [BM]
    max2 = positive * LOG2E  # the online log-sum-exp starts with s_0
    sum_exp = tl.full([BLOCK_M], 1.0, tl.float32)
    for start in range(0, num_negatives, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        mask = valid[:, None] & (ks < num_negatives)[None, :]
        ids = _negative_ids(rows, ks, valid, negatives_ptr, keep_ptr, alias_ptr, seed_hash, num_items,
                            num_negatives, SHARE, EXPLICIT, POPULARITY, BLOCK_ROWS)
        s, _ = _scores(h, items_ptr, ids, mask, log_q_ptr, log_k, safe, dims, DIM, LOGQ, POPULARITY, uniform_log_q)
        new_max2 = tl.maximum(max2, tl.max(s, axis=1) * LOG2E)
        sum_exp = sum_exp * tl.exp2(max2 - new_max2) + tl.sum(tl.exp2(s * LOG2E - new_max2[:, None]), axis=1)
        max2 = new_max2
    lse = (max2 + tl.log2(sum_exp)) * LN2
    tl.store(lse_ptr + rows, lse, mask=row_mask)
    tl.store(loss_ptr + rows, tl.where(valid, lse - positive, 0.0), mask=row_mask)


@triton.jit
def _backward_kernel(
    hidden_ptr, items_ptr, targets_ptr, negatives_ptr, keep_ptr, alias_ptr, log_q_ptr, lse_ptr, grad_loss_ptr,
    grad_hidden_ptr, grad_items_ptr,
    num_rows, num_items, num_negatives, ignore_index, seed_hash, log_k, uniform_log_q,
    SHARE: tl.constexpr, EXPLICIT: tl.constexpr, POPULARITY: tl.constexpr, LOGQ: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows, row_mask, dims, h, valid, safe, w_target = _load_rows(
        hidden_ptr, items_ptr, targets_ptr, num_rows, ignore_index, BLOCK_M, DIM, BLOCK_D
    )
    dim_mask = dims < DIM
    row_dim_mask = row_mask[:, None] & dim_mask[None, :]
    target_mask = valid[:, None] & dim_mask[None, :]
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    grad_loss = tl.where(valid, tl.load(grad_loss_ptr + rows, mask=row_mask, other=0.0), 0.0)  # [BM]
    positive = tl.sum(h * w_target, axis=1)
    grad_positive = (tl.exp(positive - lse) - 1.0) * grad_loss  # d loss / d s_0
    grad_h = grad_positive[:, None] * w_target  # [BM, BD]
    tl.atomic_add(grad_items_ptr + safe[:, None] * DIM + dims[None, :], grad_positive[:, None] * h, mask=target_mask)
    for start in range(0, num_negatives, BLOCK_K):
        ks = start + tl.arange(0, BLOCK_K)
        mask = valid[:, None] & (ks < num_negatives)[None, :]
        ids = _negative_ids(rows, ks, valid, negatives_ptr, keep_ptr, alias_ptr, seed_hash, num_items,
                            num_negatives, SHARE, EXPLICIT, POPULARITY, BLOCK_ROWS)
        s, w = _scores(h, items_ptr, ids, mask, log_q_ptr, log_k, safe, dims, DIM, LOGQ, POPULARITY, uniform_log_q)
        g = tl.exp(s - lse[:, None]) * grad_loss[:, None]  # [BM, BK]; 0 on hits and masked k
        grad_h += tl.sum(g[:, :, None] * w, axis=1)
        tl.atomic_add(
            grad_items_ptr + ids[:, :, None] * DIM + dims[None, None, :],
            g[:, :, None] * h[:, None, :],
            mask=mask[:, :, None] & dim_mask[None, None, :],
        )
    tl.store(grad_hidden_ptr + rows.to(tl.int64)[:, None] * DIM + dims[None, :], grad_h, mask=row_dim_mask)


def _launch_arguments(hidden, items, targets, negatives, keep, alias, log_q, seed_hash, num_negatives, share,
                      logq_correction, block_rows):
    """Shared positional arguments and constexpr options of both kernels."""
    import math

    explicit = 0 if negatives is None else (1 if negatives.ndim == 2 else 2)
    popularity = keep is not None
    num_k = negatives.shape[-1] if negatives is not None else num_negatives
    placeholder = targets  # any tensor for pointers a mode does not read
    pointers = (
        negatives if negatives is not None else placeholder,
        keep if popularity else placeholder,
        alias if popularity else placeholder,
        log_q if popularity else placeholder,
    )
    scalars = (num_k, math.log(num_k), -math.log(items.shape[0]))
    options = {
        "SHARE": {"none": 0, "block": 1, "batch": 2}[share],
        "EXPLICIT": explicit,
        "POPULARITY": popularity,
        "LOGQ": logq_correction,
        "BLOCK_ROWS": block_rows,
        "DIM": hidden.shape[1],
        "BLOCK_D": max(16, triton.next_power_of_2(hidden.shape[1])),
    }
    return pointers, scalars, options


def forward(hidden, items, targets, ignore_index, seed_hash, num_negatives, share, negatives, keep, alias, log_q,
            logq_correction, block_rows):
    """(loss [M] fp32, lse [M] fp32). `keep`, `alias`, `log_q` [N] are given for popularity sampling, else None."""
    hidden, items, targets = hidden.contiguous(), items.contiguous(), targets.contiguous()
    num_rows = hidden.shape[0]
    loss = torch.empty(num_rows, dtype=torch.float32, device=hidden.device)
    lse = torch.empty(num_rows, dtype=torch.float32, device=hidden.device)
    pointers, (num_k, log_k, uniform_log_q), options = _launch_arguments(
        hidden, items, targets, negatives, keep, alias, log_q, seed_hash, num_negatives, share, logq_correction,
        block_rows)
    block_m, block_k = 16, 16
    _forward_kernel[(triton.cdiv(num_rows, block_m),)](
        hidden, items, targets, *pointers, lse, loss, num_rows, items.shape[0], num_k, ignore_index, seed_hash,
        log_k, uniform_log_q, BLOCK_M=block_m, BLOCK_K=block_k, **options,
    )
    return loss, lse


def backward(hidden, items, targets, lse, grad_loss, ignore_index, seed_hash, num_negatives, share, negatives, keep,
             alias, log_q, logq_correction, block_rows):
    """(grad_hidden [M, D] fp32, grad_items [N, D] fp32)."""
    hidden, items, targets = hidden.contiguous(), items.contiguous(), targets.contiguous()
    num_rows = hidden.shape[0]
    grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
    grad_items = torch.zeros(items.shape, dtype=torch.float32, device=items.device)
    pointers, (num_k, log_k, uniform_log_q), options = _launch_arguments(
        hidden, items, targets, negatives, keep, alias, log_q, seed_hash, num_negatives, share, logq_correction,
        block_rows)
    block_m, block_k = 16, 16
    _backward_kernel[(triton.cdiv(num_rows, block_m),)](
        hidden, items, targets, *pointers, lse, grad_loss.float().contiguous(), grad_hidden, grad_items, num_rows,
        items.shape[0], num_k, ignore_index, seed_hash, log_k, uniform_log_q, BLOCK_M=block_m, BLOCK_K=block_k,
        **options,
    )
    return grad_hidden, grad_items
